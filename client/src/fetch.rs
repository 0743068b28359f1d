//! Fetching a magnet link's info dictionary from peers (BEP 9), before
//! the torrent itself can start.
//!
//! [`Engine::fetch_metadata`] announces to the magnet's trackers, dials
//! the peers they name and the ones given (`x.pe`, `--peer`), and runs a
//! small connection per peer that speaks just enough of the protocol:
//! handshake, `have_none`, the extended handshake, ut_metadata (our
//! requests, rejects to theirs: we have nothing yet) and ut_pex (peers
//! they know become candidates). The decisions are [`metadata::Fetch`]'s,
//! one per torrent behind one lock: which pieces to ask whom, what to do
//! with each answer, whom to blame for a whole that fails the hash.
//!
//! Bounds: a peer's messages are capped by [`wire::max_message`] of the
//! largest torrent the size cap allows; the metadata buffer is one per
//! torrent and at most the cap; candidates are capped in number; a peer
//! that says nothing for [`IDLE`] is dropped; our writes are requests of
//! a few dozen bytes, and a peer that takes none for [`IDLE`] is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use torrent_format::{Info, InfoHash};

use crate::engine::{Engine, EngineShared, HANDSHAKE_TIMEOUT};
use crate::extension::{self, ExtHandshake};
use crate::metadata::{self, Fetch, MetaMsg, Outcome};
use crate::peer::OUR_FEATURES;
use crate::pex;
use crate::tracker::{self, AnnounceParams, Event};
use crate::wire::{self, Handshake, Message, HANDSHAKE_LEN};

/// A peer that sends nothing for this long (or takes nothing we send) is
/// dropped.
const IDLE: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a tracker to answer our `stopped`.
const STOPPED_TIMEOUT: Duration = Duration::from_secs(3);
/// Most peer addresses remembered.
const MAX_CANDIDATES: usize = 2000;
/// Most peers learned from one peer's ut_pex messages.
const PEX_PER_PEER: usize = 200;

/// What to fetch, and where to look.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    pub info_hash: InfoHash,
    /// Peers to dial (the magnet's `x.pe`, `--peer`).
    pub peers: Vec<SocketAddr>,
    /// Announce URLs, each asked on its own.
    pub trackers: Vec<String>,
    /// Largest info dictionary accepted.
    pub max_size: usize,
    /// Most peers connected (or connecting) at once.
    pub max_peers: usize,
    /// Tell the trackers `stopped` once the metadata is here: set when no
    /// download follows under the same peer id (`--metadata-only`). A
    /// fetch that ends without the metadata (interrupted) always does.
    pub announce_stopped: bool,
}

impl FetchConfig {
    pub fn new(info_hash: InfoHash) -> FetchConfig {
        FetchConfig {
            info_hash,
            peers: Vec::new(),
            trackers: Vec::new(),
            max_size: metadata::DEFAULT_MAX_SIZE,
            max_peers: 30,
            announce_stopped: false,
        }
    }
}

/// How a fetch is going (sent on the watch channel given).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchStatus {
    /// Connections handshaken.
    pub connected: usize,
    /// Of those, peers that can be asked for the metadata.
    pub peers: usize,
    /// Peer addresses known.
    pub known: usize,
    pub got: usize,
    pub pieces: usize,
    /// The size being fetched, once a peer said it.
    pub size: Option<usize>,
}

/// A fetched, checked info dictionary.
#[derive(Debug)]
pub struct Fetched {
    pub info: Info,
    /// Peers given or named by a tracker, for the torrent to dial.
    pub peers: Vec<SocketAddr>,
    /// Peers only some peer's ut_pex or the DHT named: for a public
    /// torrent's PEX candidates (bounded, soon forgotten), never for a
    /// private one.
    pub pex_peers: Vec<SocketAddr>,
    /// How many peers the pieces came from.
    pub senders: usize,
    pub pieces: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no way to find peers: the magnet link names no tracker (tr=) and no peer (x.pe=), and none was given with --peer")]
    NoSources,
    #[error("the metadata peers sent matches the info hash but is not a valid torrent: {0}")]
    Invalid(torrent_format::MetainfoError),
    #[error("the engine is shutting down")]
    ShuttingDown,
}

struct Cand {
    next_try: Option<Instant>,
    tries: u32,
    busy: bool,
    /// It proved useless for the metadata: not dialed again.
    useless: bool,
    /// Only ut_pex named it.
    pex: bool,
}

struct Ctx {
    engine: Arc<EngineShared>,
    info_hash: InfoHash,
    fetch: Mutex<Fetch>,
    /// Work may be waiting (a piece freed, the size changed).
    wake: Notify,
    result: Mutex<Option<Vec<u8>>>,
    done: CancellationToken,
    candidates: Mutex<HashMap<SocketAddr, Cand>>,
    new_candidates: Notify,
    next_key: AtomicU64,
    connected: AtomicUsize,
    /// Connections not yet past their handshake.
    dialing: AtomicUsize,
    status: watch::Sender<FetchStatus>,
    max_size: usize,
    announce_stopped: bool,
}

impl Ctx {
    fn lock_fetch(&self) -> std::sync::MutexGuard<'_, Fetch> {
        self.fetch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New candidates; `pex` when only some peer's ut_pex vouches for them.
    fn add_candidates(&self, addrs: impl IntoIterator<Item = SocketAddr>, pex: bool) {
        let mut c = self.candidates.lock().unwrap_or_else(|e| e.into_inner());
        let before = c.len();
        for a in addrs {
            if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
                continue;
            }
            if let Some(known) = c.get_mut(&a) {
                known.pex &= pex;
                continue;
            }
            if c.len() >= MAX_CANDIDATES {
                break;
            }
            c.insert(
                a,
                Cand {
                    next_try: None,
                    tries: 0,
                    busy: false,
                    useless: false,
                    pex,
                },
            );
        }
        let grew = c.len() > before;
        drop(c);
        if grew {
            self.new_candidates.notify_one();
            self.report();
        }
    }

    fn report(&self) {
        let p = self.lock_fetch().progress();
        let known = self
            .candidates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        self.status.send_replace(FetchStatus {
            connected: self.connected.load(Ordering::Relaxed),
            peers: p.peers,
            known,
            got: p.got,
            pieces: p.pieces,
            size: p.size,
        });
    }
}

impl Engine {
    /// Fetches the info dictionary of `config.info_hash` from peers;
    /// returns once it is complete and matches the hash. Runs until then:
    /// the caller bounds it in time (drop the future to stop; its tasks
    /// end with it). `status` is kept up to date.
    pub async fn fetch_metadata(
        &self,
        config: FetchConfig,
        status: watch::Sender<FetchStatus>,
    ) -> Result<Fetched, FetchError> {
        let engine = self.shared().clone();
        let dht = engine.dht.get().cloned();
        if config.peers.is_empty() && config.trackers.is_empty() && dht.is_none() {
            return Err(FetchError::NoSources);
        }
        if engine.cancel.is_cancelled() {
            return Err(FetchError::ShuttingDown);
        }
        let ctx = Arc::new(Ctx {
            engine: engine.clone(),
            info_hash: config.info_hash,
            fetch: Mutex::new(Fetch::new(
                config.info_hash,
                config.max_size,
                Instant::now(),
            )),
            wake: Notify::new(),
            result: Mutex::new(None),
            done: engine.cancel.child_token(),
            candidates: Mutex::new(HashMap::new()),
            new_candidates: Notify::new(),
            next_key: AtomicU64::new(1),
            connected: AtomicUsize::new(0),
            dialing: AtomicUsize::new(0),
            status,
            max_size: config.max_size,
            announce_stopped: config.announce_stopped,
        });
        // Whatever way this returns (or is dropped), its tasks stop.
        let _stop = ctx.done.clone().drop_guard();
        ctx.add_candidates(config.peers.iter().copied(), false);
        let mut announcers: Vec<_> = config
            .trackers
            .iter()
            .map(|url| engine.tasks.spawn(announce_loop(ctx.clone(), url.clone())))
            .collect();
        if let Some(dht) = dht {
            announcers.push(engine.tasks.spawn(dht_loop(ctx.clone(), dht)));
        }
        dial_loop(&ctx, config.max_peers.max(1)).await;
        // The announcers say `stopped` if they should (bounded): wait, so
        // that it reaches the trackers before anything that follows.
        ctx.done.cancel();
        for a in announcers {
            let _ = a.await;
        }
        let raw = ctx
            .result
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or(FetchError::ShuttingDown)?;
        let info = Info::from_bytes(&raw).map_err(FetchError::Invalid)?;
        let (senders, pieces) = {
            let f = ctx.lock_fetch();
            (f.senders().len(), metadata::piece_count(raw.len()))
        };
        let (pex_peers, peers) = ctx
            .candidates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, c)| !c.useless)
            .map(|(a, c)| (*a, c.pex))
            .partition::<Vec<_>, _>(|&(_, pex)| pex);
        let addrs = |v: Vec<(SocketAddr, bool)>| v.into_iter().map(|(a, _)| a).collect();
        Ok(Fetched {
            info,
            peers: addrs(peers),
            pex_peers: addrs(pex_peers),
            senders,
            pieces,
        })
    }
}

/// Dials candidates, at most `max` at once, until the metadata is here.
async fn dial_loop(ctx: &Arc<Ctx>, max: usize) {
    let busy = Arc::new(AtomicUsize::new(0));
    let ended = Arc::new(Notify::new());
    loop {
        if ctx.done.is_cancelled() {
            return;
        }
        let now = Instant::now();
        let mut soonest: Option<Instant> = None;
        let picks: Vec<SocketAddr> = {
            let mut c = ctx.candidates.lock().unwrap_or_else(|e| e.into_inner());
            let room = max.saturating_sub(busy.load(Ordering::Relaxed));
            let mut picks = Vec::new();
            for (addr, cand) in c.iter_mut() {
                if picks.len() >= room {
                    break;
                }
                if cand.busy || cand.useless {
                    continue;
                }
                match cand.next_try {
                    Some(t) if t > now => {
                        soonest = Some(soonest.map_or(t, |s| s.min(t)));
                        continue;
                    }
                    _ => {}
                }
                cand.busy = true;
                picks.push(*addr);
            }
            picks
        };
        for addr in picks {
            busy.fetch_add(1, Ordering::Relaxed);
            let (ctx2, busy2, ended2) = (ctx.clone(), busy.clone(), ended.clone());
            ctx.engine.tasks.spawn(async move {
                let end = tokio::select! {
                    () = ctx2.done.cancelled() => End::Stopped,
                    e = peer(&ctx2, addr) => e,
                };
                if !matches!(end, End::Stopped) {
                    tracing::debug!("{addr}: metadata: {end}");
                }
                {
                    let mut c = ctx2.candidates.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(cand) = c.get_mut(&addr) {
                        cand.busy = false;
                        cand.tries += 1;
                        cand.useless |= matches!(end, End::Useless(_));
                        cand.next_try =
                            Some(Instant::now() + Duration::from_secs(5 << cand.tries.min(6)));
                    }
                }
                busy2.fetch_sub(1, Ordering::Relaxed);
                ended2.notify_one();
                ctx2.report();
            });
        }
        let wait = soonest.map_or(Duration::from_secs(5), |t| {
            t.saturating_duration_since(Instant::now())
        });
        tokio::select! {
            () = ctx.done.cancelled() => return,
            () = ctx.new_candidates.notified() => {}
            () = ended.notified() => {}
            () = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
        }
    }
}

/// Looks the magnet up in the DHT until the fetch ends (again every
/// minute), for its peers. Nothing is announced: we have nothing yet.
async fn dht_loop(ctx: Arc<Ctx>, dht: Arc<crate::dht::Dht>) {
    loop {
        let mut events = dht.get_peers(ctx.info_hash.0, None).await;
        loop {
            let e = tokio::select! {
                e = events.recv() => e,
                () = ctx.done.cancelled() => return,
            };
            match e {
                Some(crate::dht::LookupEvent::Peers(peers)) => {
                    tracing::debug!("metadata: {} peers from the DHT", peers.len());
                    // Heard of, not vouched for: kept apart like PEX peers
                    // (never pinned, never used for a private torrent).
                    ctx.add_candidates(peers, true);
                }
                Some(crate::dht::LookupEvent::Done { .. }) | None => break,
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
            () = ctx.done.cancelled() => return,
        }
    }
}

/// Announces to one tracker until the fetch ends, for its peers.
async fn announce_loop(ctx: Arc<Ctx>, url: String) {
    let client = match ctx.engine.tracker() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("tracker {}: {e}", tracker::shown_url(&url));
            return;
        }
    };
    let params = AnnounceParams {
        info_hash: ctx.info_hash,
        peer_id: ctx.engine.peer_id,
        port: ctx.engine.port,
        uploaded: 0,
        downloaded: 0,
        // Unknown until the metadata is here; not 0, which says "seed".
        left: 1,
        event: Event::Started,
        numwant: 200,
        key: rand::random(),
    };
    let mut fails = 0u32;
    let mut announced = false;
    // Once the fetch ends: `stopped`, to a tracker that has us, when no
    // download follows (or the fetch failed), without hanging on it.
    let stop = |announced: bool| {
        let got = ctx
            .result
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        let say = announced && (ctx.announce_stopped || !got);
        let (client, url, mut params) = (client.clone(), url.clone(), params.clone());
        async move {
            if say {
                params.event = Event::Stopped;
                let r = tokio::time::timeout(STOPPED_TIMEOUT, client.announce(&url, &params)).await;
                tracing::debug!(
                    "tracker {}: stopped ({})",
                    tracker::shown_url(&url),
                    if r.is_ok() { "told" } else { "no answer" }
                );
            }
        }
    };
    loop {
        let wait = tokio::select! {
            () = ctx.done.cancelled() => return stop(announced).await,
            r = client.announce(&url, &params) => match r {
                Ok(resp) => {
                    fails = 0;
                    announced = true;
                    tracing::debug!(
                        "tracker {}: {} peers for the metadata",
                        tracker::shown_url(&url),
                        resp.peers.len()
                    );
                    ctx.add_candidates(resp.peers.iter().copied(), false);
                    resp.min_interval
                        .unwrap_or(resp.interval)
                        .min(resp.interval)
                        .min(Duration::from_secs(120))
                }
                Err(e) => {
                    fails += 1;
                    tracing::info!("tracker {}: {e}", tracker::shown_url(&url));
                    Duration::from_secs(15 << fails.min(5))
                }
            },
        };
        tokio::select! {
            () = ctx.done.cancelled() => return stop(announced).await,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// How one peer's connection ended.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("stopped")]
    Stopped,
    #[error("{0}")]
    Failed(String),
    /// Not to be dialed again for this metadata.
    #[error("no use: {0}")]
    Useless(String),
}

fn failed(e: impl std::fmt::Display) -> End {
    End::Failed(e.to_string())
}

/// Dials `addr` and fetches what it will give of the metadata.
async fn peer(ctx: &Arc<Ctx>, addr: SocketAddr) -> End {
    let Some(_permit) = ctx.engine.connection_permit() else {
        return End::Failed("at the connection limit".into());
    };
    ctx.dialing.fetch_add(1, Ordering::Relaxed);
    let hello = connect(ctx, addr).await;
    ctx.dialing.fetch_sub(1, Ordering::Relaxed);
    let (mut stream, theirs, buf) = match hello {
        Ok(x) => x,
        Err(e) => return e,
    };
    let key = ctx.next_key.fetch_add(1, Ordering::Relaxed);
    ctx.connected.fetch_add(1, Ordering::Relaxed);
    ctx.report();
    let end = exchange(ctx, &mut stream, addr, key, theirs, buf).await;
    ctx.connected.fetch_sub(1, Ordering::Relaxed);
    ctx.lock_fetch().remove_peer(key, Instant::now());
    ctx.wake.notify_waiters();
    end
}

/// Dials `addr` and does the BitTorrent handshake.
async fn connect(ctx: &Arc<Ctx>, addr: SocketAddr) -> Result<(TcpStream, Handshake, Vec<u8>), End> {
    let mut stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, crate::peer::dial(addr, ctx.engine.bind)).await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(failed(format!("connect: {e}"))),
            Err(_) => return Err(failed("connect: timed out")),
        };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(ctx, &mut stream)).await {
        Ok(Ok((theirs, buf))) => Ok((stream, theirs, buf)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(failed("handshake: timed out")),
    }
}

async fn handshake(ctx: &Ctx, stream: &mut TcpStream) -> Result<(Handshake, Vec<u8>), End> {
    let ours = Handshake {
        features: OUR_FEATURES,
        info_hash: ctx.info_hash,
        peer_id: ctx.engine.peer_id,
    };
    stream.write_all(&ours.encode()).await.map_err(failed)?;
    let mut buf = Vec::with_capacity(HANDSHAKE_LEN + 1024);
    let theirs = loop {
        if let Some(h) = Handshake::decode(&buf).map_err(failed)? {
            break h;
        }
        if stream.read_buf(&mut buf).await.map_err(failed)? == 0 {
            return Err(failed("closed during the handshake"));
        }
    };
    if theirs.info_hash != ctx.info_hash {
        return Err(End::Useless("wrong info hash".into()));
    }
    if theirs.peer_id == ctx.engine.peer_id {
        return Err(End::Useless("that is us".into()));
    }
    if !theirs.features.extended {
        return Err(End::Useless(
            "no extension protocol (BEP 10), so no metadata".into(),
        ));
    }
    buf.drain(..HANDSHAKE_LEN);
    Ok((theirs, buf))
}

/// The connection after the handshake: until the metadata is here, the
/// peer proves useless, or it goes quiet.
async fn exchange(
    ctx: &Arc<Ctx>,
    stream: &mut TcpStream,
    addr: SocketAddr,
    key: metadata::PeerKey,
    theirs: Handshake,
    mut buf: Vec<u8>,
) -> End {
    let mut out = Vec::new();
    if theirs.features.fast && OUR_FEATURES.fast {
        Message::HaveNone.encode(&mut out);
    }
    let mut ours = ExtHandshake {
        client: Some(extension::our_client_name()),
        port: Some(ctx.engine.port).filter(|&p| p != 0),
        reqq: Some(extension::DEFAULT_REQQ),
        your_ip: Some(addr.ip()),
        ..ExtHandshake::default()
    };
    ours.extensions
        .insert(metadata::NAME.into(), extension::UT_METADATA_ID);
    ours.extensions
        .insert(pex::EXTENSION_NAME.into(), extension::UT_PEX_ID);
    Message::Extended(extension::HANDSHAKE_ID, ours.encode()).encode(&mut out);
    if let Err(e) = write(stream, &out).await {
        return e;
    }
    out.clear();
    // A bitfield of the largest torrent the cap allows still fits.
    let max = wire::max_message(ctx.max_size / 20);
    let mut their_id: Option<u8> = None;
    let mut pex_in = pex::PexIn::new();
    let mut last_heard = Instant::now();
    // Often enough to end a metadata::SPREAD_WAIT soon after it is over.
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        // Everything whole in the buffer first.
        let mut used = 0;
        loop {
            let m = match Message::decode_max(&buf[used..], max) {
                Ok(Some((m, n))) => {
                    used += n;
                    m
                }
                Ok(None) => break,
                Err(e) => return End::Useless(format!("protocol error: {e}")),
            };
            let now = Instant::now();
            match m {
                Message::Extended(extension::HANDSHAKE_ID, payload) => {
                    let h = match ExtHandshake::decode(&payload) {
                        Ok(h) => h,
                        Err(e) => return End::Useless(e.to_string()),
                    };
                    tracing::debug!(
                        "{addr}: metadata: {} says {} bytes",
                        h.client.as_deref().unwrap_or("a peer"),
                        h.metadata_size.map_or("nothing".into(), |n| n.to_string())
                    );
                    their_id = h
                        .extensions
                        .get(metadata::NAME)
                        .copied()
                        .filter(|&i| i != 0);
                    let r = ctx.lock_fetch().add_peer(key, &h, now);
                    if let Err(why) = r {
                        return End::Useless(why.to_string());
                    }
                    ctx.report();
                }
                Message::Extended(extension::UT_METADATA_ID, payload) => {
                    let msg = match MetaMsg::decode(&payload) {
                        Ok(m) => m,
                        Err(e) => return End::Useless(e.to_string()),
                    };
                    if let MetaMsg::Request(piece) = msg {
                        // We have nothing to give yet.
                        if let Some(id) = their_id {
                            let mut o = Vec::new();
                            Message::Extended(id, MetaMsg::Reject(piece).encode()).encode(&mut o);
                            out.extend_from_slice(&o);
                        }
                        continue;
                    }
                    let r = ctx.lock_fetch().received(key, &msg, now);
                    match r {
                        Ok(Outcome::Done(raw)) => {
                            tracing::debug!("{addr}: metadata: the last piece; it matches");
                            *ctx.result.lock().unwrap_or_else(|e| e.into_inner()) = Some(raw);
                            ctx.report();
                            ctx.done.cancel();
                            return End::Stopped;
                        }
                        Ok(Outcome::HashFailed) => {
                            tracing::info!("the metadata received does not match the info hash: fetching it again");
                            ctx.wake.notify_waiters();
                        }
                        Ok(Outcome::More) => {}
                        Err(why) => return End::Useless(why.to_string()),
                    }
                    if matches!(msg, MetaMsg::Reject(_)) {
                        // Its piece may go to another peer now.
                        ctx.wake.notify_waiters();
                    }
                    ctx.report();
                }
                Message::Extended(extension::UT_PEX_ID, payload) => {
                    match pex_in.receive(now, payload.len()) {
                        pex::PexVerdict::Use => {
                            if let Ok(msg) = pex::PexMessage::decode(&payload) {
                                let learned = pex_in.take_candidates(&msg, addr.ip());
                                if !learned.is_empty() {
                                    tracing::debug!(
                                        "{addr}: metadata: {} peers by PEX",
                                        learned.len()
                                    );
                                }
                                ctx.add_candidates(learned.into_iter().take(PEX_PER_PEER), true);
                            }
                        }
                        pex::PexVerdict::Ignore => {}
                        pex::PexVerdict::Disconnect(why) => return End::Useless(why.to_string()),
                    }
                }
                _ => {}
            }
        }
        buf.drain(..used);
        // Our requests, if any are due.
        if let Some(id) = their_id {
            if let Some(why) = ctx.lock_fetch().unfit(key) {
                return End::Useless(why.to_string());
            }
            let pieces = {
                let mut f = ctx.lock_fetch();
                f.set_pending(ctx.dialing.load(Ordering::Relaxed));
                f.requests(key, Instant::now())
            };
            for p in pieces {
                Message::Extended(id, MetaMsg::Request(p).encode()).encode(&mut out);
            }
        }
        if !out.is_empty() {
            if let Err(e) = write(stream, &out).await {
                return e;
            }
            out.clear();
        }
        if last_heard.elapsed() > IDLE {
            return End::Failed("silent too long".into());
        }
        tokio::select! {
            r = stream.read_buf(&mut buf) => match r {
                Ok(0) => return failed("closed"),
                Ok(_) => last_heard = Instant::now(),
                Err(e) => return failed(e),
            },
            () = ctx.wake.notified() => {}
            _ = tick.tick() => {}
        }
        if buf.len() > max + 64 * 1024 {
            // read_buf grows the buffer by what arrives; a message is
            // never longer than `max`, so the buffer need not be either.
            return End::Useless("sent more than a message's worth at once".into());
        }
    }
}

/// Sends `bytes`, or fails if the peer takes none of it for [`IDLE`].
async fn write(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), End> {
    match tokio::time::timeout(IDLE, stream.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(failed(e)),
        Err(_) => Err(failed("it takes nothing we send")),
    }
}
