//! Parsing announce and scrape queries (BEP 3, BEP 23, BEP 48) from the raw
//! query string. Pure functions over `&str`: nothing here allocates in
//! proportion to hostile input (binary fields decode into fixed arrays, the
//! query length is bounded) and every problem becomes a [`RequestError`]
//! whose text is sent to the client as the `failure reason`.

use std::net::IpAddr;

use torrent_format::InfoHash;

/// Longest query string accepted (a scrape of [`MAX_SCRAPE`] hashes fits).
pub const MAX_QUERY: usize = 8 * 1024;
/// Most info hashes in one scrape.
pub const MAX_SCRAPE: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    None,
    Started,
    Completed,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceRequest {
    pub info_hash: InfoHash,
    pub peer_id: [u8; 20],
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub event: Event,
    /// `None` when absent or not a number (clients send odd values; the
    /// default is used then).
    pub numwant: Option<u32>,
    /// BEP 23; default on.
    pub compact: bool,
    pub no_peer_id: bool,
    /// The `ip` parameter; only used when the tracker trusts it.
    pub ip: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("query too long (more than {MAX_QUERY} bytes)")]
    QueryTooLong,
    #[error("missing '{0}'")]
    Missing(&'static str),
    #[error("'{field}' must be exactly 20 bytes (got {len})")]
    BadLength { field: &'static str, len: usize },
    #[error("malformed percent-encoding in '{0}'")]
    BadEscape(&'static str),
    #[error("'{0}' is not a non-negative integer")]
    BadNumber(&'static str),
    #[error("port 0 is not a valid port")]
    PortZero,
    #[error("port {0} is out of range (1-65535)")]
    PortRange(u64),
    #[error("unknown event {0:?}")]
    BadEvent(String),
    #[error("'ip' is not an IP address")]
    BadIp,
    #[error("too many info_hash values (at most {MAX_SCRAPE} per scrape)")]
    TooManyHashes,
    #[error("full scrapes are not served: give one or more info_hash")]
    FullScrape,
}

/// Splits a query into raw `(key, value)` pairs (values still escaped).
/// With the `memchr` crate rather than `str::split(char)`, which costs a
/// `memcmp` call per piece besides its search: parsing was half of an
/// announce's user-space CPU. `&` and `=` are ASCII, so every piece is
/// still a valid `&str`.
fn pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    let mut rest = query;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let end = memchr::memchr(b'&', rest.as_bytes()).unwrap_or(rest.len());
        let pair = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or("");
        if pair.is_empty() {
            continue;
        }
        return Some(match pair.bytes().position(|c| c == b'=') {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, ""),
        });
    })
}

const NOT_HEX: u8 = 0xff;

/// Hex digit values by byte ([`NOT_HEX`] for anything else): binary fields
/// are 20 escapes each, on every announce.
static HEX: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut c = 0;
    while c < 10 {
        t[b'0' as usize + c] = c as u8;
        c += 1;
    }
    let mut c = 0;
    while c < 6 {
        t[b'a' as usize + c] = 10 + c as u8;
        t[b'A' as usize + c] = 10 + c as u8;
        c += 1;
    }
    t
};

/// Percent-decodes `value` into exactly 20 bytes.
fn decode20(field: &'static str, value: &str) -> Result<[u8; 20], RequestError> {
    match decode20_escaped(value) {
        Some(out) => Ok(out),
        None => decode20_any(field, value),
    }
}

/// What most clients send: every byte escaped, `%XX` × 20. One pass with
/// no branch per byte; `None` for anything else.
fn decode20_escaped(value: &str) -> Option<[u8; 20]> {
    let escaped = <&[u8; 60]>::try_from(value.as_bytes()).ok()?;
    let mut out = [0u8; 20];
    let mut bad = 0u8;
    let mut percent = true;
    for (o, e) in out.iter_mut().zip(escaped.chunks_exact(3)) {
        let (hi, lo) = (HEX[e[1] as usize], HEX[e[2] as usize]);
        percent &= e[0] == b'%';
        bad |= hi | lo;
        *o = hi << 4 | lo;
    }
    // NOT_HEX has the high bits set; hex digits never do.
    (percent && bad & 0xf0 == 0).then_some(out)
}

/// [`decode20`] for any mix of escaped and plain bytes.
fn decode20_any(field: &'static str, value: &str) -> Result<[u8; 20], RequestError> {
    let mut out = [0u8; 20];
    let mut n = 0;
    let b = value.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let byte = if b[i] == b'%' {
            let hi = b.get(i + 1).map_or(NOT_HEX, |&c| HEX[c as usize]);
            let lo = b.get(i + 2).map_or(NOT_HEX, |&c| HEX[c as usize]);
            if hi == NOT_HEX || lo == NOT_HEX {
                return Err(RequestError::BadEscape(field));
            }
            i += 3;
            hi << 4 | lo
        } else {
            i += 1;
            b[i - 1]
        };
        if n == 20 {
            // Count the rest only to report the length.
            let rest = percent_decoded_len(&b[i..]);
            return Err(RequestError::BadLength {
                field,
                len: 21 + rest,
            });
        }
        out[n] = byte;
        n += 1;
    }
    if n != 20 {
        return Err(RequestError::BadLength { field, len: n });
    }
    Ok(out)
}

fn percent_decoded_len(b: &[u8]) -> usize {
    let (mut i, mut n) = (0, 0);
    while i < b.len() {
        i += if b[i] == b'%' { 3 } else { 1 };
        n += 1;
    }
    n
}

fn number(field: &'static str, value: &str) -> Result<u64, RequestError> {
    // Digits only: no sign, no spaces, no exponent; at most 20 of them
    // and at most u64::MAX.
    let bad = || RequestError::BadNumber(field);
    if value.is_empty() || value.len() > 20 {
        return Err(bad());
    }
    value.bytes().try_fold(0u64, |n, c| {
        let digit = c.wrapping_sub(b'0');
        if digit > 9 {
            return Err(bad());
        }
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(digit)))
            .ok_or_else(bad)
    })
}

pub fn parse_announce(query: &str) -> Result<AnnounceRequest, RequestError> {
    if query.len() > MAX_QUERY {
        return Err(RequestError::QueryTooLong);
    }
    let mut info_hash = None;
    let mut peer_id = None;
    let mut port = None;
    let (mut uploaded, mut downloaded, mut left) = (0, 0, None);
    let mut event = Event::None;
    let mut numwant = None;
    let mut compact = true;
    let mut no_peer_id = false;
    let mut ip = None;
    for (key, value) in pairs(query) {
        match key {
            "info_hash" => info_hash = Some(InfoHash(decode20("info_hash", value)?)),
            "peer_id" => peer_id = Some(decode20("peer_id", value)?),
            "port" => {
                let p = number("port", value)?;
                port = Some(match p {
                    0 => return Err(RequestError::PortZero),
                    1..=65535 => p as u16,
                    _ => return Err(RequestError::PortRange(p)),
                });
            }
            "uploaded" => uploaded = number("uploaded", value)?,
            "downloaded" => downloaded = number("downloaded", value)?,
            "left" => left = Some(number("left", value)?),
            "event" => {
                event = match value {
                    "started" => Event::Started,
                    "completed" => Event::Completed,
                    "stopped" => Event::Stopped,
                    // "empty" is what some clients send for a regular
                    // announce; "paused" is BEP 21's partial seed.
                    "" | "empty" | "paused" => Event::None,
                    other => {
                        let shown: String = other.chars().take(32).collect();
                        return Err(RequestError::BadEvent(shown));
                    }
                }
            }
            "numwant" => {
                numwant = number("numwant", value)
                    .ok()
                    .map(|n| n.min(u32::MAX as u64) as u32)
            }
            "compact" => compact = value != "0",
            "no_peer_id" => no_peer_id = value == "1",
            "ip" => {
                ip = Some(
                    percent_decode_str(value)
                        .and_then(|s| s.parse().ok())
                        .ok_or(RequestError::BadIp)?,
                )
            }
            _ => {}
        }
    }
    Ok(AnnounceRequest {
        info_hash: info_hash.ok_or(RequestError::Missing("info_hash"))?,
        peer_id: peer_id.ok_or(RequestError::Missing("peer_id"))?,
        port: port.ok_or(RequestError::Missing("port"))?,
        uploaded,
        downloaded,
        left: left.ok_or(RequestError::Missing("left"))?,
        event,
        numwant,
        compact,
        no_peer_id,
        ip,
    })
}

/// The info hashes of a scrape, in order, duplicates kept out.
pub fn parse_scrape(query: &str) -> Result<Vec<InfoHash>, RequestError> {
    if query.len() > MAX_QUERY {
        return Err(RequestError::QueryTooLong);
    }
    let mut hashes = Vec::new();
    for (key, value) in pairs(query) {
        if key == "info_hash" {
            let h = InfoHash(decode20("info_hash", value)?);
            if !hashes.contains(&h) {
                if hashes.len() == MAX_SCRAPE {
                    return Err(RequestError::TooManyHashes);
                }
                hashes.push(h);
            }
        }
    }
    if hashes.is_empty() {
        return Err(RequestError::FullScrape);
    }
    Ok(hashes)
}

/// Short text values (the `ip` parameter): percent-decoded, bounded.
fn percent_decode_str(value: &str) -> Option<String> {
    if value.len() > 128 {
        return None;
    }
    let b = value.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use torrent_format::magnet::percent_encode_bytes;

    const HASH: [u8; 20] =
        *b"\x12\x34\x56\x78\x9a\xbc\xde\xf0\x12\x34\x56\x78\x9a\xbc\xde\xf0\x00+ %";
    const PEER: [u8; 20] = *b"-SH0001-abcdefghijkl";

    fn query(extra: &str) -> String {
        format!(
            "info_hash={}&peer_id={}&port=6881&uploaded=1&downloaded=2&left=3{extra}",
            percent_encode_bytes(&HASH),
            percent_encode_bytes(&PEER)
        )
    }

    #[test]
    fn parses_a_full_announce() {
        let r = parse_announce(&query(
            "&event=started&numwant=20&compact=1&no_peer_id=1&key=abc&ip=10.0.0.1",
        ))
        .unwrap();
        assert_eq!(r.info_hash.0, HASH);
        assert_eq!(r.peer_id, PEER);
        assert_eq!((r.port, r.uploaded, r.downloaded, r.left), (6881, 1, 2, 3));
        assert_eq!(r.event, Event::Started);
        assert_eq!(r.numwant, Some(20));
        assert!(r.compact && r.no_peer_id);
        assert_eq!(r.ip, Some("10.0.0.1".parse().unwrap()));
        let r = parse_announce(&query("&compact=0&event=&numwant=-1")).unwrap();
        assert!(!r.compact);
        assert_eq!(r.event, Event::None);
        assert_eq!(r.numwant, None);
        // Unescaped bytes are taken as they are.
        let raw = query("").replace(&percent_encode_bytes(&PEER), "-SH0001-abcdefghijkl");
        assert_eq!(parse_announce(&raw).unwrap().peer_id, PEER);
    }

    #[test]
    fn refuses_malformed_announces() {
        let h = percent_encode_bytes(&HASH);
        let p = percent_encode_bytes(&PEER);
        let cases = [
            (
                format!("peer_id={p}&port=1&left=0"),
                RequestError::Missing("info_hash"),
            ),
            (
                format!("info_hash={h}&port=1&left=0"),
                RequestError::Missing("peer_id"),
            ),
            (
                format!("info_hash={h}&peer_id={p}&left=0"),
                RequestError::Missing("port"),
            ),
            (
                format!("info_hash={h}&peer_id={p}&port=1"),
                RequestError::Missing("left"),
            ),
            (
                format!("info_hash=abc&peer_id={p}&port=1&left=0"),
                RequestError::BadLength {
                    field: "info_hash",
                    len: 3,
                },
            ),
            (
                format!("info_hash={h}00&peer_id={p}&port=1&left=0"),
                RequestError::BadLength {
                    field: "info_hash",
                    len: 22,
                },
            ),
            (
                format!("info_hash={h}&peer_id=%zz&port=1&left=0"),
                RequestError::BadEscape("peer_id"),
            ),
            (
                format!("info_hash={h}&peer_id={p}&port=1&left=0&info_hash=%4"),
                RequestError::BadEscape("info_hash"),
            ),
            (
                format!("info_hash={h}&peer_id={p}&port=0&left=0"),
                RequestError::PortZero,
            ),
            (
                format!("info_hash={h}&peer_id={p}&port=65536&left=0"),
                RequestError::PortRange(65536),
            ),
            (
                format!("info_hash={h}&peer_id={p}&port=-1&left=0"),
                RequestError::BadNumber("port"),
            ),
            (
                format!("info_hash={h}&peer_id={p}&port=1&left=x"),
                RequestError::BadNumber("left"),
            ),
            (
                format!("info_hash={h}&peer_id={p}&port=1&left=0&uploaded=1e5"),
                RequestError::BadNumber("uploaded"),
            ),
            (
                format!(
                    "info_hash={h}&peer_id={p}&port=1&left=0&downloaded=99999999999999999999999"
                ),
                RequestError::BadNumber("downloaded"),
            ),
            (
                format!("info_hash={h}&peer_id={p}&port=1&left=0&event=exploded"),
                RequestError::BadEvent("exploded".into()),
            ),
            (
                format!("info_hash={h}&peer_id={p}&port=1&left=0&ip=not-an-ip"),
                RequestError::BadIp,
            ),
            ("x".repeat(MAX_QUERY + 1), RequestError::QueryTooLong),
        ];
        for (q, want) in cases {
            assert_eq!(parse_announce(&q), Err(want), "{q}");
        }
    }

    #[test]
    fn parses_scrapes() {
        let a = percent_encode_bytes(&HASH);
        let b = percent_encode_bytes(&PEER);
        let got = parse_scrape(&format!("info_hash={a}&info_hash={b}&info_hash={a}")).unwrap();
        assert_eq!(got, vec![InfoHash(HASH), InfoHash(PEER)]);
        assert_eq!(parse_scrape(""), Err(RequestError::FullScrape));
        let many: Vec<String> = (0..=MAX_SCRAPE)
            .map(|i| format!("info_hash={}", percent_encode_bytes(&[i as u8; 20])))
            .collect();
        assert_eq!(
            parse_scrape(&many.join("&")),
            Err(RequestError::TooManyHashes)
        );
        assert!(matches!(
            parse_scrape("info_hash=short"),
            Err(RequestError::BadLength { .. })
        ));
    }

    #[test]
    fn numbers_are_digits_up_to_u64_max() {
        assert_eq!(number("n", "0"), Ok(0));
        assert_eq!(number("n", "00012"), Ok(12));
        assert_eq!(number("n", "18446744073709551615"), Ok(u64::MAX));
        assert_eq!(number("n", "00000000000000006881"), Ok(6881));
        // More than 20 characters, as before, even if only zeros.
        assert_eq!(
            number("n", "000000000000000006881"),
            Err(RequestError::BadNumber("n"))
        );
        for bad in [
            "",
            "18446744073709551616",
            "99999999999999999999999",
            "1 2",
            "+1",
            "-0",
            "1e5",
            "٣",
        ] {
            assert_eq!(
                number("n", bad),
                Err(RequestError::BadNumber("n")),
                "{bad:?}"
            );
        }
    }

    proptest! {
        /// The fast path for fully escaped 20-byte fields agrees with the
        /// general decoder: on `%XX` × 20 in either case, and with one
        /// character changed anywhere (a bad digit, a missing `%`, …).
        #[test]
        fn escaped_fast_path_agrees_with_the_general_decoder(
            bytes in any::<[u8; 20]>(),
            lower in any::<bool>(),
            change in proptest::option::of((0usize..60, proptest::sample::select(b"%0aFgZ+&~".to_vec()))),
        ) {
            let mut v: Vec<u8> = bytes
                .iter()
                .flat_map(|b| {
                    let e = if lower { format!("%{b:02x}") } else { format!("%{b:02X}") };
                    e.into_bytes()
                })
                .collect();
            if let Some((at, c)) = change {
                v[at] = c;
            }
            let v = String::from_utf8(v).unwrap();
            let general = decode20_any("f", &v);
            prop_assert_eq!(decode20("f", &v), general.clone());
            if change.is_none() {
                prop_assert_eq!(decode20_escaped(&v), Some(bytes));
                prop_assert_eq!(general, Ok(bytes));
            }
        }

        /// `pairs` splits exactly as `split('&')` + `split_once('=')` do,
        /// multi-byte characters and empty pieces included.
        #[test]
        fn pairs_split_like_the_standard_library(q in "[&=a%é😀]{0,40}") {
            let want: Vec<(&str, &str)> = q
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .collect();
            prop_assert_eq!(pairs(&q).collect::<Vec<_>>(), want);
        }

        #[test]
        fn arbitrary_queries_never_panic(q in ".{0,300}") {
            let _ = parse_announce(&q);
            let _ = parse_scrape(&q);
        }

        #[test]
        fn arbitrary_binary_fields_round_trip(h in any::<[u8; 20]>(), p in any::<[u8; 20]>()) {
            let q = format!("info_hash={}&peer_id={}&port=1&left=0", percent_encode_bytes(&h), percent_encode_bytes(&p));
            let r = parse_announce(&q).unwrap();
            prop_assert_eq!(r.info_hash.0, h);
            prop_assert_eq!(r.peer_id, p);
        }
    }
}
