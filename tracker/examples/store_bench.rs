//! Time `MemoryStore::announce` alone under bench/tracker.sh's load: HASHES
//! swarms, a pool of POOL announces (random hash, peer and port, the same
//! event mix as bench/tracker/announce.lua) replayed in turn.
//!
//!   cargo run --release -p tracker --example store_bench [ROUNDS]
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use rand::{Rng, SeedableRng};
use torrent_format::InfoHash;
use tracker::request::Event;
use tracker::swarm::Announcer;
use tracker::{MemoryStore, SwarmStore};

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(8);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let hashes: Vec<InfoHash> = (0..1000).map(|_| InfoHash(rng.random())).collect();
    let pool: Vec<(InfoHash, Announcer)> = (0..131072)
        .map(|_| {
            let r = rng.random_range(1..=100);
            let event = match r {
                1..=10 => Event::Started,
                11..=15 => Event::Stopped,
                16..=20 => Event::Completed,
                _ => Event::None,
            };
            let who = Announcer {
                ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: rng.random_range(1024..=65535),
                seeder: rng.random_range(1..=100) <= 30,
                event,
            };
            (hashes[rng.random_range(0..hashes.len())], who)
        })
        .collect();
    // FULL_ONLY=1: only the last part (for profiling it alone).
    let full_only = std::env::var_os("FULL_ONLY").is_some();
    let store = MemoryStore::default();
    let mut bytes = 0usize;
    for round in 0..if full_only { 0 } else { rounds } {
        let t = Instant::now();
        for (h, who) in &pool {
            let numwant = if who.event == Event::Stopped { 0 } else { 50 };
            let o = store.announce(*h, *who, 1, numwant, true).unwrap();
            bytes += o.peers.compact.len();
        }
        let ns = t.elapsed().as_nanos() as f64 / pool.len() as f64;
        println!("round {round}: {ns:.0} ns/announce");
    }
    println!("({bytes} bytes of peers)");

    // The same announces as query strings through `Tracker::announce`:
    // parsing, the whitelist, the store and the bencoded reply.
    let dir = std::env::temp_dir().join(format!("store_bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let list = dir.join("whitelist");
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    std::fs::write(
        &list,
        hashes.iter().map(|h| hex(&h.0) + "\n").collect::<String>(),
    )
    .unwrap();
    let config = tracker::Config {
        whitelist: Some(list),
        ..tracker::Config::default()
    };
    let t = tracker::Tracker::new(config, Box::<MemoryStore>::default()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let pct = |b: &[u8]| b.iter().map(|b| format!("%{b:02X}")).collect::<String>();
    let queries: Vec<String> = pool
        .iter()
        .map(|(h, who)| {
            let peer_id: [u8; 20] = rng.random();
            let event = match who.event {
                Event::Started => "&event=started",
                Event::Stopped => "&event=stopped",
                Event::Completed => "&event=completed",
                Event::None => "",
            };
            let left = if who.seeder { 0 } else { rng.random_range(1..2_000_000_000u64) };
            format!(
                "info_hash={}&peer_id={}&port={}&uploaded=0&downloaded=0&left={left}{event}&compact=1&numwant=50",
                pct(&h.0),
                pct(&peer_id),
                who.port
            )
        })
        .collect();
    for round in 0..if full_only { 0 } else { rounds } {
        let t0 = Instant::now();
        let mut ports = 0u64;
        for q in &queries {
            ports += tracker::request::parse_announce(q).map_or(0, |r| u64::from(r.port));
        }
        let ns = t0.elapsed().as_nanos() as f64 / queries.len() as f64;
        println!("parse round {round}: {ns:.0} ns/announce ({ports})");
    }
    let remote: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let headers = axum::http::HeaderMap::new();
    let mut bytes = 0usize;
    for round in 0..rounds {
        let t0 = Instant::now();
        for q in &queries {
            bytes += t.announce(None, q, remote, &headers).map_or(0, |r| r.len());
        }
        let ns = t0.elapsed().as_nanos() as f64 / queries.len() as f64;
        println!("full announce round {round}: {ns:.0} ns/announce");
    }
    println!("({bytes} bytes of replies)");
}
