//! Initial seeding (BEP 16, "super-seeding"): `shoal seed --initial-seeding`
//! sends no bitfield, offers each peer a couple of pieces with `have`, and
//! offers more as they spread — so with several leechers the seed uploads
//! little more than one copy and the leechers trade the rest. Here against
//! python3-libtorrent leechers and shoal leechers (through `shoal tracker` on
//! loopback), Transmission leechers (inside a private network namespace, as
//! Transmission ignores 127.x peers), and a lone leecher, to which nothing
//! can spread.
//!
//! Every process listens on port 0 and says where; every wait is bounded.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Stops an initial seed (SIGINT), checks its summary and prints its upload
/// ratio; returns the ratio.
fn stop_seed(seed: &mut Shoal, size: u64, test: &str) -> f64 {
    let (status, j) = seed.interrupt(20);
    assert!(status.success(), "the seed ended with {status}: {j}");
    assert_eq!(j["complete"], true, "{j}");
    assert_eq!(j["size"], size, "{j}");
    let up = j["uploaded"].as_u64().expect("uploaded");
    let ratio = up as f64 / size as f64;
    eprintln!("{test}: the initial seed uploaded {up} of {size} bytes: ratio {ratio:.3}");
    ratio
}

/// `dir/seed/data.bin` of `len` pseudo-random bytes, and `dir/t.torrent`
/// for it with pieces of 2^`log2_piece` bytes announcing to `announce`.
fn single_file(dir: &Path, len: usize, log2_piece: &str, announce: &str) -> PathBuf {
    let data = dir.join("seed/data.bin");
    write(&data, &bytes(len as u64 ^ 0x5eed, len));
    shoal_ok(
        dir,
        &[
            "create",
            "seed/data.bin",
            "-l",
            log2_piece,
            "-a",
            announce,
            "-o",
            "t.torrent",
        ],
    );
    data
}

/// A tracker (`--interval 5`), `dir/t.torrent` for `len` bytes in pieces of
/// 2^`log2_piece`, and `shoal seed --initial-seeding` of it, announced.
fn start_initial_seed(
    dir: &Path,
    len: usize,
    log2_piece: &str,
) -> (Killed, SocketAddr, PathBuf, Shoal) {
    let (tracker, taddr) = start_tracker("127.0.0.1:0", &["--interval", "5"]);
    let data = single_file(dir, len, log2_piece, &format!("http://{taddr}/announce"));
    let seed = Shoal::seed(
        dir,
        "seed/data.bin",
        &["--bind", "127.0.0.1", "--initial-seeding", "--json"],
    );
    wait_for(30, "the seed to announce", || {
        tracker_stats(taddr)["seeders"] == 1
    });
    (tracker, taddr, data, seed)
}

/// Python for N libtorrent leechers in one process, each its own session
/// (own port, own directory ltI/): `leechers.py TORRENT N SECONDS`. They
/// find the seed and each other through the torrent's tracker only. Says
/// "done I DOWN UP" for each that finishes (payload bytes), then, once all
/// have, "final I DOWN UP" for each and "all done", and exits 0; on timeout
/// describes every leecher's peers and exits 1.
const LIBTORRENT_LEECHERS: &str = r#"
import libtorrent as lt, sys, time
torrent, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
settings = {"listen_interfaces": "127.0.0.1:0", "enable_dht": False, "enable_lsd": False,
    "enable_upnp": False, "enable_natpmp": False, "enable_outgoing_utp": False,
    "enable_incoming_utp": False, "allow_multiple_connections_per_ip": True}
leechers = []
for i in range(n):
    ses = lt.session(settings)
    p = lt.add_torrent_params()
    p.ti = lt.torrent_info(torrent)
    p.save_path = "lt%d" % i
    leechers.append((ses, ses.add_torrent(p)))
    print("listening", i, ses.listen_port(), flush=True)
deadline = time.time() + secs
done, last = set(), 0
while len(done) < n and time.time() < deadline:
    for i, (ses, h) in enumerate(leechers):
        s = h.status()
        if i not in done and s.is_seeding:
            done.add(i)
            print("done", i, s.total_payload_download, s.total_payload_upload, flush=True)
    if time.time() - last >= 2:
        last = time.time()
        print("status", " | ".join("%d: %.0f%% %d peers, up %d" % (i, s.progress * 100,
            s.num_peers, s.all_time_upload) for i, s in
            enumerate(h.status() for _, h in leechers)), flush=True)
    time.sleep(0.05)
if len(done) == n:
    for i, (ses, h) in enumerate(leechers):
        s = h.status()
        print("final", i, s.total_payload_download, s.total_payload_upload, flush=True)
    print("all done", flush=True)
    sys.exit(0)
for i, (ses, h) in enumerate(leechers):
    s = h.status()
    print("leecher", i, s.state, "%.3f" % s.progress, s.errc.message(), flush=True)
    for pi in h.get_peer_info():
        f = pi.flags
        print("  peer", pi.ip, pi.client, "pieces", sum(1 for b in pi.pieces if b),
            "interesting" if f & pi.interesting else "-",
            "choked" if f & pi.choked else "-",
            "remote_interested" if f & pi.remote_interested else "-",
            "remote_choked" if f & pi.remote_choked else "-",
            "down", pi.total_download, "up", pi.total_upload, flush=True)
print("timeout", flush=True)
sys.exit(1)
"#;

/// 3–4 python3-libtorrent leechers and an initial seed, all meeting through
/// `shoal tracker`: they all finish with the data, and the seed uploads
/// little more than one copy.
#[test]
fn libtorrent_leechers_from_an_initial_seed() {
    if !have_libtorrent() {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    const SIZE: usize = 3 * 1024 * 1024 + 12_345;
    const N: usize = 4;
    // Pieces of 32 KiB: 97 of them.
    let (_tracker, _taddr, data, mut seed) = start_initial_seed(d, SIZE, "15");

    std::fs::write(d.join("leechers.py"), LIBTORRENT_LEECHERS).unwrap();
    let mut child = Killed(
        Command::new("/usr/bin/python3")
            .args(["leechers.py", "t.torrent", &N.to_string(), "40"])
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the libtorrent leechers"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let out = Arc::new(Mutex::new(Vec::new()));
    let kept = out.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("libtorrent: {line}");
            kept.lock().unwrap().push(line);
        }
    });
    let status = wait_child(&mut child.0, 45, "the libtorrent leechers");
    reader.join().unwrap();
    let out = out.lock().unwrap().clone();
    assert!(
        status.success() && out.iter().any(|l| l == "all done"),
        "the libtorrent leechers did not all finish ({status}):\n{}",
        out.join("\n")
    );
    eprintln!(
        "all {N} libtorrent leechers done in {:?}",
        started.elapsed()
    );
    // What the leechers uploaded, to each other (the seed downloads nothing).
    let traded: u64 = out
        .iter()
        .filter_map(|l| l.strip_prefix("final "))
        .map(|l| l.split(' ').nth(2).unwrap().parse::<u64>().unwrap())
        .sum();
    eprintln!(
        "the libtorrent leechers uploaded {:.2} copies to each other",
        traded as f64 / SIZE as f64
    );
    assert!(traded > 0, "the libtorrent leechers did not trade");
    let ratio = stop_seed(
        &mut seed,
        SIZE as u64,
        "libtorrent_leechers_from_an_initial_seed",
    );
    for i in 0..N {
        same_file(&data, &d.join(format!("lt{i}/data.bin")));
    }
    assert!(
        ratio <= 1.5,
        "the initial seed uploaded {ratio:.2} copies to {N} libtorrent leechers"
    );
    eprintln!(
        "libtorrent_leechers_from_an_initial_seed: {:?}",
        started.elapsed()
    );
}

/// 4 `shoal download`s from an initial `shoal seed`, through `shoal tracker`:
/// all finish with the data, and the seed uploads at most 1.3 copies.
#[test]
fn shoal_leechers_from_an_initial_seed() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    const SIZE: usize = 3 * 1024 * 1024 + 12_345;
    // Pieces of 32 KiB: 97 of them.
    let (_tracker, _taddr, data, mut seed) = start_initial_seed(d, SIZE, "15");
    let mut leechers: Vec<Shoal> = (0..4)
        .map(|i| {
            let name = format!("leech{i}");
            Shoal::start(
                d,
                &name,
                &[
                    "download",
                    "t.torrent",
                    "-o",
                    &name,
                    "--port",
                    "0",
                    "--bind",
                    "127.0.0.1",
                    "--json",
                    "--no-peers-timeout",
                    "30s",
                ],
            )
        })
        .collect();
    // Without -q (and stderr not a terminal) a download says "download
    // complete" and keeps seeding for the others.
    let deadline = Instant::now() + Duration::from_secs(45);
    for l in &mut leechers {
        while !l.said("download complete") {
            assert!(l.is_running(), "{} exited before completing", l.label);
            assert!(
                Instant::now() < deadline,
                "{} did not complete within 45 s",
                l.label
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!("all 4 shoal leechers complete in {:?}", started.elapsed());
    let ratio = stop_seed(
        &mut seed,
        SIZE as u64,
        "shoal_leechers_from_an_initial_seed",
    );
    let mut traded = 0;
    for l in &mut leechers {
        let (status, j) = l.interrupt(20);
        assert!(status.success(), "{}: {status}", l.label);
        assert_eq!(j["complete"], true, "{}: {j}", l.label);
        assert_eq!(j["hash_fails"], 0, "{}: {j}", l.label);
        traded += j["uploaded"].as_u64().unwrap();
        same_file(&data, &d.join(&l.label).join("data.bin"));
    }
    eprintln!(
        "the leechers uploaded {:.2} copies to each other",
        traded as f64 / SIZE as f64
    );
    assert!(
        ratio <= 1.3,
        "the initial seed uploaded {ratio:.2} copies to 4 shoal leechers"
    );
    eprintln!(
        "shoal_leechers_from_an_initial_seed: {:?}",
        started.elapsed()
    );
}

/// An initial seed and one leecher: nothing can spread, so the seed offers
/// a new piece whenever the leecher has taken what it was offered (after
/// 2 s); the download completes all the same.
#[test]
fn a_lone_leecher_still_completes() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 8 pieces of 32 KiB (the smallest `shoal create` makes), the last one
    // short. Past the first two, the seed offers one piece about every 3 s
    // (2 s after its 1 s tick sees the last one taken): ~20 s in all.
    const SIZE: usize = 7 * 32768 + 1000;
    let (_tracker, _taddr, data, mut seed) = start_initial_seed(d, SIZE, "15");
    let mut leech = Shoal::download(
        d,
        "leech",
        "out",
        &["--bind", "127.0.0.1", "-x", "--no-peers-timeout", "30s"],
    );
    let (status, j) = leech.finish(45);
    assert!(status.success(), "the lone leecher failed ({status}): {j}");
    assert_eq!(j["complete"], true, "{j}");
    assert_eq!(j["hash_fails"], 0, "{j}");
    eprintln!("the lone leecher completed in {:?}", started.elapsed());
    same_file(&data, &d.join("out/data.bin"));
    let ratio = stop_seed(&mut seed, SIZE as u64, "a_lone_leecher_still_completes");
    assert!((1.0..=1.1).contains(&ratio), "{ratio}");
    eprintln!("a_lone_leecher_still_completes: {:?}", started.elapsed());
}

/// Inside a private network namespace (nothing started here can leave it):
/// its own loopback with 10.77.0.1 (the tracker), 10.77.0.2 and 10.77.0.3
/// (two Transmission leechers, each with its own HOME and configuration: no
/// uTP, DHT, LPD or PEX) and 10.77.0.4 (`shoal seed --initial-seeding`).
/// The torrent has pieces of 256 KiB. Prints "FINISHED SECONDS" once both
/// leechers are done, then "SEED JSON" with the seed's summary.
const TRANSMISSION_LEECHERS: &str = r#"
set -euo pipefail
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
ip link set lo up
for i in 1 2 3 4; do ip addr add "10.77.0.$i/24" dev lo; done
cd "$DIR"
RUST_LOG=info,tracker=debug "$SHOAL" tracker --listen 10.77.0.1:0 --interval 5 > /dev/null 2> tracker.log &
for _ in $(seq 100); do grep -q "listening on" tracker.log && break; sleep 0.1; done
ADDR=$(grep -o 'listening on [0-9.:]*' tracker.log | head -1 | cut -d' ' -f3)
"$SHOAL" create seed/data.bin -l 18 -a "http://$ADDR/announce" -o t.torrent > /dev/null
get() { /usr/bin/python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode("latin-1"))' "$1"; }
seeders() { get "http://$ADDR/stats.json" | grep -q "\"seeders\":$1"; }
RUST_LOG=info,client=debug "$SHOAL" seed t.torrent seed/data.bin --port 0 --bind 10.77.0.4 \
  --initial-seeding --json > seed.json 2> seed.log &
SEED=$!
for _ in $(seq 200); do seeders 1 && break; sleep 0.1; done
seeders 1 || { echo "the seed did not announce"; cat seed.log; exit 1; }
for i in 2 3; do
  mkdir -p "t$i/conf"
  cat > "t$i/conf/settings.json" <<JSON
{"utp-enabled": false, "dht-enabled": false, "lpd-enabled": false, "pex-enabled": false,
 "port-forwarding-enabled": false, "encryption": 1, "bind-address-ipv4": "10.77.0.$i"}
JSON
  printf '#!/bin/sh\ntouch "%s/done%s"\n' "$DIR" "$i" > "t$i/done.sh"
  chmod +x "t$i/done.sh"
  HOME="$DIR/t$i" transmission-cli -g "t$i/conf" -p 51413 -et -w "out$i" -f "$DIR/t$i/done.sh" \
    t.torrent > "t$i.log" 2>&1 &
done
for _ in $(seq 450); do [ -e done2 ] && [ -e done3 ] && break; sleep 0.1; done
if ! { [ -e done2 ] && [ -e done3 ]; }; then
  echo "the Transmission leechers did not both finish"
  for i in 2 3; do echo "t$i:"; tail -c 800 "t$i.log"; echo; done
  exit 1
fi
echo "FINISHED $SECONDS"
kill -INT $SEED
wait $SEED
echo "SEED $(tail -1 seed.json)"
"#;

/// 2 Transmission leechers and an initial seed bound to its own address,
/// meeting through `shoal tracker` in a private network namespace: both
/// finish with the data.
///
/// Few, large pieces: Transmission 3.00 re-decides whether it is interested
/// in a peer only every 10 s (its rechoke pulse) and batches its `have`s
/// for up to 10 s, so pieces offered one by one reach it slowly — each
/// leecher says "not interested" as soon as it holds everything offered so
/// far, and asks again only at its next pulse. 6 pieces take ~3 pulses
/// (~30 s); 12 pieces of 128 KiB take ~45 s.
#[test]
fn transmission_leechers_from_an_initial_seed() {
    if !can_make_netns() {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 6 pieces of 256 KiB, the last one short.
    const SIZE: usize = 3 * 512 * 1024 - 5000;
    let data = d.join("seed/data.bin");
    write(&data, &bytes(42, SIZE));
    let child = Command::new("unshare")
        .args(["-n", "bash", "-c", TRANSMISSION_LEECHERS])
        .env("DIR", d)
        .env("SHOAL", SHOAL)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start unshare");
    let Run {
        status,
        stdout,
        stderr,
    } = finish(child, 55, "the namespace script");
    let log = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
    assert!(
        status.success(),
        "script failed ({status}):\n{stdout}\n{stderr}\nseed.log:\n{}\ntracker.log:\n{}",
        log("seed.log"),
        log("tracker.log")
    );
    eprint!("{stdout}");
    let seed_log = log("seed.log");
    assert!(!seed_log.contains("panicked"), "seed.log:\n{seed_log}");
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SEED "))
        .expect("a SEED line");
    let j: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(j["complete"], true, "{j}");
    assert_eq!(j["size"], SIZE as u64, "{j}");
    let up = j["uploaded"].as_u64().unwrap();
    eprintln!(
        "transmission_leechers_from_an_initial_seed: the initial seed uploaded {up} of {SIZE} \
         bytes: ratio {:.3}",
        up as f64 / SIZE as f64
    );
    same_file(&data, &d.join("out2/data.bin"));
    same_file(&data, &d.join("out3/data.bin"));
    // Even when the 10 s rule offers a leecher a piece the other has, the
    // seed sends far less than the two copies a plain seed would.
    assert!(
        up as f64 <= 1.5 * SIZE as f64,
        "the initial seed uploaded {up} bytes to 2 Transmission leechers"
    );
    eprintln!(
        "transmission_leechers_from_an_initial_seed: {:?}",
        started.elapsed()
    );
}
