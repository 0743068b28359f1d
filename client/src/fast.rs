//! The fast extension's allowed-fast set (BEP 6): the pieces a peer may
//! download from us while we choke it, derived from its address and the
//! info hash so that a peer gets the same set however often it reconnects
//! (and cannot collect more by reconnecting).

use std::net::IpAddr;

use sha1::{Digest, Sha1};
use torrent_format::InfoHash;

/// Size of the set we grant (libtorrent and BEP 6's example use 10).
pub const ALLOWED_FAST: usize = 10;
/// Most allowed-fast pieces we keep from one peer.
pub const MAX_ALLOWED_FAST_IN: usize = 64;

/// BEP 6's algorithm: `k` distinct piece indices out of `pieces`, from the
/// peer's IPv4 /24 (IPv6: the /48, as libtorrent does) and the info hash.
pub fn allowed_fast_set(ip: IpAddr, info_hash: &InfoHash, pieces: u32, k: usize) -> Vec<u32> {
    let k = k.min(pieces as usize);
    let mut set = Vec::with_capacity(k);
    if k == 0 {
        return set;
    }
    let mut x: Vec<u8> = match ip {
        IpAddr::V4(a) => (u32::from(a) & 0xFFFF_FF00).to_be_bytes().to_vec(),
        IpAddr::V6(a) => {
            let mut o = a.octets();
            o[6..].fill(0);
            o.to_vec()
        }
    };
    x.extend_from_slice(&info_hash.0);
    while set.len() < k {
        let digest: [u8; 20] = Sha1::digest(&x).into();
        for chunk in digest.chunks_exact(4) {
            if set.len() >= k {
                break;
            }
            let y = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            let index = y % pieces;
            if !set.contains(&index) {
                set.push(index);
            }
        }
        x = digest.to_vec();
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in BEP 6.
    #[test]
    fn matches_the_bep_example() {
        let ip: IpAddr = "80.4.4.200".parse().unwrap();
        let hash = InfoHash([0xaa; 20]);
        assert_eq!(
            allowed_fast_set(ip, &hash, 1313, 7),
            [1059, 431, 808, 1217, 287, 376, 1188]
        );
        assert_eq!(
            allowed_fast_set(ip, &hash, 1313, 9),
            [1059, 431, 808, 1217, 287, 376, 1188, 353, 508]
        );
        // Same /24, same set.
        let near: IpAddr = "80.4.4.1".parse().unwrap();
        assert_eq!(
            allowed_fast_set(near, &hash, 1313, 9),
            allowed_fast_set(ip, &hash, 1313, 9)
        );
    }

    #[test]
    fn small_torrents_get_every_piece_at_most_once() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let hash = InfoHash([1; 20]);
        let mut s = allowed_fast_set(ip, &hash, 3, ALLOWED_FAST);
        s.sort_unstable();
        assert_eq!(s, [0, 1, 2]);
        assert!(allowed_fast_set(ip, &hash, 0, ALLOWED_FAST).is_empty());
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(allowed_fast_set(v6, &hash, 1000, ALLOWED_FAST).len(), 10);
    }
}
