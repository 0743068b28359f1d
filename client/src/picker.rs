//! Which blocks to request from which peer — a plain struct driven by
//! method calls (sans-IO), so every policy is unit-tested:
//!
//! - pieces already started come first (finish what is open, so verified
//!   pieces reach other peers sooner);
//! - otherwise rarest first: the piece the fewest connected peers have,
//!   ties broken at random so peers do not all chase the same piece;
//! - endgame: once every missing block is requested, outstanding blocks
//!   may be requested again from other peers; the first copy to arrive
//!   wins and the other requests are cancelled.
//!
//! Peers are named by a `PeerKey` the connection layer hands out.
//!
//! The cost of a pick follows the blocks it returns, not the piece count
//! (a 1 GiB torrent of 16 KiB pieces has 65 536 of them): pieces we lack
//! and have not started sit in one bucket per availability (`free`, with
//! each piece's slot kept, so moving a piece between buckets is O(1)); a
//! new piece is found by scanning the lowest buckets from a random slot;
//! started pieces with unrequested blocks are kept apart (`open`); and the
//! endgame test is two counters.

use std::collections::{BTreeSet, HashMap, HashSet};

use rand::Rng;

use crate::wire::{Bitfield, BlockRef, BLOCK};

pub type PeerKey = u32;

/// In endgame, how many peers may be asked for the same block.
pub const ENDGAME_COPIES: usize = 2;

/// `slot` of a piece in no `free` bucket.
const NOWHERE: u32 = u32::MAX;

#[derive(Debug, Default, Clone)]
struct Block {
    received: bool,
    /// Peers this block is requested from (more than one only in endgame).
    requested_by: Vec<PeerKey>,
}

#[derive(Debug, Clone)]
struct Partial {
    blocks: Vec<Block>,
    received: usize,
    /// Blocks neither received nor requested from anyone.
    unrequested: usize,
}

/// What a received block meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// Not requested from this peer, or already had: drop it (a peer that
    /// sends many of these breaks the protocol).
    Unexpected,
    /// One more block of an unfinished piece; `cancel` lists other peers
    /// that were asked for the same block (endgame) and should get a
    /// `cancel`.
    Block { cancel: Vec<PeerKey> },
    /// The piece's last block: hash it, then call [`Picker::verified`].
    PieceDone { cancel: Vec<PeerKey> },
}

#[derive(Debug, Clone)]
pub struct Picker {
    piece_length: u64,
    total_length: u64,
    have: Bitfield,
    /// How many connected peers have each piece.
    availability: Vec<u32>,
    /// Pieces we lack, not started and not being verified, by
    /// availability: `free[a]` holds those `a` peers have, in no order.
    free: Vec<Vec<u32>>,
    /// Each piece's index in its `free` bucket, or [`NOWHERE`].
    slot: Vec<u32>,
    /// Pieces in all `free` buckets.
    free_count: usize,
    partial: HashMap<u32, Partial>,
    /// Started pieces with an unrequested block, lowest index first.
    open: BTreeSet<u32>,
    /// Unrequested blocks over all started pieces.
    unrequested: usize,
    /// All blocks received, hash not yet known.
    verifying: HashSet<u32>,
}

impl Picker {
    /// A picker for a torrent whose verified pieces are `have`.
    pub fn new(piece_length: u64, total_length: u64, have: Bitfield) -> Picker {
        let n = have.len();
        let lacking: Vec<u32> = (0..n as u32).filter(|&i| !have.get(i as usize)).collect();
        let mut slot = vec![NOWHERE; n];
        for (k, &piece) in lacking.iter().enumerate() {
            slot[piece as usize] = k as u32;
        }
        Picker {
            piece_length,
            total_length,
            availability: vec![0; n],
            free_count: lacking.len(),
            free: vec![lacking],
            slot,
            have,
            partial: HashMap::new(),
            open: BTreeSet::new(),
            unrequested: 0,
            verifying: HashSet::new(),
        }
    }

    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    pub fn is_complete(&self) -> bool {
        self.have.is_complete()
    }

    fn piece_size(&self, piece: u32) -> u64 {
        let start = u64::from(piece) * self.piece_length;
        self.piece_length
            .min(self.total_length.saturating_sub(start))
    }

    fn block_count(&self, piece: u32) -> usize {
        self.piece_size(piece).div_ceil(u64::from(BLOCK)) as usize
    }

    fn block_ref(&self, piece: u32, block: usize) -> BlockRef {
        let offset = block as u64 * u64::from(BLOCK);
        let length = (self.piece_size(piece) - offset).min(u64::from(BLOCK));
        BlockRef {
            index: piece,
            offset: offset as u32,
            length: length as u32,
        }
    }

    /// How many connected peers have `piece`.
    pub fn availability(&self, piece: u32) -> u32 {
        self.availability.get(piece as usize).copied().unwrap_or(0)
    }

    /// Puts a piece we lack and have not started into its bucket.
    fn free_insert(&mut self, piece: u32) {
        let i = piece as usize;
        if self.slot[i] != NOWHERE {
            return;
        }
        let a = self.availability[i] as usize;
        if self.free.len() <= a {
            self.free.resize_with(a + 1, Vec::new);
        }
        self.slot[i] = self.free[a].len() as u32;
        self.free[a].push(piece);
        self.free_count += 1;
    }

    /// Takes a piece out of its bucket (started, had or verifying now).
    fn free_remove(&mut self, piece: u32) {
        let i = piece as usize;
        let at = self.slot[i];
        if at == NOWHERE {
            return;
        }
        let bucket = &mut self.free[self.availability[i] as usize];
        bucket.swap_remove(at as usize);
        if let Some(&moved) = bucket.get(at as usize) {
            self.slot[moved as usize] = at;
        }
        self.slot[i] = NOWHERE;
        self.free_count -= 1;
    }

    /// One peer more (`up`) or fewer has `piece`.
    fn change_availability(&mut self, piece: usize, up: bool) {
        let Some(&a) = self.availability.get(piece) else {
            return;
        };
        let new = if up { a + 1 } else { a.saturating_sub(1) };
        if new == a {
            return;
        }
        let listed = self.slot[piece] != NOWHERE;
        if listed {
            self.free_remove(piece as u32);
        }
        self.availability[piece] = new;
        if listed {
            self.free_insert(piece as u32);
        }
    }

    /// A peer connected with these pieces.
    pub fn add_peer(&mut self, has: &Bitfield) {
        for i in 0..self.availability.len() {
            if has.get(i) {
                self.change_availability(i, true);
            }
        }
    }

    /// A peer announced a piece with `have`.
    pub fn peer_has(&mut self, piece: u32) {
        self.change_availability(piece as usize, true);
    }

    /// A peer went away: forget its pieces and free its requests.
    pub fn remove_peer(&mut self, key: PeerKey, has: &Bitfield) {
        for i in 0..self.availability.len() {
            if has.get(i) {
                self.change_availability(i, false);
            }
        }
        let pieces: Vec<u32> = self.partial.keys().copied().collect();
        for piece in pieces {
            let count = self.partial[&piece].blocks.len();
            for b in 0..count {
                self.unask(key, piece, b);
            }
        }
    }

    /// `key` will not deliver block `b` of `piece`: if nobody else is
    /// asked for it, it is unrequested again.
    fn unask(&mut self, key: PeerKey, piece: u32, b: usize) {
        let Some(p) = self.partial.get_mut(&piece) else {
            return;
        };
        let Some(block) = p.blocks.get_mut(b) else {
            return;
        };
        let before = block.requested_by.len();
        block.requested_by.retain(|&k| k != key);
        if before > 0 && block.requested_by.is_empty() && !block.received {
            p.unrequested += 1;
            self.unrequested += 1;
            self.open.insert(piece);
        }
    }

    /// A request to `key` will not be answered (choked, rejected, timed
    /// out): the block is free for others again.
    pub fn release(&mut self, key: PeerKey, block: BlockRef) {
        self.unask(key, block.index, (block.offset / BLOCK) as usize);
    }

    /// Does `peer` have a piece we still need?
    pub fn is_interesting(&self, peer: &Bitfield) -> bool {
        (0..self.have.len()).any(|i| peer.get(i) && !self.have.get(i))
    }

    /// Up to `max` blocks to request from `key`, which has `peer`.
    pub fn pick<R: Rng>(
        &mut self,
        key: PeerKey,
        peer: &Bitfield,
        max: usize,
        rng: &mut R,
    ) -> Vec<BlockRef> {
        self.pick_where(key, |i| peer.get(i), max, rng)
    }

    /// [`Picker::pick`] for a peer that has the pieces `has` says it has.
    pub fn pick_where<R: Rng>(
        &mut self,
        key: PeerKey,
        has: impl Fn(usize) -> bool,
        max: usize,
        rng: &mut R,
    ) -> Vec<BlockRef> {
        // 1. Free blocks of started pieces the peer has, lowest first.
        let mut out = self.pick_started(key, &has, max);
        if out.len() < max {
            out.extend(self.pick_new(key, has, max - out.len(), rng));
        }
        out
    }

    /// [`Picker::pick_where`] without its first step (started pieces): new
    /// pieces, rarest first, then endgame doubles.
    pub fn pick_new<R: Rng>(
        &mut self,
        key: PeerKey,
        has: impl Fn(usize) -> bool,
        max: usize,
        rng: &mut R,
    ) -> Vec<BlockRef> {
        let mut out = Vec::new();
        // 2. New pieces, rarest first, random among equals: as many as
        // the request needs.
        for piece in self.rarest_new(&has, max, rng) {
            self.start(piece);
            self.take_free(key, piece, max, &mut out);
            if out.len() >= max {
                break;
            }
        }
        // 3. Endgame: nothing left unrequested, so double up on blocks
        // others have not delivered yet.
        if out.len() < max && self.all_requested() {
            let mut pieces: Vec<u32> = self.partial.keys().copied().collect();
            pieces.sort_unstable();
            for piece in pieces.into_iter().filter(|&i| has(i as usize)) {
                let count = self.partial[&piece].blocks.len();
                for b in 0..count {
                    if out.len() >= max {
                        return out;
                    }
                    let Some(block) = self.partial.get_mut(&piece).map(|p| &mut p.blocks[b]) else {
                        continue;
                    };
                    // At most two peers per block: more only multiplies
                    // the bytes sent twice (and cancelled too late).
                    if !block.received
                        && block.requested_by.len() < ENDGAME_COPIES
                        && !block.requested_by.contains(&key)
                    {
                        block.requested_by.push(key);
                        out.push(self.block_ref(piece, b));
                    }
                }
            }
        }
        out
    }

    /// Up to `max` free blocks of pieces already started that the peer
    /// has (`has`), lowest index first: a started piece is finished before
    /// another is begun, whoever suggested the other (a piece left short
    /// of a few blocks is one nobody can share, and one its only source
    /// may count as sent).
    pub fn pick_started(
        &mut self,
        key: PeerKey,
        has: impl Fn(usize) -> bool,
        max: usize,
    ) -> Vec<BlockRef> {
        let mut out = Vec::new();
        let mut from = 0u32;
        while out.len() < max {
            let Some(&piece) = self.open.range(from..).next() else {
                break;
            };
            if has(piece as usize) {
                self.take_free(key, piece, max, &mut out);
            }
            let Some(next) = piece.checked_add(1) else {
                break;
            };
            from = next;
        }
        out
    }

    /// Up to `max` blocks of `piece` to request from `key`, starting the
    /// piece if it is not started yet: for a piece the peer suggested
    /// (`suggest_piece`), which it knows is the one it should send. None
    /// when we have it or it is being verified.
    pub fn pick_piece(&mut self, key: PeerKey, piece: u32, max: usize) -> Vec<BlockRef> {
        let mut out = Vec::new();
        if (piece as usize) >= self.have.len()
            || self.have.get(piece as usize)
            || self.verifying.contains(&piece)
        {
            return out;
        }
        if !self.partial.contains_key(&piece) {
            self.start(piece);
        }
        self.take_free(key, piece, max, &mut out);
        out
    }

    /// A piece we lack, not started and not being verified, is started.
    fn start(&mut self, piece: u32) {
        self.free_remove(piece);
        let blocks = self.block_count(piece);
        self.partial.insert(
            piece,
            Partial {
                blocks: vec![Block::default(); blocks],
                received: 0,
                unrequested: blocks,
            },
        );
        self.unrequested += blocks;
        self.open.insert(piece);
    }

    fn take_free(&mut self, key: PeerKey, piece: u32, max: usize, out: &mut Vec<BlockRef>) {
        let Some(p) = self.partial.get_mut(&piece) else {
            return;
        };
        let mut picked = Vec::new();
        for (b, block) in p.blocks.iter_mut().enumerate() {
            if out.len() + picked.len() >= max || p.unrequested == 0 {
                break;
            }
            if !block.received && block.requested_by.is_empty() {
                block.requested_by.push(key);
                p.unrequested -= 1;
                picked.push(b);
            }
        }
        self.unrequested -= picked.len();
        if p.unrequested == 0 {
            self.open.remove(&piece);
        }
        for b in picked {
            out.push(self.block_ref(piece, b));
        }
    }

    /// Enough of the rarest pieces the peer has that we neither have nor
    /// have started to fill `blocks` requests, rarest first; ties broken
    /// at random (each bucket is scanned from a random slot). Pieces no
    /// connected peer has come last: the caller's `has` may name pieces
    /// of a peer that is not counted in the availability.
    fn rarest_new<R: Rng>(
        &self,
        has: impl Fn(usize) -> bool,
        blocks: usize,
        rng: &mut R,
    ) -> Vec<u32> {
        let per_piece = self.piece_length.div_ceil(u64::from(BLOCK)).max(1) as usize;
        let want = blocks.div_ceil(per_piece).max(1);
        let mut out = Vec::new();
        let buckets = (1..self.free.len()).chain(std::iter::once(0));
        for a in buckets {
            let bucket = &self.free[a];
            let n = bucket.len();
            if n == 0 {
                continue;
            }
            let start = rng.random_range(0..n);
            let (tail, head) = bucket.split_at(start);
            for &piece in head.iter().chain(tail) {
                if has(piece as usize) {
                    out.push(piece);
                    if out.len() == want {
                        return out;
                    }
                }
            }
        }
        out
    }

    /// True when every block we lack is either received or requested.
    fn all_requested(&self) -> bool {
        self.free_count == 0 && self.unrequested == 0
    }

    /// True when every block we lack is received (the pieces left wait
    /// for their hash, or nothing is left).
    pub fn all_received(&self) -> bool {
        self.free_count == 0 && self.partial.is_empty()
    }

    /// `key` sent `block`.
    pub fn received(&mut self, key: PeerKey, block: BlockRef) -> Received {
        let b = (block.offset / BLOCK) as usize;
        // Only started pieces (valid indices) and their blocks qualify.
        let in_range = self
            .partial
            .get(&block.index)
            .is_some_and(|p| b < p.blocks.len());
        if !in_range {
            return Received::Unexpected;
        }
        let expected = self.block_ref(block.index, b);
        let Some(p) = self.partial.get_mut(&block.index) else {
            return Received::Unexpected;
        };
        let Some(slot) = p.blocks.get_mut(b) else {
            return Received::Unexpected;
        };
        if block != expected || slot.received || !slot.requested_by.contains(&key) {
            return Received::Unexpected;
        }
        slot.received = true;
        let cancel: Vec<PeerKey> = std::mem::take(&mut slot.requested_by)
            .into_iter()
            .filter(|&k| k != key)
            .collect();
        p.received += 1;
        if p.received == p.blocks.len() {
            self.partial.remove(&block.index);
            self.open.remove(&block.index);
            self.verifying.insert(block.index);
            Received::PieceDone { cancel }
        } else {
            Received::Block { cancel }
        }
    }

    /// The hash of a finished piece: kept if right, fetched again if not.
    pub fn verified(&mut self, piece: u32, ok: bool) {
        if piece as usize >= self.have.len() {
            return;
        }
        self.verifying.remove(&piece);
        if ok {
            self.have.set(piece as usize);
            self.free_remove(piece);
        } else if !self.have.get(piece as usize) && !self.partial.contains_key(&piece) {
            self.free_insert(piece);
        }
    }

    /// Checks the bookkeeping against a full recount (tests).
    #[cfg(test)]
    fn check(&self) {
        let mut listed = 0;
        for (a, bucket) in self.free.iter().enumerate() {
            for (k, &piece) in bucket.iter().enumerate() {
                let i = piece as usize;
                assert_eq!(self.slot[i], k as u32, "slot of {piece}");
                assert_eq!(self.availability[i] as usize, a, "bucket of {piece}");
                assert!(!self.have.get(i) && !self.partial.contains_key(&piece));
                assert!(!self.verifying.contains(&piece));
                listed += 1;
            }
        }
        assert_eq!(listed, self.free_count);
        let missing = (0..self.have.len())
            .filter(|&i| !self.have.get(i))
            .filter(|&i| !self.partial.contains_key(&(i as u32)))
            .filter(|&i| !self.verifying.contains(&(i as u32)))
            .count();
        assert_eq!(missing, self.free_count, "every free piece is listed");
        let mut unrequested = 0;
        for (&piece, p) in &self.partial {
            let n = p
                .blocks
                .iter()
                .filter(|b| !b.received && b.requested_by.is_empty())
                .count();
            assert_eq!(n, p.unrequested, "unrequested blocks of {piece}");
            assert_eq!(n > 0, self.open.contains(&piece), "open: {piece}");
            unrequested += n;
        }
        assert_eq!(unrequested, self.unrequested);
        assert!(self.open.iter().all(|p| self.partial.contains_key(p)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn full(n: usize) -> Bitfield {
        let mut b = Bitfield::new(n);
        (0..n).for_each(|i| {
            b.set(i);
        });
        b
    }

    fn only(n: usize, pieces: &[usize]) -> Bitfield {
        let mut b = Bitfield::new(n);
        for &i in pieces {
            b.set(i);
        }
        b
    }

    #[test]
    fn a_suggested_piece_is_started_and_shared_like_any_other() {
        let mut p = Picker::new(40 * 1024, 90 * 1024, Bitfield::new(3));
        let mut rng = SmallRng::seed_from_u64(9);
        p.add_peer(&full(3));
        // Two of piece 1's three blocks from peer 1...
        let got = p.pick_piece(1, 1, 2);
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|b| b.index == 1));
        p.check();
        // ...the third goes to the next asker first (started pieces first).
        assert_eq!(p.pick(2, &full(3), 1, &mut rng)[0].index, 1);
        p.check();
        // Out of range, or a piece we have: nothing.
        assert!(p.pick_piece(1, 7, 5).is_empty());
        let mut have = Bitfield::new(3);
        have.set(0);
        let mut q = Picker::new(40 * 1024, 90 * 1024, have);
        assert!(q.pick_piece(1, 0, 5).is_empty());
    }

    #[test]
    fn blocks_cover_pieces_and_the_short_last_one() {
        // 3 pieces of 40 KiB, the last 10 KiB: blocks 16+16+8 KiB, then 10.
        let mut p = Picker::new(40 * 1024, 90 * 1024, Bitfield::new(3));
        let mut rng = SmallRng::seed_from_u64(1);
        p.add_peer(&full(3));
        let got = p.pick(1, &full(3), 100, &mut rng);
        assert_eq!(got.len(), 3 + 3 + 1);
        let total: u32 = got.iter().map(|b| b.length).sum();
        assert_eq!(total, 90 * 1024);
        assert!(got.contains(&BlockRef {
            index: 2,
            offset: 0,
            length: 10 * 1024
        }));
        assert!(got.contains(&BlockRef {
            index: 0,
            offset: 32768,
            length: 8 * 1024
        }));
    }

    #[test]
    fn rarest_first_then_started_first() {
        let mut p = Picker::new(16384, 16384 * 4, Bitfield::new(4));
        let mut rng = SmallRng::seed_from_u64(2);
        p.add_peer(&full(4));
        p.add_peer(&only(4, &[0, 1, 3]));
        p.add_peer(&only(4, &[0, 1]));
        // Availability: 0→3, 1→3, 2→1, 3→2. The rarest is 2, then 3.
        assert_eq!(p.pick(1, &full(4), 1, &mut rng)[0].index, 2);
        assert_eq!(p.pick(1, &full(4), 1, &mut rng)[0].index, 3);
        // A peer without 2 and 3 gets one of the common ones.
        let next = p.pick(2, &only(4, &[0, 1]), 1, &mut rng)[0].index;
        assert!(next == 0 || next == 1);
    }

    #[test]
    fn ties_are_broken_at_random() {
        let mut firsts = std::collections::HashSet::new();
        for seed in 0..40 {
            let mut p = Picker::new(16384, 16384 * 8, Bitfield::new(8));
            p.add_peer(&full(8));
            let mut rng = SmallRng::seed_from_u64(seed);
            firsts.insert(p.pick(1, &full(8), 1, &mut rng)[0].index);
        }
        assert!(firsts.len() > 4, "{firsts:?}");
    }

    #[test]
    fn a_piece_completes_verifies_and_is_refetched_when_bad() {
        let mut p = Picker::new(32768, 32768, Bitfield::new(1));
        let mut rng = SmallRng::seed_from_u64(3);
        p.add_peer(&full(1));
        let blocks = p.pick(7, &full(1), 10, &mut rng);
        assert_eq!(blocks.len(), 2);
        assert_eq!(
            p.received(8, blocks[0]),
            Received::Unexpected,
            "not asked of peer 8"
        );
        assert_eq!(p.received(7, blocks[0]), Received::Block { cancel: vec![] });
        assert_eq!(p.received(7, blocks[0]), Received::Unexpected, "duplicate");
        assert_eq!(
            p.received(7, blocks[1]),
            Received::PieceDone { cancel: vec![] }
        );
        assert!(
            p.pick(7, &full(1), 10, &mut rng).is_empty(),
            "being verified"
        );
        p.verified(0, false);
        assert_eq!(
            p.pick(9, &full(1), 10, &mut rng).len(),
            2,
            "a bad piece is fetched again"
        );
        for b in [blocks[0], blocks[1]] {
            p.received(9, b);
        }
        p.verified(0, true);
        assert!(p.is_complete());
        assert!(!p.is_interesting(&full(1)));
    }

    #[test]
    fn released_and_departed_requests_go_to_others() {
        let mut p = Picker::new(32768, 32768, Bitfield::new(1));
        let mut rng = SmallRng::seed_from_u64(4);
        p.add_peer(&full(1));
        p.add_peer(&full(1));
        let a = p.pick(1, &full(1), 1, &mut rng);
        let b = p.pick(2, &full(1), 1, &mut rng);
        assert_ne!(a, b);
        p.release(1, a[0]);
        assert_eq!(p.pick(3, &full(1), 1, &mut rng), a);
        p.remove_peer(2, &full(1));
        assert_eq!(p.pick(3, &full(1), 1, &mut rng), b);
    }

    #[test]
    fn endgame_doubles_up_and_cancels_the_losers() {
        let mut p = Picker::new(32768, 32768, Bitfield::new(1));
        let mut rng = SmallRng::seed_from_u64(5);
        p.add_peer(&full(1));
        p.add_peer(&full(1));
        let first = p.pick(1, &full(1), 10, &mut rng);
        assert_eq!(first.len(), 2);
        // Everything is requested: peer 2 may ask for the same blocks.
        let second = p.pick(2, &full(1), 10, &mut rng);
        assert_eq!(second, first);
        // But never twice from the same peer, nor from a third.
        assert!(p.pick(2, &full(1), 10, &mut rng).is_empty());
        assert!(p.pick(3, &full(1), 10, &mut rng).is_empty());
        assert_eq!(p.received(2, first[0]), Received::Block { cancel: vec![1] });
        assert_eq!(p.received(1, first[0]), Received::Unexpected);
        assert_eq!(
            p.received(1, first[1]),
            Received::PieceDone { cancel: vec![2] }
        );
    }

    #[test]
    fn foreign_blocks_are_unexpected() {
        let mut p = Picker::new(32768, 65536, Bitfield::new(2));
        let mut rng = SmallRng::seed_from_u64(6);
        p.add_peer(&full(2));
        let got = p.pick(1, &full(2), 1, &mut rng);
        let mut odd = got[0];
        odd.length = 100;
        assert_eq!(p.received(1, odd), Received::Unexpected);
        odd = got[0];
        odd.offset += 1;
        assert_eq!(p.received(1, odd), Received::Unexpected);
        let far = BlockRef {
            index: 99,
            offset: 0,
            length: 16384,
        };
        assert_eq!(p.received(1, far), Received::Unexpected);
    }

    /// 65 536 one-block pieces (1 GiB of 16 KiB pieces): a seed and a
    /// peer with every even piece. The seed's requests take the odd
    /// (rarer) pieces first, no block is asked twice before everything
    /// is requested, and the download completes with the bookkeeping
    /// consistent throughout.
    #[test]
    fn many_one_block_pieces_go_rarest_first_and_complete() {
        const N: usize = 65_536;
        let mut p = Picker::new(16384, 16384 * N as u64, Bitfield::new(N));
        let mut rng = SmallRng::seed_from_u64(7);
        let seed = full(N);
        let evens = only(N, &(0..N).step_by(2).collect::<Vec<_>>());
        p.add_peer(&seed);
        p.add_peer(&evens);
        p.check();
        let mut asked = vec![0u8; N];
        let mut order = Vec::new();
        let mut rounds = 0;
        while !p.is_complete() {
            rounds += 1;
            assert!(rounds < 1000, "stuck");
            let got = p.pick(1, &seed, 500, &mut rng);
            for b in &got {
                assert_eq!((b.offset, b.length), (0, 16384));
                asked[b.index as usize] += 1;
                order.push(b.index);
            }
            if order.len() < N {
                assert!(
                    got.iter().all(|b| asked[b.index as usize] == 1),
                    "asked twice"
                );
            }
            for b in got {
                assert_eq!(p.received(1, b), Received::PieceDone { cancel: vec![] });
                p.verified(b.index, true);
            }
            if rounds % 16 == 0 {
                p.check();
            }
        }
        p.check();
        assert_eq!(order.len(), N, "every piece asked once");
        assert!(
            order[..N / 2].iter().all(|&i| i % 2 == 1),
            "odd (rarer) first"
        );
        // Random among equals: not simply in index order.
        assert!(order[..N / 2].windows(2).any(|w| w[0] > w[1]));
    }

    /// A peer with three of 65 536 pieces is asked for exactly those; one
    /// that announces a piece later makes it less rare, one that leaves
    /// makes its pieces rarer again.
    #[test]
    fn availability_moves_pieces_between_buckets() {
        const N: usize = 65_536;
        let mut p = Picker::new(16384, 16384 * N as u64, Bitfield::new(N));
        let mut rng = SmallRng::seed_from_u64(8);
        let sparse = only(N, &[7, 40_000, N - 1]);
        p.add_peer(&full(N));
        p.add_peer(&sparse);
        let mut got: Vec<u32> = p
            .pick(2, &sparse, 10, &mut rng)
            .iter()
            .map(|b| b.index)
            .collect();
        got.sort_unstable();
        assert_eq!(got, [7, 40_000, N as u32 - 1]);
        p.check();
        // Piece 9 is the only one with availability 1 once everyone else
        // has the rest.
        let mut most = Bitfield::new(N);
        (0..N).filter(|&i| i != 9).for_each(|i| {
            most.set(i);
        });
        p.add_peer(&most);
        p.check();
        assert_eq!(p.pick(1, &full(N), 1, &mut rng)[0].index, 9);
        // 11 gains a holder, then loses the peer: back with the others.
        p.peer_has(11);
        assert_eq!(p.availability(11), 3);
        p.remove_peer(3, &most);
        assert_eq!(p.availability(11), 2);
        p.check();
    }

    /// `pick_where` asks only for what the predicate allows (the
    /// connection's own exclusions, such as pieces the peer rejected).
    #[test]
    fn pick_where_respects_the_predicate() {
        let mut p = Picker::new(16384, 16384 * 100, Bitfield::new(100));
        let mut rng = SmallRng::seed_from_u64(9);
        p.add_peer(&full(100));
        let got = p.pick_where(1, |i| i % 10 == 3, 100, &mut rng);
        assert_eq!(got.len(), 10);
        assert!(got.iter().all(|b| b.index % 10 == 3));
        p.check();
    }

    proptest::proptest! {
        /// Peers with random piece sets, answering in random order, some
        /// leaving: the download always completes, with every block
        /// delivered and nothing out of range.
        #[test]
        fn a_simulated_swarm_always_completes(
            seed in 0u64..1000,
            pieces in 1usize..20,
            last in 1u64..40_000,
            peers in 1usize..5,
        ) {
            use rand::seq::SliceRandom;
            let piece_length = 32_768u64;
            let total = (pieces as u64 - 1) * piece_length + last.min(piece_length);
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut p = Picker::new(piece_length, total, Bitfield::new(pieces));
            // Peer 0 is a seed, the others have random pieces.
            let sets: Vec<Bitfield> = (0..peers)
                .map(|k| if k == 0 { full(pieces) } else {
                    let mut b = Bitfield::new(pieces);
                    for i in 0..pieces { if rng.random_bool(0.5) { b.set(i); } }
                    b
                })
                .collect();
            sets.iter().for_each(|s| p.add_peer(s));
            let mut outstanding: Vec<(PeerKey, BlockRef)> = Vec::new();
            let mut steps = 0;
            while !p.is_complete() {
                steps += 1;
                proptest::prop_assert!(steps < 10_000, "stuck");
                for (k, set) in sets.iter().enumerate() {
                    for b in p.pick(k as PeerKey, set, 3, &mut rng) {
                        proptest::prop_assert!((b.index as usize) < pieces);
                        proptest::prop_assert!(set.get(b.index as usize));
                        outstanding.push((k as PeerKey, b));
                    }
                }
                outstanding.shuffle(&mut rng);
                // Deliver about half; sometimes a peer "chokes" instead.
                let keep = outstanding.len() / 2;
                for (k, b) in outstanding.split_off(keep) {
                    if rng.random_bool(0.1) {
                        p.release(k, b);
                        continue;
                    }
                    if let Received::PieceDone { .. } = p.received(k, b) {
                        p.verified(b.index, true);
                    }
                }
                p.check();
            }
        }
    }
}
