//! HTTP(S) announces (BEP 3, with BEP 23 compact peers and BEP 7 IPv6
//! `peers6`). [`announce_url`] and [`parse_response`] are pure; `announce`
//! sends the request and reads a size-bounded reply.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use torrent_format::bencode::{self, Value};
use torrent_format::magnet::percent_encode_bytes;

use super::{
    clamp_interval, AnnounceParams, AnnounceResponse, TrackerConfig, TrackerError, DEFAULT_INTERVAL,
};

/// The announce URL with the query for `p` appended. Binary fields are
/// percent-encoded byte by byte; a URL that already has a query (private
/// trackers' passkeys) gets the parameters after an `&`. A `#fragment`
/// is dropped.
pub fn announce_url(base: &str, p: &AnnounceParams) -> String {
    let base = base.split('#').next().unwrap_or(base);
    let mut url = String::with_capacity(base.len() + 256);
    url.push_str(base);
    if !base.contains('?') {
        url.push('?');
    } else if !(base.ends_with('?') || base.ends_with('&')) {
        url.push('&');
    }
    url.push_str("info_hash=");
    url.push_str(&percent_encode_bytes(p.info_hash.as_bytes()));
    url.push_str("&peer_id=");
    url.push_str(&percent_encode_bytes(&p.peer_id));
    url.push_str(&format!(
        "&port={}&uploaded={}&downloaded={}&left={}&compact=1&numwant={}&key={:08x}",
        p.port, p.uploaded, p.downloaded, p.left, p.numwant, p.key
    ));
    if let Some(event) = p.event.as_str() {
        url.push_str("&event=");
        url.push_str(event);
    }
    url
}

fn malformed(what: impl Into<String>) -> TrackerError {
    TrackerError::Malformed(what.into())
}

/// Parses a bencoded announce reply. A `failure reason` becomes
/// [`TrackerError::Failure`]; wrong types and broken peer strings are
/// [`TrackerError::Malformed`] saying which key; single bad peer entries
/// (port 0, an address that does not parse) are skipped.
pub fn parse_response(body: &[u8]) -> Result<AnnounceResponse, TrackerError> {
    let value =
        bencode::decode(body).map_err(|e| malformed(format!("not a bencoded value: {e}")))?;
    if !matches!(value, Value::Dict(_)) {
        return Err(malformed("not a bencoded dictionary"));
    }
    let text = |key: &str| -> Result<Option<String>, TrackerError> {
        match value.get(key) {
            None => Ok(None),
            Some(Value::Bytes(b)) => Ok(Some(String::from_utf8_lossy(b).into_owned())),
            Some(_) => Err(malformed(format!("`{key}` is not a string"))),
        }
    };
    let int = |key: &str| -> Result<Option<i64>, TrackerError> {
        match value.get(key) {
            None => Ok(None),
            Some(Value::Int(i)) => Ok(Some(*i)),
            Some(_) => Err(malformed(format!("`{key}` is not an integer"))),
        }
    };
    if let Some(reason) = text("failure reason")? {
        return Err(TrackerError::Failure(reason));
    }
    // Counts out of u32 range are nonsense, but not worth failing over.
    let count = |key: &str| Ok::<_, TrackerError>(int(key)?.and_then(|n| u32::try_from(n).ok()));

    let mut peers = Vec::new();
    match value.get("peers") {
        None => {}
        Some(Value::Bytes(b)) => compact_peers(b, 6, "peers", &mut peers)?,
        Some(Value::List(list)) => peers.extend(list.iter().filter_map(dict_peer)),
        Some(_) => return Err(malformed("`peers` is neither a string nor a list")),
    }
    match value.get("peers6") {
        None => {}
        Some(Value::Bytes(b)) => compact_peers(b, 18, "peers6", &mut peers)?,
        Some(_) => return Err(malformed("`peers6` is not a string")),
    }

    Ok(AnnounceResponse {
        interval: int("interval")?.map_or(DEFAULT_INTERVAL, clamp_interval),
        min_interval: int("min interval")?.map(clamp_interval),
        peers,
        seeders: count("complete")?,
        leechers: count("incomplete")?,
        warning: text("warning message")?,
    })
}

/// Appends the peers of a compact string: `size` is 6 (IPv4 + port) or 18
/// (IPv6 + port), big-endian. Port-0 entries are skipped.
pub(crate) fn compact_peers(
    bytes: &[u8],
    size: usize,
    key: &str,
    out: &mut Vec<SocketAddr>,
) -> Result<(), TrackerError> {
    if bytes.len() % size != 0 {
        return Err(malformed(format!(
            "`{key}` is {} bytes, not a multiple of {size}",
            bytes.len()
        )));
    }
    out.reserve(bytes.len() / size);
    for entry in bytes.chunks_exact(size) {
        let (ip, port) = entry.split_at(size - 2);
        let port = u16::from_be_bytes([port[0], port[1]]);
        let ip = match <[u8; 4]>::try_from(ip) {
            Ok(v4) => IpAddr::from(Ipv4Addr::from(v4)),
            Err(_) => match <[u8; 16]>::try_from(ip) {
                Ok(v6) => IpAddr::from(Ipv6Addr::from(v6)),
                Err(_) => continue,
            },
        };
        if usable(ip, port) {
            out.push(SocketAddr::new(ip, port));
        }
    }
    Ok(())
}

/// One entry of the original (non-compact) peer list: a dictionary with
/// `ip` (an address as text) and `port`. Host names are not resolved.
fn dict_peer(entry: &Value) -> Option<SocketAddr> {
    let Some(Value::Bytes(ip)) = entry.get("ip") else {
        return None;
    };
    let Some(Value::Int(port)) = entry.get("port") else {
        return None;
    };
    let ip: IpAddr = std::str::from_utf8(ip).ok()?.parse().ok()?;
    let port = u16::try_from(*port).ok()?;
    usable(ip, port).then_some(SocketAddr::new(ip, port))
}

fn usable(ip: IpAddr, port: u16) -> bool {
    port != 0 && !ip.is_unspecified() && !ip.is_multicast()
}

/// Announces to one HTTP(S) tracker. The whole exchange is bounded by
/// `config.http_timeout` and the reply body by `config.max_response_bytes`.
pub(crate) async fn announce(
    http: &reqwest::Client,
    config: &TrackerConfig,
    url: &str,
    params: &AnnounceParams,
) -> Result<AnnounceResponse, TrackerError> {
    let timeout = config.http_timeout;
    let full = announce_url(url, params);
    let parsed = reqwest::Url::parse(&full).map_err(|e| TrackerError::InvalidUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })?;
    // reqwest bounds the request with the same timeout; this also covers
    // anything it does not.
    let (status, body) =
        match tokio::time::timeout(timeout, fetch(http, parsed, config, timeout)).await {
            Ok(r) => r?,
            Err(_) => return Err(TrackerError::Timeout(timeout)),
        };
    match parse_response(&body) {
        // A failure reason explains a non-success status best.
        Err(failure @ TrackerError::Failure(_)) => Err(failure),
        _ if !status.is_success() => Err(TrackerError::Status(status.as_u16())),
        result => result,
    }
}

/// Sends the GET and reads at most `max_response_bytes` of the body.
async fn fetch(
    http: &reqwest::Client,
    url: reqwest::Url,
    config: &TrackerConfig,
    timeout: Duration,
) -> Result<(reqwest::StatusCode, Vec<u8>), TrackerError> {
    let net = |e: reqwest::Error| {
        if e.is_timeout() {
            TrackerError::Timeout(timeout)
        } else {
            TrackerError::Network(cause(&e.without_url()))
        }
    };
    let limit = config.max_response_bytes;
    let mut response = http.get(url).send().await.map_err(net)?;
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(TrackerError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(net)? {
        if body.len() + chunk.len() > limit {
            return Err(TrackerError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok((response.status(), body))
}

/// What went wrong, in a few words, never the URL (reqwest's own message
/// holds the whole announce query): "DNS lookup failed", "connection
/// refused", or else the innermost cause ("invalid peer certificate: …").
fn cause(e: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut innermost = e.to_string();
    let mut io = None;
    while let Some(s) = source {
        let text = s.to_string();
        // hyper-util's resolver error; its cause is getaddrinfo's text.
        if text.starts_with("dns error") {
            tracing::debug!("DNS lookup failed: {}", chain(e));
            return "DNS lookup failed".to_string();
        }
        if let Some(i) = s.downcast_ref::<std::io::Error>() {
            io.get_or_insert(i);
        }
        innermost = text;
        source = s.source();
    }
    match io {
        Some(i) => super::io_cause(i),
        None => innermost,
    }
}

/// An error with its causes, for debug logs: "error sending request:
/// client error (Connect): tcp connect error: Connection refused".
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tracker::{Event, MAX_INTERVAL};
    use torrent_format::InfoHash;

    pub(crate) fn params() -> AnnounceParams {
        let mut info_hash = [0u8; 20];
        info_hash[..6].copy_from_slice(b"\x00\xff a~Z");
        AnnounceParams {
            info_hash: InfoHash(info_hash),
            peer_id: *b"-SH0100-\x01\x02%&=?+ xyzw",
            port: 6881,
            uploaded: 1,
            downloaded: 2,
            left: 3,
            event: Event::Started,
            numwant: 50,
            key: 0xBEEF,
        }
    }

    #[test]
    fn query_is_percent_encoded_byte_wise() {
        let url = announce_url("http://t.example/announce", &params());
        assert_eq!(
            url,
            "http://t.example/announce?info_hash=%00%FF%20a~Z%00%00%00%00%00%00%00%00%00%00%00%00%00%00\
             &peer_id=-SH0100-%01%02%25%26%3D%3F%2B%20xyzw&port=6881&uploaded=1&downloaded=2\
             &left=3&compact=1&numwant=50&key=0000beef&event=started"
        );
    }

    #[test]
    fn passkey_urls_keep_their_query() {
        let mut p = params();
        p.event = Event::None;
        let url = announce_url("https://t.example/announce?passkey=abc#frag", &p);
        assert!(
            url.starts_with("https://t.example/announce?passkey=abc&info_hash=%00"),
            "{url}"
        );
        assert!(!url.contains("event="), "no event on a regular announce");
        assert!(!url.contains('#'));
        let url = announce_url("http://t.example/a?k=1&", &p);
        assert!(
            url.starts_with("http://t.example/a?k=1&info_hash="),
            "{url}"
        );
        let url = announce_url("http://t.example/a?", &p);
        assert!(url.starts_with("http://t.example/a?info_hash="), "{url}");
    }

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((a, port))
    }

    #[test]
    fn parses_compact_peers_counts_and_intervals() {
        let body = b"d8:completei5e10:incompletei7e8:intervali1800e12:min intervali900e\
                     5:peers18:\x7f\x00\x00\x01\x1a\xe1\x0a\x00\x00\x02\x00\x00\xc0\xa8\x01\x02\x00\x50e";
        let r = parse_response(body).unwrap();
        assert_eq!(r.interval, Duration::from_secs(1800));
        assert_eq!(r.min_interval, Some(Duration::from_secs(900)));
        assert_eq!(r.seeders, Some(5));
        assert_eq!(r.leechers, Some(7));
        // The port-0 entry is skipped.
        assert_eq!(
            r.peers,
            [v4([127, 0, 0, 1], 6881), v4([192, 168, 1, 2], 80)]
        );
        assert_eq!(r.warning, None);
    }

    #[test]
    fn parses_dictionary_peers_and_peers6() {
        let mut v6 = vec![0u8; 16];
        v6[0] = 0x20;
        v6[1] = 0x01;
        v6[15] = 1;
        let mut body = b"d8:intervali60e5:peersl\
            d2:ip8:10.0.0.17:peer id20:AAAAAAAAAAAAAAAAAAAA4:porti6881ee\
            d2:ip3:::14:porti51413ee\
            d2:ip11:example.org4:porti1ee\
            d2:ip8:10.0.0.24:porti0ee\
            d2:ip8:10.0.0.34:porti70000ee\
            d4:porti1ee\
            i5e\
            e6:peers618:"
            .to_vec();
        body.extend_from_slice(&v6);
        body.extend_from_slice(&[0x1a, 0xe1]);
        body.extend_from_slice(b"15:warning message4:slowe");
        let r = parse_response(&body).unwrap();
        let ip6: Ipv6Addr = "2001::1".parse().unwrap();
        assert_eq!(
            r.peers,
            [
                v4([10, 0, 0, 1], 6881),
                "[::1]:51413".parse().unwrap(),
                SocketAddr::from((ip6, 6881)),
            ]
        );
        assert_eq!(r.warning.as_deref(), Some("slow"));
        assert_eq!(r.interval, Duration::from_secs(60));
        assert_eq!(r.seeders, None);
    }

    #[test]
    fn failure_reason_wins() {
        let r = parse_response(b"d14:failure reason8:not here8:intervali5ee");
        assert_eq!(r, Err(TrackerError::Failure("not here".into())));
    }

    #[test]
    fn missing_fields_default_and_odd_intervals_are_clamped() {
        let r = parse_response(b"de").unwrap();
        assert_eq!(r.interval, DEFAULT_INTERVAL);
        assert!(r.peers.is_empty());
        let r = parse_response(b"d8:intervali0e12:min intervali99999999ee").unwrap();
        assert_eq!(r.interval, Duration::from_secs(1));
        assert_eq!(r.min_interval, Some(MAX_INTERVAL));
        let r = parse_response(b"d8:completei-1e8:intervali-5ee").unwrap();
        assert_eq!((r.interval, r.seeders), (Duration::from_secs(1), None));
    }

    #[test]
    fn garbage_and_truncated_replies_are_malformed() {
        for body in [
            &b""[..],
            b"<html>nginx</html>",
            b"d8:intervali1800e5:peers6:abc",
            b"d8:intervali1800e5:peers7:abcdefge",
            b"d8:intervali1800e6:peers66:abcdefe",
            b"li1ee",
            b"d8:interval2:10e",
            b"d5:peersi3ee",
            b"d14:failure reasoni3ee",
            b"d8:intervali1800eextra",
        ] {
            match parse_response(body) {
                Err(TrackerError::Malformed(why)) => assert!(!why.is_empty()),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..2000 {
            let body: Vec<u8> = (0..len % 64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    b"dlie0123456789:peers"[(x % 20) as usize]
                })
                .collect();
            let _ = parse_response(&body);
        }
    }

    use crate::tracker::TrackerClient;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server: answers the first request with `reply`
    /// (`None`: never answers) and hands back the request head.
    async fn serve_once(
        reply: Option<Vec<u8>>,
    ) -> (String, tokio::sync::oneshot::Receiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/announce", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            match reply {
                Some(reply) => {
                    let _ = conn.write_all(&reply).await;
                }
                // Hold the connection open, silent, until the client leaves.
                None => while conn.read(&mut buf).await.is_ok_and(|n| n > 0) {},
            }
        });
        (base, rx)
    }

    fn http_reply(status: &str, body: &[u8], content_length: bool) -> Vec<u8> {
        let mut r = format!("HTTP/1.1 {status}\r\nConnection: close\r\n").into_bytes();
        if content_length {
            r.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        r.extend_from_slice(b"\r\n");
        r.extend_from_slice(body);
        r
    }

    fn client(config: TrackerConfig) -> TrackerClient {
        TrackerClient::new(config).unwrap()
    }

    #[tokio::test]
    async fn announces_over_http() {
        let body = b"d8:intervali900e5:peers6:\x7f\x00\x00\x01\x1a\xe1e";
        let (base, head) = serve_once(Some(http_reply("200 OK", body, true))).await;
        let r = client(TrackerConfig::default())
            .announce(&format!("{base}?passkey=k1"), &params())
            .await
            .unwrap();
        assert_eq!(r.peers, [v4([127, 0, 0, 1], 6881)]);
        let head = head.await.unwrap();
        assert!(
            head.starts_with("GET /announce?passkey=k1&info_hash=%00%FF%20a~Z"),
            "{head}"
        );
        assert!(head.contains("&event=started HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("user-agent: shoal/"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn http_errors_are_told_apart() {
        let c = client(TrackerConfig::default());
        // A failure reason explains a non-success status.
        let failure = http_reply("400 Bad Request", b"d14:failure reason3:nahe", true);
        let (base, _) = serve_once(Some(failure)).await;
        assert_eq!(
            c.announce(&base, &params()).await,
            Err(TrackerError::Failure("nah".into()))
        );
        let (base, _) = serve_once(Some(http_reply("503 Busy", b"<html>", true))).await;
        assert_eq!(
            c.announce(&base, &params()).await,
            Err(TrackerError::Status(503))
        );
        let (base, _) = serve_once(Some(http_reply("200 OK", b"<html>", true))).await;
        assert!(matches!(
            c.announce(&base, &params()).await,
            Err(TrackerError::Malformed(_))
        ));
        // Nothing listening.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/announce", closed.local_addr().unwrap());
        drop(closed);
        let err = c.announce(&url, &params()).await.unwrap_err();
        assert_eq!(err, TrackerError::Network("connection refused".into()));
        // A name that does not resolve (.invalid never does, RFC 2606).
        let err = c
            .announce("http://shoal-test.invalid:6969/announce", &params())
            .await
            .unwrap_err();
        assert_eq!(err, TrackerError::Network("DNS lookup failed".into()));
        assert_eq!(TrackerError::Status(404).to_string(), "HTTP 404 Not Found");
    }

    #[tokio::test]
    async fn oversized_replies_are_refused_before_reading_them_all() {
        let c = client(TrackerConfig {
            max_response_bytes: 100,
            ..TrackerConfig::default()
        });
        let big = [b'x'; 101];
        // Announced by Content-Length, and without one (read until close).
        for content_length in [true, false] {
            let (base, _) = serve_once(Some(http_reply("200 OK", &big, content_length))).await;
            assert_eq!(
                c.announce(&base, &params()).await,
                Err(TrackerError::TooLarge { limit: 100 })
            );
        }
        // 96 bytes, just under the limit.
        let fits = format!("d5:peers84:{}e", "x".repeat(84));
        let (base, _) = serve_once(Some(http_reply("200 OK", fits.as_bytes(), false))).await;
        assert_eq!(c.announce(&base, &params()).await.unwrap().peers.len(), 14);
    }

    #[tokio::test]
    async fn a_silent_http_tracker_times_out() {
        let timeout = Duration::from_millis(300);
        let c = client(TrackerConfig {
            http_timeout: timeout,
            ..TrackerConfig::default()
        });
        let (base, head) = serve_once(None).await;
        let started = std::time::Instant::now();
        assert_eq!(
            c.announce(&base, &params()).await,
            Err(TrackerError::Timeout(timeout))
        );
        assert!(started.elapsed() >= timeout);
        head.await.unwrap();
    }
}
