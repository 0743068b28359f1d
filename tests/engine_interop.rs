//! Several torrents in one shoal process, against python3-libtorrent and
//! itself, on loopback:
//!
//! - `shoal seed --data DIR a.torrent b.torrent … --json` seeds every
//!   torrent on one port (each one's content at DIR/<torrent name>), says
//!   "listening on IP:PORT;" on stderr like a one-torrent seed, and on
//!   SIGINT prints one JSON object per line per torrent (`name`,
//!   `info_hash` in lowercase hex, `uploaded`, `complete`, …).
//! - `shoal download a.torrent b.torrent -o OUT -x --json …` downloads them
//!   all at once (each to OUT/<torrent name>), prints one JSON object per
//!   line per torrent (`name`, `info_hash`, `complete`, `size`,
//!   `downloaded`, `hash_fails`, …) and exits 0 once all are complete.
//!
//! The three test torrents differ in content, layout and piece length, so
//! a block of one served for another fails its hash check.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

/// The test torrents: file name, torrent name (the content under data/),
/// log2 of the piece length.
const TORRENTS: [(&str, &str, &str); 3] = [
    ("a.torrent", "alpha", "15"),
    ("b.torrent", "beta.bin", "16"),
    ("c.torrent", "gamma", "18"),
];

/// Makes data/alpha (a tree with empty files and a 3 MiB file), data/beta.bin
/// (one file of 4 MiB and a bit) and data/gamma (two files, 5 MiB and a bit
/// in all) under `d`, and a.torrent, b.torrent, c.torrent for them (no
/// trackers), with pieces of 32 KiB, 64 KiB and 256 KiB.
fn make_torrents(d: &Path) {
    let alpha = make_tree(&d.join("data/alpha"));
    write(
        &alpha.join("a/big.bin"),
        &bytes(11, 3 * 1024 * 1024 + 1_001),
    );
    write(&d.join("data/beta.bin"), &bytes(12, 4 * 1024 * 1024 + 777));
    write(&d.join("data/gamma/x.bin"), &bytes(13, 5 * 1024 * 1024 + 3));
    write(&d.join("data/gamma/sub/y.bin"), &bytes(14, 100_000));
    for (file, name, log2) in TORRENTS {
        shoal_ok(
            d,
            &["create", &format!("data/{name}"), "-l", log2, "-o", file],
        );
    }
}

/// A torrent as `shoal show` sees it.
#[derive(Debug)]
struct Meta {
    name: String,
    size: u64,
}

/// The torrents in `files` (under `d`) by info hash.
fn metas(d: &Path, files: &[&str]) -> HashMap<String, Meta> {
    files
        .iter()
        .map(|f| {
            let j = show_json(d, f);
            let meta = Meta {
                name: j["name"].as_str().unwrap().to_string(),
                size: j["total_size"].as_u64().unwrap(),
            };
            (j["info_hash"].as_str().unwrap().to_string(), meta)
        })
        .collect()
}

/// Every non-empty line of `stdout`, as JSON.
fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON {l:?}: {e}")))
        .collect()
}

/// One summary per torrent in `want`, keyed by its info hash, each with
/// the torrent's name.
fn by_torrent<'a>(
    summaries: &'a [serde_json::Value],
    want: &HashMap<String, Meta>,
) -> HashMap<String, &'a serde_json::Value> {
    assert_eq!(
        summaries.len(),
        want.len(),
        "one summary per torrent: {summaries:?}"
    );
    let mut got = HashMap::new();
    for j in summaries {
        let hash = j["info_hash"].as_str().unwrap_or_else(|| panic!("{j}"));
        let meta = want
            .get(hash)
            .unwrap_or_else(|| panic!("summary for an unknown torrent: {j}"));
        assert_eq!(j["name"], meta.name.as_str(), "{j}");
        assert!(got.insert(hash.to_string(), j).is_none(), "twice: {j}");
    }
    got
}

/// Python for libtorrent leeching several torrents at once: `mleech.py
/// PEER_PORT SECONDS SAVE_DIR TORRENT…` adds them all to one session,
/// connects each to 127.0.0.1:PEER_PORT, prints "done NAME DOWNLOADED" as
/// each completes; exits 0 when all have, or 1 after SECONDS (with a
/// "timeout NAME …" line for each unfinished one).
const MULTI_LEECH: &str = r#"
import libtorrent as lt, sys, time
ses = lt.session({"listen_interfaces": "127.0.0.1:0", "enable_dht": False, "enable_lsd": False,
    "enable_upnp": False, "enable_natpmp": False, "enable_outgoing_utp": False,
    "enable_incoming_utp": False, "allow_multiple_connections_per_ip": True})
peer = ("127.0.0.1", int(sys.argv[1]))
deadline = time.time() + float(sys.argv[2])
hs = []
for t in sys.argv[4:]:
    p = lt.add_torrent_params()
    p.ti = lt.torrent_info(t)
    p.save_path = sys.argv[3]
    hs.append(ses.add_torrent(p))
last_connect, done = {}, set()
while time.time() < deadline and len(done) < len(hs):
    for i, h in enumerate(hs):
        s = h.status()
        if s.is_seeding:
            if i not in done:
                print("done", s.name, s.total_payload_download, flush=True)
                done.add(i)
        elif s.num_peers == 0 and time.time() - last_connect.get(i, 0) > 2:
            h.connect_peer(peer)
            last_connect[i] = time.time()
    time.sleep(0.05)
for h in hs:
    s = h.status()
    if not s.is_seeding:
        print("timeout", s.name, s.state, s.progress, s.num_peers, s.errc.message(), flush=True)
sys.exit(0 if len(done) == len(hs) else 1)
"#;

/// Python for a libtorrent seed of several torrents on one port: `mseed.py
/// LISTEN SAVE_DIR TORRENT…` prints "seeding PORT" once all seed, then runs
/// until its stdin closes.
const MULTI_SEED: &str = r#"
import libtorrent as lt, sys, time
ses = lt.session({"listen_interfaces": sys.argv[1], "enable_dht": False, "enable_lsd": False,
    "enable_upnp": False, "enable_natpmp": False, "enable_outgoing_utp": False,
    "enable_incoming_utp": False, "allow_multiple_connections_per_ip": True})
hs = []
for t in sys.argv[3:]:
    p = lt.add_torrent_params()
    p.ti = lt.torrent_info(t)
    p.save_path = sys.argv[2]
    p.flags = lt.torrent_flags.seed_mode
    hs.append(ses.add_torrent(p))
# A torrent takes connections only once it seeds (see LIBTORRENT_SEED).
deadline = time.time() + 30
while any(h.status().state != lt.torrent_status.seeding for h in hs) and time.time() < deadline:
    time.sleep(0.01)
print("seeding", ses.listen_port(), flush=True)
sys.stdin.read()
"#;

/// Starts MULTI_SEED in `d` for `torrents` (content under d/data) on
/// 127.0.0.1; returns it (killed on drop) and its port once all seed.
fn start_libtorrent_multi_seed(d: &Path, torrents: &[&str]) -> (Killed, u16) {
    use std::io::BufRead;
    std::fs::write(d.join("mseed.py"), MULTI_SEED).unwrap();
    let mut seed = Killed(
        Command::new("/usr/bin/python3")
            .args(["mseed.py", "127.0.0.1:0", "data"])
            .args(torrents)
            .current_dir(d)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the libtorrent seed"),
    );
    let mut line = String::new();
    std::io::BufReader::new(seed.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("seeding ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("libtorrent seed said {line:?}"));
    (seed, port)
}

/// The download of torrent `name` under `out` has the same data as under
/// `data`; with `exact`, also the same empty files and folders (libtorrent
/// 2.0 creates none).
fn check_copy(d: &Path, name: &str, out: &str, exact: bool) {
    let (a, b) = (d.join("data").join(name), d.join(out).join(name));
    if a.is_file() {
        same_file(&a, &b);
    } else if exact {
        same_tree(&a, &b);
    } else {
        compare_nonempty(&a, &b);
    }
}

/// One `shoal seed --data` process serves three torrents (different
/// content and piece lengths) on one port to a libtorrent session that
/// leeches all three at once; every one completes with the right data, and
/// the seed's per-torrent summaries name them and count their uploads.
#[test]
fn one_shoal_seed_serves_three_torrents_to_libtorrent() {
    if !have_libtorrent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_torrents(d);
    let files = ["a.torrent", "b.torrent", "c.torrent"];
    let want = metas(d, &files);
    let mut args = vec!["seed", "--data", "data"];
    args.extend(files);
    args.extend([
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--no-trackers",
        "--json",
    ]);
    let mut seed = Shoal::start(d, "seed", &args);
    std::fs::write(d.join("mleech.py"), MULTI_LEECH).unwrap();
    let started = Instant::now();
    let child = Command::new("/usr/bin/python3")
        .args(["mleech.py", &seed.port.to_string(), "45", "out"])
        .args(files)
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the libtorrent leecher");
    let run = finish(child, 50, "the libtorrent leecher");
    eprint!("libtorrent:\n{}", run.stdout);
    assert!(
        run.status.success(),
        "libtorrent did not finish all three ({}):\n{}{}",
        run.status,
        run.stdout,
        run.stderr
    );
    eprintln!("all three in {:?}", started.elapsed());
    let (status, summaries) = seed.interrupt_all(20);
    assert!(status.success(), "shoal seed ended with {status}");
    for (hash, j) in by_torrent(&summaries, &want) {
        assert_eq!(j["complete"], true, "{j}");
        assert!(j["uploaded"].as_u64().unwrap() >= want[&hash].size, "{j}");
    }
    for (_, name, _) in TORRENTS {
        check_copy(d, name, "out", false);
    }
}

/// `shoal download` of `files` at once from the peer at `peer`: it exits 0
/// with one complete, verified summary per torrent, and the data.
fn shoal_downloads_at_once(d: &Path, files: &[&str], peer: &str) {
    let want = metas(d, files);
    let mut args = vec!["download"];
    args.extend(files);
    args.extend([
        "-o",
        "out",
        "--port",
        "0",
        "--no-trackers",
        "--peer",
        peer,
        "-x",
        "--json",
        "-q",
    ]);
    let started = Instant::now();
    let child = shoal_command()
        .args(&args)
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shoal download");
    let run = finish(child, 60, "shoal download");
    assert!(
        run.status.success(),
        "shoal download failed ({}):\n{}{}",
        run.status,
        run.stdout,
        run.stderr
    );
    eprintln!("downloaded in {:?}:\n{}", started.elapsed(), run.stdout);
    let summaries = json_lines(&run.stdout);
    for (hash, j) in by_torrent(&summaries, &want) {
        let size = want[&hash].size;
        assert_eq!(j["complete"], true, "{j}\n{}", run.stderr);
        assert_eq!(j["size"], size, "{j}");
        assert!(j["downloaded"].as_u64().unwrap() >= size, "{j}");
        assert_eq!(j["hash_fails"], 0, "{j}");
    }
    for name in want.values().map(|m| &m.name) {
        check_copy(d, name, "out", true);
    }
}

/// `shoal download` takes two torrents at once from one libtorrent seed
/// that serves both on one port.
#[test]
fn shoal_downloads_two_torrents_at_once_from_one_libtorrent_seed() {
    if !have_libtorrent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_torrents(d);
    let files = ["a.torrent", "b.torrent"];
    let (_seed, port) = start_libtorrent_multi_seed(d, &files);
    shoal_downloads_at_once(d, &files, &format!("127.0.0.1:{port}"));
}

/// `shoal download` takes two torrents at once from one `shoal seed
/// --data` serving both on one port; the seed's summaries count the
/// uploads of each.
#[test]
fn shoal_downloads_two_torrents_at_once_from_one_shoal_seed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_torrents(d);
    let files = ["b.torrent", "c.torrent"];
    let want = metas(d, &files);
    let mut args = vec!["seed", "--data", "data"];
    args.extend(files);
    args.extend([
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--no-trackers",
        "--json",
    ]);
    let mut seed = Shoal::start(d, "seed", &args);
    shoal_downloads_at_once(d, &files, &seed.addr());
    let (status, summaries) = seed.interrupt_all(20);
    assert!(status.success(), "shoal seed ended with {status}");
    for (hash, j) in by_torrent(&summaries, &want) {
        assert_eq!(j["complete"], true, "{j}");
        assert!(j["uploaded"].as_u64().unwrap() >= want[&hash].size, "{j}");
    }
}
