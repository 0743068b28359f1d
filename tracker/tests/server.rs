//! The real server on 127.0.0.1:0: serves, caps connections per IP, and
//! shuts down gracefully when told.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracker::server::{self, ServeOptions};
use tracker::{Config, MemoryStore, Tracker};

fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_caps_connections_per_ip_and_shuts_down() {
    let tracker = Arc::new(Tracker::new(Config::default(), Box::<MemoryStore>::default()).unwrap());
    let bound = server::bind(ServeOptions {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        threads: 2,
        max_connections_per_ip: 2,
        ..ServeOptions::default()
    })
    .unwrap();
    let addr = bound.local_addrs()[0];
    assert_ne!(addr.port(), 0);
    let stop = CancellationToken::new();
    let server = tokio::spawn(bound.run(tracker, stop.clone()));

    let checks = tokio::task::spawn_blocking(move || {
        let reply = get(addr, "/announce").unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.contains("failure reason"), "{reply}");

        // Two kept-alive connections fill this IP's slots (one that has
        // sent nothing is not even accepted: the listener defers accepting
        // until a request arrives) ...
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(addr).unwrap();
            write!(s, "GET /stats.json HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            let mut buf = [0u8; 12];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"HTTP/1.1 200");
            held.push(s);
        }
        // ... so a third is closed without an answer.
        let third = get(addr, "/stats.json");
        assert!(
            matches!(&third, Ok(s) if s.is_empty()) || third.is_err(),
            "{third:?}"
        );
        drop(held);
    });
    checks.await.unwrap();

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .expect("shutdown finishes")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(addr).is_err(),
        "listener closed after shutdown"
    );
}

/// A server with a short idle timeout, on its own runtime thread.
struct Server {
    addr: SocketAddr,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(idle_timeout: Duration) -> Server {
        let tracker =
            Arc::new(Tracker::new(Config::default(), Box::<MemoryStore>::default()).unwrap());
        let bound = server::bind(ServeOptions {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            threads: 1,
            idle_timeout,
            ..ServeOptions::default()
        })
        .unwrap();
        let addr = bound.local_addrs()[0];
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
        Server {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An announce by a leecher told apart by its port (peers are one per
/// address and port).
fn announce_head(peer: u8) -> String {
    let id = format!("%{peer:02x}").repeat(20);
    let port = 6000 + u16::from(peer);
    format!(
        "GET /announce?info_hash={}&peer_id={id}&port={port}&uploaded=0&downloaded=0&left=5 HTTP/1.1\r\nHost: x\r\n\r\n",
        "%01".repeat(20)
    )
}

/// Reads one reply with a `content-length` body.
fn read_reply(s: &mut TcpStream) -> String {
    try_read_reply(s).unwrap()
}

fn try_read_reply(s: &mut TcpStream) -> std::io::Result<String> {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte)?;
        got.push(byte[0]);
    }
    let head = String::from_utf8(got).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(head + &String::from_utf8_lossy(&body))
}

/// Waits (bounded) for the server to close the connection.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        // Still open when the read timed out.
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        // Reset: closed as well.
        Err(_) => true,
        Ok(_) => false,
    }
}

#[test]
fn idle_and_stalled_connections_are_closed() {
    let server = Server::start(Duration::from_millis(200));
    // A head that never completes.
    let mut stalled = TcpStream::connect(server.addr).unwrap();
    stalled.write_all(b"GET /announce?info_hash=").unwrap();
    // A kept-alive connection that goes quiet after one request.
    let mut quiet = TcpStream::connect(server.addr).unwrap();
    quiet.write_all(announce_head(1).as_bytes()).unwrap();
    assert!(read_reply(&mut quiet).contains("8:intervali"));
    let started = std::time::Instant::now();
    assert!(closed_by_server(&mut stalled));
    assert!(closed_by_server(&mut quiet));
    // Between one and two idle periods (plus scheduling slack).
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_busy_keep_alive_connection_outlives_the_idle_timeout() {
    // Closing would need a 600 ms gap between requests sent every 100 ms.
    let server = Server::start(Duration::from_millis(600));
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = std::time::Instant::now();
    let mut n = 0u8;
    // Past two idle periods.
    while started.elapsed() < Duration::from_millis(1500) {
        n += 1;
        s.write_all(announce_head(n).as_bytes()).unwrap();
        assert!(read_reply(&mut s).starts_with("HTTP/1.1 200 OK\r\n"));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn split_and_pipelined_requests_are_answered() {
    let server = Server::start(Duration::from_secs(15));
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // One head in two writes, the second after the server has had time to
    // read (and drain) the first: it must wake up for the rest.
    let head = announce_head(1);
    let (a, b) = head.split_at(40);
    s.write_all(a.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(b.as_bytes()).unwrap();
    assert!(read_reply(&mut s).contains("10:incompletei1e"));
    // Three requests in one write: three replies, in order (each later
    // peer sees the earlier ones as leechers).
    let three = [announce_head(2), announce_head(3), announce_head(4)].concat();
    s.write_all(three.as_bytes()).unwrap();
    for leechers in 2..=4 {
        let reply = read_reply(&mut s);
        assert!(
            reply.contains(&format!("10:incompletei{leechers}e")),
            "{reply}"
        );
    }
}

/// Stops the server; shutdown must take well under its drain timeout
/// (10 s), i.e. not wait for connections that should have closed.
fn shut_down_promptly(server: Server) {
    let started = std::time::Instant::now();
    drop(server);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
}

#[test]
fn shutdown_closes_idle_connections_at_once() {
    // Idle connections would otherwise stay for a minute, and shutdown
    // would wait its whole drain timeout (10 s) for them.
    let server = Server::start(Duration::from_secs(60));
    // One kept-alive connection served by hyper, one by the fast path.
    let mut hyper = TcpStream::connect(server.addr).unwrap();
    hyper
        .write_all(b"GET /stats.json HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert!(read_reply(&mut hyper).starts_with("HTTP/1.1 200 OK\r\n"));
    let mut fast = TcpStream::connect(server.addr).unwrap();
    fast.write_all(announce_head(1).as_bytes()).unwrap();
    assert!(read_reply(&mut fast).starts_with("HTTP/1.1 200 OK\r\n"));

    shut_down_promptly(server);
    assert!(closed_by_server(&mut hyper));
    assert!(closed_by_server(&mut fast));
}

#[test]
fn shutdown_closes_a_busy_connection_after_its_replies() {
    let server = Server::start(Duration::from_secs(60));
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // A client that never pauses: one thread pipelines announces without
    // waiting for replies, another reads them, until the server closes
    // the connection. The server always has a request coming, so it must
    // notice the shutdown between requests, not only when idle.
    let mut writer = s.try_clone().unwrap();
    let stop_writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = stop_writing.clone();
    let writing = std::thread::spawn(move || {
        let mut n = 0u8;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            n = n.wrapping_add(1);
            if writer.write_all(announce_head(n).as_bytes()).is_err() {
                return;
            }
        }
    });
    let (tx, rx) = std::sync::mpsc::channel();
    let reading = std::thread::spawn(move || {
        let mut replies = 0u32;
        while let Ok(reply) = try_read_reply(&mut s) {
            assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
            replies += 1;
            let _ = tx.send(());
        }
        replies
    });
    for _ in 0..100 {
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
    shut_down_promptly(server);
    assert!(reading.join().unwrap() >= 100);
    stop_writing.store(true, std::sync::atomic::Ordering::Relaxed);
    writing.join().unwrap();
}
