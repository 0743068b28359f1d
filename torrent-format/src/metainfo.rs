//! Validated metainfo ("parse, don't validate"): a [`Metainfo`] or [`Info`]
//! only exists if every invariant below holds, so no later code re-checks.
//!
//! - the file is at most [`MAX_TORRENT_SIZE`] bytes of strict bencode;
//! - `piece length` is in `1..=`[`MAX_PIECE_LENGTH`];
//! - `pieces` is a multiple of 20 bytes and holds exactly
//!   ceil(total length / piece length) hashes;
//! - every file length is >= 0 and the total fits in an `i64`;
//! - the name and every path component is a safe relative path component (not
//!   empty, `.` or `..`, no `/`, `\` or NUL), no path is given twice and no
//!   file is also used as a directory — so joining a file's path onto a target
//!   directory can never leave it.
//!
//! The info hash is SHA-1 over the raw bytes of `info` exactly as they appear
//! in the file, never over a re-encoding.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha1::{Digest, Sha1};

use crate::bencode::{self, DecodeError};
use crate::InfoHash;

/// Largest .torrent file accepted.
pub const MAX_TORRENT_SIZE: usize = 64 << 20;
/// Largest piece length accepted (256 MiB, mktorrent's `-l 28`).
pub const MAX_PIECE_LENGTH: u64 = 1 << 28;

#[derive(Debug, thiserror::Error)]
pub enum MetainfoError {
    #[error("torrent file is {size} bytes; the limit is {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error(transparent)]
    Bencode(#[from] DecodeError),
    #[error("no 'info' dictionary")]
    MissingInfo,
    #[error("invalid field '{field}': {message}")]
    Field { field: String, message: String },
    #[error("'piece length' is {0}; it must be between 1 and {MAX_PIECE_LENGTH}")]
    PieceLength(i64),
    #[error("'pieces' is {0} bytes long, which is not a multiple of 20")]
    PiecesNotMultipleOf20(usize),
    #[error("'pieces' holds {found} hashes but {total} bytes in pieces of {piece_length} need {expected}")]
    PieceCount {
        found: usize,
        expected: u64,
        total: u64,
        piece_length: u64,
    },
    #[error("'info' has both 'length' and 'files'")]
    LengthAndFiles,
    #[error("'info' has neither 'length' nor 'files'")]
    NoLength,
    #[error("'files' is empty")]
    NoFiles,
    #[error("{what} has a negative length ({length})")]
    NegativeLength { what: String, length: i64 },
    #[error("the total length does not fit in 63 bits")]
    TotalTooLarge,
    #[error("unsafe path {path:?}: {reason}")]
    UnsafePath { path: String, reason: &'static str },
    #[error("path {0:?} appears twice")]
    DuplicatePath(String),
    #[error("path {0:?} is both a file and a directory")]
    FileDirConflict(String),
    #[error("this is a v2-only torrent (BEP 52); only v1 and hybrid torrents are supported")]
    V2Only,
}

type Result<T, E = MetainfoError> = std::result::Result<T, E>;

/// The `info` dictionary as it is bencoded. Used both to read and to write.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct RawInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<RawFile>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<i64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "meta version"
    )]
    pub meta_version: Option<i64>,
    pub name: String,
    #[serde(rename = "piece length")]
    pub piece_length: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pieces: Option<ByteBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RawFile {
    pub length: i64,
    pub path: Vec<String>,
}

/// The top level of a .torrent file, except `info` (parsed from its raw span).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct RawTorrent<I> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "announce-list"
    )]
    pub announce_list: Option<Vec<Vec<String>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<ByteBuf>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "created by"
    )]
    pub created_by: Option<ByteBuf>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "creation date"
    )]
    pub creation_date: Option<i64>,
    pub info: I,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "url-list")]
    pub url_list: Option<UrlList>,
}

/// BEP 19 allows `url-list` to be one string or a list of strings.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub(crate) enum UrlList {
    One(String),
    Many(Vec<String>),
}

/// One file of a torrent: its path relative to the torrent's root (for a
/// single-file torrent, the one component is the torrent's name), its length,
/// and where it starts in the torrent's byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub path: Vec<String>,
    pub length: u64,
    pub offset: u64,
}

impl FileEntry {
    /// The path relative to the torrent's root, for display (always `/`).
    pub fn display_path(&self) -> String {
        self.path.join("/")
    }
}

/// A piece of one file: bytes `file_offset..file_offset+len` of file `file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub file: usize,
    pub file_offset: u64,
    pub len: u64,
}

/// A validated `info` dictionary.
#[derive(Debug, Clone)]
pub struct Info {
    info_hash: InfoHash,
    raw: Vec<u8>,
    name: String,
    piece_length: u64,
    pieces: Vec<[u8; 20]>,
    files: Vec<FileEntry>,
    multi_file: bool,
    private: bool,
    source: Option<String>,
    total_length: u64,
}

impl Info {
    /// Parses and validates a bencoded `info` dictionary.
    pub fn from_bytes(raw: &[u8]) -> Result<Info> {
        if raw.len() > MAX_TORRENT_SIZE {
            return Err(MetainfoError::TooLarge {
                size: raw.len(),
                max: MAX_TORRENT_SIZE,
            });
        }
        // Strict structural check first: serde_bencode then only ever sees
        // well-formed, depth-bounded input.
        bencode::decode(raw)?;
        let info: RawInfo = typed(raw, "info.")?;
        Info::validate(info, raw)
    }

    fn validate(info: RawInfo, raw: &[u8]) -> Result<Info> {
        let name_ok = check_component(&info.name).map_err(|reason| MetainfoError::UnsafePath {
            path: info.name.clone(),
            reason,
        });
        name_ok?;
        if !(1..=MAX_PIECE_LENGTH as i64).contains(&info.piece_length) {
            return Err(MetainfoError::PieceLength(info.piece_length));
        }
        let piece_length = info.piece_length as u64;
        let pieces = match info.pieces {
            Some(p) => p.into_vec(),
            None if info.meta_version == Some(2) => return Err(MetainfoError::V2Only),
            None => {
                return Err(MetainfoError::Field {
                    field: "info.pieces".into(),
                    message: "missing field `pieces`".into(),
                })
            }
        };
        if pieces.len() % 20 != 0 {
            return Err(MetainfoError::PiecesNotMultipleOf20(pieces.len()));
        }

        let (files, multi_file) = match (info.length, info.files) {
            (Some(_), Some(_)) => return Err(MetainfoError::LengthAndFiles),
            (None, None) => return Err(MetainfoError::NoLength),
            (Some(length), None) => {
                if length < 0 {
                    return Err(MetainfoError::NegativeLength {
                        what: format!("file {:?}", info.name),
                        length,
                    });
                }
                let file = FileEntry {
                    path: vec![info.name.clone()],
                    length: length as u64,
                    offset: 0,
                };
                (vec![file], false)
            }
            (None, Some(raw_files)) => {
                if raw_files.is_empty() {
                    return Err(MetainfoError::NoFiles);
                }
                let mut files = Vec::with_capacity(raw_files.len());
                let mut offset: u64 = 0;
                for f in raw_files {
                    let shown = f.path.join("/");
                    if f.path.is_empty() {
                        return Err(MetainfoError::UnsafePath {
                            path: shown,
                            reason: "the path has no components",
                        });
                    }
                    for c in &f.path {
                        check_component(c).map_err(|reason| MetainfoError::UnsafePath {
                            path: shown.clone(),
                            reason,
                        })?;
                    }
                    if f.length < 0 {
                        return Err(MetainfoError::NegativeLength {
                            what: format!("file {shown:?}"),
                            length: f.length,
                        });
                    }
                    let length = f.length as u64;
                    files.push(FileEntry {
                        path: f.path,
                        length,
                        offset,
                    });
                    offset = offset
                        .checked_add(length)
                        .filter(|&t| t <= i64::MAX as u64)
                        .ok_or(MetainfoError::TotalTooLarge)?;
                }
                check_no_collisions(&files)?;
                (files, true)
            }
        };
        let total_length = files.last().map_or(0, |f| f.offset + f.length);
        let expected = total_length.div_ceil(piece_length);
        let found = pieces.len() / 20;
        if found as u64 != expected {
            return Err(MetainfoError::PieceCount {
                found,
                expected,
                total: total_length,
                piece_length,
            });
        }
        let pieces = pieces
            .chunks_exact(20)
            .map(|c| {
                let mut h = [0u8; 20];
                h.copy_from_slice(c);
                h
            })
            .collect();
        Ok(Info {
            info_hash: InfoHash(Sha1::digest(raw).into()),
            raw: raw.to_vec(),
            name: info.name,
            piece_length,
            pieces,
            files,
            multi_file,
            private: info.private.is_some_and(|p| p != 0),
            source: info.source,
            total_length,
        })
    }

    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }
    /// The bencoded `info` dictionary exactly as in the file (BEP 9 serves this).
    pub fn raw_bytes(&self) -> &[u8] {
        &self.raw
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn piece_length(&self) -> u64 {
        self.piece_length
    }
    pub fn piece_count(&self) -> usize {
        self.pieces.len()
    }
    pub fn piece_hashes(&self) -> &[[u8; 20]] {
        &self.pieces
    }
    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }
    pub fn is_multi_file(&self) -> bool {
        self.multi_file
    }
    pub fn is_private(&self) -> bool {
        self.private
    }
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }
    pub fn total_length(&self) -> u64 {
        self.total_length
    }

    /// Where file `index` lives relative to the directory the torrent is
    /// saved into: `name` for a single-file torrent, `name/dir/…/file`
    /// otherwise. Always a safe relative path (see the module invariants).
    pub fn file_path(&self, index: usize) -> PathBuf {
        let mut p = PathBuf::new();
        if self.multi_file {
            p.push(&self.name);
        }
        for c in &self.files[index].path {
            p.push(c);
        }
        p
    }

    /// Length of piece `index` (the last one may be short).
    pub fn piece_size(&self, index: usize) -> u64 {
        crate::pieces::piece_size(self.piece_length, self.total_length, index)
    }

    /// The file ranges that make up piece `index`, in order. Empty files
    /// contribute nothing.
    pub fn piece_segments(&self, index: usize) -> Vec<Segment> {
        crate::pieces::segments(&self.files, self.piece_length, self.total_length, index)
    }

    /// The pieces that hold bytes of file `index` (empty for an empty file).
    pub fn file_pieces(&self, index: usize) -> std::ops::Range<usize> {
        let f = &self.files[index];
        if f.length == 0 {
            return 0..0;
        }
        let first = f.offset / self.piece_length;
        let last = (f.offset + f.length - 1) / self.piece_length;
        first as usize..last as usize + 1
    }

    /// Of the pieces of file `index` ([`file_pieces`](Info::file_pieces)),
    /// those whose bytes in it all lie within its first `len` bytes: what a
    /// file cut to `len` bytes may still hold intact (a prefix of the
    /// range; all of it when `len` is the full length or more). A piece that
    /// also spans other files needs them checked as well.
    pub fn file_pieces_within(&self, index: usize, len: u64) -> std::ops::Range<usize> {
        let all = self.file_pieces(index);
        let f = &self.files[index];
        if len >= f.length {
            return all;
        }
        // The file ends after `f.offset + len`, so a piece's bytes in it end
        // there or before exactly when the piece does.
        let end = ((f.offset + len) / self.piece_length) as usize;
        all.start..end.clamp(all.start, all.end)
    }
}

/// A validated .torrent file.
#[derive(Debug, Clone)]
pub struct Metainfo {
    pub info: Info,
    announce: Option<String>,
    announce_list: Vec<Vec<String>>,
    url_list: Vec<String>,
    comment: Option<String>,
    created_by: Option<String>,
    creation_date: Option<i64>,
}

impl Metainfo {
    /// Parses and validates a .torrent file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Metainfo> {
        if bytes.len() > MAX_TORRENT_SIZE {
            return Err(MetainfoError::TooLarge {
                size: bytes.len(),
                max: MAX_TORRENT_SIZE,
            });
        }
        bencode::decode(bytes)?;
        let spans = bencode::dict_spans(bytes)?;
        let info_span = spans
            .iter()
            .find(|(k, _)| *k == b"info")
            .map(|(_, r)| r.clone())
            .ok_or(MetainfoError::MissingInfo)?;
        let info_raw = &bytes[info_span];
        if info_raw.first() != Some(&b'd') {
            return Err(MetainfoError::Field {
                field: "info".into(),
                message: "not a dictionary".into(),
            });
        }
        let top: RawTorrent<serde::de::IgnoredAny> = typed(bytes, "")?;
        let info_fields: RawInfo = typed(info_raw, "info.")?;
        let info = Info::validate(info_fields, info_raw)?;

        let clean = |urls: Vec<String>| -> Vec<String> {
            urls.into_iter()
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect()
        };
        let announce_list = top
            .announce_list
            .unwrap_or_default()
            .into_iter()
            .map(clean)
            .filter(|tier| !tier.is_empty())
            .collect();
        let url_list = match top.url_list {
            None => vec![],
            Some(UrlList::One(u)) => clean(vec![u]),
            Some(UrlList::Many(us)) => clean(us),
        };
        let lossy = |b: Option<ByteBuf>| b.map(|b| String::from_utf8_lossy(&b).into_owned());
        Ok(Metainfo {
            info,
            announce: top
                .announce
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty()),
            announce_list,
            url_list,
            comment: lossy(top.comment),
            created_by: lossy(top.created_by),
            creation_date: top.creation_date,
        })
    }

    pub fn info_hash(&self) -> InfoHash {
        self.info.info_hash()
    }
    pub fn announce(&self) -> Option<&str> {
        self.announce.as_deref()
    }
    /// The tracker tiers to use (BEP 12): `announce-list` when present,
    /// otherwise `announce` as a single tier.
    pub fn trackers(&self) -> Vec<Vec<String>> {
        if !self.announce_list.is_empty() {
            self.announce_list.clone()
        } else {
            self.announce.iter().map(|a| vec![a.clone()]).collect()
        }
    }
    /// BEP 19 web seeds.
    pub fn web_seeds(&self) -> &[String] {
        &self.url_list
    }
    pub fn comment(&self) -> Option<&str> {
        self.comment.as_deref()
    }
    pub fn created_by(&self) -> Option<&str> {
        self.created_by.as_deref()
    }
    /// Seconds since the Unix epoch.
    pub fn creation_date(&self) -> Option<i64> {
        self.creation_date
    }
}

/// Deserialises already-validated bencode into a typed struct, naming the
/// offending field on error.
fn typed<'de, T: Deserialize<'de>>(raw: &'de [u8], prefix: &str) -> Result<T> {
    let mut de = serde_bencode::Deserializer::new(raw);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            prefix.trim_end_matches('.').to_string()
        } else {
            format!("{prefix}{path}")
        };
        MetainfoError::Field {
            field: if field.is_empty() {
                "(top level)".into()
            } else {
                field
            },
            message: e.into_inner().to_string(),
        }
    })
}

/// One path component must be a plain name: it can never climb out of, or
/// escape from, the directory it is joined onto.
pub(crate) fn check_component(c: &str) -> Result<(), &'static str> {
    if c.is_empty() {
        return Err("empty path component");
    }
    if c == "." || c == ".." {
        return Err("'.' or '..' path component");
    }
    if c.contains('/') || c.contains('\\') {
        return Err("path separator inside a component");
    }
    if c.contains('\0') {
        return Err("NUL byte inside a component");
    }
    Ok(())
}

/// No two files share a path, and no file's path is a directory of another.
/// Each directory gets a number from its parent's number and its name, and
/// a file is known by its directory's number and its name, so the check is
/// linear in the length of the paths however deep they go (comparing whole
/// prefixes made a deep path of a few MB take hours).
fn check_no_collisions(files: &[FileEntry]) -> Result<()> {
    // (parent directory, name) -> directory; the torrent's root is 0.
    let mut dirs: HashMap<(usize, &str), usize> = HashMap::new();
    let mut seen_files: HashSet<(usize, &str)> = HashSet::with_capacity(files.len());
    let mut keys = Vec::with_capacity(files.len());
    for f in files {
        let (name, parents) = f.path.split_last().expect("validated: not empty");
        let mut dir = 0;
        for c in parents {
            let next = dirs.len() + 1;
            dir = *dirs.entry((dir, c.as_str())).or_insert(next);
        }
        if !seen_files.insert((dir, name.as_str())) {
            return Err(MetainfoError::DuplicatePath(f.display_path()));
        }
        keys.push((dir, name.as_str()));
    }
    for (f, key) in files.iter().zip(&keys) {
        if dirs.contains_key(key) {
            return Err(MetainfoError::FileDirConflict(f.display_path()));
        }
    }
    Ok(())
}

/// The bytes of a .torrent file around an info dictionary as peers sent it
/// (a magnet's): the dictionary is kept byte for byte, so the info hash
/// stays the one asked for. One tracker goes in `announce`; several also
/// each in a tier of their own in `announce-list`, tried in order (BEP 12).
pub fn torrent_file(info_raw: &[u8], trackers: &[String], web_seeds: &[String]) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(b.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(b);
    }
    // Keys in sorted order: announce, announce-list, info, url-list.
    let mut out = Vec::with_capacity(info_raw.len() + 256);
    out.push(b'd');
    if let Some(first) = trackers.first() {
        string(&mut out, b"announce");
        string(&mut out, first.as_bytes());
    }
    if trackers.len() > 1 {
        string(&mut out, b"announce-list");
        out.push(b'l');
        for t in trackers {
            out.push(b'l');
            string(&mut out, t.as_bytes());
            out.push(b'e');
        }
        out.push(b'e');
    }
    string(&mut out, b"info");
    out.extend_from_slice(info_raw);
    if !web_seeds.is_empty() {
        string(&mut out, b"url-list");
        out.push(b'l');
        for w in web_seeds {
            string(&mut out, w.as_bytes());
        }
        out.push(b'e');
    }
    out.push(b'e');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bencode::Value;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn b(s: &str) -> Value {
        Value::Bytes(s.as_bytes().to_vec())
    }
    fn dict(entries: Vec<(&str, Value)>) -> Value {
        Value::Dict(
            entries
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect::<BTreeMap<_, _>>(),
        )
    }
    fn file(len: i64, path: &[&str]) -> Value {
        dict(vec![
            ("length", Value::Int(len)),
            ("path", Value::List(path.iter().map(|p| b(p)).collect())),
        ])
    }
    fn multi(files: Vec<Value>, piece_length: i64, pieces: usize) -> Vec<u8> {
        dict(vec![
            ("announce", b("http://t/announce")),
            (
                "info",
                dict(vec![
                    ("files", Value::List(files)),
                    ("name", b("root")),
                    ("piece length", Value::Int(piece_length)),
                    ("pieces", Value::Bytes(vec![7; pieces * 20])),
                ]),
            ),
        ])
        .encode()
    }

    /// `file_pieces_within` against its definition: every byte the piece
    /// has in the file lies within the file's first `len` bytes.    }

    #[test]
    fn the_pieces_a_short_file_still_holds() {
        let lengths = [10u64, 0, 7, 33, 1, 16];
        let files: Vec<Value> = lengths
            .iter()
            .enumerate()
            .map(|(i, &l)| file(l as i64, &[&format!("f{i}")]))
            .collect();
        for pl in [1u64, 3, 8, 16, 100] {
            let total: u64 = lengths.iter().sum();
            let pieces = total.div_ceil(pl) as usize;
            let m = Metainfo::from_bytes(&multi(files.clone(), pl as i64, pieces)).unwrap();
            let info = &m.info;
            for (i, &length) in lengths.iter().enumerate() {
                for len in 0..=length + 2 {
                    let want: Vec<usize> = info
                        .file_pieces(i)
                        .filter(|&p| {
                            info.piece_segments(p)
                                .iter()
                                .filter(|s| s.file == i)
                                .all(|s| s.file_offset + s.len <= len)
                        })
                        .collect();
                    let got: Vec<usize> = info.file_pieces_within(i, len).collect();
                    assert_eq!(got, want, "piece length {pl}, file {i}, {len} bytes");
                }
            }
        }
    }

    #[test]
    fn parses_a_multi_file_torrent() {
        let t = multi(
            vec![file(10, &["a"]), file(0, &["d", "e"]), file(7, &["d", "f"])],
            8,
            3,
        );
        let m = Metainfo::from_bytes(&t).unwrap();
        assert_eq!(m.info.total_length(), 17);
        assert_eq!(m.info.piece_count(), 3);
        assert_eq!(m.trackers(), vec![vec!["http://t/announce".to_string()]]);
        assert_eq!(m.info.file_path(2), PathBuf::from("root/d/f"));
        assert_eq!(
            m.info.piece_segments(1),
            vec![
                Segment {
                    file: 0,
                    file_offset: 8,
                    len: 2
                },
                Segment {
                    file: 2,
                    file_offset: 0,
                    len: 6
                }
            ]
        );
        assert_eq!(
            m.info.piece_segments(2),
            vec![Segment {
                file: 2,
                file_offset: 6,
                len: 1
            }]
        );
        assert_eq!(m.info.piece_size(2), 1);
        assert_eq!(m.info.file_pieces(0), 0..2);
        assert_eq!(m.info.file_pieces(1), 0..0);
        assert_eq!(m.info.file_pieces(2), 1..3);
        // The hash is over the raw info bytes.
        let spans = bencode::dict_spans(&t).unwrap();
        let r = spans.iter().find(|(k, _)| *k == b"info").unwrap().1.clone();
        assert_eq!(m.info_hash().0, <[u8; 20]>::from(Sha1::digest(&t[r])));
    }

    #[test]
    fn the_info_hash_uses_the_bytes_as_written() {
        // Unsorted keys inside info: a re-encoding would sort them and change the hash.
        let t = b"d4:infod6:lengthi3e12:piece lengthi4e4:name1:x6:pieces20:aaaaaaaaaaaaaaaaaaaaee";
        let m = Metainfo::from_bytes(t).unwrap();
        let raw = &t[7..t.len() - 1];
        assert_eq!(m.info_hash().0, <[u8; 20]>::from(Sha1::digest(raw)));
        assert_eq!(m.info.raw_bytes(), raw);
    }

    fn refuse(t: &[u8]) -> String {
        Metainfo::from_bytes(t)
            .expect_err("should be refused")
            .to_string()
    }

    #[test]
    fn refuses_hostile_paths() {
        for (path, why) in [
            (vec![".."], "'.' or '..'"),
            (vec!["a", "..", "b"], "'.' or '..'"),
            (vec!["."], "'.' or '..'"),
            (vec!["/etc/passwd"], "separator"),
            (vec!["a/../../b"], "separator"),
            (vec!["a\\..\\b"], "separator"),
            (vec!["a", ""], "empty path component"),
            (vec!["a\0b"], "NUL"),
        ] {
            let e = refuse(&multi(vec![file(1, &path)], 8, 1));
            assert!(e.contains(why), "{path:?}: {e}");
        }
        let e = refuse(&multi(vec![file(1, &[])], 8, 1));
        assert!(e.contains("no components"), "{e}");
        let e = refuse(&multi(vec![file(1, &["a"]), file(1, &["a"])], 8, 1));
        assert!(e.contains("appears twice"), "{e}");
        let e = refuse(&multi(vec![file(1, &["a"]), file(1, &["a", "b"])], 8, 1));
        assert!(e.contains("both a file and a directory"), "{e}");
    }

    /// A path of 200,000 components (600 KB) took minutes: every prefix
    /// was hashed whole to find files used as directories.
    #[test]
    fn deep_paths_are_checked_in_linear_time() {
        let deep: Vec<String> = (0..200_000).map(|i| (i % 7).to_string()).collect();
        let deep: Vec<&str> = deep.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let m = Metainfo::from_bytes(&multi(vec![file(1, &deep), file(1, &["x"])], 8, 1));
        assert_eq!(m.unwrap().info.files()[0].path.len(), 200_000);
        let e = refuse(&multi(
            vec![file(1, &deep), file(1, &deep[..100_000])],
            8,
            1,
        ));
        assert!(
            e.contains("both a file and a directory"),
            "{}",
            &e[e.len() - 40..]
        );
        let e = refuse(&multi(
            vec![file(1, &deep[..150_000]), file(1, &deep[..150_000])],
            8,
            1,
        ));
        assert!(e.contains("appears twice"), "{}", &e[e.len() - 40..]);
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    #[test]
    fn refuses_hostile_names_and_lengths() {
        let single = |name: &str, len: Value, pl: i64, pieces: usize| {
            let mut info = vec![
                ("name", b(name)),
                ("piece length", Value::Int(pl)),
                ("pieces", Value::Bytes(vec![0; pieces])),
            ];
            if let Value::Int(_) = len {
                info.push(("length", len));
            }
            dict(vec![("info", dict(info))]).encode()
        };
        assert!(refuse(&single("..", Value::Int(1), 8, 20)).contains("unsafe path"));
        assert!(refuse(&single("/abs", Value::Int(1), 8, 20)).contains("unsafe path"));
        assert!(refuse(&single("", Value::Int(1), 8, 20)).contains("empty"));
        assert!(refuse(&single("x", Value::Int(-1), 8, 0)).contains("negative length"));
        assert!(refuse(&single("x", b("none"), 8, 20)).contains("neither 'length' nor 'files'"));
        assert!(refuse(&single("x", Value::Int(1), 0, 20)).contains("'piece length' is 0"));
        assert!(refuse(&single("x", Value::Int(1), -5, 20)).contains("'piece length' is -5"));
        assert!(refuse(&single("x", Value::Int(1), 8, 19)).contains("not a multiple of 20"));
        assert!(refuse(&single("x", Value::Int(100), 8, 20)).contains("need 13"));
        assert!(refuse(&single("x", Value::Int(1), 8, 40)).contains("holds 2 hashes"));
        let e = refuse(&multi(vec![file(-3, &["a"])], 8, 0));
        assert!(e.contains("negative length (-3)"), "{e}");
    }

    #[test]
    fn refuses_structural_problems_with_field_names() {
        assert!(refuse(b"d8:announce1:xe").contains("no 'info'"));
        assert!(refuse(b"d4:infoi1ee").contains("invalid field 'info'"));
        assert!(refuse(b"le").contains("expected a dictionary"));
        let e = refuse(b"d4:infod4:name1:x12:piece lengthi4e6:pieces0:6:lengthi0eeex");
        assert!(e.contains("trailing"), "{e}");
        let e = refuse(&multi(
            vec![dict(vec![
                ("length", b("x")),
                ("path", Value::List(vec![b("a")])),
            ])],
            8,
            1,
        ));
        assert!(e.contains("info.files[0].length"), "{e}");
        let e = refuse(b"d4:infod4:name1:x12:piece lengthi4e6:lengthi0e12:meta versioni2eee");
        assert!(e.contains("v2-only"), "{e}");
        let e = refuse(b"d4:infod4:name1:x12:piece lengthi4e6:pieces999999999999:e");
        assert!(e.contains("string length 999999999999 runs past"), "{e}");
        let e = refuse(b"d4:infod4:name1:x12:piece lengthi4e6:lengthi1e6:pieces20:aaaaaaaaaaaaaaaaaaaa5:filesleee");
        assert!(e.contains("both 'length' and 'files'"), "{e}");
    }

    #[test]
    fn reads_optional_fields() {
        let t = dict(vec![
            ("announce", b("http://a/announce")),
            (
                "announce-list",
                Value::List(vec![
                    Value::List(vec![b("http://a/announce"), b("http://b/announce")]),
                    Value::List(vec![]),
                    Value::List(vec![b("udp://c:80")]),
                ]),
            ),
            ("comment", Value::Bytes(b"caf\xe9".to_vec())),
            ("created by", b("test")),
            ("creation date", Value::Int(1_700_000_000)),
            ("url-list", b("http://w/")),
            (
                "info",
                dict(vec![
                    ("length", Value::Int(0)),
                    ("name", b("x")),
                    ("piece length", Value::Int(16384)),
                    ("pieces", b("")),
                    ("private", Value::Int(1)),
                    ("source", b("SRC")),
                ]),
            ),
        ])
        .encode();
        let m = Metainfo::from_bytes(&t).unwrap();
        assert_eq!(m.trackers().len(), 2);
        assert_eq!(m.trackers()[0].len(), 2);
        assert_eq!(m.web_seeds(), ["http://w/"]);
        assert_eq!(m.comment(), Some("caf\u{fffd}"));
        assert_eq!(m.creation_date(), Some(1_700_000_000));
        assert!(m.info.is_private());
        assert_eq!(m.info.source(), Some("SRC"));
        assert_eq!(m.info.piece_count(), 0);
        assert_eq!(m.info.file_path(0), PathBuf::from("x"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Metainfo::from_bytes(&bytes);
            let _ = Info::from_bytes(&bytes);
        }

        #[test]
        fn mutated_torrents_never_panic(at in any::<usize>(), byte in any::<u8>(), cut in any::<usize>()) {
            let mut t = multi(vec![file(10, &["a"]), file(0, &["d", "e"]), file(7, &["d", "f"])], 8, 3);
            let i = at % t.len();
            t[i] = byte;
            let _ = Metainfo::from_bytes(&t);
            t.truncate(cut % (t.len() + 1));
            let _ = Metainfo::from_bytes(&t);
        }

        #[test]
        fn segments_cover_every_piece_exactly(
            lens in proptest::collection::vec(0i64..50, 1..8),
            pl in 1i64..40,
        ) {
            let total: i64 = lens.iter().sum();
            let files = lens.iter().enumerate().map(|(i, &l)| file(l, &[&format!("f{i}")])).collect();
            let count = (total + pl - 1) / pl;
            let m = Metainfo::from_bytes(&multi(files, pl, count as usize)).unwrap();
            let mut next = (0usize, 0u64);
            for p in 0..m.info.piece_count() {
                let segs = m.info.piece_segments(p);
                prop_assert_eq!(segs.iter().map(|s| s.len).sum::<u64>(), m.info.piece_size(p));
                for s in segs {
                    // Contiguous through the byte stream, skipping empty files.
                    while m.info.files()[next.0].length == next.1 { next = (next.0 + 1, 0); }
                    prop_assert_eq!((s.file, s.file_offset), next);
                    next.1 += s.len;
                }
            }
        }
    }

    #[test]
    fn a_torrent_file_around_fetched_metadata_keeps_the_hash() {
        let original = Metainfo::from_bytes(&multi(vec![file(5, &["a"])], 16384, 1)).unwrap();
        let raw = original.info.raw_bytes();
        for trackers in [
            vec![],
            vec!["http://a/announce".to_string()],
            vec!["http://a/x".into(), "udp://b:1".into()],
        ] {
            let ws = vec!["http://seed/".to_string()];
            let bytes = torrent_file(raw, &trackers, &ws);
            let m = Metainfo::from_bytes(&bytes).unwrap();
            assert_eq!(m.info_hash(), original.info_hash());
            assert_eq!(
                m.trackers(),
                trackers.iter().map(|t| vec![t.clone()]).collect::<Vec<_>>()
            );
            assert_eq!(m.web_seeds(), ws);
            // Canonical: what a bencode round trip writes.
            assert_eq!(bencode::decode(&bytes).unwrap().encode(), bytes);
        }
    }
}
