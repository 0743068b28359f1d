//! `shoal tracker`: run the HTTP tracker.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracker::server::{self, ServeOptions};
use tracker::{redis_store, Config, Limits, MemoryStore, RedisStore, Store, Tracker};

/// Largest `--numwant` / `--max-numwant` (the tracker's own cap).
const MAX_NUMWANT: i64 = tracker::MAX_NUMWANT as i64;

const EXAMPLES: &str = "\
Examples:
  shoal tracker                                   HTTP and UDP (BEP 15) on 0.0.0.0:6969
  shoal tracker --listen 0.0.0.0:6969 --listen [::]:6969
  shoal tracker --no-http                         a UDP tracker only
  shoal tracker --whitelist hashes.txt            serve only the listed info hashes
  shoal tracker --keys passkeys.txt               private: announce to /<passkey>/announce
  shoal tracker --real-ip-header X-Forwarded-For  behind a reverse proxy
  shoal tracker --store redis://10.0.0.5:6379     swarms in Redis, shared by every instance
                                                  started with the same --store

Then make torrents that use it:
  shoal create my-album/ -a udp://tracker.example:6969 -a http://tracker.example:6969/announce

HTTP routes: /announce, /scrape (BEP 48), /stats (HTML), /stats.json, /metrics (Prometheus).
UDP: connect, announce, scrape (BEP 15); with --keys, udp://HOST:PORT/<passkey>/announce (BEP 41).
SIGHUP re-reads --whitelist and --keys; Ctrl-C or SIGTERM stops gracefully.";

/// Run a BitTorrent tracker (HTTP and UDP)
#[derive(clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Address to listen on, HTTP on TCP and BEP 15 on UDP (repeatable, e.g.
    /// once for IPv4 and once for IPv6); a host name is resolved now
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:6969", value_parser = super::parse_listen)]
    listen: Vec<SocketAddr>,
    /// Serve no UDP tracker (BEP 15)
    #[arg(long, conflicts_with = "no_http")]
    no_udp: bool,
    /// Serve no HTTP tracker (and no stats pages)
    #[arg(long)]
    no_http: bool,
    /// How often clients should announce (e.g. 1800, 30m)
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_secs)]
    interval: u32,
    /// The shortest announce interval clients should keep to [default: interval / 2]
    #[arg(long, value_name = "DURATION", value_parser = parse_secs)]
    min_interval: Option<u32>,
    /// Forget peers not heard from for this long [default: 2 × interval]
    #[arg(long, value_name = "DURATION", value_parser = parse_secs)]
    peer_timeout: Option<u32>,
    /// Peers per reply when the client does not say
    #[arg(long, value_name = "N", default_value_t = 50,
          value_parser = clap::value_parser!(u32).range(0..=MAX_NUMWANT))]
    numwant: u32,
    /// Most peers per reply, whatever the client asks for (at most 10000)
    #[arg(long, value_name = "N", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(0..=MAX_NUMWANT))]
    max_numwant: u32,
    /// File of hex info hashes, one per line: serve only these (re-read on SIGHUP)
    #[arg(long, value_name = "FILE")]
    whitelist: Option<PathBuf>,
    /// File of passkeys, one per line: serve /<key>/announce and /<key>/scrape
    /// only, for known keys (re-read on SIGHUP)
    #[arg(long, value_name = "FILE")]
    keys: Option<PathBuf>,
    /// Take the client's address from this header's rightmost entry (behind
    /// a reverse proxy), e.g. X-Forwarded-For
    #[arg(long, value_name = "NAME")]
    real_ip_header: Option<axum::http::HeaderName>,
    /// Honour the 'ip' announce parameter (otherwise it is ignored)
    #[arg(long)]
    trust_ip_param: bool,
    /// Worker threads, each with its own listening socket [default: cores]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: Option<u32>,
    /// Close connections idle for this long
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = parse_secs)]
    idle_timeout: u32,
    /// Most simultaneous connections
    #[arg(long, value_name = "N", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    max_connections: u64,
    /// Most simultaneous connections from one IP address
    #[arg(long, value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    max_connections_per_ip: u64,
    /// Where swarms are kept: 'memory' (this process), or
    /// redis://[:PASSWORD@]HOST:PORT[/DB] to share them with every shoal
    /// tracker started with the same URL (Redis 5.0 or newer; set its
    /// maxmemory: that bounds what announces can make it hold). Also read
    /// from SHOAL_TRACKER_STORE, which keeps a password out of `ps`
    #[arg(
        long,
        value_name = "URL",
        default_value = "memory",
        env = "SHOAL_TRACKER_STORE",
        hide_env_values = true
    )]
    store: String,
    /// With a Redis store: the longest an announce waits for Redis before
    /// it is answered with "store unavailable"
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    store_timeout: Duration,
    /// Most swarms held in memory; announces for new torrents beyond it get
    /// "tracker is full"
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    max_swarms: usize,
    /// Most peers held in memory (about 25-50 bytes each)
    #[arg(long, value_name = "N", default_value_t = 10_000_000)]
    max_peers: usize,
}

/// A duration like "500ms" or "2s" (a plain number is seconds).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = match s.parse::<u64>() {
        Ok(n) => Duration::from_secs(n),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("{e} (try 2s or 500ms)"))?,
    };
    if d.is_zero() || d > Duration::from_secs(60) {
        return Err("must be between 1 ms and 60 s".into());
    }
    Ok(d)
}

/// Seconds, as a plain number or a duration like "30m" or "1h30m".
fn parse_secs(s: &str) -> Result<u32, String> {
    let secs = match s.parse::<u64>() {
        Ok(n) => n,
        Err(_) => humantime::parse_duration(s)
            .map_err(|e| format!("{e} (try 1800 or 30m)"))?
            .as_secs(),
    };
    u32::try_from(secs)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| "must be between 1 second and 136 years".to_string())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let min_interval = args.min_interval.unwrap_or(args.interval / 2).max(1);
    if min_interval > args.interval {
        anyhow::bail!(
            "--min-interval ({min_interval} s) is longer than --interval ({} s)",
            args.interval
        );
    }
    let peer_timeout = args.peer_timeout.unwrap_or(args.interval.saturating_mul(2));
    // The in-memory store keeps peers' ages in 16 bits of seconds (8-byte
    // IPv4 peers); Redis scores them by absolute time.
    let max_age = tracker::swarm::MAX_PEER_AGE;
    if args.store == "memory" && peer_timeout > max_age {
        super::usage!(
            "--peer-timeout {} is longer than the in-memory store keeps peers ({} h): give {}h or less{}",
            humantime::format_duration(Duration::from_secs(peer_timeout.into())),
            max_age / 3600,
            max_age / 3600,
            if args.peer_timeout.is_none() {
                " (it is 2 × --interval unless given)"
            } else {
                ""
            }
        );
    }
    if peer_timeout <= args.interval {
        tracing::warn!(
            "--peer-timeout ({peer_timeout} s) is not longer than --interval ({} s): \
             peers will expire between their announces",
            args.interval
        );
    }
    let config = Config {
        interval: args.interval,
        min_interval,
        peer_timeout,
        default_numwant: args.numwant.min(args.max_numwant) as usize,
        max_numwant: args.max_numwant as usize,
        real_ip_header: args.real_ip_header,
        trust_ip_param: args.trust_ip_param,
        whitelist: args.whitelist,
        keys: args.keys,
    };
    let limits = Limits {
        max_swarms: args.max_swarms,
        max_peers: args.max_peers,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let store = match args.store.as_str() {
        "memory" => Store::Memory(Box::new(MemoryStore::new(limits))),
        url if url.starts_with("redis://") || url.starts_with("redis+unix://") => {
            let redis = RedisStore::open(
                url,
                redis_store::Options {
                    peer_timeout,
                    timeout: args.store_timeout,
                    max_swarm_peers: tracker::swarm::MAX_SWARM_PEERS,
                },
            )?;
            match rt.block_on(redis.check())? {
                Ok(()) => tracing::info!("swarms are kept in {}", redis.url()),
                Err(why) => tracing::warn!(
                    "swarm store {}: {why}; starting anyway, announces get a failure reason until it answers",
                    redis.url()
                ),
            }
            Store::Redis(Box::new(redis))
        }
        url if url.starts_with("rediss://") => anyhow::bail!(
            "--store {}: TLS to Redis is not supported (use redis://, e.g. through a local stunnel)",
            redis_store::redact(url)
        ),
        other => anyhow::bail!(
            "--store {}: give 'memory' or a Redis URL (redis://HOST:PORT or redis://HOST:PORT/DB)",
            redis_store::redact(other)
        ),
    };
    let tracker = Arc::new(Tracker::with_store(config, store)?);
    let mut opts = ServeOptions {
        listen: args.listen,
        http: !args.no_http,
        udp: !args.no_udp,
        idle_timeout: Duration::from_secs(args.idle_timeout.into()),
        max_connections: args.max_connections as usize,
        max_connections_per_ip: args.max_connections_per_ip as usize,
        ..ServeOptions::default()
    };
    if let Some(t) = args.threads {
        opts.threads = t as usize;
    }
    let bound = server::bind(opts)?;
    for addr in bound.local_addrs() {
        let host = if addr.ip().is_unspecified() {
            "<this-host>".to_string()
        } else {
            addr.ip().to_string()
        };
        let host = match addr {
            SocketAddr::V6(_) if !addr.ip().is_unspecified() => format!("[{host}]"),
            _ => host,
        };
        let mut urls = Vec::new();
        if !args.no_udp {
            urls.push(format!("udp://{host}:{}", addr.port()));
        }
        if !args.no_http {
            urls.push(format!("http://{host}:{}/announce", addr.port()));
        }
        tracing::info!("listening on {addr}; announce URL: {}", urls.join(" "));
    }

    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let stop = shutdown.clone();
        let reload = tracker.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = hup.recv() => match reload.reload() {
                        Ok(()) => tracing::info!("SIGHUP: reloaded whitelist and passkeys"),
                        Err(e) => tracing::error!("SIGHUP: {e}; keeping the previous lists"),
                    },
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                }
            }
            tracing::info!(
                "shutting down: finishing in-flight requests (signal again to quit at once)"
            );
            stop.cancel();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            std::process::exit(130);
        });
        bound.run(tracker, shutdown).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
