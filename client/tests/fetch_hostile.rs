//! A magnet's metadata fetched through the engine from a crowd of hostile
//! peers on loopback — sizes of 2^31, sizes that disagree, pieces of the
//! wrong length or index, a total size that changes between pieces,
//! forged pieces, and a hundred peers announcing sizes over the cap — plus
//! two honest ones: the fetch ends with the right info dictionary, and
//! nothing panics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use client::extension::{ExtHandshake, HANDSHAKE_ID, UT_METADATA_ID, UT_PEX_ID};
use client::fetch::{FetchConfig, FetchStatus};
use client::metadata::{serve, MetaMsg, NAME};
use client::pex::PexMessage;
use client::wire::{Features, Handshake, Message, HANDSHAKE_LEN};
use client::{Engine, EngineConfig};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use torrent_format::InfoHash;

/// The id our test peers give ut_metadata in their extended handshake.
const THEIR_ID: u8 = 3;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Honest,
    /// Announces this size (over the cap, or one that disagrees) and
    /// answers requests with junk of that size.
    Size(u64),
    /// Answers with a piece of the wrong length.
    ShortPiece,
    /// Answers a request with another piece's index.
    WrongIndex,
    /// Announces the right size, then gives another `total_size`.
    SizeChanges,
    /// The right size, the right lengths, bytes flipped.
    Forged,
    /// Honest, and first sends a ut_pex naming the first `n` ports of
    /// [`GOSSIP_BASE`] on loopback (nobody listens there).
    Gossip(u16),
}

/// Where the ports a [`Kind::Gossip`] peer names start.
const GOSSIP_BASE: u16 = 1;

/// A real-looking info dictionary of ~150 KiB (10 metadata pieces).
fn info_dict() -> Vec<u8> {
    let pieces = 7_500usize;
    let mut pieces_bytes = Vec::with_capacity(pieces * 20);
    for i in 0..pieces {
        pieces_bytes.extend_from_slice(&Sha1::digest((i as u64).to_be_bytes()));
    }
    let mut raw = Vec::new();
    raw.extend_from_slice(
        format!(
            "d6:lengthi{}e4:name8:data.bin12:piece lengthi16384e6:pieces{}:",
            pieces * 16384,
            pieces_bytes.len()
        )
        .as_bytes(),
    );
    raw.extend_from_slice(&pieces_bytes);
    raw.push(b'e');
    raw
}

async fn peer(listener: TcpListener, kind: Kind, raw: Arc<Vec<u8>>, hash: InfoHash) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            return;
        };
        let raw = raw.clone();
        tokio::spawn(async move {
            // Whatever error: the connection ends, as a misbehaving peer's would.
            let _ = conn(s, kind, &raw, hash).await;
        });
    }
}

async fn conn(mut s: TcpStream, kind: Kind, raw: &[u8], hash: InfoHash) -> std::io::Result<()> {
    let mut hs = [0u8; HANDSHAKE_LEN];
    s.read_exact(&mut hs).await?;
    let ours = Handshake {
        features: Features {
            extended: true,
            ..Features::default()
        },
        info_hash: hash,
        peer_id: rand_id(),
    };
    s.write_all(&ours.encode()).await?;
    let size = match kind {
        Kind::Size(n) => n,
        _ => raw.len() as u64,
    };
    let mut ext = ExtHandshake {
        metadata_size: Some(size),
        client: Some(format!("hostile {kind:?}")),
        ..ExtHandshake::default()
    };
    ext.extensions.insert(NAME.into(), THEIR_ID);
    let mut out = Vec::new();
    Message::Extended(HANDSHAKE_ID, ext.encode()).encode(&mut out);
    if let Kind::Gossip(n) = kind {
        let pex = PexMessage {
            added: (GOSSIP_BASE..GOSSIP_BASE + n)
                .map(|port| (SocketAddr::from(([127, 0, 0, 1], port)), 0))
                .collect(),
            dropped: Vec::new(),
        };
        // Our fetcher gives ut_pex this id in its handshake.
        Message::Extended(UT_PEX_ID, pex.encode()).encode(&mut out);
    }
    s.write_all(&out).await?;
    let mut buf = Vec::new();
    let junk = vec![0x5au8; 16384];
    let mut forged = raw.to_vec();
    for b in forged.iter_mut().step_by(997) {
        *b ^= 0xff;
    }
    loop {
        if s.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let mut used = 0;
        while let Ok(Some((m, n))) = Message::decode(&buf[used..]) {
            used += n;
            let Message::Extended(THEIR_ID, payload) = m else {
                continue;
            };
            let Ok(MetaMsg::Request(piece)) = MetaMsg::decode(&payload) else {
                continue;
            };
            let reply = match kind {
                Kind::Honest | Kind::Gossip(_) => serve(raw, piece),
                Kind::Forged => serve(&forged, piece),
                Kind::Size(n) => MetaMsg::Data {
                    piece,
                    total_size: Some(n),
                    data: &junk,
                },
                Kind::ShortPiece => MetaMsg::Data {
                    piece,
                    total_size: Some(raw.len() as u64),
                    data: &junk[..100],
                },
                Kind::WrongIndex => match serve(raw, piece.wrapping_add(1)) {
                    MetaMsg::Data {
                        total_size, data, ..
                    } => MetaMsg::Data {
                        piece: piece.wrapping_add(1),
                        total_size,
                        data,
                    },
                    m => m,
                },
                Kind::SizeChanges => match serve(raw, piece) {
                    MetaMsg::Data { data, .. } => MetaMsg::Data {
                        piece,
                        total_size: Some(raw.len() as u64 + 1 + u64::from(piece)),
                        data,
                    },
                    m => m,
                },
            };
            let mut out = Vec::new();
            Message::Extended(UT_METADATA_ID, reply.encode()).encode(&mut out);
            s.write_all(&out).await?;
        }
        buf.drain(..used);
    }
}

fn rand_id() -> [u8; 20] {
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(b"-HO0001-");
    for (i, b) in id.iter_mut().enumerate().skip(8) {
        *b = rand::random::<u8>() ^ i as u8;
    }
    id
}

async fn start(kind: Kind, raw: &Arc<Vec<u8>>, hash: InfoHash) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(peer(l, kind, raw.clone(), hash));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_peers_deliver_through_a_crowd_of_hostile_ones() {
    let raw = Arc::new(info_dict());
    let hash = InfoHash(Sha1::digest(raw.as_slice()).into());
    let mut peers = Vec::new();
    // The hostile come first in the list, so they are dialed first.
    for kind in [
        Kind::Size(1 << 31),
        Kind::Size(raw.len() as u64 + 16384),
        Kind::Size(5),
        Kind::ShortPiece,
        Kind::WrongIndex,
        Kind::SizeChanges,
        Kind::Forged,
        Kind::Forged,
    ] {
        peers.push(start(kind, &raw, hash).await);
    }
    // A hundred announcing sizes over the cap, all different.
    for i in 0..100u64 {
        peers.push(start(Kind::Size((9 << 20) + i * 4096), &raw, hash).await);
    }
    for _ in 0..2 {
        peers.push(start(Kind::Honest, &raw, hash).await);
    }
    let mut c = EngineConfig::new("127.0.0.1:0".parse().unwrap());
    c.bind = Some("127.0.0.1".parse().unwrap());
    c.max_connections = 500;
    let engine = Engine::start(c).await.unwrap();
    let mut config = FetchConfig::new(hash);
    config.peers = peers;
    config.max_size = 8 << 20;
    config.max_peers = 200;
    let (tx, _rx) = watch::channel(FetchStatus::default());
    let fetched = tokio::time::timeout(Duration::from_secs(120), engine.fetch_metadata(config, tx))
        .await
        .expect("the fetch finished")
        .expect("the fetch succeeded");
    assert_eq!(fetched.info.raw_bytes(), raw.as_slice());
    assert_eq!(fetched.info.info_hash(), hash);
    assert_eq!(fetched.pieces, 10);
    engine.shutdown().await;
}

/// Without an honest peer the crowd delivers nothing: no forged, short or
/// resized metadata passes for the real one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_alone_never_complete_a_fetch() {
    let raw = Arc::new(info_dict());
    let hash = InfoHash(Sha1::digest(raw.as_slice()).into());
    let mut peers = Vec::new();
    for kind in [
        Kind::Size(1 << 31),
        Kind::Size(raw.len() as u64 + 16384),
        Kind::ShortPiece,
        Kind::WrongIndex,
        Kind::SizeChanges,
        Kind::Forged,
    ] {
        peers.push(start(kind, &raw, hash).await);
    }
    let mut c = EngineConfig::new("127.0.0.1:0".parse().unwrap());
    c.bind = Some("127.0.0.1".parse().unwrap());
    let engine = Engine::start(c).await.unwrap();
    let mut config = FetchConfig::new(hash);
    config.peers = peers;
    let (tx, rx) = watch::channel(FetchStatus::default());
    let r = tokio::time::timeout(Duration::from_secs(3), engine.fetch_metadata(config, tx)).await;
    assert!(
        r.is_err(),
        "a fetch from liars alone ended: {:?}",
        r.map(|f| f.map(|f| f.pieces))
    );
    // They were all known to the fetch (the 2^31 one is refused before
    // any buffer is sized: see the metadata unit tests).
    assert!(rx.borrow().known >= 6, "{:?}", *rx.borrow());
    engine.shutdown().await;
}

/// Peers a fetch heard of only through ut_pex come back apart from the
/// ones given: the download treats them as PEX candidates (bounded, soon
/// forgotten, none for a private torrent), never as pinned peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_learned_by_pex_are_kept_apart() {
    let raw = Arc::new(info_dict());
    let hash = InfoHash(Sha1::digest(raw.as_slice()).into());
    let gossip = start(Kind::Gossip(5), &raw, hash).await;
    let mut c = EngineConfig::new("127.0.0.1:0".parse().unwrap());
    c.bind = Some("127.0.0.1".parse().unwrap());
    let engine = Engine::start(c).await.unwrap();
    let mut config = FetchConfig::new(hash);
    config.peers = vec![gossip];
    let (tx, _rx) = watch::channel(FetchStatus::default());
    let fetched = tokio::time::timeout(Duration::from_secs(60), engine.fetch_metadata(config, tx))
        .await
        .expect("the fetch finished")
        .expect("the fetch succeeded");
    assert_eq!(fetched.info.raw_bytes(), raw.as_slice());
    assert_eq!(fetched.peers, vec![gossip]);
    let mut learned = fetched.pex_peers.clone();
    learned.sort_unstable();
    let named: Vec<SocketAddr> = (GOSSIP_BASE..GOSSIP_BASE + 5)
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
        .collect();
    assert_eq!(learned, named);
    engine.shutdown().await;
}
