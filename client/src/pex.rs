//! Peer exchange, ut_pex (BEP 11): peers tell each other, about once a
//! minute, which peers they have connected to or dropped since their last
//! message.
//!
//! Sans-IO, in three parts the connection layer drives with `now` passed in:
//!
//! - [`PexMessage`]: the codec of the extended message's payload.
//! - [`PexOut`], one per connection: what to send it and when. It sends the
//!   first message at once and then at most one per [`PEX_INTERVAL`], each
//!   the difference against what it has already told this connection.
//! - [`PexIn`], one per connection: whether a message that arrived may be
//!   used ([`PexIn::receive`]) and which of its peers to learn
//!   ([`PexIn::take_candidates`]).
//!
//! The limits follow libtorrent, the client most of a swarm runs: it keeps
//! the arrival times of a peer's last 3 messages and disconnects a peer
//! whose 4th comes while the oldest of them is less than 60 s old. Sending
//! at most one message a minute after the first keeps us well inside that;
//! [`PexIn`] applies the same rule to others. Everything a peer sends is
//! bounded before it is kept: the payload by [`MAX_PEX_MESSAGE`], the
//! entries of one message by [`MAX_PEX_ENTRIES_IN`], the peers one
//! connection makes us learn by [`MAX_CANDIDATES_PER_MESSAGE`] and
//! [`MAX_LEARNED_PER_PEER`].
//!
//! Addresses are compared canonically: an IPv4-mapped IPv6 address is its
//! IPv4 address (and is sent as one), and IPv6 scope and flow labels are
//! dropped. Entries no one can connect to (port 0, an unspecified,
//! multicast or broadcast address) are neither sent nor kept.
//!
//! Integration: the extension is named [`EXTENSION_NAME`] in the BEP 10
//! handshake's `m`. Create [`PexOut`] and [`PexIn`] once the peer's extended
//! handshake says it speaks ut_pex; on a torrent marked private (BEP 27)
//! do neither.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use torrent_format::bencode::{self, Value};

/// The name of the extension in the extended handshake's `m`.
pub const EXTENSION_NAME: &str = "ut_pex";

/// The peer supports encryption (BEP 11 `added.f`).
pub const FLAG_ENCRYPTION: u8 = 0x01;
/// The peer is a seed, or a partial seed.
pub const FLAG_SEED: u8 = 0x02;
/// The peer supports uTP (BEP 29). Positive only: 0 does not say it does not.
pub const FLAG_UTP: u8 = 0x04;
/// The peer supports ut_holepunch (BEP 55).
pub const FLAG_HOLEPUNCH: u8 = 0x08;
/// The peer is reachable: the sender connected to it (outgoing).
pub const FLAG_CONNECTABLE: u8 = 0x10;

/// Largest ut_pex payload accepted, checked before anything is parsed; a
/// larger one is a protocol violation. 64 KiB holds over 10 000 IPv4
/// entries; libtorrent's messages carry at most 100 added peers plus the
/// peers it dropped since its last message, far below this. (libtorrent's
/// own limit is 500 KiB; ours is tighter because we keep so few entries.)
pub const MAX_PEX_MESSAGE: usize = 64 * 1024;
/// Most `added` (IPv4 and IPv6 together) entries kept from one message, and
/// as many `dropped` ones; the rest are ignored.
pub const MAX_PEX_ENTRIES_IN: usize = 200;
/// Most peers we list as added in one message; the rest wait for the next.
pub const MAX_PEX_ADDED: usize = 50;
/// Most peers we list as dropped in one message; the rest wait for the next.
pub const MAX_PEX_DROPPED: usize = 50;
/// Most peers [`PexOut`] remembers having told one connection about; more
/// are told only once some of these are dropped.
pub const MAX_PEX_TOLD: usize = 500;
/// Least time between two of our messages on one connection (after the
/// first, which goes at once), and the window of [`PexIn`]'s rule.
pub const PEX_INTERVAL: Duration = Duration::from_secs(60);
/// Messages a peer may send within one [`PEX_INTERVAL`]; one more is a
/// violation (libtorrent's rule).
pub const MAX_PEX_BURST: usize = 3;
/// Most new peers [`PexIn::take_candidates`] gives from one message.
pub const MAX_CANDIDATES_PER_MESSAGE: usize = 50;
/// Most peers one connection can make us learn over its whole life.
pub const MAX_LEARNED_PER_PEER: usize = 100;

/// One ut_pex message: peers the sender connected to since its last
/// message, each with its `added.f` flags (the `FLAG_*` bits), and peers it
/// dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PexMessage {
    pub added: Vec<(SocketAddr, u8)>,
    pub dropped: Vec<SocketAddr>,
}

/// Why a ut_pex payload was refused. The connection layer disconnects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PexError {
    #[error("ut_pex message is {len} bytes, more than {MAX_PEX_MESSAGE}")]
    TooLarge { len: usize },
    // As in `extension::ExtError`: the cause is in the message, not the
    // `source()`, so a printed chain shows it once.
    #[error("ut_pex message is not bencode: {0}")]
    Bencode(bencode::DecodeError),
    #[error("ut_pex message is not a dictionary")]
    NotADict,
}

impl From<bencode::DecodeError> for PexError {
    fn from(e: bencode::DecodeError) -> Self {
        PexError::Bencode(e)
    }
}

impl PexMessage {
    /// True when the message says nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.dropped.is_empty()
    }

    /// The payload of the extended message: a dictionary with all six keys
    /// (`added`, `added.f`, `added6`, `added6.f`, `dropped`, `dropped6`),
    /// empty ones too, as libtorrent writes it; compact big-endian
    /// address + port entries, one flag byte per added entry. Writes every
    /// entry given: the per-message caps are [`PexOut`]'s.
    pub fn encode(&self) -> Vec<u8> {
        let (mut added, mut added_f, mut added6, mut added6_f) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for &(addr, flags) in &self.added {
            match canonical(addr) {
                SocketAddr::V4(a) => {
                    added.extend_from_slice(&a.ip().octets());
                    added.extend_from_slice(&a.port().to_be_bytes());
                    added_f.push(flags);
                }
                SocketAddr::V6(a) => {
                    added6.extend_from_slice(&a.ip().octets());
                    added6.extend_from_slice(&a.port().to_be_bytes());
                    added6_f.push(flags);
                }
            }
        }
        let (mut dropped, mut dropped6) = (Vec::new(), Vec::new());
        for &addr in &self.dropped {
            match canonical(addr) {
                SocketAddr::V4(a) => {
                    dropped.extend_from_slice(&a.ip().octets());
                    dropped.extend_from_slice(&a.port().to_be_bytes());
                }
                SocketAddr::V6(a) => {
                    dropped6.extend_from_slice(&a.ip().octets());
                    dropped6.extend_from_slice(&a.port().to_be_bytes());
                }
            }
        }
        // A BTreeMap keeps the keys in the raw byte order bencode requires
        // ("added" < "added.f" < "added6" < "added6.f" < "dropped" < ...).
        let d: BTreeMap<Vec<u8>, Value> = [
            ("added", added),
            ("added.f", added_f),
            ("added6", added6),
            ("added6.f", added6_f),
            ("dropped", dropped),
            ("dropped6", dropped6),
        ]
        .into_iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), Value::Bytes(v)))
        .collect();
        Value::Dict(d).encode()
    }

    /// A peer's ut_pex payload, bounded and lenient like libtorrent:
    ///
    /// - over [`MAX_PEX_MESSAGE`] bytes: [`PexError::TooLarge`], before any
    ///   parsing; not bencode or not a dictionary: an error;
    /// - unknown keys and known keys that are not strings are ignored;
    /// - a compact string whose length is not a multiple of 6 (18 for
    ///   IPv6) is read for its whole entries, the tail ignored;
    /// - a missing or short `added.f` gives flags 0;
    /// - entries no one can connect to are skipped, IPv4-mapped IPv6 ones
    ///   read as IPv4;
    /// - at most [`MAX_PEX_ENTRIES_IN`] added (IPv4 first) and as many
    ///   dropped are kept.
    pub fn decode(payload: &[u8]) -> Result<PexMessage, PexError> {
        if payload.len() > MAX_PEX_MESSAGE {
            return Err(PexError::TooLarge { len: payload.len() });
        }
        let Value::Dict(d) = bencode::decode(payload)? else {
            return Err(PexError::NotADict);
        };
        let string = |key: &str| match d.get(key.as_bytes()) {
            Some(Value::Bytes(b)) => b.as_slice(),
            _ => &[],
        };
        let mut msg = PexMessage::default();
        for (key, flags_key, size) in [("added", "added.f", 6), ("added6", "added6.f", 18)] {
            let flags = string(flags_key);
            for (i, entry) in string(key).chunks_exact(size).enumerate() {
                if msg.added.len() >= MAX_PEX_ENTRIES_IN {
                    break;
                }
                if let Some(addr) = compact_entry(entry) {
                    msg.added.push((addr, flags.get(i).copied().unwrap_or(0)));
                }
            }
        }
        for (key, size) in [("dropped", 6), ("dropped6", 18)] {
            for entry in string(key).chunks_exact(size) {
                if msg.dropped.len() >= MAX_PEX_ENTRIES_IN {
                    break;
                }
                if let Some(addr) = compact_entry(entry) {
                    msg.dropped.push(addr);
                }
            }
        }
        Ok(msg)
    }
}

/// One compact entry (4 or 16 address bytes, then a big-endian port), or
/// None if no one can connect to it.
fn compact_entry(entry: &[u8]) -> Option<SocketAddr> {
    let (ip, port) = entry.split_at(entry.len().checked_sub(2)?);
    let port = u16::from_be_bytes([port[0], port[1]]);
    let ip = if let Ok(v4) = <[u8; 4]>::try_from(ip) {
        IpAddr::V4(Ipv4Addr::from(v4))
    } else {
        IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(ip).ok()?))
    };
    let addr = canonical(SocketAddr::new(ip, port));
    usable(addr).then_some(addr)
}

/// The form addresses are compared and sent in: IPv4-mapped IPv6 as IPv4,
/// no IPv6 scope or flow label.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => SocketAddr::new(IpAddr::V6(*a.ip()), a.port()),
        },
        v4 => v4,
    }
}

/// How far an address reaches: this host, a private network, anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    Host,
    Private,
    Public,
}

/// The [`Scope`] of a canonical address.
fn scope(ip: IpAddr) -> Scope {
    match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Scope::Host,
        // 100.64.0.0/10 is carrier-grade NAT space: private too.
        IpAddr::V4(v4)
            if v4.is_private()
                || v4.is_link_local()
                || (v4.octets()[0] == 100 && v4.octets()[1] & 0xc0 == 64) =>
        {
            Scope::Private
        }
        IpAddr::V6(v6) if v6.is_loopback() => Scope::Host,
        // fc00::/7 (unique local), fe80::/10 (link-local).
        IpAddr::V6(v6) if (v6.segments()[0] & 0xfe00) == 0xfc00 => Scope::Private,
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Scope::Private,
        _ => Scope::Public,
    }
}

/// Whether anyone could connect to a (canonical) address.
fn usable(addr: SocketAddr) -> bool {
    let ip = addr.ip();
    addr.port() != 0
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && ip != IpAddr::V4(Ipv4Addr::BROADCAST)
}

/// The sending side of one connection: which peers it has been told about,
/// and when its next message is due.
///
/// Drive it from the connection's timer: when [`PexOut::due`], call
/// [`PexOut::next`] with the peers to advertise and send what it returns.
/// The first message may go at once; after it, at most one per
/// [`PEX_INTERVAL`], whatever the caller does.
#[derive(Debug, Clone)]
pub struct PexOut {
    /// When the connection started (the first message is due then).
    start: Instant,
    /// When `next` last ran while due (whether or not it gave a message).
    last: Option<Instant>,
    /// Peers this connection has been told about and not told dropped
    /// (canonical, at most [`MAX_PEX_TOLD`]).
    told: BTreeSet<SocketAddr>,
}

impl PexOut {
    /// A connection that has been told nothing; its first message is due
    /// at `now`.
    pub fn new(now: Instant) -> PexOut {
        PexOut {
            start: now,
            last: None,
            told: BTreeSet::new(),
        }
    }

    /// Whether a message may be sent at `now`.
    pub fn due(&self, now: Instant) -> bool {
        match self.last {
            None => now >= self.start,
            Some(last) => now.saturating_duration_since(last) >= PEX_INTERVAL,
        }
    }

    /// When the next message is due: the deadline for the connection's
    /// timer (it may be in the past).
    pub fn next_due(&self) -> Instant {
        match self.last {
            None => self.start,
            // Past the end of time nothing is ever due again, which is
            // what `due` says too.
            Some(last) => last.checked_add(PEX_INTERVAL).unwrap_or(last),
        }
    }

    /// The next message, if one is due and there is something to say.
    ///
    /// `current` is the peers to advertise with their `FLAG_*` bits — the
    /// ones we are connected to and know a listening port of (BEP 11 lists
    /// peers one is connected to). `exclude` is this connection's peer (the
    /// address we see and its listening address): it learns nothing from
    /// itself. Only those exact addresses are left out — another peer on
    /// the same host (behind the same NAT, or on loopback) is a peer of its
    /// own. Entries no one can connect to are skipped.
    ///
    /// When due, the message is the difference against what this connection
    /// was told: at most [`MAX_PEX_DROPPED`] told peers no longer in
    /// `current`, and at most [`MAX_PEX_ADDED`] peers of `current` it was
    /// not told about, in `current`'s order (while it remembers fewer than
    /// [`MAX_PEX_TOLD`]); the rest wait for a later message. It is recorded
    /// as told and the next message is due [`PEX_INTERVAL`] later — also
    /// when the difference is empty, in which case nothing is sent
    /// (libtorrent sends nothing then either). Not due: None, and nothing
    /// changes.
    pub fn next(
        &mut self,
        current: &[(SocketAddr, u8)],
        exclude: &[SocketAddr],
        now: Instant,
    ) -> Option<PexMessage> {
        if !self.due(now) {
            return None;
        }
        self.last = Some(now);
        let exclude: Vec<SocketAddr> = exclude.iter().map(|&a| canonical(a)).collect();
        let advertised = |addr: SocketAddr| usable(addr) && !exclude.contains(&addr);
        let now_listed: HashSet<SocketAddr> = current
            .iter()
            .map(|&(addr, _)| canonical(addr))
            .filter(|&addr| advertised(addr))
            .collect();
        let dropped: Vec<SocketAddr> = self
            .told
            .iter()
            .filter(|addr| !now_listed.contains(addr))
            .take(MAX_PEX_DROPPED)
            .copied()
            .collect();
        for addr in &dropped {
            self.told.remove(addr);
        }
        let mut added = Vec::new();
        for &(addr, flags) in current {
            if added.len() >= MAX_PEX_ADDED || self.told.len() >= MAX_PEX_TOLD {
                break;
            }
            let addr = canonical(addr);
            // `insert` is false for one already told, or listed twice.
            if advertised(addr) && self.told.insert(addr) {
                added.push((addr, flags));
            }
        }
        let msg = PexMessage { added, dropped };
        (!msg.is_empty()).then_some(msg)
    }
}

/// Why a peer's ut_pex messages end its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PexViolation {
    #[error("ut_pex message of {len} bytes, more than {MAX_PEX_MESSAGE}")]
    TooLarge { len: usize },
    #[error("more than {MAX_PEX_BURST} ut_pex messages within 60 s")]
    TooFrequent,
}

/// What to do with a ut_pex message that arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PexVerdict {
    /// Decode it and learn from it.
    Use,
    /// Ignore its content: the connection has already been condemned (a
    /// [`PexVerdict::Disconnect`] was returned before) and is closing.
    Ignore,
    /// Ignore its content and close the connection, logging the reason.
    /// Returned once, for the message that broke a rule.
    Disconnect(PexViolation),
}

/// The receiving side of one connection: libtorrent's flood rule and the
/// bound on what one peer can make us learn.
#[derive(Debug, Clone, Default)]
pub struct PexIn {
    /// Arrival times of the last [`MAX_PEX_BURST`] messages used, oldest
    /// first (None: not that many yet).
    arrivals: [Option<Instant>; MAX_PEX_BURST],
    violation: Option<PexViolation>,
    /// Peers given by `take_candidates` (at most [`MAX_LEARNED_PER_PEER`]).
    given: HashSet<SocketAddr>,
}

impl PexIn {
    pub fn new() -> PexIn {
        PexIn::default()
    }

    /// Judges a message of `payload_len` bytes arriving at `now`, before
    /// its payload is parsed. A payload over [`MAX_PEX_MESSAGE`], or a
    /// message that comes while the oldest of the last [`MAX_PEX_BURST`] is
    /// less than [`PEX_INTERVAL`] old (a 4th within 60 s), is a violation:
    /// [`PexVerdict::Disconnect`], and [`PexVerdict::Ignore`] for anything
    /// after it. Otherwise [`PexVerdict::Use`], and its time is recorded.
    /// A peer sending one message a minute is never refused, and neither
    /// is a burst of 3 (a client's first messages may come close together).
    pub fn receive(&mut self, now: Instant, payload_len: usize) -> PexVerdict {
        if self.violation.is_some() {
            return PexVerdict::Ignore;
        }
        let violation = if payload_len > MAX_PEX_MESSAGE {
            Some(PexViolation::TooLarge { len: payload_len })
        } else {
            match self.arrivals[0] {
                Some(oldest) if now.saturating_duration_since(oldest) < PEX_INTERVAL => {
                    Some(PexViolation::TooFrequent)
                }
                _ => None,
            }
        };
        if let Some(v) = violation {
            self.violation = Some(v);
            return PexVerdict::Disconnect(v);
        }
        self.arrivals.rotate_left(1);
        self.arrivals[MAX_PEX_BURST - 1] = Some(now);
        PexVerdict::Use
    }

    /// The rule this connection broke, if it broke one.
    pub fn violation(&self) -> Option<PexViolation> {
        self.violation
    }

    /// The peers of a message (one [`PexIn::receive`] said to use) to add
    /// as candidates: its added ones this connection has not given before,
    /// at most [`MAX_CANDIDATES_PER_MESSAGE`] of them and at most
    /// [`MAX_LEARNED_PER_PEER`] over the connection's life. `dropped` is
    /// not acted on: a peer another one dropped may still be fine for us.
    /// A peer `from` a public address may name only public addresses, one
    /// on a private network also those of private networks, and only one
    /// on loopback (this machine) loopback ones: nobody on the internet
    /// can make us dial our own LAN or this host.
    /// Filtering our own address and peers already known is the caller's.
    pub fn take_candidates(&mut self, msg: &PexMessage, from: IpAddr) -> Vec<SocketAddr> {
        let from = scope(canonical(SocketAddr::new(from, 0)).ip());
        let mut out = Vec::new();
        for &(addr, _) in &msg.added {
            if out.len() >= MAX_CANDIDATES_PER_MESSAGE || self.given.len() >= MAX_LEARNED_PER_PEER {
                break;
            }
            let addr = canonical(addr);
            if usable(addr) && scope(addr.ip()) >= from && self.given.insert(addr) {
                out.push(addr);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(i: u32, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), port)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn compact4(addrs: &[SocketAddr]) -> Vec<u8> {
        let mut out = Vec::new();
        for a in addrs {
            let SocketAddr::V4(a) = a else {
                panic!("v4 only")
            };
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        out
    }

    /// A dictionary written by hand, keys in the order given.
    fn dict(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = b"d".to_vec();
        for (k, v) in entries {
            out.extend_from_slice(format!("{}:{k}{}:", k.len(), v.len()).as_bytes());
            out.extend_from_slice(v);
        }
        out.push(b'e');
        out
    }

    #[test]
    fn round_trips_ipv4_ipv6_and_flags() {
        let msg = PexMessage {
            added: vec![
                (
                    "10.0.0.1:6881".parse().unwrap(),
                    FLAG_SEED | FLAG_CONNECTABLE,
                ),
                ("[2001:db8::1]:51413".parse().unwrap(), FLAG_ENCRYPTION),
                ("192.168.1.2:1".parse().unwrap(), 0),
                (
                    "[2001:db8::2]:65535".parse().unwrap(),
                    FLAG_UTP | FLAG_HOLEPUNCH,
                ),
            ],
            dropped: vec![
                "1.2.3.4:80".parse().unwrap(),
                "[2001:db8::3]:443".parse().unwrap(),
            ],
        };
        let decoded = PexMessage::decode(&msg.encode()).unwrap();
        // IPv4 entries come first: they travel in `added`, IPv6 in `added6`.
        let expected = PexMessage {
            added: vec![msg.added[0], msg.added[2], msg.added[1], msg.added[3]],
            dropped: msg.dropped.clone(),
        };
        assert_eq!(decoded, expected);
        assert_eq!(PexMessage::decode(&expected.encode()).unwrap(), expected);
        let empty = PexMessage::default();
        assert_eq!(PexMessage::decode(&empty.encode()).unwrap(), empty);
    }

    #[test]
    fn encodes_sorted_keys_and_writes_mapped_addresses_as_ipv4() {
        let msg = PexMessage {
            added: vec![("[::ffff:10.0.0.1]:6881".parse().unwrap(), FLAG_SEED)],
            dropped: vec!["[::ffff:10.0.0.2]:6882".parse().unwrap()],
        };
        let bytes = msg.encode();
        assert_eq!(
            bytes,
            b"d5:added6:\x0a\x00\x00\x01\x1a\xe17:added.f1:\x026:added60:8:added6.f0:\
              7:dropped6:\x0a\x00\x00\x02\x1a\xe28:dropped60:e"
        );
        let back = PexMessage::decode(&bytes).unwrap();
        assert_eq!(
            back.added,
            vec![("10.0.0.1:6881".parse().unwrap(), FLAG_SEED)]
        );
        assert_eq!(back.dropped, vec!["10.0.0.2:6882".parse().unwrap()]);
        // The same address given as IPv4-mapped IPv6 in `added6` reads as IPv4.
        let mut mapped = [0u8; 18];
        mapped[10..12].copy_from_slice(&[0xff, 0xff]);
        mapped[12..].copy_from_slice(&[10, 0, 0, 1, 0x1a, 0xe1]);
        let m = PexMessage::decode(&dict(&[("added6", &mapped)])).unwrap();
        assert_eq!(m.added, vec![("10.0.0.1:6881".parse().unwrap(), 0)]);
    }

    #[test]
    fn reads_a_libtorrent_message() {
        // libtorrent writes all six keys; two added peers: a connectable one
        // and a seed.
        let raw = b"d5:added12:\x0a\x00\x00\x01\x1a\xe1\xc0\xa8\x01\x02\xc8\xd57:added.f2:\x10\x02\
                    6:added618:\x20\x01\x0d\xb8\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x09\x00\x508:added6.f1:\x01\
                    7:dropped6:\x01\x02\x03\x04\x00\x158:dropped60:e";
        let m = PexMessage::decode(raw).unwrap();
        assert_eq!(
            m.added,
            vec![
                ("10.0.0.1:6881".parse().unwrap(), FLAG_CONNECTABLE),
                ("192.168.1.2:51413".parse().unwrap(), FLAG_SEED),
                ("[2001:db8::9]:80".parse().unwrap(), FLAG_ENCRYPTION),
            ]
        );
        assert_eq!(m.dropped, vec!["1.2.3.4:21".parse().unwrap()]);
        // Only `added` and `added.f`, as the brief's example.
        let m = PexMessage::decode(
            b"d5:added12:\x0a\x00\x00\x01\x1a\xe1\x0a\x00\x00\x02\x1a\xe27:added.f2:\x10\x02e",
        )
        .unwrap();
        assert_eq!(m.added.len(), 2);
        assert_eq!(m.added[1], ("10.0.0.2:6882".parse().unwrap(), FLAG_SEED));
        assert!(m.dropped.is_empty());
    }

    #[test]
    fn refuses_oversize_before_parsing_and_non_dictionaries() {
        // Not even bencode: had it been parsed, the error would be Bencode.
        let big = vec![b'x'; MAX_PEX_MESSAGE + 1];
        assert_eq!(
            PexMessage::decode(&big),
            Err(PexError::TooLarge {
                len: MAX_PEX_MESSAGE + 1
            })
        );
        assert!(matches!(
            PexMessage::decode(b"li1ee"),
            Err(PexError::NotADict)
        ));
        assert!(matches!(
            PexMessage::decode(b"d5:added"),
            Err(PexError::Bencode(_))
        ));
        assert!(PexMessage::decode(b"").is_err());
        // Keys of the wrong type are ignored.
        assert_eq!(
            PexMessage::decode(b"d5:addedi5e7:droppedle3:fooi1ee").unwrap(),
            PexMessage::default()
        );
    }

    #[test]
    fn truncates_what_is_too_many() {
        let many: Vec<SocketAddr> = (1..=1000).map(|i| v4(i, 6881)).collect();
        let raw = dict(&[("added", &compact4(&many)), ("dropped", &compact4(&many))]);
        assert!(raw.len() <= MAX_PEX_MESSAGE);
        let m = PexMessage::decode(&raw).unwrap();
        assert_eq!(m.added.len(), MAX_PEX_ENTRIES_IN);
        assert_eq!(m.dropped.len(), MAX_PEX_ENTRIES_IN);
        assert_eq!(m.added[0].0, many[0]);
        assert_eq!(
            m.dropped[MAX_PEX_ENTRIES_IN - 1],
            many[MAX_PEX_ENTRIES_IN - 1]
        );
    }

    #[test]
    fn garbage_tail_short_flags_and_unusable_entries() {
        let good = [v4(1, 6881), v4(2, 6882), v4(3, 6883)];
        let mut added = compact4(&good);
        added.extend_from_slice(b"\x01\x02\x03"); // a partial 4th entry
                                                  // Flags for only the first entry.
        let m = PexMessage::decode(&dict(&[("added", &added), ("added.f", b"\x02")])).unwrap();
        assert_eq!(
            m.added,
            vec![(good[0], FLAG_SEED), (good[1], 0), (good[2], 0)]
        );
        // A tail on IPv6 too, and no flags at all.
        let mut added6 = vec![0x20, 0x01, 0x0d, 0xb8];
        added6.extend_from_slice(&[0; 11]);
        added6.extend_from_slice(&[1, 0x1a, 0xe1]);
        added6.extend_from_slice(&[0xff; 17]);
        let m = PexMessage::decode(&dict(&[("added6", &added6)])).unwrap();
        assert_eq!(m.added, vec![("[2001:db8::1]:6881".parse().unwrap(), 0)]);

        // Port 0, unspecified, multicast and broadcast entries are dropped;
        // the flags stay with the entry they were sent for.
        let bad: Vec<SocketAddr> = [
            "10.0.0.9:0",
            "0.0.0.0:6881",
            "224.0.0.1:6881",
            "255.255.255.255:6881",
            "10.0.0.10:6881",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let m = PexMessage::decode(&dict(&[
            ("added", &compact4(&bad)),
            ("added.f", b"\x01\x01\x01\x01\x12"),
            ("dropped", &compact4(&bad)),
        ]))
        .unwrap();
        assert_eq!(m.added, vec![(bad[4], 0x12)]);
        assert_eq!(m.dropped, vec![bad[4]]);
        let mut v6 = vec![0u8; 16]; // ::
        v6.extend_from_slice(&[0x1a, 0xe1]);
        v6.extend_from_slice(&[0xff, 0x02]); // ff02::...: multicast
        v6.extend_from_slice(&[0; 14]);
        v6.extend_from_slice(&[0x1a, 0xe1]);
        let m = PexMessage::decode(&dict(&[("added6", &v6), ("dropped6", &v6)])).unwrap();
        assert!(m.is_empty());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        use proptest::prelude::*;
        proptest!(|(bytes in proptest::collection::vec(any::<u8>(), 0..512))| {
            let _ = PexMessage::decode(&bytes);
            let mut raw = b"d5:added".to_vec();
            raw.extend_from_slice(format!("{}:", bytes.len()).as_bytes());
            raw.extend_from_slice(&bytes);
            raw.extend_from_slice(format!("7:added.f{}:", bytes.len() % 7).as_bytes());
            raw.extend_from_slice(&bytes[..bytes.len() % 7]);
            raw.push(b'e');
            let m = PexMessage::decode(&raw).unwrap();
            prop_assert!(m.added.len() <= bytes.len() / 6);
        });
    }

    /// The peers as flags-0 entries.
    fn entries(addrs: &[SocketAddr]) -> Vec<(SocketAddr, u8)> {
        addrs.iter().map(|&a| (a, 0)).collect()
    }

    #[test]
    fn pex_out_first_message_at_once_then_once_a_minute() {
        let t0 = Instant::now();
        let peer = v4(999, 7000);
        let mut out = PexOut::new(t0);
        assert!(out.due(t0));
        assert_eq!(out.next_due(), t0);
        let first = out
            .next(&entries(&[v4(1, 1), v4(2, 2)]), &[peer], t0)
            .unwrap();
        assert_eq!(first.added, entries(&[v4(1, 1), v4(2, 2)]));
        assert!(first.dropped.is_empty());
        assert_eq!(out.next_due(), t0 + PEX_INTERVAL);
        // A change soon after waits for the minute.
        let later = entries(&[v4(2, 2), v4(3, 3)]);
        assert!(!out.due(t0 + secs(59)));
        assert_eq!(out.next(&later, &[peer], t0 + secs(59)), None);
        let second = out.next(&later, &[peer], t0 + secs(60)).unwrap();
        assert_eq!(second.added, entries(&[v4(3, 3)]));
        assert_eq!(second.dropped, vec![v4(1, 1)]);
        // Nothing changed: nothing sent, but the timer moves on.
        assert_eq!(out.next(&later, &[peer], t0 + secs(120)), None);
        assert!(!out.due(t0 + secs(150)));
        assert_eq!(
            out.next(&entries(&[v4(4, 4)]), &[peer], t0 + secs(150)),
            None
        );
        let third = out
            .next(&entries(&[v4(4, 4)]), &[peer], t0 + secs(180))
            .unwrap();
        assert_eq!(third.added, entries(&[v4(4, 4)]));
        assert_eq!(third.dropped, vec![v4(2, 2), v4(3, 3)]);
    }

    #[test]
    fn pex_out_never_lists_the_peer_itself_nor_the_unusable() {
        let t0 = Instant::now();
        // The peer as we see it, and its listening address.
        let peer: SocketAddr = "10.0.0.7:51000".parse().unwrap();
        let listen: SocketAddr = "10.0.0.7:6881".parse().unwrap();
        let current: Vec<(SocketAddr, u8)> = [
            "10.0.0.7:6881",          // the peer, at its listening port
            "[::ffff:10.0.0.7]:6881", // the peer, IPv4-mapped
            "10.0.0.7:6882",          // another peer on the same host
            "10.0.0.8:0",             // port 0
            "0.0.0.0:6881",           // unspecified
            "[ff02::1]:6881",         // multicast
            "10.0.0.8:6881",          // fine
            "[::ffff:10.0.0.9]:6881", // fine, sent as IPv4
            "10.0.0.8:6881",          // listed twice
        ]
        .iter()
        .map(|s| (s.parse().unwrap(), FLAG_CONNECTABLE))
        .collect();
        let expected: Vec<(SocketAddr, u8)> = ["10.0.0.7:6882", "10.0.0.8:6881", "10.0.0.9:6881"]
            .iter()
            .map(|s| (s.parse().unwrap(), FLAG_CONNECTABLE))
            .collect();
        let msg = PexOut::new(t0).next(&current, &[peer, listen], t0).unwrap();
        assert_eq!(msg.added, expected);
        // Excluded addresses given IPv4-mapped still match.
        let mapped: SocketAddr = "[::ffff:10.0.0.7]:6881".parse().unwrap();
        let msg = PexOut::new(t0).next(&current, &[mapped], t0).unwrap();
        assert_eq!(msg.added, expected);
    }

    #[test]
    fn pex_out_caps_added_and_dropped_and_catches_up() {
        let t0 = Instant::now();
        let peer = v4(9999, 1);
        let mut out = PexOut::new(t0);
        let all: Vec<SocketAddr> = (1..=120).map(|i| v4(i, 6881)).collect();
        let mut told = HashSet::new();
        for (k, expected) in [50, 50, 20, 0].into_iter().enumerate() {
            let at = t0 + PEX_INTERVAL * k as u32;
            let msg = out.next(&entries(&all), &[peer], at);
            let added = msg.map(|m| m.added).unwrap_or_default();
            assert_eq!(added.len(), expected);
            for (a, _) in added {
                assert!(told.insert(a), "{a} told twice");
            }
        }
        assert_eq!(told.len(), 120);
        // All of them go: dropped in batches of 50 as well.
        let mut dropped = HashSet::new();
        for (k, expected) in [50, 50, 20].into_iter().enumerate() {
            let at = t0 + PEX_INTERVAL * (4 + k as u32);
            let msg = out.next(&[], &[peer], at).unwrap();
            assert!(msg.added.is_empty());
            assert_eq!(msg.dropped.len(), expected);
            dropped.extend(msg.dropped);
        }
        assert_eq!(dropped, told);
        assert_eq!(out.next(&[], &[peer], t0 + PEX_INTERVAL * 7), None);
    }

    #[test]
    fn pex_out_remembers_a_bounded_number() {
        let t0 = Instant::now();
        let peer = v4(99_999, 1);
        let mut out = PexOut::new(t0);
        let all: Vec<SocketAddr> = (1..=700).map(|i| v4(i, 6881)).collect();
        let mut total = 0;
        for k in 0..20 {
            if let Some(m) = out.next(&entries(&all), &[peer], t0 + PEX_INTERVAL * k) {
                total += m.added.len();
            }
        }
        assert_eq!(total, MAX_PEX_TOLD);
        assert_eq!(out.told.len(), MAX_PEX_TOLD);
        // Once the first 100 go, 100 of those waiting are told in their place.
        let at = t0 + PEX_INTERVAL * 20;
        let m = out.next(&entries(&all[100..]), &[peer], at).unwrap();
        assert_eq!(m.dropped.len(), MAX_PEX_DROPPED);
        assert_eq!(m.added.len(), MAX_PEX_DROPPED);
        assert!(out.told.len() <= MAX_PEX_TOLD);
    }

    #[test]
    fn pex_out_ten_minute_run_never_sends_twice_within_a_minute() {
        let t0 = Instant::now();
        let peer = v4(5000, 6881);
        let mut out = PexOut::new(t0);
        // What the peer believes we have told it, from our messages alone.
        let mut believed: HashSet<SocketAddr> = HashSet::new();
        let mut sent_at: Vec<Instant> = Vec::new();
        let mut current: Vec<(SocketAddr, u8)> = Vec::new();
        let mut next_id = 1;
        // A tick every second, as a connection timer would; the peer set
        // changes every few seconds (peers come, some go, the peer itself
        // is listed too).
        for s in 0..600u64 {
            let now = t0 + secs(s);
            if s % 3 == 0 {
                for _ in 0..4 {
                    current.push((v4(next_id, 6881), FLAG_CONNECTABLE));
                    next_id += 1;
                }
                if s % 7 == 0 && current.len() > 10 {
                    current.drain(..8);
                }
                if s == 30 {
                    current.push((peer, 0));
                }
            }
            if !out.due(now) {
                assert!(out.next(&current, &[peer], now).is_none());
                continue;
            }
            let Some(msg) = out.next(&current, &[peer], now) else {
                continue;
            };
            if let Some(&prev) = sent_at.last() {
                assert!(now - prev >= PEX_INTERVAL, "sent {:?} apart", now - prev);
            }
            sent_at.push(now);
            assert!(msg.added.len() <= MAX_PEX_ADDED);
            assert!(msg.dropped.len() <= MAX_PEX_DROPPED);
            for (a, _) in &msg.added {
                assert_ne!(*a, peer, "listed the peer itself");
                assert!(believed.insert(*a), "{a} added twice");
            }
            for a in &msg.dropped {
                assert!(believed.remove(a), "{a} dropped but never added");
                assert!(
                    !current.iter().any(|(c, _)| c == a),
                    "{a} dropped while present"
                );
            }
            // Whatever the peer believes we have is still ours or will be
            // reported dropped; nothing is believed that we never had.
            assert!(believed.len() <= MAX_PEX_TOLD);
            // libtorrent's receiving rule holds at every message.
            let mut peer_in = PexIn::new();
            for &t in &sent_at {
                assert_eq!(peer_in.receive(t, 0), PexVerdict::Use);
            }
        }
        assert_eq!(sent_at.len(), 10);
        assert!(sent_at.windows(2).all(|w| w[1] - w[0] >= PEX_INTERVAL));
        // Some were dropped along the way and reported.
        assert!(believed.len() < next_id as usize - 1);
    }

    #[test]
    fn pex_in_allows_a_burst_of_three_then_disconnects() {
        let t0 = Instant::now();
        let mut pex = PexIn::new();
        assert_eq!(pex.receive(t0, 100), PexVerdict::Use);
        assert_eq!(pex.receive(t0 + secs(1), 100), PexVerdict::Use);
        assert_eq!(pex.receive(t0 + secs(2), 100), PexVerdict::Use);
        assert_eq!(pex.violation(), None);
        assert_eq!(
            pex.receive(t0 + secs(59), 100),
            PexVerdict::Disconnect(PexViolation::TooFrequent)
        );
        assert_eq!(pex.violation(), Some(PexViolation::TooFrequent));
        // Anything after the verdict is ignored, even if it would be fine.
        assert_eq!(pex.receive(t0 + secs(600), 100), PexVerdict::Ignore);
        assert!(PexViolation::TooFrequent.to_string().contains("60 s"));

        // Exactly 60 s after the oldest of three is allowed.
        let mut pex = PexIn::new();
        for s in [0, 1, 2, 60, 61, 62, 120] {
            assert_eq!(pex.receive(t0 + secs(s), 0), PexVerdict::Use, "at {s}");
        }
        // Now the oldest of the last three is the one at 61 s.
        assert!(matches!(
            pex.receive(t0 + Duration::from_millis(120_900), 0),
            PexVerdict::Disconnect(PexViolation::TooFrequent)
        ));
    }

    #[test]
    fn pex_in_steady_sender_runs_an_hour() {
        let t0 = Instant::now();
        let mut pex = PexIn::new();
        for m in 0..=60 {
            assert_eq!(pex.receive(t0 + secs(60 * m), 1000), PexVerdict::Use);
        }
        // A sender 20 s apart (3 a minute) is also within the rule...
        let mut pex = PexIn::new();
        for k in 0..180 {
            assert_eq!(pex.receive(t0 + secs(20 * k), 10), PexVerdict::Use);
        }
        // ...but one 19 s apart is not, at its 4th message.
        let mut pex = PexIn::new();
        for k in 0..3 {
            assert_eq!(pex.receive(t0 + secs(19 * k), 10), PexVerdict::Use);
        }
        assert!(matches!(
            pex.receive(t0 + secs(57), 10),
            PexVerdict::Disconnect(_)
        ));
    }

    #[test]
    fn pex_in_disconnects_on_oversize() {
        let t0 = Instant::now();
        let mut pex = PexIn::new();
        assert_eq!(pex.receive(t0, MAX_PEX_MESSAGE), PexVerdict::Use);
        assert_eq!(
            pex.receive(t0 + secs(60), MAX_PEX_MESSAGE + 1),
            PexVerdict::Disconnect(PexViolation::TooLarge {
                len: MAX_PEX_MESSAGE + 1
            })
        );
        assert_eq!(pex.receive(t0 + secs(120), 10), PexVerdict::Ignore);
    }

    /// A sender on a private network.
    const LAN: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 99));

    #[test]
    fn a_peer_names_no_address_closer_to_us_than_itself() {
        let all: Vec<SocketAddr> = [
            "127.0.0.1:22",
            "[::1]:22",
            "[::ffff:127.0.0.1]:23",
            "192.168.1.1:80",
            "10.1.2.3:6881",
            "172.16.0.1:6881",
            "169.254.1.1:6881",
            "100.64.0.1:6881",
            "[fd00::1]:6881",
            "[fe80::1]:6881",
            "8.8.8.8:6881",
            "[2001:db8::1]:6881",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let msg = PexMessage {
            added: all.iter().map(|&a| (a, 0)).collect(),
            dropped: vec![],
        };
        let public: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(
            PexIn::new().take_candidates(&msg, public),
            vec![all[10], all[11]]
        );
        let from_lan = PexIn::new().take_candidates(&msg, LAN);
        assert_eq!(from_lan, all[3..].to_vec());
        // A mapped loopback sender is a loopback one: it may name anything
        // (the mapped duplicate of 127.0.0.1 is canonical, so it counts).
        let local: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(PexIn::new().take_candidates(&msg, local).len(), all.len());
    }

    #[test]
    fn take_candidates_is_bounded_and_skips_duplicates() {
        let mut pex = PexIn::new();
        let msg = |ids: std::ops::Range<u32>| PexMessage {
            added: ids.map(|i| (v4(i, 6881), 0)).collect(),
            dropped: vec![],
        };
        let first = pex.take_candidates(&msg(0..80), LAN);
        assert_eq!(first.len(), MAX_CANDIDATES_PER_MESSAGE);
        assert_eq!(first, (0..50).map(|i| v4(i, 6881)).collect::<Vec<_>>());
        // Already given ones are skipped; new ones fill up to the life cap.
        let second = pex.take_candidates(&msg(0..200), LAN);
        assert_eq!(second, (50..100).map(|i| v4(i, 6881)).collect::<Vec<_>>());
        assert!(pex.take_candidates(&msg(200..300), LAN).is_empty());

        // Duplicates within one message and mapped forms count once; the
        // unusable are skipped.
        let mut pex = PexIn::new();
        let m = PexMessage {
            added: vec![
                ("10.0.0.1:6881".parse().unwrap(), 0),
                ("[::ffff:10.0.0.1]:6881".parse().unwrap(), 0),
                ("10.0.0.1:6881".parse().unwrap(), FLAG_SEED),
                ("10.0.0.2:0".parse().unwrap(), 0),
                ("10.0.0.1:6882".parse().unwrap(), 0),
            ],
            dropped: vec!["10.0.0.3:1".parse().unwrap()],
        };
        assert_eq!(
            pex.take_candidates(&m, LAN),
            vec![
                "10.0.0.1:6881".parse::<SocketAddr>().unwrap(),
                "10.0.0.1:6882".parse().unwrap()
            ]
        );
        assert!(pex.take_candidates(&m, LAN).is_empty());
    }

    #[test]
    fn what_we_send_a_libtorrent_style_receiver_accepts() {
        // Our sender against our receiver (libtorrent's rule) over an hour,
        // with the caller polling as often as it likes.
        let t0 = Instant::now();
        let mut out = PexOut::new(t0);
        let mut pex_in = PexIn::new();
        let peer = v4(1, 1);
        for ms in (0..3_600_000u64).step_by(250) {
            let now = t0 + Duration::from_millis(ms);
            let current = entries(&[v4(2 + (ms / 10_000) as u32, 6881)]);
            if let Some(msg) = out.next(&current, &[peer], now) {
                let payload = msg.encode();
                assert_eq!(pex_in.receive(now, payload.len()), PexVerdict::Use);
                let back = PexMessage::decode(&payload).unwrap();
                assert_eq!(back, msg);
            }
        }
    }
}
