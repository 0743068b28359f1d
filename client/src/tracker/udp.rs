//! UDP tracker protocol (BEP 15, with BEP 41 URL data).
//!
//! The packets are plain functions ([`encode_connect`],
//! [`encode_announce`], [`decode_reply`]); `announce` runs the exchange:
//! connect for a connection id (cached per tracker address for a minute),
//! then announce with it, retransmitting after `udp_timeout × 2^n` and
//! giving up after `udp_tries` timeouts. A lost announce drops the cached
//! id, since an expired id is the usual reason a tracker stays silent.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::http::compact_peers;
use super::{clamp_interval, AnnounceParams, AnnounceResponse, TrackerConfig, TrackerError};

/// The magic constant that starts a connect request.
pub const PROTOCOL_ID: u64 = 0x0417_2710_1980;
/// How long a connection id may be used (BEP 15: one minute).
pub const CONNECTION_ID_LIFETIME: Duration = Duration::from_secs(60);

const ACTION_CONNECT: u32 = 0;
const ACTION_ANNOUNCE: u32 = 1;
const ACTION_ERROR: u32 = 3;
/// Bytes of an announce request before any BEP 41 options.
pub const ANNOUNCE_LEN: usize = 98;
/// BEP 41 option type carrying the URL's path and query.
const OPTION_URL_DATA: u8 = 2;

/// A decoded datagram from a tracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Connect {
        connection_id: u64,
    },
    Announce(AnnounceResponse),
    /// Action 3: the tracker's error message.
    Error(String),
}

/// The 16-byte connect request.
pub fn encode_connect(transaction_id: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&PROTOCOL_ID.to_be_bytes());
    out[8..12].copy_from_slice(&ACTION_CONNECT.to_be_bytes());
    out[12..].copy_from_slice(&transaction_id.to_be_bytes());
    out
}

/// The announce request: 98 bytes, then `url_data` (the tracker URL's
/// path and query, e.g. a passkey) as BEP 41 options when not empty.
pub fn encode_announce(
    connection_id: u64,
    transaction_id: u32,
    p: &AnnounceParams,
    url_data: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(ANNOUNCE_LEN + url_data.len() + url_data.len() / 255 * 2 + 2);
    out.extend_from_slice(&connection_id.to_be_bytes());
    out.extend_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    out.extend_from_slice(p.info_hash.as_bytes());
    out.extend_from_slice(&p.peer_id);
    out.extend_from_slice(&p.downloaded.to_be_bytes());
    out.extend_from_slice(&p.left.to_be_bytes());
    out.extend_from_slice(&p.uploaded.to_be_bytes());
    out.extend_from_slice(&p.event.udp_code().to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes()); // IP: the sender's
    out.extend_from_slice(&p.key.to_be_bytes());
    let numwant = i32::try_from(p.numwant).unwrap_or(i32::MAX);
    out.extend_from_slice(&numwant.to_be_bytes());
    out.extend_from_slice(&p.port.to_be_bytes());
    debug_assert_eq!(out.len(), ANNOUNCE_LEN);
    for chunk in url_data.chunks(255) {
        out.push(OPTION_URL_DATA);
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
    out
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Decodes a datagram. `Ok(None)` means it is not an answer to
/// `transaction_id` (a late reply to an earlier request, or too short to
/// tell) and should be ignored. `ipv6`: the tracker was reached over IPv6,
/// so announce replies carry 18-byte peers.
pub fn decode_reply(
    packet: &[u8],
    transaction_id: u32,
    ipv6: bool,
) -> Result<Option<Reply>, TrackerError> {
    if packet.len() < 8 || be32(packet, 4) != transaction_id {
        return Ok(None);
    }
    let malformed = |what: String| Err(TrackerError::Malformed(what));
    match be32(packet, 0) {
        ACTION_CONNECT if packet.len() >= 16 => {
            let mut id = [0u8; 8];
            id.copy_from_slice(&packet[8..16]);
            Ok(Some(Reply::Connect {
                connection_id: u64::from_be_bytes(id),
            }))
        }
        ACTION_ANNOUNCE if packet.len() >= 20 => {
            let mut peers = Vec::new();
            let size = if ipv6 { 18 } else { 6 };
            compact_peers(&packet[20..], size, "UDP announce peers", &mut peers)?;
            Ok(Some(Reply::Announce(AnnounceResponse {
                interval: clamp_interval(i64::from(be32(packet, 8))),
                min_interval: None,
                peers,
                leechers: Some(be32(packet, 12)),
                seeders: Some(be32(packet, 16)),
                warning: None,
            })))
        }
        // A bare header is what opentracker sends for a torrent off its
        // whitelist: take it as a refusal.
        ACTION_ANNOUNCE if packet.len() == 8 => Ok(Some(Reply::Error(
            "empty announce reply (the tracker does not serve this torrent)".to_string(),
        ))),
        ACTION_ERROR => Ok(Some(Reply::Error(
            String::from_utf8_lossy(&packet[8..]).into_owned(),
        ))),
        ACTION_CONNECT | ACTION_ANNOUNCE => malformed(format!(
            "UDP reply of {} bytes is too short for its action",
            packet.len()
        )),
        action => malformed(format!("unknown UDP action {action}")),
    }
}

/// A `udp://host:port[/path][?query]` URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpUrl<'a> {
    /// Without the brackets of an IPv6 literal.
    pub host: &'a str,
    pub port: u16,
    /// Path and query, sent as BEP 41 URL data; empty for `""`, `"/"` and
    /// the plain `"/announce"`, which tell the tracker nothing.
    pub request: &'a str,
}

/// Parses a UDP tracker URL; both `udp://host:port` and
/// `udp://host:port/announce` are accepted.
pub fn parse_url(url: &str) -> Result<UdpUrl<'_>, TrackerError> {
    let invalid = |reason: &str| TrackerError::InvalidUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("udp") => rest,
        _ => return Err(invalid("not a udp:// URL")),
    };
    let rest = rest.split('#').next().unwrap_or(rest);
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, request) = rest.split_at(split);
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| invalid("unclosed '['"))?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host.contains('@') {
        return Err(invalid("no host"));
    }
    let port = port
        .ok_or_else(|| invalid("no port"))?
        .parse::<u16>()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| invalid("the port is not a number in 1-65535"))?;
    let request = match request {
        "" | "/" | "/announce" => "",
        r => r,
    };
    Ok(UdpUrl {
        host,
        port,
        request,
    })
}

/// The wait after the send that follows `n` timeouts (BEP 15:
/// `base × 2^n`, n at most 8).
pub fn retransmit_wait(base: Duration, n: u32) -> Duration {
    base.saturating_mul(1 << n.min(8))
}

/// Connection ids by tracker address, each usable for
/// [`CONNECTION_ID_LIFETIME`]. Never locked across an await.
#[derive(Debug, Default)]
pub(crate) struct ConnectionCache(Mutex<HashMap<SocketAddr, (u64, Instant)>>);

impl ConnectionCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, (u64, Instant)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, tracker: SocketAddr) -> Option<u64> {
        let map = self.lock();
        let &(id, got) = map.get(&tracker)?;
        (got.elapsed() < CONNECTION_ID_LIFETIME).then_some(id)
    }

    fn put(&self, tracker: SocketAddr, id: u64) {
        let mut map = self.lock();
        map.retain(|_, (_, got)| got.elapsed() < CONNECTION_ID_LIFETIME);
        map.insert(tracker, (id, Instant::now()));
    }

    fn forget(&self, tracker: SocketAddr) {
        self.lock().remove(&tracker);
    }
}

/// Announces to one UDP tracker, bounded by `config.udp_budget()`.
pub(crate) async fn announce(
    cache: &ConnectionCache,
    config: &TrackerConfig,
    url: &str,
    params: &AnnounceParams,
) -> Result<AnnounceResponse, TrackerError> {
    let budget = config.udp_budget();
    match tokio::time::timeout(budget, exchange(cache, config, url, params)).await {
        Ok(result) => result,
        Err(_) => Err(TrackerError::Timeout(budget)),
    }
}

async fn exchange(
    cache: &ConnectionCache,
    config: &TrackerConfig,
    url: &str,
    params: &AnnounceParams,
) -> Result<AnnounceResponse, TrackerError> {
    let parsed = parse_url(url)?;
    let net = |what: &str, e: std::io::Error| {
        let cause = super::io_cause(&e);
        TrackerError::Network(if what.is_empty() {
            cause
        } else {
            format!("{what}: {cause}")
        })
    };
    let dns = |e: std::io::Error| {
        tracing::debug!("DNS lookup of {}: {e}", parsed.host);
        TrackerError::Network("DNS lookup failed".to_string())
    };
    let tracker = tokio::net::lookup_host((parsed.host, parsed.port))
        .await
        .map_err(dns)?
        .next()
        .ok_or_else(|| dns(std::io::ErrorKind::NotFound.into()))?;
    let ipv6 = tracker.is_ipv6();
    let local: SocketAddr = match config.local_address {
        Some(ip) if ip.is_ipv6() == ipv6 => (ip, 0).into(),
        _ if ipv6 => (Ipv6Addr::UNSPECIFIED, 0).into(),
        _ => (Ipv4Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| net("cannot open a UDP socket", e))?;
    // Connected: the kernel drops datagrams from anyone else, and an ICMP
    // "port unreachable" fails the receive at once.
    socket.connect(tracker).await.map_err(|e| net("", e))?;

    let mut buf = vec![0u8; 65536];
    let mut timeouts = 0;
    // The connection id in use, and whether it came from the cache.
    let mut connection = cache.get(tracker).map(|id| (id, true));
    loop {
        let transaction_id: u32 = rand::random();
        let request = match connection {
            None => encode_connect(transaction_id).to_vec(),
            Some((id, _)) => encode_announce(id, transaction_id, params, parsed.request.as_bytes()),
        };
        // Retransmit the same request (same transaction id) until it is
        // answered, so a late answer to an earlier copy still counts.
        let reply = loop {
            let wait = retransmit_wait(config.udp_timeout, timeouts);
            socket.send(&request).await.map_err(|e| net("", e))?;
            match receive(&socket, &mut buf, transaction_id, ipv6, wait).await {
                Ok(Some(reply)) => break Some(reply),
                Ok(None) => {}
                Err(ReceiveError::Io(e)) => return Err(net("", e)),
                Err(ReceiveError::Tracker(e)) => return Err(e),
            }
            timeouts += 1;
            tracing::debug!(url, timeouts, "UDP tracker did not answer in {wait:?}");
            if timeouts >= config.udp_tries {
                return Err(TrackerError::Timeout(config.udp_budget()));
            }
            if connection.is_some() {
                // The id may have expired: connect again.
                cache.forget(tracker);
                connection = None;
                break None;
            }
        };
        match (reply, connection) {
            (None, _) => continue,
            (Some(Reply::Connect { connection_id }), None) => {
                cache.put(tracker, connection_id);
                connection = Some((connection_id, false));
            }
            (Some(Reply::Announce(response)), Some(_)) => return Ok(response),
            (Some(Reply::Error(message)), Some((_, true))) => {
                // Perhaps the cached id was refused: once more with a new one.
                tracing::debug!(url, %message, "UDP tracker error with a cached id");
                cache.forget(tracker);
                connection = None;
            }
            (Some(Reply::Error(message)), _) => return Err(TrackerError::Failure(message)),
            (Some(_), _) => {
                return Err(TrackerError::Malformed(
                    "UDP reply action does not match the request".to_string(),
                ))
            }
        }
    }
}

enum ReceiveError {
    Io(std::io::Error),
    Tracker(TrackerError),
}

/// Waits up to `wait` for the answer to `transaction_id`, ignoring
/// anything else; `Ok(None)` on timeout.
async fn receive(
    socket: &UdpSocket,
    buf: &mut [u8],
    transaction_id: u32,
    ipv6: bool,
    wait: Duration,
) -> Result<Option<Reply>, ReceiveError> {
    let deadline = Instant::now() + wait;
    loop {
        let len = match tokio::time::timeout_at(deadline, socket.recv(buf)).await {
            Err(_) => return Ok(None),
            Ok(Err(e)) => return Err(ReceiveError::Io(e)),
            Ok(Ok(len)) => len,
        };
        if let Some(reply) =
            decode_reply(&buf[..len], transaction_id, ipv6).map_err(ReceiveError::Tracker)?
        {
            return Ok(Some(reply));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::{http::tests::params, Event, TrackerClient};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn connect_request_layout() {
        let p = encode_connect(0xDEAD_BEEF);
        assert_eq!(
            p,
            [0, 0, 4, 0x17, 0x27, 0x10, 0x19, 0x80, 0, 0, 0, 0, 0xDE, 0xAD, 0xBE, 0xEF]
        );
    }

    #[test]
    fn announce_request_layout() {
        let mut p = params();
        p.event = Event::Stopped;
        p.downloaded = 0x0102;
        p.left = 7;
        p.uploaded = 9;
        let b = encode_announce(0x1122_3344_5566_7788, 42, &p, b"");
        assert_eq!(b.len(), ANNOUNCE_LEN);
        assert_eq!(&b[..8], &0x1122_3344_5566_7788u64.to_be_bytes());
        assert_eq!(be32(&b, 8), 1);
        assert_eq!(be32(&b, 12), 42);
        assert_eq!(&b[16..36], p.info_hash.as_bytes());
        assert_eq!(&b[36..56], &p.peer_id);
        assert_eq!(&b[56..64], &0x0102u64.to_be_bytes());
        assert_eq!(&b[64..72], &7u64.to_be_bytes());
        assert_eq!(&b[72..80], &9u64.to_be_bytes());
        assert_eq!(be32(&b, 80), 3, "stopped");
        assert_eq!(be32(&b, 84), 0, "ip");
        assert_eq!(be32(&b, 88), 0xBEEF, "key");
        assert_eq!(be32(&b, 92), 50, "numwant");
        assert_eq!(&b[96..98], &6881u16.to_be_bytes());

        // BEP 41: the path and query in options of at most 255 bytes.
        let long = "/a?k=".to_string() + &"x".repeat(300);
        let b = encode_announce(1, 2, &p, long.as_bytes());
        let opts = &b[ANNOUNCE_LEN..];
        assert_eq!((opts[0], opts[1]), (2, 255));
        assert_eq!((opts[257], opts[258] as usize), (2, long.len() - 255));
        let mut data = opts[2..257].to_vec();
        data.extend_from_slice(&opts[259..]);
        assert_eq!(data, long.as_bytes());
    }

    fn reply(action: u32, tid: u32, rest: &[u8]) -> Vec<u8> {
        let mut b = action.to_be_bytes().to_vec();
        b.extend_from_slice(&tid.to_be_bytes());
        b.extend_from_slice(rest);
        b
    }

    #[test]
    fn decodes_replies() {
        let conn = reply(0, 7, &0xAABBu64.to_be_bytes());
        assert_eq!(
            decode_reply(&conn, 7, false).unwrap(),
            Some(Reply::Connect {
                connection_id: 0xAABB
            })
        );
        // Somebody else's transaction, or too short to say: ignored.
        assert_eq!(decode_reply(&conn, 8, false).unwrap(), None);
        assert_eq!(decode_reply(&conn[..6], 7, false).unwrap(), None);

        let mut rest = Vec::new();
        for n in [1800u32, 3, 4] {
            rest.extend_from_slice(&n.to_be_bytes());
        }
        rest.extend_from_slice(&[10, 0, 0, 1, 0x1a, 0xe1, 10, 0, 0, 2, 0, 0]);
        let ann = reply(1, 9, &rest);
        let Some(Reply::Announce(r)) = decode_reply(&ann, 9, false).unwrap() else {
            panic!()
        };
        assert_eq!(r.interval, Duration::from_secs(1800));
        assert_eq!((r.leechers, r.seeders), (Some(3), Some(4)));
        assert_eq!(r.peers, [SocketAddr::from(([10, 0, 0, 1], 6881))]);
        // Over IPv6 the same 12 peer bytes are not a whole 18-byte entry.
        assert!(matches!(
            decode_reply(&ann, 9, true),
            Err(TrackerError::Malformed(_))
        ));
        let mut rest6 = rest[..12].to_vec();
        rest6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        rest6.extend_from_slice(&[0x1a, 0xe2]);
        let Some(Reply::Announce(r)) = decode_reply(&reply(1, 9, &rest6), 9, true).unwrap() else {
            panic!()
        };
        assert_eq!(r.peers, ["[::1]:6882".parse().unwrap()]);

        assert_eq!(
            decode_reply(&reply(3, 5, b"unregistered torrent"), 5, false).unwrap(),
            Some(Reply::Error("unregistered torrent".into()))
        );
        assert!(matches!(
            decode_reply(&reply(1, 5, &[]), 5, false).unwrap(),
            Some(Reply::Error(m)) if m.contains("does not serve")
        ));
        for bad in [
            reply(0, 1, &[1, 2, 3]),
            reply(1, 1, &[0; 11]),
            reply(9, 1, &[]),
        ] {
            assert!(matches!(
                decode_reply(&bad, 1, false),
                Err(TrackerError::Malformed(_))
            ));
        }
    }

    #[test]
    fn urls() {
        let u = parse_url("udp://tracker.example:1337/announce").unwrap();
        assert_eq!((u.host, u.port, u.request), ("tracker.example", 1337, ""));
        let u = parse_url("UDP://1.2.3.4:80").unwrap();
        assert_eq!((u.host, u.port, u.request), ("1.2.3.4", 80, ""));
        let u = parse_url("udp://[::1]:6969/announce?passkey=x#f").unwrap();
        assert_eq!(
            (u.host, u.port, u.request),
            ("::1", 6969, "/announce?passkey=x")
        );
        for bad in [
            "udp://host",
            "udp://host:0",
            "udp://host:99999/",
            "udp://:80",
            "udp://[::1/",
            "http://host:80",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn retransmit_waits_double() {
        let s = Duration::from_secs(15);
        assert_eq!(retransmit_wait(s, 0), s);
        assert_eq!(retransmit_wait(s, 3), s * 8);
        assert_eq!(retransmit_wait(s, 20), s * 256);
    }

    /// A tiny UDP tracker: drops the datagrams numbered in `drop` (from 0),
    /// answers connects with id 77 and announces with one peer. Counts the
    /// datagrams and the connects it received.
    async fn fake_tracker(
        drop: &'static [usize],
    ) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let received = Arc::new(AtomicUsize::new(0));
        let connects = Arc::new(AtomicUsize::new(0));
        let (r, c) = (received.clone(), connects.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                if drop.contains(&r.fetch_add(1, Ordering::SeqCst)) || len < 16 {
                    continue;
                }
                let tid = be32(&buf, 12);
                let answer = if be32(&buf, 8) == ACTION_CONNECT {
                    assert_eq!(&buf[..8], &PROTOCOL_ID.to_be_bytes());
                    c.fetch_add(1, Ordering::SeqCst);
                    reply(0, tid, &77u64.to_be_bytes())
                } else {
                    assert_eq!(&buf[..8], &77u64.to_be_bytes());
                    let mut rest = Vec::new();
                    for n in [60u32, 1, 0] {
                        rest.extend_from_slice(&n.to_be_bytes());
                    }
                    rest.extend_from_slice(&[127, 0, 0, 1, 0x1a, 0xe1]);
                    reply(1, tid, &rest)
                };
                let _ = socket.send_to(&answer, from).await;
            }
        });
        (addr, received, connects)
    }

    fn client(udp_timeout: Duration, udp_tries: u32) -> TrackerClient {
        TrackerClient::new(TrackerConfig {
            udp_timeout,
            udp_tries,
            ..TrackerConfig::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn retransmits_after_a_lost_packet_and_caches_the_connection_id() {
        let (addr, received, connects) = fake_tracker(&[0]).await;
        let base = Duration::from_millis(200);
        let client = client(base, 5);
        let url = format!("udp://{addr}/announce");
        let started = std::time::Instant::now();
        let r = client.announce(&url, &params()).await.unwrap();
        assert!(started.elapsed() >= base, "waited before retransmitting");
        assert_eq!(r.peers, [SocketAddr::from(([127, 0, 0, 1], 6881))]);
        assert_eq!(r.interval, Duration::from_secs(60));
        assert_eq!((r.leechers, r.seeders), (Some(1), Some(0)));
        // The dropped connect, its retransmission, the announce (more if
        // this machine was slow enough to retransmit again).
        assert!(received.load(Ordering::SeqCst) >= 3);

        // Within a minute the connection id is reused: no new connect.
        let before = connects.load(Ordering::SeqCst);
        client.announce(&url, &params()).await.unwrap();
        assert_eq!(connects.load(Ordering::SeqCst), before);
    }

    #[tokio::test]
    async fn a_lost_announce_connects_again() {
        // Datagram 1 is the first announce.
        let (addr, _, connects) = fake_tracker(&[1]).await;
        let client = client(Duration::from_millis(200), 5);
        let r = client.announce(&format!("udp://{addr}"), &params()).await;
        assert_eq!(r.unwrap().peers.len(), 1);
        assert!(connects.load(Ordering::SeqCst) >= 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_tracker_fails_after_the_back_off_schedule() {
        // Bound but never read: packets vanish, no ICMP error comes back.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let url = format!("udp://{}", silent.local_addr().unwrap());
        let client = client(Duration::from_secs(4), 3);
        let started = Instant::now();
        let err = client.announce(&url, &params()).await.unwrap_err();
        assert_eq!(err, TrackerError::Timeout(Duration::from_secs(28)));
        // 4 + 8 + 16 s on the paused clock.
        assert_eq!(started.elapsed().as_secs(), 28);
    }

    #[tokio::test]
    async fn a_closed_port_fails_fast_and_errors_are_failures() {
        let closed = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let url = format!("udp://{}", closed.local_addr().unwrap());
        drop(closed);
        let client = client(Duration::from_secs(10), 3);
        let started = std::time::Instant::now();
        let err = client.announce(&url, &params()).await.unwrap_err();
        assert_eq!(err, TrackerError::Network("connection refused".into()));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "ICMP refusal ends it"
        );

        // A tracker that answers everything with an error.
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let url = format!("udp://{}", socket.local_addr().unwrap());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                if len >= 16 {
                    let tid = be32(&buf, 12);
                    let _ = socket.send_to(&reply(3, tid, b"go away"), from).await;
                }
            }
        });
        assert_eq!(
            client.announce(&url, &params()).await,
            Err(TrackerError::Failure("go away".into()))
        );
    }
}
