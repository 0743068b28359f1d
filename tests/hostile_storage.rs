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
    let child = std::process::Command::new(SHOAL)
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
