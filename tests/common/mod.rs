//! Helpers shared by the end-to-end tests: run the real `shoal` binary, make
//! test trees, and decide whether a third-party peer program is available.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");

/// A `shoal` command with the DHT off: tests talk to loopback only, and the
/// DHT's default routers are on the internet. DHT tests turn it back on
/// (`.env_remove("SHOAL_NO_DHT")`) with their own `--dht-bootstrap`.
pub fn shoal_command() -> Command {
    let mut c = Command::new(SHOAL);
    c.env("SHOAL_NO_DHT", "1");
    // Never the real home's state (what seeds remember having checked,
    // the DHT table): tests that look at it give their own.
    c.env(
        "XDG_STATE_HOME",
        std::env::temp_dir().join("shoal-tests-state"),
    );
    c
}

/// Runs shoal with `args` in `cwd`.
pub fn shoal(cwd: &Path, args: &[&str]) -> Output {
    let out = shoal_command()
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run shoal");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "shoal {args:?} panicked:\n{stderr}"
    );
    out
}

/// Runs shoal and insists on success; returns stdout.
pub fn shoal_ok(cwd: &Path, args: &[&str]) -> String {
    let out = shoal(cwd, args);
    assert!(
        out.status.success(),
        "shoal {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// `shoal show --json` of a torrent file.
pub fn show_json(cwd: &Path, torrent: &str) -> serde_json::Value {
    serde_json::from_str(&shoal_ok(cwd, &["show", "--json", torrent])).expect("json")
}

pub fn interop_required() -> bool {
    std::env::var("SHOAL_REQUIRE_INTEROP").as_deref() == Ok("1")
}

/// Is `program` (a peer program from Debian) here? If not: skip with a
/// printed reason, or fail when SHOAL_REQUIRE_INTEROP=1.
pub fn have(program: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success());
    skip_unless(found, program)
}

/// python3-libtorrent, which lives under Debian's /usr/bin/python3.
pub fn have_libtorrent() -> bool {
    let found = Command::new("/usr/bin/python3")
        .args(["-c", "import libtorrent"])
        .output()
        .is_ok_and(|o| o.status.success());
    skip_unless(
        found,
        "python3-libtorrent (/usr/bin/python3 -c 'import libtorrent')",
    )
}

fn skip_unless(found: bool, what: &str) -> bool {
    if !found {
        assert!(
            !interop_required(),
            "{what} is not installed, and SHOAL_REQUIRE_INTEROP=1 requires it"
        );
        eprintln!("SKIP: {what} is not installed");
    }
    found
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no data files.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn write(path: &Path, data: &[u8]) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(path, data).unwrap();
}

/// A tree with nested folders, an empty file, a hidden file, sizes that are
/// not multiples of any piece length, and names whose byte order differs
/// from a per-component order ("a-b" sorts before "a/…").
pub fn make_tree(root: &Path) -> PathBuf {
    write(&root.join("a/b/deep.bin"), &bytes(1, 70_001));
    write(&root.join("a/one.txt"), b"one\n");
    write(&root.join("a-b"), &bytes(2, 33_333));
    write(&root.join("empty"), b"");
    write(&root.join(".hidden"), b"hidden\n");
    write(&root.join("z/empty-too"), b"");
    write(&root.join("Zed.bin"), &bytes(3, 131_072));
    root.to_path_buf()
}

/// Every file under `dir`, relative, sorted (to prove nothing was written).
pub fn listing(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if p.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A child process killed when dropped.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `shoal tracker --listen ADDR` (port 0) and waits for its
/// "listening on" line; returns the process and the bound address.
pub fn start_tracker(listen: &str, extra: &[&str]) -> (Killed, std::net::SocketAddr) {
    let mut cmd = shoal_command();
    cmd.args(["tracker", "--listen", listen]).args(extra);
    spawn_tracker(cmd)
}

/// [`start_tracker`] inside network namespace `ns`.
pub fn start_tracker_in(ns: &str, listen: &str, extra: &[&str]) -> (Killed, SocketAddr) {
    let mut cmd = shoal_command();
    cmd.args(["tracker", "--listen", listen]).args(extra);
    spawn_tracker(in_netns(ns, &cmd))
}

fn spawn_tracker(mut cmd: Command) -> (Killed, SocketAddr) {
    let mut child = cmd
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start shoal tracker");
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("tracker exited before listening")
            .unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split(';').next().unwrap().parse().unwrap();
        }
    };
    // Keep draining stderr so the tracker never blocks on a full pipe; the
    // lines become part of the test's output (shown when it fails).
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("tracker: {line}");
        }
    });
    (Killed(child), addr)
}

/// A minimal HTTP/1.0 GET (no dependency on an HTTP client crate).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("http head");
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, resp[split + 4..].to_vec())
}

/// A port that was free a moment ago (for programs that cannot take 0).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `cond` every 50 ms until it holds or `secs` pass.
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits for a child with a deadline; kills it and fails on timeout.
pub fn wait_child(
    child: &mut std::process::Child,
    secs: u64,
    what: &str,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish within {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Python for a libtorrent seed: `seed.py TORRENT SAVE_DIR LISTEN` runs
/// until its stdin closes.
pub const LIBTORRENT_SEED: &str = r#"
import libtorrent as lt, sys, threading, time
ses = lt.session({"listen_interfaces": sys.argv[3], "enable_dht": False, "enable_lsd": False,
    "enable_upnp": False, "enable_natpmp": False, "enable_outgoing_utp": False,
    "enable_incoming_utp": False, "allow_multiple_connections_per_ip": True,
    "announce_to_all_trackers": True})
p = lt.add_torrent_params()
p.ti = lt.torrent_info(sys.argv[1])
p.save_path = sys.argv[2]
p.flags = lt.torrent_flags.seed_mode
h = ses.add_torrent(p)
# add_torrent returns before the torrent takes connections: one that
# arrives first is closed during the handshake. Wait until it seeds.
deadline = time.time() + 30
while h.status().state != lt.torrent_status.seeding and time.time() < deadline:
    time.sleep(0.01)
print("seeding", ses.listen_port(), flush=True)
sys.stdin.read()
"#;

/// Starts a libtorrent seed of `dir/t.torrent` with its data in `dir/seed`,
/// listening on 127.0.0.1; returns it (killed on drop) and its port, once
/// it is seeding.
pub fn start_libtorrent_seed(dir: &Path) -> (Killed, u16) {
    use std::io::BufRead;
    std::fs::write(dir.join("seed.py"), LIBTORRENT_SEED).unwrap();
    let mut seed = Killed(
        Command::new("/usr/bin/python3")
            .args(["seed.py", "t.torrent", "seed", "127.0.0.1:0"])
            .current_dir(dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
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

/// Every file under `a` equals the same file under `b`.
pub fn same_tree(a: &Path, b: &Path) {
    let la = listing(a);
    assert_eq!(la, listing(b), "different file lists");
    for f in la {
        let (pa, pb) = (a.join(&f), b.join(&f));
        if pa.is_file() {
            assert!(
                std::fs::read(&pa).unwrap() == std::fs::read(&pb).unwrap(),
                "{f} differs"
            );
        }
    }
}

/// Every non-empty file under `a` is under `b` with the same bytes; any
/// file under `b` is under `a` too.
pub fn compare_nonempty(a: &Path, b: &Path) {
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

/// `b` holds the same bytes as `a` (a missing `b` differs).
pub fn same_file(a: &Path, b: &Path) {
    let da = std::fs::read(a).unwrap();
    let db = std::fs::read(b).unwrap_or_default();
    assert!(
        da == db,
        "{} ({} bytes) differs from {} ({} bytes)",
        b.display(),
        db.len(),
        a.display(),
        da.len()
    );
}

/// A `shoal tracker`'s `/stats.json`.
pub fn tracker_stats(addr: std::net::SocketAddr) -> serde_json::Value {
    let (status, body) = http_get(addr, "/stats.json");
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

/// A running `shoal seed` or `shoal download`, killed when dropped. Its
/// stderr is echoed (prefixed with its label) and kept; its stdout (the
/// `--json` summary) is read once it has exited.
pub struct Shoal {
    pub label: String,
    pub proc: Killed,
    pub port: u16,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Shoal {
    /// `shoal seed t.torrent DATA --port 0 EXTRA…` in `cwd`, labelled "seed".
    pub fn seed(cwd: &Path, data: &str, extra: &[&str]) -> Shoal {
        let mut args = vec!["seed", "t.torrent", data, "--port", "0"];
        args.extend_from_slice(extra);
        Shoal::start(cwd, "seed", &args)
    }

    /// `shoal download t.torrent -o OUT --port 0 --json EXTRA…` in `cwd`.
    pub fn download(cwd: &Path, label: &str, out: &str, extra: &[&str]) -> Shoal {
        let mut args = vec!["download", "t.torrent", "-o", out, "--port", "0", "--json"];
        args.extend_from_slice(extra);
        Shoal::start(cwd, label, &args)
    }

    /// Starts `shoal ARGS` in `cwd` (client debug logs on) and waits (bounded) for its "listening
    /// on" line.
    pub fn start(cwd: &Path, label: &str, args: &[&str]) -> Shoal {
        Shoal::start_with(cwd, label, args, &[])
    }

    /// [`Shoal::start`] with extra environment variables.
    pub fn start_with(cwd: &Path, label: &str, args: &[&str], env: &[(&str, &Path)]) -> Shoal {
        let mut cmd = shoal_command();
        cmd.envs(env.iter().map(|(k, v)| (*k, *v)))
            .args(args)
            .current_dir(cwd)
            .env("RUST_LOG", "info,client=debug");
        Shoal::spawn(cmd, label)
    }

    /// [`Shoal::start`] inside network namespace `ns`.
    pub fn start_in(ns: &str, cwd: &Path, label: &str, args: &[&str]) -> Shoal {
        let mut cmd = shoal_command();
        cmd.args(args)
            .current_dir(cwd)
            .env("RUST_LOG", "info,client=debug");
        Shoal::spawn(in_netns(ns, &cmd), label)
    }

    fn spawn(mut cmd: Command, label: &str) -> Shoal {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start shoal");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let (kept, name) = (lines.clone(), label.to_string());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{name}: {line}");
                if let Some(rest) = line.split("listening on ").nth(1) {
                    if let Some(addr) = rest
                        .split(';')
                        .next()
                        .and_then(|a| a.trim().parse::<SocketAddr>().ok())
                    {
                        let _ = tx.send(addr.port());
                    }
                }
                kept.lock().unwrap().push(line);
            }
        });
        let proc = Killed(child);
        let port = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{label} never said where it listens ({e})"));
        Shoal {
            label: label.to_string(),
            proc,
            port,
            lines,
        }
    }

    /// Where peers on this machine reach it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn said(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    pub fn line_with(&self, needle: &str) -> Option<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.0.try_wait().unwrap().is_none()
    }

    /// Waits for a line containing `needle`; fails if the process exits
    /// first or `secs` pass.
    pub fn wait_line(&mut self, secs: u64, needle: &str) {
        let what = format!("{} to say {needle:?}", self.label);
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.said(needle) {
            assert!(
                self.is_running(),
                "{} exited before saying {needle:?}",
                self.label
            );
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the exit (bounded); returns the status and stdout.
    fn wait_stdout(&mut self, secs: u64) -> (ExitStatus, String) {
        let status = wait_child(&mut self.proc.0, secs, &self.label);
        let mut out = String::new();
        if let Some(mut stdout) = self.proc.0.stdout.take() {
            stdout.read_to_string(&mut out).unwrap();
        }
        // Let the stderr thread catch up with the last lines.
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !self.said("panicked") && !self.said("RUST_BACKTRACE"),
            "{} panicked",
            self.label
        );
        (status, out)
    }

    /// Waits for the exit (bounded); returns the status and the JSON summary
    /// (`Null` when there is none).
    pub fn finish(&mut self, secs: u64) -> (ExitStatus, serde_json::Value) {
        let (status, out) = self.wait_stdout(secs);
        let json =
            out.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map_or(serde_json::Value::Null, |l| {
                    serde_json::from_str(l)
                        .unwrap_or_else(|e| panic!("{}: bad JSON {l:?}: {e}", self.label))
                });
        eprintln!("{}: exit {status}, summary {json}", self.label);
        (status, json)
    }

    /// Waits for the exit (bounded); returns the status and every non-empty
    /// line of stdout as JSON (a multi-torrent run prints one summary per
    /// torrent).
    pub fn finish_all(&mut self, secs: u64) -> (ExitStatus, Vec<serde_json::Value>) {
        let (status, out) = self.wait_stdout(secs);
        let json: Vec<serde_json::Value> = out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{}: bad JSON {l:?}: {e}", self.label))
            })
            .collect();
        eprintln!("{}: exit {status}, summaries {json:?}", self.label);
        (status, json)
    }

    /// Sends SIGINT (a clean stop).
    fn sigint(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        let r = unsafe { libc::kill(self.proc.0.id() as libc::pid_t, libc::SIGINT) };
        assert_eq!(r, 0, "kill -INT {}", self.label);
    }

    /// SIGINT (a clean stop), then [`Shoal::finish`].
    pub fn interrupt(&mut self, secs: u64) -> (ExitStatus, serde_json::Value) {
        self.sigint();
        self.finish(secs)
    }

    /// SIGINT (a clean stop), then [`Shoal::finish_all`].
    pub fn interrupt_all(&mut self, secs: u64) -> (ExitStatus, Vec<serde_json::Value>) {
        self.sigint();
        self.finish_all(secs)
    }

    /// SIGKILL: no clean-up at all.
    pub fn kill9(&mut self) {
        self.proc.0.kill().unwrap();
        self.proc.0.wait().unwrap();
    }
}

/// What a finished shoal process left behind.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The JSON summary (`--json`) on stdout.
    pub fn json(&self) -> serde_json::Value {
        let line = self.stdout.lines().last().unwrap_or_else(|| {
            panic!(
                "no JSON on stdout ({}); stderr:\n{}",
                self.status, self.stderr
            )
        });
        serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}; stderr:\n{}", self.stderr))
    }
}

/// Collects a child's stdout and stderr on threads (so neither pipe fills),
/// waits at most `secs`, and kills it on timeout (then fails with its output).
pub fn finish(mut child: std::process::Child, secs: u64, what: &str) -> Run {
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(secs);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    assert!(!stderr.contains("panicked"), "{what} panicked:\n{stderr}");
    let Some(status) = status else {
        panic!("{what} did not finish within {secs} s\nstdout:\n{stdout}\nstderr:\n{stderr}")
    };
    Run {
        status,
        stdout,
        stderr,
    }
}

/// Is this root, with Transmission, `unshare`, `ip` and `ss` (for a private
/// network namespace and the scripts run in it)?
/// If not: skip with a printed reason, or fail under SHOAL_REQUIRE_INTEROP=1.
pub fn can_make_netns() -> bool {
    have("transmission-cli") && have("ss") && can_unshare_net()
}

/// Whether this process may make named network namespaces with capped
/// links (`ip netns add`, veth pairs, `tc` qdiscs): root, the tools, and a
/// kernel that lets it. If not: skip with a printed reason, or fail under
/// SHOAL_REQUIRE_INTEROP=1.
pub fn can_add_netns() -> bool {
    if !have("ip") || !have("tc") {
        return false;
    }
    let probe = format!("shoal-probe-{}", std::process::id());
    let made = Command::new("ip")
        .args(["netns", "add", &probe])
        .output()
        .is_ok_and(|o| o.status.success());
    if made {
        let _ = Command::new("ip").args(["netns", "del", &probe]).output();
        return true;
    }
    let why = if is_root() {
        "`ip netns add` failed"
    } else {
        "not root"
    };
    assert!(
        !interop_required(),
        "this test needs network namespaces ({why}), and SHOAL_REQUIRE_INTEROP=1 requires them"
    );
    eprintln!("SKIP: cannot make a network namespace ({why})");
    false
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n")
}

/// `cmd` (program, arguments, environment, directory) run inside network
/// namespace `ns` by `ip netns exec`, which execs the program: the child's
/// PID is the program's, so killing the child ends it.
pub fn in_netns(ns: &str, cmd: &Command) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        c.current_dir(dir);
    }
    c
}

/// Runs `f` on a thread that has joined network namespace `ns` (to reach
/// addresses that exist only there, such as a tracker's /stats.json).
pub fn in_netns_thread<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsRawFd;
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns(2) on an open namespace file; it moves only this
        // thread, which ends with `f`.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// Whether this process may make private network namespaces (`unshare -n`,
/// entered by `nsenter`): root, and the tools.
pub fn can_unshare_net() -> bool {
    if !have("unshare") || !have("nsenter") || !have("ip") {
        return false;
    }
    let is_root = is_root();
    if !is_root {
        assert!(
            !interop_required(),
            "this test needs root for a private network namespace"
        );
        eprintln!("SKIP: not root, cannot make a private network namespace");
    }
    is_root
}

/// A tmux server of a test's own (its socket in the test's directory),
/// killed when dropped: a real terminal to run shoal in and read back.
pub struct Tmux {
    sock: PathBuf,
}

impl Tmux {
    /// `Some` when tmux is installed; otherwise says why the test is
    /// skipped (a failure when interop programs are required).
    pub fn available() -> Option<()> {
        if have("tmux") {
            return Some(());
        }
        assert!(!interop_required(), "tmux is missing (Debian package tmux)");
        eprintln!("SKIPPED: tmux is not installed");
        None
    }

    pub fn new(dir: &Path) -> Tmux {
        Tmux {
            sock: dir.join("tmux.sock"),
        }
    }

    /// `tmux ARGS` on this server; its stdout. Fails the test when tmux
    /// does.
    pub fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.sock)
            .args(args)
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What `target`'s window shows, wrapped lines joined (`-J`): a line
    /// that wrapped comes back as one longer line.
    pub fn screen(&self, target: &str) -> String {
        self.run(&["capture-pane", "-p", "-J", "-t", target])
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.sock)
            .arg("kill-server")
            .status();
    }
}
