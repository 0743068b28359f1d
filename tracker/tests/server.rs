//! The real server on 127.0.0.1:0: serves, caps connections per IP, and
//! shuts down gracefully when told.

use std::io::{Read, Write};
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

        // Two idle connections fill this IP's slots ...
        let mut held = Vec::new();
        for _ in 0..2 {
            let s = TcpStream::connect(addr).unwrap();
            held.push(s);
        }
        // ... (the server has accepted both once one of them is answered)
        write!(held[1], "GET /stats.json HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut buf = [0u8; 12];
        held[1].read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
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
