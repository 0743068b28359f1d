//! `shoal seed`: check data against torrents, then upload it to their
//! swarms, all on one port.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use client::resume;
use client::storage::{self, FileStamp, Storage};
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
seeded (with one torrent, that is an error). Data whose files have the
sizes and modification times they had when it was last checked (by
`shoal seed`, or by `shoal download` into the same place) is trusted
without reading it again; --recheck hashes it anyway. All torrents share
one port and the upload limit. Runs until Ctrl-C (a second Ctrl-C quits
at once).";

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
    /// Hash the data even when its files are unchanged since it was last
    /// checked
    #[arg(long)]
    recheck: bool,
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
        if let Err(e) = super::verify::check_content_kind(&info, &job.content) {
            if !several {
                return Err(e.context("refusing to seed"));
            }
            tracing::warn!("not seeding {}: {e}", info.name());
            continue;
        }
        // Stamps before any reading: a file changed while it is hashed has
        // a newer mtime than the one remembered, so it is checked next time.
        let stamps = storage::stamps_at(&info, &job.content);
        let trusted = (!args.recheck)
            .then(|| trusted_by(&info, &job.content, &stamps))
            .flatten();
        if let Some(by) = trusted {
            tracing::info!(
                "{}: files unchanged since {by}; not hashed again (--recheck to hash them)",
                info.name()
            );
        } else {
            let bar = if args.net.quiet {
                indicatif::ProgressBar::hidden()
            } else {
                ui::bytes_bar(info.total_length(), "checking")
            };
            let opts = HashOptions {
                threads: ui::default_threads(),
                // Read, not mapped: mapped pages would count in the seed's
                // memory use for as long as it runs.
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
                tracing::warn!("not seeding {}: {why}", info.name());
                continue;
            }
            remember_checked(&info, &job.content, &stamps);
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
        tracing::info!("seeding {what}, listening on {}", engine.listen_addr());
        swarm::run(engine, torrents, &args.net, until).await
    })
}

/// Where `shoal seed` remembers data it has checked:
/// `$XDG_STATE_HOME/shoal/checked/<info hash>-<key of the path>.resume`
/// (the key tells apart copies of one torrent's data in several places).
fn checked_path(info: &torrent_format::Info, content: &Path) -> Option<PathBuf> {
    use std::hash::{Hash, Hasher};
    let content = std::fs::canonicalize(content).ok()?;
    // Stable across runs and builds (SipHash with fixed keys), unlike
    // `RandomState`.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    content.hash(&mut h);
    let dir = client::dht::state_dir()?.join("checked");
    Some(dir.join(format!("{}-{:016x}.resume", info.info_hash(), h.finish())))
}

/// Whether every piece of the data at `content` can be trusted without
/// reading it: a resume file (ours from an earlier seed, or that of the
/// `shoal download` that wrote this data) lists every piece as had, and
/// every file has the size and modification time it had then. Says
/// which, for the log.
fn trusted_by(
    info: &torrent_format::Info,
    content: &Path,
    stamps: &[Option<FileStamp>],
) -> Option<&'static str> {
    let downloaded = content
        .file_name()
        .filter(|name| **name == *client::check::content_name(info))
        .map(|_| resume::resume_path(content.parent().unwrap_or(Path::new(".")), info));
    let candidates = [
        (checked_path(info, content), "the last check"),
        (downloaded, "the download"),
    ];
    candidates.into_iter().find_map(|(path, by)| {
        let path = path?;
        if !path.exists() {
            return None;
        }
        let state = resume::load(&path, info, stamps, None);
        (state.reason.is_none() && state.to_check.is_empty() && state.trusted.is_complete())
            .then_some(by)
    })
}

/// Remembers that the data at `content` (with these stamps, taken before
/// it was read) matched, so that the next seed of it need not read it.
/// Best effort: a state directory that cannot be written costs only a
/// re-check next time.
fn remember_checked(info: &torrent_format::Info, content: &Path, stamps: &[Option<FileStamp>]) {
    let Some(path) = checked_path(info, content) else {
        return;
    };
    let mut have = Bitfield::new(info.piece_count());
    (0..info.piece_count()).for_each(|i| {
        have.set(i);
    });
    let saved = path
        .parent()
        .and_then(Path::parent)
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| resume::save(&path, info.info_hash(), &have, stamps, None));
    if let Err(e) = saved {
        tracing::debug!("not remembered as checked: {}: {e}", path.display());
    }
}
