//! The UDP tracker protocol (BEP 15), sans-IO: [`handle`] takes one
//! datagram and its source and writes the reply (or nothing) into a
//! buffer; [`crate::server`] moves the bytes in batches.
//!
//! - connect → a connection id: a keyed hash (SipHash with a random key per
//!   process) of the client's IP and a one-minute window, so no state is
//!   kept per client and an id stays good for one to two minutes.
//! - announce / scrape need a valid id; a wrong one gets an error, never
//!   peers, so a spoofed source learns nothing and gets nothing sent to it
//!   but a short error.
//! - No reply is ever longer than the datagram that caused it, except the
//!   connect, announce and scrape answers the protocol defines (and those
//!   only after the id proves the source). Errors that would be longer than
//!   the request are dropped instead.
//! - BEP 41 URL data after an announce carries the path, so
//!   `udp://host:port/<passkey>/announce` works with passkeys.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use torrent_format::InfoHash;

use crate::request::Event;
use crate::store::ScrapeEntry;
use crate::swarm::{canonical_ip, AnnounceOutcome};
use crate::{Ask, Tracker};

/// The magic number a connect request starts with.
pub const PROTOCOL_ID: u64 = 0x0417_2710_1980;
/// Most info hashes in one scrape (BEP 15: "up to about 74").
pub const MAX_SCRAPE: usize = 74;
/// Largest datagram read; real requests are 16 to a few hundred bytes.
pub const MAX_REQUEST: usize = 2048;
/// Largest reply written: what fits a 1500-byte link in one IPv6 datagram,
/// so no answer is fragmented.
pub const MAX_REPLY: usize = 1452;
/// How long one connection-id window lasts; ids of the current and the
/// previous window are accepted.
pub const WINDOW_SECS: u64 = 60;

const CONNECT: u32 = 0;
const ANNOUNCE: u32 = 1;
const SCRAPE: u32 = 2;
const ERROR: u32 = 3;

/// Issues and checks connection ids.
pub struct ConnectionIds {
    key: RandomState,
}

impl Default for ConnectionIds {
    fn default() -> Self {
        ConnectionIds::new()
    }
}

impl ConnectionIds {
    /// A fresh random key.
    pub fn new() -> ConnectionIds {
        ConnectionIds {
            key: RandomState::new(),
        }
    }

    fn id(&self, ip: IpAddr, window: u64) -> u64 {
        let mut h = self.key.build_hasher();
        h.write_u64(window);
        match canonical_ip(ip) {
            IpAddr::V4(v4) => h.write(&v4.octets()),
            IpAddr::V6(v6) => h.write(&v6.octets()),
        }
        h.finish()
    }

    /// The id for a client at `ip` at `now` (seconds on any steady clock).
    pub fn issue(&self, ip: IpAddr, now: u64) -> u64 {
        self.id(ip, now / WINDOW_SECS)
    }

    pub fn check(&self, id: u64, ip: IpAddr, now: u64) -> bool {
        let w = now / WINDOW_SECS;
        id == self.id(ip, w) || (w > 0 && id == self.id(ip, w - 1))
    }
}

/// A parsed announce (BEP 15's 98 bytes and BEP 41's options).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpAnnounce {
    pub info_hash: InfoHash,
    pub downloaded: u64,
    pub left: u64,
    pub uploaded: u64,
    pub event: Event,
    /// The `ip` field (0: the source's); only used when the tracker trusts it.
    pub ip: Option<Ipv4Addr>,
    /// `None`: the default (the field is -1, or any negative number).
    pub numwant: Option<u32>,
    pub port: u16,
}

/// What became of one datagram (for the counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing sent: too short, not ours, or an error longer than the
    /// request.
    Dropped,
    Connected,
    Announced,
    Scraped,
    /// An error reply was written.
    Error,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The path in BEP 41's URL-data options after byte 98 (at most 255 bytes
/// kept), or an error for options that run past the end.
fn url_data(opts: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut path = Vec::new();
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            0 => break,
            1 => i += 1,
            2 => {
                let len = *opts.get(i + 1).ok_or("truncated option")? as usize;
                let data = opts.get(i + 2..i + 2 + len).ok_or("truncated option")?;
                if path.len() + data.len() > 255 {
                    return Err("URL data too long");
                }
                path.extend_from_slice(data);
                i += 2 + len;
            }
            // Unknown options end parsing: their length is unknown.
            _ => break,
        }
    }
    Ok(path)
}

/// The passkey of a `/<passkey>/announce` path; `None` for `/announce`
/// or no path.
fn passkey(path: &[u8]) -> Result<Option<&str>, &'static str> {
    // The query string, if any, is not ours to read.
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let path = std::str::from_utf8(path).map_err(|_| "URL data is not UTF-8")?;
    match path.trim_matches('/') {
        "" | "announce" => Ok(None),
        p => match p.split_once('/') {
            Some((key, "announce")) if !key.is_empty() => Ok(Some(key)),
            _ => Err("unknown path: announce to /announce or /<passkey>/announce"),
        },
    }
}

fn parse_announce(d: &[u8]) -> Result<(UdpAnnounce, Vec<u8>), &'static str> {
    let event = match u32_at(d, 80) {
        0 => Event::None,
        1 => Event::Completed,
        2 => Event::Started,
        3 => Event::Stopped,
        _ => return Err("unknown event"),
    };
    let ip = Ipv4Addr::from(u32_at(d, 84));
    let numwant = u32_at(d, 92) as i32;
    let port = u16::from_be_bytes([d[96], d[97]]);
    if port == 0 {
        return Err("port 0 is not a valid port");
    }
    let path = url_data(&d[98..])?;
    Ok((
        UdpAnnounce {
            info_hash: InfoHash(d[16..36].try_into().expect("20 bytes")),
            downloaded: u64_at(d, 56),
            left: u64_at(d, 64),
            uploaded: u64_at(d, 72),
            event,
            ip: (!ip.is_unspecified()).then_some(ip),
            numwant: u32::try_from(numwant).ok(),
            port,
        },
        path,
    ))
}

/// Writes an error reply, unless it would be longer than the request.
fn error(out: &mut Vec<u8>, tid: &[u8], message: &str, request_len: usize) -> Outcome {
    out.clear();
    if 8 + message.len() > request_len {
        return Outcome::Dropped;
    }
    out.extend_from_slice(&ERROR.to_be_bytes());
    out.extend_from_slice(tid);
    out.extend_from_slice(message.as_bytes());
    Outcome::Error
}

/// Answers one datagram from `from` into `out` (cleared first; left empty
/// when nothing is to be sent), and counts it. `now` is seconds on a
/// steady clock. For an in-memory store only: with an async one, see
/// [`begin`], [`Job::run`] and [`finish`].
pub fn handle(
    tracker: &Tracker,
    ids: &ConnectionIds,
    d: &[u8],
    from: SocketAddr,
    now: u64,
    out: &mut Vec<u8>,
) -> Outcome {
    let o = match begin(tracker, ids, d, from, now, out) {
        Begun::Done(o) => o,
        Begun::Job(job) => {
            let result = job.run_now(tracker);
            finish(tracker, &job, result, out)
        }
    };
    tracker.count_udp(o);
    o
}

/// What [`begin`] made of a datagram.
pub(crate) enum Begun {
    /// Answered (or dropped) without the store: the reply, if any, is
    /// written. Not yet counted.
    Done(Outcome),
    /// The store must answer first.
    Job(Job),
}

/// An announce or scrape that passed the id and policy checks, waiting
/// for the store.
pub(crate) struct Job {
    tid: [u8; 4],
    request_len: usize,
    kind: JobKind,
}

enum JobKind {
    Announce(Ask),
    Scrape(Vec<InfoHash>),
}

/// The store's answer to a [`Job`].
pub(crate) enum JobResult {
    Announce(Result<AnnounceOutcome, String>),
    Scrape(Result<Vec<ScrapeEntry>, String>),
}

impl Job {
    fn run_now(&self, tracker: &Tracker) -> JobResult {
        match &self.kind {
            JobKind::Announce(ask) => JobResult::Announce(tracker.ask_now(ask)),
            JobKind::Scrape(hashes) => JobResult::Scrape(tracker.scrape_now(hashes)),
        }
    }

    /// Asks the store, whatever it is.
    pub(crate) async fn run(&self, tracker: &Tracker) -> JobResult {
        match &self.kind {
            JobKind::Announce(ask) => JobResult::Announce(tracker.ask(ask).await),
            JobKind::Scrape(hashes) => JobResult::Scrape(tracker.scrape_store(hashes).await),
        }
    }
}

/// The first half of answering a datagram: everything up to the store.
/// `out` is cleared, and holds the reply when the result is `Done`.
pub(crate) fn begin(
    tracker: &Tracker,
    ids: &ConnectionIds,
    d: &[u8],
    from: SocketAddr,
    now: u64,
    out: &mut Vec<u8>,
) -> Begun {
    out.clear();
    if d.len() < 16 || d.len() > MAX_REQUEST {
        return Begun::Done(Outcome::Dropped);
    }
    let action = u32_at(d, 8);
    let tid: [u8; 4] = d[12..16].try_into().expect("4 bytes");
    let ip = from.ip();
    if action == CONNECT {
        if u64_at(d, 0) != PROTOCOL_ID {
            return Begun::Done(Outcome::Dropped);
        }
        out.extend_from_slice(&CONNECT.to_be_bytes());
        out.extend_from_slice(&tid);
        out.extend_from_slice(&ids.issue(ip, now).to_be_bytes());
        return Begun::Done(Outcome::Connected);
    }
    if action != ANNOUNCE && action != SCRAPE {
        return Begun::Done(Outcome::Dropped);
    }
    let fail = |out: &mut Vec<u8>, e: &str| Begun::Done(error(out, &tid, e, d.len()));
    if !ids.check(u64_at(d, 0), ip, now) {
        return fail(out, "bad connection id");
    }
    let kind = if action == ANNOUNCE {
        if d.len() < 98 {
            return fail(out, "short announce");
        }
        let (req, path) = match parse_announce(d) {
            Ok(r) => r,
            Err(e) => return fail(out, e),
        };
        let key = match passkey(&path) {
            Ok(k) => k,
            Err(e) => return fail(out, e),
        };
        // As many peers as fit one unfragmented reply.
        let entry = if canonical_ip(ip).is_ipv4() { 6 } else { 18 };
        let fit = (MAX_REPLY - 20) / entry;
        match tracker.udp_ask(key, &req, from, fit) {
            Ok(ask) => JobKind::Announce(ask),
            Err(e) => return fail(out, &e),
        }
    } else {
        let hashes = &d[16..];
        if hashes.is_empty() || hashes.len() % 20 != 0 {
            return fail(out, "scrape: whole 20-byte hashes");
        }
        if hashes.len() / 20 > MAX_SCRAPE {
            return fail(out, "scrape: at most 74 hashes");
        }
        if let Err(e) = tracker.udp_scrape_check(None) {
            return fail(out, &e);
        }
        JobKind::Scrape(
            hashes
                .chunks_exact(20)
                .map(|c| InfoHash(c.try_into().expect("20 bytes")))
                .collect(),
        )
    };
    Begun::Job(Job {
        tid,
        request_len: d.len(),
        kind,
    })
}

/// The second half: the reply to a [`Job`] from the store's answer,
/// written into `out` (cleared first). Not counted.
pub(crate) fn finish(
    tracker: &Tracker,
    job: &Job,
    result: JobResult,
    out: &mut Vec<u8>,
) -> Outcome {
    out.clear();
    let tid = &job.tid;
    match (result, &job.kind) {
        (JobResult::Announce(Ok(o)), _) => {
            out.extend_from_slice(&ANNOUNCE.to_be_bytes());
            out.extend_from_slice(tid);
            out.extend_from_slice(&tracker.config().interval.to_be_bytes());
            out.extend_from_slice(&(o.incomplete.min(u32::MAX as usize) as u32).to_be_bytes());
            out.extend_from_slice(&(o.complete.min(u32::MAX as usize) as u32).to_be_bytes());
            out.extend_from_slice(&o.peers.compact);
            Outcome::Announced
        }
        (JobResult::Scrape(Ok(mut entries)), JobKind::Scrape(hashes)) => {
            tracker.udp_scrape_unlisted(hashes, &mut entries);
            out.extend_from_slice(&SCRAPE.to_be_bytes());
            out.extend_from_slice(tid);
            for e in entries {
                let n = |v: u64| (v.min(u64::from(u32::MAX)) as u32).to_be_bytes();
                out.extend_from_slice(&n(e.complete as u64));
                out.extend_from_slice(&n(e.downloaded));
                out.extend_from_slice(&n(e.incomplete as u64));
            }
            Outcome::Scraped
        }
        (JobResult::Announce(Err(e)) | JobResult::Scrape(Err(e)), _) => {
            error(out, tid, &e, job.request_len)
        }
        (JobResult::Scrape(Ok(_)), JobKind::Announce(_)) => {
            error(out, tid, "internal error", job.request_len)
        }
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;

    /// A 98-byte announce.
    pub fn announce(id: u64, hash: u8, left: u64, event: u32, numwant: i32, port: u16) -> Vec<u8> {
        let mut d = id.to_be_bytes().to_vec();
        d.extend_from_slice(&ANNOUNCE.to_be_bytes());
        d.extend_from_slice(b"TID2");
        d.extend_from_slice(&[hash; 20]);
        d.extend_from_slice(&[7; 20]);
        d.extend_from_slice(&0u64.to_be_bytes());
        d.extend_from_slice(&left.to_be_bytes());
        d.extend_from_slice(&0u64.to_be_bytes());
        d.extend_from_slice(&event.to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&[0; 4]);
        d.extend_from_slice(&numwant.to_be_bytes());
        d.extend_from_slice(&port.to_be_bytes());
        assert_eq!(d.len(), 98);
        d
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;
    use crate::{Config, MemoryStore};

    fn tracker(config: Config) -> Tracker {
        Tracker::new(config, Box::new(MemoryStore::default())).unwrap()
    }

    fn connect(t: &Tracker, ids: &ConnectionIds, from: SocketAddr) -> u64 {
        let mut d = PROTOCOL_ID.to_be_bytes().to_vec();
        d.extend_from_slice(&CONNECT.to_be_bytes());
        d.extend_from_slice(b"TID1");
        let mut out = Vec::new();
        assert_eq!(handle(t, ids, &d, from, 100, &mut out), Outcome::Connected);
        assert_eq!(out.len(), 16, "a connect answer is as long as the request");
        assert_eq!(&out[..8], &[0, 0, 0, 0, b'T', b'I', b'D', b'1']);
        u64_at(&out, 8)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connect_announce_scrape() {
        let t = tracker(Config::default());
        let ids = ConnectionIds::new();
        let mut out = Vec::new();
        // Ten seeds announce; a leecher gets them all, 6 bytes each.
        for i in 1..=10u8 {
            let from = addr(&format!("10.0.0.{i}:5000"));
            let id = connect(&t, &ids, from);
            let a = announce(id, 1, 0, 2, -1, 6000 + u16::from(i));
            assert_eq!(
                handle(&t, &ids, &a, from, 100, &mut out),
                Outcome::Announced
            );
        }
        let from = addr("10.0.1.1:5000");
        let id = connect(&t, &ids, from);
        let a = announce(id, 1, 500, 2, -1, 7000);
        assert_eq!(
            handle(&t, &ids, &a, from, 130, &mut out),
            Outcome::Announced
        );
        assert_eq!(u32_at(&out, 0), ANNOUNCE);
        assert_eq!(&out[4..8], b"TID2");
        assert_eq!(u32_at(&out, 8), 1800, "interval");
        assert_eq!(u32_at(&out, 12), 1, "leechers");
        assert_eq!(u32_at(&out, 16), 10, "seeders");
        assert_eq!(out.len(), 20 + 10 * 6);
        assert!(out[20..].chunks(6).all(|p| p[..3] == [10, 0, 0]));
        // numwant 3 gives 3.
        let a = announce(id, 1, 500, 0, 3, 7000);
        handle(&t, &ids, &a, from, 130, &mut out);
        assert_eq!(out.len(), 20 + 3 * 6);
        // A scrape of that hash and an unknown one, in order.
        let mut s = id.to_be_bytes().to_vec();
        s.extend_from_slice(&SCRAPE.to_be_bytes());
        s.extend_from_slice(b"TID3");
        s.extend_from_slice(&[9; 20]);
        s.extend_from_slice(&[1; 20]);
        assert_eq!(handle(&t, &ids, &s, from, 130, &mut out), Outcome::Scraped);
        assert_eq!(out.len(), 8 + 24);
        assert_eq!(&out[8..20], &[0; 12]);
        assert_eq!((u32_at(&out, 20), u32_at(&out, 28)), (10, 1));
        // An IPv6 announcer gets 18-byte peers of its family.
        let v6 = addr("[2001:db8::1]:5000");
        let id6 = connect(&t, &ids, v6);
        let a = announce(id6, 1, 0, 2, -1, 7001);
        handle(&t, &ids, &a, v6, 130, &mut out);
        let v6b = addr("[2001:db8::2]:5000");
        let id6b = connect(&t, &ids, v6b);
        let a = announce(id6b, 1, 10, 2, -1, 7002);
        handle(&t, &ids, &a, v6b, 130, &mut out);
        assert_eq!(out.len(), 20 + 18);
        assert_eq!(
            &out[20..36],
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        let s = t
            .counters
            .udp_announces
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(s, 14);
    }

    #[test]
    fn connection_ids_are_tied_to_the_address_and_expire() {
        let ids = ConnectionIds::new();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let id = ids.issue(ip, 100);
        assert!(ids.check(id, ip, 100));
        // Good for the rest of its window and the next one: ≥ 1 minute.
        assert!(ids.check(id, ip, 100 + WINDOW_SECS));
        assert!(!ids.check(id, ip, 100 + 2 * WINDOW_SECS));
        assert!(!ids.check(id, "10.0.0.2".parse().unwrap(), 100));
        // Another process (key) never accepts it.
        assert!(!ConnectionIds::new().check(id, ip, 100));
        // A v4-mapped source is the same client.
        assert!(ids.check(id, "::ffff:10.0.0.1".parse().unwrap(), 100));
    }

    #[test]
    fn a_wrong_id_gets_an_error_never_peers() {
        let t = tracker(Config::default());
        let ids = ConnectionIds::new();
        let mut out = Vec::new();
        let seed = addr("10.0.0.1:1");
        let id = connect(&t, &ids, seed);
        handle(&t, &ids, &announce(id, 1, 0, 2, -1, 1), seed, 100, &mut out);
        // The spoofer uses an id issued to someone else.
        let victim = addr("10.9.9.9:1");
        let a = announce(id, 1, 10, 2, -1, 2);
        assert_eq!(handle(&t, &ids, &a, victim, 100, &mut out), Outcome::Error);
        assert_eq!(u32_at(&out, 0), ERROR);
        assert_eq!(&out[8..], b"bad connection id");
        assert!(out.len() < a.len());
        // Nothing was recorded for it.
        assert_eq!(t.scrape_now(&[InfoHash([1; 20])]).unwrap()[0].incomplete, 0);
    }

    #[test]
    fn malformed_datagrams_are_dropped_or_get_short_errors() {
        let t = tracker(Config::default());
        let ids = ConnectionIds::new();
        let from = addr("10.0.0.1:1");
        let id = connect(&t, &ids, from);
        let mut out = Vec::new();
        let cases: Vec<Vec<u8>> = vec![
            vec![],
            vec![0; 15],
            // connect with a wrong magic
            [&[0u8; 8][..], &[0, 0, 0, 0], b"abcd"].concat(),
            // unknown action
            [&id.to_be_bytes()[..], &[0, 0, 0, 9], b"abcd"].concat(),
            // a 16-byte announce: the error would be longer, so dropped
            [&id.to_be_bytes()[..], &[0, 0, 0, 1], b"abcd"].concat(),
            // a scrape with no hash, and a ragged one
            [&id.to_be_bytes()[..], &[0, 0, 0, 2], b"abcd"].concat(),
            vec![0; MAX_REQUEST + 1],
        ];
        for d in &cases {
            assert_eq!(
                handle(&t, &ids, d, from, 100, &mut out),
                Outcome::Dropped,
                "{d:?}"
            );
            assert!(out.is_empty());
        }
        let mut ragged = [&id.to_be_bytes()[..], &[0, 0, 0, 2], b"abcd"].concat();
        ragged.extend_from_slice(&[1; 30]);
        assert_eq!(
            handle(&t, &ids, &ragged, from, 100, &mut out),
            Outcome::Error
        );
        assert!(out.len() <= ragged.len());
        let mut many = [&id.to_be_bytes()[..], &[0, 0, 0, 2], b"abcd"].concat();
        many.extend_from_slice(&[1; 20 * 75]);
        assert_eq!(handle(&t, &ids, &many, from, 100, &mut out), Outcome::Error);
        // A bad event, port 0, and options that run past the end.
        for d in [
            announce(id, 1, 0, 7, -1, 1),
            announce(id, 1, 0, 2, -1, 0),
            [announce(id, 1, 0, 2, -1, 1), vec![2, 40, b'/']].concat(),
        ] {
            assert_eq!(handle(&t, &ids, &d, from, 100, &mut out), Outcome::Error);
            assert!(out.len() <= d.len());
        }
    }

    #[test]
    fn passkeys_come_in_bep41_url_data() {
        let dir = std::env::temp_dir().join(format!("shoal-udp-keys-{}", std::process::id()));
        std::fs::write(&dir, "sekrit\n").unwrap();
        let t = tracker(Config {
            keys: Some(dir.clone()),
            ..Config::default()
        });
        let ids = ConnectionIds::new();
        let from = addr("10.0.0.1:1");
        let id = connect(&t, &ids, from);
        let mut out = Vec::new();
        let plain = announce(id, 1, 0, 2, -1, 1);
        assert_eq!(
            handle(&t, &ids, &plain, from, 100, &mut out),
            Outcome::Error
        );
        // "/sekrit/announce" split over two URL-data options, then a NOP
        // and the end.
        let opts = [&[2u8, 7][..], b"/sekrit", &[1, 2, 9], b"/announce", &[0]].concat();
        let keyed = [plain.clone(), opts].concat();
        assert_eq!(
            handle(&t, &ids, &keyed, from, 100, &mut out),
            Outcome::Announced
        );
        let wrong = [plain, vec![2, 15], b"/wrong/announce".to_vec()].concat();
        assert_eq!(
            handle(&t, &ids, &wrong, from, 100, &mut out),
            Outcome::Error
        );
        assert_eq!(&out[8..], b"unknown passkey");
        let _ = std::fs::remove_file(dir);
    }

    #[test]
    fn replies_fit_one_datagram() {
        let t = tracker(Config {
            max_numwant: 10_000,
            ..Config::default()
        });
        let ids = ConnectionIds::new();
        let mut out = Vec::new();
        for i in 0..400u32 {
            let from = SocketAddr::from((
                std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i)),
                1,
            ));
            let id = connect(&t, &ids, from);
            handle(&t, &ids, &announce(id, 5, 0, 2, -1, 1), from, 100, &mut out);
            let from = SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 1));
            let id = connect(&t, &ids, from);
            handle(&t, &ids, &announce(id, 5, 0, 2, -1, 1), from, 100, &mut out);
        }
        let from = addr("10.1.0.1:1");
        let id = connect(&t, &ids, from);
        handle(
            &t,
            &ids,
            &announce(id, 5, 9, 2, 5000, 1),
            from,
            100,
            &mut out,
        );
        assert!(
            out.len() <= MAX_REPLY && out.len() > MAX_REPLY - 6,
            "{}",
            out.len()
        );
        let from = addr("[2001:db9::1]:1");
        let id = connect(&t, &ids, from);
        handle(
            &t,
            &ids,
            &announce(id, 5, 9, 2, 5000, 1),
            from,
            100,
            &mut out,
        );
        assert!(
            out.len() <= MAX_REPLY && out.len() > MAX_REPLY - 18,
            "{}",
            out.len()
        );
    }
}

#[cfg(test)]
mod ip_field {
    use super::tests_support::*;
    use super::*;

    #[test]
    fn the_ip_field_is_trusted_only_from_ipv4_announcers() {
        let t = Tracker::new(
            crate::Config {
                trust_ip_param: true,
                ..crate::Config::default()
            },
            Box::new(crate::MemoryStore::default()),
        )
        .unwrap();
        let ids = ConnectionIds::new();
        let mut out = Vec::new();
        let with_ip = |mut d: Vec<u8>, ip: [u8; 4]| {
            d[84..88].copy_from_slice(&ip);
            d
        };
        // A v4 announcer says it is 192.0.2.9; the next one is told so.
        let a: SocketAddr = "10.0.0.1:1".parse().unwrap();
        let id = ids.issue(a.ip(), 100);
        handle(
            &t,
            &ids,
            &with_ip(announce(id, 3, 0, 2, -1, 5), [192, 0, 2, 9]),
            a,
            100,
            &mut out,
        );
        let b: SocketAddr = "10.0.0.2:1".parse().unwrap();
        let id = ids.issue(b.ip(), 100);
        handle(&t, &ids, &announce(id, 3, 9, 2, -1, 6), b, 100, &mut out);
        assert_eq!(&out[20..24], &[192, 0, 2, 9]);
        // A v6 announcer's field is ignored: its reply keeps 18-byte peers.
        let c: SocketAddr = "[2001:db8::3]:1".parse().unwrap();
        let id = ids.issue(c.ip(), 100);
        handle(
            &t,
            &ids,
            &with_ip(announce(id, 4, 0, 2, -1, 7), [192, 0, 2, 10]),
            c,
            100,
            &mut out,
        );
        let d: SocketAddr = "[2001:db8::4]:1".parse().unwrap();
        let id = ids.issue(d.ip(), 100);
        handle(&t, &ids, &announce(id, 4, 9, 2, -1, 8), d, 100, &mut out);
        assert_eq!(out.len(), 20 + 18);
    }
}
