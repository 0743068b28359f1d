//! Where a torrent's bytes live on disk: positional writes and reads of
//! blocks (crossing file boundaries as needed), piece hashing, syncing, and
//! the per-file stamps the [resume file](crate::resume) records.
//!
//! A [`Storage`] is `Send + Sync` and meant to be shared (in an `Arc`) by the
//! engine's blocking threads. Files are opened on first use and their
//! handles kept, up to [`MAX_OPEN_FILES`] at once (beyond that the one open
//! longest is closed, so a torrent of thousands of files does not run into
//! `ulimit -n`). With the file open, a [`write`](Storage::write) or
//! [`read`](Storage::read) is a binary search over the file table, a
//! short uncontended lock to take the handle, and the `pwrite`/`pread`
//! calls themselves: no allocation, no other syscall.
//!
//! # The root, and what is never followed
//!
//! The content root is the file itself for a single-file torrent and the top
//! directory for a multi-file one, as [`Layout::for_torrent`] and `shoal
//! verify` use it. The directory that holds the root (a download's `-o`
//! directory) and those above it are the caller's choice and are used as
//! given (symbolic links there are followed).
//!
//! A writable storage ([`Storage::create`]) never follows a symbolic link
//! *inside* that directory, the root included: the root is opened with
//! `openat(O_NOFOLLOW)` relative to a descriptor of its parent (`O_DIRECTORY`
//! for a multi-file torrent's top directory), every directory under it
//! relative to the one above, and the file itself with `O_NOFOLLOW`, then
//! checked to be a regular file. The path components come
//! from a validated [`Info`] (plain names, no `..`), so — race-free, since
//! nothing is looked up by path twice — writes land inside the root or
//! nowhere: a symbolic link, a file where a directory is needed or a
//! directory (FIFO, device…) where a file is needed is an error naming it.
//!
//! A read-only storage ([`Storage::open_read_only`], for seeding) opens files
//! by path, following links as `shoal create` does, and never creates,
//! extends or writes anything.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use torrent_format::metainfo::Segment;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use sha1::{Digest, Sha1};
use torrent_format::pieces::{Layout, CHUNK};
use torrent_format::Info;

/// A file as it is on disk: its length and modification time (nanoseconds
/// since the epoch). The resume file records these to tell whether a file
/// changed since its pieces were last known good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStamp {
    pub length: u64,
    pub mtime_ns: i64,
}

impl FileStamp {
    pub fn of(meta: &Metadata) -> FileStamp {
        FileStamp {
            length: meta.len(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
        }
    }
}

/// The stamp of each of `info`'s files under `root` (the content root, as for
/// [`Storage`]), `None` where there is no regular file. Taken before
/// [`Storage::create`] (which creates and extends files), this is what the
/// resume logic compares against the saved stamps.
pub fn stamps_at(info: &Info, root: &Path) -> Vec<Option<FileStamp>> {
    Layout::for_torrent(info, root)
        .paths
        .iter()
        .map(|p| stamp(p))
        .collect()
}

fn stamp(path: &Path) -> Option<FileStamp> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| FileStamp::of(&m))
}

/// Why a storage operation failed; each variant names what to look at.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An I/O call failed: `op` is e.g. "writing", `path` the file. The
    /// message ends with `error`'s, so `error` is not also given as the
    /// [`source`](std::error::Error::source): printed with its chain, the
    /// cause would appear twice.
    #[error("{op} {}: {error}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        error: io::Error,
    },
    #[error("{} is in the way: a regular file is needed there, it is a directory or special file", path.display())]
    NotAFile { path: PathBuf },
    #[error("{} is in the way: a directory is needed there", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{} is a symbolic link; shoal does not follow links inside a download (remove it, or download elsewhere)", path.display())]
    Symlink { path: PathBuf },
    #[error("{} is shorter than the torrent says (truncated, or changed by another program?)", path.display())]
    ShortFile { path: PathBuf },
    #[error("the storage is read-only (seeding); nothing may be written")]
    ReadOnly,
    #[error("piece {piece} does not exist (the torrent has {count} pieces)")]
    NoSuchPiece { piece: u32, count: usize },
    #[error("{len} bytes at offset {offset} run past the end of piece {piece} ({size} bytes)")]
    OutOfRange {
        piece: u32,
        offset: u32,
        len: u64,
        size: u64,
    },
    #[error("the file selection has {got} entries but the torrent has {expected} files")]
    WantedLength { got: usize, expected: usize },
    #[error("{} was not selected (--only), and this piece lies wholly inside it", path.display())]
    NotSelected { path: PathBuf },
}

/// Most files one [`Storage`] keeps open at once (well under the usual
/// `ulimit -n` of 1024, leaving room for sockets).
pub const MAX_OPEN_FILES: usize = 256;

/// Verified bytes gathered before their writeback is started: one
/// `sync_file_range` per piece of 16 KiB costs more than the writes
/// themselves (each starts a tiny I/O), one per few MiB does not.
pub const WRITEBACK_BATCH: u64 = 4 << 20;

/// Verified pieces whose writeback has not been started yet: per file
/// the byte range that covers them.
#[derive(Debug, Default)]
struct Writeback {
    bytes: u64,
    files: Vec<(usize, u64, u64)>,
}

impl Writeback {
    /// Takes note of a verified piece's segments (of files not parted);
    /// once `batch` bytes are gathered, the ranges to write back, one per
    /// file: `(file, from, to)`.
    fn add(
        &mut self,
        segments: impl IntoIterator<Item = Segment>,
        batch: u64,
    ) -> Option<Vec<(usize, u64, u64)>> {
        for seg in segments {
            let (lo, hi) = (seg.file_offset, seg.file_offset + seg.len);
            match self.files.iter_mut().find(|f| f.0 == seg.file) {
                Some(f) => {
                    f.1 = f.1.min(lo);
                    f.2 = f.2.max(hi);
                }
                None => self.files.push((seg.file, lo, hi)),
            }
            self.bytes += seg.len;
        }
        if self.bytes < batch {
            return None;
        }
        self.bytes = 0;
        Some(std::mem::take(&mut self.files))
    }
}

type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Most buffers handed to one `pwritev` (Linux's `IOV_MAX` is 1024).
const MAX_IOV: usize = 64;

/// `pwritev` of all of `bufs` at `at`, however many calls that takes.
fn pwritev_all(file: &File, bufs: &[&[u8]], mut at: u64) -> io::Result<()> {
    let mut left: Vec<&[u8]> = bufs.iter().copied().filter(|b| !b.is_empty()).collect();
    let mut first = 0;
    while first < left.len() {
        let slices: Vec<io::IoSlice<'_>> = left[first..]
            .iter()
            .take(MAX_IOV)
            .map(|b| io::IoSlice::new(b))
            .collect();
        let mut n = match rustix::io::pwritev(file, &slices, at) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        at += n as u64;
        while n > 0 {
            let b = left[first];
            if n >= b.len() {
                n -= b.len();
                first += 1;
            } else {
                left[first] = &b[n..];
                n = 0;
            }
        }
    }
    Ok(())
}

fn io_err(path: &Path, op: &'static str, error: io::Error) -> StorageError {
    StorageError::Io {
        path: path.to_path_buf(),
        op,
        error,
    }
}

/// One file of the torrent.
struct Slot {
    path: PathBuf,
    /// Where the file starts in the torrent's byte stream, and its length.
    start: u64,
    len: u64,
    /// The open handle, if any. An `Arc` so that closing it to make room
    /// never waits for, nor disturbs, I/O in progress on another thread.
    file: Mutex<Option<Arc<File>>>,
    /// Written to since the last [`Storage::sync`].
    dirty: AtomicBool,
    /// Not selected and missing at the start: the bytes of it that pieces
    /// shared with other files need live in the part file ([`Parts`]).
    parted: bool,
}

/// The part file, `OUT/.shoal/<info hash>.parts` (as libtorrent's partfile):
/// where a download with a file selection keeps the bytes of files not
/// selected that its pieces need, so that those files are never created.
/// Piece `shared[n]` (a piece spanning more than one file) has bytes
/// `n * piece length ..` of it, at the same offsets as in the piece; only
/// the parts of files not selected are ever written there, so the file
/// stays sparse and no larger than the shared pieces. Its layout does not
/// depend on the selection.
struct Parts {
    path: PathBuf,
    writable: bool,
    piece_len: u64,
    shared: Vec<u32>,
    file: Mutex<Option<Arc<File>>>,
    dirty: AtomicBool,
}

impl Parts {
    fn new(info: &Info, path: PathBuf, writable: bool) -> Parts {
        let piece_len = info.piece_length();
        let mut shared: Vec<u32> = info
            .files()
            .iter()
            .scan(0u64, |start, f| {
                let at = *start;
                *start += f.length;
                Some((at, f.length))
            })
            .filter(|&(at, len)| len > 0 && at % piece_len != 0)
            // Piece indexes fit u32 (the wire numbers them so).
            .map(|(at, _)| (at / piece_len) as u32)
            .collect();
        shared.dedup();
        Parts {
            path,
            writable,
            piece_len,
            shared,
            file: Mutex::new(None),
            dirty: AtomicBool::new(false),
        }
    }

    /// Where byte `pos` of the torrent (in a file not selected) is kept.
    fn offset(&self, pos: u64) -> Option<u64> {
        let piece = u32::try_from(pos / self.piece_len).ok()?;
        let slot = self.shared.binary_search(&piece).ok()? as u64;
        Some(slot * self.piece_len + pos % self.piece_len)
    }

    /// The part file, opened (created when missing and `create`) in the
    /// state directory without following a link.
    fn handle(&self, create: bool) -> Result<Arc<File>> {
        let mut held = lock(&self.file);
        if let Some(f) = held.as_ref() {
            return Ok(Arc::clone(f));
        }
        let create = create && self.writable;
        let dir = crate::resume::state_dir(&self.path, create)?;
        let name = self.path.file_name().unwrap_or(self.path.as_os_str());
        let access = if self.writable {
            OFlags::RDWR
        } else {
            OFlags::RDONLY
        };
        let mut flags = access | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        if create {
            flags |= OFlags::CREATE;
        }
        let fd = rustix::fs::openat(&dir, name, flags, Mode::from_raw_mode(0o666))
            .map_err(|e| in_the_way(&self.path, false, "opening", e))?;
        let file = File::from(fd);
        let meta = file
            .metadata()
            .map_err(|e| io_err(&self.path, "opening", e))?;
        if !meta.is_file() {
            return Err(StorageError::NotAFile {
                path: self.path.clone(),
            });
        }
        let file = Arc::new(file);
        *held = Some(Arc::clone(&file));
        Ok(file)
    }
}

enum Access {
    ReadOnly,
    /// Files are opened relative to `base` (the root directory, or a
    /// single-file torrent's parent directory), following no link.
    Write {
        base: OwnedFd,
        base_path: PathBuf,
    },
}

/// A torrent's files on disk. See the module documentation.
pub struct Storage {
    info: Arc<Info>,
    root: PathBuf,
    slots: Vec<Slot>,
    access: Access,
    /// The open files, first opened first; held while opening one, so each
    /// is opened once.
    open: Mutex<VecDeque<usize>>,
    max_open: usize,
    /// Read buffers for hashing, reused across calls and threads.
    bufs: Mutex<Vec<Vec<u8>>>,
    /// Verified pieces not yet handed to writeback.
    writeback: Mutex<Writeback>,
    /// The files selected (`None`: all).
    selected: Option<Vec<bool>>,
    /// Set when some file is `parted`.
    parts: Option<Parts>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("root", &self.root)
            .field("files", &self.slots.len())
            .field("writable", &matches!(self.access, Access::Write { .. }))
            .finish()
    }
}

impl Storage {
    /// Prepares `info`'s files under `root` for downloading: creates the
    /// directories and every file whose `wanted[i]` is true (`None`: all),
    /// empty ones included, keeping any data already there, and extends
    /// shorter files to their full length (sparse). A longer file is left as
    /// it is. Files not wanted are never created: those already there are
    /// used as they are, and the bytes of missing ones that pieces shared
    /// with wanted files need go to the part file ([`part_path`]: the
    /// state directory `.shoal` beside `root`).
    ///
    /// For the resume logic, take [`stamps_at`] before calling this.
    pub fn create(info: Arc<Info>, root: PathBuf, wanted: Option<Vec<bool>>) -> Result<Storage> {
        Storage::create_with(info, root, wanted, MAX_OPEN_FILES)
    }

    fn create_with(
        info: Arc<Info>,
        root: PathBuf,
        wanted: Option<Vec<bool>>,
        max_open: usize,
    ) -> Result<Storage> {
        let count = info.files().len();
        if let Some(w) = &wanted {
            if w.len() != count {
                return Err(StorageError::WantedLength {
                    got: w.len(),
                    expected: count,
                });
            }
        }
        // The directory that holds the root is the caller's, used as given.
        let parent = parent_of(&root);
        if let Err(e) = std::fs::create_dir_all(&parent) {
            return Err(match std::fs::metadata(&parent) {
                Ok(m) if !m.is_dir() => StorageError::NotADirectory { path: parent },
                _ => io_err(&parent, "creating directory", e),
            });
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let parent_fd = rustix::fs::open(&parent, flags, Mode::empty()).map_err(|e| {
            if e == Errno::NOTDIR {
                StorageError::NotADirectory {
                    path: parent.clone(),
                }
            } else {
                io_err(&parent, "opening", e.into())
            }
        })?;
        // A multi-file torrent's top directory is inside it: opened (made
        // if missing) without following a link, like every directory below.
        let (base, base_path) = if info.is_multi_file() {
            let name = root
                .file_name()
                .ok_or_else(|| StorageError::NotADirectory { path: root.clone() })?;
            (open_dir_at(&parent_fd, &root, name, true)?, root.clone())
        } else {
            (parent_fd, parent)
        };
        let part_path = crate::resume::part_path(&parent_of(&root), &info);
        let mut storage = Storage::new(info, root, Access::Write { base, base_path });
        storage.max_open = max_open.max(1);
        if let Some(w) = &wanted {
            let mut any = false;
            for (slot, _) in storage.slots.iter_mut().zip(w).filter(|(_, &on)| !on) {
                slot.parted = matches!(std::fs::symlink_metadata(&slot.path),
                    Err(e) if e.kind() == io::ErrorKind::NotFound);
                any |= slot.parted;
            }
            if any {
                storage.parts = Some(Parts::new(&storage.info, part_path, true));
            }
        }
        storage.selected = wanted.clone();
        for i in 0..count {
            if wanted.as_ref().map_or(true, |w| w[i]) {
                // Created, sized, and kept open (room permitting) for the
                // writes to come.
                storage.handle(i, true)?;
            }
        }
        Ok(storage)
    }

    /// Opens `info`'s files under `root` for seeding. Checks only that the
    /// root exists (a directory for a multi-file torrent, a file otherwise);
    /// files are opened on first read, so a missing one is an error then.
    /// Never creates, extends or writes anything.
    pub fn open_read_only(info: Arc<Info>, root: PathBuf) -> Result<Storage> {
        let meta = std::fs::metadata(&root).map_err(|e| io_err(&root, "opening", e))?;
        if info.is_multi_file() && !meta.is_dir() {
            return Err(StorageError::NotADirectory { path: root });
        }
        if !info.is_multi_file() && !meta.is_file() {
            return Err(StorageError::NotAFile { path: root });
        }
        Ok(Storage::new(info, root, Access::ReadOnly))
    }

    /// Opens a download made with a file selection (`selected`, as its
    /// resume file recorded it) for reading, as `verify` does: files not
    /// selected and missing are read, where pieces need them, from the
    /// part file ([`part_path`](crate::resume::part_path)) beside `root`.
    pub fn open_selection(info: Arc<Info>, root: PathBuf, selected: Vec<bool>) -> Result<Storage> {
        if selected.len() != info.files().len() {
            return Err(StorageError::WantedLength {
                got: selected.len(),
                expected: info.files().len(),
            });
        }
        let part_path = crate::resume::part_path(&parent_of(&root), &info);
        let mut storage = Storage::new(info, root, Access::ReadOnly);
        for (slot, _) in storage
            .slots
            .iter_mut()
            .zip(&selected)
            .filter(|(_, &on)| !on)
        {
            slot.parted = matches!(std::fs::symlink_metadata(&slot.path),
                Err(e) if e.kind() == io::ErrorKind::NotFound);
        }
        storage.parts = Some(Parts::new(&storage.info, part_path, false));
        storage.selected = Some(selected);
        Ok(storage)
    }

    fn new(info: Arc<Info>, root: PathBuf, access: Access) -> Storage {
        let layout = Layout::for_torrent(&info, &root);
        let slots = layout
            .paths
            .into_iter()
            .zip(&layout.files)
            .map(|(path, f)| Slot {
                path,
                start: f.offset,
                len: f.length,
                file: Mutex::new(None),
                dirty: AtomicBool::new(false),
                parted: false,
            })
            .collect();
        Storage {
            info,
            root,
            slots,
            access,
            open: Mutex::new(VecDeque::new()),
            max_open: MAX_OPEN_FILES,
            bufs: Mutex::new(Vec::new()),
            writeback: Mutex::new(Writeback::default()),
            selected: None,
            parts: None,
        }
    }

    /// The files selected for download (`None`: all of them).
    pub fn selected(&self) -> Option<&[bool]> {
        self.selected.as_deref()
    }

    /// Whether file `i` is kept in the part file: not selected, and missing
    /// when the download started.
    pub fn is_parted(&self, i: usize) -> bool {
        self.slots.get(i).is_some_and(|s| s.parted)
    }

    /// Where the part file's bytes for file `i`'s byte `at` are, with the
    /// part file; an error when this piece is not shared with another file.
    fn part_at(&self, i: usize, at: u64) -> Result<(&Parts, u64)> {
        let slot = &self.slots[i];
        self.parts
            .as_ref()
            .and_then(|p| Some((p, p.offset(slot.start + at)?)))
            .ok_or_else(|| StorageError::NotSelected {
                path: slot.path.clone(),
            })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn info(&self) -> &Arc<Info> {
        &self.info
    }

    pub fn is_writable(&self) -> bool {
        matches!(self.access, Access::Write { .. })
    }

    /// Writes `data` at byte `offset` of piece `piece`, across file
    /// boundaries as needed. An error (never a panic) if it runs past the
    /// piece.
    pub fn write(&self, piece: u32, offset: u32, data: &[u8]) -> Result<()> {
        if !self.is_writable() {
            return Err(StorageError::ReadOnly);
        }
        self.each_span(piece, offset, data.len(), |i, at, range| {
            let slot = &self.slots[i];
            if slot.parted {
                let (parts, at) = self.part_at(i, at)?;
                parts
                    .handle(true)?
                    .write_all_at(&data[range], at)
                    .map_err(|e| io_err(&parts.path, "writing", e))?;
                parts.dirty.store(true, Ordering::Release);
                return Ok(());
            }
            let file = self.handle(i, true)?;
            file.write_all_at(&data[range], at)
                .map_err(|e| io_err(&slot.path, "writing", e))?;
            // Set after the write: a sync that starts after this call
            // returns sees the flag. Checked first so concurrent writers to
            // one file do not keep taking the cache line.
            if !slot.dirty.load(Ordering::Relaxed) {
                slot.dirty.store(true, Ordering::Release);
            }
            Ok(())
        })
    }

    /// Writes `bufs` one after the other from byte `offset` of piece
    /// `piece`: one `pwritev` where they fall in one file (fewer, bigger
    /// writes cost the kernel much less per byte than 16 KiB ones), else
    /// one [`Storage::write`] each.
    pub fn write_vectored(&self, piece: u32, offset: u32, bufs: &[&[u8]]) -> Result<()> {
        if !self.is_writable() {
            return Err(StorageError::ReadOnly);
        }
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        let mut spans = 0;
        let mut one = None;
        self.each_span(piece, offset, len, |i, at, _| {
            spans += 1;
            one = Some((i, at));
            Ok(())
        })?;
        let Some((i, at)) = one.filter(|&(i, _)| spans == 1 && !self.slots[i].parted) else {
            let mut offset = offset;
            for b in bufs {
                self.write(piece, offset, b)?;
                // Inside the piece (checked above): fits a u32.
                offset += b.len() as u32;
            }
            return Ok(());
        };
        let slot = &self.slots[i];
        let file = self.handle(i, true)?;
        pwritev_all(&file, bufs, at).map_err(|e| io_err(&slot.path, "writing", e))?;
        if !slot.dirty.load(Ordering::Relaxed) {
            slot.dirty.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at byte `offset` of piece `piece`. An error
    /// (never a panic) if that runs past the piece or a file is too short.
    pub fn read(&self, piece: u32, offset: u32, buf: &mut [u8]) -> Result<()> {
        self.each_span(piece, offset, buf.len(), |i, at, range| {
            let slot = &self.slots[i];
            if slot.parted {
                let (parts, at) = self.part_at(i, at)?;
                return parts
                    .handle(false)?
                    .read_exact_at(&mut buf[range], at)
                    .map_err(|e| {
                        if e.kind() == io::ErrorKind::UnexpectedEof {
                            StorageError::ShortFile {
                                path: parts.path.clone(),
                            }
                        } else {
                            io_err(&parts.path, "reading", e)
                        }
                    });
            }
            let file = self.handle(i, false)?;
            file.read_exact_at(&mut buf[range], at).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    StorageError::ShortFile {
                        path: slot.path.clone(),
                    }
                } else {
                    io_err(&slot.path, "reading", e)
                }
            })
        })
    }

    /// Feeds piece `piece` from byte `from` to its end into `hasher` (which
    /// may already hold the piece's first `from` bytes), reading through a
    /// reused buffer of at most [`CHUNK`] bytes.
    pub fn hash_from(&self, piece: u32, from: u32, hasher: &mut Sha1) -> Result<()> {
        let size = self.piece_size(piece)?;
        if u64::from(from) > size {
            return Err(StorageError::OutOfRange {
                piece,
                offset: from,
                len: 0,
                size,
            });
        }
        let want = (size as usize).min(CHUNK);
        let mut buf = lock(&self.bufs).pop().unwrap_or_default();
        if buf.len() < want {
            buf.resize(want, 0);
        }
        let mut at = u64::from(from);
        let mut result = Ok(());
        while at < size {
            let n = ((size - at) as usize).min(buf.len());
            // `at` < `size` <= piece length <= 256 MiB: fits a u32.
            if let Err(e) = self.read(piece, at as u32, &mut buf[..n]) {
                result = Err(e);
                break;
            }
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        lock(&self.bufs).push(buf);
        result
    }

    /// SHA-1 of piece `piece` as it is on disk.
    pub fn hash_piece(&self, piece: u32) -> Result<[u8; 20]> {
        let mut hasher = Sha1::new();
        self.hash_from(piece, 0, &mut hasher)?;
        Ok(hasher.finalize().into())
    }

    /// Whether piece `piece` on disk matches the torrent's hash for it.
    pub fn verify_piece(&self, piece: u32) -> Result<bool> {
        let hash = self.hash_piece(piece)?;
        Ok(self.info.piece_hashes().get(piece as usize) == Some(&hash))
    }

    /// `fdatasync`s every file written to since the last sync: what
    /// [`write`](Storage::write) had stored before this call is durable when
    /// it returns `Ok`. On an error the other files are still synced, and
    /// the failed ones stay due for the next call.
    pub fn sync(&self) -> Result<()> {
        let mut first_error = None;
        if let Some(parts) = &self.parts {
            if parts.dirty.swap(false, Ordering::AcqRel) {
                let synced = parts.handle(false).and_then(|file| {
                    file.sync_data()
                        .map_err(|e| io_err(&parts.path, "syncing", e))
                });
                if let Err(e) = synced {
                    parts.dirty.store(true, Ordering::Release);
                    first_error.get_or_insert(e);
                }
            }
        }
        for (i, slot) in self.slots.iter().enumerate() {
            if !slot.dirty.swap(false, Ordering::AcqRel) {
                continue;
            }
            // Closed since it was written to (to make room), the file is
            // opened again: fdatasync flushes the file, not the descriptor.
            let synced = self.handle(i, false).and_then(|file| {
                file.sync_data()
                    .map_err(|e| io_err(&slot.path, "syncing", e))
            });
            if let Err(e) = synced {
                slot.dirty.store(true, Ordering::Release);
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Starts writing `piece` back to disk without waiting (Linux:
    /// `sync_file_range(SYNC_FILE_RANGE_WRITE)`), so that a later
    /// [`Storage::sync`] has little left to wait for — once
    /// [`WRITEBACK_BATCH`] bytes of verified pieces are gathered, for the
    /// range of each file that covers them (pages in it that are not
    /// dirty cost nothing). Best effort: errors surface at the sync.
    pub fn start_writeback(&self, piece: u32) {
        let segments = self.info.piece_segments(piece as usize);
        let segments = segments
            .into_iter()
            .filter(|seg| !self.slots[seg.file].parted);
        let Some(due) = lock(&self.writeback).add(segments, WRITEBACK_BATCH) else {
            return;
        };
        #[cfg(target_os = "linux")]
        for (file, lo, hi) in due {
            if let Ok(f) = self.handle(file, false) {
                use std::os::fd::AsRawFd;
                // SAFETY: a valid open descriptor and a byte range; the call
                // only schedules writeback.
                unsafe {
                    libc::sync_file_range(
                        f.as_raw_fd(),
                        lo as libc::off64_t,
                        (hi - lo) as libc::off64_t,
                        libc::SYNC_FILE_RANGE_WRITE,
                    );
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = due;
    }

    /// Each file's stamp as it is on disk now (`None`: missing or not a
    /// regular file), for the resume file.
    pub fn stamps(&self) -> Vec<Option<FileStamp>> {
        self.slots.iter().map(|s| stamp(&s.path)).collect()
    }

    fn piece_size(&self, piece: u32) -> Result<u64> {
        let count = self.info.piece_count();
        if piece as usize >= count {
            return Err(StorageError::NoSuchPiece { piece, count });
        }
        Ok(self.info.piece_size(piece as usize))
    }

    /// Calls `f(file index, offset in the file, range of the caller's
    /// buffer)` for each file range that `len` bytes at `offset` of `piece`
    /// cover, in order, after checking they lie inside the piece.
    fn each_span(
        &self,
        piece: u32,
        offset: u32,
        len: usize,
        mut f: impl FnMut(usize, u64, Range<usize>) -> Result<()>,
    ) -> Result<()> {
        let size = self.piece_size(piece)?;
        let out_of_range = || StorageError::OutOfRange {
            piece,
            offset,
            len: len as u64,
            size,
        };
        if u64::from(offset) + len as u64 > size {
            return Err(out_of_range());
        }
        let mut pos = u64::from(piece) * self.info.piece_length() + u64::from(offset);
        // The first file that ends after `pos` (so empty files are skipped).
        let mut i = self.slots.partition_point(|s| s.start + s.len <= pos);
        let mut done = 0;
        while done < len {
            // Inside the torrent (checked above), so a file holds `pos`.
            let slot = self.slots.get(i).ok_or_else(out_of_range)?;
            if slot.len > 0 {
                let at = pos - slot.start;
                let n = (slot.len - at).min((len - done) as u64) as usize;
                f(i, at, done..done + n)?;
                done += n;
                pos += n as u64;
            }
            i += 1;
        }
        Ok(())
    }

    /// File `i`'s handle, opening it if it is not open: for a writable
    /// storage read-write, and when `create`, created if missing and
    /// extended to its full length if shorter. Closes the file open longest
    /// when [`MAX_OPEN_FILES`] are open.
    fn handle(&self, i: usize, create: bool) -> Result<Arc<File>> {
        let slot = &self.slots[i];
        if let Some(file) = lock(&slot.file).as_ref() {
            return Ok(Arc::clone(file));
        }
        let mut open = lock(&self.open);
        if let Some(file) = lock(&slot.file).as_ref() {
            return Ok(Arc::clone(file));
        }
        let file = Arc::new(self.open_file(i, create)?);
        while open.len() >= self.max_open {
            let Some(old) = open.pop_front() else { break };
            // Closed once I/O in progress on it (holding a clone) is done.
            lock(&self.slots[old].file).take();
        }
        open.push_back(i);
        *lock(&slot.file) = Some(Arc::clone(&file));
        Ok(file)
    }

    fn open_file(&self, i: usize, create: bool) -> Result<File> {
        let slot = &self.slots[i];
        match &self.access {
            Access::ReadOnly => open_existing(&slot.path),
            Access::Write { base, base_path } => {
                let file_name;
                let components: Vec<&OsStr> = if self.info.is_multi_file() {
                    self.info.files()[i]
                        .path
                        .iter()
                        .map(|c| OsStr::new(c.as_str()))
                        .collect()
                } else {
                    file_name = self
                        .root
                        .file_name()
                        .ok_or_else(|| StorageError::NotAFile {
                            path: self.root.clone(),
                        })?;
                    vec![file_name]
                };
                open_below(base, base_path, &components, slot.len, create)
            }
        }
    }
}

/// The directory that holds `root`.
fn parent_of(root: &Path) -> PathBuf {
    match root.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Locks `m`; what our mutexes guard is never left half-changed, so a
/// panic elsewhere while one was held does not matter.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens an existing regular file read-only (seeding), following links but
/// without blocking on a FIFO.
fn open_existing(path: &Path) -> Result<File> {
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let fd = rustix::fs::open(path, flags, Mode::empty())
        .map_err(|e| io_err(path, "opening", e.into()))?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| io_err(path, "opening", e))?;
    if !meta.is_file() {
        return Err(StorageError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    Ok(file)
}

/// Opens `base_path/components…` read-write through `base` (a descriptor of
/// `base_path`) without following any link: each directory with
/// `O_DIRECTORY | O_NOFOLLOW` relative to the previous one (created when
/// missing and `create`), the file with `O_NOFOLLOW` (created when missing
/// and `create`, then extended to `len` if shorter).
fn open_below(
    base: &OwnedFd,
    base_path: &Path,
    components: &[&OsStr],
    len: u64,
    create: bool,
) -> Result<File> {
    let Some((name, dirs)) = components.split_last() else {
        return Err(StorageError::NotAFile {
            path: base_path.to_path_buf(),
        });
    };
    let mut path = base_path.to_path_buf();
    let mut dir: Option<OwnedFd> = None;
    for c in dirs {
        path.push(c);
        let at = dir.as_ref().unwrap_or(base);
        dir = Some(open_dir_at(at, &path, c, create)?);
    }
    path.push(name);
    let at = dir.as_ref().unwrap_or(base);
    // O_NONBLOCK: no effect on regular files, and a FIFO cannot stall us.
    let mut flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    if create {
        flags |= OFlags::CREATE;
    }
    let fd = rustix::fs::openat(at, *name, flags, Mode::from_raw_mode(0o666))
        .map_err(|e| in_the_way(&path, false, "opening", e))?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(|e| io_err(&path, "opening", e))?;
    if !meta.is_file() {
        return Err(StorageError::NotAFile { path });
    }
    if create && meta.len() < len {
        file.set_len(len)
            .map_err(|e| io_err(&path, "extending", e))?;
    }
    Ok(file)
}

/// Opens directory `name` in `at` (which is at `path`'s parent; `path` names
/// it in errors) with `O_DIRECTORY | O_NOFOLLOW`, making it first when it is
/// missing and `create`. A link there is an error, never followed.
pub(crate) fn open_dir_at(
    at: &OwnedFd,
    path: &Path,
    name: &OsStr,
    create: bool,
) -> Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let opened = match rustix::fs::openat(at, name, flags, Mode::empty()) {
        Err(e) if e == Errno::NOENT && create => {
            match rustix::fs::mkdirat(at, name, Mode::from_raw_mode(0o777)) {
                Ok(()) => {}
                Err(e) if e == Errno::EXIST => {}
                Err(e) => return Err(io_err(path, "creating directory", e.into())),
            }
            rustix::fs::openat(at, name, flags, Mode::empty())
        }
        r => r,
    };
    opened.map_err(|e| in_the_way(path, true, "opening", e))
}

/// Explains a failed open of `path`: something of the wrong kind in the way
/// (a link, a file where a directory is needed or the reverse), else the
/// I/O error itself.
fn in_the_way(path: &Path, want_dir: bool, op: &'static str, e: Errno) -> StorageError {
    let path = path.to_path_buf();
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_symlink() => StorageError::Symlink { path },
        Ok(m) if want_dir && !m.is_dir() => StorageError::NotADirectory { path },
        Ok(m) if !want_dir && !m.is_file() => StorageError::NotAFile { path },
        _ => io_err(&path, op, e.into()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;
    use torrent_format::bencode::Value;

    /// A torrent of `files` (path with `/`, length) named "root" (multi-file),
    /// or of one file named "one.bin" when `files` is `[("", len)]`, with
    /// random content. Returns the info and each file's content.
    pub(crate) fn torrent(
        files: &[(&str, usize)],
        piece_length: usize,
    ) -> (Arc<Info>, Vec<Vec<u8>>) {
        let mut rng = SmallRng::seed_from_u64(files.len() as u64 * 1000 + piece_length as u64);
        let contents: Vec<Vec<u8>> = files
            .iter()
            .map(|&(_, len)| (0..len).map(|_| rng.random()).collect())
            .collect();
        let all = contents.concat();
        let pieces: Vec<u8> = all
            .chunks(piece_length)
            .flat_map(|c| <[u8; 20]>::from(Sha1::digest(c)))
            .collect();
        let key = |k: &str| k.as_bytes().to_vec();
        let mut info = BTreeMap::new();
        info.insert(key("piece length"), Value::Int(piece_length as i64));
        info.insert(key("pieces"), Value::Bytes(pieces));
        if let [("", len)] = files {
            info.insert(key("name"), Value::Bytes(key("one.bin")));
            info.insert(key("length"), Value::Int(*len as i64));
        } else {
            info.insert(key("name"), Value::Bytes(key("root")));
            let list = files
                .iter()
                .map(|&(path, len)| {
                    let mut f = BTreeMap::new();
                    f.insert(key("length"), Value::Int(len as i64));
                    let path = path.split('/').map(|c| Value::Bytes(key(c))).collect();
                    f.insert(key("path"), Value::List(path));
                    Value::Dict(f)
                })
                .collect();
            info.insert(key("files"), Value::List(list));
        }
        let info = Info::from_bytes(&Value::Dict(info).encode()).unwrap();
        (Arc::new(info), contents)
    }

    /// Odd sizes, an empty file, nested directories; piece length 100.
    pub(crate) const FILES: &[(&str, usize)] = &[
        ("a.bin", 37),
        ("empty", 0),
        ("d/b.bin", 1000),
        ("d/e/c.bin", 1),
        ("d/e/empty2", 0),
        ("z.bin", 333),
    ];

    /// Writes every piece of `info` into `storage` in blocks of `block`
    /// bytes, in random order, from four threads.
    pub(crate) fn write_all(storage: &Storage, contents: &[Vec<u8>], block: usize) {
        let info = storage.info().clone();
        let all = contents.concat();
        let mut blocks = Vec::new();
        for p in 0..info.piece_count() {
            let size = info.piece_size(p) as usize;
            for off in (0..size).step_by(block) {
                blocks.push((p, off, block.min(size - off)));
            }
        }
        blocks.shuffle(&mut SmallRng::seed_from_u64(7));
        let pl = info.piece_length() as usize;
        std::thread::scope(|s| {
            for chunk in blocks.chunks(blocks.len().div_ceil(4).max(1)) {
                let all = &all;
                s.spawn(move || {
                    for &(p, off, len) in chunk {
                        let start = p * pl + off;
                        storage
                            .write(p as u32, off as u32, &all[start..start + len])
                            .unwrap();
                    }
                });
            }
        });
    }

    #[test]
    fn blocks_in_random_order_make_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let (info, contents) = torrent(FILES, 100);
        let root = dir.path().join(info.name());
        let storage = Storage::create(info.clone(), root.clone(), None).unwrap();
        // Every file exists at full length before anything is written.
        for (i, f) in info.files().iter().enumerate() {
            let len = std::fs::metadata(dir.path().join(info.file_path(i)))
                .unwrap()
                .len();
            assert_eq!(len, f.length, "{}", f.display_path());
        }
        write_all(&storage, &contents, 16);
        storage.sync().unwrap();
        for p in 0..info.piece_count() {
            assert_eq!(
                storage.hash_piece(p as u32).unwrap(),
                info.piece_hashes()[p]
            );
            assert!(storage.verify_piece(p as u32).unwrap());
        }
        for (i, content) in contents.iter().enumerate() {
            let on_disk = std::fs::read(dir.path().join(info.file_path(i))).unwrap();
            assert_eq!(&on_disk, content, "{}", info.files()[i].display_path());
        }
        assert!(root.join("empty").is_file());
        assert!(root.join("d/e/empty2").is_file());
        // Reads cross file boundaries too.
        let mut buf = vec![0; 100];
        storage.read(0, 0, &mut buf).unwrap();
        assert_eq!(buf, contents.concat()[..100]);
        // The last piece is short: 1371 bytes in all, so 71.
        let last = info.piece_count() as u32 - 1;
        let mut buf = vec![0; 71];
        storage.read(last, 0, &mut buf).unwrap();
        assert_eq!(buf, contents.concat()[1300..]);
        assert!(storage.stamps().iter().all(|s| s.is_some()));
        assert_eq!(storage.stamps(), stamps_at(&info, &root));
    }

    /// Writeback of small pieces is started in batches, over the range of
    /// each file that covers them.
    #[test]
    fn writeback_is_gathered_into_ranges_per_file() {
        let (info, _) = torrent(FILES, 100);
        let mut w = Writeback::default();
        let segs = |p: usize| info.piece_segments(p);
        assert_eq!(w.add(segs(5), 250), None);
        assert_eq!(w.add(segs(0), 250), None);
        // a.bin is file 0 (bytes 0..37 of piece 0), d/b.bin file 2 (piece
        // 0's last 63 bytes, then pieces 1..=9 and some of 10).
        assert_eq!(w.add(segs(1), 250), Some(vec![(2, 0, 563), (0, 0, 37)]));
        // Then it starts over.
        assert_eq!(w.add(segs(9), 250), None);
        assert_eq!(w.files, [(2, 863, 963)]);
        // Reaching the batch takes what was pending too.
        assert_eq!(w.add(segs(3), 100), Some(vec![(2, 263, 963)]));
    }

    #[test]
    fn hashing_can_continue_from_blocks_fed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (info, contents) = torrent(FILES, 100);
        let storage = Storage::create(info.clone(), dir.path().join("root"), None).unwrap();
        write_all(&storage, &contents, 7);
        let all = contents.concat();
        let mut hasher = Sha1::new();
        hasher.update(&all[200..230]);
        storage.hash_from(2, 30, &mut hasher).unwrap();
        assert_eq!(<[u8; 20]>::from(hasher.finalize()), info.piece_hashes()[2]);
        // From the very end: nothing more to read.
        let mut hasher = Sha1::new();
        hasher.update(&all[1300..]);
        storage.hash_from(13, 71, &mut hasher).unwrap();
        assert_eq!(<[u8; 20]>::from(hasher.finalize()), info.piece_hashes()[13]);
    }

    #[test]
    fn a_single_file_torrent_with_a_short_last_piece() {
        let dir = tempfile::tempdir().unwrap();
        let (info, contents) = torrent(&[("", 1000)], 64);
        let root = dir.path().join("sub").join(info.name());
        let storage = Storage::create(info.clone(), root.clone(), None).unwrap();
        write_all(&storage, &contents, 10);
        storage.sync().unwrap();
        for p in 0..info.piece_count() as u32 {
            assert!(storage.verify_piece(p).unwrap());
        }
        assert_eq!(std::fs::read(&root).unwrap(), contents[0]);
        let seed = Storage::open_read_only(info.clone(), root).unwrap();
        assert!(seed.verify_piece(15).unwrap());
    }

    #[test]
    fn out_of_range_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let (info, _) = torrent(FILES, 100);
        let storage = Storage::create(info, dir.path().join("root"), None).unwrap();
        let mut buf = [0u8; 10];
        let oob = |r: Result<()>| match r {
            Err(e @ (StorageError::OutOfRange { .. } | StorageError::NoSuchPiece { .. })) => {
                e.to_string()
            }
            other => panic!("expected a range error, got {other:?}"),
        };
        assert!(oob(storage.write(0, 95, &[0; 6])).contains("past the end of piece 0"));
        oob(storage.write(13, 62, &[0; 10])); // last piece is 71 bytes
        oob(storage.write(0, u32::MAX, &[1]));
        assert!(oob(storage.write(14, 0, &[1])).contains("14 does not exist"));
        oob(storage.write(u32::MAX, u32::MAX, &[1]));
        oob(storage.read(13, 70, &mut buf));
        oob(storage.read(14, 0, &mut buf));
        oob(storage.hash_from(0, 101, &mut Sha1::new()));
        assert!(matches!(
            storage.hash_piece(14),
            Err(StorageError::NoSuchPiece {
                piece: 14,
                count: 14
            })
        ));
        // Exactly at the edges is fine.
        storage.write(13, 71, &[]).unwrap();
        storage.write(13, 61, &[0; 10]).unwrap();
        storage.read(0, 90, &mut buf).unwrap();
    }

    #[test]
    fn existing_data_is_kept_and_short_files_extended() {
        let dir = tempfile::tempdir().unwrap();
        let (info, _) = torrent(FILES, 100);
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("a.bin"), b"hello").unwrap();
        std::fs::write(root.join("d/b.bin"), vec![9; 1200]).unwrap();
        Storage::create(info, root.clone(), None).unwrap();
        let a = std::fs::read(root.join("a.bin")).unwrap();
        assert_eq!(a.len(), 37);
        assert_eq!(&a[..5], b"hello");
        assert!(a[5..].iter().all(|&b| b == 0));
        // Longer than the torrent says: left alone.
        assert_eq!(std::fs::read(root.join("d/b.bin")).unwrap(), vec![9; 1200]);
    }

    #[test]
    fn files_not_wanted_are_never_created_and_shared_bytes_go_to_the_part_file() {
        let dir = tempfile::tempdir().unwrap();
        let (info, contents) = torrent(FILES, 100);
        let root = dir.path().join("root");
        let parts = crate::resume::part_path(dir.path(), &info);
        // Only z.bin (bytes 1038..1371, pieces 10..=13); piece 10 starts
        // with 37 bytes of d/b.bin and d/e/c.bin's one byte.
        let wanted = vec![false, false, false, false, false, true];
        let storage = Storage::create(info.clone(), root.clone(), Some(wanted.clone())).unwrap();
        assert_eq!(storage.selected(), Some(&wanted[..]));
        assert!(root.join("z.bin").is_file());
        assert!(!root.join("a.bin").exists());
        assert!(!root.join("empty").exists());
        assert!(!root.join("d").exists());
        assert!(!parts.exists(), "made only when needed");
        let all = contents.concat();
        storage.write(10, 0, &all[1000..1100]).unwrap();
        for p in 11..=13 {
            let range = p * 100..(p * 100 + 100).min(all.len());
            storage.write(p as u32, 0, &all[range]).unwrap();
        }
        storage.sync().unwrap();
        assert!((10..=13).all(|p| storage.verify_piece(p).unwrap()));
        assert!(!root.join("d").exists() && !root.join("a.bin").exists());
        assert_eq!(std::fs::read(root.join("z.bin")).unwrap(), contents[5]);
        // Pieces 0 and 10 span several files: slot 1 holds piece 10's
        // bytes of the files not wanted (its first 38), and nothing else.
        let kept = std::fs::read(&parts).unwrap();
        assert_eq!(kept.len(), 138);
        assert_eq!(&kept[100..], &all[1000..1038]);
        // A piece wholly inside a file not wanted is nowhere.
        assert!(matches!(
            storage.read(5, 0, &mut [0; 10]),
            Err(StorageError::NotSelected { .. })
        ));
        let stamps = storage.stamps();
        assert!(stamps[0].is_none() && stamps[2].is_none() && stamps[5].is_some());
        drop(storage);
        // Opened again, the part file is found; a file not wanted that is
        // on disk is used in place.
        std::fs::write(root.join("a.bin"), &contents[0]).unwrap();
        let storage = Storage::create(info.clone(), root.clone(), Some(wanted)).unwrap();
        assert!(storage.verify_piece(10).unwrap());
        assert!(!storage.is_parted(0) && storage.is_parted(2));
        // The state directory is no link to follow.
        drop(storage);
        std::fs::remove_file(&parts).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), parts.parent().unwrap().join("x")).unwrap();
        std::fs::remove_dir_all(parts.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), parts.parent().unwrap()).unwrap();
        let storage = Storage::create(
            info.clone(),
            root.clone(),
            Some(vec![false, false, false, false, false, true]),
        )
        .unwrap();
        assert!(matches!(
            storage.write(10, 0, &all[1000..1100]),
            Err(StorageError::Symlink { .. })
        ));
        assert_eq!(std::fs::read_dir(elsewhere.path()).unwrap().count(), 0);
        assert!(matches!(
            Storage::create(info, root, Some(vec![true])),
            Err(StorageError::WantedLength {
                got: 1,
                expected: 6
            })
        ));
    }

    #[test]
    fn a_directory_where_a_file_must_be_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (info, _) = torrent(FILES, 100);
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("d/e/c.bin")).unwrap();
        let e = Storage::create(info.clone(), root.clone(), None).unwrap_err();
        assert!(
            matches!(&e, StorageError::NotAFile { path } if path.ends_with("d/e/c.bin")),
            "{e}"
        );
        assert!(e.to_string().contains("c.bin is in the way"), "{e}");

        // A file where a directory must be.
        std::fs::remove_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d"), b"x").unwrap();
        let e = Storage::create(info.clone(), root.clone(), None).unwrap_err();
        assert!(
            matches!(&e, StorageError::NotADirectory { path } if path.ends_with("root/d")),
            "{e}"
        );

        // The root itself is a file.
        let e = Storage::create(info, dir.path().join("root/a.bin"), None).unwrap_err();
        assert!(matches!(e, StorageError::NotADirectory { .. }), "{e}");
    }

    #[test]
    fn links_below_the_root_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let (info, _) = torrent(FILES, 100);
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("d")).unwrap();
        let e = Storage::create(info.clone(), root.clone(), None).unwrap_err();
        assert!(
            matches!(&e, StorageError::Symlink { path } if path.ends_with("root/d")),
            "{e}"
        );
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

        std::fs::remove_file(root.join("d")).unwrap();
        std::os::unix::fs::symlink(outside.join("target"), root.join("z.bin")).unwrap();
        let e = Storage::create(info.clone(), root.clone(), None).unwrap_err();
        assert!(
            matches!(&e, StorageError::Symlink { path } if path.ends_with("z.bin")),
            "{e}"
        );
        assert!(!outside.join("target").exists());

        // Nor is the root itself (a multi-file torrent's top directory)…
        std::fs::remove_file(root.join("z.bin")).unwrap();
        let linked = dir.path().join("linked");
        std::os::unix::fs::symlink(&outside, &linked).unwrap();
        let e = Storage::create(info.clone(), linked.clone(), None).unwrap_err();
        assert!(
            matches!(&e, StorageError::Symlink { path } if *path == linked),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // …while the directory that holds it may be a link.
        let holder = dir.path().join("holder");
        std::os::unix::fs::symlink(&outside, &holder).unwrap();
        Storage::create(info, holder.join("root"), None).unwrap();
        assert!(outside.join("root/d/b.bin").is_file());

        // A single-file torrent's root is opened without following too.
        let (info, _) = torrent(&[("", 10)], 64);
        let root = dir.path().join("one.bin");
        std::os::unix::fs::symlink(outside.join("t2"), &root).unwrap();
        let e = Storage::create(info, root, None).unwrap_err();
        assert!(matches!(e, StorageError::Symlink { .. }), "{e}");
        assert!(!outside.join("t2").exists());
    }

    #[test]
    fn read_only_storage_never_creates_or_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (info, contents) = torrent(FILES, 100);
        let root = dir.path().join("root");
        let e = Storage::open_read_only(info.clone(), root.clone()).unwrap_err();
        assert!(e.to_string().starts_with("opening "), "{e}");
        assert!(e.to_string().contains("root: "), "{e}");
        assert!(!root.exists());

        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("a.bin"), &contents[0]).unwrap();
        let seed = Storage::open_read_only(info.clone(), root.clone()).unwrap();
        assert!(!seed.is_writable());
        let mut buf = [0; 37];
        seed.read(0, 0, &mut buf).unwrap();
        assert_eq!(buf[..], contents[0][..]);
        // Piece 0 runs on into d/b.bin, which is missing.
        let e = seed.hash_piece(0).unwrap_err();
        assert!(
            matches!(&e, StorageError::Io { op: "opening", path, .. } if path.ends_with("d/b.bin")),
            "{e}"
        );
        assert!(e.to_string().contains("b.bin: No such file"), "{e}");
        assert!(matches!(
            seed.write(0, 0, b"x"),
            Err(StorageError::ReadOnly)
        ));
        seed.sync().unwrap();
        assert!(!root.join("d").exists());
        assert!(!root.join("empty").exists());
        assert_eq!(std::fs::read(root.join("a.bin")).unwrap(), contents[0]);

        // A file shorter than the torrent says.
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/b.bin"), [1; 10]).unwrap();
        let seed = Storage::open_read_only(info.clone(), root.clone()).unwrap();
        let e = seed.hash_piece(0).unwrap_err();
        assert!(matches!(e, StorageError::ShortFile { .. }), "{e}");

        // A root of the wrong kind.
        let e = Storage::open_read_only(info, root.join("a.bin")).unwrap_err();
        assert!(matches!(e, StorageError::NotADirectory { .. }), "{e}");
    }

    #[test]
    fn sync_is_needed_only_after_writes() {
        let dir = tempfile::tempdir().unwrap();
        let (info, _) = torrent(FILES, 100);
        let storage = Storage::create(info, dir.path().join("root"), None).unwrap();
        assert!(storage
            .slots
            .iter()
            .all(|s| !s.dirty.load(Ordering::Relaxed)));
        storage.write(0, 30, &[1; 20]).unwrap();
        let dirty: Vec<bool> = storage
            .slots
            .iter()
            .map(|s| s.dirty.load(Ordering::Relaxed))
            .collect();
        assert_eq!(dirty, [true, false, true, false, false, false]);
        storage.sync().unwrap();
        assert!(storage
            .slots
            .iter()
            .all(|s| !s.dirty.load(Ordering::Relaxed)));
    }

    #[test]
    fn many_files_are_kept_open_a_few_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..60).map(|i| format!("d{}/f{i}", i % 7)).collect();
        let files: Vec<(&str, usize)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), (i * 37) % 90))
            .collect();
        let (info, contents) = torrent(&files, 64);
        let root = dir.path().join("root");
        let storage = Storage::create_with(info.clone(), root.clone(), None, 3).unwrap();
        assert_eq!(lock(&storage.open).len(), 3);
        write_all(&storage, &contents, 5);
        let open = storage.slots.iter().filter(|s| lock(&s.file).is_some());
        assert!(open.count() <= 3);
        assert!(lock(&storage.open).len() <= 3);
        // Files closed since they were written to are synced all the same.
        storage.sync().unwrap();
        assert!(storage
            .slots
            .iter()
            .all(|s| !s.dirty.load(Ordering::Relaxed)));
        for p in 0..info.piece_count() as u32 {
            assert!(storage.verify_piece(p).unwrap(), "piece {p}");
        }
        for (i, content) in contents.iter().enumerate() {
            let on_disk = std::fs::read(dir.path().join(info.file_path(i))).unwrap();
            assert_eq!(&on_disk, content, "{}", info.files()[i].display_path());
        }
    }

    #[test]
    fn storage_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Storage>();
    }
}
