//! Smart ban: who sent the data of a piece that failed its hash check.
//!
//! Every block of a piece in progress remembers its sender. When a piece
//! fails:
//! - with one sender, that sender is the liar;
//! - with several, nobody can tell yet: each block's SHA-1 is kept with its
//!   sender, the piece is fetched again, and once a copy passes, whoever
//!   sent a block that differs from the good copy is the liar.
//!
//! Sans-IO: the torrent calls [`SmartBan::record`] for each block received
//! and [`SmartBan::verdict`] with the disk's verdict; it returns the peers
//! to ban and the torrent does the banning.

use std::collections::{HashMap, HashSet};

use crate::session::Ident;
use crate::wire::BLOCK;

/// Most pieces whose failed copy is remembered at once (a piece's record
/// is one digest and sender per 16 KiB block).
pub const MAX_FAILED: usize = 256;

/// Why a peer is banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guilt {
    /// It alone sent a piece that failed.
    SoleSender,
    /// A block it sent differs from the copy that passed.
    DifferingBlock,
}

impl Guilt {
    pub fn describe(self) -> &'static str {
        match self {
            Guilt::SoleSender => "sent a piece that failed the hash check",
            Guilt::DifferingBlock => "sent data that failed the hash check",
        }
    }
}

/// What the disk said of a piece, for [`SmartBan::verdict`].
#[derive(Debug, Default)]
pub struct Verdict {
    /// Peers to ban and why.
    pub ban: Vec<(Ident, Guilt)>,
    /// Distinct peers that sent blocks of a failed piece.
    pub senders: usize,
}

/// A block's sender and the SHA-1 of what it sent.
type BlockOrigin = (Option<Ident>, [u8; 20]);

#[derive(Debug, Default)]
pub struct SmartBan {
    /// Senders of each block of pieces in progress, by block index.
    from: HashMap<u32, Vec<Option<Ident>>>,
    /// Pieces that failed with blocks from several peers: each block's
    /// sender and digest, to compare with the good copy later.
    failed: HashMap<u32, Vec<BlockOrigin>>,
}

impl SmartBan {
    /// `who` sent the block at `offset` of `piece`, whose size is `size`.
    pub fn record(&mut self, piece: u32, offset: u32, size: u64, who: Ident) {
        let blocks = self
            .from
            .entry(piece)
            .or_insert_with(|| vec![None; size.div_ceil(u64::from(BLOCK)) as usize]);
        if let Some(slot) = blocks.get_mut((offset / BLOCK) as usize) {
            *slot = Some(who);
        }
    }

    /// Whether the disk should report per-block digests with this piece's
    /// verdict (it failed before with several senders).
    pub fn wants_digests(&self, piece: u32) -> bool {
        self.failed.contains_key(&piece)
    }

    /// The disk's verdict on `piece`, with per-block digests when it has
    /// them (always for a failed piece).
    pub fn verdict(&mut self, piece: u32, ok: bool, digests: Option<Vec<[u8; 20]>>) -> Verdict {
        let from = self.from.remove(&piece).unwrap_or_default();
        let mut v = Verdict::default();
        if ok {
            if let (Some(before), Some(good)) = (self.failed.remove(&piece), digests) {
                let mut seen = HashSet::new();
                for ((who, old), new) in before.iter().zip(&good) {
                    if let Some(who) = who.filter(|_| old != new) {
                        if seen.insert(who) {
                            v.ban.push((who, Guilt::DifferingBlock));
                        }
                    }
                }
            }
            return v;
        }
        let senders: HashSet<Ident> = from.iter().flatten().copied().collect();
        v.senders = senders.len();
        if senders.len() == 1 {
            v.ban
                .extend(senders.into_iter().map(|who| (who, Guilt::SoleSender)));
        } else if let Some(d) = digests {
            // Keep the first failed copy's record: the good copy is
            // compared against what each peer sent then.
            if self.failed.len() < MAX_FAILED || self.failed.contains_key(&piece) {
                let record = from
                    .into_iter()
                    .chain(std::iter::repeat(None))
                    .zip(d)
                    .collect();
                self.failed.entry(piece).or_insert(record);
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> Ident {
        Ident {
            peer_id: [n; 20],
            addr: ([10, 0, 0, n], 6881).into(),
        }
    }

    const PIECE: u64 = 4 * BLOCK as u64;

    fn digest(n: u8) -> [u8; 20] {
        [n; 20]
    }

    #[test]
    fn a_sole_sender_of_a_bad_piece_is_banned() {
        let mut s = SmartBan::default();
        for b in 0..4 {
            s.record(3, b * BLOCK, PIECE, peer(1));
        }
        let v = s.verdict(3, false, Some(vec![digest(0); 4]));
        assert_eq!(v.ban, [(peer(1), Guilt::SoleSender)]);
        assert_eq!(v.senders, 1);
        assert!(!s.wants_digests(3));
    }

    #[test]
    fn with_several_senders_the_one_whose_block_differs_is_banned() {
        let mut s = SmartBan::default();
        // First copy: blocks 0-1 from peer 1, 2-3 from peer 2 (the liar).
        for b in 0..4 {
            s.record(5, b * BLOCK, PIECE, peer(if b < 2 { 1 } else { 2 }));
        }
        let bad = vec![digest(10), digest(11), digest(99), digest(13)];
        let v = s.verdict(5, false, Some(bad));
        assert!(v.ban.is_empty(), "nobody can be blamed yet");
        assert_eq!(v.senders, 2);
        assert!(s.wants_digests(5));
        // Second copy, all from peer 3, passes: block 2 differs.
        for b in 0..4 {
            s.record(5, b * BLOCK, PIECE, peer(3));
        }
        let good = vec![digest(10), digest(11), digest(12), digest(13)];
        let v = s.verdict(5, true, Some(good));
        assert_eq!(v.ban, [(peer(2), Guilt::DifferingBlock)]);
        assert!(!s.wants_digests(5));
    }

    #[test]
    fn a_second_failure_keeps_the_first_record() {
        let mut s = SmartBan::default();
        s.record(1, 0, PIECE, peer(1));
        s.record(1, BLOCK, PIECE, peer(2));
        s.verdict(1, false, Some(vec![digest(7), digest(8)]));
        // The second copy fails too, from two other peers.
        s.record(1, 0, PIECE, peer(3));
        s.record(1, BLOCK, PIECE, peer(4));
        s.verdict(1, false, Some(vec![digest(5), digest(6)]));
        let v = s.verdict(1, true, Some(vec![digest(7), digest(9)]));
        assert_eq!(v.ban, [(peer(2), Guilt::DifferingBlock)]);
    }

    #[test]
    fn a_good_piece_bans_nobody_and_is_forgotten() {
        let mut s = SmartBan::default();
        s.record(2, 0, PIECE, peer(1));
        let v = s.verdict(2, true, None);
        assert!(v.ban.is_empty());
        assert!(s.from.is_empty());
        // Offsets past the piece are ignored, not a panic.
        s.record(2, 100 * BLOCK, PIECE, peer(1));
    }

    #[test]
    fn failed_records_are_bounded() {
        let mut s = SmartBan::default();
        for p in 0..(MAX_FAILED as u32 + 50) {
            s.record(p, 0, PIECE, peer(1));
            s.record(p, BLOCK, PIECE, peer(2));
            s.verdict(p, false, Some(vec![digest(1); 4]));
        }
        assert_eq!(s.failed.len(), MAX_FAILED);
    }
}
