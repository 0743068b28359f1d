//! Shared by the tracker's integration tests (and, through `#[path]`, by
//! the workspace's interop tests): a private `redis-server`, and a BEP 15
//! client exchange over real UDP sockets.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracker::server::{self, ServeOptions};
use tracker::Tracker;

/// A tracker served on a runtime thread of its own, stopped when dropped.
pub struct Running {
    /// The first address served.
    pub addr: SocketAddr,
    /// Every address served, in the order given.
    pub addrs: Vec<SocketAddr>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Binds `opts` (127.0.0.1:0 unless they name other addresses) and
    /// serves `tracker` there.
    pub fn serve(tracker: Arc<Tracker>, opts: ServeOptions) -> Running {
        let listen = if opts.listen == ServeOptions::default().listen {
            vec!["127.0.0.1:0".parse().unwrap()]
        } else {
            opts.listen.clone()
        };
        let bound = server::bind(ServeOptions { listen, ..opts }).unwrap();
        let addrs = bound.local_addrs().to_vec();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let thread = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(bound.run(tracker, token))
                .unwrap()
        });
        Running {
            addr: addrs[0],
            addrs,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether CI asked for every peer program (then a missing one fails).
pub fn interop_required() -> bool {
    std::env::var_os("SHOAL_REQUIRE_INTEROP").is_some_and(|v| v == "1")
}

/// A `redis-server` of the test's own on a free loopback port, persistence
/// off, killed when dropped.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one; `None` (with the reason printed) when `redis-server` is
    /// not installed and the interop programs are not required.
    pub fn start() -> Option<RedisServer> {
        let found = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            assert!(
                !interop_required(),
                "redis-server is missing (Debian package redis-server)"
            );
            eprintln!("SKIPPED: redis-server is not installed (Debian package redis-server)");
            return None;
        }
        let mut server = RedisServer {
            child: None,
            port: 0,
            dir: tempfile::tempdir().unwrap(),
        };
        // A port that was free a moment ago may be taken by the time the
        // server binds it: try a few.
        for _ in 0..5 {
            server.port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            if server.run() {
                return Some(server);
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts the server on `self.port`; false if it did not come up.
    fn run(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = &mut self.child {
                if child.try_wait().unwrap().is_some() {
                    self.child = None;
                    return false;
                }
            }
            if self.ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        false
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn ping(&self) -> bool {
        redis::Client::open(self.url())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok()
    }

    /// A synchronous connection, to look inside.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// `INFO section` as text.
    pub fn info(&self, section: &str) -> String {
        redis::cmd("INFO")
            .arg(section)
            .query(&mut self.connection())
            .unwrap()
    }

    /// Calls of `command` since the last `CONFIG RESETSTAT`.
    pub fn calls(&self, command: &str) -> u64 {
        let info = self.info("commandstats");
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
    }

    /// Every command counted in `INFO commandstats`, with its calls.
    pub fn all_calls(&self) -> Vec<(String, u64)> {
        self.info("commandstats")
            .lines()
            .filter_map(|l| {
                let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
                Some((name.to_string(), rest.split(',').next()?.parse().ok()?))
            })
            .collect()
    }

    pub fn reset_stats(&self) {
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query(&mut self.connection())
            .unwrap();
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is
    /// answered, as with a Redis that hangs or a network that drops
    /// everything.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status().unwrap();
        assert!(ok.success(), "kill {sig} {pid}");
    }

    /// Kills the server (SIGKILL: nothing saved, as a crash).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.run() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends a BEP 15 connect from `from` to `to`; returns the connection id.
pub fn udp_connect(from: &std::net::UdpSocket, to: SocketAddr) -> [u8; 8] {
    let mut buf = [0u8; 64];
    let mut connect = 0x0417_2710_1980u64.to_be_bytes().to_vec();
    connect.extend_from_slice(&[0, 0, 0, 0, 1, 2, 3, 4]);
    from.send_to(&connect, to).unwrap();
    let (n, _) = from.recv_from(&mut buf).unwrap();
    assert_eq!(n, 16);
    buf[8..16].try_into().unwrap()
}

/// A connect and an announce (`started`) over real UDP sockets; `from`
/// sends them. Returns the announce's reply.
pub fn udp_announce(
    from: &std::net::UdpSocket,
    to: SocketAddr,
    hash: u8,
    port: u16,
    left: u64,
) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let mut a = udp_connect(from, to).to_vec();
    a.extend_from_slice(&[0, 0, 0, 1, 5, 6, 7, 8]);
    a.extend_from_slice(&[hash; 20]);
    a.extend_from_slice(&[1; 20]);
    a.extend_from_slice(&[0; 8]);
    a.extend_from_slice(&left.to_be_bytes());
    a.extend_from_slice(&[0; 8]);
    a.extend_from_slice(&[0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    a.extend_from_slice(&port.to_be_bytes());
    from.send_to(&a, to).unwrap();
    let (n, _) = from.recv_from(&mut buf).unwrap();
    buf[..n].to_vec()
}

/// A connect and a scrape of `hashes` (each 20 times the byte); returns
/// the reply.
pub fn udp_scrape(from: &std::net::UdpSocket, to: SocketAddr, hashes: &[u8]) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let mut s = udp_connect(from, to).to_vec();
    s.extend_from_slice(&[0, 0, 0, 2, 9, 9, 9, 9]);
    for &h in hashes {
        s.extend_from_slice(&[h; 20]);
    }
    from.send_to(&s, to).unwrap();
    let (n, _) = from.recv_from(&mut buf).unwrap();
    buf[..n].to_vec()
}
