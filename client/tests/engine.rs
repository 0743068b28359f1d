//! The engine on loopback: two torrents behind one port, handshakes routed
//! by info hash, unknown hashes and handshake floods refused, and a
//! download of both torrents through that one port by a second engine.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use client::storage::Storage;
use client::wire::{Bitfield, Features, Handshake, Message, HANDSHAKE_LEN};
use client::{Config, Engine, EngineConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use torrent_format::create::{self, CreateOptions};
use torrent_format::pieces::HashOptions;
use torrent_format::{Info, InfoHash, Metainfo};

/// A single-file torrent of `len` pseudo-random bytes at `dir/name`.
fn make(dir: &Path, name: &str, len: usize, exp: u32) -> Arc<Info> {
    let mut x = len as u64 | 1;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    let opts = CreateOptions {
        piece_exp: Some(exp),
        ..CreateOptions::default()
    };
    let plan = create::plan(&path, &opts).unwrap();
    let bytes = plan
        .build(
            &opts,
            HashOptions {
                threads: 1,
                mmap: false,
            },
            &|_| {},
        )
        .unwrap();
    Arc::new(Metainfo::from_bytes(&bytes).unwrap().info)
}

fn all(n: usize) -> Bitfield {
    let mut b = Bitfield::new(n);
    (0..n).for_each(|i| {
        b.set(i);
    });
    b
}

fn local() -> EngineConfig {
    let mut c = EngineConfig::new("127.0.0.1:0".parse().unwrap());
    c.bind = Some("127.0.0.1".parse().unwrap());
    c
}

fn config(peers: Vec<SocketAddr>) -> Config {
    let mut c = Config::new("127.0.0.1:0".parse().unwrap());
    c.peers = peers;
    c
}

async fn handshake(addr: SocketAddr, hash: InfoHash) -> (TcpStream, Option<Handshake>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let ours = Handshake {
        features: Features {
            dht: false,
            fast: true,
            extended: true,
        },
        info_hash: hash,
        peer_id: *b"-XX0001-abcdefghijkl",
    };
    s.write_all(&ours.encode()).await.unwrap();
    let mut buf = vec![0u8; HANDSHAKE_LEN];
    let got = tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf)).await;
    match got {
        Ok(Ok(_)) => {
            let h = Handshake::decode(&buf).unwrap();
            (s, h)
        }
        _ => (s, None),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_torrents_behind_one_port() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = make(d, "a.bin", 3 * 1024 * 1024 + 17, 15);
    let b = make(d, "b.bin", 1024 * 1024 + 5, 18);
    let seed = Engine::start(local()).await.unwrap();
    let addr = seed.listen_addr();
    let mut seeds = Vec::new();
    for (info, name) in [(&a, "a.bin"), (&b, "b.bin")] {
        let storage = Storage::open_read_only(info.clone(), d.join(name)).unwrap();
        let s = seed
            .add(
                info.clone(),
                Arc::new(storage),
                all(info.piece_count()),
                config(vec![]),
            )
            .await
            .unwrap();
        assert_eq!(s.listen_addr().port(), addr.port(), "one port for all");
        seeds.push(s);
    }
    assert_eq!(seed.torrents(), 2);
    // The same torrent twice is refused.
    let again = seed
        .add(
            a.clone(),
            Arc::new(Storage::open_read_only(a.clone(), d.join("a.bin")).unwrap()),
            all(a.piece_count()),
            config(vec![]),
        )
        .await;
    assert!(again.is_err());

    // Each handshake is answered for its own torrent; the first message
    // is have_all (both sides speak the fast extension).
    for info in [&a, &b] {
        let (mut s, h) = handshake(addr, info.info_hash()).await;
        let h = h.expect("a handshake back");
        assert_eq!(h.info_hash, info.info_hash());
        assert!(h.features.fast && h.features.extended);
        let mut buf = Vec::new();
        let first = loop {
            if let Some((m, _)) = Message::decode(&buf).unwrap() {
                break m;
            }
            assert!(s.read_buf(&mut buf).await.unwrap() > 0);
        };
        assert_eq!(first, Message::HaveAll);
    }
    // An unknown info hash gets no handshake, just a closed connection.
    let (mut s, h) = handshake(addr, InfoHash([0x55; 20])).await;
    assert!(h.is_none(), "unknown hash answered: {h:?}");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("closed, not left hanging")
        .unwrap_or(0);
    assert_eq!(n, 0);

    // A second engine downloads both torrents, dialling the one port.
    let out = tempfile::tempdir().unwrap();
    let leech = Engine::start(local()).await.unwrap();
    let mut gets = Vec::new();
    for info in [&a, &b] {
        let storage = Storage::create(info.clone(), out.path().join(info.name()), None).unwrap();
        gets.push(
            leech
                .add(
                    info.clone(),
                    Arc::new(storage),
                    Bitfield::new(info.piece_count()),
                    config(vec![addr]),
                )
                .await
                .unwrap(),
        );
    }
    for g in &gets {
        tokio::time::timeout(Duration::from_secs(60), g.completed())
            .await
            .expect("download completes");
    }
    for (g, name) in gets.into_iter().zip(["a.bin", "b.bin"]) {
        g.shutdown().await.unwrap();
        assert!(
            std::fs::read(out.path().join(name)).unwrap() == std::fs::read(d.join(name)).unwrap()
        );
    }
    leech.shutdown().await;
    for s in seeds {
        s.shutdown().await.unwrap();
    }
    assert_eq!(seed.torrents(), 0);
    seed.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_from_one_address_cannot_block_a_handshake_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = make(d, "a.bin", 100_000, 15);
    let seed = Engine::start(local()).await.unwrap();
    let addr = seed.listen_addr();
    let storage = Storage::open_read_only(a.clone(), d.join("a.bin")).unwrap();
    let s = seed
        .add(
            a.clone(),
            Arc::new(storage),
            all(a.piece_count()),
            config(vec![]),
        )
        .await
        .unwrap();
    // 40 silent connections from 127.0.0.1: at most a few are kept.
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut closed = 0;
    for c in &mut silent {
        let mut b = [0u8; 1];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(200), c.read(&mut b)).await {
            closed += 1;
        }
    }
    assert!(
        closed >= 30,
        "only {closed} of 40 silent connections refused"
    );
    // A peer from another loopback address still gets its handshake.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = sock.connect(addr).await.unwrap();
    let h = Handshake {
        features: Features::default(),
        info_hash: a.info_hash(),
        peer_id: *b"-XX0001-zyxwvutsrqpo",
    };
    other.write_all(&h.encode()).await.unwrap();
    let mut buf = vec![0u8; HANDSHAKE_LEN];
    tokio::time::timeout(Duration::from_secs(5), other.read_exact(&mut buf))
        .await
        .expect("answered while the flood lasts")
        .unwrap();
    assert_eq!(
        Handshake::decode(&buf).unwrap().unwrap().info_hash,
        a.info_hash()
    );
    drop(silent);
    s.shutdown().await.unwrap();
    seed.shutdown().await;
}
