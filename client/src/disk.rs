//! Disk work off the async threads.
//!
//! Received blocks go to a few writer threads, each owning the pieces
//! whose index maps to it, so one piece's blocks are written in arrival
//! order by one thread.
//!
//! A piece is finished once every byte of it is written, its last block
//! (as the picker counted) among them: connections queue what they counted
//! each on its own, so another block of the piece may be written after
//! that one. Finished pieces are verified in one of two ways:
//! - with AVX-512, a verifier thread reads them back from the page cache
//!   and hashes up to 16 at once with the multi-buffer SHA-1 of
//!   `torrent_format::sha1_mb` (about 3.5× the single-stream rate with all
//!   16 lanes busy); while pieces keep coming it waits for the batch to
//!   fill (up to half a second), and hashes at once when the torrent has
//!   nothing else on its way;
//! - otherwise each writer thread hashes a piece as its blocks arrive in
//!   order (the common case: one peer sends one piece front to back), so a
//!   finished piece is usually verified without reading it back.
//!
//! A piece's writeback starts once all of it is written, before its
//! verdict, so the final sync has little left to do.
//!
//! Bytes queued for writing are capped ([`WRITE_BUDGET`]): a connection
//! waits for room before it reads on, so a fast peer and a slow disk
//! cannot grow memory without bound — TCP flow control pushes back.
//!
//! Blocks to upload are read in batches on tokio's blocking pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use sha1::{Digest, Sha1};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use std::time::{Duration, Instant};

use torrent_format::pieces::MB_MIN_PIECES;
use torrent_format::sha1_mb::{self, Sha1x16, LANES};
use torrent_format::Info;

use crate::storage::{Storage, StorageError};
use crate::wire::{BlockRef, BLOCK};

/// Most bytes waiting to be written, across all connections of an engine.
pub const WRITE_BUDGET: usize = 4 << 20;

/// What the writer threads report.
#[derive(Debug)]
pub enum DiskEvent {
    /// All of a piece is written and its hash checked. `blocks`
    /// holds the SHA-1 of each 16 KiB block when asked for (to find which
    /// peer sent bad data, see [`crate::smartban`]).
    Verified {
        piece: u32,
        ok: bool,
        blocks: Option<Vec<[u8; 20]>>,
    },
    /// Writing failed (disk full, file removed…): the download cannot go on.
    Failed(StorageError),
}

/// One torrent's files and where its verdicts go.
struct Target {
    /// Tells this torrent's pieces apart from another's in the threads.
    id: u64,
    info: Arc<Info>,
    storage: Arc<Storage>,
    events: mpsc::UnboundedSender<DiskEvent>,
}

/// Received blocks of one torrent, in the order one connection counted them.
struct Batch {
    target: Arc<Target>,
    blocks: Vec<crate::protocol::Write>,
    /// Their room in the write budget, given back once they are written.
    _permits: Vec<OwnedSemaphorePermit>,
}

/// Consecutive pieces that go to one writer thread, in bytes (bigger
/// pieces each go to one).
const WRITER_SPAN: u64 = 4 << 20;

/// A run of blocks written with one `pwritev` at most.
const MAX_RUN: usize = 64;

enum Job {
    Write(Batch),
    /// A torrent's handle is gone: forget its pieces in progress.
    Forget(u64),
    /// Everything queued before this is done: say so.
    Flush(oneshot::Sender<()>),
}

/// A piece with blocks written since its last verdict.
struct Running {
    /// Without a verifier: the piece hashed in arrival order...
    hasher: Sha1,
    /// ... up to here, from the piece's start.
    next: u32,
    /// Bytes written.
    written: u64,
    /// The flags of its last block, once that is written.
    last: Option<Last>,
}

/// What the block the picker counted last says of its piece.
#[derive(Clone, Copy)]
struct Last {
    digests: bool,
    nothing_pending: bool,
}

/// The disk threads of an engine, shared by all its torrents: writer
/// threads (a piece always goes to the same one, and so do neighbouring
/// small pieces), a verifier with
/// AVX-512, and one byte budget for everything queued.
pub struct DiskPool {
    writers: Mutex<Vec<std_mpsc::Sender<Job>>>,
    budget: Arc<Semaphore>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    next_id: AtomicU64,
}

impl DiskPool {
    /// Starts `threads` writer threads (and the verifier where AVX-512
    /// makes multi-buffer hashing pay).
    pub fn new(threads: usize) -> Arc<DiskPool> {
        let mut writers = Vec::new();
        let mut handles = Vec::new();
        let verifier = sha1_mb::available().then(|| {
            let (tx, rx) = std_mpsc::channel::<Verify>();
            let handle = std::thread::Builder::new()
                .name("shoal-verify".into())
                .spawn(move || verifier(&rx))
                .expect("spawn a disk thread");
            handles.push(handle);
            tx
        });
        for n in 0..threads.max(1) {
            let (tx, rx) = std_mpsc::channel::<Job>();
            let verifier = verifier.clone();
            let handle = std::thread::Builder::new()
                .name(format!("shoal-disk-{n}"))
                .spawn(move || writer(&rx, verifier.as_ref()))
                .expect("spawn a disk thread");
            writers.push(tx);
            handles.push(handle);
        }
        drop(verifier);
        Arc::new(DiskPool {
            writers: Mutex::new(writers),
            budget: Arc::new(Semaphore::new(WRITE_BUDGET)),
            threads: Mutex::new(handles),
            next_id: AtomicU64::new(0),
        })
    }

    /// A torrent's handle on the pool; verdicts go to `events`.
    pub fn attach(
        self: &Arc<Self>,
        info: Arc<Info>,
        storage: Arc<Storage>,
        events: mpsc::UnboundedSender<DiskEvent>,
    ) -> Disk {
        Disk {
            pool: self.clone(),
            target: Arc::new(Target {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                info,
                storage,
                events,
            }),
        }
    }

    fn writers(&self) -> std::sync::MutexGuard<'_, Vec<std_mpsc::Sender<Job>>> {
        self.writers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops the threads after they have written everything queued.
    pub fn close(&self) {
        self.writers().clear();
        let handles = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            let _ = h.join();
        }
    }
}

impl Drop for DiskPool {
    fn drop(&mut self) {
        self.close();
    }
}

impl Drop for Disk {
    /// Its pieces in progress are dropped by the writers (after whatever
    /// it queued before).
    fn drop(&mut self) {
        for w in self.pool.writers().iter() {
            let _ = w.send(Job::Forget(self.target.id));
        }
    }
}

/// One torrent's way to the disk threads.
pub struct Disk {
    pool: Arc<DiskPool>,
    target: Arc<Target>,
}

impl Disk {
    /// A pool of `threads` of its own (one torrent, or tests).
    pub fn new(
        info: Arc<Info>,
        storage: Arc<Storage>,
        threads: usize,
        events: mpsc::UnboundedSender<DiskEvent>,
    ) -> Disk {
        DiskPool::new(threads).attach(info, storage, events)
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.target.storage
    }

    pub fn info(&self) -> &Arc<Info> {
        &self.target.info
    }

    /// Waits for room for `len` more bytes in the write queue.
    pub async fn reserve(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let n = len.clamp(1, WRITE_BUDGET) as u32;
        self.pool.budget.clone().acquire_many_owned(n).await.ok()
    }

    /// Room for `len` more bytes if there is some now; otherwise queue
    /// what is held back and wait with [`Disk::reserve`].
    pub fn try_reserve(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let n = len.clamp(1, WRITE_BUDGET) as u32;
        self.pool.budget.clone().try_acquire_many_owned(n).ok()
    }

    /// Queues received blocks (taken from `blocks`) with the room
    /// `reserve` gave each, in order. One message per writer thread, so
    /// blocks that follow each other are written together. A piece is
    /// hashed once all of it is written, whichever connection's block
    /// comes last.
    pub fn queue(&self, blocks: &mut Vec<(Option<OwnedSemaphorePermit>, crate::protocol::Write)>) {
        if blocks.is_empty() {
            return;
        }
        let writers = self.pool.writers();
        if writers.is_empty() {
            blocks.clear();
            return;
        }
        let mut batches: Vec<Option<Batch>> = (0..writers.len()).map(|_| None).collect();
        // Small pieces go to a writer [`WRITER_SPAN`] bytes of them at a
        // time: two threads writing neighbouring blocks of one file at once
        // mostly wait for each other (the inode's lock).
        let span = (WRITER_SPAN / self.target.info.piece_length().max(1)).max(1);
        for (permit, block) in blocks.drain(..) {
            let at = (self.target.id as usize)
                .wrapping_add((u64::from(block.piece) / span) as usize)
                % writers.len();
            let batch = batches[at].get_or_insert_with(|| Batch {
                target: self.target.clone(),
                blocks: Vec::new(),
                _permits: Vec::new(),
            });
            batch.blocks.push(block);
            batch._permits.extend(permit);
        }
        for (w, batch) in writers.iter().zip(batches) {
            if let Some(batch) = batch {
                // A send fails only once the threads are gone (shutting down).
                let _ = w.send(Job::Write(batch));
            }
        }
    }

    /// Reads blocks to upload and encodes them as `piece` messages onto
    /// `out`. Runs on the blocking pool.
    pub async fn read_blocks(
        &self,
        blocks: Vec<BlockRef>,
        mut out: Vec<u8>,
    ) -> Result<Vec<u8>, StorageError> {
        let storage = self.target.storage.clone();
        let task = tokio::task::spawn_blocking(move || {
            for b in &blocks {
                out.extend_from_slice(&(9 + b.length).to_be_bytes());
                out.push(7);
                out.extend_from_slice(&b.index.to_be_bytes());
                out.extend_from_slice(&b.offset.to_be_bytes());
                let at = out.len();
                out.resize(at + b.length as usize, 0);
                storage.read(b.index, b.offset, &mut out[at..])?;
            }
            Ok(out)
        });
        match task.await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Waits until every block queued so far (by any torrent) is written
    /// and its verdict sent.
    pub async fn flush(&self) {
        let waits: Vec<oneshot::Receiver<()>> = {
            let writers = self.pool.writers();
            writers
                .iter()
                .filter_map(|w| {
                    let (tx, rx) = oneshot::channel();
                    w.send(Job::Flush(tx)).ok().map(|()| rx)
                })
                .collect()
        };
        for w in waits {
            let _ = w.await;
        }
    }
}

fn writer(rx: &std_mpsc::Receiver<Job>, verifier: Option<&std_mpsc::Sender<Verify>>) {
    let mut running: HashMap<(u64, u32), Running> = HashMap::new();
    while let Ok(job) = rx.recv() {
        let batch = match job {
            Job::Write(batch) => batch,
            Job::Forget(id) => {
                running.retain(|&(t, _), _| t != id);
                continue;
            }
            Job::Flush(done) => {
                // With a verifier, verdicts come from there: flush it too.
                match verifier {
                    Some(v) => {
                        if let Err(std_mpsc::SendError(Verify::Flush(done))) =
                            v.send(Verify::Flush(done))
                        {
                            let _ = done.send(());
                        }
                    }
                    None => {
                        let _ = done.send(());
                    }
                }
                continue;
            }
        };
        let t = &batch.target;
        let mut rest = &batch.blocks[..];
        while let Some(first) = rest.first() {
            // Blocks of one piece, each where the one before ends.
            let mut n = 1;
            while n < rest.len().min(MAX_RUN) {
                let (a, b) = (&rest[n - 1], &rest[n]);
                if b.piece != first.piece
                    || u64::from(b.offset) != u64::from(a.offset) + a.data.len() as u64
                {
                    break;
                }
                n += 1;
            }
            let (run, after) = rest.split_at(n);
            rest = after;
            let bufs: Vec<&[u8]> = run.iter().map(|b| &b.data[..]).collect();
            if let Err(e) = t.storage.write_vectored(first.piece, first.offset, &bufs) {
                let _ = t.events.send(DiskEvent::Failed(e));
                // Keep draining so senders never block on a dead writer.
                continue;
            }
            for b in run {
                written(t, b, verifier, &mut running);
            }
        }
    }
}

/// After block `b` of `t` is written: verify its piece once every byte of
/// it is written and its last block (as the picker counted) is among them,
/// and hash it on (in arrival order) without a verifier.
///
/// The last block counted need not be the last one written: each
/// connection queues the blocks it counted on its own, so another's block
/// of the same piece, counted just before, can reach this thread just
/// after (two connections finishing one piece within 50 µs on a loaded
/// machine: the piece was hashed with a hole in it, failed, and an honest
/// peer was banned).
fn written(
    t: &Arc<Target>,
    b: &crate::protocol::Write,
    verifier: Option<&std_mpsc::Sender<Verify>>,
    running: &mut HashMap<(u64, u32), Running>,
) {
    let key = (t.id, b.piece);
    let r = running.entry(key).or_insert_with(|| Running {
        hasher: Sha1::new(),
        next: 0,
        written: 0,
        last: None,
    });
    r.written += b.data.len() as u64;
    let size = t.info.piece_size(b.piece as usize);
    // The picker counts each block of an attempt once, and only counted
    // blocks are written.
    debug_assert!(r.written <= size);
    if verifier.is_none() && b.offset == r.next {
        r.hasher.update(&b.data);
        r.next += b.data.len() as u32;
    }
    if b.last {
        r.last = Some(Last {
            digests: b.digests,
            nothing_pending: b.nothing_pending,
        });
    }
    let Some(last) = r.last.filter(|_| r.written >= size) else {
        return;
    };
    let Some(mut r) = running.remove(&key) else {
        return;
    };
    // Written back whatever its hash turns out to be: the verifier may
    // hold it for a while, and the final sync should not have to write it
    // all then.
    t.storage.start_writeback(b.piece);
    if let Some(v) = verifier {
        let _ = v.send(Verify::Piece(Done {
            target: t.clone(),
            piece: b.piece,
            digests: last.digests,
            now: last.nothing_pending,
        }));
        return;
    }
    let (info, storage) = (&*t.info, &*t.storage);
    let verdict = storage
        .hash_from(b.piece, r.next, &mut r.hasher)
        .and_then(|()| {
            let hash: [u8; 20] = r.hasher.finalize().into();
            let ok = info.piece_hashes()[b.piece as usize] == hash;
            let blocks = if last.digests || !ok {
                Some(block_digests(info, storage, b.piece)?)
            } else {
                None
            };
            Ok((ok, blocks))
        });
    let _ = t.events.send(match verdict {
        Ok((ok, blocks)) => DiskEvent::Verified {
            piece: b.piece,
            ok,
            blocks,
        },
        Err(e) => DiskEvent::Failed(e),
    });
}

/// A piece whose blocks are all written.
struct Done {
    target: Arc<Target>,
    piece: u32,
    digests: bool,
    /// Nothing else of its torrent is on its way: hash without waiting.
    now: bool,
}

enum Verify {
    Piece(Done),
    Flush(oneshot::Sender<()>),
}

/// While finished pieces keep coming at most this far apart, the verifier
/// waits for the next one to join the batch: sixteen lanes cost as much
/// as ~4.6 pieces hashed one by one, so a full batch is what pays.
const BATCH_GAP: Duration = Duration::from_millis(50);
/// The longest a finished piece waits for its batch to fill (its `have`
/// is that much later).
const BATCH_WAIT: Duration = Duration::from_millis(500);
/// Bytes per lane read at a time for multi-buffer hashing.
const LANE_CHUNK: usize = 64 * 1024;

/// Takes finished pieces until a batch of [`LANES`] is full, the pieces
/// stop coming ([`BATCH_GAP`]), the first has waited [`BATCH_WAIT`], one
/// says nothing more is on its way, or a flush is asked for (answered
/// through `flushes` once the batch is done). `None` once the writers are
/// gone.
fn next_batch(
    rx: &std_mpsc::Receiver<Verify>,
    flushes: &mut Vec<oneshot::Sender<()>>,
) -> Option<Vec<Done>> {
    let first = loop {
        match rx.recv().ok()? {
            Verify::Piece(d) => break d,
            Verify::Flush(done) => {
                let _ = done.send(());
            }
        }
    };
    let start = Instant::now();
    let mut last = start;
    let mut now = first.now;
    let mut batch = vec![first];
    while batch.len() < LANES && !now {
        let deadline = (last + BATCH_GAP).min(start + BATCH_WAIT);
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Verify::Piece(d)) => {
                last = Instant::now();
                now = d.now;
                batch.push(d);
            }
            Ok(Verify::Flush(done)) => {
                flushes.push(done);
                break;
            }
            Err(_) => break,
        }
    }
    Some(batch)
}

fn verifier(rx: &std_mpsc::Receiver<Verify>) {
    let mut buf = vec![0u8; LANES * LANE_CHUNK];
    let mut flushes = Vec::new();
    while let Some(batch) = next_batch(rx, &mut flushes) {
        // Full-size pieces of one torrent go side by side; the rest alone.
        let t0 = batch[0].target.clone();
        let full = t0.info.piece_length();
        let (wide, single): (Vec<Done>, Vec<Done>) = batch.into_iter().partition(|d| {
            d.target.id == t0.id && d.target.info.piece_size(d.piece as usize) == full
        });
        let mut hashed: Vec<(Done, Result<[u8; 20], StorageError>)> = Vec::new();
        // Side by side only where that beats SHA-NI one piece at a time:
        // all sixteen lanes cost as much as ~4.6 single pieces (with 16 MiB
        // pieces, batches of two or three hashed side by side took a third
        // of a download's CPU).
        if wide.len() >= MB_MIN_PIECES {
            let pieces: Vec<u32> = wide.iter().map(|d| d.piece).collect();
            match hash_side_by_side(&t0.storage, full, &pieces, &mut buf) {
                Ok(hashes) => hashed.extend(wide.into_iter().zip(hashes.into_iter().map(Ok))),
                Err(e) => {
                    let _ = t0.events.send(DiskEvent::Failed(e));
                }
            }
        } else {
            hashed.extend(wide.into_iter().map(|d| {
                let h = d.target.storage.hash_piece(d.piece);
                (d, h)
            }));
        }
        hashed.extend(single.into_iter().map(|d| {
            let h = d.target.storage.hash_piece(d.piece);
            (d, h)
        }));
        for (d, hash) in hashed {
            let (info, storage) = (&*d.target.info, &*d.target.storage);
            let verdict = hash.and_then(|hash| {
                let ok = info.piece_hashes()[d.piece as usize] == hash;
                let blocks = if d.digests || !ok {
                    Some(block_digests(info, storage, d.piece)?)
                } else {
                    None
                };
                Ok((ok, blocks))
            });
            let _ = d.target.events.send(match verdict {
                Ok((ok, blocks)) => DiskEvent::Verified {
                    piece: d.piece,
                    ok,
                    blocks,
                },
                Err(e) => DiskEvent::Failed(e),
            });
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// SHA-1 of up to 16 full-size pieces at once.
fn hash_side_by_side(
    storage: &Storage,
    piece_length: u64,
    pieces: &[u32],
    buf: &mut [u8],
) -> Result<Vec<[u8; 20]>, StorageError> {
    let mut h = Sha1x16::new().expect("checked available() before starting the verifier");
    let mut offset = 0u64;
    while offset < piece_length {
        let n = (piece_length - offset).min(LANE_CHUNK as u64) as usize;
        for (lane, &p) in pieces.iter().enumerate() {
            storage.read(p, offset as u32, &mut buf[lane * LANE_CHUNK..][..n])?;
        }
        // Idle lanes hash a copy of lane 0; their digests are dropped.
        let slices: [&[u8]; LANES] = std::array::from_fn(|lane| {
            let lane = if lane < pieces.len() { lane } else { 0 };
            &buf[lane * LANE_CHUNK..][..n]
        });
        h.update(&slices).expect("equal lengths");
        offset += n as u64;
    }
    Ok(h.finish()[..pieces.len()].to_vec())
}

fn block_digests(
    info: &Info,
    storage: &Storage,
    piece: u32,
) -> Result<Vec<[u8; 20]>, StorageError> {
    let size = info.piece_size(piece as usize) as u32;
    let mut buf = vec![0u8; BLOCK as usize];
    let mut out = Vec::new();
    let mut offset = 0u32;
    while offset < size {
        let len = (size - offset).min(BLOCK) as usize;
        storage.read(piece, offset, &mut buf[..len])?;
        out.push(Sha1::digest(&buf[..len]).into());
        offset += len as u32;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Write;
    use crate::storage::tests::torrent;

    fn block(content: &[u8], piece: u32, offset: u32, last: bool) -> Write {
        let at = piece as usize * 4 * BLOCK as usize + offset as usize;
        Write {
            piece,
            offset,
            data: content[at..at + BLOCK as usize].to_vec(),
            last,
            digests: false,
            nothing_pending: false,
        }
    }

    /// A torrent of two pieces of four blocks on one writer thread: its
    /// directory, content, disk handle and verdicts.
    fn two_pieces() -> (
        tempfile::TempDir,
        Vec<u8>,
        Disk,
        mpsc::UnboundedReceiver<DiskEvent>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (info, mut contents) = torrent(&[("", 8 * BLOCK as usize)], 4 * BLOCK as usize);
        let storage =
            Arc::new(Storage::create(info.clone(), dir.path().join("one.bin"), None).unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        let disk = Disk::new(info, storage, 1, tx);
        (dir, contents.remove(0), disk, rx)
    }

    fn queue(disk: &Disk, blocks: Vec<Write>) {
        let mut blocks = blocks.into_iter().map(|b| (None, b)).collect();
        disk.queue(&mut blocks);
    }

    /// Every verdict so far: piece, pass, and how many block digests.
    fn verdicts(rx: &mut mpsc::UnboundedReceiver<DiskEvent>) -> Vec<(u32, bool, Option<usize>)> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            match e {
                DiskEvent::Verified { piece, ok, blocks } => {
                    out.push((piece, ok, blocks.map(|b| b.len())))
                }
                DiskEvent::Failed(e) => panic!("{e}"),
            }
        }
        out
    }

    /// The block the picker counted last can reach the writer before
    /// another block of its piece (two connections, each queueing what it
    /// counted): the piece is hashed once both are written, and passes.
    #[tokio::test]
    async fn a_piece_is_hashed_once_all_its_blocks_are_written() {
        let (_dir, content, disk, mut rx) = two_pieces();
        let content = &content;
        let queue = |blocks: Vec<Write>| queue(&disk, blocks);
        let b = BLOCK;
        // Piece 0: block 2 comes after the last-counted one (block 3).
        queue(vec![
            block(content, 0, 0, false),
            block(content, 0, b, false),
        ]);
        queue(vec![block(content, 0, 3 * b, true)]);
        // Piece 1 in order, to know the writer got this far.
        queue((0..4).map(|i| block(content, 1, i * b, i == 3)).collect());
        queue(vec![block(content, 0, 2 * b, false)]);
        disk.flush().await;
        let verdicts: Vec<(u32, bool)> = verdicts(&mut rx)
            .into_iter()
            .map(|(piece, ok, _)| (piece, ok))
            .collect();
        // Piece 0 waited for its block 2, so piece 1's verdict came first.
        assert_eq!(verdicts, [(1, true), (0, true)]);
    }

    /// A piece that failed is fetched again: the new attempt's bytes are
    /// counted afresh (nothing of the failed one carries over), and the
    /// digests the last-counted block asked for come with the verdict even
    /// when another block finishes the piece.
    #[tokio::test]
    async fn a_failed_piece_counts_afresh_and_keeps_its_flags() {
        let (_dir, content, disk, mut rx) = two_pieces();
        let content = &content;
        let queue = |blocks: Vec<Write>| queue(&disk, blocks);
        let b = BLOCK;
        // A bad copy: block 1 garbled.
        let mut bad: Vec<Write> = (0..4).map(|i| block(content, 0, i * b, i == 3)).collect();
        bad[1].data.iter_mut().for_each(|x| *x ^= 0xff);
        queue(bad);
        disk.flush().await;
        assert_eq!(verdicts(&mut rx), [(0, false, Some(4))]);
        // The good copy, its last-counted block (asking for digests) ahead
        // of block 2: no verdict until block 2 is written.
        let mut last = block(content, 0, 3 * b, true);
        last.digests = true;
        queue(vec![
            block(content, 0, 0, false),
            block(content, 0, b, false),
            last,
        ]);
        disk.flush().await;
        assert_eq!(verdicts(&mut rx), []);
        queue(vec![block(content, 0, 2 * b, false)]);
        disk.flush().await;
        assert_eq!(verdicts(&mut rx), [(0, true, Some(4))]);
    }
}
