//! What `shoal download`, `verify` and `seed` do when the disk under them is
//! not what they left there (issue #15, "Hostile peers", the storage half):
//! symbolic links at the top of the output directory, a torrent named like
//! shoal's own state directory, files cut short while shoal was stopped, and
//! I/O errors that must name their cause once.
//!
//! Every process listens on port 0; every wait is bounded.

mod common;

use std::path::Path;

use common::*;

/// `shoal seed t.torrent DATA` for `create`d content at `dir/seed/NAME`.
fn create_and_seed(d: &Path, name: &str, extra_create: &[&str]) -> Shoal {
    let path = format!("seed/{name}");
    let mut args = vec!["create", path.as_str(), "-o", "t.torrent"];
    args.extend_from_slice(extra_create);
    shoal_ok(d, &args);
    Shoal::seed(d, &path, &[])
}

/// Runs `shoal ARGS` in `d` to its end (bounded).
fn run(d: &Path, args: &[&str]) -> Run {
    let child = shoal_command()
        .args(args)
        .current_dir(d)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start shoal");
    finish(child, 60, &format!("shoal {args:?}"))
}

/// `shoal download TORRENT -o OUT -x --port 0 --no-trackers --peer PEER
/// --json`, run to its end.
fn download(d: &Path, torrent: &str, out: &str, peer: &str) -> Run {
    let args = [
        "download",
        torrent,
        "-o",
        out,
        "-x",
        "--port",
        "0",
        "--no-trackers",
        "--peer",
        peer,
        "--json",
    ];
    run(d, &args)
}

/// The lines of `text` that contain `needle`.
fn lines_with(text: &str, needle: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Pieces of a torrent of files of `lengths` (in order, `pl`-byte pieces)
/// that lie wholly within the files' current lengths `now`.
fn intact_pieces(lengths: &[u64], now: &[u64], pl: u64) -> usize {
    let total: u64 = lengths.iter().sum();
    let mut starts = Vec::new();
    let mut at = 0;
    for l in lengths {
        starts.push(at);
        at += l;
    }
    (0..total.div_ceil(pl))
        .filter(|p| {
            let (s, e) = (p * pl, ((p + 1) * pl).min(total));
            lengths
                .iter()
                .zip(now)
                .zip(&starts)
                .all(|((&len, &cur), &fs)| {
                    let (lo, hi) = (s.max(fs), e.min(fs + len));
                    lo >= hi || hi <= fs + cur
                })
        })
        .count()
}

#[test]
fn intact_pieces_counts_what_the_test_expects() {
    assert_eq!(intact_pieces(&[100], &[100], 10), 10);
    assert_eq!(intact_pieces(&[100], &[55], 10), 5);
    // The piece spanning 25..35 crosses into the short second file.
    assert_eq!(intact_pieces(&[30, 30, 40], &[30, 4, 40], 10), 3 + 4);
}

/// #4: with `out/set` a link to a directory elsewhere, a multi-file download
/// into `-o out` must not write there; with `out/.shoal` a link, neither
/// must the resume file. The `-o` directory itself may be a link.
#[test]
fn links_at_the_top_of_the_output_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("seed/set/a.bin"), &bytes(1, 300_000));
    write(&d.join("seed/set/sub/b.bin"), &bytes(2, 100_000));
    let seed = create_and_seed(d, "set", &["-l", "15"]);
    let peer = seed.addr();
    std::fs::create_dir_all(d.join("elsewhere")).unwrap();

    // The top directory of the content is a link.
    std::fs::create_dir_all(d.join("out1")).unwrap();
    std::os::unix::fs::symlink("../elsewhere", d.join("out1/set")).unwrap();
    let r = download(d, "t.torrent", "out1", &peer);
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    let errors = lines_with(&r.stderr, "shoal: error:");
    assert_eq!(errors.len(), 1, "{}", r.stderr);
    assert!(
        errors[0].contains("out1/set is a symbolic link"),
        "{errors:?}"
    );
    assert!(
        listing(&d.join("elsewhere")).is_empty(),
        "written through out1/set"
    );

    // The state directory is a link.
    std::fs::create_dir_all(d.join("out2")).unwrap();
    std::os::unix::fs::symlink("../elsewhere", d.join("out2/.shoal")).unwrap();
    let r = download(d, "t.torrent", "out2", &peer);
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    let errors = lines_with(&r.stderr, "shoal: error:");
    assert_eq!(errors.len(), 1, "{}", r.stderr);
    assert!(
        errors[0].contains("out2/.shoal is a symbolic link"),
        "{errors:?}"
    );
    assert!(
        listing(&d.join("elsewhere")).is_empty(),
        "written through out2/.shoal"
    );

    // A single-file torrent's file is a link (refused already; kept so).
    write(&d.join("seed/one.bin"), &bytes(3, 50_000));
    shoal_ok(d, &["create", "seed/one.bin", "-o", "one.torrent"]);
    std::fs::create_dir_all(d.join("out3")).unwrap();
    std::os::unix::fs::symlink("../elsewhere/x", d.join("out3/one.bin")).unwrap();
    let r = download(d, "one.torrent", "out3", "127.0.0.1:9");
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("out3/one.bin is a symbolic link"),
        "{}",
        r.stderr
    );
    assert!(
        listing(&d.join("elsewhere")).is_empty(),
        "written through out3/one.bin"
    );

    // `-o` itself may be a link the user chose.
    std::fs::create_dir_all(d.join("real")).unwrap();
    std::os::unix::fs::symlink("real", d.join("via-link")).unwrap();
    let r = download(d, "t.torrent", "via-link", &peer);
    assert_eq!(r.status.code(), Some(0), "{}", r.stderr);
    assert_eq!(r.json()["complete"], true);
    same_tree(&d.join("seed/set"), &d.join("real/set"));
    assert_eq!(listing(&d.join("real/.shoal")).len(), 1);
}

/// #5: a torrent named `.shoal` (one file, or a directory) would take the
/// place of the resume directory. It downloads under another, stated name;
/// the resume file is kept, and a second run resumes from it.
#[test]
fn a_torrent_named_like_the_state_directory_downloads_beside_it() {
    for multi in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        if multi {
            write(&d.join("seed/.shoal/a.bin"), &bytes(4, 200_000));
            write(&d.join("seed/.shoal/x/7a.resume"), &bytes(5, 70_000));
        } else {
            write(&d.join("seed/.shoal"), &bytes(6, 300_000));
        }
        let seed = create_and_seed(d, ".shoal", &["-l", "15"]);
        let hash = show_json(d, "t.torrent")["info_hash"]
            .as_str()
            .unwrap()
            .to_string();

        let r = download(d, "t.torrent", "out", &seed.addr());
        assert_eq!(r.status.code(), Some(0), "multi {multi}: {}", r.stderr);
        assert_eq!(r.json()["complete"], true);
        let said = lines_with(&r.stderr, "named '.shoal'");
        assert_eq!(said.len(), 1, "the new name is said once: {}", r.stderr);
        assert!(said[0].contains("out/_.shoal"), "{said:?}");
        if multi {
            same_tree(&d.join("seed/.shoal"), &d.join("out/_.shoal"));
        } else {
            same_file(&d.join("seed/.shoal"), &d.join("out/_.shoal"));
        }
        // Only the resume file in the state directory: no data went there.
        assert_eq!(listing(&d.join("out/.shoal")), [format!("{hash}.resume")]);

        // Run again: everything is there already, nothing is fetched.
        let r = download(d, "t.torrent", "out", &seed.addr());
        assert_eq!(r.status.code(), Some(0), "{}", r.stderr);
        assert_eq!(r.json()["downloaded"], 0);
        assert!(r.stderr.contains("already here"), "{}", r.stderr);

        // `verify` finds it under the name it was given.
        shoal_ok(d, &["verify", "t.torrent", "out/_.shoal"]);
    }
}

/// #6, `verify` and `seed`: a file cut short keeps the pieces wholly inside
/// its new length, and they are counted as good.
#[test]
fn verify_and_seed_count_the_pieces_a_short_file_still_holds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    const SIZE: u64 = 8 << 20;
    write(&d.join("one.bin"), &bytes(7, SIZE as usize));
    for (exp, cut) in [
        (15u32, 5 * (1 << 20) + 1000),
        (16, 3 * (1 << 20) + (1 << 16)),
    ] {
        let pl = 1u64 << exp;
        let torrent = format!("one-{exp}.torrent");
        shoal_ok(
            d,
            &["create", "one.bin", "-l", &exp.to_string(), "-o", &torrent],
        );
        let copy = d.join(format!("cut-{exp}/one.bin"));
        write(&copy, &std::fs::read(d.join("one.bin")).unwrap());
        truncate(&copy, cut);
        let total = SIZE / pl;
        let good = intact_pieces(&[SIZE], &[cut], pl);
        assert_eq!(good as u64, cut / pl);
        let copy = copy.to_str().unwrap();
        let r = run(d, &["verify", &torrent, copy]);
        assert_eq!(r.status.code(), Some(1));
        assert!(
            r.stdout
                .contains(&format!("FAILED: {good} of {total} pieces match")),
            "{exp}: {}",
            r.stdout
        );
        assert!(
            r.stdout.contains(&format!("short: {cut} of {SIZE} bytes")),
            "{}",
            r.stdout
        );
        let r = run(d, &["seed", &torrent, copy, "--port", "0"]);
        assert_eq!(r.status.code(), Some(1));
        assert!(
            r.stderr
                .contains(&format!("({good} of {total} pieces good)")),
            "{}",
            r.stderr
        );
    }

    // Several files: a piece crossing from an intact file into the short
    // one is bad, pieces wholly in the short one's remaining bytes are good.
    let lengths = [3 * (1 << 20) + 123, 2 * (1 << 20) + 777, (1 << 20) + 5];
    for (i, &len) in lengths.iter().enumerate() {
        write(
            &d.join(format!("set/f{i}.bin")),
            &bytes(10 + i as u64, len as usize),
        );
    }
    shoal_ok(d, &["create", "set", "-l", "15", "-o", "set.torrent"]);
    let cut = (1 << 20) + 300;
    truncate(&d.join("set/f1.bin"), cut);
    let good = intact_pieces(&lengths, &[lengths[0], cut, lengths[2]], 1 << 15);
    let total = lengths.iter().sum::<u64>().div_ceil(1 << 15);
    let r = run(d, &["verify", "set.torrent", "set"]);
    assert!(
        r.stdout
            .contains(&format!("FAILED: {good} of {total} pieces match")),
        "{}",
        r.stdout
    );
    // The other files are intact, and not named.
    assert!(
        !r.stdout.contains("f0.bin") && !r.stdout.contains("f2.bin"),
        "{}",
        r.stdout
    );
}

/// #6, `download`: a completed download whose file was cut short while shoal
/// was stopped says so, keeps the pieces still there and fetches only the
/// rest, for one file and for a file in the middle of several.
#[test]
fn a_short_file_resumes_with_only_the_missing_pieces() {
    for multi in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let pl = 1u64 << 15;
        let lengths: Vec<u64> = if multi {
            vec![3 * (1 << 20) + 123, 2 * (1 << 20) + 777, (1 << 20) + 5]
        } else {
            vec![8 << 20]
        };
        let name = if multi { "set" } else { "one.bin" };
        if multi {
            for (i, &len) in lengths.iter().enumerate() {
                let p = d.join(format!("seed/set/f{i}.bin"));
                write(&p, &bytes(20 + i as u64, len as usize));
            }
        } else {
            write(&d.join("seed/one.bin"), &bytes(20, lengths[0] as usize));
        }
        let seed = create_and_seed(d, name, &["-l", "15"]);
        let r = download(d, "t.torrent", "out", &seed.addr());
        assert_eq!(r.status.code(), Some(0), "{}", r.stderr);
        assert_eq!(r.json()["complete"], true);

        // Cut while stopped: the resume file says all is here, the file
        // now says otherwise.
        let (shown, cut_index) = if multi {
            ("out/set/f1.bin", 1)
        } else {
            ("out/one.bin", 0)
        };
        let cut = lengths[cut_index] / 2 + 1000;
        truncate(&d.join(shown), cut);
        let mut now = lengths.clone();
        now[cut_index] = cut;
        let good = intact_pieces(&lengths, &now, pl);
        let total = lengths.iter().sum::<u64>().div_ceil(pl) as usize;

        let r = download(d, "t.torrent", "out", &seed.addr());
        assert_eq!(r.status.code(), Some(0), "{}", r.stderr);
        assert_eq!(r.json()["complete"], true);
        let said = lines_with(&r.stderr, "shorter than expected");
        assert_eq!(said.len(), 1, "{}", r.stderr);
        assert!(
            said[0].contains(&format!("{shown} is shorter than expected")),
            "{said:?}"
        );
        assert!(
            r.stderr
                .contains(&format!("shoal: {good} of {total} pieces already here")),
            "expected {good} of {total} pieces kept: {}",
            r.stderr
        );
        let downloaded = r.json()["downloaded"].as_u64().unwrap();
        let missing = lengths.iter().sum::<u64>() - good as u64 * pl;
        assert!(
            downloaded <= missing + pl,
            "fetched {downloaded} bytes where {missing} were missing"
        );
        if multi {
            same_tree(&d.join("seed/set"), &d.join("out/set"));
        } else {
            same_file(&d.join("seed/one.bin"), &d.join("out/one.bin"));
        }
    }
}

/// #9: an I/O error is said once, with its cause once: here a name too long
/// for the file system (as root, permissions cannot be used to provoke one).
#[test]
fn an_io_error_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("one.bin"), &bytes(8, 40_000));
    let long = "n".repeat(300);
    shoal_ok(d, &["create", "one.bin", "-n", &long, "-o", "long.torrent"]);
    let r = download(d, "long.torrent", "out", "127.0.0.1:9");
    assert_eq!(r.status.code(), Some(1), "{}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert_eq!(
        r.stderr.matches("File name too long").count(),
        1,
        "{}",
        r.stderr
    );
}
