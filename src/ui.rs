//! Terminal output helpers: progress bars on stderr, human sizes, stdout that
//! tolerates a closed pipe.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);

/// `-q`: no progress bars (`bytes_bar` draws none).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// A byte-count progress bar on stderr. It draws nothing when stderr is not a
/// terminal, or with `-q`.
pub fn bytes_bar(total: u64, message: &'static str) -> ProgressBar {
    if QUIET.load(Ordering::Relaxed) {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg:>8} [{bar:32.cyan/blue}] {binary_bytes:>10}/{binary_total_bytes} {binary_bytes_per_sec:>12}  ETA {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// "1 file", "4 files": a count and its noun, singular for one.
pub fn count<T: std::fmt::Display + PartialEq + From<u8>>(n: T, noun: &str) -> String {
    count_as(n, noun, &format!("{noun}s"))
}

/// A count with an irregular plural: "1 address", "2 addresses".
pub fn count_as<T: std::fmt::Display + PartialEq + From<u8>>(
    n: T,
    one: &str,
    many: &str,
) -> String {
    if n == T::from(1) {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

/// "1.50 MiB (1572864 bytes)".
pub fn size(bytes: u64) -> String {
    format!("{} ({bytes} bytes)", indicatif::BinaryBytes(bytes))
}

pub fn short_size(bytes: u64) -> String {
    indicatif::BinaryBytes(bytes).to_string()
}

/// Writes to stdout; a reader that went away (`shoal show | head`) is not an
/// error.
pub fn print_out(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// Default worker count: every core.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Seconds since the epoch as an RFC 3339 UTC time.
pub fn date(secs: i64) -> String {
    match u64::try_from(secs) {
        Ok(s) => humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(s))
            .to_string(),
        Err(_) => format!("{secs} (before 1970)"),
    }
}
