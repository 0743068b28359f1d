use std::fmt;
use std::str::FromStr;

/// A v1 info hash: SHA-1 over the bencoded `info` dictionary as it appears in
/// the metainfo file. Displays as 40 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHash(pub [u8; 20]);

impl InfoHash {
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// Parses 40 hex digits or 32 base32 characters (both forms appear in
    /// magnet links).
    pub fn from_hex_or_base32(s: &str) -> Result<Self, ParseInfoHashError> {
        match s.len() {
            40 => {
                let mut out = [0u8; 20];
                for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
                    let hi = hex_val(pair[0]).ok_or(ParseInfoHashError::BadDigit)?;
                    let lo = hex_val(pair[1]).ok_or(ParseInfoHashError::BadDigit)?;
                    out[i] = hi << 4 | lo;
                }
                Ok(InfoHash(out))
            }
            32 => {
                let mut out = [0u8; 20];
                let mut acc: u64 = 0;
                let mut bits = 0;
                let mut n = 0;
                for c in s.bytes() {
                    let v = match c.to_ascii_uppercase() {
                        c @ b'A'..=b'Z' => c - b'A',
                        c @ b'2'..=b'7' => c - b'2' + 26,
                        _ => return Err(ParseInfoHashError::BadDigit),
                    };
                    acc = acc << 5 | u64::from(v);
                    bits += 5;
                    if bits >= 8 {
                        bits -= 8;
                        out[n] = (acc >> bits) as u8;
                        n += 1;
                    }
                }
                Ok(InfoHash(out))
            }
            len => Err(ParseInfoHashError::BadLength(len)),
        }
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseInfoHashError {
    #[error("an info hash is 40 hex digits or 32 base32 characters, not {0} characters")]
    BadLength(usize),
    #[error("an info hash contains a character that is not a hex or base32 digit")]
    BadDigit,
}

impl FromStr for InfoHash {
    type Err = ParseInfoHashError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex_or_base32(s)
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_base32_agree() {
        let hex = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";
        let h: InfoHash = hex.parse().unwrap();
        assert_eq!(h.to_string(), hex);
        let b32 = "YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK";
        assert_eq!(InfoHash::from_hex_or_base32(b32).unwrap(), h);
        assert_eq!(
            InfoHash::from_hex_or_base32(&b32.to_lowercase()).unwrap(),
            h
        );
        assert_eq!(
            "abc".parse::<InfoHash>(),
            Err(ParseInfoHashError::BadLength(3))
        );
        assert_eq!(
            "g12fe1c06bba254a9dc9f519b335aa7c1367a88a".parse::<InfoHash>(),
            Err(ParseInfoHashError::BadDigit)
        );
    }
}
