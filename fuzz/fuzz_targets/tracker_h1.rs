//! The tracker's HTTP/1 fast path (`h1`), fed a connection's input the way
//! the server feeds it: request after request from the front of the
//! buffer. "Need more" only under `MAX_HEAD` bytes; a request answered
//! used at most the buffer (and at most `MAX_HEAD`), did not depend on the
//! bytes after it and not one byte less would do; its reply is one
//! `200 OK` whose `content-length` is the length of a bencoded dictionary
//! body (a rejected head: a bencoded failure, 200 or 400, and close);
//! nothing is written for input handed to hyper. The first input
//! byte picks the tracker's policy (behind a proxy or not) and the
//! client's address family.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use torrent_format::bencode::{self, Value};
use tracker::fuzz::{serve_one, Head};
use tracker::server::MAX_HEAD;
use tracker::{Config, Limits, MemoryStore, Tracker};

fn tracker(behind_proxy: bool) -> &'static Tracker {
    static PLAIN: OnceLock<Tracker> = OnceLock::new();
    static PROXIED: OnceLock<Tracker> = OnceLock::new();
    let make = move || {
        let config = Config {
            real_ip_header: behind_proxy.then(|| http::HeaderName::from_static("x-forwarded-for")),
            trust_ip_param: behind_proxy,
            ..Config::default()
        };
        // Small limits: announces accumulate over a run.
        let store = MemoryStore::new(Limits {
            max_swarms: 1024,
            max_peers: 4096,
        });
        Tracker::new(config, Box::new(store)).expect("no lists to load")
    };
    if behind_proxy {
        PROXIED.get_or_init(make)
    } else {
        PLAIN.get_or_init(make)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let t = tracker(flags & 1 != 0);
    let remote: SocketAddr = if flags & 2 != 0 {
        "[2001:db8::7]:51413".parse().unwrap()
    } else {
        "192.0.2.7:51413".parse().unwrap()
    };
    let mut out = Vec::new();
    loop {
        let before = out.len();
        match serve_one(t, rest, remote, &mut out) {
            Head::Partial => {
                assert!(
                    rest.len() < MAX_HEAD,
                    "waits for more after {} bytes",
                    rest.len()
                );
                assert_eq!(out.len(), before);
                return;
            }
            Head::Other => {
                assert_eq!(out.len(), before, "wrote a reply for hyper's input");
                return;
            }
            Head::Rejected => {
                // Malformed or too long: a bencoded failure, then close.
                check_reply(&out[before..], false);
                return;
            }
            Head::Answered { len, keep_alive } => {
                assert!(len > 0 && len <= rest.len() && len <= MAX_HEAD);
                check_reply(&out[before..], keep_alive);
                let mut alone = Vec::new();
                assert_eq!(
                    serve_one(t, &rest[..len], remote, &mut alone),
                    Head::Answered { len, keep_alive },
                    "the bytes after a request changed how it was read"
                );
                assert_eq!(
                    serve_one(t, &rest[..len - 1], remote, &mut Vec::new()),
                    Head::Partial,
                    "{len} bytes answered, but so were {}",
                    len - 1
                );
                if !keep_alive {
                    return;
                }
                rest = &rest[len..];
            }
        }
    }
});

fn check_reply(reply: &[u8], keep_alive: bool) {
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a reply head ends with a blank line");
    let (head, body) = (&reply[..split], &reply[split + 4..]);
    let head = std::str::from_utf8(head).expect("the head is text");
    let mut lines = head.split("\r\n");
    let status = lines.next();
    assert!(
        matches!(status, Some("HTTP/1.1 200 OK" | "HTTP/1.1 400 Bad Request")),
        "{status:?}"
    );
    let mut length = None;
    let mut close = false;
    for line in lines {
        let (name, value) = line.split_once(": ").expect("a header line");
        match name {
            "content-length" => length = Some(value.parse::<usize>().expect("a number")),
            "connection" => close |= value == "close",
            _ => {}
        }
    }
    assert_eq!(length, Some(body.len()), "content-length is not the body's");
    assert_eq!(close, !keep_alive);
    assert!(
        matches!(bencode::decode(body), Ok(Value::Dict(_))),
        "the body is not a bencoded dictionary"
    );
}
