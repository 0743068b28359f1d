//! `shoal download`: fetch a torrent's data from its swarm, then seed it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use client::check;
use client::storage::Storage;
use client::wire::Bitfield;
use torrent_format::metainfo::MAX_TORRENT_SIZE;
use torrent_format::{Magnet, Metainfo};

use super::magnet;
use super::swarm::{self, NetArgs, Torrent, Until};
use super::usage;
use crate::ui;

const EXAMPLES: &str = "\
Examples:
  shoal download ubuntu.torrent -o ~/Downloads
  shoal download album.torrent --exit-on-complete          stop once it is all here
  shoal download album.torrent --seed-ratio 2              seed until uploaded = 2 × size
  shoal download big.torrent --only 0,3 --download-limit 5M
  shoal download album.torrent --only '*.flac' --only 'cd1/*'   files by name
  shoal download big.torrent --list                        its files, numbered; no download
  shoal download t.torrent --no-trackers --peer 192.0.2.7:6881
  shoal download a.torrent b.torrent -o ~/Downloads        several at once, one port
  shoal download 'magnet:?xt=urn:btih:…&tr=…' -o ~/Downloads
  shoal download 'magnet:?xt=urn:btih:…' --peer 192.0.2.7:6881 --metadata-only --save-torrent t.torrent

A magnet's metadata (the info dictionary) is fetched from its peers (x.pe=,
--peer) and the peers its trackers (tr=) name, checked against its hash and
kept in DIR/.shoal/, so a restarted magnet download does not fetch it again.

Interrupted downloads resume: run the same command again and only the
missing pieces are fetched (progress is kept in DIR/.shoal/).

Exit status: 0 when the download completed (or seeding ended), 1 on an error,
2 on bad usage, 130 when interrupted before completing.";

/// Download torrents from their swarms, then keep seeding them
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The .torrent files or magnet links (several download at once, on one
    /// port)
    #[arg(required = true, value_name = "TORRENT|MAGNET")]
    torrents: Vec<String>,
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
    /// Download at most this many bytes per second, over all torrents
    /// (suffixes K, M, G)
    #[arg(long, value_name = "RATE", value_parser = swarm::parse_rate)]
    download_limit: Option<u64>,
    /// Download only these files: indices as 'shoal show' and --list
    /// number them (from 0), paths inside the torrent, or globs ('*.flac'
    /// matches names anywhere, 'cd1/*' whole paths; '*' stays within a
    /// directory, '**' crosses them). Files not chosen are not created.
    /// One torrent only
    #[arg(long, value_name = "INDEX|PATH|GLOB", value_delimiter = ',', num_args = 1..)]
    only: Vec<String>,
    /// Print the torrents' files (index, size, path) and exit without
    /// downloading
    #[arg(long)]
    list: bool,
    /// Give up when no peer is found for this long
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = humantime::parse_duration)]
    no_peers_timeout: Duration,
    /// Also write the torrent of a magnet here, once its metadata is fetched
    #[arg(long, value_name = "FILE")]
    save_torrent: Option<PathBuf>,
    /// Fetch a magnet's metadata, save it (DIR/.shoal/, --save-torrent) and
    /// exit without downloading the data
    #[arg(long)]
    metadata_only: bool,
    /// Refuse a magnet's metadata larger than this (suffixes K, M, G)
    #[arg(long, value_name = "SIZE", default_value = "16M", value_parser = parse_size)]
    max_metadata_size: u64,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let n = swarm::parse_rate(s).map_err(|e| e.replace("rate like 500K or 2M", "size like 8M"))?;
    if n > MAX_TORRENT_SIZE as u64 {
        return Err(format!(
            "'{s}' is above the {} MiB limit for a torrent",
            MAX_TORRENT_SIZE >> 20
        ));
    }
    Ok(n)
}

/// A command-line argument: a .torrent file or a magnet link.
enum Source {
    File(PathBuf),
    Magnet(Box<Magnet>),
}

fn source(arg: &str) -> anyhow::Result<Source> {
    // `get`, not an index: byte 7 of a path need not be a char boundary.
    if arg
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("magnet:"))
    {
        let m = Magnet::parse(arg).map_err(|e| anyhow::anyhow!("not a usable magnet link: {e}"))?;
        Ok(Source::Magnet(Box::new(m)))
    } else {
        Ok(Source::File(PathBuf::from(arg)))
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!("'{s}' is not a ratio like 1.5")),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let sources = args
        .torrents
        .iter()
        .map(|a| source(a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let magnets = sources
        .iter()
        .filter(|s| matches!(s, Source::Magnet(_)))
        .count();
    if args.metadata_only && magnets != sources.len() {
        usage!("--metadata-only fetches the metadata of magnets: give only magnet links with it");
    }
    if args.save_torrent.is_some() && (magnets != 1 || sources.len() != 1) {
        usage!("--save-torrent writes one magnet's torrent: give a single magnet link with it");
    }
    if !args.only.is_empty() && sources.len() > 1 {
        usage!("--only names files of one torrent: give a single torrent with it");
    }
    if args.list {
        return list(&sources);
    }
    if args.output.exists() && !args.output.is_dir() {
        bail!(
            "{} is not a directory (-o names the directory to download into)",
            args.output.display()
        );
    }
    // Files first: a typo in a path is an error before any network work.
    let mut loaded = Vec::new();
    for s in &sources {
        loaded.push(match s {
            Source::File(p) => {
                let meta = super::load_torrent(p)?;
                select_files(&args.only, &meta.info)?;
                Some(meta)
            }
            Source::Magnet(_) => None,
        });
    }
    if magnets > 0 {
        std::fs::create_dir_all(&args.output)
            .with_context(|| format!("cannot create {}", args.output.display()))?;
    }
    let until = Until {
        exit_on_complete: args.exit_on_complete,
        seed_ratio: args.seed_ratio,
        seed_time: args.seed_time,
        no_peers: Some(args.no_peers_timeout),
    };
    let rt = swarm::runtime()?;
    rt.block_on(async {
        // Magnets may be public; files say.
        let public = loaded
            .iter()
            .any(|m| m.as_ref().map_or(true, |m| !m.info.is_private()));
        let engine = args
            .net
            .engine(args.torrents.len(), args.download_limit, public)
            .await?;
        let opts = magnet::Options {
            output: &args.output,
            net: &args.net,
            save_torrent: args.save_torrent.as_deref(),
            max_size: args.max_metadata_size as usize,
            no_peers: args.no_peers_timeout,
            metadata_only: args.metadata_only,
        };
        let mut metas = Vec::new();
        for (s, meta) in sources.iter().zip(loaded) {
            let (meta, peers) = match (s, meta) {
                (_, Some(meta)) => (meta, Learned::default()),
                (Source::Magnet(m), None) => match magnet::resolve(&engine, m, &opts).await {
                    Ok(Some(r)) => (
                        r.meta,
                        Learned {
                            peers: r.peers,
                            pex: r.pex_peers,
                        },
                    ),
                    Ok(None) => {
                        engine.shutdown().await;
                        return Ok(ExitCode::from(130));
                    }
                    Err(e) => {
                        engine.shutdown().await;
                        return Err(e);
                    }
                },
                (Source::File(_), None) => unreachable!("every file was loaded"),
            };
            metas.push((meta, peers));
        }
        if args.metadata_only {
            report_metadata(&args, &metas);
            engine.shutdown().await;
            return Ok(ExitCode::SUCCESS);
        }
        let ready = match tokio::task::block_in_place(|| prepare_all(&args, metas)) {
            Ok(r) => r,
            Err(e) => {
                engine.shutdown().await;
                return Err(e);
            }
        };
        let mut torrents = Vec::new();
        for (info, storage, have, config) in ready {
            let session = engine.add(info, Arc::new(storage), have, config).await?;
            torrents.push(Torrent::new(session));
        }
        let what = match torrents.as_slice() {
            [one] => one.name.clone(),
            many => format!("{} torrents", many.len()),
        };
        tracing::info!(
            "downloading {what} into {}, listening on {}",
            args.output.display(),
            engine.listen_addr()
        );
        swarm::run(engine, torrents, &args.net, until).await
    })
}

/// What --metadata-only fetched, for people (stderr already has it) and
/// for scripts (--json on stdout).
fn report_metadata(args: &Args, metas: &[(Metainfo, Learned)]) {
    for (meta, _) in metas {
        let hash = meta.info_hash();
        let saved = client::resume::torrent_path(&args.output, hash);
        if args.net.json {
            let j = serde_json::json!({
                "info_hash": hash.to_string(),
                "name": meta.info.name(),
                "size": meta.info.total_length(),
                "pieces": meta.info.piece_count(),
                "metadata_size": meta.info.raw_bytes().len(),
                "saved": saved.display().to_string(),
                "torrent": args.save_torrent.as_ref().map(|p| p.display().to_string()),
            });
            println!("{j}");
        } else if !args.net.quiet {
            eprintln!("shoal: saved the torrent in {}", saved.display());
        }
    }
}

/// Peers a magnet's metadata fetch learned, for its download.
#[derive(Default)]
struct Learned {
    /// The magnet's, the user's and the trackers'.
    peers: Vec<SocketAddr>,
    /// Named only by some peer's ut_pex.
    pex: Vec<SocketAddr>,
}

/// Drops repeated torrents, refuses ones that would write the same files,
/// and prepares each.
fn prepare_all(args: &Args, metas: Vec<(Metainfo, Learned)>) -> anyhow::Result<Vec<Ready>> {
    let mut seen = HashSet::new();
    let metas: Vec<_> = metas
        .into_iter()
        .filter(|(m, _)| seen.insert(m.info.info_hash()))
        .collect();
    let mut names = HashSet::new();
    if let Some((m, _)) = metas
        .iter()
        .find(|(m, _)| !names.insert(check::content_name(&m.info)))
    {
        bail!(
            "two of the torrents are named '{}': they would write the same files in {}; download them into different directories",
            check::content_name(&m.info),
            args.output.display()
        );
    }
    if !args.only.is_empty() && metas.len() > 1 {
        usage!("--only names files of one torrent: give a single torrent with it");
    }
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let mut ready = Vec::new();
    for (meta, learned) in metas {
        let mut r = prepare(args, meta, &learned.peers)?;
        for p in learned.peers {
            if !r.3.peers.contains(&p) {
                r.3.peers.push(p);
            }
        }
        r.3.pex_peers = learned.pex;
        ready.push(r);
    }
    Ok(ready)
}

type Ready = (Arc<torrent_format::Info>, Storage, Bitfield, client::Config);

/// Opens a torrent's files, checks what is there already, and makes its
/// configuration.
fn prepare(args: &Args, meta: Metainfo, extra_peers: &[SocketAddr]) -> anyhow::Result<Ready> {
    let info = Arc::new(meta.info.clone());
    // A magnet's torrent is only known here.
    let wanted_files = select_files(&args.only, &info)?;
    let wanted_pieces = wanted_files.as_ref().map(|w| {
        let mut b = Bitfield::new(info.piece_count());
        for (i, _) in w.iter().enumerate().filter(|(_, &on)| on) {
            for p in info.file_pieces(i) {
                b.set(p);
            }
        }
        b
    });
    let root = args.output.join(check::content_name(&info));
    if check::content_name(&info) != info.name() && !args.net.quiet {
        eprintln!(
            "shoal: the torrent is named '{}', like the directory where shoal keeps its state: downloading it as {}",
            info.name(),
            root.display()
        );
    }
    let (storage, existing) = check::open_download(&info, &args.output, wanted_files)
        .with_context(|| format!("cannot set up {}", root.display()))?;
    if !args.net.quiet {
        for (path, found, expected) in &existing.short {
            eprintln!(
                "shoal: {} is shorter than expected ({} of {} bytes): re-checking the pieces it still holds",
                path.display(),
                found,
                expected
            );
        }
    }
    if let Some(why) = &existing.reason {
        if !existing.to_check.is_empty() {
            tracing::debug!("resume file not used ({why}); checking the data on disk");
        }
    }
    let bar = if args.net.quiet || existing.to_check.is_empty() {
        indicatif::ProgressBar::hidden()
    } else {
        ui::bytes_bar(existing.bytes_to_check(&info), "checking")
    };
    let resume_path = existing.resume_path.clone();
    let have = existing.check(&info, ui::default_threads(), &|n| bar.inc(n));
    bar.finish_and_clear();
    // Saved now, while there is room: every later save can then take the
    // place of this one, should the disk fill up.
    client::resume::save(
        &resume_path,
        info.info_hash(),
        &have,
        &storage.stamps(),
        storage.selected(),
    )
    .with_context(|| format!("saving {}", resume_path.display()))?;
    if have.count() > 0 && !args.net.quiet {
        eprintln!(
            "shoal: {}{} of {} pieces already here",
            if args.torrents.len() > 1 {
                format!("{}: ", info.name())
            } else {
                String::new()
            },
            have.count(),
            info.piece_count()
        );
    }
    let mut config = args.net.config(&meta)?;
    config.wanted = wanted_pieces;
    config.resume = Some(resume_path);
    let dht = !args.net.no_dht && !info.is_private();
    if config.trackers.is_empty() && config.peers.is_empty() && extra_peers.is_empty() && !dht {
        bail!(
            "no way to find peers for {}: the torrent names no tracker{}; give one with --peer HOST:PORT",
            info.name(),
            if info.is_private() {
                " (and a private torrent never uses the DHT)"
            } else {
                " and --no-dht leaves out the DHT"
            }
        );
    }
    Ok((info, storage, have, config))
}

/// `--list`: each torrent's files, numbered as `--only` takes them, and
/// no download.
fn list(sources: &[Source]) -> anyhow::Result<ExitCode> {
    let mut out = String::new();
    for (n, s) in sources.iter().enumerate() {
        let Source::File(path) = s else {
            usage!("--list reads a .torrent file; a magnet link's file list comes with its metadata (fetch it with --metadata-only --save-torrent FILE, then --list FILE)");
        };
        let meta = super::load_torrent(path)?;
        let info = &meta.info;
        if sources.len() > 1 {
            if n > 0 {
                out.push('\n');
            }
            out.push_str(&format!("{}:\n", path.display()));
        }
        let width = info.files().len().saturating_sub(1).to_string().len();
        for (i, f) in info.files().iter().enumerate() {
            out.push_str(&format!(
                "{i:>width$}  {:>10}  {}\n",
                ui::short_size(f.length),
                f.display_path()
            ));
        }
    }
    ui::print_out(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// Which files `--only` chooses (`None`: all): each entry an index, a path
/// inside the torrent or a glob (as `create --exclude` takes them: without
/// a `/` matched against every component's name, with one against the
/// whole path; the torrent's name in front is allowed, as `show` prints
/// it). An index out of range, or a name or glob that matches no file, is a
/// usage error (exit status 2) naming it, before any file is touched.
fn select_files(only: &[String], info: &torrent_format::Info) -> anyhow::Result<Option<Vec<bool>>> {
    if only.is_empty() {
        return Ok(None);
    }
    let files = info.files();
    let mut chosen = vec![false; files.len()];
    for item in only {
        let item = item.trim();
        if let Ok(i) = item.parse::<usize>() {
            if i >= files.len() {
                if files.len() == 1 {
                    usage!("--only {i}: the torrent has 1 file, numbered 0");
                }
                usage!(
                    "--only {i}: the torrent has {} files, numbered 0 to {}",
                    files.len(),
                    files.len() - 1
                );
            }
            chosen[i] = true;
            continue;
        }
        let glob = item.trim_start_matches("./");
        let glob = if info.is_multi_file() {
            glob.strip_prefix(info.name())
                .and_then(|g| g.strip_prefix('/'))
                .filter(|g| !g.is_empty())
                .unwrap_or(glob)
        } else {
            glob
        };
        let globs = [glob.to_string()];
        let mut matched = false;
        for (i, f) in files.iter().enumerate() {
            if torrent_format::create::excluded(&f.path, &globs) {
                chosen[i] = true;
                matched = true;
            }
        }
        if !matched {
            usage!(
                "--only '{item}': no file of the torrent matches it (shoal download --list TORRENT shows them)"
            );
        }
    }
    Ok(Some(chosen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_with_multibyte_characters_is_a_file_not_a_panic() {
        assert!(matches!(source("magnetré.torrent"), Ok(Source::File(_))));
        assert!(matches!(source("magnetéé.torrent"), Ok(Source::File(_))));
        assert!(source("MAGNET:?xt=urn:btih:0").is_err());
    }
}
