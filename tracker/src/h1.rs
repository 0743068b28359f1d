//! The announce/scrape fast path: a minimal HTTP/1.x server for exactly
//! `GET /announce?…` and `GET /scrape?…`, run directly on the socket.
//!
//! Why: the profile of `bench/tracker.sh` showed that with a new connection
//! per announce most of shoal's user time went to per-connection machinery
//! (epoll registration and deregistration, a spawned task, hyper's
//! connection state and buffers, a graceful-shutdown watcher, the per-IP
//! table) and to hyper's per-request work, not to the tracker. Here a
//! connection whose request is already waiting when it is accepted (the
//! usual case: clients send the request right after the handshake) is
//! answered inline by the accept loop — `accept4`, `ioctl`, `recvfrom`,
//! `write`, `close`, no task, no epoll — and a keep-alive connection gets a
//! small loop of its own. Everything else (other paths and methods,
//! passkey paths, bodies, heads httparse refuses) is handed to hyper and the
//! axum router with the bytes already read, so those behave exactly as
//! before.
//!
//! Bounds, as hyper had them: a head is at most [`MAX_HEAD`] bytes, a
//! connection that sends no complete head within the idle timeout is
//! closed, pipelined requests are answered in order, `Connection: close`
//! (and HTTP/1.0 without `keep-alive`) closes after the reply. The parser
//! is httparse on a fixed header array: nothing is allocated per request
//! but the reply body.
//!
//! A head that hyper would refuse with an empty 400 or 431 — too long,
//! bytes that are not allowed (raw control bytes or bytes that are not
//! UTF-8 in the URL), a broken header line — is refused here instead, with
//! a bencoded `failure reason` (HTTP 200 when a request line can be made
//! out at all, so clients show the reason) and `Connection: close`:
//! where such a head ends cannot be trusted, so nothing after it is
//! served.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::{HeaderMap, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::server::MAX_HEAD;
use crate::Tracker;

/// Headers per request at most on the fast path; a request with more goes
/// to hyper.
const MAX_HEADERS: usize = 32;

/// What the start of a connection's input holds.
pub(crate) enum Head {
    /// No complete head yet (and fewer than [`MAX_HEAD`] bytes).
    Partial,
    /// Not for the fast path: hand the connection to hyper.
    Other,
    /// A complete fast-path request of `len` bytes, answered into the
    /// output buffer; `keep_alive` says whether the connection stays open.
    Answered { len: usize, keep_alive: bool },
    /// A head that is not served (malformed, or too long): a failure
    /// reply was appended to the output buffer. The connection is to be
    /// closed after it, and what else the client sends thrown away.
    Rejected,
}

/// Parses one request head from `buf` and, if it is ours, appends the
/// whole HTTP reply to `out`.
pub(crate) fn serve_one(
    tracker: &Tracker,
    buf: &[u8],
    remote: SocketAddr,
    out: &mut Vec<u8>,
) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Head::Partial,
        Ok(_) => return reject(tracker, buf, Problem::TooLong, out),
        Err(httparse::Error::TooManyHeaders) => return many_headers(tracker, buf, out),
        Err(e) => return reject(tracker, buf, Problem::Malformed(e), out),
    };
    let (Some(target), Some(version)) = (req.path, req.version) else {
        return Head::Other;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let is_announce = match path {
        "/announce" if req.method == Some("GET") => true,
        "/scrape" if req.method == Some("GET") => false,
        // hyper's, unless it would refuse the URL (httparse takes any
        // UTF-8, `http::Uri` only ASCII).
        _ if axum::http::Uri::try_from(target).is_err() => {
            return reject(tracker, buf, Problem::Url, out)
        }
        _ => return Head::Other,
    };
    if tracker.is_async() {
        // The store must be awaited: hyper's connection task serves it.
        return Head::Other;
    }
    let real_ip = tracker.config().real_ip_header.as_ref();
    let mut proxy_headers = HeaderMap::new();
    let (mut close, mut keep) = (false, false);
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&c| c == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0")
        {
            // A GET with a body: rare enough to leave to hyper, which knows
            // how to skip it.
            return Head::Other;
        } else if let Some(name) = real_ip.filter(|n| h.name.eq_ignore_ascii_case(n.as_str())) {
            // Only the configured proxy header is kept (the only header
            // `Tracker::announce` reads), and only then is anything
            // allocated for headers.
            match HeaderValue::from_bytes(h.value) {
                Ok(v) => proxy_headers.append(name.clone(), v),
                Err(_) => return Head::Other,
            };
        }
    }
    // HTTP/1.1 keeps the connection unless told otherwise, 1.0 closes it
    // unless asked to keep it; `close` wins.
    let keep_alive = !close && (version == 1 || keep);
    let body = if is_announce {
        crate::http::reply_body(
            tracker,
            tracker.announce(None, query, remote, &proxy_headers),
        )
    } else {
        crate::http::reply_body(tracker, tracker.scrape(None, query))
    };
    write_reply(out, OK, &body, keep_alive, version == 0);
    Head::Answered { len, keep_alive }
}

/// Why a head is refused.
enum Problem {
    TooLong,
    TooManyHeaders,
    Malformed(httparse::Error),
    /// httparse took the URL, `http::Uri` (hence hyper) would not.
    Url,
}

const OK: &[u8] = b"HTTP/1.1 200 OK";

/// More headers than the fast path's array holds: hyper takes up to 100,
/// so only beyond that is the head refused.
#[cold]
fn many_headers(tracker: &Tracker, buf: &[u8], out: &mut Vec<u8>) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; 100];
    match httparse::Request::new(&mut headers).parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => Head::Other,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => Head::Partial,
        Ok(_) => reject(tracker, buf, Problem::TooLong, out),
        Err(httparse::Error::TooManyHeaders) => reject(tracker, buf, Problem::TooManyHeaders, out),
        Err(e) => reject(tracker, buf, Problem::Malformed(e), out),
    }
}

/// Appends the reply to a head that is not served: a bencoded failure
/// reason, with `200 OK` if the start of a request line (a method and a
/// target) can be read — so a client shows the reason, whatever it sent
/// in the query — and `400 Bad Request` for input that is not HTTP at all.
/// Only the first line of `buf` is looked at, so a head cut off at
/// [`MAX_HEAD`] still shows its route.
#[cold]
fn reject(tracker: &Tracker, buf: &[u8], problem: Problem, out: &mut Vec<u8>) -> Head {
    let line = buf.split(|&c| c == b'\n').next().unwrap_or(buf);
    let (method, rest) = line.split_at(memchr::memchr(b' ', line).unwrap_or(line.len()));
    let target = rest.get(1..).unwrap_or_default();
    let readable = !method.is_empty()
        && method.iter().all(u8::is_ascii_graphic)
        && (target.starts_with(b"/")
            || target.starts_with(b"http://")
            || target.starts_with(b"https://"));
    let path = target.split(|&c| c == b'?' || c == b' ').next();
    let scrape = path.is_some_and(|p| p.ends_with(b"/scrape"));
    let reason = match problem {
        Problem::TooLong if scrape => format!(
            "request too long (more than {MAX_HEAD} bytes; a scrape takes at most {} info_hash)",
            crate::request::MAX_SCRAPE
        ),
        Problem::TooLong => format!("request too long (more than {MAX_HEAD} bytes)"),
        Problem::TooManyHeaders => "too many request headers".to_string(),
        Problem::Malformed(httparse::Error::Version) => {
            "malformed request: not HTTP/1.0 or HTTP/1.1".to_string()
        }
        Problem::Malformed(httparse::Error::Token) | Problem::Url => {
            "malformed request: the URL has bytes that must be percent-encoded (control bytes, spaces, bytes that are not UTF-8)".to_string()
        }
        Problem::Malformed(e) => format!("malformed request: {e}"),
    };
    tracker.count_failure();
    let status: &[u8] = if readable {
        OK
    } else {
        b"HTTP/1.1 400 Bad Request"
    };
    write_reply(
        out,
        status,
        &crate::response::failure(&reason),
        false,
        false,
    );
    Head::Rejected
}

/// A request not served because its connection is over a cap: a failure
/// reason, and `Connection: close`.
#[cold]
pub(crate) fn refusal(tracker: &Tracker, reason: &str, out: &mut Vec<u8>) {
    tracker.count_failure();
    write_reply(out, OK, &crate::response::failure(reason), false, false);
}

/// `status` with the headers the router's reply has (no `date`:
/// trackers' clients do not use it, and opentracker sends none either).
fn write_reply(out: &mut Vec<u8>, status: &[u8], body: &[u8], keep_alive: bool, http10: bool) {
    out.extend_from_slice(status);
    out.extend_from_slice(b"\r\ncontent-type: text/plain\r\ncontent-length: ");
    crate::response::push_decimal(out, body.len() as u64);
    out.extend_from_slice(match (keep_alive, http10) {
        (false, _) => b"\r\nconnection: close\r\n\r\n".as_slice(),
        (true, true) => b"\r\nconnection: keep-alive\r\n\r\n",
        (true, false) => b"\r\n\r\n",
    });
    out.extend_from_slice(body);
}

/// A stream that first yields bytes already read from it: how a connection
/// the fast path does not serve reaches hyper intact.
pub(crate) struct Rewind<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Rewind {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, MemoryStore};
    use axum::http::HeaderName;
    use torrent_format::magnet::percent_encode_bytes;

    fn tracker() -> Tracker {
        Tracker::new(Config::default(), Box::<MemoryStore>::default()).unwrap()
    }

    fn announce(peer: u8, extra_headers: &str, version: &str) -> Vec<u8> {
        format!(
            "GET /announce?info_hash={}&peer_id={}&port=6881&uploaded=0&downloaded=0&left=0 {version}\r\nHost: x\r\n{extra_headers}\r\n",
            percent_encode_bytes(&[1; 20]),
            percent_encode_bytes(&[peer; 20])
        )
        .into_bytes()
    }

    fn serve(t: &Tracker, buf: &[u8]) -> (Head, String) {
        let mut out = Vec::new();
        let head = serve_one(t, buf, "10.0.0.1:5000".parse().unwrap(), &mut out);
        (head, String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn keep_alive_close_and_http10() {
        let t = tracker();
        let req = announce(1, "", "HTTP/1.1");
        let (head, out) = serve(&t, &req);
        assert!(matches!(head, Head::Answered { len, keep_alive: true } if len == req.len()));
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        let body = out.split("\r\n\r\n").nth(1).unwrap();
        assert!(out.contains(&format!("content-length: {}\r\n", body.len())));
        assert!(body.starts_with("d8:complete"), "{body}");

        let (head, out) = serve(
            &t,
            &announce(2, "Connection: keep-alive, Close\r\n", "HTTP/1.1"),
        );
        assert!(matches!(
            head,
            Head::Answered {
                keep_alive: false,
                ..
            }
        ));
        assert!(out.contains("connection: close\r\n"));
        let (head, _) = serve(&t, &announce(3, "", "HTTP/1.0"));
        assert!(matches!(
            head,
            Head::Answered {
                keep_alive: false,
                ..
            }
        ));
        let (head, out) = serve(&t, &announce(4, "Connection: keep-alive\r\n", "HTTP/1.0"));
        assert!(matches!(
            head,
            Head::Answered {
                keep_alive: true,
                ..
            }
        ));
        assert!(out.contains("connection: keep-alive\r\n"));
    }

    #[test]
    fn pipelined_requests_are_answered_one_at_a_time() {
        let t = tracker();
        let mut buf = announce(1, "", "HTTP/1.1");
        let first = buf.len();
        // Another peer (peers are told apart by address and port).
        let second = String::from_utf8(announce(2, "", "HTTP/1.1")).unwrap();
        buf.extend_from_slice(second.replace("port=6881", "port=6882").as_bytes());
        let (head, _) = serve(&t, &buf);
        assert!(matches!(head, Head::Answered { len, .. } if len == first));
        let (head, out) = serve(&t, &buf[first..]);
        assert!(matches!(head, Head::Answered { .. }));
        // The second announce sees the first (both are seeders).
        assert!(out.contains("8:completei2e"), "{out}");
    }

    #[test]
    fn everything_else_is_left_to_hyper() {
        let t = tracker();
        let req = announce(1, "", "HTTP/1.1");
        assert!(matches!(serve(&t, &req[..req.len() - 1]).0, Head::Partial));
        for other in [
            &b"GET /stats HTTP/1.1\r\n\r\n"[..],
            b"POST /announce?x HTTP/1.1\r\n\r\n",
            b"GET /key/announce?x HTTP/1.1\r\n\r\n",
            b"GET /announce?x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            b"GET /announce?x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            // Well-formed, up to 100 headers: hyper's.
            &format!("GET /announce?x HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(99)).into_bytes(),
        ] {
            assert!(matches!(serve(&t, other).0, Head::Other), "{other:?}");
        }
    }

    #[test]
    fn heads_hyper_would_refuse_get_failure_reasons() {
        let t = tracker();
        let mut long = b"GET /scrape?".to_vec();
        long.resize(MAX_HEAD, b'a');
        let cases: [(&[u8], &str, &str); 8] = [
            (
                b"GET /announce?\xff HTTP/1.1\r\n\r\n",
                "200 OK",
                "percent-encoded",
            ),
            (
                b"GET /stats\x01 HTTP/1.1\r\n\r\n",
                "200 OK",
                "percent-encoded",
            ),
            // A byte httparse takes but `http::Uri` does not.
            (
                b"GET /key/announce?a<b HTTP/1.1\r\n\r\n",
                "200 OK",
                "percent-encoded",
            ),
            (
                b"GET /announce?x HTTP/1.1\r\nBad Header\r\n\r\n",
                "200 OK",
                "header",
            ),
            (b"GET /announce?x HTTP/2.0\r\n\r\n", "200 OK", "HTTP/1.1"),
            // Cut off at the limit: the route is still read.
            (&long, "200 OK", "at most 100 info_hash"),
            (
                &format!("GET /announce?x HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(101)).into_bytes(),
                "200 OK",
                "too many request headers",
            ),
            // Not even a request line.
            (
                b"\x00\x01\x02 garbage\r\n\r\n",
                "400 Bad Request",
                "percent-encoded",
            ),
        ];
        for (request, status, reason) in cases {
            let (head, out) = serve(&t, request);
            assert!(matches!(head, Head::Rejected), "{request:?}");
            assert!(out.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{out}");
            assert!(out.contains("connection: close\r\n"), "{out}");
            let body = out.split("\r\n\r\n").nth(1).unwrap();
            assert!(out.contains(&format!("content-length: {}\r\n", body.len())));
            assert!(body.starts_with("d14:failure reason"), "{body}");
            assert!(body.contains(reason), "{request:?}: {body}");
        }
    }

    #[test]
    fn malformed_queries_get_failure_reasons() {
        let t = tracker();
        for q in ["", "info_hash=%zz", "info_hash=abc&peer_id=x&port=0"] {
            let req = format!("GET /announce?{q} HTTP/1.1\r\n\r\n");
            let (head, out) = serve(&t, req.as_bytes());
            assert!(matches!(head, Head::Answered { .. }));
            assert!(out.contains("14:failure reason"), "{out}");
        }
        let (_, out) = serve(&t, b"GET /scrape HTTP/1.1\r\n\r\n");
        assert!(out.contains("14:failure reason"), "{out}");
    }

    #[test]
    fn real_ip_header_is_honoured() {
        let config = Config {
            real_ip_header: Some(HeaderName::from_static("x-forwarded-for")),
            ..Config::default()
        };
        let t = Tracker::new(config, Box::<MemoryStore>::default()).unwrap();
        let (_, out) = serve(&t, &announce(1, "", "HTTP/1.1"));
        assert!(out.contains("missing x-forwarded-for header"), "{out}");
        let (_, out) = serve(&t, &announce(2, "X-Forwarded-For: 1.2.3.4\r\n", "HTTP/1.1"));
        assert!(!out.contains("failure"), "{out}");
    }
}
