//! One torrent being downloaded or seeded: the shared state every
//! connection works on, and the session's own tasks.
//!
//! - The *driver* owns the timers and the disk verdicts: it marks pieces
//!   verified (and tells every peer with `have`), bans peers that sent bad
//!   data, runs the choker every 10 s, dials candidate peers, measures
//!   rates, and saves the resume file.
//! - The *listener* accepts incoming connections.
//! - The *announcer* talks to the trackers (see [`crate::tracker`]).
//! - Each connection is a task of its own ([`crate::peer`]).
//!
//! The state lives behind one mutex, held briefly and never across an
//! `.await`. Connections reach the driver through that state and the
//! driver reaches them through their command channels.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use torrent_format::{Info, InfoHash};

use crate::choker::{self, Candidate, Choker};
use crate::disk::{Disk, DiskEvent};
use crate::picker::{PeerKey, Picker};
use crate::rate::{Limiter, RateMeter};
use crate::storage::Storage;
use crate::tracker;
use crate::wire::{Bitfield, BlockRef, BLOCK};

/// What a session is told to do.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to accept connections (port 0: any free port).
    pub listen: SocketAddr,
    /// Local address for outgoing connections and announces.
    pub bind: Option<std::net::IpAddr>,
    /// Peers to dial besides those the trackers name.
    pub peers: Vec<SocketAddr>,
    /// Announce URLs by tier (BEP 12).
    pub trackers: Vec<Vec<String>>,
    pub max_peers: usize,
    pub upload_slots: usize,
    /// Bytes per second; `None` for no limit.
    pub download_limit: Option<u64>,
    pub upload_limit: Option<u64>,
    /// Pieces to download (`None`: all).
    pub wanted: Option<Bitfield>,
    /// Where to keep the resume file (downloads only).
    pub resume: Option<PathBuf>,
    /// A peer that sends nothing for this long while we wait for blocks
    /// loses its requests to others.
    pub snub_after: Duration,
    pub disk_threads: usize,
    /// Initial seeding (BEP 16) once complete: offer each peer pieces one
    /// by one instead of announcing them all.
    pub initial_seeding: bool,
}

impl Config {
    pub fn new(listen: SocketAddr) -> Config {
        Config {
            listen,
            bind: None,
            peers: Vec::new(),
            trackers: Vec::new(),
            max_peers: 50,
            upload_slots: 4,
            download_limit: None,
            upload_limit: None,
            wanted: None,
            resume: None,
            snub_after: Duration::from_secs(60),
            disk_threads: 2,
            initial_seeding: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Storage(#[from] crate::storage::StorageError),
}

/// Sent by the session to one connection.
#[derive(Debug)]
pub(crate) enum Cmd {
    /// We verified this piece.
    Have(u32),
    Choke,
    Unchoke,
    /// Another peer delivered this block first (endgame).
    Cancel(BlockRef),
    /// Blocks were freed or pieces failed: look for work again.
    Poke,
    Close(&'static str),
    /// Initial seeding: another peer announced this piece, so it spread.
    Spread(u32),
    /// Initial seeding: another peer has all these pieces (its bitfield).
    SpreadAll(Arc<Bitfield>),
}

/// What [`Shared::register`] hands a new connection.
pub(crate) struct Admitted {
    pub key: PeerKey,
    pub counters: Arc<PeerCounters>,
    pub poked: Arc<AtomicBool>,
    /// Our pieces, for the bitfield.
    pub have: Bitfield,
    /// Offer pieces one by one instead of sending the bitfield.
    pub initial_seeding: bool,
}

/// Per-connection byte counters, shared with the connection's tasks.
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pub down: AtomicU64,
    pub up: AtomicU64,
}

pub(crate) struct PeerEntry {
    pub addr: SocketAddr,
    pub peer_id: [u8; 20],
    pub tx: mpsc::UnboundedSender<Cmd>,
    pub counters: Arc<PeerCounters>,
    /// A `Poke` is queued and not yet handled.
    pub poked: Arc<AtomicBool>,
    pub connected_at: Instant,
    pub outgoing: bool,
    /// It wants to download from us.
    pub interested: bool,
    /// It has every piece.
    pub seed: bool,
    pub pieces: usize,
    /// A candidate address that turned out to be this peer (it also
    /// connected to us).
    pub dialed: Option<SocketAddr>,
    pub down: RateMeter,
    pub up: RateMeter,
}

/// Who sent a block, remembered until its piece is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Ident {
    pub peer_id: [u8; 20],
    pub addr: SocketAddr,
}

#[derive(Debug, Default)]
struct Candidate_ {
    fails: u32,
    next_try: Option<Instant>,
    connected: bool,
    connecting: bool,
    pinned: bool,
    is_self: bool,
    /// It was a seed when it left: no use to us once we are one too.
    was_seed: bool,
}

/// A block's sender and the SHA-1 of what it sent.
pub(crate) type BlockOrigin = (Option<Ident>, [u8; 20]);

/// Why a second connection to the same peer is refused.
pub(crate) const DUPLICATE: &str = "already connected to this peer";

/// Most peer addresses remembered.
const MAX_CANDIDATES: usize = 4000;
/// Most connection attempts at once.
const MAX_CONNECTING: usize = 16;

pub(crate) struct State {
    pub picker: Picker,
    /// Verified pieces (what we tell peers we have).
    pub have: Bitfield,
    /// Bytes of wanted pieces not verified yet.
    pub left: u64,
    pub peers: HashMap<PeerKey, PeerEntry>,
    next_key: PeerKey,
    pub choker: Choker,
    pub rng: SmallRng,
    /// Senders of each block of pieces in progress, by block index.
    pub block_from: HashMap<u32, Vec<Option<Ident>>>,
    /// Pieces that failed with blocks from several peers: each block's
    /// sender and digest, to compare with the good copy later.
    pub failed: HashMap<u32, Vec<BlockOrigin>>,
    banned_ids: HashSet<[u8; 20]>,
    banned_addrs: HashSet<SocketAddr>,
    candidates: HashMap<SocketAddr, Candidate_>,
    resume_dirty: bool,
    pub hash_fails: u64,
    /// Initial seeding: how often each piece was offered.
    pub offers: Vec<u32>,
    /// Byte counts of peers that disconnected, by peer id.
    gone: HashMap<[u8; 20], (u64, u64)>,
}

impl State {
    pub fn is_banned(&self, id: &Ident) -> bool {
        self.banned_ids.contains(&id.peer_id) || self.banned_addrs.contains(&id.addr)
    }

    /// Target number of outstanding requests to a peer: its rate times
    /// three seconds, in blocks (libtorrent's bandwidth-delay rule).
    pub fn queue_depth(&self, key: PeerKey) -> usize {
        let rate = self.peers.get(&key).map_or(0, |p| p.down.rate());
        if rate == 0 {
            32
        } else {
            (rate * 3 / u64::from(BLOCK)).clamp(8, 500) as usize
        }
    }

    pub fn is_complete(&self) -> bool {
        self.picker.is_complete()
    }

    /// Asks every connection to look for work again; a connection with a
    /// poke already pending gets no second one.
    pub fn poke_all(&self) {
        for p in self.peers.values() {
            if !p.poked.swap(true, Ordering::Relaxed) {
                let _ = p.tx.send(Cmd::Poke);
            }
        }
    }

    /// Initial seeding: the piece to offer a peer that has `has` and may
    /// already request `allowed`, among those `which` admits — the one
    /// fewest peers have or were offered, at random among equals.
    pub fn piece_to_offer(
        &mut self,
        has: &Bitfield,
        allowed: &HashSet<u32>,
        which: Offer,
    ) -> Option<u32> {
        let mut best: Option<(u32, u32)> = None;
        let mut ties = 0u32;
        for i in 0..self.have.len() {
            let piece = i as u32;
            if has.get(i) || allowed.contains(&piece) || !self.have.get(i) {
                continue;
            }
            let available = self.picker.availability(piece);
            let ok = match which {
                Offer::Fresh => available == 0 && self.offers[i] == 0,
                Offer::Unavailable => available == 0,
                Offer::Any => true,
            };
            if !ok {
                continue;
            }
            let score = available + self.offers[i];
            match best {
                Some((b, _)) if score > b => {}
                Some((b, _)) if score == b => {
                    ties += 1;
                    if self.rng.random_range(0..ties) == 0 {
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
        self.offers[piece as usize] += 1;
        Some(piece)
    }
}

/// Initial seeding: which pieces may be offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Never offered, and no peer has it: the normal case, so that the
    /// seed sends each piece about once.
    Fresh,
    /// No connected peer has it (it may be on its way to someone): for a
    /// peer that has waited long.
    Unavailable,
    /// Anything the peer lacks: for a peer alone with the seed.
    Any,
}

pub(crate) struct Shared {
    pub info: Arc<Info>,
    pub info_hash: InfoHash,
    pub peer_id: [u8; 20],
    pub disk: Disk,
    state: Mutex<State>,
    pub cancel: CancellationToken,
    pub tasks: TaskTracker,
    pub up_limit: Limiter,
    pub down_limit: Limiter,
    /// Payload bytes received (including any later discarded).
    pub downloaded: AtomicU64,
    pub uploaded: AtomicU64,
    pub complete: watch::Sender<bool>,
    wake: Notify,
    pub config: Config,
    pub port: u16,
    /// Bytes of the pieces this session downloads (or has).
    pub wanted_bytes: u64,
    fatal: Mutex<Option<String>>,
    saving: AtomicBool,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handshake succeeded: admit the peer unless it is banned, us, a
    /// duplicate, or one too many.
    pub fn register(
        &self,
        addr: SocketAddr,
        peer_id: [u8; 20],
        outgoing: bool,
        tx: mpsc::UnboundedSender<Cmd>,
    ) -> Result<Admitted, &'static str> {
        let mut st = self.lock();
        if peer_id == self.peer_id {
            if let Some(c) = st.candidates.get_mut(&addr) {
                c.is_self = true;
            }
            return Err("that is us");
        }
        if st.is_banned(&Ident { peer_id, addr }) {
            return Err("banned");
        }
        if let Some(p) = st.peers.values_mut().find(|p| p.peer_id == peer_id) {
            // Connected the other way already: this address reaches it, so
            // do not dial it again while that connection lasts.
            if outgoing {
                p.dialed = Some(addr);
                if let Some(c) = st.candidates.get_mut(&addr) {
                    c.connected = true;
                }
            }
            return Err(DUPLICATE);
        }
        if st.peers.len() >= self.config.max_peers {
            return Err("too many peers");
        }
        let key = st.next_key;
        st.next_key = st.next_key.wrapping_add(1);
        let counters = Arc::new(PeerCounters::default());
        let poked = Arc::new(AtomicBool::new(false));
        st.peers.insert(
            key,
            PeerEntry {
                addr,
                peer_id,
                tx,
                counters: counters.clone(),
                poked: poked.clone(),
                connected_at: Instant::now(),
                outgoing,
                interested: false,
                seed: false,
                pieces: 0,
                dialed: None,
                down: RateMeter::default(),
                up: RateMeter::default(),
            },
        );
        if let Some(c) = st.candidates.get_mut(&addr) {
            c.connected = true;
            c.fails = 0;
        }
        Ok(Admitted {
            key,
            counters,
            poked,
            have: st.have.clone(),
            initial_seeding: self.config.initial_seeding && st.is_complete(),
        })
    }

    /// A connection ended: free its requests and its slot.
    pub fn unregister(&self, key: PeerKey, has: &Bitfield) {
        let mut st = self.lock();
        st.picker.remove_peer(key, has);
        st.choker.remove(key);
        if let Some(p) = st.peers.remove(&key) {
            let e = st.gone.entry(p.peer_id).or_default();
            e.0 += p.counters.down.load(Ordering::Relaxed);
            e.1 += p.counters.up.load(Ordering::Relaxed);
            for addr in std::iter::once(p.addr).chain(p.dialed) {
                if let Some(c) = st.candidates.get_mut(&addr) {
                    c.connected = false;
                    c.was_seed = p.seed;
                    c.next_try = Some(Instant::now() + Duration::from_secs(30));
                }
            }
        }
        st.poke_all();
        drop(st);
        self.fill_slots();
        self.wake.notify_one();
    }

    /// Peers from a tracker or the command line.
    pub fn add_candidates(&self, addrs: impl IntoIterator<Item = SocketAddr>, pinned: bool) {
        let mut st = self.lock();
        for addr in addrs {
            if addr.port() == 0 || st.banned_addrs.contains(&addr) {
                continue;
            }
            if st.candidates.len() >= MAX_CANDIDATES && !st.candidates.contains_key(&addr) {
                break;
            }
            let c = st.candidates.entry(addr).or_default();
            c.pinned |= pinned;
        }
        drop(st);
        self.wake.notify_one();
    }

    /// A peer's interest in us changed.
    pub fn set_interested(&self, key: PeerKey, interested: bool) {
        if let Some(p) = self.lock().peers.get_mut(&key) {
            p.interested = interested;
        }
        if interested {
            self.fill_slots();
        }
    }

    /// Hands free upload slots to interested peers.
    fn fill_slots(&self) {
        let mut st = self.lock();
        let candidates = candidates(&st);
        for key in st.choker.fill(&candidates) {
            if let Some(p) = st.peers.get(&key) {
                let _ = p.tx.send(Cmd::Unchoke);
            }
        }
    }

    fn connect_failed(&self, addr: SocketAddr) {
        let mut st = self.lock();
        if let Some(c) = st.candidates.get_mut(&addr) {
            c.connecting = false;
            c.fails += 1;
            if c.fails >= 5 && !c.pinned {
                st.candidates.remove(&addr);
            } else {
                let back_off = Duration::from_secs(10 << c.fails.min(6));
                c.next_try = Some(Instant::now() + back_off);
            }
        }
    }

    fn connect_done(&self, addr: SocketAddr) {
        if let Some(c) = self.lock().candidates.get_mut(&addr) {
            c.connecting = false;
        }
    }

    pub fn fail(&self, why: String) {
        let mut f = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            tracing::debug!("{why}");
            *f = Some(why);
        }
        self.cancel.cancel();
    }
}

fn candidates(st: &State) -> Vec<Candidate> {
    let seeding = st.is_complete();
    let now = Instant::now();
    st.peers
        .iter()
        .map(|(&key, p)| Candidate {
            key,
            interested: p.interested,
            rate: if seeding { p.up.rate() } else { p.down.rate() },
            new: now.duration_since(p.connected_at) < Duration::from_secs(60),
        })
        .collect()
}

/// A running torrent.
pub struct Session {
    shared: Arc<Shared>,
    listen: SocketAddr,
    /// The driver hands back the disk's verdict channel when it stops, so
    /// verdicts that arrive during shutdown still count.
    driver: tokio::task::JoinHandle<mpsc::UnboundedReceiver<DiskEvent>>,
}

/// Progress, for the user.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub pieces: usize,
    pub pieces_have: usize,
    /// Bytes of the wanted pieces, and how many of them are verified.
    pub wanted_bytes: u64,
    pub left: u64,
    pub downloaded: u64,
    pub uploaded: u64,
    pub down_rate: u64,
    pub up_rate: u64,
    pub peers: usize,
    pub seeds: usize,
    pub hash_fails: u64,
    pub banned: usize,
    pub complete: bool,
}

/// One connected peer, for the user.
#[derive(Debug, Clone)]
pub struct PeerStats {
    pub addr: SocketAddr,
    pub peer_id: [u8; 20],
    pub outgoing: bool,
    pub downloaded: u64,
    pub uploaded: u64,
    pub down_rate: u64,
    pub up_rate: u64,
    pub pieces: usize,
    pub seed: bool,
}

/// Our peer id: `-SH0001-` and 12 random bytes.
pub fn new_peer_id() -> [u8; 20] {
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(b"-SH0001-");
    rand::rng().fill(&mut id[8..]);
    id
}

impl Session {
    /// Starts a session over `storage`, whose verified pieces are `have`.
    pub async fn start(
        info: Arc<Info>,
        storage: Arc<Storage>,
        have: Bitfield,
        config: Config,
    ) -> Result<Session, SessionError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| SessionError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let listen = listener
            .local_addr()
            .map_err(|source| SessionError::Listen {
                addr: config.listen,
                source,
            })?;
        let (events_tx, events) = mpsc::unbounded_channel();
        let disk = Disk::new(info.clone(), storage, config.disk_threads, events_tx);
        // The picker counts unwanted pieces as had: it never asks for them.
        let mut picker_have = have.clone();
        let (mut left, mut wanted_bytes) = (0, 0);
        for i in 0..info.piece_count() {
            let wanted = config.wanted.as_ref().is_none_or_get(i);
            if !wanted {
                picker_have.set(i);
                continue;
            }
            wanted_bytes += info.piece_size(i);
            if !have.get(i) {
                left += info.piece_size(i);
            }
        }
        let picker = Picker::new(info.piece_length(), info.total_length(), picker_have);
        let complete = picker.is_complete();
        let state = State {
            picker,
            have,
            left,
            peers: HashMap::new(),
            next_key: 0,
            choker: Choker::new(config.upload_slots),
            rng: SmallRng::from_rng(&mut rand::rng()),
            block_from: HashMap::new(),
            failed: HashMap::new(),
            banned_ids: HashSet::new(),
            banned_addrs: HashSet::new(),
            candidates: HashMap::new(),
            resume_dirty: false,
            hash_fails: 0,
            offers: vec![0; info.piece_count()],
            gone: HashMap::new(),
        };
        let shared = Arc::new(Shared {
            info_hash: info.info_hash(),
            info,
            peer_id: new_peer_id(),
            disk,
            state: Mutex::new(state),
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            up_limit: Limiter::new(config.upload_limit),
            down_limit: Limiter::new(config.download_limit),
            downloaded: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
            complete: watch::Sender::new(complete),
            wake: Notify::new(),
            port: listen.port(),
            wanted_bytes,
            config,
            fatal: Mutex::new(None),
            saving: AtomicBool::new(false),
        });
        shared.add_candidates(shared.config.peers.clone(), true);
        shared.tasks.spawn(accept(shared.clone(), listener));
        shared.tasks.spawn(announce(shared.clone()));
        let driver = shared.tasks.spawn(drive(shared.clone(), events));
        Ok(Session {
            shared,
            listen,
            driver,
        })
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn peer_id(&self) -> [u8; 20] {
        self.shared.peer_id
    }

    pub fn info(&self) -> &Arc<Info> {
        &self.shared.info
    }

    /// Resolves once every wanted piece is verified.
    pub async fn completed(&self) {
        let mut rx = self.shared.complete.subscribe();
        let _ = rx.wait_for(|&c| c).await;
    }

    pub fn is_complete(&self) -> bool {
        *self.shared.complete.borrow()
    }

    /// Resolves when the session stopped on its own (a disk error).
    pub async fn failed(&self) -> String {
        self.shared.cancel.cancelled().await;
        self.error().unwrap_or_else(|| "stopped".into())
    }

    pub fn error(&self) -> Option<String> {
        self.shared
            .fatal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Pieces we have (verified).
    pub fn have(&self) -> Bitfield {
        self.shared.lock().have.clone()
    }

    pub fn stats(&self) -> Stats {
        let st = self.shared.lock();
        Stats {
            pieces: st.have.len(),
            pieces_have: st.have.count(),
            wanted_bytes: self.shared.wanted_bytes,
            left: st.left,
            downloaded: self.shared.downloaded.load(Ordering::Relaxed),
            uploaded: self.shared.uploaded.load(Ordering::Relaxed),
            down_rate: st.peers.values().map(|p| p.down.rate()).sum(),
            up_rate: st.peers.values().map(|p| p.up.rate()).sum(),
            peers: st.peers.len(),
            seeds: st.peers.values().filter(|p| p.seed).count(),
            hash_fails: st.hash_fails,
            banned: st.banned_ids.len(),
            complete: st.is_complete(),
        }
    }

    pub fn peers(&self) -> Vec<PeerStats> {
        let st = self.shared.lock();
        let mut v: Vec<PeerStats> = st
            .peers
            .values()
            .map(|p| PeerStats {
                addr: p.addr,
                peer_id: p.peer_id,
                outgoing: p.outgoing,
                downloaded: p.counters.down.load(Ordering::Relaxed),
                uploaded: p.counters.up.load(Ordering::Relaxed),
                down_rate: p.down.rate(),
                up_rate: p.up.rate(),
                pieces: p.pieces,
                seed: p.seed,
            })
            .collect();
        v.sort_by_key(|p| p.addr);
        v
    }

    /// Bytes received from and sent to each peer id over the whole session,
    /// disconnected peers included: `(peer id, downloaded, uploaded)`.
    pub fn peer_totals(&self) -> Vec<([u8; 20], u64, u64)> {
        let st = self.shared.lock();
        let mut totals = st.gone.clone();
        for p in st.peers.values() {
            let e = totals.entry(p.peer_id).or_default();
            e.0 += p.counters.down.load(Ordering::Relaxed);
            e.1 += p.counters.up.load(Ordering::Relaxed);
        }
        let mut v: Vec<_> = totals.into_iter().map(|(id, (d, u))| (id, d, u)).collect();
        v.sort();
        v
    }

    /// Stops: a `stopped` announce (bounded wait), connections closed,
    /// every queued block written and synced, the resume file saved.
    pub async fn shutdown(self) -> Result<(), String> {
        let shared = self.shared;
        shared.cancel.cancel();
        shared.tasks.close();
        shared.tasks.wait().await;
        let events = self.driver.await.ok();
        let shared = match Arc::try_unwrap(shared) {
            Ok(s) => s,
            Err(shared) => {
                // A task still holds it (cannot happen once all are done);
                // save what we can.
                save_resume_now(&shared);
                return shared
                    .fatal
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .map_or(Ok(()), Err);
            }
        };
        let Shared {
            mut disk,
            state,
            info,
            info_hash,
            config,
            fatal,
            ..
        } = shared;
        // Writes still queued finish; their verdicts count.
        let storage = disk.storage().clone();
        disk.close();
        drop(disk);
        let mut st = state.into_inner().unwrap_or_else(|e| e.into_inner());
        if let Some(mut events) = events {
            while let Ok(ev) = events.try_recv() {
                if let DiskEvent::Verified {
                    piece, ok: true, ..
                } = ev
                {
                    if !st.have.get(piece as usize) {
                        st.have.set(piece as usize);
                        st.picker.verified(piece, true);
                        st.resume_dirty = true;
                    }
                }
            }
        }
        let fatal = fatal.into_inner().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = &config.resume {
            let have = st.have.clone();
            let path = path.clone();
            let r = tokio::task::spawn_blocking(move || {
                storage.sync().map_err(|e| e.to_string())?;
                crate::resume::save(&path, info_hash, &have, &storage.stamps())
                    .map_err(|e| format!("saving {}: {e}", path.display()))
            })
            .await
            .map_err(|e| e.to_string())?;
            if let Err(e) = r {
                return Err(fatal.unwrap_or(e));
            }
        } else {
            let _ = tokio::task::spawn_blocking(move || storage.sync()).await;
        }
        let _ = info;
        fatal.map_or(Ok(()), Err)
    }
}

trait WantedExt {
    fn is_none_or_get(&self, i: usize) -> bool;
}

impl WantedExt for Option<&Bitfield> {
    fn is_none_or_get(&self, i: usize) -> bool {
        self.map_or(true, |w| w.get(i))
    }
}

async fn accept(shared: Arc<Shared>, listener: TcpListener) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(shared.config.max_peers.max(8)));
    loop {
        let (stream, addr) = tokio::select! {
            () = shared.cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        if shared.lock().peers.len() >= shared.config.max_peers {
            continue;
        }
        // Connections still handshaking are capped too, so a flood of
        // silent ones cannot take every file descriptor.
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            continue;
        };
        let s = shared.clone();
        shared.tasks.spawn(async move {
            crate::peer::run(s, stream, addr, false, Some(permit)).await;
        });
    }
}

/// Dials candidates while there is room.
fn connect_more(shared: &Arc<Shared>) {
    let now = Instant::now();
    let mut st = shared.lock();
    let connecting = st.candidates.values().filter(|c| c.connecting).count();
    let room = shared
        .config
        .max_peers
        .saturating_sub(st.peers.len() + connecting)
        .min(MAX_CONNECTING.saturating_sub(connecting));
    if room == 0 {
        return;
    }
    let seeding = st.is_complete();
    let mut ready: Vec<(u32, SocketAddr)> = st
        .candidates
        .iter()
        .filter(|(a, c)| {
            !c.connected
                && !c.connecting
                && !c.is_self
                && c.next_try.is_none_or_before(now)
                && !st.banned_addrs.contains(a)
        })
        .map(|(a, c)| (c.fails, *a))
        .collect();
    // A seed has nothing to gain from seeds.
    if seeding {
        ready.retain(|(_, a)| !st.candidates.get(a).is_some_and(|c| c.was_seed));
    }
    ready.sort_unstable();
    for (_, addr) in ready.into_iter().take(room) {
        if let Some(c) = st.candidates.get_mut(&addr) {
            c.connecting = true;
        }
        let s = shared.clone();
        shared.tasks.spawn(async move {
            let connected = crate::peer::connect(s.clone(), addr).await;
            if connected {
                s.connect_done(addr);
            } else {
                s.connect_failed(addr);
            }
        });
    }
}

trait BeforeExt {
    fn is_none_or_before(&self, now: Instant) -> bool;
}

impl BeforeExt for Option<Instant> {
    fn is_none_or_before(&self, now: Instant) -> bool {
        self.map_or(true, |t| t <= now)
    }
}

/// The session's clockwork and the disk's verdicts.
async fn drive(
    shared: Arc<Shared>,
    mut events: mpsc::UnboundedReceiver<DiskEvent>,
) -> mpsc::UnboundedReceiver<DiskEvent> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut choke = tokio::time::interval(choker::ROUND);
    choke.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_save = Instant::now();
    loop {
        tokio::select! {
            () = shared.cancel.cancelled() => return events,
            ev = events.recv() => match ev {
                Some(DiskEvent::Verified { piece, ok, blocks }) => verdict(&shared, piece, ok, blocks),
                Some(DiskEvent::Failed(e)) => shared.fail(e.to_string()),
                None => return events,
            },
            _ = tick.tick() => {
                measure(&shared);
                connect_more(&shared);
                let due = shared.lock().resume_dirty
                    && (last_save.elapsed() >= Duration::from_secs(2) || *shared.complete.borrow());
                if due && shared.config.resume.is_some() {
                    last_save = Instant::now();
                    save_resume(&shared);
                }
            }
            _ = choke.tick() => choke_round(&shared),
            () = shared.wake.notified() => connect_more(&shared),
        }
    }
}

fn measure(shared: &Shared) {
    let now = Instant::now();
    let mut st = shared.lock();
    for p in st.peers.values_mut() {
        let down = p.counters.down.load(Ordering::Relaxed);
        let up = p.counters.up.load(Ordering::Relaxed);
        p.down.add(down - p.down.total());
        p.up.add(up - p.up.total());
        p.down.tick(now);
        p.up.tick(now);
    }
}

fn choke_round(shared: &Shared) {
    let mut st = shared.lock();
    let candidates = candidates(&st);
    let st = &mut *st;
    let (unchoke, choke) = st.choker.round(&candidates, &mut st.rng);
    for (keys, cmd) in [(unchoke, true), (choke, false)] {
        for key in keys {
            if let Some(p) = st.peers.get(&key) {
                let _ = p.tx.send(if cmd { Cmd::Unchoke } else { Cmd::Choke });
            }
        }
    }
}

/// A piece's hash is known.
fn verdict(shared: &Shared, piece: u32, ok: bool, digests: Option<Vec<[u8; 20]>>) {
    let mut st = shared.lock();
    let from = st.block_from.remove(&piece).unwrap_or_default();
    st.picker.verified(piece, ok);
    if ok {
        if st.have.get(piece as usize) {
            return;
        }
        st.have.set(piece as usize);
        st.left = st
            .left
            .saturating_sub(shared.info.piece_size(piece as usize));
        st.resume_dirty = true;
        // A piece that failed before: whoever sent a block that differs
        // from the good copy sent bad data.
        if let (Some(before), Some(good)) = (st.failed.remove(&piece), digests) {
            let liars: Vec<Ident> = before
                .iter()
                .zip(&good)
                .filter(|((_, old), new)| old != *new)
                .filter_map(|((who, _), _)| *who)
                .collect();
            for who in liars {
                ban(&mut st, who, "sent data that failed the hash check");
            }
        }
        for p in st.peers.values() {
            let _ = p.tx.send(Cmd::Have(piece));
        }
        if st.is_complete() {
            tracing::debug!("download complete");
            shared.complete.send_replace(true);
        }
    } else {
        st.hash_fails += 1;
        let senders: HashSet<Ident> = from.iter().flatten().copied().collect();
        tracing::warn!(
            "piece {piece} failed its hash check (from {} peer{}); fetching it again",
            senders.len(),
            if senders.len() == 1 { "" } else { "s" }
        );
        if senders.len() == 1 {
            let who = *senders.iter().next().expect("one");
            ban(&mut st, who, "sent a piece that failed the hash check");
        } else if let Some(d) = digests {
            let record = from
                .into_iter()
                .chain(std::iter::repeat(None))
                .zip(d)
                .collect();
            st.failed.insert(piece, record);
        }
        st.poke_all();
    }
}

fn ban(st: &mut State, who: Ident, why: &'static str) {
    let new_id = st.banned_ids.insert(who.peer_id);
    let new_addr = st.banned_addrs.insert(who.addr);
    if !new_id && !new_addr {
        // Its other bad pieces are only now being checked.
        return;
    }
    tracing::warn!("banning peer {} ({why})", who.addr);
    st.candidates.remove(&who.addr);
    for p in st.peers.values() {
        if p.peer_id == who.peer_id || p.addr == who.addr {
            let _ = p.tx.send(Cmd::Close(why));
        }
    }
}

fn save_resume(shared: &Arc<Shared>) {
    if shared.saving.swap(true, Ordering::AcqRel) {
        return;
    }
    let have = {
        let mut st = shared.lock();
        st.resume_dirty = false;
        st.have.clone()
    };
    let s = shared.clone();
    shared.tasks.spawn_blocking(move || {
        write_resume(&s, &have);
        s.saving.store(false, Ordering::Release);
    });
}

fn save_resume_now(shared: &Shared) {
    let have = shared.lock().have.clone();
    write_resume(shared, &have);
}

fn write_resume(shared: &Shared, have: &Bitfield) {
    let Some(path) = &shared.config.resume else {
        return;
    };
    let storage = shared.disk.storage();
    // Sync first: the resume file must only list pieces that are on disk.
    let r = storage.sync().map_err(|e| e.to_string()).and_then(|()| {
        crate::resume::save(path, shared.info_hash, have, &storage.stamps())
            .map_err(|e| format!("saving {}: {e}", path.display()))
    });
    if let Err(e) = r {
        tracing::warn!("resume file not saved: {e}");
    }
}

/// Talks to the trackers until the session stops, then says `stopped`.
async fn announce(shared: Arc<Shared>) {
    if shared.config.trackers.is_empty() {
        return;
    }
    let config = tracker::TrackerConfig {
        local_address: shared.config.bind,
        ..tracker::TrackerConfig::default()
    };
    let client = match tracker::TrackerClient::new(config) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("trackers not used: {e}");
            return;
        }
    };
    let mut list =
        tracker::TrackerList::new(client, shared.config.trackers.clone(), &mut rand::rng());
    let key: u32 = rand::rng().random();
    let params = |event| {
        let st = shared.lock();
        tracker::AnnounceParams {
            info_hash: shared.info_hash,
            peer_id: shared.peer_id,
            port: shared.port,
            uploaded: shared.uploaded.load(Ordering::Relaxed),
            downloaded: shared.downloaded.load(Ordering::Relaxed),
            left: st.left,
            event,
            numwant: 50,
            key,
        }
    };
    let mut complete = shared.complete.subscribe();
    // A download owes its trackers one `completed`.
    let mut owe_completed = !*complete.borrow_and_update();
    let mut event = tracker::Event::Started;
    let mut failures = 0u32;
    loop {
        // Ctrl-C does not wait for a walk through slow trackers.
        let p = params(event);
        let result = tokio::select! {
            r = list.announce(&p) => r,
            () = shared.cancel.cancelled() => break,
        };
        let wait = match result {
            Ok((url, r)) => {
                failures = 0;
                tracing::debug!(
                    "{url}: {} peers, next announce in {:?}",
                    r.peers.len(),
                    r.interval
                );
                if let Some(w) = &r.warning {
                    tracing::warn!("tracker {url} warns: {w}");
                }
                shared.add_candidates(r.peers.iter().copied(), false);
                event = tracker::Event::None;
                let starving = {
                    let st = shared.lock();
                    st.peers.is_empty() && !st.is_complete()
                };
                if starving && r.peers.is_empty() {
                    // Nobody to download from yet: ask again as soon as the
                    // tracker allows (its min interval, at least a minute),
                    // not after the full interval.
                    r.min_interval
                        .unwrap_or(r.interval)
                        .max(Duration::from_secs(60))
                        .min(r.interval)
                } else {
                    r.interval
                }
            }
            Err(e) => {
                failures += 1;
                tracing::warn!("announce failed: {e}");
                Duration::from_secs((15u64 << failures.min(5)).min(300))
            }
        };
        tokio::select! {
            () = shared.cancel.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
            r = complete.wait_for(|&c| c), if owe_completed => {
                owe_completed = false;
                if r.is_ok() {
                    event = tracker::Event::Completed;
                }
            }
        }
    }
    // Tell the trackers we are gone, but do not hang on a dead one.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        list.announce(&params(tracker::Event::Stopped)),
    )
    .await;
}
