//! Log lines on stderr. By default they read like the rest of shoal's
//! output — `shoal: …`, `shoal: warning: …`, `shoal: error: …` — with no
//! timestamp or module path; `-v` or `RUST_LOG` bring back tracing's
//! detailed format (time, level, module), `-q` leaves only errors.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// What is logged without `RUST_LOG`: what shoal and its crates have to
/// say (connection-level detail is DEBUG), warnings from the rest.
const DEFAULT_FILTER: &str = "warn,shoal=info,tracker=info,client=info";
/// `-v`: shoal's own debug lines too.
const VERBOSE_FILTER: &str = "warn,shoal=debug,tracker=info,client=info";
/// `-vv`: every crate of shoal at debug.
const VERY_VERBOSE_FILTER: &str = "info,shoal=debug,tracker=debug,client=debug,dht=debug";

/// Sets up the global subscriber. `RUST_LOG`, when set, decides what is
/// logged and brings the detailed format (as in any tracing program);
/// otherwise `verbose` (the count of `-v`) and `quiet` do.
pub fn init(verbose: u8, quiet: bool) {
    let from_env = std::env::var_os(EnvFilter::DEFAULT_ENV).is_some_and(|v| !v.is_empty());
    let filter = if from_env {
        EnvFilter::try_from_default_env().unwrap_or_else(|e| {
            eprintln!("shoal: warning: RUST_LOG ignored: {e}");
            EnvFilter::new(DEFAULT_FILTER)
        })
    } else {
        EnvFilter::new(match (quiet, verbose) {
            (true, _) => "error",
            (false, 0) => DEFAULT_FILTER,
            (false, 1) => VERBOSE_FILTER,
            (false, _) => VERY_VERBOSE_FILTER,
        })
    };
    let builder = tracing_subscriber::fmt()
        .with_writer(|| LineOverBars(Vec::new()))
        .with_env_filter(filter);
    if from_env || verbose > 0 {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    } else {
        builder.with_ansi(false).event_format(Plain).init();
    }
}

/// `shoal: message`, with `warning: `/`error: ` (`debug: `, `trace: `)
/// after `shoal: ` for anything but INFO; structured fields follow the
/// message as `key=value`.
struct Plain;

impl<S, N> FormatEvent<S, N> for Plain
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            Level::INFO => "",
            Level::DEBUG => "debug: ",
            Level::TRACE => "trace: ",
        };
        write!(writer, "shoal: {level}")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// A log line on stderr, written whole with any progress bar cleared
/// first and drawn again after (so no stale copy of a bar stays on
/// screen, and no line is cut into one).
struct LineOverBars(Vec<u8>);

impl std::io::Write for LineOverBars {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineOverBars {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let line = std::mem::take(&mut self.0);
        crate::ui::suspend(|| {
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), &line);
        });
    }
}
