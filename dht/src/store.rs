//! What a node keeps for others: announce tokens, the peers announced to
//! it, and the per-IP budget for answering queries.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use sha1::{Digest, Sha1};

use crate::id::NodeId;

/// Tokens come from a secret rotated this often; the previous secret's
/// tokens are still accepted (BEP 5: up to ten minutes old).
pub const TOKEN_ROTATION: Duration = Duration::from_secs(5 * 60);
/// An announced peer is forgotten after this (BEP 5: 30 minutes).
pub const PEER_TTL: Duration = Duration::from_secs(30 * 60);
/// Peers kept per info hash.
pub const MAX_PEERS_PER_HASH: usize = 200;
/// Info hashes kept.
pub const MAX_HASHES: usize = 2000;
/// Peers put in one `get_peers` answer: answers stay close to the size of
/// the query (no amplification).
pub const MAX_VALUES_OUT: usize = 32;

#[derive(Debug, Clone)]
pub struct Tokens {
    secret: [u8; 16],
    previous: [u8; 16],
    rotated: Instant,
}

impl Tokens {
    pub fn new(now: Instant) -> Tokens {
        Tokens {
            secret: rand::random(),
            previous: rand::random(),
            rotated: now,
        }
    }

    fn make(secret: &[u8; 16], ip: IpAddr) -> [u8; 8] {
        let mut h = Sha1::new();
        h.update(secret);
        match ip {
            IpAddr::V4(v4) => h.update(v4.octets()),
            IpAddr::V6(v6) => h.update(v6.octets()),
        }
        let d = h.finalize();
        d[..8].try_into().expect("8 bytes")
    }

    pub fn rotate(&mut self, now: Instant) {
        if now.saturating_duration_since(self.rotated) >= TOKEN_ROTATION {
            self.previous = self.secret;
            self.secret = rand::random();
            self.rotated = now;
        }
    }

    pub fn token_for(&self, ip: IpAddr) -> Vec<u8> {
        Self::make(&self.secret, ip).to_vec()
    }

    pub fn is_valid(&self, token: &[u8], ip: IpAddr) -> bool {
        token == Self::make(&self.secret, ip) || token == Self::make(&self.previous, ip)
    }
}

/// Peers announced to us, by info hash, bounded per hash and in total.
#[derive(Debug, Clone, Default)]
pub struct PeerStore {
    hashes: HashMap<NodeId, Vec<(SocketAddr, Instant)>>,
}

impl PeerStore {
    pub fn announce(&mut self, info_hash: NodeId, peer: SocketAddr, now: Instant) {
        if !self.hashes.contains_key(&info_hash) && self.hashes.len() >= MAX_HASHES {
            self.expire(now);
            if self.hashes.len() >= MAX_HASHES {
                return;
            }
        }
        let list = self.hashes.entry(info_hash).or_default();
        // One entry per IP (as libtorrent keeps them): one host cannot
        // push a torrent's other peers out by announcing many ports.
        if let Some(e) = list.iter_mut().find(|(a, _)| a.ip() == peer.ip()) {
            *e = (peer, now);
            return;
        }
        if list.len() >= MAX_PEERS_PER_HASH {
            // The oldest announce makes room.
            let oldest = list
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(i, _)| i)
                .expect("not empty");
            list.swap_remove(oldest);
        }
        list.push((peer, now));
    }

    /// Up to [`MAX_VALUES_OUT`] live peers of `info_hash`, a random pick
    /// when there are more.
    pub fn peers(&self, info_hash: &NodeId, now: Instant) -> Vec<SocketAddr> {
        let Some(list) = self.hashes.get(info_hash) else {
            return Vec::new();
        };
        let mut live: Vec<SocketAddr> = list
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(*t) < PEER_TTL)
            .map(|(a, _)| *a)
            .collect();
        if live.len() > MAX_VALUES_OUT {
            use rand::seq::SliceRandom;
            live.shuffle(&mut rand::rng());
            live.truncate(MAX_VALUES_OUT);
        }
        live
    }

    pub fn expire(&mut self, now: Instant) {
        self.hashes.retain(|_, list| {
            list.retain(|(_, t)| now.saturating_duration_since(*t) < PEER_TTL);
            !list.is_empty()
        });
    }

    pub fn hash_count(&self) -> usize {
        self.hashes.len()
    }

    pub fn peer_count(&self) -> usize {
        self.hashes.values().map(Vec::len).sum()
    }
}

/// Queries answered per second per IP, and the burst allowed.
pub const QUERIES_PER_SEC: f64 = 5.0;
pub const QUERY_BURST: f64 = 20.0;
/// IPs tracked by the limiter; when full, those with a full bucket go.
pub const MAX_LIMITED_IPS: usize = 4096;

/// A token bucket per source IP for incoming queries.
#[derive(Debug, Clone, Default)]
pub struct RateLimiter {
    ips: HashMap<IpAddr, (f64, Instant)>,
}

impl RateLimiter {
    /// Whether a query from `ip` may be answered now.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        // An IPv6 host commonly holds a whole /64: it is one budget.
        let ip = match ip.to_canonical() {
            IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
            v4 => v4,
        };
        if !self.ips.contains_key(&ip) && self.ips.len() >= MAX_LIMITED_IPS {
            self.ips.retain(|_, (tokens, at)| {
                let refilled =
                    *tokens + now.saturating_duration_since(*at).as_secs_f64() * QUERIES_PER_SEC;
                refilled < QUERY_BURST
            });
            if self.ips.len() >= MAX_LIMITED_IPS {
                // Under a spread-out flood: new IPs wait their turn.
                return false;
            }
        }
        let (tokens, at) = self.ips.entry(ip).or_insert((QUERY_BURST, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * QUERIES_PER_SEC)
            .min(QUERY_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_per_ip_and_live_two_rotations() {
        let t0 = Instant::now();
        let mut t = Tokens::new(t0);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let tok = t.token_for(ip);
        assert!(t.is_valid(&tok, ip));
        assert!(!t.is_valid(&tok, other));
        assert!(!t.is_valid(b"forged!!", ip));
        t.rotate(t0 + TOKEN_ROTATION);
        assert!(t.is_valid(&tok, ip), "the previous secret still counts");
        t.rotate(t0 + TOKEN_ROTATION * 2);
        assert!(!t.is_valid(&tok, ip));
    }

    #[test]
    fn the_peer_store_is_bounded_and_expires() {
        let t0 = Instant::now();
        let mut s = PeerStore::default();
        let h = NodeId::random();
        // One IP announcing many ports keeps one entry, the latest.
        for p in 0..1000u16 {
            s.announce(h, SocketAddr::from(([10, 0, 0, 1], p + 1)), t0);
        }
        assert_eq!(s.peers(&h, t0), vec!["10.0.0.1:1000".parse().unwrap()]);
        for i in 0..1000u32 {
            s.announce(
                h,
                SocketAddr::from((std::net::Ipv4Addr::from(0x0a01_0000 + i), 1)),
                t0,
            );
        }
        assert_eq!(s.peer_count(), MAX_PEERS_PER_HASH);
        assert_eq!(s.peers(&h, t0).len(), MAX_VALUES_OUT);
        for _ in 0..(MAX_HASHES + 500) {
            s.announce(NodeId::random(), "10.0.0.2:1".parse().unwrap(), t0);
        }
        assert_eq!(s.hash_count(), MAX_HASHES);
        assert!(s.peers(&h, t0 + PEER_TTL).is_empty());
        s.expire(t0 + PEER_TTL);
        assert_eq!(s.hash_count(), 0);
        // Room again once old ones expire.
        s.announce(h, "10.0.0.3:1".parse().unwrap(), t0 + PEER_TTL);
        assert_eq!(s.peers(&h, t0 + PEER_TTL).len(), 1);
    }

    #[test]
    fn a_flood_from_one_ip_is_cut_to_the_rate() {
        let t0 = Instant::now();
        let mut r = RateLimiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        // 10 seconds of 1000 queries a second.
        let mut allowed = 0;
        for ms in 0..10_000u64 {
            if r.allow(ip, t0 + Duration::from_millis(ms)) {
                allowed += 1;
            }
        }
        let most = QUERY_BURST + 10.0 * QUERIES_PER_SEC + 1.0;
        assert!(allowed as f64 <= most, "{allowed}");
        assert!(allowed as f64 >= 10.0 * QUERIES_PER_SEC, "{allowed}");
        // Another IP is unaffected.
        assert!(r.allow("10.0.0.2".parse().unwrap(), t0 + Duration::from_secs(10)));
    }
}
