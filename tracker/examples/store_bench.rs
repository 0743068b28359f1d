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
    let store = MemoryStore::default();
    let mut bytes = 0usize;
    for round in 0..rounds {
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
}
