//! The engine: any number of torrents behind one listening port.
//!
//! An [`Engine`] owns what torrents share — the listening socket, our peer
//! id, the global connection cap, the global upload and download limits,
//! and the disk threads — and each torrent ([`Session`]) owns only its own
//! state. Incoming connections are routed by the info hash in their
//! handshake; an unknown hash is refused. The DHT node (BEP 5) will live
//! here too, shared by all torrents.
//!
//! ```text
//!   Engine ── listener ── handshake ──(info hash)──► torrent's peer::accepted
//!     │  peer id, connection cap, rate limits, DiskPool
//!     ├── Session (torrent A): State, driver, announcer, connections
//!     └── Session (torrent B): …
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use torrent_format::{Info, InfoHash};

use crate::disk::DiskPool;
use crate::rate::Limiter;
use crate::session::{Config, Session, SessionError, Shared};
use crate::storage::Storage;
use crate::tracker::{TrackerClient, TrackerConfig};
use crate::wire::{Bitfield, Handshake, HANDSHAKE_LEN};

/// A connection must complete its handshake within this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most incoming connections still handshaking, per address.
const HANDSHAKES_PER_IP: usize = 4;

/// What an engine is told to do.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where to accept connections (port 0: any free port).
    pub listen: SocketAddr,
    /// Local address for outgoing connections and announces.
    pub bind: Option<IpAddr>,
    /// Most connections at once, over all torrents (handshaking included).
    pub max_connections: usize,
    /// Bytes per second over all torrents; `None` for no limit.
    pub upload_limit: Option<u64>,
    pub download_limit: Option<u64>,
    pub disk_threads: usize,
}

impl EngineConfig {
    pub fn new(listen: SocketAddr) -> EngineConfig {
        EngineConfig {
            listen,
            bind: None,
            max_connections: 500,
            upload_limit: None,
            download_limit: None,
            disk_threads: 2,
        }
    }
}

/// Why a torrent could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error("torrent {0} is already in this engine")]
    Duplicate(InfoHash),
    #[error("the engine is shutting down")]
    ShuttingDown,
}

/// What torrents share; each torrent's [`Shared`] points here.
pub(crate) struct EngineShared {
    pub peer_id: [u8; 20],
    /// The port we listen on (announced to trackers).
    pub port: u16,
    pub bind: Option<IpAddr>,
    pub up_limit: Limiter,
    pub down_limit: Limiter,
    /// One permit per connection, over all torrents.
    pub connections: Arc<Semaphore>,
    pub disk: Arc<DiskPool>,
    /// The tracker client all torrents share (its HTTP client and UDP
    /// connection ids), made on first use.
    tracker: std::sync::OnceLock<Result<TrackerClient, String>>,
    torrents: Mutex<HashMap<InfoHash, Weak<Shared>>>,
    handshaking: Mutex<HashMap<IpAddr, usize>>,
    /// Why peers were dropped, rate-limited at the default level.
    pub drops: crate::droplog::DropLog,
    /// The DHT node all public torrents look peers up through, if any.
    pub dht: std::sync::OnceLock<Arc<crate::dht::Dht>>,
    pub cancel: CancellationToken,
    pub tasks: TaskTracker,
}

impl EngineShared {
    fn torrent(&self, hash: &InfoHash) -> Option<Arc<Shared>> {
        self.torrents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .and_then(Weak::upgrade)
    }

    pub(crate) fn remove(&self, hash: &InfoHash) {
        self.torrents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hash);
    }

    /// The shared tracker client; an error when the TLS backend could not
    /// be set up.
    pub(crate) fn tracker(&self) -> Result<TrackerClient, String> {
        self.tracker
            .get_or_init(|| {
                TrackerClient::new(TrackerConfig {
                    local_address: self.bind,
                    ..TrackerConfig::default()
                })
                .map_err(|e| e.to_string())
            })
            .clone()
    }

    /// A permit for one more connection, if the global cap allows.
    pub(crate) fn connection_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.connections.clone().try_acquire_owned().ok()
    }

    pub(crate) fn torrent_count(&self) -> usize {
        self.torrents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

/// Counts an address's connections still handshaking; the count drops
/// with it.
struct Handshaking {
    engine: Arc<EngineShared>,
    ip: IpAddr,
}

impl Handshaking {
    fn new(engine: &Arc<EngineShared>, ip: IpAddr) -> Option<Handshaking> {
        let mut map = engine.handshaking.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(ip).or_default();
        if *n >= HANDSHAKES_PER_IP {
            return None;
        }
        *n += 1;
        Some(Handshaking {
            engine: engine.clone(),
            ip,
        })
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        let mut map = self
            .engine
            .handshaking
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Many torrents behind one port.
pub struct Engine {
    shared: Arc<EngineShared>,
    listen: SocketAddr,
}

impl Engine {
    /// Binds the listening socket and starts accepting.
    pub async fn start(config: EngineConfig) -> Result<Engine, SessionError> {
        let err = |error| SessionError::Listen {
            addr: config.listen,
            error,
        };
        let listener = TcpListener::bind(config.listen).await.map_err(err)?;
        let listen = listener.local_addr().map_err(err)?;
        let shared = Arc::new(EngineShared {
            peer_id: crate::session::new_peer_id(),
            port: listen.port(),
            bind: config.bind,
            up_limit: Limiter::new(config.upload_limit),
            down_limit: Limiter::new(config.download_limit),
            connections: Arc::new(Semaphore::new(config.max_connections.max(1))),
            disk: DiskPool::new(config.disk_threads),
            tracker: std::sync::OnceLock::new(),
            torrents: Mutex::new(HashMap::new()),
            handshaking: Mutex::new(HashMap::new()),
            drops: Default::default(),
            dht: std::sync::OnceLock::new(),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        shared.tasks.spawn(accept(shared.clone(), listener));
        Ok(Engine { shared, listen })
    }

    /// Starts the DHT node the engine's public torrents use (BEP 5): they
    /// look themselves up and announce on start and every 15 minutes, and
    /// magnets find peers through it. Once per engine.
    pub async fn start_dht(&self, config: crate::dht::DhtConfig) -> std::io::Result<SocketAddr> {
        let dht = crate::dht::Dht::start(config).await?;
        let addr = dht.local_addr();
        if let Err(d) = self.shared.dht.set(Arc::new(dht)) {
            d.shutdown().await;
            return Err(std::io::Error::other("the engine already runs a DHT node"));
        }
        Ok(addr)
    }

    /// The engine's DHT node, if it runs one.
    pub fn dht(&self) -> Option<&Arc<crate::dht::Dht>> {
        self.shared.dht.get()
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn peer_id(&self) -> [u8; 20] {
        self.shared.peer_id
    }

    pub(crate) fn shared(&self) -> &Arc<EngineShared> {
        &self.shared
    }

    /// Starts a torrent over `storage`, whose verified pieces are `have`.
    /// `config.listen`, `bind`, the rate limits and `disk_threads` are the
    /// engine's and are ignored here.
    pub async fn add(
        &self,
        info: Arc<Info>,
        storage: Arc<Storage>,
        have: Bitfield,
        config: Config,
    ) -> Result<Session, SessionError> {
        let hash = info.info_hash();
        if self.shared.cancel.is_cancelled() {
            return Err(AddError::ShuttingDown.into());
        }
        {
            let map = self
                .shared
                .torrents
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if map.get(&hash).and_then(Weak::upgrade).is_some() {
                return Err(AddError::Duplicate(hash).into());
            }
        }
        let session = Session::attach(self.shared.clone(), info, storage, have, config);
        self.shared
            .torrents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(hash, Arc::downgrade(session.shared()));
        Ok(session)
    }

    /// Torrents added and not shut down.
    pub fn torrents(&self) -> usize {
        self.shared.torrent_count()
    }

    /// Stops accepting, waits for the engine's own tasks and stops the
    /// disk threads once everything queued is written. Shut the torrents
    /// down first ([`Session::shutdown`]).
    pub async fn shutdown(self) {
        if let Some(dht) = self.shared.dht.get() {
            dht.shutdown().await;
        }
        self.shared.cancel.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        let disk = self.shared.disk.clone();
        let _ = tokio::task::spawn_blocking(move || disk.close()).await;
    }
}

async fn accept(engine: Arc<EngineShared>, listener: TcpListener) {
    loop {
        let (stream, addr) = tokio::select! {
            () = engine.cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Connections still handshaking count against the global cap and,
        // per address, against a small one of their own: a flood of silent
        // connections from one place cannot take every slot.
        let Some(permit) = engine.connection_permit() else {
            tracing::debug!("{addr}: refused: at the connection limit");
            continue;
        };
        let Some(handshaking) = Handshaking::new(&engine, addr.ip()) else {
            tracing::debug!("{addr}: refused: too many handshakes from that address");
            continue;
        };
        let e = engine.clone();
        engine.tasks.spawn(async move {
            let r = tokio::select! {
                () = e.cancel.cancelled() => return,
                r = tokio::time::timeout(HANDSHAKE_TIMEOUT, read_handshake(stream)) => r,
            };
            drop(handshaking);
            let (stream, theirs, buf) = match r {
                Ok(Ok(x)) => x,
                Ok(Err(why)) => {
                    tracing::debug!("{addr}: handshake: {why}");
                    return;
                }
                Err(_) => {
                    tracing::debug!("{addr}: handshake: timed out");
                    return;
                }
            };
            let Some(torrent) = e.torrent(&theirs.info_hash) else {
                tracing::debug!(
                    "{addr}: refused: unknown info hash {}",
                    theirs.info_hash.to_hex()
                );
                return;
            };
            // The connection now belongs to its torrent (whose shutdown
            // waits for it).
            let t = torrent.clone();
            torrent.tasks.spawn(async move {
                crate::peer::accepted(t, stream, addr, theirs, buf, permit).await;
            });
        });
    }
}

/// Reads a peer's handshake; returns it with whatever came after it.
async fn read_handshake(mut stream: TcpStream) -> Result<(TcpStream, Handshake, Vec<u8>), String> {
    let mut buf = Vec::with_capacity(HANDSHAKE_LEN + 1024);
    loop {
        if let Some(h) = Handshake::decode(&buf).map_err(|e| e.to_string())? {
            buf.drain(..HANDSHAKE_LEN);
            return Ok((stream, h, buf));
        }
        // Never more than the handshake's worth plus what rode with it.
        if buf.len() >= 64 * 1024 {
            return Err("no handshake in 64 KiB".into());
        }
        if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed during the handshake".into());
        }
    }
}
