//! `shoal demo`: a whole swarm on loopback in one process — a tracker, one
//! initial seeder and N leechers, each a real client on real sockets — with
//! a live view of who has which pieces, and a summary that shows the point
//! of BitTorrent: the first seeder uploads about one copy, the peers trade
//! the rest among themselves.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use client::session::{Config, Session};
use client::storage::Storage;
use client::wire::Bitfield;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use torrent_format::create::{self, CreateOptions};
use torrent_format::pieces::{self, HashOptions};
use torrent_format::Metainfo;

use super::swarm;
use crate::ui;

const EXAMPLES: &str = "\
Examples:
  shoal demo                          sample-files/, one initial seeder, 8 leechers
  shoal demo --leechers 16 --size 64M
  shoal demo --no-initial-seeding     compare: the seed uploads several copies
  shoal demo --keep /tmp/swarm        keep the torrent and every peer's copy

Exit status: 0 when every leecher completed with data matching the torrent.";

/// Run a whole swarm on this machine: a tracker, a seeder and leechers
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Number of leechers
    #[arg(short = 'n', long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    leechers: u32,
    /// Share this many bytes of generated data instead of sample-files/
    /// (suffixes K, M, G)
    #[arg(long, value_name = "BYTES", value_parser = swarm::parse_rate)]
    size: Option<u64>,
    /// Upload limit of every peer, so the swarm can be watched
    /// [default: a tenth of the content per second]
    #[arg(long, value_name = "RATE", value_parser = swarm::parse_rate)]
    upload_limit: Option<u64>,
    /// No upload limit: as fast as loopback goes
    #[arg(long, conflicts_with = "upload_limit")]
    unlimited: bool,
    /// Let the seed announce all its pieces (plain seeding) instead of
    /// initial seeding
    #[arg(long)]
    no_initial_seeding: bool,
    /// Keep the torrent and every peer's copy in DIR (default: a temporary
    /// directory, removed at the end)
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
}

/// Where sample-files/ is: next to the working directory, or in the source
/// tree this binary was built from.
fn sample_files() -> Option<PathBuf> {
    [
        PathBuf::from("sample-files"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("sample-files"),
    ]
    .into_iter()
    .find(|p| p.is_dir())
}

/// Deterministic pseudo-random bytes (xorshift), written in 1 MiB chunks.
fn generate(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = size;
    let mut chunk = vec![0u8; 1 << 20];
    while left > 0 {
        for w in chunk.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

struct Peer {
    name: String,
    session: Session,
    done_at: Option<Duration>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Everything lives under one directory: a temporary one unless --keep.
    let temp;
    let dir = match &args.keep {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("shoal-demo-")
                .tempdir()
                .context("cannot make a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let content = match (args.size, sample_files()) {
        (None, Some(p)) => p,
        (size, _) => {
            let size = size.unwrap_or(4 << 20);
            let p = dir.join("demo.bin");
            generate(&p, size)?;
            p
        }
    };
    let rt = swarm::runtime()?;
    rt.block_on(demo(args, dir, content))
}

async fn demo(args: Args, dir: PathBuf, content: PathBuf) -> anyhow::Result<ExitCode> {
    // The tracker, in this process.
    let tracker_config = tracker::Config {
        interval: 5,
        min_interval: 1,
        peer_timeout: 30,
        ..tracker::Config::default()
    };
    let store = tracker::store::MemoryStore::new(tracker::store::Limits::default());
    let tracker = Arc::new(tracker::Tracker::new(tracker_config, Box::new(store))?);
    let bound = tracker::server::bind(tracker::server::ServeOptions {
        listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        threads: 1,
        drain_timeout: Duration::from_secs(1),
        ..Default::default()
    })?;
    let tracker_addr = bound.local_addrs()[0];
    let stop_tracker = CancellationToken::new();
    let tracker_task = tokio::spawn(bound.run(tracker, stop_tracker.clone()));

    // The torrent: pieces small enough for a piece map worth watching.
    let announce = format!("http://{tracker_addr}/announce");
    let mut opts = CreateOptions {
        announce: vec![vec![announce]],
        created_by: Some(concat!("shoal ", env!("CARGO_PKG_VERSION"), " demo").into()),
        ..CreateOptions::default()
    };
    let plan = create::plan(&content, &opts)?;
    let total = plan.total_length();
    let exp = (15..=24)
        .find(|e| total.div_ceil(1 << e) <= 256)
        .unwrap_or(24);
    opts.piece_exp = Some(exp);
    let plan = create::plan(&content, &opts)?;
    let bytes = plan.build(&opts, HashOptions::default(), &|_| {})?;
    let torrent = dir.join("demo.torrent");
    std::fs::write(&torrent, &bytes)
        .with_context(|| format!("cannot write {}", torrent.display()))?;
    let meta = Metainfo::from_bytes(&bytes)?;
    let info = Arc::new(meta.info.clone());
    let limit = if args.unlimited {
        None
    } else {
        Some(args.upload_limit.unwrap_or((total / 10).max(16 << 10)))
    };

    let config = |initial_seeding| {
        let mut c = Config::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        c.bind = Some([127, 0, 0, 1].into());
        c.trackers = meta.trackers();
        c.upload_limit = limit;
        c.initial_seeding = initial_seeding;
        c
    };
    let quiet = !std::io::stderr().is_terminal();
    // Short lines: an 80-column terminal shows each whole.
    eprintln!(
        "shoal demo: {} ({}, {} of {})",
        info.name(),
        ui::short_size(total),
        ui::count(info.piece_count(), "piece"),
        ui::short_size(info.piece_length()),
    );
    eprintln!(
        "1 {}seeder, {} on loopback, each uploading at most {}",
        if args.no_initial_seeding {
            ""
        } else {
            "initial "
        },
        ui::count(args.leechers, "leecher"),
        limit.map_or("without a limit".into(), |l| format!(
            "{}/s",
            ui::short_size(l)
        )),
    );
    eprintln!("tracker: http://{tracker_addr}/stats");
    eprintln!("files: {}", dir.display());

    // The seeder, then the leechers, all at once.
    let mut full = Bitfield::new(info.piece_count());
    (0..info.piece_count()).for_each(|i| {
        full.set(i);
    });
    let seed_storage = Arc::new(Storage::open_read_only(info.clone(), content.clone())?);
    let seed = Session::start(
        info.clone(),
        seed_storage,
        full,
        config(!args.no_initial_seeding),
    )
    .await?;
    let mut peers = vec![Peer {
        name: "seed".into(),
        session: seed,
        done_at: Some(Duration::ZERO),
    }];
    let started = Instant::now();
    for i in 1..=args.leechers {
        let root = dir.join(format!("peer-{i}")).join(info.name());
        let storage = Arc::new(Storage::create(info.clone(), root, None)?);
        let session = Session::start(
            info.clone(),
            storage,
            Bitfield::new(info.piece_count()),
            config(false),
        )
        .await?;
        peers.push(Peer {
            name: format!("peer {i}"),
            session,
            done_at: None,
        });
    }

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut view = View::new(quiet, peers.len());
    if !quiet {
        eprintln!(
            "map: a column is 1/{} of the pieces; ' ' none, ░ some, ▒ half, ▓ most, █ all",
            view.map_width
        );
    }
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let deadline = Duration::from_secs(300);
    let mut interrupted = false;
    loop {
        tokio::select! {
            _ = sigint.recv() => { interrupted = true; break }
            _ = sigterm.recv() => { interrupted = true; break }
            _ = tick.tick() => {}
        }
        let now = started.elapsed();
        for p in &mut peers {
            if p.done_at.is_none() && p.session.is_complete() {
                p.done_at = Some(now);
            }
        }
        view.draw(&peers, &info, now);
        if peers.iter().all(|p| p.done_at.is_some()) {
            break;
        }
        if let Some(e) = peers.iter().find_map(|p| p.session.error()) {
            view.finish();
            bail!("{e}");
        }
        if now > deadline {
            view.finish();
            bail!("the swarm did not finish in {} s", deadline.as_secs());
        }
    }
    view.finish();

    // The story in numbers.
    let seed_id = peers[0].session.peer_id();
    let seed_up = peers[0].session.stats().uploaded;
    let mut rows = Vec::new();
    for p in &peers[1..] {
        let (mut from_seed, mut from_peers, mut up) = (0, 0, 0);
        for (id, down, sent) in p.session.peer_totals() {
            if id == seed_id {
                from_seed += down;
            } else {
                from_peers += down;
            }
            up += sent;
        }
        rows.push((p.name.clone(), p.done_at, from_seed, from_peers, up));
    }
    let mut stopping = tokio::task::JoinSet::new();
    for p in peers {
        stopping.spawn(p.session.shutdown());
    }
    while stopping.join_next().await.is_some() {}
    stop_tracker.cancel();
    let _ = tracker_task.await;
    if interrupted {
        eprintln!("shoal demo: interrupted");
        return Ok(ExitCode::from(130));
    }

    let mut out = String::new();
    out.push_str(&format!(
        "\n{:<8} {:>9} {:>12} {:>12} {:>12}\n",
        "peer", "done in", "from seed", "from peers", "uploaded"
    ));
    for (name, done, from_seed, from_peers, up) in &rows {
        out.push_str(&format!(
            "{:<8} {:>9} {:>12} {:>12} {:>12}\n",
            name,
            done.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            ui::short_size(*from_seed),
            ui::short_size(*from_peers),
            ui::short_size(*up),
        ));
    }
    let ratio = seed_up as f64 / total.max(1) as f64;
    let traded: u64 = rows.iter().map(|r| r.3).sum();
    out.push_str(&format!(
        "\nThe seed uploaded {} = {ratio:.2} × the content. The {} got the rest, \
         {:.2} × the content, from each other.\n",
        ui::short_size(seed_up),
        ui::count(rows.len(), "leecher"),
        traded as f64 / total.max(1) as f64,
    ));
    // Every copy checked against the torrent's piece hashes.
    let mut bad = 0;
    for i in 1..=rows.len() {
        let root = dir.join(format!("peer-{i}")).join(info.name());
        let report = pieces::verify(&info, &root, HashOptions::default(), &|_| {});
        if !report.all_ok() {
            bad += 1;
            out.push_str(&format!("peer {i}: copy does NOT match the torrent\n"));
        }
    }
    if bad == 0 {
        let copies = match rows.len() {
            1 => "The copy matches".to_string(),
            n => format!("All {n} copies match"),
        };
        out.push_str(&format!(
            "{copies} the torrent's {} piece {}.\n",
            info.piece_count(),
            if info.piece_count() == 1 {
                "hash"
            } else {
                "hashes"
            }
        ));
    }
    ui::print_out(&out)?;
    Ok(if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The live view: one row per peer with its piece map, redrawn in place on
/// a terminal; a progress line every few seconds otherwise.
struct View {
    plain: bool,
    drawn: usize,
    last_line: Option<Instant>,
    /// Columns of the piece map: as many as the terminal leaves room for,
    /// up to [`MAP_WIDTH`].
    map_width: usize,
    /// Rates written short ("↓1.2 MiB/s"), for terminals under 112 columns.
    compact: bool,
}

const MAP_WIDTH: usize = 48;

impl View {
    fn new(plain: bool, _rows: usize) -> View {
        let width = ui::term_width().unwrap_or(120);
        // A row is 64 (57 compact) columns besides its map; one more is
        // kept free so that no row fills the last column.
        let compact = width < 112;
        let fixed = if compact { 58 } else { 65 };
        View {
            plain,
            drawn: 0,
            last_line: None,
            map_width: width.saturating_sub(fixed).clamp(10, MAP_WIDTH),
            compact,
        }
    }

    fn draw(&mut self, peers: &[Peer], info: &torrent_format::Info, now: Duration) {
        if self.plain {
            if self
                .last_line
                .is_some_and(|t| t.elapsed() < Duration::from_secs(2))
            {
                return;
            }
            self.last_line = Some(Instant::now());
            let done = peers.iter().filter(|p| p.done_at.is_some()).count() - 1;
            let seed_up = peers[0].session.stats().uploaded;
            eprintln!(
                "{:>5.1} s: {done} of {} leechers done; the seed uploaded {:.2} × the content",
                now.as_secs_f64(),
                peers.len() - 1,
                seed_up as f64 / info.total_length().max(1) as f64
            );
            return;
        }
        let mut out = String::new();
        if self.drawn > 0 {
            out.push_str(&format!("\x1b[{}A", self.drawn));
        }
        let pieces = info.piece_count();
        for p in peers {
            let have = p.session.have();
            let s = p.session.stats();
            let map = piece_map(&have, pieces, self.map_width);
            let state = match p.done_at {
                Some(_) if p.name == "seed" => "seed".to_string(),
                Some(d) => format!("seed after {:.1} s", d.as_secs_f64()),
                None => format!("{:>3}%", have.count() * 100 / pieces.max(1)),
            };
            out.push_str(&if self.compact {
                format!(
                    "\x1b[2K{:<7} |{map}| ↓{:>9}/s ↑{:>9}/s  {state}\n",
                    p.name,
                    ui::short_size(s.down_rate),
                    ui::short_size(s.up_rate),
                )
            } else {
                format!(
                    "\x1b[2K{:<7} |{map}| down {:>10}/s  up {:>10}/s  {state}\n",
                    p.name,
                    ui::short_size(s.down_rate),
                    ui::short_size(s.up_rate),
                )
            });
        }
        self.drawn = peers.len();
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(out.as_bytes());
        let _ = err.flush();
    }

    fn finish(&mut self) {
        self.drawn = 0;
    }
}

/// The pieces as `width` characters, each shaded by how much of its share
/// of pieces is there.
fn piece_map(have: &Bitfield, pieces: usize, width: usize) -> String {
    const SHADES: [char; 5] = [' ', '░', '▒', '▓', '█'];
    let pieces = pieces.max(1);
    (0..width)
        .map(|c| {
            let from = c * pieces / width;
            let to = ((c + 1) * pieces / width).max(from + 1);
            let got = (from..to).filter(|&i| have.get(i)).count();
            SHADES[got * 4 / (to - from)]
        })
        .collect()
}
