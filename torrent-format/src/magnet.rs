//! Magnet links (BEP 9): `magnet:?xt=urn:btih:<hash>&dn=<name>&tr=<tracker>…`.

use std::fmt;

use crate::{InfoHash, Metainfo};

/// The longest magnet link [`Magnet::parse`] reads.
pub const MAX_MAGNET_LEN: usize = 64 * 1024;
/// At most this many trackers, peers and web seeds are kept (each); any
/// more in a link are ignored.
pub const MAX_MAGNET_ITEMS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Magnet {
    pub info_hash: InfoHash,
    pub name: Option<String>,
    pub trackers: Vec<String>,
    /// BEP 9 peer addresses (`x.pe=HOST:PORT`), percent-decoded but
    /// otherwise as given, in order; split one with [`parse_peer`].
    pub peers: Vec<String>,
    /// BEP 19 web seeds (`ws=`).
    pub web_seeds: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MagnetError {
    #[error("not a magnet link (it must start with 'magnet:?')")]
    NotMagnet,
    #[error("the magnet link has no 'xt=urn:btih:' info hash")]
    NoInfoHash,
    // The message ends with the cause's, so the cause is not also the
    // `source()` (printed with its chain, it would appear twice).
    #[error("bad info hash in magnet link: {0}")]
    BadInfoHash(crate::ParseInfoHashError),
    #[error("bad percent-encoding in magnet link parameter {0:?}")]
    BadEncoding(String),
    #[error("the magnet link is {len} bytes long, over the {} KiB limit", MAX_MAGNET_LEN / 1024)]
    TooLong { len: usize },
}

impl From<crate::ParseInfoHashError> for MagnetError {
    fn from(e: crate::ParseInfoHashError) -> Self {
        MagnetError::BadInfoHash(e)
    }
}

impl Magnet {
    pub fn from_metainfo(m: &Metainfo) -> Magnet {
        Magnet {
            info_hash: m.info_hash(),
            name: Some(m.info.name().to_string()),
            trackers: m.trackers().into_iter().flatten().collect(),
            peers: Vec::new(),
            web_seeds: m.web_seeds().to_vec(),
        }
    }

    /// Parses a link of at most [`MAX_MAGNET_LEN`] bytes. Of several
    /// `xt=urn:btih:` the first counts (each must be well formed); other
    /// `xt` kinds (`urn:btmh:`…) and unknown parameters are ignored.
    pub fn parse(link: &str) -> Result<Magnet, MagnetError> {
        if link.len() > MAX_MAGNET_LEN {
            return Err(MagnetError::TooLong { len: link.len() });
        }
        let query = link
            .strip_prefix("magnet:?")
            .ok_or(MagnetError::NotMagnet)?;
        let mut info_hash = None;
        let mut name = None;
        let mut trackers = Vec::new();
        let mut peers = Vec::new();
        let mut web_seeds = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value =
                percent_decode(value).ok_or_else(|| MagnetError::BadEncoding(key.to_string()))?;
            let list = match key {
                "xt" => {
                    if let Some(h) = value.strip_prefix("urn:btih:") {
                        let h = InfoHash::from_hex_or_base32(h)?;
                        info_hash.get_or_insert(h);
                    }
                    continue;
                }
                "dn" => {
                    name = Some(value);
                    continue;
                }
                "tr" => &mut trackers,
                "x.pe" => &mut peers,
                "ws" => &mut web_seeds,
                _ => continue,
            };
            if list.len() < MAX_MAGNET_ITEMS {
                list.push(value);
            }
        }
        Ok(Magnet {
            info_hash: info_hash.ok_or(MagnetError::NoInfoHash)?,
            name,
            trackers,
            peers,
            web_seeds,
        })
    }
}

/// Splits a peer address `HOST:PORT` (as in `x.pe=`) into host and port.
/// HOST is a DNS name or an IPv4 address, or an IPv6 address in brackets
/// (`[::1]:6881`, returned without them); PORT is 1..=65535. `None` for
/// anything else.
pub fn parse_peer(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        host.parse::<std::net::Ipv6Addr>().ok()?;
        (host, port)
    } else {
        let (host, port) = s.rsplit_once(':')?;
        let name_char = |c: char| c.is_ascii_alphanumeric() || "-._".contains(c);
        if host.is_empty() || !host.chars().all(name_char) {
            return None;
        }
        (host, port)
    };
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    (port != 0).then(|| (host.to_string(), port))
}

impl fmt::Display for Magnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "magnet:?xt=urn:btih:{}", self.info_hash)?;
        if let Some(n) = &self.name {
            write!(f, "&dn={}", percent_encode(n))?;
        }
        for t in &self.trackers {
            write!(f, "&tr={}", percent_encode(t))?;
        }
        // ':' and the brackets of an IPv6 address stay readable, as
        // libtorrent writes them.
        for p in &self.peers {
            write!(f, "&x.pe={}", encode_keeping(p.as_bytes(), b":[]"))?;
        }
        for w in &self.web_seeds {
            write!(f, "&ws={}", percent_encode(w))?;
        }
        Ok(())
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    percent_encode_bytes(s.as_bytes())
}

/// Percent-encodes raw bytes (info hashes and peer ids in tracker queries).
pub fn percent_encode_bytes(bytes: &[u8]) -> String {
    encode_keeping(bytes, b"")
}

/// Percent-encodes all but unreserved characters and those in `keep`.
fn encode_keeping(bytes: &[u8], keep: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes and `+` (as space); `None` on a malformed escape or
/// a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let m = Magnet {
            info_hash: "c12fe1c06bba254a9dc9f519b335aa7c1367a88a".parse().unwrap(),
            name: Some("a b&c/ü".into()),
            trackers: vec!["http://t:6969/announce?x=1".into(), "udp://u:80".into()],
            peers: vec![],
            web_seeds: vec![],
        };
        let s = m.to_string();
        assert_eq!(
            s,
            "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&dn=a%20b%26c%2F%C3%BC\
             &tr=http%3A%2F%2Ft%3A6969%2Fannounce%3Fx%3D1&tr=udp%3A%2F%2Fu%3A80"
        );
        assert_eq!(Magnet::parse(&s).unwrap(), m);
    }

    #[test]
    fn refuses_bad_links() {
        assert_eq!(Magnet::parse("http://x"), Err(MagnetError::NotMagnet));
        assert_eq!(Magnet::parse("magnet:?dn=x"), Err(MagnetError::NoInfoHash));
        assert!(matches!(
            Magnet::parse("magnet:?xt=urn:btih:123"),
            Err(MagnetError::BadInfoHash(_))
        ));
        assert!(matches!(
            Magnet::parse("magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&dn=%G1"),
            Err(MagnetError::BadEncoding(_))
        ));
        assert!(
            Magnet::parse("magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88a&dn=%")
                .is_err()
        );
    }

    const HEX: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";

    #[test]
    fn round_trips_peers_and_web_seeds() {
        let m = Magnet {
            info_hash: HEX.parse().unwrap(),
            name: None,
            trackers: vec!["udp://u:80".into()],
            peers: vec![
                "10.0.0.1:6881".into(),
                "[2001:db8::1]:51413".into(),
                "peer.example:1".into(),
                "odd host+&=%:7".into(),
            ],
            web_seeds: vec!["http://seed/a b".into()],
        };
        let s = m.to_string();
        assert_eq!(
            s,
            format!(
                "magnet:?xt=urn:btih:{HEX}&tr=udp%3A%2F%2Fu%3A80&x.pe=10.0.0.1:6881\
                 &x.pe=[2001:db8::1]:51413&x.pe=peer.example:1&x.pe=odd%20host%2B%26%3D%25:7\
                 &ws=http%3A%2F%2Fseed%2Fa%20b"
            )
        );
        assert_eq!(Magnet::parse(&s).unwrap(), m);
        // Escaped on the way in, kept decoded.
        let m = Magnet::parse(&format!(
            "magnet:?xt=urn:btih:{HEX}&x.pe=%5B%3A%3A1%5D%3A6881&x.pe=h:2"
        ))
        .unwrap();
        assert_eq!(m.peers, ["[::1]:6881", "h:2"]);
    }

    #[test]
    fn base32_hash_and_several_xt() {
        let hex: InfoHash = HEX.parse().unwrap();
        let m = Magnet::parse("magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK").unwrap();
        assert_eq!(m.info_hash, hex);
        // A hybrid (BEP 52) link: the v2 `btmh` is passed over, wherever it is.
        let btmh = "urn:btmh:1220caf1e1c30e81cb361b9ee167c4aa64228a7fa4fa9f6105232b28ad099f3a302e";
        for link in [
            format!("magnet:?xt={btmh}&xt=urn:btih:{HEX}&dn=x"),
            format!("magnet:?xt=urn:btih:{HEX}&xt={btmh}&dn=x"),
        ] {
            let m = Magnet::parse(&link).unwrap();
            assert_eq!(m.info_hash, hex);
            assert_eq!(m.name.as_deref(), Some("x"));
        }
        assert_eq!(
            Magnet::parse(&format!("magnet:?xt={btmh}")),
            Err(MagnetError::NoInfoHash)
        );
        // Of two btih the first counts; a malformed one is still an error.
        let other = "0000000000000000000000000000000000000000";
        let m = Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{other}")).unwrap();
        assert_eq!(m.info_hash, hex);
        assert!(matches!(
            Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btih:zz")),
            Err(MagnetError::BadInfoHash(_))
        ));
    }

    #[test]
    fn bounds_what_it_keeps() {
        let mut link = format!("magnet:?xt=urn:btih:{HEX}");
        for i in 0..MAX_MAGNET_ITEMS + 5 {
            link.push_str(&format!(
                "&tr=udp://t{i}:80&x.pe=10.0.0.1:{}&ws=http://w{i}/",
                i + 1
            ));
        }
        let m = Magnet::parse(&link).unwrap();
        assert_eq!(m.trackers.len(), MAX_MAGNET_ITEMS);
        assert_eq!(m.peers.len(), MAX_MAGNET_ITEMS);
        assert_eq!(m.web_seeds.len(), MAX_MAGNET_ITEMS);
        // The first ones, in order.
        assert_eq!(m.trackers[0], "udp://t0:80");
        assert_eq!(m.peers[199], "10.0.0.1:200");
        assert_eq!(m.web_seeds[199], "http://w199/");

        let mut link = format!("magnet:?xt=urn:btih:{HEX}&dn=");
        link.push_str(&"a".repeat(MAX_MAGNET_LEN - link.len()));
        assert!(Magnet::parse(&link).is_ok());
        link.push('a');
        let e = Magnet::parse(&link).unwrap_err();
        assert_eq!(
            e,
            MagnetError::TooLong {
                len: MAX_MAGNET_LEN + 1
            }
        );
        assert_eq!(
            e.to_string(),
            "the magnet link is 65537 bytes long, over the 64 KiB limit"
        );
    }

    #[test]
    fn splits_peer_addresses() {
        let ok = |s: &str, host: &str, port: u16| {
            assert_eq!(parse_peer(s), Some((host.to_string(), port)), "{s}");
        };
        ok("10.0.0.1:6881", "10.0.0.1", 6881);
        ok("peer.example:1", "peer.example", 1);
        ok("my_host-2:65535", "my_host-2", 65535);
        ok("[::1]:6881", "::1", 6881);
        ok("[2001:db8::7]:51413", "2001:db8::7", 51413);
        for bad in [
            "",
            "host",
            "host:",
            ":6881",
            "host:0",
            "host:65536",
            "host:99999999999",
            "host:+80",
            "host:-1",
            "host:80 ",
            "host: 80",
            "ho st:80",
            "::1:6881",
            "[::1]",
            "[::1]6881",
            "[::1]:",
            "[::1]:0",
            "[]:80",
            "[not-ip]:80",
            "[10.0.0.1]:80",
            "[::1:80",
            "a/b:80",
            "héllo:80",
        ] {
            assert_eq!(parse_peer(bad), None, "{bad:?}");
        }
    }
}
