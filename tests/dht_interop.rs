//! shoal's DHT node against a private DHT of libtorrent 2.0 nodes on
//! loopback: each node on its own 127.N.0.1 (libtorrent keeps one node
//! per /24 in a bucket, and runs no DHT on a wildcard socket; see
//! INTEROP.md). shoal finds a peer libtorrent announced, keeps its table
//! across a restart, and libtorrent finds a peer shoal announced.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// lt_dht.py N BASE: N libtorrent DHT nodes at 127.BASE+i.0.1 that know
/// each other. Prints "NODES a:p b:p …". Then reads commands on stdin:
/// "seed HASH" makes node 0 a peer of HASH (it announces itself to the
/// DHT), printing "SEED ip:port"; "seedfile TORRENT" makes node 0 seed it
/// from the work directory ("SEED ip:port HASH"); "leech TORRENT" has node
/// 1 download it into lt-out/ with no peer given ("DONE pct peers" or
/// "TIMEOUT pct peers", ≤ 120 s); "find HASH" has node 1 look HASH up
/// until it gets peers (≤ 60 s), printing "FOUND ip:port …" or "NOTFOUND";
/// "addnode ip:port" tells every node of another DHT node ("ADDED").
const LT_DHT: &str = r#"
import sys, time, libtorrent as lt
n, base = int(sys.argv[1]), int(sys.argv[2])
pattern = sys.argv[4] if len(sys.argv) > 4 else "127.%d.0.1"
ep = lambda ip, port: ("[%s]:%d" if ":" in ip else "%s:%d") % (ip, port)
mask = lt.alert.category_t.dht_operation_notification | lt.alert.category_t.dht_notification
nodes = []
for i in range(n):
    ip = pattern % (base + i)
    s = lt.session({"listen_interfaces": ep(ip, 0), "enable_dht": True, "enable_lsd": False,
                    "enable_upnp": False, "enable_natpmp": False, "dht_bootstrap_nodes": "",
                    "enable_outgoing_utp": False, "enable_incoming_utp": False,
                    "alert_mask": mask})
    nodes.append((ip, s))
time.sleep(0.5)
ports = [s.listen_port() for _, s in nodes]
for i, (_, s) in enumerate(nodes):
    for j, (ip, _) in enumerate(nodes):
        if i != j:
            s.add_dht_node((ip, ports[j]))
print("NODES " + " ".join(ep(ip, ports[i]) for i, (ip, _) in enumerate(nodes)), flush=True)
for line in sys.stdin:
    cmd, arg, *want = line.split()
    if cmd == "seed":
        p = lt.parse_magnet_uri("magnet:?xt=urn:btih:" + arg)
        p.save_path = sys.argv[3]
        nodes[0][1].add_torrent(p)
        print("SEED " + ep(nodes[0][0], ports[0]), flush=True)
    elif cmd == "seedfile":
        ti = lt.torrent_info(arg)
        nodes[0][1].add_torrent({"ti": ti, "save_path": sys.argv[3], "flags": lt.torrent_flags.seed_mode})
        print("SEED %s %s" % (ep(nodes[0][0], ports[0]), str(ti.info_hash())), flush=True)
    elif cmd == "addnode":
        ip, port = arg.rsplit(":", 1)
        ip = ip.strip("[]")
        for _, s in nodes:
            s.add_dht_node((ip, int(port)))
        print("ADDED", flush=True)
    elif cmd == "unseed":
        for t in nodes[0][1].get_torrents():
            nodes[0][1].remove_torrent(t)
        print("UNSEEDED", flush=True)
    elif cmd == "leech":
        h = nodes[1][1].add_torrent({"ti": lt.torrent_info(arg), "save_path": sys.argv[3] + "/lt-out"})
        deadline = time.time() + 120
        seen = set()
        while time.time() < deadline and not h.status().is_seeding:
            seen.update(ep(*p.ip) for p in h.get_peer_info() if p.total_download > 0)
            time.sleep(0.1)
        st = h.status()
        peers = sorted(seen)
        print("%s %.1f %s" % ("DONE" if st.is_seeding else "TIMEOUT", st.progress * 100, ",".join(peers)), flush=True)
    elif cmd == "find":
        h = lt.sha1_hash(bytes.fromhex(arg))
        s = nodes[1][1]
        found = set()
        deadline = time.time() + 60
        ok = lambda: found and (not want or want[0] in found)
        while time.time() < deadline and not ok():
            s.dht_get_peers(h)
            t = time.time()
            while time.time() - t < 3 and not ok():
                s.wait_for_alert(500)
                for a in s.pop_alerts():
                    if isinstance(a, lt.dht_get_peers_reply_alert) and str(a.info_hash) == arg:
                        found.update(ep(*p) for p in a.peers())
        print(("FOUND " + " ".join(sorted(found))) if found else "NOTFOUND", flush=True)
"#;

struct Swarm {
    child: Killed,
    stdin: std::process::ChildStdin,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    nodes: Vec<String>,
}

impl Swarm {
    fn start(dir: &std::path::Path, n: usize, base: u8) -> Swarm {
        std::fs::write(dir.join("lt_dht.py"), LT_DHT).unwrap();
        let child = Command::new("/usr/bin/python3")
            .args(["lt_dht.py", &n.to_string(), &base.to_string(), "."])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start lt_dht.py");
        Swarm::of(child)
    }

    /// N libtorrent nodes at fd77:BASE+i::1, each on its own /64 of a
    /// private network namespace's loopback (libtorrent keeps one node per
    /// /64 of a bucket); the namespace lives as long as they do.
    fn start_v6(dir: &std::path::Path, n: usize, base: u8) -> Swarm {
        std::fs::write(dir.join("lt_dht.py"), LT_DHT).unwrap();
        let setup = "set -e; ip link set lo up; \
            for i in $(seq 1 60); do ip -6 addr add fd77:$i::1/64 dev lo nodad; done; \
            exec /usr/bin/python3 lt_dht.py \"$@\"";
        let child = Command::new("unshare")
            .args(["-n", "bash", "-c", setup, "lt"])
            .args([&n.to_string(), &base.to_string(), ".", "fd77:%d::1"])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start lt_dht.py in a namespace");
        Swarm::of(child)
    }

    /// The swarm of a started lt_dht.py, once it has said its nodes.
    fn of(mut child: std::process::Child) -> Swarm {
        let stdin = child.stdin.take().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("lt_dht.py said nothing").unwrap();
        let nodes = first
            .strip_prefix("NODES ")
            .unwrap_or_else(|| panic!("lt_dht.py said {first:?}"))
            .split(' ')
            .map(str::to_string)
            .collect();
        Swarm {
            child: Killed(child),
            stdin,
            lines,
            nodes,
        }
    }

    /// A command run inside this swarm's network namespace (start_v6).
    fn inside(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.child.0.id().to_string(), "-n", program]);
        c.env("SHOAL_NO_DHT", "1");
        c
    }

    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.lines.next().expect("lt_dht.py ended").unwrap()
    }
}

/// `shoal dht ARGS…` with a deadline; returns (success, stdout, stderr).
fn shoal_dht(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let child = shoal_command()
        .arg("dht")
        .args(args)
        .current_dir(dir)
        .env("XDG_STATE_HOME", dir.join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = finish(child, 90, "shoal dht");
    (r.status.success(), r.stdout, r.stderr)
}

/// A fresh info hash: `salt` tells apart the ones of one test.
fn random_hash(salt: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let b = bytes(nanos ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15), 20);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn shoal_finds_a_libtorrent_peer_and_libtorrent_finds_shoals() {
    if !have_libtorrent() {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut lt = Swarm::start(d, 8, 40);
    let _keep = &lt.child;
    eprintln!("libtorrent DHT nodes: {:?}", lt.nodes);

    // libtorrent's node 0 becomes a peer of H1 and announces itself.
    let h1 = random_hash(1);
    let seed = lt.ask(&format!("seed {h1}"));
    let seed = seed.strip_prefix("SEED ").unwrap().to_string();
    // Its announce goes out when its own lookup ends: ask until we see it.
    let bootstrap = lt.nodes[3].clone();
    let state = d.join("state/shoal/dht.dat");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (out, err) = loop {
        let (ok, out, err) = shoal_dht(
            d,
            &[
                "get-peers",
                &h1,
                "--dht-bootstrap",
                &bootstrap,
                "--listen",
                "127.60.0.1:0",
                "--timeout",
                "20s",
            ],
        );
        if ok || Instant::now() > deadline {
            break (out, err);
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    eprintln!("shoal dht get-peers: {out}{err}");
    assert!(
        out.lines().any(|l| l == seed),
        "shoal did not find libtorrent's peer {seed}: {out}\n{err}"
    );
    assert!(
        state.exists(),
        "no routing table saved at {}",
        state.display()
    );

    // Restarted with no bootstrap node at all: the saved table is enough.
    let (ok, out, err) = shoal_dht(
        d,
        &[
            "get-peers",
            &h1,
            "--dht-bootstrap",
            "none",
            "--listen",
            "127.60.0.1:0",
            "--timeout",
            "20s",
        ],
    );
    assert!(
        ok && out.lines().any(|l| l == seed),
        "from the saved table: {out}\n{err}"
    );

    // shoal announces a peer of H2; libtorrent's lookup finds it.
    let h2 = random_hash(2);
    assert_ne!(h1, h2);
    let (ok, out, err) = shoal_dht(
        d,
        &[
            "get-peers",
            &h2,
            "--announce",
            "51413",
            "--dht-bootstrap",
            &bootstrap,
            "--listen",
            "127.61.0.1:0",
            "--no-state",
            "--timeout",
            "20s",
        ],
    );
    eprintln!("shoal dht get-peers --announce: {out}{err}");
    assert!(ok, "shoal could not announce: {err}");
    let found = lt.ask(&format!("find {h2}"));
    eprintln!("libtorrent dht_get_peers: {found}");
    assert!(
        found.split(' ').skip(1).any(|p| p == "127.61.0.1:51413") && !found.contains(&seed),
        "libtorrent did not find the peer shoal announced: {found}"
    );
    eprintln!("dht interop: {:?}", started.elapsed());
}

/// The content: 40 MiB (2560 blocks) in 256 KiB pieces, as a trackerless
/// torrent (no -a).
fn trackerless(d: &std::path::Path) -> Vec<u8> {
    let data = bytes(77, 40 << 20);
    write(&d.join("data.bin"), &data);
    shoal_ok(d, &["create", "data.bin", "-l", "18", "-o", "t.torrent"]);
    data
}

/// A magnet without trackers or peers, from a libtorrent seed that only
/// the DHT knows of; then a trackerless `shoal seed` that a libtorrent
/// leecher finds through its DHT alone.
#[test]
fn trackerless_downloads_both_ways_through_the_dht() {
    if !have_libtorrent() {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    trackerless(d);
    // A mixed network of 20: 12 libtorrent nodes and 8 `shoal dht` ones.
    let mut lt = Swarm::start(d, 12, 70);
    let _shoal_nodes: Vec<Killed> = (0..8)
        .map(|k| {
            let (node, addr) = shoal_node(d, 110 + k, &lt.nodes[k as usize]);
            assert_eq!(lt.ask(&format!("addnode {addr}")), "ADDED");
            node
        })
        .collect();
    let bootstrap = lt.nodes[2].clone();
    let seed = lt.ask("seedfile t.torrent");
    let mut parts = seed.split(' ').skip(1);
    let seed_addr = parts.next().unwrap().to_string();
    let hash = parts.next().unwrap().to_string();
    // Its announce is out once libtorrent's own lookup sees it.
    let found = lt.ask(&format!("find {hash} {seed_addr}"));
    assert!(
        found.contains(&seed_addr),
        "libtorrent's own DHT lookup: {found}"
    );

    // shoal: the magnet alone, the DHT on, a libtorrent node to join by.
    let magnet = format!("magnet:?xt=urn:btih:{hash}&dn=data.bin");
    let child = shoal_command()
        .env_remove("SHOAL_NO_DHT")
        .env("XDG_STATE_HOME", d.join("state"))
        .args([
            "download", &magnet, "-o", "out", "-x", "--json", "--port", "0",
        ])
        .args(["--bind", "127.80.0.1", "--dht-bootstrap", &bootstrap])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = finish(child, 150, "shoal download of a magnet through the DHT");
    assert!(r.status.success(), "{}", r.stderr);
    assert_eq!(r.json()["complete"], true, "{}", r.stderr);
    same_file(&d.join("data.bin"), &d.join("out/data.bin"));
    eprintln!(
        "shoal fetched the magnet through the DHT: {:?}",
        started.elapsed()
    );

    // shoal seeds the trackerless torrent; libtorrent's node 1 finds it
    // through the DHT (it is told of no peer) and downloads. libtorrent's
    // own seed leaves first.
    assert_eq!(lt.ask("unseed x"), "UNSEEDED");
    let _seed = Killed(
        shoal_command()
            .env_remove("SHOAL_NO_DHT")
            .env("XDG_STATE_HOME", d.join("state2"))
            .args(["seed", "t.torrent", "out/data.bin", "--port", "0", "-q"])
            .args(["--bind", "127.81.0.1", "--dht-bootstrap", &bootstrap])
            .current_dir(d)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Once libtorrent's DHT holds shoal's announce, its leecher looks.
    let found = lt.ask(&format!("find {hash} 127.81.0.1"));
    let shoal_seed = found
        .split(' ')
        .find(|p| p.starts_with("127.81.0.1:"))
        .unwrap_or_else(|| panic!("shoal's seed never reached libtorrent's DHT: {found}"))
        .to_string();
    let done = lt.ask("leech t.torrent");
    eprintln!("libtorrent leecher: {done} (shoal's seed is {shoal_seed})");
    assert!(
        done.starts_with("DONE"),
        "libtorrent did not complete: {done}"
    );
    assert!(done.contains(&shoal_seed), "not from shoal: {done}");
    same_file(&d.join("data.bin"), &d.join("lt-out/data.bin"));
    eprintln!("trackerless both ways: {:?}", started.elapsed());
}

/// aria2 (`--enable-dht --dht-entry-point`) downloads a trackerless torrent
/// from a `shoal seed` it finds through the DHT only: a standalone
/// `shoal dht` node is the entry point, the seed announced to it.
#[test]
fn aria2_downloads_from_a_shoal_seed_found_through_the_dht() {
    if !have("aria2c") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = bytes(78, 24 << 20);
    write(&d.join("data.bin"), &data);
    shoal_ok(d, &["create", "data.bin", "-l", "16", "-o", "t.torrent"]);
    // The entry point: a standalone node, no bootstrap.
    let (_node, entry) = shoal_node(d, 100, "none");
    let mut seed = shoal_command()
        .env_remove("SHOAL_NO_DHT")
        .env("XDG_STATE_HOME", d.join("state"))
        .args([
            "seed",
            "t.torrent",
            "data.bin",
            "--port",
            "0",
            "--bind",
            "127.101.0.1",
        ])
        .args(["--dht-bootstrap", &entry])
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seed_lines = BufReader::new(seed.stderr.take().unwrap()).lines();
    let _seed = Killed(seed);
    for line in seed_lines.by_ref() {
        if line.unwrap().contains("seeding") {
            break;
        }
    }
    std::thread::spawn(move || seed_lines.for_each(drop));
    // The seed's announce reaches the entry point within a lookup; look.
    let entry_dir = d.to_path_buf();
    wait_for(30, "the seed's DHT announce", || {
        let (ok, out, _) = shoal_dht(
            &entry_dir,
            &[
                "get-peers",
                &info_hash_hex(d),
                "--dht-bootstrap",
                &entry,
                "--listen",
                "127.102.0.1:0",
                "--no-state",
                "--timeout",
                "5s",
            ],
        );
        ok && out.lines().any(|l| l.starts_with("127.101.0.1:"))
    });
    let (dht_port, port) = (free_port().to_string(), free_port().to_string());
    let child = Command::new("aria2c")
        .args([
            "-q",
            "--seed-time=0",
            "--enable-dht=true",
            "--enable-dht6=false",
        ])
        .arg(format!("--dht-entry-point={entry}"))
        .arg(format!("--dht-listen-port={dht_port}"))
        .arg(format!("--dht-file-path={}", d.join("aria2.dht").display()))
        .args(["--bt-enable-lpd=false", "--enable-peer-exchange=false"])
        .arg(format!("--listen-port={port}"))
        .args(["--file-allocation=none", "-d", "aria2-out", "t.torrent"])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = finish(child, 120, "aria2c through the DHT");
    assert!(r.status.success(), "aria2c: {}\n{}", r.stdout, r.stderr);
    same_file(&d.join("data.bin"), &d.join("aria2-out/data.bin"));
}

/// The hex info hash of `t.torrent` in `d`.
fn info_hash_hex(d: &std::path::Path) -> String {
    let out = shoal_ok(d, &["show", "t.torrent", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["info_hash"].as_str().unwrap().to_string()
}

/// A standalone `shoal dht` node on 127.N.0.1 joining through `via`;
/// returns it and its UDP address.
fn shoal_node(d: &std::path::Path, n: u8, via: &str) -> (Killed, String) {
    let mut node = shoal_command()
        .args(["dht", "--listen", &format!("127.{n}.0.1:0"), "--no-state"])
        .args(["--dht-bootstrap", via])
        .current_dir(d)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(node.stderr.take().unwrap()).lines();
    let first = lines.next().expect("shoal dht said nothing").unwrap();
    let addr = first
        .rsplit("on UDP ")
        .next()
        .unwrap_or_else(|| panic!("shoal dht said {first:?}"))
        .to_string();
    std::thread::spawn(move || lines.for_each(drop));
    (Killed(node), addr)
}

/// Transmission (in a private network namespace: it ignores 127.x peers)
/// downloads a trackerless torrent from a `shoal seed` found through a DHT
/// of 20 standalone `shoal dht` nodes, given two of them in its
/// `dht.bootstrap` file. (Transmission searches only once it knows more
/// than 8 nodes, 4 of them good, hence the 20.)
const TRANSMISSION_DHT: &str = r#"
set -euo pipefail
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
ip link set lo up
for i in $(seq 1 30); do ip addr add "10.77.0.$i/24" dev lo; done
cd "$DIR"
export XDG_STATE_HOME=$DIR/state
"$SHOAL" create seed/data.bin -l 18 -o t.torrent > /dev/null
"$SHOAL" dht --listen 10.77.0.10:6881 --dht-bootstrap none --no-state 2> n10.log &
for i in $(seq 11 29); do
  "$SHOAL" dht --listen "10.77.0.$i:6881" --dht-bootstrap 10.77.0.10:6881 --no-state 2> "n$i.log" &
done
for _ in $(seq 50); do grep -q "on UDP" n29.log && break; sleep 0.1; done
"$SHOAL" seed t.torrent seed/data.bin --port 0 --bind 10.77.0.3 --dht-bootstrap 10.77.0.10:6881 -q > seed.json 2> seed.log &
# The seed's announce is stored once a lookup for its hash finds it.
HASH=$("$SHOAL" show t.torrent --json | /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["info_hash"])')
for _ in $(seq 30); do
  "$SHOAL" dht get-peers "$HASH" --listen 10.77.0.5:0 --dht-bootstrap 10.77.0.20:6881 --no-state --timeout 2s -q | grep -q '^10.77.0.3:' && break
  sleep 0.5
done
mkdir -p tconf out
cat > tconf/settings.json <<JSON
{"utp-enabled": false, "dht-enabled": true, "lpd-enabled": false, "pex-enabled": false,
 "port-forwarding-enabled": false, "encryption": 1, "bind-address-ipv4": "10.77.0.2"}
JSON
printf '10.77.0.11 6881\n10.77.0.12 6881\n' > tconf/dht.bootstrap
printf '#!/bin/sh\ntouch "%s/done"\n' "$DIR" > done.sh
chmod +x done.sh
HOME="$DIR" transmission-cli -g tconf -p 51413 -et -w out -f "$DIR/done.sh" t.torrent > transmission.log 2>&1 &
for _ in $(seq 1500); do [ -e done ] && break; sleep 0.1; done
[ -e done ] || {
  echo "transmission did not finish in 150 s"
  tr '\r' '\n' < transmission.log | grep -v '^ *$' | tail -8
  tail -n 2 n11.log; exit 1
}
echo "FINISHED $SECONDS"
"#;

#[test]
fn transmission_downloads_from_a_shoal_seed_found_through_the_dht() {
    if !can_make_netns() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("seed/data.bin"), &bytes(79, 24 << 20));
    let child = Command::new("unshare")
        .args(["-n", "bash", "-c", TRANSMISSION_DHT])
        .env("DIR", d)
        .env("SHOAL", SHOAL)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = finish(child, 200, "the Transmission DHT script");
    let log = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default();
    assert!(
        r.status.success(),
        "{}\n{}\nseed.log:\n{}",
        r.stdout,
        r.stderr,
        log("seed.log")
    );
    eprint!("{}", r.stdout);
    same_file(&d.join("seed/data.bin"), &d.join("out/data.bin"));
}

/// BEP 32: the DHT over IPv6 alone, with libtorrent. In a private namespace
/// whose only addresses are IPv6 ones, shoal downloads a magnet (no
/// trackers, no peers) from a libtorrent seed found through a DHT of
/// libtorrent nodes, with `--bind` an IPv6 address; then it announces a
/// peer that libtorrent's lookup finds.
#[test]
fn the_dht_works_over_ipv6_with_libtorrent() {
    if !have_libtorrent() || !can_unshare_net() {
        return;
    }
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    trackerless(d);
    let mut lt = Swarm::start_v6(d, 8, 1);
    eprintln!("libtorrent DHT nodes: {:?}", lt.nodes);
    let bootstrap = lt.nodes[2].clone();
    let seed = lt.ask("seedfile t.torrent");
    let mut parts = seed.split(' ').skip(1);
    let seed_addr = parts.next().unwrap().to_string();
    let hash = parts.next().unwrap().to_string();
    let found = lt.ask(&format!("find {hash} {seed_addr}"));
    assert!(
        found.contains(&seed_addr),
        "libtorrent's own DHT lookup: {found}"
    );

    let magnet = format!("magnet:?xt=urn:btih:{hash}&dn=data.bin");
    let child = lt
        .inside(SHOAL)
        .env_remove("SHOAL_NO_DHT")
        .env("XDG_STATE_HOME", d.join("state"))
        .args([
            "download", &magnet, "-o", "out", "-x", "--json", "--port", "0",
        ])
        .args(["--bind", "fd77:30::1", "--dht-bootstrap", &bootstrap])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = finish(
        child,
        150,
        "shoal download of a magnet through the IPv6 DHT",
    );
    assert!(r.status.success(), "{}", r.stderr);
    assert_eq!(r.json()["complete"], true, "{}", r.stderr);
    same_file(&d.join("data.bin"), &d.join("out/data.bin"));
    assert!(
        d.join("state/shoal/dht6.dat").exists(),
        "the IPv6 table was not saved"
    );
    eprintln!(
        "shoal fetched the magnet over IPv6: {:?}",
        started.elapsed()
    );

    // shoal announces a peer of a fresh hash; libtorrent finds it.
    let h2 = random_hash(3);
    let child = lt
        .inside(SHOAL)
        .args(["dht", "get-peers", &h2, "--announce", "7777", "--no-state"])
        .args(["--listen", "[fd77:31::1]:0", "--dht-bootstrap", &bootstrap])
        .args(["--timeout", "20s"])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = finish(child, 60, "shoal dht get-peers --announce over IPv6");
    assert!(r.status.success(), "shoal could not announce: {}", r.stderr);
    let found = lt.ask(&format!("find {h2} [fd77:31::1]:7777"));
    assert!(
        found.split(' ').any(|p| p == "[fd77:31::1]:7777"),
        "libtorrent did not find the peer shoal announced: {found}"
    );
    eprintln!("dht over IPv6: {:?}", started.elapsed());
}

/// lt_port.py ROLE IP TORRENT [PEER]: one libtorrent session on IP with its
/// DHT on and no bootstrap node. "leech": downloads TORRENT from PEER into
/// lt-out/; "seed": seeds it from the work directory, printing "SEED
/// ip:port". Then, within 20 s, prints "DHT n" once its routing table holds
/// n ≥ 1 nodes (or "DHT 0").
const LT_PORT: &str = r#"
import sys, time, libtorrent as lt
role, ip, torrent = sys.argv[1], sys.argv[2], sys.argv[3]
s = lt.session({"listen_interfaces": ip + ":0", "enable_dht": True, "dht_bootstrap_nodes": "",
                "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
                "enable_outgoing_utp": False, "enable_incoming_utp": False})
ti = lt.torrent_info(torrent)
if role == "seed":
    s.add_torrent({"ti": ti, "save_path": ".", "flags": lt.torrent_flags.seed_mode})
    time.sleep(0.3)
    print("SEED %s:%d" % (ip, s.listen_port()), flush=True)
else:
    h = s.add_torrent({"ti": ti, "save_path": "lt-out"})
    host, port = sys.argv[4].split(":")
    h.connect_peer((host, int(port)))
    deadline = time.time() + 60
    while time.time() < deadline and not h.status().is_seeding:
        time.sleep(0.1)
    print("SEEDING" if h.status().is_seeding else "INCOMPLETE", flush=True)
deadline = time.time() + 20
n = 0
while time.time() < deadline and n == 0:
    n = s.status().dht_nodes
    time.sleep(0.1)
print("DHT %d" % n, flush=True)
time.sleep(30 if role == "seed" else 0)
"#;

/// BEP 5's PORT message, both ways: peers that know of no DHT node but each
/// other learn each other's node from the peer connection alone.
#[test]
fn peers_learn_each_others_dht_node_from_the_port_message() {
    if !have_libtorrent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    trackerless(d);
    std::fs::write(d.join("lt_port.py"), LT_PORT).unwrap();

    // shoal seeds; a libtorrent leecher's DHT can only learn shoal's node
    // from our PORT message.
    let mut seed = shoal_command()
        .env_remove("SHOAL_NO_DHT")
        .env("XDG_STATE_HOME", d.join("state-seed"))
        .args(["seed", "t.torrent", "data.bin", "--port", "0", "--json"])
        .args(["--bind", "127.95.0.1", "--dht-bootstrap", "none"])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(seed.stderr.take().unwrap()).lines();
    let _seed = Killed(seed);
    let port = loop {
        let line = err.next().expect("shoal seed said nothing").unwrap();
        if let Some(rest) = line.split("listening on 127.95.0.1:").nth(1) {
            break rest.trim_end_matches(';').to_string();
        }
    };
    std::thread::spawn(move || err.for_each(drop));
    let out = Command::new("/usr/bin/python3")
        .args(["lt_port.py", "leech", "127.96.0.1", "t.torrent"])
        .arg(format!("127.95.0.1:{port}"))
        .current_dir(d)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    eprintln!("libtorrent leecher: {said}");
    assert!(
        said.contains("SEEDING"),
        "libtorrent did not finish: {said}"
    );
    assert!(
        !said.contains("DHT 0"),
        "libtorrent's DHT never learned shoal's node: {said}"
    );
    same_file(&d.join("data.bin"), &d.join("lt-out/data.bin"));

    // libtorrent seeds; shoal's DHT, told of no node, keeps libtorrent's
    // (the table is saved only when it holds a node).
    let mut lt = Command::new("/usr/bin/python3")
        .args(["lt_port.py", "seed", "127.97.0.1", "t.torrent"])
        .current_dir(d)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(lt.stdout.take().unwrap()).lines();
    let _lt = Killed(lt);
    let first = lines.next().expect("lt_port.py said nothing").unwrap();
    let peer = first.strip_prefix("SEED ").unwrap().to_string();
    let child = shoal_command()
        .env_remove("SHOAL_NO_DHT")
        .env("XDG_STATE_HOME", d.join("state-leech"))
        .args(["download", "t.torrent", "-o", "out2", "-x", "--port", "0"])
        .args(["--bind", "127.98.0.1", "--dht-bootstrap", "none"])
        .args(["--peer", &peer, "--no-trackers", "--json"])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let r = finish(child, 90, "shoal download from a libtorrent seed");
    assert!(r.status.success(), "{}", r.stderr);
    same_file(&d.join("data.bin"), &d.join("out2/data.bin"));
    let table = std::fs::read(d.join("state-leech/shoal/dht.dat"))
        .expect("shoal saved no DHT table: it never learned libtorrent's node");
    let v = torrent_format::bencode::decode(&table).unwrap();
    let nodes = match v.get("nodes") {
        Some(torrent_format::bencode::Value::Bytes(b)) => b.len() / 26,
        _ => 0,
    };
    assert_eq!(nodes, 1, "libtorrent's node, alone");
}
