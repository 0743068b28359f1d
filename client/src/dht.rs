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
use ::dht::{Event, LookupId, Node, NodeId};
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
    /// The UDP address to serve on (port 0: any).
    pub bind: SocketAddr,
    /// Routers (`HOST:PORT`), resolved at start; unresolvable ones are
    /// skipped with a warning.
    pub bootstrap: Vec<String>,
    /// Where the routing table is kept between runs.
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
    pub id: NodeId,
    pub nodes: usize,
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

/// A running DHT node.
pub struct Dht {
    tx: mpsc::Sender<Cmd>,
    local: SocketAddr,
    cancel: CancellationToken,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// Resolves `HOST:PORT` names to IPv4 addresses (the node speaks IPv4).
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
    while let Some(done) = lookups.join_next().await {
        let Ok((name, r)) = done else { continue };
        match r {
            Ok(Ok(addrs)) => out.extend(addrs.filter(SocketAddr::is_ipv4)),
            Ok(Err(e)) => tracing::warn!("DHT bootstrap {name}: {e}"),
            Err(_) => {
                tracing::warn!("DHT bootstrap {name}: no answer from DNS in {RESOLVE_TIMEOUT:?}")
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

impl Dht {
    pub async fn start(config: DhtConfig) -> io::Result<Dht> {
        let socket = UdpSocket::bind(config.bind).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot listen on UDP {}: {e}", config.bind),
            )
        })?;
        let local = socket.local_addr()?;
        let bootstrap = resolve(&config.bootstrap).await;
        let node_config = dht::Config {
            id: None,
            bootstrap,
            enforce_node_id: config.enforce_node_id,
        };
        let now = Instant::now().into_std();
        // The first process owns the state file (and its node id) while it
        // runs; others read its nodes but take an id of their own and save
        // nothing, so two processes never share an id.
        let lock = config.state_file.as_deref().and_then(lock_state);
        let keep_id = lock.is_some();
        let state_file = config.state_file.clone().filter(|_| lock.is_some());
        let saved = config.state_file.as_ref().and_then(|p| {
            match crate::resume::load_state(p, MAX_STATE) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("DHT state {}: {e}; starting afresh", p.display());
                    None
                }
            }
        });
        let mut node = match saved {
            Some(bytes) => Node::restore_with(&bytes, node_config, now, keep_id),
            None => Node::new(node_config, now),
        };
        node.bootstrap(now);
        let (tx, rx) = mpsc::channel(COMMANDS);
        let cancel = CancellationToken::new();
        let cancel_task = cancel.clone();
        let task = tokio::spawn(async move {
            run(Arc::new(socket), node, rx, cancel_task, state_file).await;
            // Held until the last save is done.
            drop(lock);
        });
        Ok(Dht {
            tx,
            local,
            cancel,
            task: std::sync::Mutex::new(Some(task)),
        })
    }

    /// The UDP address the node serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Starts a `get_peers` lookup (announcing us at its end if asked);
    /// its peers and its end arrive on the receiver.
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

    /// Pings a node; it joins the table if it answers.
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

async fn run(
    socket: Arc<UdpSocket>,
    mut node: Node,
    mut rx: mpsc::Receiver<Cmd>,
    cancel: CancellationToken,
    state_file: Option<PathBuf>,
) {
    let mut buf = vec![0u8; dht::krpc::MAX_PACKET + 1];
    let mut lookups: HashMap<LookupId, mpsc::Sender<LookupEvent>> = HashMap::new();
    let mut last_save = Instant::now();
    loop {
        // What the last step (or the start) queued goes out first.
        flush(&socket, &mut node, &mut lookups).await;
        let wake = Instant::from_std(node.next_timeout());
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => node.handle(from, &buf[..n], Instant::now().into_std()),
                // ICMP unreachable and the like: a lost datagram.
                Err(e) => tracing::trace!("DHT recv: {e}"),
            },
            _ = tokio::time::sleep_until(wake) => node.tick(Instant::now().into_std()),
            cmd = rx.recv() => match cmd {
                None => break,
                Some(Cmd::GetPeers { info_hash, announce, events }) => {
                    match node.get_peers(info_hash, announce, Instant::now().into_std()) {
                        Some(id) => {
                            lookups.insert(id, events);
                        }
                        None => {
                            let _ = events.try_send(LookupEvent::Done { answered: 0, announced: 0, peers: 0 });
                        }
                    }
                }
                Some(Cmd::AddNode(addr)) => node.add_node(addr, Instant::now().into_std()),
                Some(Cmd::Status(reply)) => {
                    let _ = reply.send(DhtStatus {
                        id: node.id(),
                        nodes: node.table().len(),
                        buckets: node.table().bucket_count(),
                        lookups: lookups.len(),
                        stored_peers: node.store().peer_count(),
                        stats: node.stats(),
                    });
                }
            },
        }
        if last_save.elapsed() >= Duration::from_secs(300) {
            last_save = Instant::now();
            save(&node, state_file.as_ref()).await;
        }
    }
    save(&node, state_file.as_ref()).await;
}

/// Sends what the node queued and hands its events to the lookups' readers.
async fn flush(
    socket: &UdpSocket,
    node: &mut Node,
    lookups: &mut HashMap<LookupId, mpsc::Sender<LookupEvent>>,
) {
    while let Some((to, bytes)) = node.poll_transmit() {
        // Errors (no route, ICMP reported) lose the datagram, as the
        // network might; the lookup's timeout deals with it.
        if let Err(e) = socket.send_to(&bytes, to).await {
            tracing::trace!("DHT send to {to}: {e}");
        }
    }
    while let Some(e) = node.poll_event() {
        match e {
            Event::Peers { lookup, peers, .. } => {
                if let Some(tx) = lookups.get(&lookup) {
                    let _ = tx.try_send(LookupEvent::Peers(peers));
                }
            }
            Event::Done {
                lookup,
                answered,
                announced,
                peers,
                ..
            } => {
                if let Some(tx) = lookups.remove(&lookup) {
                    let _ = tx.try_send(LookupEvent::Done {
                        answered,
                        announced,
                        peers,
                    });
                }
            }
        }
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
