//! The tracker client: announces to HTTP(S) trackers (BEP 3, 23, 7) and UDP
//! trackers (BEP 15), and walks a torrent's tracker tiers (BEP 12).
//!
//! - [`http`]: query building and bencoded reply parsing (pure), plus the
//!   request itself over `reqwest`;
//! - [`udp`]: the BEP 15 packets as pure encode/decode functions, plus the
//!   exchange with retransmission back-off and a connection-id cache;
//! - [`TrackerClient`]: shared state (HTTP connection pool, UDP connection
//!   ids, timeouts) and [`TrackerClient::announce`], which picks the
//!   protocol by URL scheme;
//! - [`TrackerList`]: BEP 12 tiers — try in order, promote what answers.
//!
//! Every await is bounded: an HTTP announce by
//! [`TrackerConfig::http_timeout`], a UDP announce by
//! [`TrackerConfig::udp_budget`]. Replies are hostile input: sizes are
//! bounded before reading, nothing panics, and bad peer entries are
//! skipped rather than failing the whole reply. The caller schedules
//! re-announces from [`AnnounceResponse::interval`].

pub mod http;
pub mod udp;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;
use torrent_format::InfoHash;

/// Shortest re-announce interval accepted from a tracker.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Longest re-announce interval accepted from a tracker.
pub const MAX_INTERVAL: Duration = Duration::from_secs(2 * 60 * 60);
/// Interval assumed when an HTTP tracker's reply names none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// The announce `event` (BEP 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Event {
    /// A regular re-announce.
    #[default]
    None,
    /// The first announce of a download or seed.
    Started,
    /// The download just finished (sent once, not when starting as a seed).
    Completed,
    /// Leaving the swarm.
    Stopped,
}

impl Event {
    /// The HTTP `event` parameter value; `None` for a regular announce,
    /// which sends no parameter.
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Event::None => None,
            Event::Started => Some("started"),
            Event::Completed => Some("completed"),
            Event::Stopped => Some("stopped"),
        }
    }

    /// The BEP 15 event code.
    pub fn udp_code(self) -> u32 {
        match self {
            Event::None => 0,
            Event::Completed => 1,
            Event::Started => 2,
            Event::Stopped => 3,
        }
    }
}

/// What one announce tells the tracker.
#[derive(Debug, Clone)]
pub struct AnnounceParams {
    pub info_hash: InfoHash,
    pub peer_id: [u8; 20],
    /// The port this client accepts peer connections on.
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    /// Bytes still missing (0 for a seed).
    pub left: u64,
    pub event: Event,
    /// How many peers to ask for.
    pub numwant: u32,
    /// A random number fixed for the session, which lets a tracker
    /// recognise this client when its address changes (BEP 7).
    pub key: u32,
}

/// A tracker's answer to an announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceResponse {
    /// When to announce again, clamped to [`MIN_INTERVAL`]..=[`MAX_INTERVAL`].
    pub interval: Duration,
    /// Announce no sooner than this (clamped like `interval`).
    pub min_interval: Option<Duration>,
    /// Peers, IPv4 and IPv6, in the tracker's order; entries with port 0
    /// or an unusable address are left out.
    pub peers: Vec<SocketAddr>,
    pub seeders: Option<u32>,
    pub leechers: Option<u32>,
    /// The tracker's `warning message`: the announce worked, but tell the
    /// user.
    pub warning: Option<String>,
}

/// Clamps a tracker-given number of seconds to a usable interval.
pub(crate) fn clamp_interval(secs: i64) -> Duration {
    let secs = secs.clamp(MIN_INTERVAL.as_secs() as i64, MAX_INTERVAL.as_secs() as i64);
    Duration::from_secs(secs as u64)
}

/// Why an announce failed. Every variant says what to do: `Failure` is
/// the tracker refusing (show it to the user, don't hammer), the others
/// mean "try the next tracker, and this one again later". The messages
/// are short and never hold the announce URL (its query is hundreds of
/// percent-encoded bytes): they read after "tracker URL: ", which
/// [`AllFailed`] and the callers put first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrackerError {
    /// The tracker's own `failure reason` (HTTP) or error message (UDP).
    #[error("announce refused: {0}")]
    Failure(String),
    /// The HTTP tracker answered with a non-success status and no
    /// failure reason.
    #[error("HTTP {}", http_status(*.0))]
    Status(u16),
    /// No complete answer within this time.
    #[error("timed out (no answer in {0:?})")]
    Timeout(Duration),
    /// Name resolution, connection or socket error, in a few words
    /// ("DNS lookup failed", "connection refused").
    #[error("{0}")]
    Network(String),
    /// The reply is not what the protocol allows; says what is wrong.
    #[error("malformed reply: {0}")]
    Malformed(String),
    /// The reply body was larger than [`TrackerConfig::max_response_bytes`].
    #[error("reply larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// Not `http`, `https` or `udp` (e.g. WebTorrent's `wss`).
    #[error("unsupported tracker URL scheme {0:?} (http, https and udp are supported)")]
    UnsupportedScheme(String),
    #[error("invalid tracker URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A [`TrackerList`] with no URLs was asked to announce.
    #[error("no trackers to announce to")]
    NoTrackers,
}

/// "404 Not Found".
fn http_status(code: u16) -> String {
    match reqwest::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(reason) => format!("{code} {reason}"),
        None => code.to_string(),
    }
}

/// An I/O error in a few lowercase words, without "(os error N)":
/// "connection refused", "timed out", "network unreachable".
pub(crate) fn io_cause(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    let short = match e.kind() {
        K::ConnectionRefused => Some("connection refused"),
        K::ConnectionReset => Some("connection reset"),
        K::ConnectionAborted => Some("connection aborted"),
        K::TimedOut => Some("timed out"),
        K::AddrNotAvailable => Some("local address not available"),
        K::PermissionDenied => Some("permission denied"),
        _ => match e.raw_os_error() {
            Some(libc::ENETUNREACH) => Some("network unreachable"),
            Some(libc::EHOSTUNREACH) => Some("host unreachable"),
            _ => None,
        },
    };
    if let Some(s) = short {
        return s.to_string();
    }
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => "I/O error".to_string(),
    }
}

/// A tracker URL as it is shown to people: without its query (an
/// announce URL's query can hold a passkey) or fragment, "?…" standing in
/// for a query.
pub fn shown_url(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let mut shown = url[..end].to_string();
    if url[end..].starts_with('?') {
        shown.push_str("?…");
    }
    shown
}

/// No tracker of a walk answered: each one tried, in order, with its
/// error (none tried: the list is empty). Shown as "tracker URL: cause",
/// or each tracker's when several failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllFailed(pub Vec<(String, TrackerError)>);

impl AllFailed {
    /// The last tracker tried and its error.
    pub fn last(&self) -> Option<&(String, TrackerError)> {
        self.0.last()
    }
}

impl std::fmt::Display for AllFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        /// Shown in full; the rest are counted.
        const SHOWN: usize = 3;
        match self.0.as_slice() {
            [] => write!(f, "{}", TrackerError::NoTrackers),
            [(url, e)] => write!(f, "tracker {}: {e}", shown_url(url)),
            all => {
                write!(f, "no tracker answered: ")?;
                for (i, (url, e)) in all.iter().take(SHOWN).enumerate() {
                    let sep = if i == 0 { "" } else { "; " };
                    write!(f, "{sep}{}: {e}", shown_url(url))?;
                }
                match all.len().saturating_sub(SHOWN) {
                    0 => Ok(()),
                    1 => write!(f, "; and 1 more"),
                    n => write!(f, "; and {n} more"),
                }
            }
        }
    }
}

impl std::error::Error for AllFailed {}

/// Timeouts and limits. The defaults suit the Internet; tests shorten them.
#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// Bound on a whole HTTP announce: resolving, connecting, sending and
    /// reading the reply.
    pub http_timeout: Duration,
    /// BEP 15 retransmission timeout: the wait after a UDP send is
    /// `udp_timeout × 2^n`, n being the number of timeouts so far in this
    /// announce (BEP 15 says 15 s; shorter here so that a dead tracker
    /// does not hold up the next tier for minutes).
    pub udp_timeout: Duration,
    /// A UDP announce fails after this many timeouts (connect and announce
    /// requests together).
    pub udp_tries: u32,
    /// Largest HTTP reply body read.
    pub max_response_bytes: usize,
    /// The HTTP `User-Agent`.
    pub user_agent: String,
    /// Announce from this local address (so the tracker records the address
    /// the client listens on when the host has several).
    pub local_address: Option<std::net::IpAddr>,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            http_timeout: Duration::from_secs(15),
            // 4 + 8 + 16 = 28 s for a tracker that never answers.
            udp_timeout: Duration::from_secs(4),
            udp_tries: 3,
            max_response_bytes: 2 * 1024 * 1024,
            user_agent: concat!("shoal/", env!("CARGO_PKG_VERSION")).to_string(),
            local_address: None,
        }
    }
}

impl TrackerConfig {
    /// The longest a UDP announce can take: the sum of its retransmission
    /// waits, `udp_timeout × (2^udp_tries − 1)`.
    pub fn udp_budget(&self) -> Duration {
        (0..self.udp_tries).fold(Duration::ZERO, |sum, n| {
            sum.saturating_add(udp::retransmit_wait(self.udp_timeout, n))
        })
    }
}

/// Announces to trackers. Cheap to clone; clones share the HTTP connection
/// pool and the UDP connection ids.
#[derive(Clone)]
pub struct TrackerClient {
    inner: Arc<Inner>,
}

struct Inner {
    config: TrackerConfig,
    http: reqwest::Client,
    udp: udp::ConnectionCache,
}

impl TrackerClient {
    /// Fails only if the TLS backend cannot be set up.
    pub fn new(config: TrackerConfig) -> Result<TrackerClient, TrackerError> {
        let http = reqwest::Client::builder()
            .user_agent(config.user_agent.clone())
            .timeout(config.http_timeout)
            .redirect(reqwest::redirect::Policy::limited(5))
            // A fresh connection per announce: announces are minutes apart,
            // and trackers that close after each reply (opentracker) would
            // otherwise race a reused connection and reset it.
            .pool_max_idle_per_host(0)
            .local_address(config.local_address)
            .build()
            .map_err(|e| TrackerError::Network(format!("cannot set up HTTP client: {e}")))?;
        Ok(TrackerClient {
            inner: Arc::new(Inner {
                config,
                http,
                udp: udp::ConnectionCache::default(),
            }),
        })
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.inner.config
    }

    /// One announce to one tracker; `http://`, `https://` or `udp://` by
    /// the URL's scheme.
    pub async fn announce(
        &self,
        url: &str,
        params: &AnnounceParams,
    ) -> Result<AnnounceResponse, TrackerError> {
        let scheme = url.split_once("://").map_or("", |(s, _)| s);
        let config = &self.inner.config;
        if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") {
            http::announce(&self.inner.http, config, url, params).await
        } else if scheme.eq_ignore_ascii_case("udp") {
            udp::announce(&self.inner.udp, config, url, params).await
        } else if scheme.is_empty() {
            Err(TrackerError::InvalidUrl {
                url: url.to_string(),
                reason: "no scheme".to_string(),
            })
        } else {
            Err(TrackerError::UnsupportedScheme(scheme.to_string()))
        }
    }
}

/// A torrent's trackers as BEP 12 tiers: announce to the first tier's
/// URLs in order, then the next tier's, until one answers; that one moves
/// to the front of its tier so it is asked first next time.
///
/// A call can take the sum of the failing trackers' timeouts; run it in
/// its own task.
pub struct TrackerList {
    client: TrackerClient,
    tiers: Vec<Vec<String>>,
}

impl TrackerList {
    /// `tiers` as from `Metainfo::trackers()`. Each tier is shuffled once
    /// (BEP 12); blank and repeated URLs and then empty tiers are dropped.
    pub fn new<R: Rng + ?Sized>(
        client: TrackerClient,
        tiers: Vec<Vec<String>>,
        rng: &mut R,
    ) -> TrackerList {
        let mut seen = std::collections::HashSet::new();
        let tiers = tiers
            .into_iter()
            .map(|tier| {
                let mut tier: Vec<String> = tier
                    .into_iter()
                    .map(|u| u.trim().to_string())
                    .filter(|u| !u.is_empty() && seen.insert(u.clone()))
                    .collect();
                tier.shuffle(rng);
                tier
            })
            .filter(|tier| !tier.is_empty())
            .collect();
        TrackerList { client, tiers }
    }

    pub fn is_empty(&self) -> bool {
        self.tiers.is_empty()
    }

    /// The tiers in their current order (after shuffling and promotions).
    pub fn tiers(&self) -> &[Vec<String>] {
        &self.tiers
    }

    /// Tries the trackers in tier order, each tier's URLs in order; the
    /// first that answers is moved to the front of its tier. Returns that
    /// URL with its answer, or every tracker's error when all fail.
    pub async fn announce(
        &mut self,
        params: &AnnounceParams,
    ) -> Result<(String, AnnounceResponse), AllFailed> {
        let client = &self.client;
        announce_tiers(&mut self.tiers, |url| async move {
            client.announce(&url, params).await
        })
        .await
    }
}

/// The BEP 12 walk over `tiers` with `announce` as the transport, so the
/// ordering is testable without a network.
async fn announce_tiers<F, Fut>(
    tiers: &mut [Vec<String>],
    mut announce: F,
) -> Result<(String, AnnounceResponse), AllFailed>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<AnnounceResponse, TrackerError>>,
{
    let mut failed = Vec::new();
    for tier in tiers.iter_mut() {
        for i in 0..tier.len() {
            let url = tier[i].clone();
            match announce(url.clone()).await {
                Ok(response) => {
                    // Promote: shift the ones before it back by one.
                    tier[..=i].rotate_right(1);
                    tracing::debug!(%url, peers = response.peers.len(), "announced");
                    return Ok((url, response));
                }
                Err(error) => {
                    tracing::debug!("tracker {}: {error}", shown_url(&url));
                    failed.push((url, error));
                }
            }
        }
    }
    Err(AllFailed(failed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn ok() -> AnnounceResponse {
        AnnounceResponse {
            interval: Duration::from_secs(60),
            min_interval: None,
            peers: Vec::new(),
            seeders: None,
            leechers: None,
            warning: None,
        }
    }

    fn tiers(t: &[&[&str]]) -> Vec<Vec<String>> {
        t.iter()
            .map(|tier| tier.iter().map(|s| s.to_string()).collect())
            .collect()
    }

    /// Runs the BEP 12 walk with `alive` answering and the rest failing;
    /// returns the result and the URLs tried in order.
    fn walk(t: &mut [Vec<String>], alive: &[&str]) -> (Result<String, AllFailed>, Vec<String>) {
        let tried = RefCell::new(Vec::new());
        let result = block_on(announce_tiers(t, |url| {
            tried.borrow_mut().push(url.clone());
            let up = alive.contains(&url.as_str());
            async move {
                if up {
                    Ok(ok())
                } else {
                    Err(TrackerError::Network(format!("{url} is down")))
                }
            }
        }));
        (result.map(|(u, _)| u), tried.into_inner())
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn tiers_are_tried_in_order_and_the_one_that_answers_is_promoted() {
        let mut t = tiers(&[&["a1", "a2", "a3"], &["b1", "b2"]]);
        let (got, tried) = walk(&mut t, &["a3", "b1"]);
        assert_eq!(got.unwrap(), "a3");
        assert_eq!(tried, ["a1", "a2", "a3"]);
        assert_eq!(t, tiers(&[&["a3", "a1", "a2"], &["b1", "b2"]]));

        // Tier 1 all down: tier 2, and tier 2 is reordered, tier 1 is not.
        let (got, tried) = walk(&mut t, &["b2"]);
        assert_eq!(got.unwrap(), "b2");
        assert_eq!(tried, ["a3", "a1", "a2", "b1", "b2"]);
        assert_eq!(t, tiers(&[&["a3", "a1", "a2"], &["b2", "b1"]]));

        // The promoted one is asked first next time.
        let (got, tried) = walk(&mut t, &["a3", "b2"]);
        assert_eq!(got.unwrap(), "a3");
        assert_eq!(tried, ["a3"]);
    }

    #[test]
    fn all_failing_returns_the_last_error_and_keeps_the_order() {
        let mut t = tiers(&[&["a1", "a2"], &["b1"]]);
        let (got, tried) = walk(&mut t, &[]);
        let failed = got.unwrap_err();
        assert_eq!(
            failed.last(),
            Some(&("b1".to_string(), TrackerError::Network("b1 is down".into())))
        );
        assert_eq!(failed.0.len(), 3);
        assert_eq!(tried, ["a1", "a2", "b1"]);
        assert_eq!(t, tiers(&[&["a1", "a2"], &["b1"]]));

        let (got, tried) = walk(&mut [], &[]);
        assert_eq!(got.unwrap_err().to_string(), "no trackers to announce to");
        assert!(tried.is_empty());
    }

    #[test]
    fn failures_name_the_tracker_first_and_briefly() {
        let long = format!(
            "http://t.example:6969/announce?{}",
            "info_hash=%AB".repeat(40)
        );
        let one = AllFailed(vec![(
            long,
            TrackerError::Network("DNS lookup failed".into()),
        )]);
        assert_eq!(
            one.to_string(),
            "tracker http://t.example:6969/announce?…: DNS lookup failed"
        );
        let err = |n: u16| TrackerError::Status(n);
        let many = AllFailed(
            (0..5)
                .map(|i| (format!("http://t{i}/announce"), err(404)))
                .collect(),
        );
        assert_eq!(
            many.to_string(),
            "no tracker answered: http://t0/announce: HTTP 404 Not Found; \
             http://t1/announce: HTTP 404 Not Found; http://t2/announce: HTTP 404 Not Found; \
             and 2 more"
        );
        assert_eq!(shown_url("udp://t:80/announce#x"), "udp://t:80/announce");
        assert_eq!(
            TrackerError::Timeout(Duration::from_secs(15)).to_string(),
            "timed out (no answer in 15s)"
        );
        assert_eq!(
            io_cause(&std::io::Error::from_raw_os_error(libc::ECONNREFUSED)),
            "connection refused"
        );
        assert_eq!(
            io_cause(&std::io::Error::from_raw_os_error(libc::ENOSPC)),
            "no space left on device"
        );
    }

    #[test]
    fn new_shuffles_within_tiers_and_drops_blanks_and_repeats() {
        use rand::SeedableRng;
        let client = TrackerClient::new(TrackerConfig::default()).unwrap();
        let input = tiers(&[
            &["a", "b", "c", "d", "e", "f", "g", "h"],
            &[" ", "a"],
            &["x", "x"],
        ]);
        let mut shuffled_any = false;
        for seed in 0..20 {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let list = TrackerList::new(client.clone(), input.clone(), &mut rng);
            assert_eq!(
                list.tiers().len(),
                2,
                "the tier of only blanks/repeats is gone"
            );
            let mut first = list.tiers()[0].clone();
            shuffled_any |= first != input[0];
            first.sort();
            assert_eq!(first, input[0], "a tier keeps its URLs");
            assert_eq!(list.tiers()[1], ["x"]);
        }
        assert!(shuffled_any, "tiers are shuffled");
        let empty = TrackerList::new(client, Vec::new(), &mut rand::rng());
        assert!(empty.is_empty());
    }

    #[test]
    fn intervals_are_clamped() {
        assert_eq!(clamp_interval(-5), MIN_INTERVAL);
        assert_eq!(clamp_interval(0), MIN_INTERVAL);
        assert_eq!(clamp_interval(1800), Duration::from_secs(1800));
        assert_eq!(clamp_interval(i64::MAX), MAX_INTERVAL);
    }

    #[test]
    fn default_udp_budget_is_under_thirty_seconds() {
        let c = TrackerConfig::default();
        assert_eq!(c.udp_budget(), Duration::from_secs(28));
    }

    #[tokio::test]
    async fn unknown_schemes_are_refused() {
        let client = TrackerClient::new(TrackerConfig::default()).unwrap();
        let p = http::tests::params();
        assert_eq!(
            client.announce("wss://t.example/announce", &p).await,
            Err(TrackerError::UnsupportedScheme("wss".into()))
        );
        assert!(matches!(
            client.announce("t.example/announce", &p).await,
            Err(TrackerError::InvalidUrl { .. })
        ));
    }
}
