//! One torrent being downloaded or seeded: the shared state every
//! connection works on, and the session's own tasks.
//!
//! - The *driver* owns the timers and the disk verdicts: it marks pieces
//!   verified (and tells every peer with `have`), bans peers that sent bad
//!   data, runs the choker every 10 s, dials candidate peers, measures
//!   rates, and saves the resume file.
//! - The *announcer* talks to the trackers (see [`crate::tracker`]).
//! - Each connection is a task of its own ([`crate::peer`], driving a
//!   [`crate::protocol::Connection`]).
//!
//! A torrent lives inside an [`Engine`] (the listening socket, peer id,
//! global limits and disk threads); [`Session::start`] makes an engine of
//! its own for a lone torrent.
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
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use torrent_format::{Info, InfoHash};

use crate::choker::{self, Candidate, Choker};
use crate::disk::{Disk, DiskEvent};
use crate::engine::{AddError, Engine, EngineConfig, EngineShared};
use crate::picker::{PeerKey, Picker};
use crate::rate::RateMeter;
use crate::smartban::SmartBan;
use crate::spread::Spread;
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
    /// Peers some peer's ut_pex named before the session started (a
    /// magnet's metadata fetch): PEX candidates of a public torrent,
    /// ignored for a private one (BEP 27).
    pub pex_peers: Vec<SocketAddr>,
    /// Announce URLs by tier (BEP 12).
    pub trackers: Vec<Vec<String>>,
    pub max_peers: usize,
    /// Most peers of this torrent from one IP address. Loopback peers are processes on this machine and are
    /// not counted.
    pub max_peers_per_host: usize,
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
            pex_peers: Vec::new(),
            trackers: Vec::new(),
            max_peers: 50,
            max_peers_per_host: 8,
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

impl Config {
    /// The engine a lone torrent with this configuration runs in.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            listen: self.listen,
            bind: self.bind,
            // Room for the torrent's peers and as many still handshaking.
            max_connections: self.max_peers.saturating_mul(2).max(16),
            upload_limit: self.upload_limit,
            download_limit: self.download_limit,
            disk_threads: self.disk_threads,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    // The cause is in the message, so it is not also a `source` (an error
    // chain would say it twice).
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] crate::storage::StorageError),
    #[error(transparent)]
    Add(#[from] AddError),
}

/// Requests to a peer before its rate is known: one 256 KiB piece.
pub const QUEUE_START: usize = 16;

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
    /// Banned: close the connection.
    Close(&'static str),
    /// Close the connection for this reason (not the peer's fault).
    Drop(&'static str),
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
    /// Offer pieces one by one instead of sending the bitfield.
    pub initial_seeding: bool,
}

/// Per-connection byte counters, shared with the connection's tasks.
#[derive(Debug, Default)]
pub struct PeerCounters {
    pub down: AtomicU64,
    pub up: AtomicU64,
    /// Requests of its we queued for upload.
    pub asked: AtomicU64,
}

pub(crate) struct PeerEntry {
    pub addr: SocketAddr,
    pub peer_id: [u8; 20],
    pub tx: mpsc::UnboundedSender<Cmd>,
    pub counters: Arc<PeerCounters>,
    /// A `Poke` is queued and not yet handled.
    pub poked: Arc<AtomicBool>,
    /// Its client name from the extended handshake (`v`).
    pub client: Option<String>,
    pub connected_at: Instant,
    pub outgoing: bool,
    /// Where it accepts connections: the address we dialed, or for a peer
    /// that dialed us the port its extended handshake names (`p`). Only
    /// peers with one are passed on by ut_pex.
    pub listen: Option<SocketAddr>,
    /// Its extended handshake said it supports MSE encryption (`e`).
    pub encryption: bool,
    /// It wants to download from us.
    pub interested: bool,
    /// We want pieces it has.
    pub wanted: bool,
    /// When it last sent us payload.
    pub last_given: Option<Instant>,
    /// When we last sent it payload.
    pub last_taken: Option<Instant>,
    /// When it last asked us for a block (that we queued), and the count
    /// of its requests then.
    pub last_asked: Option<Instant>,
    pub asked: u64,
    /// Told to close to make room for a newcomer; no longer counted.
    pub evicted: bool,
    /// It has every piece.
    pub seed: bool,
    pub pieces: usize,
    /// A candidate address that turned out to be this peer (it also
    /// connected to us).
    pub dialed: Option<SocketAddr>,
    pub down: RateMeter,
    pub up: RateMeter,
}

impl PeerEntry {
    /// How readily its slot goes to a newcomer, lowest first: `None` while
    /// data moved either way within [`GRACE`]; otherwise peers that want
    /// nothing from us and have nothing we want first, then those with one
    /// of the two, then both, and within each the longest inactive. Saying
    /// "interested" alone buys no protection (a peer that never asks for
    /// anything would hold its slot for good).
    fn eviction_rank(&self, now: Instant, complete: bool) -> Option<(u8, Instant)> {
        let wanted = self.wanted && !complete;
        let moved = self.last_given.max(self.last_taken);
        let active = if wanted {
            moved.max(Some(self.connected_at))
        } else {
            moved
        };
        if active.is_some_and(|t| now.saturating_duration_since(t) < GRACE) {
            return None;
        }
        let class = u8::from(self.interested) + u8::from(wanted);
        Some((class, moved.unwrap_or(self.connected_at)))
    }
}

/// Who sent a block, remembered until its piece is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ident {
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
    /// Learned from a peer's ut_pex only: unvouched for, so it counts
    /// against [`MAX_PEX_CANDIDATES`] and is forgotten sooner.
    pex: bool,
}

/// Why a handshaken peer is not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("that is us")]
    Us,
    #[error("banned")]
    Banned,
    #[error("already connected to this peer")]
    Duplicate,
    #[error("too many peers, none of them idle")]
    Full,
    #[error("too many connections from that host")]
    SameHost,
}

/// A peer keeps its slot this long after it last gave us a block or took
/// one from us (or, if it has pieces we want, after it connected: a seed
/// may keep us choked for a while).
const GRACE: Duration = Duration::from_secs(60);

/// The same host, for counting connections: the same address, with
/// IPv4-mapped addresses counted as their IPv4 address. (Not a whole IPv6
/// /64: that is often a whole home network or a hosting provider's.)
fn same_host(a: std::net::IpAddr, b: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let canon = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match (canon(a), canon(b)) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a == b,
        (a, b) => a == b,
    }
}

/// Most peer addresses remembered.
const MAX_CANDIDATES: usize = 4000;
/// Most departed peer ids whose byte counts are kept.
const MAX_GONE: usize = 4096;
/// Most connection attempts at once.
const MAX_CONNECTING: usize = 16;
/// Most remembered addresses learned from ut_pex alone. Any connected
/// peer can name up to `pex::MAX_LEARNED_PER_PEER` addresses; this keeps a
/// crowd of them from filling the candidates tracker peers need.
pub(crate) const MAX_PEX_CANDIDATES: usize = 1000;
/// Failed attempts after which an address learned from ut_pex is
/// forgotten (one from a tracker or the command line gets 5).
const PEX_FAILS: u32 = 2;

pub(crate) struct State {
    pub info: Arc<Info>,
    pub picker: Picker,
    /// Verified pieces (what we tell peers we have).
    pub have: Bitfield,
    /// Bytes of wanted pieces not verified yet.
    pub left: u64,
    pub peers: HashMap<PeerKey, PeerEntry>,
    next_key: PeerKey,
    pub choker: Choker,
    pub rng: SmallRng,
    /// Who sent each block, to ban the sender of bad data.
    pub smart: SmartBan,
    /// Initial seeding (BEP 16) once complete.
    pub initial_seeding: bool,
    banned_ids: HashSet<[u8; 20]>,
    banned_addrs: HashSet<SocketAddr>,
    candidates: HashMap<SocketAddr, Candidate_>,
    resume_dirty: bool,
    pub hash_fails: u64,
    /// Initial seeding: how often each piece was offered.
    pub offers: Vec<u32>,
    /// Plain seeding: how many peers each piece went to (made at the
    /// first request once complete).
    pub spread: Option<Spread>,
    /// Byte counts of peers that disconnected, by peer id.
    gone: HashMap<[u8; 20], (u64, u64)>,
}

impl State {
    /// The addresses it would dial, and which of them ut_pex taught it.
    #[cfg(test)]
    pub fn candidate_addrs(&self) -> Vec<(SocketAddr, bool)> {
        let mut v: Vec<_> = self.candidates.iter().map(|(a, c)| (*a, c.pex)).collect();
        v.sort();
        v
    }

    pub fn is_banned(&self, id: &Ident) -> bool {
        self.banned_ids.contains(&id.peer_id) || self.banned_addrs.contains(&id.addr)
    }

    /// Target number of outstanding requests to a peer: its rate times
    /// `time` ([`crate::pace`]), in blocks, between 8 and 500 (the
    /// bandwidth-delay rule). The rate is `delivery`, the connection's own
    /// measure for a peer that answers late, or else the session's meter,
    /// or else, while that says 0 (it has its first sample one to two
    /// seconds in), `early`: the connection's measure since the peer began
    /// to send. [`QUEUE_START`] before any.
    pub fn queue_depth(
        &self,
        key: PeerKey,
        delivery: Option<u64>,
        early: Option<u64>,
        time: Duration,
    ) -> usize {
        let meter = self.peers.get(&key).map_or(0, |p| p.down.rate());
        match delivery.or((meter > 0).then_some(meter)).or(early) {
            None => QUEUE_START,
            Some(rate) => (u128::from(rate) * time.as_millis() / 1000 / u128::from(BLOCK))
                .clamp(8, 500) as usize,
        }
    }

    pub fn is_complete(&self) -> bool {
        self.picker.is_complete()
    }

    /// Admits a handshaken peer unless it is banned, a duplicate, one too
    /// many from its host, or one too many while no peer is idle. When
    /// the torrent is full, the least useful peer that has moved no data
    /// lately ([`PeerEntry::eviction_rank`]) is told to go ([`Cmd::Drop`])
    /// to make room: idle peers can never lock a newcomer out.
    #[allow(clippy::too_many_arguments)]
    pub fn admit(
        &mut self,
        addr: SocketAddr,
        peer_id: [u8; 20],
        outgoing: bool,
        tx: mpsc::UnboundedSender<Cmd>,
        now: Instant,
        max_peers: usize,
        max_per_host: usize,
    ) -> Result<PeerKey, Refused> {
        if self.is_banned(&Ident { peer_id, addr }) {
            return Err(Refused::Banned);
        }
        if let Some(p) = self.peers.values_mut().find(|p| p.peer_id == peer_id) {
            // Connected the other way already: this address reaches it, so
            // do not dial it again while that connection lasts.
            if outgoing {
                p.dialed = Some(addr);
                if let Some(c) = self.candidates.get_mut(&addr) {
                    c.connected = true;
                }
            }
            return Err(Refused::Duplicate);
        }
        let live = || self.peers.values().filter(|p| !p.evicted);
        if !addr.ip().is_loopback()
            && live().filter(|p| same_host(p.addr.ip(), addr.ip())).count() >= max_per_host
        {
            return Err(Refused::SameHost);
        }
        if live().count() >= max_peers {
            let complete = self.is_complete();
            let victim = self
                .peers
                .iter()
                .filter(|(_, p)| !p.evicted)
                .filter_map(|(&key, p)| Some((p.eviction_rank(now, complete)?, key)))
                .min()
                .map(|(_, key)| key);
            let Some(victim) = victim else {
                return Err(Refused::Full);
            };
            let v = self.peers.get_mut(&victim).expect("just found");
            v.evicted = true;
            let _ = v.tx.send(Cmd::Drop("making room for a new peer"));
            tracing::debug!("{}: idle, making room for {addr}", v.addr);
        }
        let key = self.next_key;
        self.next_key = self.next_key.wrapping_add(1);
        self.peers.insert(
            key,
            PeerEntry {
                addr,
                peer_id,
                tx,
                counters: Arc::default(),
                poked: Arc::default(),
                client: None,
                connected_at: now,
                outgoing,
                listen: outgoing.then_some(addr),
                encryption: false,
                interested: false,
                wanted: false,
                last_given: None,
                last_taken: None,
                last_asked: None,
                asked: 0,
                evicted: false,
                seed: false,
                pieces: 0,
                dialed: None,
                down: RateMeter::default(),
                up: RateMeter::default(),
            },
        );
        if let Some(c) = self.candidates.get_mut(&addr) {
            c.connected = true;
            c.fails = 0;
        }
        Ok(key)
    }

    /// We want pieces this peer has (or no longer do).
    pub fn set_wanted(&mut self, key: PeerKey, wanted: bool) {
        if let Some(p) = self.peers.get_mut(&key) {
            p.wanted = wanted;
        }
    }

    /// A peer's extended handshake: its listening port (`p`, for a peer
    /// that dialed us) and whether it speaks MSE, for what ut_pex says of
    /// it.
    pub fn heard_ext_handshake(&mut self, key: PeerKey, port: Option<u16>, encryption: bool) {
        if let Some(p) = self.peers.get_mut(&key) {
            p.encryption = encryption;
            if let (false, Some(port)) = (p.outgoing, port) {
                p.listen = Some(SocketAddr::new(p.addr.ip(), port));
            }
        }
    }

    /// What ut_pex tells the connection `to` (BEP 11): the other peers we
    /// are connected to whose listening address we know, each with its
    /// flags, the ones we dialed (known reachable) first.
    pub fn pex_peers(&self, to: PeerKey) -> Vec<(SocketAddr, u8)> {
        let mut out: Vec<(SocketAddr, u8)> = self
            .peers
            .iter()
            .filter(|&(&key, p)| key != to && !p.evicted)
            .filter_map(|(_, p)| {
                let mut flags = 0;
                if p.seed {
                    flags |= crate::pex::FLAG_SEED;
                }
                if p.outgoing {
                    flags |= crate::pex::FLAG_CONNECTABLE;
                }
                if p.encryption {
                    flags |= crate::pex::FLAG_ENCRYPTION;
                }
                Some((p.listen?, flags))
            })
            .collect();
        out.sort_by_key(|&(addr, flags)| (flags & crate::pex::FLAG_CONNECTABLE == 0, addr));
        out
    }

    /// Addresses a peer's ut_pex named: new ones become candidates, while
    /// fewer than [`MAX_PEX_CANDIDATES`] learned this way are remembered
    /// (and [`MAX_CANDIDATES`] in all). Addresses already known, banned,
    /// or of a peer we are connected to are skipped. Returns how many were
    /// added; the driver dials them on its next tick.
    pub fn add_pex_candidates(&mut self, addrs: &[SocketAddr]) -> usize {
        let mut learned = self.candidates.values().filter(|c| c.pex).count();
        let mut added = 0;
        for &addr in addrs {
            if learned >= MAX_PEX_CANDIDATES || self.candidates.len() >= MAX_CANDIDATES {
                break;
            }
            if addr.port() == 0
                || self.banned_addrs.contains(&addr)
                || self.candidates.contains_key(&addr)
                || self
                    .peers
                    .values()
                    .any(|p| p.addr == addr || p.listen == Some(addr))
            {
                continue;
            }
            self.candidates.insert(
                addr,
                Candidate_ {
                    pex: true,
                    ..Candidate_::default()
                },
            );
            learned += 1;
            added += 1;
        }
        added
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

    /// A peer's interest in us changed; free upload slots go to
    /// interested peers at once — also the slot of a peer that just lost
    /// interest (it took what it wanted), else that slot would sit idle
    /// until the next choke round, up to 10 s of a capped link unused.
    pub fn set_interested(&mut self, key: PeerKey, interested: bool) {
        if let Some(p) = self.peers.get_mut(&key) {
            p.interested = interested;
        }
        self.fill_slots();
    }

    /// Hands free upload slots to interested peers.
    pub fn fill_slots(&mut self) {
        self.choker.rotate(seed_quota(self));
        let candidates = candidates(self);
        let (unchoke, choke) = self.choker.fill(&candidates, Instant::now(), &mut self.rng);
        self.send_chokes(unchoke, choke);
    }

    fn send_chokes(&self, unchoke: Vec<PeerKey>, choke: Vec<PeerKey>) {
        for (keys, unchoke) in [(unchoke, true), (choke, false)] {
            for key in keys {
                if let Some(p) = self.peers.get(&key) {
                    let _ = p.tx.send(if unchoke { Cmd::Unchoke } else { Cmd::Choke });
                }
            }
        }
    }

    /// A torrent's state at its start: `have` verified, only `wanted`
    /// pieces (all when `None`) to fetch.
    pub fn new(
        info: Arc<Info>,
        have: Bitfield,
        wanted: Option<&Bitfield>,
        upload_slots: usize,
        initial_seeding: bool,
    ) -> State {
        // The picker counts unwanted pieces as had: it never asks for them.
        let mut picker_have = have.clone();
        let mut left = 0;
        for i in 0..info.piece_count() {
            if !wanted.is_none_or_get(i) {
                picker_have.set(i);
            } else if !have.get(i) {
                left += info.piece_size(i);
            }
        }
        State {
            picker: Picker::new(info.piece_length(), info.total_length(), picker_have),
            have,
            left,
            peers: HashMap::new(),
            next_key: 0,
            choker: Choker::new(upload_slots),
            rng: SmallRng::from_rng(&mut rand::rng()),
            smart: SmartBan::default(),
            initial_seeding,
            banned_ids: HashSet::new(),
            banned_addrs: HashSet::new(),
            candidates: HashMap::new(),
            resume_dirty: false,
            hash_fails: 0,
            offers: vec![0; info.piece_count()],
            spread: None,
            gone: HashMap::new(),
            info,
        }
    }
}

/// One torrent's side of everything: its state, its disk handle, its
/// tasks, and the engine it runs in.
pub(crate) struct Shared {
    pub engine: Arc<EngineShared>,
    pub info: Arc<Info>,
    pub info_hash: InfoHash,
    pub disk: Disk,
    state: Mutex<State>,
    pub cancel: CancellationToken,
    pub tasks: TaskTracker,
    /// Payload bytes received (`down`, including any later discarded) and
    /// sent (`up`).
    pub totals: Arc<PeerCounters>,
    pub complete: watch::Sender<bool>,
    wake: Notify,
    pub config: Config,
    /// Bytes of the pieces this session downloads (or has).
    pub wanted_bytes: u64,
    fatal: Mutex<Option<String>>,
    saving: AtomicBool,
    /// Why the trackers gave no peers last time, and when they are asked
    /// again (for the progress display); `None` after an answer.
    tracker_problem: Mutex<Option<(String, std::time::Instant)>>,
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
    ) -> Result<Admitted, Refused> {
        let mut st = self.lock();
        if peer_id == self.engine.peer_id {
            if let Some(c) = st.candidates.get_mut(&addr) {
                c.is_self = true;
            }
            return Err(Refused::Us);
        }
        let key = st.admit(
            addr,
            peer_id,
            outgoing,
            tx,
            Instant::now(),
            self.config.max_peers,
            self.config.max_peers_per_host,
        )?;
        let p = &st.peers[&key];
        Ok(Admitted {
            key,
            counters: p.counters.clone(),
            poked: p.poked.clone(),
            initial_seeding: self.config.initial_seeding && st.is_complete(),
        })
    }

    /// A connection ended: free its requests and its slot.
    pub fn unregister(&self, key: PeerKey, has: &Bitfield) {
        let mut st = self.lock();
        st.picker.remove_peer(key, has);
        st.choker.remove(key);
        if let Some(p) = st.peers.remove(&key) {
            // Bounded: a peer reconnecting under ever new ids must not grow
            // it without end (the totals of ids past the bound are lost).
            if st.gone.len() < MAX_GONE || st.gone.contains_key(&p.peer_id) {
                let e = st.gone.entry(p.peer_id).or_default();
                e.0 += p.counters.down.load(Ordering::Relaxed);
                e.1 += p.counters.up.load(Ordering::Relaxed);
            }
            for addr in std::iter::once(p.addr).chain(p.dialed) {
                if let Some(c) = st.candidates.get_mut(&addr) {
                    c.connected = false;
                    c.was_seed = p.seed;
                    c.next_try = Some(Instant::now() + Duration::from_secs(30));
                }
            }
        }
        st.poke_all();
        st.fill_slots();
        drop(st);
        self.wake.notify_one();
    }

    /// Peers from a tracker or the command line.
    pub fn add_candidates(&self, addrs: impl IntoIterator<Item = SocketAddr>, pinned: bool) {
        let mut st = self.lock();
        for addr in addrs {
            let ip = addr.ip();
            let nowhere = ip.is_unspecified()
                || ip.is_multicast()
                || ip == std::net::IpAddr::V4(std::net::Ipv4Addr::BROADCAST);
            if addr.port() == 0 || nowhere || st.banned_addrs.contains(&addr) {
                continue;
            }
            if st.candidates.len() >= MAX_CANDIDATES && !st.candidates.contains_key(&addr) {
                break;
            }
            let c = st.candidates.entry(addr).or_default();
            c.pinned |= pinned;
            // Vouched for by a tracker or the user now.
            c.pex = false;
        }
        drop(st);
        self.wake.notify_one();
    }

    fn connect_failed(&self, addr: SocketAddr) {
        let mut st = self.lock();
        if let Some(c) = st.candidates.get_mut(&addr) {
            c.connecting = false;
            c.fails += 1;
            let limit = if c.pex { PEX_FAILS } else { 5 };
            if c.fails >= limit && !c.pinned {
                st.candidates.remove(&addr);
            } else {
                let back_off = Duration::from_secs(10 << c.fails.min(6));
                c.next_try = Some(Instant::now() + back_off);
            }
        }
    }

    /// A dial we could not use for now (torrent or host full): try the
    /// address again in a minute, not on the next tick.
    pub(crate) fn not_now(&self, addr: SocketAddr) {
        if let Some(c) = self.lock().candidates.get_mut(&addr) {
            c.next_try = Some(Instant::now() + REFUSED_RETRY);
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

/// While seeding, how much a peer is sent per turn of the upload slots
/// ([`Choker::rotate`]).
fn seed_quota(st: &State) -> Option<u64> {
    st.is_complete().then(|| st.info.piece_length())
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
            busy_at: p.last_taken.max(p.last_asked),
            sent: p.counters.up.load(Ordering::Relaxed),
        })
        .collect()
}

/// A running torrent.
pub struct Session {
    shared: Arc<Shared>,
    /// The engine this torrent made for itself ([`Session::start`]); shut
    /// down with it.
    own_engine: Option<Engine>,
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
    /// Why no tracker answered the last announce, and how long until the
    /// next try; `None` when the last one answered (or none was asked).
    pub tracker_problem: Option<(String, Duration)>,
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
    /// Its client: the name in its extended handshake (`v`), else what its
    /// peer id says.
    pub client: String,
}

/// Our peer id: `-SH0001-` and 12 random bytes.
pub fn new_peer_id() -> [u8; 20] {
    let mut id = [0u8; 20];
    id[..8].copy_from_slice(b"-SH0001-");
    rand::rng().fill(&mut id[8..]);
    id
}

impl Session {
    /// Starts a lone torrent over `storage`, whose verified pieces are
    /// `have`, in an engine of its own listening on `config.listen`.
    pub async fn start(
        info: Arc<Info>,
        storage: Arc<Storage>,
        have: Bitfield,
        config: Config,
    ) -> Result<Session, SessionError> {
        let engine = Engine::start(config.engine()).await?;
        let mut session = engine.add(info, storage, have, config).await?;
        session.own_engine = Some(engine);
        Ok(session)
    }

    /// A torrent in `engine` (see [`Engine::add`]).
    pub(crate) fn attach(
        engine: Arc<EngineShared>,
        info: Arc<Info>,
        storage: Arc<Storage>,
        have: Bitfield,
        config: Config,
    ) -> Session {
        let (events_tx, events) = mpsc::unbounded_channel();
        let disk = engine.disk.attach(info.clone(), storage, events_tx);
        let state = State::new(
            info.clone(),
            have,
            config.wanted.as_ref(),
            config.upload_slots,
            config.initial_seeding,
        );
        let wanted_bytes = (0..info.piece_count())
            .filter(|&i| config.wanted.as_ref().is_none_or_get(i))
            .map(|i| info.piece_size(i))
            .sum();
        let complete = state.is_complete();
        let shared = Arc::new(Shared {
            info_hash: info.info_hash(),
            info,
            disk,
            state: Mutex::new(state),
            cancel: engine.cancel.child_token(),
            tasks: TaskTracker::new(),
            totals: Arc::new(PeerCounters::default()),
            complete: watch::Sender::new(complete),
            wake: Notify::new(),
            wanted_bytes,
            config,
            fatal: Mutex::new(None),
            saving: AtomicBool::new(false),
            tracker_problem: Mutex::new(None),
            engine,
        });
        shared.add_candidates(shared.config.peers.clone(), true);
        if !shared.info.is_private() {
            shared.lock().add_pex_candidates(&shared.config.pex_peers);
        }
        shared.tasks.spawn(announce(shared.clone()));
        if !shared.info.is_private() {
            if let Some(dht) = shared.engine.dht.get().cloned() {
                shared.tasks.spawn(dht_announce(shared.clone(), dht));
            }
        }
        let driver = shared.tasks.spawn(drive(shared.clone(), events));
        Session {
            shared,
            own_engine: None,
            driver,
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn info_hash(&self) -> InfoHash {
        self.shared.info_hash
    }

    /// Where the engine listens (shared by all its torrents).
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.shared.config.listen.ip(), self.shared.engine.port)
    }

    pub fn peer_id(&self) -> [u8; 20] {
        self.shared.engine.peer_id
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
            downloaded: self.shared.totals.down.load(Ordering::Relaxed),
            uploaded: self.shared.totals.up.load(Ordering::Relaxed),
            down_rate: st.peers.values().map(|p| p.down.rate()).sum(),
            up_rate: st.peers.values().map(|p| p.up.rate()).sum(),
            peers: st.peers.len(),
            seeds: st.peers.values().filter(|p| p.seed).count(),
            hash_fails: st.hash_fails,
            banned: st.banned_ids.len(),
            complete: st.is_complete(),
            tracker_problem: self
                .shared
                .tracker_problem
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|(why, at)| {
                    (
                        why.clone(),
                        at.saturating_duration_since(std::time::Instant::now()),
                    )
                }),
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
                client: p
                    .client
                    .clone()
                    .unwrap_or_else(|| crate::peer::client_name(&p.peer_id)),
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
        let Session {
            shared,
            own_engine,
            driver,
        } = self;
        // No new connections for it, then none at all.
        shared.engine.remove(&shared.info_hash);
        shared.cancel.cancel();
        shared.tasks.close();
        shared.tasks.wait().await;
        let events = driver.await.ok();
        // Writes still queued finish; their verdicts count.
        shared.disk.flush().await;
        let have = {
            let mut st = shared.lock();
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
            st.have.clone()
        };
        let fatal = shared
            .fatal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let storage = shared.disk.storage().clone();
        let result = if let Some(path) = shared.config.resume.clone() {
            let info_hash = shared.info_hash;
            tokio::task::spawn_blocking(move || {
                storage.sync().map_err(|e| e.to_string())?;
                crate::resume::save(
                    &path,
                    info_hash,
                    &have,
                    &storage.stamps(),
                    storage.selected(),
                )
                .map_err(|e| format!("saving {}: {e}", path.display()))
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
        } else {
            let _ = tokio::task::spawn_blocking(move || storage.sync()).await;
            Ok(())
        };
        drop(shared);
        if let Some(engine) = own_engine {
            engine.shutdown().await;
        }
        match (fatal, result) {
            (Some(f), _) => Err(f),
            (None, r) => r,
        }
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
    // Fewest failed dials first; at equal counts, peers a tracker or the
    // user named before ones only some peer's PEX did.
    let mut ready: Vec<(u32, bool, SocketAddr)> = st
        .candidates
        .iter()
        .filter(|(a, c)| {
            !c.connected
                && !c.connecting
                && !c.is_self
                && c.next_try.is_none_or_before(now)
                && !st.banned_addrs.contains(a)
        })
        .map(|(a, c)| (c.fails, c.pex, *a))
        .collect();
    // A seed has nothing to gain from seeds.
    if seeding {
        ready.retain(|(_, _, a)| !st.candidates.get(a).is_some_and(|c| c.was_seed));
    }
    ready.sort_unstable();
    for (_, _, addr) in ready.into_iter().take(room) {
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
                // Idle slots go to waiting peers.
                shared.lock().fill_slots();
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
        if down > p.down.total() {
            p.last_given = Some(now);
        }
        if up > p.up.total() {
            p.last_taken = Some(now);
        }
        let asked = p.counters.asked.load(Ordering::Relaxed);
        if asked != p.asked {
            p.asked = asked;
            p.last_asked = Some(now);
        }
        p.down.add(down - p.down.total());
        p.up.add(up - p.up.total());
        p.down.tick(now);
        p.up.tick(now);
    }
    if tracing::enabled!(target: "shoal::slots", tracing::Level::DEBUG) {
        let st = &*st;
        let (mut unchoked, mut took, mut waiting, mut up) = (0, 0, 0, 0);
        for (&key, p) in &st.peers {
            let fresh = p.last_taken.is_some_and(|t| t == now);
            if st.choker.is_unchoked(key) {
                unchoked += 1;
                took += usize::from(fresh);
            } else if p.interested {
                waiting += 1;
            }
            up += p.up.rate();
        }
        tracing::debug!(target: "shoal::slots", unchoked, took, waiting, up, have = st.picker.have().count(), "slots");
    }
}

fn choke_round(shared: &Shared) {
    let mut st = shared.lock();
    let quota = seed_quota(&st);
    st.choker.rotate(quota);
    let candidates = candidates(&st);
    let st = &mut *st;
    let (unchoke, choke) = st.choker.round(&candidates, Instant::now(), &mut st.rng);
    st.send_chokes(unchoke, choke);
}

/// A piece's hash is known.
fn verdict(shared: &Shared, piece: u32, ok: bool, digests: Option<Vec<[u8; 20]>>) {
    let mut st = shared.lock();
    st.picker.verified(piece, ok);
    let v = st.smart.verdict(piece, ok, digests);
    for (who, guilt) in v.ban {
        ban(&mut st, &shared.engine.drops, who, guilt.describe());
    }
    if ok {
        if st.have.get(piece as usize) {
            return;
        }
        st.have.set(piece as usize);
        tracing::debug!(target: "shoal::pieces", piece, "verified");
        st.left = st
            .left
            .saturating_sub(shared.info.piece_size(piece as usize));
        st.resume_dirty = true;
        for p in st.peers.values() {
            let _ = p.tx.send(Cmd::Have(piece));
        }
        if st.is_complete() {
            tracing::debug!("download complete");
            shared.complete.send_replace(true);
        }
    } else {
        st.hash_fails += 1;
        tracing::warn!(
            "piece {piece} failed its hash check (from {} peer{}); fetching it again",
            v.senders,
            if v.senders == 1 { "" } else { "s" }
        );
        st.poke_all();
    }
}

/// How long a candidate we refused for room (torrent or host full) waits.
const REFUSED_RETRY: Duration = Duration::from_secs(60);

fn ban(st: &mut State, drops: &crate::droplog::DropLog, who: Ident, why: &'static str) {
    let new_id = st.banned_ids.insert(who.peer_id);
    let new_addr = st.banned_addrs.insert(who.addr);
    if !new_id && !new_addr {
        // Its other bad pieces are only now being checked.
        return;
    }
    let client = st
        .peers
        .values()
        .find(|p| p.peer_id == who.peer_id)
        .and_then(|p| p.client.clone())
        .unwrap_or_else(|| crate::peer::client_name(&who.peer_id));
    tracing::debug!("{}: banned ({why})", who.addr);
    drops.report(who.addr.ip(), || {
        format!("banning peer {} ({client}): {why}", who.addr)
    });
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

fn write_resume(shared: &Shared, have: &Bitfield) {
    let Some(path) = &shared.config.resume else {
        return;
    };
    let storage = shared.disk.storage();
    // Sync first: the resume file must only list pieces that are on disk.
    let r = storage.sync().map_err(|e| e.to_string()).and_then(|()| {
        crate::resume::save(
            path,
            shared.info_hash,
            have,
            &storage.stamps(),
            storage.selected(),
        )
        .map_err(|e| format!("saving {}: {e}", path.display()))
    });
    if let Err(e) = r {
        tracing::warn!("resume file not saved: {e}");
    }
}

/// Talks to the trackers until the session stops, then says `stopped`.
/// How often a torrent looks itself up in the DHT and announces.
const DHT_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Sooner again while the DHT is still joining (few nodes answered).
const DHT_RETRY: Duration = Duration::from_secs(60);

/// Looks the torrent up in the DHT and announces our port there, on start
/// and every [`DHT_INTERVAL`]; the peers found become candidates.
async fn dht_announce(shared: Arc<Shared>, dht: Arc<crate::dht::Dht>) {
    let announce = crate::dht::Announce {
        port: shared.engine.port,
        implied_port: false,
    };
    loop {
        let mut events = dht.get_peers(shared.info_hash.0, Some(announce)).await;
        let mut found = 0;
        let mut answered_by = 0;
        loop {
            let e = tokio::select! {
                e = events.recv() => e,
                () = shared.cancel.cancelled() => return,
            };
            match e {
                Some(crate::dht::LookupEvent::Peers(peers)) => {
                    found += peers.len();
                    shared.add_candidates(peers, false);
                }
                Some(crate::dht::LookupEvent::Done {
                    answered,
                    announced,
                    ..
                }) => {
                    answered_by = answered;
                    tracing::debug!(
                        "DHT: {found} peer{}, {answered} node{} answered, announced to {announced}",
                        if found == 1 { "" } else { "s" },
                        if answered == 1 { "" } else { "s" }
                    );
                    break;
                }
                None => break,
            }
        }
        let wait = if answered_by < 8 {
            DHT_RETRY
        } else {
            DHT_INTERVAL
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.cancel.cancelled() => return,
        }
    }
}

async fn announce(shared: Arc<Shared>) {
    if shared.config.trackers.is_empty() {
        return;
    }
    let client = match shared.engine.tracker() {
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
            peer_id: shared.engine.peer_id,
            port: shared.engine.port,
            uploaded: shared.totals.up.load(Ordering::Relaxed),
            downloaded: shared.totals.down.load(Ordering::Relaxed),
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
    // What the last failed walk said: the same again is not repeated at
    // the default level every few minutes.
    let mut said: Option<String> = None;
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
                *shared
                    .tracker_problem
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                let shown = tracker::shown_url(&url);
                tracing::debug!(
                    "tracker {shown}: {} peers, next announce in {:?}",
                    r.peers.len(),
                    r.interval
                );
                if said.take().is_some() {
                    tracing::info!("tracker {shown}: answering again");
                }
                if let Some(w) = &r.warning {
                    tracing::warn!("tracker {shown} warns: {w}");
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
                let text = e.to_string();
                let wait = Duration::from_secs((15u64 << failures.min(5)).min(300));
                *shared
                    .tracker_problem
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) =
                    Some((text.clone(), std::time::Instant::now() + wait));
                if said.as_deref() == Some(text.as_str()) {
                    tracing::debug!("{text}");
                } else {
                    tracing::warn!("{text}");
                    said = Some(text);
                }
                wait
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A torrent of `pieces` pieces of 32 KiB (two blocks each; the last
    /// one shorter), all verified when `complete`, nothing otherwise.
    pub(crate) fn test_state(pieces: usize, complete: bool) -> State {
        let len = pieces * 32 * 1024 - 1000;
        let (info, _) = crate::storage::tests::torrent(&[("", len)], 32 * 1024);
        let mut have = Bitfield::new(info.piece_count());
        if complete {
            (0..pieces).for_each(|i| {
                have.set(i);
            });
        }
        State::new(info, have, None, 4, false)
    }

    /// Registers a peer in `st` as `Shared::register` would; returns its
    /// key and the receiving end of its command channel.
    pub(crate) fn add_peer(st: &mut State, n: u8) -> (PeerKey, mpsc::UnboundedReceiver<Cmd>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let addr = ([10, 0, 0, n], 6881).into();
        let key = st
            .admit(addr, [n; 20], false, tx, Instant::now(), 1000, 1000)
            .unwrap();
        (key, rx)
    }

    fn join(
        st: &mut State,
        addr: &str,
        id: u8,
        now: Instant,
        max: usize,
    ) -> Result<(PeerKey, mpsc::UnboundedReceiver<Cmd>), Refused> {
        let (tx, rx) = mpsc::unbounded_channel();
        let key = st.admit(addr.parse().unwrap(), [id; 20], false, tx, now, max, 8)?;
        Ok((key, rx))
    }

    #[test]
    fn a_slot_given_up_by_a_peer_that_lost_interest_is_handed_on_at_once() {
        let mut st = test_state(8, true);
        st.choker = Choker::new(1);
        let mut peers: Vec<_> = (1..=3).map(|n| add_peer(&mut st, n)).collect();
        let unchoked = |rx: &mut mpsc::UnboundedReceiver<Cmd>| {
            std::iter::from_fn(|| rx.try_recv().ok()).any(|c| matches!(c, Cmd::Unchoke))
        };
        // Two interested: both slots (the regular and the optimistic).
        st.set_interested(peers[0].0, true);
        st.set_interested(peers[1].0, true);
        assert!(unchoked(&mut peers[0].1) && unchoked(&mut peers[1].1));
        // The third waits: no slot is free.
        st.set_interested(peers[2].0, true);
        assert!(!unchoked(&mut peers[2].1));
        // The first took what it wanted: its slot goes to the third now,
        // not at the next round.
        st.set_interested(peers[0].0, false);
        assert!(unchoked(&mut peers[2].1));
    }

    #[test]
    fn pex_candidates_are_bounded_in_total() {
        let mut st = test_state(8, false);
        let addrs: Vec<SocketAddr> = (0..3000u32)
            .map(|n| SocketAddr::from(([10, 9, (n >> 8) as u8, n as u8], 6881)))
            .collect();
        // Many peers, each naming its share.
        let mut added = 0;
        for chunk in addrs.chunks(100) {
            added += st.add_pex_candidates(chunk);
        }
        assert_eq!(added, MAX_PEX_CANDIDATES);
        assert_eq!(st.candidate_addrs().len(), MAX_PEX_CANDIDATES);
        // Known already: not counted twice.
        assert_eq!(st.add_pex_candidates(&addrs[..10]), 0);
        // Tracker peers still have room.
        assert!(st.candidates.len() < MAX_CANDIDATES);
    }

    #[test]
    fn idle_peers_make_room_for_a_newcomer() {
        let t0 = Instant::now();
        let mut st = test_state(8, true);
        let mut rxs = Vec::new();
        for i in 0..4u8 {
            let at = t0 + Duration::from_secs(u64::from(i));
            rxs.push(join(&mut st, &format!("10.0.1.{i}:6881"), i, at, 4).unwrap());
        }
        // The two oldest want something from us: they go last.
        for (key, _) in &rxs[..2] {
            st.set_interested(*key, true);
        }
        let now = t0 + Duration::from_secs(10);
        let (new, _) = join(&mut st, "10.0.2.1:6881", 10, now, 4).unwrap();
        // The oldest idle one (connected at t0 + 2 s) goes.
        let (victim, rx) = &mut rxs[2];
        assert!(st.peers[victim].evicted);
        assert!(matches!(rx.try_recv(), Ok(Cmd::Drop(_))));
        assert!(rxs[3].1.try_recv().is_err());
        // Next, the other idle one; the newcomer is idle too, but newer.
        join(&mut st, "10.0.2.2:6881", 11, now, 4).unwrap();
        assert!(st.peers[&rxs[3].0].evicted);
        join(&mut st, "10.0.2.3:6881", 12, now, 4).unwrap();
        assert!(st.peers[&new].evicted);
        // Once every live peer is interested, saying so is no shield:
        // the one inactive longest goes (the oldest of the two first).
        let live: Vec<PeerKey> = st
            .peers
            .iter()
            .filter(|(_, p)| !p.evicted)
            .map(|(&k, _)| k)
            .collect();
        for &k in &live {
            st.set_interested(k, true);
        }
        join(&mut st, "10.0.2.4:6881", 13, now, 4).unwrap();
        assert!(st.peers[&rxs[0].0].evicted && !st.peers[&rxs[1].0].evicted);
        // Peers we uploaded to within the grace keep their slots: when all
        // live ones did, a newcomer is refused.
        for p in st.peers.values_mut() {
            p.last_taken = Some(now);
        }
        assert_eq!(
            join(&mut st, "10.0.2.5:6881", 14, now, 4).unwrap_err(),
            Refused::Full
        );
        let later = now + GRACE;
        join(&mut st, "10.0.2.5:6881", 14, later, 4).unwrap();
    }

    #[test]
    fn a_leecher_keeps_peers_that_give() {
        let t0 = Instant::now();
        let mut st = test_state(8, false);
        let (a, _) = join(&mut st, "10.0.1.1:6881", 1, t0, 2).unwrap();
        let (b, _) = join(&mut st, "10.0.1.2:6881", 2, t0, 2).unwrap();
        st.set_wanted(a, true);
        st.set_wanted(b, true);
        // Both just connected and have what we want: no room.
        let soon = t0 + Duration::from_secs(5);
        assert_eq!(
            join(&mut st, "10.0.1.3:6881", 3, soon, 2).unwrap_err(),
            Refused::Full
        );
        // `a` gave a block at 20 s; at 70 s `b` has given nothing for 70 s.
        st.peers.get_mut(&a).unwrap().last_given = Some(t0 + Duration::from_secs(20));
        let later = t0 + Duration::from_secs(70);
        join(&mut st, "10.0.1.3:6881", 3, later, 2).unwrap();
        assert!(st.peers[&b].evicted && !st.peers[&a].evicted);
    }

    #[test]
    fn one_host_has_a_bounded_share() {
        let now = Instant::now();
        let mut st = test_state(8, true);
        for i in 0..8u8 {
            let addr = format!("10.0.0.1:{}", 7000 + u16::from(i));
            join(&mut st, &addr, i, now, 50).unwrap();
        }
        assert_eq!(
            join(&mut st, "10.0.0.1:9000", 20, now, 50).unwrap_err(),
            Refused::SameHost
        );
        // The same address mapped into IPv6 is the same host.
        assert_eq!(
            join(&mut st, "[::ffff:10.0.0.1]:9000", 21, now, 50).unwrap_err(),
            Refused::SameHost
        );
        join(&mut st, "10.0.0.2:9000", 22, now, 50).unwrap();
        // An IPv6 address is one host; its /64 neighbours are others.
        for i in 0..8u8 {
            let addr = format!("[2001:db8:0:1::1]:{}", 7000 + u16::from(i));
            join(&mut st, &addr, 30 + i, now, 50).unwrap();
        }
        assert_eq!(
            join(&mut st, "[2001:db8:0:1::1]:9000", 40, now, 50).unwrap_err(),
            Refused::SameHost
        );
        join(&mut st, "[2001:db8:0:1::2]:6881", 41, now, 50).unwrap();
        // Loopback peers are processes of this machine: not capped.
        for i in 0..12u8 {
            let addr = format!("127.0.0.1:{}", 7000 + u16::from(i));
            join(&mut st, &addr, 50 + i, now, 50).unwrap();
        }
    }
}
