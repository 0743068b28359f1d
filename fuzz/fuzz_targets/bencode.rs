//! Strict bencode: whatever the decoder accepts re-encodes to bytes it
//! decodes to the same value (and the canonical encoding is a fixed
//! point); `dict_spans` agrees with `decode` on what a dictionary is; and
//! serde_bencode, which metainfo parsing hands already-checked input to,
//! reads every accepted input as the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use torrent_format::bencode::{self, ErrorKind, Value};

fuzz_target!(|data: &[u8]| {
    let decoded = bencode::decode(data);
    let spans = bencode::dict_spans(data);
    match &decoded {
        Ok(v) => {
            let once = v.encode();
            let again = bencode::decode(&once).expect("an encoding decodes");
            assert_eq!(&again, v, "decode(encode(v)) != v");
            assert_eq!(again.encode(), once, "the encoding is not canonical");
            assert_eq!(
                once.len(),
                data.len(),
                "strict bencode has one length per value"
            );
            if let Value::Dict(d) = v {
                let spans = spans.expect("a dictionary has spans");
                assert_eq!(spans.len(), d.len());
                for (key, range) in &spans {
                    let value = bencode::decode(&data[range.clone()]).expect("a span decodes");
                    assert_eq!(d.get(*key), Some(&value), "span of {key:?} is wrong");
                }
            } else {
                assert!(spans.is_err(), "dict_spans accepted a non-dictionary");
            }
            same_as_serde(data, v);
        }
        Err(e) => {
            assert!(e.offset <= data.len(), "error offset past the input");
            // dict_spans does not look for duplicate top-level keys (its
            // callers decode first); anything else it must refuse too.
            if spans.is_ok() {
                assert!(
                    matches!(e.kind, ErrorKind::DuplicateKey(_)),
                    "dict_spans accepted what decode refused: {e}"
                );
            }
        }
    }
});

/// serde_bencode's reading of input the strict decoder accepted.
fn same_as_serde(data: &[u8], v: &Value) {
    let theirs: serde_bencode::value::Value = match serde_bencode::from_bytes(data) {
        Ok(t) => t,
        Err(e) => panic!("serde_bencode refuses strict bencode: {e}"),
    };
    assert!(
        equal(v, &theirs),
        "serde_bencode reads {theirs:?}, strict reads {v:?}"
    );
}

fn equal(ours: &Value, theirs: &serde_bencode::value::Value) -> bool {
    use serde_bencode::value::Value as S;
    match (ours, theirs) {
        (Value::Int(a), S::Int(b)) => a == b,
        (Value::Bytes(a), S::Bytes(b)) => a == b,
        (Value::List(a), S::List(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| equal(x, y))
        }
        (Value::Dict(a), S::Dict(b)) => {
            a.len() == b.len() && a.iter().all(|(k, x)| b.get(k).is_some_and(|y| equal(x, y)))
        }
        _ => false,
    }
}
