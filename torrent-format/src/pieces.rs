//! Piece hashing over files on disk: the engine behind `create` and `verify`
//! (and, later, the client's re-check).
//!
//! Work is spread over plain threads: each takes the next piece index from a
//! shared counter, reads that piece's file ranges with positional reads
//! (`pread`) in chunks of at most [`CHUNK`] bytes and hashes them. Reading and
//! hashing of different pieces overlap across threads, and memory stays at one
//! chunk per thread whatever the torrent's size.
//!
//! Where the CPU has AVX-512 ([`sha1_mb::available`]) a thread takes sixteen
//! consecutive pieces at a time instead and hashes those of full length side
//! by side with [`Sha1x16`], feeding each lane [`MB_STEP`] bytes per step:
//! straight from the memory map when that stretch of the piece lies in one
//! mapped file, else copied into the lane's sixteenth of the same one-chunk
//! buffer. That is several times the single-stream speed of SHA-1 per core.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use sha1::{Digest, Sha1};

use crate::metainfo::{FileEntry, Info, Segment};
use crate::sha1_mb::{self, Sha1x16, LANES};

/// Largest read a hashing thread makes at once.
pub const CHUNK: usize = 1 << 20;

/// Bytes each lane of a multi-buffer batch takes per step: the lanes' copy
/// buffers together are one [`CHUNK`].
pub const MB_STEP: usize = CHUNK / LANES;

/// Fewest full-length pieces worth hashing side by side: all sixteen lanes
/// together take about as long as 4.6 pieces hashed one at a time with
/// SHA-NI, so from five pieces on the unused lanes (which repeat lane 0's
/// data) are paid for.
pub const MB_MIN_PIECES: usize = 5;

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
    let multi = sha1_mb::available();
    // Pieces taken from the counter at once.
    let batch = if multi { LANES } else { 1 };
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut worker = Worker {
                    layout,
                    files: Files {
                        layout,
                        mmap: opts.mmap,
                        // Each lane may be inside a different file.
                        max_open: if multi { LANES + 1 } else { 1 },
                        open: Vec::new(),
                    },
                    buf: vec![0; CHUNK.min(layout.piece_length as usize)],
                };
                let mut done = Vec::new();
                let stop = || fail_fast && failed.load(Ordering::Relaxed);
                let mut finish = |i: usize, r: Result<[u8; 20], ReadError>| {
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    progress(layout.piece_size(i));
                    done.push((i, r));
                };
                'work: loop {
                    let first = next.fetch_add(batch, Ordering::Relaxed);
                    if first >= count || stop() {
                        break;
                    }
                    let taken = first..(first + batch).min(count);
                    let mut single: Vec<usize> = taken.filter(|&i| wanted(i)).collect();
                    if multi {
                        let full = |&i: &usize| layout.piece_size(i) == layout.piece_length;
                        let lanes: Vec<usize> = single.iter().copied().filter(full).collect();
                        if lanes.len() >= MB_MIN_PIECES {
                            // On a read error, the pieces are hashed one by
                            // one below, which gives each its own result.
                            if let Some(hashes) = worker.hash_batch(&lanes) {
                                for (&i, h) in lanes.iter().zip(hashes) {
                                    finish(i, Ok(h));
                                }
                                single.retain(|i| !lanes.contains(i));
                            }
                        }
                    }
                    for i in single {
                        if stop() {
                            break 'work;
                        }
                        finish(i, worker.hash_piece(i));
                    }
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

/// Where a worker reads one file from.
enum Source {
    /// The whole file, mapped (the map outlives the closed descriptor).
    Map(Rc<memmap2::Mmap>),
    File(File),
}

/// A worker's recently used files, least recently used first. Pieces are
/// mostly consecutive, so one is enough for pieces hashed one at a time; the
/// lanes of a batch may each be in a different file.
struct Files<'a> {
    layout: &'a Layout,
    mmap: bool,
    max_open: usize,
    open: Vec<(usize, Source)>,
}

impl Files<'_> {
    /// File `index`, opened (and mapped if large enough and allowed).
    fn get(&mut self, index: usize) -> Result<&Source, ReadError> {
        if let Some(pos) = self.open.iter().position(|(i, _)| *i == index) {
            let entry = self.open.remove(pos);
            self.open.push(entry);
        } else {
            if self.open.len() >= self.max_open {
                self.open.remove(0); // closes (and unmaps) it
            }
            let source = match self.open_file(index) {
                Ok(s) => s,
                Err(ReadError::Io { error, .. })
                    if error.kind() != io::ErrorKind::NotFound && !self.open.is_empty() =>
                {
                    // Perhaps out of descriptors: close ours and try again.
                    self.open.clear();
                    self.open_file(index)?
                }
                Err(e) => return Err(e),
            };
            self.open.push((index, source));
        }
        // Not empty: the file was found in it or pushed just above.
        Ok(&self.open[self.open.len() - 1].1)
    }

    fn open_file(&self, index: usize) -> Result<Source, ReadError> {
        let path = &self.layout.paths[index];
        let io = |error| ReadError::Io {
            path: path.clone(),
            error,
        };
        let file = File::open(path).map_err(io)?;
        if self.mmap && self.layout.files[index].length >= MMAP_MIN {
            // SAFETY: the map is only read, and only within its length;
            // truncation by another process while mapped raises SIGBUS,
            // which `HashOptions::mmap`'s caller has promised to handle.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
            Ok(Source::Map(Rc::new(map)))
        } else {
            Ok(Source::File(file))
        }
    }
}

struct Worker<'a> {
    layout: &'a Layout,
    files: Files<'a>,
    buf: Vec<u8>,
}

/// Reads `buf.len()` bytes at `offset` of `file` (layout file `index`).
fn read_at(
    layout: &Layout,
    index: usize,
    source: &Source,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), ReadError> {
    let path = &layout.paths[index];
    let short = || ReadError::Short { path: path.clone() };
    match source {
        Source::Map(map) => {
            // The map is as long as the file was when mapped.
            let bytes = usize::try_from(offset)
                .ok()
                .and_then(|start| map.get(start..start.checked_add(buf.len())?))
                .ok_or_else(short)?;
            buf.copy_from_slice(bytes);
        }
        Source::File(file) => file.read_exact_at(buf, offset).map_err(|error| {
            if error.kind() == io::ErrorKind::UnexpectedEof {
                short()
            } else {
                ReadError::Io {
                    path: path.clone(),
                    error,
                }
            }
        })?,
    }
    Ok(())
}

/// Where one lane's bytes for the current step are.
enum LaneData {
    /// The step's bytes from `start` on in a mapped file.
    Map { map: Rc<memmap2::Mmap>, start: u64 },
    /// The lane's part of the worker's buffer.
    Buf,
}

impl Worker<'_> {
    fn hash_piece(&mut self, index: usize) -> Result<[u8; 20], ReadError> {
        let mut hasher = Sha1::new();
        let layout = self.layout;
        for seg in layout.piece_segments(index) {
            let source = self.files.get(seg.file)?;
            if let Source::Map(map) = source {
                let path = &layout.paths[seg.file];
                let bytes = usize::try_from(seg.file_offset)
                    .ok()
                    .zip(usize::try_from(seg.file_offset + seg.len).ok())
                    .and_then(|(start, end)| map.get(start..end))
                    .ok_or_else(|| ReadError::Short { path: path.clone() })?;
                hasher.update(bytes);
                continue;
            }
            let mut offset = seg.file_offset;
            let end = seg.file_offset + seg.len;
            while offset < end {
                let n = (end - offset).min(self.buf.len() as u64) as usize;
                let buf = &mut self.buf[..n];
                read_at(layout, seg.file, source, offset, buf)?;
                hasher.update(&*buf);
                offset += n as u64;
            }
        }
        Ok(hasher.finalize().into())
    }

    /// Hashes `pieces` (at most [`LANES`], all of full length) side by side,
    /// [`MB_STEP`] bytes of each at a time; lanes beyond `pieces.len()`
    /// repeat lane 0's data and are dropped. `None` on the first read error
    /// (or without AVX-512): the caller then hashes the pieces one by one.
    fn hash_batch(&mut self, pieces: &[usize]) -> Option<Vec<[u8; 20]>> {
        let layout = self.layout;
        let mut hasher = Sha1x16::new()?;
        let pieces = pieces.get(..LANES).unwrap_or(pieces);
        let segments: Vec<Vec<Segment>> =
            pieces.iter().map(|&i| layout.piece_segments(i)).collect();
        let step = MB_STEP.min(layout.piece_length as usize);
        if self.buf.len() < LANES * step {
            self.buf.resize(LANES * step, 0);
        }
        // Each lane's position: index of its current segment, offset in it.
        let mut at = vec![(0usize, 0u64); pieces.len()];
        let mut lanes: Vec<LaneData> = pieces.iter().map(|_| LaneData::Buf).collect();
        let mut done = 0u64;
        while done < layout.piece_length {
            let n = (layout.piece_length - done).min(step as u64) as usize;
            let lane_state = segments.iter().zip(&mut at).zip(&mut lanes);
            for (((segs, (si, so)), lane), buf) in lane_state.zip(self.buf.chunks_mut(step)) {
                // Straight from the map when this step lies in one mapped segment.
                if let Some(seg) = segs.get(*si).filter(|s| s.len - *so >= n as u64) {
                    if let Source::Map(map) = self.files.get(seg.file).ok()? {
                        *lane = LaneData::Map {
                            map: Rc::clone(map),
                            start: seg.file_offset + *so,
                        };
                        *so += n as u64;
                        if *so == seg.len {
                            (*si, *so) = (*si + 1, 0);
                        }
                        continue;
                    }
                }
                *lane = LaneData::Buf;
                let mut filled = 0;
                while filled < n {
                    // None only for a layout whose files leave gaps.
                    let seg = segs.get(*si)?;
                    let take = ((seg.len - *so) as usize).min(n - filled);
                    let source = self.files.get(seg.file).ok()?;
                    let dst = &mut buf[filled..filled + take];
                    read_at(layout, seg.file, source, seg.file_offset + *so, dst).ok()?;
                    filled += take;
                    *so += take as u64;
                    if *so == seg.len {
                        (*si, *so) = (*si + 1, 0);
                    }
                }
            }
            let mut slices: [&[u8]; LANES] = [&[]; LANES];
            for ((slice, lane), buf) in slices.iter_mut().zip(&lanes).zip(self.buf.chunks(step)) {
                *slice = match lane {
                    LaneData::Buf => buf.get(..n)?,
                    // The map is as long as the file was when mapped.
                    LaneData::Map { map, start } => usize::try_from(*start)
                        .ok()
                        .and_then(|start| map.get(start..start.checked_add(n)?))?,
                };
            }
            let first = slices[0];
            for slice in &mut slices[pieces.len()..] {
                *slice = first;
            }
            hasher.update(&slices).ok()?;
            done += n as u64;
        }
        Some(hasher.finish()[..pieces.len()].to_vec())
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
/// [`Layout::for_torrent`]). Pieces touching a missing file, or running past
/// the end of a short one, count as bad without being read; the pieces a
/// short file still holds wholly are read like any other.
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
        // A too-long file still holds the expected bytes at the front, and
        // a short one those pieces that lie within what is left of it.
        let left = match state {
            FileState::Ok | FileState::TooLong { .. } => continue,
            FileState::Short { actual } => *actual,
            _ => 0,
        };
        let within = info.file_pieces_within(i, left);
        for p in info.file_pieces(i) {
            if !within.contains(&p) {
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

    /// Pseudo-random bytes.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Files of uneven sizes (some mapped, some read, one empty) in `dir`,
    /// laid out with `piece_length`; returns the layout and all the bytes.
    fn uneven_files(dir: &Path, piece_length: u64) -> (Layout, Vec<u8>) {
        let sizes = [
            1_100_000, 7, 0, 300_001, 2_098_151, 65_536, 50_000, 1_500_000, 33,
        ];
        let mut all = Vec::new();
        let mut files = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let name = format!("f{i}");
            let data = noise(size, i as u64 + 1);
            std::fs::write(dir.join(&name), &data).unwrap();
            files.push((dir.join(&name), entry(&name, size as u64, all.len() as u64)));
            all.extend_from_slice(&data);
        }
        (Layout::new(files, piece_length), all)
    }

    #[test]
    fn many_pieces_across_uneven_files_match_sha1() {
        if !crate::sha1_mb::available() {
            eprintln!("note: no AVX-512 here, so only the one-piece-at-a-time path runs");
        }
        let dir = tempfile::tempdir().unwrap();
        // Powers of two, one that is not a multiple of 64 and one of two
        // steps per lane; each gives well over 32 pieces.
        for piece_length in [16384, 20_000, 2 * MB_STEP as u64] {
            let (layout, all) = uneven_files(dir.path(), piece_length);
            assert!(layout.piece_count() > 32);
            let want: Vec<[u8; 20]> = all
                .chunks(piece_length as usize)
                .map(|c| Sha1::digest(c).into())
                .collect();
            for (threads, mmap) in [(1, false), (1, true), (3, true), (2, false)] {
                let opts = HashOptions { threads, mmap };
                let total = AtomicUsize::new(0);
                let progress = |n| {
                    total.fetch_add(n as usize, Ordering::Relaxed);
                };
                let got = hash_pieces(&layout, opts, false, &|_| true, &progress);
                let got: Vec<[u8; 20]> = got.into_iter().map(|r| r.unwrap().unwrap()).collect();
                assert_eq!(got, want, "piece length {piece_length}, {opts:?}");
                assert_eq!(total.into_inner(), all.len());
                // Every third piece only: batches with unused lanes.
                let some = hash_pieces(&layout, opts, false, &|i| i % 3 == 1, &|_| {});
                for (i, r) in some.into_iter().enumerate() {
                    match r {
                        Some(r) => assert!(i % 3 == 1 && r.unwrap() == want[i]),
                        None => assert!(i % 3 != 1),
                    }
                }
            }
        }
    }

    #[test]
    fn a_short_file_fails_only_its_own_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let piece_length = 16384;
        let (layout, all) = uneven_files(dir.path(), piece_length);
        // f3 (bytes 1_100_007..1_400_008) loses its last 100_000 bytes.
        let f3 = &layout.files[3];
        let lost = f3.offset + f3.length - 100_000..f3.offset + f3.length;
        let data = std::fs::read(&layout.paths[3]).unwrap();
        std::fs::write(&layout.paths[3], &data[..data.len() - 100_000]).unwrap();
        for (threads, mmap) in [(1, false), (2, true)] {
            let opts = HashOptions { threads, mmap };
            let got = hash_pieces(&layout, opts, false, &|_| true, &|_| {});
            for (i, r) in got.into_iter().enumerate() {
                let start = i as u64 * piece_length;
                let end = start + layout.piece_size(i);
                if start < lost.end && lost.start < end {
                    assert!(matches!(r, Some(Err(ReadError::Short { .. }))), "piece {i}");
                } else {
                    let want: [u8; 20] = Sha1::digest(&all[start as usize..end as usize]).into();
                    assert_eq!(r.unwrap().unwrap(), want, "piece {i}");
                }
            }
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
