//! Swarms in Redis, so that several tracker instances (on one machine or
//! many, behind any load balancer or DNS round robin) serve one set of
//! swarms: a peer that announced to instance A is handed out by instance B.
//!
//! - **One round trip per announce.** A Lua script ([`ANNOUNCE`], loaded
//!   once and run by `EVALSHA`; `redis::Script` loads it again after a
//!   server restart) drops expired peers, applies the event, reads the
//!   counts and samples `numwant` peers. Each address family's seeders and
//!   leechers are a sorted set of compact entries scored by the second
//!   they expire on Redis's own clock (`TIME`), so instances whose clocks
//!   disagree still agree on expiry.
//! - **Cluster-ready keys**: `shoal:{<hex info hash>}:s4` (and `l4`, `s6`,
//!   `l6`, `n` for the completed count) share the info hash as their hash
//!   tag, so a script only ever touches one slot. Keys carry a TTL of the
//!   peer timeout (+ 60 s) from their last write, so an abandoned swarm
//!   vanishes on its own: there is no sweep, and never a `KEYS` or `SCAN`.
//! - **Scrape**: one script call per hash ([`SCRAPE`]), all in one
//!   pipeline, so one round trip whatever the number of hashes.
//! - **Pipelining**: each worker thread has its own multiplexed connection
//!   (`ConnectionManager`), which writes requests as they come without
//!   waiting for earlier replies: announces that arrive together go out
//!   together, and throughput is not bounded by one round trip at a time.
//!   A UDP batch's announces are issued at once for the same reason.
//! - **Outages**: every call has a deadline ([`Options::timeout`]); a
//!   failed or late one makes the request's reply a `failure reason` that
//!   says the store is unavailable. The outage is logged once when it
//!   starts and once when it ends, not per request, and the connection
//!   manager reconnects on its own. Calls, errors and latency are counted
//!   for `/metrics`.

use std::cell::RefCell;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Value};
use torrent_format::InfoHash;

use crate::request::Event;
use crate::store::ScrapeEntry;
use crate::swarm::{canonical_ip, AnnounceOutcome, Announcer, Sample};

/// The announce script: see its header for keys, arguments and reply.
pub const ANNOUNCE: &str = include_str!("redis/announce.lua");
/// The scrape script (one swarm).
pub const SCRAPE: &str = include_str!("redis/scrape.lua");

/// The oldest Redis that runs the scripts: one that replicates scripts by
/// their effects (the default since 5.0), as reading `TIME` needs.
const MIN_VERSION: (u32, u32) = (5, 0);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Redis could not be reached, or did not answer in time. (Short: a
    /// UDP error reply may be no longer than its request, 36 bytes for a
    /// scrape of one hash.)
    #[error("tracker store unavailable")]
    Unavailable,
    /// The swarm is at its cap, or Redis at its `maxmemory`.
    #[error("tracker is full")]
    Full,
}

/// Why a Redis store cannot be used at all (at start-up).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{url}: not a Redis URL: {reason} (try redis://HOST:PORT or redis://HOST:PORT/DB)")]
    Url { url: String, reason: String },
    #[error("{url}: Redis {found} is too old: 5.0 or newer is needed")]
    TooOld { url: String, found: String },
    #[error("{url}: Redis refused the credentials: {reason}")]
    Auth { url: String, reason: String },
}

/// A Redis URL as it may be shown: any user name and password left out.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The authority ends at the first '/', '?' or '#'; credentials end at
    // its last '@'.
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Peers not heard from for this long are dropped (seconds).
    pub peer_timeout: u32,
    /// The longest a store call may take before its request is answered
    /// with "unavailable".
    pub timeout: Duration,
    /// New peers beyond this many in one swarm get "tracker is full".
    pub max_swarm_peers: usize,
}

/// Health figures for `/metrics` and `/stats`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreHealth {
    /// `redis://host:port/db`, without any password (for logs, not for
    /// the public stats pages).
    #[serde(skip)]
    pub url: String,
    pub up: bool,
    pub calls_total: u64,
    pub errors_total: u64,
    /// Times the store went from up to down: 3 failed calls in a row, or
    /// failures for a second (a single failure is an error, not an outage).
    pub outages_total: u64,
    /// Requests answered "unavailable" during an outage without asking
    /// Redis (it is probed every 250 ms instead).
    pub shed_total: u64,
    /// Sum of call latencies (seconds), for an average over calls.
    pub latency_seconds_sum: f64,
}

pub struct RedisStore {
    /// Tells this store's connections apart in each thread's cache.
    id: usize,
    client: redis::Client,
    manager: ConnectionManagerConfig,
    announce: redis::Script,
    scrape: redis::Script,
    opts: Options,
    url: String,
    down: AtomicBool,
    calls: AtomicU64,
    errors: AtomicU64,
    outages: AtomicU64,
    shed: AtomicU64,
    micros: AtomicU64,
    /// Failed calls in a row (any thread); a success resets it.
    failures: AtomicU64,
    /// When the current run of failures began, in ms since `epoch` (0:
    /// none).
    failing_since: AtomicU64,
    /// During an outage: when the last probe went (ms since `epoch`).
    last_probe: AtomicU64,
    epoch: Instant,
}

/// An outage begins after this many failed calls in a row ...
const OUTAGE_AFTER_FAILURES: u64 = 3;
/// ... or after failures for this long (ms).
const OUTAGE_AFTER_MS: u64 = 1000;
/// During an outage one request in this long (ms) asks Redis; the others
/// are answered at once.
const PROBE_EVERY_MS: u64 = 250;

thread_local! {
    /// One connection per thread and store: each tracker worker thread
    /// (a current-thread runtime) pipelines its own requests, with no
    /// hop to another thread.
    static CONNECTIONS: RefCell<Vec<(usize, ConnectionManager)>> = const { RefCell::new(Vec::new()) };
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// The five keys of a swarm, the announcer's family's lists first.
fn keys(h: &InfoHash, v6_first: bool) -> [String; 5] {
    let hex = h.to_hex();
    let k = |suffix: &str| format!("shoal:{{{hex}}}:{suffix}");
    let (mine, other) = if v6_first { ("6", "4") } else { ("4", "6") };
    [
        k(&format!("s{mine}")),
        k(&format!("l{mine}")),
        k(&format!("s{other}")),
        k(&format!("l{other}")),
        k("n"),
    ]
}

/// The URL as it may be shown: the password, if any, left out.
fn display_url(info: &redis::ConnectionInfo) -> String {
    format!("{}", info.addr()) + &format!("/{}", info.redis_settings().db())
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://HOST:PORT[/DB]`). Connects
    /// lazily: a Redis that is down at start is an outage like any other.
    pub fn open(url: &str, opts: Options) -> Result<RedisStore, OpenError> {
        let bad = |reason: String| OpenError::Url {
            url: redact(url),
            reason,
        };
        use redis::IntoConnectionInfo;
        let info = url.into_connection_info().map_err(|e| bad(e.to_string()))?;
        // Requests are small and latency is everything: no Nagle delay.
        // A Redis that stops acknowledging (gone without a reset) drops
        // the connection, so that it is made again.
        let tcp = redis::io::tcp::TcpSettings::default()
            .set_nodelay(true)
            .set_user_timeout(opts.timeout.max(Duration::from_secs(1)));
        let client =
            redis::Client::open(info.set_tcp_settings(tcp)).map_err(|e| bad(e.to_string()))?;
        let shown = format!("redis://{}", display_url(client.get_connection_info()));
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.timeout))
            .set_response_timeout(Some(opts.timeout))
            // Retries are the next request's business: a request waits for
            // one connection attempt at most, within its deadline.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        Ok(RedisStore {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            client,
            manager,
            announce: redis::Script::new(ANNOUNCE),
            scrape: redis::Script::new(SCRAPE),
            opts,
            url: shown,
            down: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            outages: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            micros: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            failing_since: AtomicU64::new(0),
            last_probe: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// `redis://host:port/db`, without a password.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Checks the server at start-up: reachable (`Ok(Err(reason))` when
    /// not: the tracker starts anyway and recovers when Redis comes), new
    /// enough and the credentials right (`Err` when not: that will not fix
    /// itself), scripts loaded. Warns when nothing bounds Redis's memory.
    pub async fn check(&self) -> Result<Result<(), String>, OpenError> {
        let exchange = async {
            let mut c = self.connection()?;
            let server: String = redis::cmd("INFO").arg("server").query_async(&mut c).await?;
            let memory: String = redis::cmd("INFO").arg("memory").query_async(&mut c).await?;
            self.announce.load_async(&mut c).await?;
            self.scrape.load_async(&mut c).await?;
            RedisResult::Ok((server, memory))
        };
        let (server, memory) = match tokio::time::timeout(self.opts.timeout, exchange).await {
            Ok(Ok(info)) => info,
            Ok(Err(e))
                if e.kind() == redis::ErrorKind::AuthenticationFailed
                    || matches!(e.code(), Some("NOAUTH" | "WRONGPASS")) =>
            {
                return Err(OpenError::Auth {
                    url: self.url.clone(),
                    reason: e.to_string(),
                })
            }
            Ok(Err(e)) => return Ok(Err(e.to_string())),
            Err(_) => return Ok(Err(format!("no answer within {:?}", self.opts.timeout))),
        };
        let field = |info: &str, name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let version = field(&server, "redis_version");
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let found = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        if found < MIN_VERSION {
            return Err(OpenError::TooOld {
                url: self.url.clone(),
                found: version,
            });
        }
        if field(&memory, "maxmemory") == "0" {
            tracing::warn!(
                "swarm store {}: Redis has no maxmemory, so nothing bounds what announces \
                 can make it hold; set maxmemory (with the noeviction policy, new peers then \
                 get \"tracker is full\")",
                self.url
            );
        }
        Ok(Ok(()))
    }

    /// This thread's connection (made on first use, in this thread's
    /// runtime).
    fn connection(&self) -> RedisResult<ConnectionManager> {
        CONNECTIONS.with(|c| {
            let mut c = c.borrow_mut();
            if let Some((_, m)) = c.iter().find(|(id, _)| *id == self.id) {
                return Ok(m.clone());
            }
            let m =
                ConnectionManager::new_lazy_with_config(self.client.clone(), self.manager.clone())?;
            c.push((self.id, m.clone()));
            Ok(m)
        })
    }

    /// Runs one exchange with Redis under the deadline, keeping the
    /// health figures. An exchange that finds its connection dropped
    /// (Redis restarted since this thread last used it) is tried once more
    /// on the new one. Redis out of memory (`OOM`) is "full", not a
    /// failure. Three failures in a row, or failures for a second, make
    /// an outage, logged once at its start and once at its end; during
    /// one, a request every 250 ms asks Redis and the others are answered
    /// "unavailable" at once, so a hung Redis costs them no wait.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        // Never 0, which means "none" in the fields it goes into.
        let now_ms = self.epoch.elapsed().as_millis() as u64 + 1;
        if self.down.load(Ordering::Relaxed) {
            let last = self.last_probe.load(Ordering::Relaxed);
            let probe = now_ms >= last + PROBE_EVERY_MS
                && self
                    .last_probe
                    .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok();
            if !probe {
                self.shed.fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::Unavailable);
            }
        }
        let started = Instant::now();
        let exchange = async {
            let first = f(self.connection()?).await;
            match first {
                Err(e) if e.is_connection_dropped() || e.is_connection_refusal() => {
                    f(self.connection()?).await
                }
                r => r,
            }
        };
        let result = match tokio::time::timeout(self.opts.timeout, exchange).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.code() == Some("OOM") => Err(Ok(StoreError::Full)),
            Ok(Err(e)) => Err(Err(e.to_string())),
            Err(_) => Err(Err(format!("no answer within {:?}", self.opts.timeout))),
        };
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let e = match result {
            Ok(v) => {
                self.answered();
                return Ok(v);
            }
            Err(Ok(full)) => {
                self.answered();
                return Err(full);
            }
            Err(Err(e)) => e,
        };
        self.errors.fetch_add(1, Ordering::Relaxed);
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let since = match self.failing_since.compare_exchange(
            0,
            now_ms,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => now_ms,
            Err(since) => since,
        };
        let sustained = failures >= OUTAGE_AFTER_FAILURES || now_ms - since >= OUTAGE_AFTER_MS;
        if sustained && !self.down.swap(true, Ordering::Relaxed) {
            // The next probe is due a while after this call ended, not
            // after it began (it may have waited for its whole deadline).
            let ended_ms = self.epoch.elapsed().as_millis() as u64 + 1;
            self.last_probe.store(ended_ms, Ordering::Relaxed);
            self.outages.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                "swarm store {} unavailable: {e}; announces get a failure reason until it is back",
                self.url
            );
        } else {
            tracing::debug!("swarm store {}: {e}", self.url);
        }
        Err(StoreError::Unavailable)
    }

    /// Redis answered: any run of failures (and outage) is over.
    fn answered(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.failing_since.store(0, Ordering::Relaxed);
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::Relaxed) {
            tracing::info!("swarm store {} is back", self.url);
        }
    }

    /// Records an announce and picks up to `numwant` peers of the
    /// announcer's family (see the script for the rules, which are
    /// [`crate::swarm::Swarm::announce`]'s).
    pub async fn announce(
        &self,
        info_hash: &InfoHash,
        who: Announcer,
        numwant: usize,
        compact: bool,
    ) -> Result<AnnounceOutcome, StoreError> {
        let ip = canonical_ip(who.ip);
        let mut me = Vec::with_capacity(18);
        match ip {
            IpAddr::V4(v4) => me.extend_from_slice(&v4.octets()),
            IpAddr::V6(v6) => me.extend_from_slice(&v6.octets()),
        }
        me.extend_from_slice(&who.port.to_be_bytes());
        let v6 = ip.is_ipv6();
        let event = match who.event {
            Event::None => 0,
            Event::Completed => 1,
            Event::Started => 2,
            Event::Stopped => 3,
        };
        let mut inv = self.announce.prepare_invoke();
        for k in keys(info_hash, v6) {
            inv.key(k);
        }
        inv.arg(&me[..])
            .arg(if who.seeder { "1" } else { "0" })
            .arg(event)
            .arg(numwant)
            .arg(self.opts.peer_timeout)
            .arg(rand::random::<u32>())
            .arg(self.opts.max_swarm_peers);
        let inv = &inv;
        let reply: Vec<Value> = self
            .call(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        parse_announce(&reply, v6, numwant, compact).ok_or_else(|| {
            // Only a script of another version could answer so.
            self.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("swarm store {}: unexpected announce reply", self.url);
            StoreError::Unavailable
        })?
    }

    /// Counts per hash, zeros for unknown swarms, in one round trip.
    pub async fn scrape(&self, hashes: &[InfoHash]) -> Result<Vec<ScrapeEntry>, StoreError> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        // Errors come back as values, so a missing script is seen.
        pipe.ignore_errors();
        for h in hashes {
            let cmd = pipe.cmd("EVALSHA").arg(self.scrape.get_hash()).arg(5);
            for k in keys(h, false) {
                cmd.arg(k);
            }
        }
        let pipe = &pipe;
        let values: Vec<Value> = self
            .call(|mut c| async move {
                let values: Vec<Value> = pipe.query_async(&mut c).await?;
                if values.iter().any(is_noscript) {
                    // Redis restarted since the script was loaded.
                    self.scrape.load_async(&mut c).await?;
                    return pipe.query_async(&mut c).await;
                }
                Ok(values)
            })
            .await?;
        let counts: Option<Vec<ScrapeEntry>> = (values.len() == hashes.len())
            .then(|| values.iter().map(parse_counts).collect())
            .flatten();
        counts.ok_or_else(|| {
            // Only a script of another version could answer so.
            self.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("swarm store {}: unexpected scrape reply", self.url);
            StoreError::Unavailable
        })
    }

    pub fn health(&self) -> StoreHealth {
        StoreHealth {
            url: self.url.clone(),
            up: !self.down.load(Ordering::Relaxed),
            calls_total: self.calls.load(Ordering::Relaxed),
            errors_total: self.errors.load(Ordering::Relaxed),
            outages_total: self.outages.load(Ordering::Relaxed),
            shed_total: self.shed.load(Ordering::Relaxed),
            latency_seconds_sum: self.micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

fn is_noscript(v: &Value) -> bool {
    matches!(v, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript))
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

fn count(v: &Value) -> Option<usize> {
    int(v).and_then(|n| usize::try_from(n).ok())
}

/// `{complete, incomplete, downloaded}` from the scrape script.
fn parse_counts(v: &Value) -> Option<ScrapeEntry> {
    let Value::Array(items) = v else {
        return None;
    };
    let [c, i, d] = items.as_slice() else {
        return None;
    };
    Some(ScrapeEntry {
        complete: count(c)?,
        incomplete: count(i)?,
        downloaded: u64::try_from(int(d)?).ok()?,
    })
}

/// The announce script's reply: `{-1}` (full), or the counts, the
/// completed count and the peers as compact entries of the announcer's
/// family. Entries of another width are skipped, and at most `numwant`
/// are taken, whatever the reply holds.
fn parse_announce(
    reply: &[Value],
    v6: bool,
    numwant: usize,
    compact: bool,
) -> Option<Result<AnnounceOutcome, StoreError>> {
    if let [only] = reply {
        return (int(only)? == -1).then_some(Err(StoreError::Full));
    }
    let [c, i, _downloaded, peers @ ..] = reply else {
        return None;
    };
    let width = if v6 { 18 } else { 6 };
    let entries = peers
        .iter()
        .filter_map(|p| match p {
            Value::BulkString(b) if b.len() == width => Some(b.as_slice()),
            _ => None,
        })
        .take(numwant);
    let mut sample = Sample {
        v6,
        ..Sample::default()
    };
    if compact {
        for e in entries {
            sample.compact.extend_from_slice(e);
        }
    } else {
        sample.dicts = entries.filter_map(|e| peer_of(e, v6)).collect();
    }
    Some(Ok(AnnounceOutcome {
        complete: count(c)?,
        incomplete: count(i)?,
        peers: sample,
    }))
}

/// A compact entry as an address and port; `None` for any other length.
fn peer_of(e: &[u8], v6: bool) -> Option<(IpAddr, u16)> {
    let ip = match (v6, e.len()) {
        (true, 18) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&e[..16]).ok()?)),
        (false, 6) => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&e[..4]).ok()?)),
        _ => return None,
    };
    Some((ip, u16::from_be_bytes([e[e.len() - 2], e[e.len() - 1]])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_never_shown() {
        assert_eq!(
            redact("redis://:hunter2@db:6379/1"),
            "redis://***@db:6379/1"
        );
        assert_eq!(redact("redis://u:p@ss@db:6379"), "redis://***@db:6379");
        assert_eq!(redact("redis://db:6379/0"), "redis://db:6379/0");
        assert_eq!(redact("redis://db/x@y"), "redis://db/x@y");
        let e = RedisStore::open(
            "redis://:hunter2@db:99999",
            Options {
                peer_timeout: 1,
                timeout: Duration::from_secs(1),
                max_swarm_peers: 1,
            },
        )
        .err()
        .unwrap();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn keys_share_the_hash_tag_and_put_the_family_first() {
        let h = InfoHash([0xab; 20]);
        let k = keys(&h, true);
        let tag = format!("{{{}}}", h.to_hex());
        assert!(k.iter().all(|k| k.contains(&tag)));
        assert!(k[0].ends_with(":s6") && k[1].ends_with(":l6"));
        assert!(k[2].ends_with(":s4") && k[3].ends_with(":l4"));
        assert!(k[4].ends_with(":n"));
    }

    #[test]
    fn replies_are_checked_not_trusted() {
        let peer = Value::BulkString(vec![10, 0, 0, 1, 0x1a, 0xe1]);
        let odd = Value::BulkString(vec![1, 2, 3]);
        let reply = [
            Value::Int(2),
            Value::Int(3),
            Value::Int(0),
            peer.clone(),
            odd,
            peer.clone(),
            peer,
        ];
        let o = parse_announce(&reply, false, 2, true).unwrap().unwrap();
        assert_eq!((o.complete, o.incomplete), (2, 3));
        // The odd entry is skipped, and no more than numwant are taken.
        assert_eq!(o.peers.compact.len(), 12);
        let o = parse_announce(&reply, false, 50, false).unwrap().unwrap();
        assert_eq!(o.peers.dicts.len(), 3);
        assert_eq!(o.peers.dicts[0], ("10.0.0.1".parse().unwrap(), 6881));
        assert_eq!(
            parse_announce(&[Value::Int(-1)], false, 5, true),
            Some(Err(StoreError::Full))
        );
        assert_eq!(parse_announce(&[Value::Int(-2)], false, 5, true), None);
        assert_eq!(
            parse_announce(&[Value::Int(-1), Value::Nil], false, 5, true),
            None
        );
        assert_eq!(
            parse_announce(
                &[Value::Int(-1), Value::Int(0), Value::Int(0)],
                false,
                5,
                true
            ),
            None
        );
    }
}
