//! What `download` and `seed` share: network flags, starting a session,
//! the progress display, signals, and the summary at the end.

use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use client::session::{Config, Session, Stats};
use client::storage::Storage;
use client::wire::Bitfield;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::signal::unix::{signal, SignalKind};
use torrent_format::{Info, Metainfo};

use crate::ui;

/// Default port, as libtorrent's; any free port when it is taken.
const DEFAULT_PORT: u16 = 6881;

#[derive(clap::Args, Debug)]
pub struct NetArgs {
    /// Port to accept peers on and announce; 0 picks any free port
    /// [default: 6881, or any free port if that is taken]
    #[arg(short = 'p', long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Local address to listen on and connect from
    #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Also connect to this peer (repeatable)
    #[arg(long = "peer", value_name = "HOST:PORT")]
    pub peers: Vec<String>,
    /// Do not announce to the torrent's trackers (use --peer)
    #[arg(long)]
    pub no_trackers: bool,
    /// Most connections at once
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_peers: u32,
    /// Peers unchoked (uploaded to) at once, besides one optimistic slot
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub upload_slots: u32,
    /// Upload at most this many bytes per second (suffixes K, M, G: powers of 1024)
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub upload_limit: Option<u64>,
    /// Initial seeding (BEP 16, "super-seeding"): offer pieces one by one,
    /// so the first seed uploads little more than one copy and peers trade
    /// the rest (for a download: once it is complete)
    #[arg(long)]
    pub initial_seeding: bool,
    /// No progress display and no summary
    #[arg(short, long)]
    pub quiet: bool,
    /// Print a JSON summary on stdout at the end
    #[arg(long)]
    pub json: bool,
}

/// "500K", "2M", "1G" (powers of 1024) or plain bytes.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let not_a_rate = || format!("'{s}' is not a rate like 500K or 2M");
    let (digits, mult) = match t.char_indices().last() {
        Some((i, _)) if t[..i].parse::<f64>().is_err() && t.parse::<f64>().is_err() => {
            return Err(not_a_rate())
        }
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown unit '{c}' (use K, M or G)")),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: f64 = digits.parse().map_err(|_| not_a_rate())?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("'{s}' must be above zero"));
    }
    Ok((n * mult as f64).max(1.0) as u64)
}

impl NetArgs {
    /// A session configuration from these flags.
    pub fn config(&self, meta: &Metainfo) -> anyhow::Result<Config> {
        let mut c = Config::new(SocketAddr::new(
            self.bind,
            self.port.unwrap_or(DEFAULT_PORT),
        ));
        for p in &self.peers {
            let addrs: Vec<SocketAddr> = p
                .to_socket_addrs()
                .with_context(|| format!("--peer {p}: not a HOST:PORT that resolves"))?
                .collect();
            let Some(&addr) = addrs.first() else {
                bail!("--peer {p}: the name has no address");
            };
            c.peers.push(addr);
        }
        if !self.no_trackers {
            c.trackers = meta.trackers();
        }
        if !self.bind.is_unspecified() {
            c.bind = Some(self.bind);
        }
        c.max_peers = self.max_peers as usize;
        c.upload_slots = self.upload_slots as usize;
        c.upload_limit = self.upload_limit;
        c.initial_seeding = self.initial_seeding;
        c.disk_threads = ui::default_threads().clamp(1, 4);
        Ok(c)
    }

    /// Starts the session; with no --port given, falls back to any free
    /// port when 6881 is taken.
    pub async fn start(
        &self,
        info: Arc<Info>,
        storage: Storage,
        have: Bitfield,
        mut config: Config,
    ) -> anyhow::Result<Session> {
        let storage = Arc::new(storage);
        match Session::start(info.clone(), storage.clone(), have.clone(), config.clone()).await {
            Ok(s) => Ok(s),
            Err(client::session::SessionError::Listen { source, .. })
                if self.port.is_none() && source.kind() == std::io::ErrorKind::AddrInUse =>
            {
                config.listen.set_port(0);
                Ok(Session::start(info, storage, have, config).await?)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// When a session stops.
pub struct Until {
    pub exit_on_complete: bool,
    pub seed_ratio: Option<f64>,
    pub seed_time: Option<Duration>,
    /// Give up when no peer was found for this long (downloads).
    pub no_peers: Option<Duration>,
}

/// Runs the session with a progress display until it is done, Ctrl-C or
/// SIGTERM, then shuts it down and prints the summary.
pub async fn run(session: Session, net: &NetArgs, until: Until) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut sigint = signal(SignalKind::interrupt()).context("installing a signal handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing a signal handler")?;
    let mut view = View::new(net.quiet, session.stats());
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let was_complete = session.is_complete();
    let mut complete_at = was_complete.then(Instant::now);
    let mut last_peer = Instant::now();
    let mut interrupted = false;
    let mut lonely = None;
    loop {
        tokio::select! {
            _ = sigint.recv() => { interrupted = true; break }
            _ = sigterm.recv() => { interrupted = true; break }
            why = session.failed() => {
                view.clear();
                bail!("{why}");
            }
            () = session.completed(), if complete_at.is_none() => {
                complete_at = Some(Instant::now());
                let s = session.stats();
                view.println(&format!(
                    "download complete: {} in {}",
                    ui::short_size(s.wanted_bytes),
                    secs(started.elapsed())
                ));
                if until.exit_on_complete {
                    break;
                }
            }
            _ = tick.tick() => {
                let s = session.stats();
                view.update(&s);
                if s.peers > 0 {
                    last_peer = Instant::now();
                }
                if let Some(limit) = until.no_peers {
                    if complete_at.is_none() && last_peer.elapsed() >= limit {
                        lonely = Some(limit);
                        break;
                    }
                }
                if let Some(done) = complete_at {
                    let ratio = s.uploaded as f64 / s.wanted_bytes.max(1) as f64;
                    if until.seed_ratio.is_some_and(|r| ratio >= r)
                        || until.seed_time.is_some_and(|t| done.elapsed() >= t)
                    {
                        break;
                    }
                }
            }
        }
    }
    view.clear();
    if let Some(limit) = lonely {
        let _ = session.shutdown().await;
        bail!(
            "no peers found for {}; is the tracker up? (or name one with --peer HOST:PORT)",
            humantime::format_duration(limit)
        );
    }
    if interrupted {
        tracing::info!("stopping (Ctrl-C again to quit at once)");
    }
    // A second signal quits at once.
    tokio::spawn(async move {
        tokio::select! {
            _ = sigint.recv() => {}
            _ = sigterm.recv() => {}
        }
        eprintln!("shoal: interrupted again, quitting now");
        std::process::exit(130);
    });
    let stats = session.stats();
    let result = session.shutdown().await;
    let elapsed = started.elapsed();
    if !net.quiet {
        eprintln!("shoal: {}", summary(&stats, elapsed, was_complete));
    }
    if net.json {
        let j = serde_json::json!({
            "complete": stats.complete,
            "downloaded": stats.downloaded,
            "uploaded": stats.uploaded,
            "size": stats.wanted_bytes,
            "seconds": elapsed.as_secs_f64(),
            "hash_fails": stats.hash_fails,
            "banned": stats.banned,
        });
        ui::print_out(&format!("{j}\n"))?;
    }
    if let Err(e) = result {
        bail!("{e}");
    }
    Ok(if interrupted && !stats.complete {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn rate(bytes_per_sec: u64) -> String {
    format!("{}/s", ui::short_size(bytes_per_sec))
}

fn summary(s: &Stats, elapsed: Duration, was_complete: bool) -> String {
    let ratio = s.uploaded as f64 / s.wanted_bytes.max(1) as f64;
    let up = format!("uploaded {} (ratio {ratio:.2})", ui::short_size(s.uploaded));
    if was_complete {
        return format!("seeded for {}, {up}", secs(elapsed));
    }
    let avg = (s.downloaded as f64 / elapsed.as_secs_f64().max(1e-3)) as u64;
    let state = if s.complete { "complete" } else { "incomplete" };
    let mut line = format!(
        "{state}: downloaded {} in {} ({}), {up}",
        ui::short_size(s.downloaded),
        secs(elapsed),
        rate(avg)
    );
    if s.hash_fails > 0 {
        line.push_str(&format!(
            ", {} piece(s) failed the hash check, {} peer(s) banned",
            s.hash_fails, s.banned
        ));
    }
    line
}

/// The progress display: a bar on a terminal, a line every 10 s otherwise,
/// nothing with -q.
struct View {
    bar: Option<ProgressBar>,
    plain: bool,
    last_line: Instant,
    seeding: bool,
}

impl View {
    fn new(quiet: bool, s: Stats) -> View {
        let tty = std::io::stderr().is_terminal();
        let bar = (!quiet && tty).then(|| {
            let bar = ProgressBar::with_draw_target(Some(s.wanted_bytes), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{percent:>3}% [{bar:30.cyan/blue}] {binary_bytes:>10}/{binary_total_bytes}  {msg}  ETA {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar
        });
        View {
            bar,
            plain: !quiet && !tty,
            last_line: Instant::now(),
            seeding: false,
        }
    }

    fn update(&mut self, s: &Stats) {
        let done = s.wanted_bytes - s.left.min(s.wanted_bytes);
        let peers = format!("{} peers ({} seeds)", s.peers, s.seeds);
        if let Some(bar) = &self.bar {
            if s.complete && !self.seeding {
                self.seeding = true;
                bar.set_style(
                    ProgressStyle::with_template("seeding  {msg}").expect("valid template"),
                );
            }
            bar.set_position(done);
            if self.seeding {
                bar.set_message(format!(
                    "up {}  uploaded {}  {peers}",
                    rate(s.up_rate),
                    ui::short_size(s.uploaded)
                ));
            } else {
                bar.set_message(format!(
                    "down {}  up {}  {peers}",
                    rate(s.down_rate),
                    rate(s.up_rate)
                ));
            }
        } else if self.plain && self.last_line.elapsed() >= Duration::from_secs(10) {
            self.last_line = Instant::now();
            let pct = done as f64 * 100.0 / s.wanted_bytes.max(1) as f64;
            if s.complete {
                eprintln!(
                    "shoal: seeding, up {}, uploaded {}, {peers}",
                    rate(s.up_rate),
                    ui::short_size(s.uploaded)
                );
            } else {
                let eta = s
                    .left
                    .checked_div(s.down_rate)
                    .map_or(String::new(), |t| format!(", ETA {t} s"));
                eprintln!(
                    "shoal: {pct:.1}% ({} of {}), down {}, up {}, {peers}{eta}",
                    ui::short_size(done),
                    ui::short_size(s.wanted_bytes),
                    rate(s.down_rate),
                    rate(s.up_rate)
                );
            }
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("shoal: {line}")),
            None if self.plain => eprintln!("shoal: {line}"),
            None => {}
        }
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// A multi-threaded runtime for a session.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert_eq!(parse_rate("500K"), Ok(500 << 10));
        assert_eq!(parse_rate("2m"), Ok(2 << 20));
        assert_eq!(parse_rate("1.5G"), Ok(3 << 29));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("5X").is_err());
    }
}
