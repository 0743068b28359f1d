//! `shoal seed` and `shoal download` against real clients, both ways:
//! python3-libtorrent (direct peers on loopback), aria2c (through
//! `shoal tracker` on loopback) and Transmission (through `shoal tracker`
//! inside a private network namespace, since Transmission ignores 127.x
//! peers). Each test moves a multi-file torrent with a file of a few MiB
//! (several pieces, several blocks per piece) and checks the data at the end.

mod common;

use std::io::{BufRead, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;

/// Size of the big file: a few MiB, not a multiple of any piece length.
const BIG: usize = 3 * 1024 * 1024 + 12_345;

/// The test tree (common::make_tree plus a big file) under `root`.
fn make_content(root: &Path) {
    make_tree(root);
    write(&root.join("a/big.bin"), &bytes(7, BIG));
}

/// Total size of the test content.
fn content_size() -> u64 {
    (70_001 + 4 + 33_333 + 7 + 131_072 + BIG) as u64
}

/// Runs `shoal download` in `cwd` with `args` for at most `secs`.
fn shoal_download(cwd: &Path, args: &[&str], secs: u64) -> Run {
    let child = Command::new(SHOAL)
        .arg("download")
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shoal download");
    finish(child, secs, "shoal download")
}

/// A download with `-x --json` ended complete, verified, with the data.
fn assert_complete(run: &Run) {
    assert!(
        run.status.success(),
        "shoal download failed ({}):\n{}",
        run.status,
        run.stderr
    );
    let j = run.json();
    assert_eq!(j["complete"], true, "{j}\n{}", run.stderr);
    assert_eq!(j["size"], content_size(), "{j}");
    assert!(j["downloaded"].as_u64().unwrap() >= content_size(), "{j}");
    assert_eq!(j["hash_fails"], 0, "{j}");
    assert_eq!(j["banned"], 0, "{j}");
    eprintln!("shoal download: {j}");
}

/// A running `shoal seed`, with the port it listens on.
struct ShoalSeed {
    child: Killed,
    port: u16,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ShoalSeed {
    /// `shoal seed` in `cwd` with `args`; returns once it listens.
    fn start(cwd: &Path, args: &[&str]) -> ShoalSeed {
        let mut child = Command::new(SHOAL)
            .arg("seed")
            .args(args)
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shoal seed");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let addr: std::net::SocketAddr = loop {
            let Some(Ok(line)) = lines.next() else {
                let _ = child.kill();
                panic!(
                    "shoal seed exited before listening:\n{}",
                    log.lock().unwrap()
                );
            };
            eprintln!("seed: {line}");
            log.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split(';').next().unwrap().parse().unwrap();
            }
        };
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                eprintln!("seed: {line}");
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        ShoalSeed {
            child: Killed(child),
            port: addr.port(),
            stderr: log,
        }
    }

    /// Stops the seed with SIGINT and returns its JSON summary (`--json`).
    fn stop(mut self) -> serde_json::Value {
        let pid = self.child.0.id() as libc::pid_t;
        // SAFETY: signalling our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let status = wait_child(&mut self.child.0, 20, "shoal seed to stop");
        let mut stdout = String::new();
        self.child
            .0
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let log = self.stderr.lock().unwrap().clone();
        assert!(!log.contains("panicked"), "shoal seed panicked:\n{log}");
        assert!(status.success(), "shoal seed ended with {status}:\n{log}");
        let line = stdout.lines().last().expect("JSON from shoal seed");
        serde_json::from_str(line).unwrap()
    }
}

/// The tracker's /stats.json.
fn stats(addr: std::net::SocketAddr) -> serde_json::Value {
    let (status, body) = http_get(addr, "/stats.json");
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

/// aria2c flags for tests: no DHT, LPD or PEX, a given port, no
/// preallocation.
fn aria2_args(port: &str) -> Vec<String> {
    [
        "-q",
        "--enable-dht=false",
        "--enable-dht6=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=false",
        "--listen-port",
        port,
        "--file-allocation=none",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn shoal_downloads_from_libtorrent() {
    if !have_libtorrent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_content(&d.join("seed/tree"));
    shoal_ok(d, &["create", "seed/tree", "-l", "16", "-o", "t.torrent"]);
    let (_seed, port) = start_libtorrent_seed(d);
    let peer = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let run = shoal_download(
        d,
        &[
            "t.torrent",
            "-o",
            "out",
            "--port",
            "0",
            "--no-trackers",
            "--peer",
            &peer,
            "-x",
            "--json",
            "-q",
            "--no-peers-timeout",
            "30s",
        ],
        50,
    );
    assert_complete(&run);
    eprintln!("downloaded in {:?}", started.elapsed());
    same_tree(&d.join("seed/tree"), &d.join("out/tree"));
}

/// Python for a libtorrent leecher: `leech.py TORRENT SAVE_DIR PEER_PORT
/// SECONDS` connects to 127.0.0.1:PEER_PORT, prints "done DOWNLOADED" once
/// seeding, or exits 1 after SECONDS.
const LIBTORRENT_LEECH: &str = r#"
import libtorrent as lt, sys, time
ses = lt.session({"listen_interfaces": "127.0.0.1:0", "enable_dht": False, "enable_lsd": False,
    "enable_upnp": False, "enable_natpmp": False, "enable_outgoing_utp": False,
    "enable_incoming_utp": False, "allow_multiple_connections_per_ip": True})
p = lt.add_torrent_params()
p.ti = lt.torrent_info(sys.argv[1])
p.save_path = sys.argv[2]
h = ses.add_torrent(p)
peer = ("127.0.0.1", int(sys.argv[3]))
deadline = time.time() + float(sys.argv[4])
last_connect = 0
while time.time() < deadline:
    s = h.status()
    if s.is_seeding:
        print("done", s.total_payload_download, flush=True)
        sys.exit(0)
    if s.num_peers == 0 and time.time() - last_connect > 2:
        h.connect_peer(peer)
        last_connect = time.time()
    time.sleep(0.05)
s = h.status()
print("timeout", s.state, s.progress, s.num_peers, s.errc.message(), flush=True)
sys.exit(1)
"#;

#[test]
fn libtorrent_downloads_from_shoal() {
    if !have_libtorrent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_content(&d.join("seed/tree"));
    shoal_ok(d, &["create", "seed/tree", "-l", "18", "-o", "t.torrent"]);
    let seed = ShoalSeed::start(
        d,
        &[
            "t.torrent",
            "seed/tree",
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--no-trackers",
            "--json",
        ],
    );
    std::fs::write(d.join("leech.py"), LIBTORRENT_LEECH).unwrap();
    let started = Instant::now();
    let child = Command::new("/usr/bin/python3")
        .args(["leech.py", "t.torrent", "out", &seed.port.to_string(), "45"])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the libtorrent leecher");
    let run = finish(child, 50, "the libtorrent leecher");
    assert!(
        run.status.success() && run.stdout.starts_with("done "),
        "libtorrent did not finish ({}): {}{}",
        run.status,
        run.stdout,
        run.stderr
    );
    eprintln!(
        "libtorrent: {} in {:?}",
        run.stdout.trim(),
        started.elapsed()
    );
    let j = seed.stop();
    eprintln!("shoal seed: {j}");
    assert!(j["uploaded"].as_u64().unwrap() >= content_size(), "{j}");
    assert_eq!(j["complete"], true, "{j}");
    // libtorrent 2.0 creates no zero-length files and no empty folders until
    // asked; compare every file it has, and demand all non-empty ones.
    compare_nonempty(&d.join("seed/tree"), &d.join("out/tree"));
}

/// Every non-empty file under `a` is under `b` with the same bytes; any
/// file under `b` is under `a` too.
fn compare_nonempty(a: &Path, b: &Path) {
    let lb = listing(b);
    for f in listing(a) {
        let (pa, pb) = (a.join(&f), b.join(&f));
        if pa.is_file() && std::fs::metadata(&pa).unwrap().len() > 0 {
            assert!(pb.is_file(), "{f} is missing");
            assert!(
                std::fs::read(&pa).unwrap() == std::fs::read(&pb).unwrap(),
                "{f} differs"
            );
        }
    }
    for f in lb {
        assert!(a.join(&f).exists(), "{f} should not be there");
    }
}

#[test]
fn shoal_downloads_from_aria2_through_the_tracker() {
    if !have("aria2c") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_content(&d.join("seed/tree"));
    let (_tracker, addr) = start_tracker("127.0.0.1:0", &[]);
    let announce = format!("http://{addr}/announce");
    shoal_ok(
        d,
        &[
            "create",
            "seed/tree",
            "-l",
            "17",
            "-a",
            &announce,
            "-o",
            "t.torrent",
        ],
    );
    // An aria2c seed: check the data (-V), then seed with no ratio or time
    // limit, until killed.
    let port = free_port().to_string();
    let mut args = aria2_args(&port);
    args.extend(
        ["-V", "--seed-ratio=0.0", "-d", "seed", "t.torrent"]
            .iter()
            .map(|s| s.to_string()),
    );
    let mut aria = Killed(
        Command::new("aria2c")
            .args(&args)
            .current_dir(d)
            .spawn()
            .expect("start aria2c"),
    );
    wait_for(30, "the aria2c seed to announce", || {
        stats(addr)["seeders"] == 1
    });
    assert!(aria.0.try_wait().unwrap().is_none(), "aria2c exited");
    let started = Instant::now();
    let run = shoal_download(
        d,
        &[
            "t.torrent",
            "-o",
            "out",
            "--port",
            "0",
            "-x",
            "--json",
            "-q",
            "--no-peers-timeout",
            "30s",
        ],
        50,
    );
    assert_complete(&run);
    eprintln!("downloaded in {:?}", started.elapsed());
    assert!(aria.0.try_wait().unwrap().is_none(), "aria2c exited");
    same_tree(&d.join("seed/tree"), &d.join("out/tree"));
}

/// aria2c downloads from `shoal seed` through `shoal tracker`, with pieces
/// of 2^`log2_piece` bytes.
fn aria2_downloads_from_shoal(log2_piece: &str) {
    if !have("aria2c") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_content(&d.join("seed/tree"));
    let (_tracker, addr) = start_tracker("127.0.0.1:0", &[]);
    let announce = format!("http://{addr}/announce");
    shoal_ok(
        d,
        &[
            "create",
            "seed/tree",
            "-l",
            log2_piece,
            "-a",
            &announce,
            "-o",
            "t.torrent",
        ],
    );
    let seed = ShoalSeed::start(d, &["t.torrent", "seed/tree", "--port", "0", "--json"]);
    wait_for(30, "shoal seed to announce", || stats(addr)["seeders"] == 1);
    let port = free_port().to_string();
    let mut args = aria2_args(&port);
    args.extend(
        ["--seed-time=0", "-d", "out", "t.torrent"]
            .iter()
            .map(|s| s.to_string()),
    );
    let started = Instant::now();
    let mut aria = Command::new("aria2c")
        .args(&args)
        .current_dir(d)
        .spawn()
        .expect("start aria2c");
    let status = wait_child(&mut aria, 45, "aria2c");
    assert!(status.success(), "aria2c failed: {status}");
    eprintln!("aria2c downloaded in {:?}", started.elapsed());
    same_tree(&d.join("seed/tree"), &d.join("out/tree"));
    let j = seed.stop();
    eprintln!("shoal seed: {j}");
    assert!(j["uploaded"].as_u64().unwrap() >= content_size(), "{j}");
}

/// aria2c 1.36 announces finished pieces with a whole `bitfield` message
/// whenever that is no longer than the `have`s it replaces (so from its
/// second piece on here), not only as its first message.
#[test]
fn aria2_downloads_from_shoal_through_the_tracker() {
    aria2_downloads_from_shoal("16");
}

/// The start of every namespace script: its own loopback with 10.77.0.1
/// (the tracker), 10.77.0.2 (Transmission) and 10.77.0.3 (shoal); the
/// tracker; the torrent (pieces of 64 KiB); Transmission's configuration
/// (no uTP, DHT, LPD or PEX; bound to 10.77.0.2, which it also announces
/// from). Nothing started here can leave the namespace.
const NETNS_PROLOGUE: &str = r#"
set -euo pipefail
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
ip link set lo up
for i in 1 2 3; do ip addr add "10.77.0.$i/24" dev lo; done
cd "$DIR"
RUST_LOG=info,tracker=debug "$SHOAL" tracker --listen 10.77.0.1:0 > /dev/null 2> tracker.log &
for _ in $(seq 100); do grep -q "listening on" tracker.log && break; sleep 0.1; done
ADDR=$(grep -o 'listening on [0-9.:]*' tracker.log | head -1 | cut -d' ' -f3)
"$SHOAL" create seed/tree -l 16 -a "http://$ADDR/announce" -o t.torrent > /dev/null
get() { /usr/bin/python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode("latin-1"))' "$1"; }
seeders() { get "http://$ADDR/stats.json" | grep -q "\"seeders\":$1"; }
mkdir -p tconf
cat > tconf/settings.json <<JSON
{"utp-enabled": false, "dht-enabled": false, "lpd-enabled": false, "pex-enabled": false,
 "port-forwarding-enabled": false, "encryption": 1, "bind-address-ipv4": "10.77.0.2"}
JSON
transmission() { HOME="$DIR" transmission-cli -g tconf -p 51413 -et "$@" > transmission.log 2>&1 & }
"#;

/// Transmission seeds the complete data (it checks it first), announces as
/// a seed, and `shoal download --bind 10.77.0.3` finds it through the
/// tracker.
const TRANSMISSION_SEED: &str = r#"
transmission -w seed t.torrent
for _ in $(seq 200); do seeders 1 && break; sleep 0.1; done
seeders 1 || { echo "transmission did not announce as a seed"; tail -c 1500 transmission.log; exit 1; }
echo "SEEDING $SECONDS"
rc=0
"$SHOAL" download t.torrent -o out --port 0 --bind 10.77.0.3 -x --json -q \
  --no-peers-timeout 30s > download.json 2> download.log || rc=$?
echo "DOWNLOAD $rc $SECONDS $(tail -1 download.json)"
"#;

/// Transmission downloads from `shoal seed`. MODE "dial": shoal, bound to
/// 10.77.0.3, connects to Transmission (`--peer`); "tracker": shoal listens
/// on every address and Transmission finds it through the tracker;
/// "tracker-bind": the same with shoal bound to 10.77.0.3.
const TRANSMISSION_LEECH: &str = r#"
printf '#!/bin/sh\ntouch "%s/done"\n' "$DIR" > done.sh
chmod +x done.sh
ARGS=()
case "$MODE" in
  dial) ARGS=(--bind 10.77.0.3 --peer 10.77.0.2:51413) ;;
  tracker) ;;
  tracker-bind) ARGS=(--bind 10.77.0.3) ;;
esac
start_seed() {
  "$SHOAL" seed t.torrent seed/tree --port 0 --json "${ARGS[@]}" > seed.json 2> seed.log &
  SEED=$!
}
if [ "$MODE" = dial ]; then
  transmission -w out -f "$DIR/done.sh" t.torrent
  for _ in $(seq 100); do ss -ltn | grep -q '10.77.0.2:51413' && break; sleep 0.1; done
  start_seed
else
  start_seed
  for _ in $(seq 100); do seeders 1 && break; sleep 0.1; done
  transmission -w out -f "$DIR/done.sh" t.torrent
fi
for _ in $(seq 400); do [ -e done ] && break; sleep 0.1; done
[ -e done ] || { echo "transmission did not finish"; tail -c 600 transmission.log; echo; tail -20 seed.log; exit 1; }
echo "FINISHED $SECONDS"
kill -INT $SEED
wait $SEED
echo "SEED $(tail -1 seed.json)"
"#;

/// Runs `prologue + script` under `unshare -n` in `dir` with `env`; returns
/// its stdout, or fails with its output and logs.
fn run_in_netns(dir: &Path, script: &str, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "bash", "-c", &format!("{NETNS_PROLOGUE}{script}")])
        .env("DIR", dir)
        .env("SHOAL", SHOAL)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let run = finish(cmd.spawn().unwrap(), 55, "the namespace script");
    let log = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    assert!(
        run.status.success(),
        "script failed ({}):\n{}\n{}\nseed.log:\n{}\ndownload.log:\n{}\ntracker.log:\n{}",
        run.status,
        run.stdout,
        run.stderr,
        log("seed.log"),
        log("download.log"),
        log("tracker.log")
    );
    eprint!("{}", run.stdout);
    run.stdout
}

#[test]
fn shoal_downloads_from_transmission_through_the_tracker() {
    if !can_make_netns() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_content(&d.join("seed/tree"));
    let stdout = run_in_netns(d, TRANSMISSION_SEED, &[]);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("DOWNLOAD "))
        .expect("a DOWNLOAD line");
    let mut parts = line.splitn(3, ' ');
    let rc = parts.next().unwrap();
    let log = std::fs::read_to_string(d.join("download.log")).unwrap_or_default();
    assert_eq!(rc, "0", "shoal download failed: {line}\n{log}");
    let j: serde_json::Value = serde_json::from_str(parts.nth(1).unwrap()).unwrap();
    assert_eq!(j["complete"], true, "{j}\n{log}");
    assert_eq!(j["size"], content_size(), "{j}");
    assert!(j["downloaded"].as_u64().unwrap() >= content_size(), "{j}");
    assert_eq!(j["hash_fails"], 0, "{j}");
    same_tree(&d.join("seed/tree"), &d.join("out/tree"));
}

/// Transmission downloads from `shoal seed` in `mode` (see
/// TRANSMISSION_LEECH).
fn transmission_downloads_from_shoal(mode: &str) {
    if !can_make_netns() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_content(&d.join("seed/tree"));
    let stdout = run_in_netns(d, TRANSMISSION_LEECH, &[("MODE", mode)]);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("SEED "))
        .expect("a SEED line");
    let j: serde_json::Value = serde_json::from_str(line).unwrap();
    assert!(j["uploaded"].as_u64().unwrap() >= content_size(), "{j}");
    assert_eq!(j["hash_fails"], 0, "{j}");
    // Transmission 3.00 creates no zero-length files.
    compare_nonempty(&d.join("seed/tree"), &d.join("out/tree"));
}

/// shoal, bound to its own address, connects to Transmission.
#[test]
fn transmission_downloads_from_shoal_dialing_it() {
    transmission_downloads_from_shoal("dial");
}

/// Transmission finds `shoal seed` through the tracker and connects to it.
#[test]
fn transmission_downloads_from_shoal_through_the_tracker() {
    transmission_downloads_from_shoal("tracker");
}

/// As above with `--bind 10.77.0.3`: the tracker must record that address.
#[test]
fn transmission_downloads_from_bound_shoal_through_the_tracker() {
    transmission_downloads_from_shoal("tracker-bind");
}
