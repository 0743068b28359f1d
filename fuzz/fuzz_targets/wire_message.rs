//! Peer wire messages, read as a peer's byte stream is: message after
//! message from the front of the buffer. A decoded message used exactly
//! its 4-byte length prefix plus that many bytes, never more than the
//! buffer holds, and no length over `MAX_MESSAGE` is taken (nor a block or
//! request over `MAX_BLOCK`); "need more bytes" only when the buffer really
//! is short of the message; re-encoding a known message gives back its
//! bytes; decoding never depends on bytes after the message. A `bitfield`
//! payload is then checked against piece counts around its size.
#![no_main]

use client::wire::{Bitfield, Message, MAX_BLOCK, MAX_MESSAGE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    loop {
        let declared = rest
            .get(..4)
            .map(|p| u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize);
        match Message::decode(rest) {
            Ok(None) => {
                match declared {
                    None => assert!(rest.len() < 4),
                    Some(len) => assert!(len <= MAX_MESSAGE && rest.len() < 4 + len),
                }
                return;
            }
            Err(_) => {
                // Refused messages are the connection's end: nothing after.
                return;
            }
            Ok(Some((msg, used))) => {
                let len = declared.expect("a message has a length prefix");
                assert!(len <= MAX_MESSAGE, "took a {len}-byte message");
                assert_eq!(used, 4 + len);
                assert!(used <= rest.len());
                let bytes = &rest[..used];
                // Decoding the message alone gives the same result.
                assert_eq!(Message::decode(bytes), Ok(Some((msg.clone(), used))));
                check(&msg, bytes);
                rest = &rest[used..];
            }
        }
    }
});

fn check(msg: &Message, bytes: &[u8]) {
    match msg {
        Message::Request(b) | Message::Cancel(b) | Message::RejectRequest(b) => {
            assert!(b.length <= MAX_BLOCK)
        }
        Message::Piece { data, .. } => assert!(data.len() <= MAX_BLOCK as usize),
        Message::Bitfield(bits) => bitfield(bits),
        _ => {}
    }
    let mut out = Vec::new();
    msg.encode(&mut out);
    match msg {
        // Unknown ids keep only the id: the payload is skipped.
        Message::Unknown(id) => assert_eq!(out, [0, 0, 0, 1, *id]),
        _ => assert_eq!(out, bytes, "{msg:?} re-encodes differently"),
    }
}

/// A bitfield of `n` bytes fits exactly the piece counts `8n-7..=8n` whose
/// spare bits are clear.
fn bitfield(bits: &[u8]) {
    let n = bits.len();
    let around = [0, 1, 8 * n, (8 * n).saturating_sub(3), 8 * n + 1];
    for pieces in around.into_iter().chain((8 * n).saturating_sub(7)..8 * n) {
        let fits = pieces.div_ceil(8) == n;
        let spare_clear = fits && (pieces..n * 8).all(|i| bits[i / 8] & (0x80 >> (i % 8)) == 0);
        match Bitfield::from_bytes(bits, pieces) {
            Ok(b) => {
                assert!(spare_clear, "took a bad bitfield for {pieces} pieces");
                assert_eq!(b.len(), pieces);
                assert_eq!(b.as_bytes(), bits);
                assert_eq!(b.is_complete(), b.count() == pieces);
                if n <= 512 {
                    assert_eq!(b.count(), (0..pieces).filter(|&i| b.get(i)).count());
                }
                assert!(!b.get(pieces));
            }
            Err(_) => assert!(!spare_clear, "refused a good bitfield of {pieces} pieces"),
        }
    }
}
