//! The tracker client's HTTP announce reply parser: a reply is refused
//! unless it is a bencoded dictionary; an accepted one has intervals
//! clamped to `MIN_INTERVAL..=MAX_INTERVAL`, only usable peers (port not
//! 0, address neither unspecified nor multicast), and no more peers than
//! its bytes could describe (6 per IPv4 peer at the least).
#![no_main]

use client::tracker::{http, AnnounceResponse, MAX_INTERVAL, MIN_INTERVAL};
use libfuzzer_sys::fuzz_target;
use torrent_format::bencode::{self, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(r) = http::parse_response(data) else {
        return;
    };
    assert!(matches!(bencode::decode(data), Ok(Value::Dict(_))));
    check(&r, data.len() / 6);
});

fn check(r: &AnnounceResponse, most_peers: usize) {
    let clamped = |d: std::time::Duration| (MIN_INTERVAL..=MAX_INTERVAL).contains(&d);
    assert!(clamped(r.interval));
    assert!(r.min_interval.is_none_or(clamped));
    assert!(
        r.peers.len() <= most_peers,
        "{} peers from so few bytes",
        r.peers.len()
    );
    for p in &r.peers {
        assert!(
            p.port() != 0 && !p.ip().is_unspecified() && !p.ip().is_multicast(),
            "{p}"
        );
    }
}
