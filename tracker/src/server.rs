//! Sockets and runtimes. Per-connection cost decides a tracker's speed
//! (clients open a new connection for each announce), so: one thread per
//! core, each with a current-thread tokio runtime and its own
//! `SO_REUSEPORT` listener on every address (the kernel spreads incoming
//! connections over them), plain hyper HTTP/1 with no work on the
//! connection path that can wait. Connections that send nothing for
//! `idle_timeout` are closed, request heads are capped in size, and the
//! number of open connections is bounded.
//!
//! Shutdown is graceful: after the token is cancelled no connection is
//! accepted, in-flight requests finish (bounded by `drain_timeout`), then
//! the threads exit.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::{app, Tracker};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: Vec<SocketAddr>,
    /// Worker threads (each with its own listeners); default: cores.
    pub threads: usize,
    /// Close a connection that sends no complete request head for this long.
    pub idle_timeout: Duration,
    /// Open connections at most (beyond it new ones are closed at once).
    pub max_connections: usize,
    /// Open connections from one IP address at most, so one host cannot
    /// take every slot.
    pub max_connections_per_ip: usize,
    /// How long shutdown waits for in-flight requests.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 6969))],
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
    socket.listen(4096)?;
    Ok(socket.into())
}

pub fn bind(opts: ServeOptions) -> io::Result<Bound> {
    let threads = opts.threads.max(1);
    let mut per_thread: Vec<Vec<std::net::TcpListener>> =
        (0..threads).map(|_| Vec::new()).collect();
    let mut addrs = Vec::new();
    for &addr in &opts.listen {
        let first = listener(addr)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        let actual = first.local_addr()?;
        addrs.push(actual);
        per_thread[0].push(first);
        for sockets in per_thread.iter_mut().skip(1) {
            sockets.push(listener(actual)?);
        }
    }
    Ok(Bound {
        opts,
        per_thread,
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
        let mut threads = Vec::new();
        for (i, sockets) in self.per_thread.into_iter().enumerate() {
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
                        rt.block_on(worker(
                            sockets, tracker, router, shutdown, permits, per_ip, opts,
                        ))
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

/// Open connections per client address.
struct PerIp {
    max: usize,
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection's place in [`PerIp`]; released on drop.
struct IpSlot {
    table: Arc<PerIp>,
    ip: std::net::IpAddr,
}

impl PerIp {
    fn new(max: usize) -> PerIp {
        PerIp {
            max,
            open: Default::default(),
        }
    }

    fn acquire(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<IpSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
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
    let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(opts.idle_timeout)
        .max_buf_size(MAX_HEAD)
        .keep_alive(true);
    let http = Arc::new(http);
    let mut loops = Vec::new();
    for std_listener in sockets {
        match tokio::net::TcpListener::from_std(std_listener) {
            Ok(listener) => loops.push(tokio::spawn(accept_loop(
                listener,
                Shared {
                    tracker: tracker.clone(),
                    router: router.clone(),
                    http: http.clone(),
                    graceful: graceful.clone(),
                    permits: permits.clone(),
                    per_ip: per_ip.clone(),
                },
                shutdown.clone(),
            ))),
            Err(e) => tracing::error!("cannot use listener: {e}"),
        }
    }
    for l in loops {
        let _ = l.await;
    }
    // The accept loops are gone, so this is the last reference.
    if let Ok(graceful) = Arc::try_unwrap(graceful) {
        if tokio::time::timeout(opts.drain_timeout, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after {:?}", opts.drain_timeout);
        }
    }
}

/// What every accept loop of a worker shares.
struct Shared {
    tracker: Arc<Tracker>,
    router: Router,
    http: Arc<hyper::server::conn::http1::Builder>,
    graceful: Arc<hyper_util::server::graceful::GracefulShutdown>,
    permits: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Shared,
    shutdown: CancellationToken,
) {
    let Shared {
        tracker,
        router,
        http,
        graceful,
        permits,
        per_ip,
    } = shared;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
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
        // Over a cap: dropping the stream closes it.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue;
        };
        let Some(slot) = per_ip.acquire(remote.ip()) else {
            continue;
        };
        // TCP_NODELAY is inherited from the listener.
        let router = router.clone();
        let tracker = tracker.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            // The hot path, /announce, skips the router: no extractor
            // clones, no boxed future.
            let fast = (req.method() == hyper::Method::GET && req.uri().path() == "/announce")
                .then(|| {
                    let query = req.uri().query().unwrap_or("");
                    crate::http::announce_reply(&tracker, None, query, remote, req.headers())
                });
            let router = router.clone();
            async move {
                match fast {
                    Some(reply) => Ok(reply),
                    None => {
                        req.extensions_mut().insert(ConnectInfo(remote));
                        router.oneshot(req.map(axum::body::Body::new)).await
                    }
                }
            }
        });
        let conn = graceful
            .watcher()
            .watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::trace!("connection from {remote}: {e}");
            }
            drop((permit, slot));
        });
    }
}
