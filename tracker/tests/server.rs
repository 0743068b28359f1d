//! The real server on 127.0.0.1:0: serves, caps connections per IP, answers
//! malformed and oversized requests with a failure reason, and shuts down
//! gracefully when told.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{udp_announce, Running};
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
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            write!(s, "GET /stats.json HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            assert!(read_reply(&mut s).starts_with("HTTP/1.1 200"));
            held.push(s);
        }
        // ... so a third takes the place of the oldest idle one, which
        // is closed.
        let third = get(addr, "/stats.json").unwrap();
        assert!(third.starts_with("HTTP/1.1 200"), "{third}");
        let mut rest = Vec::new();
        held[0]
            .read_to_end(&mut rest)
            .expect("the first is closed by the server");
        assert!(rest.is_empty(), "{rest:?}");
        let mut second = [0u8; 1];
        held[1]
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        assert!(
            matches!(held[1].read(&mut second), Err(e) if e.kind() == ErrorKind::WouldBlock),
            "the second is still open"
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
type Server = Running;

impl Server {
    fn start(idle_timeout: Duration) -> Server {
        Server::with(ServeOptions {
            idle_timeout,
            ..ServeOptions::default()
        })
    }

    /// One thread (so connections are accepted in the order they are
    /// made), on 127.0.0.1:0 (or the options' addresses), with these
    /// options otherwise.
    fn with(opts: ServeOptions) -> Server {
        let tracker =
            Arc::new(Tracker::new(Config::default(), Box::<MemoryStore>::default()).unwrap());
        Running::serve(tracker, ServeOptions { threads: 1, ..opts })
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

/// What the server sends until it closes the connection (a read error
/// ends it too: what came before is kept), as (head, body).
fn reply_until_close(s: &mut TcpStream) -> (String, Vec<u8>) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
        }
    }
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(all.len(), |p| p + 4);
    let body = all.split_off(split);
    (String::from_utf8_lossy(&all).into_owned(), body)
}

/// The `failure reason` of a whole reply, checking on the way that it is
/// a 200 whose `content-length` is the body's and that it closes the
/// connection.
fn failure_reply(what: &str, head: &str, body: &[u8]) -> String {
    assert!(
        head.starts_with("HTTP/1.1 200 OK\r\n"),
        "{what}: {head:?} {body:?}"
    );
    assert!(
        head.contains(&format!("content-length: {}\r\n", body.len())),
        "{what}: {head:?} {body:?}"
    );
    assert!(head.contains("connection: close\r\n"), "{what}: {head:?}");
    failure_of(body).unwrap_or_else(|| panic!("{what}: no failure reason in {body:?}"))
}

fn failure_of(body: &[u8]) -> Option<String> {
    use torrent_format::bencode::{decode, Value};
    match decode(body).ok()?.get("failure reason")? {
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

#[test]
fn malformed_heads_get_a_bencoded_failure_reason() {
    let server = Server::start(Duration::from_secs(15));
    let cases: [(&str, &[u8]); 7] = [
        (
            "raw bytes that are not UTF-8 (an info hash not percent-encoded)",
            b"GET /announce?info_hash=\xff\xfe\x80abcdefghijklmnopq&peer_id=-XX0001-aaaaaaaaaaaa&port=1&left=0 HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "control bytes in the query",
            b"GET /announce?info_hash=\x01\x02\x7f&port=1 HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
        (
            "a scrape with a raw byte",
            b"GET /scrape?info_hash=\x80 HTTP/1.1\r\n\r\n",
        ),
        (
            "a header line without a colon",
            b"GET /announce?x HTTP/1.1\r\nBad Header\r\n\r\n",
        ),
        ("not HTTP/1.x", b"GET /announce?x HTTP/9.9\r\n\r\n"),
        ("an unknown route", b"GET /nope?\x00 HTTP/1.1\r\n\r\n"),
        (
            "a passkey route",
            b"GET /key/announce?\xc3 HTTP/1.1\r\n\r\n",
        ),
    ];
    for (what, request) in cases {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.write_all(request).unwrap();
        let (head, body) = reply_until_close(&mut s);
        let reason = failure_reply(what, &head, &body);
        assert!(reason.contains("malformed"), "{what}: {reason}");
    }
    // Not even a request line: 400, but still a failure reason.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(b"\x00\x01\x02 garbage\r\n\r\n").unwrap();
    let (head, body) = reply_until_close(&mut s);
    assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head:?}");
    assert!(failure_of(&body).is_some(), "{body:?}");
    // A malformed request after a good one on the same connection: the
    // good one is answered as usual, then the failure.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(announce_head(1).as_bytes()).unwrap();
    assert!(read_reply(&mut s).contains("8:intervali"));
    s.write_all(b"GET /announce?\x01 HTTP/1.1\r\n\r\n").unwrap();
    let (head, body) = reply_until_close(&mut s);
    assert!(failure_reply("second request", &head, &body).contains("malformed"));
}

/// A scrape of `n` hashes, every byte percent-encoded (the longest form).
fn scrape_head(n: usize) -> String {
    let hashes: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "info_hash={}%{:02x}%{:02x}",
                "%ab".repeat(18),
                i / 256,
                i % 256
            )
        })
        .collect();
    format!(
        "GET /scrape?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        hashes.join("&")
    )
}

#[test]
fn oversized_heads_get_a_bencoded_failure_reason() {
    let server = Server::start(Duration::from_secs(15));
    let query = announce_head(1);
    let query = query.split(' ').nth(1).unwrap();
    let cases = [
        (
            "a 1 MB query",
            format!(
                "GET {query}&pad={} HTTP/1.1\r\nHost: x\r\n\r\n",
                "x".repeat(1_000_000)
            ),
        ),
        ("a scrape of 300 hashes", scrape_head(300)),
        (
            "a long header",
            format!(
                "GET {query} HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
                "y".repeat(20_000)
            ),
        ),
    ];
    for (what, request) in cases {
        let mut s = TcpStream::connect(server.addr).unwrap();
        // The client writes its whole request before it reads (as curl
        // does); the server must read what it will not serve rather than
        // reset the connection, which would throw the reply away.
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || w.write_all(request.as_bytes()));
        let (head, body) = reply_until_close(&mut s);
        let reason = failure_reply(what, &head, &body);
        assert!(reason.contains("too long"), "{what}: {reason}");
        writer.join().unwrap().expect("the whole request was read");
    }
}

#[test]
fn a_scrape_of_as_many_hashes_as_allowed_is_served() {
    let server = Server::start(Duration::from_secs(15));
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(scrape_head(tracker::request::MAX_SCRAPE).as_bytes())
        .unwrap();
    let reply = read_reply(&mut s);
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.contains("5:filesd20:"), "{reply}");
    // One more is refused with a reason.
    s.write_all(scrape_head(tracker::request::MAX_SCRAPE + 1).as_bytes())
        .unwrap();
    let reply = read_reply(&mut s);
    assert!(reply.contains("14:failure reason"), "{reply}");
}

const STATS_HEAD: &str = "GET /stats.json HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn a_full_address_evicts_its_oldest_idle_connection() {
    let server = Server::start(Duration::from_secs(30));
    let per_ip = ServeOptions::default().max_connections_per_ip;
    // As many kept-alive connections as one address may have, each after
    // one request: the oldest served by hyper, the others by the fast path.
    let mut held = Vec::new();
    for i in 0..per_ip {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = match i {
            0 => STATS_HEAD.to_string(),
            _ => announce_head((i % 200) as u8 + 1),
        };
        s.write_all(head.as_bytes()).unwrap();
        assert!(read_reply(&mut s).starts_with("HTTP/1.1 200 OK\r\n"));
        held.push(s);
    }
    // A new connection from that address is served and stays usable: it
    // takes the place of the oldest idle one, which is closed.
    for (oldest, head) in [STATS_HEAD.to_string(), announce_head(201)]
        .into_iter()
        .enumerate()
    {
        let mut s = TcpStream::connect(server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for request in 1..=2 {
            s.write_all(head.as_bytes()).unwrap();
            let reply = try_read_reply(&mut s);
            assert!(
                matches!(&reply, Ok(r) if r.starts_with("HTTP/1.1 200 OK\r\n")),
                "new connection {oldest}, request {request}: {reply:?}"
            );
        }
        assert!(
            closed_by_server(&mut held[oldest]),
            "connection {oldest} is closed"
        );
        held.push(s);
    }
    // The others are untouched.
    let mut next = &held[2];
    next.write_all(announce_head(3).as_bytes()).unwrap();
    assert!(read_reply(&mut held[2]).starts_with("HTTP/1.1 200 OK\r\n"));
}

#[test]
fn a_full_address_of_busy_connections_is_told_so() {
    let server = Server::with(ServeOptions {
        max_connections_per_ip: 2,
        ..ServeOptions::default()
    });
    // Two connections in the middle of a request: not to be evicted.
    let head = announce_head(1);
    let (start, rest) = head.split_at(30);
    let mut busy: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(start.as_bytes()).unwrap();
            s
        })
        .collect();
    let mut probe = TcpStream::connect(server.addr).unwrap();
    probe.write_all(STATS_HEAD.as_bytes()).unwrap();
    let (head, body) = reply_until_close(&mut probe);
    let reason = failure_reply("a third connection", &head, &body);
    assert!(reason.contains("too many connections"), "{reason}");
    // An announce on a new connection is answered all the same (before
    // the cap applies), then the connection is closed.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.write_all(announce_head(2).as_bytes()).unwrap();
    let (head, body) = reply_until_close(&mut s);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(failure_of(&body).is_none(), "{body:?}");
    // The busy ones were left alone.
    for s in &mut busy {
        s.write_all(rest.as_bytes()).unwrap();
        assert!(read_reply(s).starts_with("HTTP/1.1 200 OK\r\n"));
    }
}

#[test]
fn the_udp_tracker_answers_bursts_over_ipv4_and_ipv6() {
    let have_v6 = std::net::UdpSocket::bind("[::1]:0").is_ok();
    let mut listen = vec!["127.0.0.1:0".parse().unwrap()];
    if have_v6 {
        listen.push("[::1]:0".parse().unwrap());
    } else {
        eprintln!("no IPv6 loopback: IPv4 only");
    }
    let server = Server::with(ServeOptions {
        listen,
        http: false,
        ..ServeOptions::default()
    });
    let addr = server.addr;
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // A seed, then a leecher who is told of it.
    let r = udp_announce(&client, addr, 9, 6001, 0);
    assert_eq!(&r[..8], &[0, 0, 0, 1, 5, 6, 7, 8]);
    let other = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    other
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let r = udp_announce(&other, addr, 9, 6002, 10);
    assert_eq!(r.len(), 26);
    assert_eq!(&r[20..], &[127, 0, 0, 1, 0x17, 0x71]);
    // A burst of 500 connects at once: every one answered, in batches (the
    // answers wait in our receive buffer, made big enough to hold them).
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(4 << 20)
        .unwrap();
    let mut connect = 0x0417_2710_1980u64.to_be_bytes().to_vec();
    connect.extend_from_slice(&[0; 4]);
    for i in 0..500u32 {
        let mut d = connect.clone();
        d.extend_from_slice(&i.to_be_bytes());
        client.send_to(&d, addr).unwrap();
    }
    let mut seen = std::collections::HashSet::new();
    let mut buf = [0u8; 64];
    while seen.len() < 500 {
        let Ok((n, _)) = client.recv_from(&mut buf) else {
            panic!("{} of the connects answered", seen.len());
        };
        assert_eq!(n, 16);
        seen.insert(u32::from_be_bytes(buf[4..8].try_into().unwrap()));
    }
    if have_v6 {
        let v6 = server.addrs[1];
        let c6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
        c6.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        udp_announce(&c6, v6, 10, 7001, 0);
        let c6b = std::net::UdpSocket::bind("[::1]:0").unwrap();
        c6b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = udp_announce(&c6b, v6, 10, 7002, 5);
        assert_eq!(r.len(), 20 + 18, "one IPv6 peer, 18 bytes");
        assert_eq!(&r[36..], &7001u16.to_be_bytes());
    }
}
