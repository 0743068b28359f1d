//! Magnet links (BEP 9) against real clients: shoal fetches a magnet's
//! metadata from libtorrent seeds, and libtorrent and aria2c fetch a
//! magnet from `shoal seed`; a magnet with trackers only; a killed magnet
//! download that restarts from the metadata it saved. (Transmission, which
//! needs a network namespace, is in client_interop.rs with its helpers.)
//!
//! The content is 40 MiB in 16 KiB pieces: 2560 pieces, an info dictionary
//! of about 50 KiB, so the metadata itself is several 16 KiB pieces and a
//! fetch can take them from more than one peer.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

const SIZE: usize = 40 * 1024 * 1024 + 12_345;

/// `d/seed/data.bin` and its torrent `d/t.torrent` (pieces of 2^`log2`
/// bytes, the trackers given); returns the magnet link `shoal show` gives.
fn make(d: &Path, log2: &str, trackers: &[&str]) -> String {
    write(&d.join("seed/data.bin"), &bytes(11, SIZE));
    let mut args = vec!["create", "seed/data.bin", "-l", log2, "-o", "t.torrent"];
    for t in trackers {
        args.extend(["-a", t]);
    }
    shoal_ok(d, &args);
    let j = show_json(d, "t.torrent");
    j["magnet"].as_str().unwrap().to_string()
}

/// `d/seed/data/` (a 40 MiB file and 1500 small ones) and its torrent, in
/// 32 KiB pieces: an info dictionary of about 130 KiB, so its metadata is
/// eight or nine pieces; returns the magnet link.
fn make_many_files(d: &Path) -> String {
    let root = d.join("seed/data");
    write(&root.join("data.bin"), &bytes(11, SIZE));
    for i in 0..1500 {
        let name = format!("notes/a-file-with-a-name-long-enough-to-matter-{i:04}.txt");
        write(&root.join(name), &bytes(i, 1000 + i as usize));
    }
    shoal_ok(d, &["create", "seed/data", "-l", "15", "-o", "t.torrent"]);
    show_json(d, "t.torrent")["magnet"]
        .as_str()
        .unwrap()
        .to_string()
}

fn hex_hash(d: &Path) -> String {
    show_json(d, "t.torrent")["info_hash"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Three libtorrent seeds, and a magnet whose only peer source is `x.pe`
/// naming them: shoal fetches the metadata, from more than one of them,
/// then the data.
#[test]
fn shoal_fetches_a_magnet_from_three_libtorrent_seeds() {
    if !have_libtorrent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut magnet = make_many_files(d);
    let mut seeds = Vec::new();
    for _ in 0..3 {
        let (seed, port) = start_libtorrent_seed(d);
        magnet.push_str(&format!("&x.pe=127.0.0.1:{port}"));
        seeds.push(seed);
    }
    let started = Instant::now();
    let mut dl = Shoal::start(
        d,
        "download",
        &[
            "download",
            &magnet,
            "-o",
            "out",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "-x",
            "--json",
        ],
    );
    let (status, j) = dl.finish(90);
    eprintln!("shoal: {j} in {:?}", started.elapsed());
    assert!(status.success(), "shoal download failed: {status}");
    assert_eq!(j["complete"], true, "{j}");
    let line = dl.line_with("shoal: metadata:").expect("a metadata line");
    let from: usize = line
        .split(" from ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no peer count in {line:?}"));
    let pieces: usize = line
        .split(" in ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no piece count in {line:?}"));
    assert!(pieces >= 6, "{line}");
    assert!(from > 1, "all the metadata came from one seed: {line}");
    same_tree(&d.join("seed/data"), &d.join("out/data"));
    // What it saved is the torrent itself: the same info hash.
    let saved = format!("out/.shoal/{}.torrent", hex_hash(d));
    assert_eq!(show_json(d, &saved)["info_hash"], hex_hash(d).as_str());
}

/// libtorrent: add a magnet, dial the shoal seed, wait for the data.
const LIBTORRENT_MAGNET: &str = r#"
import libtorrent as lt, sys, time
ses = lt.session({"listen_interfaces": "127.0.0.1:0", "enable_dht": False, "enable_lsd": False,
    "enable_upnp": False, "enable_natpmp": False, "enable_outgoing_utp": False,
    "enable_incoming_utp": False, "allow_multiple_connections_per_ip": True})
p = lt.parse_magnet_uri(sys.argv[1])
p.save_path = sys.argv[2]
h = ses.add_torrent(p)
peer = ("127.0.0.1", int(sys.argv[3]))
start = time.time()
deadline = start + float(sys.argv[4])
metadata = False
last_dial = 0
while time.time() < deadline:
    s = h.status()
    if s.has_metadata and not metadata:
        metadata = True
        print("metadata %.3f %s" % (time.time() - start, h.torrent_file().info_hash()), flush=True)
    if s.is_seeding:
        print("done %.3f" % (time.time() - start), flush=True)
        sys.exit(0)
    if s.num_peers == 0 and time.time() - last_dial > 1:
        h.connect_peer(peer)
        last_dial = time.time()
    time.sleep(0.02)
print("timeout", h.status().state, h.status().progress, flush=True)
sys.exit(1)
"#;

/// libtorrent fetches a magnet (hash only, no tracker, no peer: it is told
/// the seed's address) from `shoal seed`, metadata and data.
#[test]
fn libtorrent_fetches_a_magnet_from_shoal() {
    if !have_libtorrent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let magnet = make(d, "16", &[]);
    let mut seed = Shoal::seed(
        d,
        "seed/data.bin",
        &["--bind", "127.0.0.1", "--no-trackers", "--json"],
    );
    std::fs::write(d.join("magnet.py"), LIBTORRENT_MAGNET).unwrap();
    let child = Command::new("/usr/bin/python3")
        .args(["magnet.py", &magnet, "out", &seed.port.to_string(), "60"])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start libtorrent");
    let run = finish(child, 70, "libtorrent");
    eprint!("libtorrent:\n{}{}", run.stdout, run.stderr);
    assert!(run.status.success(), "libtorrent did not finish");
    assert!(
        run.stdout.contains("metadata ") && run.stdout.contains(&hex_hash(d)),
        "libtorrent got no metadata with our hash"
    );
    same_file(&d.join("seed/data.bin"), &d.join("out/data.bin"));
    let (_, j) = seed.interrupt(20);
    assert!(j["uploaded"].as_u64().unwrap() >= SIZE as u64, "{j}");
}

/// aria2c fetches a magnet from `shoal seed`, finding it through `shoal
/// tracker`; it saves the metadata as a .torrent (`--bt-save-metadata`)
/// and downloads the data.
#[test]
fn aria2_fetches_a_magnet_from_shoal() {
    if !have("aria2c") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_tracker, addr) = start_tracker("127.0.0.1:0", &[]);
    let announce = format!("http://{addr}/announce");
    let magnet = make(d, "15", &[&announce]);
    assert!(magnet.contains("&tr="), "{magnet}");
    let _seed = Shoal::seed(d, "seed/data.bin", &["--json"]);
    wait_for(30, "shoal seed to announce", || {
        tracker_stats(addr)["seeders"] == 1
    });
    // aria2 saves the metadata into -d only if that directory exists
    // (it has no data to create it for yet).
    std::fs::create_dir_all(d.join("out")).unwrap();
    let hash = hex_hash(d);
    let aria2 = |extra: &[&str]| {
        let port = free_port().to_string();
        let started = Instant::now();
        let mut aria = Command::new("aria2c")
            .args([
                "-q",
                "--enable-dht=false",
                "--enable-dht6=false",
                "--bt-enable-lpd=false",
                "--enable-peer-exchange=false",
                "--listen-port",
                &port,
                "--file-allocation=none",
                "--seed-time=0",
                "-d",
                "out",
            ])
            .args(extra)
            .arg(&magnet)
            .current_dir(d)
            .spawn()
            .expect("start aria2c");
        let status = wait_child(&mut aria, 90, "aria2c");
        assert!(status.success(), "aria2c {extra:?} failed: {status}");
        eprintln!("aria2c {extra:?} took {:?}", started.elapsed());
    };
    // The metadata alone, saved as HASH.torrent: the same info hash.
    aria2(&["--bt-metadata-only=true", "--bt-save-metadata=true"]);
    let saved = format!("out/{hash}.torrent");
    assert_eq!(show_json(d, &saved)["info_hash"], hash.as_str());
    assert!(!d.join("out/data.bin").exists());
    // Then the whole magnet: metadata and data.
    aria2(&[]);
    same_file(&d.join("seed/data.bin"), &d.join("out/data.bin"));
}

/// A magnet with a tracker and no peer: shoal finds the seed through the
/// tracker, fetches the metadata and begins; killed (SIGKILL) halfway, the
/// same command again uses the saved metadata, fetches no metadata, and
/// completes.
#[test]
fn a_magnet_with_trackers_only_resumes_without_fetching_metadata_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_tracker, addr) = start_tracker("127.0.0.1:0", &[]);
    let announce = format!("http://{addr}/announce");
    let magnet = make(d, "16", &[&announce]);
    let _seed = Shoal::seed(d, "seed/data.bin", &["--json"]);
    wait_for(30, "shoal seed to announce", || {
        tracker_stats(addr)["seeders"] == 1
    });
    let args = [
        "download",
        &magnet,
        "-o",
        "out",
        "--port",
        "0",
        "-x",
        "--json",
        "--download-limit",
        "4M",
    ];
    let mut first = Shoal::start(d, "first", &args);
    assert!(first.said("shoal: fetching the metadata of magnet"));
    assert!(first.said("shoal: metadata: "));
    let hash = hex_hash(d);
    let resume = d.join(format!("out/.shoal/{hash}.resume"));
    // Killed once some pieces are in the resume file.
    wait_for(60, "some pieces to be saved", || {
        std::fs::metadata(&resume).is_ok_and(|m| m.len() > 0)
            && std::fs::metadata(d.join("out/data.bin")).is_ok_and(|m| m.len() > 0)
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    first.kill9();
    let args: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| *a != "--download-limit" && *a != "4M")
        .collect();
    let mut second = Shoal::start(d, "second", &args);
    let (status, j) = second.finish(90);
    assert!(status.success(), "the restarted download failed: {status}");
    assert_eq!(j["complete"], true, "{j}");
    assert!(
        second.said("using the metadata saved in"),
        "the restart did not use the saved metadata"
    );
    assert!(
        !second.said("fetching the metadata"),
        "the restart fetched the metadata again"
    );
    same_file(&d.join("seed/data.bin"), &d.join("out/data.bin"));
}

/// `--metadata-only` with `--save-torrent`: the torrent written is the
/// original's info dictionary (same hash), with the magnet's tracker in it,
/// and no data is downloaded.
#[test]
fn metadata_only_saves_the_torrent_and_downloads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let magnet = make(d, "16", &["http://127.0.0.1:1/announce"]);
    let seed = Shoal::seed(
        d,
        "seed/data.bin",
        &["--bind", "127.0.0.1", "--no-trackers", "--json"],
    );
    let with_peer = format!("{magnet}&x.pe={}", seed.addr());
    let out = shoal(
        d,
        &[
            "download",
            &with_peer,
            "-o",
            "out",
            "--port",
            "0",
            "--metadata-only",
            "--save-torrent",
            "copy.torrent",
            "--json",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let hash = hex_hash(d);
    assert_eq!(j["info_hash"], hash.as_str(), "{j}");
    assert_eq!(j["size"], SIZE as u64, "{j}");
    let copy = show_json(d, "copy.torrent");
    assert_eq!(copy["info_hash"], hash.as_str());
    assert_eq!(
        copy["trackers"][0][0], "http://127.0.0.1:1/announce",
        "{copy}"
    );
    assert!(!d.join("out/data.bin").exists(), "data was downloaded");
    // And --metadata-only with a .torrent file is a usage error.
    let out = shoal(d, &["download", "t.torrent", "--metadata-only"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("magnet"));
}

/// `--metadata-only` through a tracker leaves no trace there: the fetch
/// announces itself (as a leecher, to hear of seeds), then says `stopped`
/// before it exits, so the tracker hands no one a peer that is gone.
#[test]
fn metadata_only_tells_the_tracker_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_tracker, addr) = start_tracker("127.0.0.1:0", &[]);
    let announce = format!("http://{addr}/announce");
    let magnet = make(d, "16", &[&announce]);
    let _seed = Shoal::seed(d, "seed/data.bin", &["--json"]);
    wait_for(30, "shoal seed to announce", || {
        tracker_stats(addr)["seeders"] == 1
    });
    let out = shoal(
        d,
        &[
            "download",
            &magnet,
            "-o",
            "out",
            "--port",
            "0",
            "--metadata-only",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats = tracker_stats(addr);
    assert_eq!(stats["seeders"], 1, "{stats}");
    assert_eq!(
        stats["leechers"], 0,
        "the fetch is still in the swarm: {stats}"
    );
    assert!(stats["announces_total"].as_u64().unwrap() >= 3, "{stats}");
}
