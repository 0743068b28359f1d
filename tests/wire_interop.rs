//! The peer wire codec against libtorrent: handshake, bitfield, interested
//! → unchoke, and a requested block that matches the file on disk.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use client::wire::{Bitfield, BlockRef, Features, Handshake, Message};
use common::*;

/// Reads from `s` until `buf` holds one whole message.
fn next_message(s: &mut TcpStream, buf: &mut Vec<u8>) -> Message {
    loop {
        if let Some((m, used)) = Message::decode(buf).expect("valid message from libtorrent") {
            buf.drain(..used);
            return m;
        }
        let mut chunk = [0u8; 65536];
        let n = s.read(&mut chunk).expect("read from libtorrent");
        assert!(n > 0, "libtorrent closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn wire_codec_talks_to_libtorrent() {
    if !have_libtorrent() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_tree(&d.join("seed/tree"));
    shoal_ok(d, &["create", "seed/tree", "-l", "15", "-o", "t.torrent"]);
    let json = show_json(d, "t.torrent");
    let info_hash: torrent_format::InfoHash = json["info_hash"].as_str().unwrap().parse().unwrap();
    let pieces = json["piece_count"].as_u64().unwrap() as usize;

    let (_seed, port) = start_libtorrent_seed(d);

    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let ours = Handshake {
        features: Features::default(),
        info_hash,
        peer_id: *b"-SH0001-wiretest0001",
    };
    s.write_all(&ours.encode()).unwrap();
    let mut buf = Vec::new();
    let theirs = loop {
        if let Some(h) = Handshake::decode(&buf).unwrap() {
            buf.drain(..68);
            break h;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "libtorrent closed during the handshake");
        buf.extend_from_slice(&chunk[..n]);
    };
    assert_eq!(theirs.info_hash, info_hash);
    assert!(theirs.features.extended, "libtorrent supports BEP 10");
    assert!(theirs.features.fast, "libtorrent supports BEP 6");

    // A seed announces everything it has.
    let have = loop {
        match next_message(&mut s, &mut buf) {
            Message::Bitfield(bits) => break Bitfield::from_bytes(&bits, pieces).unwrap(),
            Message::KeepAlive | Message::Extended(..) | Message::Port(_) => continue,
            other => panic!("unexpected before the bitfield: {other:?}"),
        }
    };
    assert!(have.is_complete());

    let mut out = Vec::new();
    Message::Interested.encode(&mut out);
    s.write_all(&out).unwrap();
    loop {
        match next_message(&mut s, &mut buf) {
            Message::Unchoke => break,
            Message::Have(_) | Message::KeepAlive | Message::AllowedFast(_) => continue,
            other => panic!("unexpected before unchoke: {other:?}"),
        }
    }

    // The second block of piece 1, checked against the bytes on disk
    // (files in torrent order: .hidden, Zed.bin, …).
    let want = BlockRef {
        index: 1,
        offset: 16384,
        length: 16384,
    };
    out.clear();
    Message::Request(want).encode(&mut out);
    s.write_all(&out).unwrap();
    let data = loop {
        match next_message(&mut s, &mut buf) {
            Message::Piece {
                index,
                offset,
                data,
            } => {
                assert_eq!((index, offset), (want.index, want.offset));
                break data;
            }
            // libtorrent may repeat its unchoke.
            Message::Have(_) | Message::KeepAlive | Message::Unchoke => continue,
            other => panic!("unexpected instead of the block: {other:?}"),
        }
    };
    let mut stream = Vec::new();
    for f in json["files"].as_array().unwrap() {
        stream
            .extend(std::fs::read(d.join("seed/tree").join(f["path"].as_str().unwrap())).unwrap());
    }
    let start = 32768 + 16384;
    assert_eq!(data, stream[start..start + 16384]);
}
