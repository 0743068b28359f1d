//! Sockets and runtimes. Per-connection cost decides a tracker's speed
//! (clients open a new connection for each announce), so: one thread per
//! core, each with a current-thread tokio runtime and its own
//! `SO_REUSEPORT` listener on every address (the kernel spreads incoming
//! connections over them), no work on the connection path that can wait.
//! `GET /announce` and `GET /scrape` are served by [`h1`]'s minimal
//! HTTP/1 code on the socket itself — a connection whose request has
//! already arrived is answered and closed by the accept loop without a task
//! or an epoll registration — and everything else by hyper and the axum
//! router. Connections that send no complete request head for
//! `idle_timeout` are closed, request heads are capped in size, and the
//! number of connections left open is bounded.
//!
//! Shutdown is graceful: after the token is cancelled no connection is
//! accepted, in-flight requests finish (bounded by `drain_timeout`), then
//! the threads exit.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::unix::AsyncFd;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::{app, h1, udp_io, Tracker};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Each address serves HTTP on TCP and BEP 15 on UDP (as chosen below).
    pub listen: Vec<SocketAddr>,
    pub http: bool,
    pub udp: bool,
    /// Worker threads (each with its own listeners); default: cores.
    pub threads: usize,
    /// Close a connection that sends no complete request head for this long
    /// (checked once per period: an idle connection goes after one to two).
    pub idle_timeout: Duration,
    /// Open connections at most (beyond it new ones are closed at once; a
    /// request already read when the connection is accepted is answered
    /// first, since that holds nothing open).
    pub max_connections: usize,
    /// Open connections from one IP address at most, so one host cannot
    /// take every slot. At the cap a new connection takes the place of the
    /// address's oldest idle one; it is refused (with a failure reason)
    /// only when all of them are in the middle of a request.
    pub max_connections_per_ip: usize,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 6969))],
            http: true,
            udp: true,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            idle_timeout: Duration::from_secs(15),
            max_connections: 10_000,
            max_connections_per_ip: 256,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Largest request head (request line + headers) accepted, in bytes.
pub const MAX_HEAD: usize = 16 * 1024;

/// Listening sockets, bound before serving so the caller learns the
/// actual addresses (port 0 resolves to one port shared by all threads).
pub struct Bound {
    opts: ServeOptions,
    /// `per_thread[t][a]`: thread t's socket for address a.
    per_thread: Vec<Vec<std::net::TcpListener>>,
    /// The same for UDP.
    per_thread_udp: Vec<Vec<std::net::UdpSocket>>,
    addrs: Vec<SocketAddr>,
}

fn listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // Lets 0.0.0.0:P and [::]:P both be given.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    // Accepted connections inherit it: replies go out at once.
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    defer_accept(&socket);
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Asks the kernel to hand over a connection only once its first data
/// (the request) has arrived, so the accept loop can answer it at once.
fn defer_accept(socket: &socket2::Socket) {
    let secs: libc::c_int = 5;
    // SAFETY: a valid descriptor and a pointer to a live c_int of the size given.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        tracing::debug!("TCP_DEFER_ACCEPT: {}", io::Error::last_os_error());
    }
}

/// Fails when another socket already listens on `addr`. Our listeners
/// share a port through `SO_REUSEPORT`, and so would a second tracker
/// started by mistake, the kernel splitting announces (and the swarm)
/// between the two. A socket without `SO_REUSEPORT` cannot bind a port
/// anyone listens on, so a short-lived one finds out.
fn ensure_free(addr: SocketAddr) -> io::Result<()> {
    probe_free(addr, socket2::Type::STREAM, "")
}

/// Binds a short-lived socket of `kind` without `SO_REUSEPORT` to `addr`:
/// it fails when any socket has the address (TCP: listens on it). `proto`
/// goes before the address in the error ("UDP ", or "" for TCP).
pub(crate) fn probe_free(addr: SocketAddr, kind: socket2::Type, proto: &str) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), kind, None)?;
    // Connections of an earlier run in TIME_WAIT are no obstacle.
    if kind == socket2::Type::STREAM {
        socket.set_reuse_address(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    match socket.bind(&addr.into()) {
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(io::Error::new(
            e.kind(),
            format!(
                "cannot listen on {proto}{addr}: the port is in use (is another tracker running there?)"
            ),
        )),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot listen on {proto}{addr}: {e}"),
        )),
        Ok(()) => Ok(()),
    }
}

pub fn bind(opts: ServeOptions) -> io::Result<Bound> {
    let threads = opts.threads.max(1);
    if !opts.http && !opts.udp {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "neither HTTP nor UDP is served",
        ));
    }
    let mut per_thread: Vec<Vec<std::net::TcpListener>> =
        (0..threads).map(|_| Vec::new()).collect();
    let mut per_thread_udp: Vec<Vec<std::net::UdpSocket>> =
        (0..threads).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for &addr in &opts.listen {
        if opts.http {
            ensure_free(addr)?;
        }
        if opts.udp {
            udp_io::ensure_free(addr)?;
        }
        let mut actual = addr;
        if opts.http {
            let first = listener(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            actual = first.local_addr()?;
            per_thread[0].push(first);
            for sockets in per_thread.iter_mut().skip(1) {
                sockets.push(listener(actual)?);
            }
        }
        if opts.udp {
            // The same port as the TCP side (port 0 took one there).
            let at = actual;
            let err = move |e: io::Error| {
                io::Error::new(e.kind(), format!("cannot listen on UDP {at}: {e}"))
            };
            let first = udp_io::socket(actual).map_err(err)?;
            actual = first.local_addr()?;
            per_thread_udp[0].push(first);
            for sockets in per_thread_udp.iter_mut().skip(1) {
                sockets.push(udp_io::socket(actual).map_err(err)?);
            }
        }
        addrs.push(actual);
    }
    Ok(Bound {
        opts,
        per_thread,
        per_thread_udp,
        addrs,
    })
}

impl Bound {
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Serves until `shutdown` is cancelled, sweeping expired peers and
    /// measuring the announce rate meanwhile, then drains and returns.
    pub async fn run(self, tracker: Arc<Tracker>, shutdown: CancellationToken) -> io::Result<()> {
        let router = app(tracker.clone());
        let tracker_for_workers = tracker.clone();
        let permits = Arc::new(Semaphore::new(
            self.opts.max_connections.min(Semaphore::MAX_PERMITS),
        ));
        let per_ip = Arc::new(PerIp::new(self.opts.max_connections_per_ip));
        // One key for the whole process: a client's connect and announce
        // may reach different sockets.
        let ids = Arc::new(crate::udp::ConnectionIds::new());
        let mut threads = Vec::new();
        let udp = self.per_thread_udp.into_iter();
        for (i, (sockets, udp)) in self.per_thread.into_iter().zip(udp).enumerate() {
            let ids = ids.clone();
            let router = router.clone();
            let tracker = tracker_for_workers.clone();
            let shutdown = shutdown.clone();
            let permits = permits.clone();
            let per_ip = per_ip.clone();
            let opts = self.opts.clone();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("tracker-{i}"))
                    .spawn(move || {
                        rt.block_on(async move {
                            let udp: Vec<_> = udp
                                .into_iter()
                                .map(|s| {
                                    tokio::spawn(udp_io::serve(
                                        s,
                                        tracker.clone(),
                                        ids.clone(),
                                        shutdown.clone(),
                                    ))
                                })
                                .collect();
                            worker(sockets, tracker, router, shutdown, permits, per_ip, opts).await;
                            for u in udp {
                                let _ = u.await;
                            }
                        })
                    })?,
            );
        }

        let sweep_every =
            Duration::from_secs(u64::from(tracker.config().peer_timeout / 4).clamp(1, 60));
        let mut sweep = tokio::time::interval(sweep_every);
        let mut rate = tokio::time::interval(Duration::from_secs(5));
        let mut since = (tracker.announce_count(), Instant::now());
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = sweep.tick() => {
                    let dropped = tracker.sweep();
                    if dropped > 0 {
                        tracing::debug!(dropped, "expired peers");
                    }
                }
                _ = rate.tick() => since = tracker.measure_rate(since),
            }
        }
        tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await
        .map_err(io::Error::other)
    }
}

/// Open connections per client address. When an address is at its cap, a
/// new connection takes the place of that address's oldest *idle* one (kept
/// alive and waiting for its next request), which is told to close: a host
/// whose client keeps many connections open is not shut out (nor is
/// `/stats.json` from it). Only when every one of them is in the middle of
/// a request is the new one refused.
///
/// Bounded: an address has at most `max` connections that are not being
/// evicted, and at most `max` more on their way out (each closes as soon
/// as its task runs, idle as it is), so never more than `2 * max`.
struct PerIp {
    max: usize,
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, IpConns>>,
}

/// One address's connections, oldest first.
#[derive(Default)]
struct IpConns {
    conns: Vec<Arc<Conn>>,
    /// How many of them are [`EVICTED`].
    evicted: usize,
}

/// What [`PerIp`] knows of a connection, shared with its task.
struct Conn {
    /// [`BUSY`], [`IDLE`] or [`EVICTED`]: only the table moves it from
    /// idle to evicted, only the connection between busy and idle.
    state: std::sync::atomic::AtomicU8,
    /// Wakes the connection when it is evicted.
    evict: tokio::sync::Notify,
}

/// In the middle of a request (or its reply, or a lingering close).
const BUSY: u8 = 0;
/// Waiting for the next request on a kept-alive connection.
const IDLE: u8 = 1;
/// Told to close to make room.
const EVICTED: u8 = 2;

impl Conn {
    /// Marks a request under way; false if the connection has been
    /// evicted (it is to close, not to read).
    fn busy(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        match self.state.compare_exchange(IDLE, BUSY, Relaxed, Relaxed) {
            Ok(_) => true,
            Err(state) => state == BUSY,
        }
    }

    /// Marks the connection idle (evictable), unless it is evicted already.
    fn idle(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let _ = self.state.compare_exchange(BUSY, IDLE, Relaxed, Relaxed);
    }
}

/// One connection's place in [`PerIp`]; released on drop.
struct IpSlot {
    table: Arc<PerIp>,
    ip: std::net::IpAddr,
    conn: Arc<Conn>,
}

impl PerIp {
    fn new(max: usize) -> PerIp {
        PerIp {
            max: max.max(1),
            open: Default::default(),
        }
    }

    /// A place for a new connection from `ip` (busy to begin with), making
    /// room by evicting the address's oldest idle connection if need be;
    /// `None` if there is none to evict.
    fn acquire(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<IpSlot> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let entry = open.entry(ip).or_default();
        if entry.conns.len() - entry.evicted >= self.max {
            if entry.evicted >= self.max {
                return None;
            }
            let victim = entry.conns.iter().find(|c| {
                c.state
                    .compare_exchange(IDLE, EVICTED, Relaxed, Relaxed)
                    .is_ok()
            })?;
            victim.evict.notify_one();
            entry.evicted += 1;
        }
        let conn = Arc::new(Conn {
            state: BUSY.into(),
            evict: tokio::sync::Notify::new(),
        });
        entry.conns.push(conn.clone());
        Some(IpSlot {
            table: self.clone(),
            ip,
            conn,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = open.get_mut(&self.ip) {
            if let Some(i) = entry.conns.iter().position(|c| Arc::ptr_eq(c, &self.conn)) {
                entry.conns.remove(i);
                if self.conn.state.load(std::sync::atomic::Ordering::Relaxed) == EVICTED {
                    entry.evicted -= 1;
                }
            }
            if entry.conns.is_empty() {
                open.remove(&self.ip);
            }
        }
    }
}

async fn worker(
    sockets: Vec<std::net::TcpListener>,
    tracker: Arc<Tracker>,
    router: Router,
    shutdown: CancellationToken,
    permits: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    opts: ServeOptions,
) {
    let tasks = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(opts.idle_timeout)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true);
    let http = Arc::new(http);
    let mut loops = Vec::new();
    for std_listener in sockets {
        // SAFETY: the `AsyncFd` owns the `TcpListener`, which owns its
        // descriptor: it stays open, and is the same one, until the
        // `AsyncFd` is dropped (what `register` asks of the caller).
        match unsafe { AsyncFd::register(std_listener) }.map_err(io::Error::from) {
            Ok(listener) => loops.push(tokio::spawn(accept_loop(
                listener,
                Arc::new(Shared {
                    tracker: tracker.clone(),
                    router: router.clone(),
                    http: http.clone(),
                    tasks: tasks.clone(),
                    permits: permits.clone(),
                    per_ip: per_ip.clone(),
                    idle_timeout: opts.idle_timeout,
                    shutdown: shutdown.clone(),
                    stopping: false.into(),
                }),
            ))),
            Err(e) => tracing::error!("cannot use listener: {e}"),
        }
    }
    for l in loops {
        let _ = l.await;
    }
    // The accept loops are gone: no new connections. Every connection
    // watches the token: hyper's finish the request under way, the fast
    // path's close when idle. Wait for them.
    tasks.close();
    if tokio::time::timeout(opts.drain_timeout, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {:?}", opts.drain_timeout);
    }
}

/// What every accept loop and connection of a worker shares.
struct Shared {
    tracker: Arc<Tracker>,
    router: Router,
    http: Arc<hyper::server::conn::http1::Builder>,
    /// Every connection task, so shutdown can wait for them.
    tasks: TaskTracker,
    permits: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    idle_timeout: Duration,
    shutdown: CancellationToken,
    /// Set by the accept loop once `shutdown` fires: a plain load for the
    /// per-request check (`CancellationToken::is_cancelled` takes a lock).
    stopping: std::sync::atomic::AtomicBool,
}

/// Accepts without registering the socket with the runtime (the fast path
/// often answers and closes it before it would ever need to wait).
async fn accept(
    listener: &AsyncFd<std::net::TcpListener>,
) -> io::Result<(std::net::TcpStream, SocketAddr)> {
    loop {
        let mut ready = listener.readable().await?;
        if let Ok(r) = ready.try_io(|l| l.get_ref().accept()) {
            return r;
        }
    }
}

/// A connection's state when the accept loop hands it to a task: bytes
/// read but not yet served, a reply not yet (fully) written, and what to
/// do once it is.
struct Pending {
    input: Vec<u8>,
    output: Vec<u8>,
    then: Then,
}

/// `recv` into `buf`'s spare capacity (which must not be empty), never
/// blocking whatever the socket's mode — so accepted sockets need no
/// syscall to make them non-blocking — and without zeroing the buffer.
/// A raw syscall (rustix), not libc's cancellation-point wrapper.
fn recv_into(fd: BorrowedFd<'_>, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        match rustix::net::recv(
            fd,
            rustix::buffer::spare_capacity(buf),
            rustix::net::RecvFlags::DONTWAIT,
        ) {
            Ok((n, _)) => return Ok(n),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// `send` that never blocks (and never raises SIGPIPE).
fn send_now(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    send_flags(fd, buf, rustix::net::SendFlags::empty())
}

/// [`send_now`] with extra flags.
fn send_flags(fd: BorrowedFd<'_>, buf: &[u8], extra: rustix::net::SendFlags) -> io::Result<usize> {
    use rustix::net::SendFlags;
    loop {
        match rustix::net::send(fd, buf, SendFlags::DONTWAIT | SendFlags::NOSIGNAL | extra) {
            Err(rustix::io::Errno::INTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

async fn accept_loop(listener: AsyncFd<std::net::TcpListener>, shared: Arc<Shared>) {
    // Reused for every connection answered inline: no allocation per
    // connection beyond the reply body.
    let mut input = Vec::with_capacity(MAX_HEAD);
    let mut output = Vec::with_capacity(1024);
    // Made once: a new one per connection would join and leave the token's
    // waiter list every time.
    let cancelled = shared.shutdown.cancelled();
    tokio::pin!(cancelled);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut cancelled => {
                shared.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            r = accept(&listener) => r,
        };
        let (stream, remote) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        input.clear();
        output.clear();
        let Some(pending) = serve_inline(&shared.tracker, &stream, remote, &mut input, &mut output)
        else {
            // Answered with `Connection: close` (or gone): dropping closes.
            continue;
        };
        // The connection stays open: now the caps apply. Over one, the
        // request waiting (if any) is told why, and the connection closed.
        let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
            refuse(&shared.tracker, &stream, &pending, &mut output);
            continue;
        };
        let Some(slot) = shared.per_ip.acquire(remote.ip()) else {
            refuse(&shared.tracker, &stream, &pending, &mut output);
            continue;
        };
        // SAFETY: the `AsyncFd` owns the stream, which owns its descriptor
        // until the `AsyncFd` is dropped or `into_inner` returns it.
        let Ok(stream) = (unsafe { AsyncFd::register(stream) }) else {
            continue;
        };
        let shared2 = shared.clone();
        shared.tasks.spawn(async move {
            connection(stream, remote, pending, &slot.conn, &shared2).await;
            drop((permit, slot));
        });
    }
}

/// A connection over a cap: a request that has come and is not answered
/// yet gets a failure reason with `Connection: close` (best effort, without
/// waiting), rather than a close without a word. One answered already
/// (inline, before the caps apply) is simply closed.
#[cold]
fn refuse(tracker: &Tracker, stream: &std::net::TcpStream, pending: &Pending, out: &mut Vec<u8>) {
    let unanswered = matches!(pending.then, Then::Read | Then::Hyper) && !pending.input.is_empty();
    if !pending.output.is_empty() || !unanswered {
        return;
    }
    out.clear();
    h1::refusal(
        tracker,
        "too many connections from your address; try again later",
        out,
    );
    if send_now(stream.as_fd(), out).is_ok() {
        let _ = stream.shutdown(std::net::Shutdown::Write);
    }
}

/// What a connection does once the requests at the start of its input
/// are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// Read on (keep-alive; what is left is at most part of a head).
    Read,
    /// Close once the replies are out.
    Close,
    /// Close once the replies are out, but read (and drop) what the client
    /// still sends first: see [`linger`].
    Linger,
    /// Hand the rest of the input to hyper.
    Hyper,
}

/// Answers every complete fast-path request at the start of `input`
/// (pipelined ones in order) into `output`. Returns how many bytes were
/// consumed and what the connection does next.
fn serve_all(
    tracker: &Tracker,
    input: &[u8],
    remote: SocketAddr,
    output: &mut Vec<u8>,
) -> (usize, Then) {
    let mut pos = 0;
    while pos < input.len() {
        match h1::serve_one(tracker, &input[pos..], remote, output) {
            h1::Head::Answered { len, keep_alive } => {
                pos += len;
                if !keep_alive {
                    return (pos, Then::Close);
                }
            }
            h1::Head::Partial => break,
            h1::Head::Other => return (pos, Then::Hyper),
            h1::Head::Rejected => return (input.len(), Then::Linger),
        }
    }
    (pos, Then::Read)
}

/// The accept loop's attempt to answer a new connection at once: reads
/// what has arrived (without waiting) and answers the fast-path requests in
/// it. `None` when the connection is done (answered and to be closed, or
/// closed by the peer); otherwise what a connection task must carry on
/// with.
fn serve_inline(
    tracker: &Tracker,
    stream: &std::net::TcpStream,
    remote: SocketAddr,
    input: &mut Vec<u8>,
    output: &mut Vec<u8>,
) -> Option<Pending> {
    let fd = stream.as_fd();
    let space = input.capacity() - input.len();
    let drained = match recv_into(fd, input) {
        Ok(0) => return None,
        Ok(n) => n < space,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
        Err(_) => return None,
    };
    let (pos, then) = serve_all(tracker, input, remote, output);
    let close = then == Then::Close;
    let mut written = 0;
    if !output.is_empty() {
        // A reply followed by a close is held back (`MSG_MORE`) so that
        // the close puts the FIN in the reply's segment and pushes both:
        // one packet fewer per connection, for us and for the client. Not
        // when input is left unread: closing then resets the connection,
        // and a reset throws away a reply still held.
        let more = if close && drained && pos == input.len() {
            rustix::net::SendFlags::MORE
        } else {
            rustix::net::SendFlags::empty()
        };
        written = match send_flags(fd, output, more) {
            Ok(w) => w,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => return None,
        };
        if close && written == output.len() {
            return None;
        }
    }
    Some(Pending {
        input: match then {
            Then::Close | Then::Linger => Vec::new(),
            Then::Read | Then::Hyper => input[pos..].to_vec(),
        },
        output: output[written..].to_vec(),
        then,
    })
}

/// One connection after the accept loop: the fast path's keep-alive loop
/// (pipelined requests answered in order), or hyper for anything else.
///
/// Per request this costs one `recv` and one `send`: a read that leaves
/// the buffer short has drained the socket, so readiness is cleared without
/// a second `recv` to see `EAGAIN`; the idle timer and the shutdown
/// future are set up once per connection, not per request.
async fn connection(
    stream: AsyncFd<std::net::TcpStream>,
    remote: SocketAddr,
    pending: Pending,
    conn: &Arc<Conn>,
    shared: &Shared,
) {
    let Pending {
        mut input,
        mut output,
        mut then,
    } = pending;
    // A connection must complete a request head in every idle period: the
    // timer is not re-armed per request (no clock read, no timer-wheel
    // work), only when a period ends with requests served in it — so an
    // idle connection is closed between one and two periods after its
    // last request.
    let idle = shared.idle_timeout;
    let mut served = false;
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    let cancelled = shared.shutdown.cancelled();
    tokio::pin!(cancelled);
    let evicted = conn.evict.notified();
    tokio::pin!(evicted);
    loop {
        if !output.is_empty() {
            if write_all(&stream, &output, idle).await.is_err() {
                return;
            }
            output.clear();
        }
        match then {
            Then::Close => return,
            Then::Linger => return linger(&stream, input, &shared.shutdown).await,
            Then::Read | Then::Hyper => {}
        }
        let (pos, next) = serve_all(&shared.tracker, &input, remote, &mut output);
        then = next;
        // Shutting down: answer what has come, then close.
        if then == Then::Read
            && pos > 0
            && shared.stopping.load(std::sync::atomic::Ordering::Relaxed)
        {
            then = Then::Close;
        }
        input.drain(..pos);
        if then == Then::Hyper {
            // Replies to earlier pipelined requests go out first.
            if !output.is_empty() && write_all(&stream, &output, idle).await.is_err() {
                return;
            }
            let stream = stream.into_inner();
            if stream.set_nonblocking(true).is_err() {
                return;
            }
            let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
                return;
            };
            return hyper_connection(h1::Rewind::new(input, stream), remote, conn, shared).await;
        }
        if pos > 0 {
            served = true;
            continue;
        }
        // Wait for more of a head: at most until the deadline, and not at
        // all once shutting down (or evicted to make room for another
        // connection from the address) if no request is under way.
        let waiting_idle = input.is_empty();
        if waiting_idle {
            conn.idle();
        }
        let mut ready = loop {
            tokio::select! {
                biased;
                r = stream.readable() => match r {
                    Ok(guard) => break guard,
                    Err(_) => return,
                },
                _ = &mut cancelled, if waiting_idle => return,
                _ = &mut evicted, if waiting_idle => return,
                _ = &mut timer => {
                    if !served {
                        return;
                    }
                    served = false;
                    timer.as_mut().reset(tokio::time::Instant::now() + idle);
                }
            }
        };
        if waiting_idle && !conn.busy() {
            return;
        }
        // Room for more (a head that outgrows MAX_HEAD is refused, so the
        // buffer stays under twice that).
        let want = (input.len() + 4096).min(MAX_HEAD);
        input.reserve(want.saturating_sub(input.len()).max(1));
        let space = input.capacity() - input.len();
        match recv_into(stream.get_ref().as_fd(), &mut input) {
            Ok(0) => return,
            // A short read drained the socket: the next `recv` would only
            // say `EAGAIN`.
            Ok(n) if n < space => ready.clear_ready(),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
            Err(_) => return,
        }
    }
}

/// How long, and for how many bytes at most, a connection closed on a
/// refused request keeps reading: see [`linger`].
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 4 << 20;

/// After a reply that ends the connection while the client may still be
/// sending (a head refused as too long or malformed; a client that writes
/// its whole request before it reads): the FIN goes out after the reply,
/// then what arrives is read and thrown away — into `buf`, not kept —
/// until the client closes its side, for at most [`LINGER`] and
/// [`LINGER_BYTES`]. Closing with unread input would reset the connection,
/// and a reset can destroy the reply before the client has read it.
async fn linger(
    stream: &AsyncFd<std::net::TcpStream>,
    mut buf: Vec<u8>,
    shutdown: &CancellationToken,
) {
    if stream
        .get_ref()
        .shutdown(std::net::Shutdown::Write)
        .is_err()
    {
        return;
    }
    buf.clear();
    buf.reserve(16 * 1024);
    let fd = stream.get_ref().as_fd();
    let drain = async {
        let mut total = 0;
        while total < LINGER_BYTES {
            let Ok(mut ready) = stream.readable().await else {
                return;
            };
            buf.clear();
            match recv_into(fd, &mut buf) {
                Ok(0) => return,
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                Err(_) => return,
            }
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(LINGER, drain) => {}
        _ = shutdown.cancelled() => {}
    }
}

/// Writes `buf` out: at once when the socket takes it (the usual case), or
/// waiting for the client to read, for at most `limit` — a client that
/// pipelines requests and never reads its replies must not hold its
/// connection slot for ever.
async fn write_all(
    stream: &AsyncFd<std::net::TcpStream>,
    mut buf: &[u8],
    limit: Duration,
) -> io::Result<()> {
    let fd = stream.get_ref().as_fd();
    while !buf.is_empty() {
        match send_now(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    if buf.is_empty() {
        return Ok(());
    }
    let rest = async {
        while !buf.is_empty() {
            let mut ready = stream.writable().await?;
            if let Ok(r) = ready.try_io(|_| send_now(fd, buf)) {
                buf = &buf[r?..];
            }
        }
        Ok(())
    };
    tokio::time::timeout(limit, rest)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// Hyper and the axum router, for everything the fast path does not serve.
///
/// It counts as idle (evictable, see [`PerIp`]) but while the router
/// handles a request; evicted, it closes as at shutdown.
async fn hyper_connection(
    io: h1::Rewind<tokio::net::TcpStream>,
    remote: SocketAddr,
    conn: &Arc<Conn>,
    shared: &Shared,
) {
    let router = shared.router.clone();
    let tracker = shared.tracker.clone();
    conn.idle();
    let evicted = conn.evict.notified();
    let for_service = conn.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        for_service.busy();
        let busy = Busy(for_service.clone());
        let router = router.clone();
        let tracker = tracker.clone();
        async move {
            let _busy = busy;
            // `/announce` that the fast path left (a body, too many
            // headers, an async store, …) still skips the router: no
            // extractor clones, no boxed future.
            if req.method() == hyper::Method::GET && req.uri().path() == "/announce" {
                let query = req.uri().query().unwrap_or("");
                let reply =
                    crate::http::announce_reply(&tracker, None, query, remote, req.headers()).await;
                return Ok(reply);
            }
            req.extensions_mut().insert(ConnectInfo(remote));
            router.oneshot(req.map(axum::body::Body::new)).await
        }
    });
    let conn = shared.http.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let stop = async {
        tokio::select! {
            _ = shared.shutdown.cancelled() => {}
            _ = evicted => {}
        }
    };
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop => {
            // Finish the request under way (if any), then close.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::trace!("connection from {remote}: {e}");
    }
}

/// Marks a hyper connection idle again once its request is answered (or
/// the handler dropped).
struct Busy(Arc<Conn>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_address_evicts_its_oldest_idle_connection_first() {
        let table = Arc::new(PerIp::new(3));
        let ip: std::net::IpAddr = [10, 0, 0, 1].into();
        let slots: Vec<IpSlot> = (0..3).map(|_| table.acquire(ip).unwrap()).collect();
        // All busy: no room.
        assert!(table.acquire(ip).is_none());
        // Another address is not affected.
        assert!(table.acquire([10, 0, 0, 2].into()).is_some());
        slots[2].conn.idle();
        slots[1].conn.idle();
        let fourth = table.acquire(ip).unwrap();
        // The older of the idle two goes, and is told so.
        assert!(!slots[1].conn.busy());
        assert!(slots[2].conn.busy());
        assert!(slots[0].conn.busy());
        assert!(table.acquire(ip).is_none());
        // Once it is gone, its place does not come back twice.
        let mut slots = slots;
        drop(slots.remove(1));
        assert!(table.acquire(ip).is_none());
        drop(fourth);
        let again = table.acquire(ip).unwrap();
        drop((slots, again));
        assert!(table.open.lock().unwrap().is_empty());
    }

    #[test]
    fn evictions_on_their_way_out_are_bounded() {
        let table = Arc::new(PerIp::new(2));
        let ip: std::net::IpAddr = [10, 0, 0, 1].into();
        let mut slots = Vec::new();
        // Each new connection goes idle at once and evicts an older one,
        // whose task never runs to close it.
        for _ in 0..4 {
            let slot = table.acquire(ip).unwrap();
            slot.conn.idle();
            slots.push(slot);
        }
        // 2 live + 2 evicted: the most there may be.
        assert!(table.acquire(ip).is_none());
        assert_eq!(table.open.lock().unwrap()[&ip].conns.len(), 4);
    }
}
