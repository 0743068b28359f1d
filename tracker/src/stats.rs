//! `/stats` (HTML), `/stats.json` and `/metrics` (Prometheus text format).

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;

use crate::store::SwarmSummary;
use crate::{Store, Tracker};

const TOP: usize = 20;

#[derive(Serialize)]
pub struct Stats {
    pub uptime_secs: u64,
    /// Where swarms are kept: "memory", or the Redis URL (no password).
    pub store: String,
    /// The swarm counts below are kept only by the in-memory store: with
    /// Redis they are `null` (counting them would mean a scan of Redis).
    pub swarms: Option<usize>,
    pub seeders: Option<usize>,
    pub leechers: Option<usize>,
    /// `completed` events seen in live swarms.
    pub completed: Option<u64>,
    /// The Redis store's health (absent in memory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<crate::redis_store::StoreHealth>,
    pub announces_total: u64,
    pub announces_per_sec: f64,
    pub scrapes_total: u64,
    pub failures_total: u64,
    /// Of the totals above, those over UDP (BEP 15), and UDP's own.
    pub udp: UdpStats,
    pub peer_heap_bytes: usize,
    pub top_swarms: Vec<SwarmSummary>,
}

#[derive(Serialize, Default)]
pub struct UdpStats {
    pub connects_total: u64,
    pub announces_total: u64,
    pub scrapes_total: u64,
    pub failures_total: u64,
    /// Datagrams dropped unanswered (malformed, not BitTorrent).
    pub dropped_total: u64,
}

/// How long the walk over all swarms (top list, heap bytes) is reused:
/// stats requests then cost the store almost nothing, however many arrive.
const CACHE_FOR: std::time::Duration = std::time::Duration::from_secs(2);

pub fn collect(t: &Tracker, top: usize) -> Stats {
    let c = &t.counters;
    let mut stats = Stats {
        uptime_secs: t.started.elapsed().as_secs(),
        store: "memory".into(),
        swarms: None,
        seeders: None,
        leechers: None,
        completed: None,
        redis: None,
        announces_total: c.announces.load(Ordering::Relaxed),
        announces_per_sec: c.rate_milli.load(Ordering::Relaxed) as f64 / 1000.0,
        scrapes_total: c.scrapes.load(Ordering::Relaxed),
        failures_total: c.failures.load(Ordering::Relaxed),
        udp: UdpStats {
            connects_total: c.udp_connects.load(Ordering::Relaxed),
            announces_total: c.udp_announces.load(Ordering::Relaxed),
            scrapes_total: c.udp_scrapes.load(Ordering::Relaxed),
            failures_total: c.udp_failures.load(Ordering::Relaxed),
            dropped_total: c.udp_dropped.load(Ordering::Relaxed),
        },
        peer_heap_bytes: 0,
        top_swarms: Vec::new(),
    };
    let store = match &t.store {
        Store::Memory(store) => store,
        Store::Redis(redis) => {
            let health = redis.health();
            stats.store = health.url.clone();
            stats.redis = Some(health);
            return stats;
        }
    };
    let mut s = store.stats(0);
    if top > 0 {
        let mut cache = t.stats_cache.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = matches!(&*cache, Some((at, _)) if at.elapsed() < CACHE_FOR);
        if !fresh {
            *cache = Some((std::time::Instant::now(), store.stats(top)));
        }
        if let Some((_, walked)) = &*cache {
            s.downloaded = walked.downloaded;
            s.peer_heap_bytes = walked.peer_heap_bytes;
            // With passkeys the torrents are private: do not list them.
            if t.config.keys.is_none() {
                s.top = walked.top.clone();
            }
        }
    }
    stats.swarms = Some(s.swarms);
    stats.seeders = Some(s.seeders);
    stats.leechers = Some(s.leechers);
    stats.completed = Some(s.downloaded);
    stats.peer_heap_bytes = s.peer_heap_bytes;
    stats.top_swarms = s.top;
    stats
}

pub async fn json(State(t): State<Arc<Tracker>>) -> Response {
    axum::Json(collect(&t, TOP)).into_response()
}

pub async fn html(State(t): State<Arc<Tracker>>) -> Html<String> {
    let s = collect(&t, TOP);
    let mut rows = String::new();
    for sw in &s.top_swarms {
        let _ = write!(
            rows,
            "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            sw.info_hash, sw.seeders, sw.leechers, sw.downloaded
        );
    }
    let up = s.uptime_secs;
    let n = |v: Option<u64>| v.map_or_else(|| "—".to_string(), |v| v.to_string());
    let store = match &s.redis {
        None => "memory".to_string(),
        Some(h) => format!(
            "{} ({}; {} calls, {} errors, {:.2} ms on average)",
            h.url,
            if h.up { "up" } else { "unavailable" },
            h.calls_total,
            h.errors_total,
            if h.calls_total > 0 {
                h.latency_seconds_sum * 1000.0 / h.calls_total as f64
            } else {
                0.0
            },
        ),
    };
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>shoal tracker</title>\
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:right}}</style></head><body>\
<h1>shoal tracker</h1><table>\
<tr><th>swarms</th><td>{}</td></tr><tr><th>seeders</th><td>{}</td></tr>\
<tr><th>leechers</th><td>{}</td></tr><tr><th>completed downloads</th><td>{}</td></tr>\
<tr><th>announces per second</th><td>{:.1}</td></tr><tr><th>announces</th><td>{}</td></tr>\
<tr><th>uptime</th><td>{}d {:02}:{:02}:{:02}</td></tr><tr><th>swarm store</th><td>{}</td></tr></table>\
<h2>Biggest swarms</h2><table><tr><th>info hash</th><th>seeders</th><th>leechers</th><th>completed</th></tr>{rows}</table>\
<p><a href=\"/stats.json\">JSON</a> · <a href=\"/metrics\">Prometheus</a></p></body></html>",
        n(s.swarms.map(|v| v as u64)),
        n(s.seeders.map(|v| v as u64)),
        n(s.leechers.map(|v| v as u64)),
        n(s.completed),
        s.announces_per_sec,
        s.announces_total,
        up / 86400,
        up / 3600 % 24,
        up / 60 % 60,
        up % 60,
        html_escape(&store),
    ))
}

pub async fn metrics(State(t): State<Arc<Tracker>>) -> Response {
    let s = collect(&t, TOP);
    let mut o = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(o, "# HELP shoal_tracker_{name} {help}");
        let _ = writeln!(o, "# TYPE shoal_tracker_{name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(o, "shoal_tracker_{name}{labels} {v}");
        }
    };
    // Swarm counts only where they are known (in memory).
    if let (Some(swarms), Some(seeders), Some(leechers), Some(completed)) =
        (s.swarms, s.seeders, s.leechers, s.completed)
    {
        metric(
            "swarms",
            "gauge",
            "Swarms with at least one peer.",
            &[("", swarms as f64)],
        );
        metric(
            "peers",
            "gauge",
            "Peers by kind.",
            &[
                ("{kind=\"seeder\"}", seeders as f64),
                ("{kind=\"leecher\"}", leechers as f64),
            ],
        );
        metric(
            "completed",
            "gauge",
            "Completed downloads counted in live swarms.",
            &[("", completed as f64)],
        );
    }
    if let Some(h) = &s.redis {
        metric(
            "store_up",
            "gauge",
            "1 while the Redis swarm store answers, 0 during an outage.",
            &[("", if h.up { 1.0 } else { 0.0 })],
        );
        metric(
            "store_calls_total",
            "counter",
            "Round trips to the Redis swarm store.",
            &[("", h.calls_total as f64)],
        );
        metric(
            "store_errors_total",
            "counter",
            "Store round trips that failed or timed out.",
            &[("", h.errors_total as f64)],
        );
        metric(
            "store_outages_total",
            "counter",
            "Times the store went from answering to unavailable.",
            &[("", h.outages_total as f64)],
        );
        metric(
            "store_latency_seconds_sum",
            "counter",
            "Total time spent in store round trips (divide by store_calls_total).",
            &[("", h.latency_seconds_sum)],
        );
    }
    let by_protocol = |total: u64, udp: u64| {
        [
            ("{protocol=\"http\"}", total.saturating_sub(udp) as f64),
            ("{protocol=\"udp\"}", udp as f64),
        ]
    };
    metric(
        "announces_total",
        "counter",
        "Announce requests.",
        &by_protocol(s.announces_total, s.udp.announces_total),
    );
    metric(
        "scrapes_total",
        "counter",
        "Scrape requests.",
        &by_protocol(s.scrapes_total, s.udp.scrapes_total),
    );
    metric(
        "failures_total",
        "counter",
        "Requests answered with a failure reason (an error, over UDP).",
        &by_protocol(s.failures_total, s.udp.failures_total),
    );
    metric(
        "udp_connects_total",
        "counter",
        "UDP connect requests answered with a connection id.",
        &[("", s.udp.connects_total as f64)],
    );
    metric(
        "udp_dropped_total",
        "counter",
        "UDP datagrams dropped unanswered (malformed, not BitTorrent, or an error longer than the request).",
        &[("", s.udp.dropped_total as f64)],
    );
    metric(
        "peer_heap_bytes",
        "gauge",
        "Heap bytes held for peers.",
        &[("", s.peer_heap_bytes as f64)],
    );
    metric(
        "uptime_seconds",
        "gauge",
        "Seconds since start.",
        &[("", s.uptime_secs as f64)],
    );
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], o).into_response()
}

/// Text for an HTML page (the store URL is the operator's, but still).
fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
