//! How far ahead one peer is asked: its request queue, sized from what
//! the connection itself measures. No I/O; "now" is an argument.
//!
//! The first and the last request of each batch we send are timed (up to
//! [`TIMED`] at once). Their answers give
//! - the peer's *answer time*, whose minimum over the connection is the
//!   part of the delay our queue does not cause (the network's round trip,
//!   the peer's own batching: Transmission answers every request half a
//!   second after it arrives, however few are queued); and
//! - a *delivery rate* (as BBR measures one per packet): the bytes that
//!   arrived while it was answered, over that time. The best of the last
//!   [`RATE_SAMPLES`] is the rate. (Timing only one request per answer
//!   time would count, for a peer that sends in bursts, only the part of a
//!   burst before it; hence both ends of every batch, and the best of
//!   several.)
//!
//! A block asked of this peer before (given back or rejected, whose first
//! answer may still come) is not timed, nor is an answer after
//! [`PROBE_EXPIRY`].
//!
//! The queue is a rate times [`Pace::queue_time`]: twice the minimum
//! answer time, between [`QUEUE_TIME_MIN`] and [`QUEUE_TIME_MAX`]
//! ([`QUEUE_TIME_START`] before the first answer).
//! - A peer whose link is the bound answers an unloaded request within a
//!   round trip (0.25 s or less: every connection on the WAN testbed), so
//!   it is asked half a second ahead at the session's meter (updated each
//!   second, averaging about three): every second of queue at an uploader
//!   is a second more per hop of a piece through a swarm (`bench/wan.sh`).
//!   The best of the delivery-rate samples overstates such a link, and
//!   the longer queue it makes cost 0.5 s there at 24 peers.
//! - A peer whose answers take a fixed time sends only what was asked that
//!   long before, so its rate is the queue over that time. It is asked
//!   twice that time ahead at its delivery rate ([`Pace::queue_rate`];
//!   the meter until an answer spanned four blocks), which doubles the
//!   queue with each answer until its link, our 500 blocks or its `reqq`
//!   is the bound. A fixed one second at the meter had held downloads from
//!   Transmission at a third of its speed, and half a second starved them.

use std::time::{Duration, Instant};

use crate::wire::{BlockRef, BLOCK};

/// The least a peer is asked ahead, as time at its rate.
pub const QUEUE_TIME_MIN: Duration = Duration::from_millis(500);
/// The most: past this a queue only delays what is asked now.
pub const QUEUE_TIME_MAX: Duration = Duration::from_secs(4);
/// Before the first answer is timed.
pub const QUEUE_TIME_START: Duration = Duration::from_secs(1);
/// Rate samples kept; the rate is the highest of them, so one answer
/// slowed by the peer's other uploads does not shrink the queue. (About
/// two answer times: we send a batch each time a quarter of the queue was
/// answered.)
pub const RATE_SAMPLES: usize = 8;
/// Requests timed at once.
pub const TIMED: usize = 8;
/// A timed request not answered within this long is no longer timed (its
/// slot is freed at the next batch, its answer ignored): a peer that holds
/// the timed ones back must not stop the timing.
const PROBE_EXPIRY: Duration = Duration::from_secs(8);
/// A rate sample must span this many bytes (four blocks): one block
/// answered within a round trip says little about the peer's link.
const MIN_SAMPLE_BYTES: u64 = 4 * BLOCK as u64;
/// Answer times are counted as at least this (loopback answers in
/// microseconds).
const MIN_ANSWER: Duration = Duration::from_millis(1);

/// One connection's request pacing.
#[derive(Debug, Default)]
pub struct Pace {
    /// Timed requests (`TIMED` at most).
    timed: Vec<Probe>,
    /// Bytes of requested blocks received on this connection.
    received: u64,
    min_answer: Option<Duration>,
    /// The latest delivery-rate samples, bytes per second (0: none yet).
    rates: [u64; RATE_SAMPLES],
    next: usize,
}

#[derive(Debug)]
struct Probe {
    block: BlockRef,
    sent: Instant,
    /// `Pace::received` when it was sent.
    received: u64,
}

impl Pace {
    /// We sent requests for `batch`: its first and last are timed, if
    /// `timeable` (not a block asked of this peer before, whose first
    /// answer may still come and would be timed against this request),
    /// while fewer than [`TIMED`] are. Timed requests older than
    /// [`PROBE_EXPIRY`] are dropped first.
    pub fn requested(
        &mut self,
        batch: &[BlockRef],
        now: Instant,
        timeable: impl Fn(&BlockRef) -> bool,
    ) {
        self.timed
            .retain(|p| now.saturating_duration_since(p.sent) < PROBE_EXPIRY);
        let ends = batch
            .first()
            .into_iter()
            .chain(batch.last().filter(|_| batch.len() > 1));
        for b in ends.filter(|b| timeable(b)) {
            if self.timed.len() < TIMED {
                self.timed.push(Probe {
                    block: *b,
                    sent: now,
                    received: self.received,
                });
            }
        }
    }

    /// The block `b`, which we had asked for, arrived.
    pub fn received(&mut self, b: BlockRef, now: Instant) {
        self.received += u64::from(b.length);
        let Some(i) = self.timed.iter().position(|p| p.block == b) else {
            return;
        };
        let probe = self.timed.swap_remove(i);
        let answer = now.saturating_duration_since(probe.sent).max(MIN_ANSWER);
        if answer >= PROBE_EXPIRY {
            return;
        }
        self.min_answer = Some(self.min_answer.map_or(answer, |m| m.min(answer)));
        let bytes = self.received - probe.received;
        if bytes >= MIN_SAMPLE_BYTES {
            let rate = u128::from(bytes) * 1_000_000 / answer.as_micros();
            self.rates[self.next] = u64::try_from(rate).unwrap_or(u64::MAX);
            self.next = (self.next + 1) % RATE_SAMPLES;
        }
    }

    /// The request for `b` will not be counted (rejected, cancelled, or
    /// given back): if it was a timed one, a later request is timed.
    pub fn forget(&mut self, b: BlockRef) {
        self.timed.retain(|p| p.block != b);
    }

    /// Every request was given back (choked, snubbed).
    pub fn forget_all(&mut self) {
        self.timed.clear();
    }

    /// The peer's delivery rate, once an answer spanned enough bytes.
    pub fn rate(&self) -> Option<u64> {
        self.rates.iter().copied().max().filter(|&r| r > 0)
    }

    /// The rate its queue follows, if not the session's meter: its
    /// delivery rate, for a peer that answers late (see the module).
    pub fn queue_rate(&self) -> Option<u64> {
        self.rate().filter(|_| self.queue_time() > QUEUE_TIME_MIN)
    }

    /// How far ahead to ask, as time at its rate.
    pub fn queue_time(&self) -> Duration {
        self.min_answer.map_or(QUEUE_TIME_START, |a| {
            (2 * a).clamp(QUEUE_TIME_MIN, QUEUE_TIME_MAX)
        })
    }

    /// The requests being timed.
    #[cfg(test)]
    pub fn timed(&self) -> Vec<BlockRef> {
        self.timed.iter().map(|p| p.block).collect()
    }

    /// The shortest answer so far.
    pub fn min_answer(&self) -> Option<Duration> {
        self.min_answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(i: u32) -> BlockRef {
        BlockRef {
            index: i,
            offset: 0,
            length: 16384,
        }
    }

    /// A peer that answers every request half a second after it was sent
    /// (Transmission's pulse), with everything asked: the queue time is
    /// one second, and the rate sample is what arrived in that half
    /// second, so the queue doubles with each answer.
    #[test]
    fn a_peer_with_a_fixed_answer_time_gets_twice_that_and_a_growing_queue() {
        let mut p = Pace::default();
        assert_eq!(p.queue_time(), QUEUE_TIME_START);
        assert_eq!(p.rate(), None);
        let half = Duration::from_millis(500);
        let mut depth = 16u32;
        let mut now = Instant::now();
        let mut next = 0;
        for _ in 0..4 {
            let asked: Vec<_> = (next..next + depth).map(block).collect();
            next += depth;
            p.requested(&asked, now, |_| true);
            now += half;
            for &b in &asked {
                p.received(b, now);
            }
            assert_eq!(p.min_answer(), Some(half));
            assert_eq!(p.queue_time(), Duration::from_secs(1));
            let rate = p.queue_rate().unwrap();
            assert_eq!(rate, u64::from(depth) * 16384 * 2);
            let new = (rate * p.queue_time().as_secs() / 16384) as u32;
            assert_eq!(new, 2 * depth);
            depth = new;
        }
    }

    /// A peer whose link is the bound answers the first request of a batch
    /// within a round trip and the last after the queue ahead of it: the
    /// minimum sets the time (no less than `QUEUE_TIME_MIN`), and the rate
    /// is its link's.
    #[test]
    fn a_link_bound_peer_gets_the_least_queue_time_and_its_link_rate() {
        let t0 = Instant::now();
        let mut p = Pace::default();
        // 1 MB/s: a block every 16 ms; the first after 20 ms.
        let per_block = Duration::from_millis(16);
        let asked: Vec<_> = (0..64).map(block).collect();
        p.requested(&asked, t0, |_| true);
        for (i, &b) in (1..).zip(&asked) {
            p.received(b, t0 + Duration::from_millis(4) + per_block * i);
        }
        assert_eq!(p.min_answer(), Some(Duration::from_millis(20)));
        assert_eq!(p.queue_time(), QUEUE_TIME_MIN);
        let rate = p.rate().unwrap();
        assert!((1_000_000..1_025_000).contains(&rate), "{rate}");
        // Its queue follows the session's meter, not this.
        assert_eq!(p.queue_rate(), None);
    }

    /// The highest of the last `RATE_SAMPLES` is the rate: a few slow
    /// answers do not shrink the queue; a run of them does.
    #[test]
    fn the_rate_is_the_best_of_the_last_samples() {
        let mut p = Pace::default();
        let mut now = Instant::now();
        let mut i = 0;
        let mut sample = |p: &mut Pace, blocks: u32| {
            let asked: Vec<_> = (i..i + blocks).map(block).collect();
            i += blocks;
            p.requested(&asked, now, |_| true);
            now += Duration::from_secs(1);
            for &b in &asked {
                p.received(b, now);
            }
        };
        sample(&mut p, 64);
        assert_eq!(p.rate(), Some(64 * 16384));
        for _ in 1..RATE_SAMPLES {
            sample(&mut p, 8);
            assert_eq!(p.rate(), Some(64 * 16384));
        }
        sample(&mut p, 8);
        assert_eq!(p.rate(), Some(8 * 16384));
    }

    /// A timed request that is not answered (rejected, cancelled, given
    /// back) frees its slot; a block that is not timed ends nothing; at
    /// most `TIMED` requests are timed at once.
    #[test]
    fn only_answered_timed_requests_count_and_their_slots_are_bounded() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Pace::default();
        p.requested(&[block(0), block(1), block(2)], t0, |_| true);
        // block(1) is not timed: only a batch's first and last are.
        p.received(block(1), t0 + ms(10));
        p.forget(block(0));
        p.forget(block(2));
        p.received(block(0), t0 + ms(50));
        p.received(block(2), t0 + ms(50));
        assert_eq!(p.min_answer(), None);
        p.requested(&[block(3)], t0 + ms(100), |_| true);
        p.received(block(3), t0 + ms(400));
        assert_eq!(p.min_answer(), Some(ms(300)));
        p.requested(&[block(4)], t0, |_| true);
        p.forget_all();
        p.received(block(4), t0 + ms(200));
        assert_eq!(p.min_answer(), Some(ms(300)));
        // Batches while TIMED are timed: the next is not.
        for k in 0..TIMED as u32 / 2 {
            p.requested(
                &[block(10 + 2 * k), block(11 + 2 * k)],
                t0 + ms(500),
                |_| true,
            );
        }
        p.requested(&[block(99)], t0 + ms(500), |_| true);
        p.received(block(99), t0 + ms(501));
        assert_eq!(p.min_answer(), Some(ms(300)));
        p.received(block(10), t0 + ms(600));
        assert_eq!(p.min_answer(), Some(ms(100)));
        // Unanswered for PROBE_EXPIRY: no longer timed (block(12), say,
        // was held back), so a new batch is.
        let later = t0 + ms(500) + PROBE_EXPIRY;
        p.requested(&[block(98)], later, |_| true);
        assert_eq!(p.timed(), [block(98)]);
        p.received(block(12), later + ms(1));
        p.received(block(98), later + ms(80));
        assert_eq!(p.min_answer(), Some(ms(80)));
        // An answer later than PROBE_EXPIRY, before the next batch
        // dropped its timing, is not counted.
        p.requested(&[block(95)], later, |_| true);
        p.received(block(95), later + PROBE_EXPIRY);
        assert_eq!(p.min_answer(), Some(ms(80)));
        assert!(p.timed().is_empty());
        // A block that is not timeable is not timed.
        p.requested(&[block(97), block(96)], later, |b| *b != block(97));
        assert_eq!(p.timed(), [block(96)]);
        // Loopback answers in no time: counted as a millisecond.
        p.requested(&[block(5)], t0, |_| true);
        p.received(block(5), t0);
        assert_eq!(p.min_answer(), Some(MIN_ANSWER));
    }
}
