//! One iterative lookup (BEP 5): ask the closest nodes we know about a
//! target, learn closer ones from their answers, and stop when the
//! [`K`] closest nodes seen have all answered (or failed). At most
//! [`ALPHA`] queries are in flight; a node that does not answer in time
//! is asked once more, then given up.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::id::{Distance, NodeId};
use crate::routing::K;

/// Queries in flight per lookup.
pub const ALPHA: usize = 3;
/// Nodes a lookup remembers (the closest ones win).
pub const MAX_NODES: usize = 100;
/// Peers a `get_peers` lookup collects.
pub const MAX_PEERS: usize = 500;
/// Queries a lookup sends at most, whatever happens.
pub const MAX_QUERIES: usize = 200;
/// Times a silent node is asked.
pub const ATTEMPTS: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    FindNode,
    GetPeers,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    New,
    InFlight {
        since: Instant,
    },
    /// Answered; the token from a `get_peers` answer.
    Answered {
        token: Option<Vec<u8>>,
    },
    Failed,
}

#[derive(Debug, Clone)]
struct Cand {
    id: Option<NodeId>,
    addr: SocketAddr,
    step: Step,
    attempts: u8,
}

#[derive(Debug, Clone)]
pub struct Lookup {
    pub target: NodeId,
    pub kind: Kind,
    /// Candidates by distance; bootstrap routers (id unknown) live apart.
    nodes: BTreeMap<Distance, Cand>,
    routers: Vec<Cand>,
    addrs: HashSet<SocketAddr>,
    peers: HashSet<SocketAddr>,
    queries: usize,
    pub started: Instant,
}

/// A query the lookup wants sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub addr: SocketAddr,
    pub id: Option<NodeId>,
}

impl Lookup {
    pub fn new(target: NodeId, kind: Kind, now: Instant) -> Lookup {
        Lookup {
            target,
            kind,
            nodes: BTreeMap::new(),
            routers: Vec::new(),
            addrs: HashSet::new(),
            peers: HashSet::new(),
            queries: 0,
            started: now,
        }
    }

    /// A node to ask (from the routing table or an answer's `nodes`).
    pub fn add(&mut self, id: NodeId, addr: SocketAddr) {
        if addr.port() == 0 || self.addrs.contains(&addr) {
            return;
        }
        // One candidate per IP (libtorrent's restrict_search_ips): one
        // answer cannot fill the lookup with one host's ports. Loopback is
        // this machine, where tests run many nodes on one IP.
        if !addr.ip().is_loopback() && self.addrs.iter().any(|a| a.ip() == addr.ip()) {
            return;
        }
        let d = self.target.distance(&id);
        if self.nodes.contains_key(&d) {
            return;
        }
        if self.nodes.len() >= MAX_NODES {
            // Keep the closest: the farthest candidate not awaiting an
            // answer makes room, if the newcomer beats it.
            let far = self
                .nodes
                .iter()
                .rev()
                .find(|(_, c)| !matches!(c.step, Step::InFlight { .. }))
                .map(|(d, _)| *d);
            match far {
                Some(far) if d < far => {
                    let gone = self.nodes.remove(&far).expect("present");
                    self.addrs.remove(&gone.addr);
                }
                _ => return,
            }
        }
        self.addrs.insert(addr);
        self.nodes.insert(
            d,
            Cand {
                id: Some(id),
                addr,
                step: Step::New,
                attempts: 0,
            },
        );
    }

    /// A bootstrap router: asked, never trusted with an id.
    pub fn add_router(&mut self, addr: SocketAddr) {
        if self.addrs.insert(addr) {
            self.routers.push(Cand {
                id: None,
                addr,
                step: Step::New,
                attempts: 0,
            });
        }
    }

    fn in_flight(&self) -> usize {
        self.nodes
            .values()
            .chain(&self.routers)
            .filter(|c| matches!(c.step, Step::InFlight { .. }))
            .count()
    }

    /// The K closest candidates not failed, in order.
    fn frontier(&self) -> impl Iterator<Item = &Cand> {
        self.nodes
            .values()
            .filter(|c| c.step != Step::Failed)
            .take(K)
    }

    /// Queries to send now; mark them in flight.
    pub fn next(&mut self, now: Instant) -> Vec<Ask> {
        let mut out = Vec::new();
        // Routers are asked at once, besides the ALPHA closest nodes:
        // they only point the way.
        for c in &mut self.routers {
            if self.queries >= MAX_QUERIES {
                break;
            }
            if c.step == Step::New {
                c.step = Step::InFlight { since: now };
                c.attempts += 1;
                self.queries += 1;
                out.push(Ask {
                    addr: c.addr,
                    id: None,
                });
            }
        }
        let routers_in_flight = self
            .routers
            .iter()
            .filter(|c| matches!(c.step, Step::InFlight { .. }))
            .count();
        let mut room = ALPHA.saturating_sub(self.in_flight() - routers_in_flight);
        let mut seen = 0;
        for c in self.nodes.values_mut() {
            if room == 0 || seen >= K || self.queries >= MAX_QUERIES {
                break;
            }
            match c.step {
                Step::Failed => continue,
                Step::New => {
                    c.step = Step::InFlight { since: now };
                    c.attempts += 1;
                    self.queries += 1;
                    room -= 1;
                    out.push(Ask {
                        addr: c.addr,
                        id: c.id,
                    });
                }
                _ => {}
            }
            seen += 1;
        }
        out
    }

    /// An answer from `addr`: the nodes it named become candidates, its
    /// peers are collected. Returns the peers not seen before.
    pub fn answered(
        &mut self,
        addr: SocketAddr,
        id: NodeId,
        nodes: &[(NodeId, SocketAddr)],
        peers: &[SocketAddr],
        token: Option<Vec<u8>>,
    ) -> Vec<SocketAddr> {
        let d = self.target.distance(&id);
        if let Some(c) = self.routers.iter_mut().find(|c| c.addr == addr) {
            // Kept apart, but a router that is a real node (a private
            // network's bootstrap node) may still be announced to.
            c.id = Some(id);
            c.step = Step::Answered { token };
        } else if let Some(c) = self.nodes.values_mut().find(|c| c.addr == addr) {
            if c.id == Some(id) {
                c.step = Step::Answered { token };
            } else {
                // Another id than we were told: it answered as itself.
                c.step = Step::Failed;
                self.nodes.entry(d).or_insert(Cand {
                    id: Some(id),
                    addr,
                    step: Step::Answered { token: None },
                    attempts: 1,
                });
            }
        }
        for &(nid, naddr) in nodes {
            self.add(nid, naddr);
        }
        let mut new = Vec::new();
        for &p in peers {
            if self.peers.len() >= MAX_PEERS {
                break;
            }
            if p.port() != 0 && self.peers.insert(p) {
                new.push(p);
            }
        }
        new
    }

    /// A query to `addr` went unanswered in time (or got an error).
    pub fn failed(&mut self, addr: SocketAddr) {
        for c in self.nodes.values_mut().chain(self.routers.iter_mut()) {
            if c.addr == addr && matches!(c.step, Step::InFlight { .. }) {
                c.step = if c.attempts < ATTEMPTS {
                    Step::New
                } else {
                    Step::Failed
                };
            }
        }
    }

    /// `addr` answered with an error, or could not be asked: not again.
    pub fn give_up(&mut self, addr: SocketAddr) {
        for c in self.nodes.values_mut().chain(self.routers.iter_mut()) {
            if c.addr == addr && !matches!(c.step, Step::Answered { .. }) {
                c.step = Step::Failed;
            }
        }
    }

    /// Queries in flight since before `deadline`, to time out.
    pub fn overdue(&self, deadline: Instant) -> Vec<SocketAddr> {
        self.nodes
            .values()
            .chain(&self.routers)
            .filter(|c| matches!(c.step, Step::InFlight { since } if since <= deadline))
            .map(|c| c.addr)
            .collect()
    }

    /// Done: the K closest live candidates all answered, or nothing is
    /// left to ask.
    pub fn is_done(&self) -> bool {
        if self.in_flight() > 0 {
            return false;
        }
        if self.queries >= MAX_QUERIES {
            return true;
        }
        let routers_pending = self.routers.iter().any(|c| c.step == Step::New);
        !routers_pending
            && self
                .frontier()
                .all(|c| matches!(c.step, Step::Answered { .. }))
    }

    /// The closest nodes that answered with a token, for announce_peer;
    /// routers that gave one fill up to K when the network is that small.
    pub fn announce_targets(&self) -> Vec<(NodeId, SocketAddr, Vec<u8>)> {
        let with_token = |c: &Cand| match (&c.step, c.id) {
            (Step::Answered { token: Some(t) }, Some(id)) => Some((id, c.addr, t.clone())),
            _ => None,
        };
        self.nodes
            .values()
            .filter_map(with_token)
            .chain(self.routers.iter().filter_map(with_token))
            .take(K)
            .collect()
    }

    /// How many nodes answered.
    pub fn answered_count(&self) -> usize {
        self.nodes
            .values()
            .filter(|c| matches!(c.step, Step::Answered { .. }))
            .count()
    }

    pub fn peers_found(&self) -> usize {
        self.peers.len()
    }

    /// The closest nodes that answered.
    pub fn closest_answered(&self, n: usize) -> Vec<(NodeId, SocketAddr)> {
        self.nodes
            .values()
            .filter(|c| matches!(c.step, Step::Answered { .. }))
            .filter_map(|c| Some((c.id?, c.addr)))
            .take(n)
            .collect()
    }
}

/// How long a lookup query may go unanswered.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u32) -> SocketAddr {
        SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 6881))
    }

    #[test]
    fn asks_alpha_at_a_time_and_converges() {
        let now = Instant::now();
        let target = NodeId::random();
        let mut l = Lookup::new(target, Kind::GetPeers, now);
        let ids: Vec<NodeId> = (0..20).map(|_| NodeId::random()).collect();
        for (i, id) in ids.iter().enumerate() {
            l.add(*id, addr(i as u32));
        }
        let first = l.next(now);
        assert_eq!(first.len(), ALPHA);
        assert!(l.next(now).is_empty(), "no more than ALPHA in flight");
        // The first asked are the closest.
        let mut sorted = ids.clone();
        sorted.sort_by_key(|id| target.distance(id));
        assert_eq!(first[0].id, Some(sorted[0]));
        // Everyone answers with nothing new: done after the K closest.
        let mut asked = first;
        let mut rounds = 0;
        while !l.is_done() {
            for a in asked.drain(..) {
                l.answered(a.addr, a.id.unwrap(), &[], &[], Some(b"tok".to_vec()));
            }
            asked = l.next(now);
            rounds += 1;
            assert!(rounds < 20);
        }
        assert_eq!(l.answered_count(), K);
        assert_eq!(l.announce_targets().len(), K);
    }

    #[test]
    fn a_full_lookup_still_takes_closer_nodes() {
        let now = Instant::now();
        let target = NodeId([0; 20]);
        let mut l = Lookup::new(target, Kind::GetPeers, now);
        // A far seed answers with 99 far nodes…
        let far = |i: u32| {
            let mut id = [0xffu8; 20];
            id[16..].copy_from_slice(&i.to_be_bytes());
            NodeId(id)
        };
        l.add(far(0), addr(0));
        let a = l.next(now)[0];
        let nodes: Vec<_> = (1..100).map(|i| (far(i), addr(i))).collect();
        l.answered(a.addr, a.id.unwrap(), &nodes, &[], None);
        for q in l.next(now) {
            l.answered(q.addr, q.id.unwrap(), &[], &[], None);
        }
        // …then one names ten much closer ones: all are taken.
        let near: Vec<_> = (0..10u32)
            .map(|i| {
                let mut id = [0u8; 20];
                id[19] = i as u8 + 1;
                (NodeId(id), addr(1000 + i))
            })
            .collect();
        let q = l.next(now)[0];
        l.answered(q.addr, q.id.unwrap(), &near, &[], None);
        let asked: Vec<_> = l.next(now).iter().map(|a| a.addr).collect();
        assert!(
            asked.iter().all(|a| near.iter().any(|(_, n)| n == a)),
            "{asked:?}"
        );
        assert!(l.nodes.len() <= MAX_NODES);
    }

    #[test]
    fn silent_nodes_are_retried_once_then_skipped() {
        let now = Instant::now();
        let mut l = Lookup::new(NodeId::random(), Kind::FindNode, now);
        l.add(NodeId::random(), addr(1));
        let a = l.next(now);
        assert_eq!(a.len(), 1);
        assert_eq!(l.overdue(now + QUERY_TIMEOUT), vec![addr(1)]);
        l.failed(addr(1));
        assert_eq!(l.next(now).len(), 1, "asked again");
        l.failed(addr(1));
        assert!(l.next(now).is_empty());
        assert!(l.is_done());
    }

    #[test]
    fn bounded_whatever_the_answers_say() {
        let now = Instant::now();
        let mut l = Lookup::new(NodeId::random(), Kind::GetPeers, now);
        l.add(NodeId::random(), addr(0));
        let a = l.next(now)[0];
        let nodes: Vec<(NodeId, SocketAddr)> =
            (1..5000).map(|i| (NodeId::random(), addr(i))).collect();
        let peers: Vec<SocketAddr> = (0..5000).map(|i| addr(100_000 + i)).collect();
        let new = l.answered(a.addr, a.id.unwrap(), &nodes, &peers, None);
        assert_eq!(new.len(), MAX_PEERS);
        assert!(l.nodes.len() <= MAX_NODES);
        // A node that answers under another id is not credited for its slot.
        let asked = l.next(now);
        let b = asked[0];
        l.answered(b.addr, NodeId::random(), &[], &[], Some(b"t".to_vec()));
        for q in &asked[1..] {
            l.failed(q.addr);
        }
        assert!(l
            .announce_targets()
            .iter()
            .all(|(_, addr, _)| *addr != b.addr));
        // The query cap ends even an endless stream of new nodes.
        let mut i = 10_000;
        while !l.is_done() {
            for q in l.next(now) {
                i += 1;
                l.answered(
                    q.addr,
                    q.id.unwrap(),
                    &[(NodeId::random(), addr(i))],
                    &[],
                    None,
                );
            }
        }
        assert!(l.queries <= MAX_QUERIES);
    }
}
