//! One peer connection's protocol state machine, without I/O (the shape of
//! quinn-proto's `Connection`): decoded messages, commands from the
//! torrent and the time go in; encoded messages to send, blocks to write
//! and changes to the torrent's [`State`] come out. [`crate::peer`] is the
//! transport that moves the bytes.
//!
//! It speaks BEP 3, the fast extension (BEP 6) and the extension protocol
//! (BEP 10) when both sides set their reserved bits:
//! - first message: `have_all` / `have_none` / `bitfield` (fast), or a
//!   bitfield when there is anything in it; then our extended handshake
//!   (`v`, `p`, `reqq`, `yourip`, `metadata_size`) and our allowed-fast set;
//! - every request is answered: a block, or with the fast extension a
//!   `reject_request` (choked and not allowed fast, over our queue limit,
//!   a piece we do not have). Without the fast extension a request while
//!   choked is dropped (BEP 3: a choke discards requests, and the peer
//!   knows), and one over the limit or for a piece we do not have ends
//!   the connection with a logged reason: a peer is never left waiting for
//!   a block we decided not to send;
//! - when we choke a peer, the piece being sent is finished, and with the
//!   fast extension the pieces it had asked for in part (four at most) are
//!   granted (`allowed_fast`, for the rest of each, for 2 s) so that it
//!   finishes them too: a piece left half sent would wait for the next
//!   unchoke;
//! - on the downloading side, with the fast extension a choke keeps our
//!   requests (each is answered by a piece or a reject; a reject releases
//!   the block at once), and the peer's allowed-fast pieces are requested
//!   while it chokes us.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use torrent_format::{Info, InfoHash};

use crate::extension::{self, ExtHandshake};
use crate::fast;
use crate::initial::{self, Initial};
use crate::metadata;
use crate::pace::Pace;
use crate::pex::{self, PexIn, PexMessage, PexOut, PexVerdict};
use crate::picker::{PeerKey, Received};
use crate::session::{Cmd, Ident, PeerCounters, State};
use crate::spread::Spread;
use crate::wire::{
    Bitfield, BitfieldError, BlockRef, Features, Message, WireError, BLOCK, MAX_BLOCK,
};

/// Close a connection that sent nothing (not even a keep-alive) this long.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(150);
/// Most requests from a peer queued for upload, advertised as `reqq`
/// (libtorrent's `max_allowed_in_request_queue` is 2000 too). A queued
/// request is 12 bytes; the blocks are read from disk a few at a time.
pub const MAX_UPLOAD_QUEUE: usize = 2000;
/// How many times over a peer may fetch the whole info dictionary from
/// one connection; further requests are rejected.
pub const METADATA_SERVES: usize = 4;
/// Blocks cancelled or given up on, whose late arrival is forgiven.
const MAX_FORGIVEN: usize = 2048;
/// A peer that rejected requests while unchoking us is asked for those
/// pieces again after this long, once we ask it for nothing else: a seed
/// may turn a request away for now
/// (it would rather send a piece fewer peers have, see
/// [`crate::spread`]), and the piece may be had nowhere else.
pub const REJECTED_RETRY: Duration = Duration::from_secs(1);
/// How long a peer's early rate is measured before it sets the request
/// queue ([`Connection::early_rate`]): long enough for a few blocks on a
/// slow link, short against a download that takes seconds.
const EARLY_SPAN: Duration = Duration::from_millis(100);
/// Pieces a peer suggested (`suggest_piece`) that we remember.
const MAX_SUGGESTED: usize = 8;
/// How long a peer may be turned away from a piece ([`crate::spread`]),
/// and how many requests per block of it at most.
const TURN_AWAY_FOR: Duration = Duration::from_secs(10);
const TURN_AWAY_ROUNDS: u64 = 4;
/// Suggestions a peer may pass over before it is no longer turned away
/// in favour of less-sent pieces.
const MAX_DECLINED: u8 = 3;
/// Pieces asked for in part that we remember per peer
/// ([`Connection::begun`]).
const MAX_BEGUN: usize = 32;
/// Most of them a choke grants (those asked for the most): a choke ends a
/// turn of about a piece, not of as many pieces as the peer began.
const MAX_GRANTED: usize = 4;
/// A granted piece whose rest is not asked for this long after the choke
/// (Transmission ignores `allowed_fast`) counts as not sent to the peer
/// ([`crate::spread`]), and the grant ends.
const GRANT_WAIT: Duration = Duration::from_secs(2);
/// Pieces one peer is turned away from in favour of less-sent ones
/// ([`crate::spread`]); past this, it gets what it asks for.
const MAX_REDIRECTED: usize = 1024;
/// Messages that carry neither data nor news of pieces (keep-alive,
/// choke, unchoke, interested, not interested) a peer may send in a burst,
/// and then how many a second. Each costs work under the torrent's lock
/// out of all proportion to its five bytes (a choke frees requests, an
/// unchoke makes new ones, an interest change runs the choker); honest
/// peers send a few a minute, and a peer that sends them without end
/// would starve the others. (A repeated bitfield is not chatter: aria2
/// sends one instead of 'have's, and its cost grows with its length.)
pub const CHATTER_BURST: u64 = 500;
pub const CHATTER_RATE: u64 = 20;

/// A token bucket for chatter, in thousandths of a message.
struct Chatter {
    milli: u64,
    at: Instant,
}

impl Chatter {
    fn new(now: Instant) -> Chatter {
        Chatter {
            milli: CHATTER_BURST * 1000,
            at: now,
        }
    }

    /// Takes `cost` messages' worth; false when the peer is over its
    /// allowance.
    fn take(&mut self, cost: u64, now: Instant) -> bool {
        let ms = now.saturating_duration_since(self.at).as_millis() as u64;
        self.at = self.at.max(now);
        self.milli = (self.milli + ms * CHATTER_RATE).min(CHATTER_BURST * 1000);
        match self.milli.checked_sub(cost * 1000) {
            Some(left) => {
                self.milli = left;
                true
            }
            None => false,
        }
    }
}

/// Why a connection ends.
#[derive(Debug, thiserror::Error)]
pub enum Close {
    #[error("protocol error: {0}")]
    Wire(#[from] WireError),
    #[error("{0}")]
    Violation(#[from] Violation),
    #[error("both sides are seeds")]
    BothSeeds,
    #[error("idle too long")]
    Idle,
    #[error("banned: {0}")]
    Banned(&'static str),
    #[error("{0}")]
    Torrent(&'static str),
}

/// A rule of the protocol the peer broke.
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    #[error("bad bitfield: {0}")]
    Bitfield(#[from] BitfieldError),
    #[error("'have' for piece {0}, which does not exist")]
    HaveOutOfRange(u32),
    #[error("'have all'/'have none' after other piece messages")]
    LateHaveAll,
    #[error("asked for {} bytes at {} of piece {}, which is out of range", .0.length, .0.offset, .0.index)]
    RequestOutOfRange(BlockRef),
    #[error("asked for piece {0}, which we do not have (and no fast extension to reject it)")]
    RequestUnavailable(u32),
    #[error("more than {MAX_UPLOAD_QUEUE} requests queued (and no fast extension to reject them)")]
    TooManyRequests,
    #[error("sent {} bytes at {} of piece {}, which we did not ask for", .0.length, .0.offset, .0.index)]
    Unrequested(BlockRef),
    #[error("rejected a request for {} bytes at {} of piece {}, which we never made", .0.length, .0.offset, .0.index)]
    UnrequestedReject(BlockRef),
    #[error("{0}")]
    ExtHandshake(#[from] extension::ExtError),
    #[error("{0}")]
    Metadata(metadata::MetaError),
    #[error("{0}")]
    Pex(#[from] pex::PexViolation),
    #[error("{0}")]
    PexMessage(#[from] pex::PexError),
    #[error("a flood of keep-alive, choke or interest messages (over {CHATTER_BURST} at once, or {CHATTER_RATE} a second)")]
    Chatter,
}

/// A received block to hand to the disk.
#[derive(Debug, PartialEq, Eq)]
pub struct Write {
    pub piece: u32,
    pub offset: u32,
    pub data: Vec<u8>,
    /// The piece's last block: verify it after writing.
    pub last: bool,
    /// Report per-block digests with the verdict (smart ban).
    pub digests: bool,
    /// The last piece in progress is done (every block we lack is
    /// received): verify at once, no later piece will join its batch.
    pub nothing_pending: bool,
}

/// Blocks a peer asked for, waiting to be read and sent (shared with the
/// transport's writer, which takes them in batches).
pub struct UploadQueue {
    queue: Mutex<VecDeque<BlockRef>>,
    /// The piece of the last block handed to the writer (`u32::MAX`: none
    /// yet): the one being sent.
    current: std::sync::atomic::AtomicU32,
    pub ready: Notify,
}

impl Default for UploadQueue {
    fn default() -> UploadQueue {
        UploadQueue {
            queue: Mutex::default(),
            current: std::sync::atomic::AtomicU32::new(u32::MAX),
            ready: Notify::new(),
        }
    }
}

impl UploadQueue {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<BlockRef>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
    /// Takes up to `n` blocks from the front.
    pub fn take(&self, n: usize) -> Vec<BlockRef> {
        let mut q = self.lock();
        let n = n.min(q.len());
        let taken: Vec<BlockRef> = q.drain(..n).collect();
        if let Some(b) = taken.last() {
            self.current.store(b.index, Ordering::Relaxed);
        }
        taken
    }

    /// The piece whose blocks the writer took last.
    pub fn current(&self) -> Option<u32> {
        Some(self.current.load(Ordering::Relaxed)).filter(|&p| p != u32::MAX)
    }
}

/// What a connection is told at its start.
pub struct Setup {
    pub key: PeerKey,
    pub ident: Ident,
    pub info: Arc<Info>,
    pub info_hash: InfoHash,
    /// Both sides set the bit.
    pub features: Features,
    /// Our listening port, for the extended handshake.
    pub port: u16,
    /// Our DHT node's UDP port, sent in a PORT message (BEP 5), when both
    /// sides set the DHT bit and the torrent is public.
    pub dht_port: Option<u16>,
    pub counters: Arc<PeerCounters>,
    /// The torrent's totals.
    pub totals: Arc<PeerCounters>,
    pub poked: Arc<std::sync::atomic::AtomicBool>,
    pub snub_after: Duration,
    pub initial_seeding: bool,
}

/// One connection's protocol state.
pub struct Connection {
    key: PeerKey,
    ident: Ident,
    info: Arc<Info>,
    info_hash: InfoHash,
    fast: bool,
    extended: bool,
    port: u16,
    dht_port: Option<u16>,
    /// The peer's DHT node (its IP, the port of its PORT message), once,
    /// until taken.
    dht_node: Option<SocketAddr>,
    got_port: bool,
    /// What the peer has.
    bitfield: Bitfield,
    got_bitfield: bool,
    peer_choking: bool,
    am_interested: bool,
    am_choking: bool,
    /// Requests sent and not yet answered.
    inflight: Vec<BlockRef>,
    /// Blocks cancelled or given up on, each with how many of its requests
    /// were: that many late answers (a piece or a reject) are forgiven, and
    /// the block is not timed ([`crate::pace`]) if asked again. (A block
    /// given back at two snubs and asked a third time may come thrice.)
    forgiven: HashMap<BlockRef, u16>,
    last_block: Instant,
    last_recv: Instant,
    /// When the first block since it last unchoked us (or since it last
    /// had all our requests answered, or was snubbed) arrived, and the
    /// bytes of the blocks after it: its rate while the session's meter
    /// says 0 ([`Connection::early_rate`]).
    early: Option<(Instant, u64)>,
    /// Its answer time and delivery rate: how far ahead it is asked.
    pace: Pace,
    snubbed: bool,
    snub_after: Duration,
    /// Encoded messages not yet handed to the transport.
    out: Vec<u8>,
    uploads: Arc<UploadQueue>,
    counters: Arc<PeerCounters>,
    totals: Arc<PeerCounters>,
    poked: Arc<std::sync::atomic::AtomicBool>,
    /// How many of its pieces we lack (we are interested while > 0).
    lacking: usize,
    initial: Option<Initial>,
    /// Pieces it may get from us while we choke it (fast extension).
    allowed_out: Vec<u32>,
    /// Pieces we may get from it while it chokes us.
    allowed_in: Vec<u32>,
    /// Pieces it rejected a request for since it last unchoked us (or
    /// since [`REJECTED_RETRY`]): not asked of it again until then...
    rejected: HashSet<u32>,
    /// ... when the first of them was rejected.
    rejected_at: Option<Instant>,
    /// Pieces it suggested, oldest first (the oldest is dropped when it
    /// is full): asked for in that order, after the pieces we started.
    suggested: VecDeque<u32>,
    /// Plain seeding ([`crate::spread`]): pieces it was served (counted
    /// once each), made at its first request once we are complete...
    served: Option<Bitfield>,
    /// ... the requests turned away per piece, and since when (bounded:
    /// a peer that asks again long enough gets it)...
    redirected: HashMap<u32, (u32, Instant)>,
    /// ... the piece we last suggested instead, and the one we turned
    /// away for it...
    last_suggest: Option<u32>,
    suggested_at: Option<Instant>,
    last_turned: Option<u32>,
    /// ... and how often it asked for yet another piece rather than the
    /// one suggested: a peer that ignores suggestions (or does not want
    /// those pieces: a partial selection) is not turned away for them.
    /// The suggestions counted so (at most [`MAX_DECLINED`]): one it asks
    /// for after all shows it was only busy (finishing pieces it had
    /// started elsewhere), and the count starts again.
    declined: u8,
    passed_over: Vec<u32>,
    /// The pieces a choke granted it (BEP 6 allowed fast) until the next
    /// unchoke, so that it can ask for the rest of pieces it had begun (in
    /// `begun`, the bytes not asked yet): a piece left half sent would
    /// wait for the next unchoke.
    granted: Vec<u32>,
    /// When the grants end ([`GRANT_WAIT`] after the choke).
    grant_until: Option<Instant>,
    /// Pieces it has asked for in part, with the bytes asked (at most
    /// [`MAX_BEGUN`], the oldest not granted dropped): granted at a choke,
    /// or else counted as not sent to it ([`crate::spread`]).
    begun: Vec<(u32, u64)>,
    /// Most requests it queues (its `reqq`).
    peer_reqq: usize,
    /// Its extended handshake, once received.
    ext: Option<ExtHandshake>,
    chatter: Chatter,
    /// ut_metadata pieces sent to it.
    metadata_served: usize,
    /// ut_pex from it: offered in our extended handshake whenever the
    /// torrent is public, so this exists from the start then.
    pex_in: Option<PexIn>,
    /// ut_pex to it, and its id for the extension: once its extended
    /// handshake names ut_pex (public torrents only).
    pex_out: Option<PexOut>,
    /// Its id for ut_pex, while its latest extended handshake names it.
    /// Withdrawing and re-adding it keeps `pex_out`: its clock stands.
    pex_id: Option<u8>,
}

impl Connection {
    pub fn new(s: Setup, now: Instant) -> Connection {
        let pieces = s.info.piece_count();
        Connection {
            key: s.key,
            ident: s.ident,
            info_hash: s.info_hash,
            fast: s.features.fast,
            extended: s.features.extended,
            port: s.port,
            dht_port: s.dht_port.filter(|_| !s.info.is_private()),
            dht_node: None,
            got_port: false,
            bitfield: Bitfield::new(pieces),
            got_bitfield: false,
            peer_choking: true,
            am_interested: false,
            am_choking: true,
            inflight: Vec::new(),
            forgiven: HashMap::new(),
            last_block: now,
            last_recv: now,
            early: None,
            pace: Pace::default(),
            snubbed: false,
            snub_after: s.snub_after,
            out: Vec::new(),
            uploads: Arc::new(UploadQueue::default()),
            counters: s.counters,
            totals: s.totals,
            poked: s.poked,
            lacking: 0,
            initial: s.initial_seeding.then(|| Initial::new(s.features.fast)),
            chatter: Chatter::new(now),
            allowed_out: Vec::new(),
            granted: Vec::new(),
            grant_until: None,
            begun: Vec::new(),
            allowed_in: Vec::new(),
            rejected: HashSet::new(),
            rejected_at: None,
            suggested: VecDeque::new(),
            served: None,
            redirected: HashMap::new(),
            last_suggest: None,
            suggested_at: None,
            last_turned: None,
            declined: 0,
            passed_over: Vec::new(),
            peer_reqq: extension::DEFAULT_REQQ,
            ext: None,
            metadata_served: 0,
            pex_in: (s.features.extended && !s.info.is_private()).then(PexIn::new),
            pex_out: None,
            pex_id: None,
            info: s.info,
        }
    }

    pub fn key(&self) -> PeerKey {
        self.key
    }

    /// The peer's DHT node, from its PORT message (once).
    pub fn take_dht_node(&mut self) -> Option<SocketAddr> {
        self.dht_node.take()
    }
    pub fn bitfield(&self) -> &Bitfield {
        &self.bitfield
    }
    pub fn uploads(&self) -> &Arc<UploadQueue> {
        &self.uploads
    }
    /// The peer's extended handshake, once it sent one.
    #[cfg(test)]
    pub fn ext(&self) -> Option<&ExtHandshake> {
        self.ext.as_ref()
    }
    #[cfg(test)]
    pub fn inflight(&self) -> &[BlockRef] {
        &self.inflight
    }

    /// Encoded messages to send, taken.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    fn send(&mut self, m: &Message) {
        m.encode(&mut self.out);
    }

    /// What goes out right after the handshake.
    pub fn start(&mut self, st: &mut State, now: Instant) {
        if let Some(init) = &mut self.initial {
            if self.fast {
                Message::HaveNone.encode(&mut self.out);
            }
            init.start(&mut initial::Ctx {
                st,
                has: &self.bitfield,
                out: &mut self.out,
                now,
            });
        } else if self.fast && st.have.is_complete() {
            self.send(&Message::HaveAll);
        } else if self.fast && st.have.count() == 0 {
            self.send(&Message::HaveNone);
        } else if st.have.count() > 0 {
            self.send(&Message::Bitfield(st.have.as_bytes().to_vec()));
        }
        if let Some(p) = self.dht_port {
            self.send(&Message::Port(p));
        }
        if self.extended {
            // A private torrent's metadata goes only to those who have its
            // .torrent (BEP 27): no ut_metadata, no size.
            let public = !self.info.is_private();
            let mut h = ExtHandshake {
                client: Some(extension::our_client_name()),
                port: Some(self.port).filter(|&p| p != 0),
                reqq: Some(MAX_UPLOAD_QUEUE),
                your_ip: Some(self.ident.addr.ip()),
                metadata_size: public.then(|| self.info.raw_bytes().len() as u64),
                ..ExtHandshake::default()
            };
            // Nor peer exchange (BEP 27: peers come from its tracker only).
            if public {
                h.extensions
                    .insert(metadata::NAME.into(), extension::UT_METADATA_ID);
                h.extensions
                    .insert(pex::EXTENSION_NAME.into(), extension::UT_PEX_ID);
            }
            self.send(&Message::Extended(extension::HANDSHAKE_ID, h.encode()));
        }
        // A seed grants no allowed-fast pieces: with them every choked
        // peer asks for its ten at once, and the seed's link, shared by
        // all of them, takes seconds over each piece (a newcomer gets its
        // first pieces from the optimistic unchoke and from other peers).
        if self.fast && self.initial.is_none() && !st.is_complete() {
            self.allowed_out = fast::allowed_fast_set(
                self.ident.addr.ip(),
                &self.info_hash,
                self.info.piece_count() as u32,
                fast::ALLOWED_FAST,
            );
            for p in self.allowed_out.clone() {
                if st.have.get(p as usize) {
                    self.send(&Message::AllowedFast(p));
                }
            }
        }
    }

    /// Bytes arrived (any: the idle clock restarts).
    pub fn received_bytes(&mut self, now: Instant) {
        self.last_recv = now;
    }

    /// A decoded message from the peer. A `piece` returns the block to
    /// write; the caller holds room for it in the disk's queue.
    pub fn handle(
        &mut self,
        m: Message,
        now: Instant,
        st: &mut State,
    ) -> Result<Option<Write>, Close> {
        let chatter = match &m {
            Message::KeepAlive
            | Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested => 1,
            _ => 0,
        };
        if chatter > 0 && !self.chatter.take(chatter, now) {
            return Err(Violation::Chatter.into());
        }
        match m {
            Message::KeepAlive => {}
            Message::Choke if self.peer_choking => {}
            Message::Choke => {
                self.peer_choking = true;
                // Without the fast extension a choke drops our requests;
                // with it, each is still answered (a piece or a reject).
                if !self.fast {
                    self.release_all(st);
                }
            }
            Message::Unchoke => {
                if self.peer_choking {
                    self.early = None;
                }
                self.peer_choking = false;
                self.rejected.clear();
                self.rejected_at = None;
                self.request_more(st, now);
            }
            Message::Interested => st.set_interested(self.key, true),
            Message::NotInterested => st.set_interested(self.key, false),
            Message::Have(piece) => self.have(piece, now, st)?,
            Message::Bitfield(bytes) => {
                let bits =
                    Bitfield::from_bytes(&bytes, self.bitfield.len()).map_err(Violation::from)?;
                if self.got_bitfield || self.bitfield.count() > 0 {
                    // BEP 3 allows it only first, but aria2 sends a whole
                    // bitfield later instead of several 'have's: take the
                    // new bits as 'have's, and what follows from them once
                    // (a pass per bit would be quadratic in the pieces).
                    let mut wanted = false;
                    for i in 0..bits.len() {
                        if bits.get(i) && !self.bitfield.get(i) {
                            wanted |= self.add_piece(i as u32, now, st)?;
                        }
                    }
                    self.after_news(wanted, now, st)?;
                } else {
                    self.set_bitfield(bits, now, st)?;
                }
            }
            Message::HaveAll | Message::HaveNone
                if self.got_bitfield || self.bitfield.count() > 0 =>
            {
                return Err(Violation::LateHaveAll.into());
            }
            Message::HaveAll => {
                let mut all = Bitfield::new(self.bitfield.len());
                (0..all.len()).for_each(|i| {
                    all.set(i);
                });
                self.set_bitfield(all, now, st)?;
            }
            Message::HaveNone => self.got_bitfield = true,
            Message::Request(b) => self.requested(b, now, st)?,
            Message::Cancel(b) => {
                let mut q = self.uploads.lock();
                if let Some(i) = q.iter().position(|x| *x == b) {
                    q.remove(i);
                    drop(q);
                    // Not asked after all (a piece asked for and cancelled
                    // is not begun).
                    self.unbegin(b);
                    // Fast extension: even a cancelled request is answered.
                    if self.fast {
                        self.send(&Message::RejectRequest(b));
                    }
                }
            }
            Message::Piece {
                index,
                offset,
                data,
            } => return self.piece(index, offset, data, now, st),
            Message::RejectRequest(b) => self.rejected(b, now, st)?,
            Message::AllowedFast(piece) => {
                // Out of range, a duplicate, or past our bound: ignored.
                // (A seed may grant the piece it was sending at each choke:
                // pieces we have since verified make room.)
                if self.allowed_in.len() >= fast::MAX_ALLOWED_FAST_IN {
                    let have = st.picker.have();
                    self.allowed_in.retain(|&p| !have.get(p as usize));
                }
                if (piece as usize) < self.bitfield.len()
                    && !self.allowed_in.contains(&piece)
                    && self.allowed_in.len() < fast::MAX_ALLOWED_FAST_IN
                {
                    self.allowed_in.push(piece);
                    if self.peer_choking {
                        self.request_more(st, now);
                    }
                }
            }
            // A seed's advice (initial seeding, or the piece it sent to
            // the fewest): asked for before new pieces (after those we
            // started), if it has it and we lack it.
            Message::SuggestPiece(piece) => {
                if (piece as usize) < self.bitfield.len()
                    && !st.picker.have().get(piece as usize)
                    && !self.suggested.contains(&piece)
                {
                    if self.suggested.len() >= MAX_SUGGESTED {
                        self.suggested.pop_front();
                    }
                    self.suggested.push_back(piece);
                }
            }
            Message::Extended(extension::HANDSHAKE_ID, payload) => {
                let h = ExtHandshake::decode(&payload).map_err(Violation::from)?;
                self.peer_reqq = h.reqq.unwrap_or(extension::DEFAULT_REQQ);
                tracing::debug!(
                    "{}: extended handshake: {} (reqq {}, extensions {:?})",
                    self.ident.addr,
                    h.client.as_deref().unwrap_or("no name"),
                    self.peer_reqq,
                    h.extensions.keys().collect::<Vec<_>>()
                );
                if let Some(name) = &h.client {
                    if let Some(p) = st.peers.get_mut(&self.key) {
                        p.client = Some(name.clone());
                    }
                }
                st.heard_ext_handshake(self.key, h.port, h.encryption);
                // A later handshake may add, move or withdraw ut_pex; what
                // it was told stands, and so does the once-a-minute clock.
                let pex_id = h
                    .extensions
                    .get(pex::EXTENSION_NAME)
                    .copied()
                    .filter(|&id| id != 0 && !self.info.is_private());
                self.pex_id = pex_id;
                if pex_id.is_some() && self.pex_out.is_none() {
                    self.pex_out = Some(PexOut::new(now));
                }
                self.ext = Some(h);
            }
            Message::Extended(extension::UT_METADATA_ID, payload) if !self.info.is_private() => {
                self.metadata(&payload)?;
            }
            Message::Extended(extension::UT_PEX_ID, payload) if self.pex_in.is_some() => {
                self.pex(&payload, now, st)?;
            }
            Message::Port(p) if self.dht_port.is_some() => {
                // Its node may join our table (it is pinged first); one
                // per connection, however often it is sent.
                if !self.got_port && p != 0 {
                    self.dht_node = Some(SocketAddr::new(self.ident.addr.ip(), p));
                }
                self.got_port = true;
            }
            // Extensions we did not offer, a DHT port when we run no DHT
            // for this torrent, and unknown ids: ignored.
            Message::Extended(..) | Message::Port(_) | Message::Unknown(_) => {}
        }
        Ok(None)
    }

    /// A ut_metadata message: a request is answered with the piece (or a
    /// reject past the end, or once the peer has asked for the whole
    /// [`METADATA_SERVES`] times over); we ask for nothing, so anything
    /// else is ignored.
    fn metadata(&mut self, payload: &[u8]) -> Result<(), Close> {
        let msg = metadata::MetaMsg::decode(payload).map_err(Violation::Metadata)?;
        let metadata::MetaMsg::Request(piece) = msg else {
            return Ok(());
        };
        let Some(id) = self
            .ext
            .as_ref()
            .and_then(|h| h.extensions.get(metadata::NAME))
            .copied()
            .filter(|&id| id != 0)
        else {
            // It never said how to send it ut_metadata messages.
            return Ok(());
        };
        let raw = self.info.raw_bytes();
        let limit = METADATA_SERVES * metadata::piece_count(raw.len()) + 16;
        let reply = if self.metadata_served < limit {
            self.metadata_served += 1;
            metadata::serve(raw, piece)
        } else {
            metadata::MetaMsg::Reject(piece)
        };
        self.send(&Message::Extended(id, reply.encode()));
        Ok(())
    }

    /// A ut_pex message: judged by [`PexIn`] (libtorrent's flood rule and
    /// a size bound: a violation ends the connection) before it is parsed;
    /// its new peers become candidates.
    fn pex(&mut self, payload: &[u8], now: Instant, st: &mut State) -> Result<(), Close> {
        let Some(pex_in) = &mut self.pex_in else {
            return Ok(());
        };
        match pex_in.receive(now, payload.len()) {
            PexVerdict::Use => {}
            PexVerdict::Ignore => return Ok(()),
            PexVerdict::Disconnect(why) => return Err(Violation::Pex(why).into()),
        }
        let msg = PexMessage::decode(payload).map_err(Violation::PexMessage)?;
        let learned = pex_in.take_candidates(&msg, self.ident.addr.ip());
        let added = st.add_pex_candidates(&learned);
        tracing::debug!(
            "{}: ut_pex: {} added, {} dropped; new candidates: {added}",
            self.ident.addr,
            msg.added.len(),
            msg.dropped.len()
        );
        Ok(())
    }

    /// Our ut_pex message to it, when one is due (the first at once, then
    /// at most one a minute) and there is news.
    fn send_pex(&mut self, now: Instant, st: &State) {
        let (Some(out), Some(id)) = (&mut self.pex_out, self.pex_id) else {
            return;
        };
        if !out.due(now) {
            return;
        }
        let current = st.pex_peers(self.key);
        let listen = st.peers.get(&self.key).and_then(|p| p.listen);
        let exclude: Vec<_> = std::iter::once(self.ident.addr).chain(listen).collect();
        if let Some(msg) = out.next(&current, &exclude, now) {
            tracing::debug!(
                "{}: ut_pex out: {} added, {} dropped",
                self.ident.addr,
                msg.added.len(),
                msg.dropped.len()
            );
            self.send(&Message::Extended(id, msg.encode()));
        }
    }

    /// A command from the torrent.
    pub fn command(&mut self, cmd: Cmd, now: Instant, st: &mut State) -> Result<(), Close> {
        match cmd {
            Cmd::Have(piece) => {
                // Even to a peer that has it: an initial seeder learns from
                // these who holds what (libtorrent and Transmission send
                // them too).
                self.send(&Message::Have(piece));
                if self.fast && self.allowed_out.contains(&piece) {
                    self.send(&Message::AllowedFast(piece));
                }
                if st.is_complete() && self.bitfield.is_complete() {
                    return Err(Close::BothSeeds);
                }
                if self.bitfield.get(piece as usize) {
                    self.lacking = self.lacking.saturating_sub(1);
                    if self.lacking == 0 {
                        // The count can drift when its 'have' and our
                        // verdict cross; a full count settles it.
                        self.lacking = self.count_lacking(st);
                    }
                    self.update_interest(st);
                }
            }
            Cmd::Choke => {
                if !self.am_choking {
                    self.am_choking = true;
                    tracing::debug!(target: "shoal::chokes", peer = %self.ident.addr, "choke");
                    self.send(&Message::Choke);
                    // With the fast extension a choke cancels nothing
                    // (each request is answered): the piece being sent is
                    // finished (its queued blocks, at most a piece's
                    // worth), and the pieces it has asked for in part (the
                    // MAX_GRANTED asked for the most) are granted (allowed
                    // fast, for the bytes it has not asked yet, for
                    // GRANT_WAIT or until the next unchoke), so that it
                    // finishes them too. A piece left half sent would wait
                    // for the next unchoke, and for pieces only we have, so
                    // would everyone else. Its other requests are rejected,
                    // except for allowed-fast pieces.
                    self.granted.clear();
                    if self.fast {
                        let mut begun: Vec<(u32, u64)> = self
                            .begun
                            .iter()
                            .copied()
                            .filter(|&(p, _)| {
                                !self.allowed_out.contains(&p) && !self.bitfield.get(p as usize)
                            })
                            .collect();
                        begun.sort_by_key(|&(p, asked)| (std::cmp::Reverse(asked), p));
                        for (p, _) in begun.into_iter().take(MAX_GRANTED) {
                            self.granted.push(p);
                            self.send(&Message::AllowedFast(p));
                        }
                        self.grant_until = (!self.granted.is_empty()).then(|| now + GRANT_WAIT);
                    }
                    let dropped: Vec<BlockRef> = {
                        let (allowed, granted) = (&self.allowed_out, &self.granted);
                        let fast = self.fast;
                        let current = self.uploads.current();
                        let mut room = current.map_or(0, |p| self.info.piece_size(p as usize));
                        let mut q = self.uploads.lock();
                        let mut drop = Vec::new();
                        q.retain(|b| {
                            let finish =
                                fast && Some(b.index) == current && u64::from(b.length) <= room;
                            if finish {
                                room -= u64::from(b.length);
                            }
                            let keep = finish
                                || fast
                                    && (allowed.contains(&b.index) || granted.contains(&b.index));
                            if !keep {
                                drop.push(*b);
                            }
                            keep
                        });
                        drop
                    };
                    // Pieces it will not get from us after all count as
                    // not sent to it (crate::spread), or they would wait
                    // for it, turning everyone else away: those whose
                    // requests we drop, and those it asked for only in
                    // part that are not granted.
                    let granted = &self.granted;
                    let begun = std::mem::take(&mut self.begun);
                    if let (Some(spread), Some(served)) = (&mut st.spread, &mut self.served) {
                        let partly = begun
                            .iter()
                            .map(|&(p, _)| p)
                            .filter(|p| !granted.contains(p));
                        for p in dropped.iter().map(|b| b.index).chain(partly) {
                            if served.unset(p as usize) {
                                spread.unsent(p);
                            }
                        }
                    }
                    self.begun = begun
                        .into_iter()
                        .filter(|(p, _)| granted.contains(p))
                        .collect();
                    if self.fast {
                        for b in dropped {
                            self.send(&Message::RejectRequest(b));
                        }
                    }
                }
            }
            Cmd::Unchoke => {
                if self.am_choking {
                    self.am_choking = false;
                    self.granted.clear();
                    self.grant_until = None;
                    tracing::debug!(target: "shoal::chokes", peer = %self.ident.addr, "unchoke");
                    self.send(&Message::Unchoke);
                }
            }
            Cmd::Cancel(b) => {
                if let Some(i) = self.inflight.iter().position(|x| *x == b) {
                    self.inflight.swap_remove(i);
                    self.pace.forget(b);
                    self.forgive([b]);
                    self.send(&Message::Cancel(b));
                }
            }
            Cmd::Poke => {
                self.poked.store(false, Ordering::Relaxed);
                self.update_interest(st);
                self.request_more(st, now);
            }
            Cmd::Close(why) => return Err(Close::Banned(why)),
            Cmd::Drop(why) => return Err(Close::Torrent(why)),
            Cmd::Spread(piece) => {
                if let Some(init) = &mut self.initial {
                    init.spread(
                        &mut initial::Ctx {
                            st,
                            has: &self.bitfield,
                            out: &mut self.out,
                            now,
                        },
                        piece,
                    );
                }
            }
            Cmd::SpreadAll(bits) => {
                if let Some(init) = &mut self.initial {
                    init.spread_all(
                        &mut initial::Ctx {
                            st,
                            has: &self.bitfield,
                            out: &mut self.out,
                            now,
                        },
                        &bits,
                    );
                }
            }
        }
        Ok(())
    }

    /// Time passed (called about once a second).
    pub fn tick(&mut self, now: Instant, st: &mut State) -> Result<(), Close> {
        if now.duration_since(self.last_recv) > IDLE_TIMEOUT {
            return Err(Close::Idle);
        }
        if self.grant_until.is_some_and(|t| now >= t) {
            // The rest of these was not asked for in time: they will not
            // arrive whole there.
            self.grant_until = None;
            for p in std::mem::take(&mut self.granted) {
                self.begun.retain(|&(q, _)| q != p);
                if let (Some(spread), Some(served)) = (&mut st.spread, &mut self.served) {
                    if served.unset(p as usize) {
                        spread.unsent(p);
                    }
                }
            }
        }
        if tracing::enabled!(target: "shoal::demand", tracing::Level::DEBUG) {
            let p = st.peers.get(&self.key);
            tracing::debug!(
                target: "shoal::demand",
                peer = %self.ident.addr,
                // Our side as a downloader from it.
                interested = self.am_interested,
                choked = self.peer_choking,
                lacking = self.lacking,
                inflight = self.inflight.len(),
                depth = self.queue_depth(st, now),
                answer_ms = self.pace.min_answer().map(|a| a.as_millis() as u64),
                // Its side as a downloader from us.
                it_interested = p.is_some_and(|p| p.interested),
                we_choke = self.am_choking,
                queued = self.uploads.lock().len(),
                "demand"
            );
        }
        if !self.inflight.is_empty() && now.duration_since(self.last_block) > self.snub_after {
            // Snubbed: its requests go back to the pool for others (again
            // and again while it stays silent: one block at a time is all
            // it is asked for, and it cannot hold even that one forever).
            if !self.snubbed {
                tracing::debug!(
                    "{}: snubbed, releasing {} requests",
                    self.ident.addr,
                    self.inflight.len()
                );
            }
            self.snubbed = true;
            self.early = None;
            self.release_all(st);
        }
        if let Some(init) = &mut self.initial {
            let sent_all = self.uploads.is_empty();
            init.tick(
                &mut initial::Ctx {
                    st,
                    has: &self.bitfield,
                    out: &mut self.out,
                    now,
                },
                sent_all,
            );
        }
        // Only once nothing else is asked of it: while it sends us other
        // pieces, those it rejected may come from elsewhere.
        if self.inflight.is_empty()
            && self
                .rejected_at
                .is_some_and(|at| now.duration_since(at) >= REJECTED_RETRY)
        {
            self.rejected.clear();
            self.rejected_at = None;
            if !self.peer_choking {
                self.request_more(st, now);
            }
        }
        self.send_pex(now, st);
        Ok(())
    }

    /// The connection ended: its requests and offers go back to the
    /// torrent. (The torrent's own bookkeeping is `Shared::unregister`.)
    pub fn closed(&mut self, st: &mut State) {
        if let Some(init) = &mut self.initial {
            init.withdraw(st);
        }
        for b in std::mem::take(&mut self.inflight) {
            st.picker.release(self.key, b);
        }
        // What went to it is no longer in the swarm through it, got or not
        // (crate::spread): not counted, and not waited for. (A seed that
        // serves one downloader after another would otherwise turn the
        // next one away from every piece the last one took.)
        if let (Some(spread), Some(served)) = (&mut st.spread, &self.served) {
            for p in 0..served.len() {
                if served.get(p) {
                    spread.unsent(p as u32);
                }
            }
        }
    }

    fn count_lacking(&self, st: &State) -> usize {
        let ours = st.picker.have();
        (0..self.bitfield.len())
            .filter(|&i| self.bitfield.get(i) && !ours.get(i))
            .count()
    }

    fn forgive(&mut self, blocks: impl IntoIterator<Item = BlockRef>) {
        for b in blocks {
            if self.forgiven.len() >= MAX_FORGIVEN {
                self.forgiven.clear();
            }
            let n = self.forgiven.entry(b).or_insert(0);
            *n = n.saturating_add(1);
        }
    }

    /// Takes one late answer for `b` off its forgiven count; false if none
    /// was left (the answer is then to nothing we asked).
    fn unforgive(&mut self, b: BlockRef) -> bool {
        match self.forgiven.get_mut(&b) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                self.forgiven.remove(&b);
            }
            None => return false,
        }
        true
    }

    fn release_all(&mut self, st: &mut State) {
        self.pace.forget_all();
        let blocks = std::mem::take(&mut self.inflight);
        if blocks.is_empty() {
            return;
        }
        for b in &blocks {
            st.picker.release(self.key, *b);
        }
        st.poke_all();
        self.forgive(blocks);
    }

    /// Says `interested` / `not interested` when that changed.
    fn update_interest(&mut self, st: &mut State) {
        let want = self.lacking > 0;
        if want != self.am_interested {
            self.am_interested = want;
            st.set_wanted(self.key, want);
            self.send(if want {
                &Message::Interested
            } else {
                &Message::NotInterested
            });
        }
    }

    /// Its rate since the first block after it last unchoked us (or had
    /// answered all our requests, or was snubbed), once that spans
    /// [`EARLY_SPAN`] and four blocks. Until the session's meter (updated
    /// each second) has a sample, [`crate::session::QUEUE_START`] requests
    /// would otherwise be all a fast peer is asked for: on loopback that is
    /// one to two seconds at a quarter of its speed, most of a 1 GiB
    /// download (`bench/download.sh`).
    fn early_rate(&self, now: Instant) -> Option<u64> {
        let (since, bytes) = self.early?;
        let span = now.saturating_duration_since(since);
        (span >= EARLY_SPAN && bytes >= 4 * u64::from(BLOCK))
            .then(|| (bytes as u128 * 1000 / span.as_millis()) as u64)
    }

    /// How many requests it should have ([`crate::pace`]).
    fn queue_depth(&self, st: &State, now: Instant) -> usize {
        st.queue_depth(
            self.key,
            self.pace.queue_rate(),
            self.early_rate(now),
            self.pace.queue_time(),
        )
    }

    /// Tops up the request pipeline: anything it has while it unchokes
    /// us, only its allowed-fast pieces while it chokes us.
    fn request_more(&mut self, st: &mut State, now: Instant) {
        if !self.am_interested {
            return;
        }
        let only_fast = self.peer_choking;
        if only_fast && (!self.fast || self.allowed_in.is_empty()) {
            return;
        }
        let depth = if self.snubbed {
            1
        } else {
            self.queue_depth(st, now)
        }
        .min(self.peer_reqq);
        let room = depth.saturating_sub(self.inflight.len());
        // Ask in batches, not one block per block received.
        if room == 0 || (room < depth / 4 && !self.inflight.is_empty()) {
            return;
        }
        // Only its allowed-fast pieces while it chokes us, and never one
        // it rejected: a predicate, not a bitfield built per call.
        let (bitfield, rejected, allowed) = (&self.bitfield, &self.rejected, &self.allowed_in);
        let has = |i: usize| {
            bitfield.get(i)
                && (rejected.is_empty() || !rejected.contains(&(i as u32)))
                && (!only_fast || allowed.contains(&(i as u32)))
        };
        let st = &mut *st;
        // Pieces already started first, then suggested pieces (not while
        // it chokes us: then only its allowed-fast pieces may be asked
        // for), then the rarest.
        let mut blocks = st.picker.pick_started(self.key, has, room);
        if !only_fast {
            while let Some(&piece) = self.suggested.front() {
                if blocks.len() >= room {
                    break;
                }
                self.suggested.pop_front();
                if has(piece as usize) {
                    blocks.extend(st.picker.pick_piece(self.key, piece, room - blocks.len()));
                }
            }
        }
        if blocks.len() < room {
            blocks.extend(
                st.picker
                    .pick_new(self.key, has, room - blocks.len(), &mut st.rng),
            );
        }
        if self.inflight.is_empty() && !blocks.is_empty() {
            // The snub clock starts with the first request, not with the
            // last block (which may be long ago if it kept us choked).
            self.last_block = now;
        }
        let forgiven = &self.forgiven;
        self.pace
            .requested(&blocks, now, |b| !forgiven.contains_key(b));
        for b in blocks {
            tracing::debug!(target: "shoal::blocks", peer = %self.ident.addr, piece = b.index, off = b.offset, "req");
            self.inflight.push(b);
            self.send(&Message::Request(b));
        }
    }

    fn peer_got(&mut self, st: &mut State) {
        let pieces = self.bitfield.count();
        let seed = pieces == self.bitfield.len();
        if let Some(p) = st.peers.get_mut(&self.key) {
            p.pieces = pieces;
            p.seed = seed;
        }
    }

    /// Initial seeding: tell the other connections that `piece` spread.
    fn announce_spread(&self, st: &State, piece: u32) {
        if !(st.initial_seeding && st.is_complete()) {
            return;
        }
        for (&k, p) in &st.peers {
            if k != self.key {
                let _ = p.tx.send(Cmd::Spread(piece));
            }
        }
    }

    /// The peer announced a piece.
    fn have(&mut self, piece: u32, now: Instant, st: &mut State) -> Result<(), Close> {
        tracing::debug!(target: "shoal::blocks", peer = %self.ident.addr, piece, "have");
        if self.bitfield.get(piece as usize) {
            // Already known (e.g. after 'have all'): nothing changes.
            return Ok(());
        }
        let wanted = self.add_piece(piece, now, st)?;
        self.after_news(wanted, now, st)
    }

    /// Takes note that the peer has `piece` (new to us); true if we lack it.
    fn add_piece(&mut self, piece: u32, now: Instant, st: &mut State) -> Result<bool, Close> {
        if piece as usize >= self.bitfield.len() {
            return Err(Violation::HaveOutOfRange(piece).into());
        }
        self.bitfield.set(piece as usize);
        st.picker.peer_has(piece);
        let wanted = !st.picker.have().get(piece as usize);
        if wanted {
            self.lacking += 1;
        }
        if let Some(init) = &mut self.initial {
            init.peer_has(
                &mut initial::Ctx {
                    st,
                    has: &self.bitfield,
                    out: &mut self.out,
                    now,
                },
                piece,
            );
        }
        self.announce_spread(st, piece);
        Ok(wanted)
    }

    /// What follows from new pieces of the peer's, once for a batch of
    /// them: only pieces we lack can change our interest or our requests
    /// (a 'have' of a piece we have must not cost a picker pass).
    fn after_news(&mut self, wanted: bool, now: Instant, st: &mut State) -> Result<(), Close> {
        self.peer_got(st);
        if st.is_complete() && self.bitfield.is_complete() {
            return Err(Close::BothSeeds);
        }
        if wanted {
            self.update_interest(st);
            self.request_more(st, now);
        }
        Ok(())
    }

    fn set_bitfield(&mut self, bits: Bitfield, now: Instant, st: &mut State) -> Result<(), Close> {
        self.got_bitfield = true;
        st.picker.add_peer(&bits);
        self.bitfield = bits;
        self.lacking = self.count_lacking(st);
        self.peer_got(st);
        if st.is_complete() && self.bitfield.is_complete() {
            return Err(Close::BothSeeds);
        }
        self.update_interest(st);
        if st.initial_seeding && st.is_complete() {
            // One message per connection, whatever the piece count.
            let bits = Arc::new(self.bitfield.clone());
            for (&k, p) in &st.peers {
                if k != self.key {
                    let _ = p.tx.send(Cmd::SpreadAll(bits.clone()));
                }
            }
            // Offered pieces it turns out to have are replaced.
            if let Some(init) = &mut self.initial {
                init.spread_all(
                    &mut initial::Ctx {
                        st,
                        has: &self.bitfield,
                        out: &mut self.out,
                        now,
                    },
                    &bits,
                );
            }
        }
        // Allowed-fast pieces may be requested before any unchoke.
        if self.peer_choking {
            self.request_more(st, now);
        }
        Ok(())
    }

    /// A request we will not serve: rejected with the fast extension;
    /// without it, `otherwise` ends the connection (None: dropped, which
    /// BEP 3 allows only while we choke the peer).
    fn refuse(&mut self, b: BlockRef, otherwise: Option<Violation>) -> Result<(), Close> {
        if self.fast {
            self.send(&Message::RejectRequest(b));
            return Ok(());
        }
        match otherwise {
            Some(v) => Err(v.into()),
            None => Ok(()),
        }
    }

    fn requested(&mut self, b: BlockRef, now: Instant, st: &mut State) -> Result<(), Close> {
        let info = &self.info;
        if b.index as usize >= info.piece_count()
            || b.length == 0
            || b.length > MAX_BLOCK
            || u64::from(b.offset) + u64::from(b.length) > info.piece_size(b.index as usize)
        {
            return Err(Violation::RequestOutOfRange(b).into());
        }
        let offered = match &self.initial {
            // Only what we offered; anything else it cannot know we have.
            Some(init) => init.allows(b.index),
            None => st.have.get(b.index as usize),
        };
        if !offered {
            return self.refuse(b, Some(Violation::RequestUnavailable(b.index)));
        }
        // The rest of a piece granted at our choke, never more.
        let granted = self.granted.contains(&b.index)
            && self.begun.iter().any(|&(p, asked)| {
                p == b.index && asked + u64::from(b.length) <= info.piece_size(p as usize)
            });
        if self.am_choking && !(self.fast && (self.allowed_out.contains(&b.index) || granted)) {
            // Without the fast extension a request while choked is simply
            // dropped (it may have crossed our choke on the wire). (The
            // pieces it had begun were granted or given back at the choke.)
            return self.refuse(b, None);
        }
        if self.uploads.lock().len() >= MAX_UPLOAD_QUEUE {
            return self.refuse(b, Some(Violation::TooManyRequests));
        }
        if let Some(instead) = self.turn_away(b.index, now, st) {
            if let Some(q) = instead.filter(|&q| self.last_suggest != Some(q)) {
                self.last_suggest = Some(q);
                self.suggested_at = Some(now);
                self.send(&Message::SuggestPiece(q));
            }
            self.send(&Message::RejectRequest(b));
            return Ok(());
        }
        let mut q = self.uploads.lock();
        q.push_back(b);
        drop(q);
        self.counters.asked.fetch_add(1, Ordering::Relaxed);
        self.uploads.ready.notify_one();
        self.begin(b);
        if let Some(init) = &mut self.initial {
            init.requested(b.index, u64::from(b.length));
        }
        Ok(())
    }

    /// Plain seeding ([`crate::spread`]): whether to turn a request for
    /// `piece` away — `Some` with the piece to suggest instead, if any —
    /// because `piece` went to more peers than another piece this peer
    /// lacks, or because it went out before while the first copy of some
    /// piece is still on its way (nobody announced it yet): a second copy
    /// would take link from it, and the peer can have `piece` from the
    /// peers that got it. `None`: serve it, and count the peer for `piece`
    /// once.
    fn turn_away(&mut self, piece: u32, now: Instant, st: &mut State) -> Option<Option<u32>> {
        if self.initial.is_some() || !st.is_complete() {
            return None;
        }
        let pieces = self.info.piece_count();
        let served = self.served.get_or_insert_with(|| Bitfield::new(pieces));
        if served.get(piece as usize) {
            return None;
        }
        let st = &mut *st;
        let spread = st
            .spread
            .get_or_insert_with(|| Spread::new(pieces, &mut st.rng));
        let blocks = self
            .info
            .piece_size(piece as usize)
            .div_ceil(u64::from(BLOCK));
        // A peer is turned away from a piece for TURN_AWAY_FOR at most, and
        // at most TURN_AWAY_ROUNDS times per block (a client that asks
        // again at once would otherwise ping-pong with us that long).
        if self.redirected.len() >= MAX_REDIRECTED {
            self.redirected
                .retain(|_, (_, since)| now.duration_since(*since) < TURN_AWAY_FOR);
        }
        let (turned, since) = self.redirected.get(&piece).copied().unwrap_or((0, now));
        let may_turn = self.fast
            && u64::from(turned) < blocks * TURN_AWAY_ROUNDS
            && now.duration_since(since) < TURN_AWAY_FOR
            && (turned > 0 || self.redirected.len() < MAX_REDIRECTED);
        if may_turn {
            // A second after our suggestion it asks for yet another piece,
            // not the one we suggested (requests already on their way when
            // it got the suggestion do not count).
            if self.last_turned.is_some_and(|t| t != piece)
                && self
                    .last_suggest
                    .is_some_and(|q| q != piece && !served.get(q as usize))
                && self
                    .suggested_at
                    .is_some_and(|at| now.duration_since(at) >= Duration::from_secs(1))
            {
                self.declined = self.declined.saturating_add(1);
                if let Some(q) = self.last_suggest.take() {
                    if self.passed_over.len() < usize::from(MAX_DECLINED) {
                        self.passed_over.push(q);
                    }
                }
            }
            let (has, ours, mine) = (&self.bitfield, &st.have, &*served);
            let lacks =
                |p: u32| !has.get(p as usize) && ours.get(p as usize) && !mine.get(p as usize);
            // (While we choke it, it may ask only for its allowed-fast
            // pieces: a suggestion would be of no use.)
            let instead = if self.declined >= MAX_DECLINED || self.am_choking {
                None
            } else {
                // The piece suggested last, while it still qualifies: one
                // suggestion for all the blocks of a piece turned away.
                let again = self
                    .last_suggest
                    .filter(|&q| lacks(q) && spread.copies(q) < spread.copies(piece));
                again.or_else(|| spread.less_sent(piece, lacks, &mut st.rng))
            };
            // A second copy of `piece` would take link from first copies
            // still on their way (this one among them, or others) — for a
            // while: a receiver may be slow or silent. Once every piece
            // went out, only a second copy of a piece whose first has not
            // arrived yet waits (its receiver will soon pass it on); a
            // copy of one that arrived adds to what the swarm can share.
            let arrived = |p: u32| st.picker.availability(p) > 0;
            let second = spread.copies(piece) > 0
                && ((!arrived(piece) && spread.first_copy_recent(piece, now))
                    || (spread.any_unsent() && spread.first_copy_on_its_way(arrived, now)));
            if instead.is_some() || second {
                tracing::debug!(target: "shoal::spread", peer = %self.ident.addr, piece, copies = spread.copies(piece), ?instead, second, declined = self.declined, turned, "turn away");
                let e = self.redirected.entry(piece).or_insert((0, now));
                e.0 = e.0.saturating_add(1);
                self.last_turned = Some(piece);
                return Some(instead);
            }
        }
        served.set(piece as usize);
        if self.passed_over.contains(&piece) {
            self.passed_over.clear();
            self.declined = 0;
        }
        tracing::debug!(target: "shoal::spread", peer = %self.ident.addr, piece, copies = spread.copies(piece), may_turn, declined = self.declined, turned, "serve");
        spread.sent(piece, now);
        None
    }

    /// A request of `b` was queued: its piece is begun until asked whole
    /// ([`Connection::begun`]).
    fn begin(&mut self, b: BlockRef) {
        let size = self.info.piece_size(b.index as usize);
        let len = u64::from(b.length);
        match self.begun.iter().position(|&(p, _)| p == b.index) {
            Some(i) => {
                self.begun[i].1 += len;
                if self.begun[i].1 >= size {
                    self.begun.remove(i);
                    self.granted.retain(|&p| p != b.index);
                }
            }
            None if len < size => {
                // Full: the oldest that is not granted makes room (a peer
                // with so many pieces begun is odd; a piece forgotten so is
                // not granted at a choke, and may hold other askers back
                // for spread::FIRST_COPY_WAIT); with every one granted,
                // this piece is not remembered.
                let granted = &self.granted;
                if self.begun.len() >= MAX_BEGUN {
                    match self.begun.iter().position(|(p, _)| !granted.contains(p)) {
                        Some(i) => {
                            self.begun.remove(i);
                        }
                        None => return,
                    }
                }
                self.begun.push((b.index, len));
            }
            None => {}
        }
    }

    /// A queued request of `b` was cancelled: not asked after all.
    fn unbegin(&mut self, b: BlockRef) {
        if let Some(i) = self.begun.iter().position(|&(p, _)| p == b.index) {
            let e = &mut self.begun[i];
            e.1 = e.1.saturating_sub(u64::from(b.length));
            if e.1 == 0 {
                self.begun.remove(i);
                self.granted.retain(|&p| p != b.index);
            }
        }
    }

    fn rejected(&mut self, b: BlockRef, now: Instant, st: &mut State) -> Result<(), Close> {
        tracing::debug!(target: "shoal::blocks", peer = %self.ident.addr, piece = b.index, off = b.offset, "rej");
        if let Some(i) = self.inflight.iter().position(|x| *x == b) {
            self.inflight.swap_remove(i);
            self.pace.forget(b);
            st.picker.release(self.key, b);
            // Others may take it; this peer is not asked for that piece
            // again until it unchokes us anew or REJECTED_RETRY passed
            // (else a peer that rejects everything gets the same requests
            // back at network speed).
            self.rejected.insert(b.index);
            self.rejected_at.get_or_insert(now);
            st.poke_all();
            self.forgive([b]);
            if !self.peer_choking {
                self.request_more(st, now);
            }
            Ok(())
        } else if self.unforgive(b) {
            Ok(())
        } else {
            Err(Violation::UnrequestedReject(b).into())
        }
    }

    fn piece(
        &mut self,
        index: u32,
        offset: u32,
        data: Vec<u8>,
        now: Instant,
        st: &mut State,
    ) -> Result<Option<Write>, Close> {
        let b = BlockRef {
            index,
            offset,
            length: data.len() as u32,
        };
        if let Some(i) = self.inflight.iter().position(|x| *x == b) {
            self.inflight.swap_remove(i);
        } else if self.unforgive(b) {
            return Ok(None);
        } else {
            return Err(Violation::Unrequested(b).into());
        }
        self.pace.received(b, now);
        let len = u64::from(b.length);
        tracing::debug!(target: "shoal::blocks", peer = %self.ident.addr, piece = b.index, off = b.offset, "got");
        self.last_block = now;
        self.snubbed = false;
        // A peer that delivered all we asked was waiting for us, not
        // sending: its early rate starts again with our next requests.
        match &mut self.early {
            _ if self.inflight.is_empty() => self.early = None,
            Some((_, bytes)) => *bytes += len,
            None => self.early = Some((now, 0)),
        }
        self.counters.down.fetch_add(len, Ordering::Relaxed);
        self.totals.down.fetch_add(len, Ordering::Relaxed);
        let (cancel, last) = match st.picker.received(self.key, b) {
            Received::Unexpected => {
                self.request_more(st, now);
                return Ok(None);
            }
            Received::Block { cancel } => (cancel, false),
            Received::PieceDone { cancel } => (cancel, true),
        };
        for k in cancel {
            if let Some(p) = st.peers.get(&k) {
                let _ = p.tx.send(Cmd::Cancel(b));
            }
        }
        let size = self.info.piece_size(index as usize);
        st.smart.record(index, offset, size, self.ident);
        let digests = last && st.smart.wants_digests(index);
        let nothing_pending = last && st.picker.all_received();
        self.request_more(st, now);
        Ok(Some(Write {
            piece: index,
            offset,
            data,
            last,
            digests,
            nothing_pending,
        }))
    }
}

#[cfg(test)]
mod tests;
