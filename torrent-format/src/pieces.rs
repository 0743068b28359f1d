//! Piece hashing over files on disk: the engine behind `create` and `verify`
//! (and, later, the client's re-check).
//!
//! Work is spread over plain threads: each takes the next piece index from a
//! shared counter, reads that piece's file ranges with positional reads
//! (`pread`) in chunks of at most [`CHUNK`] bytes and hashes them. Reading and
//! hashing of different pieces overlap across threads, and memory stays at one
//! chunk per thread whatever the torrent's size.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use sha1::{Digest, Sha1};

use crate::metainfo::{FileEntry, Info, Segment};

/// Largest read a hashing thread makes at once.
pub const CHUNK: usize = 1 << 20;

/// Files on disk laid end to end, cut into pieces.
#[derive(Debug, Clone)]
pub struct Layout {
    pub files: Vec<FileEntry>,
    pub paths: Vec<PathBuf>,
    pub piece_length: u64,
    pub total_length: u64,
}

impl Layout {
    /// `files` in torrent order with their on-disk paths.
    pub fn new(files: Vec<(PathBuf, FileEntry)>, piece_length: u64) -> Layout {
        let total_length = files.last().map_or(0, |(_, f)| f.offset + f.length);
        let (paths, files) = files.into_iter().unzip();
        Layout {
            files,
            paths,
            piece_length,
            total_length,
        }
    }

    /// The layout of `info`'s content at `content`: the file itself for a
    /// single-file torrent, the top directory for a multi-file one.
    pub fn for_torrent(info: &Info, content: &Path) -> Layout {
        let files = info
            .files()
            .iter()
            .map(|f| {
                let path = if info.is_multi_file() {
                    f.path.iter().fold(content.to_path_buf(), |p, c| p.join(c))
                } else {
                    content.to_path_buf()
                };
                (path, f.clone())
            })
            .collect();
        Layout::new(files, info.piece_length())
    }

    pub fn piece_count(&self) -> usize {
        self.total_length.div_ceil(self.piece_length) as usize
    }

    pub fn piece_size(&self, index: usize) -> u64 {
        piece_size(self.piece_length, self.total_length, index)
    }

    pub fn piece_segments(&self, index: usize) -> Vec<Segment> {
        segments(&self.files, self.piece_length, self.total_length, index)
    }
}

pub(crate) fn piece_size(piece_length: u64, total_length: u64, index: usize) -> u64 {
    let start = index as u64 * piece_length;
    piece_length.min(total_length.saturating_sub(start))
}

/// The file ranges that make up piece `index`, in order; empty files
/// contribute nothing.
pub(crate) fn segments(
    files: &[FileEntry],
    piece_length: u64,
    total_length: u64,
    index: usize,
) -> Vec<Segment> {
    let start = index as u64 * piece_length;
    let mut left = piece_size(piece_length, total_length, index);
    let mut out = Vec::new();
    let mut i = files.partition_point(|f| f.offset + f.length <= start);
    let mut pos = start;
    while left > 0 && i < files.len() {
        let f = &files[i];
        if f.length > 0 {
            let file_offset = pos - f.offset;
            let len = left.min(f.length - file_offset);
            out.push(Segment {
                file: i,
                file_offset,
                len,
            });
            left -= len;
            pos += len;
        }
        i += 1;
    }
    out
}

/// Why a piece could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    #[error("{} is shorter than expected (it changed while being read?)", path.display())]
    Short { path: PathBuf },
}

/// One piece's outcome: not hashed, hashed, or unreadable.
pub type PieceResult = Option<Result<[u8; 20], ReadError>>;

/// How to read and hash.
#[derive(Debug, Clone, Copy)]
pub struct HashOptions {
    /// Worker threads.
    pub threads: usize,
    /// Map files of at least [`MMAP_MIN`] bytes into memory instead of
    /// copying them through a buffer: no copy, so faster when the data is in
    /// the page cache. A file truncated while it is mapped raises SIGBUS in
    /// the reading thread, so only a caller that handles SIGBUS (the `shoal`
    /// binary exits with a clear message) should set this.
    pub mmap: bool,
}

/// Files smaller than this are always read, never mapped.
pub const MMAP_MIN: u64 = 1 << 20;

impl Default for HashOptions {
    fn default() -> Self {
        HashOptions {
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mmap: false,
        }
    }
}

/// Hashes the pieces whose index `wanted` accepts. Returns one entry per
/// piece: `None` for pieces not wanted (or not reached after a failure with
/// `fail_fast`), otherwise the hash or why the piece could not be read.
/// `progress` is called with the byte count of each piece done.
pub fn hash_pieces(
    layout: &Layout,
    opts: HashOptions,
    fail_fast: bool,
    wanted: &(dyn Fn(usize) -> bool + Sync),
    progress: &(dyn Fn(u64) + Sync),
) -> Vec<PieceResult> {
    let count = layout.piece_count();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<PieceResult>> = Mutex::new((0..count).map(|_| None).collect());
    let threads = opts.threads.clamp(1, count.max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut worker = Worker {
                    layout,
                    mmap: opts.mmap,
                    buf: vec![0; CHUNK.min(layout.piece_length as usize)],
                    open: None,
                };
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count || (fail_fast && failed.load(Ordering::Relaxed)) {
                        break;
                    }
                    if !wanted(i) {
                        continue;
                    }
                    let r = worker.hash_piece(i);
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    progress(layout.piece_size(i));
                    done.push((i, r));
                }
                // A poisoned lock means another worker panicked; the scope
                // re-raises that panic, so our results do not matter then.
                if let Ok(mut all) = results.lock() {
                    for (i, r) in done {
                        all[i] = Some(r);
                    }
                }
            });
        }
    });
    results.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// A worker's one open file (pieces are mostly consecutive, so one is enough).
struct OpenFile {
    index: usize,
    file: File,
    map: Option<memmap2::Mmap>,
}

struct Worker<'a> {
    layout: &'a Layout,
    mmap: bool,
    buf: Vec<u8>,
    open: Option<OpenFile>,
}

impl Worker<'_> {
    /// Makes file `index` the open one.
    fn open(&mut self, index: usize) -> Result<(), ReadError> {
        if self.open.as_ref().map(|o| o.index) != Some(index) {
            self.open = None; // close (and unmap) the previous file first
            let path = &self.layout.paths[index];
            let io = |error| ReadError::Io {
                path: path.clone(),
                error,
            };
            let file = File::open(path).map_err(io)?;
            let map = if self.mmap && self.layout.files[index].length >= MMAP_MIN {
                // SAFETY: the map is only read, and only within its length;
                // truncation by another process while mapped raises SIGBUS,
                // which `HashOptions::mmap`'s caller has promised to handle.
                Some(unsafe { memmap2::Mmap::map(&file) }.map_err(io)?)
            } else {
                None
            };
            self.open = Some(OpenFile { index, file, map });
        }
        Ok(())
    }

    fn hash_piece(&mut self, index: usize) -> Result<[u8; 20], ReadError> {
        let mut hasher = Sha1::new();
        let layout = self.layout;
        for seg in layout.piece_segments(index) {
            let path = &layout.paths[seg.file];
            let short = || ReadError::Short { path: path.clone() };
            self.open(seg.file)?;
            let Some(open) = &self.open else {
                unreachable!("opened just above")
            };
            if let Some(map) = &open.map {
                let end = seg.file_offset + seg.len;
                // The map is as long as the file was when mapped.
                let bytes = map
                    .get(seg.file_offset as usize..end as usize)
                    .ok_or_else(short)?;
                hasher.update(bytes);
                continue;
            }
            let mut offset = seg.file_offset;
            let end = seg.file_offset + seg.len;
            while offset < end {
                let n = (end - offset).min(self.buf.len() as u64) as usize;
                let buf = &mut self.buf[..n];
                open.file.read_exact_at(buf, offset).map_err(|error| {
                    if error.kind() == io::ErrorKind::UnexpectedEof {
                        short()
                    } else {
                        ReadError::Io {
                            path: path.clone(),
                            error,
                        }
                    }
                })?;
                hasher.update(&*buf);
                offset += n as u64;
            }
        }
        Ok(hasher.finalize().into())
    }
}

/// What `verify` found for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    Ok,
    Missing,
    NotAFile,
    Short {
        actual: u64,
    },
    TooLong {
        actual: u64,
    },
    /// Right size, but `bad_pieces` of its pieces do not match.
    Corrupt {
        bad_pieces: usize,
    },
    Unreadable(String),
}

#[derive(Debug)]
pub struct VerifyReport {
    /// One entry per piece: does the data on disk match its hash?
    pub piece_ok: Vec<bool>,
    /// One entry per file, in torrent order.
    pub files: Vec<FileState>,
}

impl VerifyReport {
    pub fn all_ok(&self) -> bool {
        self.piece_ok.iter().all(|&ok| ok) && self.files.iter().all(|f| *f == FileState::Ok)
    }
    pub fn good_pieces(&self) -> usize {
        self.piece_ok.iter().filter(|&&ok| ok).count()
    }
}

/// Checks every piece of `info`'s content at `content` (see
/// [`Layout::for_torrent`]). Pieces touching a missing or wrongly sized file
/// count as bad without being read.
pub fn verify(
    info: &Info,
    content: &Path,
    opts: HashOptions,
    progress: &(dyn Fn(u64) + Sync),
) -> VerifyReport {
    let layout = Layout::for_torrent(info, content);
    let mut files: Vec<FileState> = layout
        .paths
        .iter()
        .zip(&layout.files)
        .map(|(path, f)| match std::fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => FileState::Missing,
            Err(e) => FileState::Unreadable(e.to_string()),
            Ok(m) if !m.is_file() => FileState::NotAFile,
            Ok(m) if m.len() < f.length => FileState::Short { actual: m.len() },
            Ok(m) if m.len() > f.length => FileState::TooLong { actual: m.len() },
            Ok(_) => FileState::Ok,
        })
        .collect();
    let mut readable = vec![true; layout.piece_count()];
    for (i, state) in files.iter().enumerate() {
        // A too-long file still holds the expected bytes at the front.
        if !matches!(state, FileState::Ok | FileState::TooLong { .. }) {
            for p in info.file_pieces(i) {
                readable[p] = false;
            }
        }
    }
    let hashes = hash_pieces(&layout, opts, false, &|i| readable[i], progress);
    let piece_ok: Vec<bool> = hashes
        .iter()
        .zip(info.piece_hashes())
        .map(|(h, want)| matches!(h, Some(Ok(h)) if h == want))
        .collect();
    for (i, state) in files.iter_mut().enumerate() {
        if *state == FileState::Ok {
            // Only pieces that were read and did not match: a piece skipped
            // because a neighbouring file is missing says nothing about this one.
            let bad = info
                .file_pieces(i)
                .filter(|&p| readable[p] && !piece_ok[p])
                .count();
            if bad > 0 {
                *state = FileState::Corrupt { bad_pieces: bad };
            }
        }
    }
    VerifyReport { piece_ok, files }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, length: u64, offset: u64) -> FileEntry {
        FileEntry {
            path: vec![name.into()],
            length,
            offset,
        }
    }

    #[test]
    fn hashes_pieces_across_file_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let a: Vec<u8> = (0..100u8).collect();
        let b: Vec<u8> = (100..150u8).collect();
        std::fs::write(dir.path().join("a"), &a).unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        std::fs::write(dir.path().join("b"), &b).unwrap();
        let layout = Layout::new(
            vec![
                (dir.path().join("a"), entry("a", 100, 0)),
                (dir.path().join("empty"), entry("empty", 0, 100)),
                (dir.path().join("b"), entry("b", 50, 100)),
            ],
            64,
        );
        let all = [a, b].concat();
        for (threads, mmap) in [(1, false), (2, true), (5, false)] {
            let opts = HashOptions { threads, mmap };
            let got = hash_pieces(&layout, opts, false, &|_| true, &|_| {});
            let want: Vec<[u8; 20]> = all.chunks(64).map(|c| Sha1::digest(c).into()).collect();
            let got: Vec<[u8; 20]> = got.into_iter().map(|r| r.unwrap().unwrap()).collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn reports_missing_and_short_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [1u8; 10]).unwrap();
        let layout = Layout::new(
            vec![
                (dir.path().join("a"), entry("a", 20, 0)),
                (dir.path().join("gone"), entry("gone", 20, 20)),
            ],
            16,
        );
        let opts = HashOptions {
            threads: 2,
            mmap: false,
        };
        let got = hash_pieces(&layout, opts, false, &|_| true, &|_| {});
        assert!(matches!(got[0], Some(Err(ReadError::Short { .. }))));
        assert!(matches!(
            got[1],
            Some(Err(ReadError::Short { .. }) | Err(ReadError::Io { .. }))
        ));
        assert!(matches!(got[2], Some(Err(ReadError::Io { .. }))));
        let skipped = hash_pieces(&layout, opts, false, &|i| i == 2, &|_| {});
        assert!(skipped[0].is_none() && skipped[1].is_none() && skipped[2].is_some());
    }
}
