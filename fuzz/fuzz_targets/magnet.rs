//! Magnet links: a parsed link always has an info hash, and printing it
//! and parsing that again gives the same link (name, trackers and web
//! seeds through percent-encoding and back).
#![no_main]

use libfuzzer_sys::fuzz_target;
use torrent_format::Magnet;

fuzz_target!(|data: &[u8]| {
    let Ok(link) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = Magnet::parse(link) else {
        return;
    };
    let printed = m.to_string();
    assert_eq!(Magnet::parse(&printed).as_ref(), Ok(&m), "{printed}");
});
