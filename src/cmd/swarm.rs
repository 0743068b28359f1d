//! What `download` and `seed` share: network flags, starting a session,
//! the progress display, signals, and the summary at the end.

use std::future::Future;
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use client::session::{Config, Session, Stats};
use client::{Engine, EngineConfig};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::signal::unix::{signal, SignalKind};
use torrent_format::Metainfo;

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
    /// Do not use the DHT (BEP 5) to find peers and be found; private
    /// torrents never use it [env: SHOAL_NO_DHT=1]
    #[arg(long, env = "SHOAL_NO_DHT", hide_env = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub no_dht: bool,
    /// UDP port of the DHT node [default: the peer port]
    #[arg(long, value_name = "PORT")]
    pub dht_port: Option<u16>,
    /// Join the DHT through this node (HOST:PORT, repeatable; 'none' for
    /// none) [default: the public routers libtorrent and Transmission use]
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT")]
    pub dht_bootstrap: Vec<String>,
    /// Most connections at once, per torrent
    #[arg(long, value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_peers: u32,
    /// Most connections at once over all torrents of this process
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_connections: u32,
    /// Peers unchoked (uploaded to) at once, besides one optimistic slot; a seed unchokes one
    /// more instead, and each waiting peer gets turns of a piece's worth
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub upload_slots: u32,
    /// Upload at most this many bytes per second, over all torrents
    /// (suffixes K, M, G: powers of 1024)
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub upload_limit: Option<u64>,
    /// Initial seeding (BEP 16, "super-seeding"): offer pieces one by one,
    /// so the first seed uploads little more than one copy and peers trade
    /// the rest (for a download: once it is complete)
    #[arg(long)]
    pub initial_seeding: bool,
    /// -q (for every command): no progress display, no summary, no
    /// warnings; only errors
    #[arg(from_global)]
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
    /// A torrent's configuration from these flags.
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

    /// Starts the engine the torrents run in (one port for all); with no
    /// --port given, falls back to any free port when 6881 is taken.
    /// The DHT node starts when `public` (some torrent may use it: private
    /// ones never do).
    pub async fn engine(
        &self,
        torrents: usize,
        download_limit: Option<u64>,
        public: bool,
    ) -> anyhow::Result<Engine> {
        let mut c = EngineConfig::new(SocketAddr::new(
            self.bind,
            self.port.unwrap_or(DEFAULT_PORT),
        ));
        if !self.bind.is_unspecified() {
            c.bind = Some(self.bind);
        }
        // Each torrent's peers and as many again still handshaking, within
        // --max-connections.
        c.max_connections = (self.max_peers as usize)
            .saturating_mul(2)
            .saturating_mul(torrents.max(1))
            .clamp(16, self.max_connections as usize);
        c.upload_limit = self.upload_limit;
        c.download_limit = download_limit;
        c.disk_threads = ui::default_threads().clamp(1, 4);
        let engine = match Engine::start(c.clone()).await {
            Ok(e) => e,
            Err(client::session::SessionError::Listen { error, .. })
                if self.port.is_none() && error.kind() == std::io::ErrorKind::AddrInUse =>
            {
                c.listen.set_port(0);
                Engine::start(c).await?
            }
            Err(e) => return Err(e.into()),
        };
        if !self.no_dht && public {
            self.start_dht(&engine).await?;
        }
        Ok(engine)
    }

    /// The engine's DHT node on the peer port (UDP), or --dht-port.
    async fn start_dht(&self, engine: &Engine) -> anyhow::Result<()> {
        let port = self.dht_port.unwrap_or(engine.listen_addr().port());
        // The node(s) of the families peers can reach us by: `::` takes
        // both (its TCP socket is dual-stack), one address its own.
        let wanted = match self.bind {
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => vec![
                SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, port)),
                SocketAddr::from((v6, port)),
            ],
            ip => vec![SocketAddr::new(ip, port)],
        };
        // Each family on its own: one whose port is taken (another DHT
        // node, say) moves to any port (the announce names the TCP one),
        // and one that cannot be served at all (no IPv6 here) is left out.
        let mut bind = Vec::new();
        for want in wanted {
            let family = if want.is_ipv4() { "IPv4" } else { "IPv6" };
            match client::dht::can_bind(want) {
                Ok(()) => bind.push(want),
                // Asked for that port: its being taken is an error.
                Err(e) if self.dht_port.is_some() => {
                    return Err(anyhow::anyhow!("cannot listen on UDP {want}: {e}"))
                }
                Err(e) => {
                    let mut any = want;
                    any.set_port(0);
                    if client::dht::can_bind(any).is_ok() {
                        bind.push(any);
                    } else {
                        tracing::warn!("DHT over {family} off: cannot listen on UDP {want}: {e}");
                    }
                }
            }
        }
        if bind.is_empty() {
            return Ok(());
        }
        let bootstrap = if self.dht_bootstrap.is_empty() {
            client::dht::DEFAULT_BOOTSTRAP
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            self.dht_bootstrap
                .iter()
                .filter(|b| b.as_str() != "none")
                .cloned()
                .collect()
        };
        let config = client::dht::DhtConfig {
            bind,
            bootstrap,
            state_file: client::dht::state_dir().map(|d| d.join("dht.dat")),
            enforce_node_id: true,
        };
        match engine.start_dht(config).await {
            Ok(addr) => {
                tracing::debug!("DHT node on UDP {addr}");
                Ok(())
            }
            Err(e) if self.dht_port.is_some() => Err(e.into()),
            Err(e) => {
                tracing::warn!("DHT off: {e} (give another port with --dht-port, or --no-dht)");
                Ok(())
            }
        }
    }
}

/// When a run stops.
pub struct Until {
    pub exit_on_complete: bool,
    pub seed_ratio: Option<f64>,
    pub seed_time: Option<Duration>,
    /// Give up when no peer was found for this long (downloads).
    pub no_peers: Option<Duration>,
}

/// One torrent of a run, with what the display and summary need.
pub struct Torrent {
    pub session: Session,
    pub name: String,
    /// It was complete when the run started (seeding only).
    pub was_complete: bool,
    /// When it completed in this run.
    pub completed: Option<Duration>,
    /// Bytes of wanted pieces already verified when the run started (a
    /// resume): not fetched by this run, so not in its rate.
    pub already: u64,
}

impl Torrent {
    pub fn new(session: Session) -> Torrent {
        let was_complete = session.is_complete();
        let s = session.stats();
        Torrent {
            name: session.info().name().to_string(),
            session,
            was_complete,
            completed: None,
            already: s.wanted_bytes - s.left.min(s.wanted_bytes),
        }
    }
}

/// Runs the torrents with a progress display until they are done, Ctrl-C
/// or SIGTERM, then shuts them and the engine down and prints the
/// summary.
pub async fn run(
    engine: Engine,
    mut torrents: Vec<Torrent>,
    net: &NetArgs,
    until: Until,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let mut sigint = signal(SignalKind::interrupt()).context("installing a signal handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing a signal handler")?;
    let mut view = View::new(net.quiet, &torrents);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut all_complete_at = torrents.iter().all(|t| t.was_complete).then(Instant::now);
    let mut last_peer = Instant::now();
    let mut interrupted = false;
    let mut lonely = None;
    let mut failure = None;
    loop {
        tokio::select! {
            _ = sigint.recv() => { interrupted = true; break }
            _ = sigterm.recv() => { interrupted = true; break }
            why = first_failure(&torrents) => {
                failure = Some(why);
                break;
            }
            // A completion is shown (and -x acts on it) at once, not at
            // the next tick.
            () = first_completion(&torrents) => {}
            _ = tick.tick() => {}
        }
        let stats: Vec<Stats> = torrents.iter().map(|t| t.session.stats()).collect();
        for (t, s) in torrents.iter_mut().zip(&stats) {
            if s.complete && t.completed.is_none() && !t.was_complete {
                t.completed = Some(started.elapsed());
                let line = format!("download complete: {}", fetched(t, s));
                view.println(&if stats.len() > 1 {
                    format!("{}: {line}", t.name)
                } else {
                    line
                });
            }
        }
        view.update(&torrents, &stats);
        let incomplete: Vec<&Stats> = stats.iter().filter(|s| !s.complete).collect();
        if incomplete.is_empty() {
            all_complete_at.get_or_insert_with(Instant::now);
            if until.exit_on_complete {
                break;
            }
        } else if incomplete.iter().any(|s| s.peers > 0) {
            last_peer = Instant::now();
        }
        if let Some(limit) = until.no_peers {
            if !incomplete.is_empty() && last_peer.elapsed() >= limit {
                lonely = Some(limit);
                break;
            }
        }
        if let Some(done) = all_complete_at {
            let ratio_met = until.seed_ratio.is_some_and(|r| {
                stats
                    .iter()
                    .all(|s| s.uploaded as f64 / s.wanted_bytes.max(1) as f64 >= r)
            });
            if ratio_met || until.seed_time.is_some_and(|t| done.elapsed() >= t) {
                break;
            }
        }
    }
    view.clear();
    if let Some(limit) = lonely {
        shutdown(engine, torrents).await;
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
    let elapsed = started.elapsed();
    let several = torrents.len() > 1;
    let mut results = Vec::new();
    for t in torrents {
        let stats = t.session.stats();
        let info_hash = t.session.info_hash();
        let line = summary(&t, &stats, elapsed);
        let download_secs = t.completed.unwrap_or(elapsed).as_secs_f64();
        let result = t.session.shutdown().await;
        results.push((
            t.name,
            info_hash,
            stats,
            result,
            line,
            download_secs,
            t.already,
        ));
    }
    engine.shutdown().await;
    let mut errors = Vec::new();
    let mut incomplete = false;
    for (name, info_hash, stats, result, line, download_secs, already) in &results {
        if !net.quiet {
            if several {
                eprintln!("shoal: {name}: {line}");
            } else {
                eprintln!("shoal: {line}");
            }
        }
        if net.json {
            let j = serde_json::json!({
                "name": name,
                "info_hash": info_hash.to_hex(),
                "complete": stats.complete,
                "downloaded": stats.downloaded,
                "uploaded": stats.uploaded,
                "size": stats.wanted_bytes,
                "already": already,
                "seconds": elapsed.as_secs_f64(),
                "download_seconds": download_secs,
                "hash_fails": stats.hash_fails,
                "banned": stats.banned,
            });
            ui::print_out(&format!("{j}\n"))?;
        }
        incomplete |= !stats.complete;
        if let Err(e) = result {
            errors.push(if several {
                format!("{name}: {e}")
            } else {
                e.clone()
            });
        }
    }
    // A disk failure stopped the run: it is the error, after the summaries
    // (scripts still get --json) and the shutdown that saved what was
    // synced. A shutdown error that only repeats it is not said again.
    if let Some(why) = failure {
        errors.retain(|e| !e.contains(&why) && !why.contains(e.as_str()));
        errors.insert(0, why);
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(if interrupted && incomplete {
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    })
}

/// Resolves when a torrent not yet seen complete completes.
async fn first_completion(torrents: &[Torrent]) {
    let mut waiting: Vec<_> = torrents
        .iter()
        .filter(|t| !t.was_complete && t.completed.is_none())
        .map(|t| Box::pin(t.session.completed()))
        .collect();
    if waiting.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(move |cx| {
        for f in &mut waiting {
            if f.as_mut().poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Resolves with the first torrent's failure (a disk error).
async fn first_failure(torrents: &[Torrent]) -> String {
    let mut failed: Vec<_> = torrents
        .iter()
        .map(|t| Box::pin(t.session.failed()))
        .collect();
    if failed.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(move |cx| {
        for f in &mut failed {
            if let std::task::Poll::Ready(why) = f.as_mut().poll(cx) {
                return std::task::Poll::Ready(why);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

async fn shutdown(engine: Engine, torrents: Vec<Torrent>) {
    for t in torrents {
        let _ = t.session.shutdown().await;
    }
    engine.shutdown().await;
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn rate(bytes_per_sec: u64) -> String {
    format!("{}/s", ui::short_size(bytes_per_sec))
}

/// "394.50 MiB fetched in 14.1 s (27.98 MiB/s), 205.50 MiB already here":
/// what this run fetched of a torrent completed in it, in the time it
/// took (not counting the seeding after).
fn fetched(t: &Torrent, s: &Stats) -> String {
    let took = t.completed.unwrap_or_default();
    let got = s.wanted_bytes.saturating_sub(t.already);
    let mut line = format!(
        "{} fetched in {} ({})",
        ui::short_size(got),
        secs(took),
        rate((got as f64 / took.as_secs_f64().max(1e-3)) as u64)
    );
    if t.already > 0 {
        line.push_str(&format!(", {} already here", ui::short_size(t.already)));
    }
    line
}

/// The one summary of a torrent's run: the download (its own time and
/// rate, what this run fetched and what was already there), then the
/// seeding part.
fn summary(t: &Torrent, s: &Stats, elapsed: Duration) -> String {
    let ratio = s.uploaded as f64 / s.wanted_bytes.max(1) as f64;
    let up = format!("uploaded {} (ratio {ratio:.2})", ui::short_size(s.uploaded));
    let mut line = match t.completed {
        _ if t.was_complete => format!("complete, seeded for {}, {up}", secs(elapsed)),
        Some(took) => format!(
            "complete: {}; then seeded for {}, {up}",
            fetched(t, s),
            secs(elapsed.saturating_sub(took))
        ),
        None => {
            let got = (s.wanted_bytes - s.left.min(s.wanted_bytes)).saturating_sub(t.already);
            let mut line = format!(
                "incomplete: {} of {} fetched in {} ({})",
                ui::short_size(got),
                ui::short_size(s.wanted_bytes),
                secs(elapsed),
                rate((got as f64 / elapsed.as_secs_f64().max(1e-3)) as u64)
            );
            if t.already > 0 {
                line.push_str(&format!(", {} already here", ui::short_size(t.already)));
            }
            format!("{line}, {up}")
        }
    };
    if s.hash_fails > 0 {
        line.push_str(&format!(
            ", {} failed the hash check, {} banned",
            ui::count(s.hash_fails, "piece"),
            ui::count(s.banned, "peer")
        ));
    }
    line
}

/// The progress display: on a terminal a bar per torrent (and a total
/// line when there are several), otherwise a line per torrent every 10 s,
/// nothing with -q.
struct View {
    multi: Option<MultiProgress>,
    bars: Vec<ProgressBar>,
    total: Option<ProgressBar>,
    plain: bool,
    last_line: Instant,
    seeding: Vec<bool>,
    /// The terminal's columns (what a bar's message may take).
    width: usize,
}

/// Terminals narrower than this get the compact bar (the bytes go into
/// the message, which drops them while nothing moves).
const WIDE: usize = 130;

/// The bar's layout. No `{eta}` of indicatif's (it would count a resume's
/// bytes as speed): the message carries an ETA from the bytes moving now.
fn bar_style(several: bool, narrow: bool) -> ProgressStyle {
    let template = match (several, narrow) {
        (false, false) => "{percent:>3}% [{bar:30.cyan/blue}] {binary_bytes:>10}/{binary_total_bytes}  {msg}",
        (true, false) => "{prefix:20!} {percent:>3}% [{bar:30.cyan/blue}] {binary_bytes:>10}/{binary_total_bytes}  {msg}",
        (false, true) => "{percent:>3}% [{bar:10.cyan/blue}] {msg}",
        (true, true) => "{prefix:12!} {percent:>3}% [{bar:10.cyan/blue}] {msg}",
    };
    ProgressStyle::with_template(template)
        .expect("valid template")
        .progress_chars("=> ")
}

impl View {
    fn new(quiet: bool, torrents: &[Torrent]) -> View {
        let tty = std::io::stderr().is_terminal();
        let several = torrents.len() > 1;
        let width = ui::term_width().unwrap_or(80);
        let mut view = View {
            multi: None,
            bars: Vec::new(),
            total: None,
            // Lines every 10 s into a log file; nothing on a terminal that
            // cannot have a bar (in the background, the prompt's).
            plain: !quiet && !tty,
            last_line: Instant::now(),
            seeding: vec![false; torrents.len()],
            width,
        };
        if !ui::draws_bars() {
            return view;
        }
        let narrow = width < WIDE;
        let multi = MultiProgress::with_draw_target(ui::stderr_target());
        for t in torrents {
            let s = t.session.stats();
            let bar = multi.add(ProgressBar::new(s.wanted_bytes));
            bar.set_style(bar_style(several, narrow));
            bar.set_prefix(t.name.clone());
            view.bars.push(bar);
        }
        if several {
            let total: u64 = torrents
                .iter()
                .map(|t| t.session.stats().wanted_bytes)
                .sum();
            let bar = multi.add(ProgressBar::new(total));
            bar.set_style(bar_style(true, narrow));
            bar.set_prefix(format!("total ({} torrents)", torrents.len()));
            view.total = Some(bar);
        }
        ui::drawing_bars(&multi);
        view.multi = Some(multi);
        view
    }

    fn update(&mut self, torrents: &[Torrent], stats: &[Stats]) {
        let several = stats.len() > 1;
        if self.multi.is_some() {
            for (i, s) in stats.iter().enumerate() {
                let bar = &self.bars[i];
                if s.complete && !self.seeding[i] {
                    self.seeding[i] = true;
                    let name = if several { "{prefix:20!} " } else { "" };
                    bar.set_style(
                        ProgressStyle::with_template(&format!("{name}seeding  {{msg}}"))
                            .expect("valid template"),
                    );
                }
                bar.set_position(done(s));
                bar.set_message(fit(
                    message(s, self.seeding[i], self.width < WIDE),
                    self.room(),
                ));
            }
            if let Some(total) = &self.total {
                let t = totals(stats);
                total.set_position(done(&t));
                total.set_message(fit(message(&t, false, self.width < WIDE), self.room()));
            }
            return;
        }
        if !self.plain || self.last_line.elapsed() < Duration::from_secs(10) {
            return;
        }
        self.last_line = Instant::now();
        for (t, s) in torrents.iter().zip(stats) {
            let line = plain_line(s);
            if several {
                eprintln!("shoal: {}: {line}", t.name);
            } else {
                eprintln!("shoal: {line}");
            }
        }
        if several {
            eprintln!("shoal: total: {}", plain_line(&totals(stats)));
        }
    }

    fn println(&self, line: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(format!("shoal: {line}"));
            }
            None if self.plain => eprintln!("shoal: {line}"),
            None => {}
        }
    }

    /// Columns left for a bar's message: the terminal's, less the bar's
    /// fixed parts (so that a line never wraps).
    fn room(&self) -> usize {
        let fixed = match (self.total.is_some(), self.width < WIDE) {
            (false, false) => 61,
            (true, false) => 82,
            (false, true) => 18,
            (true, true) => 31,
        };
        // Two columns are kept free (see `ui::stderr_target`).
        self.width.saturating_sub(fixed + 3).max(10)
    }

    fn clear(&mut self) {
        ui::not_drawing();
        if let Some(m) = self.multi.take() {
            // Cleared while the bars are still in it (a bar finished first
            // leaves the set, and the set then no longer erases its line).
            let _ = m.clear();
            for b in self.bars.drain(..).chain(self.total.take()) {
                b.finish_and_clear();
            }
            m.set_draw_target(ProgressDrawTarget::hidden());
        }
    }
}

fn done(s: &Stats) -> u64 {
    s.wanted_bytes - s.left.min(s.wanted_bytes)
}

/// "3 peers (1 seed)".
fn peers(s: &Stats) -> String {
    format!(
        "{} ({})",
        ui::count(s.peers, "peer"),
        ui::count(s.seeds, "seed")
    )
}

/// What a bar says besides its progress: rates, peers and an ETA from
/// the bytes moving now — or, while nothing moves, why.
fn message(s: &Stats, seeding: bool, narrow: bool) -> String {
    let peers = peers(s);
    if seeding {
        return format!(
            "up {}  uploaded {}  {peers}",
            rate(s.up_rate),
            ui::short_size(s.uploaded)
        );
    }
    if s.peers == 0 {
        return match &s.tracker_problem {
            Some((why, next)) => format!(
                "no peers yet: {}; next try in {}",
                tracker_cause(why, narrow),
                humantime::format_duration(Duration::from_secs(next.as_secs()))
            ),
            None => "no peers yet".to_string(),
        };
    }
    let eta = ui::eta(s.left, s.down_rate);
    if narrow {
        format!(
            "{}/{} {} {} ETA {eta}",
            ui::short_size(done(s)),
            ui::short_size(s.wanted_bytes),
            rate(s.down_rate),
            ui::count(s.peers, "peer")
        )
    } else {
        format!(
            "down {}  up {}  {peers}  ETA {eta}",
            rate(s.down_rate),
            rate(s.up_rate)
        )
    }
}

/// A tracker failure as the bar says it: "tracker HOST:PORT: connection
/// refused", or on a narrow terminal "tracker connection refused" (the
/// full line, with the URL, is in the log).
fn tracker_cause(why: &str, narrow: bool) -> String {
    let Some((what, cause)) = why
        .strip_prefix("tracker ")
        .and_then(|rest| rest.rsplit_once(": "))
    else {
        return why.to_string();
    };
    if narrow {
        return format!("tracker {cause}");
    }
    // The URL's host and port: what tells one tracker from another.
    let host = what
        .split_once("://")
        .map_or(what, |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or(what);
    format!("tracker {host}: {cause}")
}

/// `text` cut to `room` columns (with "…"), so a bar never wraps.
fn fit(text: String, room: usize) -> String {
    if text.chars().count() <= room {
        return text;
    }
    let mut cut: String = text.chars().take(room.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn plain_line(s: &Stats) -> String {
    let peers = peers(s);
    if s.complete {
        return format!(
            "seeding, up {}, uploaded {}, {peers}",
            rate(s.up_rate),
            ui::short_size(s.uploaded)
        );
    }
    let pct = done(s) as f64 * 100.0 / s.wanted_bytes.max(1) as f64;
    let eta = match (&s.tracker_problem, s.peers) {
        (Some((why, next)), 0) => format!(
            ", no peers yet: {}; next try in {}",
            tracker_cause(why, false),
            humantime::format_duration(Duration::from_secs(next.as_secs()))
        ),
        _ => format!(", ETA {}", ui::eta(s.left, s.down_rate)),
    };
    format!(
        "{pct:.1}% ({} of {}), down {}, up {}, {peers}{eta}",
        ui::short_size(done(s)),
        ui::short_size(s.wanted_bytes),
        rate(s.down_rate),
        rate(s.up_rate)
    )
}

/// The sum over all torrents, for the total line.
fn totals(stats: &[Stats]) -> Stats {
    let mut t = Stats {
        complete: true,
        ..Stats::default()
    };
    for s in stats {
        t.pieces += s.pieces;
        t.pieces_have += s.pieces_have;
        t.wanted_bytes += s.wanted_bytes;
        t.left += s.left;
        t.downloaded += s.downloaded;
        t.uploaded += s.uploaded;
        t.down_rate += s.down_rate;
        t.up_rate += s.up_rate;
        t.peers += s.peers;
        t.seeds += s.seeds;
        t.complete &= s.complete;
    }
    t
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
