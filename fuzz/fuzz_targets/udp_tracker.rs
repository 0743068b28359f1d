//! The UDP tracker (BEP 15) answering one datagram. The first input byte
//! picks whether bytes 1..9 are replaced by a connection id issued to the
//! source (so announces and scrapes get past the id check), the source's
//! address family, and whether the tracker trusts the `ip` field. Checked:
//! no panic; an error or nothing for a wrong id; replies never longer than
//! one datagram, errors never longer than the request; an announce reply
//! holds whole peers of the source's family, no more than asked for.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tracker::udp::{handle, ConnectionIds, Outcome, MAX_REPLY};
use tracker::{Config, Limits, MemoryStore, Tracker};

fn tracker(trust_ip: bool) -> &'static Tracker {
    static PLAIN: OnceLock<Tracker> = OnceLock::new();
    static TRUSTING: OnceLock<Tracker> = OnceLock::new();
    let make = move || {
        let config = Config {
            trust_ip_param: trust_ip,
            ..Config::default()
        };
        let store = MemoryStore::new(Limits {
            max_swarms: 1024,
            max_peers: 4096,
        });
        Tracker::new(config, Box::new(store)).expect("no lists to load")
    };
    if trust_ip {
        TRUSTING.get_or_init(make)
    } else {
        PLAIN.get_or_init(make)
    }
}

fn ids() -> &'static ConnectionIds {
    static IDS: OnceLock<ConnectionIds> = OnceLock::new();
    IDS.get_or_init(ConnectionIds::new)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let from: SocketAddr = if mode & 2 != 0 {
        "[2001:db8::7]:4000".parse().unwrap()
    } else {
        "10.1.2.3:4000".parse().unwrap()
    };
    let t = tracker(mode & 4 != 0);
    let now = 1000;
    let mut d = rest.to_vec();
    if mode & 1 != 0 && d.len() >= 8 {
        d[..8].copy_from_slice(&ids().issue(from.ip(), now).to_be_bytes());
    }
    // The input may hold a valid id itself: libFuzzer learns the bytes a
    // comparison expects (CI found one such input).
    let valid_id = d.len() >= 8
        && ids().check(
            u64::from_be_bytes(d[..8].try_into().unwrap()),
            from.ip(),
            now,
        );
    let mut out = Vec::new();
    let o = handle(t, ids(), &d, from, now, &mut out);
    assert!(out.len() <= MAX_REPLY.max(16), "{} bytes", out.len());
    match o {
        Outcome::Dropped => assert!(out.is_empty()),
        Outcome::Error => assert!(out.len() <= d.len() && out[..4] == [0, 0, 0, 3]),
        Outcome::Connected => assert_eq!(out.len(), 16),
        Outcome::Announced => {
            assert!(valid_id, "peers for a wrong id");
            let entry = if from.is_ipv4() { 6 } else { 18 };
            assert_eq!((out.len() - 20) % entry, 0);
            let asked = i32::from_be_bytes(d[92..96].try_into().unwrap());
            if asked >= 0 {
                assert!((out.len() - 20) / entry <= asked as usize);
            }
        }
        Outcome::Scraped => {
            assert!(valid_id, "counts for a wrong id");
            assert_eq!((out.len() - 8) / 12, (d.len() - 16) / 20);
        }
    }
});
