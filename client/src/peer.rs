//! One peer connection: a reader task that owns the protocol state and a
//! writer task that owns the socket's sending half (so a peer that does not
//! read can never stop us from reading, and the other way round).
//!
//! The reader decodes messages with [`crate::wire`], keeps the peer's
//! bitfield and our outstanding requests, and talks to the session state.
//! The writer sends what the reader encodes and the blocks the peer asked
//! for, read from disk in small batches on the blocking pool.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::picker::{PeerKey, Received};
use crate::session::{Cmd, Ident, Offer, PeerCounters, Shared, State};
use crate::wire::{Bitfield, BlockRef, Features, Handshake, Message, HANDSHAKE_LEN, MAX_BLOCK};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Close a connection that sent nothing (not even a keep-alive) this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(150);
/// Close a connection whose peer has not taken our data for this long.
const WRITE_STALL: Duration = Duration::from_secs(60);
/// Commands handled in one go before reading the socket again.
const COMMAND_BATCH: usize = 256;
/// Send a keep-alive after this long without sending anything.
const KEEP_ALIVE: Duration = Duration::from_secs(90);
/// Most requests from a peer queued for upload.
const MAX_UPLOAD_QUEUE: usize = 500;
/// Blocks read from disk per batch when uploading.
const UPLOAD_BATCH: usize = 16;
/// Blocks cancelled or given up on, whose late arrival is forgiven.
const MAX_FORGIVEN: usize = 2048;
/// Initial seeding: pieces offered to a peer at once.
const INITIAL_OFFERS: usize = 2;
/// Initial seeding: a peer that took all its offered pieces waits this
/// long for one of them to spread before it is offered a piece nobody has
/// been offered...
const SPREAD_WAIT: Duration = Duration::from_secs(2);
/// ... and this long before it is offered any piece it lacks.
const STUCK_WAIT: Duration = Duration::from_secs(10);
/// Initial seeding: most offers outstanding to one peer.
const MAX_PENDING: usize = 4;

/// Initial seeding (BEP 16), per peer: we never send our bitfield; the
/// peer is offered a piece with `have`, and a new one when another peer
/// announces one of its pieces (it spread), so the seed uploads each piece
/// about once and the peers trade the rest among themselves.
#[derive(Default)]
struct Initial {
    /// Offered and not yet seen spreading.
    pending: Vec<u32>,
    /// Every piece the peer may request from us.
    allowed: HashSet<u32>,
    /// Bytes requested of each pending piece.
    requested: std::collections::HashMap<u32, u64>,
    /// Since when every pending piece has been requested in full.
    waiting_since: Option<Instant>,
    /// When it was last offered a piece.
    last_offer: Option<Instant>,
}

/// Dials `addr`; false when no BitTorrent connection came of it.
pub(crate) async fn connect(shared: Arc<Shared>, addr: SocketAddr) -> bool {
    let stream = tokio::select! {
        () = shared.cancel.cancelled() => return true,
        r = tokio::time::timeout(CONNECT_TIMEOUT, dial(addr, shared.config.bind)) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!("{addr}: connect: {e}");
                return false;
            }
            Err(_) => {
                tracing::debug!("{addr}: connect: timed out");
                return false;
            }
        },
    };
    run(shared, stream, addr, true, None).await
}

/// Connects from `bind` when given (so a peer sees the address we announce).
async fn dial(addr: SocketAddr, bind: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let Some(ip) = bind.filter(|ip| ip.is_ipv4() == addr.is_ipv4()) else {
        return TcpStream::connect(addr).await;
    };
    let socket = if ip.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(addr).await
}

/// Runs a connection to its end. Returns false if the handshake failed.
pub(crate) async fn run(
    shared: Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
    outgoing: bool,
    handshaking: Option<tokio::sync::OwnedSemaphorePermit>,
) -> bool {
    let _ = stream.set_nodelay(true);
    let cancel = shared.cancel.child_token();
    let (rd, wr, buf, peer_id) = match tokio::select! {
        () = cancel.cancelled() => return true,
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&shared, stream, outgoing)) => r,
    } {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            tracing::debug!("{addr}: handshake: {e}");
            return false;
        }
        Err(_) => {
            tracing::debug!("{addr}: handshake: timed out");
            return false;
        }
    };
    drop(handshaking);
    let (tx, cmds) = mpsc::unbounded_channel();
    let admitted = match shared.register(addr, peer_id, outgoing, tx) {
        Ok(x) => x,
        Err(why) => {
            tracing::debug!("{addr}: not admitted: {why}");
            // A duplicate is marked connected by `register`; any other
            // refusal (banned, full) backs off like a failed dial.
            return why == crate::session::DUPLICATE;
        }
    };
    let (key, counters) = (admitted.key, admitted.counters.clone());
    tracing::debug!("{addr}: connected ({})", client_name(&peer_id));
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let uploads = Arc::new(UploadQueue::default());
    let writer = {
        let shared = shared.clone();
        let uploads = uploads.clone();
        let counters = counters.clone();
        let cancel = cancel.clone();
        shared.tasks.clone().spawn(async move {
            // Dropped at once when the connection closes: a peer that stops
            // reading must not hold up shutdown (a write to it can block
            // for as long as its window stays shut).
            tokio::select! {
                r = write_loop(&shared, wr, out_rx, &uploads, &counters) => {
                    if let Err(e) = r {
                        tracing::debug!("{addr}: sending: {e}");
                    }
                }
                () = cancel.cancelled() => {}
            }
            cancel.cancel();
        })
    };
    let mut conn = Conn {
        shared: shared.clone(),
        key,
        addr,
        ident: Ident { peer_id, addr },
        bitfield: Bitfield::new(shared.info.piece_count()),
        got_bitfield: false,
        peer_choking: true,
        am_interested: false,
        am_choking: true,
        inflight: Vec::new(),
        forgiven: HashSet::new(),
        last_block: Instant::now(),
        last_recv: Instant::now(),
        snubbed: false,
        out: Vec::new(),
        out_tx,
        uploads,
        counters,
        poked: admitted.poked.clone(),
        lacking: 0,
        initial: admitted.initial_seeding.then(Initial::default),
    };
    if conn.initial.is_some() {
        // Initial seeding: no bitfield, a first few pieces offered instead.
        let shared = Arc::clone(&shared);
        let mut st = shared.lock();
        for _ in 0..INITIAL_OFFERS {
            conn.offer(&mut st);
        }
    } else if admitted.have.count() > 0 {
        // Our pieces first (a bitfield only when there is something in it).
        Message::Bitfield(admitted.have.as_bytes().to_vec()).encode(&mut conn.out);
    }
    let why = conn.run(rd, buf, cmds, &cancel).await;
    tracing::debug!("{addr}: disconnected: {why}");
    cancel.cancel();
    conn.withdraw_offers();
    drop(conn.out_tx);
    shared.unregister(key, &conn.bitfield);
    let _ = writer.await;
    true
}

async fn handshake(
    shared: &Shared,
    mut stream: TcpStream,
    outgoing: bool,
) -> Result<(OwnedReadHalf, OwnedWriteHalf, Vec<u8>, [u8; 20]), String> {
    let ours = Handshake {
        features: Features::default(),
        info_hash: shared.info_hash,
        peer_id: shared.peer_id,
    }
    .encode();
    if outgoing {
        stream.write_all(&ours).await.map_err(|e| e.to_string())?;
    }
    let mut buf = Vec::with_capacity(64 * 1024);
    let theirs = loop {
        if let Some(h) = Handshake::decode(&buf).map_err(|e| e.to_string())? {
            break h;
        }
        if stream.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed during the handshake".into());
        }
    };
    if theirs.info_hash != shared.info_hash {
        return Err("wrong info hash".into());
    }
    if !outgoing {
        stream.write_all(&ours).await.map_err(|e| e.to_string())?;
    }
    buf.drain(..HANDSHAKE_LEN);
    let (rd, wr) = stream.into_split();
    Ok((rd, wr, buf, theirs.peer_id))
}

/// A readable name for a peer id ("-TR3000-" → "TR 3000").
pub fn client_name(id: &[u8; 20]) -> String {
    if id[0] == b'-' && id[7] == b'-' && id[1..7].iter().all(u8::is_ascii_alphanumeric) {
        format!(
            "{} {}",
            String::from_utf8_lossy(&id[1..3]),
            String::from_utf8_lossy(&id[3..7])
        )
    } else {
        "unknown client".into()
    }
}

/// Blocks a peer asked for, waiting to be read and sent.
#[derive(Default)]
struct UploadQueue {
    queue: Mutex<VecDeque<BlockRef>>,
    ready: Notify,
}

impl UploadQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<BlockRef>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn push(&self, b: BlockRef) -> bool {
        let mut q = self.lock();
        if q.len() >= MAX_UPLOAD_QUEUE || q.contains(&b) {
            return false;
        }
        q.push_back(b);
        drop(q);
        self.ready.notify_one();
        true
    }
    fn remove(&self, b: &BlockRef) {
        self.lock().retain(|x| x != b);
    }
    fn clear(&self) {
        self.lock().clear();
    }
    fn take(&self, n: usize) -> Vec<BlockRef> {
        let mut q = self.lock();
        let n = n.min(q.len());
        q.drain(..n).collect()
    }
}

async fn write_loop(
    shared: &Shared,
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    uploads: &UploadQueue,
    counters: &PeerCounters,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if buf.is_empty() && uploads.lock().is_empty() {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(b) => buf.extend_from_slice(&b),
                    None => return Ok(()),
                },
                () = uploads.ready.notified() => {}
                () = tokio::time::sleep(KEEP_ALIVE) => Message::KeepAlive.encode(&mut buf),
            }
        }
        while let Ok(b) = rx.try_recv() {
            buf.extend_from_slice(&b);
        }
        let blocks = uploads.take(UPLOAD_BATCH);
        if !blocks.is_empty() {
            let bytes: u64 = blocks.iter().map(|b| u64::from(b.length)).sum();
            shared.up_limit.acquire(bytes).await;
            buf = shared
                .disk
                .read_blocks(blocks, buf)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            counters.up.fetch_add(bytes, Ordering::Relaxed);
            shared.uploaded.fetch_add(bytes, Ordering::Relaxed);
        }
        if !buf.is_empty() {
            tokio::time::timeout(WRITE_STALL, wr.write_all(&buf))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "peer stopped reading")
                })??;
            buf.clear();
            if buf.capacity() > 1 << 20 {
                buf = Vec::new();
            }
        }
    }
}

struct Conn {
    shared: Arc<Shared>,
    key: PeerKey,
    addr: SocketAddr,
    ident: Ident,
    /// What the peer has.
    bitfield: Bitfield,
    got_bitfield: bool,
    peer_choking: bool,
    am_interested: bool,
    am_choking: bool,
    /// Requests sent and not yet answered.
    inflight: Vec<BlockRef>,
    /// Blocks cancelled or given up on: forgiven if they still arrive.
    forgiven: HashSet<BlockRef>,
    last_block: Instant,
    last_recv: Instant,
    snubbed: bool,
    /// Encoded messages to hand to the writer.
    out: Vec<u8>,
    out_tx: mpsc::UnboundedSender<Vec<u8>>,
    uploads: Arc<UploadQueue>,
    counters: Arc<PeerCounters>,
    poked: Arc<std::sync::atomic::AtomicBool>,
    /// How many of its pieces we lack (we are interested while > 0).
    lacking: usize,
    initial: Option<Initial>,
}

type Why = std::borrow::Cow<'static, str>;

impl Conn {
    async fn run(
        &mut self,
        mut rd: OwnedReadHalf,
        mut buf: Vec<u8>,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
        cancel: &CancellationToken,
    ) -> Why {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            // Everything complete in the buffer first.
            let mut at = 0;
            loop {
                match Message::decode(&buf[at..]) {
                    Ok(Some((m, used))) => {
                        at += used;
                        if let Err(why) = self.handle(m).await {
                            return why;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return format!("protocol error: {e}").into(),
                }
            }
            buf.drain(..at);
            self.flush();
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            tokio::select! {
                () = cancel.cancelled() => return "closed".into(),
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return "session ended".into() };
                    if let Err(why) = self.command(cmd) {
                        return why;
                    }
                    // Take more of what is queued in one go, within reason.
                    for _ in 0..COMMAND_BATCH {
                        let Ok(cmd) = cmds.try_recv() else { break };
                        if let Err(why) = self.command(cmd) {
                            return why;
                        }
                    }
                }
                r = rd.read_buf(&mut buf) => match r {
                    Ok(0) => return "the peer closed the connection".into(),
                    Ok(n) => {
                        self.last_recv = Instant::now();
                        self.shared.down_limit.acquire(n as u64).await;
                    }
                    Err(e) => return format!("receiving: {e}").into(),
                },
                _ = tick.tick() => {
                    if let Err(why) = self.tick() {
                        return why;
                    }
                }
            }
        }
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            let _ = self.out_tx.send(std::mem::take(&mut self.out));
        }
    }

    fn send(&mut self, m: &Message) {
        m.encode(&mut self.out);
    }

    fn tick(&mut self) -> Result<(), Why> {
        let now = Instant::now();
        if now.duration_since(self.last_recv) > IDLE_TIMEOUT {
            return Err("idle too long".into());
        }
        if !self.inflight.is_empty()
            && !self.snubbed
            && now.duration_since(self.last_block) > self.shared.config.snub_after
        {
            // Snubbed: its requests go back to the pool for others.
            tracing::debug!(
                "{}: snubbed, releasing {} requests",
                self.addr,
                self.inflight.len()
            );
            self.snubbed = true;
            self.release_all();
        }
        self.initial_tick(now);
        Ok(())
    }

    /// Offers the peer one more piece (initial seeding).
    fn offer(&mut self, st: &mut State) -> bool {
        self.offer_at_most(st, Offer::Fresh)
    }

    /// Offers a piece whose score (peers that have it + offers) is at most
    /// `max`; false when there is none.
    fn offer_at_most(&mut self, st: &mut State, which: Offer) -> bool {
        let Some(init) = &mut self.initial else {
            return false;
        };
        let Some(piece) = st.piece_to_offer(&self.bitfield, &init.allowed, which) else {
            return false;
        };
        {
            init.pending.push(piece);
            init.allowed.insert(piece);
            init.waiting_since = None;
            init.last_offer = Some(Instant::now());
            Message::Have(piece).encode(&mut self.out);
        }
        true
    }

    /// A piece offered to this peer is elsewhere now (or it had it): offer
    /// another.
    fn spread(&mut self, piece: u32) {
        let Some(init) = &mut self.initial else {
            return;
        };
        let Some(i) = init.pending.iter().position(|&p| p == piece) else {
            return;
        };
        init.pending.remove(i);
        init.requested.remove(&piece);
        let shared = Arc::clone(&self.shared);
        let mut st = shared.lock();
        self.offer(&mut st);
    }

    fn initial_tick(&mut self, now: Instant) {
        let Some(init) = &mut self.initial else {
            return;
        };
        let info = &self.shared.info;
        let all_taken = init
            .pending
            .iter()
            .all(|&p| init.requested.get(&p).copied().unwrap_or(0) >= info.piece_size(p as usize))
            // ... and sent: nothing left in its upload queue.
            && self.uploads.lock().is_empty();
        if !all_taken {
            init.waiting_since = None;
            // It leaves an offer untouched (it may not want that file):
            // after a long while, offer something else beside it.
            if now.duration_since(init.last_offer.unwrap_or(now)) < STUCK_WAIT {
                return;
            }
            let shared = Arc::clone(&self.shared);
            let mut st = shared.lock();
            if self.offer_at_most(&mut st, Offer::Unavailable) {
                self.prune_offers(&mut st);
            }
            return;
        }
        // It took everything offered (or nothing was left to offer) and
        // none of it spread yet. After a while offer a piece nobody has
        // been given; after a long while (the others may be gone), any. A
        // peer alone with us has nobody to spread to: it gets a few pieces
        // at once, without waiting.
        let waited = now.duration_since(*init.waiting_since.get_or_insert(now));
        let shared = Arc::clone(&self.shared);
        let mut st = shared.lock();
        let alone = st.peers.len() <= 1;
        if waited < SPREAD_WAIT && !alone {
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
            if !self.offer_at_most(&mut st, which) {
                break;
            }
            self.prune_offers(&mut st);
        }
    }

    /// Keeps at most MAX_PENDING offers, dropping the oldest; an offer
    /// dropped untaken no longer counts.
    fn prune_offers(&mut self, st: &mut State) {
        let Some(init) = &mut self.initial else {
            return;
        };
        while init.pending.len() > MAX_PENDING {
            let oldest = init.pending.remove(0);
            let taken = init.requested.remove(&oldest).unwrap_or(0);
            if taken < self.shared.info.piece_size(oldest as usize) {
                st.offers[oldest as usize] = st.offers[oldest as usize].saturating_sub(1);
            }
        }
    }

    /// Initial seeding: offers this peer will not take after all count no
    /// more.
    fn withdraw_offers(&mut self) {
        let Some(init) = &self.initial else { return };
        let info = &self.shared.info;
        let shared = Arc::clone(&self.shared);
        let mut st = shared.lock();
        for &p in &init.pending {
            if init.requested.get(&p).copied().unwrap_or(0) < info.piece_size(p as usize) {
                st.offers[p as usize] = st.offers[p as usize].saturating_sub(1);
            }
        }
    }

    /// Initial seeding: tell the other connections that `pieces` spread.
    fn announce_spread(&self, st: &State, piece: u32) {
        if !(self.shared.config.initial_seeding && st.is_complete()) {
            return;
        }
        for (&k, p) in &st.peers {
            if k != self.key {
                let _ = p.tx.send(Cmd::Spread(piece));
            }
        }
    }

    /// Every offered piece another peer turned out to have spread.
    fn spread_all(&mut self, bits: &Bitfield) {
        let spread: Vec<u32> = match &self.initial {
            Some(init) => init
                .pending
                .iter()
                .copied()
                .filter(|&p| bits.get(p as usize))
                .collect(),
            None => return,
        };
        for p in spread {
            self.spread(p);
        }
    }

    fn release_all(&mut self) {
        let blocks = std::mem::take(&mut self.inflight);
        if blocks.is_empty() {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let mut st = shared.lock();
        for b in &blocks {
            st.picker.release(self.key, *b);
        }
        st.poke_all();
        drop(st);
        if self.forgiven.len() + blocks.len() > MAX_FORGIVEN {
            self.forgiven.clear();
        }
        self.forgiven.extend(blocks);
    }

    fn command(&mut self, cmd: Cmd) -> Result<(), Why> {
        match cmd {
            Cmd::Have(piece) => {
                // Even to a peer that has it: an initial seeder learns from
                // these who holds what (libtorrent and Transmission send
                // them too).
                self.send(&Message::Have(piece));
                let shared = Arc::clone(&self.shared);
                let mut st = shared.lock();
                if st.is_complete() && self.bitfield.is_complete() {
                    return Err("both sides are seeds".into());
                }
                if self.bitfield.get(piece as usize) {
                    self.lacking = self.lacking.saturating_sub(1);
                    if self.lacking == 0 {
                        // The count can drift when its 'have' and our
                        // verdict cross; a full count settles it.
                        let ours = st.picker.have();
                        self.lacking = (0..self.bitfield.len())
                            .filter(|&i| self.bitfield.get(i) && !ours.get(i))
                            .count();
                    }
                    self.update_interest(&mut st);
                }
            }
            Cmd::Choke => {
                if !self.am_choking {
                    self.am_choking = true;
                    self.uploads.clear();
                    self.send(&Message::Choke);
                }
            }
            Cmd::Unchoke => {
                if self.am_choking {
                    self.am_choking = false;
                    self.send(&Message::Unchoke);
                }
            }
            Cmd::Cancel(b) => {
                if let Some(i) = self.inflight.iter().position(|x| *x == b) {
                    self.inflight.swap_remove(i);
                    self.forgiven.insert(b);
                    self.send(&Message::Cancel(b));
                }
            }
            Cmd::Poke => {
                self.poked.store(false, Ordering::Relaxed);
                let shared = Arc::clone(&self.shared);
                let mut st = shared.lock();
                self.update_interest(&mut st);
                self.request_more(&mut st);
            }
            Cmd::Close(why) => return Err(why.into()),
            Cmd::Spread(piece) => self.spread(piece),
            Cmd::SpreadAll(bits) => self.spread_all(&bits),
        }
        Ok(())
    }

    /// Says `interested` / `not interested` when that changed.
    fn update_interest(&mut self, _st: &mut State) {
        let want = self.lacking > 0;
        if want != self.am_interested {
            self.am_interested = want;
            self.send(if want {
                &Message::Interested
            } else {
                &Message::NotInterested
            });
        }
    }

    /// Tops up the request pipeline.
    fn request_more(&mut self, st: &mut State) {
        if self.peer_choking || !self.am_interested {
            return;
        }
        let depth = if self.snubbed {
            1
        } else {
            st.queue_depth(self.key)
        };
        let room = depth.saturating_sub(self.inflight.len());
        // Ask in batches, not one block per block received.
        if room == 0 || (room < depth / 4 && !self.inflight.is_empty()) {
            return;
        }
        let st = &mut *st;
        let blocks = st.picker.pick(self.key, &self.bitfield, room, &mut st.rng);
        if self.inflight.is_empty() && !blocks.is_empty() {
            // The snub clock starts with the first request, not with the
            // last block (which may be long ago if it kept us choked).
            self.last_block = Instant::now();
        }
        for b in blocks {
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

    async fn handle(&mut self, m: Message) -> Result<(), Why> {
        match m {
            Message::KeepAlive => {}
            Message::Choke if self.peer_choking => {}
            Message::Choke => {
                self.peer_choking = true;
                // Without the fast extension, a choke drops our requests.
                self.release_all();
            }
            Message::Unchoke => {
                self.peer_choking = false;
                let shared = Arc::clone(&self.shared);
                let mut st = shared.lock();
                self.request_more(&mut st);
            }
            Message::Interested => self.shared.set_interested(self.key, true),
            Message::NotInterested => {
                self.shared.set_interested(self.key, false);
                self.uploads.clear();
            }
            Message::Have(piece) => self.have(piece)?,
            Message::Bitfield(bytes) => {
                let bits = Bitfield::from_bytes(&bytes, self.bitfield.len())
                    .map_err(|e| format!("bad bitfield: {e}"))?;
                if self.got_bitfield || self.bitfield.count() > 0 {
                    // BEP 3 allows it only first, but aria2 sends a whole
                    // bitfield later instead of several 'have's: take the
                    // new bits as 'have's.
                    let new: Vec<u32> = (0..bits.len())
                        .filter(|&i| bits.get(i) && !self.bitfield.get(i))
                        .map(|i| i as u32)
                        .collect();
                    for piece in new {
                        self.have(piece)?;
                    }
                } else {
                    self.set_bitfield(bits)?;
                }
            }
            Message::HaveAll | Message::HaveNone
                if self.got_bitfield || self.bitfield.count() > 0 =>
            {
                return Err("'have all'/'have none' after other messages".into());
            }
            Message::HaveAll => {
                // Only with the fast extension, which we do not offer; the
                // meaning is clear all the same.
                let mut all = Bitfield::new(self.bitfield.len());
                (0..all.len()).for_each(|i| {
                    all.set(i);
                });
                self.set_bitfield(all)?;
            }
            Message::HaveNone => self.got_bitfield = true,
            Message::Request(b) => self.requested(b)?,
            Message::Cancel(b) => self.uploads.remove(&b),
            Message::Piece {
                index,
                offset,
                data,
            } => self.piece(index, offset, data).await?,
            // Extensions we have not offered: ignored.
            Message::Port(_)
            | Message::SuggestPiece(_)
            | Message::RejectRequest(_)
            | Message::AllowedFast(_)
            | Message::Extended(..)
            | Message::Unknown(_) => {}
        }
        Ok(())
    }

    /// The peer announced a piece.
    fn have(&mut self, piece: u32) -> Result<(), Why> {
        if piece as usize >= self.bitfield.len() {
            return Err(format!("'have' for piece {piece}, which does not exist").into());
        }
        if self.bitfield.get(piece as usize) {
            return Ok(());
        }
        self.bitfield.set(piece as usize);
        let shared = Arc::clone(&self.shared);
        let mut st = shared.lock();
        st.picker.peer_has(piece);
        if !st.picker.have().get(piece as usize) {
            self.lacking += 1;
        }
        self.peer_got(&mut st);
        // Initial seeding: an offered piece it got elsewhere (it did not
        // ask us for all of it) makes room for another offer.
        let size = self.shared.info.piece_size(piece as usize);
        if let Some(init) = &mut self.initial {
            if let Some(i) = init.pending.iter().position(|&p| p == piece) {
                if init.requested.get(&piece).copied().unwrap_or(0) < size {
                    init.pending.remove(i);
                    init.requested.remove(&piece);
                    st.offers[piece as usize] = st.offers[piece as usize].saturating_sub(1);
                    self.offer(&mut st);
                }
            }
        }
        if st.is_complete() && self.bitfield.is_complete() {
            return Err("both sides are seeds".into());
        }
        self.announce_spread(&st, piece);
        if !self.am_interested && !st.picker.have().get(piece as usize) {
            self.am_interested = true;
            self.send(&Message::Interested);
        }
        self.request_more(&mut st);
        Ok(())
    }

    fn set_bitfield(&mut self, bits: Bitfield) -> Result<(), Why> {
        self.got_bitfield = true;
        let shared = Arc::clone(&self.shared);
        let mut st = shared.lock();
        st.picker.add_peer(&bits);
        let ours = st.picker.have();
        self.lacking = (0..bits.len())
            .filter(|&i| bits.get(i) && !ours.get(i))
            .count();
        self.bitfield = bits;
        self.peer_got(&mut st);
        if st.is_complete() && self.bitfield.is_complete() {
            return Err("both sides are seeds".into());
        }
        self.update_interest(&mut st);
        if self.shared.config.initial_seeding && st.is_complete() {
            // One message per connection, whatever the piece count.
            let bits = Arc::new(self.bitfield.clone());
            for (&k, p) in &st.peers {
                if k != self.key {
                    let _ = p.tx.send(Cmd::SpreadAll(bits.clone()));
                }
            }
            drop(st);
            // Offered pieces it turns out to have are replaced.
            self.spread_all(&bits);
        }
        Ok(())
    }

    fn requested(&mut self, b: BlockRef) -> Result<(), Why> {
        let info = &self.shared.info;
        if b.index as usize >= info.piece_count()
            || b.length == 0
            || b.length > MAX_BLOCK
            || u64::from(b.offset) + u64::from(b.length) > info.piece_size(b.index as usize)
        {
            return Err(format!(
                "asked for {} bytes at {} of piece {}, which is out of range",
                b.length, b.offset, b.index
            )
            .into());
        }
        if self.am_choking {
            // Without the fast extension a request while choked is simply
            // dropped (it may have crossed our choke on the wire).
            return Ok(());
        }
        if let Some(init) = &mut self.initial {
            // Only what we offered; anything else it cannot know we have.
            if !init.allowed.contains(&b.index) {
                return Ok(());
            }
            if self.uploads.push(b) {
                *init.requested.entry(b.index).or_default() += u64::from(b.length);
            }
            return Ok(());
        }
        if !self.shared.lock().have.get(b.index as usize) {
            return Err(format!("asked for piece {}, which we do not have", b.index).into());
        }
        self.uploads.push(b);
        Ok(())
    }

    async fn piece(&mut self, index: u32, offset: u32, data: Vec<u8>) -> Result<(), Why> {
        let b = BlockRef {
            index,
            offset,
            length: data.len() as u32,
        };
        let len = u64::from(b.length);
        if let Some(i) = self.inflight.iter().position(|x| *x == b) {
            self.inflight.swap_remove(i);
        } else if self.forgiven.remove(&b) {
            return Ok(());
        } else {
            return Err(format!(
                "sent {} bytes at {offset} of piece {index}, which we did not ask for",
                b.length
            )
            .into());
        }
        self.last_block = Instant::now();
        self.snubbed = false;
        self.counters.down.fetch_add(len, Ordering::Relaxed);
        self.shared.downloaded.fetch_add(len, Ordering::Relaxed);
        // Room in the write queue first, so blocks reach the disk threads
        // in the order the picker counted them (the last block of a piece
        // must come after the others).
        let permit = self.shared.disk.reserve(data.len()).await;
        let shared = Arc::clone(&self.shared);
        let mut st = shared.lock();
        let outcome = st.picker.received(self.key, b);
        let (cancel, last) = match outcome {
            Received::Unexpected => {
                self.request_more(&mut st);
                return Ok(());
            }
            Received::Block { cancel } => (cancel, false),
            Received::PieceDone { cancel } => (cancel, true),
        };
        for k in cancel {
            if let Some(p) = st.peers.get(&k) {
                let _ = p.tx.send(Cmd::Cancel(b));
            }
        }
        let blocks = st.block_from.entry(index).or_insert_with(|| {
            let n = self
                .shared
                .info
                .piece_size(index as usize)
                .div_ceil(u64::from(crate::wire::BLOCK));
            vec![None; n as usize]
        });
        if let Some(slot) = blocks.get_mut((offset / crate::wire::BLOCK) as usize) {
            *slot = Some(self.ident);
        }
        let digests = last && st.failed.contains_key(&index);
        self.shared
            .disk
            .queue(permit, index, offset, data, last, digests);
        self.request_more(&mut st);
        Ok(())
    }
}
