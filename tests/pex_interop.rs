//! Peer exchange (BEP 11) against libtorrent, over several minutes.
//!
//! Three libtorrent sessions in one Python process and one `shoal download`:
//!
//! - L, a libtorrent seed (stock settings, ut_pex on), is the only peer
//!   shoal is told about (`--peer`);
//! - T, a libtorrent leecher with no ut_pex and no tracker, knows only L.
//!   Nobody tells shoal about T but L's PEX, and T can never learn of
//!   shoal: a connection from shoal to T proves shoal learned T by PEX
//!   and dialed it;
//! - V, a libtorrent leecher that connects to shoal and is replaced by a
//!   new one (a new address) every 23 s, so shoal has news for L every
//!   minute.
//!
//! Over three and a half minutes L must receive several ut_pex messages from shoal,
//! and no libtorrent session may drop anyone for too-frequent PEX (a 4th
//! message within 60 s; libtorrent's rule). shoal downloads at 160 KiB/s (5 minutes alone),
//! so it is still a leecher, connected to L, for the whole run; then its
//! data is compared.
//!
//! The content is 48 MiB in 64 KiB pieces (768 pieces, 3072 blocks).

mod common;

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};

use common::*;

const SIZE: usize = 48 * 1024 * 1024 + 777;
/// How long the swarm runs with shoal in it, in seconds.
const RUN: u64 = 210;

/// pex.py TORRENT SEED_DIR WORK_DIR SECONDS: prints "L PORT" and
/// "T PORT", reads shoal's port from stdin, runs SECONDS, prints a JSON
/// report, then keeps L and T up until its stdin closes.
const SWARM: &str = r#"
import json, os, sys, time
import libtorrent as lt

torrent, seed_dir, work, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
base = {"listen_interfaces": "127.0.0.1:0", "enable_dht": False, "enable_lsd": False,
        "enable_upnp": False, "enable_natpmp": False, "enable_outgoing_utp": False,
        "enable_incoming_utp": False, "allow_multiple_connections_per_ip": True,
        "alert_mask": lt.alert.category_t.peer_log_notification
                      | lt.alert.category_t.connect_notification
                      | lt.alert.category_t.peer_notification
                      | lt.alert.category_t.error_notification}

def add(ses, save, seed=False, limit=0):
    p = lt.add_torrent_params()
    p.ti = lt.torrent_info(torrent)
    p.save_path = save
    if seed:
        p.flags = lt.torrent_flags.seed_mode
    h = ses.add_torrent(p)
    if limit:
        h.set_download_limit(limit)
    return h

L = lt.session(base)
T = lt.session(base, 0)  # no default plugins: no ut_pex
V = lt.session(base)
hl = add(L, seed_dir, seed=True)
ht = add(T, os.path.join(work, "t"), limit=100_000)
hv = add(V, os.path.join(work, "v"), limit=50_000)
deadline = time.time() + 30
while hl.status().state != lt.torrent_status.seeding and time.time() < deadline:
    time.sleep(0.01)
time.sleep(0.5)
ht.connect_peer(("127.0.0.1", L.listen_port()))
print("L", L.listen_port(), flush=True)
print("T", T.listen_port(), flush=True)
shoal_port = int(sys.stdin.readline())

report = {"pex_from_shoal": [], "too_frequent": [], "l_disconnects_of_shoal": [],
          "t_incoming_from_shoal": False, "v_cycles": 0, "l_connected_to_shoal_at_end": False}
SHOAL = b"-SH"

def is_shoal(a):
    try:
        return bytes(a.pid.to_bytes())[:3] == SHOAL
    except Exception:
        return str(a.pid).startswith("2d5348")

def drain(ses, name):
    for a in ses.pop_alerts():
        if isinstance(a, lt.peer_log_alert):
            # "<== PEX" lines: an incoming ut_pex message and its counts.
            if name == "L" and is_shoal(a) and "PEX" in a.message() and "==>" not in a.message():
                report["pex_from_shoal"].append([round(time.time() - start, 1), a.log_message()])
        elif isinstance(a, lt.peer_disconnected_alert):
            msg = a.message()
            if "pex" in msg.lower():
                report["too_frequent"].append([name, msg])
            if name == "L" and is_shoal(a):
                report["l_disconnects_of_shoal"].append(msg)

start = time.time()
hv.connect_peer(("127.0.0.1", shoal_port))
next_cycle = start + 23
while time.time() - start < seconds:
    time.sleep(0.2)
    drain(L, "L"); drain(T, "T"); drain(V, "V")
    if time.time() >= next_cycle:
        # A new V at a new address each time, and then the old one goes:
        # added and dropped are news, and there is always a V.
        next_cycle += 23
        old, hold = V, hv
        V = lt.session(base)
        hv = add(V, os.path.join(work, "v%d" % report["v_cycles"]), limit=50_000)
        hv.connect_peer(("127.0.0.1", shoal_port))
        time.sleep(2)
        old.remove_torrent(hold)
        del old, hold
        report["v_cycles"] += 1
    for p in ht.get_peer_info():
        if bytes(p.pid.to_bytes())[:3] == SHOAL and not (p.flags & lt.peer_info.local_connection):
            report["t_incoming_from_shoal"] = True
for p in hl.get_peer_info():
    if bytes(p.pid.to_bytes())[:3] == SHOAL:
        report["l_connected_to_shoal_at_end"] = True
drain(L, "L")
print(json.dumps(report), flush=True)
# L and T stay for shoal to finish, until stdin closes.
sys.stdin.read()
"#;

#[test]
fn shoal_learns_a_peer_by_pex_and_never_floods_libtorrent() {
    if !have_libtorrent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("seed/data.bin"), &bytes(23, SIZE));
    shoal_ok(
        d,
        &["create", "seed/data.bin", "-l", "16", "-o", "t.torrent"],
    );
    std::fs::write(d.join("pex.py"), SWARM).unwrap();
    let mut py = Killed(
        Command::new("/usr/bin/python3")
            .args(["pex.py", "t.torrent", "seed", ".", &RUN.to_string()])
            .current_dir(d)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the libtorrent swarm"),
    );
    let mut stdin = py.0.stdin.take().unwrap();
    let mut lines = BufReader::new(py.0.stdout.take().unwrap()).lines();
    let mut port_of = |who: &str| -> u16 {
        let line = lines.next().expect("a line from pex.py").unwrap();
        line.strip_prefix(who)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("pex.py said {line:?}, not {who} PORT"))
    };
    let l_port = port_of("L ");
    let t_port = port_of("T ");
    let peer = format!("127.0.0.1:{l_port}");
    let mut s = Shoal::download(
        d,
        "shoal",
        "out",
        &["--peer", &peer, "--download-limit", "160K", "-x"],
    );
    writeln!(stdin, "{}", s.port).unwrap();
    let report = lines.next().expect("a report from pex.py").unwrap();
    eprintln!("libtorrent: {report}");
    let r: serde_json::Value = serde_json::from_str(&report).unwrap();

    // shoal learned T from L alone, and dialed it.
    assert_eq!(
        r["t_incoming_from_shoal"], true,
        "shoal never dialed T: {r}"
    );
    assert!(
        s.said(&format!("127.0.0.1:{t_port}: connected")),
        "shoal's log has no connection to T"
    );
    // libtorrent took shoal's messages, several of them, and never found
    // them too frequent.
    let from_shoal = r["pex_from_shoal"].as_array().unwrap();
    assert!(
        from_shoal.len() >= 2,
        "L got {} ut_pex from shoal: {r}",
        from_shoal.len()
    );
    assert_eq!(r["too_frequent"], serde_json::json!([]), "{r}");
    assert_eq!(r["l_disconnects_of_shoal"], serde_json::json!([]), "{r}");
    assert_eq!(r["l_connected_to_shoal_at_end"], true, "{r}");
    assert!(r["v_cycles"].as_u64().unwrap() >= 3, "{r}");

    // Then it finishes, with the right bytes.
    let (status, j) = s.finish(300);
    assert!(status.success(), "shoal download failed: {status}");
    assert_eq!(j["complete"], true, "{j}");
    same_file(&d.join("seed/data.bin"), &d.join("out/data.bin"));
    drop(stdin);
}
