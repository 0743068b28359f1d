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
