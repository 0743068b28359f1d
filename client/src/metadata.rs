//! ut_metadata (BEP 9): a torrent's info dictionary, fetched from peers
//! in 16 KiB pieces (for a magnet link) and served to them.
//!
//! Sans-IO. [`MetaMsg`] is the codec of the extension's messages;
//! [`serve`] answers a request from the info dictionary we have; [`Fetch`]
//! is one torrent's fetch — one buffer for the whole, whichever peers the
//! pieces come from, with time passed in by the caller:
//!
//! - each peer's `metadata_size` is checked against a cap before anything
//!   is allocated; the buffer is made once, for the size being fetched;
//! - several peers are asked at once ([`DEPTH`] requests each); a piece
//!   rejected or unanswered for [`REQUEST_TIMEOUT`] is asked of another;
//! - peers that announce another size are set aside, not trusted and not
//!   fatal: when the size being fetched fails (its peers leave, give
//!   nothing for [`STALL`], or their whole fails the hash) the size most
//!   peers announce is fetched instead — a peer lying about the size can
//!   delay the fetch, never stop it;
//! - a whole that fails the info hash is blamed on its sender when one
//!   peer sent it all; when several did, each of them is asked for the
//!   whole alone in turn (peers that sent none of it first), and the one
//!   whose whole fails is dropped.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};
use torrent_format::bencode::{self, Value};
use torrent_format::InfoHash;

use crate::extension::ExtHandshake;

/// Size of a metadata piece (every one but the last).
pub const PIECE: usize = 16 * 1024;
/// Largest info dictionary fetched unless configured otherwise. The
/// largest genuine ones are about 4 MB.
pub const DEFAULT_MAX_SIZE: usize = 16 << 20;
/// Requests outstanding per peer. libtorrent answers a ut_metadata request
/// at once only while its send buffer holds less than 160 KiB (ten
/// pieces); later ones wait for its next one-second tick. Eight keeps
/// every request of ours answered at once.
pub const DEPTH: usize = 8;
/// Requests a new peer may have outstanding before it delivered any.
pub const START_DEPTH: usize = 2;
/// A piece asked of one peer this long ago may be asked of a second, to
/// finish sooner (sooner than that, the second would only race the first).
pub const DUPLICATE_AFTER: Duration = Duration::from_secs(1);
/// How long, from the first peer's hello, the pieces are shared out among
/// the peers still connecting (see [`Fetch::set_pending`]).
pub const SPREAD_WAIT: Duration = Duration::from_millis(300);
/// A piece not delivered this long after it was asked for is asked of
/// another peer too.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// When no piece of the size being fetched arrives for this long and
/// other peers announce another size, that size is tried.
pub const STALL: Duration = Duration::from_secs(20);
/// Name of the extension in BEP 10's `m`.
pub const NAME: &str = "ut_metadata";

/// How many pieces metadata of `size` bytes has.
pub fn piece_count(size: usize) -> usize {
    size.div_ceil(PIECE)
}

/// Length of piece `piece` of metadata of `size` bytes.
fn piece_len(size: usize, piece: usize) -> usize {
    (size - piece * PIECE).min(PIECE)
}

/// A ut_metadata message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaMsg<'a> {
    Request(u32),
    Data {
        piece: u32,
        /// `total_size` as the sender gives it.
        total_size: Option<u64>,
        data: &'a [u8],
    },
    Reject(u32),
    /// A `msg_type` BEP 9 does not define: ignored, as it asks.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    // The cause is in the message, so it is not also the `source()`.
    #[error("ut_metadata message does not start with bencode: {0}")]
    Bencode(bencode::DecodeError),
    #[error("ut_metadata message is not a dictionary")]
    NotADict,
    #[error("ut_metadata message without a valid msg_type and piece")]
    Fields,
}

impl<'a> MetaMsg<'a> {
    /// Reads the payload of an extended message (after its id).
    pub fn decode(payload: &'a [u8]) -> Result<MetaMsg<'a>, MetaError> {
        let (v, used) = bencode::decode_prefix(payload).map_err(MetaError::Bencode)?;
        let Value::Dict(d) = v else {
            return Err(MetaError::NotADict);
        };
        let int = |k: &str| match d.get(k.as_bytes()) {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        };
        let Some(kind) = int("msg_type") else {
            return Err(MetaError::Fields);
        };
        if !(0..=2).contains(&kind) {
            return Ok(MetaMsg::Unknown);
        }
        let piece = int("piece")
            .and_then(|p| u32::try_from(p).ok())
            .ok_or(MetaError::Fields)?;
        Ok(match kind {
            0 => MetaMsg::Request(piece),
            1 => MetaMsg::Data {
                piece,
                total_size: int("total_size").and_then(|n| u64::try_from(n).ok()),
                data: &payload[used..],
            },
            _ => MetaMsg::Reject(piece),
        })
    }

    /// The payload of an extended message (to go after the peer's id).
    pub fn encode(&self) -> Vec<u8> {
        let (kind, piece) = match self {
            MetaMsg::Request(p) => (0, *p),
            MetaMsg::Data { piece, .. } => (1, *piece),
            MetaMsg::Reject(p) => (2, *p),
            MetaMsg::Unknown => (3, 0),
        };
        let mut out = format!("d8:msg_typei{kind}e5:piecei{piece}e").into_bytes();
        if let MetaMsg::Data {
            total_size, data, ..
        } = self
        {
            if let Some(n) = total_size {
                out.extend_from_slice(format!("10:total_sizei{n}e").as_bytes());
            }
            out.push(b'e');
            out.extend_from_slice(data);
        } else {
            out.push(b'e');
        }
        out
    }
}

/// The answer to a request for `piece` of the info dictionary `raw`.
pub fn serve(raw: &[u8], piece: u32) -> MetaMsg<'_> {
    let i = piece as usize;
    if i >= piece_count(raw.len()) {
        return MetaMsg::Reject(piece);
    }
    let start = i * PIECE;
    MetaMsg::Data {
        piece,
        total_size: Some(raw.len() as u64),
        data: &raw[start..start + piece_len(raw.len(), i)],
    }
}

/// Identifies a peer within one fetch (the caller's choice).
pub type PeerKey = u64;

/// Why a peer is of no use for the metadata (the caller stops asking it;
/// most of these are worth a disconnect).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unfit {
    #[error("it has no metadata to give (no ut_metadata, or no metadata_size)")]
    NoMetadata,
    #[error("it says the metadata is {0} bytes, over the limit of {1}")]
    TooBig(u64, usize),
    #[error("it sent piece {0} of the metadata, which it was not asked for")]
    Unrequested(u32),
    #[error("its piece {piece} of the metadata is {got} bytes, not {want}")]
    WrongLength { piece: u32, got: usize, want: usize },
    #[error("it said the metadata is {said} bytes, then {now}")]
    SizeChanged { said: u64, now: u64 },
    #[error("the metadata it sent does not match the info hash")]
    BadHash,
    #[error("{0}")]
    Bad(#[from] MetaError),
}

/// What a message did to the fetch.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to report (ask [`Fetch::requests`] for more work).
    More,
    /// The whole arrived and matches the info hash.
    Done(Vec<u8>),
    /// The whole arrived and does not match; it is being fetched again.
    HashFailed,
}

#[derive(Debug, Default, Clone)]
struct Slot {
    got: Option<PeerKey>,
    /// Who was asked for it this round, and when.
    asked: Vec<(PeerKey, Instant)>,
}

#[derive(Debug)]
struct MetaPeer {
    /// The size it announced.
    size: usize,
    /// Pieces asked of it and not answered, with when.
    outstanding: Vec<(u32, Instant)>,
    /// Rejections in a row: it is asked again after a back-off.
    rejects: u32,
    not_before: Option<Instant>,
    unfit: Option<Unfit>,
    /// Pieces it delivered: its request depth grows with them (from
    /// [`START_DEPTH`] to [`DEPTH`]), so a peer that answers first does not
    /// take every piece before the others have said hello.
    delivered: usize,
    /// Pieces it was asked for, in all.
    asked: usize,
}

/// How far a fetch has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    /// The size being fetched (None: no peer has said yet).
    pub size: Option<usize>,
    pub pieces: usize,
    pub got: usize,
    /// Peers that can be asked for it.
    pub peers: usize,
}

/// One torrent's metadata being fetched.
pub struct Fetch {
    info_hash: InfoHash,
    max_size: usize,
    size: Option<usize>,
    buf: Vec<u8>,
    slots: Vec<Slot>,
    peers: HashMap<PeerKey, MetaPeer>,
    /// Contributed to a whole that failed the hash: asked alone, last.
    suspects: HashSet<PeerKey>,
    /// After a failure with several senders, the one peer being asked.
    solo: Option<PeerKey>,
    /// Asked alone already this size.
    tried_solo: HashSet<PeerKey>,
    last_progress: Instant,
    done: bool,
    /// Who sent the pieces of the whole that matched.
    senders: HashMap<PeerKey, usize>,
    /// Connections still on their way to a hello (the caller's count).
    pending: usize,
    /// Until then, while others are still connecting, a peer is asked for
    /// no more than its share of the pieces: on a fast link the first to
    /// answer would otherwise take them all before the others said hello.
    spread_until: Option<Instant>,
}

impl Fetch {
    pub fn new(info_hash: InfoHash, max_size: usize, now: Instant) -> Fetch {
        Fetch {
            info_hash,
            max_size,
            size: None,
            buf: Vec::new(),
            slots: Vec::new(),
            peers: HashMap::new(),
            suspects: HashSet::new(),
            solo: None,
            tried_solo: HashSet::new(),
            last_progress: now,
            done: false,
            senders: HashMap::new(),
            pending: 0,
            spread_until: None,
        }
    }

    /// How many connections are still on their way to their extension
    /// handshake; see [`SPREAD_WAIT`].
    pub fn set_pending(&mut self, n: usize) {
        self.pending = n;
    }

    pub fn progress(&self) -> Progress {
        Progress {
            size: self.size,
            pieces: self.slots.len(),
            got: self.slots.iter().filter(|s| s.got.is_some()).count(),
            peers: self
                .peers
                .values()
                .filter(|p| p.unfit.is_none() && Some(p.size) == self.size)
                .count(),
        }
    }

    /// Pieces each peer sent of the whole that matched (empty before).
    pub fn senders(&self) -> &HashMap<PeerKey, usize> {
        &self.senders
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// A peer's extended handshake arrived: whether it can be asked.
    pub fn add_peer(
        &mut self,
        key: PeerKey,
        ext: &ExtHandshake,
        now: Instant,
    ) -> Result<(), Unfit> {
        let offers = ext.extensions.get(NAME).is_some_and(|&id| id != 0);
        let size = match ext.metadata_size {
            Some(n) if offers && n > 0 => n,
            _ => return Err(Unfit::NoMetadata),
        };
        if size > self.max_size as u64 {
            return Err(Unfit::TooBig(size, self.max_size));
        }
        self.peers.insert(
            key,
            MetaPeer {
                size: size as usize,
                outstanding: Vec::new(),
                rejects: 0,
                not_before: None,
                unfit: None,
                delivered: 0,
                asked: 0,
            },
        );
        self.spread_until.get_or_insert(now + SPREAD_WAIT);
        if self.size.is_none() && !self.done {
            self.begin(size as usize, now);
        }
        Ok(())
    }

    /// The peer is gone: its requests go to others.
    pub fn remove_peer(&mut self, key: PeerKey, now: Instant) {
        if self.peers.remove(&key).is_none() {
            return;
        }
        for s in &mut self.slots {
            s.asked.retain(|(k, _)| *k != key);
        }
        if self.solo == Some(key) {
            self.solo = None;
            self.reset_round();
        }
        self.switch_if_stuck(now);
    }

    /// Why the peer must not be asked (it sent something wrong, or its
    /// whole failed the hash).
    pub fn unfit(&self, key: PeerKey) -> Option<&Unfit> {
        self.peers.get(&key).and_then(|p| p.unfit.as_ref())
    }

    /// Pieces to ask `key` for now (recorded as asked).
    pub fn requests(&mut self, key: PeerKey, now: Instant) -> Vec<u32> {
        if self.done {
            return Vec::new();
        }
        self.switch_if_stuck(now);
        let Some(size) = self.size else {
            return Vec::new();
        };
        if self.solo.is_none() && !self.suspects.is_empty() {
            self.pick_solo();
        }
        if self.solo.is_some_and(|s| s != key) {
            return Vec::new();
        }
        let Some(p) = self.peers.get(&key) else {
            return Vec::new();
        };
        if p.unfit.is_some() || p.size != size || p.not_before.is_some_and(|t| now < t) {
            return Vec::new();
        }
        let depth = (START_DEPTH + p.delivered).min(DEPTH);
        let mut room = depth.saturating_sub(p.outstanding.len());
        if self.pending > 0 && self.spread_until.is_some_and(|t| now < t) {
            let fit = self
                .peers
                .values()
                .filter(|q| q.unfit.is_none() && q.size == size)
                .count();
            let share = self.slots.len().div_ceil(fit + self.pending);
            room = room.min(share.saturating_sub(p.asked));
        }
        let mut picked = Vec::new();
        // Pieces nobody was asked for, then (with room to spare) pieces
        // whose requests went unanswered too long, then, to finish
        // sooner, pieces asked of one other peer a while ago.
        for pass in 0..3 {
            for (i, s) in self.slots.iter_mut().enumerate() {
                if room == 0 {
                    break;
                }
                if s.got.is_some() || s.asked.iter().any(|(k, _)| *k == key) {
                    continue;
                }
                let take = match pass {
                    0 => s.asked.is_empty(),
                    1 => {
                        !s.asked.is_empty()
                            && s.asked
                                .iter()
                                .all(|(_, t)| now.saturating_duration_since(*t) >= REQUEST_TIMEOUT)
                    }
                    _ => {
                        s.asked.len() == 1
                            && s.asked
                                .iter()
                                .all(|(_, t)| now.saturating_duration_since(*t) >= DUPLICATE_AFTER)
                    }
                };
                if take {
                    s.asked.push((key, now));
                    picked.push(i as u32);
                    room -= 1;
                }
            }
        }
        let p = self.peers.get_mut(&key).expect("checked above");
        p.outstanding.extend(picked.iter().map(|&i| (i, now)));
        p.asked += picked.len();
        picked
    }

    /// A ut_metadata message from `key` (a request is the caller's to
    /// answer, with [`serve`] or a reject). An error makes the peer unfit.
    pub fn received(
        &mut self,
        key: PeerKey,
        msg: &MetaMsg<'_>,
        now: Instant,
    ) -> Result<Outcome, Unfit> {
        let r = self.take(key, msg, now);
        if let (Err(why), Some(p)) = (&r, self.peers.get_mut(&key)) {
            p.unfit = Some(why.clone());
            p.outstanding.clear();
            for s in &mut self.slots {
                s.asked.retain(|(k, _)| *k != key);
            }
        }
        r
    }

    fn take(&mut self, key: PeerKey, msg: &MetaMsg<'_>, now: Instant) -> Result<Outcome, Unfit> {
        let Some(p) = self.peers.get_mut(&key).filter(|_| !self.done) else {
            return Ok(Outcome::More);
        };
        match *msg {
            MetaMsg::Request(_) | MetaMsg::Unknown => Ok(Outcome::More),
            MetaMsg::Reject(piece) => {
                if let Some(i) = p.outstanding.iter().position(|(x, _)| *x == piece) {
                    p.outstanding.swap_remove(i);
                    p.rejects += 1;
                    // 1 s, 2 s, 4 s … up to 30 s before it is asked again.
                    p.not_before = Some(
                        now + Duration::from_secs(1 << p.rejects.min(5)).min(STALL + STALL / 2),
                    );
                    if let Some(s) = self.slots.get_mut(piece as usize) {
                        s.asked.retain(|(k, _)| *k != key);
                    }
                }
                Ok(Outcome::More)
            }
            MetaMsg::Data {
                piece,
                total_size,
                data,
            } => {
                let Some(i) = p.outstanding.iter().position(|(x, _)| *x == piece) else {
                    return Err(Unfit::Unrequested(piece));
                };
                p.outstanding.swap_remove(i);
                p.delivered += 1;
                if let Some(n) = total_size.filter(|&n| n != p.size as u64) {
                    return Err(Unfit::SizeChanged {
                        said: p.size as u64,
                        now: n,
                    });
                }
                let want = piece_len(p.size, piece as usize);
                if data.len() != want {
                    return Err(Unfit::WrongLength {
                        piece,
                        got: data.len(),
                        want,
                    });
                }
                p.rejects = 0;
                p.not_before = None;
                if Some(p.size) != self.size || self.solo.is_some_and(|s| s != key) {
                    // Asked before the size changed, or while another
                    // peer is asked alone: of no use now.
                    return Ok(Outcome::More);
                }
                let slot = &mut self.slots[piece as usize];
                if slot.got.is_some() {
                    return Ok(Outcome::More);
                }
                slot.got = Some(key);
                slot.asked.clear();
                let start = piece as usize * PIECE;
                self.buf[start..start + data.len()].copy_from_slice(data);
                self.last_progress = now;
                if self.slots.iter().all(|s| s.got.is_some()) {
                    return self.check(now);
                }
                Ok(Outcome::More)
            }
        }
    }

    /// Every piece is here: does the whole match?
    fn check(&mut self, now: Instant) -> Result<Outcome, Unfit> {
        let digest: [u8; 20] = Sha1::digest(&self.buf).into();
        let mut senders: HashMap<PeerKey, usize> = HashMap::new();
        for s in &self.slots {
            if let Some(k) = s.got {
                *senders.entry(k).or_default() += 1;
            }
        }
        if digest == self.info_hash.0 {
            self.done = true;
            self.senders = senders;
            self.slots.clear();
            self.peers.values_mut().for_each(|p| p.outstanding.clear());
            return Ok(Outcome::Done(std::mem::take(&mut self.buf)));
        }
        if senders.len() == 1 {
            let bad = *senders.keys().next().expect("one sender");
            if let Some(p) = self.peers.get_mut(&bad) {
                p.unfit = Some(Unfit::BadHash);
                p.outstanding.clear();
            }
            self.suspects.remove(&bad);
            self.solo = None;
        } else {
            // Which of them lied cannot be told from the whole: each is
            // asked for all of it alone, in turn.
            self.suspects.extend(senders.keys());
            self.solo = None;
        }
        self.reset_round();
        self.last_progress = now;
        self.switch_if_stuck(now);
        Ok(Outcome::HashFailed)
    }

    /// Starts over on the current size (the buffer is kept).
    fn reset_round(&mut self) {
        for s in &mut self.slots {
            *s = Slot::default();
        }
    }

    /// Starts fetching metadata of `size` bytes.
    fn begin(&mut self, size: usize, now: Instant) {
        self.size = Some(size);
        // One buffer, at most the cap; the previous size's is freed.
        self.buf = vec![0; size];
        self.slots = vec![Slot::default(); piece_count(size)];
        self.suspects.clear();
        self.solo = None;
        self.tried_solo.clear();
        self.last_progress = now;
    }

    /// Peers that can be asked, by the size they announced.
    fn sizes(&self) -> HashMap<usize, usize> {
        let mut n = HashMap::new();
        for p in self.peers.values().filter(|p| p.unfit.is_none()) {
            *n.entry(p.size).or_default() += 1;
        }
        n
    }

    /// Moves to another announced size when nobody can deliver this one:
    /// no fit peer announces it, or nothing arrived for [`STALL`] while
    /// others announce another size, or every peer of it failed alone.
    fn switch_if_stuck(&mut self, now: Instant) {
        if self.done {
            return;
        }
        let sizes = self.sizes();
        let here = self.size.and_then(|s| sizes.get(&s).copied()).unwrap_or(0);
        let exhausted = self.size.is_some()
            && !self.suspects.is_empty()
            && self.solo.is_none()
            && self.solo_candidates().is_empty();
        let stalled = now.saturating_duration_since(self.last_progress) >= STALL;
        if here > 0 && !stalled && !exhausted {
            return;
        }
        let best = sizes
            .iter()
            .filter(|(s, _)| Some(**s) != self.size || exhausted)
            .max_by_key(|(s, n)| (**n, std::cmp::Reverse(**s)))
            .map(|(s, _)| *s);
        match best {
            Some(s) if Some(s) != self.size || exhausted => {
                tracing::debug!(
                    "metadata: fetching {s} bytes instead of {:?} ({} peers announce it)",
                    self.size,
                    sizes[&s]
                );
                self.begin(s, now);
            }
            _ if here == 0 => {
                self.size = None;
                self.buf = Vec::new();
                self.slots.clear();
            }
            _ => {}
        }
    }

    /// Fit peers of the current size not yet asked alone: those that did
    /// not contribute to the failed whole first.
    fn solo_candidates(&self) -> Vec<PeerKey> {
        let mut c: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(k, p)| {
                p.unfit.is_none() && Some(p.size) == self.size && !self.tried_solo.contains(k)
            })
            .map(|(k, _)| *k)
            .collect();
        c.sort_by_key(|k| (self.suspects.contains(k), *k));
        c
    }

    fn pick_solo(&mut self) {
        if let Some(&k) = self.solo_candidates().first() {
            self.solo = Some(k);
            self.tried_solo.insert(k);
            self.reset_round();
        }
    }
}

#[cfg(test)]
mod tests;
