//! shoal's HTTP tracker (BEP 3, 23, 7, 48): records which peers are in each
//! swarm and hands each announcing client a sample of the others.
//!
//! Layers, each testable on its own:
//! - [`request`]: query parsing (pure), every problem a `failure reason`;
//! - [`swarm`]: one swarm's peers and the announce logic (pure: `now` and
//!   the RNG are arguments);
//! - [`store`]: the [`SwarmStore`] interface and the sharded in-memory store;
//! - [`redis_store`]: swarms in Redis, shared by several instances (async);
//! - [`response`]: bencoded replies;
//! - [`Tracker`] + [`app`]: policy (whitelist, passkeys, client address) and
//!   the axum `Router`;
//! - [`server`]: sockets, one current-thread runtime per core with
//!   `SO_REUSEPORT` listeners, idle timeouts, graceful shutdown.

pub mod redis_store;
pub mod request;
pub mod response;
pub mod server;
pub mod store;
pub mod swarm;
pub mod udp;

mod h1;
mod http;
mod stats;
mod udp_io;

/// Entry points for the fuzz targets in `fuzz/` to crate-private parsers;
/// not an API (no stability promised, hidden from the docs).
#[doc(hidden)]
pub mod fuzz {
    use std::net::SocketAddr;

    use crate::Tracker;

    /// What [`serve_one`] made of the start of a connection's input.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Head {
        /// No complete head yet.
        Partial,
        /// Not for the fast path (hyper would get the connection).
        Other,
        /// A fast-path request of `len` bytes, answered into `out`.
        Answered { len: usize, keep_alive: bool },
        /// Malformed or too long: a failure reply is in `out`, and the
        /// connection closes after it.
        Rejected,
    }

    /// The announce/scrape fast path's HTTP/1 head parser (`h1`).
    pub fn serve_one(tracker: &Tracker, buf: &[u8], remote: SocketAddr, out: &mut Vec<u8>) -> Head {
        match crate::h1::serve_one(tracker, buf, remote, out) {
            crate::h1::Head::Partial => Head::Partial,
            crate::h1::Head::Other => Head::Other,
            crate::h1::Head::Answered { len, keep_alive } => Head::Answered { len, keep_alive },
            crate::h1::Head::Rejected => Head::Rejected,
        }
    }
}

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::http::{HeaderMap, HeaderName};
use torrent_format::InfoHash;

pub use http::app;
pub use redis_store::RedisStore;
pub use store::{Limits, MemoryStore, SwarmStore};

use request::{AnnounceRequest, Event};
use swarm::{canonical_ip, Announcer};

/// The most peers one reply holds, whatever the configuration says (a
/// reply of this many IPv6 peers is 180 kB already).
pub const MAX_NUMWANT: usize = 10_000;

/// Tracker policy. Times are in seconds.
#[derive(Debug, Clone)]
pub struct Config {
    pub interval: u32,
    pub min_interval: u32,
    /// Peers not heard from for this long are dropped.
    pub peer_timeout: u32,
    pub default_numwant: usize,
    /// At most [`MAX_NUMWANT`].
    pub max_numwant: usize,
    /// Take the client address from this header (rightmost entry), for use
    /// behind a reverse proxy.
    pub real_ip_header: Option<HeaderName>,
    /// Honour the `ip` query parameter.
    pub trust_ip_param: bool,
    /// One hex info hash per line; only those swarms are served.
    pub whitelist: Option<PathBuf>,
    /// One passkey per line; announces must come to `/<key>/announce`.
    pub keys: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interval: 1800,
            min_interval: 900,
            peer_timeout: 3600,
            default_numwant: 50,
            max_numwant: 200,
            real_ip_header: None,
            trust_ip_param: false,
            whitelist: None,
            keys: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

#[derive(Debug, Default)]
struct Counters {
    /// Over both protocols.
    announces: AtomicU64,
    scrapes: AtomicU64,
    failures: AtomicU64,
    /// Of which over UDP (BEP 15).
    udp_announces: AtomicU64,
    udp_scrapes: AtomicU64,
    udp_failures: AtomicU64,
    udp_connects: AtomicU64,
    /// Datagrams dropped unanswered (malformed, not ours).
    udp_dropped: AtomicU64,
    /// Announces per second over the last measuring period, × 1000.
    rate_milli: AtomicU64,
}

/// Where the swarms are.
pub enum Store {
    /// In this process; answered synchronously (the server's fast paths).
    Memory(Box<dyn SwarmStore>),
    /// In Redis, shared with other instances; every request awaits it.
    Redis(Box<RedisStore>),
}

/// What the store is asked for one announce, once policy has passed it.
#[derive(Debug, Clone)]
pub(crate) struct Ask {
    pub info_hash: InfoHash,
    pub who: Announcer,
    pub numwant: usize,
    pub compact: bool,
}

/// The tracker: policy, lists and counters around a [`Store`].
pub struct Tracker {
    config: Config,
    store: Store,
    whitelist: RwLock<Option<Arc<List<InfoHash>>>>,
    keys: RwLock<Option<Arc<List<String>>>>,
    started: Instant,
    counters: Counters,
    /// The last full walk of the store for the stats pages.
    stats_cache: std::sync::Mutex<Option<(Instant, store::StoreStats)>>,
}

/// A whitelist or passkey list: looked up on every announce, so with a fast
/// hasher (the lists come from the operator, not from clients).
type List<T> = HashSet<T, foldhash::fast::RandomState>;

/// A request outcome the HTTP layer turns into a reply.
type Reply = Result<Vec<u8>, String>;

impl Tracker {
    /// A tracker over an in-memory `store`, with the whitelist and
    /// passkeys loaded.
    pub fn new(config: Config, store: Box<dyn SwarmStore>) -> Result<Tracker, LoadError> {
        Tracker::with_store(config, Store::Memory(store))
    }

    /// A tracker over any [`Store`].
    pub fn with_store(mut config: Config, store: Store) -> Result<Tracker, LoadError> {
        config.max_numwant = config.max_numwant.min(MAX_NUMWANT);
        config.default_numwant = config.default_numwant.min(config.max_numwant);
        let t = Tracker {
            config,
            store,
            whitelist: RwLock::new(None),
            keys: RwLock::new(None),
            started: Instant::now(),
            counters: Counters::default(),
            stats_cache: std::sync::Mutex::new(None),
        };
        t.reload()?;
        Ok(t)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether the store must be awaited (so the synchronous fast paths
    /// hand announces and scrapes to the async ones).
    pub(crate) fn is_async(&self) -> bool {
        matches!(self.store, Store::Redis(_))
    }

    /// (Re-)reads the whitelist and passkey files. On error the old lists
    /// stay in force.
    pub fn reload(&self) -> Result<(), LoadError> {
        let whitelist = match &self.config.whitelist {
            Some(path) => Some(Arc::new(read_list(path, |s| {
                s.parse::<InfoHash>().map_err(|e| e.to_string())
            })?)),
            None => None,
        };
        let keys = match &self.config.keys {
            Some(path) => Some(Arc::new(read_list(path, |s| {
                if s.len() <= 128
                    && s.bytes()
                        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
                {
                    Ok(s.to_string())
                } else {
                    Err("a passkey is 1-128 characters of A-Z a-z 0-9 - _".to_string())
                }
            })?)),
            None => None,
        };
        *self.whitelist.write().unwrap_or_else(|p| p.into_inner()) = whitelist;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        Ok(())
    }

    /// Seconds since the tracker started: the clock swarms are kept on.
    pub fn now(&self) -> u32 {
        self.started.elapsed().as_secs() as u32
    }

    /// Drops peers not heard from within the timeout; returns how many.
    pub fn sweep(&self) -> usize {
        let cutoff = self.now().saturating_sub(self.config.peer_timeout);
        match &self.store {
            Store::Memory(store) => store.sweep(cutoff),
            // Redis drops expired peers as it goes, and empty swarms expire.
            Store::Redis(_) => 0,
        }
    }

    /// Updates the announces-per-second figure; `since` is the count and
    /// time of the previous call.
    pub fn measure_rate(&self, since: (u64, Instant)) -> (u64, Instant) {
        let count = self.counters.announces.load(Ordering::Relaxed);
        let now = Instant::now();
        let secs = now.duration_since(since.1).as_secs_f64();
        if secs > 0.0 {
            let rate = (count.saturating_sub(since.0)) as f64 / secs;
            self.counters
                .rate_milli
                .store((rate * 1000.0) as u64, Ordering::Relaxed);
        }
        (count, now)
    }

    pub fn announce_count(&self) -> u64 {
        self.counters.announces.load(Ordering::Relaxed)
    }

    fn check_key(&self, key: Option<&str>) -> Result<(), String> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        match (keys.as_deref(), key) {
            (None, None) => Ok(()),
            (None, Some(_)) => Err("passkeys are not enabled on this tracker".into()),
            (Some(_), None) => {
                Err("this tracker needs a passkey: announce to /<passkey>/announce".into())
            }
            (Some(keys), Some(k)) if keys.contains(k) => Ok(()),
            (Some(_), Some(_)) => Err("unknown passkey".into()),
        }
    }

    fn check_listed(&self, h: &InfoHash) -> Result<(), String> {
        match &*self.whitelist.read().unwrap_or_else(|p| p.into_inner()) {
            Some(list) if !list.contains(h) => {
                Err(format!("torrent {h} is not registered with this tracker"))
            }
            _ => Ok(()),
        }
    }

    /// The address peers should use to reach the announcer.
    fn client_ip(
        &self,
        remote: IpAddr,
        headers: &HeaderMap,
        req: &AnnounceRequest,
    ) -> Result<IpAddr, String> {
        let mut ip = remote;
        if let Some(name) = &self.config.real_ip_header {
            // The rightmost entry of the last header line is the one our
            // proxy wrote (some proxies add a line rather than append).
            let value = headers
                .get_all(name)
                .iter()
                .next_back()
                .ok_or_else(|| format!("missing {name} header"))?;
            let value = value
                .to_str()
                .map_err(|_| format!("unreadable {name} header"))?;
            let last = value.rsplit(',').next().unwrap_or("").trim();
            ip = parse_forwarded_ip(last)
                .ok_or_else(|| format!("{name} header does not end with an IP address"))?;
        }
        if self.config.trust_ip_param {
            if let Some(p) = req.ip {
                ip = p;
            }
        }
        Ok(canonical_ip(ip))
    }

    /// Policy for an HTTP announce: counts it, checks the passkey, the
    /// query and the whitelist, and works out what to ask the store.
    fn announce_ask(
        &self,
        key: Option<&str>,
        query: &str,
        remote: SocketAddr,
        headers: &HeaderMap,
    ) -> Result<Ask, String> {
        self.counters.announces.fetch_add(1, Ordering::Relaxed);
        self.check_key(key)?;
        let req = request::parse_announce(query).map_err(|e| e.to_string())?;
        self.check_listed(&req.info_hash)?;
        let ip = self.client_ip(remote.ip(), headers, &req)?;
        let numwant = req
            .numwant
            .map_or(self.config.default_numwant, |n| n as usize)
            .min(self.config.max_numwant);
        let who = Announcer {
            ip,
            port: req.port,
            seeder: req.left == 0,
            event: req.event,
        };
        let numwant = if req.event == Event::Stopped {
            0
        } else {
            numwant
        };
        tracing::debug!(
            info_hash = %req.info_hash, %ip, port = req.port, left = req.left,
            event = ?req.event, numwant, "announce"
        );
        Ok(Ask {
            info_hash: req.info_hash,
            who,
            numwant,
            compact: req.compact,
        })
    }

    /// The store's answer at once; for an in-memory store only (an async
    /// store's requests never reach the synchronous paths).
    pub(crate) fn ask_now(&self, ask: &Ask) -> Result<swarm::AnnounceOutcome, String> {
        match &self.store {
            Store::Memory(store) => store
                .announce(ask.info_hash, ask.who, self.now(), ask.numwant, ask.compact)
                .map_err(|full| full.to_string()),
            Store::Redis(_) => Err("internal error: this store is asynchronous".into()),
        }
    }

    /// The store's answer, whatever the store.
    pub(crate) async fn ask(&self, ask: &Ask) -> Result<swarm::AnnounceOutcome, String> {
        match &self.store {
            Store::Memory(_) => self.ask_now(ask),
            Store::Redis(store) => store
                .announce(&ask.info_hash, ask.who, ask.numwant, ask.compact)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    fn announce_body(&self, outcome: &swarm::AnnounceOutcome, compact: bool) -> Vec<u8> {
        response::announce(
            outcome,
            self.config.interval,
            self.config.min_interval,
            compact,
        )
    }

    /// Handles `/announce` (or `/<key>/announce`) with an in-memory store.
    pub fn announce(
        &self,
        key: Option<&str>,
        query: &str,
        remote: SocketAddr,
        headers: &HeaderMap,
    ) -> Reply {
        let ask = self.announce_ask(key, query, remote, headers)?;
        let outcome = self.ask_now(&ask)?;
        Ok(self.announce_body(&outcome, ask.compact))
    }

    /// Handles `/announce` (or `/<key>/announce`) with any store.
    pub async fn announce_async(
        &self,
        key: Option<&str>,
        query: &str,
        remote: SocketAddr,
        headers: &HeaderMap,
    ) -> Reply {
        let ask = self.announce_ask(key, query, remote, headers)?;
        let outcome = self.ask(&ask).await?;
        Ok(self.announce_body(&outcome, ask.compact))
    }

    /// Counts per hash at once (in-memory store only).
    pub(crate) fn scrape_now(
        &self,
        hashes: &[InfoHash],
    ) -> Result<Vec<store::ScrapeEntry>, String> {
        match &self.store {
            Store::Memory(store) => Ok(store.scrape(hashes)),
            Store::Redis(_) => Err("internal error: this store is asynchronous".into()),
        }
    }

    /// Counts per hash, whatever the store.
    pub(crate) async fn scrape_store(
        &self,
        hashes: &[InfoHash],
    ) -> Result<Vec<store::ScrapeEntry>, String> {
        match &self.store {
            Store::Memory(_) => self.scrape_now(hashes),
            Store::Redis(store) => store.scrape(hashes).await.map_err(|e| e.to_string()),
        }
    }

    /// Policy for an HTTP scrape: the listed hashes asked for.
    fn scrape_hashes(&self, key: Option<&str>, query: &str) -> Result<Vec<InfoHash>, String> {
        self.counters.scrapes.fetch_add(1, Ordering::Relaxed);
        self.check_key(key)?;
        let hashes = request::parse_scrape(query).map_err(|e| e.to_string())?;
        // Unlisted hashes are left out rather than failing the whole scrape.
        Ok(hashes
            .into_iter()
            .filter(|h| self.check_listed(h).is_ok())
            .collect())
    }

    /// Handles `/scrape` (or `/<key>/scrape`) with an in-memory store.
    pub fn scrape(&self, key: Option<&str>, query: &str) -> Reply {
        let hashes = self.scrape_hashes(key, query)?;
        let entries = self.scrape_now(&hashes)?;
        Ok(response::scrape(&hashes, &entries))
    }

    /// Handles `/scrape` (or `/<key>/scrape`) with any store.
    pub async fn scrape_async(&self, key: Option<&str>, query: &str) -> Reply {
        let hashes = self.scrape_hashes(key, query)?;
        let entries = self.scrape_store(&hashes).await?;
        Ok(response::scrape(&hashes, &entries))
    }

    fn count_failure(&self) {
        self.counters.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Policy for an announce over UDP (BEP 15): the same as HTTP's, at
    /// most `max_peers` peers (what fits one datagram), compact always.
    pub(crate) fn udp_ask(
        &self,
        key: Option<&str>,
        req: &udp::UdpAnnounce,
        remote: SocketAddr,
        max_peers: usize,
    ) -> Result<Ask, String> {
        self.counters.announces.fetch_add(1, Ordering::Relaxed);
        self.counters.udp_announces.fetch_add(1, Ordering::Relaxed);
        self.check_key(key)?;
        self.check_listed(&req.info_hash)?;
        let mut ip = canonical_ip(remote.ip());
        // The `ip` field is an IPv4 address: taken (if trusted) only from
        // IPv4 announcers, whose reply carries IPv4 peers. An IPv6
        // announcer's reply must hold IPv6 peers, so its address stays.
        if self.config.trust_ip_param && ip.is_ipv4() {
            if let Some(p) = req.ip {
                ip = IpAddr::V4(p);
            }
        }
        let numwant = if req.event == Event::Stopped {
            0
        } else {
            req.numwant
                .map_or(self.config.default_numwant, |n| n as usize)
                .min(self.config.max_numwant)
                .min(max_peers)
        };
        let who = Announcer {
            ip,
            port: req.port,
            seeder: req.left == 0,
            event: req.event,
        };
        tracing::debug!(
            info_hash = %req.info_hash, %ip, port = req.port, left = req.left,
            event = ?req.event, numwant, "announce (udp)"
        );
        Ok(Ask {
            info_hash: req.info_hash,
            who,
            numwant,
            compact: true,
        })
    }

    /// Policy for a scrape over UDP (the hashes come from the datagram).
    pub(crate) fn udp_scrape_check(&self, key: Option<&str>) -> Result<(), String> {
        self.counters.scrapes.fetch_add(1, Ordering::Relaxed);
        self.counters.udp_scrapes.fetch_add(1, Ordering::Relaxed);
        self.check_key(key)
    }

    /// Zeros for the unlisted hashes of a UDP scrape's counts (in the
    /// order asked, so every hash keeps its place).
    pub(crate) fn udp_scrape_unlisted(
        &self,
        hashes: &[InfoHash],
        entries: &mut [store::ScrapeEntry],
    ) {
        for (h, e) in hashes.iter().zip(entries.iter_mut()) {
            if self.check_listed(h).is_err() {
                *e = store::ScrapeEntry {
                    complete: 0,
                    incomplete: 0,
                    downloaded: 0,
                };
            }
        }
    }

    fn count_udp(&self, o: udp::Outcome) {
        let c = &self.counters;
        match o {
            udp::Outcome::Connected => c.udp_connects.fetch_add(1, Ordering::Relaxed),
            udp::Outcome::Error => {
                c.failures.fetch_add(1, Ordering::Relaxed);
                c.udp_failures.fetch_add(1, Ordering::Relaxed)
            }
            udp::Outcome::Dropped => c.udp_dropped.fetch_add(1, Ordering::Relaxed),
            udp::Outcome::Announced | udp::Outcome::Scraped => 0,
        };
    }
}

/// An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `::1` or
/// `[::1]:5678`.
fn parse_forwarded_ip(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| s.strip_prefix('[')?.strip_suffix(']')?.parse().ok())
}

/// Reads one entry per line; blank lines and `#` comments are skipped.
fn read_list<T: std::hash::Hash + Eq>(
    path: &std::path::Path,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<List<T>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|error| LoadError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let mut set = List::default();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        set.insert(parse(line).map_err(|message| LoadError::Line {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        })?);
    }
    Ok(set)
}
