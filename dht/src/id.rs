//! Node ids and the XOR metric (BEP 5), and BEP 42's tie of a node id to
//! its IP address.

use std::fmt;
use std::net::IpAddr;

/// A 160-bit node id, or an info hash used as a lookup target: both live
/// in the same key space.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeId(pub [u8; 20]);

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("…")
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl NodeId {
    pub fn random() -> NodeId {
        NodeId(rand::random())
    }

    /// The id as a slice of 20 bytes, or `None` for any other length.
    pub fn from_slice(b: &[u8]) -> Option<NodeId> {
        Some(NodeId(b.try_into().ok()?))
    }

    /// The XOR distance to `other`, as a big-endian number.
    pub fn distance(&self, other: &NodeId) -> Distance {
        let mut d = [0u8; 20];
        for (i, x) in d.iter_mut().enumerate() {
            *x = self.0[i] ^ other.0[i];
        }
        Distance(d)
    }

    /// How many leading bits this id shares with `other` (160 if equal).
    pub fn common_prefix(&self, other: &NodeId) -> usize {
        self.distance(other).leading_zeros()
    }

    /// This id with bit `bit` (0 = most significant) flipped and every
    /// later bit random: an id in the bucket `bit` away from `self`.
    pub fn random_in_bucket(&self, bit: usize) -> NodeId {
        let mut out = NodeId::random().0;
        let bit = bit.min(159);
        let (byte, shift) = (bit / 8, 7 - bit % 8);
        out[..byte].copy_from_slice(&self.0[..byte]);
        // The bits before `bit` in its byte (none when it is the first).
        let keep = ((0xffu16 << (shift + 1)) & 0xff) as u8;
        let flip = 1u8 << shift;
        out[byte] =
            (self.0[byte] & keep) | ((self.0[byte] ^ flip) & flip) | (out[byte] & !(keep | flip));
        NodeId(out)
    }
}

/// An XOR distance; compares as a 160-bit unsigned number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Distance(pub [u8; 20]);

impl Distance {
    pub fn leading_zeros(&self) -> usize {
        let mut n = 0;
        for b in &self.0 {
            if *b == 0 {
                n += 8;
            } else {
                return n + b.leading_zeros() as usize;
            }
        }
        n
    }
}

/// CRC-32C (Castagnoli), bit by bit: BEP 42 hashes four or eight bytes.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    !crc
}

/// Addresses BEP 42 exempts: loopback, private and link-local networks,
/// where ids cannot be tied to a public address.
pub fn is_local(ip: IpAddr) -> bool {
    // (A v4-mapped address is the IPv4 one.)
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (v4.octets()[0] == 100 && v4.octets()[1] & 0xc0 == 64)
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// BEP 42's prefix for `ip` with random byte `r`: the id's first 21 bits
/// must equal this crc's.
fn bep42_crc(ip: IpAddr, r: u8) -> u32 {
    match ip {
        IpAddr::V4(v4) => {
            let mut b = u32::from(v4) & 0x030f_3fff;
            b |= u32::from(r & 7) << 29;
            crc32c(&b.to_be_bytes())
        }
        IpAddr::V6(v6) => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&v6.octets()[..8]);
            let mask = [0x01u8, 0x03, 0x07, 0x0f, 0x1f, 0x3f, 0x7f, 0xff];
            for (x, m) in b.iter_mut().zip(mask) {
                *x &= m;
            }
            b[0] |= (r & 7) << 5;
            crc32c(&b)
        }
    }
}

/// A node id BEP 42 accepts for `ip`.
pub fn id_for_ip(ip: IpAddr) -> NodeId {
    let mut id = NodeId::random().0;
    let r = id[19];
    let crc = bep42_crc(ip, r);
    id[0] = (crc >> 24) as u8;
    id[1] = (crc >> 16) as u8;
    id[2] = ((crc >> 8) as u8 & 0xf8) | (id[2] & 7);
    NodeId(id)
}

/// Whether `id` is one BEP 42 allows at `ip` (always, for a local address).
pub fn id_matches_ip(id: &NodeId, ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    if is_local(ip) {
        return true;
    }
    let crc = bep42_crc(ip, id.0[19]);
    id.0[0] == (crc >> 24) as u8
        && id.0[1] == (crc >> 16) as u8
        && (id.0[2] & 0xf8) == ((crc >> 8) as u8 & 0xf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> NodeId {
        let mut id = [0u8; 20];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        NodeId(id)
    }

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn bep42_test_vectors() {
        // The table in BEP 42: IP, rand, and the id's first three bytes.
        let cases = [
            ("124.31.75.21", 1u8, [0x5f, 0xbf, 0xbf]),
            ("21.75.31.124", 86, [0x5a, 0x3c, 0xe9]),
            ("65.23.51.170", 22, [0xa5, 0xd4, 0x32]),
            ("84.124.73.14", 65, [0x1b, 0x03, 0x21]),
            ("43.213.53.83", 90, [0xe5, 0x6f, 0x6c]),
        ];
        for (ip, r, prefix) in cases {
            let ip: IpAddr = ip.parse().unwrap();
            let crc = bep42_crc(ip, r);
            assert_eq!((crc >> 24) as u8, prefix[0], "{ip}");
            assert_eq!((crc >> 16) as u8, prefix[1], "{ip}");
            assert_eq!((crc >> 8) as u8 & 0xf8, prefix[2] & 0xf8, "{ip}");
            let mut id = id_for_ip(ip);
            id.0[19] = r;
            let again = {
                let c = bep42_crc(ip, r);
                let mut x = id.0;
                x[0] = (c >> 24) as u8;
                x[1] = (c >> 16) as u8;
                x[2] = ((c >> 8) as u8 & 0xf8) | (x[2] & 7);
                NodeId(x)
            };
            assert!(id_matches_ip(&again, ip));
        }
        // The BEP's own full example id for 124.31.75.21.
        let id = hex("5fbfbff10c5d6a4ec8a88e4c6ab4c28b95eee401");
        assert!(id_matches_ip(&id, "124.31.75.21".parse().unwrap()));
        assert!(!id_matches_ip(&id, "124.31.75.22".parse().unwrap()));
    }

    #[test]
    fn generated_ids_match_and_local_addresses_are_exempt() {
        for ip in ["8.8.8.8", "203.0.113.9", "2001:db8::1"] {
            let ip: IpAddr = ip.parse().unwrap();
            for _ in 0..50 {
                assert!(id_matches_ip(&id_for_ip(ip), ip), "{ip}");
            }
            let mut wrong = id_for_ip(ip);
            wrong.0[0] ^= 0x80;
            assert!(!id_matches_ip(&wrong, ip), "{ip}");
        }
        assert!(id_matches_ip(
            &NodeId([0; 20]),
            "127.0.0.1".parse().unwrap()
        ));
        assert!(id_matches_ip(
            &NodeId([0; 20]),
            "192.168.1.2".parse().unwrap()
        ));
    }

    #[test]
    fn distance_and_buckets() {
        let a = NodeId([0; 20]);
        let mut b = [0u8; 20];
        b[0] = 0x10;
        let b = NodeId(b);
        assert_eq!(a.common_prefix(&b), 3);
        assert_eq!(a.common_prefix(&a), 160);
        for bit in 0..160 {
            for _ in 0..20 {
                let own = NodeId::random();
                let x = own.random_in_bucket(bit);
                assert_eq!(own.common_prefix(&x), bit, "bit {bit}");
            }
        }
        assert!(a.distance(&b) > a.distance(&a));
    }
}
