//! Magnet links (BEP 9): `magnet:?xt=urn:btih:<hash>&dn=<name>&tr=<tracker>…`.

use std::fmt;

use crate::{InfoHash, Metainfo};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Magnet {
    pub info_hash: InfoHash,
    pub name: Option<String>,
    pub trackers: Vec<String>,
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
            web_seeds: m.web_seeds().to_vec(),
        }
    }

    pub fn parse(link: &str) -> Result<Magnet, MagnetError> {
        let query = link
            .strip_prefix("magnet:?")
            .ok_or(MagnetError::NotMagnet)?;
        let mut info_hash = None;
        let mut name = None;
        let mut trackers = Vec::new();
        let mut web_seeds = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value =
                percent_decode(value).ok_or_else(|| MagnetError::BadEncoding(key.to_string()))?;
            match key {
                "xt" => {
                    if let Some(h) = value.strip_prefix("urn:btih:") {
                        info_hash = Some(InfoHash::from_hex_or_base32(h)?);
                    }
                }
                "dn" => name = Some(value),
                "tr" => trackers.push(value),
                "ws" => web_seeds.push(value),
                _ => {}
            }
        }
        Ok(Magnet {
            info_hash: info_hash.ok_or(MagnetError::NoInfoHash)?,
            name,
            trackers,
            web_seeds,
        })
    }
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
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
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
}
