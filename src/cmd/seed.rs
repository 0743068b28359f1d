//! `shoal seed`: check data against torrents, then upload it to their
//! swarms, all on one port.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use client::storage::Storage;
use client::wire::Bitfield;
use torrent_format::pieces::{self, HashOptions};
use torrent_format::Metainfo;

use super::swarm::{self, NetArgs, Torrent, Until};
use crate::ui;

const EXAMPLES: &str = "\
Examples:
  shoal seed my-album.torrent my-album/
  shoal seed movie.torrent ~/Videos                (finds ~/Videos/<name>)
  shoal seed t.torrent data/ --port 51413 --upload-limit 2M
  shoal seed --data ~/shared a.torrent b.torrent   (each at ~/shared/<name>)
  shoal seed --data ~/shared ~/torrents/           (every .torrent in it)

The data is checked first; a torrent whose data does not match is not
seeded (with one torrent, that is an error). All torrents share one port
and the upload limit. Runs until Ctrl-C (a second Ctrl-C quits at once).";

/// Check data against torrents, then upload it to their swarms until Ctrl-C
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The .torrent file, then optionally its content: the file itself
    /// (single-file torrent) or its top directory (multi-file), or a
    /// directory that holds it under the torrent's name [default: ./NAME].
    /// With --data: any number of .torrent files and directories of them
    #[arg(required = true, value_name = "TORRENT [PATH]")]
    inputs: Vec<PathBuf>,
    /// Where the torrents' content is: each under DIR/<name>
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    #[command(flatten)]
    net: NetArgs,
}

/// A torrent to seed and where its content is.
struct Job {
    file: PathBuf,
    meta: Metainfo,
    content: PathBuf,
}

fn is_torrent_file(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("torrent"))
        && !p.is_dir()
}

/// The .torrent files in `dir`, sorted by name.
fn torrents_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| is_torrent_file(p) && p.is_file())
        .collect();
    v.sort();
    if v.is_empty() {
        bail!("{} holds no .torrent files", dir.display());
    }
    Ok(v)
}

fn jobs(args: &Args) -> anyhow::Result<Vec<Job>> {
    let mut out = Vec::new();
    let load = |file: &Path, path: Option<PathBuf>| -> anyhow::Result<Job> {
        let meta = super::load_torrent(file)?;
        let content = super::verify::content_path(&meta.info, path);
        Ok(Job {
            file: file.to_path_buf(),
            meta,
            content,
        })
    };
    if let Some(data) = &args.data {
        for input in &args.inputs {
            let files = if input.is_dir() {
                torrents_in(input)?
            } else {
                vec![input.clone()]
            };
            for f in files {
                out.push(load(&f, Some(data.clone()))?);
            }
        }
    } else if let [torrent, path] = args.inputs.as_slice() {
        if is_torrent_file(path) {
            out.push(load(torrent, None)?);
            out.push(load(path, None)?);
        } else {
            out.push(load(torrent, Some(path.clone()))?);
        }
    } else {
        for f in &args.inputs {
            if f.is_dir() {
                bail!(
                    "{} is a directory: name the torrents' content with --data DIR to seed every .torrent in it",
                    f.display()
                );
            }
            out.push(load(f, None)?);
        }
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|j| seen.insert(j.meta.info.info_hash()));
    Ok(out)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let jobs = jobs(&args)?;
    let several = jobs.len() > 1;
    let mut ready = Vec::new();
    for job in jobs {
        let info = Arc::new(job.meta.info.clone());
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
        let report = pieces::verify(&info, &job.content, opts, &|n| bar.inc(n));
        bar.finish_and_clear();
        if !report.all_ok() {
            let problems = super::verify::problems(&info, &job.content, &report);
            let why = format!(
                "{} does not match {} ({} of {} pieces good)\n  {}",
                job.content.display(),
                job.file.display(),
                report.good_pieces(),
                info.piece_count(),
                problems.join("\n  ")
            );
            if !several {
                bail!("refusing to seed: {why}");
            }
            eprintln!("shoal: not seeding {}: {why}", info.name());
            continue;
        }
        let storage = Storage::open_read_only(info.clone(), job.content.clone())
            .with_context(|| format!("cannot open {}", job.content.display()))?;
        let mut have = Bitfield::new(info.piece_count());
        (0..info.piece_count()).for_each(|i| {
            have.set(i);
        });
        let config = args.net.config(&job.meta)?;
        ready.push((info, storage, have, config));
    }
    if ready.is_empty() {
        bail!("nothing to seed: no torrent's data matched");
    }
    let until = Until {
        exit_on_complete: false,
        seed_ratio: None,
        seed_time: None,
        no_peers: None,
    };
    let rt = swarm::runtime()?;
    rt.block_on(async {
        let public = ready.iter().any(|(info, ..)| !info.is_private());
        let engine = args.net.engine(ready.len(), None, public).await?;
        let mut torrents = Vec::new();
        let mut total = 0;
        for (info, storage, have, config) in ready {
            total += info.total_length();
            let session = engine.add(info, Arc::new(storage), have, config).await?;
            torrents.push(Torrent::new(session));
        }
        let what = match torrents.as_slice() {
            [one] => format!(
                "{} ({})",
                one.name,
                ui::short_size(one.session.info().total_length())
            ),
            many => format!("{} torrents ({})", many.len(), ui::short_size(total)),
        };
        tracing::info!("seeding {what}, listening on {};", engine.listen_addr());
        swarm::run(engine, torrents, &args.net, until).await
    })
}
