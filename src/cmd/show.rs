//! `shoal show`: what a torrent holds, or what a magnet link says.

use std::fmt::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;
use torrent_format::{Magnet, Metainfo};

use crate::ui;

const EXAMPLES: &str = "\
Examples:
  shoal show my-album.torrent
  shoal show --json my-album.torrent | jq -r .info_hash
  shoal show \"magnet:?xt=urn:btih:$HASH&dn=my-album&x.pe=10.0.0.1:6881\"";

/// Show what a torrent holds (name, info hash, magnet link, trackers, files),
/// or what a magnet link says (info hash, name, trackers, peers, web seeds)
#[derive(clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The .torrent file, or a magnet link 'magnet:?xt=urn:btih:…' (quote it
    /// in the shell: it holds '&')
    #[arg(value_name = "TORRENT|MAGNET")]
    torrent: PathBuf,
    /// A directory a `shoal download -o DIR --only …` of this torrent went
    /// into: files it did not choose are marked "not selected"
    #[arg(value_name = "DIR")]
    download_dir: Option<PathBuf>,
    /// Print one JSON object instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Shown<'a> {
    name: &'a str,
    info_hash: String,
    magnet: String,
    total_size: u64,
    piece_length: u64,
    piece_count: usize,
    private: bool,
    source: Option<&'a str>,
    comment: Option<&'a str>,
    created_by: Option<&'a str>,
    /// Seconds since the Unix epoch.
    creation_date: Option<i64>,
    trackers: Vec<Vec<String>>,
    web_seeds: &'a [String],
    multi_file: bool,
    files: Vec<ShownFile>,
}

#[derive(Serialize)]
struct ShownFile {
    path: String,
    size: u64,
    /// With a download directory whose download chose some files: whether
    /// this one was chosen.
    #[serde(skip_serializing_if = "Option::is_none")]
    selected: Option<bool>,
}

fn shown<'a>(m: &'a Metainfo, selected: Option<&[bool]>) -> Shown<'a> {
    let info = &m.info;
    Shown {
        name: info.name(),
        info_hash: m.info_hash().to_hex(),
        magnet: Magnet::from_metainfo(m).to_string(),
        total_size: info.total_length(),
        piece_length: info.piece_length(),
        piece_count: info.piece_count(),
        private: info.is_private(),
        source: info.source(),
        comment: m.comment(),
        created_by: m.created_by(),
        creation_date: m.creation_date(),
        trackers: m.trackers(),
        web_seeds: m.web_seeds(),
        multi_file: info.is_multi_file(),
        files: info
            .files()
            .iter()
            .enumerate()
            .map(|(i, f)| ShownFile {
                path: f.display_path(),
                size: f.length,
                selected: selected.map(|s| s.get(i).copied().unwrap_or(true)),
            })
            .collect(),
    }
}

/// What a magnet link says; `magnet` is the link as shoal writes it.
#[derive(Serialize)]
struct ShownMagnet<'a> {
    info_hash: String,
    name: Option<&'a str>,
    trackers: &'a [String],
    peers: &'a [String],
    web_seeds: &'a [String],
    magnet: String,
}

fn shown_magnet(m: &Magnet) -> ShownMagnet<'_> {
    ShownMagnet {
        info_hash: m.info_hash.to_hex(),
        name: m.name.as_deref(),
        trackers: &m.trackers,
        peers: &m.peers,
        web_seeds: &m.web_seeds,
        magnet: m.to_string(),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // A link without its '?' is still meant as one: parsing says what is wrong.
    if let Some(link) = args.torrent.to_str().filter(|a| a.starts_with("magnet:")) {
        if args.download_dir.is_some() {
            super::usage!("a download directory goes with a .torrent file, not a magnet link");
        }
        let m = Magnet::parse(link)?;
        let s = shown_magnet(&m);
        let text = if args.json {
            serde_json::to_string_pretty(&s)? + "\n"
        } else {
            magnet_text(&s)
        };
        ui::print_out(&text)?;
        return Ok(ExitCode::SUCCESS);
    }
    let m = super::load_torrent(&args.torrent)?;
    let selected = match &args.download_dir {
        Some(dir) => {
            if !dir.is_dir() {
                super::usage!(
                    "{} is not a directory (give the directory download -o wrote into)",
                    dir.display()
                );
            }
            client::resume::saved_selection(&client::resume::resume_path(dir, &m.info), &m.info)
        }
        None => None,
    };
    let s = shown(&m, selected.as_deref());
    let text = if args.json {
        serde_json::to_string_pretty(&s)? + "\n"
    } else {
        text(&s)
    };
    ui::print_out(&text)?;
    Ok(ExitCode::SUCCESS)
}

fn text(s: &Shown) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "Name:         {}", s.name);
    let _ = writeln!(o, "Info hash:    {}", s.info_hash);
    let _ = writeln!(o, "Magnet:       {}", s.magnet);
    let _ = writeln!(
        o,
        "Size:         {} in {}",
        ui::size(s.total_size),
        ui::count(s.files.len(), "file")
    );
    let _ = writeln!(
        o,
        "Pieces:       {} × {}",
        s.piece_count,
        ui::short_size(s.piece_length)
    );
    let _ = writeln!(o, "Private:      {}", if s.private { "yes" } else { "no" });
    if let Some(v) = s.source {
        let _ = writeln!(o, "Source:       {v}");
    }
    if let Some(v) = s.comment {
        let _ = writeln!(o, "Comment:      {v}");
    }
    if let Some(v) = s.created_by {
        let _ = writeln!(o, "Created by:   {v}");
    }
    if let Some(v) = s.creation_date {
        let _ = writeln!(o, "Created on:   {}", ui::date(v));
    }
    let _ = writeln!(o, "\nTrackers:");
    if s.trackers.is_empty() {
        let _ = writeln!(o, "  (none: trackerless)");
    }
    for (i, tier) in s.trackers.iter().enumerate() {
        for (j, url) in tier.iter().enumerate() {
            if j == 0 {
                let _ = writeln!(o, "  tier {:<3} {url}", i + 1);
            } else {
                let _ = writeln!(o, "           {url}");
            }
        }
    }
    if !s.web_seeds.is_empty() {
        let _ = writeln!(o, "\nWeb seeds:");
        for w in s.web_seeds {
            let _ = writeln!(o, "  {w}");
        }
    }
    // Numbered as `shoal download --only` takes them.
    let _ = writeln!(o, "\nFiles:");
    let width = s.files.len().saturating_sub(1).to_string().len();
    for (i, f) in s.files.iter().enumerate() {
        let path = if s.multi_file {
            format!("{}/{}", s.name, f.path)
        } else {
            f.path.clone()
        };
        let mark = if f.selected == Some(false) {
            "  (not selected)"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "  {i:>width$}  {:>10}  {path}{mark}",
            ui::short_size(f.size)
        );
    }
    o
}

/// A magnet's text comes from whoever wrote the link: control characters
/// (a newline, a terminal escape) are shown escaped, not written out.
fn magnet_text(s: &ShownMagnet) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "Name:         {}",
        s.name.map_or("(none)".into(), printable)
    );
    let _ = writeln!(o, "Info hash:    {}", s.info_hash);
    let _ = writeln!(o, "Magnet:       {}", s.magnet);
    for (title, list) in [
        ("Trackers", s.trackers),
        ("Peers", s.peers),
        ("Web seeds", s.web_seeds),
    ] {
        let _ = writeln!(o, "\n{title}:");
        if list.is_empty() {
            let _ = writeln!(o, "  (none)");
        }
        for v in list {
            let _ = writeln!(o, "  {}", printable(v));
        }
    }
    o
}

fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}
