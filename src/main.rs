//! `shoal`: the command-line front end. Each subcommand lives in `cmd/`; the
//! work is done by the library crates (see ARCHITECTURE.md).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod log;
mod ui;

/// mimalloc: the tracker allocates a little per request on every core, and
/// glibc's arenas cost ~9% of its CPU in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const EXAMPLES: &str = "\
Examples:
  shoal demo                                                        a whole swarm on this machine
  shoal create my-album/ -a http://tracker.example:6969/announce   make my-album.torrent
  shoal show my-album.torrent                                       what is inside
  shoal verify my-album.torrent my-album/                           check the data
  shoal tracker --listen 0.0.0.0:6969                               run a tracker
  shoal seed my-album.torrent my-album/                             share it
  shoal download my-album.torrent -o ~/Downloads                    fetch it, then seed

Run 'shoal <command> --help' for the options of each command.";

#[derive(Parser)]
#[command(
    name = "shoal",
    version,
    about = "A BitTorrent toolkit: create, inspect and verify torrents, run a tracker, seed and download",
    after_help = EXAMPLES,
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Say more: the detailed log format (time, level, module) and shoal's
    /// debug lines; -vv: debug lines of every part [RUST_LOG overrides]
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Print only errors (and the command's results on stdout): no
    /// progress, no summaries, no warnings
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
}

#[derive(Subcommand)]
enum Command {
    Create(cmd::create::Args),
    Show(cmd::show::Args),
    Verify(cmd::verify::Args),
    Tracker(cmd::tracker::Args),
    Seed(cmd::seed::Args),
    Download(cmd::download::Args),
    Demo(cmd::demo::Args),
    Dht(cmd::dht::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    exit_cleanly_on_sigbus();
    log::init(cli.verbose, cli.quiet);
    ui::set_quiet(cli.quiet);
    if matches!(
        cli.command,
        Command::Seed(_) | Command::Download(_) | Command::Demo(_)
    ) {
        raise_fd_limit();
        small_heap();
    }
    let result = match cli.command {
        Command::Create(args) => cmd::create::run(args),
        Command::Show(args) => cmd::show::run(args),
        Command::Verify(args) => cmd::verify::run(args),
        Command::Tracker(args) => cmd::tracker::run(args),
        Command::Seed(args) => cmd::seed::run(args),
        Command::Download(args) => cmd::download::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Dht(args) => cmd::dht::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shoal: error: {}", one_line(&e));
            if e.downcast_ref::<cmd::Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// mimalloc's purge delay (option 15, `mi_option_purge_delay`, in v2 and
/// v3 alike), declared here rather than through libmimalloc-sys's
/// `extended` feature.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// A peer's memory stays small (issue 18: at most 32 MiB whatever the
/// torrent): without transparent huge pages, which mimalloc asks for on its
/// arenas and which make the resident size grow in 2 MiB steps, and with
/// freed pages given back after 5 ms instead of mimalloc's 10 (100 for
/// whole arena ranges). A 1 GiB download of 16 KiB pieces peaked at
/// ~50 MiB with both, 30-36 without huge pages and 21-25 with neither
/// (1 ms: the same, but ~0.1 s more system time refaulting pages at
/// 1 MiB pieces); the tracker, where huge pages may pay, keeps the
/// defaults.
fn small_heap() {
    // SAFETY: prctl with PR_SET_THP_DISABLE takes integer arguments only;
    // mi_option_set is called before any thread other than main exists
    // (it is not thread safe) and only changes a tuning value.
    unsafe {
        #[cfg(target_os = "linux")]
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        mi_option_set(MI_OPTION_PURGE_DELAY, 5);
    }
}

/// The error and its causes, "outer: inner: …", each cause once: a cause
/// whose text the message already holds (an error that ends its own message
/// with its source's, as `#[error("…: {0}")]` with `#[from]` does) is not
/// repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Hashing maps files into memory (no copy). If another program truncates a
/// file while it is mapped, reading it raises SIGBUS; say so plainly and exit
/// with status 1 instead of dying with "Bus error".
fn exit_cleanly_on_sigbus() {
    extern "C" fn on_sigbus(_: libc::c_int) {
        const MSG: &[u8] =
            b"shoal: error: a file shrank while it was being read (another program changed it)\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe.
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
            libc::_exit(1);
        }
    }
    // SAFETY: installs a handler that only calls async-signal-safe functions.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
}

/// Peers, files and the tracker each take a file descriptor: lift the soft
/// limit (often 1024) to the hard one.
fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;
    use anyhow::Context;
    use client::session::SessionError;
    use client::storage::StorageError;

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::from_raw_os_error(libc::EACCES);
        let storage = StorageError::Io {
            path: "out/a.bin".into(),
            op: "opening",
            error: io,
        };
        // A wrapper whose message is its source's ("{0}" with #[from]).
        let e = Err::<(), _>(SessionError::Storage(storage))
            .context("cannot set up out/a")
            .unwrap_err();
        let text = one_line(&e);
        assert_eq!(
            text,
            "cannot set up out/a: opening out/a.bin: Permission denied (os error 13)"
        );
        // Causes that add something are all kept.
        let e = Err::<(), _>(std::io::Error::from_raw_os_error(libc::ENOSPC))
            .context("writing x")
            .context("saving y")
            .unwrap_err();
        assert_eq!(
            one_line(&e),
            "saving y: writing x: No space left on device (os error 28)"
        );
    }
}
