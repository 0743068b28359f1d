//! `shoal create` against the programs people use today: the same info hash
//! as mktorrent 1.1, torrents from transmission-create read correctly, and
//! shoal's torrents loaded by libtorrent with the same info hash.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn mktorrent(cwd: &Path, args: &[&str]) {
    let out = Command::new("mktorrent")
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run mktorrent");
    assert!(
        out.status.success(),
        "mktorrent {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Makes the same torrent with mktorrent and shoal (flags `args`, content
/// `target`), and checks that everything but "created by" agrees.
fn same_as_mktorrent(cwd: &Path, target: &str, args: &[&str]) {
    let mut mk_args = vec!["-d", "-o", "mk.torrent"];
    mk_args.extend_from_slice(args);
    mk_args.push(target);
    let _ = std::fs::remove_file(cwd.join("mk.torrent"));
    mktorrent(cwd, &mk_args);

    let mut sh_args = vec!["create", "-f", "-d", "-o", "shoal.torrent"];
    sh_args.extend_from_slice(args);
    sh_args.push(target);
    let stdout = shoal_ok(cwd, &sh_args);

    let mut mk = show_json(cwd, "mk.torrent");
    let mut sh = show_json(cwd, "shoal.torrent");
    assert_eq!(
        sh["info_hash"], mk["info_hash"],
        "info hash differs from mktorrent's for {target} {args:?}"
    );
    assert!(stdout.contains(mk["info_hash"].as_str().unwrap()));
    assert_eq!(mk["created_by"], "mktorrent 1.1");
    assert!(sh["created_by"].as_str().unwrap().starts_with("shoal "));
    for v in [&mut mk, &mut sh] {
        v.as_object_mut().unwrap().remove("created_by");
    }
    assert_eq!(
        sh, mk,
        "metadata differs from mktorrent's for {target} {args:?}"
    );
}

#[test]
fn single_file_matches_mktorrent() {
    if !have("mktorrent") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("movie.bin"), &bytes(7, 100_000));
    same_as_mktorrent(dir.path(), "movie.bin", &["-l", "15"]);
    same_as_mktorrent(
        dir.path(),
        "movie.bin",
        &["-l", "16", "-a", "http://t.example/announce"],
    );
    // A size that is an exact multiple of the piece length.
    write(&dir.path().join("exact.bin"), &bytes(8, 65_536));
    same_as_mktorrent(dir.path(), "exact.bin", &["-l", "15"]);
}

#[test]
fn multi_file_tree_matches_mktorrent() {
    if !have("mktorrent") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_tree(&dir.path().join("tree"));
    same_as_mktorrent(dir.path(), "tree", &["-l", "15"]);
    same_as_mktorrent(dir.path(), "tree/", &["-l", "17", "-n", "renamed"]);
    // A directory holding a single file is still a multi-file torrent.
    write(&dir.path().join("solo/only.txt"), b"only\n");
    same_as_mktorrent(dir.path(), "solo", &["-l", "15"]);
    // Enough pieces that several are hashed side by side (16 at a time on
    // AVX-512), in batches that cross file boundaries.
    write(&dir.path().join("many/a.bin"), &bytes(11, 700_001));
    write(&dir.path().join("many/b/c.bin"), &bytes(12, 300_000));
    write(&dir.path().join("many/d"), b"x");
    write(&dir.path().join("many/e.bin"), &bytes(13, 65_536));
    same_as_mktorrent(dir.path(), "many", &["-l", "15"]);
    same_as_mktorrent(dir.path(), "many/a.bin", &["-l", "15"]);
    // Only empty files: zero pieces.
    write(&dir.path().join("hollow/e1"), b"");
    write(&dir.path().join("hollow/sub/e2"), b"");
    same_as_mktorrent(dir.path(), "hollow", &["-l", "15"]);
}

#[test]
fn flags_match_mktorrent() {
    if !have("mktorrent") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_tree(&dir.path().join("tree"));
    same_as_mktorrent(
        dir.path(),
        "tree",
        &[
            "-l",
            "15",
            "-p",
            "-s",
            "MYSITE",
            "-a",
            "http://t1.example/announce,http://t2.example/announce",
            "-a",
            "udp://t3.example:6969",
            "-w",
            "http://w1.example/",
            "-w",
            "http://w2.example/,http://w3.example/",
            "-c",
            "a comment",
        ],
    );
    // One web seed is written as a string, several as a list: both read back.
    same_as_mktorrent(
        dir.path(),
        "tree",
        &["-l", "15", "-w", "http://w.example/", "-p"],
    );
    // A single tracker: no announce-list.
    same_as_mktorrent(
        dir.path(),
        "tree",
        &["-l", "15", "-a", "http://t.example/announce", "-s", "S"],
    );
}

/// shoal reads what transmission-create makes, and transmission-show reads
/// what shoal makes; both agree on the info hash.
#[test]
fn transmission_agrees_on_info_hashes() {
    if !have("transmission-create") || !have("transmission-show") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_tree(&dir.path().join("tree"));
    write(&dir.path().join("single.bin"), &bytes(9, 50_000));
    let transmission_hash = |torrent: &str| -> String {
        let out = Command::new("transmission-show")
            .arg(torrent)
            .current_dir(dir.path())
            .output()
            .expect("run transmission-show");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.lines()
            .find_map(|l| l.trim().strip_prefix("Hash: "))
            .unwrap_or_else(|| panic!("no Hash: line in transmission-show output:\n{text}"))
            .trim()
            .to_string()
    };
    for (target, torrent) in [
        ("tree", "tr-tree.torrent"),
        ("single.bin", "tr-single.torrent"),
    ] {
        let out = Command::new("transmission-create")
            .args([
                "-o",
                torrent,
                "-t",
                "http://t.example/announce",
                "-s",
                "32",
                target,
            ])
            .current_dir(dir.path())
            .output()
            .expect("run transmission-create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let shown = show_json(dir.path(), torrent);
        assert_eq!(
            shown["info_hash"].as_str().unwrap(),
            transmission_hash(torrent)
        );
        assert_eq!(shown["trackers"][0][0], "http://t.example/announce");
        // And shoal verifies transmission's torrent against the data.
        shoal_ok(dir.path(), &["verify", torrent, target]);

        let ours = format!("shoal-{torrent}");
        shoal_ok(dir.path(), &["create", "-l", "15", "-o", &ours, target]);
        assert_eq!(
            show_json(dir.path(), &ours)["info_hash"].as_str().unwrap(),
            transmission_hash(&ours)
        );
    }
}

/// libtorrent loads shoal's torrents and computes the same info hash, file
/// list and piece count.
#[test]
fn libtorrent_loads_shoal_torrents() {
    if !have_libtorrent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    make_tree(&dir.path().join("tree"));
    write(&dir.path().join("single.bin"), &bytes(10, 99_999));
    let cases: [(&str, &[&str]); 3] = [
        ("tree", &["-l", "15"]),
        ("single.bin", &["-a", "http://t.example/announce"]),
        (
            "tree",
            &[
                "-l",
                "16",
                "-p",
                "-s",
                "SRC",
                "-a",
                "http://a/,http://b/",
                "-a",
                "http://c/",
                "-w",
                "http://w/",
            ],
        ),
    ];
    for (i, (target, flags)) in cases.iter().enumerate() {
        let torrent = format!("t{i}.torrent");
        let mut args = vec!["create", "-o", &torrent];
        args.extend_from_slice(flags);
        args.push(target);
        shoal_ok(dir.path(), &args);
        let shown = show_json(dir.path(), &torrent);
        let script = format!(
            "import libtorrent as lt, json\n\
             ti = lt.torrent_info({torrent:?})\n\
             fs = ti.files()\n\
             print(json.dumps({{'hash': str(ti.info_hash()), 'pieces': ti.num_pieces(),\
             'size': ti.total_size(), 'private': ti.priv(),\
             'files': [fs.file_path(j) for j in range(fs.num_files())],\
             'trackers': sorted([t.tier, t.url] for t in ti.trackers())}}))"
        );
        let out = Command::new("/usr/bin/python3")
            .args(["-c", &script])
            .current_dir(dir.path())
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lt: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(lt["hash"], shown["info_hash"], "case {i}");
        assert_eq!(lt["pieces"], shown["piece_count"], "case {i}");
        assert_eq!(lt["size"], shown["total_size"], "case {i}");
        assert_eq!(lt["private"], shown["private"], "case {i}");
        // libtorrent shuffles each tier (BEP 12), so compare (tier, url) sorted.
        let mut trackers: Vec<serde_json::Value> = Vec::new();
        for (tier, urls) in shown["trackers"].as_array().unwrap().iter().enumerate() {
            for url in urls.as_array().unwrap() {
                trackers.push(serde_json::json!([tier, url]));
            }
        }
        trackers.sort_by_key(|t| t.to_string());
        assert_eq!(lt["trackers"].as_array().unwrap(), &trackers, "case {i}");
        let files: Vec<String> = shown["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                let p = f["path"].as_str().unwrap();
                if shown["multi_file"] == true {
                    format!("{}/{p}", shown["name"].as_str().unwrap())
                } else {
                    p.to_string()
                }
            })
            .collect();
        let lt_files: Vec<String> = lt["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_string())
            .collect();
        assert_eq!(lt_files, files, "case {i}");
    }
}

/// `--exclude` leaves junk out: the torrent of a tree with `.DS_Store`,
/// `Thumbs.db` and a `.git` directory, made with those excluded, is the
/// one mktorrent makes of the same tree without them. Without `--exclude`
/// they are in, as in mktorrent's.
#[test]
fn exclusions_give_mktorrents_torrent_of_the_tree_without_them() {
    if !have("mktorrent") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_tree(&d.join("clean/album"));
    make_tree(&d.join("messy/album"));
    write(&d.join("messy/album/.DS_Store"), b"mac junk");
    write(&d.join("messy/album/a/b/Thumbs.db"), b"windows junk");
    write(&d.join("messy/album/.git/objects/ab/cdef"), &bytes(7, 5000));
    write(&d.join("messy/album/a/notes.nfo"), b"release notes");
    mktorrent(d, &["-d", "-l", "15", "-o", "clean.torrent", "clean/album"]);
    shoal_ok(
        d,
        &[
            "create",
            "-d",
            "-l",
            "15",
            "-o",
            "excluded.torrent",
            "--exclude",
            ".DS_Store",
            "--exclude",
            "Thumbs.db",
            "--exclude",
            ".git",
            "--exclude",
            "*.nfo",
            "messy/album",
        ],
    );
    let clean = show_json(d, "clean.torrent");
    let excluded = show_json(d, "excluded.torrent");
    assert_eq!(excluded["info_hash"], clean["info_hash"]);
    // By default nothing is left out: the same as mktorrent's of the mess.
    same_as_mktorrent(d, "messy/album", &["-l", "15"]);
    let all = show_json(d, "shoal.torrent");
    assert_eq!(
        all["files"].as_array().unwrap().len(),
        clean["files"].as_array().unwrap().len() + 4
    );
}
