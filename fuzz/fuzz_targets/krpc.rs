//! The DHT (BEP 5) on hostile datagrams: `krpc::Msg::decode`, whose
//! accepted messages must re-encode to something that decodes the same;
//! and a node fed the datagram (from a loopback, a private and a public
//! source), which must neither panic nor answer with more than a bounded
//! number of bytes.
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use dht::krpc::Msg;
use dht::{Config, Node};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Msg::decode(data) {
        let again = Msg::decode(&m.encode()).expect("our encoding decodes");
        assert_eq!(again, m);
    }
    let now = Instant::now();
    let mut node = Node::new(Config::default(), now);
    for from in ["127.0.0.1:6881", "10.1.2.3:6881", "203.0.113.9:6881"] {
        let from: SocketAddr = from.parse().unwrap();
        node.handle(from, data, now);
        let mut out = 0;
        while let Some((_, bytes)) = node.poll_transmit() {
            assert!(bytes.len() <= dht::krpc::MAX_PACKET);
            out += bytes.len();
        }
        // One answer and at most one ping back.
        assert!(out <= 2 * dht::krpc::MAX_PACKET, "{out} bytes for one datagram");
        node.tick(now);
        while node.poll_transmit().is_some() {}
    }
});
