//! Metainfo: whatever `Metainfo::from_bytes` accepts upholds the module's
//! invariants — every file path is a plain relative path that stays below
//! the directory it is joined onto (no `..`, `.`, root, prefix, empty
//! component, separator or NUL inside a component), no path is given twice
//! or used as both file and directory, the piece table matches the total
//! length, and the info hash is SHA-1 of the `info` bytes as they appear in
//! the input. `Info::from_bytes` (the BEP 9 path) is fuzzed on the same
//! bytes, and on the accepted `info` it must agree.
#![no_main]

use std::collections::HashSet;
use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use torrent_format::{bencode, Info, Metainfo};

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = Info::from_bytes(data) {
        check_info(&info);
        assert_eq!(info.raw_bytes(), data);
    }
    let Ok(m) = Metainfo::from_bytes(data) else {
        return;
    };
    check_info(&m.info);
    // The info hash covers the `info` value exactly as in the input.
    let spans = bencode::dict_spans(data).expect("accepted input is a dictionary");
    let (_, range) = spans.iter().find(|(k, _)| *k == b"info").expect("has info");
    assert_eq!(m.info.raw_bytes(), &data[range.clone()]);
    let again = Info::from_bytes(m.info.raw_bytes()).expect("its own info parses alone");
    assert_eq!(again.info_hash(), m.info_hash());
    assert_eq!(again.files(), m.info.files());
    for tier in m.trackers() {
        assert!(!tier.is_empty());
        assert!(tier.iter().all(|u| !u.is_empty() && u.trim() == u));
    }
    assert!(m.web_seeds().iter().all(|u| !u.is_empty() && u.trim() == u));
});

fn check_info(info: &Info) {
    safe_component(info.name());
    let files = info.files();
    assert!(!files.is_empty());
    assert!(info.is_multi_file() || files.len() == 1);
    let mut offset = 0u64;
    let mut seen = HashSet::new();
    for (i, f) in files.iter().enumerate() {
        assert!(!f.path.is_empty(), "file {i} has no path");
        for c in &f.path {
            safe_component(c);
        }
        assert_eq!(f.offset, offset, "file {i} does not follow the one before");
        offset = offset.checked_add(f.length).expect("total overflows");
        assert!(seen.insert(f.path.as_slice()), "path {:?} twice", f.path);
        // The path as the storage layer builds it: relative, only plain
        // names, exactly one per component (nothing merged or dropped).
        let p = info.file_path(i);
        assert!(p.is_relative(), "{p:?} is not relative");
        let expected = f.path.len() + usize::from(info.is_multi_file());
        let comps: Vec<_> = p.components().collect();
        assert_eq!(comps.len(), expected, "{p:?} has the wrong components");
        assert!(
            comps.iter().all(|c| matches!(c, Component::Normal(_))),
            "{p:?} escapes"
        );
        assert!(Path::new("/root/dir").join(&p).starts_with("/root/dir"));
    }
    // No file is also a directory of another.
    for f in files {
        for n in 1..f.path.len() {
            assert!(
                !seen.contains(&f.path[..n]),
                "{:?} is a file and a dir",
                &f.path[..n]
            );
        }
    }
    assert!(offset <= i64::MAX as u64);
    assert_eq!(info.total_length(), offset);
    let pl = info.piece_length();
    assert!(pl >= 1 && pl <= torrent_format::metainfo::MAX_PIECE_LENGTH);
    let count = info.piece_count();
    assert_eq!(count as u64, offset.div_ceil(pl));
    assert_eq!(info.piece_hashes().len(), count);
    // The first and last pieces are made of file ranges that add up to the
    // piece and stay inside their files.
    for index in [0, count / 2, count.saturating_sub(1)] {
        if index >= count {
            continue;
        }
        let size = info.piece_size(index);
        assert!(size >= 1 && size <= pl);
        let segments = info.piece_segments(index);
        assert_eq!(segments.iter().map(|s| s.len).sum::<u64>(), size);
        for s in segments {
            let f = &files[s.file];
            assert!(s.len > 0 && s.file_offset + s.len <= f.length);
        }
    }
    for i in 0..files.len().min(64) {
        let r = info.file_pieces(i);
        assert!(r.end <= count);
    }
}

/// A name that, joined onto a directory, names an entry inside it.
fn safe_component(c: &str) {
    assert!(!c.is_empty(), "empty path component");
    assert!(c != "." && c != "..", "{c:?} component");
    assert!(
        !c.contains(['/', '\\', '\0']),
        "{c:?} has a separator or NUL"
    );
    let mut comps = Path::new(c).components();
    assert!(
        matches!(comps.next(), Some(Component::Normal(n)) if n == c) && comps.next().is_none(),
        "{c:?} is not one plain name"
    );
}
