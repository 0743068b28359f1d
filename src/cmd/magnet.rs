//! Turning a magnet link into a torrent for `shoal download`: the copy an
//! earlier run saved in DIR/.shoal/, or the info dictionary fetched from
//! the magnet's peers (BEP 9) and checked against its hash.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use client::fetch::{FetchConfig, FetchError, FetchStatus};
use client::Engine;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use torrent_format::magnet::parse_peer;
use torrent_format::metainfo::{torrent_file, MAX_TORRENT_SIZE};
use torrent_format::{Magnet, Metainfo};

use super::swarm::NetArgs;
use crate::ui;

/// What `download` needs to fetch a magnet's metadata.
pub struct Options<'a> {
    pub output: &'a Path,
    pub net: &'a NetArgs,
    pub save_torrent: Option<&'a Path>,
    pub max_size: usize,
    /// Give up when no peer is connected for this long.
    pub no_peers: Duration,
    /// No download follows: tell the trackers `stopped` after the fetch.
    pub metadata_only: bool,
}

/// A magnet made a torrent.
pub struct Resolved {
    pub meta: Metainfo,
    /// Peers to dial for the data: the magnet's own and those given or
    /// named by a tracker during the metadata fetch.
    pub peers: Vec<SocketAddr>,
    /// Peers the fetch heard of only through ut_pex.
    pub pex_peers: Vec<SocketAddr>,
}

/// Resolves `HOST:PORT` peers (`x.pe`, `--peer`); a bad one is an error
/// naming where it came from.
pub async fn resolve_peers(peers: &[String], what: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out = Vec::new();
    for p in peers {
        let Some((host, port)) = parse_peer(p) else {
            bail!("{what} {p}: not a HOST:PORT peer address");
        };
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("{what} {p}: not a HOST:PORT that resolves"))?
            .next();
        match addr {
            Some(a) => out.push(a),
            None => bail!("{what} {p}: the name has no address"),
        }
    }
    Ok(out)
}

/// The torrent for `magnet`: the one saved by an earlier run if there is a
/// valid one, else fetched from peers and saved. `None` when interrupted
/// (Ctrl-C, SIGTERM) before the metadata came.
pub async fn resolve(
    engine: &Engine,
    magnet: &Magnet,
    opts: &Options<'_>,
) -> anyhow::Result<Option<Resolved>> {
    let hash = magnet.info_hash;
    let quiet = opts.net.quiet;
    let mut peers = resolve_peers(&magnet.peers, "x.pe").await?;
    let saved_at = client::resume::torrent_path(opts.output, hash);
    if let Some(meta) = saved(&saved_at, magnet) {
        if !quiet {
            eprintln!(
                "shoal: using the metadata saved in {} (not fetching it again)",
                saved_at.display()
            );
        }
        save_copy(opts.save_torrent, &meta, magnet)?;
        return Ok(Some(Resolved {
            meta,
            peers,
            pex_peers: Vec::new(),
        }));
    }

    let mut config = FetchConfig::new(hash);
    config.peers = peers.clone();
    config
        .peers
        .extend(resolve_peers(&opts.net.peers, "--peer").await?);
    if !opts.net.no_trackers {
        config.trackers = magnet.trackers.clone();
    }
    config.max_size = opts.max_size;
    config.max_peers = (opts.net.max_peers as usize).max(1);
    config.announce_stopped = opts.metadata_only;
    if config.peers.is_empty() && config.trackers.is_empty() && engine.dht().is_none() {
        bail!(
            "no way to find peers for magnet {hash}: it names no tracker (tr=) and no peer (x.pe=){}, and the DHT is off; give a peer with --peer HOST:PORT, or drop --no-dht",
            if opts.net.no_trackers && !magnet.trackers.is_empty() {
                " that --no-trackers leaves"
            } else {
                ""
            }
        );
    }

    let started = Instant::now();
    let (status_tx, mut status) = watch::channel(FetchStatus::default());
    let mut sigint = signal(SignalKind::interrupt()).context("installing a signal handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing a signal handler")?;
    let has_trackers = !config.trackers.is_empty();
    let fetch = engine.fetch_metadata(config, status_tx);
    tokio::pin!(fetch);
    let mut view = View::new(quiet, magnet);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut last_peer = Instant::now();
    let fetched = loop {
        tokio::select! {
            r = &mut fetch => break r,
            _ = sigint.recv() => { view.clear(); return Ok(None) }
            _ = sigterm.recv() => { view.clear(); return Ok(None) }
            _ = status.changed() => {}
            _ = tick.tick() => {}
        }
        let s = *status.borrow_and_update();
        if s.connected > 0 {
            last_peer = Instant::now();
        } else if last_peer.elapsed() >= opts.no_peers {
            view.clear();
            // Say what was asked: trackers, the DHT, or both.
            let sources = match (has_trackers, engine.dht().is_some()) {
                (true, true) => "is the tracker up? the DHT found none either",
                (true, false) => "is the tracker up?",
                (false, true) => "the DHT found none",
                (false, false) => "no tracker, and the DHT is off",
            };
            bail!(
                "no peers found for {} while fetching the metadata of magnet {hash} ({} tried); {sources} (name a peer with --peer HOST:PORT; try 'shoal dht get-peers {hash}')",
                humantime::format_duration(opts.no_peers),
                ui::count_as(s.known, "address", "addresses")
            );
        }
        view.show(&s);
    };
    view.clear();
    let fetched = match fetched {
        Ok(f) => f,
        Err(FetchError::ShuttingDown) => return Ok(None),
        Err(e) => bail!("magnet {hash}: {e}"),
    };
    let bytes = torrent_file(
        fetched.info.raw_bytes(),
        &magnet.trackers,
        &magnet.web_seeds,
    );
    let meta = Metainfo::from_bytes(&bytes)
        .with_context(|| format!("magnet {hash}: the fetched metadata makes no valid torrent"))?;
    if !quiet {
        eprintln!(
            "shoal: metadata: {} in {} from {} in {:.1} s: {}",
            ui::short_size(fetched.info.raw_bytes().len() as u64),
            ui::count(fetched.pieces, "piece"),
            ui::count(fetched.senders, "peer"),
            started.elapsed().as_secs_f64(),
            meta.info.name()
        );
    }
    client::resume::save_state(&saved_at, &bytes)
        .with_context(|| format!("saving {}", saved_at.display()))?;
    save_copy(opts.save_torrent, &meta, magnet)?;
    for p in fetched.peers {
        if !peers.contains(&p) {
            peers.push(p);
        }
    }
    Ok(Some(Resolved {
        meta,
        peers,
        pex_peers: fetched.pex_peers,
    }))
}

/// The torrent an earlier run saved, if it is there, valid and the
/// magnet's.
fn saved(path: &Path, magnet: &Magnet) -> Option<Metainfo> {
    let bytes = match client::resume::load_state(path, MAX_TORRENT_SIZE as u64) {
        Ok(b) => b?,
        Err(e) => {
            tracing::warn!("not using {}: {e}", path.display());
            return None;
        }
    };
    match Metainfo::from_bytes(&bytes) {
        Ok(m) if m.info_hash() == magnet.info_hash => Some(m),
        Ok(_) => {
            tracing::warn!("not using {}: another torrent's", path.display());
            None
        }
        Err(e) => {
            tracing::warn!("not using {}: {e}", path.display());
            None
        }
    }
}

/// Writes the torrent where `--save-torrent` says (the magnet's trackers
/// and web seeds in it).
fn save_copy(to: Option<&Path>, meta: &Metainfo, magnet: &Magnet) -> anyhow::Result<()> {
    let Some(to) = to else { return Ok(()) };
    let bytes = torrent_file(meta.info.raw_bytes(), &magnet.trackers, &magnet.web_seeds);
    std::fs::write(to, bytes).with_context(|| format!("cannot write {}", to.display()))?;
    Ok(())
}

/// The progress of a fetch: a spinner on a terminal, else a line now and
/// then when something changed.
struct View {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    last_line: Option<(Instant, (usize, usize))>,
}

impl View {
    fn new(quiet: bool, magnet: &Magnet) -> View {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        if !quiet {
            let name = magnet.name.as_deref().unwrap_or("no name given");
            eprintln!(
                "shoal: fetching the metadata of magnet {} ({})",
                magnet.info_hash,
                name.escape_debug()
            );
        }
        View {
            bar,
            quiet,
            last_line: None,
        }
    }

    fn show(&mut self, s: &FetchStatus) {
        if self.quiet {
            return;
        }
        let got = match s.size {
            Some(size) => format!(
                ", {}/{} of {}",
                s.got,
                ui::count(s.pieces, "piece"),
                ui::short_size(size as u64)
            ),
            None => String::new(),
        };
        let line = format!(
            "fetching metadata from {} ({} connected, {} known){got}",
            ui::count(s.peers, "peer"),
            s.connected,
            s.known
        );
        if let Some(bar) = &self.bar {
            bar.set_message(line);
            return;
        }
        let key = (s.peers, s.got);
        let due = match self.last_line {
            None => s.connected > 0 || s.known > 0,
            Some((at, last)) => last != key && at.elapsed() >= Duration::from_secs(2),
        };
        if due {
            eprintln!("shoal: {line}");
            self.last_line = Some((Instant::now(), key));
        }
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
