//! `shoal create`: make a .torrent, mktorrent-compatible.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use torrent_format::create::{self, CreateOptions};
use torrent_format::pieces::HashOptions;
use torrent_format::Metainfo;

use crate::ui;

const EXAMPLES: &str = "\
Examples:
  shoal create movie.mkv -a http://tracker.example:6969/announce
  shoal create my-album/ -a http://t1/announce,http://t2/announce -a udp://t3:6969 -p -s MYSITE
  shoal create dataset/ -l 22 -w https://mirror.example/ -o dataset.torrent -c 'v1.0 release'

Each -a is one tier of trackers (BEP 12); commas separate the trackers within a tier.
'announce-list' is written only when there are two or more trackers, as mktorrent does.
For the same content and options the info hash is the same as mktorrent 1.1's.";

/// Create a .torrent from a file or a directory (flags as mktorrent 1.1)
#[derive(clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// File or directory to share
    path: PathBuf,
    /// Tracker URL(s) for one tier: URL[,URL]… (repeat -a for more tiers)
    #[arg(short = 'a', long = "announce", value_name = "URL[,URL]")]
    announce: Vec<String>,
    /// Comment to put in the torrent
    #[arg(short, long)]
    comment: Option<String>,
    /// Do not write the creation date
    #[arg(short = 'd', long = "no-date")]
    no_date: bool,
    /// Piece length 2^N bytes, N in 15..=28 [default: the smallest 2^N in
    /// 32 KiB..=16 MiB that gives at most 1500 pieces]
    #[arg(short = 'l', long = "piece-length", value_name = "N", value_parser = parse_piece_exp)]
    piece_length: Option<u32>,
    /// Torrent name [default: the last component of PATH]
    #[arg(short, long)]
    name: Option<String>,
    /// Where to write the torrent [default: NAME.torrent]
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Set the private flag (BEP 27: no DHT, no PEX)
    #[arg(short, long)]
    private: bool,
    /// Source string, part of the info hash (used by private trackers)
    #[arg(short, long)]
    source: Option<String>,
    /// Hashing threads [default: all cores]
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
    /// Web seed URL(s): URL[,URL]… (BEP 19; repeatable)
    #[arg(short = 'w', long = "web-seed", value_name = "URL[,URL]")]
    web_seed: Vec<String>,
    /// Leave out files and directories whose name matches GLOB, e.g.
    /// '.DS_Store', 'Thumbs.db', '*.nfo', '.git' (or, with a '/', whose
    /// path from the top matches it: 'extras/*.jpg'); repeatable. Without
    /// it every file is included, as mktorrent does
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,
    /// Overwrite the output file if it exists
    #[arg(short, long)]
    force: bool,
    /// -v (for every command): say what is being done on stderr
    #[arg(from_global)]
    verbose: u8,
    /// Read files through a buffer instead of mapping them (for comparison)
    #[arg(long, hide = true)]
    no_mmap: bool,
}

/// `-l N`: the piece length's exponent, as mktorrent takes it; a length in
/// bytes (as other tools take it) gets a hint with its exponent.
fn parse_piece_exp(s: &str) -> Result<u32, String> {
    const RANGE: std::ops::RangeInclusive<u32> = 15..=28;
    let range = format!(
        "piece length exponent must be between {} and {} (2^15 = 32 KiB to 2^28 = 256 MiB)",
        RANGE.start(),
        RANGE.end()
    );
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number; {range}"))?;
    match u32::try_from(n) {
        Ok(n) if RANGE.contains(&n) => Ok(n),
        _ if n.is_power_of_two() && RANGE.contains(&n.trailing_zeros()) => Err(format!(
            "{range}; for {} pieces give -l {}",
            ui::short_size(n),
            n.trailing_zeros()
        )),
        _ => Err(range),
    }
}

fn split_urls(arg: &str) -> anyhow::Result<Vec<String>> {
    let urls: Vec<String> = arg.split(',').map(|u| u.trim().to_string()).collect();
    if urls.iter().any(|u| u.is_empty()) {
        bail!("empty URL in {arg:?}");
    }
    Ok(urls)
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let announce = args
        .announce
        .iter()
        .map(|a| split_urls(a))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let web_seeds = args
        .web_seed
        .iter()
        .map(|w| split_urls(w))
        .collect::<anyhow::Result<Vec<_>>>()?
        .concat();
    let creation_date = (!args.no_date).then(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    });
    let opts = CreateOptions {
        announce,
        web_seeds,
        comment: args.comment,
        creation_date,
        created_by: Some(concat!("shoal ", env!("CARGO_PKG_VERSION")).to_string()),
        piece_exp: args.piece_length,
        name: args.name,
        private: args.private,
        source: args.source,
        exclude: args.exclude,
    };

    let plan = create::plan(&args.path, &opts)?;
    let output = args
        .output
        .unwrap_or_else(|| PathBuf::from(format!("{}.torrent", plan.name)));
    if !args.force && output.exists() {
        bail!("{} already exists (use -f to overwrite)", output.display());
    }
    let threads = args
        .threads
        .map_or_else(ui::default_threads, |t| t as usize);
    if args.verbose > 0 {
        for f in &plan.layout.files {
            eprintln!("adding {} ({})", f.display_path(), ui::short_size(f.length));
        }
        eprintln!(
            "{} in {}; {} of {}; hashing on {}",
            ui::size(plan.total_length()),
            ui::count(plan.layout.files.len(), "file"),
            ui::count(plan.piece_count(), "piece"),
            ui::short_size(plan.piece_length()),
            ui::count(threads, "thread"),
        );
    }

    let started = std::time::Instant::now();
    let bar = ui::bytes_bar(plan.total_length(), "hashing");
    let hashing = HashOptions {
        threads,
        mmap: !args.no_mmap,
    };
    let bytes = plan.build(&opts, hashing, &|n| bar.inc(n));
    bar.finish_and_clear();
    let bytes = bytes?;
    let elapsed = started.elapsed();
    write_output(&output, &bytes, args.force)?;

    let m = Metainfo::from_bytes(&bytes)?;
    if args.verbose > 0 {
        eprintln!(
            "hashed {} in {:.2} s ({}/s)",
            ui::short_size(plan.total_length()),
            elapsed.as_secs_f64(),
            ui::short_size((plan.total_length() as f64 / elapsed.as_secs_f64().max(1e-9)) as u64)
        );
    }
    ui::print_out(&format!(
        "{}: {} ({} in {}, {} of {})\n",
        output.display(),
        m.info_hash(),
        ui::short_size(m.info.total_length()),
        ui::count(m.info.files().len(), "file"),
        ui::count(m.info.piece_count(), "piece"),
        ui::short_size(m.info.piece_length()),
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the torrent; without `force` never replaces an existing file, with
/// it replaces atomically (write a temporary file, then rename).
fn write_output(output: &Path, bytes: &[u8], force: bool) -> anyhow::Result<()> {
    let ctx = || format!("cannot write {}", output.display());
    if !force {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(output)
            .with_context(ctx)?;
        return f.write_all(bytes).with_context(ctx);
    }
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = output
        .file_name()
        .context("the output path has no file name")?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes).with_context(ctx)?;
    std::fs::rename(&tmp, output).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        ctx()
    })
}
