//! Where swarms live. [`SwarmStore`] is the small interface the HTTP layer
//! talks to, so a shared store (Redis, for several tracker instances behind
//! a load balancer) can replace [`MemoryStore`] without touching handlers.
//!
//! [`MemoryStore`] shards swarms by info hash over independent mutexes:
//! announces to different swarms rarely contend, and no lock is ever held
//! across an `.await` (the store is synchronous).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::Serialize;
use torrent_format::InfoHash;

use crate::swarm::{AnnounceOutcome, Announcer, Swarm};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ScrapeEntry {
    pub complete: usize,
    pub incomplete: usize,
    pub downloaded: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwarmSummary {
    pub info_hash: String,
    pub seeders: usize,
    pub leechers: usize,
    pub downloaded: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreStats {
    pub swarms: usize,
    pub seeders: usize,
    pub leechers: usize,
    pub downloaded: u64,
    /// Heap bytes held for peers (lists and indexes, by capacity).
    pub peer_heap_bytes: usize,
    /// The biggest swarms, biggest first.
    pub top: Vec<SwarmSummary>,
}

pub trait SwarmStore: Send + Sync + 'static {
    /// Records an announce to `info_hash` and picks peers for the reply.
    fn announce(
        &self,
        info_hash: InfoHash,
        who: Announcer,
        now: u32,
        numwant: usize,
        compact: bool,
    ) -> AnnounceOutcome;
    /// Counts per hash, zeros for unknown swarms.
    fn scrape(&self, hashes: &[InfoHash]) -> Vec<ScrapeEntry>;
    /// Drops peers last seen before `cutoff` and swarms left empty;
    /// returns the number of peers dropped.
    fn sweep(&self, cutoff: u32) -> usize;
    fn stats(&self, top: usize) -> StoreStats;
}

const SHARDS: usize = 64;

pub struct MemoryStore {
    shards: Box<[Mutex<HashMap<InfoHash, Swarm>>]>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

thread_local! {
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

impl MemoryStore {
    fn shard(&self, h: &InfoHash) -> std::sync::MutexGuard<'_, HashMap<InfoHash, Swarm>> {
        // Info hashes are SHA-1 output: their bytes are already uniform.
        let i = u16::from_le_bytes([h.0[0], h.0[1]]) as usize % SHARDS;
        // A poisoned shard only means a panic elsewhere mid-update; the
        // swarm data is still structurally valid, so keep serving.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SwarmStore for MemoryStore {
    fn announce(
        &self,
        info_hash: InfoHash,
        who: Announcer,
        now: u32,
        numwant: usize,
        compact: bool,
    ) -> AnnounceOutcome {
        let mut shard = self.shard(&info_hash);
        if who.event == crate::request::Event::Stopped {
            // Never create a swarm just to remove a peer from it.
            let Some(swarm) = shard.get_mut(&info_hash) else {
                return AnnounceOutcome::default();
            };
            let out = RNG.with(|r| swarm.announce(who, now, 0, compact, &mut *r.borrow_mut()));
            if swarm.is_empty() {
                shard.remove(&info_hash);
            }
            return out;
        }
        let swarm = shard.entry(info_hash).or_default();
        RNG.with(|r| swarm.announce(who, now, numwant, compact, &mut *r.borrow_mut()))
    }

    fn scrape(&self, hashes: &[InfoHash]) -> Vec<ScrapeEntry> {
        hashes
            .iter()
            .map(|h| {
                let shard = self.shard(h);
                shard.get(h).map_or(
                    ScrapeEntry {
                        complete: 0,
                        incomplete: 0,
                        downloaded: 0,
                    },
                    |s| ScrapeEntry {
                        complete: s.complete(),
                        incomplete: s.incomplete(),
                        downloaded: s.downloaded,
                    },
                )
            })
            .collect()
    }

    fn sweep(&self, cutoff: u32) -> usize {
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            shard.retain(|_, swarm| {
                let (s, l) = swarm.expire(cutoff);
                dropped += s + l;
                !swarm.is_empty()
            });
        }
        dropped
    }

    fn stats(&self, top: usize) -> StoreStats {
        let mut st = StoreStats::default();
        let mut biggest: Vec<(usize, InfoHash, usize, usize, u64)> = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            st.swarms += shard.len();
            for (h, s) in shard.iter() {
                st.seeders += s.complete();
                st.leechers += s.incomplete();
                st.downloaded += s.downloaded;
                st.peer_heap_bytes += s.heap_bytes();
                if top > 0 {
                    biggest.push((
                        s.peer_count(),
                        *h,
                        s.complete(),
                        s.incomplete(),
                        s.downloaded,
                    ));
                    if biggest.len() >= top * 4 {
                        biggest.sort_unstable_by_key(|b| std::cmp::Reverse(b.0));
                        biggest.truncate(top);
                    }
                }
            }
        }
        biggest.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        biggest.truncate(top);
        st.top = biggest
            .into_iter()
            .map(|(_, h, s, l, d)| SwarmSummary {
                info_hash: h.to_hex(),
                seeders: s,
                leechers: l,
                downloaded: d,
            })
            .collect();
        st
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Event;

    fn who(port: u16, seeder: bool, event: Event) -> Announcer {
        Announcer {
            ip: "10.0.0.1".parse().unwrap(),
            port,
            seeder,
            event,
        }
    }

    #[test]
    fn scrape_counts_and_sweeps_drop_empty_swarms() {
        let store = MemoryStore::default();
        let a = InfoHash([1; 20]);
        let b = InfoHash([2; 20]);
        store.announce(a, who(1, true, Event::Started), 0, 50, true);
        store.announce(a, who(2, false, Event::Started), 0, 50, true);
        store.announce(a, who(2, true, Event::Completed), 5, 50, true);
        store.announce(b, who(3, false, Event::Started), 10, 50, true);
        let got = store.scrape(&[a, b, InfoHash([3; 20])]);
        assert_eq!(
            got[0],
            ScrapeEntry {
                complete: 2,
                incomplete: 0,
                downloaded: 1
            }
        );
        assert_eq!(
            got[1],
            ScrapeEntry {
                complete: 0,
                incomplete: 1,
                downloaded: 0
            }
        );
        assert_eq!(
            got[2],
            ScrapeEntry {
                complete: 0,
                incomplete: 0,
                downloaded: 0
            }
        );
        let st = store.stats(10);
        assert_eq!(
            (st.swarms, st.seeders, st.leechers, st.downloaded),
            (2, 2, 1, 1)
        );
        assert_eq!(st.top[0].info_hash, a.to_hex());
        // Peer 1 was last seen at 0, peer 2 at 5, peer 3 at 10.
        assert_eq!(store.sweep(6), 2);
        assert_eq!(store.stats(0).swarms, 1);
        // A stopped announce to an unknown swarm creates nothing.
        store.announce(
            InfoHash([9; 20]),
            who(1, false, Event::Stopped),
            20,
            50,
            true,
        );
        assert_eq!(store.stats(0).swarms, 1);
        store.announce(b, who(3, false, Event::Stopped), 20, 50, true);
        assert_eq!(store.stats(0).swarms, 0);
    }
}
