//! Initial seeding (BEP 16), per connection: we never send our bitfield;
//! the peer is offered a piece with `have` (and, with the fast extension,
//! `suggest_piece`), and a new one when another peer announces one of its
//! pieces (it spread), so the seed uploads each piece about once and the
//! peers trade the rest among themselves.
//!
//! Sans-IO: every method takes the torrent's state, the peer's bitfield
//! and the output buffer of its connection, and `now`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::session::State;
use crate::wire::{Bitfield, Message};

/// Pieces offered to a peer at once.
pub const INITIAL_OFFERS: usize = 2;
/// A peer that took all its offered pieces waits this long for one of them
/// to spread before it is offered a piece nobody has been offered...
pub const SPREAD_WAIT: Duration = Duration::from_secs(2);
/// ... and this long before it is offered any piece it lacks.
pub const STUCK_WAIT: Duration = Duration::from_secs(10);
/// Most offers outstanding to one peer.
pub const MAX_PENDING: usize = 4;

/// Which pieces may be offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Never offered, and no peer has it: the normal case, so that the
    /// seed sends each piece about once.
    Fresh,
    /// No connected peer has it (it may be on its way to someone): for a
    /// peer that has waited long.
    Unavailable,
    /// Anything the peer lacks: for a peer alone with the seed.
    Any,
}

/// One peer's offers.
#[derive(Debug, Default)]
pub struct Initial {
    /// Offered and not yet seen spreading.
    pending: Vec<u32>,
    /// Every piece the peer may request from us.
    allowed: HashSet<u32>,
    /// Bytes requested of each pending piece.
    requested: HashMap<u32, u64>,
    /// Since when every pending piece has been requested in full.
    waiting_since: Option<Instant>,
    /// When it was last offered a piece.
    last_offer: Option<Instant>,
    /// Also send `suggest_piece` with each offer (fast extension).
    suggest: bool,
}

/// Who is asking, for [`Initial`]'s methods.
pub struct Ctx<'a> {
    pub st: &'a mut State,
    /// What the peer has.
    pub has: &'a Bitfield,
    /// Where messages to the peer go.
    pub out: &'a mut Vec<u8>,
    pub now: Instant,
}

impl Initial {
    pub fn new(suggest: bool) -> Initial {
        Initial {
            suggest,
            ..Initial::default()
        }
    }

    /// Whether the peer may request `piece` (it was offered).
    pub fn allows(&self, piece: u32) -> bool {
        self.allowed.contains(&piece)
    }

    #[cfg(test)]
    pub fn pending(&self) -> &[u32] {
        &self.pending
    }

    /// The first offers, right after the handshake.
    pub fn start(&mut self, cx: &mut Ctx<'_>) {
        for _ in 0..INITIAL_OFFERS {
            self.offer(cx, Offer::Fresh);
        }
    }

    /// The peer asked for `bytes` of `piece` (which it may have).
    pub fn requested(&mut self, piece: u32, bytes: u64) {
        *self.requested.entry(piece).or_default() += bytes;
    }

    /// Offers a piece `which` admits; false when there is none.
    fn offer(&mut self, cx: &mut Ctx<'_>, which: Offer) -> bool {
        let Some(piece) = piece_to_offer(cx.st, cx.has, &self.allowed, which) else {
            return false;
        };
        self.pending.push(piece);
        self.allowed.insert(piece);
        self.waiting_since = None;
        self.last_offer = Some(cx.now);
        Message::Have(piece).encode(cx.out);
        if self.suggest {
            Message::SuggestPiece(piece).encode(cx.out);
        }
        true
    }

    /// The peer announced `piece`: an offered piece it got elsewhere (it
    /// did not ask us for all of it) makes room for another offer.
    pub fn peer_has(&mut self, cx: &mut Ctx<'_>, piece: u32) {
        let size = cx.st.info.piece_size(piece as usize);
        let Some(i) = self.pending.iter().position(|&p| p == piece) else {
            return;
        };
        if self.requested.get(&piece).copied().unwrap_or(0) < size {
            self.pending.remove(i);
            self.requested.remove(&piece);
            let o = &mut cx.st.offers[piece as usize];
            *o = o.saturating_sub(1);
            self.offer(cx, Offer::Fresh);
        }
    }

    /// A piece offered to this peer is elsewhere now (another peer
    /// announced it): offer another.
    pub fn spread(&mut self, cx: &mut Ctx<'_>, piece: u32) {
        let Some(i) = self.pending.iter().position(|&p| p == piece) else {
            return;
        };
        self.pending.remove(i);
        self.requested.remove(&piece);
        self.offer(cx, Offer::Fresh);
    }

    /// Every offered piece that another peer, which has `bits`, holds.
    pub fn spread_all(&mut self, cx: &mut Ctx<'_>, bits: &Bitfield) {
        let spread: Vec<u32> = self
            .pending
            .iter()
            .copied()
            .filter(|&p| bits.get(p as usize))
            .collect();
        for p in spread {
            self.spread(cx, p);
        }
    }

    /// Once a second: new offers for a peer that waited. `sent_all`: its
    /// upload queue is empty.
    pub fn tick(&mut self, cx: &mut Ctx<'_>, sent_all: bool) {
        let info = cx.st.info.clone();
        let all_taken = sent_all
            && self.pending.iter().all(|&p| {
                self.requested.get(&p).copied().unwrap_or(0) >= info.piece_size(p as usize)
            });
        if !all_taken {
            self.waiting_since = None;
            // It leaves an offer untouched (it may not want that file):
            // after a long while, offer something else beside it.
            if cx.now.duration_since(self.last_offer.unwrap_or(cx.now)) < STUCK_WAIT {
                return;
            }
            if self.offer(cx, Offer::Unavailable) {
                self.prune(cx.st);
            }
            return;
        }
        // It took everything offered (or nothing was left to offer) and
        // none of it spread yet. After a while offer a piece nobody has
        // been given; after a long while (the others may be gone), any. A
        // peer alone with us has nobody to spread to: it gets a few pieces
        // at once, without waiting.
        let waited = cx
            .now
            .duration_since(*self.waiting_since.get_or_insert(cx.now));
        let alone = cx.st.peers.len() <= 1;
        // Nobody wants anything from us: every peer took its offers and
        // waits for them to spread, so our link stands idle. A fresh offer
        // now costs nothing.
        let idle = !cx.st.peers.values().any(|p| p.interested);
        if waited < SPREAD_WAIT && !alone && !idle {
            return;
        }
        let which = if alone {
            Offer::Any
        } else if waited >= STUCK_WAIT {
            Offer::Unavailable
        } else {
            Offer::Fresh
        };
        let batch = if alone { MAX_PENDING } else { 1 };
        for _ in 0..batch {
            if !self.offer(cx, which) {
                break;
            }
            self.prune(cx.st);
        }
    }

    /// Keeps at most MAX_PENDING offers, dropping the oldest; an offer
    /// dropped untaken no longer counts.
    fn prune(&mut self, st: &mut State) {
        while self.pending.len() > MAX_PENDING {
            let oldest = self.pending.remove(0);
            let taken = self.requested.remove(&oldest).unwrap_or(0);
            if taken < st.info.piece_size(oldest as usize) {
                let o = &mut st.offers[oldest as usize];
                *o = o.saturating_sub(1);
            }
        }
    }

    /// The connection ends: offers it will not take after all count no
    /// more.
    pub fn withdraw(&mut self, st: &mut State) {
        for &p in &self.pending {
            if self.requested.get(&p).copied().unwrap_or(0) < st.info.piece_size(p as usize) {
                let o = &mut st.offers[p as usize];
                *o = o.saturating_sub(1);
            }
        }
        self.pending.clear();
    }
}

/// The piece to offer a peer that has `has` and may already request
/// `allowed`, among those `which` admits — the one fewest peers have or
/// were offered, at random among equals.
pub fn piece_to_offer(
    st: &mut State,
    has: &Bitfield,
    allowed: &HashSet<u32>,
    which: Offer,
) -> Option<u32> {
    let mut best: Option<(u32, u32)> = None;
    let mut ties = 0u32;
    for i in 0..st.have.len() {
        let piece = i as u32;
        if has.get(i) || allowed.contains(&piece) || !st.have.get(i) {
            continue;
        }
        let available = st.picker.availability(piece);
        let ok = match which {
            Offer::Fresh => available == 0 && st.offers[i] == 0,
            Offer::Unavailable => available == 0,
            Offer::Any => true,
        };
        if !ok {
            continue;
        }
        let score = available + st.offers[i];
        match best {
            Some((b, _)) if score > b => {}
            Some((b, _)) if score == b => {
                ties += 1;
                if st.rng.random_range(0..ties) == 0 {
                    best = Some((score, piece));
                }
            }
            _ => {
                best = Some((score, piece));
                ties = 1;
            }
        }
    }
    let (_, piece) = best?;
    st.offers[piece as usize] += 1;
    Some(piece)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::tests::{add_peer, test_state};

    fn decode_all(mut b: &[u8]) -> Vec<Message> {
        let mut v = Vec::new();
        while let Some((m, n)) = Message::decode(b).unwrap() {
            v.push(m);
            b = &b[n..];
        }
        v
    }

    /// The first offers, each requested in full.
    fn start_and_take_all(a: &mut Initial, cx: &mut Ctx<'_>) {
        a.start(cx);
        for &p in &a.pending().to_vec() {
            a.requested(p, cx.st.info.piece_size(p as usize));
        }
    }

    #[test]
    fn offers_distinct_fresh_pieces_then_replaces_spread_ones() {
        let mut st = test_state(8, true);
        let has = Bitfield::new(8);
        let mut out = Vec::new();
        let now = Instant::now();
        let mut a = Initial::new(true);
        a.start(&mut Ctx {
            st: &mut st,
            has: &has,
            out: &mut out,
            now,
        });
        let msgs = decode_all(&out);
        // Two offers, each a have and a suggest.
        assert_eq!(msgs.len(), 4, "{msgs:?}");
        let offered = a.pending().to_vec();
        assert_eq!(offered.len(), 2);
        assert_ne!(offered[0], offered[1]);
        assert_eq!(msgs[0], Message::Have(offered[0]));
        assert_eq!(msgs[1], Message::SuggestPiece(offered[0]));
        // A second peer gets other pieces.
        let mut b = Initial::new(false);
        let mut out_b = Vec::new();
        b.start(&mut Ctx {
            st: &mut st,
            has: &has,
            out: &mut out_b,
            now,
        });
        assert!(b.pending().iter().all(|p| !offered.contains(p)));
        assert_eq!(decode_all(&out_b).len(), 2, "no suggest without fast");
        // Piece spread: a new offer replaces it.
        out.clear();
        a.spread(
            &mut Ctx {
                st: &mut st,
                has: &has,
                out: &mut out,
                now,
            },
            offered[0],
        );
        assert_eq!(a.pending().len(), 2);
        assert!(!a.pending().contains(&offered[0]));
        assert!(a.allows(offered[0]), "still allowed once offered");
        a.withdraw(&mut st);
        assert!(a.pending().is_empty());
    }

    #[test]
    fn a_peer_that_took_its_offers_gets_a_fresh_one_at_once_when_nobody_wants_anything() {
        let mut st = test_state(16, true);
        let peers = [add_peer(&mut st, 1).0, add_peer(&mut st, 2).0];
        let has = Bitfield::new(16);
        let (mut out, now) = (Vec::new(), Instant::now());
        let mut a = Initial::new(false);
        let mut cx = Ctx {
            st: &mut st,
            has: &has,
            out: &mut out,
            now,
        };
        start_and_take_all(&mut a, &mut cx);
        // The other peer still fetches from us: wait for a spread.
        cx.st.set_interested(peers[1], true);
        a.tick(&mut cx, true);
        assert_eq!(a.pending().len(), 2);
        // Nobody does: our link is idle, so offer now.
        cx.st.set_interested(peers[1], false);
        a.tick(&mut cx, true);
        assert_eq!(a.pending().len(), 3);
    }

    #[test]
    fn a_peer_alone_gets_several_pieces_at_once() {
        let mut st = test_state(16, true);
        let has = Bitfield::new(16);
        let mut out = Vec::new();
        let now = Instant::now();
        let mut a = Initial::new(false);
        let mut cx = Ctx {
            st: &mut st,
            has: &has,
            out: &mut out,
            now,
        };
        start_and_take_all(&mut a, &mut cx);
        a.tick(&mut cx, true);
        assert_eq!(a.pending().len(), MAX_PENDING);
    }
}
