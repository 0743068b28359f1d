//! `shoal seed`: check data against a torrent, then upload it to the swarm.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use client::storage::Storage;
use client::wire::Bitfield;
use torrent_format::pieces::{self, HashOptions};

use super::swarm::{self, NetArgs, Until};
use crate::ui;

const EXAMPLES: &str = "\
Examples:
  shoal seed my-album.torrent my-album/
  shoal seed movie.torrent ~/Videos                (finds ~/Videos/<name>)
  shoal seed t.torrent data/ --port 51413 --upload-limit 2M

The data is checked first; seeding is refused when it does not match.
Runs until Ctrl-C (a second Ctrl-C quits at once).";

/// Check data against a torrent, then upload it to the swarm until Ctrl-C
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The .torrent file
    torrent: PathBuf,
    /// The content: the file itself (single-file torrent) or its top
    /// directory (multi-file), or a directory that holds it under the
    /// torrent's name [default: ./NAME]
    path: Option<PathBuf>,
    #[command(flatten)]
    net: NetArgs,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let meta = super::load_torrent(&args.torrent)?;
    let info = Arc::new(meta.info.clone());
    let content = super::verify::content_path(&info, args.path);
    let bar = if args.net.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        ui::bytes_bar(info.total_length(), "checking")
    };
    let opts = HashOptions {
        threads: ui::default_threads(),
        // Read, not mapped: mapped pages would count in the seed's memory
        // use for as long as it runs.
        mmap: false,
    };
    let report = pieces::verify(&info, &content, opts, &|n| bar.inc(n));
    bar.finish_and_clear();
    if !report.all_ok() {
        let problems = super::verify::problems(&info, &content, &report);
        bail!(
            "refusing to seed: {} does not match {} ({} of {} pieces good)\n  {}",
            content.display(),
            args.torrent.display(),
            report.good_pieces(),
            info.piece_count(),
            problems.join("\n  ")
        );
    }
    let storage = Storage::open_read_only(info.clone(), content.clone())
        .with_context(|| format!("cannot open {}", content.display()))?;
    let mut have = Bitfield::new(info.piece_count());
    (0..info.piece_count()).for_each(|i| {
        have.set(i);
    });
    let config = args.net.config(&meta)?;
    let until = Until {
        exit_on_complete: false,
        seed_ratio: None,
        seed_time: None,
        no_peers: None,
    };
    let rt = swarm::runtime()?;
    rt.block_on(async {
        let session = args.net.start(info.clone(), storage, have, config).await?;
        tracing::info!(
            "seeding {} ({}), listening on {};",
            info.name(),
            ui::short_size(info.total_length()),
            session.listen_addr()
        );
        swarm::run(session, &args.net, until).await
    })
}
