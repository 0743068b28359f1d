//! The DHT node on a UDP socket: the sans-IO [`dht::Node`] driven by one
//! task, which owns the socket and the node and talks to the rest of the
//! program through a bounded command channel.
//!
//! [`Dht::get_peers`] starts a lookup and gives a bounded receiver of its
//! peers; the routing table is loaded from and saved to a state file.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use ::dht::Announce;
use ::dht::{Event, Family, LookupId, Node, NodeId};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The public routers libtorrent and Transmission bootstrap from.
pub const DEFAULT_BOOTSTRAP: &[&str] = &[
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "router.utorrent.com:6881",
    "dht.libtorrent.org:25401",
];

/// Commands waiting for the DHT task, at most.
const COMMANDS: usize = 64;
/// Batches of peers waiting for a lookup's reader, at most; more are
/// dropped (they are only candidates).
const PEER_BATCHES: usize = 64;
/// How long a bootstrap name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest state file read.
const MAX_STATE: u64 = 256 * 1024;

#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// The UDP addresses to serve on (port 0: any), at most one per address
    /// family: an IPv4 one, an IPv6 one (BEP 32), or both for a
    /// dual-stack host, which then runs one node per family.
    pub bind: Vec<SocketAddr>,
    /// Routers (`HOST:PORT`), resolved at start; unresolvable ones are
    /// skipped with a warning.
    pub bootstrap: Vec<String>,
    /// Where the routing table is kept between runs (the IPv6 node's goes
    /// beside it, `dht6.dat` for `dht.dat`).
    pub state_file: Option<PathBuf>,
    pub enforce_node_id: bool,
}

/// What a lookup reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupEvent {
    Peers(Vec<SocketAddr>),
    Done {
        answered: usize,
        announced: usize,
        peers: usize,
    },
}

#[derive(Debug, Clone, Copy, Default)]
pub struct DhtStatus {
    /// The first node's id (of the first address in `DhtConfig::bind`).
    pub id: NodeId,
    /// Nodes in the routing tables, of both families.
    pub nodes: usize,
    /// Of which IPv6 ones.
    pub nodes6: usize,
    pub buckets: usize,
    pub lookups: usize,
    pub stored_peers: usize,
    pub stats: dht::Stats,
}

enum Cmd {
    GetPeers {
        info_hash: NodeId,
        announce: Option<Announce>,
        events: mpsc::Sender<LookupEvent>,
    },
    AddNode(SocketAddr),
    Status(oneshot::Sender<DhtStatus>),
}

/// A running DHT node (one per address family).
pub struct Dht {
    tx: mpsc::Sender<Cmd>,
    local: Vec<SocketAddr>,
    cancel: CancellationToken,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// Resolves `HOST:PORT` names (each node keeps its family's addresses).
pub async fn resolve(names: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    let mut lookups = tokio::task::JoinSet::new();
    for name in names.iter().cloned() {
        lookups.spawn(async move {
            let r =
                tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(name.clone())).await;
            (name, r)
        });
    }
    let mut failed = Vec::new();
    while let Some(done) = lookups.join_next().await {
        let Ok((name, r)) = done else { continue };
        match r {
            Ok(Ok(addrs)) => out.extend(addrs),
            Ok(Err(e)) => {
                tracing::debug!("DHT bootstrap {name}: {e}");
                failed.push(name);
            }
            Err(_) => {
                tracing::debug!("DHT bootstrap {name}: no answer from DNS in {RESOLVE_TIMEOUT:?}");
                failed.push(name);
            }
        }
    }
    // One line, and only when it matters: no bootstrap node at all (one
    // name of several failing is no news).
    if out.is_empty() && !failed.is_empty() {
        failed.sort_unstable();
        tracing::warn!("DHT bootstrap: DNS lookup failed for {}", failed.join(", "));
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// A UDP socket on `addr`; an IPv6 one serves IPv6 only, so that the IPv4
/// node can have the same port.
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let domain = match addr {
        SocketAddr::V4(_) => Domain::IPV4,
        SocketAddr::V6(_) => Domain::IPV6,
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Whether a DHT socket could be bound at `addr` now (it is closed again).
pub fn can_bind(addr: SocketAddr) -> io::Result<()> {
    bind_udp(addr).map(drop)
}

/// The IPv6 node's state file beside the IPv4 one's: `dht6.dat` for
/// `dht.dat`.
fn state_file_v6(path: &std::path::Path) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}6.{}", ext.to_string_lossy()),
        None => format!("{stem}6"),
    };
    path.with_file_name(name)
}

/// One family's node, its socket and its state file.
struct Served {
    socket: Arc<UdpSocket>,
    node: Node,
    /// Where it saves (only while it holds the file's lock).
    state_file: Option<PathBuf>,
    lock: Option<std::fs::File>,
}

impl Dht {
    pub async fn start(config: DhtConfig) -> io::Result<Dht> {
        let families: Vec<Family> = config.bind.iter().map(|&a| Family::of(a)).collect();
        if families.is_empty()
            || families.len() > 2
            || (families.len() == 2 && families[0] == families[1])
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the DHT serves on one address per family (IPv4, IPv6)",
            ));
        }
        let mut sockets = Vec::new();
        for &bind in &config.bind {
            let socket = bind_udp(bind).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot listen on UDP {bind}: {e}"))
            })?;
            sockets.push(socket);
        }
        let local = sockets
            .iter()
            .map(UdpSocket::local_addr)
            .collect::<io::Result<Vec<_>>>()?;
        let bootstrap = resolve(&config.bootstrap).await;
        let now = Instant::now().into_std();
        let mut served = Vec::new();
        for socket in sockets {
            let family = Family::of(socket.local_addr()?);
            let node_config = dht::Config {
                family,
                id: None,
                bootstrap: bootstrap.clone(),
                enforce_node_id: config.enforce_node_id,
            };
            let path = match family {
                Family::V4 => config.state_file.clone(),
                Family::V6 => config.state_file.as_deref().map(state_file_v6),
            };
            // The first process owns the state file (and its node id)
            // while it runs; others read its nodes but take an id of their
            // own and save nothing, so two processes never share an id.
            let lock = path.as_deref().and_then(lock_state);
            let keep_id = lock.is_some();
            let saved = path
                .as_ref()
                .and_then(|p| match crate::resume::load_state(p, MAX_STATE) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!("DHT state {}: {e}; starting afresh", p.display());
                        None
                    }
                });
            let mut node = match saved {
                Some(bytes) => Node::restore_with(&bytes, node_config, now, keep_id),
                None => Node::new(node_config, now),
            };
            node.bootstrap(now);
            served.push(Served {
                socket: Arc::new(socket),
                node,
                state_file: path.filter(|_| lock.is_some()),
                lock,
            });
        }
        let (tx, rx) = mpsc::channel(COMMANDS);
        let cancel = CancellationToken::new();
        let cancel_task = cancel.clone();
        let task = tokio::spawn(run(served, rx, cancel_task));
        Ok(Dht {
            tx,
            local,
            cancel,
            task: std::sync::Mutex::new(Some(task)),
        })
    }

    /// The UDP address the (first) node serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local[0]
    }

    /// The UDP addresses of the nodes, one per family.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local
    }

    /// Starts a `get_peers` lookup (announcing us at its end if asked),
    /// in each family; their peers and their end arrive on the receiver.
    pub async fn get_peers(
        &self,
        info_hash: [u8; 20],
        announce: Option<Announce>,
    ) -> mpsc::Receiver<LookupEvent> {
        let (events, rx) = mpsc::channel(PEER_BATCHES);
        let _ = self
            .tx
            .send(Cmd::GetPeers {
                info_hash: NodeId(info_hash),
                announce,
                events,
            })
            .await;
        rx
    }

    /// Our node's UDP port for peers at `peer` (of its family), if we run
    /// one of that family.
    pub fn port_for(&self, peer: SocketAddr) -> Option<u16> {
        // (A dual-stack listener's IPv4 peers come v4-mapped.)
        let ip = peer.ip().to_canonical();
        self.local
            .iter()
            .find(|l| l.is_ipv4() == ip.is_ipv4())
            .map(SocketAddr::port)
    }

    /// [`Dht::add_node`] without waiting: dropped when the node is busy
    /// (a peer's PORT message is only a hint).
    pub fn try_add_node(&self, addr: SocketAddr) {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        let _ = self.tx.try_send(Cmd::AddNode(addr));
    }

    /// Pings a node (through the node of its family, if there is one); it
    /// joins the table if it answers.
    pub async fn add_node(&self, addr: SocketAddr) {
        let _ = self.tx.send(Cmd::AddNode(addr)).await;
    }

    pub async fn status(&self) -> DhtStatus {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Status(tx)).await.is_err() {
            return DhtStatus::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Stops the node and saves its table (once; later calls return at
    /// once).
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

/// A caller's lookup: one node lookup per family, reported as one.
struct Joined {
    events: mpsc::Sender<LookupEvent>,
    /// Node lookups still running.
    running: usize,
    answered: usize,
    announced: usize,
    peers: usize,
}

#[derive(Default)]
struct Lookups {
    next: u64,
    joined: HashMap<u64, Joined>,
    /// (node index, its lookup) → the caller's lookup.
    parts: HashMap<(usize, LookupId), u64>,
}

impl Lookups {
    fn event(&mut self, node: usize, e: Event) {
        match e {
            Event::Peers { lookup, peers, .. } => {
                let Some(j) = self.parts.get(&(node, lookup)) else {
                    return;
                };
                if let Some(j) = self.joined.get(j) {
                    let _ = j.events.try_send(LookupEvent::Peers(peers));
                }
            }
            Event::Done {
                lookup,
                answered,
                announced,
                peers,
                ..
            } => {
                let Some(id) = self.parts.remove(&(node, lookup)) else {
                    return;
                };
                let Some(j) = self.joined.get_mut(&id) else {
                    return;
                };
                j.running -= 1;
                j.answered += answered;
                j.announced += announced;
                j.peers += peers;
                if j.running == 0 {
                    let j = self.joined.remove(&id).expect("present");
                    let _ = j.events.try_send(LookupEvent::Done {
                        answered: j.answered,
                        announced: j.announced,
                        peers: j.peers,
                    });
                }
            }
        }
    }
}

/// Receives on `socket`, or never when there is none.
async fn recv(socket: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

async fn run(mut served: Vec<Served>, mut rx: mpsc::Receiver<Cmd>, cancel: CancellationToken) {
    let mut buf0 = vec![0u8; dht::krpc::MAX_PACKET + 1];
    let mut buf1 = vec![0u8; dht::krpc::MAX_PACKET + 1];
    let socket0 = served[0].socket.clone();
    let socket1 = served.get(1).map(|s| s.socket.clone());
    let mut lookups = Lookups::default();
    let mut last_save = Instant::now();
    loop {
        // What the last step (or the start) queued goes out first.
        for (i, s) in served.iter_mut().enumerate() {
            flush(&s.socket, &mut s.node, i, &mut lookups).await;
        }
        let wake = served
            .iter()
            .map(|s| s.node.next_timeout())
            .min()
            .map(Instant::from_std)
            .expect("one node at least");
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = socket0.recv_from(&mut buf0) => match r {
                Ok((n, from)) => handle(&mut served, 0, from, &buf0[..n]),
                // ICMP unreachable and the like: a lost datagram.
                Err(e) => tracing::trace!("DHT recv: {e}"),
            },
            r = recv(socket1.as_deref(), &mut buf1) => match r {
                Ok((n, from)) => handle(&mut served, 1, from, &buf1[..n]),
                Err(e) => tracing::trace!("DHT recv: {e}"),
            },
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now().into_std();
                for s in &mut served {
                    if s.node.next_timeout() <= now {
                        s.node.tick(now);
                    }
                }
            }
            cmd = rx.recv() => match cmd {
                None => break,
                Some(Cmd::GetPeers { info_hash, announce, events }) => {
                    let now = Instant::now().into_std();
                    let id = lookups.next;
                    lookups.next += 1;
                    let mut running = 0;
                    for (i, s) in served.iter_mut().enumerate() {
                        if let Some(l) = s.node.get_peers(info_hash, announce, now) {
                            lookups.parts.insert((i, l), id);
                            running += 1;
                        }
                    }
                    if running == 0 {
                        let _ = events.try_send(LookupEvent::Done { answered: 0, announced: 0, peers: 0 });
                    } else {
                        lookups.joined.insert(id, Joined { events, running, answered: 0, announced: 0, peers: 0 });
                    }
                }
                Some(Cmd::AddNode(addr)) => {
                    let family = Family::of(addr);
                    if let Some(s) = served.iter_mut().find(|s| s.node.family() == family) {
                        s.node.add_node(addr, Instant::now().into_std());
                    }
                }
                Some(Cmd::Status(reply)) => {
                    let mut status = DhtStatus {
                        id: served[0].node.id(),
                        lookups: lookups.joined.len(),
                        ..DhtStatus::default()
                    };
                    for s in &served {
                        let n = &s.node;
                        status.nodes += n.table().len();
                        if n.family() == Family::V6 {
                            status.nodes6 += n.table().len();
                        }
                        status.buckets += n.table().bucket_count();
                        status.stored_peers += n.store().peer_count();
                        status.stats = add_stats(status.stats, n.stats());
                    }
                    let _ = reply.send(status);
                }
            },
        }
        if last_save.elapsed() >= Duration::from_secs(300) {
            last_save = Instant::now();
            for s in &served {
                save(&s.node, s.state_file.as_ref()).await;
            }
        }
    }
    for s in served {
        save(&s.node, s.state_file.as_ref()).await;
        // Held until the last save is done.
        drop(s.lock);
    }
}

/// A datagram for node `i`, the other family's node lending its table.
fn handle(served: &mut [Served], i: usize, from: SocketAddr, datagram: &[u8]) {
    let now = Instant::now().into_std();
    let (this, other) = match (i, served) {
        (0, [a, rest @ ..]) => (a, rest.first()),
        (_, [a, b, ..]) => (b, Some(&*a)),
        _ => return,
    };
    this.node
        .handle_with(from, datagram, now, other.map(|o| &o.node));
}

fn add_stats(a: dht::Stats, b: dht::Stats) -> dht::Stats {
    dht::Stats {
        datagrams_in: a.datagrams_in + b.datagrams_in,
        bytes_in: a.bytes_in + b.bytes_in,
        datagrams_out: a.datagrams_out + b.datagrams_out,
        bytes_out: a.bytes_out + b.bytes_out,
        queries_in: a.queries_in + b.queries_in,
        rate_limited: a.rate_limited + b.rate_limited,
        malformed: a.malformed + b.malformed,
        unknown_tid: a.unknown_tid + b.unknown_tid,
        timeouts: a.timeouts + b.timeouts,
    }
}

/// Sends what node `i` queued and hands its events to the lookups' readers.
async fn flush(socket: &UdpSocket, node: &mut Node, i: usize, lookups: &mut Lookups) {
    while let Some((to, bytes)) = node.poll_transmit() {
        // Errors (no route, ICMP reported) lose the datagram, as the
        // network might; the lookup's timeout deals with it.
        if let Err(e) = socket.send_to(&bytes, to).await {
            tracing::trace!("DHT send to {to}: {e}");
        }
    }
    while let Some(e) = node.poll_event() {
        lookups.event(i, e);
    }
}

/// Saves the table, on a blocking thread (it fsyncs).
async fn save(node: &Node, path: Option<&PathBuf>) {
    let Some(path) = path.cloned() else { return };
    if node.table().is_empty() {
        // Keep what an earlier run learned rather than an empty table.
        return;
    }
    let bytes = node.save();
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = crate::resume::save_state(&path, &bytes) {
            tracing::warn!("saving the DHT table to {}: {e}", path.display());
        }
    })
    .await;
}

/// An exclusive lock on `STATE.lock` beside the state file, if no other
/// process holds it.
fn lock_state(state: &std::path::Path) -> Option<std::fs::File> {
    let dir = state.parent()?;
    std::fs::create_dir_all(dir).ok()?;
    let mut name = state.file_name()?.to_owned();
    name.push(".lock");
    let path = dir.join(name);
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("DHT table not kept: {}: {e}", path.display());
            return None;
        }
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Some(file),
        // Another process runs the node of this state.
        Err(rustix::io::Errno::WOULDBLOCK) => None,
        Err(e) => {
            tracing::warn!("DHT table not kept: locking {}: {e}", path.display());
            None
        }
    }
}

/// shoal's state directory: `$XDG_STATE_HOME/shoal`, else
/// `~/.local/state/shoal`.
pub fn state_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("shoal"));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(PathBuf::from(home).join(".local/state/shoal"))
}
