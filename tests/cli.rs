//! The `shoal` binary as a user meets it: create → show → verify, clear
//! errors and exit codes for bad input, and hostile torrents refused without
//! a panic and without anything written.

mod common;

use std::path::Path;

use common::*;

fn stderr_of(cwd: &Path, args: &[&str]) -> (i32, String) {
    let out = shoal(cwd, args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn create_show_verify_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_tree(&d.join("tree"));
    let out = shoal_ok(
        d,
        &[
            "create",
            "tree",
            "-a",
            "http://t1/announce,http://t2/announce",
            "-a",
            "udp://t3:80",
            "-w",
            "http://seed/",
            "-c",
            "hello",
            "-s",
            "SRC",
            "-p",
        ],
    );
    // Default output: NAME.torrent in the working directory.
    assert!(out.starts_with("tree.torrent: "), "{out}");
    let json = show_json(d, "tree.torrent");
    assert_eq!(json["name"], "tree");
    assert_eq!(json["info_hash"].as_str().unwrap().len(), 40);
    assert_eq!(json["private"], true);
    assert_eq!(json["source"], "SRC");
    assert_eq!(json["comment"], "hello");
    assert_eq!(json["web_seeds"][0], "http://seed/");
    assert_eq!(json["trackers"][0][1], "http://t2/announce");
    assert_eq!(json["trackers"][1][0], "udp://t3:80");
    assert!(json["creation_date"].as_i64().unwrap() > 1_600_000_000);
    assert_eq!(json["files"].as_array().unwrap().len(), 7);
    assert_eq!(json["files"][0]["path"], ".hidden");
    // The automatic piece length for a small torrent is 32 KiB.
    assert_eq!(json["piece_length"], 32768);
    let magnet = json["magnet"].as_str().unwrap();
    assert!(magnet.starts_with(&format!(
        "magnet:?xt=urn:btih:{}&dn=tree",
        json["info_hash"].as_str().unwrap()
    )));

    let text = shoal_ok(d, &["show", "tree.torrent"]);
    for needle in [
        "Info hash:",
        "tier 1",
        "tier 2",
        "http://seed/",
        "tree/a/b/deep.bin",
        "Private:      yes",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }

    let ok = shoal_ok(d, &["verify", "tree.torrent", "tree"]);
    assert!(ok.starts_with("OK:"), "{ok}");
    // A directory holding the content under its name also works.
    shoal_ok(d, &["verify", "tree.torrent", "."]);
    // So does the default: ./NAME.
    shoal_ok(d, &["verify", "tree.torrent"]);
}

/// `show` of a magnet link says what the link says; the torrent's own
/// magnet (from `show` of the .torrent) reads back the same way.
#[test]
fn show_reads_magnet_links() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // c12fe1c06bba254a9dc9f519b335aa7c1367a88a in base32.
    let link = "magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK&dn=my%20album\
                &tr=udp%3A%2F%2Ft1.example%3A6969&tr=http://t2.example/announce\
                &x.pe=10.0.0.1:6881&x.pe=%5B2001%3Adb8%3A%3A1%5D%3A51413\
                &ws=http%3A%2F%2Fseed.example%2F";
    let text = shoal_ok(d, &["show", link]);
    for needle in [
        "Name:         my album\n",
        "Info hash:    c12fe1c06bba254a9dc9f519b335aa7c1367a88a\n",
        "Trackers:\n  udp://t1.example:6969\n  http://t2.example/announce\n",
        "Peers:\n  10.0.0.1:6881\n  [2001:db8::1]:51413\n",
        "Web seeds:\n  http://seed.example/\n",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }

    let json = show_json(d, link);
    assert_eq!(
        json["info_hash"],
        "c12fe1c06bba254a9dc9f519b335aa7c1367a88a"
    );
    assert_eq!(json["name"], "my album");
    assert_eq!(
        json["trackers"],
        serde_json::json!(["udp://t1.example:6969", "http://t2.example/announce"])
    );
    assert_eq!(
        json["peers"],
        serde_json::json!(["10.0.0.1:6881", "[2001:db8::1]:51413"])
    );
    assert_eq!(
        json["web_seeds"],
        serde_json::json!(["http://seed.example/"])
    );
    // The link as shoal writes it (hex hash) says the same again.
    let again = show_json(d, json["magnet"].as_str().unwrap());
    assert_eq!(again, json);

    // No name, no trackers: said so.
    let text = shoal_ok(
        d,
        &[
            "show",
            "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a",
        ],
    );
    assert!(text.contains("Name:         (none)\n"), "{text}");
    assert!(text.contains("Trackers:\n  (none)\n"), "{text}");
    assert_eq!(
        show_json(
            d,
            "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a"
        )["name"],
        serde_json::Value::Null
    );

    // A torrent's magnet reads back to the torrent's hash, name and trackers.
    write(&d.join("f.bin"), &bytes(3, 1000));
    shoal_ok(d, &["create", "f.bin", "-a", "http://t/announce"]);
    let torrent = show_json(d, "f.bin.torrent");
    let from_magnet = show_json(d, torrent["magnet"].as_str().unwrap());
    assert_eq!(from_magnet["info_hash"], torrent["info_hash"]);
    assert_eq!(from_magnet["name"], "f.bin");
    assert_eq!(
        from_magnet["trackers"],
        serde_json::json!(["http://t/announce"])
    );
}

#[test]
fn show_refuses_bad_magnets_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let long = format!(
        "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&dn={}",
        "a".repeat(70_000)
    );
    let cases: &[(&str, &str)] = &[
        ("magnet:?dn=x", "no 'xt=urn:btih:' info hash"),
        ("magnet:?xt=urn:btih:123", "bad info hash in magnet link"),
        (
            "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&dn=%E2%9",
            "bad percent-encoding",
        ),
        ("magnet:xt=urn:btih:c12f", "must start with 'magnet:?'"),
        (&long, "over the 64 KiB limit"),
    ];
    for (link, needle) in cases {
        for json in [false, true] {
            let args: &[&str] = if json {
                &["show", "--json", link]
            } else {
                &["show", link]
            };
            let out = shoal(d, args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{link:.60}: {err}");
            assert!(out.stdout.is_empty(), "{link:.60}");
            assert!(err.starts_with("shoal: error: "), "{err}");
            assert!(
                err.contains(needle),
                "{link:.60}: expected {needle:?} in {err:?}"
            );
            assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
        }
    }
}

#[test]
fn verify_names_missing_short_and_corrupt_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_tree(&d.join("tree"));
    shoal_ok(d, &["create", "tree", "-l", "15", "-o", "t.torrent"]);

    // Flip one byte deep inside a file.
    let p = d.join("tree/Zed.bin");
    let mut data = std::fs::read(&p).unwrap();
    data[100_000] ^= 1;
    std::fs::write(&p, &data).unwrap();
    std::fs::remove_file(d.join("tree/a/one.txt")).unwrap();
    let deep = d.join("tree/a/b/deep.bin");
    let len = std::fs::metadata(&deep).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&deep)
        .unwrap()
        .set_len(len - 10)
        .unwrap();

    let out = shoal(d, &["verify", "t.torrent", "tree"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Zed.bin: corrupt: 1 of 5 pieces"), "{text}");
    assert!(text.contains("one.txt: missing"), "{text}");
    assert!(
        text.contains(&format!("deep.bin: short: {} of {len} bytes", len - 10)),
        "{text}"
    );
    assert!(text.contains("FAILED:"), "{text}");
    // a-b shares a piece with the short deep.bin, but is itself intact.
    assert!(!text.contains("a-b"), "{text}");

    // Single-file torrents: a wrong file fails, the right one passes.
    write(&d.join("one.bin"), &bytes(4, 40_000));
    shoal_ok(d, &["create", "one.bin", "-l", "15"]);
    shoal_ok(d, &["verify", "one.bin.torrent", "one.bin"]);
    write(&d.join("other/one.bin"), &bytes(5, 40_000));
    let out = shoal(d, &["verify", "one.bin.torrent", "other"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("corrupt: 2 of 2 pieces"));
}

#[test]
fn create_refuses_bad_input_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("f.txt"), b"data");
    std::fs::create_dir(d.join("nothing")).unwrap();
    std::os::unix::fs::symlink("does-not-exist", d.join("dangling")).unwrap();
    write(&d.join("withbad/ok.txt"), b"ok");
    std::os::unix::fs::symlink("../does-not-exist", d.join("withbad/broken")).unwrap();

    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["create", "missing"],
            1,
            "cannot read missing: No such file",
        ),
        (&["create", "nothing"], 1, "nothing contains no files"),
        (&["create", "dangling"], 1, "cannot read dangling"),
        (&["create", "withbad"], 1, "withbad/broken"),
        (
            &["create", "f.txt", "-l", "14"],
            2,
            "piece length exponent must be between 15 and 28",
        ),
        (
            &["create", "f.txt", "-l", "29"],
            2,
            "piece length exponent must be between 15 and 28",
        ),
        (
            &["create", "f.txt", "-n", "../evil"],
            1,
            "cannot use \"../evil\" as the torrent name",
        ),
        (&["create", "f.txt", "-a", "http://a/,"], 1, "empty URL"),
        (&["create", "f.txt", "--bogus"], 2, "unexpected argument"),
    ];
    for (args, code, needle) in cases {
        let (got, err) = stderr_of(d, args);
        assert_eq!(got, *code, "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err:?}"
        );
        if *code == 1 {
            assert_eq!(
                err.trim_end().lines().count(),
                1,
                "{args:?}: one line please: {err:?}"
            );
        }
    }

    // The output exists: refused, untouched; -f replaces it.
    std::fs::write(d.join("f.txt.torrent"), b"keep me").unwrap();
    let (code, err) = stderr_of(d, &["create", "f.txt"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("already exists (use -f to overwrite)"),
        "{err}"
    );
    assert_eq!(std::fs::read(d.join("f.txt.torrent")).unwrap(), b"keep me");
    shoal_ok(d, &["create", "f.txt", "-f"]);
    shoal_ok(d, &["verify", "f.txt.torrent", "f.txt"]);
}

#[test]
fn create_is_quiet_unless_verbose() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("x/f.txt"), b"data");
    let out = shoal(d, &["create", "x", "-o", "q.torrent"]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = shoal(d, &["create", "x", "-o", "v.torrent", "-v"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("adding f.txt"), "{err}");
    assert!(err.contains("in 1 file; 1 piece of 32.00 KiB"), "{err}");
}

#[test]
fn help_has_examples() {
    let dir = tempfile::tempdir().unwrap();
    for cmd in [
        &["--help"][..],
        &["create", "--help"],
        &["show", "--help"],
        &["verify", "--help"],
        &["tracker", "--help"],
        &["seed", "--help"],
        &["download", "--help"],
        &["demo", "--help"],
    ] {
        let text = shoal_ok(dir.path(), cmd);
        assert!(text.contains("Examples:"), "{cmd:?}:\n{text}");
    }
    assert!(shoal_ok(dir.path(), &["--version"]).starts_with("shoal "));
}

/// Hostile torrents: each is refused with a clear error naming the problem,
/// never a panic, and nothing is written.
#[test]
fn hostile_torrents_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pieces20 = "6:pieces20:AAAAAAAAAAAAAAAAAAAA";
    let multi = |files: &str, extra: &str| {
        format!("d8:announce9:http://t/4:infod5:filesl{files}e4:name4:root12:piece lengthi16384e{pieces20}{extra}ee")
    };
    let f = |path: &str, len: &str| format!("d6:length{len}4:pathl{path}ee");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "dotdot",
            multi(&f("2:..6:passwd", "i1e"), ""),
            "'.' or '..' path component",
        ),
        (
            "absolute",
            multi(&f("11:/etc/passwd", "i1e"), ""),
            "path separator inside a component",
        ),
        (
            "abs-name",
            format!("d4:infod6:lengthi1e4:name11:/etc/passwd12:piece lengthi16384e{pieces20}ee"),
            "unsafe path",
        ),
        (
            "dotdot-name",
            format!("d4:infod6:lengthi1e4:name2:..12:piece lengthi16384e{pieces20}ee"),
            "unsafe path",
        ),
        (
            "empty-component",
            multi(&f("1:a0:", "i1e"), ""),
            "empty path component",
        ),
        (
            "empty-path",
            multi(&f("", "i1e"), ""),
            "the path has no components",
        ),
        (
            "huge-string",
            "d4:infod4:name999999999999:xee".to_string(),
            "string length 999999999999 runs past the end",
        ),
        (
            "negative-length",
            multi(&f("1:a", "i-1e"), ""),
            "negative length",
        ),
        (
            "missing-length",
            multi("d4:pathl1:aee", ""),
            "invalid field 'info.files[0]': Missing Field: `length`",
        ),
        (
            "no-length-at-all",
            format!("d4:infod4:name1:x12:piece lengthi16384e{pieces20}ee"),
            "neither 'length' nor 'files'",
        ),
        (
            "short-pieces",
            "d4:infod6:lengthi1e4:name1:x12:piece lengthi16384e6:pieces19:AAAAAAAAAAAAAAAAAAAee"
                .to_string(),
            "not a multiple of 20",
        ),
        (
            "too-few-pieces",
            format!("d4:infod6:lengthi40000e4:name1:x12:piece lengthi16384e{pieces20}ee"),
            "need 3",
        ),
        (
            "zero-piece-length",
            format!("d4:infod6:lengthi1e4:name1:x12:piece lengthi0e{pieces20}ee"),
            "'piece length' is 0",
        ),
        (
            "leading-zero",
            format!("d4:infod6:lengthi01e4:name1:x12:piece lengthi16384e{pieces20}ee"),
            "leading zero",
        ),
        (
            "unterminated",
            "d4:infod6:lengthi1e".to_string(),
            "unexpected end of input",
        ),
        (
            "trailing",
            format!("d4:infod6:lengthi1e4:name1:x12:piece lengthi16384e{pieces20}eeXX"),
            "2 trailing bytes",
        ),
        (
            "deep",
            format!("{}{}", "l".repeat(10_000), "e".repeat(10_000)),
            "nesting deeper than",
        ),
        (
            "not-a-torrent",
            "hello world".to_string(),
            "bencode error at byte 0",
        ),
        (
            "duplicate-path",
            multi(&(f("1:a", "i1e") + &f("1:a", "i1e")), ""),
            "appears twice",
        ),
    ];
    std::fs::create_dir(d.join("out")).unwrap();
    for (name, body, needle) in &cases {
        let file = format!("{name}.torrent");
        std::fs::write(d.join(&file), body).unwrap();
        let before = listing(d);
        for args in [
            vec!["show", file.as_str()],
            vec!["verify", file.as_str(), "out"],
        ] {
            let (code, err) = stderr_of(d, &args);
            assert_eq!(code, 1, "{name}: {args:?}: {err}");
            assert!(
                err.contains(needle),
                "{name}: expected {needle:?} in {err:?}"
            );
            assert!(
                err.contains(&format!("{file} is not a valid torrent")),
                "{name}: {err}"
            );
        }
        assert_eq!(listing(d), before, "{name}: something was written");
    }
    // A file over the size limit is refused before it is parsed.
    let big = d.join("big.torrent");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(65 << 20)
        .unwrap();
    let (code, err) = stderr_of(d, &["show", "big.torrent"]);
    assert_eq!(code, 1);
    assert!(err.contains("larger than the 64 MiB limit"), "{err}");
    let (code, err) = stderr_of(d, &["show", "absent.torrent"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot open absent.torrent"), "{err}");
}

#[test]
fn sample_files_verify_against_a_fresh_torrent() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-files");
    let dir = tempfile::tempdir().unwrap();
    let torrent = dir.path().join("s.torrent");
    let t = torrent.to_str().unwrap();
    shoal_ok(dir.path(), &["create", samples.to_str().unwrap(), "-o", t]);
    let json = show_json(dir.path(), t);
    assert_eq!(json["name"], "sample-files");
    assert!(
        json["files"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["size"] == 0),
        "an empty file"
    );
    assert!(
        json["files"].as_array().unwrap().iter().any(|f| f["path"]
            .as_str()
            .unwrap()
            .matches('/')
            .count()
            >= 2),
        "a nested folder"
    );
    shoal_ok(dir.path(), &["verify", t, samples.to_str().unwrap()]);
}

/// The swarm commands fail with one clear line and a script-friendly exit
/// status for the mistakes users make.
#[test]
fn seed_and_download_refuse_bad_input_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("data/f.bin"), &bytes(9, 100_000));
    shoal_ok(
        d,
        &[
            "create",
            "data",
            "-o",
            "t.torrent",
            "-a",
            "http://127.0.0.1:9/announce",
        ],
    );
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["download", "missing.torrent"],
            1,
            "cannot open missing.torrent",
        ),
        (
            &["seed", "missing.torrent", "data"],
            1,
            "cannot open missing.torrent",
        ),
        (
            &["download", "t.torrent", "--only", "5"],
            2,
            "--only 5: the torrent has 1 file, numbered 0",
        ),
        (
            &["download", "t.torrent", "--no-trackers"],
            1,
            "no way to find peers",
        ),
        (
            &["download", "t.torrent", "--seed-ratio=-1"],
            2,
            "not a ratio",
        ),
        (
            &["download", "t.torrent", "--download-limit", "fast"],
            2,
            "not a rate",
        ),
        (
            &["download", "t.torrent", "--peer", "nowhere"],
            1,
            "--peer nowhere",
        ),
        (
            &["seed", "t.torrent", "data", "--port", "70000"],
            2,
            "70000",
        ),
    ];
    for (args, code, needle) in cases {
        let (got, err) = stderr_of(d, args);
        assert_eq!(got, *code, "{args:?}:\n{err}");
        assert!(err.contains(needle), "{args:?}: want {needle:?} in:\n{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // A file where the output directory should be.
    write(&d.join("blocker"), b"x");
    let (got, err) = stderr_of(d, &["download", "t.torrent", "-o", "blocker"]);
    assert_eq!(got, 1, "{err}");
    assert!(err.contains("blocker"), "{err}");

    // Data that does not match is not seeded, and the bad file is named.
    write(&d.join("data/f.bin"), &bytes(10, 100_000));
    let (got, err) = stderr_of(d, &["seed", "t.torrent", "data", "--port", "0"]);
    assert_eq!(got, 1, "{err}");
    assert!(err.contains("refusing to seed"), "{err}");
    assert!(err.contains("f.bin: corrupt"), "{err}");

    // A tracker that is down and no peer: give up after the time limit.
    let (got, err) = stderr_of(
        d,
        &[
            "download",
            "t.torrent",
            "-o",
            "out",
            "--port",
            "0",
            "--no-peers-timeout",
            "1s",
            "-q",
        ],
    );
    assert_eq!(got, 1, "{err}");
    assert!(err.contains("no peers found"), "{err}");
}

/// `shoal demo` runs a whole swarm and proves every copy.
#[test]
fn demo_runs_a_swarm_and_checks_every_copy() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().join("swarm");
    let out = shoal(
        dir.path(),
        &[
            "demo",
            "--leechers",
            "3",
            "--size",
            "600K",
            "--unlimited",
            "--keep",
            keep.to_str().unwrap(),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("All 3 copies match"), "{stdout}");
    assert!(stdout.contains("The seed uploaded"), "{stdout}");
    for i in 1..=3 {
        assert_eq!(
            std::fs::read(keep.join(format!("peer-{i}/demo.bin"))).unwrap(),
            std::fs::read(keep.join("demo.bin")).unwrap()
        );
    }
}

#[test]
fn tracker_refuses_out_of_range_numwant() {
    let dir = tempfile::tempdir().unwrap();
    for flag in ["--numwant", "--max-numwant"] {
        let (code, err) = stderr_of(dir.path(), &["tracker", flag, "20000"]);
        assert_eq!(code, 2, "{flag}: {err}");
        assert!(
            err.contains("20000") && err.contains("0..=10000"),
            "{flag}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// #16: `download -x` of data that is all there already exits 0 at once,
/// even with no resume file and a tracker that refuses connections (it
/// used to seed until Ctrl-C); `--seed-time` counts from there.
#[test]
fn download_of_complete_data_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 600 pieces of 32 KiB.
    let data = bytes(16, 600 << 15);
    write(&d.join("data.bin"), &data);
    write(&d.join("out/data.bin"), &data);
    let dead = format!("http://127.0.0.1:{}/announce", free_port());
    shoal_ok(
        d,
        &[
            "create",
            "data.bin",
            "-l",
            "15",
            "-a",
            &dead,
            "-o",
            "t.torrent",
        ],
    );
    let run = |extra: &[&str]| {
        let child = shoal_command()
            .args([
                "download",
                "t.torrent",
                "-o",
                "out",
                "--port",
                "0",
                "--json",
            ])
            .args(extra)
            .current_dir(d)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        let r = finish(child, 30, "download of complete data");
        (r, started.elapsed())
    };
    let (r, _) = run(&["-x"]);
    assert_eq!(r.status.code(), Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("600 of 600 pieces already here"),
        "{}",
        r.stderr
    );
    assert_eq!(r.json()["complete"], true);
    assert_eq!(r.json()["downloaded"], 0);
    // A resume file now exists; the same with --seed-time: it seeds that
    // long, counted from the start, and then exits 0.
    let (r, took) = run(&["--seed-time", "2s"]);
    assert_eq!(r.status.code(), Some(0), "{}", r.stderr);
    assert!(took >= std::time::Duration::from_secs(2), "{took:?}");
    same_file(&d.join("data.bin"), &d.join("out/data.bin"));
}

/// #16: a second tracker on a port another process already serves fails
/// with one clear line (both used to hold it through `SO_REUSEPORT`, each
/// seeing half the swarm); the first one keeps serving.
#[test]
fn a_tracker_refuses_a_port_already_served() {
    let dir = tempfile::tempdir().unwrap();
    let (_first, addr) = start_tracker("127.0.0.1:0", &[]);
    let listen = addr.to_string();
    let (code, err) = tracker_on(dir.path(), &listen);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&listen) && err.contains("in use"), "{err}");
    // All on one address, as a wildcard would overlap it.
    let wild = format!("0.0.0.0:{}", addr.port());
    let (code, err) = tracker_on(dir.path(), &wild);
    assert_eq!(code, 1, "{err}");
    let (status, _) = http_get(addr, "/stats.json");
    assert_eq!(status, 200);
    // Any program's listener counts, not only a tracker's.
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = other.local_addr().unwrap().to_string();
    let (code, err) = tracker_on(dir.path(), &listen);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("in use"), "{err}");
    // And the UDP side (BEP 15) of the same address: a program's UDP socket
    // there is refused too, unless UDP is off. The port's TCP half must be
    // free for that, so it is held until just before the tracker starts;
    // another test's connection can still take it in that moment (CI saw
    // it once), and then the check is retried on another port.
    for attempt in 1.. {
        let (udp, listen) = udp_port_with_tcp_free();
        let (code, err) = tracker_on(dir.path(), &listen);
        assert_eq!(code, 1, "{err}");
        if !err.contains("UDP") && attempt < 5 {
            continue;
        }
        assert!(
            err.contains(&format!("UDP {listen}")) && err.contains("in use"),
            "{err}"
        );
        let (_http_only, at) = start_tracker(&listen, &["--no-udp"]);
        assert_eq!(at.to_string(), listen);
        drop(udp);
        break;
    }
}

/// A UDP socket on 127.0.0.1 whose port has a free TCP half (held until
/// this returns), and its address.
fn udp_port_with_tcp_free() -> (std::net::UdpSocket, String) {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = tcp.local_addr().unwrap();
        if let Ok(udp) = std::net::UdpSocket::bind(at) {
            return (udp, at.to_string());
        }
    }
}

/// A tracker on `listen` that should fail at once: its exit code and
/// stderr (or a test failure after 10 s instead of a hang).
fn tracker_on(cwd: &Path, listen: &str) -> (i32, String) {
    let child = shoal_command()
        .args(["tracker", "--listen", listen])
        .current_dir(cwd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let r = finish(child, 10, "a tracker on a port in use");
    (r.status.code().unwrap_or(-1), r.stderr)
}

/// A seed of private torrents only starts no DHT node (BEP 27); a public
/// one does.
#[test]
fn only_public_torrents_start_the_dht() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("data.bin"), &bytes(5, 1 << 20));
    shoal_ok(d, &["create", "data.bin", "-p", "-o", "private.torrent"]);
    shoal_ok(d, &["create", "data.bin", "-o", "public.torrent"]);
    for (torrent, dht) in [("private.torrent", false), ("public.torrent", true)] {
        let mut child = shoal_command()
            .env_remove("SHOAL_NO_DHT")
            .env("RUST_LOG", "shoal=debug")
            .env("XDG_STATE_HOME", d.join("state"))
            .args([
                "seed",
                torrent,
                "data.bin",
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
            ])
            .args(["--dht-bootstrap", "none"])
            .current_dir(d)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let _child = Killed(child);
        let mut said = Vec::new();
        for line in lines {
            let line = line.unwrap();
            let done = line.contains("listening on");
            said.push(line);
            if done {
                break;
            }
        }
        let started = said.iter().any(|l| l.contains("DHT node on UDP"));
        assert_eq!(started, dht, "{torrent}: {said:#?}");
    }
}

/// `shoal seed` hashes data once: a second seed of unchanged files trusts
/// what it remembered (as does a seed of what `shoal download` wrote), a
/// changed file is hashed again, and `--recheck` always hashes.
#[test]
fn seed_trusts_data_it_checked_until_a_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_tree(&d.join("seed/tree"));
    // 6 MiB more: 384 blocks.
    write(&d.join("seed/tree/big.bin"), &bytes(4, 6 << 20));
    shoal_ok(d, &["create", "seed/tree", "-l", "16", "-o", "t.torrent"]);
    let state = d.join("state");
    let env = [("XDG_STATE_HOME", state.as_path())];
    let seed = |data: &str, extra: &[&str]| {
        let mut args = vec!["seed", "t.torrent", data, "--port", "0"];
        args.extend_from_slice(extra);
        Shoal::start_with(d, "seed", &args, &env)
    };
    let trusted = |s: &Shoal| s.line_with("not hashed again");

    let mut first = seed("seed/tree", &[]);
    assert_eq!(trusted(&first), None, "nothing to trust yet");
    first.interrupt(10);
    let mut second = seed("seed/tree", &[]);
    let line = trusted(&second).expect("the second seed trusts the first check");
    assert!(line.contains("since the last check"), "{line}");
    // What it seeds is right: a download from it is byte for byte.
    let peer = second.addr();
    let mut dl = Shoal::start_with(
        d,
        "download",
        &[
            "download",
            "t.torrent",
            "-o",
            "out",
            "--port",
            "0",
            "--peer",
            &peer,
            "-x",
            "--json",
        ],
        &env,
    );
    let (status, _) = dl.finish(60);
    assert!(status.success());
    same_tree(&d.join("seed/tree"), &d.join("out/tree"));
    second.interrupt(10);
    // The download's own resume file vouches for what it wrote.
    let mut downloaded = seed("out/tree", &[]);
    let line = trusted(&downloaded).expect("the download's resume file is trusted");
    assert!(line.contains("since the download"), "{line}");
    downloaded.interrupt(10);
    let mut again = seed("seed/tree", &["--recheck"]);
    assert_eq!(trusted(&again), None, "--recheck hashes");
    again.interrupt(10);

    // A file changed since (its mtime with it): hashed again, and refused.
    let big = d.join("seed/tree/big.bin");
    let mut data = std::fs::read(&big).unwrap();
    data[4 << 20] ^= 1;
    std::fs::write(&big, &data).unwrap();
    let out = shoal_command()
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .args(["seed", "t.torrent", "seed/tree", "--port", "0"])
        .current_dir(d)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing to seed"), "{stderr}");
}

/// The one line on stderr of a failed run: "shoal: error: …" (ours) or
/// clap's "error: …" for usage, never a repeated cause or a bare
/// "No such file or directory".
fn one_error_line(args: &[&str], err: &str) {
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line please:\n{err}");
    assert!(
        lines[0].starts_with("shoal: error: ") || lines[0].starts_with("error: "),
        "{args:?}: {err}"
    );
    assert!(!err.contains("No such file"), "{args:?}: {err}");
    assert!(err.matches("os error").count() <= 1, "{args:?}: {err}");
}

/// #16: each mistake a new user made is answered with what is wrong, and
/// the exit status scripts expect: 2 for usage, 1 for the rest.
#[test]
fn mistakes_get_an_error_that_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("album/a.flac"), &bytes(1, 40_000));
    write(&d.join("album/b.flac"), &bytes(2, 30_000));
    let dead = format!("http://127.0.0.1:{}/announce", free_port());
    shoal_ok(d, &["create", "album", "-a", &dead, "-o", "album.torrent"]);
    write(&d.join("afile"), b"not a directory");
    write(
        &d.join("page.torrent"),
        b"\n<!DOCTYPE html>\n<html><head><title>Login</title></head><body>sign in</body></html>\n",
    );
    let magnet = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=x";
    let url = "https://tracker.example/download.php?id=7";
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["download", "album.torrent", "-o", "afile", "--port", "0"],
            1,
            "afile is not a directory",
        ),
        (
            &["verify", "album.torrent", "album/a.flac"],
            1,
            "this torrent is a directory",
        ),
        (
            &["seed", "album.torrent", "album/a.flac", "--port", "0"],
            1,
            "this torrent is a directory",
        ),
        (
            &["create", "album", "-l", "40"],
            2,
            "piece length exponent must be between 15 and 28",
        ),
        (
            &["tracker", "--listen", "no-such-host.invalid:6969"],
            2,
            "give an IP address",
        ),
        (
            &["download", "album.torrent", "--only", "9", "--port", "0"],
            2,
            "--only 9: the torrent has 2 files, numbered 0 to 1",
        ),
        (
            &["show", "page.torrent"],
            1,
            "page.torrent: this looks like a web page (HTML), not a .torrent",
        ),
        (&["verify", magnet], 1, "is a magnet link"),
        (
            &["seed", magnet, "album", "--port", "0"],
            1,
            "is a magnet link",
        ),
        (&["show", url], 1, "is a URL"),
        (&["verify", url], 1, "is a URL"),
        (&["seed", url, "--port", "0"], 1, "is a URL"),
        (&["download", url, "--port", "0"], 1, "is a URL"),
    ];
    for (args, code, needle) in cases {
        let (got, err) = stderr_of(d, args);
        assert_eq!(got, *code, "{args:?}:\n{err}");
        assert!(err.contains(needle), "{args:?}: want {needle:?} in:\n{err}");
        one_error_line(args, &err);
    }
    // Nothing was started, written or touched by the refused download.
    assert_eq!(std::fs::read(d.join("afile")).unwrap(), b"not a directory");
}

/// #16: a port in use is said once ("Address already in use (os error
/// 98)" used to come twice), for the peer port and the DHT's.
#[test]
fn a_port_in_use_is_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("data.bin"), &bytes(3, 50_000));
    shoal_ok(d, &["create", "data.bin", "-o", "t.torrent"]);
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = tcp.local_addr().unwrap().port().to_string();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port().to_string();
    // -q: the error alone (a second seed also says it trusts its check).
    let peer = ["seed", "t.torrent", "data.bin", "--bind", "127.0.0.1", "-q"];
    for extra in [
        &["--port", port.as_str()][..],
        &["--port", "0", "--dht-port", udp_port.as_str()],
    ] {
        let args = [&peer[..], extra].concat();
        let out = shoal_command()
            .args(&args)
            .env_remove("SHOAL_NO_DHT")
            .args(["--dht-bootstrap", "none"])
            .env("XDG_STATE_HOME", d.join("state"))
            .current_dir(d)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("cannot listen on"), "{args:?}: {err}");
        assert_eq!(err.matches("in use").count(), 1, "{args:?}: {err}");
        one_error_line(&args, &err);
    }
}

/// #16: `--listen localhost:PORT` is resolved, not refused as "invalid
/// socket address syntax".
#[test]
fn tracker_listen_takes_a_host_name() {
    let (_tracker, addr) = start_tracker("localhost:0", &[]);
    assert!(addr.ip().is_loopback(), "{addr}");
    let (status, _) = http_get(addr, "/stats.json");
    assert_eq!(status, 200);
}

/// #16: without -v or RUST_LOG, stderr is plain "shoal: …" lines — no
/// timestamps, levels or module paths; a tracker that is down is named
/// with its cause, not a 400-character announce URL; -q leaves the
/// error alone; -v brings back the detailed format.
#[test]
fn logs_are_plain_lines_and_quiet_means_errors_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("data.bin"), &bytes(4, 50_000));
    // Two tiers, both down: a UDP port and an HTTP one nobody serves; the
    // HTTP URL carries a passkey, which is not shown.
    let udp = format!("udp://127.0.0.1:{}", free_port());
    let http = format!("http://127.0.0.1:{}/announce", free_port());
    let with_key = format!("{http}?passkey=s3cret");
    shoal_ok(
        d,
        &[
            "create",
            "data.bin",
            "-a",
            &udp,
            "-a",
            &with_key,
            "-o",
            "t.torrent",
        ],
    );
    let run = |flags: &[&str]| {
        let out = shoal_command()
            .env_remove("RUST_LOG")
            .args(["download", "t.torrent", "-o", "out", "--port", "0"])
            .args(["--no-peers-timeout", "2s"])
            .args(flags)
            .current_dir(d)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{flags:?}");
        String::from_utf8(out.stderr).unwrap()
    };

    let err = run(&[]);
    for line in err.lines() {
        assert!(
            line.starts_with("shoal: "),
            "not a plain line: {line:?}\n{err}"
        );
        assert!(
            !line.contains(" INFO ") && !line.contains(" WARN ") && !line.contains("::"),
            "{line:?}"
        );
        assert!(
            !line.starts_with("shoal: 20") && !line.contains("Z "),
            "a timestamp: {line:?}"
        );
    }
    assert!(
        err.contains("shoal: downloading data.bin into out"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "shoal: warning: no tracker answered: {udp}: connection refused; {http}?…: connection refused"
        )),
        "{err}"
    );
    assert!(
        !err.contains("s3cret") && !err.contains("info_hash"),
        "{err}"
    );
    assert!(
        err.lines()
            .last()
            .unwrap()
            .starts_with("shoal: error: no peers found"),
        "{err}"
    );
    assert!(!err.lines().any(|l| l.trim_end().ends_with(';')), "{err}");

    let err = run(&["-q"]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("shoal: error: no peers found"), "{err}");

    let err = run(&["-v"]);
    assert!(
        err.contains(" INFO shoal::cmd::download: downloading data.bin"),
        "{err}"
    );
}

/// #16: counts say "1 file", "1 piece", never "file(s)".
#[test]
fn counts_are_singular_for_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("one.txt"), b"one");
    let out = shoal_ok(d, &["create", "one.txt"]);
    assert!(
        out.contains("(3 B in 1 file, 1 piece of 32.00 KiB)"),
        "{out}"
    );
    let show = shoal_ok(d, &["show", "one.txt.torrent"]);
    assert!(show.contains("in 1 file\n"), "{show}");
    let ok = shoal_ok(d, &["verify", "one.txt.torrent", "one.txt"]);
    assert!(ok.contains("(1 piece, 3 B)"), "{ok}");
    for text in [&out, &show, &ok] {
        assert!(!text.contains("(s)"), "{text}");
    }
}

/// The in-memory store keeps peers' ages in 16 bits: a longer timeout is a
/// usage error, not silently cut.
#[test]
fn a_peer_timeout_beyond_the_memory_stores_reach_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["--peer-timeout", "17h"][..], &["--interval", "10h"][..]] {
        let out = shoal_command()
            .args(["tracker", "--listen", "127.0.0.1:0"])
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("16h or less"), "{stderr}");
    }
}

/// What a user sees on an 80-column terminal: `shoal download` under
/// tmux, its tracker refusing connections. The bar stays one intact line
/// that says why nothing moves, the tracker's warning is a line of its own
/// (not cut into the bar, no stale bar copies), and after Ctrl-C no
/// fragment of the bar remains.
#[test]
fn the_bar_on_an_80_column_terminal_says_why_nothing_moves() {
    let Some(_) = Tmux::available() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    torrent_with_a_refusing_tracker(d, &bytes(3, 3 << 20));
    let tmux = Tmux::new(d);
    let command = format!(
        "cd '{}' && env SHOAL_NO_DHT=1 XDG_STATE_HOME='{}' '{}' download t.torrent -o out --port 0; echo EXITED $?; sleep 30",
        d.display(),
        d.join("state").display(),
        SHOAL
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-x",
        "80",
        "-y",
        "24",
        "-s",
        "t",
        &command,
    ]);
    // Joined lines (-J): a line that wrapped comes back as one longer line.
    let screen = || tmux.screen("t");
    let mut shown = String::new();
    wait_for(30, "the bar to say why nothing moves", || {
        shown = screen();
        shown
            .lines()
            .any(|l| l.contains("no peers yet: tracker connection refused; next try in"))
    });
    eprintln!("screen:\n{shown}");
    let lines: Vec<&str> = shown.lines().filter(|l| !l.trim().is_empty()).collect();
    for l in &lines {
        assert!(l.chars().count() <= 80, "a line wrapped: {l:?}");
    }
    let bars: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("no peers yet"))
        .collect();
    assert_eq!(bars.len(), 1, "one bar, no stale copies:\n{shown}");
    assert!(bars[0].trim_start().starts_with("0% ["), "{}", bars[0]);
    let warnings: Vec<&&str> = lines.iter().filter(|l| l.contains("warning:")).collect();
    assert_eq!(warnings.len(), 1, "{shown}");
    assert!(
        warnings[0].starts_with("shoal: warning: tracker http://127.0.0.1:"),
        "the warning is a line of its own: {}",
        warnings[0]
    );
    assert!(!warnings[0].contains('%'), "{}", warnings[0]);
    // Ctrl-C: the bar goes, the summary stays.
    tmux.run(&["send-keys", "-t", "t", "C-c"]);
    wait_for(20, "shoal to exit", || {
        shown = screen();
        shown.contains("EXITED")
    });
    eprintln!("after Ctrl-C:\n{shown}");
    assert!(shown.contains("EXITED 130"), "{shown}");
    assert!(
        !shown.contains("no peers yet"),
        "a bar fragment remains:\n{shown}"
    );
    assert!(
        shown.contains("shoal: incomplete: 0 B of 3.00 MiB"),
        "{shown}"
    );
}

/// `--only` by name and glob: the chosen files arrive byte-identical, the
/// others are never created (their bytes in shared pieces sit in
/// `.shoal/<hash>.parts`), and `verify` calls them "not selected", not
/// corrupt. `--list` prints the files without connecting anywhere; a name
/// or glob that matches nothing is a usage error. ~2000 blocks of 16 KiB,
/// 64 KiB pieces, every file boundary inside a piece.
#[test]
fn only_by_name_creates_only_the_chosen_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tree = d.join("seed/album");
    let files = [
        ("cd1/01.flac", 9_000_001),
        ("cd1/02.flac", 7_000_003),
        ("cd1/notes.txt", 1_234),
        ("cd2/01.flac", 12_000_007),
        ("cover.jpg", 5_000_011),
    ];
    for (n, (name, len)) in files.iter().enumerate() {
        write(&tree.join(name), &bytes(40 + n as u64, *len));
    }
    shoal_ok(d, &["create", "seed/album", "-l", "16", "-o", "t.torrent"]);

    // --list: index, size, path; exit 0; nobody dialed.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let peer = listener.local_addr().unwrap().to_string();
    let out = shoal(d, &["download", "t.torrent", "--list", "--peer", &peer]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    for (i, (name, _)) in files.iter().enumerate() {
        let line = listed.lines().nth(i).unwrap_or_default();
        assert!(
            line.trim_start().starts_with(&format!("{i} ")) && line.ends_with(&format!("  {name}")),
            "line {i}: {listed}"
        );
    }
    assert!(listener.accept().is_err(), "--list connected to a peer");
    assert!(!d.join("album").exists() && !d.join(".shoal").exists());

    // Unknown names and empty globs: exit 2, naming what was given.
    for bad in ["nope.mp3", "*.ogg", "cd3/*"] {
        let (code, err) = stderr_of(d, &["download", "t.torrent", "--only", bad, "--port", "0"]);
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains(&format!("--only '{bad}'")), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!d.join("album").exists());

    let seed = Shoal::seed(d, "seed/album", &[]);
    let mut dl = Shoal::download(
        d,
        "download",
        "out",
        &[
            "--no-trackers",
            "--peer",
            &seed.addr(),
            "--only",
            "cd1/02.*",
            "--only",
            "cover.jpg",
            "-x",
        ],
    );
    let (status, json) = dl.finish(120);
    assert!(status.success(), "download: {status}");
    assert_eq!(json["complete"], true, "{json}");
    for name in ["cd1/02.flac", "cover.jpg"] {
        same_file(&tree.join(name), &d.join("out/album").join(name));
    }
    assert_eq!(
        listing(&d.join("out/album")),
        listing(&d.join("out/album")) // the whole tree, for the message
            .into_iter()
            .filter(|f| ["cd1", "cd1/02.flac", "cover.jpg"].contains(&f.as_str()))
            .collect::<Vec<_>>(),
        "files not chosen were created"
    );
    for name in ["cd1/01.flac", "cd1/notes.txt", "cd2/01.flac"] {
        assert!(!d.join("out/album").join(name).exists(), "{name} created");
    }
    assert!(!d.join("out/album/cd2").exists());
    // The shared pieces' other bytes: a few pieces' worth, out of the way.
    let state: Vec<_> = std::fs::read_dir(d.join("out/.shoal"))
        .unwrap()
        .map(|e| e.unwrap())
        .collect();
    let parts = state
        .iter()
        .find(|e| e.file_name().to_string_lossy().ends_with(".parts"))
        .expect("no part file");
    let used = parts.metadata().unwrap().len();
    assert!(used <= 5 * 65536, "part file of {used} bytes");

    // verify: the chosen files match, the others are "not selected".
    let out = shoal(d, &["verify", "t.torrent", "out"]);
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert_eq!(said.matches("not selected").count(), 3, "{said}");
    assert!(
        !said.contains("corrupt") && !said.contains("missing"),
        "{said}"
    );
    assert!(said.contains("OK:"), "{said}");
    // show, given the download directory, knows the selection too.
    let shown = shoal_ok(d, &["show", "t.torrent", "out"]);
    assert_eq!(shown.matches("(not selected)").count(), 3, "{shown}");
    let json = show_json_with(d, &["show", "t.torrent", "out", "--json"]);
    let flags: Vec<bool> = json["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["selected"].as_bool().unwrap())
        .collect();
    assert_eq!(flags.iter().filter(|&&f| !f).count(), 3, "{json}");
    assert!(!shoal_ok(d, &["show", "t.torrent"]).contains("not selected"));

    // Run again: everything is already here, trusted from the resume file.
    let mut again = Shoal::download(
        d,
        "again",
        "out",
        &[
            "--no-trackers",
            "--peer",
            &seed.addr(),
            "--only",
            "1,cover.jpg",
            "-x",
        ],
    );
    let (status, json) = again.finish(60);
    assert!(status.success(), "again: {status}");
    assert_eq!(json["complete"], true, "{json}");
    assert_eq!(json["downloaded"].as_u64(), Some(0), "{json}");
    drop(seed);
}

fn show_json_with(cwd: &Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&shoal_ok(cwd, args)).unwrap()
}

/// `shoal download … &` from an interactive shell draws no bar over the
/// prompt (it is not in the terminal's foreground process group); its log
/// lines still show. The same download in the foreground draws one.
#[test]
fn a_download_in_the_background_draws_no_bar() {
    let Some(_) = Tmux::available() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    torrent_with_a_refusing_tracker(d, &bytes(5, 1 << 20));
    let tmux = Tmux::new(d);
    // An interactive shell: it puts a job started with & in a process
    // group of its own, as a user's shell does.
    tmux.run(&[
        "new-session",
        "-d",
        "-x",
        "100",
        "-y",
        "30",
        "-s",
        "b",
        "bash --norc --noprofile -i",
    ]);
    let run = |out: &str, background: bool| {
        format!(
            "cd '{}' && SHOAL_NO_DHT=1 XDG_STATE_HOME='{}' '{}' download t.torrent -o {out} --port 0{}",
            d.display(),
            d.join("state").display(),
            SHOAL,
            if background { " &" } else { "" }
        )
    };
    let screen = || tmux.screen("b");
    tmux.run(&["send-keys", "-t", "b", &run("bg", true), "Enter"]);
    wait_for(30, "the background download's tracker warning", || {
        screen().contains("warning: tracker")
    });
    // Its bar would be up within a tick (0.5 s) of the warning; watch for
    // four ticks.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < until {
        let shown = screen();
        assert!(
            !shown.contains("no peers yet"),
            "a bar over the prompt:\n{shown}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    tmux.run(&["send-keys", "-t", "b", "kill %1", "Enter"]);
    // The control: in the foreground the same download draws its bar.
    tmux.run(&["send-keys", "-t", "b", "clear", "Enter"]);
    tmux.run(&["send-keys", "-t", "b", &run("fg", false), "Enter"]);
    wait_for(30, "the foreground download's bar", || {
        screen().contains("no peers yet")
    });
    tmux.run(&["send-keys", "-t", "b", "C-c", ""]);
}

/// `d/t.torrent` of `d/data.bin` (`data`), its tracker a port nobody
/// listens on: every announce is refused.
fn torrent_with_a_refusing_tracker(d: &Path, data: &[u8]) {
    write(&d.join("data.bin"), data);
    let refused = free_port();
    let announce = format!("http://127.0.0.1:{refused}/announce");
    shoal_ok(
        d,
        &["create", "data.bin", "-a", &announce, "-o", "t.torrent"],
    );
}
