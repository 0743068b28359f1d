//! The resume file: which pieces were complete *and durably on disk* at the
//! last save, and how each file looked then, so a download stopped by
//! Ctrl-C, a crash or `kill -9` resumes without re-reading what it can trust.
//!
//! It lives at `OUT_DIR/.shoal/<info hash hex>.resume` ([`resume_path`]);
//! `.shoal` and the file are opened without following a link
//! ([`state_dir`]), so the resume file is never written outside `OUT_DIR`.
//! It is a bencoded dictionary:
//!
//! ```text
//! version    1
//! info hash  the 20-byte info hash
//! pieces     the torrent's piece count
//! have       the bitfield of pieces complete at the save (as on the wire)
//! files      per file, [length, mtime in ns], or [] when it was missing
//! selected   (a download of some files, `--only`) per file '1' or '0'
//! ```
//!
//! With a selection, a file not selected that is missing is not counted
//! as changed when it was missing at the save too: the bytes of it that
//! pieces shared with selected files need are in the part file
//! ([`part_path`]).
//!
//! The engine calls [`save`] after [`Storage::sync`](crate::storage::Storage::sync),
//! so every piece it lists was on disk. On start, [`load`] compares the saved
//! stamps with the files now ([`stamps_at`](crate::storage::stamps_at), taken
//! *before* `Storage::create` changes anything):
//!
//! - a piece listed as had, all of whose files are unchanged, is trusted
//!   without reading;
//! - every other piece touching a changed file is to be re-hashed: after a
//!   `kill -9` the files being written have newer mtimes than the save, and
//!   pieces completed after it may be there (as may outside edits);
//! - with no usable resume file, every piece is to be re-hashed;
//!
//! except that a piece touching a missing file, or running past the end of
//! a short one, cannot be complete and is never re-hashed (the pieces a
//! short file still holds wholly are re-hashed like any other of a changed
//! file, and the short file is named in [`ResumeState::short`]). Unchanged
//! files' pieces not listed as had are simply downloaded again.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};
use torrent_format::bencode::{self, Value};
use torrent_format::{Info, InfoHash};

use crate::storage::{open_dir_at, FileStamp, StorageError};
use crate::wire::Bitfield;

/// The format version written and accepted.
pub const VERSION: i64 = 1;

/// Largest resume file read (a 20-million-piece torrent of a million files
/// needs well under this).
pub const MAX_SIZE: u64 = 64 << 20;

/// What [`load`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeState {
    /// Pieces listed as had whose files all have the stamps they had then.
    pub trusted: Bitfield,
    /// Pieces to re-hash, ascending: every piece not trusted that touches a
    /// changed file (with no usable resume file, every piece), leaving out
    /// pieces touching a missing file or running past a short one's end.
    pub to_check: Vec<u32>,
    /// Files that are there but shorter than the torrent says (indexes, in
    /// order): cut since, or never finished.
    pub short: Vec<usize>,
    /// Why the resume file was not used, for a log line; `None` when it was.
    pub reason: Option<String>,
}

/// The state directory's name, in a download's output directory.
pub const STATE_DIR: &str = ".shoal";

/// `out_dir/.shoal/<info hash hex>.resume`, next to the download.
pub fn resume_path(out_dir: &Path, info: &Info) -> PathBuf {
    out_dir
        .join(STATE_DIR)
        .join(format!("{}.resume", info.info_hash()))
}

/// `out_dir/.shoal/<info hash hex>.parts`: the part file, where a download
/// of some of a torrent's files keeps the bytes of the others that pieces
/// shared with the chosen ones need ([`Storage`](crate::storage::Storage)).
pub fn part_path(out_dir: &Path, info: &Info) -> PathBuf {
    out_dir
        .join(STATE_DIR)
        .join(format!("{}.parts", info.info_hash()))
}

/// The bencoded resume file for this state.
pub fn encode(
    info_hash: InfoHash,
    have: &Bitfield,
    stamps: &[Option<FileStamp>],
    selected: Option<&[bool]>,
) -> Vec<u8> {
    let int = |v: u64| Value::Int(i64::try_from(v).unwrap_or(i64::MAX));
    let files = stamps
        .iter()
        .map(|s| match s {
            Some(s) => Value::List(vec![int(s.length), Value::Int(s.mtime_ns)]),
            None => Value::List(Vec::new()),
        })
        .collect();
    let entries = [
        ("version", Value::Int(VERSION)),
        ("info hash", Value::Bytes(info_hash.0.to_vec())),
        ("pieces", int(have.len() as u64)),
        ("have", Value::Bytes(have.as_bytes().to_vec())),
        ("files", Value::List(files)),
    ];
    let selected = selected.map(|s| {
        let flags = s.iter().map(|&on| if on { b'1' } else { b'0' }).collect();
        ("selected", Value::Bytes(flags))
    });
    Value::Dict(
        entries
            .into_iter()
            .chain(selected)
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect(),
    )
    .encode()
}

/// Opens the directory that holds `path` (the state directory, `.shoal`),
/// making it when missing and `create`: relative to the directory above it
/// (the download's `-o` directory, used as given) and without following a
/// link, like every directory of a download ([`Storage`](crate::storage)).
/// A link, or a file, in its place is an error naming it.
pub fn state_dir(path: &Path, create: bool) -> Result<OwnedFd, StorageError> {
    let dir = parent_or_dot(path);
    let holder = parent_or_dot(dir);
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let holder_fd =
        rustix::fs::open(holder, flags, Mode::empty()).map_err(|e| StorageError::Io {
            path: holder.to_path_buf(),
            op: "opening",
            error: e.into(),
        })?;
    match dir.file_name() {
        Some(name) => open_dir_at(&holder_fd, dir, name, create),
        // "." or "/": nothing inside the download to follow.
        None => Ok(holder_fd),
    }
}

fn parent_or_dot(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Writes the resume file atomically: to `path.tmp`, fsynced, then renamed
/// over `path`, in the state directory opened with [`state_dir`] (so no
/// link is followed, and the file names are opened `O_NOFOLLOW`). A crash
/// leaves the old file or the new one, never a mix. The directory is synced
/// too, best effort: should that be lost, the older file still only lists
/// pieces that were on disk.
///
/// On a full disk the new file may not fit beside the old one: the old one
/// is then removed first and the new one written in its place. A crash in
/// between leaves no resume file, which only costs a re-check.
pub fn save(
    path: &Path,
    info_hash: InfoHash,
    have: &Bitfield,
    stamps: &[Option<FileStamp>],
    selected: Option<&[bool]>,
) -> io::Result<()> {
    save_state(path, &encode(info_hash, have, stamps, selected))
}

/// The file selection a download recorded in its resume file at `path`
/// (`None`: no usable resume file, or all files were chosen).
pub fn saved_selection(path: &Path, info: &Info) -> Option<Vec<bool>> {
    let saved = read(path).and_then(|bytes| parse(&bytes, info)).ok()?;
    saved.selected
}

/// `out_dir/.shoal/<info hash hex>.torrent`: the metadata a magnet link's
/// peers sent, so that a restarted download need not fetch it again.
pub fn torrent_path(out_dir: &Path, info_hash: InfoHash) -> PathBuf {
    out_dir.join(STATE_DIR).join(format!("{info_hash}.torrent"))
}

/// Reads a file in the state directory (`path` is `DIR/.shoal/NAME`) of
/// at most `max` bytes, following no link; `None` when there is none.
pub fn load_state(path: &Path, max: u64) -> io::Result<Option<Vec<u8>>> {
    let file = match open_resume(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Err(io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(Some(bytes))
}

/// Writes `bytes` to a file in the state directory (`path` is
/// `DIR/.shoal/NAME`) atomically, following no link; on a full disk the
/// old copy is removed first to make room.
pub fn save_state(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = state_dir(path, true).map_err(|e| match e {
        StorageError::Io { error, .. } => error,
        other => io::Error::other(other.to_string()),
    })?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} is not a file name", path.display())))?;
    let mut tmp = name.to_owned();
    tmp.push(".tmp");
    let written = match write_synced(&dir, &tmp, bytes) {
        Err(e) if is_full(&e) => {
            let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
            match rustix::fs::unlinkat(&dir, name, AtFlags::empty()) {
                Ok(()) => write_synced(&dir, &tmp, bytes),
                Err(_) => Err(e),
            }
        }
        r => r,
    };
    if let Err(e) = written {
        let _ = rustix::fs::unlinkat(&dir, &tmp, AtFlags::empty());
        return Err(e);
    }
    rustix::fs::renameat(&dir, &tmp, &dir, name)?;
    let _ = rustix::fs::fsync(&dir);
    Ok(())
}

/// Creates (or truncates) `name` in `dir` without following a link, writes
/// `bytes` and syncs it.
fn write_synced(dir: &OwnedFd, name: &OsStr, bytes: &[u8]) -> io::Result<()> {
    let flags =
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut file = File::from(rustix::fs::openat(
        dir,
        name,
        flags,
        Mode::from_raw_mode(0o666),
    )?);
    file.write_all(bytes)?;
    file.sync_all()
}

fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Reads the resume file at `path` for `info` and decides what to trust and
/// what to re-hash, given the files' stamps now (`current`, one per file;
/// missing entries count as missing files). Take `current` with
/// [`stamps_at`](crate::storage::stamps_at) *before* `Storage::create`:
/// afterwards every file exists at full length (sparse), and with no resume
/// file a fresh download would re-hash all of its zeros. Never fails: an unusable file
/// (missing, too large, corrupt, another torrent's, another version) falls
/// back to re-hashing, with the reason.
///
/// `selected` is the download's file selection now (`None`: all files).
pub fn load(
    path: &Path,
    info: &Info,
    current: &[Option<FileStamp>],
    selected: Option<&[bool]>,
) -> ResumeState {
    match read(path).and_then(|bytes| parse(&bytes, info)) {
        Ok(saved) => decide(info, Some(&saved), current, selected, None),
        Err(why) => {
            let reason = format!("resume file {}: {why}", path.display());
            decide(info, None, current, selected, Some(reason))
        }
    }
}

/// What a usable resume file says.
struct Saved {
    have: Bitfield,
    stamps: Vec<Option<FileStamp>>,
    selected: Option<Vec<bool>>,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    let file = open_resume(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => "not found".to_string(),
        _ => format!("cannot open: {e}"),
    })?;
    if file.metadata().is_ok_and(|m| m.len() > MAX_SIZE) {
        return Err(format!("larger than {MAX_SIZE} bytes"));
    }
    let mut bytes = Vec::new();
    // Read at most one byte more than allowed, should it have grown: one more than allowed tells a file that is too large.
    file.take(MAX_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_SIZE {
        return Err(format!("larger than {MAX_SIZE} bytes"));
    }
    Ok(bytes)
}

/// Opens the resume file for reading, following no link in the state
/// directory (see [`state_dir`]).
fn open_resume(path: &Path) -> io::Result<File> {
    let dir = state_dir(path, false).map_err(|e| match e {
        StorageError::Io { error, .. } => error,
        other => io::Error::other(other.to_string()),
    })?;
    let name = path.file_name().unwrap_or(path.as_os_str());
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let file = File::from(rustix::fs::openat(&dir, name, flags, Mode::empty())?);
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

fn parse(bytes: &[u8], info: &Info) -> Result<Saved, String> {
    let v = bencode::decode(bytes).map_err(|e| format!("corrupt ({e})"))?;
    if !matches!(v, Value::Dict(_)) {
        return Err("corrupt (not a dictionary)".into());
    }
    let field = |key: &str| v.get(key).ok_or_else(|| format!("corrupt (no '{key}')"));
    let int = |key: &str| match field(key)? {
        Value::Int(i) => Ok(*i),
        _ => Err(format!("corrupt ('{key}' is not an integer)")),
    };
    let bytes = |key: &str| match field(key)? {
        Value::Bytes(b) => Ok(b),
        _ => Err(format!("corrupt ('{key}' is not a string)")),
    };
    let version = int("version")?;
    if version != VERSION {
        return Err(format!("version {version}, this shoal reads {VERSION}"));
    }
    if bytes("info hash")?.as_slice() != info.info_hash().as_bytes() {
        return Err("for another torrent (info hash differs)".into());
    }
    let pieces = int("pieces")?;
    if u64::try_from(pieces).ok() != Some(info.piece_count() as u64) {
        return Err(format!(
            "records {pieces} pieces, the torrent has {}",
            info.piece_count()
        ));
    }
    let have = Bitfield::from_bytes(bytes("have")?, info.piece_count())
        .map_err(|e| format!("corrupt ('have': {e})"))?;
    let Value::List(files) = field("files")? else {
        return Err("corrupt ('files' is not a list)".into());
    };
    if files.len() != info.files().len() {
        return Err(format!(
            "records {} files, the torrent has {}",
            files.len(),
            info.files().len()
        ));
    }
    let stamps = files
        .iter()
        .enumerate()
        .map(|(i, f)| match f {
            Value::List(l) => match l.as_slice() {
                [] => Ok(None),
                [Value::Int(length), Value::Int(mtime_ns)] if *length >= 0 => Ok(Some(FileStamp {
                    length: *length as u64,
                    mtime_ns: *mtime_ns,
                })),
                _ => Err(format!("corrupt ('files' entry {i})")),
            },
            _ => Err(format!("corrupt ('files' entry {i})")),
        })
        .collect::<Result<_, _>>()?;
    let selected = match v.get("selected") {
        None => None,
        Some(Value::Bytes(b)) if b.len() == info.files().len() => Some(
            b.iter()
                .map(|c| match c {
                    b'1' => Ok(true),
                    b'0' => Ok(false),
                    _ => Err("corrupt ('selected')".to_string()),
                })
                .collect::<Result<_, _>>()?,
        ),
        Some(_) => return Err("corrupt ('selected')".into()),
    };
    Ok(Saved {
        have,
        stamps,
        selected,
    })
}

fn decide(
    info: &Info,
    saved: Option<&Saved>,
    current: &[Option<FileStamp>],
    selected: Option<&[bool]>,
    reason: Option<String>,
) -> ResumeState {
    let count = info.piece_count();
    // Per piece: a file of it is missing or short / changed since the save.
    let mut unusable = vec![false; count];
    let mut changed = vec![false; count];
    let mut short = Vec::new();
    for (i, f) in info.files().iter().enumerate() {
        let pieces = info.file_pieces(i);
        if pieces.is_empty() {
            continue;
        }
        let now = current.get(i).copied().flatten();
        let unselected = selected.is_some_and(|s| s.get(i) == Some(&false));
        if unselected && now.is_none() {
            // In the part file, unless it was on disk at the save (and
            // so its bytes were there, not in the part file).
            if !saved.is_some_and(|s| s.stamps.get(i) == Some(&None)) {
                changed[pieces].fill(true);
            }
            continue;
        }
        let left = now.map_or(0, |s| s.length);
        if left < f.length {
            // What is left of it may hold some pieces whole; the rest
            // cannot be complete.
            let within = info.file_pieces_within(i, left);
            unusable[within.end..pieces.end].fill(true);
            if now.is_some() {
                short.push(i);
            }
        }
        let same = now.is_some() && saved.is_some_and(|s| s.stamps.get(i) == Some(&now));
        if !same {
            changed[pieces].fill(true);
        }
    }
    let mut trusted = Bitfield::new(count);
    let mut to_check = Vec::new();
    for p in 0..count {
        if unusable[p] {
            continue;
        }
        if !changed[p] {
            if saved.is_some_and(|s| s.have.get(p)) {
                trusted.set(p);
            }
        } else {
            // Piece indexes fit u32: the wire protocol numbers them so.
            to_check.push(p as u32);
        }
    }
    ResumeState {
        trusted,
        to_check,
        short,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::tests::{torrent, write_all, FILES};
    use crate::storage::{stamps_at, Storage};
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    /// A complete download of the test torrent in a temporary directory.
    struct Fixture {
        _dir: tempfile::TempDir,
        out: PathBuf,
        info: Arc<Info>,
        root: PathBuf,
        path: PathBuf,
    }

    fn complete() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().to_path_buf();
        let (info, contents) = torrent(FILES, 100);
        let root = out.join(info.name());
        let storage = Storage::create(info.clone(), root.clone(), None).unwrap();
        write_all(&storage, &contents, 16);
        storage.sync().unwrap();
        let mut have = Bitfield::new(info.piece_count());
        for p in 0..info.piece_count() {
            have.set(p);
        }
        let path = resume_path(&out, &info);
        save(&path, info.info_hash(), &have, &storage.stamps(), None).unwrap();
        Fixture {
            _dir: dir,
            out,
            info,
            root,
            path,
        }
    }

    impl Fixture {
        fn load(&self) -> ResumeState {
            load(
                &self.path,
                &self.info,
                &stamps_at(&self.info, &self.root),
                None,
            )
        }
        fn all(&self) -> Vec<u32> {
            (0..self.info.piece_count() as u32).collect()
        }
        /// Asserts a fallback: a reason containing `why`, nothing trusted,
        /// every piece to check.
        fn assert_fallback(&self, why: &str) {
            let state = self.load();
            let reason = state.reason.expect("should fall back");
            assert!(reason.contains(why), "{reason}");
            assert_eq!(state.trusted.count(), 0);
            assert_eq!(state.to_check, self.all());
        }
    }

    fn touch(path: &Path) {
        let f = File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
    }

    #[test]
    fn the_file_lives_in_a_hidden_directory_and_saving_is_atomic() {
        let fx = complete();
        let expected = fx
            .out
            .join(".shoal")
            .join(format!("{}.resume", fx.info.info_hash()));
        assert_eq!(fx.path, expected);
        assert!(fx.path.is_file());
        let names: Vec<_> = std::fs::read_dir(fx.out.join(".shoal"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file is left: {names:?}");
        let v = bencode::decode(&std::fs::read(&fx.path).unwrap()).unwrap();
        assert_eq!(v.get("version"), Some(&Value::Int(1)));
        assert_eq!(v.get("pieces"), Some(&Value::Int(14)));
        let Some(Value::List(files)) = v.get("files") else {
            panic!("no files list: {v:?}")
        };
        assert_eq!(files.len(), 6);
        assert!(
            matches!(&files[1], Value::List(l) if l.len() == 2 && l[0] == Value::Int(0)),
            "{files:?}"
        );
    }

    #[test]
    fn links_in_the_state_directory_are_not_followed() {
        let fx = complete();
        let elsewhere = fx.out.join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        let have = Bitfield::new(fx.info.piece_count());
        let stamps = stamps_at(&fx.info, &fx.root);

        // The resume file itself a link: replaced, not written through.
        let target = elsewhere.join("target");
        std::fs::write(&target, b"keep").unwrap();
        std::fs::remove_file(&fx.path).unwrap();
        std::os::unix::fs::symlink(&target, &fx.path).unwrap();
        assert!(fx.load().reason.unwrap().contains("cannot open"));
        save(&fx.path, fx.info.info_hash(), &have, &stamps, None).unwrap();
        assert!(!fx.path.is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");

        // The state directory a link: refused, for reading and writing.
        let state = fx.out.join(".shoal");
        std::fs::remove_dir_all(&state).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &state).unwrap();
        let e = save(&fx.path, fx.info.info_hash(), &have, &stamps, None).unwrap_err();
        assert!(e.to_string().contains(".shoal is a symbolic link"), "{e}");
        assert!(fx.load().reason.unwrap().contains("symbolic link"));
        assert!(matches!(
            state_dir(&fx.path, true),
            Err(StorageError::Symlink { .. })
        ));
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 1);

        // A file in its place.
        std::fs::remove_file(&state).unwrap();
        std::fs::write(&state, b"x").unwrap();
        assert!(matches!(
            state_dir(&fx.path, true),
            Err(StorageError::NotADirectory { .. })
        ));
    }

    #[test]
    fn a_round_trip_trusts_everything() {
        let fx = complete();
        let state = fx.load();
        assert_eq!(state.reason, None);
        assert!(state.trusted.is_complete());
        assert!(state.to_check.is_empty());
    }

    #[test]
    fn a_changed_file_sends_only_its_pieces_to_be_checked() {
        let fx = complete();
        // d/b.bin: bytes 37..1037, pieces 0..=10.
        touch(&fx.root.join("d/b.bin"));
        let state = fx.load();
        assert_eq!(state.reason, None);
        assert_eq!(state.to_check, (0..=10).collect::<Vec<u32>>());
        assert_eq!(state.trusted.count(), 3);
        assert!((11..14).all(|p| state.trusted.get(p)));

        // z.bin (pieces 10..=13) too; and pieces not listed as had in
        // unchanged files are neither trusted nor checked.
        touch(&fx.root.join("z.bin"));
        let state = fx.load();
        assert_eq!(state.to_check, fx.all());
        assert_eq!(state.trusted.count(), 0);
    }

    #[test]
    fn pieces_not_had_in_unchanged_files_are_downloaded_again() {
        let fx = complete();
        let mut have = Bitfield::new(14);
        have.set(3);
        have.set(12);
        let stamps = stamps_at(&fx.info, &fx.root);
        save(&fx.path, fx.info.info_hash(), &have, &stamps, None).unwrap();
        let state = fx.load();
        assert_eq!(state.reason, None);
        assert_eq!(state.trusted, have);
        assert!(state.to_check.is_empty());
    }

    #[test]
    fn missing_files_and_the_ends_of_short_ones_cannot_be_checked() {
        let fx = complete();
        std::fs::remove_file(fx.root.join("a.bin")).unwrap(); // piece 0
        let z = File::options()
            .write(true)
            .open(fx.root.join("z.bin"))
            .unwrap();
        // z.bin: bytes 1038..1371, pieces 10..=13; cut to 1038..1338, it
        // still holds its part of pieces 10, 11 and 12, not piece 13.
        z.set_len(300).unwrap();
        let state = fx.load();
        assert_eq!(state.reason, None);
        assert_eq!(state.to_check, [10, 11, 12]);
        assert_eq!(state.short, [5]);
        assert_eq!(state.trusted.count(), 9);
        assert!((1..10).all(|p| state.trusted.get(p)));

        std::fs::remove_file(&fx.path).unwrap();
        let state = fx.load();
        assert!(state.reason.unwrap().contains("not found"));
        assert_eq!(state.to_check, (1..13).collect::<Vec<u32>>());
        assert_eq!(state.trusted.count(), 0);

        // Cut inside its first piece: nothing of it left to check.
        z.set_len(50).unwrap();
        let state = fx.load();
        assert_eq!(state.to_check, (1..10).collect::<Vec<u32>>());
        assert_eq!(state.short, [5]);
    }

    #[test]
    fn a_fresh_download_checks_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (info, _) = torrent(FILES, 100);
        let root = dir.path().join(info.name());
        let path = resume_path(dir.path(), &info);
        let state = load(&path, &info, &stamps_at(&info, &root), None);
        assert!(state.reason.is_some());
        assert!(state.to_check.is_empty());
        assert_eq!(state.trusted.count(), 0);
    }

    #[test]
    fn unusable_files_fall_back_with_a_reason() {
        let fx = complete();
        let good = std::fs::read(&fx.path).unwrap();
        let have = Bitfield::from_bytes(&[0xff, 0xfc], 14).unwrap();
        let stamps = stamps_at(&fx.info, &fx.root);

        std::fs::write(&fx.path, &good[..good.len() / 2]).unwrap();
        fx.assert_fallback("corrupt");
        std::fs::write(&fx.path, b"").unwrap();
        fx.assert_fallback("corrupt");
        std::fs::write(&fx.path, b"le").unwrap();
        fx.assert_fallback("not a dictionary");

        save(&fx.path, InfoHash([1; 20]), &have, &stamps, None).unwrap();
        fx.assert_fallback("another torrent");

        save(
            &fx.path,
            fx.info.info_hash(),
            &Bitfield::new(13),
            &stamps,
            None,
        )
        .unwrap();
        fx.assert_fallback("records 13 pieces, the torrent has 14");

        save(&fx.path, fx.info.info_hash(), &have, &stamps[1..], None).unwrap();
        fx.assert_fallback("records 5 files");

        let edit = |key: &str, value: Value| {
            let Value::Dict(mut d) = bencode::decode(&good).unwrap() else {
                unreachable!()
            };
            d.insert(key.as_bytes().to_vec(), value);
            std::fs::write(&fx.path, Value::Dict(d).encode()).unwrap();
        };
        edit("version", Value::Int(2));
        fx.assert_fallback("version 2, this shoal reads 1");
        edit("have", Value::Bytes(vec![0xff, 0xff]));
        fx.assert_fallback("bits past the last piece");
        edit("pieces", Value::Int(-1));
        fx.assert_fallback("records -1 pieces");
        edit(
            "files",
            Value::List(vec![Value::List(vec![Value::Int(-5), Value::Int(0)]); 6]),
        );
        fx.assert_fallback("'files' entry 0");
        edit("info hash", Value::Int(3));
        fx.assert_fallback("'info hash' is not a string");

        // Too large: refused without being read.
        let f = File::create(&fx.path).unwrap();
        f.set_len(MAX_SIZE + 1).unwrap();
        fx.assert_fallback("larger than");

        std::fs::write(&fx.path, &good).unwrap();
        assert_eq!(fx.load().reason, None);
    }

    #[test]
    fn missing_stamps_count_as_missing_files() {
        let fx = complete();
        let state = load(&fx.path, &fx.info, &[], None);
        assert!(state.to_check.is_empty());
        assert_eq!(state.trusted.count(), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]
        #[test]
        fn mutated_resume_files_never_panic(
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            cut in any::<usize>(),
        ) {
            let (info, _) = torrent(FILES, 100);
            let have = Bitfield::from_bytes(&[0xf0, 0x0c], 14).unwrap();
            let stamps: Vec<_> = (0..6u64)
                .map(|i| (i != 1).then_some(FileStamp { length: i * 100, mtime_ns: 1 << 60 }))
                .collect();
            let mut bytes = encode(info.info_hash(), &have, &stamps, None);
            for (at, byte) in edits {
                let i = at % bytes.len();
                bytes[i] = byte;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            if let Ok(saved) = parse(&bytes, &info) {
                prop_assert_eq!(saved.have.len(), 14);
                prop_assert_eq!(saved.stamps.len(), 6);
            }
            let state = decide(&info, parse(&bytes, &info).ok().as_ref(), &stamps, None, None);
            prop_assert_eq!(state.trusted.len(), 14);
        }
    }
}
