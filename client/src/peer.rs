//! The transport of one peer connection: the socket, the handshake, a
//! reader task and a writer task, timeouts and byte bounds. The protocol
//! itself is [`crate::protocol::Connection`], driven from here.
//!
//! - The reader (the connection's own task) reads and decodes messages,
//!   hands each to the state machine under the torrent's lock, and takes
//!   commands from the torrent and a one-second tick.
//! - The writer owns the socket's sending half: it sends what the state
//!   machine encoded (through an [`Outbox`] bounded in bytes) and the
//!   blocks the peer asked for, read from disk a few at a time, so a peer
//!   that does not read can never stop us from reading, and the other way
//!   round.
//!
//! Memory per connection is bounded: the read buffer (at most one message
//! of [`max_message`] of the torrent plus a read), the outbox
//! ([`MAX_OUTBOX`], or twice our bitfield for torrents of millions of
//! pieces; a peer that lets it fill is dropped), the upload queue (request records, see
//! [`crate::protocol::MAX_UPLOAD_QUEUE`]) and one batch of blocks.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};

use crate::engine::HANDSHAKE_TIMEOUT;
use crate::protocol::{Close, Connection, Setup, UploadQueue};
use crate::session::{Cmd, Ident, PeerCounters, Refused, Shared};
use crate::wire::{max_message, Features, Handshake, Message, HANDSHAKE_LEN};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Close a connection whose peer has not taken our data for this long.
const WRITE_STALL: Duration = Duration::from_secs(60);
/// Commands handled in one go before reading the socket again.
const COMMAND_BATCH: usize = 256;
/// Send a keep-alive after this long without sending anything.
const KEEP_ALIVE: Duration = Duration::from_secs(90);
/// Blocks read from disk per batch when uploading.
const UPLOAD_BATCH: usize = 16;
/// Most bytes of messages (not blocks) waiting for the writer. A bitfield
/// of a million pieces is 128 KiB; a peer that reads nothing while this
/// fills is dropped.
pub const MAX_OUTBOX: usize = 1 << 20;

/// What we set in our handshake.
pub const OUR_FEATURES: Features = Features {
    dht: false,
    fast: true,
    extended: true,
};

/// Encoded messages from the reader to the writer, bounded in bytes.
struct Outbox {
    buf: Mutex<Vec<u8>>,
    ready: Notify,
    max: usize,
}

impl Outbox {
    /// An outbox for a torrent whose largest message (its bitfield) is
    /// `max_message` bytes.
    fn new(max_message: usize) -> Outbox {
        Outbox {
            buf: Mutex::new(Vec::new()),
            ready: Notify::new(),
            max: MAX_OUTBOX.max(2 * max_message),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends `bytes`; false when that would pass its bound.
    fn push(&self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        let mut b = self.lock();
        if b.len() + bytes.len() > self.max {
            return false;
        }
        b.extend_from_slice(bytes);
        drop(b);
        self.ready.notify_one();
        true
    }
}

/// Dials `addr`; false when no BitTorrent connection came of it.
pub(crate) async fn connect(shared: Arc<Shared>, addr: SocketAddr) -> bool {
    let Some(permit) = shared.engine.connection_permit() else {
        // At the global cap: not a failure of that peer.
        return true;
    };
    let stream = tokio::select! {
        () = shared.cancel.cancelled() => return true,
        r = tokio::time::timeout(CONNECT_TIMEOUT, dial(addr, shared.engine.bind)) => match r {
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
    let r = tokio::select! {
        () = shared.cancel.cancelled() => return true,
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake_out(&shared, stream)) => r,
    };
    let (stream, theirs, buf) = match r {
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
    run(shared, stream, addr, theirs, buf, true, permit).await
}

/// Connects from `bind` when given (so a peer sees the address we announce).
pub(crate) async fn dial(
    addr: SocketAddr,
    bind: Option<std::net::IpAddr>,
) -> std::io::Result<TcpStream> {
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

fn our_handshake(shared: &Shared) -> [u8; HANDSHAKE_LEN] {
    Handshake {
        features: Features {
            // We run a DHT node (BEP 5; none for a private torrent).
            dht: shared.engine.dht.get().is_some() && !shared.info.is_private(),
            ..OUR_FEATURES
        },
        info_hash: shared.info_hash,
        peer_id: shared.engine.peer_id,
    }
    .encode()
}

async fn handshake_out(
    shared: &Shared,
    mut stream: TcpStream,
) -> Result<(TcpStream, Handshake, Vec<u8>), String> {
    stream
        .write_all(&our_handshake(shared))
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(HANDSHAKE_LEN + 1024);
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
    buf.drain(..HANDSHAKE_LEN);
    Ok((stream, theirs, buf))
}

/// An incoming connection the engine routed here by its handshake.
pub(crate) async fn accepted(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    addr: SocketAddr,
    theirs: Handshake,
    buf: Vec<u8>,
    permit: OwnedSemaphorePermit,
) {
    let ours = our_handshake(&shared);
    let sent = tokio::select! {
        () = shared.cancel.cancelled() => return,
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.write_all(&ours)) => r,
    };
    if !matches!(sent, Ok(Ok(()))) {
        tracing::debug!("{addr}: handshake: could not send ours");
        return;
    }
    run(shared, stream, addr, theirs, buf, false, permit).await;
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

/// Runs a handshaken connection to its end. Returns false if the torrent
/// refused it in a way that should count as a failed dial.
async fn run(
    shared: Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
    theirs: Handshake,
    buf: Vec<u8>,
    outgoing: bool,
    _permit: OwnedSemaphorePermit,
) -> bool {
    let _ = stream.set_nodelay(true);
    let (tx, cmds) = mpsc::unbounded_channel();
    let peer_id = theirs.peer_id;
    let admitted = match shared.register(addr, peer_id, outgoing, tx) {
        Ok(x) => x,
        Err(why) => {
            tracing::debug!("{addr}: not admitted: {why}");
            // A duplicate is marked connected by `register`; a full
            // torrent or host is no fault of the peer's address, but is
            // not dialed again at once. A ban (or ourselves) backs off
            // like a failed dial.
            if matches!(why, Refused::Full | Refused::SameHost) {
                shared.not_now(addr);
            }
            return matches!(why, Refused::Duplicate | Refused::Full | Refused::SameHost);
        }
    };
    let features = Features {
        dht: false,
        fast: OUR_FEATURES.fast && theirs.features.fast,
        extended: OUR_FEATURES.extended && theirs.features.extended,
    };
    tracing::debug!(
        "{addr}: connected ({}; fast extension {}, extension protocol {})",
        client_name(&peer_id),
        on_off(features.fast),
        on_off(features.extended)
    );
    // Our DHT node's port of the peer's family, when both run one.
    let dht_port = shared
        .engine
        .dht
        .get()
        .filter(|_| theirs.features.dht && !shared.info.is_private())
        .and_then(|d| d.port_for(addr));
    let now = Instant::now();
    let mut conn = Connection::new(
        Setup {
            key: admitted.key,
            ident: Ident { peer_id, addr },
            info: shared.info.clone(),
            info_hash: shared.info_hash,
            features,
            port: shared.engine.port,
            dht_port,
            counters: admitted.counters.clone(),
            totals: shared.totals.clone(),
            poked: admitted.poked.clone(),
            snub_after: shared.config.snub_after,
            initial_seeding: admitted.initial_seeding,
        },
        now,
    );
    conn.start(&mut shared.lock(), now);
    let max_msg = max_message(shared.info.piece_count());
    let outbox = Arc::new(Outbox::new(max_msg));
    let (rd, wr) = stream.into_split();
    let cancel = shared.cancel.child_token();
    let writer = {
        let shared = shared.clone();
        let uploads = conn.uploads().clone();
        let counters = admitted.counters.clone();
        let cancel = cancel.clone();
        let outbox = outbox.clone();
        shared.tasks.clone().spawn(async move {
            // Dropped at once when the connection closes: a peer that stops
            // reading must not hold up shutdown (a write to it can block
            // for as long as its window stays shut).
            tokio::select! {
                r = write_loop(&shared, wr, &outbox, &uploads, &counters) => {
                    if let Err(e) = r {
                        tracing::debug!("{addr}: sending: {e}");
                    }
                }
                () = cancel.cancelled() => {}
            }
            cancel.cancel();
        })
    };
    let why = reader(&shared, &mut conn, rd, buf, cmds, &outbox, &cancel).await;
    tracing::debug!("{addr}: disconnected: {why}");
    cancel.cancel();
    let client = {
        let mut st = shared.lock();
        conn.closed(&mut st);
        st.peers.get(&conn.key()).and_then(|p| p.client.clone())
    };
    if why.is_peers_fault() {
        shared.engine.drops.report(addr.ip(), || {
            let client = client.unwrap_or_else(|| client_name(&peer_id));
            format!("dropped peer {addr} ({client}): {why}")
        });
    }
    shared.unregister(conn.key(), conn.bitfield());
    let _ = writer.await;
    true
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// Why the reader stopped.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error(transparent)]
    Protocol(#[from] Close),
    #[error("the peer closed the connection")]
    PeerClosed,
    #[error("receiving: {0}")]
    Recv(std::io::Error),
    #[error("the peer does not read what we send")]
    NotReading,
    #[error("closed")]
    Cancelled,
}

impl Ended {
    /// It broke the protocol or would not take what it asked for (a ban
    /// is told where it is decided).
    fn is_peers_fault(&self) -> bool {
        matches!(
            self,
            Ended::Protocol(Close::Wire(_) | Close::Violation(_)) | Ended::NotReading
        )
    }
}

/// Hands what the state machine encoded to the writer.
fn flush(conn: &mut Connection, outbox: &Outbox) -> Result<(), Ended> {
    if outbox.push(&conn.take_output()) {
        Ok(())
    } else {
        Err(Ended::NotReading)
    }
}

async fn reader(
    shared: &Shared,
    conn: &mut Connection,
    mut rd: OwnedReadHalf,
    mut buf: Vec<u8>,
    mut cmds: mpsc::UnboundedReceiver<Cmd>,
    outbox: &Outbox,
    cancel: &tokio_util::sync::CancellationToken,
) -> Ended {
    match read_loop(shared, conn, &mut rd, &mut buf, &mut cmds, outbox, cancel).await {
        Ok(()) => Ended::Cancelled,
        Err(e) => e,
    }
}

async fn read_loop(
    shared: &Shared,
    conn: &mut Connection,
    rd: &mut OwnedReadHalf,
    buf: &mut Vec<u8>,
    cmds: &mut mpsc::UnboundedReceiver<Cmd>,
    outbox: &Outbox,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<(), Ended> {
    let max_msg = max_message(shared.info.piece_count());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    flush(conn, outbox)?;
    loop {
        // Everything complete in the buffer first, under one lock but for
        // blocks, which get room in the write queue before the picker
        // counts them. The blocks go to the disk threads together once the
        // buffer is done (or before waiting for room), so that they are
        // written together; another connection's blocks of the same piece
        // may get there first or later (the writer hashes a piece once all
        // of it is written).
        let mut at = 0;
        let mut blocks = Vec::new();
        let handled = handle_buffered(shared, conn, buf, &mut at, max_msg, &mut blocks).await;
        // Counted by the picker: queued even if the connection now ends.
        shared.disk.queue(&mut blocks);
        handled?;
        buf.drain(..at);
        if let Some(node) = conn.take_dht_node() {
            if let Some(dht) = shared.engine.dht.get() {
                dht.try_add_node(node);
            }
        }
        flush(conn, outbox)?;
        // Room for a whole message and a read, never more.
        let want = 16 * 1024;
        if buf.capacity() - buf.len() < want {
            buf.reserve(
                (want * 4)
                    .min(max_msg + 4 - buf.len().min(max_msg))
                    .max(want),
            );
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { return Err(Close::Torrent("the torrent stopped").into()) };
                let now = Instant::now();
                let mut st = shared.lock();
                conn.command(cmd, now, &mut st)?;
                // Take more of what is queued in one go, within reason.
                for _ in 0..COMMAND_BATCH {
                    let Ok(cmd) = cmds.try_recv() else { break };
                    conn.command(cmd, now, &mut st)?;
                }
                drop(st);
                flush(conn, outbox)?;
            }
            r = rd.read_buf(buf) => match r {
                Ok(0) => return Err(Ended::PeerClosed),
                Ok(n) => {
                    conn.received_bytes(Instant::now());
                    // Paying off the limiter's debt must not hold up a
                    // shutdown.
                    tokio::select! {
                        () = shared.engine.down_limit.acquire(n as u64) => {}
                        () = cancel.cancelled() => return Ok(()),
                    }
                }
                Err(e) => return Err(Ended::Recv(e)),
            },
            _ = tick.tick() => {
                let mut st = shared.lock();
                conn.tick(Instant::now(), &mut st)?;
                drop(st);
                flush(conn, outbox)?;
            }
        }
    }
}

/// Handles the complete messages in `buf` from `at` on (advancing it),
/// adding the blocks to write to `blocks`.
async fn handle_buffered(
    shared: &Shared,
    conn: &mut Connection,
    buf: &[u8],
    at: &mut usize,
    max_msg: usize,
    blocks: &mut Vec<(Option<OwnedSemaphorePermit>, crate::protocol::Write)>,
) -> Result<(), Ended> {
    loop {
        let block = {
            let now = Instant::now();
            let mut st = shared.lock();
            loop {
                let Some((m, used)) =
                    Message::decode_max(&buf[*at..], max_msg).map_err(Close::from)?
                else {
                    break None;
                };
                *at += used;
                if matches!(m, Message::Piece { .. }) {
                    break Some(m);
                }
                conn.handle(m, now, &mut st)?;
            }
        };
        let Some(m) = block else { return Ok(()) };
        let permit = match &m {
            Message::Piece { data, .. } => match shared.disk.try_reserve(data.len()) {
                Some(p) => Some(p),
                None => {
                    // What is held back holds room too: send it first.
                    shared.disk.queue(blocks);
                    shared.disk.reserve(data.len()).await
                }
            },
            _ => None,
        };
        let mut st = shared.lock();
        if let Some(w) = conn.handle(m, Instant::now(), &mut st)? {
            blocks.push((permit, w));
        }
    }
}

async fn write_loop(
    shared: &Shared,
    mut wr: OwnedWriteHalf,
    outbox: &Outbox,
    uploads: &UploadQueue,
    counters: &PeerCounters,
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if outbox.lock().is_empty() && uploads.is_empty() {
            tokio::select! {
                () = outbox.ready.notified() => {}
                () = uploads.ready.notified() => {}
                () = tokio::time::sleep(KEEP_ALIVE) => Message::KeepAlive.encode(&mut buf),
            }
        }
        buf.append(&mut outbox.lock());
        let blocks = uploads.take(UPLOAD_BATCH);
        if !blocks.is_empty() {
            let bytes: u64 = blocks.iter().map(|b| u64::from(b.length)).sum();
            shared.engine.up_limit.acquire(bytes).await;
            buf = shared
                .disk
                .read_blocks(blocks, buf)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            counters.up.fetch_add(bytes, Ordering::Relaxed);
            shared.totals.up.fetch_add(bytes, Ordering::Relaxed);
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
