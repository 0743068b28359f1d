//! The tracker client's UDP (BEP 15) side: `decode_reply` on a datagram,
//! with the transaction id taken from the datagram itself (so matching
//! replies are reached) and the address family from the first input byte,
//! and `parse_url` on the same bytes as text. A reply for another
//! transaction or under 8 bytes is ignored; an announce reply has clamped
//! intervals, only usable peers and exactly as many as its 6- or 18-byte
//! entries allow; a parsed URL has a host and a port that is not 0.
#![no_main]

use client::tracker::udp::{self, Reply};
use client::tracker::{MAX_INTERVAL, MIN_INTERVAL};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, packet)) = data.split_first() else {
        return;
    };
    let ipv6 = flags & 1 != 0;
    let tid = match packet.get(4..8) {
        Some(t) if flags & 2 == 0 => u32::from_be_bytes([t[0], t[1], t[2], t[3]]),
        _ => u32::from(flags),
    };
    match udp::decode_reply(packet, tid, ipv6) {
        Ok(None) => assert!(packet.len() < 8 || packet[4..8] != tid.to_be_bytes()),
        Ok(Some(Reply::Announce(r))) => {
            assert!(packet.len() >= 20);
            assert!((MIN_INTERVAL..=MAX_INTERVAL).contains(&r.interval));
            let size = if ipv6 { 18 } else { 6 };
            assert_eq!((packet.len() - 20) % size, 0);
            assert!(r.peers.len() <= (packet.len() - 20) / size);
            for p in &r.peers {
                assert!(p.port() != 0 && !p.ip().is_unspecified() && !p.ip().is_multicast());
                assert_eq!(p.is_ipv6(), ipv6);
            }
        }
        Ok(Some(Reply::Connect { .. } | Reply::Error(_))) | Err(_) => {
            assert!(packet.len() >= 8)
        }
    }
    if let Ok(url) = std::str::from_utf8(data) {
        if let Ok(u) = udp::parse_url(url) {
            assert!(!u.host.is_empty() && u.port != 0);
            assert!(url.contains(u.host) && url.contains(u.request));
        }
    }
});
