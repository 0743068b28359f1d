//! Making a .torrent from a file or directory, the way mktorrent 1.1 does:
//! for the same content and options the info hash is identical.
//!
//! mktorrent's rules, which we follow: a directory becomes a multi-file
//! torrent even if it holds one file; every regular file under it is
//! included (hidden and empty ones too, symbolic links followed), sorted by
//! the whole relative path compared byte-wise; the name is the path's last
//! component unless given; `private` and `source` are written only when set.
//!
//! Creation is split in two so a caller can show what will be hashed before
//! hashing: [`plan`] walks the tree, [`Plan::build`] hashes and encodes.

use std::path::{Path, PathBuf};

use serde_bytes::ByteBuf;

use crate::metainfo::{self, FileEntry, RawFile, RawInfo, RawTorrent, UrlList};
use crate::pieces::{hash_pieces, HashOptions, Layout, ReadError};

/// Smallest and largest `-l` exponents accepted (32 KiB ..= 256 MiB).
pub const MIN_PIECE_EXP: u32 = 15;
pub const MAX_PIECE_EXP: u32 = 28;
/// The automatic choice aims for at most this many pieces.
pub const AUTO_TARGET_PIECES: u64 = 1500;
/// ... with a piece length of at most 2^this (16 MiB).
pub const AUTO_MAX_PIECE_EXP: u32 = 24;

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("cannot read {}: {error}", path.display())]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} is neither a regular file nor a directory", .0.display())]
    NotFileOrDir(PathBuf),
    #[error("{} contains no files", .0.display())]
    NoFiles(PathBuf),
    #[error("every file in {} is excluded", .0.display())]
    AllExcluded(PathBuf),
    #[error("{} has a name that is not valid UTF-8", .0.display())]
    NotUtf8(PathBuf),
    #[error("cannot use {name:?} as the torrent name: {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("piece length exponent {0} is out of range ({MIN_PIECE_EXP}..={MAX_PIECE_EXP}, i.e. 32 KiB to 256 MiB)")]
    PieceLength(u32),
    #[error("a symbolic link loop at {}", .0.display())]
    Loop(PathBuf),
    #[error(transparent)]
    Read(#[from] ReadError),
    // The message ends with the cause's, so the cause is not also the
    // `source()` (printed with its chain, it would appear twice).
    #[error("the created torrent does not validate: {0}")]
    Invalid(metainfo::MetainfoError),
}

impl From<metainfo::MetainfoError> for CreateError {
    fn from(e: metainfo::MetainfoError) -> Self {
        CreateError::Invalid(e)
    }
}

/// What goes into the torrent besides the content.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Tracker tiers (BEP 12); each inner list is one tier.
    pub announce: Vec<Vec<String>>,
    /// Web seeds (BEP 19).
    pub web_seeds: Vec<String>,
    pub comment: Option<String>,
    /// Seconds since the epoch; `None` writes no `creation date`.
    pub creation_date: Option<i64>,
    pub created_by: Option<String>,
    /// Piece length is 2^this; `None` picks it from the size
    /// ([`auto_piece_exp`]).
    pub piece_exp: Option<u32>,
    /// The torrent's name; default: the path's last component.
    pub name: Option<String>,
    pub private: bool,
    pub source: Option<String>,
    /// Globs of files and directories to leave out ([`excluded`]); empty
    /// (the default) includes everything, as mktorrent does.
    pub exclude: Vec<String>,
}

/// Whether a file or directory at `rel` (its path from the torrent's top,
/// by component) is left out by one of `globs`: a glob without a `/` is
/// matched against each component's name (`.DS_Store`, `*.nfo`, `.git`
/// leave those out wherever they are, and everything under such a
/// directory), one with a `/` against the whole path (`extras/*.jpg`).
/// In a glob, `*` matches any run of characters but `/`, `**` any run at
/// all, `?` one character, `[abc]`, `[a-z]` and `[!abc]` one of a set.
pub fn excluded(rel: &[String], globs: &[String]) -> bool {
    globs.iter().any(|g| {
        let g = g.trim_start_matches("./");
        if g.contains('/') {
            let path = rel.join("/");
            glob_match(g.trim_end_matches('/').as_bytes(), path.as_bytes())
        } else {
            rel.iter().any(|c| glob_match(g.as_bytes(), c.as_bytes()))
        }
    })
}

/// Shell-style matching of all of `text` (see [`excluded`]).
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', rest)) => {
            let (crosses, rest) = match rest.split_first() {
                Some((b'*', r)) => (true, r.strip_prefix(b"/").unwrap_or(r)),
                _ => (false, rest),
            };
            // Every split of the text, shortest run first.
            (0..=text.len())
                .take_while(|&i| crosses || !text[..i].contains(&b'/'))
                .any(|i| glob_match(rest, &text[i..]))
        }
        Some((b'?', rest)) => {
            matches!(text.split_first(), Some((&c, t)) if c != b'/' && glob_match(rest, t))
        }
        Some((b'[', rest)) => match (class(rest), text.split_first()) {
            (Some((set, negated, after)), Some((&c, t))) => {
                c != b'/' && in_set(set, c) != negated && glob_match(after, t)
            }
            // An unclosed '[' is a plain character.
            (None, Some((&c, t))) => c == b'[' && glob_match(rest, t),
            (_, None) => false,
        },
        Some((&p, rest)) => {
            matches!(text.split_first(), Some((&c, t)) if c == p && glob_match(rest, t))
        }
    }
}

/// `[...]` after its '[': the set's bytes, whether it is negated, and the
/// pattern after the ']'; `None` when there is no closing ']'.
fn class(p: &[u8]) -> Option<(&[u8], bool, &[u8])> {
    let (negated, p) = match p.first() {
        Some(b'!' | b'^') => (true, &p[1..]),
        _ => (false, p),
    };
    // A ']' first is a member, not the end.
    let end = p.iter().skip(1).position(|&c| c == b']')? + 1;
    Some((&p[..end], negated, &p[end + 1..]))
}

fn in_set(set: &[u8], c: u8) -> bool {
    let mut i = 0;
    while i < set.len() {
        if i + 2 < set.len() && set[i + 1] == b'-' {
            if (set[i]..=set[i + 2]).contains(&c) {
                return true;
            }
            i += 3;
        } else {
            if set[i] == c {
                return true;
            }
            i += 1;
        }
    }
    false
}

/// The automatic piece length rule: the smallest 2^N, N in 15..=24, that
/// gives at most 1500 pieces (2^24 = 16 MiB when even that gives more).
pub fn auto_piece_exp(total_length: u64) -> u32 {
    (MIN_PIECE_EXP..=AUTO_MAX_PIECE_EXP)
        .find(|&n| total_length.div_ceil(1 << n) <= AUTO_TARGET_PIECES)
        .unwrap_or(AUTO_MAX_PIECE_EXP)
}

/// The content to hash, walked and sorted.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub multi_file: bool,
    pub layout: Layout,
}

impl Plan {
    pub fn total_length(&self) -> u64 {
        self.layout.total_length
    }
    pub fn piece_length(&self) -> u64 {
        self.layout.piece_length
    }
    pub fn piece_count(&self) -> usize {
        self.layout.piece_count()
    }

    /// Hashes the content and returns the bencoded torrent. `progress` gets
    /// the size of each piece as it is hashed.
    pub fn build(
        &self,
        opts: &CreateOptions,
        hashing: HashOptions,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Vec<u8>, CreateError> {
        let results = hash_pieces(&self.layout, hashing, true, &|_| true, progress);
        let mut pieces = Vec::with_capacity(results.len() * 20);
        let mut first_error = None;
        for r in results {
            match r {
                Some(Ok(h)) => pieces.extend_from_slice(&h),
                Some(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                None => {}
            }
        }
        if let Some(e) = first_error {
            return Err(e.into());
        }
        let (files, length) = if self.multi_file {
            let files = self
                .layout
                .files
                .iter()
                .map(|f| RawFile {
                    length: f.length as i64,
                    path: f.path.clone(),
                })
                .collect();
            (Some(files), None)
        } else {
            (None, Some(self.total_length() as i64))
        };
        let info = RawInfo {
            files,
            length,
            meta_version: None,
            name: self.name.clone(),
            piece_length: self.piece_length() as i64,
            pieces: Some(ByteBuf::from(pieces)),
            private: opts.private.then_some(1),
            source: opts.source.clone(),
        };
        let urls: Vec<&String> = opts.announce.iter().flatten().collect();
        let torrent = RawTorrent {
            announce: urls.first().map(|u| u.to_string()),
            // Like mktorrent: announce-list only when there is more than one URL.
            announce_list: (urls.len() > 1).then(|| opts.announce.clone()),
            comment: opts.comment.clone().map(|c| ByteBuf::from(c.into_bytes())),
            created_by: opts
                .created_by
                .clone()
                .map(|c| ByteBuf::from(c.into_bytes())),
            creation_date: opts.creation_date,
            info,
            url_list: match opts.web_seeds.as_slice() {
                [] => None,
                [one] => Some(UrlList::One(one.clone())),
                many => Some(UrlList::Many(many.to_vec())),
            },
        };
        let bytes = serde_bencode::to_bytes(&torrent).map_err(|e| {
            CreateError::Invalid(metainfo::MetainfoError::Field {
                field: "(encoding)".into(),
                message: e.to_string(),
            })
        })?;
        // Self-check: what we wrote must read back as a valid torrent.
        metainfo::Metainfo::from_bytes(&bytes)?;
        Ok(bytes)
    }
}

/// Walks `path` and decides name, file order and piece length.
pub fn plan(path: &Path, opts: &CreateOptions) -> Result<Plan, CreateError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |error| CreateError::Io { path, error }
    };
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => default_name(path)?,
    };
    metainfo::check_component(&name).map_err(|reason| CreateError::BadName {
        name: name.clone(),
        reason,
    })?;

    let (mut files, multi_file): (Vec<(PathBuf, Vec<String>, u64)>, bool) = if meta.is_file() {
        (
            vec![(path.to_path_buf(), vec![name.clone()], meta.len())],
            false,
        )
    } else if meta.is_dir() {
        let mut files = Vec::new();
        // Excluded directories are not even walked into.
        let keep = |e: &walkdir::DirEntry| {
            opts.exclude.is_empty() || e.depth() == 0 || {
                let rel = e.path().strip_prefix(path).unwrap_or(e.path());
                let rel: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                !excluded(&rel, &opts.exclude)
            }
        };
        for entry in walkdir::WalkDir::new(path)
            .follow_links(true)
            .into_iter()
            .filter_entry(keep)
        {
            let entry = entry.map_err(|e| {
                let at = e.path().unwrap_or(path).to_path_buf();
                if e.loop_ancestor().is_some() {
                    return CreateError::Loop(at);
                }
                match e.into_io_error() {
                    Some(error) => CreateError::Io { path: at, error },
                    None => CreateError::Loop(at),
                }
            })?;
            // With follow_links, file_type() is the type of the link target.
            if !entry.file_type().is_file() {
                continue;
            }
            let len = entry.metadata().map_err(|e| CreateError::Io {
                path: entry.path().to_path_buf(),
                error: e.into(),
            })?;
            let rel = entry
                .path()
                .strip_prefix(path)
                .expect("walkdir yields paths under its root");
            let components = rel
                .components()
                .map(|c| {
                    c.as_os_str()
                        .to_str()
                        .map(str::to_string)
                        .ok_or_else(|| CreateError::NotUtf8(entry.path().to_path_buf()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            files.push((entry.path().to_path_buf(), components, len.len()));
        }
        if files.is_empty() && !opts.exclude.is_empty() {
            return Err(CreateError::AllExcluded(path.to_path_buf()));
        }
        if files.is_empty() {
            return Err(CreateError::NoFiles(path.to_path_buf()));
        }
        // mktorrent: strcmp on the whole relative path ("a-b" < "a/b").
        files.sort_by(|a, b| a.1.join("/").as_bytes().cmp(b.1.join("/").as_bytes()));
        (files, true)
    } else {
        return Err(CreateError::NotFileOrDir(path.to_path_buf()));
    };

    let mut offset = 0;
    let entries: Vec<(PathBuf, FileEntry)> = files
        .drain(..)
        .map(|(disk, components, length)| {
            let e = FileEntry {
                path: components,
                length,
                offset,
            };
            offset += length;
            (disk, e)
        })
        .collect();
    let exp = match opts.piece_exp {
        Some(n) if !(MIN_PIECE_EXP..=MAX_PIECE_EXP).contains(&n) => {
            return Err(CreateError::PieceLength(n))
        }
        Some(n) => n,
        None => auto_piece_exp(offset),
    };
    Ok(Plan {
        name,
        multi_file,
        layout: Layout::new(entries, 1 << exp),
    })
}

/// The path's last component, as mktorrent takes it (trailing slashes
/// ignored); for `.` or `..` the name of the directory they stand for.
fn default_name(path: &Path) -> Result<String, CreateError> {
    let last = match path.file_name() {
        Some(n) => n.to_owned(),
        None => {
            let abs = std::fs::canonicalize(path).map_err(|error| CreateError::Io {
                path: path.to_path_buf(),
                error,
            })?;
            abs.file_name()
                .map(|n| n.to_owned())
                .ok_or_else(|| CreateError::BadName {
                    name: path.display().to_string(),
                    reason: "the root directory has no name; give one with -n",
                })?
        }
    };
    last.into_string()
        .map_err(|_| CreateError::NotUtf8(path.to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Metainfo;

    #[test]
    fn globs() {
        let m = |p: &str, t: &str| glob_match(p.as_bytes(), t.as_bytes());
        assert!(m("*.nfo", "a.nfo") && m("*.nfo", ".nfo") && !m("*.nfo", "a.nfo.txt"));
        assert!(m(".DS_Store", ".DS_Store") && !m(".DS_Store", "x.DS_Store"));
        assert!(m("Thumbs.db", "Thumbs.db") && m("?humbs.db", "thumbs.db"));
        assert!(m("[Tt]humbs.db", "thumbs.db") && !m("[!Tt]humbs.db", "thumbs.db"));
        assert!(m("cd[1-3]", "cd2") && !m("cd[1-3]", "cd4") && m("x[", "x["));
        assert!(m("extras/*", "extras/a.jpg") && !m("extras/*", "extras/b/a.jpg"));
        assert!(m("extras/**", "extras/b/a.jpg") && m("**/a.jpg", "x/y/a.jpg"));
        assert!(m("**/a.jpg", "a.jpg") && !m("*", "a/b"));
        let rel = |s: &str| s.split('/').map(String::from).collect::<Vec<_>>();
        let globs = ["*.nfo".to_string(), ".git".into(), "extras/*.jpg".into()];
        assert!(excluded(&rel("a/b/info.nfo"), &globs));
        assert!(excluded(&rel(".git/objects/ab"), &globs));
        assert!(excluded(&rel("extras/x.jpg"), &globs));
        assert!(!excluded(&rel("b/extras/x.jpg"), &globs));
        assert!(!excluded(&rel("a/b/movie.mkv"), &globs));
    }

    #[test]
    fn exclusions_leave_out_files_and_whole_directories() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("album");
        std::fs::create_dir_all(root.join(".git/objects")).unwrap();
        std::fs::create_dir_all(root.join("cd1")).unwrap();
        std::fs::write(root.join(".git/objects/x"), b"git").unwrap();
        std::fs::write(root.join("cd1/01.flac"), vec![1u8; 5000]).unwrap();
        std::fs::write(root.join("cd1/.DS_Store"), b"mac").unwrap();
        std::fs::write(root.join("Thumbs.db"), b"win").unwrap();
        let plan_with = |exclude: &[&str]| {
            let opts = CreateOptions {
                exclude: exclude.iter().map(|s| s.to_string()).collect(),
                ..CreateOptions::default()
            };
            plan(&root, &opts).map(|p| {
                p.layout
                    .files
                    .iter()
                    .map(|f| f.path.join("/"))
                    .collect::<Vec<_>>()
            })
        };
        // Nothing is left out unless asked, as mktorrent does.
        assert_eq!(plan_with(&[]).unwrap().len(), 4);
        assert_eq!(
            plan_with(&[".git", ".DS_Store", "Thumbs.db"]).unwrap(),
            ["cd1/01.flac"]
        );
        assert!(matches!(
            plan_with(&["*"]),
            Err(CreateError::AllExcluded(_))
        ));
    }

    #[test]
    fn auto_piece_length_rule() {
        assert_eq!(auto_piece_exp(0), 15);
        assert_eq!(auto_piece_exp(1500 << 15), 15);
        assert_eq!(auto_piece_exp((1500 << 15) + 1), 16);
        assert_eq!(auto_piece_exp(1 << 30), 20);
        assert_eq!(auto_piece_exp(1 << 40), 24);
    }

    #[test]
    fn creates_a_valid_canonical_multi_file_torrent() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("content");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/x"), vec![5u8; 70_000]).unwrap();
        std::fs::write(root.join("a-b"), b"dash sorts before slash").unwrap();
        std::fs::write(root.join(".hidden"), b"").unwrap();
        let opts = CreateOptions {
            announce: vec![
                vec!["http://a/".into(), "http://b/".into()],
                vec!["http://c/".into()],
            ],
            web_seeds: vec!["http://w/".into()],
            piece_exp: Some(15),
            private: true,
            source: Some("S".into()),
            ..Default::default()
        };
        let plan = plan(&root, &opts).unwrap();
        assert_eq!(plan.name, "content");
        let hashing = HashOptions {
            threads: 2,
            mmap: false,
        };
        let bytes = plan.build(&opts, hashing, &|_| {}).unwrap();
        // Canonical: decoding and re-encoding changes nothing.
        assert_eq!(crate::bencode::decode(&bytes).unwrap().encode(), bytes);
        let m = Metainfo::from_bytes(&bytes).unwrap();
        let paths: Vec<String> = m.info.files().iter().map(|f| f.display_path()).collect();
        assert_eq!(paths, [".hidden", "a-b", "a/b/x"]);
        assert_eq!(m.trackers().len(), 2);
        assert_eq!(m.announce(), Some("http://a/"));
        assert!(m.info.is_private());
        assert_eq!(m.info.piece_count(), 3);
        let report = crate::pieces::verify(&m.info, &root, hashing, &|_| {});
        assert!(report.all_ok(), "{report:?}");
    }

    #[test]
    fn refuses_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let o = CreateOptions::default();
        assert!(matches!(
            plan(&dir.path().join("nope"), &o),
            Err(CreateError::Io { .. })
        ));
        assert!(matches!(plan(dir.path(), &o), Err(CreateError::NoFiles(_))));
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let bad_exp = CreateOptions {
            piece_exp: Some(14),
            ..Default::default()
        };
        assert!(matches!(
            plan(dir.path(), &bad_exp),
            Err(CreateError::PieceLength(14))
        ));
        let bad_name = CreateOptions {
            name: Some("../x".into()),
            ..Default::default()
        };
        assert!(matches!(
            plan(dir.path(), &bad_name),
            Err(CreateError::BadName { .. })
        ));
    }
}
