//! Terminal output helpers: progress bars on stderr, human sizes, stdout that
//! tolerates a closed pipe.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);

/// `-q`: no progress bars (`bytes_bar` draws none).
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether progress bars are drawn: not with `-q`, only on a terminal,
/// and only while this process is in the terminal's foreground (a
/// `shoal seed … &` must not draw over the shell's prompt).
pub fn draws_bars() -> bool {
    !QUIET.load(Ordering::Relaxed) && std::io::stderr().is_terminal() && in_foreground()
}

/// Whether this process's group is the foreground one of the terminal
/// on stderr.
fn in_foreground() -> bool {
    // SAFETY: plain system calls on our own stderr descriptor and process.
    unsafe { libc::tcgetpgrp(libc::STDERR_FILENO) == libc::getpgrp() }
}

/// The width of the terminal on stderr, if it is one.
pub fn term_width() -> Option<usize> {
    // SAFETY: TIOCGWINSZ fills the winsize it is given, on our stderr.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(libc::STDERR_FILENO, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_col > 0)
            .then_some(usize::from(ws.ws_col))
    }
}

/// Where bars are drawn: stderr, as a terminal two columns narrower than
/// it is. The `^C` the terminal echoes on Ctrl-C goes after the bar: on a
/// line filled to the last column it would wrap to the next line, and the
/// final clear would then erase that line and miss the bar.
pub fn stderr_target() -> ProgressDrawTarget {
    ProgressDrawTarget::term_like_with_hz(Box::new(Narrower(console::Term::stderr())), 20)
}

#[derive(Debug)]
struct Narrower(console::Term);

impl indicatif::TermLike for Narrower {
    fn width(&self) -> u16 {
        self.0.size().1.saturating_sub(2).max(1)
    }
    fn height(&self) -> u16 {
        self.0.size().0
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_up(n)
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_down(n)
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_right(n)
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_left(n)
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.0.write_line(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.0.write_str(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        self.0.clear_line()
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// What is drawn now, so that log lines can clear it first
/// ([`suspend`]) and no stale copy of a bar is left on screen.
enum Drawn {
    Bar(ProgressBar),
    Multi(MultiProgress),
}

static DRAWN: Mutex<Option<Drawn>> = Mutex::new(None);

/// Lets log lines (see `log.rs`) go over `bar` while it is drawn.
pub fn drawing_bar(bar: &ProgressBar) {
    *DRAWN.lock().unwrap_or_else(|p| p.into_inner()) = Some(Drawn::Bar(bar.clone()));
}

/// Lets log lines go over `bars` while they are drawn.
pub fn drawing_bars(bars: &MultiProgress) {
    *DRAWN.lock().unwrap_or_else(|p| p.into_inner()) = Some(Drawn::Multi(bars.clone()));
}

/// Nothing is drawn any more.
pub fn not_drawing() {
    *DRAWN.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// Runs `f` (which writes to stderr) with the bars cleared, then draws
/// them again.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    let drawn = DRAWN.lock().unwrap_or_else(|p| p.into_inner());
    match &*drawn {
        Some(Drawn::Bar(b)) => b.suspend(f),
        Some(Drawn::Multi(m)) => m.suspend(f),
        None => f(),
    }
}

/// A byte-count progress bar on stderr. It draws nothing when stderr is not a
/// terminal, in the background, or with `-q`. Its rate and ETA come from
/// the bytes of the last few seconds ("ETA –" until there is a rate).
pub fn bytes_bar(total: u64, message: &'static str) -> ProgressBar {
    if !draws_bars() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), stderr_target());
    let narrow = term_width().is_some_and(|w| w < 100);
    let template = if narrow {
        "{msg:>8} [{bar:20.cyan/blue}] {binary_bytes:>10}/{binary_total_bytes} {recent}"
    } else {
        "{msg:>8} [{bar:32.cyan/blue}] {binary_bytes:>10}/{binary_total_bytes} {recent}"
    };
    let window = Arc::new(Mutex::new(Window::default()));
    if let Ok(style) = ProgressStyle::with_template(template) {
        let style = style.progress_chars("=> ").with_key(
            "recent",
            move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let mut window = window.lock().unwrap_or_else(|p| p.into_inner());
                window.add(s.elapsed(), s.pos());
                let rate = window.rate();
                let left = s.len().unwrap_or(0).saturating_sub(s.pos());
                let _ = write!(
                    w,
                    "{:>12}  ETA {}",
                    rate.map_or_else(|| "–".to_string(), |r| format!("{}/s", short_size(r))),
                    eta(left, rate.unwrap_or(0))
                );
            },
        );
        bar.set_style(style);
    }
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(200));
    drawing_bar(&bar);
    bar
}

/// Positions over the last few seconds, for a rate of what is moving now
/// (a total average would count a slow start, or a resume's bytes, for
/// ever).
#[derive(Default)]
struct Window {
    samples: VecDeque<(Duration, u64)>,
}

impl Window {
    /// How far back the rate looks.
    const SPAN: Duration = Duration::from_secs(5);

    fn add(&mut self, at: Duration, pos: u64) {
        self.samples.push_back((at, pos));
        while self
            .samples
            .front()
            .is_some_and(|&(t, _)| at.saturating_sub(t) > Self::SPAN)
            && self.samples.len() > 2
        {
            self.samples.pop_front();
        }
    }

    /// Bytes per second over the window; `None` before a second of it or
    /// when nothing moved.
    fn rate(&self) -> Option<u64> {
        let (&(t0, p0), &(t1, p1)) = (self.samples.front()?, self.samples.back()?);
        let span = t1.saturating_sub(t0).as_secs_f64();
        (span >= 1.0 && p1 > p0).then(|| ((p1 - p0) as f64 / span) as u64)
    }
}

/// "ETA 12s", "ETA 3m 05s", "ETA 2h 01m"; "–" without a rate, never "0s"
/// while something is left.
pub fn eta(left: u64, rate: u64) -> String {
    if left == 0 {
        return "0s".into();
    }
    let Some(secs) = left.checked_div(rate) else {
        return "–".into();
    };
    let secs = secs.max(1);
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {:02}s", s / 60, s % 60),
        s if s < 100 * 3600 => format!("{}h {:02}m", s / 3600, s / 60 % 60),
        _ => "> 4 days".into(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etas_are_honest() {
        assert_eq!(eta(100, 0), "–");
        assert_eq!(eta(0, 0), "0s");
        assert_eq!(eta(5, 10), "1s", "never 0s while bytes are left");
        assert_eq!(eta(125 << 20, 1 << 20), "2m 05s");
        assert_eq!(eta(3 * 3600 + 120, 1), "3h 02m");
    }

    #[test]
    fn the_rate_is_of_the_last_seconds() {
        let mut w = Window::default();
        let s = Duration::from_secs;
        // A resume's jump, then steady 10 bytes a second.
        w.add(s(0), 0);
        assert_eq!(w.rate(), None);
        w.add(s(1), 1_000_000);
        for t in 2..=20 {
            w.add(s(t), 1_000_000 + 10 * (t - 1));
        }
        assert_eq!(w.rate(), Some(10));
        // Nothing moving: no rate, so no ETA.
        let mut still = Window::default();
        still.add(s(0), 5);
        still.add(s(3), 5);
        assert_eq!(still.rate(), None);
    }
}
