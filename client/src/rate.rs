//! Rates and rate limits: a smoothed byte-rate meter and a token bucket.
//! Both take "now" as an argument, so they are tested without a clock.

use std::time::{Duration, Instant};

/// Bytes per second over roughly the last few seconds: an exponentially
/// weighted average of per-tick samples.
#[derive(Debug, Clone)]
pub struct RateMeter {
    total: u64,
    at_last_tick: u64,
    last_tick: Option<Instant>,
    rate: f64,
    /// Since when nothing has moved (ticks with no bytes).
    idle_since: Option<Instant>,
}

/// Silence this long makes the rate 0, not a tail that decays for a minute
/// (a peer that finished moves nothing, and must say so).
const IDLE_IS_ZERO: Duration = Duration::from_secs(3);

impl Default for RateMeter {
    fn default() -> Self {
        RateMeter {
            total: 0,
            at_last_tick: 0,
            last_tick: None,
            rate: 0.0,
            idle_since: None,
        }
    }
}

impl RateMeter {
    pub fn add(&mut self, bytes: u64) {
        self.total += bytes;
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Folds the bytes since the last tick into the rate. Call about once
    /// a second.
    pub fn tick(&mut self, now: Instant) {
        if let Some(last) = self.last_tick {
            let dt = now.duration_since(last).as_secs_f64();
            if dt > 0.0 {
                let sample = (self.total - self.at_last_tick) as f64 / dt;
                // Weight such that the average spans about 3 ticks; the
                // first sample is taken as is.
                self.rate = if self.rate == 0.0 {
                    sample
                } else {
                    self.rate + (sample - self.rate) * (dt / 3.0).min(1.0)
                };
            }
            if self.total > self.at_last_tick {
                self.idle_since = None;
            } else if now.duration_since(*self.idle_since.get_or_insert(last)) >= IDLE_IS_ZERO {
                self.rate = 0.0;
            }
        }
        self.last_tick = Some(now);
        self.at_last_tick = self.total;
    }

    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }
}

/// A token bucket that allows debt: `take` always succeeds and says how
/// long the caller must wait before going on, so a big read is charged at
/// once and later callers queue behind it.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` bytes per second; up to `burst` bytes may go at once after an
    /// idle spell.
    pub fn new(rate: u64, burst: u64, now: Instant) -> TokenBucket {
        let rate = rate.max(1) as f64;
        TokenBucket {
            rate,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            last: now,
        }
    }

    /// Charges `bytes`; returns how long to wait before using them.
    pub fn take(&mut self, bytes: u64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// An optional shared limit, for all the connections of a session.
#[derive(Debug)]
pub struct Limiter(Option<std::sync::Mutex<TokenBucket>>);

impl Limiter {
    /// `None` or `Some(0)` means unlimited.
    pub fn new(rate: Option<u64>) -> Limiter {
        Limiter(rate.filter(|&r| r > 0).map(|r| {
            // A burst of a tenth of a second (at least a few blocks) keeps
            // the rate smooth without starving peers of whole blocks.
            std::sync::Mutex::new(TokenBucket::new(
                r,
                (r / 10).max(64 * 1024),
                tokio::time::Instant::now().into_std(),
            ))
        }))
    }

    pub fn is_limited(&self) -> bool {
        self.0.is_some()
    }

    /// Waits until `bytes` may pass.
    pub async fn acquire(&self, bytes: u64) {
        let Some(bucket) = &self.0 else { return };
        let wait = bucket
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(bytes, tokio::time::Instant::now().into_std());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_follows_a_steady_rate() {
        let t0 = Instant::now();
        let mut m = RateMeter::default();
        m.tick(t0);
        for s in 1..=10 {
            m.add(1000);
            m.tick(t0 + Duration::from_secs(s));
        }
        assert_eq!(m.rate(), 1000);
        assert_eq!(m.total(), 10_000);
        // Silence decays the rate, and after 3 s of it the rate is 0.
        m.tick(t0 + Duration::from_secs(11));
        assert!((1..1000).contains(&m.rate()), "{}", m.rate());
        m.tick(t0 + Duration::from_secs(12));
        assert!(m.rate() > 0);
        m.tick(t0 + Duration::from_secs(13));
        assert_eq!(m.rate(), 0);
        // And it picks up again at once.
        m.add(2000);
        m.tick(t0 + Duration::from_secs(14));
        assert_eq!(m.rate(), 2000);
    }

    #[test]
    fn bucket_spreads_bytes_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 1000, t0);
        // The burst passes at once...
        assert_eq!(b.take(1000, t0), Duration::ZERO);
        // ...then each further 500 bytes waits its share.
        assert_eq!(b.take(500, t0), Duration::from_millis(500));
        assert_eq!(b.take(500, t0), Duration::from_millis(1000));
        // Time refills it, never above the burst.
        assert_eq!(b.take(0, t0 + Duration::from_secs(100)), Duration::ZERO);
        assert_eq!(
            b.take(1500, t0 + Duration::from_secs(100)),
            Duration::from_millis(500)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn limiter_paces_callers() {
        let l = Limiter::new(Some(100_000));
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            l.acquire(64 * 1024).await;
        }
        // 640 KiB at 100 kB/s, minus the 64 KiB burst: about 5.9 s.
        let took = start.elapsed().as_secs_f64();
        assert!((5.0..7.0).contains(&took), "{took}");
        assert!(!Limiter::new(None).is_limited());
        assert!(!Limiter::new(Some(0)).is_limited());
    }
}
