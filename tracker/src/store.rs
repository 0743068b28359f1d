//! Where swarms live. [`SwarmStore`] is the small interface the HTTP layer
//! talks to, so a shared store (Redis, for several tracker instances behind
//! a load balancer) can replace [`MemoryStore`] without touching handlers.
//!
//! [`MemoryStore`] shards swarms by info hash over independent mutexes:
//! announces to different swarms rarely contend, and no lock is ever held
//! across an `.await` (the store is synchronous).

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::Serialize;
use torrent_format::InfoHash;

use crate::swarm::{AnnounceOutcome, Announcer, Swarm, MAX_PEER_AGE};

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
    /// `completed` in JSON, as the stats page's column says.
    #[serde(rename = "completed")]
    pub downloaded: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreStats {
    pub swarms: usize,
    pub seeders: usize,
    pub leechers: usize,
    /// Only filled in with `top > 0`.
    pub downloaded: u64,
    /// Heap bytes held for peers (lists and indexes, by capacity; not the
    /// swarm maps themselves). Only filled in with `top > 0`.
    pub peer_heap_bytes: usize,
    /// The biggest swarms, biggest first.
    pub top: Vec<SwarmSummary>,
}

/// The store refuses to grow past its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Full {
    #[error("tracker is full: too many swarms")]
    Swarms,
    #[error("tracker is full: too many peers")]
    Peers,
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
    ) -> Result<AnnounceOutcome, Full>;
    /// Counts per hash, zeros for unknown swarms.
    fn scrape(&self, hashes: &[InfoHash]) -> Vec<ScrapeEntry>;
    /// Drops peers last seen before `cutoff` and swarms left empty;
    /// returns the number of peers dropped.
    fn sweep(&self, cutoff: u32) -> usize;
    /// Totals (cheap) and, when `top > 0`, the biggest swarms (a walk over
    /// every swarm: callers should cache it).
    fn stats(&self, top: usize) -> StoreStats;
}

const SHARDS: usize = 64;

type SwarmMap = HashMap<InfoHash, Swarm, RandomState>;

/// One shard's swarms.
#[derive(Default)]
struct Shard {
    swarms: SwarmMap,
    /// The latest `now` an announce brought here: no peer in this shard
    /// was last seen after it. Peers keep their last-seen second in 16
    /// bits, so a sweep measures ages from here (see `sweep`).
    now: u32,
}

/// Bounds on what hostile (or just many) clients can make the store hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_swarms: usize,
    pub max_peers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_swarms: 1_000_000,
            max_peers: 10_000_000,
        }
    }
}

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    /// Keyed at random, so clients cannot aim their swarms at one shard.
    shard_hasher: RandomState,
    limits: Limits,
    swarms: AtomicUsize,
    seeders: AtomicUsize,
    leechers: AtomicUsize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(Limits::default())
    }
}

thread_local! {
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

/// Applies a before/after difference to a counter.
fn adjust(counter: &AtomicUsize, before: usize, after: usize) {
    if after > before {
        counter.fetch_add(after - before, Ordering::Relaxed);
    } else if before > after {
        counter.fetch_sub(before - after, Ordering::Relaxed);
    }
}

impl MemoryStore {
    pub fn new(limits: Limits) -> MemoryStore {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            shard_hasher: RandomState::default(),
            limits,
            swarms: AtomicUsize::new(0),
            seeders: AtomicUsize::new(0),
            leechers: AtomicUsize::new(0),
        }
    }

    fn shard(&self, h: &InfoHash) -> std::sync::MutexGuard<'_, Shard> {
        let i = self.shard_hasher.hash_one(h) as usize % SHARDS;
        // A poisoned shard only means a panic elsewhere mid-update; the
        // swarm data is still structurally valid, so keep serving.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn peers(&self) -> usize {
        self.seeders.load(Ordering::Relaxed) + self.leechers.load(Ordering::Relaxed)
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
    ) -> Result<AnnounceOutcome, Full> {
        let mut guard = self.shard(&info_hash);
        let shard = &mut *guard;
        shard.now = shard.now.max(now);
        let stopping = who.event == crate::request::Event::Stopped;
        // One hash lookup for the swarm, found or made.
        let (swarm, new_swarm) = match shard.swarms.entry(info_hash) {
            std::collections::hash_map::Entry::Occupied(o) => (o.into_mut(), false),
            std::collections::hash_map::Entry::Vacant(v) => {
                if stopping {
                    // Never create a swarm just to remove a peer from it.
                    return Ok(AnnounceOutcome::default());
                }
                if self.swarms.load(Ordering::Relaxed) >= self.limits.max_swarms {
                    return Err(Full::Swarms);
                }
                (v.insert(Swarm::default()), true)
            }
        };
        if !stopping
            && (self.peers() >= self.limits.max_peers
                || swarm.peer_count() >= crate::swarm::MAX_SWARM_PEERS)
            && !swarm.contains(who.ip, who.port)
        {
            if new_swarm {
                shard.swarms.remove(&info_hash);
            }
            return Err(Full::Peers);
        }
        let (s0, l0) = (swarm.complete(), swarm.incomplete());
        let out = RNG.with(|r| swarm.announce(who, now, numwant, compact, &mut *r.borrow_mut()));
        adjust(&self.seeders, s0, swarm.complete());
        adjust(&self.leechers, l0, swarm.incomplete());
        let empty = swarm.is_empty();
        if empty {
            shard.swarms.remove(&info_hash);
        }
        match (new_swarm, empty) {
            (true, false) => self.swarms.fetch_add(1, Ordering::Relaxed),
            (false, true) => self.swarms.fetch_sub(1, Ordering::Relaxed),
            _ => 0,
        };
        Ok(out)
    }

    fn scrape(&self, hashes: &[InfoHash]) -> Vec<ScrapeEntry> {
        hashes
            .iter()
            .map(|h| {
                let shard = self.shard(h);
                shard.swarms.get(h).map_or(
                    ScrapeEntry {
                        complete: 0,
                        incomplete: 0,
                        downloaded: 0,
                    },
                    |s| ScrapeEntry {
                        complete: s.complete(),
                        incomplete: s.incomplete(),
                        downloaded: s.downloaded(),
                    },
                )
            })
            .collect()
    }

    /// Peers hold their last-seen second modulo 2^16, so ages are
    /// measured from each shard's latest announce (no peer there is
    /// newer): a peer is older than `cutoff` when its age exceeds
    /// `shard.now - cutoff`, and if the shard has heard nothing since
    /// `cutoff`, every peer in it is. Exact while that age limit is under
    /// [`MAX_PEER_AGE`] (a timeout of 16 h; longer ones are cut to it) and
    /// sweeps come at least every 2.2 h (the server's come every minute).
    fn sweep(&self, cutoff: u32) -> usize {
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut guard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let shard = &mut *guard;
            let swarms = &mut shard.swarms;
            let before = swarms.len();
            let now = shard.now;
            let max_age = now.checked_sub(cutoff).map(|age| age.min(MAX_PEER_AGE));
            swarms.retain(|_, swarm| {
                let (s, l) = match max_age {
                    Some(max_age) => swarm.expire(now, max_age),
                    None => (swarm.complete(), swarm.incomplete()),
                };
                self.seeders.fetch_sub(s, Ordering::Relaxed);
                self.leechers.fetch_sub(l, Ordering::Relaxed);
                dropped += s + l;
                max_age.is_some() && !swarm.is_empty()
            });
            self.swarms
                .fetch_sub(before - swarms.len(), Ordering::Relaxed);
            if swarms.capacity() > 64 && swarms.len() < swarms.capacity() / 4 {
                let target = swarms.capacity() / 2;
                swarms.shrink_to(target);
            }
        }
        dropped
    }

    fn stats(&self, top: usize) -> StoreStats {
        let mut st = StoreStats {
            swarms: self.swarms.load(Ordering::Relaxed),
            seeders: self.seeders.load(Ordering::Relaxed),
            leechers: self.leechers.load(Ordering::Relaxed),
            ..StoreStats::default()
        };
        if top == 0 {
            return st;
        }
        let mut biggest: Vec<(usize, InfoHash, usize, usize, u64)> = Vec::new();
        let by_size = |a: &(usize, InfoHash, usize, usize, u64),
                       b: &(usize, InfoHash, usize, usize, u64)| {
            b.0.cmp(&a.0).then(a.1.cmp(&b.1))
        };
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for (h, s) in shard.swarms.iter() {
                st.downloaded += s.downloaded();
                st.peer_heap_bytes += s.heap_bytes();
                biggest.push((
                    s.peer_count(),
                    *h,
                    s.complete(),
                    s.incomplete(),
                    s.downloaded(),
                ));
                if biggest.len() >= top * 4 {
                    biggest.sort_unstable_by(by_size);
                    biggest.truncate(top);
                }
            }
        }
        biggest.sort_unstable_by(by_size);
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
        store
            .announce(a, who(1, true, Event::Started), 0, 50, true)
            .unwrap();
        store
            .announce(a, who(2, false, Event::Started), 0, 50, true)
            .unwrap();
        store
            .announce(a, who(2, true, Event::Completed), 5, 50, true)
            .unwrap();
        store
            .announce(b, who(3, false, Event::Started), 10, 50, true)
            .unwrap();
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
        store
            .announce(
                InfoHash([9; 20]),
                who(1, false, Event::Stopped),
                20,
                50,
                true,
            )
            .unwrap();
        assert_eq!(store.stats(0).swarms, 1);
        store
            .announce(b, who(3, false, Event::Stopped), 20, 50, true)
            .unwrap();
        let st = store.stats(0);
        assert_eq!((st.swarms, st.seeders, st.leechers), (0, 0, 0));
    }

    /// Peers keep their last-seen second in 16 bits: sweeps are exact
    /// across a wrap of that clock, a shard that has heard nothing since
    /// the cutoff loses everyone, and no peer outlives MAX_PEER_AGE.
    #[test]
    fn sweeps_are_exact_across_the_16_bit_clock() {
        let store = MemoryStore::default();
        let (a, b) = (InfoHash([1; 20]), InfoHash([2; 20]));
        let ann = |h, port, seeder, now| {
            store
                .announce(h, who(port, seeder, Event::Started), now, 50, true)
                .unwrap()
        };
        let t = 5 * 65536 - 20;
        ann(a, 1, false, t);
        ann(a, 2, false, t + 30);
        ann(b, 3, true, t + 10);
        assert_eq!(store.sweep(t + 5), 1);
        assert_eq!(store.sweep(t + 20), 1);
        let st = store.stats(0);
        assert_eq!((st.swarms, st.seeders, st.leechers), (1, 0, 1));
        assert_eq!(store.sweep(t + 1_000_000), 1);
        let st = store.stats(0);
        assert_eq!((st.swarms, st.seeders, st.leechers), (0, 0, 0));
        // A timeout beyond MAX_PEER_AGE is cut to it.
        ann(a, 1, false, 100);
        ann(a, 2, false, 100 + MAX_PEER_AGE + 1);
        assert_eq!(store.sweep(0), 1);
        assert_eq!(store.scrape(&[a])[0].incomplete, 1);
    }

    #[test]
    fn limits_are_enforced() {
        let store = MemoryStore::new(Limits {
            max_swarms: 2,
            max_peers: 3,
        });
        let ann = |h: u8, port, seeder, event| {
            store.announce(InfoHash([h; 20]), who(port, seeder, event), 0, 50, true)
        };
        ann(1, 1, false, Event::Started).unwrap();
        ann(2, 1, false, Event::Started).unwrap();
        assert_eq!(ann(3, 1, false, Event::Started), Err(Full::Swarms));
        ann(1, 2, false, Event::Started).unwrap();
        assert_eq!(ann(1, 3, false, Event::Started), Err(Full::Peers));
        // Known peers still re-announce and leave when it is full.
        ann(1, 2, true, Event::None).unwrap();
        ann(2, 1, false, Event::Stopped).unwrap();
        ann(3, 1, false, Event::Started).unwrap();
        let st = store.stats(0);
        assert_eq!((st.swarms, st.seeders, st.leechers), (2, 1, 2));
    }
}
