//! Strict bencode (BEP 3): a decoder that refuses anything a careful peer would
//! refuse, with errors that say what went wrong and at which byte, and a
//! canonical encoder (dictionary keys sorted by their raw bytes).
//!
//! The decoder never allocates more than the input could justify: a string's
//! length prefix is checked against the bytes left *before* anything is
//! allocated, nesting is bounded by [`MAX_DEPTH`], and integers must fit `i64`.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

/// Deepest nesting of lists and dictionaries accepted. Real metainfo needs 4.
pub const MAX_DEPTH: usize = 64;

/// A decoded bencode value. Dictionaries are kept sorted by key, so encoding a
/// value is always canonical.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<Value>),
    Dict(BTreeMap<Vec<u8>, Value>),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => write!(f, "{s:?}"),
                Err(_) => write!(f, "<{} bytes>", b.len()),
            },
            Value::List(l) => f.debug_list().entries(l).finish(),
            Value::Dict(d) => f
                .debug_map()
                .entries(d.iter().map(|(k, v)| (String::from_utf8_lossy(k), v)))
                .finish(),
        }
    }
}

/// What is wrong with the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("unexpected end of input inside {0}")]
    UnexpectedEnd(&'static str),
    #[error("unexpected byte {0:?} where a value should start")]
    UnexpectedByte(char),
    #[error("invalid byte {found:?} in {context}")]
    InvalidDigit { found: char, context: &'static str },
    #[error("integer has a leading zero")]
    LeadingZero,
    #[error("integer is negative zero")]
    NegativeZero,
    #[error("integer has no digits")]
    EmptyInteger,
    #[error("integer does not fit in 64 bits")]
    IntegerOverflow,
    #[error("string length {len} runs past the end of the input ({available} bytes left)")]
    StringTooLong { len: u64, available: usize },
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
    #[error("dictionary key is not a string")]
    NonStringKey,
    #[error("duplicate dictionary key {0:?}")]
    DuplicateKey(String),
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    #[error("expected a dictionary")]
    NotADict,
}

/// A decoding error: what and where (byte offset into the input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bencode error at byte {offset}: {kind}")]
pub struct DecodeError {
    pub offset: usize,
    pub kind: ErrorKind,
}

/// Decodes exactly one value that must span the whole input.
pub fn decode(input: &[u8]) -> Result<Value, DecodeError> {
    let mut p = Parser { input, pos: 0 };
    let v = p.value(0)?;
    p.finish()?;
    Ok(v)
}

/// Decodes one value at the start of `input`, which may go on after it
/// (the dictionary that heads a ut_metadata message, say); returns it and
/// how many bytes it took.
pub fn decode_prefix(input: &[u8]) -> Result<(Value, usize), DecodeError> {
    let mut p = Parser { input, pos: 0 };
    let v = p.value(0)?;
    Ok((v, p.pos))
}

/// For input that is one dictionary, returns each top-level key with the byte
/// range its value occupies in `input` (in input order). This is how the info
/// hash is taken over the `info` value exactly as it appears in the file.
pub fn dict_spans(input: &[u8]) -> Result<Vec<DictSpan<'_>>, DecodeError> {
    let mut p = Parser { input, pos: 0 };
    if p.peek("dictionary")? != b'd' {
        return Err(p.err(ErrorKind::NotADict));
    }
    p.pos += 1;
    let mut spans = Vec::new();
    while p.peek("dictionary")? != b'e' {
        let key = p.key()?;
        let start = p.pos;
        p.value(1)?;
        spans.push((key, start..p.pos));
    }
    p.pos += 1;
    p.finish()?;
    Ok(spans)
}

/// A top-level key and the byte range of its value.
pub type DictSpan<'a> = (&'a [u8], Range<usize>);

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, kind: ErrorKind) -> DecodeError {
        DecodeError {
            offset: self.pos,
            kind,
        }
    }

    fn peek(&self, context: &'static str) -> Result<u8, DecodeError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.err(ErrorKind::UnexpectedEnd(context)))
    }

    fn finish(&self) -> Result<(), DecodeError> {
        let rest = self.input.len() - self.pos;
        if rest != 0 {
            return Err(self.err(ErrorKind::TrailingBytes(rest)));
        }
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        match self.peek("value")? {
            b'i' => self.int().map(Value::Int),
            b'0'..=b'9' => self.bytes().map(|b| Value::Bytes(b.to_vec())),
            b'l' | b'd' if depth >= MAX_DEPTH => Err(self.err(ErrorKind::TooDeep(MAX_DEPTH))),
            b'l' => {
                self.pos += 1;
                let mut list = Vec::new();
                while self.peek("list")? != b'e' {
                    list.push(self.value(depth + 1)?);
                }
                self.pos += 1;
                Ok(Value::List(list))
            }
            b'd' => {
                self.pos += 1;
                let mut dict = BTreeMap::new();
                while self.peek("dictionary")? != b'e' {
                    let key_at = self.pos;
                    let key = self.key()?;
                    let value = self.value(depth + 1)?;
                    if dict.insert(key.to_vec(), value).is_some() {
                        return Err(DecodeError {
                            offset: key_at,
                            kind: ErrorKind::DuplicateKey(
                                String::from_utf8_lossy(key).into_owned(),
                            ),
                        });
                    }
                }
                self.pos += 1;
                Ok(Value::Dict(dict))
            }
            other => Err(self.err(ErrorKind::UnexpectedByte(other as char))),
        }
    }

    fn key(&mut self) -> Result<&'a [u8], DecodeError> {
        match self.peek("dictionary")? {
            b'0'..=b'9' => self.bytes(),
            _ => Err(self.err(ErrorKind::NonStringKey)),
        }
    }

    /// Decimal digits up to (not including) `end`: no leading zero, must
    /// fit a u64. Stops at `end` without consuming it.
    fn digits(&mut self, end: u8, context: &'static str) -> Result<u64, DecodeError> {
        let start = self.pos;
        let mut value: u64 = 0;
        loop {
            match self.peek(context)? {
                c if c == end => return Ok(value),
                c @ b'0'..=b'9' => {
                    if self.pos > start && self.input[start] == b'0' {
                        return Err(DecodeError {
                            offset: start,
                            kind: ErrorKind::LeadingZero,
                        });
                    }
                    value = value
                        .checked_mul(10)
                        .and_then(|v| v.checked_add(u64::from(c - b'0')))
                        .ok_or_else(|| self.err(ErrorKind::IntegerOverflow))?;
                    self.pos += 1;
                }
                c => {
                    return Err(self.err(ErrorKind::InvalidDigit {
                        found: c as char,
                        context,
                    }))
                }
            }
        }
    }

    /// `i<digits>e`: no leading zeros, no `-0`, must fit i64.
    fn int(&mut self) -> Result<i64, DecodeError> {
        self.pos += 1; // 'i'
        let negative = self.peek("integer")? == b'-';
        if negative {
            self.pos += 1;
        }
        let digits_at = self.pos;
        let magnitude = self.digits(b'e', "integer")?;
        if self.pos == digits_at {
            return Err(self.err(ErrorKind::EmptyInteger));
        }
        self.pos += 1; // 'e'
        if negative {
            if magnitude == 0 {
                return Err(DecodeError {
                    offset: digits_at - 1,
                    kind: ErrorKind::NegativeZero,
                });
            }
            // i64::MIN's magnitude is one more than i64::MAX.
            0i64.checked_sub_unsigned(magnitude).ok_or(DecodeError {
                offset: digits_at,
                kind: ErrorKind::IntegerOverflow,
            })
        } else {
            i64::try_from(magnitude).map_err(|_| DecodeError {
                offset: digits_at,
                kind: ErrorKind::IntegerOverflow,
            })
        }
    }

    /// `<len>:<bytes>`; the length is checked against what is left before use.
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len_at = self.pos;
        let len = self.digits(b':', "string length")?;
        self.pos += 1; // ':'
        let available = self.input.len() - self.pos;
        if len > available as u64 {
            return Err(DecodeError {
                offset: len_at,
                kind: ErrorKind::StringTooLong { len, available },
            });
        }
        let start = self.pos;
        self.pos += len as usize;
        Ok(&self.input[start..self.pos])
    }
}

impl Value {
    /// Canonical encoding (dictionary keys in raw byte order).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Value::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Value::Bytes(b) => encode_bytes(b, out),
            Value::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode_into(out);
                }
                out.push(b'e');
            }
            Value::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    encode_bytes(k, out);
                    v.encode_into(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Looks up `key` in a dictionary value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(d) => d.get(key.as_bytes()),
            _ => None,
        }
    }
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(b.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn err(input: &[u8]) -> DecodeError {
        decode(input).expect_err("input should be refused")
    }

    #[test]
    fn a_prefix_says_where_it_ends() {
        let (v, n) = decode_prefix(b"d8:msg_typei1e5:piecei0eeRAW").unwrap();
        assert_eq!(n, 25);
        assert_eq!(v.get("piece"), Some(&Value::Int(0)));
        assert!(decode_prefix(b"d8:msg_type").is_err());
        assert!(decode_prefix(b"").is_err());
    }

    #[test]
    fn decodes_the_basic_types() {
        assert_eq!(decode(b"i42e").unwrap(), Value::Int(42));
        assert_eq!(decode(b"i-7e").unwrap(), Value::Int(-7));
        assert_eq!(decode(b"i0e").unwrap(), Value::Int(0));
        assert_eq!(decode(b"0:").unwrap(), Value::Bytes(vec![]));
        assert_eq!(decode(b"4:spam").unwrap(), Value::Bytes(b"spam".to_vec()));
        let v = decode(b"d3:cow3:moo4:spaml1:a1:bee").unwrap();
        assert_eq!(v.get("cow"), Some(&Value::Bytes(b"moo".to_vec())));
        assert_eq!(
            v.get("spam"),
            Some(&Value::List(vec![
                Value::Bytes(b"a".to_vec()),
                Value::Bytes(b"b".to_vec())
            ]))
        );
        assert_eq!(
            decode(b"i9223372036854775807e").unwrap(),
            Value::Int(i64::MAX)
        );
        assert_eq!(
            decode(b"i-9223372036854775808e").unwrap(),
            Value::Int(i64::MIN)
        );
    }

    #[test]
    fn refuses_malformed_integers_with_offsets() {
        assert_eq!(err(b"i03e").kind, ErrorKind::LeadingZero);
        assert_eq!(err(b"i03e").offset, 1);
        assert_eq!(err(b"i-0e").kind, ErrorKind::NegativeZero);
        assert_eq!(err(b"i-03e").kind, ErrorKind::LeadingZero);
        assert_eq!(err(b"ie").kind, ErrorKind::EmptyInteger);
        assert_eq!(err(b"i-e").kind, ErrorKind::EmptyInteger);
        assert_eq!(
            err(b"i9223372036854775808e").kind,
            ErrorKind::IntegerOverflow
        );
        assert_eq!(
            err(b"i99999999999999999999e").kind,
            ErrorKind::IntegerOverflow
        );
        assert_eq!(err(b"i12").kind, ErrorKind::UnexpectedEnd("integer"));
        assert!(matches!(err(b"i1x2e").kind, ErrorKind::InvalidDigit { .. }));
    }

    #[test]
    fn refuses_malformed_strings_before_allocating() {
        let e = err(b"999999999999:abc");
        assert_eq!(e.offset, 0);
        assert_eq!(
            e.kind,
            ErrorKind::StringTooLong {
                len: 999_999_999_999,
                available: 3
            }
        );
        assert_eq!(
            err(b"99999999999999999999999:").kind,
            ErrorKind::IntegerOverflow
        );
        assert_eq!(err(b"04:spam").kind, ErrorKind::LeadingZero);
        assert_eq!(
            err(b"4spam").kind.to_string(),
            "invalid byte 's' in string length"
        );
        assert_eq!(
            err(b"5:spam").kind,
            ErrorKind::StringTooLong {
                len: 5,
                available: 4
            }
        );
    }

    #[test]
    fn refuses_structural_problems() {
        assert_eq!(err(b"l4:spam").kind, ErrorKind::UnexpectedEnd("list"));
        assert_eq!(err(b"d3:cow").kind, ErrorKind::UnexpectedEnd("value"));
        assert_eq!(err(b"di1e3:mooe").kind, ErrorKind::NonStringKey);
        assert_eq!(
            err(b"d1:ai1e1:ai2ee").kind,
            ErrorKind::DuplicateKey("a".into())
        );
        assert_eq!(err(b"i1ei2e").kind, ErrorKind::TrailingBytes(3));
        assert_eq!(err(b"i1ei2e").offset, 3);
        assert_eq!(err(b"x").kind, ErrorKind::UnexpectedByte('x'));
        assert_eq!(err(b"").kind, ErrorKind::UnexpectedEnd("value"));
        let deep = [vec![b'l'; MAX_DEPTH + 1], vec![b'e'; MAX_DEPTH + 1]].concat();
        assert_eq!(err(&deep).kind, ErrorKind::TooDeep(MAX_DEPTH));
        let ok = [vec![b'l'; MAX_DEPTH], vec![b'e'; MAX_DEPTH]].concat();
        assert!(decode(&ok).is_ok());
    }

    #[test]
    fn dict_spans_point_at_raw_values() {
        // Unsorted keys are tolerated; spans point at the bytes as written.
        let input = b"d4:infod1:xi1ee1:ai2ee";
        let spans = dict_spans(input).unwrap();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0].0, b"info");
        assert_eq!(&input[spans[0].1.clone()], b"d1:xi1ee");
        assert_eq!(&input[spans[1].1.clone()], b"i2e");
        assert_eq!(dict_spans(b"li1ee").unwrap_err().kind, ErrorKind::NotADict);
    }

    #[test]
    fn encoding_is_canonical() {
        let v = decode(b"d1:bi1e1:al0:ee").unwrap();
        assert_eq!(v.encode(), b"d1:al0:e1:bi1ee");
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::Int),
            proptest::collection::vec(any::<u8>(), 0..32).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
                proptest::collection::btree_map(
                    proptest::collection::vec(any::<u8>(), 0..8),
                    inner,
                    0..8
                )
                .prop_map(Value::Dict),
            ]
        })
    }

    proptest! {
        #[test]
        fn round_trips(v in arb_value()) {
            let bytes = v.encode();
            prop_assert_eq!(decode(&bytes).unwrap(), v);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
            let _ = dict_spans(&bytes);
        }

        #[test]
        fn mutated_encodings_never_panic(v in arb_value(), at in any::<usize>(), byte in any::<u8>()) {
            let mut bytes = v.encode();
            let i = at % bytes.len();
            bytes[i] = byte;
            let _ = decode(&bytes);
        }

        #[test]
        fn canonical_input_re_encodes_identically(v in arb_value()) {
            let bytes = v.encode();
            prop_assert_eq!(decode(&bytes).unwrap().encode(), bytes);
        }
    }
}
