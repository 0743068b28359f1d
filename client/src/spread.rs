//! Which pieces a seed should send first — a plain struct (sans-IO), like
//! the picker and the choker.
//!
//! A seed with a capped upload link is the swarm's bottleneck until every
//! piece has left it once: each block it sends twice delays the swarm by a
//! block. Leechers cannot see what the others are fetching from the seed
//! (a `have` comes only once a piece is complete), so when they all pick
//! at random among the pieces only the seed has, they often pick the same
//! ones: on the WAN testbed a third of the seed's upload was duplicates.
//!
//! The seed sees every request, so it keeps count: [`Spread`] knows how
//! many peers each piece has been sent to. When a peer asks for a piece
//! that has gone out more often than another piece it lacks, the seed
//! rejects the request (fast extension) and suggests the less-sent piece
//! instead; the peer fetches the first from the peer that has it. Plain
//! seeding keeps its bitfield and its rules (every peer may ask for
//! anything), so unlike initial seeding (BEP 16) nothing can stall: a peer
//! is only turned away while a piece it lacks has gone out fewer times,
//! and such a piece the seed then serves it.

use std::time::{Duration, Instant};

use rand::Rng;

/// Copies told apart when choosing what to suggest; beyond it all pieces
/// are alike (the counts themselves are exact, up to 255).
pub const LEVELS: u8 = 3;
/// A first copy not announced by its receiver within this long no longer
/// holds back second copies (a slow or silent receiver, one that batches
/// its `have`s, or one that cancelled).
pub const FIRST_COPY_WAIT: Duration = Duration::from_secs(5);
/// Entries of a level looked at per question: bounded work per request
/// however many pieces there are (the levels are shuffled, so a peer that
/// has the first entries it meets does not hide the rest for long).
const SCAN: usize = 64;

#[derive(Debug, Clone)]
pub struct Spread {
    /// Peers each piece was sent to (asked of us by), up to 255.
    copies: Vec<u8>,
    /// When each piece's first copy went out, in ms since `epoch`.
    first_at: Vec<u32>,
    epoch: Instant,
    /// `levels[c]`: pieces sent to `c` peers, in random order. Lazy: a
    /// piece stays in a lower level until a scan meets it there and sees
    /// that its count moved on.
    levels: Vec<Vec<u32>>,
    /// Pieces whose first copy went out, oldest first, until a scan sees
    /// that one arrived (a peer announced it).
    first_copies: std::collections::VecDeque<u32>,
    /// Pieces never sent (count 0).
    unsent: usize,
}

impl Spread {
    /// A torrent of `pieces` pieces, none sent yet.
    pub fn new<R: Rng>(pieces: usize, rng: &mut R) -> Spread {
        let mut first: Vec<u32> = (0..pieces as u32).collect();
        // Fisher-Yates: suggestions come in random order.
        for i in (1..first.len()).rev() {
            first.swap(i, rng.random_range(0..=i));
        }
        let mut levels = vec![Vec::new(); usize::from(LEVELS)];
        levels[0] = first;
        Spread {
            copies: vec![0; pieces],
            first_at: vec![0; pieces],
            epoch: Instant::now(),
            levels,
            first_copies: std::collections::VecDeque::new(),
            unsent: pieces,
        }
    }

    /// Whether some piece has not gone out yet. Once every piece has,
    /// the first copies still on their way are already queued, and
    /// holding second copies back would leave the link to the few
    /// connections carrying them — too few to fill it (a flow's rate is
    /// its window over a round trip that a peer's busy uplink stretches).
    pub fn any_unsent(&self) -> bool {
        self.unsent > 0
    }

    /// Peers `piece` went to (255 out of range: never less sent).
    pub fn copies(&self, piece: u32) -> u8 {
        self.copies.get(piece as usize).copied().unwrap_or(u8::MAX)
    }

    /// `piece` is going to one more peer.
    pub fn sent(&mut self, piece: u32, now: Instant) {
        let Some(c) = self.copies.get_mut(piece as usize) else {
            return;
        };
        if *c == u8::MAX {
            return;
        }
        *c += 1;
        let c = *c;
        if c == 1 {
            self.unsent -= 1;
            self.first_copies.push_back(piece);
            self.first_at[piece as usize] = self.ms(now);
        }
        if c < LEVELS {
            self.levels[usize::from(c)].push(piece);
        }
        self.bound();
    }

    fn ms(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch)
            .as_millis()
            .min(u128::from(u32::MAX)) as u32
    }

    /// Whether `piece`'s first copy went out less than [`FIRST_COPY_WAIT`]
    /// ago (and went out at all).
    pub fn first_copy_recent(&self, piece: u32, now: Instant) -> bool {
        self.copies(piece) > 0
            && (piece as usize) < self.first_at.len()
            && self.ms(now).saturating_sub(self.first_at[piece as usize])
                < FIRST_COPY_WAIT.as_millis() as u32
    }

    /// The lazy lists keep stale entries until a scan meets them; a peer
    /// that makes pieces go back and forth (asks, then leaves) must not
    /// grow them without end: past twice the piece count, a list is made
    /// anew from the counts.
    fn bound(&mut self) {
        let most = 2 * self.copies.len() + 64;
        for (level, list) in self.levels.iter_mut().enumerate() {
            if list.len() > most {
                list.clear();
                list.extend(
                    (0..self.copies.len() as u32)
                        .filter(|&p| usize::from(self.copies[p as usize]) == level),
                );
            }
        }
        if self.first_copies.len() > most {
            self.first_copies.clear();
            self.first_copies
                .extend((0..self.copies.len() as u32).filter(|&p| self.copies[p as usize] > 0));
        }
    }

    /// Whether the first copy of some piece is still on its way (went out,
    /// and no peer announced it yet, by `arrived`). While one is, a second
    /// copy of anything would take link from it.
    /// One that took longer than [`FIRST_COPY_WAIT`] holds nothing back.
    pub fn first_copy_on_its_way(&mut self, arrived: impl Fn(u32) -> bool, now: Instant) -> bool {
        while let Some(&p) = self.first_copies.front() {
            if self.first_copy_recent(p, now) && !arrived(p) {
                return true;
            }
            self.first_copies.pop_front();
        }
        false
    }

    /// `piece` will not go to a peer after all (it was choked before we
    /// sent it, cancelled, or left): one copy fewer.
    pub fn unsent(&mut self, piece: u32) {
        let Some(c) = self.copies.get_mut(piece as usize) else {
            return;
        };
        // (A count that reached 255 stays there: how many of those peers
        // still hold it is no longer known, and 0 must mean "nobody".)
        if *c > 0 && *c < u8::MAX {
            *c -= 1;
            if *c == 0 {
                self.unsent += 1;
            }
            if *c < LEVELS {
                let c = usize::from(*c);
                self.levels[c].push(piece);
                self.bound();
            }
        }
    }

    /// A piece that went out fewer times than `piece` and that `lacks`
    /// (the asking peer does not have it), if one is found among at most
    /// [`SCAN`] entries per level: fewest copies first.
    pub fn less_sent<R: Rng>(
        &mut self,
        piece: u32,
        lacks: impl Fn(u32) -> bool,
        rng: &mut R,
    ) -> Option<u32> {
        let upto = self.copies(piece).min(LEVELS);
        for level in 0..upto {
            let list = &mut self.levels[usize::from(level)];
            if list.is_empty() {
                continue;
            }
            let mut i = rng.random_range(0..list.len());
            let mut looked = 0;
            while looked < SCAN && !list.is_empty() {
                if i >= list.len() {
                    i = 0;
                }
                let p = list[i];
                if self.copies[p as usize] != level {
                    // Moved on: drop the stale entry (what comes in its
                    // place is looked at next).
                    list.swap_remove(i);
                    continue;
                }
                looked += 1;
                if p != piece && lacks(p) {
                    return Some(p);
                }
                i += 1;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn a_piece_sent_once_yields_to_one_never_sent() {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut s = Spread::new(8, &mut rng);
        s.sent(3, now);
        assert_eq!(s.copies(3), 1);
        // A second peer asking for 3 is pointed at another piece.
        let other = s.less_sent(3, |_| true, &mut rng).unwrap();
        assert_ne!(other, 3);
        assert_eq!(s.copies(other), 0);
        // A piece never sent yields to nothing.
        assert_eq!(s.less_sent(other, |_| true, &mut rng), None);
    }

    #[test]
    fn pieces_never_sent_are_counted_through_sends_and_give_backs() {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(9);
        let mut s = Spread::new(3, &mut rng);
        s.sent(0, now);
        s.sent(0, now);
        s.sent(1, now);
        assert!(s.any_unsent());
        s.sent(2, now);
        assert!(!s.any_unsent());
        s.unsent(0);
        assert!(!s.any_unsent(), "0 still went to one peer");
        s.unsent(2);
        assert!(s.any_unsent());
        // Out of range changes nothing.
        s.sent(7, now);
        s.unsent(7);
        s.sent(2, now);
        assert!(!s.any_unsent());
    }

    #[test]
    fn only_pieces_the_peer_lacks_are_suggested() {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(2);
        let mut s = Spread::new(8, &mut rng);
        s.sent(0, now);
        // The peer has everything but 0 and 5.
        for _ in 0..50 {
            assert_eq!(s.less_sent(0, |p| p == 0 || p == 5, &mut rng), Some(5));
        }
        // It has every other piece: 0 it gets, though it went out before.
        assert_eq!(s.less_sent(0, |p| p == 0, &mut rng), None);
    }

    #[test]
    fn once_every_piece_went_out_the_least_sent_come_first() {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(3);
        let mut s = Spread::new(4, &mut rng);
        for p in 0..4 {
            s.sent(p, now);
        }
        s.sent(1, now);
        s.sent(1, now);
        // 1 went out three times, the others once.
        let q = s.less_sent(1, |_| true, &mut rng).unwrap();
        assert!(q != 1 && s.copies(q) == 1);
        // Among the once-sent, nothing is less sent.
        assert_eq!(s.less_sent(q, |_| true, &mut rng), None);
        // Counts are exact, but beyond LEVELS all pieces are alike.
        for _ in 0..10 {
            s.sent(2, now);
        }
        assert_eq!((s.copies(2), s.copies(1)), (11, LEVELS));
        assert_eq!(s.less_sent(2, |p| p == 1 || p == 2, &mut rng), None);
    }

    #[test]
    fn every_piece_is_suggested_once_before_any_twice() {
        // 3000 pieces: taking each suggestion walks all the never-sent
        // ones, with bounded work per question and stale entries dropped
        // on the way; then the once-sent ones; then nothing is left.
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(4);
        let n = 3000;
        let mut s = Spread::new(n, &mut rng);
        s.sent(0, now);
        s.sent(0, now);
        let mut seen = vec![0u8; n];
        seen[0] = 2;
        for round in 1..=2u8 {
            for _ in 1..n {
                let p = s.less_sent(0, |_| true, &mut rng).unwrap() as usize;
                assert_eq!(seen[p], round - 1, "piece {p} out of turn");
                seen[p] = round;
                s.sent(p as u32, now);
            }
        }
        assert_eq!(s.less_sent(0, |_| true, &mut rng), None);
    }

    #[test]
    fn a_piece_that_did_not_go_out_after_all_is_offered_again() {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(6);
        let mut s = Spread::new(2, &mut rng);
        s.sent(0, now);
        s.sent(1, now);
        s.sent(1, now);
        assert_eq!(s.less_sent(1, |_| true, &mut rng), Some(0));
        s.unsent(0);
        assert_eq!(s.copies(0), 0);
        // Back among the never-sent: suggested instead of 1, still.
        assert_eq!(s.less_sent(1, |_| true, &mut rng), Some(0));
        s.unsent(0);
        assert_eq!(s.copies(0), 0);
        s.unsent(9);
    }

    #[test]
    fn first_copies_are_on_their_way_until_they_arrive() {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(7);
        let mut s = Spread::new(4, &mut rng);
        assert!(!s.first_copy_on_its_way(|_| false, now));
        s.sent(2, now);
        s.sent(2, now);
        s.sent(0, now);
        assert!(s.first_copy_on_its_way(|_| false, now));
        assert!(s.first_copy_on_its_way(|p| p == 2, now));
        assert!(!s.first_copy_on_its_way(|p| p == 0 || p == 2, now));
        // A piece given back (unsent) is not waited for.
        s.sent(3, now);
        s.unsent(3);
        assert!(!s.first_copy_on_its_way(|_| true, now));
        assert!(!s.first_copy_on_its_way(|_| false, now));
    }

    #[test]
    fn pieces_going_back_and_forth_do_not_grow_the_lists() {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(8);
        let mut s = Spread::new(100, &mut rng);
        for _ in 0..10_000 {
            for p in 0..100 {
                s.sent(p, now);
                s.unsent(p);
            }
        }
        assert!(
            s.levels.iter().all(|l| l.len() <= 264),
            "{:?}",
            s.levels.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert!(s.first_copies.len() <= 264);
        // Still right: nothing went out.
        s.sent(5, now);
        s.sent(5, now);
        let q = s.less_sent(5, |_| true, &mut rng).unwrap();
        assert_eq!(s.copies(q), 0);
    }

    #[test]
    fn a_first_copy_holds_back_for_a_while_only() {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(9);
        let mut s = Spread::new(4, &mut rng);
        s.sent(1, now);
        assert!(s.first_copy_recent(1, now));
        assert!(!s.first_copy_recent(2, now));
        // Never announced (a silent or cancelled receiver): after a while
        // it holds nothing back.
        let later = now + FIRST_COPY_WAIT + Duration::from_millis(10);
        assert!(s.first_copy_on_its_way(|_| false, now));
        assert!(!s.first_copy_recent(1, later));
        assert!(!s.first_copy_on_its_way(|_| false, later));
    }

    #[test]
    fn counts_above_the_levels_go_down_again() {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(10);
        let mut s = Spread::new(2, &mut rng);
        for _ in 0..4 {
            s.sent(0, now);
        }
        for _ in 0..4 {
            s.unsent(0);
        }
        assert_eq!(s.copies(0), 0);
        s.sent(1, now);
        assert_eq!(s.less_sent(1, |_| true, &mut rng), Some(0));
    }

    #[test]
    fn pieces_out_of_range_are_ignored() {
        let now = Instant::now();
        let mut rng = SmallRng::seed_from_u64(5);
        let mut s = Spread::new(2, &mut rng);
        s.sent(7, now);
        assert_eq!(s.copies(7), u8::MAX);
        assert!(s.less_sent(7, |_| true, &mut rng).is_some());
    }
}
