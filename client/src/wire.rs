//! The peer wire protocol (BEP 3), sans-IO: bytes in, messages out (or
//! "need more bytes"), and messages into bytes. No sockets, no async, so
//! it is tested exhaustively without a network.
//!
//! Every length prefix is checked against a bound before anything is
//! allocated ([`MAX_MESSAGE`], or [`max_message`] of the torrent: a
//! bitfield of a torrent with many pieces is longer); a peer that sends a bigger one, a message of the wrong
//! size for its id, or a bad handshake gets a [`WireError`] naming the
//! problem, and the connection layer drops it.
//!
//! Ids the BEPs to come will need are parsed already: the fast extension
//! (BEP 6), the extension protocol (BEP 10) and the DHT port (BEP 5).
//! Unknown ids are skipped by length ([`Message::Unknown`]).

use torrent_format::InfoHash;

/// The protocol string after its length byte.
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";
/// A handshake is 1 + 19 + 8 + 20 + 20 bytes.
pub const HANDSHAKE_LEN: usize = 68;
/// Largest message accepted whatever the torrent: a 16 KiB block plus its
/// header, with room for peers that send 32 KiB blocks, for extension
/// messages, and for bitfields of torrents with up to a million pieces
/// (128 KiB). [`max_message`] raises it for torrents with more pieces.
pub const MAX_MESSAGE: usize = 1 << 17 | 64;

/// Largest message a peer of a torrent of `pieces` pieces may send: its
/// bitfield (one bit a piece, plus the id byte) may be longer than
/// [`MAX_MESSAGE`]. A torrent's piece count is bounded by its own size,
/// so this is too.
pub fn max_message(pieces: usize) -> usize {
    MAX_MESSAGE.max(pieces.div_ceil(8) + 1)
}
/// The block size requested and the largest request we serve.
pub const BLOCK: u32 = 16 * 1024;
/// Largest block we accept in a `piece` message.
pub const MAX_BLOCK: u32 = 32 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("handshake does not start with the BitTorrent protocol string")]
    NotBitTorrent,
    #[error("message length {len} is over the {max}-byte limit")]
    TooLong { len: usize, max: usize },
    #[error("message id {id} must be {expected} bytes long, not {got}")]
    BadLength { id: u8, expected: usize, got: usize },
    #[error("'piece' carries {0} bytes, over the {MAX_BLOCK}-byte block limit")]
    BlockTooLong(usize),
    #[error("'request' asks for {0} bytes; at most {MAX_BLOCK} are served")]
    RequestTooLong(u32),
}

/// Reserved-bit features (BEP 4 assignments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// BEP 5: the peer runs a DHT node.
    pub dht: bool,
    /// BEP 6: fast extension.
    pub fast: bool,
    /// BEP 10: extension protocol.
    pub extended: bool,
}

impl Features {
    fn to_reserved(self) -> [u8; 8] {
        let mut r = [0u8; 8];
        if self.extended {
            r[5] |= 0x10;
        }
        if self.fast {
            r[7] |= 0x04;
        }
        if self.dht {
            r[7] |= 0x01;
        }
        r
    }

    fn from_reserved(r: &[u8; 8]) -> Features {
        Features {
            extended: r[5] & 0x10 != 0,
            fast: r[7] & 0x04 != 0,
            dht: r[7] & 0x01 != 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    pub features: Features,
    pub info_hash: InfoHash,
    pub peer_id: [u8; 20],
}

impl Handshake {
    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        out[0] = 19;
        out[1..20].copy_from_slice(PROTOCOL);
        out[20..28].copy_from_slice(&self.features.to_reserved());
        out[28..48].copy_from_slice(&self.info_hash.0);
        out[48..68].copy_from_slice(&self.peer_id);
        out
    }

    /// `Ok(None)` until 68 bytes are there.
    pub fn decode(buf: &[u8]) -> Result<Option<Handshake>, WireError> {
        // Refuse early: a peer that does not speak BitTorrent is found out
        // from its first bytes.
        let n = buf.len().min(20);
        if buf.first().is_some_and(|&b| b != 19)
            || buf[1.min(n)..n] != PROTOCOL[..n.saturating_sub(1)]
        {
            return Err(WireError::NotBitTorrent);
        }
        let Some(b) = buf.get(..HANDSHAKE_LEN) else {
            return Ok(None);
        };
        let mut reserved = [0u8; 8];
        reserved.copy_from_slice(&b[20..28]);
        let mut info_hash = [0u8; 20];
        info_hash.copy_from_slice(&b[28..48]);
        let mut peer_id = [0u8; 20];
        peer_id.copy_from_slice(&b[48..68]);
        Ok(Some(Handshake {
            features: Features::from_reserved(&reserved),
            info_hash: InfoHash(info_hash),
            peer_id,
        }))
    }
}

/// A block: `length` bytes at `offset` of piece `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockRef {
    pub index: u32,
    pub offset: u32,
    pub length: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    /// Raw bitfield bytes; checked against the piece count by the caller
    /// (see [`Bitfield::from_bytes`]).
    Bitfield(Vec<u8>),
    Request(BlockRef),
    Piece {
        index: u32,
        offset: u32,
        data: Vec<u8>,
    },
    Cancel(BlockRef),
    /// BEP 5.
    Port(u16),
    /// BEP 6.
    SuggestPiece(u32),
    HaveAll,
    HaveNone,
    RejectRequest(BlockRef),
    AllowedFast(u32),
    /// BEP 10: extended message id and payload.
    Extended(u8, Vec<u8>),
    /// Any other id, skipped by length.
    Unknown(u8),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Message {
    /// Decodes one message from the front of `buf`: `Ok(None)` when more
    /// bytes are needed, otherwise the message and how many bytes it used.
    /// Messages over [`MAX_MESSAGE`] are refused.
    pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, WireError> {
        Message::decode_max(buf, MAX_MESSAGE)
    }

    /// [`Message::decode`] with messages of up to `max` bytes (see
    /// [`max_message`]).
    pub fn decode_max(buf: &[u8], max: usize) -> Result<Option<(Message, usize)>, WireError> {
        let Some(prefix) = buf.get(..4) else {
            return Ok(None);
        };
        let len = u32_at(prefix, 0) as usize;
        if len > max {
            return Err(WireError::TooLong { len, max });
        }
        let Some(body) = buf.get(4..4 + len) else {
            return Ok(None);
        };
        let used = 4 + len;
        let Some((&id, payload)) = body.split_first() else {
            return Ok(Some((Message::KeepAlive, used)));
        };
        let exact = |expected: usize| {
            if payload.len() == expected {
                Ok(())
            } else {
                Err(WireError::BadLength {
                    id,
                    expected: expected + 1,
                    got: len,
                })
            }
        };
        let block = |p: &[u8]| BlockRef {
            index: u32_at(p, 0),
            offset: u32_at(p, 4),
            length: u32_at(p, 8),
        };
        let msg = match id {
            0 => exact(0).map(|_| Message::Choke)?,
            1 => exact(0).map(|_| Message::Unchoke)?,
            2 => exact(0).map(|_| Message::Interested)?,
            3 => exact(0).map(|_| Message::NotInterested)?,
            4 => exact(4).map(|_| Message::Have(u32_at(payload, 0)))?,
            5 => Message::Bitfield(payload.to_vec()),
            6 | 8 | 16 => {
                exact(12)?;
                let b = block(payload);
                if b.length > MAX_BLOCK {
                    return Err(WireError::RequestTooLong(b.length));
                }
                match id {
                    6 => Message::Request(b),
                    8 => Message::Cancel(b),
                    _ => Message::RejectRequest(b),
                }
            }
            7 => {
                if payload.len() < 8 {
                    return Err(WireError::BadLength {
                        id,
                        expected: 9,
                        got: len,
                    });
                }
                let data = &payload[8..];
                if data.len() > MAX_BLOCK as usize {
                    return Err(WireError::BlockTooLong(data.len()));
                }
                Message::Piece {
                    index: u32_at(payload, 0),
                    offset: u32_at(payload, 4),
                    data: data.to_vec(),
                }
            }
            9 => {
                exact(2)?;
                Message::Port(u16::from_be_bytes([payload[0], payload[1]]))
            }
            0x0D => exact(4).map(|_| Message::SuggestPiece(u32_at(payload, 0)))?,
            0x0E => exact(0).map(|_| Message::HaveAll)?,
            0x0F => exact(0).map(|_| Message::HaveNone)?,
            0x11 => exact(4).map(|_| Message::AllowedFast(u32_at(payload, 0)))?,
            20 => match payload.split_first() {
                Some((&ext, rest)) => Message::Extended(ext, rest.to_vec()),
                None => {
                    return Err(WireError::BadLength {
                        id,
                        expected: 2,
                        got: len,
                    })
                }
            },
            other => Message::Unknown(other),
        };
        Ok(Some((msg, used)))
    }

    /// Appends the encoded message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut put = |id: u8, parts: &[&[u8]]| {
            let len = 1 + parts.iter().map(|p| p.len()).sum::<usize>();
            out.extend_from_slice(&(len as u32).to_be_bytes());
            out.push(id);
            for p in parts {
                out.extend_from_slice(p);
            }
        };
        let be = u32::to_be_bytes;
        let blk = |b: &BlockRef| [be(b.index), be(b.offset), be(b.length)].concat();
        match self {
            Message::KeepAlive => out.extend_from_slice(&[0, 0, 0, 0]),
            Message::Choke => put(0, &[]),
            Message::Unchoke => put(1, &[]),
            Message::Interested => put(2, &[]),
            Message::NotInterested => put(3, &[]),
            Message::Have(i) => put(4, &[&be(*i)]),
            Message::Bitfield(bits) => put(5, &[bits]),
            Message::Request(b) => put(6, &[&blk(b)]),
            Message::Piece {
                index,
                offset,
                data,
            } => put(7, &[&be(*index), &be(*offset), data]),
            Message::Cancel(b) => put(8, &[&blk(b)]),
            Message::Port(p) => put(9, &[&p.to_be_bytes()]),
            Message::SuggestPiece(i) => put(0x0D, &[&be(*i)]),
            Message::HaveAll => put(0x0E, &[]),
            Message::HaveNone => put(0x0F, &[]),
            Message::RejectRequest(b) => put(0x10, &[&blk(b)]),
            Message::AllowedFast(i) => put(0x11, &[&be(*i)]),
            Message::Extended(ext, payload) => put(20, &[&[*ext], payload]),
            Message::Unknown(id) => put(*id, &[]),
        }
    }
}

/// Which pieces a peer has: one bit per piece, high bit first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitfield {
    bits: Vec<u8>,
    len: usize,
    /// Pieces set, kept so `count` is O(1): a peer's 'have's and repeated
    /// bitfields must not cost a scan of every piece each.
    ones: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitfieldError {
    #[error("bitfield is {got} bytes; {pieces} pieces need {expected}")]
    WrongSize {
        got: usize,
        expected: usize,
        pieces: usize,
    },
    #[error("bitfield sets bits past the last piece")]
    SpareBitsSet,
}

impl Bitfield {
    pub fn new(pieces: usize) -> Bitfield {
        Bitfield {
            bits: vec![0; pieces.div_ceil(8)],
            len: pieces,
            ones: 0,
        }
    }

    /// A peer's bitfield message for a torrent of `pieces` pieces: exactly
    /// the right size, no bits set past the end.
    pub fn from_bytes(bytes: &[u8], pieces: usize) -> Result<Bitfield, BitfieldError> {
        let expected = pieces.div_ceil(8);
        if bytes.len() != expected {
            return Err(BitfieldError::WrongSize {
                got: bytes.len(),
                expected,
                pieces,
            });
        }
        let spare = expected * 8 - pieces;
        if spare > 0 && bytes[expected - 1] & ((1u8 << spare) - 1) != 0 {
            return Err(BitfieldError::SpareBitsSet);
        }
        Ok(Bitfield {
            bits: bytes.to_vec(),
            len: pieces,
            ones: bytes.iter().map(|b| b.count_ones() as usize).sum(),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Whether piece `i` is set (`false` out of range).
    pub fn get(&self, i: usize) -> bool {
        i < self.len && self.bits[i / 8] & (0x80 >> (i % 8)) != 0
    }

    /// Sets piece `i`; returns `false` (and does nothing) out of range.
    pub fn set(&mut self, i: usize) -> bool {
        if i >= self.len {
            return false;
        }
        let bit = 0x80 >> (i % 8);
        if self.bits[i / 8] & bit == 0 {
            self.bits[i / 8] |= bit;
            self.ones += 1;
        }
        true
    }

    /// Clears piece `i`; returns whether it was set.
    pub fn unset(&mut self, i: usize) -> bool {
        if !self.get(i) {
            return false;
        }
        self.bits[i / 8] &= !(0x80 >> (i % 8));
        self.ones -= 1;
        true
    }

    pub fn count(&self) -> usize {
        self.ones
    }

    pub fn is_complete(&self) -> bool {
        self.ones == self.len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_messages() -> Vec<Message> {
        let b = BlockRef {
            index: 7,
            offset: 16384,
            length: 16384,
        };
        vec![
            Message::KeepAlive,
            Message::Choke,
            Message::Unchoke,
            Message::Interested,
            Message::NotInterested,
            Message::Have(42),
            Message::Bitfield(vec![0xff, 0x80]),
            Message::Request(b),
            Message::Piece {
                index: 1,
                offset: 0,
                data: vec![9; 100],
            },
            Message::Cancel(b),
            Message::Port(6881),
            Message::SuggestPiece(3),
            Message::HaveAll,
            Message::HaveNone,
            Message::RejectRequest(b),
            Message::AllowedFast(5),
            Message::Extended(0, b"d1:md11:ut_metadatai1eee".to_vec()),
            Message::Unknown(99),
        ]
    }

    #[test]
    fn every_message_round_trips_and_streams() {
        let mut stream = Vec::new();
        for m in all_messages() {
            let mut one = Vec::new();
            m.encode(&mut one);
            assert_eq!(
                Message::decode(&one),
                Ok(Some((m.clone(), one.len()))),
                "{m:?}"
            );
            // Any strict prefix needs more bytes.
            for cut in 0..one.len() {
                assert_eq!(Message::decode(&one[..cut]), Ok(None), "{m:?} cut at {cut}");
            }
            stream.extend_from_slice(&one);
        }
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((m, used)) = Message::decode(&stream[at..]).unwrap() {
            got.push(m);
            at += used;
        }
        assert_eq!(got, all_messages());
        assert_eq!(at, stream.len());
    }

    #[test]
    fn the_bound_follows_the_torrent() {
        // 1 114 112 pieces (17 GiB of 16 KiB pieces): a 139 265-byte
        // bitfield message, over the fixed bound.
        let pieces = 1_114_112;
        let mut all = Bitfield::new(pieces);
        for i in 0..pieces {
            all.set(i);
        }
        let mut out = Vec::new();
        Message::Bitfield(all.as_bytes().to_vec()).encode(&mut out);
        assert!(out.len() - 4 > MAX_MESSAGE);
        assert!(matches!(
            Message::decode(&out),
            Err(WireError::TooLong { .. })
        ));
        let max = max_message(pieces);
        assert_eq!(max, out.len() - 4);
        let (m, used) = Message::decode_max(&out, max).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(m, Message::Bitfield(all.as_bytes().to_vec()));
        // One byte more is refused; small torrents keep the fixed bound.
        out[3] += 1;
        assert!(Message::decode_max(&out, max).is_err());
        assert_eq!(max_message(10), MAX_MESSAGE);
    }

    #[test]
    fn refuses_bad_messages_before_allocating() {
        // A 4 GiB length prefix is refused from the prefix alone.
        assert_eq!(
            Message::decode(&[0xff, 0xff, 0xff, 0xff]),
            Err(WireError::TooLong {
                len: 0xffff_ffff,
                max: MAX_MESSAGE
            })
        );
        assert!(matches!(
            Message::decode(&[0, 0, 0, 2, 0, 0]),
            Err(WireError::BadLength { id: 0, .. })
        ));
        assert!(matches!(
            Message::decode(&[0, 0, 0, 3, 4, 0, 0]),
            Err(WireError::BadLength { id: 4, .. })
        ));
        let mut req = Vec::new();
        Message::Request(BlockRef {
            index: 0,
            offset: 0,
            length: MAX_BLOCK + 1,
        })
        .encode(&mut req);
        assert_eq!(
            Message::decode(&req),
            Err(WireError::RequestTooLong(MAX_BLOCK + 1))
        );
        let mut piece = Vec::new();
        Message::Piece {
            index: 0,
            offset: 0,
            data: vec![0; MAX_BLOCK as usize + 1],
        }
        .encode(&mut piece);
        assert_eq!(
            Message::decode(&piece),
            Err(WireError::BlockTooLong(MAX_BLOCK as usize + 1))
        );
        assert!(matches!(
            Message::decode(&[0, 0, 0, 1, 20]),
            Err(WireError::BadLength { id: 20, .. })
        ));
    }

    #[test]
    fn handshakes() {
        let h = Handshake {
            features: Features {
                dht: false,
                fast: true,
                extended: true,
            },
            info_hash: InfoHash([3; 20]),
            peer_id: *b"-SH0001-abcdefghijkl",
        };
        let bytes = h.encode();
        assert_eq!(Handshake::decode(&bytes), Ok(Some(h)));
        assert_eq!(Handshake::decode(&bytes[..67]), Ok(None));
        assert_eq!(Handshake::decode(&bytes[..1]), Ok(None));
        assert_eq!(
            Handshake::decode(b"GET / HTTP/1.1\r\n"),
            Err(WireError::NotBitTorrent)
        );
        assert_eq!(
            Handshake::decode(b"\x13BitTorrent protocoX"),
            Err(WireError::NotBitTorrent)
        );
        assert_eq!(Handshake::decode(&[]), Ok(None));
    }

    #[test]
    fn bitfields_are_checked() {
        let mut b = Bitfield::new(10);
        assert!(b.set(0) && b.set(9) && !b.set(10));
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert!(b.get(9) && !b.get(8) && !b.get(100));
        assert_eq!(Bitfield::from_bytes(&[0x80, 0x40], 10), Ok(b));
        assert_eq!(
            Bitfield::from_bytes(&[0x80, 0x60], 10),
            Err(BitfieldError::SpareBitsSet)
        );
        assert!(matches!(
            Bitfield::from_bytes(&[0x80], 10),
            Err(BitfieldError::WrongSize { .. })
        ));
        assert!(Bitfield::from_bytes(&[0xff], 8).unwrap().is_complete());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Message::decode(&bytes);
            let _ = Handshake::decode(&bytes);
            let _ = Bitfield::from_bytes(&bytes, bytes.len() * 8 - (bytes.len() * 8).min(3));
        }

        #[test]
        fn decode_never_uses_more_than_it_has(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(Some((_, used))) = Message::decode(&bytes) {
                prop_assert!(used <= bytes.len());
            }
        }
    }
}
