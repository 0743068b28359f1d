//! `shoal download`: fetch a torrent's data from its swarm, then seed it.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use client::resume;
use client::storage::Storage;
use client::wire::Bitfield;
use torrent_format::pieces::{self, HashOptions, Layout};

use super::swarm::{self, NetArgs, Until};
use crate::ui;

const EXAMPLES: &str = "\
Examples:
  shoal download ubuntu.torrent -o ~/Downloads
  shoal download album.torrent --exit-on-complete          stop once it is all here
  shoal download album.torrent --seed-ratio 2              seed until uploaded = 2 × size
  shoal download big.torrent --only 0,3 --download-limit 5M
  shoal download t.torrent --no-trackers --peer 192.0.2.7:6881

Interrupted downloads resume: run the same command again and only the
missing pieces are fetched (progress is kept in DIR/.shoal/).

Exit status: 0 when the download completed (or seeding ended), 1 on an error,
2 on bad usage, 130 when interrupted before completing.";

/// Download a torrent from its swarm, then keep seeding it
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The .torrent file
    torrent: PathBuf,
    /// Directory to download into (the content goes to DIR/NAME)
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    output: PathBuf,
    #[command(flatten)]
    net: NetArgs,
    /// Exit once the download is complete instead of seeding
    #[arg(short = 'x', long)]
    exit_on_complete: bool,
    /// After completing, seed until uploaded ≥ R × the size
    #[arg(long, value_name = "R", value_parser = parse_ratio)]
    seed_ratio: Option<f64>,
    /// After completing, seed for this long (e.g. 30m, 2h)
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    seed_time: Option<Duration>,
    /// Download at most this many bytes per second (suffixes K, M, G)
    #[arg(long, value_name = "RATE", value_parser = swarm::parse_rate)]
    download_limit: Option<u64>,
    /// Download only these files (indices as 'shoal show' lists them, from 0)
    #[arg(long, value_name = "INDEX", value_delimiter = ',', num_args = 1..)]
    only: Vec<usize>,
    /// Give up when no peer is found for this long
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    no_peers_timeout: Duration,
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!("'{s}' is not a ratio like 1.5")),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let meta = super::load_torrent(&args.torrent)?;
    let info = Arc::new(meta.info.clone());
    let files = info.files().len();
    if let Some(bad) = args.only.iter().find(|&&i| i >= files) {
        bail!(
            "--only {bad}: the torrent has {files} file(s), numbered 0 to {}",
            files - 1
        );
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let root = args.output.join(info.name());
    let wanted_files = (!args.only.is_empty()).then(|| {
        let only: HashSet<usize> = args.only.iter().copied().collect();
        (0..files).map(|i| only.contains(&i)).collect::<Vec<bool>>()
    });
    let wanted_pieces = wanted_files.as_ref().map(|w| {
        let mut b = Bitfield::new(info.piece_count());
        for (i, _) in w.iter().enumerate().filter(|(_, &on)| on) {
            for p in info.file_pieces(i) {
                b.set(p);
            }
        }
        b
    });
    // Stamps before `create` extends new files: pieces in files that were
    // missing or short cannot be complete, so they are not checked.
    let before = client::storage::stamps_at(&info, &root);
    let storage = Storage::create(info.clone(), root.clone(), wanted_files)
        .with_context(|| format!("cannot set up {}", root.display()))?;

    // What is here already: the resume file, re-checking what it cannot vouch for.
    let resume_path = resume::resume_path(&args.output, &info);
    let state = resume::load(&resume_path, &info, &before);
    let mut have = state.trusted.clone();
    if !state.to_check.is_empty() {
        if let Some(why) = &state.reason {
            tracing::debug!("resume file not used ({why}); checking the data on disk");
        }
        let check: HashSet<usize> = state.to_check.iter().map(|&p| p as usize).collect();
        let bytes: u64 = check.iter().map(|&p| info.piece_size(p)).sum();
        let bar = if args.net.quiet {
            indicatif::ProgressBar::hidden()
        } else {
            ui::bytes_bar(bytes, "checking")
        };
        let layout = Layout::for_torrent(&info, &root);
        let opts = HashOptions {
            threads: ui::default_threads(),
            // Read, not mapped: mapped pages would count in our memory use.
            mmap: false,
        };
        let hashes = pieces::hash_pieces(&layout, opts, false, &|p| check.contains(&p), &|n| {
            bar.inc(n)
        });
        bar.finish_and_clear();
        for (p, h) in hashes.iter().enumerate() {
            if let Some(Ok(h)) = h {
                if *h == info.piece_hashes()[p] {
                    have.set(p);
                }
            }
        }
    }
    if have.count() > 0 && !args.net.quiet {
        eprintln!(
            "shoal: {} of {} pieces already here",
            have.count(),
            info.piece_count()
        );
    }

    let mut config = args.net.config(&meta)?;
    config.wanted = wanted_pieces;
    config.resume = Some(resume_path);
    config.download_limit = args.download_limit;
    let until = Until {
        exit_on_complete: args.exit_on_complete,
        seed_ratio: args.seed_ratio,
        seed_time: args.seed_time,
        no_peers: Some(args.no_peers_timeout),
    };
    if config.trackers.is_empty() && config.peers.is_empty() {
        bail!("no way to find peers: the torrent names no tracker; give one with --peer HOST:PORT");
    }
    let rt = swarm::runtime()?;
    rt.block_on(async {
        let session = args.net.start(info.clone(), storage, have, config).await?;
        tracing::info!(
            "downloading {} into {}, listening on {};",
            info.name(),
            args.output.display(),
            session.listen_addr()
        );
        swarm::run(session, &args.net, until).await
    })
}
