//! The tracker's announce and scrape query parsers (`tracker::request`):
//! no query over `MAX_QUERY` bytes is read, an accepted announce has a
//! port in 1-65535, a scrape at most `MAX_SCRAPE` distinct hashes; and an
//! accepted announce, written back as a query the way clients write one,
//! parses to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use torrent_format::magnet::percent_encode_bytes;
use tracker::request::{self, AnnounceRequest, Event, MAX_QUERY, MAX_SCRAPE};

fuzz_target!(|data: &[u8]| {
    // The server hands the parsers a `&str` (httparse's path is UTF-8).
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(req) = request::parse_announce(query) {
        assert!(query.len() <= MAX_QUERY);
        assert_ne!(req.port, 0);
        let again = request::parse_announce(&write(&req)).expect("a written announce parses");
        assert_eq!(again, req);
    }
    if let Ok(hashes) = request::parse_scrape(query) {
        assert!(query.len() <= MAX_QUERY);
        assert!(!hashes.is_empty() && hashes.len() <= MAX_SCRAPE);
        for (i, h) in hashes.iter().enumerate() {
            assert!(!hashes[..i].contains(h), "hash {h} twice");
        }
        let written: Vec<String> = hashes
            .iter()
            .map(|h| format!("info_hash={}", percent_encode_bytes(h.as_bytes())))
            .collect();
        assert_eq!(request::parse_scrape(&written.join("&")), Ok(hashes));
    }
});

fn write(r: &AnnounceRequest) -> String {
    let mut q = format!(
        "info_hash={}&peer_id={}&port={}&uploaded={}&downloaded={}&left={}&compact={}",
        percent_encode_bytes(r.info_hash.as_bytes()),
        percent_encode_bytes(&r.peer_id),
        r.port,
        r.uploaded,
        r.downloaded,
        r.left,
        u8::from(r.compact),
    );
    let event = match r.event {
        Event::None => None,
        Event::Started => Some("started"),
        Event::Completed => Some("completed"),
        Event::Stopped => Some("stopped"),
    };
    if let Some(e) = event {
        q.push_str("&event=");
        q.push_str(e);
    }
    if let Some(n) = r.numwant {
        q.push_str(&format!("&numwant={n}"));
    }
    if r.no_peer_id {
        q.push_str("&no_peer_id=1");
    }
    if let Some(ip) = r.ip {
        q.push_str(&format!(
            "&ip={}",
            percent_encode_bytes(ip.to_string().as_bytes())
        ));
    }
    q
}
