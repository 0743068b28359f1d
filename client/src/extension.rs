//! The extension protocol (BEP 10): the extended handshake both sides send
//! once the reserved bit says they speak it.
//!
//! Sans-IO: [`ExtHandshake::encode`] gives the payload of extended message
//! 0, [`ExtHandshake::decode`] reads a peer's. Unknown keys and extensions
//! are ignored, as BEP 10 asks; a payload that is not a bencoded dictionary
//! is an error (the connection layer disconnects, logging why). Every
//! field a peer sends is bounded before it is kept: the client name is cut
//! to [`MAX_CLIENT_NAME`] printable characters, extension names to 64
//! bytes and at most [`MAX_EXTENSIONS`] of them.
//!
//! ut_metadata (BEP 9, [`crate::metadata`]) and ut_pex (BEP 11,
//! [`crate::pex`]) go in `m` with the ids below.

use std::collections::BTreeMap;
use std::net::IpAddr;

use torrent_format::bencode::{self, Value};

/// Extended message id of the handshake itself.
pub const HANDSHAKE_ID: u8 = 0;
/// The id peers send us ut_pex messages with (our `m`; libtorrent's too).
pub const UT_PEX_ID: u8 = 1;
/// The id peers send us ut_metadata messages with.
pub const UT_METADATA_ID: u8 = 2;
/// Longest client name (`v`) kept from a peer.
pub const MAX_CLIENT_NAME: usize = 64;
/// Most extensions kept from a peer's `m`.
pub const MAX_EXTENSIONS: usize = 64;
/// The `reqq` assumed for a peer that does not send one (libtorrent's
/// assumption too).
pub const DEFAULT_REQQ: usize = 250;

/// What one side says in its extended handshake.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtHandshake {
    /// Extension name → the message id the sender wants it sent with
    /// (0: the sender turns it off).
    pub extensions: BTreeMap<String, u8>,
    /// Client name and version (`v`).
    pub client: Option<String>,
    /// The sender's listening port (`p`).
    pub port: Option<u16>,
    /// Requests the sender queues before dropping (`reqq`).
    pub reqq: Option<usize>,
    /// The address the sender sees us at (`yourip`).
    pub your_ip: Option<IpAddr>,
    /// Size of the info dictionary (`metadata_size`, BEP 9).
    pub metadata_size: Option<u64>,
    /// `e`: it supports (and prefers) MSE encryption, for ut_pex's flag.
    /// We never send it: shoal speaks no MSE.
    pub encryption: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtError {
    // The message ends with the cause's, so the cause is not also the
    // `source()` (printed with its chain, it would appear twice).
    #[error("extended handshake is not bencode: {0}")]
    Bencode(bencode::DecodeError),
    #[error("extended handshake is not a dictionary")]
    NotADict,
    #[error("extended handshake: 'm' is not a dictionary")]
    BadM,
}

impl From<bencode::DecodeError> for ExtError {
    fn from(e: bencode::DecodeError) -> Self {
        ExtError::Bencode(e)
    }
}

impl ExtHandshake {
    pub fn encode(&self) -> Vec<u8> {
        let mut d = BTreeMap::new();
        let m = self
            .extensions
            .iter()
            .map(|(k, &v)| (k.as_bytes().to_vec(), Value::Int(i64::from(v))))
            .collect();
        d.insert(b"m".to_vec(), Value::Dict(m));
        if let Some(v) = &self.client {
            d.insert(b"v".to_vec(), Value::Bytes(v.as_bytes().to_vec()));
        }
        if let Some(p) = self.port {
            d.insert(b"p".to_vec(), Value::Int(i64::from(p)));
        }
        if let Some(q) = self.reqq {
            d.insert(b"reqq".to_vec(), Value::Int(q as i64));
        }
        if let Some(ip) = self.your_ip {
            let bytes = match ip {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            };
            d.insert(b"yourip".to_vec(), Value::Bytes(bytes));
        }
        if let Some(n) = self.metadata_size {
            d.insert(b"metadata_size".to_vec(), Value::Int(n as i64));
        }
        if self.encryption {
            d.insert(b"e".to_vec(), Value::Int(1));
        }
        Value::Dict(d).encode()
    }

    /// A peer's extended handshake. Keys of the wrong type are ignored
    /// like unknown ones; only a payload that is not a dictionary (or an
    /// `m` that is not one) is refused.
    pub fn decode(payload: &[u8]) -> Result<ExtHandshake, ExtError> {
        let v = bencode::decode(payload)?;
        let Value::Dict(d) = v else {
            return Err(ExtError::NotADict);
        };
        let int = |key: &str| match d.get(key.as_bytes()) {
            Some(Value::Int(i)) => Some(*i),
            _ => None,
        };
        let mut out = ExtHandshake::default();
        match d.get(b"m".as_slice()) {
            Some(Value::Dict(m)) => {
                for (k, v) in m {
                    if out.extensions.len() >= MAX_EXTENSIONS {
                        break;
                    }
                    let (Ok(name), Value::Int(id)) = (std::str::from_utf8(k), v) else {
                        continue;
                    };
                    let Ok(id) = u8::try_from(*id) else { continue };
                    if name.len() <= 64 {
                        out.extensions.insert(name.to_string(), id);
                    }
                }
            }
            Some(_) => return Err(ExtError::BadM),
            None => {}
        }
        if let Some(Value::Bytes(v)) = d.get(b"v".as_slice()) {
            out.client = Some(printable(v));
        }
        out.port = int("p")
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0);
        out.reqq = int("reqq")
            .and_then(|q| usize::try_from(q).ok())
            .filter(|&q| q > 0);
        out.your_ip = match d.get(b"yourip".as_slice()) {
            Some(Value::Bytes(b)) if b.len() == 4 => Some(IpAddr::from(
                <[u8; 4]>::try_from(b.as_slice()).expect("4 bytes"),
            )),
            Some(Value::Bytes(b)) if b.len() == 16 => Some(IpAddr::from(
                <[u8; 16]>::try_from(b.as_slice()).expect("16 bytes"),
            )),
            _ => None,
        };
        out.metadata_size = int("metadata_size").and_then(|n| u64::try_from(n).ok());
        out.encryption = int("e").is_some_and(|e| e != 0);
        Ok(out)
    }
}

/// A peer-supplied name made safe to print: valid UTF-8 (lossy), control
/// characters dropped, at most [`MAX_CLIENT_NAME`] characters.
fn printable(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_CLIENT_NAME)
        .collect()
}

/// Our client name as sent in `v`.
pub fn our_client_name() -> String {
    format!("shoal/{}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut h = ExtHandshake {
            client: Some("shoal/0.1.0".into()),
            port: Some(6881),
            reqq: Some(2000),
            your_ip: Some("10.1.2.3".parse().unwrap()),
            metadata_size: Some(31337),
            encryption: true,
            ..ExtHandshake::default()
        };
        h.extensions.insert("ut_metadata".into(), 3);
        assert_eq!(ExtHandshake::decode(&h.encode()).unwrap(), h);
        let v6 = ExtHandshake {
            your_ip: Some("2001:db8::1".parse().unwrap()),
            ..ExtHandshake::default()
        };
        assert_eq!(ExtHandshake::decode(&v6.encode()).unwrap(), v6);
    }

    #[test]
    fn reads_libtorrent_style_handshakes_and_ignores_the_unknown() {
        let raw = b"d12:complete_agoi-1e1:md11:lt_donthavei7e10:share_modei8e11:upload_onlyi3e12:ut_holepunchi4e11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei5000e4:reqqi500e11:upload_onlyi0e1:vi3e6:yourip4:\x7f\x00\x00\x01e";
        let h = ExtHandshake::decode(raw).unwrap();
        assert_eq!(h.extensions.get("ut_metadata"), Some(&2));
        assert_eq!(h.extensions.get("ut_pex"), Some(&1));
        assert_eq!(h.reqq, Some(500));
        assert_eq!(h.metadata_size, Some(5000));
        // 'v' of the wrong type is ignored, not an error.
        assert_eq!(h.client, None);
        assert_eq!(h.your_ip, Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bounds_what_a_peer_sends() {
        let long = "x".repeat(1000);
        let raw = format!("d1:v{}:{long}\u{7}4:reqqi-5e1:pi70000ee", long.len() + 1);
        let h = ExtHandshake::decode(raw.as_bytes()).unwrap();
        assert_eq!(h.client.unwrap().len(), MAX_CLIENT_NAME);
        assert_eq!(h.reqq, None);
        assert_eq!(h.port, None);
        let mut many = String::from("d1:md");
        for i in 0..200 {
            many.push_str(&format!("{}:e{i:03}i1e", 4));
        }
        many.push_str("ee");
        let h = ExtHandshake::decode(many.as_bytes()).unwrap();
        assert_eq!(h.extensions.len(), MAX_EXTENSIONS);
        // Ids beyond a byte are dropped.
        let h = ExtHandshake::decode(b"d1:md1:ai300e1:bi5eee").unwrap();
        assert_eq!(h.extensions.len(), 1);
    }

    #[test]
    fn refuses_what_is_not_a_dictionary() {
        assert!(matches!(
            ExtHandshake::decode(b"li1ee"),
            Err(ExtError::NotADict)
        ));
        assert!(matches!(
            ExtHandshake::decode(b"d1:m"),
            Err(ExtError::Bencode(_))
        ));
        assert!(matches!(
            ExtHandshake::decode(b"d1:mi1ee"),
            Err(ExtError::BadM)
        ));
        assert!(ExtHandshake::decode(b"").is_err());
    }
}
