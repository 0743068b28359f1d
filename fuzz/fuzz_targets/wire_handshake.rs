//! The peer handshake: a buffer is either refused from its first bytes
//! (not `\x13BitTorrent protocol`), or "need more bytes" while under 68
//! bytes, or a handshake. Whether a prefix is refused never changes as
//! more bytes arrive, a decoded handshake re-encodes to its 68 bytes
//! (except reserved bits shoal does not know), and bytes after the 68 are
//! left alone.
#![no_main]

use client::wire::{Handshake, HANDSHAKE_LEN, PROTOCOL};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let full = Handshake::decode(data);
    let speaks = data.first().is_none_or(|&b| b == 19)
        && data
            .iter()
            .skip(1)
            .take(19)
            .eq(PROTOCOL.iter().take(data.len().saturating_sub(1)));
    match &full {
        Err(_) => assert!(!speaks, "refused a BitTorrent handshake"),
        Ok(None) => assert!(speaks && data.len() < HANDSHAKE_LEN),
        Ok(Some(h)) => {
            assert!(speaks && data.len() >= HANDSHAKE_LEN);
            let out = h.encode();
            assert_eq!(out[..20], data[..20]);
            assert_eq!(out[28..], data[28..HANDSHAKE_LEN]);
            // Only known reserved bits survive, and those exactly.
            let known = [0, 0, 0, 0, 0, 0x10, 0, 0x05];
            for i in 0..8 {
                assert_eq!(out[20 + i], data[20 + i] & known[i]);
            }
            assert_eq!(Handshake::decode(&out), Ok(Some(*h)));
        }
    }
    // Every prefix: refused iff it is already wrong; never a handshake early.
    for n in 0..data.len().min(HANDSHAKE_LEN) {
        match Handshake::decode(&data[..n]) {
            Ok(Some(_)) => panic!("a handshake from {n} bytes"),
            Ok(None) => assert!(full.is_ok() || n < 20, "prefix of {n} taken, whole refused"),
            Err(_) => assert!(full.is_err(), "prefix of {n} refused, whole taken"),
        }
    }
});
