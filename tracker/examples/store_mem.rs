//! Memory per peer of `MemoryStore` alone, under the allocator the binary
//! uses (mimalloc): bench/tracker.sh's fill (SWARMS swarms of 10 peers,
//! 3 seeders then 7 leechers, one swarm after the other) straight into the
//! store, no sockets; bytes per peer = RSS growth / peers. Quicker than
//! the script for trying a layout, and close to what it measures; RSS grows
//! in 2 MiB steps here (mimalloc backs its arenas with transparent huge
//! pages), so figures move by about 2 bytes/peer at a time. Also prints
//! the fill's time per announce: joins to small swarms, where
//! `store_bench` times big ones.
//!
//!   cargo run --release -p tracker --example store_mem [SWARMS]
use std::net::{IpAddr, Ipv4Addr};

use rand::{Rng, SeedableRng};
use torrent_format::InfoHash;
use tracker::request::Event;
use tracker::swarm::Announcer;
use tracker::{MemoryStore, SwarmStore};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn main() {
    let swarms: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let per = 10;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let hashes: Vec<InfoHash> = (0..swarms).map(|_| InfoHash(rng.random())).collect();
    let store = MemoryStore::default();
    let r0 = rss_kib();
    let t0 = std::time::Instant::now();
    for h in &hashes {
        for j in 0..per {
            let who = Announcer {
                ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: 10000 + j as u16,
                seeder: j < 3,
                event: Event::Started,
            };
            store.announce(*h, who, 0, 50, true).unwrap();
        }
    }
    let ns = t0.elapsed().as_nanos() as f64 / (swarms * per) as f64;
    let r1 = rss_kib();
    let st = store.stats(1);
    let peers = (st.seeders + st.leechers) as f64;
    println!(
        "{} swarms, {peers} peers: RSS +{:.1} MiB = {:.1} bytes/peer (peer_heap_bytes {:.1} bytes/peer); {ns:.0} ns/announce",
        st.swarms,
        (r1 - r0) as f64 / 1024.0,
        (r1 - r0) as f64 * 1024.0 / peers,
        st.peer_heap_bytes as f64 / peers,
    );
}
