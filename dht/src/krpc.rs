//! KRPC, the DHT's message format (BEP 5): bencoded dictionaries in UDP
//! datagrams, a query (`y` = `q`), its response (`r`) or an error (`e`),
//! tied together by a transaction id (`t`).
//!
//! Decoding is strict about what matters and bounded everywhere: a
//! datagram over [`MAX_PACKET`] is refused before parsing, ids must be 20
//! bytes, transaction ids and tokens have length caps, `nodes` must be whole
//! 26-byte entries, and at most [`MAX_VALUES`] peers are taken from one
//! response. Unknown keys are ignored, as BEP 5 asks.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use torrent_format::bencode::{self, Value};

use crate::id::NodeId;

/// Largest datagram read. Real KRPC messages stay well under 1500 bytes.
pub const MAX_PACKET: usize = 2048;
/// Longest transaction id accepted (libtorrent sends 2 bytes, others 4).
pub const MAX_TID: usize = 16;
/// Longest token accepted from a peer (libtorrent's are 4 bytes).
pub const MAX_TOKEN: usize = 64;
/// Most peers taken from one `get_peers` response.
pub const MAX_VALUES: usize = 200;
/// Longest client version string (`v`) kept.
pub const MAX_VERSION: usize = 16;

/// Generic error (BEP 5 code 201).
pub const ERR_GENERIC: i64 = 201;
/// Server error (202).
pub const ERR_SERVER: i64 = 202;
/// Protocol error: malformed packet, invalid arguments, bad token (203).
pub const ERR_PROTOCOL: i64 = 203;
/// Method unknown (204).
pub const ERR_METHOD: i64 = 204;

/// One KRPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// Transaction id, echoed in the answer.
    pub t: Vec<u8>,
    pub body: Body,
    /// The sender's client and version (`v`), if short enough to keep.
    pub v: Option<Vec<u8>>,
    /// In a response: the address the responder saw us at (BEP 42 `ip`).
    pub ip: Option<SocketAddr>,
    /// A read-only node (BEP 43): do not put it in the routing table.
    pub read_only: bool,
    /// In a `find_node` or `get_peers` query: the address families of
    /// nodes asked for (BEP 32 `want`).
    pub want: Want,
}

/// BEP 32's `want`: which families of nodes a querier asks for. Neither
/// (the key absent) means nodes of the querier's own family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Want {
    pub n4: bool,
    pub n6: bool,
}

impl Want {
    pub fn is_empty(&self) -> bool {
        !self.n4 && !self.n6
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Query(Query),
    Response(Response),
    Error { code: i64, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    Ping {
        id: NodeId,
    },
    FindNode {
        id: NodeId,
        target: NodeId,
    },
    GetPeers {
        id: NodeId,
        info_hash: NodeId,
    },
    AnnouncePeer {
        id: NodeId,
        info_hash: NodeId,
        port: u16,
        /// Use the port the datagram came from instead of `port`.
        implied_port: bool,
        token: Vec<u8>,
    },
    /// A method this node does not know; answered with error 204, or like
    /// `find_node` when it names a `target` (as libtorrent does).
    Unknown {
        id: NodeId,
        method: Vec<u8>,
        target: Option<NodeId>,
    },
}

impl Query {
    /// The querying node's id.
    pub fn id(&self) -> NodeId {
        match self {
            Query::Ping { id }
            | Query::FindNode { id, .. }
            | Query::GetPeers { id, .. }
            | Query::AnnouncePeer { id, .. }
            | Query::Unknown { id, .. } => *id,
        }
    }

    pub fn method(&self) -> &[u8] {
        match self {
            Query::Ping { .. } => b"ping",
            Query::FindNode { .. } => b"find_node",
            Query::GetPeers { .. } => b"get_peers",
            Query::AnnouncePeer { .. } => b"announce_peer",
            Query::Unknown { method, .. } => method,
        }
    }
}

/// The union of every response's fields; which are set depends on the
/// query answered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Response {
    pub id: NodeId,
    pub nodes: Vec<(NodeId, SocketAddrV4)>,
    pub nodes6: Vec<(NodeId, SocketAddrV6)>,
    pub values: Vec<SocketAddr>,
    pub token: Option<Vec<u8>>,
}

/// Why a datagram is not a KRPC message we can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KrpcError {
    #[error("datagram of {0} bytes, more than {MAX_PACKET}")]
    TooLarge(usize),
    #[error("not bencode: {0}")]
    Bencode(#[from] bencode::DecodeError),
    #[error("not a dictionary")]
    NotADict,
    #[error("no transaction id, or one over {MAX_TID} bytes")]
    BadTid,
    /// The message has a usable transaction id: a query can be answered
    /// with a protocol error.
    #[error("{why}")]
    Invalid { t: Vec<u8>, why: &'static str },
}

fn bytes<'a>(d: &'a BTreeMap<Vec<u8>, Value>, key: &str) -> Option<&'a [u8]> {
    match d.get(key.as_bytes()) {
        Some(Value::Bytes(b)) => Some(b),
        _ => None,
    }
}

fn int(d: &BTreeMap<Vec<u8>, Value>, key: &str) -> Option<i64> {
    match d.get(key.as_bytes()) {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    }
}

fn dict<'a>(d: &'a BTreeMap<Vec<u8>, Value>, key: &str) -> Option<&'a BTreeMap<Vec<u8>, Value>> {
    match d.get(key.as_bytes()) {
        Some(Value::Dict(x)) => Some(x),
        _ => None,
    }
}

/// A compact IPv4 (6 bytes) or IPv6 (18 bytes) address.
pub fn decode_compact(b: &[u8]) -> Option<SocketAddr> {
    match b.len() {
        6 => Some(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::new(b[0], b[1], b[2], b[3]),
            u16::from_be_bytes([b[4], b[5]]),
        ))),
        18 => {
            let ip: [u8; 16] = b[..16].try_into().ok()?;
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                u16::from_be_bytes([b[16], b[17]]),
                0,
                0,
            )))
        }
        _ => None,
    }
}

pub fn encode_compact(addr: SocketAddr, out: &mut Vec<u8>) {
    match addr {
        SocketAddr::V4(a) => out.extend_from_slice(&a.ip().octets()),
        SocketAddr::V6(a) => out.extend_from_slice(&a.ip().octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

fn decode_nodes4(b: &[u8]) -> Option<Vec<(NodeId, SocketAddrV4)>> {
    if b.len() % 26 != 0 {
        return None;
    }
    Some(
        b.chunks_exact(26)
            .map(|c| {
                let id = NodeId::from_slice(&c[..20]).expect("20 bytes");
                let addr = SocketAddrV4::new(
                    Ipv4Addr::new(c[20], c[21], c[22], c[23]),
                    u16::from_be_bytes([c[24], c[25]]),
                );
                (id, addr)
            })
            .collect(),
    )
}

fn decode_nodes6(b: &[u8]) -> Option<Vec<(NodeId, SocketAddrV6)>> {
    if b.len() % 38 != 0 {
        return None;
    }
    Some(
        b.chunks_exact(38)
            .map(|c| {
                let id = NodeId::from_slice(&c[..20]).expect("20 bytes");
                let ip: [u8; 16] = c[20..36].try_into().expect("16 bytes");
                let addr =
                    SocketAddrV6::new(Ipv6Addr::from(ip), u16::from_be_bytes([c[36], c[37]]), 0, 0);
                (id, addr)
            })
            .collect(),
    )
}

impl Msg {
    pub fn decode(datagram: &[u8]) -> Result<Msg, KrpcError> {
        if datagram.len() > MAX_PACKET {
            return Err(KrpcError::TooLarge(datagram.len()));
        }
        let Value::Dict(d) = bencode::decode(datagram)? else {
            return Err(KrpcError::NotADict);
        };
        let t = match bytes(&d, "t") {
            Some(t) if t.len() <= MAX_TID => t.to_vec(),
            _ => return Err(KrpcError::BadTid),
        };
        let invalid = |why| KrpcError::Invalid { t: t.clone(), why };
        let v = bytes(&d, "v")
            .filter(|v| v.len() <= MAX_VERSION)
            .map(<[u8]>::to_vec);
        let ip = bytes(&d, "ip").and_then(decode_compact);
        let read_only = int(&d, "ro") == Some(1);
        let mut want = Want::default();
        let body = match bytes(&d, "y") {
            Some(b"q") => {
                let method = bytes(&d, "q").ok_or_else(|| invalid("query without a method"))?;
                let a = dict(&d, "a").ok_or_else(|| invalid("query without arguments"))?;
                if let Some(Value::List(l)) = a.get(&b"want"[..]) {
                    // A handful of short strings; more is not a real query.
                    for w in l.iter().take(8) {
                        match w {
                            Value::Bytes(b) if b == b"n4" => want.n4 = true,
                            Value::Bytes(b) if b == b"n6" => want.n6 = true,
                            _ => {}
                        }
                    }
                }
                Body::Query(decode_query(method, a).map_err(invalid)?)
            }
            Some(b"r") => {
                let r = dict(&d, "r").ok_or_else(|| invalid("response without a body"))?;
                Body::Response(decode_response(r).map_err(invalid)?)
            }
            Some(b"e") => {
                let (code, message) = match d.get(&b"e"[..]) {
                    Some(Value::List(l)) => {
                        let code = match l.first() {
                            Some(Value::Int(c)) => *c,
                            _ => ERR_GENERIC,
                        };
                        let message = match l.get(1) {
                            Some(Value::Bytes(m)) => {
                                String::from_utf8_lossy(&m[..m.len().min(200)]).into_owned()
                            }
                            _ => String::new(),
                        };
                        (code, message)
                    }
                    _ => (ERR_GENERIC, String::new()),
                };
                Body::Error { code, message }
            }
            _ => return Err(invalid("no message type (y)")),
        };
        Ok(Msg {
            t,
            body,
            v,
            ip,
            read_only,
            want,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut d = BTreeMap::new();
        d.insert(b"t".to_vec(), Value::Bytes(self.t.clone()));
        if let Some(v) = &self.v {
            d.insert(b"v".to_vec(), Value::Bytes(v.clone()));
        }
        if let Some(ip) = self.ip {
            let mut b = Vec::with_capacity(18);
            encode_compact(ip, &mut b);
            d.insert(b"ip".to_vec(), Value::Bytes(b));
        }
        if self.read_only {
            d.insert(b"ro".to_vec(), Value::Int(1));
        }
        match &self.body {
            Body::Query(q) => {
                d.insert(b"y".to_vec(), Value::Bytes(b"q".to_vec()));
                d.insert(b"q".to_vec(), Value::Bytes(q.method().to_vec()));
                let mut a = encode_query(q);
                if !self.want.is_empty() {
                    let mut l = Vec::new();
                    if self.want.n4 {
                        l.push(Value::Bytes(b"n4".to_vec()));
                    }
                    if self.want.n6 {
                        l.push(Value::Bytes(b"n6".to_vec()));
                    }
                    a.insert(b"want".to_vec(), Value::List(l));
                }
                d.insert(b"a".to_vec(), Value::Dict(a));
            }
            Body::Response(r) => {
                d.insert(b"y".to_vec(), Value::Bytes(b"r".to_vec()));
                d.insert(b"r".to_vec(), Value::Dict(encode_response(r)));
            }
            Body::Error { code, message } => {
                d.insert(b"y".to_vec(), Value::Bytes(b"e".to_vec()));
                d.insert(
                    b"e".to_vec(),
                    Value::List(vec![
                        Value::Int(*code),
                        Value::Bytes(message.as_bytes().to_vec()),
                    ]),
                );
            }
        }
        Value::Dict(d).encode()
    }
}

fn id_arg(a: &BTreeMap<Vec<u8>, Value>, key: &str) -> Result<NodeId, &'static str> {
    bytes(a, key).and_then(NodeId::from_slice).ok_or(match key {
        "id" => "no 20-byte id",
        "target" => "no 20-byte target",
        _ => "no 20-byte info_hash",
    })
}

fn decode_query(method: &[u8], a: &BTreeMap<Vec<u8>, Value>) -> Result<Query, &'static str> {
    let id = id_arg(a, "id")?;
    Ok(match method {
        b"ping" => Query::Ping { id },
        b"find_node" => Query::FindNode {
            id,
            target: id_arg(a, "target")?,
        },
        b"get_peers" => Query::GetPeers {
            id,
            info_hash: id_arg(a, "info_hash")?,
        },
        b"announce_peer" => {
            let info_hash = id_arg(a, "info_hash")?;
            let implied_port = int(a, "implied_port").is_some_and(|i| i != 0);
            let port = match int(a, "port") {
                Some(p) if (1..=65535).contains(&p) => p as u16,
                // With implied_port the port argument is ignored.
                _ if implied_port => 0,
                _ => return Err("announce_peer without a valid port"),
            };
            let token = match bytes(a, "token") {
                Some(t) if t.len() <= MAX_TOKEN => t.to_vec(),
                _ => return Err("announce_peer without a valid token"),
            };
            Query::AnnouncePeer {
                id,
                info_hash,
                port,
                implied_port,
                token,
            }
        }
        other => Query::Unknown {
            id,
            method: other[..other.len().min(32)].to_vec(),
            target: bytes(a, "target").and_then(NodeId::from_slice),
        },
    })
}

fn decode_response(r: &BTreeMap<Vec<u8>, Value>) -> Result<Response, &'static str> {
    let id = id_arg(r, "id")?;
    let nodes = match bytes(r, "nodes") {
        Some(b) => decode_nodes4(b).ok_or("nodes not a multiple of 26 bytes")?,
        None => Vec::new(),
    };
    let nodes6 = match bytes(r, "nodes6") {
        Some(b) => decode_nodes6(b).ok_or("nodes6 not a multiple of 38 bytes")?,
        None => Vec::new(),
    };
    let values = match r.get(&b"values"[..]) {
        Some(Value::List(l)) => l
            .iter()
            .filter_map(|v| match v {
                Value::Bytes(b) => decode_compact(b),
                _ => None,
            })
            .take(MAX_VALUES)
            .collect(),
        _ => Vec::new(),
    };
    let token = bytes(r, "token")
        .filter(|t| t.len() <= MAX_TOKEN)
        .map(<[u8]>::to_vec);
    Ok(Response {
        id,
        nodes,
        nodes6,
        values,
        token,
    })
}

fn encode_query(q: &Query) -> BTreeMap<Vec<u8>, Value> {
    let mut a = BTreeMap::new();
    a.insert(b"id".to_vec(), Value::Bytes(q.id().0.to_vec()));
    match q {
        Query::Ping { .. } => {}
        Query::FindNode { target, .. } => {
            a.insert(b"target".to_vec(), Value::Bytes(target.0.to_vec()));
        }
        Query::GetPeers { info_hash, .. } => {
            a.insert(b"info_hash".to_vec(), Value::Bytes(info_hash.0.to_vec()));
        }
        Query::AnnouncePeer {
            info_hash,
            port,
            implied_port,
            token,
            ..
        } => {
            a.insert(b"info_hash".to_vec(), Value::Bytes(info_hash.0.to_vec()));
            a.insert(b"port".to_vec(), Value::Int(i64::from(*port)));
            a.insert(
                b"implied_port".to_vec(),
                Value::Int(i64::from(*implied_port)),
            );
            a.insert(b"token".to_vec(), Value::Bytes(token.clone()));
        }
        Query::Unknown { target, .. } => {
            if let Some(t) = target {
                a.insert(b"target".to_vec(), Value::Bytes(t.0.to_vec()));
            }
        }
    }
    a
}

fn encode_response(r: &Response) -> BTreeMap<Vec<u8>, Value> {
    let mut d = BTreeMap::new();
    d.insert(b"id".to_vec(), Value::Bytes(r.id.0.to_vec()));
    if !r.nodes.is_empty() {
        let mut b = Vec::with_capacity(26 * r.nodes.len());
        for (id, addr) in &r.nodes {
            b.extend_from_slice(&id.0);
            encode_compact(SocketAddr::V4(*addr), &mut b);
        }
        d.insert(b"nodes".to_vec(), Value::Bytes(b));
    }
    if !r.nodes6.is_empty() {
        let mut b = Vec::with_capacity(38 * r.nodes6.len());
        for (id, addr) in &r.nodes6 {
            b.extend_from_slice(&id.0);
            encode_compact(SocketAddr::V6(*addr), &mut b);
        }
        d.insert(b"nodes6".to_vec(), Value::Bytes(b));
    }
    if !r.values.is_empty() {
        let values = r
            .values
            .iter()
            .map(|&a| {
                let mut b = Vec::with_capacity(18);
                encode_compact(a, &mut b);
                Value::Bytes(b)
            })
            .collect();
        d.insert(b"values".to_vec(), Value::List(values));
    }
    if let Some(t) = &r.token {
        d.insert(b"token".to_vec(), Value::Bytes(t.clone()));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> NodeId {
        NodeId([b; 20])
    }

    #[test]
    fn bep5_examples_decode() {
        // The ping query of BEP 5, byte for byte.
        let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        let m = Msg::decode(ping).unwrap();
        assert_eq!(m.t, b"aa");
        assert_eq!(
            m.body,
            Body::Query(Query::Ping {
                id: NodeId(*b"abcdefghij0123456789")
            })
        );
        assert_eq!(m.encode(), ping);
        // announce_peer with implied_port.
        let ann = b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe";
        let m = Msg::decode(ann).unwrap();
        assert_eq!(
            m.body,
            Body::Query(Query::AnnouncePeer {
                id: NodeId(*b"abcdefghij0123456789"),
                info_hash: NodeId(*b"mnopqrstuvwxyz123456"),
                port: 6881,
                implied_port: true,
                token: b"aoeusnth".to_vec(),
            })
        );
        assert_eq!(m.encode(), ann);
        // An error.
        let e = b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee";
        let m = Msg::decode(e).unwrap();
        assert_eq!(
            m.body,
            Body::Error {
                code: 201,
                message: "A Generic Error Ocurred".into()
            }
        );
        assert_eq!(m.encode(), e);
    }

    #[test]
    fn bep32_want_round_trips() {
        // BEP 32's find_node asking for both families.
        let q = b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz1234564:wantl2:n42:n6ee1:q9:find_node1:t2:aa1:y1:qe";
        let m = Msg::decode(q).unwrap();
        assert_eq!(m.want, Want { n4: true, n6: true });
        assert_eq!(m.encode(), q);
        // Unknown entries are ignored; absent means neither.
        let q = b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz1234564:wantl2:n92:n6i3eee1:q9:find_node1:t2:aa1:y1:qe";
        assert_eq!(
            Msg::decode(q).unwrap().want,
            Want {
                n4: false,
                n6: true
            }
        );
        let ping = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe";
        assert!(Msg::decode(ping).unwrap().want.is_empty());
    }

    #[test]
    fn responses_round_trip() {
        let m = Msg {
            t: vec![1, 2],
            body: Body::Response(Response {
                id: id(7),
                nodes: vec![(id(1), "1.2.3.4:5".parse().unwrap())],
                nodes6: vec![(id(2), "[2001:db8::1]:6881".parse().unwrap())],
                values: vec!["5.6.7.8:9".parse().unwrap(), "[::1]:10".parse().unwrap()],
                token: Some(b"tok".to_vec()),
            }),
            v: Some(b"SH01".to_vec()),
            ip: Some("9.9.9.9:99".parse().unwrap()),
            read_only: false,
            want: Want::default(),
        };
        assert_eq!(Msg::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn hostile_datagrams_are_refused_or_bounded() {
        assert!(matches!(
            Msg::decode(&vec![b'x'; MAX_PACKET + 1]),
            Err(KrpcError::TooLarge(_))
        ));
        assert!(matches!(Msg::decode(b"i5e"), Err(KrpcError::NotADict)));
        assert!(matches!(Msg::decode(b"d1:y1:qe"), Err(KrpcError::BadTid)));
        let long_t = format!("d1:t17:{}1:y1:qe", "x".repeat(17));
        assert!(matches!(
            Msg::decode(long_t.as_bytes()),
            Err(KrpcError::BadTid)
        ));
        // Short ids, missing targets, ragged node lists: invalid, with the
        // transaction id kept for an error reply.
        for bad in [
            &b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe"[..],
            b"d1:ad2:id20:abcdefghij0123456789e1:q9:find_node1:t2:aa1:y1:qe",
            b"d1:rd2:id20:abcdefghij01234567895:nodes5:abcdee1:t2:aa1:y1:re",
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti0e5:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe",
            b"d1:t2:aa1:y1:ze",
        ] {
            match Msg::decode(bad) {
                Err(KrpcError::Invalid { t, .. }) => assert_eq!(t, b"aa"),
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bad)),
            }
        }
        // Too many values: the first MAX_VALUES are kept.
        let r = Response {
            id: id(1),
            values: (0..210u16)
                .map(|p| SocketAddr::from(([1, 2, 3, 4], p + 1)))
                .collect(),
            ..Response::default()
        };
        let wire = Msg {
            t: b"aa".to_vec(),
            body: Body::Response(r),
            v: None,
            ip: None,
            read_only: false,
            want: Want::default(),
        }
        .encode();
        assert!(wire.len() <= MAX_PACKET);
        let Body::Response(got) = Msg::decode(&wire).unwrap().body else {
            panic!("not a response")
        };
        assert_eq!(got.values.len(), MAX_VALUES);
    }
}
