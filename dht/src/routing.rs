//! The routing table (BEP 5): buckets of at most [`K`] nodes by shared
//! prefix length with our own id; only the bucket that holds our id
//! splits, so the table knows the space near us finely and the rest
//! coarsely (at most 160 buckets).
//!
//! A node enters when it answers us (confirmed) or queries us (while there
//! is room). A full bucket keeps its nodes and remembers newcomers in a
//! small replacement list; a node that fails [`MAX_FAILS`] queries in a
//! row is bad and the best replacement takes its place. Nodes are good
//! while they answered within [`GOOD_FOR`] (15 minutes), questionable
//! after that.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::id::NodeId;

/// Nodes per bucket (BEP 5's K).
pub const K: usize = 8;
/// Replacement candidates kept per full bucket.
pub const REPLACEMENTS: usize = 8;
/// A node that answered within this is good (BEP 5).
pub const GOOD_FOR: Duration = Duration::from_secs(15 * 60);
/// Failed queries in a row that make a node bad.
pub const MAX_FAILS: u8 = 2;
/// A bucket untouched this long gets a refresh lookup (BEP 5).
pub const REFRESH_AFTER: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: NodeId,
    pub addr: SocketAddr,
    /// When it last answered one of our queries (None: never yet).
    pub last_answer: Option<Instant>,
    /// When it last sent us anything.
    pub last_seen: Instant,
    pub fails: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Good,
    Questionable,
    Bad,
}

impl Entry {
    pub fn state(&self, now: Instant) -> State {
        if self.fails >= MAX_FAILS {
            State::Bad
        } else if self
            .last_answer
            .is_some_and(|t| now.saturating_duration_since(t) < GOOD_FOR)
        {
            State::Good
        } else {
            State::Questionable
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Bucket {
    nodes: Vec<Entry>,
    replacements: Vec<Entry>,
    /// Last time a node in it answered, joined or was looked up.
    changed: Option<Instant>,
}

/// What [`Table::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// It is in the table now (or was, and was refreshed).
    Yes,
    /// Its bucket is full of live nodes: remembered as a replacement.
    Replacement,
    /// Refused: our own id, an address already used by another id, or
    /// (when unconfirmed) no room.
    No,
}

#[derive(Debug, Clone)]
pub struct Table {
    own: NodeId,
    buckets: Vec<Bucket>,
}

/// Loopback nodes are processes on this machine: several may share an IP.
fn same_host_rule_applies(ip: IpAddr) -> bool {
    !ip.is_loopback()
}

impl Table {
    pub fn new(own: NodeId) -> Table {
        Table {
            own,
            buckets: vec![Bucket::default()],
        }
    }

    pub fn own_id(&self) -> NodeId {
        self.own
    }

    fn index(&self, id: &NodeId) -> usize {
        self.own.common_prefix(id).min(self.buckets.len() - 1)
    }

    pub fn len(&self) -> usize {
        self.buckets.iter().map(|b| b.nodes.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    pub fn get(&self, id: &NodeId) -> Option<&Entry> {
        self.buckets[self.index(id)]
            .nodes
            .iter()
            .find(|e| e.id == *id)
    }

    /// Every node, bucket by bucket.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.buckets.iter().flat_map(|b| b.nodes.iter())
    }

    /// A node we heard from: `answered` when it answered our query (a
    /// confirmed node), else it queried us.
    pub fn insert(
        &mut self,
        id: NodeId,
        addr: SocketAddr,
        answered: bool,
        now: Instant,
    ) -> Inserted {
        if id == self.own || addr.port() == 0 {
            return Inserted::No;
        }
        // One node per address, and one per IP off loopback: a host
        // cannot fill our table with ids of its choosing.
        let clash = self.entries().any(|e| {
            e.id != id
                && (e.addr == addr
                    || (same_host_rule_applies(addr.ip()) && e.addr.ip() == addr.ip()))
        });
        if clash {
            return Inserted::No;
        }
        loop {
            let i = self.index(&id);
            let last = i == self.buckets.len() - 1;
            let b = &mut self.buckets[i];
            if let Some(e) = b.nodes.iter_mut().find(|e| e.id == id) {
                if e.addr != addr {
                    // Someone else claims a known id: keep the one we know.
                    return Inserted::No;
                }
                e.last_seen = now;
                if answered {
                    e.last_answer = Some(now);
                    e.fails = 0;
                    b.changed = Some(now);
                }
                return Inserted::Yes;
            }
            let entry = Entry {
                id,
                addr,
                last_answer: answered.then_some(now),
                last_seen: now,
                fails: 0,
            };
            if b.nodes.len() < K {
                b.replacements.retain(|e| e.id != id);
                b.nodes.push(entry);
                b.changed = Some(now);
                return Inserted::Yes;
            }
            // A bad node, or (for one that answered us) one that never
            // did, makes way.
            let weak = b
                .nodes
                .iter()
                .position(|e| e.state(now) == State::Bad)
                .or_else(|| {
                    answered
                        .then(|| b.nodes.iter().position(|e| e.last_answer.is_none()))
                        .flatten()
                });
            if let Some(weak) = weak {
                b.replacements.retain(|e| e.id != id);
                b.nodes[weak] = entry;
                b.changed = Some(now);
                return Inserted::Yes;
            }
            if last && self.buckets.len() < 160 {
                self.split();
                continue;
            }
            if !answered {
                return Inserted::No;
            }
            let b = &mut self.buckets[i];
            b.replacements.retain(|e| e.id != id && e.addr != addr);
            if b.replacements.len() >= REPLACEMENTS {
                b.replacements.remove(0);
            }
            b.replacements.push(entry);
            return Inserted::Replacement;
        }
    }

    /// Splits the last bucket (the one holding our id) in two.
    fn split(&mut self) {
        let at = self.buckets.len() - 1;
        let old = std::mem::take(&mut self.buckets[at]);
        self.buckets.push(Bucket::default());
        for (list, is_node) in [(old.nodes, true), (old.replacements, false)] {
            for e in list {
                let to = self.own.common_prefix(&e.id).min(at + 1);
                let b = &mut self.buckets[to];
                if is_node {
                    b.nodes.push(e);
                } else if b.replacements.len() < REPLACEMENTS {
                    b.replacements.push(e);
                }
            }
        }
        for b in &mut self.buckets[at..] {
            b.changed = old.changed;
        }
    }

    /// A query to `id` at `addr` went unanswered. A node that becomes bad
    /// gives its place to its bucket's freshest replacement.
    pub fn failed(&mut self, id: &NodeId, addr: SocketAddr, now: Instant) {
        let i = self.index(id);
        let b = &mut self.buckets[i];
        let Some(pos) = b.nodes.iter().position(|e| e.id == *id && e.addr == addr) else {
            b.replacements.retain(|e| e.id != *id);
            return;
        };
        b.nodes[pos].fails = b.nodes[pos].fails.saturating_add(1);
        if b.nodes[pos].state(now) == State::Bad {
            while let Some(r) = b.replacements.pop() {
                // Still unique in the table by id, address and IP.
                let clash = b.nodes.iter().any(|e| {
                    e.id == r.id
                        || e.addr == r.addr
                        || (same_host_rule_applies(r.addr.ip()) && e.addr.ip() == r.addr.ip())
                });
                if !clash {
                    b.nodes[pos] = r;
                    break;
                }
            }
        }
    }

    /// Up to `n` nodes closest to `target` that are not bad.
    pub fn closest(&self, target: &NodeId, n: usize, now: Instant) -> Vec<(NodeId, SocketAddr)> {
        let mut all: Vec<&Entry> = self
            .entries()
            .filter(|e| e.state(now) != State::Bad)
            .collect();
        all.sort_unstable_by_key(|e| target.distance(&e.id));
        all.into_iter().take(n).map(|e| (e.id, e.addr)).collect()
    }

    /// Like [`Table::closest`], only nodes that ever answered us.
    pub fn closest_confirmed(
        &self,
        target: &NodeId,
        n: usize,
        now: Instant,
    ) -> Vec<(NodeId, SocketAddr)> {
        let mut all: Vec<&Entry> = self
            .entries()
            .filter(|e| e.last_answer.is_some() && e.state(now) != State::Bad)
            .collect();
        all.sort_unstable_by_key(|e| target.distance(&e.id));
        all.into_iter().take(n).map(|e| (e.id, e.addr)).collect()
    }

    /// The questionable node seen longest ago, to ping (BEP 5: nodes are
    /// checked before they are replaced).
    pub fn stalest_questionable(&self, now: Instant) -> Option<(NodeId, SocketAddr)> {
        self.entries()
            .filter(|e| e.state(now) == State::Questionable)
            .min_by_key(|e| e.last_seen)
            .map(|e| (e.id, e.addr))
    }

    /// A random target in each bucket untouched for [`REFRESH_AFTER`]
    /// (marked refreshed now), at most `max`.
    pub fn refresh_targets(&mut self, now: Instant, max: usize) -> Vec<NodeId> {
        let mut out = Vec::new();
        for i in 0..self.buckets.len() {
            if out.len() >= max {
                break;
            }
            let b = &mut self.buckets[i];
            let stale = b
                .changed
                .map_or(true, |t| now.saturating_duration_since(t) >= REFRESH_AFTER);
            if stale {
                b.changed = Some(now);
                out.push(self.own.random_in_bucket(i));
            }
        }
        out
    }

    /// Every bucket is due for a refresh (Kademlia's join: after the
    /// lookup of our own id, the rest of the table is filled). Buckets
    /// split off later inherit the mark.
    pub fn refresh_all(&mut self) {
        for b in &mut self.buckets {
            b.changed = None;
        }
    }

    /// Marks the bucket of `target` as just looked up.
    pub fn touched(&mut self, target: &NodeId, now: Instant) {
        let i = self.index(target);
        self.buckets[i].changed = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u32) -> SocketAddr {
        SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 6881))
    }

    #[test]
    fn the_own_bucket_splits_and_far_buckets_stay_at_k() {
        let now = Instant::now();
        let own = NodeId::random();
        let mut t = Table::new(own);
        // 1000 random nodes: about half fall in bucket 0, a quarter in 1…
        let mut n = 0;
        for i in 0..1000 {
            if t.insert(NodeId::random(), addr(i), true, now) == Inserted::Yes {
                n += 1;
            }
        }
        assert_eq!(t.len(), n);
        for b in &t.buckets {
            assert!(b.nodes.len() <= K);
            assert!(b.replacements.len() <= REPLACEMENTS);
        }
        // Far buckets are full; the table split several times.
        assert!(t.bucket_count() >= 6, "{} buckets", t.bucket_count());
        assert_eq!(t.buckets[0].nodes.len(), K);
        // Every node sits in the bucket its prefix says.
        for (i, b) in t.buckets.iter().enumerate() {
            for e in &b.nodes {
                assert_eq!(own.common_prefix(&e.id).min(t.bucket_count() - 1), i);
            }
        }
        // Nodes close to us are all kept: K in every bucket near our id.
        for bit in 100..104 {
            let id = own.random_in_bucket(bit);
            assert_eq!(
                t.insert(id, addr(5000 + bit as u32), true, now),
                Inserted::Yes
            );
        }
        let closest = t.closest(&own, K, now);
        assert_eq!(closest.len(), K);
        assert!(closest
            .iter()
            .take(4)
            .all(|(id, _)| own.common_prefix(id) >= 100));
    }

    #[test]
    fn bad_nodes_make_way_and_addresses_are_not_shared() {
        let now = Instant::now();
        let own = NodeId([0; 20]);
        let mut t = Table::new(own);
        // Fill bucket 0 (first bit 1) after a split makes it a far bucket.
        t.insert(own.random_in_bucket(5), addr(999), true, now);
        let far: Vec<NodeId> = (0..K + 3).map(|_| own.random_in_bucket(0)).collect();
        for (i, id) in far.iter().enumerate() {
            t.insert(*id, addr(i as u32), true, now);
        }
        assert_eq!(t.buckets[0].nodes.len(), K);
        assert_eq!(t.buckets[0].replacements.len(), 3);
        // Unconfirmed newcomers to a full bucket are not remembered.
        assert_eq!(
            t.insert(own.random_in_bucket(0), addr(50), false, now),
            Inserted::No
        );
        // A node failing twice is replaced by a replacement.
        t.failed(&far[0], addr(0), now);
        assert!(t.get(&far[0]).is_some());
        t.failed(&far[0], addr(0), now);
        assert!(t.get(&far[0]).is_none());
        assert!(t.get(&far[K + 2]).is_some());
        // Another id at a known address, or at a known IP: refused.
        let ip_clash = SocketAddr::new(addr(1).ip(), 7000);
        assert_eq!(t.insert(NodeId::random(), addr(1), true, now), Inserted::No);
        assert_eq!(
            t.insert(NodeId::random(), ip_clash, true, now),
            Inserted::No
        );
        // A known id from a new address does not move it.
        assert_eq!(t.insert(far[1], addr(77), true, now), Inserted::No);
        assert_eq!(t.get(&far[1]).unwrap().addr, addr(1));
        // Our own id never enters.
        assert_eq!(t.insert(own, addr(78), true, now), Inserted::No);
        // On loopback several nodes share an IP.
        let lo = |p| SocketAddr::from(([127, 0, 0, 1], p));
        assert_eq!(
            t.insert(own.random_in_bucket(9), lo(1), true, now),
            Inserted::Yes
        );
        assert_eq!(
            t.insert(own.random_in_bucket(10), lo(2), true, now),
            Inserted::Yes
        );
    }

    #[test]
    fn states_age_and_buckets_ask_for_refresh() {
        let t0 = Instant::now();
        let own = NodeId::random();
        let mut t = Table::new(own);
        let id = NodeId::random();
        t.insert(id, addr(1), true, t0);
        assert_eq!(t.get(&id).unwrap().state(t0), State::Good);
        let later = t0 + GOOD_FOR;
        assert_eq!(t.get(&id).unwrap().state(later), State::Questionable);
        assert_eq!(t.stalest_questionable(later), Some((id, addr(1))));
        // Queried by it: still questionable until it answers again.
        t.insert(id, addr(1), false, later);
        assert_eq!(t.get(&id).unwrap().state(later), State::Questionable);
        t.insert(id, addr(1), true, later);
        assert_eq!(t.get(&id).unwrap().state(later), State::Good);
        // It answered at `later`: its bucket is fresh until then + 15 min.
        assert!(t.refresh_targets(later, 160).is_empty());
        let stale = later + REFRESH_AFTER;
        let targets = t.refresh_targets(stale, 160);
        assert_eq!(targets.len(), t.bucket_count());
        assert!(t.refresh_targets(stale, 160).is_empty());
    }
}
