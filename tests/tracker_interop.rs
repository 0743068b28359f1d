//! Real clients find each other through `shoal tracker` alone: a libtorrent
//! seed and an aria2c leecher on loopback; a libtorrent seed and a
//! Transmission leecher inside a private network namespace (Transmission
//! ignores 127.x peers). Each downloads a multi-file torrent completely, and
//! the tracker's /scrape and /stats.json then show the right counts.

mod common;
#[path = "../tracker/tests/common/mod.rs"]
mod tracker_common;

use std::process::{Command, Stdio};

use common::*;
use torrent_format::bencode::{decode, Value};
use torrent_format::magnet::percent_encode_bytes;

fn scrape(addr: std::net::SocketAddr, hash: &[u8; 20]) -> (i64, i64, i64) {
    let (status, body) = http_get(
        addr,
        &format!("/scrape?info_hash={}", percent_encode_bytes(hash)),
    );
    assert_eq!(status, 200);
    let v = decode(&body).unwrap();
    let Some(Value::Dict(files)) = v.get("files") else {
        panic!("no files in scrape")
    };
    let e = &files[&hash.to_vec()];
    let n = |k| match e.get(k) {
        Some(Value::Int(i)) => *i,
        _ => panic!("no {k}"),
    };
    (n("complete"), n("incomplete"), n("downloaded"))
}

fn stats(addr: std::net::SocketAddr) -> serde_json::Value {
    let (status, body) = http_get(addr, "/stats.json");
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

fn info_hash(dir: &std::path::Path, torrent: &str) -> [u8; 20] {
    let hex = show_json(dir, torrent)["info_hash"]
        .as_str()
        .unwrap()
        .to_string();
    hex.parse::<torrent_format::InfoHash>().unwrap().0
}

/// Starts aria2c downloading `torrent` into `dir/out` and exiting when
/// done: no DHT, LPD or PEX unless `extra` turns one on (later flags win),
/// so peers come from the tracker alone.
fn aria2_leech(dir: &std::path::Path, torrent: &str, extra: &[&str]) -> std::process::Child {
    let port = free_port().to_string();
    Command::new("aria2c")
        .args([
            "-q",
            "--seed-time=0",
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--listen-port",
            &port,
            "--file-allocation=none",
            "-d",
            "out",
        ])
        .args(extra)
        .arg(torrent)
        .current_dir(dir)
        .spawn()
        .expect("start aria2c")
}

#[test]
fn libtorrent_seed_and_aria2_leecher_meet_through_the_tracker() {
    if !have_libtorrent() || !have("aria2c") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_tree(&d.join("seed/tree"));
    let (_tracker, addr) = start_tracker("127.0.0.1:0", &[]);
    let announce = format!("http://{addr}/announce");
    shoal_ok(
        d,
        &["create", "seed/tree", "-a", &announce, "-o", "t.torrent"],
    );
    let hash = info_hash(d, "t.torrent");

    let (mut seed, _port) = start_libtorrent_seed(d);
    wait_for(30, "the libtorrent seed to announce", || {
        stats(addr)["seeders"] == 1
    });
    assert!(
        seed.0.try_wait().unwrap().is_none(),
        "libtorrent seed exited"
    );

    let mut aria = aria2_leech(d, "t.torrent", &[]);
    let status = wait_child(&mut aria, 120, "aria2c");
    assert!(status.success(), "aria2c failed: {status}");
    same_tree(&d.join("seed/tree"), &d.join("out/tree"));

    // aria2c sent `completed` then `stopped`; the libtorrent seed remains.
    let mut last = (0, 0, 0);
    wait_for(10, "the scrape to settle", || {
        last = scrape(addr, &hash);
        eprintln!("scrape: {last:?}");
        last == (1, 0, 1)
    });
    let s = stats(addr);
    assert_eq!(s["swarms"], 1);
    assert_eq!(s["seeders"], 1);
    assert_eq!(s["leechers"], 0);
    assert_eq!(s["completed"], 1);
    assert!(s["announces_total"].as_u64().unwrap() >= 3);
}

/// Runs inside `unshare -n`: its own loopback with 10.77.0.1, nothing leaves.
const TRANSMISSION_SCRIPT: &str = r#"
set -euo pipefail
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
ip link set lo up
ip addr add 10.77.0.1/24 dev lo
cd "$DIR"
RUST_LOG=info,tracker=debug "$SHOAL" tracker --listen 10.77.0.1:0 > /dev/null 2> tracker.log &
for _ in $(seq 100); do grep -q "listening on" tracker.log && break; sleep 0.1; done
ADDR=$(grep -o 'listening on [0-9.:]*' tracker.log | head -1 | cut -d' ' -f3)
"$SHOAL" create seed/tree -a "http://$ADDR/announce" -o t.torrent > /dev/null
mkfifo seed.in
/usr/bin/python3 seed.py t.torrent seed 0.0.0.0:0 < seed.in > seed.log 2>&1 &
exec 3> seed.in
get() { /usr/bin/python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode("latin-1"))' "$1"; }
for _ in $(seq 300); do get "http://$ADDR/stats.json" | grep -q '"seeders":1' && break; sleep 0.1; done
mkdir -p tconf out
cat > tconf/settings.json <<JSON
{"utp-enabled": false, "dht-enabled": false, "lpd-enabled": false, "pex-enabled": false,
 "port-forwarding-enabled": false, "encryption": 1}
JSON
printf '#!/bin/sh\ntouch "%s/done"\n' "$DIR" > done.sh
chmod +x done.sh
HOME="$DIR" transmission-cli -g tconf -w out -p 51413 -et -f "$DIR/done.sh" t.torrent > transmission.log 2>&1 &
TR=$!
for _ in $(seq 1200); do [ -e done ] && break; sleep 0.1; done
[ -e done ] || { echo "transmission did not finish"; tail -20 transmission.log; exit 1; }
# Let transmission announce `completed` (it does so right after finishing).
for _ in $(seq 100); do get "http://$ADDR/stats.json" | grep -q '"completed":1' && break; sleep 0.1; done
echo "STATS $(get "http://$ADDR/stats.json")"
kill $TR || true
exec 3>&-
wait $TR 2>/dev/null || true
# Transmission 3.00 creates no zero-length files, so compare the others.
(cd seed/tree && find . -type f -size +0c) | while read -r f; do cmp "seed/tree/$f" "out/tree/$f"; done
echo "SAME DATA"
"#;

#[test]
fn libtorrent_seed_and_transmission_leecher_meet_through_the_tracker() {
    if !have_libtorrent() || !can_make_netns() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_tree(&d.join("seed/tree"));
    std::fs::write(d.join("seed.py"), LIBTORRENT_SEED).unwrap();
    let mut child = Command::new("unshare")
        .args(["-n", "bash", "-c", TRANSMISSION_SCRIPT])
        .env("DIR", d)
        .env("SHOAL", SHOAL)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_child(&mut child, 240, "the Transmission swarm");
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.success() && stdout.contains("SAME DATA"),
        "script failed ({status}):\n{stdout}\n{}\ntracker log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(d.join("tracker.log")).unwrap_or_default()
    );
    assert!(stdout.contains("SAME DATA"), "{stdout}");
    let stats_line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("STATS "))
        .expect("stats");
    let s: serde_json::Value = serde_json::from_str(stats_line).unwrap();
    let log = std::fs::read_to_string(d.join("tracker.log")).unwrap_or_default();
    let s = serde_json::json!({"stats": s, "log": log});
    let s = &s["stats"];
    assert_eq!(s["swarms"], 1);
    assert_eq!(s["completed"], 1, "{s}");
    assert_eq!(
        s["seeders"], 2,
        "libtorrent and the finished Transmission: {s}\n{log}"
    );
    assert_eq!(s["leechers"], 0, "{s}");
}

/// The UDP tracker (BEP 15): a libtorrent seed and an aria2c leecher, both
/// announcing only to `udp://…`, meet through `shoal tracker`.
#[test]
fn libtorrent_seed_and_aria2_leecher_meet_through_the_udp_tracker() {
    if !have_libtorrent() || !have("aria2c") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_tree(&d.join("seed/tree"));
    let (_tracker, addr) = start_tracker("127.0.0.1:0", &[]);
    // (aria2 takes a UDP tracker only with a path.)
    let announce = format!("udp://{addr}/announce");
    shoal_ok(
        d,
        &["create", "seed/tree", "-a", &announce, "-o", "t.torrent"],
    );
    let hash = info_hash(d, "t.torrent");
    let (mut seed, _port) = start_libtorrent_seed(d);
    wait_for(30, "the libtorrent seed to announce over UDP", || {
        let s = stats(addr);
        s["seeders"] == 1 && s["udp"]["announces_total"].as_u64() >= Some(1)
    });
    assert!(
        seed.0.try_wait().unwrap().is_none(),
        "libtorrent seed exited"
    );
    let dht_port = free_port().to_string();
    let dht_file = d.join("aria2-dht.dat");
    // aria2 1.36 speaks UDP to trackers only through its DHT socket: with
    // the DHT off it says "udp is not supported yet". Its DHT gets no
    // bootstrap node, so it talks to nobody but the tracker.
    let mut aria = aria2_leech(
        d,
        "t.torrent",
        &[
            "--enable-dht=true",
            "--dht-listen-port",
            &dht_port,
            "--dht-file-path",
            dht_file.to_str().unwrap(),
        ],
    );
    let status = wait_child(&mut aria, 120, "aria2c");
    assert!(status.success(), "aria2c failed: {status}");
    same_tree(&d.join("seed/tree"), &d.join("out/tree"));
    // Every announce came over UDP; the HTTP scrape sees the same swarm.
    wait_for(10, "the swarm to settle", || {
        scrape(addr, &hash) == (1, 0, 1)
    });
    let s = stats(addr);
    eprintln!("stats: {}", s["udp"]);
    assert_eq!(s["announces_total"], s["udp"]["announces_total"]);
    assert!(s["udp"]["connects_total"].as_u64().unwrap() >= 2);
    let (_, metrics) = http_get(addr, "/metrics");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("shoal_tracker_announces_total{protocol=\"http\"} 0"),
        "{metrics}"
    );
}

/// Passkeys over UDP (BEP 41): libtorrent seeds through
/// `udp://…/<key>/announce`, `shoal download` fetches through the same URL,
/// and a wrong key is refused.
#[test]
fn passkeys_work_over_the_udp_tracker() {
    if !have_libtorrent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_tree(&d.join("seed/tree"));
    std::fs::write(d.join("keys.txt"), "k3y-for-lt\n").unwrap();
    let keys = d.join("keys.txt");
    let (_tracker, addr) = start_tracker("127.0.0.1:0", &["--keys", keys.to_str().unwrap()]);
    let announce = format!("udp://{addr}/k3y-for-lt/announce");
    shoal_ok(
        d,
        &[
            "create",
            "seed/tree",
            "-p",
            "-a",
            &announce,
            "-o",
            "t.torrent",
        ],
    );
    let (_seed, _port) = start_libtorrent_seed(d);
    wait_for(30, "the libtorrent seed to announce with its key", || {
        stats(addr)["seeders"] == 1
    });
    let out = shoal(
        d,
        &[
            "download",
            "t.torrent",
            "-o",
            "out",
            "-x",
            "--port",
            "0",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    same_tree(&d.join("seed/tree"), &d.join("out/tree"));
    // The same torrent with a wrong key: the tracker says why.
    let bad = format!("udp://{addr}/wrong/announce");
    shoal_ok(
        d,
        &["create", "seed/tree", "-p", "-a", &bad, "-o", "bad.torrent"],
    );
    let out = shoal(
        d,
        &[
            "download",
            "bad.torrent",
            "-o",
            "out2",
            "-x",
            "--port",
            "0",
            "--no-peers-timeout",
            "3s",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("unknown passkey"), "{err}");
}

/// Three `shoal tracker` instances on one Redis (`--store redis://…`) serve
/// one swarm: a libtorrent seed announces to instance 1 only, an aria2c
/// leecher to instance 3 only, and they find each other; instance 2's
/// scrape shows the swarm. Redis is killed and restarted first (the
/// instances answer with a failure reason meanwhile and recover on their
/// own), and killed again at the end (they keep serving their pages).
#[test]
fn three_trackers_on_one_redis_serve_one_swarm() {
    if !have_libtorrent() || !have("aria2c") {
        return;
    }
    let Some(mut redis) = tracker_common::RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_tree(&d.join("seed/tree"));
    // 40 MiB more: 2560 blocks of 16 KiB.
    write(&d.join("seed/tree/big.bin"), &bytes(9, 40 << 20));
    let store = redis.url();
    let trackers: Vec<_> = (0..3)
        .map(|_| {
            start_tracker(
                "127.0.0.1:0",
                &["--store", &store, "--store-timeout", "500ms"],
            )
        })
        .collect();
    let addr = |i: usize| trackers[i].1;
    // The same content with each instance as its tracker: one info hash.
    for (i, name) in [(0, "t.torrent"), (2, "t3.torrent")] {
        let announce = format!("http://{}/announce", addr(i));
        shoal_ok(
            d,
            &[
                "create",
                "seed/tree",
                "-l",
                "18",
                "-a",
                &announce,
                "-o",
                name,
            ],
        );
    }
    let hash = info_hash(d, "t.torrent");
    assert_eq!(hash, info_hash(d, "t3.torrent"));

    // Redis goes away: every instance says so, and keeps running.
    redis.stop();
    for i in 0..3 {
        let (status, body) = http_get(
            addr(i),
            &format!("/scrape?info_hash={}", percent_encode_bytes(&hash)),
        );
        assert_eq!(status, 200);
        let reason = match decode(&body).unwrap().get("failure reason") {
            Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("instance {i}: no failure reason: {other:?}"),
        };
        assert!(reason.contains("unavailable"), "{reason}");
    }
    // Back (empty): no instance is restarted.
    redis.restart();

    let (mut seed, _port) = start_libtorrent_seed(d);
    wait_for(30, "the libtorrent seed to announce to instance 1", || {
        // Instance 2 has never been told of it: Redis tells it.
        scrape(addr(1), &hash).0 == 1
    });
    assert!(
        seed.0.try_wait().unwrap().is_none(),
        "libtorrent seed exited"
    );
    let mut aria = aria2_leech(d, "t3.torrent", &[]);
    let status = wait_child(&mut aria, 120, "aria2c");
    assert!(status.success(), "aria2c failed: {status}");
    same_tree(&d.join("seed/tree"), &d.join("out/tree"));
    wait_for(10, "instance 2's scrape to show the finished swarm", || {
        scrape(addr(1), &hash) == (1, 0, 1)
    });
    // Each instance counted only what it was asked.
    let announces: Vec<u64> = (0..3)
        .map(|i| stats(addr(i))["announces_total"].as_u64().unwrap())
        .collect();
    assert!(
        announces[0] >= 1 && announces[1] == 0 && announces[2] >= 2,
        "{announces:?}"
    );
    let s = stats(addr(1));
    assert_eq!(s["store"], "redis");
    assert!(
        s["swarms"].is_null(),
        "counts are not kept per instance: {s}"
    );
    assert_eq!(s["redis"]["up"], true);

    // Redis gone for good: the pages still answer, and say so.
    redis.stop();
    let (status, metrics) = http_get(addr(0), "/metrics");
    assert_eq!(status, 200);
    // Three failures in a row make an outage.
    for port in 7000..7003 {
        let (_, body) = http_get(
            addr(0),
            &format!(
                "/announce?info_hash={}&peer_id=-XX0000-000000000000&port={port}&uploaded=0&downloaded=0&left=1",
                percent_encode_bytes(&hash)
            ),
        );
        assert!(String::from_utf8_lossy(&body).contains("unavailable"));
    }
    let (_, metrics2) = http_get(addr(0), "/metrics");
    let (metrics, metrics2) = (
        String::from_utf8(metrics).unwrap(),
        String::from_utf8(metrics2).unwrap(),
    );
    assert!(metrics2.contains("shoal_tracker_store_up 0"), "{metrics2}");
    assert!(
        metrics.contains("shoal_tracker_store_calls_total"),
        "{metrics}"
    );
}
