//! `shoal verify`: check data on disk against a torrent.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use torrent_format::pieces::{self, FileState, HashOptions};
use torrent_format::Info;

use crate::ui;

const EXAMPLES: &str = "\
Examples:
  shoal verify my-album.torrent my-album/
  shoal verify movie.torrent ~/Downloads          (finds ~/Downloads/<name>)

Exit status: 0 when every piece matches and every file has the right size, 1 otherwise.";

/// Check data on disk against a torrent, piece by piece
#[derive(clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// The .torrent file
    torrent: PathBuf,
    /// The content: the file itself (single-file torrent) or its top
    /// directory (multi-file), or a directory that holds it under the
    /// torrent's name [default: ./NAME]
    path: Option<PathBuf>,
    /// Hashing threads [default: all cores]
    #[arg(short, long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
    /// Read files through a buffer instead of mapping them (for comparison)
    #[arg(long, hide = true)]
    no_mmap: bool,
}

/// Where the content is: PATH itself, or PATH/NAME when PATH is a directory
/// that holds the content under the name `download` gives it (the
/// torrent's, but for one named like shoal's state directory, `.shoal`).
pub fn content_path(info: &Info, path: Option<PathBuf>) -> PathBuf {
    let name = client::check::content_name(info);
    let Some(path) = path else {
        return PathBuf::from(name);
    };
    let nested = path.join(name);
    let first_file = |root: &Path| root.join(info.file_path(0).iter().skip(1).collect::<PathBuf>());
    if info.is_multi_file() {
        // A download with --only may lack the first file; its resume file
        // says it is one.
        let downloaded =
            first_file(&nested).exists() || client::resume::resume_path(&path, info).exists();
        if nested.is_dir() && !first_file(&path).exists() && downloaded {
            return nested;
        }
    } else if path.is_dir() {
        return nested;
    }
    path
}

/// Fails when the content's kind cannot match the torrent's: a file for
/// a torrent of a directory (every file would be "unreadable").
pub fn check_content_kind(info: &Info, content: &Path) -> anyhow::Result<()> {
    if info.is_multi_file() && content.is_file() {
        let files = info.files().len();
        anyhow::bail!(
            "{} is a file, but this torrent is a directory ('{}', {} file{}): give that directory, or the one that holds it",
            content.display(),
            info.name(),
            files,
            if files == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let m = super::load_torrent(&args.torrent)?;
    let info = &m.info;
    let content = content_path(info, args.path);
    check_content_kind(info, &content)?;
    let threads = args
        .threads
        .map_or_else(ui::default_threads, |t| t as usize);

    let bar = ui::bytes_bar(info.total_length(), "checking");
    let hashing = HashOptions {
        threads,
        mmap: !args.no_mmap,
    };
    let mut report = pieces::verify(info, &content, hashing, &|n| bar.inc(n));
    bar.finish_and_clear();
    let selected = selection(info, &content, &mut report);
    if let Some(selected) = &selected {
        return report_selection(&args.torrent, info, &content, &report, selected);
    }

    let mut out: String = problems(info, &content, &report)
        .iter()
        .map(|p| format!("{p}\n"))
        .collect();
    let good = report.good_pieces();
    let total = info.piece_count();
    if report.all_ok() {
        out.push_str(&format!(
            "OK: {} matches {} ({}, {})\n",
            content.display(),
            args.torrent.display(),
            ui::count(total, "piece"),
            ui::short_size(info.total_length())
        ));
        ui::print_out(&out)?;
        Ok(ExitCode::SUCCESS)
    } else {
        let bad_files = report.files.iter().filter(|s| **s != FileState::Ok).count();
        out.push_str(&format!(
            "FAILED: {good} of {} {}; {bad_files} of {} {} problems\n",
            ui::count(total, "piece"),
            if total == 1 { "matches" } else { "match" },
            ui::count(info.files().len(), "file"),
            if bad_files == 1 { "has" } else { "have" }
        ));
        ui::print_out(&out)?;
        Ok(ExitCode::FAILURE)
    }
}

/// The file selection of a download made with `--only`, from its resume
/// file (`DIR/.shoal/`, beside the content), when there is one; pieces
/// shared with files not chosen are then checked again with those files'
/// bytes from the part file, and the chosen files' states follow.
fn selection(info: &Info, content: &Path, report: &mut pieces::VerifyReport) -> Option<Vec<bool>> {
    let out_dir = match content.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if content.file_name()? != std::ffi::OsStr::new(&client::check::content_name(info)) {
        return None;
    }
    let resume = client::resume::resume_path(out_dir, info);
    let selected = client::resume::saved_selection(&resume, info)?;
    let info_arc = std::sync::Arc::new(info.clone());
    let storage =
        client::storage::Storage::open_selection(info_arc, content.to_path_buf(), selected.clone())
            .ok()?;
    for p in 0..info.piece_count() {
        let touches_parted = info
            .piece_segments(p)
            .iter()
            .any(|s| storage.is_parted(s.file));
        if !report.piece_ok[p] && touches_parted {
            report.piece_ok[p] = storage.verify_piece(p as u32).unwrap_or(false);
        }
    }
    for (i, state) in report.files.iter_mut().enumerate() {
        if let FileState::Corrupt { .. } = state {
            let bad = info.file_pieces(i).filter(|&p| !report.piece_ok[p]).count();
            *state = if bad == 0 {
                FileState::Ok
            } else {
                FileState::Corrupt { bad_pieces: bad }
            };
        }
    }
    Some(selected)
}

/// `verify` of a download made with `--only`: the files not chosen are
/// "not selected", not problems; the chosen ones must match.
fn report_selection(
    torrent: &Path,
    info: &Info,
    content: &Path,
    report: &pieces::VerifyReport,
    selected: &[bool],
) -> anyhow::Result<ExitCode> {
    let mut out = String::new();
    let problems = problems(info, content, report);
    let mut bad_files = 0;
    let mut shown = 0;
    for (i, state) in report.files.iter().enumerate() {
        if !selected[i] {
            let path = if info.is_multi_file() {
                content.join(info.files()[i].path.iter().collect::<PathBuf>())
            } else {
                content.to_path_buf()
            };
            out.push_str(&format!("{}: not selected\n", path.display()));
        } else if *state != FileState::Ok {
            out.push_str(&format!("{}\n", problems[shown]));
            bad_files += 1;
        }
        if *state != FileState::Ok {
            shown += 1;
        }
    }
    let chosen = selected.iter().filter(|&&s| s).count();
    let wanted: Vec<usize> = (0..info.piece_count())
        .filter(|&p| info.piece_segments(p).iter().any(|s| selected[s.file]))
        .collect();
    let good = wanted.iter().filter(|&&p| report.piece_ok[p]).count();
    let ok = good == wanted.len() && bad_files == 0;
    out.push_str(&format!(
        "{}: {good} of {} of the selected files match; {} of {} selected ({})\n",
        if ok { "OK" } else { "FAILED" },
        ui::count(wanted.len(), "piece"),
        ui::count(chosen, "file"),
        info.files().len(),
        torrent.display()
    ));
    ui::print_out(&out)?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One line per file that does not match: "PATH: what is wrong".
pub fn problems(info: &Info, content: &Path, report: &pieces::VerifyReport) -> Vec<String> {
    let mut out = Vec::new();
    for (i, state) in report.files.iter().enumerate() {
        let f = &info.files()[i];
        let shown = if info.is_multi_file() {
            content.join(f.path.iter().collect::<PathBuf>())
        } else {
            content.to_path_buf()
        };
        let problem = match state {
            FileState::Ok => continue,
            FileState::Missing => "missing".to_string(),
            FileState::NotAFile => "not a regular file".to_string(),
            FileState::Short { actual } => {
                format!("short: {actual} of {} bytes", f.length)
            }
            FileState::TooLong { actual } => {
                format!("too long: {actual} bytes, expected {}", f.length)
            }
            FileState::Corrupt { bad_pieces } => format!(
                "corrupt: {bad_pieces} of {} pieces do not match",
                info.file_pieces(i).len()
            ),
            FileState::Unreadable(e) => format!("unreadable: {e}"),
        };
        out.push(format!("{}: {problem}", shown.display()));
    }
    out
}
