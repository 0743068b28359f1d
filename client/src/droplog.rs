//! Why peers were dropped, told at the default log level without letting
//! a swarm of hostile peers flood the log: each address once, at most
//! [`PER_MINUTE`] lines a minute, and a count of the rest. Every drop is
//! still logged at DEBUG (`RUST_LOG=client=debug`).

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most lines about dropped peers a minute.
pub const PER_MINUTE: u32 = 10;
/// Addresses remembered as told about; past this the memory starts over.
const MAX_SEEN: usize = 4096;
const WINDOW: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(crate) struct DropLog {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    seen: HashSet<IpAddr>,
    window: Option<Instant>,
    logged: u32,
    quiet: u32,
}

/// What to log for one drop.
#[derive(Debug, PartialEq, Eq)]
struct Say {
    /// Log this drop.
    this: bool,
    /// Drops not logged in the minute that just ended.
    untold: Option<u32>,
}

impl Inner {
    fn note(&mut self, ip: IpAddr, now: Instant) -> Say {
        let mut untold = None;
        if self
            .window
            .map_or(true, |w| now.duration_since(w) >= WINDOW)
        {
            untold = Some(self.quiet).filter(|&n| n > 0);
            self.window = Some(now);
            self.logged = 0;
            self.quiet = 0;
        }
        if self.seen.len() >= MAX_SEEN && !self.seen.contains(&ip) {
            self.seen.clear();
        }
        let this = self.seen.insert(ip) && self.logged < PER_MINUTE;
        if this {
            self.logged += 1;
        } else {
            self.quiet += 1;
        }
        Say { this, untold }
    }
}

impl DropLog {
    /// A peer at `ip` was dropped for what `line` says (address, client
    /// name and reason).
    pub fn report(&self, ip: IpAddr, line: impl FnOnce() -> String) {
        let say = self
            .inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .note(ip, Instant::now());
        if let Some(n) = say.untold {
            tracing::warn!(
                "{n} more peer{} dropped in the last minute (RUST_LOG=client=debug shows each)",
                if n == 1 { " was" } else { "s were" }
            );
        }
        if say.this {
            tracing::warn!("{}", line());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_address_and_a_count_per_minute() {
        let t0 = Instant::now();
        let mut log = Inner::default();
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        let say = |this, untold| Say { this, untold };
        assert_eq!(log.note(ip(1), t0), say(true, None));
        // The same address again: counted, not told.
        assert_eq!(log.note(ip(1), t0), say(false, None));
        for n in 2..=PER_MINUTE as u8 {
            assert_eq!(log.note(ip(n), t0), say(true, None));
        }
        // Past the limit, new addresses are counted too.
        assert_eq!(log.note(ip(200), t0), say(false, None));
        // A minute on: the count of the untold, and new lines again.
        let t1 = t0 + WINDOW;
        assert_eq!(log.note(ip(201), t1), say(true, Some(2)));
        assert_eq!(log.note(ip(1), t1), say(false, None));
        // A quiet minute: no count.
        assert_eq!(log.note(ip(202), t1 + WINDOW * 2), say(true, Some(1)));
        assert_eq!(log.note(ip(203), t1 + WINDOW * 3), say(true, None));
    }

    #[test]
    fn memory_is_bounded() {
        let t0 = Instant::now();
        let mut log = Inner::default();
        for n in 0..(MAX_SEEN as u32 * 3) {
            log.note(IpAddr::from(n.to_be_bytes()), t0);
        }
        assert!(log.seen.len() <= MAX_SEEN);
    }
}
