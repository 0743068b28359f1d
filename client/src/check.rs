//! What of a download is on disk already, before its torrent starts: the
//! resume file ([`crate::resume`]) says what it can vouch for, and the
//! rest is re-hashed with `torrent_format`'s parallel piece hashing — the
//! same engine `create` and `verify` use (multi-buffer SHA-1 where the CPU
//! has it), reading files rather than mapping them so a long-running
//! download does not count the whole file in its memory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use torrent_format::pieces::{self, HashOptions, Layout};
use torrent_format::Info;

use crate::resume;
use crate::storage::{self, Storage, StorageError};
use crate::wire::Bitfield;

/// A download's files, opened, and what to re-hash before starting.
#[derive(Debug)]
pub struct Existing {
    /// Pieces the resume file vouches for.
    pub trusted: Bitfield,
    /// Pieces to re-hash (ascending).
    pub to_check: Vec<u32>,
    /// Why the resume file was not used, when it was not.
    pub reason: Option<String>,
    /// Where the resume file is (and will be saved).
    pub resume_path: PathBuf,
    /// Files that were there but shorter than the torrent says: path,
    /// length found, length expected. Their pieces still wholly there are
    /// in `to_check`.
    pub short: Vec<(PathBuf, u64, u64)>,
    root: PathBuf,
}

/// What a torrent is downloaded as in its output directory: its name, except
/// that a torrent named like the state directory (`.shoal`, in any case, for
/// file systems that ignore it) would take that directory's place and is
/// downloaded as `_NAME` instead. Torrent names are single plain
/// components, so no other name can reach the state directory.
pub fn content_name(info: &Info) -> String {
    let name = info.name();
    if name.eq_ignore_ascii_case(resume::STATE_DIR) {
        format!("_{name}")
    } else {
        name.to_string()
    }
}

/// Sets up a download of `info` into `out_dir/NAME` ([`content_name`]) (only the files
/// `wanted_files` marks, when given) and reads its resume file.
pub fn open_download(
    info: &Arc<Info>,
    out_dir: &Path,
    wanted_files: Option<Vec<bool>>,
) -> Result<(Storage, Existing), StorageError> {
    let root = out_dir.join(content_name(info));
    let resume_path = resume::resume_path(out_dir, info);
    // The state directory first: a link or a file in its place stops the
    // download before anything is written.
    resume::state_dir(&resume_path, true)?;
    // Stamps before `create` extends new files: pieces in files that were
    // missing or short cannot be complete, so they are not checked.
    let before = storage::stamps_at(info, &root);
    let storage = Storage::create(info.clone(), root.clone(), wanted_files)?;
    let state = resume::load(&resume_path, info, &before, storage.selected());
    let paths = Layout::for_torrent(info, &root).paths;
    let short = state
        .short
        .iter()
        .map(|&i| {
            let found = before[i].map_or(0, |s| s.length);
            (paths[i].clone(), found, info.files()[i].length)
        })
        .collect();
    Ok((
        storage,
        Existing {
            trusted: state.trusted,
            to_check: state.to_check,
            reason: state.reason,
            resume_path,
            short,
            root,
        },
    ))
}

impl Existing {
    /// Bytes the re-check reads.
    pub fn bytes_to_check(&self, info: &Info) -> u64 {
        self.to_check
            .iter()
            .map(|&p| info.piece_size(p as usize))
            .sum()
    }

    /// Re-hashes what the resume file could not vouch for on `threads`
    /// threads; returns every piece known good. `progress` gets the bytes
    /// of each piece done.
    pub fn check(self, info: &Info, threads: usize, progress: &(dyn Fn(u64) + Sync)) -> Bitfield {
        let mut have = self.trusted;
        if self.to_check.is_empty() {
            return have;
        }
        let mut check = vec![false; info.piece_count()];
        for &p in &self.to_check {
            check[p as usize] = true;
        }
        let layout = Layout::for_torrent(info, &self.root);
        let opts = HashOptions {
            threads,
            mmap: false,
        };
        let hashes = pieces::hash_pieces(&layout, opts, false, &|p| check[p], progress);
        for (p, h) in hashes.iter().enumerate() {
            if let Some(Ok(h)) = h {
                if *h == info.piece_hashes()[p] {
                    have.set(p);
                }
            }
        }
        have
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::tests::{torrent, write_all, FILES};
    use torrent_format::bencode::{self, Value};

    #[test]
    fn no_torrent_name_reaches_the_state_directory() {
        let (info, _) = torrent(FILES, 100);
        assert_eq!(content_name(&info), "root");
        let named = |name: &str| {
            let Ok(Value::Dict(mut d)) = bencode::decode(info.raw_bytes()) else {
                unreachable!()
            };
            d.insert(b"name".to_vec(), Value::Bytes(name.as_bytes().to_vec()));
            Info::from_bytes(&Value::Dict(d).encode()).unwrap()
        };
        let cases = [
            (".shoal", "_.shoal"),
            (".SHOAL", "_.SHOAL"),
            ("_.shoal", "_.shoal"),
            (".shoal2", ".shoal2"),
        ];
        for (name, as_named) in cases {
            assert_eq!(content_name(&named(name)), as_named);
        }
    }

    #[test]
    fn a_fresh_download_trusts_nothing_and_a_finished_one_is_found_by_rehashing() {
        let (info, contents) = torrent(FILES, 100);
        let dir = tempfile::tempdir().unwrap();
        let (storage, existing) = open_download(&info, dir.path(), None).unwrap();
        assert_eq!(existing.trusted.count(), 0);
        // Every file was missing: nothing worth re-hashing.
        assert!(existing.to_check.is_empty(), "{:?}", existing.to_check);
        write_all(&storage, &contents, 64);
        storage.sync().unwrap();
        drop(storage);
        // No resume file: every piece re-hashed, all good.
        let (_storage, existing) = open_download(&info, dir.path(), None).unwrap();
        assert!(existing.reason.is_some());
        assert_eq!(existing.to_check.len(), info.piece_count());
        assert_eq!(existing.bytes_to_check(&info), info.total_length());
        let have = existing.check(&info, 2, &|_| {});
        assert!(have.is_complete());
    }
}
