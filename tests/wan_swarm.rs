//! A small swarm on hosts with capped links, as `bench/wan.sh` builds them:
//! each peer in a network namespace of its own, joined by a veth pair to a
//! bridge in a hub namespace, its link capped up and down with `tc tbf`,
//! `shoal tracker` on the hub. One shoal seed, three shoal leechers and one
//! libtorrent leecher (bench/swarm/lt_peer.py, when python3-libtorrent is
//! here) trade a few MiB; everyone must complete with data identical to the
//! seed's. Correctness only: no timing is checked.
//!
//! Needs root (`ip netns add`); skipped with a reason otherwise, a failure
//! under SHOAL_REQUIRE_INTEROP=1. Every namespace (and with it every veth
//! and qdisc) is deleted when the test ends, even when it fails; every
//! process is killed by its PID first (deleting a namespace does not).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

const SIZE: usize = 4 << 20;
const SHOAL_LEECHERS: usize = 3;
const UP_MBIT: u32 = 40;
const DOWN_MBIT: u32 = 100;
/// 10.NET.0.0/16 inside the test's namespaces only; each host in a /24 of
/// its own (BEP 6 gives peers in one /24 the same allowed-fast pieces).
const NET: u32 = 202;

/// The hub (a bridge, the tracker at 10.NET.0.1) and the hosts hanging off
/// it; deleted on drop.
struct Testbed {
    prefix: String,
    namespaces: Vec<String>,
}

fn ip(args: &[&str]) {
    run("ip", args);
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Testbed {
    fn new() -> Testbed {
        let prefix = format!("shoaltest{}", std::process::id());
        let mut bed = Testbed {
            namespaces: Vec::new(),
            prefix,
        };
        let hub = bed.hub();
        bed.namespaces.push(hub.clone());
        ip(&["netns", "add", &hub]);
        ip(&["-n", &hub, "link", "set", "lo", "up"]);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &hub,
            "addr",
            "add",
            &format!("10.{NET}.0.1/16"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        bed
    }

    fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// A host `name` at `addr` (10.NET.x.1), linked to the hub with UP_MBIT
    /// out of it and DOWN_MBIT into it; returns its namespace.
    fn host(&mut self, name: &str, addr: &str) -> String {
        let (ns, hub, far) = (
            format!("{}-{name}", self.prefix),
            self.hub(),
            format!("v{name}"),
        );
        self.namespaces.push(ns.clone());
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &far, "netns",
            &hub,
        ]);
        ip(&["-n", &hub, "link", "set", &far, "master", "br0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/16"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        for (netns, dev, mbit) in [(&ns, "eth0", UP_MBIT), (&hub, far.as_str(), DOWN_MBIT)] {
            let rate = format!("{mbit}mbit");
            run(
                "tc",
                &[
                    "-n", netns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", &rate, "burst",
                    "64kbit", "latency", "100ms",
                ],
            );
        }
        ns
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// A libtorrent leecher (bench/swarm/lt_peer.py) on a host: says "download
/// complete" on stdout once it has every piece, keeps seeding, and prints
/// its JSON summary when interrupted.
struct LtLeecher {
    proc: Killed,
    lines: mpsc::Receiver<String>,
}

impl LtLeecher {
    fn start(ns: &str, dir: &Path, addr: &str) -> LtLeecher {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/swarm/lt_peer.py");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(script)
            .args(["leech", "t.torrent", "lt"])
            .current_dir(dir)
            .env("LT_LISTEN", format!("{addr}:0"));
        let mut child = in_netns(ns, &cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the libtorrent leecher");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("libtorrent: {line}");
                let _ = tx.send(line);
            }
        });
        LtLeecher {
            proc: Killed(child),
            lines,
        }
    }

    /// Waits (bounded) for a line that starts with `prefix`; returns it.
    fn wait_line(&mut self, secs: u64, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(e) => panic!("the libtorrent leecher never said {prefix:?} ({e})"),
            }
        }
    }
}

#[test]
fn swarm_on_capped_links_completes_with_identical_data() {
    if !can_add_netns() {
        return;
    }
    let with_libtorrent = have_libtorrent();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Declared before every process, so dropped after them: the processes
    // are killed (Killed, by PID) before their namespaces are deleted.
    let mut bed = Testbed::new();
    let hub = bed.hub();
    let (_tracker, taddr) = start_tracker_in(&hub, &format!("10.{NET}.0.1:0"), &[]);

    let data = d.join("seed/data.bin");
    write(&data, &bytes(18, SIZE));
    let announce = format!("http://{taddr}/announce");
    shoal_ok(
        d,
        &[
            "create",
            "seed/data.bin",
            "-l",
            "16",
            "-a",
            &announce,
            "-o",
            "t.torrent",
        ],
    );

    let seed_ip = format!("10.{NET}.1.1");
    let seed_ns = bed.host("seed", &seed_ip);
    let mut seed = Shoal::start_in(
        &seed_ns,
        d,
        "seed",
        &[
            "seed",
            "t.torrent",
            "seed/data.bin",
            "--port",
            "0",
            "--bind",
            &seed_ip,
            "--json",
        ],
    );
    wait_for(30, "the tracker to list the seed", || {
        in_netns_thread(&hub, move || tracker_stats(taddr)["seeders"] == 1)
    });

    // Hosts first, then every leecher at once.
    let hosts: Vec<(String, String)> = (0..SHOAL_LEECHERS + 1)
        .map(|i| {
            let addr = format!("10.{NET}.{}.1", 2 + i);
            (bed.host(&format!("l{i}"), &addr), addr)
        })
        .collect();
    let mut leechers: Vec<Shoal> = hosts[..SHOAL_LEECHERS]
        .iter()
        .enumerate()
        .map(|(i, (ns, addr))| {
            let (label, out) = (format!("l{i}"), format!("l{i}"));
            let args = [
                "download",
                "t.torrent",
                "-o",
                &out,
                "--port",
                "0",
                "--bind",
                addr,
                "--json",
            ];
            Shoal::start_in(ns, d, &label, &args)
        })
        .collect();
    let mut lt = with_libtorrent.then(|| {
        let (ns, addr) = &hosts[SHOAL_LEECHERS];
        LtLeecher::start(ns, d, addr)
    });

    // Every leecher keeps seeding until the last one completes.
    for l in &mut leechers {
        l.wait_line(60, "download complete");
    }
    if let Some(lt) = &mut lt {
        lt.wait_line(60, "download complete");
    }
    for i in 0..SHOAL_LEECHERS {
        same_file(&data, &d.join(format!("l{i}/data.bin")));
    }
    if with_libtorrent {
        same_file(&data, &d.join("lt/data.bin"));
    }

    for l in &mut leechers {
        let (status, json) = l.interrupt(30);
        assert!(status.success(), "{}: {status}", l.label);
        assert_eq!(json["complete"], true, "{}: {json}", l.label);
    }
    if let Some(mut lt) = lt {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(lt.proc.0.id() as libc::pid_t, libc::SIGINT) },
            0
        );
        let summary = lt.wait_line(30, "{");
        let json: serde_json::Value = serde_json::from_str(&summary).unwrap();
        assert_eq!(json["complete"], true, "libtorrent: {json}");
        wait_child(&mut lt.proc.0, 30, "the libtorrent leecher");
    }
    let (status, json) = seed.interrupt(30);
    assert!(status.success(), "seed: {status}");
    assert!(json["uploaded"].as_u64().unwrap() > 0, "seed: {json}");
}
