//! Magnet links: a parsed link always has an info hash, every `x.pe` peer
//! `parse_peer` accepts prints back as given, and printing the link and
//! parsing that again gives the same link (name, trackers, peers and web
//! seeds through percent-encoding and back) — unless the printed form,
//! escapes added, is over the length limit, which must then be the error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use torrent_format::magnet::{parse_peer, MagnetError, MAX_MAGNET_ITEMS, MAX_MAGNET_LEN};
use torrent_format::Magnet;

fuzz_target!(|data: &[u8]| {
    let Ok(link) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = Magnet::parse(link) else {
        return;
    };
    for list in [&m.trackers, &m.peers, &m.web_seeds] {
        assert!(list.len() <= MAX_MAGNET_ITEMS);
    }
    for p in &m.peers {
        if let Some((host, port)) = parse_peer(p) {
            assert!(port != 0);
            let again = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            // Not `== p`: a port may have leading zeros.
            assert_eq!(parse_peer(&again), Some((host, port)), "{p}");
        }
    }
    let printed = m.to_string();
    if printed.len() > MAX_MAGNET_LEN {
        assert_eq!(
            Magnet::parse(&printed),
            Err(MagnetError::TooLong { len: printed.len() })
        );
        return;
    }
    assert_eq!(Magnet::parse(&printed).as_ref(), Ok(&m), "{printed}");
});
