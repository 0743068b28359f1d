//! The DHT node: routing table, lookups, tokens and the peer store behind
//! one sans-IO interface.
//!
//! Feed it every datagram that arrives ([`Node::handle`]) and call
//! [`Node::tick`] by [`Node::next_timeout`]; after each call, send what
//! [`Node::poll_transmit`] gives and act on [`Node::poll_event`]. Time is
//! always passed in, so tests run a whole network in memory with a
//! simulated clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use torrent_format::bencode::{self, Value};

use crate::id::{self, NodeId};
use crate::krpc::{self, Body, KrpcError, Msg, Query, Response, Want};
use crate::lookup::{Kind, Lookup, QUERY_TIMEOUT};
use crate::routing::{Inserted, Table, K};
use crate::store::{PeerStore, RateLimiter, Tokens};

/// Whether a node at `from` may name `addr` to us: loopback addresses
/// only from loopback, private ones only from loopback or private.
fn reachable_from(addr: std::net::IpAddr, from: std::net::IpAddr) -> bool {
    // A v4-mapped address reaches the IPv4 host (dual-stack sockets).
    let (addr, from) = (addr.to_canonical(), from.to_canonical());
    if addr.is_loopback() {
        from.is_loopback()
    } else if id::is_local(addr) {
        id::is_local(from)
    } else {
        true
    }
}

/// Distinct nodes that must see us at one public address before our id is
/// made to fit it (BEP 42).
pub const IP_VOTES: usize = 5;
/// Guesses at our address kept while votes come in.
const MAX_IP_CANDIDATES: usize = 8;

/// A peer address anyone could connect to: a port, and a unicast IP.
fn usable_peer(p: SocketAddr) -> bool {
    let ip = p.ip().to_canonical();
    p.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && ip != IpAddr::V4(std::net::Ipv4Addr::BROADCAST)
}

/// An address of `family`, in its own form: BEP 32 keeps the two networks
/// apart, and a v4-mapped IPv6 address is an IPv4 host.
fn of_family(family: Family, addr: SocketAddr) -> bool {
    match (family, addr) {
        (Family::V4, SocketAddr::V4(_)) => true,
        (Family::V6, SocketAddr::V6(a)) => a.ip().to_ipv4_mapped().is_none(),
        _ => false,
    }
}

/// Longest a lookup runs, whatever happens.
const MAX_LOOKUP_TIME: Duration = Duration::from_secs(60);

/// Queries of ours awaiting an answer, at most.
pub const MAX_PENDING: usize = 1024;
/// Datagrams queued for the caller, at most (it drains after each call).
pub const MAX_OUT: usize = 1024;
/// Events queued for the caller, at most.
pub const MAX_EVENTS: usize = 1024;
/// Lookups running at once (the caller's and our own refreshes).
pub const MAX_LOOKUPS: usize = 64;
/// Our client version in `v`: "SH" and a version number.
pub const VERSION: &[u8; 4] = b"SH\x00\x01";
/// How often the table's upkeep runs (pings, refreshes, expiry).
const UPKEEP: Duration = Duration::from_secs(1);
/// Bootstrap again this long after a bootstrap left the table short.
const REBOOTSTRAP: Duration = Duration::from_secs(15);

/// The address family a node serves. Each family has its own node, table
/// and socket (BEP 32); a dual-stack host runs two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Family {
    #[default]
    V4,
    V6,
}

impl Family {
    pub fn of(addr: SocketAddr) -> Family {
        match addr {
            SocketAddr::V4(_) => Family::V4,
            SocketAddr::V6(_) => Family::V6,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The family of our socket: only its addresses are queried, kept and
    /// handed on.
    pub family: Family,
    /// Our id; random (or BEP 42's for a known public address) if None.
    pub id: Option<NodeId>,
    /// Routers to ask when the table is empty; never put in the table.
    pub bootstrap: Vec<SocketAddr>,
    /// Refuse nodes at public addresses whose id BEP 42 does not allow
    /// there (local addresses are exempt).
    pub enforce_node_id: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            family: Family::V4,
            id: None,
            bootstrap: Vec::new(),
            enforce_node_id: true,
        }
    }
}

pub type LookupId = u64;

/// Announce ourselves at the end of a `get_peers` lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    /// Our peer port (TCP).
    pub port: u16,
    /// Let the nodes take the UDP source port instead (BEP 5 `implied_port`).
    pub implied_port: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A `get_peers` lookup found peers (only the new ones).
    Peers {
        lookup: LookupId,
        info_hash: NodeId,
        peers: Vec<SocketAddr>,
    },
    /// A lookup ended.
    Done {
        lookup: LookupId,
        target: NodeId,
        /// Nodes that answered it.
        answered: usize,
        /// Nodes told `announce_peer`.
        announced: usize,
        /// Distinct peers found.
        peers: usize,
    },
}

/// Traffic counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub datagrams_in: u64,
    pub bytes_in: u64,
    pub datagrams_out: u64,
    pub bytes_out: u64,
    pub queries_in: u64,
    pub rate_limited: u64,
    pub malformed: u64,
    pub unknown_tid: u64,
    pub timeouts: u64,
}

#[derive(Debug, Clone, Copy)]
enum Purpose {
    Lookup(LookupId),
    Ping,
    Announce,
}

#[derive(Debug, Clone)]
struct Pending {
    addr: SocketAddr,
    id: Option<NodeId>,
    sent: Instant,
    purpose: Purpose,
}

#[derive(Debug)]
struct Running {
    lookup: Lookup,
    announce: Option<Announce>,
    /// Our own (bootstrap, refresh): no events.
    internal: bool,
}

pub struct Node {
    id: NodeId,
    config: Config,
    table: Table,
    lookups: BTreeMap<LookupId, Running>,
    pending: HashMap<u32, Pending>,
    next_lookup: LookupId,
    out: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<Event>,
    tokens: Tokens,
    store: PeerStore,
    limiter: RateLimiter,
    stats: Stats,
    last_upkeep: Instant,
    last_bootstrap: Option<Instant>,
    /// Nodes of a saved table, asked by the first bootstrap.
    saved: Vec<(NodeId, SocketAddr)>,
    /// Our address as nodes that answered us see it (BEP 42 `ip`), with
    /// the IPs of those who said so.
    votes: Vec<(IpAddr, Vec<IpAddr>)>,
    /// The id was given: never changed to match our address.
    fixed_id: bool,
}

impl Node {
    pub fn new(mut config: Config, now: Instant) -> Node {
        let family = config.family;
        config.bootstrap.retain(|&a| Family::of(a) == family);
        let fixed_id = config.id.is_some();
        let id = config.id.unwrap_or_else(NodeId::random);
        Node {
            id,
            table: Table::new(id),
            config,
            lookups: BTreeMap::new(),
            pending: HashMap::new(),
            next_lookup: 1,
            out: VecDeque::new(),
            events: VecDeque::new(),
            tokens: Tokens::new(now),
            store: PeerStore::default(),
            limiter: RateLimiter::default(),
            stats: Stats::default(),
            last_upkeep: now,
            last_bootstrap: None,
            saved: Vec::new(),
            votes: Vec::new(),
            fixed_id,
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn family(&self) -> Family {
        self.config.family
    }

    fn family_addr(&self, addr: SocketAddr) -> bool {
        of_family(self.config.family, addr)
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Peers announced to us (for `shoal dht`'s display).
    pub fn store(&self) -> &PeerStore {
        &self.store
    }

    /// Joins the network: a `find_node` for our own id through the
    /// routers and whatever the table (or a saved one) holds.
    pub fn bootstrap(&mut self, now: Instant) {
        self.last_bootstrap = Some(now);
        let target = self.id;
        self.start(target, Kind::FindNode, None, true, now);
    }

    /// Pings a node (from a saved table, a peer's DHT port (BEP 5 PORT
    /// message), or the user): it enters the table if it answers.
    /// Nodes already in the table, or already asked, are not pinged again.
    pub fn add_node(&mut self, addr: SocketAddr, now: Instant) {
        let known = self.table.entries().any(|e| e.addr == addr)
            || self.pending.values().any(|p| p.addr == addr);
        if known || !self.family_addr(addr) || !usable_peer(addr) {
            return;
        }
        self.send_query(addr, None, Query::Ping { id: self.id }, Purpose::Ping, now);
    }

    /// Looks up peers of `info_hash`; with `announce`, tells the closest
    /// nodes about us at the end. Peers come as [`Event::Peers`].
    pub fn get_peers(
        &mut self,
        info_hash: NodeId,
        announce: Option<Announce>,
        now: Instant,
    ) -> Option<LookupId> {
        self.start(info_hash, Kind::GetPeers, announce, false, now)
    }

    /// Looks up the nodes closest to `target`.
    pub fn find_node(&mut self, target: NodeId, now: Instant) -> Option<LookupId> {
        self.start(target, Kind::FindNode, None, false, now)
    }

    fn start(
        &mut self,
        target: NodeId,
        kind: Kind,
        announce: Option<Announce>,
        internal: bool,
        now: Instant,
    ) -> Option<LookupId> {
        if self.lookups.len() >= MAX_LOOKUPS {
            return None;
        }
        let mut lookup = Lookup::new(target, kind, now);
        let seeds = self.table.closest(&target, K * 2, now);
        // Routers are asked too while the table is small, or when it knows
        // no node closer to the target than we are (an empty far bucket:
        // without them one half of a network may never learn the other).
        let ours = self.id.common_prefix(&target);
        let closer = seeds.iter().any(|(id, _)| id.common_prefix(&target) > ours);
        for (id, addr) in seeds {
            lookup.add(id, addr);
        }
        if self.table.len() < K || !closer {
            // Until the table fills, a saved table's nodes are asked too.
            for &(id, addr) in &self.saved {
                lookup.add(id, addr);
            }
            for &r in &self.config.bootstrap {
                lookup.add_router(r);
            }
        }
        self.table.touched(&target, now);
        let id = self.next_lookup;
        self.next_lookup += 1;
        self.lookups.insert(
            id,
            Running {
                lookup,
                announce,
                internal,
            },
        );
        self.drive(id, now);
        Some(id)
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Node::tick`] should run next.
    pub fn next_timeout(&self) -> Instant {
        let upkeep = self.last_upkeep + UPKEEP;
        self.pending
            .values()
            .map(|p| p.sent + QUERY_TIMEOUT)
            .min()
            .map_or(upkeep, |t| t.min(upkeep))
    }

    fn push_out(&mut self, to: SocketAddr, bytes: Vec<u8>) {
        if self.out.len() >= MAX_OUT {
            return;
        }
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += bytes.len() as u64;
        self.out.push_back((to, bytes));
    }

    fn push_event(&mut self, e: Event) {
        if self.events.len() < MAX_EVENTS {
            self.events.push_back(e);
        }
    }

    fn send_query(
        &mut self,
        addr: SocketAddr,
        id: Option<NodeId>,
        q: Query,
        purpose: Purpose,
        now: Instant,
    ) -> bool {
        if self.pending.len() >= MAX_PENDING
            || addr.port() == 0
            || Family::of(addr) != self.config.family
        {
            return false;
        }
        // Random, so that nobody who sees one query can forge the answer
        // to the next.
        let mut tid: u32 = rand::random();
        while self.pending.contains_key(&tid) {
            tid = rand::random();
        }
        let msg = Msg {
            t: tid.to_be_bytes().to_vec(),
            body: Body::Query(q),
            v: Some(VERSION.to_vec()),
            ip: None,
            read_only: false,
            want: Want::default(),
        };
        self.pending.insert(
            tid,
            Pending {
                addr,
                id,
                sent: now,
                purpose,
            },
        );
        self.push_out(addr, msg.encode());
        true
    }

    fn reply(&mut self, to: SocketAddr, t: Vec<u8>, body: Body) {
        // Errors carry nothing extra: a tiny bad query gets a tiny answer.
        let full = matches!(body, Body::Response(_));
        let msg = Msg {
            t,
            body,
            v: full.then(|| VERSION.to_vec()),
            ip: full.then_some(to),
            read_only: false,
            want: Want::default(),
        };
        self.push_out(to, msg.encode());
    }

    /// Sends what lookup `id` wants asked; finishes it when done.
    fn drive(&mut self, id: LookupId, now: Instant) {
        let Some(r) = self.lookups.get_mut(&id) else {
            return;
        };
        let asks = r.lookup.next(now);
        let (target, kind) = (r.lookup.target, r.lookup.kind);
        for a in asks {
            let q = match kind {
                Kind::FindNode => Query::FindNode {
                    id: self.id,
                    target,
                },
                Kind::GetPeers => Query::GetPeers {
                    id: self.id,
                    info_hash: target,
                },
            };
            if !self.send_query(a.addr, a.id, q, Purpose::Lookup(id), now) {
                if let Some(r) = self.lookups.get_mut(&id) {
                    r.lookup.give_up(a.addr);
                }
            }
        }
        let done = self.lookups.get(&id).is_some_and(|r| r.lookup.is_done());
        if done {
            self.finish(id, now);
        }
    }

    fn finish(&mut self, id: LookupId, now: Instant) {
        let Some(r) = self.lookups.remove(&id) else {
            return;
        };
        if r.internal && r.lookup.target == self.id && !self.table.is_empty() {
            // Joined: fill the rest of the table too.
            self.table.refresh_all();
        }
        let mut announced = 0;
        if let Some(a) = r.announce {
            for (_, addr, token) in r.lookup.announce_targets() {
                let q = Query::AnnouncePeer {
                    id: self.id,
                    info_hash: r.lookup.target,
                    port: a.port,
                    implied_port: a.implied_port,
                    token,
                };
                if self.send_query(addr, None, q, Purpose::Announce, now) {
                    announced += 1;
                }
            }
        }
        if !r.internal {
            self.push_event(Event::Done {
                lookup: id,
                target: r.lookup.target,
                answered: r.lookup.answered_count(),
                announced,
                peers: r.lookup.peers_found(),
            });
        }
    }

    /// A node at `voter` saw us at `ip`. Once [`IP_VOTES`] distinct nodes
    /// agree on a public address our id does not fit (BEP 42), we take an
    /// id that does, so that nodes enforcing BEP 42 keep us in their
    /// tables; our table is rebuilt around it.
    fn vote_external_ip(&mut self, ip: IpAddr, voter: IpAddr, now: Instant) {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        if self.fixed_id || id::is_local(ip) || id::id_matches_ip(&self.id, ip) {
            return;
        }
        let i = match self.votes.iter().position(|(v, _)| *v == ip) {
            Some(i) => i,
            None => {
                if self.votes.len() >= MAX_IP_CANDIDATES {
                    // The least supported guess makes room.
                    let weakest = (0..self.votes.len())
                        .min_by_key(|&i| self.votes[i].1.len())
                        .expect("not empty");
                    self.votes.swap_remove(weakest);
                }
                self.votes.push((ip, Vec::new()));
                self.votes.len() - 1
            }
        };
        let voters = &mut self.votes[i].1;
        if !voters.contains(&voter) && voters.len() < IP_VOTES {
            voters.push(voter);
        }
        if voters.len() >= IP_VOTES {
            self.votes.clear();
            self.change_id(id::id_for_ip(ip), now);
        }
    }

    /// Takes a new id; the table is rebuilt around it from what it held.
    fn change_id(&mut self, new: NodeId, now: Instant) {
        tracing::debug!("DHT: new node id {new} (BEP 42, for our address)");
        let old = std::mem::replace(&mut self.table, Table::new(new));
        self.id = new;
        for e in old.entries() {
            self.table
                .insert(e.id, e.addr, e.last_answer.is_some(), now);
        }
        self.table.refresh_all();
    }

    fn may_enter_table(&self, id: &NodeId, addr: SocketAddr) -> bool {
        !self.config.enforce_node_id || id::id_matches_ip(id, addr.ip())
    }

    /// A datagram from `from`.
    pub fn handle(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        self.handle_with(from, datagram, now, None);
    }

    /// Like [`Node::handle`], with the node of the other family (a
    /// dual-stack host's), whose nodes answer queries that `want` them
    /// (BEP 32).
    pub fn handle_with(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        other: Option<&Node>,
    ) {
        if Family::of(from) != self.config.family {
            // Not of our family (the other node's socket serves it): ignored.
            return;
        }
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += datagram.len() as u64;
        let msg = match Msg::decode(datagram) {
            Ok(m) => m,
            Err(KrpcError::Invalid { t, why }) => {
                self.stats.malformed += 1;
                // A query we cannot parse gets a protocol error, within
                // the sender's budget; anything else is dropped.
                let is_query = matches!(
                    bencode::decode(datagram).ok().as_ref().and_then(|v| v.get("y")),
                    Some(Value::Bytes(y)) if y == b"q"
                );
                // (A real query is over 50 bytes; much shorter ones are not
                // worth an answer.)
                if is_query && datagram.len() >= 30 && self.limiter.allow(from.ip(), now) {
                    self.reply(
                        from,
                        t,
                        Body::Error {
                            code: krpc::ERR_PROTOCOL,
                            message: why.into(),
                        },
                    );
                }
                return;
            }
            Err(_) => {
                self.stats.malformed += 1;
                return;
            }
        };
        match msg.body {
            Body::Query(q) => {
                let other = other.filter(|o| o.config.family != self.config.family);
                self.on_query(from, msg.t, q, msg.read_only, msg.want, other, now)
            }
            Body::Response(r) => self.on_response(from, &msg.t, r, msg.read_only, msg.ip, now),
            Body::Error { .. } => self.on_error(from, &msg.t, now),
        }
    }

    fn take_pending(&mut self, from: SocketAddr, t: &[u8]) -> Option<Pending> {
        let tid = u32::from_be_bytes(t.try_into().ok()?);
        match self.pending.get(&tid) {
            Some(p) if p.addr == from => self.pending.remove(&tid),
            _ => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_query(
        &mut self,
        from: SocketAddr,
        t: Vec<u8>,
        q: Query,
        read_only: bool,
        want: Want,
        other: Option<&Node>,
        now: Instant,
    ) {
        self.stats.queries_in += 1;
        if !self.limiter.allow(from.ip(), now) {
            self.stats.rate_limited += 1;
            return;
        }
        let their = q.id();
        let mut ping_it = false;
        if !read_only && self.may_enter_table(&their, from) {
            let known = self.table.get(&their).is_some();
            self.table.insert(their, from, false, now);
            // New to us: it is handed on to others only once it has
            // answered a ping (a spoofed query's "sender" never does).
            ping_it = !known && self.table.get(&their).is_some();
        }
        let mut r = Response {
            id: self.id,
            ..Response::default()
        };
        let body = match q {
            Query::Ping { .. } => Body::Response(r),
            Query::FindNode { target, .. }
            | Query::Unknown {
                target: Some(target),
                ..
            } => {
                self.fill_nodes(&mut r, &target, want, other, from, now);
                Body::Response(r)
            }
            Query::GetPeers { info_hash, .. } => {
                r.token = Some(self.tokens.token_for(from.ip()));
                r.values = self.store.peers(&info_hash, now);
                if r.values.is_empty() {
                    self.fill_nodes(&mut r, &info_hash, want, other, from, now);
                }
                Body::Response(r)
            }
            Query::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
                ..
            } => {
                if self.tokens.is_valid(&token, from.ip()) {
                    let port = if implied_port { from.port() } else { port };
                    self.store
                        .announce(info_hash, SocketAddr::new(from.ip(), port), now);
                    Body::Response(r)
                } else {
                    Body::Error {
                        code: krpc::ERR_PROTOCOL,
                        message: "bad token".into(),
                    }
                }
            }
            Query::Unknown { .. } => Body::Error {
                code: krpc::ERR_METHOD,
                message: "method unknown".into(),
            },
        };
        self.reply(from, t, body);
        if ping_it {
            let ping = Query::Ping { id: self.id };
            self.send_query(from, Some(their), ping, Purpose::Ping, now);
        }
    }

    /// The nodes closest to `target` of the families `want` asks for (our
    /// own when it asks for none), from our table and the other family's.
    fn fill_nodes(
        &self,
        r: &mut Response,
        target: &NodeId,
        want: Want,
        other: Option<&Node>,
        querier: SocketAddr,
        now: Instant,
    ) {
        let want = if want.is_empty() {
            match self.config.family {
                Family::V4 => Want {
                    n4: true,
                    n6: false,
                },
                Family::V6 => Want {
                    n4: false,
                    n6: true,
                },
            }
        } else {
            want
        };
        let source = |family: Family| {
            if self.config.family == family {
                Some(self)
            } else {
                other.filter(|o| o.config.family == family)
            }
        };
        if want.n4 {
            if let Some(n) = source(Family::V4) {
                r.nodes = n
                    .closest(target, querier, now)
                    .filter_map(|(id, a)| match a {
                        SocketAddr::V4(v4) => Some((id, v4)),
                        SocketAddr::V6(_) => None,
                    })
                    .collect();
            }
        }
        if want.n6 {
            if let Some(n) = source(Family::V6) {
                r.nodes6 = n
                    .closest(target, querier, now)
                    .filter_map(|(id, a)| match a {
                        SocketAddr::V6(v6) => Some((id, v6)),
                        SocketAddr::V4(_) => None,
                    })
                    .collect();
            }
        }
    }

    /// The K closest nodes to hand on to `querier`.
    fn closest(
        &self,
        target: &NodeId,
        querier: SocketAddr,
        now: Instant,
    ) -> impl Iterator<Item = (NodeId, SocketAddr)> {
        // Only nodes that answered us: a spoofed query's "sender" is never
        // handed on to others. Nor are our loopback or LAN neighbours to
        // those who could not reach them.
        self.table
            .closest_confirmed(target, K * 3, now)
            .into_iter()
            .filter(move |(_, a)| reachable_from(a.ip(), querier.ip()))
            .take(K)
    }

    fn on_response(
        &mut self,
        from: SocketAddr,
        t: &[u8],
        r: Response,
        read_only: bool,
        seen_as: Option<SocketAddr>,
        now: Instant,
    ) {
        let Some(p) = self.take_pending(from, t) else {
            self.stats.unknown_tid += 1;
            return;
        };
        if let Some(seen) = seen_as {
            self.vote_external_ip(seen.ip(), from.ip(), now);
        }
        // Routers answer lookups but are not DHT nodes to keep.
        let router = self.config.bootstrap.contains(&from);
        if !read_only && !router && self.may_enter_table(&r.id, from) {
            if let Some(expected) = p.id {
                if expected != r.id {
                    // Not the node we were told of: that id is stale here.
                    self.table.failed(&expected, from, now);
                }
            }
            let _: Inserted = self.table.insert(r.id, from, true, now);
        }
        let Purpose::Lookup(lid) = p.purpose else {
            return;
        };
        let family = self.config.family;
        let Some(run) = self.lookups.get_mut(&lid) else {
            return;
        };
        // A node may point us at loopback only from loopback, and at a
        // private network only from one: nobody out there can aim our
        // queries at this host or its LAN.
        let nodes: Vec<(NodeId, SocketAddr)> = match self.config.family {
            Family::V4 => r
                .nodes
                .iter()
                .map(|&(id, a)| (id, SocketAddr::V4(a)))
                .collect::<Vec<_>>(),
            Family::V6 => r
                .nodes6
                .iter()
                .map(|&(id, a)| (id, SocketAddr::V6(a)))
                .collect(),
        }
        .into_iter()
        .filter(|(_, a)| of_family(family, *a) && usable_peer(*a))
        .filter(|(_, a)| reachable_from(a.ip(), from.ip()))
        .filter(|(id, _)| *id != self.id)
        .collect();
        // Peers too: a node near the hash must not aim our peer
        // connections at this host, its LAN, or nowhere.
        let peers: Vec<SocketAddr> = if run.lookup.kind == Kind::GetPeers {
            r.values
                .iter()
                .copied()
                .filter(|p| of_family(family, *p) && usable_peer(*p))
                .filter(|p| reachable_from(p.ip(), from.ip()))
                .collect()
        } else {
            Vec::new()
        };
        let peers = peers.as_slice();
        let new = run.lookup.answered(from, r.id, &nodes, peers, r.token);
        if !new.is_empty() && !run.internal {
            let info_hash = run.lookup.target;
            self.push_event(Event::Peers {
                lookup: lid,
                info_hash,
                peers: new,
            });
        }
        self.drive(lid, now);
    }

    fn on_error(&mut self, from: SocketAddr, t: &[u8], now: Instant) {
        let Some(p) = self.take_pending(from, t) else {
            self.stats.unknown_tid += 1;
            return;
        };
        if let Purpose::Lookup(lid) = p.purpose {
            if let Some(run) = self.lookups.get_mut(&lid) {
                // It answered, but not usefully: do not ask again.
                run.lookup.give_up(from);
            }
            self.drive(lid, now);
        }
    }

    /// Timeouts and upkeep; call at [`Node::next_timeout`] (earlier or
    /// later is harmless).
    pub fn tick(&mut self, now: Instant) {
        let overdue: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.sent) >= QUERY_TIMEOUT)
            .map(|(&t, _)| t)
            .collect();
        let mut touched = Vec::new();
        for t in overdue {
            let p = self.pending.remove(&t).expect("listed");
            self.stats.timeouts += 1;
            if let Some(id) = p.id {
                self.table.failed(&id, p.addr, now);
            }
            if let Purpose::Lookup(lid) = p.purpose {
                if let Some(run) = self.lookups.get_mut(&lid) {
                    run.lookup.failed(p.addr);
                    touched.push(lid);
                }
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for lid in touched {
            self.drive(lid, now);
        }
        if now.saturating_duration_since(self.last_upkeep) >= UPKEEP {
            self.last_upkeep = now;
            self.upkeep(now);
        }
    }

    fn upkeep(&mut self, now: Instant) {
        // Every lookup moves on (one stalled by a full pending map), and
        // none lives forever.
        let ids: Vec<LookupId> = self.lookups.keys().copied().collect();
        for lid in ids {
            let expired = self.lookups.get(&lid).is_some_and(|r| {
                now.saturating_duration_since(r.lookup.started) >= MAX_LOOKUP_TIME
            });
            if expired {
                self.finish(lid, now);
            } else {
                self.drive(lid, now);
            }
        }
        if self.table.len() >= K {
            self.saved = Vec::new();
        }
        self.tokens.rotate(now);
        self.store.expire(now);
        // One questionable node checked per second.
        if let Some((id, addr)) = self.table.stalest_questionable(now) {
            let already = self.pending.values().any(|p| p.addr == addr);
            if !already {
                self.send_query(
                    addr,
                    Some(id),
                    Query::Ping { id: self.id },
                    Purpose::Ping,
                    now,
                );
            }
        }
        if self.table.len() < K {
            // Not joined yet (the routers knew few nodes, or none answered):
            // again, now and then.
            let due = self
                .last_bootstrap
                .is_some_and(|t| now.saturating_duration_since(t) >= REBOOTSTRAP);
            let running = self.lookups.values().any(|r| r.internal);
            let sources = !self.config.bootstrap.is_empty() || !self.table.is_empty();
            if due && !running && sources {
                self.bootstrap(now);
            }
            if self.table.is_empty() {
                return;
            }
        }
        let room = (MAX_LOOKUPS / 2).saturating_sub(self.lookups.len());
        for target in self.table.refresh_targets(now, room.min(4)) {
            self.start(target, Kind::FindNode, None, true, now);
        }
    }

    /// The table to keep across restarts: our id and the nodes' addresses.
    /// IPv4 nodes go in `nodes` (26 bytes each), IPv6 ones in `nodes6`
    /// (38), as in KRPC.
    pub fn save(&self) -> Vec<u8> {
        let mut nodes = Vec::new();
        for e in self.table.entries() {
            if Family::of(e.addr) == self.config.family {
                nodes.extend_from_slice(&e.id.0);
                krpc::encode_compact(e.addr, &mut nodes);
            }
        }
        let (key, _) = Self::saved_key(self.config.family);
        let mut d = BTreeMap::new();
        d.insert(b"id".to_vec(), Value::Bytes(self.id.0.to_vec()));
        d.insert(key.as_bytes().to_vec(), Value::Bytes(nodes));
        Value::Dict(d).encode()
    }

    /// A node from [`Node::save`]'s bytes: the same id (unless the config
    /// names one), and the saved nodes asked first when it bootstraps.
    /// Bad bytes give a fresh node.
    pub fn restore(saved: &[u8], config: Config, now: Instant) -> Node {
        Self::restore_with(saved, config, now, true)
    }

    /// The key of a saved table's nodes, and the size of one entry.
    fn saved_key(family: Family) -> (&'static str, usize) {
        match family {
            Family::V4 => ("nodes", 26),
            Family::V6 => ("nodes6", 38),
        }
    }

    /// Like [`Node::restore`]; with `keep_id` false only the nodes are
    /// taken (another process runs under the saved id), and the id is a
    /// fresh one that may still come to fit our address (BEP 42).
    pub fn restore_with(saved: &[u8], mut config: Config, now: Instant, keep_id: bool) -> Node {
        let parsed = bencode::decode(saved).ok();
        let id = parsed.as_ref().and_then(|v| match v.get("id") {
            Some(Value::Bytes(b)) => NodeId::from_slice(b),
            _ => None,
        });
        let given = config.id.is_some();
        if !given && keep_id {
            config.id = id;
        }
        let mut node = Node::new(config, now);
        // A saved id may still change to fit our address.
        node.fixed_id = given;
        let (key, size) = Self::saved_key(node.config.family);
        if let Some(Value::Bytes(b)) = parsed.as_ref().and_then(|v| v.get(key)) {
            for c in b.chunks_exact(size).take(2000) {
                let id = NodeId::from_slice(&c[..20]).expect("20 bytes");
                if let Some(addr) = krpc::decode_compact(&c[20..]) {
                    if node.may_enter_table(&id, addr) {
                        node.saved.push((id, addr));
                    }
                }
            }
        }
        node
    }
}
