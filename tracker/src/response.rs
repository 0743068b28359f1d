//! Bencoded replies, written straight into a byte buffer (keys in sorted
//! order, so the output is canonical bencode).

use std::net::IpAddr;

use torrent_format::InfoHash;

use crate::store::ScrapeEntry;
use crate::swarm::AnnounceOutcome;

/// Appends `n` in decimal (no formatting machinery: this runs several
/// times per announce).
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    push_decimal(out, b.len() as u64);
    out.push(b':');
    out.extend_from_slice(b);
}

fn int(out: &mut Vec<u8>, key: &str, v: u64) {
    bytes(out, key.as_bytes());
    out.push(b'i');
    push_decimal(out, v);
    out.push(b'e');
}

/// `d14:failure reason…e`: the error form every client displays.
pub fn failure(reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(reason.len() + 24);
    out.push(b'd');
    bytes(&mut out, b"failure reason");
    bytes(&mut out, reason.as_bytes());
    out.push(b'e');
    out
}

pub fn announce(o: &AnnounceOutcome, interval: u32, min_interval: u32, compact: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(96 + o.peers.compact.len());
    out.push(b'd');
    int(&mut out, "complete", o.complete as u64);
    int(&mut out, "incomplete", o.incomplete as u64);
    int(&mut out, "interval", u64::from(interval));
    int(&mut out, "min interval", u64::from(min_interval));
    if compact {
        // A v6 announcer gets its peers in `peers6` and an empty `peers`.
        bytes(&mut out, b"peers");
        bytes(&mut out, if o.peers.v6 { b"" } else { &o.peers.compact });
        if o.peers.v6 {
            bytes(&mut out, b"peers6");
            bytes(&mut out, &o.peers.compact);
        }
    } else {
        bytes(&mut out, b"peers");
        out.push(b'l');
        for (ip, port) in &o.peers.dicts {
            out.push(b'd');
            bytes(&mut out, b"ip");
            bytes(&mut out, ip_text(ip).as_bytes());
            int(&mut out, "port", u64::from(*port));
            out.push(b'e');
        }
        out.push(b'e');
    }
    out.push(b'e');
    out
}

fn ip_text(ip: &IpAddr) -> String {
    ip.to_string()
}

pub fn scrape(hashes: &[InfoHash], entries: &[ScrapeEntry]) -> Vec<u8> {
    let mut pairs: Vec<(&InfoHash, &ScrapeEntry)> = hashes.iter().zip(entries).collect();
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(16 + pairs.len() * 80);
    out.push(b'd');
    bytes(&mut out, b"files");
    out.push(b'd');
    for (h, e) in pairs {
        bytes(&mut out, &h.0);
        out.push(b'd');
        int(&mut out, "complete", e.complete as u64);
        int(&mut out, "downloaded", e.downloaded);
        int(&mut out, "incomplete", e.incomplete as u64);
        out.push(b'e');
    }
    out.push(b'e');
    out.push(b'e');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::Sample;
    use torrent_format::bencode::{decode, Value};

    #[test]
    fn replies_are_canonical_bencode() {
        let o = AnnounceOutcome {
            complete: 3,
            incomplete: 4,
            peers: Sample {
                compact: vec![1, 2, 3, 4, 0x1a, 0xe1],
                v6: false,
                dicts: vec![],
            },
        };
        let r = announce(&o, 1800, 900, true);
        let v = decode(&r).unwrap();
        assert_eq!(v.encode(), r);
        assert_eq!(
            v.get("peers"),
            Some(&Value::Bytes(vec![1, 2, 3, 4, 0x1a, 0xe1]))
        );
        assert_eq!(v.get("interval"), Some(&Value::Int(1800)));
        assert_eq!(v.get("min interval"), Some(&Value::Int(900)));

        let o6 = AnnounceOutcome {
            peers: Sample {
                compact: vec![0; 18],
                v6: true,
                dicts: vec![],
            },
            ..o.clone()
        };
        let v = decode(&announce(&o6, 1, 1, true)).unwrap();
        assert_eq!(v.get("peers6"), Some(&Value::Bytes(vec![0; 18])));
        assert_eq!(v.get("peers"), Some(&Value::Bytes(vec![])));

        let od = AnnounceOutcome {
            peers: Sample {
                compact: vec![],
                v6: false,
                dicts: vec![
                    ("10.0.0.1".parse().unwrap(), 6881),
                    ("::1".parse().unwrap(), 1),
                ],
            },
            ..o
        };
        let r = announce(&od, 1, 1, false);
        let v = decode(&r).unwrap();
        assert_eq!(v.encode(), r);
        let Some(Value::List(peers)) = v.get("peers") else {
            panic!("no peers list")
        };
        assert_eq!(
            peers[0].get("ip"),
            Some(&Value::Bytes(b"10.0.0.1".to_vec()))
        );
        assert_eq!(peers[0].get("port"), Some(&Value::Int(6881)));
        assert_eq!(peers[1].get("ip"), Some(&Value::Bytes(b"::1".to_vec())));

        let f = failure("bad");
        assert_eq!(f, b"d14:failure reason3:bade");

        let s = scrape(
            &[InfoHash([2; 20]), InfoHash([1; 20])],
            &[
                ScrapeEntry {
                    complete: 1,
                    incomplete: 2,
                    downloaded: 3,
                },
                ScrapeEntry {
                    complete: 0,
                    incomplete: 0,
                    downloaded: 0,
                },
            ],
        );
        let v = decode(&s).unwrap();
        assert_eq!(v.encode(), s);
        let files = v.get("files").unwrap();
        let Value::Dict(files) = files else { panic!() };
        assert_eq!(
            files[&vec![2u8; 20]].get("downloaded"),
            Some(&Value::Int(3))
        );
    }
}
