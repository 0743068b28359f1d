//! The BEP 10 extended handshake: what is kept from a peer is bounded (at
//! most `MAX_EXTENSIONS` names of at most 64 bytes, a client name of at
//! most `MAX_CLIENT_NAME` characters with no control characters, a port
//! and a `reqq` that are not 0), a payload that is not a bencoded
//! dictionary is refused, and what was kept survives our own encoding.
#![no_main]

use client::extension::{ExtHandshake, MAX_CLIENT_NAME, MAX_EXTENSIONS};
use libfuzzer_sys::fuzz_target;
use torrent_format::bencode::{self, Value};

fuzz_target!(|data: &[u8]| {
    let decoded = ExtHandshake::decode(data);
    let is_dict = matches!(bencode::decode(data), Ok(Value::Dict(_)));
    let Ok(h) = decoded else {
        return;
    };
    assert!(is_dict, "took a payload that is not a dictionary");
    assert!(h.extensions.len() <= MAX_EXTENSIONS);
    assert!(h.extensions.keys().all(|k| k.len() <= 64));
    if let Some(c) = &h.client {
        assert!(c.chars().count() <= MAX_CLIENT_NAME);
        assert!(!c.chars().any(char::is_control));
    }
    assert_ne!(h.port, Some(0));
    assert_ne!(h.reqq, Some(0));
    let again = ExtHandshake::decode(&h.encode()).expect("our encoding decodes");
    assert_eq!(again, h);
});
