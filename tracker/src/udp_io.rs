//! The UDP tracker's sockets: one `SO_REUSEPORT` socket per worker thread
//! and address, read and written in batches (`recvmmsg`, `sendmmsg`)
//! through buffers allocated once per socket. [`crate::udp`] answers each
//! datagram.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use crate::udp::{self, ConnectionIds, MAX_REPLY, MAX_REQUEST};
use crate::Tracker;

/// Datagrams read (and answered) per system call.
const BATCH: usize = 64;
/// Receive buffer asked of the kernel: bursts wait there, not on the wire.
const RCVBUF: usize = 8 << 20;

/// A socket for `addr` that other sockets of ours may share.
pub(crate) fn socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(RCVBUF);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Fails when another socket already has UDP `addr` (another tracker, or
/// another program): a socket without `SO_REUSEPORT` cannot bind it then.
pub(crate) fn ensure_free(addr: SocketAddr) -> io::Result<()> {
    crate::server::probe_free(addr, Type::DGRAM, "UDP ")
}

/// One socket's buffers, reused for every batch.
struct Batch {
    bufs: Vec<[u8; MAX_REQUEST]>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    replies: Vec<Vec<u8>>,
    /// For each reply to send: the request it answers.
    to: Vec<usize>,
    out_iovs: Vec<libc::iovec>,
    out_hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in the headers and iovecs point only into this
// batch's own heap buffers (which move with it), and are set afresh before
// every system call that reads them; between calls they are never followed.
unsafe impl Send for Batch {}

fn empty_iov() -> libc::iovec {
    libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }
}

fn empty_hdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is plain data (pointers, lengths, flags): all zeros
    // is a valid value, the pointers null.
    unsafe { std::mem::zeroed() }
}

impl Batch {
    fn new() -> Batch {
        Batch {
            bufs: vec![[0u8; MAX_REQUEST]; BATCH],
            // SAFETY: sockaddr_storage is plain data; zeros are valid.
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            iovs: (0..BATCH).map(|_| empty_iov()).collect(),
            hdrs: (0..BATCH).map(|_| empty_hdr()).collect(),
            replies: (0..BATCH).map(|_| Vec::with_capacity(MAX_REPLY)).collect(),
            to: Vec::with_capacity(BATCH),
            out_iovs: (0..BATCH).map(|_| empty_iov()).collect(),
            out_hdrs: (0..BATCH).map(|_| empty_hdr()).collect(),
        }
    }

    /// Reads up to [`BATCH`] datagrams without waiting.
    fn recv(&mut self, fd: libc::c_int) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i].as_mut_ptr().cast(),
                iov_len: MAX_REQUEST,
            };
            let h = &mut self.hdrs[i];
            *h = empty_hdr();
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at a live buffer, address and iovec
        // of this batch, of the sizes given; they outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// The source of datagram `i`.
    fn source(&self, i: usize) -> Option<SocketAddr> {
        let len = self.hdrs[i].msg_hdr.msg_namelen;
        // SAFETY: the kernel wrote an address of `len` bytes (at most the
        // storage's size) into the storage.
        let addr = unsafe { SockAddr::new(self.addrs[i], len) };
        addr.as_socket()
    }

    /// Answers the `n` datagrams read.
    fn answer(&mut self, n: usize, tracker: &Tracker, ids: &ConnectionIds, now: u64) {
        self.to.clear();
        for i in 0..n {
            let truncated = self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let len = self.hdrs[i].msg_len as usize;
            let Some(from) = self.source(i).filter(|_| !truncated) else {
                tracker.count_udp(udp::Outcome::Dropped);
                continue;
            };
            let k = self.to.len();
            let reply = &mut self.replies[k];
            udp::handle(tracker, ids, &self.bufs[i][..len], from, now, reply);
            if !reply.is_empty() {
                self.to.push(i);
            }
        }
    }

    /// The first half of answering the `n` datagrams read when the store
    /// must be awaited: replies that need no store (connects, errors) are
    /// written, to be sent at once; the store requests are returned, with
    /// the datagram each answers.
    fn begin_all(
        &mut self,
        n: usize,
        tracker: &Tracker,
        ids: &ConnectionIds,
        now: u64,
    ) -> Vec<(usize, udp::Job)> {
        self.to.clear();
        let mut jobs = Vec::new();
        for i in 0..n {
            let truncated = self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            let len = self.hdrs[i].msg_len as usize;
            let Some(from) = self.source(i).filter(|_| !truncated) else {
                tracker.count_udp(udp::Outcome::Dropped);
                continue;
            };
            let k = self.to.len();
            match udp::begin(
                tracker,
                ids,
                &self.bufs[i][..len],
                from,
                now,
                &mut self.replies[k],
            ) {
                udp::Begun::Done(o) => {
                    tracker.count_udp(o);
                    if !self.replies[k].is_empty() {
                        self.to.push(i);
                    }
                }
                udp::Begun::Job(job) => jobs.push((i, job)),
            }
        }
        jobs
    }

    /// The second half: the store requests of the whole batch are issued
    /// together (so they go to Redis in one pipelined write) and awaited
    /// together, and their replies written. At most [`BATCH`] are in
    /// flight per socket, each bounded by the store's deadline; during an
    /// outage the store answers at once.
    async fn finish_all(&mut self, jobs: Vec<(usize, udp::Job)>, tracker: &Tracker) {
        self.to.clear();
        let results =
            futures_util::future::join_all(jobs.iter().map(|(_, job)| job.run(tracker))).await;
        for ((i, job), result) in jobs.iter().zip(results) {
            let k = self.to.len();
            let o = udp::finish(tracker, job, result, &mut self.replies[k]);
            tracker.count_udp(o);
            // An error longer than its request is not sent.
            if !self.replies[k].is_empty() {
                self.to.push(*i);
            }
        }
    }

    /// Sends replies `from..` of the last batch without waiting; returns
    /// how many went.
    fn send(&mut self, fd: libc::c_int, from: usize) -> io::Result<usize> {
        let count = self.to.len() - from;
        for (j, k) in (from..self.to.len()).enumerate() {
            let i = self.to[k];
            self.out_iovs[j] = libc::iovec {
                iov_base: self.replies[k].as_mut_ptr().cast(),
                iov_len: self.replies[k].len(),
            };
            let h = &mut self.out_hdrs[j];
            *h = empty_hdr();
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = self.hdrs[i].msg_hdr.msg_namelen;
            h.msg_hdr.msg_iov = &mut self.out_iovs[j];
            h.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: as in `recv`: the headers point at this batch's live
        // replies, addresses and iovecs.
        let n = unsafe {
            libc::sendmmsg(
                fd,
                self.out_hdrs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// Serves one socket until `shutdown`.
pub(crate) async fn serve(
    socket: std::net::UdpSocket,
    tracker: Arc<Tracker>,
    ids: Arc<ConnectionIds>,
    shutdown: CancellationToken,
) {
    // SAFETY: the `AsyncFd` owns the socket, which owns its descriptor: it
    // stays open, and is the same one, until the `AsyncFd` is dropped.
    let socket = match unsafe { AsyncFd::register(socket) } {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot use the UDP socket: {e}");
            return;
        }
    };
    let fd = socket.get_ref().as_raw_fd();
    let mut batch = Batch::new();
    loop {
        let mut ready = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = socket.readable() => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("UDP socket: {e}");
                    return;
                }
            },
        };
        let n = match batch.recv(fd) {
            Ok(0) => continue,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready.clear_ready();
                continue;
            }
            Err(e) => {
                // ICMP errors from earlier sends and the like.
                tracing::trace!("UDP recv: {e}");
                continue;
            }
        };
        drop(ready);
        let now = u64::from(tracker.now());
        if tracker.is_async() {
            // Replies that need no store go before the store is awaited,
            // so connects are answered however slow the store is.
            let jobs = batch.begin_all(n, &tracker, &ids, now);
            if !send_all(&mut batch, fd, &socket).await {
                return;
            }
            if jobs.is_empty() {
                continue;
            }
            batch.finish_all(jobs, &tracker).await;
        } else {
            batch.answer(n, &tracker, &ids, now);
        }
        if !send_all(&mut batch, fd, &socket).await {
            return;
        }
    }
}

/// Sends the batch's replies, waiting for room in the send buffer if need
/// be; false when the socket is unusable.
async fn send_all(
    batch: &mut Batch,
    fd: libc::c_int,
    socket: &AsyncFd<std::net::UdpSocket>,
) -> bool {
    let mut sent = 0;
    while sent < batch.to.len() {
        match batch.send(fd, sent) {
            Ok(k) => sent += k.max(1),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // The send buffer is full: wait for room.
                match socket.writable().await {
                    Ok(mut w) => w.clear_ready(),
                    Err(_) => return false,
                }
            }
            // One bad destination (no route, say): skip its reply.
            Err(e) => {
                tracing::trace!("UDP send: {e}");
                sent += 1;
            }
        }
    }
    true
}
