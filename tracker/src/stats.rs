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
    /// Where swarms are kept: "memory" or "redis".
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
            stats.store = "redis".into();
            stats.redis = Some(redis.health());
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
    let n = |v: Option<u64>| v.map_or_else(|| "—".to_string(), |v| v.to_string());
    let store = match &s.redis {
        None => "memory".to_string(),
        Some(h) => format!(
            "redis ({}; {} calls, {} errors, {:.2} ms on average)",
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
    // Each cell's id is its /stats.json key: the script below refreshes
    // the figures in place every few seconds, without reloading the page.
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><title>shoal tracker</title>\
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:right}}th{{font-weight:normal;color:#555}}</style></head><body>\
<h1>shoal tracker</h1><table>\
<tr><th>swarms</th><td id=swarms>{}</td></tr><tr><th>seeders</th><td id=seeders>{}</td></tr>\
<tr><th>leechers</th><td id=leechers>{}</td></tr><tr><th>completed</th><td id=completed>{}</td></tr>\
<tr><th>announces per second</th><td id=announces_per_sec>{:.1}</td></tr><tr><th>announces</th><td id=announces_total>{}</td></tr>\
<tr><th>scrapes</th><td id=scrapes_total>{}</td></tr><tr><th>failures</th><td id=failures_total>{}</td></tr>\
<tr><th>uptime</th><td id=uptime_secs>{}</td></tr><tr><th>swarm store</th><td id=store>{}</td></tr></table>\
<h2>Biggest swarms</h2><table><thead><tr><th>info hash</th><th>seeders</th><th>leechers</th><th>completed</th></tr></thead><tbody id=top_swarms>{rows}</tbody></table>\
<p><a href=\"stats.json\">JSON</a> · <a href=\"metrics\">Prometheus</a> · updated every {REFRESH_SECS} s</p>\
<script>{script}</script></body></html>",
        n(s.swarms.map(|v| v as u64)),
        n(s.seeders.map(|v| v as u64)),
        n(s.leechers.map(|v| v as u64)),
        n(s.completed),
        s.announces_per_sec,
        s.announces_total,
        s.scrapes_total,
        s.failures_total,
        uptime(s.uptime_secs),
        html_escape(&store),
        script = SCRIPT.replace("REFRESH_MS", &(REFRESH_SECS * 1000).to_string()),
    ))
}

const REFRESH_SECS: u32 = 3;

/// Refreshes the page's figures from /stats.json (text only: nothing from
/// the JSON is parsed as HTML).
const SCRIPT: &str = r#"
const up = s => { const d = Math.floor(s / 86400), p = n => String(n).padStart(2, "0");
  return `${d}d ${p(Math.floor(s / 3600) % 24)}:${p(Math.floor(s / 60) % 60)}:${p(s % 60)}`; };
const cell = (row, text) => { const td = row.insertCell(); td.textContent = text; return td; };
async function refresh() {
  try {
    const s = await (await fetch("stats.json", {cache: "no-store"})).json();
    for (const k of ["swarms", "seeders", "leechers", "completed", "announces_total", "scrapes_total", "failures_total"])
      document.getElementById(k).textContent = s[k] ?? "—";
    document.getElementById("announces_per_sec").textContent = s.announces_per_sec.toFixed(1);
    document.getElementById("uptime_secs").textContent = up(s.uptime_secs);
    const body = document.getElementById("top_swarms");
    body.replaceChildren();
    for (const w of s.top_swarms) {
      const row = body.insertRow();
      const code = document.createElement("code");
      code.textContent = w.info_hash;
      row.insertCell().appendChild(code);
      cell(row, w.seeders); cell(row, w.leechers); cell(row, w.completed);
    }
  } catch (e) { /* the tracker restarting: try again next time */ }
}
setInterval(refresh, REFRESH_MS);
"#;

/// `1d 02:03:04`, as the page's script writes it.
fn uptime(up: u64) -> String {
    format!(
        "{}d {:02}:{:02}:{:02}",
        up / 86400,
        up / 3600 % 24,
        up / 60 % 60,
        up % 60
    )
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
            "store_shed_total",
            "counter",
            "Requests answered 'unavailable' during an outage without asking the store.",
            &[("", h.shed_total as f64)],
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
    let version = format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(
        o,
        "# HELP shoal_build_info The shoal version serving, as a label."
    );
    let _ = writeln!(o, "# TYPE shoal_build_info gauge");
    let _ = writeln!(o, "shoal_build_info{version} 1");
    process_metrics(&mut o);
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], o).into_response()
}

/// Text for an HTML page (the store URL is the operator's, but still).
fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The standard Prometheus process metrics, from /proc/self (left out
/// where /proc cannot be read).
fn process_metrics(o: &mut String) {
    let mut metric = |name: &str, kind: &str, help: &str, v: f64| {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} {kind}");
        let _ = writeln!(o, "{name} {v}");
    };
    // SAFETY: sysconf only reads a configuration value.
    let (tick, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK) as f64,
            libc::sysconf(libc::_SC_PAGESIZE) as f64,
        )
    };
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // The fields after the command name, which may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            metric(
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time spent, in seconds.",
                (utime + stime) / tick,
            );
        }
        if let Some(rss) = field(24) {
            metric(
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                rss * page,
            );
        }
        if let Some(vsize) = field(23) {
            metric(
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                vsize,
            );
        }
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        if let (Some(start), Some(boot)) = (field(22), boot) {
            metric(
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch, in seconds.",
                boot + start / tick,
            );
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metric(
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            fds.count() as f64,
        );
    }
}
