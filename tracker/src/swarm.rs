//! One swarm's peers and the announce logic over it — pure: no sockets, no
//! clocks (`now` is passed in, in seconds), randomness from a caller's RNG.
//!
//! Memory per peer is small: an IPv4 peer is 12 bytes in its list (address,
//! port, last-seen second) plus, in swarms of more than [`INDEX_AT`], 8–32
//! bytes of hash index (a `u32` per bucket, at most half full); the peer id is not
//! stored (dictionary-form replies omit it, as `no_peer_id` does). IPv4 and
//! IPv6 peers live apart, seeders apart from leechers, so counts are list
//! lengths and a seeder's sample never has to skip seeders.

use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rand::Rng;

use crate::request::Event;

/// An address family's raw address.
pub trait Addr: Copy + Eq + Hash + std::fmt::Debug {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer<A> {
    pub addr: A,
    pub port: u16,
    /// Seconds on the tracker's clock.
    pub last_seen: u32,
}

const SEEDER_BIT: u32 = 1 << 31;

/// Longest run of neighbouring peers in one sample (see [`PeerSet::sample`]).
pub const RUN: usize = 16;

/// Most runs in one sample (so at most this many cache misses for it).
const MAX_RUNS: usize = 16;
/// A run is at most two slices (it can wrap round within its segment), and
/// one run can also cross from the seeders into the leechers.
const MAX_PARTS: usize = 2 * MAX_RUNS + 1;

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

/// The peers of one address family: seeders and leechers in two vectors
/// (random access for sampling, swap-remove for O(1) deletion) and an index
/// from (address, port) to position.
#[derive(Debug, Default)]
pub struct PeerSet<A: Addr> {
    seeders: Vec<Peer<A>>,
    leechers: Vec<Peer<A>>,
    /// (address, port) → slot, only for sets bigger than [`INDEX_AT`]:
    /// small sets (most swarms) are scanned instead, which saves a hash
    /// table per swarm.
    index: Option<Index>,
}

/// Sets with more peers than this keep a hash index.
pub const INDEX_AT: usize = 32;

/// Most peers in one swarm: a position in a list must fit in an index
/// entry's [`POS_BITS`] (with room for [`EMPTY`] and [`DELETED`]).
pub const MAX_SWARM_PEERS: usize = (1 << POS_BITS) - 3;

fn slot(seeder: bool, pos: usize) -> u32 {
    pos as u32 | if seeder { SEEDER_BIT } else { 0 }
}

const POS_BITS: u32 = 24;
/// A slot: the seeder bit and the position.
const SLOT_MASK: u32 = SEEDER_BIT | ((1 << POS_BITS) - 1);
/// 7 bits of the key's hash, in the bits between.
const TAG_MASK: u32 = !SLOT_MASK;
const EMPTY: u32 = u32::MAX;
const DELETED: u32 = u32::MAX - 1;

fn tag(hash: u64) -> u32 {
    ((hash >> 57) as u32) << POS_BITS
}

/// An open-addressing index: each entry a `u32` holding the peer's slot
/// and 7 bits of its key's hash, so a probe reads a peer (the key is not
/// stored) only when those bits match. Linear probing, at most half
/// used, tombstones for removals; rebuilt from the lists when it fills
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

    /// The bucket of the entry for the key hashed to `hash`, whose slot
    /// `is_key` accepts.
    fn lookup(&self, hash: u64, is_key: impl Fn(u32) -> bool) -> Option<usize> {
        let mask = self.buckets() - 1;
        let tag = tag(hash);
        let mut i = hash as usize & mask;
        loop {
            let e = self.table[HEADER + i];
            if e == EMPTY {
                return None;
            }
            if e != DELETED && e & TAG_MASK == tag && is_key(e & SLOT_MASK) {
                return Some(i);
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds a key known to be absent; false when the index is full (half
    /// its buckets used or tombstoned): the caller rebuilds it instead.
    fn insert(&mut self, hash: u64, slot: u32) -> bool {
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
        self.table[HEADER + i] = tag(hash) | slot;
        self.table[LIVE] += 1;
        true
    }

    fn set_slot(&mut self, at: usize, slot: u32) {
        let e = &mut self.table[HEADER + at];
        *e = (*e & TAG_MASK) | slot;
    }

    fn remove(&mut self, at: usize) {
        self.table[HEADER + at] = DELETED;
        self.table[LIVE] -= 1;
        self.table[DELETED_COUNT] += 1;
    }
}

impl<A: Addr> PeerSet<A> {
    pub fn seeders(&self) -> usize {
        self.seeders.len()
    }
    pub fn leechers(&self) -> usize {
        self.leechers.len()
    }
    pub fn len(&self) -> usize {
        self.seeders.len() + self.leechers.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn list(&mut self, seeder: bool) -> &mut Vec<Peer<A>> {
        if seeder {
            &mut self.seeders
        } else {
            &mut self.leechers
        }
    }

    fn at_slot(&self, slot: u32) -> &Peer<A> {
        let pos = (slot & !SEEDER_BIT) as usize;
        if slot & SEEDER_BIT != 0 {
            &self.seeders[pos]
        } else {
            &self.leechers[pos]
        }
    }

    /// Where the index holds the entry for a key.
    fn index_entry(&self, index: &Index, addr: A, port: u16) -> Option<usize> {
        self.index_entry_hashed(index, index.hash(addr, port), addr, port)
    }

    fn index_entry_hashed(&self, index: &Index, hash: u64, addr: A, port: u16) -> Option<usize> {
        index.lookup(hash, |slot| {
            let p = self.at_slot(slot);
            p.addr == addr && p.port == port
        })
    }

    /// Where a peer is: its slot (seeder bit + position).
    fn find(&self, addr: A, port: u16) -> Option<u32> {
        let hash = self.index.as_ref().map(|index| index.hash(addr, port));
        self.find_hashed(hash, addr, port)
    }

    /// Starts loading what finding a peer will read; returns the key's
    /// hash for [`PeerSet::find_hashed`] (`None` without an index).
    fn prefetch_find(&self, addr: A, port: u16) -> Option<u64> {
        let index = self.index.as_ref()?;
        let hash = index.hash(addr, port);
        prefetch(index.first_bucket(hash));
        Some(hash)
    }

    /// [`PeerSet::find`] with the key's hash (if there is an index).
    fn find_hashed(&self, hash: Option<u64>, addr: A, port: u16) -> Option<u32> {
        if let (Some(index), Some(hash)) = (&self.index, hash) {
            return self
                .index_entry_hashed(index, hash, addr, port)
                .map(|at| index.table[HEADER + at] & SLOT_MASK);
        }
        let here = |p: &Peer<A>| p.addr == addr && p.port == port;
        if let Some(pos) = self.seeders.iter().position(here) {
            return Some(slot(true, pos));
        }
        self.leechers
            .iter()
            .position(here)
            .map(|pos| slot(false, pos))
    }

    /// A new index of `buckets` buckets (and a new seed) over the lists.
    fn build_index(&mut self, buckets: usize) {
        #[cfg(test)]
        tests::REBUILDS.with(|n| n.set(n.get() + 1));
        let mut index = Index::new(buckets);
        for (seeder, list) in [(true, &self.seeders), (false, &self.leechers)] {
            for (pos, p) in list.iter().enumerate() {
                let inserted = index.insert(index.hash(p.addr, p.port), slot(seeder, pos));
                debug_assert!(inserted);
            }
        }
        self.index = Some(index);
    }

    /// Inserts or refreshes a peer; returns whether it was a seeder before
    /// (`None` if it is new).
    pub fn upsert(&mut self, peer: Peer<A>, seeder: bool) -> Option<bool> {
        self.upsert_at(self.find(peer.addr, peer.port), peer, seeder)
    }

    /// [`PeerSet::upsert`] with the peer's slot already looked up.
    fn upsert_at(&mut self, found: Option<u32>, peer: Peer<A>, seeder: bool) -> Option<bool> {
        match found {
            Some(found) => {
                let was_seeder = found & SEEDER_BIT != 0;
                let pos = (found & !SEEDER_BIT) as usize;
                if was_seeder == seeder {
                    self.list(seeder)[pos] = peer;
                } else {
                    self.remove_at(was_seeder, pos);
                    self.push(peer, seeder);
                }
                Some(was_seeder)
            }
            None => {
                self.push(peer, seeder);
                None
            }
        }
    }

    fn push(&mut self, peer: Peer<A>, seeder: bool) {
        let list = self.list(seeder);
        // The store refuses new peers to a swarm this big: a position must
        // fit an index entry.
        debug_assert!(list.len() < MAX_SWARM_PEERS);
        let at = slot(seeder, list.len());
        list.push(peer);
        let len = self.len();
        let rebuild = match &mut self.index {
            Some(index) => {
                let hash = index.hash(peer.addr, peer.port);
                // Full: of tombstones (clear them), or of peers (grow).
                (!index.insert(hash, at)).then(|| {
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
            self.build_index(buckets);
        }
    }

    /// Removes the peer at `pos`, moving the last one into its place.
    /// Gives memory back once a list has shrunk to a quarter of its
    /// capacity, and drops the index when the set is small again.
    fn remove_at(&mut self, seeder: bool, pos: usize) -> Peer<A> {
        // The index is updated first: its lookups read the lists.
        if let Some(mut index) = self.index.take() {
            let gone = self.list(seeder)[pos];
            let last = self.list(seeder).len() - 1;
            if let Some(at) = self.index_entry(&index, gone.addr, gone.port) {
                index.remove(at);
            }
            if pos != last {
                let moved = self.list(seeder)[last];
                if let Some(at) = self.index_entry(&index, moved.addr, moved.port) {
                    index.set_slot(at, slot(seeder, pos));
                }
            }
            self.index = Some(index);
        }
        let list = self.list(seeder);
        let gone = list.swap_remove(pos);
        if list.capacity() > 16 && list.len() < list.capacity() / 4 {
            list.shrink_to(list.capacity() / 2);
        }
        let len = self.len();
        if len <= INDEX_AT / 2 {
            self.index = None;
        } else if let Some(index) = &self.index {
            // Far too big for what is left: half the size, still at most a
            // quarter used.
            let buckets = index.buckets();
            if buckets > 64 && 8 * len < buckets {
                self.build_index(buckets / 2);
            }
        }
        gone
    }

    pub fn contains(&self, addr: A, port: u16) -> bool {
        self.find(addr, port).is_some()
    }

    /// Removes a peer; returns whether it was a seeder (`None` if unknown).
    pub fn remove(&mut self, addr: A, port: u16) -> Option<bool> {
        let found = self.find(addr, port)?;
        let seeder = found & SEEDER_BIT != 0;
        self.remove_at(seeder, (found & !SEEDER_BIT) as usize);
        Some(seeder)
    }

    /// Where a sample of up to `want` peers other than the announcer comes
    /// from (leechers only if `leechers_only`): a few runs of neighbours,
    /// as slices of the lists. Random single peers from a big swarm cost a
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
        let seeders: &[Peer<A>] = if leechers_only { &[] } else { &self.seeders };
        let leechers: &[Peer<A>] = &self.leechers;
        let n = seeders.len() + leechers.len();
        let mut runs = Runs {
            parts: [&[]; MAX_PARTS],
            len: 0,
        };
        if n == 0 || want == 0 {
            return runs;
        }
        // Positions `from..to` of the view [seeders.., leechers..], as at
        // most two slices.
        let mut add = |from: usize, to: usize| {
            let s = seeders.len();
            if from < s {
                runs.push(&seeders[from..to.min(s)]);
            }
            if to > s {
                runs.push(&leechers[from.max(s) - s..to - s]);
            }
        };
        let k = want + 1;
        if n <= k {
            add(0, n);
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
            add(base + offset, base + offset + first);
            if first < run {
                add(base, base + run - first);
            }
        }
        for part in &runs.parts[..runs.len] {
            prefetch(part);
        }
        runs
    }

    /// Drops peers last seen before `cutoff`; returns (seeders, leechers) removed.
    pub fn expire(&mut self, cutoff: u32) -> (usize, usize) {
        let mut removed = (0, 0);
        for seeder in [true, false] {
            let mut i = 0;
            while i < self.list(seeder).len() {
                if self.list(seeder)[i].last_seen < cutoff {
                    self.remove_at(seeder, i);
                    if seeder {
                        removed.0 += 1;
                    } else {
                        removed.1 += 1;
                    }
                } else {
                    i += 1;
                }
            }
        }
        removed
    }

    /// Bytes this set holds on the heap (capacity, not length).
    pub fn heap_bytes(&self) -> usize {
        (self.seeders.capacity() + self.leechers.capacity()) * std::mem::size_of::<Peer<A>>()
            + self
                .index
                .as_ref()
                .map_or(0, |i| std::mem::size_of_val(&*i.table))
    }
}

/// One torrent's swarm.
#[derive(Debug, Default)]
pub struct Swarm {
    pub v4: PeerSet<[u8; 4]>,
    /// Boxed: most swarms have no IPv6 peer, and this keeps them small.
    pub v6: Option<Box<PeerSet<[u8; 16]>>>,
    /// `completed` events seen.
    pub downloaded: u64,
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
    pub fn complete(&self) -> usize {
        self.v4.seeders() + self.v6.as_ref().map_or(0, |v6| v6.seeders())
    }
    pub fn incomplete(&self) -> usize {
        self.v4.leechers() + self.v6.as_ref().map_or(0, |v6| v6.leechers())
    }
    pub fn peer_count(&self) -> usize {
        self.complete() + self.incomplete()
    }
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.as_ref().map_or(true, |v6| v6.is_empty())
    }

    /// Is this announcer already in the swarm?
    pub fn contains(&self, ip: IpAddr, port: u16) -> bool {
        match canonical_ip(ip) {
            IpAddr::V4(v4) => self.v4.contains(v4.octets(), port),
            IpAddr::V6(ip) => self
                .v6
                .as_ref()
                .is_some_and(|v6| v6.contains(ip.octets(), port)),
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
        match canonical_ip(who.ip) {
            IpAddr::V4(ip) => {
                self.announce_in(ip.octets(), who, now, numwant, compact, rng, &mut peers)
            }
            IpAddr::V6(ip) => {
                peers.v6 = true;
                self.announce_in(ip.octets(), who, now, numwant, compact, rng, &mut peers)
            }
        }
        AnnounceOutcome {
            complete: self.complete(),
            incomplete: self.incomplete(),
            peers,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn announce_in<A: Addr, R: Rng>(
        &mut self,
        addr: A,
        who: Announcer,
        now: u32,
        numwant: usize,
        compact: bool,
        rng: &mut R,
        out: &mut Sample,
    ) where
        Self: SetFor<A>,
    {
        let set = self.set_mut();
        if who.event == Event::Stopped {
            let before = set.remove(addr, who.port);
            if completed(who, before) {
                self.downloaded += 1;
            }
            self.drop_empty_v6();
            return;
        }
        // The sample is taken before the announcer is recorded (the other
        // peers are the same either way), so that its runs' cache misses
        // and the index's are all under way before any is waited for.
        let hash = set.prefetch_find(addr, who.port);
        // A seed needs only leechers — except on its `started` announce:
        // aria2 announces a magnet whose metadata it still lacks with
        // left=0, and would otherwise never hear of a seed (opentracker
        // gives seeds to seeds too).
        let leechers_only = who.seeder && who.event != Event::Started;
        let runs = set.sample_runs(numwant, leechers_only, rng);
        let found = set.find_hashed(hash, addr, who.port);
        let me = (addr, who.port);
        let others = runs.peers().filter(|p| (p.addr, p.port) != me);
        if compact {
            // Exactly this many: the runs hold `numwant + 1` or everyone.
            let pool = if leechers_only {
                set.leechers()
            } else {
                set.len()
            };
            let me_in_pool = found.is_some_and(|slot| !leechers_only || slot & SEEDER_BIT == 0);
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
            last_seen: now,
        };
        let before = set.upsert_at(found, peer, who.seeder);
        if completed(who, before) {
            self.downloaded += 1;
        }
    }

    /// Drops peers last seen before `cutoff`; returns (seeders, leechers) removed.
    pub fn expire(&mut self, cutoff: u32) -> (usize, usize) {
        let a = self.v4.expire(cutoff);
        let b = self.v6.as_mut().map_or((0, 0), |v6| v6.expire(cutoff));
        self.drop_empty_v6();
        (a.0 + b.0, a.1 + b.1)
    }

    fn drop_empty_v6(&mut self) {
        if self.v6.as_ref().is_some_and(|v6| v6.is_empty()) {
            self.v6 = None;
        }
    }

    pub fn heap_bytes(&self) -> usize {
        self.v4.heap_bytes()
            + self.v6.as_ref().map_or(0, |v6| {
                std::mem::size_of::<PeerSet<[u8; 16]>>() + v6.heap_bytes()
            })
    }
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

/// Picks the peer set of an address family.
pub trait SetFor<A: Addr> {
    fn set_mut(&mut self) -> &mut PeerSet<A>;
}
impl SetFor<[u8; 4]> for Swarm {
    fn set_mut(&mut self) -> &mut PeerSet<[u8; 4]> {
        &mut self.v4
    }
}
impl SetFor<[u8; 16]> for Swarm {
    fn set_mut(&mut self) -> &mut PeerSet<[u8; 16]> {
        self.v6.get_or_insert_with(Default::default)
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
        assert_eq!(s.downloaded, 1);
        assert_eq!((s.complete(), s.incomplete()), (1, 0));
        s.announce(
            who("10.0.0.2", 2, false, Event::Started),
            100,
            50,
            true,
            &mut rng,
        );
        assert_eq!(s.expire(50), (1, 0));
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
        assert_eq!(s.downloaded, 1);
    }

    /// A big set through growth, mass removal (tombstones, a shrinking
    /// index), re-growth and seeder/leecher switches: every peer is found
    /// where it is, and nobody else is found.
    #[test]
    fn the_index_follows_a_big_set_up_and_down() {
        let mut set = PeerSet::<[u8; 4]>::default();
        let peer = |port: u16| Peer {
            addr: [10, 0, (port >> 8) as u8, 1],
            port,
            last_seen: u32::from(port),
        };
        let check = |set: &PeerSet<[u8; 4]>, present: &dyn Fn(u16) -> bool| {
            for port in 1..=6000u16 {
                let p = peer(port);
                let found = set.find(p.addr, p.port);
                assert_eq!(found.is_some(), present(port), "port {port}");
                if let Some(slot) = found {
                    assert_eq!(*set.at_slot(slot), p);
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
        assert_eq!(set.seeders(), 1000);
        assert_eq!(set.leechers(), 500);
        check(&set, &|port| port > 5000 || port % 10 == 0);
        // Expiry down to nothing but a few: the index goes away.
        set.expire(5995);
        assert_eq!(set.len(), 6);
        assert!(set.index.is_none());
        check(&set, &|port| port >= 5995);
    }

    /// A swarm that holds steady at any size while peers come and go
    /// rebuilds its index rarely, whatever size it holds at (a rebuild
    /// costs O(peers)).
    #[test]
    fn churn_at_a_steady_size_rebuilds_rarely() {
        for size in [33, 62, 63, 64, 126, 127, 510, 511, 4094, 4095] {
            let mut set = PeerSet::<[u8; 4]>::default();
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

        /// Whatever happens, counts equal list lengths and the index agrees.
        #[test]
        fn index_stays_consistent(ops in proptest::collection::vec((0u8..4, 1u16..120, any::<bool>(), 0u32..100), 0..300)) {
            let mut rng = SmallRng::seed_from_u64(5);
            let mut s = Swarm::default();
            let mut model: HashMap<u16, (bool, u32)> = HashMap::new();
            for (op, port, seeder, t) in ops {
                match op {
                    0 | 1 => {
                        s.announce(who("10.0.0.1", port, seeder, Event::None), t, 5, true, &mut rng);
                        model.insert(port, (seeder, t));
                    }
                    2 => {
                        s.announce(who("10.0.0.1", port, seeder, Event::Stopped), t, 5, true, &mut rng);
                        model.remove(&port);
                    }
                    _ => {
                        s.expire(t);
                        model.retain(|_, (_, seen)| *seen >= t);
                    }
                }
                let seeders = model.values().filter(|(sd, _)| *sd).count();
                prop_assert_eq!(s.complete(), seeders);
                prop_assert_eq!(s.incomplete(), model.len() - seeders);
                for port in 1..120 {
                    prop_assert_eq!(s.v4.contains([10, 0, 0, 1], port), model.contains_key(&port));
                }
                if let Some(index) = &s.v4.index {
                    // The counts agree with the buckets and the lists.
                    let buckets = &index.table[HEADER..];
                    let deleted = buckets.iter().filter(|&&e| e == DELETED).count();
                    let live = buckets.iter().filter(|&&e| e != DELETED && e != EMPTY).count();
                    prop_assert_eq!((index.live(), index.deleted()), (live, deleted));
                    prop_assert_eq!(live, s.v4.len());
                    prop_assert!(2 * (live + deleted) <= index.buckets());
                }
                for (port, (seeder, _)) in &model {
                    let slot = s.v4.find([10, 0, 0, 1], *port).unwrap();
                    prop_assert_eq!(slot & SEEDER_BIT != 0, *seeder);
                    let list = if *seeder { &s.v4.seeders } else { &s.v4.leechers };
                    prop_assert_eq!(list[(slot & !SEEDER_BIT) as usize].port, *port);
                }
            }
        }
    }
}
