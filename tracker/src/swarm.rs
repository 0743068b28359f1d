//! One swarm's peers and the announce logic over it — pure: no sockets, no
//! clocks (`now` is passed in, in seconds), randomness from a caller's RNG.
//!
//! Memory: an IPv4 peer is 8 bytes (address, port, and the second it was
//! last seen modulo 2^16 — ages are taken relative to `now`, see
//! [`Swarm::expire`]); the peer id is not stored (dictionary-form replies
//! omit it, as `no_peer_id` does). Each address family keeps one list,
//! seeders first, so counts are two numbers and a sample (seeders and
//! leechers, or leechers only) is always a slice. The list is a boxed
//! slice sized to fill the allocator's size class (no byte of its block
//! unused, growth by about a quarter), and a swarm is 32 bytes: the IPv4
//! list and a pointer to what most swarms lack (an index, IPv6 peers, a
//! download count). Sets of more than [`INDEX_AT`] peers also keep a hash
//! index, 8–32 bytes per peer (a `u32` per bucket, at most half full).
//! With bench/tracker.sh's 1 M peers in 100 k swarms of 10 a peer costs
//! 14.2 bytes of RSS in all, swarm map included (median of 7 runs,
//! 13.9–17.2: mimalloc's RSS grows in 2 MiB steps), opentracker 25.4:
//! 0.56 × (it was 33.5–37.5 bytes, 1.35–1.48 ×, with a 104-byte swarm, two
//! vectors per swarm and 12-byte peers).

use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rand::Rng;

use crate::request::Event;

/// An address family's raw address.
pub trait Addr: Copy + Eq + Hash + Default + std::fmt::Debug {
    fn to_ip(self) -> IpAddr;
    fn octets(&self) -> &[u8];
}

impl Addr for [u8; 4] {
    fn to_ip(self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(self))
    }
    fn octets(&self) -> &[u8] {
        self
    }
}

impl Addr for [u8; 16] {
    fn to_ip(self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(self))
    }
    fn octets(&self) -> &[u8] {
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Peer<A> {
    pub addr: A,
    pub port: u16,
    /// The tracker's clock (seconds) when last heard from, modulo 2^16
    /// ([`stamp`]): two bytes, not four, make an IPv4 peer 8 bytes rather
    /// than 12 (with padding).
    pub last_seen: u16,
}

/// A time as [`Peer::last_seen`] holds it.
pub fn stamp(now: u32) -> u16 {
    now as u16
}

/// The oldest a peer may get: [`Swarm::expire`] compares 16-bit stamps,
/// which is exact for peers younger than 2^16 s, so a store drops peers
/// past this age whatever its timeout, and must expire at least every
/// 2^16 s − `MAX_PEER_AGE` (2.2 h; the server sweeps every minute).
pub const MAX_PEER_AGE: u32 = 16 * 3600;

/// Longest run of neighbouring peers in one sample (see `PeerSet::sample_runs`).
pub const RUN: usize = 16;

/// Most runs in one sample (so at most this many cache misses for it).
const MAX_RUNS: usize = 16;
/// A run is at most two slices (it can wrap round within its segment).
const MAX_PARTS: usize = 2 * MAX_RUNS;

/// Asks the CPU to start loading the start of `part` into the cache.
#[inline(always)]
fn prefetch<T>(part: &[T]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults and changes no
    // state visible to the program (and the pointer is a valid slice's).
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(part.as_ptr().cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = part;
}

/// The slices of a list a sample comes from.
struct Runs<'a, A> {
    parts: [&'a [Peer<A>]; MAX_PARTS],
    len: usize,
}

impl<'a, A> Runs<'a, A> {
    fn push(&mut self, part: &'a [Peer<A>]) {
        if !part.is_empty() {
            self.parts[self.len] = part;
            self.len += 1;
        }
    }

    fn peers(&self) -> impl Iterator<Item = &'a Peer<A>> + '_ {
        self.parts[..self.len].iter().flat_map(|part| part.iter())
    }
}

/// The peers of one address family in one list: seeders at the front,
/// then leechers, then spare room. One allocation and one length instead
/// of two vectors; random access for sampling, O(1) removal (the hole is
/// filled from the end of its part, and a removed seeder's place at the
/// boundary from the end of the list), and a peer changing sides is one
/// swap across the boundary. The (address, port) index of big sets lives
/// beside the set (in a `Family` for IPv6, in the swarm's `Rest` for
/// IPv4) and is passed in, so that a swarm without one pays nothing for
/// it.
#[derive(Debug, Default)]
pub struct PeerSet<A: Addr> {
    /// `len` peers, the first `seeders` of them seeders; the rest of the
    /// slice is spare room (default peers). Its length is the capacity,
    /// chosen by [`capacity_for`].
    peers: Box<[Peer<A>]>,
    len: u32,
    seeders: u32,
}

/// A peer set with its index: an IPv6 set (and a set in tests).
#[derive(Debug, Default)]
struct Family<A: Addr> {
    set: PeerSet<A>,
    index: Option<Index>,
}

/// Sets with more peers than this keep a hash index.
pub const INDEX_AT: usize = 32;

/// Most peers in one swarm: a position in a list must fit in an index
/// entry's `POS_BITS` (with room for `EMPTY` and `DELETED`).
pub const MAX_SWARM_PEERS: usize = (1 << POS_BITS) - 3;

const POS_BITS: u32 = 24;
/// The position bits of an index entry.
const POS_MASK: u32 = (1 << POS_BITS) - 1;
/// 8 bits of the key's hash, above the position.
const TAG_MASK: u32 = !POS_MASK;
const EMPTY: u32 = u32::MAX;
const DELETED: u32 = u32::MAX - 1;

fn tag(hash: u64) -> u32 {
    ((hash >> 56) as u32) << POS_BITS
}

/// The size of the allocator's size class that holds `bytes`: mimalloc's
/// (the binary's allocator) are multiples of 8 bytes up to 64, then four
/// per doubling (80, 96, 112, 128, 160, …).
fn size_class(bytes: usize) -> usize {
    if bytes <= 64 {
        return bytes.next_multiple_of(8).max(8);
    }
    bytes.next_multiple_of(bytes.next_power_of_two() / 8)
}

/// A capacity of at least `peers` peers of `size` bytes that fills its
/// size class (a 10-peer IPv4 list is 80 bytes).
fn capacity_for(peers: usize, size: usize) -> usize {
    size_class(peers * size) / size
}

/// An open-addressing index: each entry a `u32` holding the peer's
/// position and 8 bits of its key's hash, so a probe reads a peer (the key
/// is not stored) only when those bits match. Linear probing, at most half
/// used, tombstones for removals; rebuilt from the list when it fills
/// (same size if tombstones fill it, else twice the size) or is far too
/// big, so rebuilds cost O(1) per change on average. 4-byte buckets,
/// between an eighth and half of them used: 8–32 bytes per peer (11–21
/// when just built), where a `HashMap<(addr, port), u32>` took 15–30.
///
/// One allocation: two counts, then a power-of-two number of buckets.
/// The hash is keyed by a secret per process mixed with the table's
/// address, which is new at every rebuild (a client cannot aim its peers
/// at one chain for long) and costs no memory read before the bucket's.
#[derive(Debug)]
struct Index {
    table: Box<[u32]>,
}

/// Header words: entries in use, tombstones.
const LIVE: usize = 0;
const DELETED_COUNT: usize = 1;
const HEADER: usize = 2;

impl Index {
    fn new(buckets: usize) -> Index {
        debug_assert!(buckets.is_power_of_two());
        let mut table = vec![EMPTY; HEADER + buckets].into_boxed_slice();
        table[LIVE] = 0;
        table[DELETED_COUNT] = 0;
        Index { table }
    }

    /// Buckets for `peers` entries: at most 3/8 used, so at least an
    /// eighth free before the next rebuild.
    fn buckets_for(peers: usize) -> usize {
        (8 * peers / 3 + 1).next_power_of_two().max(64)
    }

    fn buckets(&self) -> usize {
        self.table.len() - HEADER
    }
    fn live(&self) -> usize {
        self.table[LIVE] as usize
    }
    fn deleted(&self) -> usize {
        self.table[DELETED_COUNT] as usize
    }

    fn hash<A: Addr>(&self, addr: A, port: u16) -> u64 {
        use std::hash::BuildHasher;
        static SECRET: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
        let secret = *SECRET.get_or_init(rand::random);
        let seed = secret ^ (self.table.as_ptr() as usize as u64).rotate_left(29);
        foldhash::fast::FixedState::with_seed(seed).hash_one((addr, port))
    }

    /// Where probing for `hash` starts (for a prefetch).
    fn first_bucket(&self, hash: u64) -> &[u32] {
        &self.table[HEADER + (hash as usize & (self.buckets() - 1))..]
    }

    /// The bucket of the entry for the key hashed to `hash`, whose
    /// position `is_key` accepts.
    fn lookup(&self, hash: u64, is_key: impl Fn(usize) -> bool) -> Option<usize> {
        let mask = self.buckets() - 1;
        let tag = tag(hash);
        let mut i = hash as usize & mask;
        loop {
            let e = self.table[HEADER + i];
            if e == EMPTY {
                return None;
            }
            if e != DELETED && e & TAG_MASK == tag && is_key((e & POS_MASK) as usize) {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// The position an entry holds.
    fn pos_at(&self, at: usize) -> usize {
        (self.table[HEADER + at] & POS_MASK) as usize
    }

    /// Adds a key known to be absent; false when the index is full (half
    /// its buckets used or tombstoned): the caller rebuilds it instead.
    fn insert(&mut self, hash: u64, pos: usize) -> bool {
        if 2 * (self.live() + self.deleted() + 1) > self.buckets() {
            return false;
        }
        let mask = self.buckets() - 1;
        let mut i = hash as usize & mask;
        while self.table[HEADER + i] != EMPTY && self.table[HEADER + i] != DELETED {
            i = (i + 1) & mask;
        }
        if self.table[HEADER + i] == DELETED {
            self.table[DELETED_COUNT] -= 1;
        }
        self.table[HEADER + i] = tag(hash) | pos as u32;
        self.table[LIVE] += 1;
        true
    }

    fn set_pos(&mut self, at: usize, pos: usize) {
        let e = &mut self.table[HEADER + at];
        *e = (*e & TAG_MASK) | pos as u32;
    }

    fn remove(&mut self, at: usize) {
        self.table[HEADER + at] = DELETED;
        self.table[LIVE] -= 1;
        self.table[DELETED_COUNT] += 1;
    }
}

impl<A: Addr> PeerSet<A> {
    pub fn seeders(&self) -> usize {
        self.seeders as usize
    }
    pub fn leechers(&self) -> usize {
        self.len() - self.seeders()
    }
    pub fn len(&self) -> usize {
        self.len as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Seeders, then leechers.
    fn live(&self) -> &[Peer<A>] {
        &self.peers[..self.len()]
    }

    /// The bucket of the index entry for a key.
    fn index_entry(&self, index: &Index, hash: u64, addr: A, port: u16) -> Option<usize> {
        index.lookup(hash, |pos| {
            let p = &self.peers[pos];
            p.addr == addr && p.port == port
        })
    }

    /// Where a peer is in the list.
    fn find(&self, index: Option<&Index>, addr: A, port: u16) -> Option<usize> {
        let hash = index.map(|index| index.hash(addr, port));
        self.find_hashed(index, hash, addr, port)
    }

    /// Starts loading what finding a peer will read; returns the key's
    /// hash for [`PeerSet::find_hashed`] (`None` without an index).
    fn prefetch_find(&self, index: Option<&Index>, addr: A, port: u16) -> Option<u64> {
        let index = index?;
        let hash = index.hash(addr, port);
        prefetch(index.first_bucket(hash));
        Some(hash)
    }

    /// [`PeerSet::find`] with the key's hash (if there is an index).
    fn find_hashed(
        &self,
        index: Option<&Index>,
        hash: Option<u64>,
        addr: A,
        port: u16,
    ) -> Option<usize> {
        if let (Some(index), Some(hash)) = (index, hash) {
            return self
                .index_entry(index, hash, addr, port)
                .map(|at| index.pos_at(at));
        }
        self.live()
            .iter()
            .position(|p| p.addr == addr && p.port == port)
    }

    /// A new index of `buckets` buckets (and a new seed) over the list.
    fn build_index(&self, buckets: usize) -> Index {
        #[cfg(test)]
        tests::REBUILDS.with(|n| n.set(n.get() + 1));
        let mut index = Index::new(buckets);
        for (pos, p) in self.live().iter().enumerate() {
            let inserted = index.insert(index.hash(p.addr, p.port), pos);
            debug_assert!(inserted);
        }
        index
    }

    /// Points the index entry of the peer at `pos` to `to` instead; call it
    /// before the peer moves (lookups read the list).
    fn reindex(&self, index: &mut Option<Index>, pos: usize, to: usize) {
        if let Some(index) = index {
            let p = self.peers[pos];
            if let Some(at) = self.index_entry(index, index.hash(p.addr, p.port), p.addr, p.port) {
                index.set_pos(at, to);
            }
        }
    }

    /// Moves the peer at `from` to `to` (whose peer is gone or moved).
    fn move_peer(&mut self, index: &mut Option<Index>, from: usize, to: usize) {
        if from != to {
            self.reindex(index, from, to);
            self.peers[to] = self.peers[from];
        }
    }

    /// Swaps two peers.
    fn swap(&mut self, index: &mut Option<Index>, a: usize, b: usize) {
        if a != b {
            self.reindex(index, a, b);
            self.reindex(index, b, a);
            self.peers.swap(a, b);
        }
    }

    /// Inserts or refreshes a peer; returns whether it was a seeder before
    /// (`None` if it is new).
    #[cfg(test)]
    fn upsert(&mut self, index: &mut Option<Index>, peer: Peer<A>, seeder: bool) -> Option<bool> {
        let found = self.find(index.as_ref(), peer.addr, peer.port);
        self.upsert_at(index, found, peer, seeder)
    }

    /// [`PeerSet::upsert`] with the peer's position already looked up.
    fn upsert_at(
        &mut self,
        index: &mut Option<Index>,
        found: Option<usize>,
        peer: Peer<A>,
        seeder: bool,
    ) -> Option<bool> {
        let Some(pos) = found else {
            self.push(index, peer, seeder);
            return None;
        };
        let s = self.seeders();
        let was_seeder = pos < s;
        let pos = match (was_seeder, seeder) {
            (true, true) | (false, false) => pos,
            // Across the boundary: trade places with the first leecher,
            // which then becomes the last seeder…
            (false, true) => {
                self.swap(index, pos, s);
                self.seeders += 1;
                s
            }
            // … or with the last seeder, which becomes the first leecher.
            (true, false) => {
                self.swap(index, pos, s - 1);
                self.seeders -= 1;
                s - 1
            }
        };
        self.peers[pos] = peer;
        Some(was_seeder)
    }

    /// Room for one more: about a quarter more (at least one), to the end
    /// of the next size class — gentle steps, as most swarms are small
    /// and a doubled list would be up to half empty.
    fn grow(&mut self) {
        let cap = self.peers.len();
        let new_cap = capacity_for((cap + cap.div_ceil(4)).max(1), size_of::<Peer<A>>());
        self.resize(new_cap);
    }

    /// Moves the list to an allocation of `cap` peers (at least `len`).
    fn resize(&mut self, cap: usize) {
        let mut peers = std::mem::take(&mut self.peers).into_vec();
        if cap > peers.len() {
            // Exactly: `into_boxed_slice` would otherwise shrink it again.
            peers.reserve_exact(cap - peers.len());
            peers.resize(cap, Peer::default());
        } else {
            peers.truncate(cap);
        }
        self.peers = peers.into_boxed_slice();
    }

    fn push(&mut self, index: &mut Option<Index>, peer: Peer<A>, seeder: bool) {
        let len = self.len();
        // The store refuses new peers to a swarm this big: a position must
        // fit an index entry.
        debug_assert!(len < MAX_SWARM_PEERS);
        if len == self.peers.len() {
            self.grow();
        }
        let pos = if seeder {
            // The first leecher makes room at the end of the seeders.
            let s = self.seeders();
            self.move_peer(index, s, len);
            self.seeders += 1;
            s
        } else {
            len
        };
        self.peers[pos] = peer;
        self.len += 1;
        let len = len + 1;
        let rebuild = match index {
            Some(index) => {
                let hash = index.hash(peer.addr, peer.port);
                // Full: of tombstones (clear them), or of peers (grow).
                (!index.insert(hash, pos)).then(|| {
                    let buckets = index.buckets();
                    let tombstones = 8 * index.deleted() >= buckets;
                    if tombstones {
                        buckets
                    } else {
                        2 * buckets
                    }
                })
            }
            None => (len > INDEX_AT).then(|| Index::buckets_for(len)),
        };
        if let Some(buckets) = rebuild {
            *index = Some(self.build_index(buckets));
        }
    }

    /// Removes the peer at `pos`: the last seeder or the last peer fills
    /// the hole, and for a seeder the last peer then fills the last
    /// seeder's place. Gives memory back once the list has shrunk to a
    /// quarter of its capacity, and drops the index when the set is small
    /// again.
    fn remove_at(&mut self, index: &mut Option<Index>, pos: usize) -> Peer<A> {
        let gone = self.peers[pos];
        // The index is updated before the list: its lookups read the list.
        if let Some(ix) = index {
            if let Some(at) =
                self.index_entry(ix, ix.hash(gone.addr, gone.port), gone.addr, gone.port)
            {
                ix.remove(at);
            }
        }
        let last = self.len() - 1;
        if pos < self.seeders() {
            let last_seeder = self.seeders() - 1;
            self.move_peer(index, last_seeder, pos);
            self.move_peer(index, last, last_seeder);
            self.seeders -= 1;
        } else {
            self.move_peer(index, last, pos);
        }
        self.peers[last] = Peer::default();
        self.len -= 1;
        let (len, cap) = (self.len(), self.peers.len());
        if cap > 16 && len < cap / 4 {
            self.resize(capacity_for(cap / 2, size_of::<Peer<A>>()));
        }
        if len <= INDEX_AT / 2 {
            *index = None;
        } else if let Some(ix) = index {
            // Far too big for what is left: half the size, still at most a
            // quarter used.
            let buckets = ix.buckets();
            if buckets > 64 && 8 * len < buckets {
                *index = Some(self.build_index(buckets / 2));
            }
        }
        gone
    }

    fn contains(&self, index: Option<&Index>, addr: A, port: u16) -> bool {
        self.find(index, addr, port).is_some()
    }

    /// Removes a peer; returns whether it was a seeder (`None` if unknown).
    fn remove(&mut self, index: &mut Option<Index>, addr: A, port: u16) -> Option<bool> {
        let pos = self.find(index.as_ref(), addr, port)?;
        let seeder = pos < self.seeders();
        self.remove_at(index, pos);
        Some(seeder)
    }

    /// Where a sample of up to `want` peers other than the announcer comes
    /// from (leechers only if `leechers_only`): a few runs of neighbours,
    /// as slices of the list. Random single peers from a big swarm cost a
    /// cache miss each (profiles showed that as the tracker's largest
    /// user-space cost), so the list is cut into equal segments and each
    /// gives one run of up to about [`RUN`] peers from a random offset
    /// (wrapping round within its segment). Every part of the list is
    /// represented, the peers are distinct, the cost is O(want) with a
    /// handful of misses — and every run's start is prefetched before any
    /// is read, so those misses overlap each other and the announcer's
    /// lookup rather than queue.
    ///
    /// The runs hold `want + 1` peers (or the whole list if it is
    /// smaller), so skipping the announcer still leaves `want`.
    fn sample_runs<R: Rng>(&self, want: usize, leechers_only: bool, rng: &mut R) -> Runs<'_, A> {
        // Seeders come first, so either pool is one slice.
        let pool = if leechers_only {
            &self.live()[self.seeders()..]
        } else {
            self.live()
        };
        let n = pool.len();
        let mut runs = Runs {
            parts: [&[]; MAX_PARTS],
            len: 0,
        };
        if n == 0 || want == 0 {
            return runs;
        }
        let k = want + 1;
        if n <= k {
            runs.push(pool);
            return runs;
        }
        // (segment count, run length): one run when the list is not much
        // longer than the sample, else runs of about RUN.
        let (segments, run) = if n < 4 * k {
            (1, k)
        } else {
            let w = k.div_ceil(RUN).min(MAX_RUNS);
            (w, k.div_ceil(w))
        };
        let seg_len = n / segments;
        for s in 0..segments {
            let base = s * seg_len;
            let len = if s + 1 == segments { n - base } else { seg_len };
            let offset = rng.random_range(0..len);
            let first = run.min(len - offset);
            runs.push(&pool[base + offset..base + offset + first]);
            if first < run {
                runs.push(&pool[base..base + run - first]);
            }
        }
        for part in &runs.parts[..runs.len] {
            prefetch(part);
        }
        runs
    }

    /// Drops peers more than `max_age` seconds older than `now` (see
    /// [`Swarm::expire`]); returns (seeders, leechers) removed.
    fn expire(&mut self, index: &mut Option<Index>, now: u32, max_age: u32) -> (usize, usize) {
        debug_assert!(max_age <= MAX_PEER_AGE);
        let now = stamp(now);
        let mut removed = (0, 0);
        // A removal fills the hole from further on, so the same position
        // is looked at again.
        let mut i = 0;
        while i < self.len() {
            if u32::from(now.wrapping_sub(self.peers[i].last_seen)) > max_age {
                if i < self.seeders() {
                    removed.0 += 1;
                } else {
                    removed.1 += 1;
                }
                self.remove_at(index, i);
            } else {
                i += 1;
            }
        }
        removed
    }

    /// Bytes this set holds on the heap (capacity, not length), with its
    /// index.
    fn heap_bytes(&self, index: Option<&Index>) -> usize {
        std::mem::size_of_val(&*self.peers) + index.map_or(0, |i| std::mem::size_of_val(&*i.table))
    }
}

impl<A: Addr> Family<A> {
    #[cfg(test)]
    fn upsert(&mut self, peer: Peer<A>, seeder: bool) -> Option<bool> {
        self.set.upsert(&mut self.index, peer, seeder)
    }
    #[cfg(test)]
    fn remove(&mut self, addr: A, port: u16) -> Option<bool> {
        self.set.remove(&mut self.index, addr, port)
    }
    fn contains(&self, addr: A, port: u16) -> bool {
        self.set.contains(self.index.as_ref(), addr, port)
    }
    fn expire(&mut self, now: u32, max_age: u32) -> (usize, usize) {
        self.set.expire(&mut self.index, now, max_age)
    }
    fn heap_bytes(&self) -> usize {
        self.set.heap_bytes(self.index.as_ref())
    }
}

/// One torrent's swarm: 32 bytes besides its list, since a store holds
/// one per torrent and most torrents have a few IPv4 peers and nothing
/// else.
#[derive(Debug, Default)]
pub struct Swarm {
    pub v4: PeerSet<[u8; 4]>,
    /// Boxed, and absent while all of it would be empty.
    rest: Option<Box<Rest>>,
}

/// What a swarm may need besides its IPv4 list.
#[derive(Debug, Default)]
struct Rest {
    /// The IPv4 set's index, once it has more than [`INDEX_AT`] peers.
    v4_index: Option<Index>,
    /// Boxed: most swarms that have a `Rest` (for the count) have no IPv6
    /// peer.
    v6: Option<Box<Family<[u8; 16]>>>,
    /// `completed` events seen.
    downloaded: u64,
}

/// The announcing peer as the tracker sees it.
#[derive(Debug, Clone, Copy)]
pub struct Announcer {
    pub ip: IpAddr,
    pub port: u16,
    pub seeder: bool,
    pub event: Event,
}

/// The peers chosen for a reply, in the form the reply needs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sample {
    /// 6-byte (IPv4) or 18-byte (IPv6) compact entries (BEP 23 / BEP 7).
    pub compact: Vec<u8>,
    /// Whether `compact` holds IPv6 entries (the reply key is `peers6`).
    pub v6: bool,
    /// For dictionary-form replies.
    pub dicts: Vec<(IpAddr, u16)>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AnnounceOutcome {
    pub complete: usize,
    pub incomplete: usize,
    pub peers: Sample,
}

/// Normalises IPv4-mapped IPv6 addresses (from dual-stack sockets) to IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

impl Swarm {
    fn v6(&self) -> Option<&Family<[u8; 16]>> {
        self.rest.as_ref()?.v6.as_deref()
    }
    fn v4_index(&self) -> Option<&Index> {
        self.rest.as_ref()?.v4_index.as_ref()
    }
    fn rest_mut(&mut self) -> &mut Rest {
        self.rest.get_or_insert_with(Default::default)
    }

    pub fn complete(&self) -> usize {
        self.v4.seeders() + self.v6().map_or(0, |v6| v6.set.seeders())
    }
    pub fn incomplete(&self) -> usize {
        self.v4.leechers() + self.v6().map_or(0, |v6| v6.set.leechers())
    }
    pub fn peer_count(&self) -> usize {
        self.complete() + self.incomplete()
    }
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6().map_or(true, |v6| v6.set.is_empty())
    }
    /// `completed` events seen.
    pub fn downloaded(&self) -> u64 {
        self.rest.as_ref().map_or(0, |rest| rest.downloaded)
    }

    /// Is this announcer already in the swarm?
    pub fn contains(&self, ip: IpAddr, port: u16) -> bool {
        match canonical_ip(ip) {
            IpAddr::V4(v4) => self.v4.contains(self.v4_index(), v4.octets(), port),
            IpAddr::V6(ip) => self.v6().is_some_and(|v6| v6.contains(ip.octets(), port)),
        }
    }

    /// The announce logic: record (or remove) the announcer, count a
    /// completed download, and pick up to `numwant` other peers of its
    /// address family — leechers only when it is a seeder (after its
    /// `started`).
    pub fn announce<R: Rng>(
        &mut self,
        who: Announcer,
        now: u32,
        numwant: usize,
        compact: bool,
        rng: &mut R,
    ) -> AnnounceOutcome {
        let mut peers = Sample::default();
        let before = match canonical_ip(who.ip) {
            IpAddr::V4(ip) => {
                // The index lives in `rest`; a set that gets one makes it.
                let mut made = None;
                let index = match &mut self.rest {
                    Some(rest) => &mut rest.v4_index,
                    None => &mut made,
                };
                let before = announce_in(
                    &mut self.v4,
                    index,
                    ip.octets(),
                    who,
                    now,
                    numwant,
                    compact,
                    rng,
                    &mut peers,
                );
                if made.is_some() {
                    self.rest_mut().v4_index = made;
                }
                before
            }
            IpAddr::V6(ip) => {
                peers.v6 = true;
                if who.event == Event::Stopped && self.v6().is_none() {
                    None
                } else {
                    let v6 = self.rest_mut().v6.get_or_insert_with(Default::default);
                    announce_in(
                        &mut v6.set,
                        &mut v6.index,
                        ip.octets(),
                        who,
                        now,
                        numwant,
                        compact,
                        rng,
                        &mut peers,
                    )
                }
            }
        };
        if completed(who, before) {
            self.rest_mut().downloaded += 1;
        }
        self.tidy();
        AnnounceOutcome {
            complete: self.complete(),
            incomplete: self.incomplete(),
            peers,
        }
    }

    /// Drops peers more than `max_age` seconds older than `now` (at most
    /// [`MAX_PEER_AGE`]); returns (seeders, leechers) removed. Ages are
    /// taken on 16-bit stamps, so this is exact for peers last seen less
    /// than 2^16 s before `now` (none were seen after it): the caller
    /// expires at least every 2^16 s − `max_age`, so none gets older
    /// unnoticed.
    pub fn expire(&mut self, now: u32, max_age: u32) -> (usize, usize) {
        let mut made = None;
        let index = match &mut self.rest {
            Some(rest) => &mut rest.v4_index,
            None => &mut made,
        };
        let a = self.v4.expire(index, now, max_age);
        // Expiry drops or rebuilds an index, never starts one.
        debug_assert!(made.is_none());
        let b = match self.rest.as_mut().and_then(|rest| rest.v6.as_mut()) {
            Some(v6) => v6.expire(now, max_age),
            None => (0, 0),
        };
        self.tidy();
        (a.0 + b.0, a.1 + b.1)
    }

    /// Gives back what is no longer used: an empty IPv6 set, then a
    /// `Rest` holding nothing.
    fn tidy(&mut self) {
        if let Some(rest) = &mut self.rest {
            if rest.v6.as_ref().is_some_and(|v6| v6.set.is_empty()) {
                rest.v6 = None;
            }
            if rest.v4_index.is_none() && rest.v6.is_none() && rest.downloaded == 0 {
                self.rest = None;
            }
        }
    }

    /// Heap bytes held for peers: lists, indexes and the boxes they sit
    /// in (not the swarm itself, which is in the store's map).
    pub fn heap_bytes(&self) -> usize {
        self.v4.heap_bytes(self.v4_index())
            + self.rest.as_ref().map_or(0, |rest| {
                size_of::<Rest>()
                    + rest
                        .v6
                        .as_ref()
                        .map_or(0, |v6| size_of::<Family<[u8; 16]>>() + v6.heap_bytes())
            })
    }
}

/// One family's part of [`Swarm::announce`]; returns whether the announcer
/// was a seeder before (`None`: it was not in the swarm).
#[allow(clippy::too_many_arguments)]
fn announce_in<A: Addr, R: Rng>(
    set: &mut PeerSet<A>,
    index: &mut Option<Index>,
    addr: A,
    who: Announcer,
    now: u32,
    numwant: usize,
    compact: bool,
    rng: &mut R,
    out: &mut Sample,
) -> Option<bool> {
    if who.event == Event::Stopped {
        return set.remove(index, addr, who.port);
    }
    // The sample is taken before the announcer is recorded (the other
    // peers are the same either way), so that its runs' cache misses and
    // the index's are all under way before any is waited for.
    let hash = set.prefetch_find(index.as_ref(), addr, who.port);
    // A seed needs only leechers — except on its `started` announce: aria2
    // announces a magnet whose metadata it still lacks with left=0, and
    // would otherwise never hear of a seed (opentracker gives seeds to
    // seeds too).
    let leechers_only = who.seeder && who.event != Event::Started;
    let runs = set.sample_runs(numwant, leechers_only, rng);
    let found = set.find_hashed(index.as_ref(), hash, addr, who.port);
    let me = (addr, who.port);
    let others = runs.peers().filter(|p| (p.addr, p.port) != me);
    if compact {
        // Exactly this many: the runs hold `numwant + 1` or everyone.
        let pool = if leechers_only {
            set.leechers()
        } else {
            set.len()
        };
        let me_in_pool = found.is_some_and(|pos| !leechers_only || pos >= set.seeders());
        let count = numwant.min(pool - usize::from(me_in_pool));
        let width = addr.octets().len() + 2;
        out.compact.resize(count * width, 0);
        for (entry, p) in out.compact.chunks_exact_mut(width).zip(others) {
            let (ip, port) = entry.split_at_mut(width - 2);
            ip.copy_from_slice(p.addr.octets());
            port.copy_from_slice(&p.port.to_be_bytes());
        }
    } else {
        out.dicts = others
            .take(numwant)
            .map(|p| (p.addr.to_ip(), p.port))
            .collect();
    }
    let peer = Peer {
        addr,
        port: who.port,
        last_seen: stamp(now),
    };
    set.upsert_at(index, found, peer, who.seeder)
}

/// Did this announce finish a download? Either an explicit `completed`
/// from a peer not already known as a seeder, or a peer we knew as a
/// leecher now reporting nothing left — some clients (aria2 with
/// `--seed-time=0`) go straight to `stopped` without `completed`.
fn completed(who: Announcer, before: Option<bool>) -> bool {
    match who.event {
        Event::Completed => before != Some(true),
        _ => who.seeder && before == Some(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;
    use std::collections::HashMap;

    thread_local! {
        /// Index builds on this thread (each test has its own).
        pub(super) static REBUILDS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    fn who(ip: &str, port: u16, seeder: bool, event: Event) -> Announcer {
        Announcer {
            ip: ip.parse().unwrap(),
            port,
            seeder,
            event,
        }
    }

    /// Times in tests that should cross a wrap of the 16-bit stamps start here.
    const BASE: u32 = 3 * 65536 - 50;

    /// The list's shape: counts within the capacity, spare room empty, and
    /// the index (if any) holding exactly the live peers at their
    /// positions.
    fn check_partition<A: Addr>(f: &Family<A>) {
        let set = &f.set;
        assert!(set.seeders() <= set.len() && set.len() <= set.peers.len());
        assert!(set.peers[set.len()..].iter().all(|p| *p == Peer::default()));
        if let Some(index) = &f.index {
            assert_eq!(index.live(), set.len());
            for (pos, p) in set.live().iter().enumerate() {
                let at = set.index_entry(index, index.hash(p.addr, p.port), p.addr, p.port);
                assert_eq!(at.map(|at| index.pos_at(at)), Some(pos));
            }
        }
    }

    fn compact_peers(bytes: &[u8]) -> Vec<(Ipv4Addr, u16)> {
        bytes
            .chunks_exact(6)
            .map(|c| {
                (
                    Ipv4Addr::new(c[0], c[1], c[2], c[3]),
                    u16::from_be_bytes([c[4], c[5]]),
                )
            })
            .collect()
    }

    #[test]
    fn a_seed_that_starts_hears_of_seeds_too() {
        // aria2 fetching a magnet's metadata announces left=0, started.
        let mut rng = SmallRng::seed_from_u64(3);
        let mut s = Swarm::default();
        s.announce(
            who("10.0.0.1", 1000, true, Event::Started),
            0,
            50,
            true,
            &mut rng,
        );
        let out = s.announce(
            who("10.0.0.3", 3000, true, Event::Started),
            0,
            50,
            true,
            &mut rng,
        );
        assert_eq!(
            compact_peers(&out.peers.compact),
            vec![(Ipv4Addr::new(10, 0, 0, 1), 1000)]
        );
        let out = s.announce(
            who("10.0.0.3", 3000, true, Event::None),
            1,
            50,
            false,
            &mut rng,
        );
        assert!(out.peers.dicts.is_empty(), "{:?}", out.peers.dicts);
        // Its own started again: the other seed, not itself.
        let out = s.announce(
            who("10.0.0.3", 3000, true, Event::Started),
            2,
            50,
            true,
            &mut rng,
        );
        assert_eq!(compact_peers(&out.peers.compact).len(), 1);
    }

    #[test]
    fn announcer_is_never_in_its_own_list_and_seeders_get_no_seeders() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut s = Swarm::default();
        for i in 0..5 {
            s.announce(
                who("10.0.0.1", 1000 + i, true, Event::Started),
                0,
                50,
                true,
                &mut rng,
            );
        }
        for i in 0..5 {
            s.announce(
                who("10.0.0.2", 2000 + i, false, Event::Started),
                0,
                50,
                true,
                &mut rng,
            );
        }
        assert_eq!((s.complete(), s.incomplete()), (5, 5));
        let out = s.announce(
            who("10.0.0.2", 2000, false, Event::None),
            1,
            50,
            true,
            &mut rng,
        );
        let peers = compact_peers(&out.peers.compact);
        assert_eq!(peers.len(), 9);
        assert!(!peers.contains(&(Ipv4Addr::new(10, 0, 0, 2), 2000)));
        let out = s.announce(
            who("10.0.0.1", 1000, true, Event::None),
            1,
            50,
            true,
            &mut rng,
        );
        let peers = compact_peers(&out.peers.compact);
        assert_eq!(peers.len(), 5);
        assert!(peers
            .iter()
            .all(|(ip, _)| *ip == Ipv4Addr::new(10, 0, 0, 2)));
    }

    #[test]
    fn samples_are_bounded_random_and_distinct() {
        let mut rng = SmallRng::seed_from_u64(2);
        let mut s = Swarm::default();
        for i in 0..200u16 {
            s.announce(
                who("10.1.0.1", i + 1, i % 3 == 0, Event::Started),
                0,
                0,
                true,
                &mut rng,
            );
        }
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..20 {
            let out = s.announce(
                who("10.9.9.9", 9, false, Event::None),
                0,
                30,
                true,
                &mut rng,
            );
            let peers = compact_peers(&out.peers.compact);
            assert_eq!(peers.len(), 30);
            let distinct: std::collections::HashSet<_> = peers.iter().collect();
            assert_eq!(distinct.len(), 30);
            firsts.insert(peers[0]);
        }
        assert!(firsts.len() > 5, "samples should start at random places");
        // Over many samples every peer turns up.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let out = s.announce(
                who("10.9.9.9", 9, false, Event::None),
                0,
                30,
                true,
                &mut rng,
            );
            seen.extend(compact_peers(&out.peers.compact));
        }
        assert_eq!(seen.len(), 200, "every peer should be reachable");
    }

    #[test]
    fn families_are_kept_apart_and_v6_is_compact_18_bytes() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut s = Swarm::default();
        s.announce(
            who("10.0.0.1", 1, true, Event::Started),
            0,
            50,
            true,
            &mut rng,
        );
        s.announce(
            who("::ffff:10.0.0.2", 2, false, Event::Started),
            0,
            50,
            true,
            &mut rng,
        );
        s.announce(
            who("2001:db8::1", 3, true, Event::Started),
            0,
            50,
            true,
            &mut rng,
        );
        assert_eq!(
            s.v4.seeders() + s.v4.leechers(),
            2,
            "mapped address counts as IPv4"
        );
        let out = s.announce(
            who("2001:db8::2", 4, false, Event::None),
            0,
            50,
            true,
            &mut rng,
        );
        assert!(out.peers.v6);
        assert_eq!(out.peers.compact.len(), 18);
        assert_eq!(
            &out.peers.compact[..16],
            &"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(&out.peers.compact[16..], &3u16.to_be_bytes());
        assert_eq!((out.complete, out.incomplete), (2, 2));
        let out = s.announce(
            who("10.0.0.3", 5, false, Event::None),
            0,
            50,
            false,
            &mut rng,
        );
        assert!(out.peers.compact.is_empty());
        assert_eq!(out.peers.dicts.len(), 2);
    }

    #[test]
    fn stopped_removes_completed_counts_once_and_expiry_sweeps() {
        let mut rng = SmallRng::seed_from_u64(4);
        let mut s = Swarm::default();
        s.announce(
            who("10.0.0.1", 1, false, Event::Started),
            0,
            50,
            true,
            &mut rng,
        );
        s.announce(
            who("10.0.0.1", 1, true, Event::Completed),
            10,
            50,
            true,
            &mut rng,
        );
        s.announce(
            who("10.0.0.1", 1, true, Event::Completed),
            20,
            50,
            true,
            &mut rng,
        );
        assert_eq!(s.downloaded(), 1);
        assert_eq!((s.complete(), s.incomplete()), (1, 0));
        s.announce(
            who("10.0.0.2", 2, false, Event::Started),
            100,
            50,
            true,
            &mut rng,
        );
        // Peer 1 was last seen at 20, peer 2 at 100: older than 50 s at 100.
        assert_eq!(s.expire(100, 50), (1, 0));
        assert_eq!((s.complete(), s.incomplete()), (0, 1));
        let out = s.announce(
            who("10.0.0.2", 2, false, Event::Stopped),
            100,
            50,
            true,
            &mut rng,
        );
        assert!(out.peers.compact.is_empty());
        assert!(s.is_empty());
        assert_eq!(s.downloaded(), 1);
    }

    /// A big set through growth, mass removal (tombstones, a shrinking
    /// index), re-growth and seeder/leecher switches: every peer is found
    /// where it is, and nobody else is found.
    #[test]
    fn the_index_follows_a_big_set_up_and_down() {
        let mut set = Family::<[u8; 4]>::default();
        let peer = |port: u16| Peer {
            addr: [10, 0, (port >> 8) as u8, 1],
            port,
            last_seen: port,
        };
        let check = |set: &Family<[u8; 4]>, present: &dyn Fn(u16) -> bool| {
            check_partition(set);
            for port in 1..=6000u16 {
                let p = peer(port);
                let found = set.set.find(set.index.as_ref(), p.addr, p.port);
                assert_eq!(found.is_some(), present(port), "port {port}");
                if let Some(pos) = found {
                    assert_eq!(set.set.peers[pos], p);
                }
            }
        };
        for port in 1..=5000 {
            assert_eq!(set.upsert(peer(port), port % 2 == 0), None);
        }
        check(&set, &|port| port <= 5000);
        // Drop all but every tenth.
        for port in (1..=5000).filter(|port| port % 10 != 0) {
            assert_eq!(set.remove(peer(port).addr, port), Some(port % 2 == 0));
        }
        check(&set, &|port| port <= 5000 && port % 10 == 0);
        let table = set.index.as_ref().map(|i| i.buckets());
        assert!(
            table.is_some_and(|t| t <= 4 * 500 + 64),
            "index shrank: {table:?}"
        );
        // Everyone left becomes a leecher, then new peers arrive.
        for port in (10..=5000).step_by(10) {
            set.upsert(peer(port), false);
        }
        for port in 5001..=6000 {
            set.upsert(peer(port), true);
        }
        assert_eq!(set.set.seeders(), 1000);
        assert_eq!(set.set.leechers(), 500);
        check(&set, &|port| port > 5000 || port % 10 == 0);
        // Expiry down to nothing but a few: the index goes away.
        set.expire(6000, 5);
        assert_eq!(set.set.len(), 6);
        assert!(set.index.is_none());
        check(&set, &|port| port >= 5995);
    }

    /// Peers moving across the seeder/leecher boundary and leaving from
    /// either side, in a small (scanned) set and a big (indexed) one: the
    /// seeders stay in front, everyone is where the index says, and the
    /// counts follow.
    #[test]
    fn the_boundary_moves_with_seeders_coming_and_going() {
        for size in [7u16, 300] {
            let mut set = Family::<[u8; 4]>::default();
            let mut model: HashMap<u16, bool> = HashMap::new();
            let peer = |port: u16| Peer {
                addr: [10, 0, 0, 2],
                port,
                last_seen: 0,
            };
            let check = |set: &Family<[u8; 4]>, model: &HashMap<u16, bool>| {
                check_partition(set);
                assert_eq!(set.set.len(), model.len());
                for (&port, &seeder) in model {
                    let pos = set.set.find(set.index.as_ref(), [10, 0, 0, 2], port);
                    assert_eq!(pos.map(|pos| pos < set.set.seeders()), Some(seeder));
                }
            };
            // Leechers first, then seeders pushed in front of them.
            for port in 1..=size {
                let seeder = port % 4 == 0;
                assert_eq!(set.upsert(peer(port), seeder), None);
                model.insert(port, seeder);
            }
            check(&set, &model);
            // Every third changes sides; every fifth leaves.
            for port in (1..=size).step_by(3) {
                let seeder = !model[&port];
                assert_eq!(set.upsert(peer(port), seeder), Some(!seeder));
                model.insert(port, seeder);
                check(&set, &model);
            }
            for port in (1..=size).step_by(5) {
                assert_eq!(set.remove([10, 0, 0, 2], port), model.remove(&port));
                check(&set, &model);
            }
            // All seeders leave, then everyone.
            let seeders: Vec<u16> = model.iter().filter(|(_, s)| **s).map(|(p, _)| *p).collect();
            for port in seeders {
                assert_eq!(set.remove([10, 0, 0, 2], port), Some(true));
                model.remove(&port);
            }
            check(&set, &model);
            assert_eq!(set.set.seeders(), 0);
            let rest: Vec<u16> = model.keys().copied().collect();
            for port in rest {
                assert_eq!(set.remove([10, 0, 0, 2], port), Some(false));
                model.remove(&port);
            }
            check(&set, &model);
            assert!(set.set.is_empty() && set.index.is_none());
        }
    }

    /// Last-seen times are 16 bits: ages are right across a wrap of that
    /// clock, and at any height of the real one.
    #[test]
    fn ages_are_right_across_a_wrap_of_the_16_bit_clock() {
        let mut rng = SmallRng::seed_from_u64(8);
        for base in [65530, BASE, 40 * 65536 + 65535, u32::MAX - 30] {
            let mut s = Swarm::default();
            // Seen at base, base + 10 and base + 20 (crossing a wrap).
            for (i, t) in [0, 10, 20].into_iter().enumerate() {
                let who = who("10.0.0.1", 1 + i as u16, i == 1, Event::None);
                s.announce(who, base.wrapping_add(t), 50, true, &mut rng);
            }
            let now = base.wrapping_add(25);
            assert_eq!(s.expire(now, 25), (0, 0), "base {base}");
            assert_eq!(s.expire(now, 24), (0, 1), "base {base}");
            assert_eq!(s.expire(now, 10), (1, 0), "base {base}");
            assert_eq!(s.expire(now, 5), (0, 0), "base {base}");
            assert_eq!(s.expire(now, 4), (0, 1), "base {base}");
            assert!(s.is_empty());
        }
    }

    /// Lists fill their allocator size class: a 10-peer IPv4 list is one
    /// 80-byte block, and growth steps are gentle.
    #[test]
    fn lists_fill_their_size_class() {
        assert_eq!(size_of::<Peer<[u8; 4]>>(), 8);
        assert_eq!(size_of::<Peer<[u8; 16]>>(), 20);
        assert_eq!(size_of::<Swarm>(), 32);
        let classes: Vec<usize> = (1..=300).map(size_class).collect();
        for (bytes, class) in (1..=300).zip(&classes) {
            assert!(*class >= bytes && *class - bytes < (*class / 4).max(8));
        }
        let mut distinct = classes.clone();
        distinct.dedup();
        assert_eq!(
            distinct,
            [8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320]
        );
        let mut set = Family::<[u8; 4]>::default();
        let mut caps = vec![];
        for port in 1..=100 {
            set.upsert(
                Peer {
                    addr: [10, 0, 0, 3],
                    port,
                    last_seen: 0,
                },
                port % 3 == 0,
            );
            if caps.last() != Some(&set.set.peers.len()) {
                caps.push(set.set.peers.len());
            }
            if port == 10 {
                assert_eq!(size_of_val(&*set.set.peers), 80);
            }
        }
        assert_eq!(caps, [1, 2, 3, 4, 5, 7, 10, 14, 20, 28, 40, 56, 80, 112]);
        for cap in caps {
            assert_eq!(size_class(cap * 8), cap * 8);
        }
    }

    /// A swarm that holds steady at any size while peers come and go
    /// rebuilds its index rarely, whatever size it holds at (a rebuild
    /// costs O(peers)).
    #[test]
    fn churn_at_a_steady_size_rebuilds_rarely() {
        for size in [33, 62, 63, 64, 126, 127, 510, 511, 4094, 4095] {
            let mut set = Family::<[u8; 4]>::default();
            let peer = |n: usize| Peer {
                addr: [10, 0, 0, 1],
                port: n as u16,
                last_seen: 0,
            };
            for n in 0..size {
                set.upsert(peer(n), false);
            }
            REBUILDS.with(|r| r.set(0));
            // 20 000 times: the oldest peer leaves, a new one comes.
            for n in size..size + 20_000 {
                let (gone, old) = (n - size, peer(n - size));
                let was_seeder = gone >= size && gone % 3 == 0;
                assert_eq!(set.remove(old.addr, old.port), Some(was_seeder));
                set.upsert(peer(n), n % 3 == 0);
            }
            let rebuilds = REBUILDS.with(|r| r.get());
            // A tombstone clean-up at most every buckets / 8 >= size / 4
            // joins.
            assert!(
                rebuilds <= 4 * 20_000 / size + 4,
                "size {size}: {rebuilds} rebuilds"
            );
            for n in 20_000..size + 20_000 {
                assert!(set.contains(peer(n).addr, peer(n).port));
            }
        }
    }

    proptest! {
        /// Every reply holds exactly min(numwant, other eligible peers)
        /// distinct peers, all real, never the announcer, no seeder for a
        /// seeder; the compact and dictionary forms agree on the count.
        #[test]
        fn replies_hold_exactly_the_peers_they_should(
            peers in proptest::collection::vec((1u16..400, any::<bool>()), 0..300),
            me in 1u16..400,
            me_seeder in any::<bool>(),
            numwant in 0usize..120,
            compact in any::<bool>(),
        ) {
            let mut rng = SmallRng::seed_from_u64(6);
            let mut s = Swarm::default();
            let mut model: HashMap<u16, bool> = HashMap::new();
            for (port, seeder) in peers {
                s.announce(who("10.0.0.1", port, seeder, Event::None), 0, 0, true, &mut rng);
                model.insert(port, seeder);
            }
            let out = s.announce(who("10.0.0.1", me, me_seeder, Event::None), 0, numwant, compact, &mut rng);
            let eligible = model
                .iter()
                .filter(|(port, seeder)| **port != me && !(me_seeder && **seeder))
                .count();
            let got: Vec<(IpAddr, u16)> = if compact {
                prop_assert!(out.peers.dicts.is_empty());
                compact_peers(&out.peers.compact).into_iter().map(|(ip, port)| (IpAddr::V4(ip), port)).collect()
            } else {
                prop_assert!(out.peers.compact.is_empty());
                out.peers.dicts.clone()
            };
            prop_assert_eq!(got.len(), numwant.min(eligible));
            let distinct: std::collections::HashSet<_> = got.iter().collect();
            prop_assert_eq!(distinct.len(), got.len());
            for (ip, port) in got {
                prop_assert_eq!(ip, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
                prop_assert!(port != me);
                let seeder = model.get(&port);
                prop_assert!(seeder.is_some(), "port {} is no peer", port);
                prop_assert!(!(me_seeder && *seeder.unwrap()), "a seeder got a seeder");
            }
        }

        /// Whatever happens, counts equal list lengths, seeders stay in
        /// front, and the index agrees. (The times cross a wrap of the
        /// 16-bit clock.)
        #[test]
        fn index_stays_consistent(ops in proptest::collection::vec((0u8..4, 1u16..120, any::<bool>(), 0u32..100), 0..300)) {
            let mut rng = SmallRng::seed_from_u64(5);
            let mut s = Swarm::default();
            let mut model: HashMap<u16, (bool, u32)> = HashMap::new();
            for (op, port, seeder, t) in ops {
                match op {
                    0 | 1 => {
                        s.announce(who("10.0.0.1", port, seeder, Event::None), BASE + t, 5, true, &mut rng);
                        model.insert(port, (seeder, t));
                    }
                    2 => {
                        s.announce(who("10.0.0.1", port, seeder, Event::Stopped), BASE + t, 5, true, &mut rng);
                        model.remove(&port);
                    }
                    _ => {
                        // Everyone last seen before t.
                        s.expire(BASE + 99, 99 - t);
                        model.retain(|_, (_, seen)| *seen >= t);
                    }
                }
                let seeders = model.values().filter(|(sd, _)| *sd).count();
                prop_assert_eq!(s.complete(), seeders);
                prop_assert_eq!(s.incomplete(), model.len() - seeders);
                for port in 1..120 {
                    prop_assert_eq!(s.contains("10.0.0.1".parse().unwrap(), port), model.contains_key(&port));
                }
                let set = Family { set: std::mem::take(&mut s.v4), index: s.rest.as_mut().and_then(|r| r.v4_index.take()) };
                check_partition(&set);
                if let Some(index) = &set.index {
                    // The counts agree with the buckets and the lists.
                    let buckets = &index.table[HEADER..];
                    let deleted = buckets.iter().filter(|&&e| e == DELETED).count();
                    let live = buckets.iter().filter(|&&e| e != DELETED && e != EMPTY).count();
                    prop_assert_eq!((index.live(), index.deleted()), (live, deleted));
                    prop_assert_eq!(live, set.set.len());
                    prop_assert!(2 * (live + deleted) <= index.buckets());
                }
                for (port, (seeder, _)) in &model {
                    let pos = set.set.find(set.index.as_ref(), [10, 0, 0, 1], *port).unwrap();
                    prop_assert_eq!(pos < set.set.seeders(), *seeder);
                    prop_assert_eq!(set.set.peers[pos].port, *port);
                }
                // Put it back: the swarm goes on.
                s.v4 = set.set;
                if set.index.is_some() {
                    s.rest_mut().v4_index = set.index;
                }
            }
        }
    }
}
