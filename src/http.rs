//! HTTP listener: Prometheus metrics, liveness and readiness probes, and the daemon's digests.
//!
//! A deliberately small HTTP/1.1 server: one request per connection (`Connection: close`),
//! GET only, a head of at most 8 KiB read within 5 s, no request bodies. Anything a client sends
//! is treated as untrusted; bad input gets a 4xx answer or a closed connection, never a panic.
//! Each listener serves at most [`MAX_HTTP_CONNECTIONS`] connections at once; one more is closed
//! as soon as it is accepted and counted (`typha_http_connections_refused_total`), so a flood of
//! idle connections costs at most that many tasks for at most the head timeout each, and the
//! probes answer again as soon as a slot frees.
//!
//! The health listener (Typha's 9098) serves the probes; the metrics listener (9093) serves
//! `/metrics` and `/digest`. Each answers 404 for the other's routes, so a probe pointed at the
//! wrong port fails loudly instead of passing by accident.
//!
//! Routes:
//! * `/metrics`: the Prometheus text exposition.
//! * `/liveness`: 200 `ok`, or 503 with the reason (a stalled thread, the reactor stopped, the
//!   datastore unreachable for longer than its timeout).
//! * `/readiness`: 200 `ok`, or 503 with the reason (not in sync, at the connection limit).
//! * `/digest[?seq=N]`: the newest `(seq, digest)` record, or the one for `N`, as JSON
//!   `{"seq":N,"syncers":{"felix":{"keys":K,"digest":"<32 hex>"},...}}`; 404 when `N` is no
//!   longer (or not yet) held, 503 before the first record.

use crate::metrics::Metrics;
use crate::model::SyncerType;
use crate::status::{DigestRecord, StatusBoard};
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest request head accepted.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client has to take the response.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After answering, how long (and how much) unread input is drained before closing, so that
/// closing with unread data (which makes the kernel send a reset) does not destroy the response.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);
const DRAIN_BYTES: usize = 64 * 1024;
/// Connections each listener serves at once. Probes and scrapes come one at a time; a few
/// dozen leave room for several scrapers and kubelets.
pub const MAX_HTTP_CONNECTIONS: usize = 64;
/// Largest response `http_get` reads.
const MAX_RESPONSE_BYTES: u64 = 64 * 1024 * 1024;

/// What the endpoints report on.
pub struct HttpContext {
    pub metrics: Arc<Metrics>,
    pub status: Arc<StatusBoard>,
    /// Liveness fails when a thread has made no progress for this long.
    pub liveness_stall: Duration,
    /// Liveness fails when the datastore has been unreachable for this long.
    pub datastore_unreachable: Duration,
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoints {
    /// `/liveness` and `/readiness`.
    Health,
    /// `/metrics` and `/digest`.
    Metrics,
    /// Everything (one listener for both, as in tests).
    All,
}

impl Endpoints {
    fn serves(self, path: &str) -> bool {
        match self {
            Endpoints::All => true,
            Endpoints::Health => matches!(path, "/liveness" | "/readiness"),
            Endpoints::Metrics => matches!(path, "/metrics" | "/digest"),
        }
    }
}

/// A listener's bounds.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Time a client has to send its request head.
    pub head_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: MAX_HTTP_CONNECTIONS,
            head_timeout: HEAD_TIMEOUT,
        }
    }
}

/// Accepts connections forever with the default [`HttpLimits`].
pub async fn serve(listener: TcpListener, ctx: Arc<HttpContext>, endpoints: Endpoints) {
    serve_with_limits(listener, ctx, endpoints, HttpLimits::default()).await
}

/// Accepts connections forever, one task per connection, at most `limits.max_connections` at
/// once. Accept errors (such as running out of file descriptors) are retried after a short
/// pause and logged when they start and when they stop, not on every retry.
pub async fn serve_with_limits(
    listener: TcpListener,
    ctx: Arc<HttpContext>,
    endpoints: Endpoints,
    limits: HttpLimits,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut failing_since: Option<(Instant, u64)> = None;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if let Some((since, failures)) = failing_since.take() {
                    tracing::info!(failures, after = ?since.elapsed(), "http accept works again");
                }
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    ctx.metrics
                        .http_connections_refused
                        .with_label_values(&["over_limit"])
                        .inc();
                    drop(stream);
                    continue;
                };
                let ctx = Arc::clone(&ctx);
                tokio::spawn(async move {
                    handle_connection(stream, &ctx, endpoints, limits.head_timeout).await;
                    drop(slot);
                    tracing::trace!(%peer, "http connection done");
                });
            }
            Err(e) => {
                match &mut failing_since {
                    Some((_, failures)) => *failures += 1,
                    None => {
                        tracing::warn!(error = %e,
                            "http accept failing; retrying every 100 ms, logged again once it works");
                        failing_since = Some((Instant::now(), 1));
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A response ready to write.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Response {
    status: u16,
    content_type: &'static str,
    body: String,
    allow_get: bool,
}

impl Response {
    fn text(status: u16, body: impl Into<String>) -> Self {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
            allow_get: false,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        if self.allow_get {
            head.push_str("Allow: GET\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(self.body.as_bytes());
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

enum HeadError {
    /// No complete head within [`MAX_HEAD_BYTES`].
    TooLarge,
    /// The peer closed before sending a complete head (possibly before sending anything).
    Incomplete {
        empty: bool,
    },
    Io,
}

/// Where the head ends (the index after the blank line), if it is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|p| p + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Incomplete {
                empty: buf.is_empty(),
            });
        }
        let searched_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf[searched_from..]).map(|e| e + searched_from) {
            if end > MAX_HEAD_BYTES {
                return Err(HeadError::TooLarge);
            }
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() >= MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

async fn handle_connection(
    mut stream: TcpStream,
    ctx: &HttpContext,
    endpoints: Endpoints,
    head_timeout: Duration,
) {
    let response = match tokio::time::timeout(head_timeout, read_head(&mut stream)).await {
        Err(_) => {
            ctx.metrics
                .http_connections_refused
                .with_label_values(&["head_timeout"])
                .inc();
            Response::text(408, "request head not received in time\n")
        }
        Ok(Err(HeadError::TooLarge)) => Response::text(400, "request head too large\n"),
        Ok(Err(HeadError::Incomplete { empty: true })) | Ok(Err(HeadError::Io)) => return,
        Ok(Err(HeadError::Incomplete { empty: false })) => {
            Response::text(400, "incomplete request head\n")
        }
        Ok(Ok(head)) => respond(&head, ctx, endpoints),
    };
    let bytes = response.to_bytes();
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&bytes)).await {
        Ok(Ok(())) => {}
        _ => return,
    }
    let _ = stream.shutdown().await;
    // Drain what the client may still be sending (a body we ignore, the rest of an oversized
    // head) so the close does not reset the connection before the client reads the answer.
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut sink = [0u8; 4096];
        let mut drained = 0usize;
        while drained < DRAIN_BYTES {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// Parses the request line and routes it. Header fields are not needed by any route and are
/// ignored.
fn respond(head: &[u8], ctx: &HttpContext, endpoints: Endpoints) -> Response {
    let Ok(head) = std::str::from_utf8(head) else {
        return Response::text(400, "request head is not UTF-8\n");
    };
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split_ascii_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::text(400, "malformed request line\n");
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Response::text(400, "malformed request line\n");
    }
    if method != "GET" {
        let mut r = Response::text(405, "only GET is supported\n");
        r.allow_get = true;
        return r;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if !endpoints.serves(path) {
        return Response::text(404, "not found\n");
    }
    match path {
        "/metrics" => {
            ctx.metrics.observe_status(&ctx.status);
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: ctx.metrics.render(),
                allow_get: false,
            }
        }
        "/liveness" => match ctx
            .status
            .liveness(ctx.liveness_stall, ctx.datastore_unreachable)
        {
            Ok(()) => Response::text(200, "ok"),
            Err(reason) => Response::text(503, reason),
        },
        "/readiness" => match ctx.status.readiness() {
            Ok(()) => Response::text(200, "ok"),
            Err(reason) => Response::text(503, reason),
        },
        "/digest" => digest_route(query, &ctx.status),
        _ => Response::text(404, "not found\n"),
    }
}

fn digest_route(query: Option<&str>, status: &StatusBoard) -> Response {
    let mut seq = None;
    for pair in query.unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("seq=") {
            match v.parse::<u64>() {
                Ok(n) => seq = Some(n),
                Err(_) => return Response::text(400, "seq must be a decimal number\n"),
            }
        }
    }
    match status.digests(seq) {
        Some(rec) => Response {
            status: 200,
            content_type: "application/json",
            body: digest_json(&rec),
            allow_get: false,
        },
        None => match (seq, status.digests(None)) {
            (_, None) => Response::text(503, "no digest recorded yet\n"),
            (Some(s), Some(newest)) => Response::text(
                404,
                format!("sequence {s} is not held (newest is {})\n", newest.seq),
            ),
            (None, Some(_)) => Response::text(503, "no digest recorded yet\n"),
        },
    }
}

/// `{"seq":N,"syncers":{"felix":{"keys":K,"digest":"<hex>"},...}}`, syncers in
/// [`SyncerType::ALL`] order. Every piece is a number, a fixed name or hex, so nothing needs
/// escaping.
fn digest_json(rec: &DigestRecord) -> String {
    let mut s = format!("{{\"seq\":{},\"syncers\":{{", rec.seq);
    for (i, t) in SyncerType::ALL.iter().enumerate() {
        let v = &rec.views[t.index()];
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "\"{}\":{{\"keys\":{},\"digest\":\"{}\"}}",
            t.as_str(),
            v.key_count,
            v.digest
        );
    }
    s.push_str("}}");
    s
}

/// A blocking GET, for tests and tools: returns the status code and the body. `timeout` bounds
/// the whole exchange (connect, write and read).
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path must start with / and contain no spaces or control characters",
        ));
    }
    let deadline = Instant::now() + timeout;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "http_get timed out"))
    };
    let mut stream = std::net::TcpStream::connect_timeout(&addr, remaining()?)?;
    stream.set_write_timeout(Some(remaining()?))?;
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        stream.set_read_timeout(Some(remaining()?))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() as u64 > MAX_RESPONSE_BYTES {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "response too large",
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    parse_response(&buf)
}

fn parse_response(buf: &[u8]) -> io::Result<(u16, String)> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no complete response head"))?;
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| bad("response head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(bad("not an HTTP/1 response"));
    }
    let code = parts
        .next()
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| bad("bad status code"))?;
    let mut body = &buf[end + 4..];
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-length") {
                if let Ok(len) = value.trim().parse::<usize>() {
                    if len <= body.len() {
                        body = &body[..len];
                    }
                }
            }
        }
    }
    Ok((code, String::from_utf8_lossy(body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Digest, SyncStatus};
    use crate::status::ViewDigest;

    const T: Duration = Duration::from_secs(5);

    fn start(ctx: Arc<HttpContext>) -> SocketAddr {
        start_with(ctx, Endpoints::All)
    }

    fn start_with(ctx: Arc<HttpContext>, endpoints: Endpoints) -> SocketAddr {
        start_limited(ctx, endpoints, HttpLimits::default())
    }

    fn start_limited(
        ctx: Arc<HttpContext>,
        endpoints: Endpoints,
        limits: HttpLimits,
    ) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                serve_with_limits(listener, ctx, endpoints, limits).await;
            });
        });
        addr
    }

    fn context(stall: Duration) -> Arc<HttpContext> {
        Arc::new(HttpContext {
            metrics: Arc::new(Metrics::new()),
            status: Arc::new(StatusBoard::new()),
            liveness_stall: stall,
            datastore_unreachable: Duration::from_secs(300),
        })
    }

    /// Sends raw bytes and returns whatever comes back (or the I/O error).
    fn raw(addr: SocketAddr, request: &[u8]) -> io::Result<Vec<u8>> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, T)?;
        s.set_read_timeout(Some(T))?;
        s.set_write_timeout(Some(T))?;
        s.write_all(request)?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    }

    fn raw_status(addr: SocketAddr, request: &[u8]) -> u16 {
        let out = raw(addr, request).unwrap();
        parse_response(&out).unwrap().0
    }

    fn record(seq: u64) -> DigestRecord {
        let mut views = [ViewDigest {
            key_count: 0,
            digest: Digest::default(),
        }; SyncerType::COUNT];
        for (i, v) in views.iter_mut().enumerate() {
            v.key_count = seq * 10 + i as u64;
            v.digest = Digest(u128::from(seq) << 64 | i as u128);
        }
        DigestRecord { seq, views }
    }

    /// Polls `cond` until it holds or `within` has passed.
    fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        cond()
    }

    #[test]
    fn connections_beyond_the_cap_are_closed_and_counted() {
        let ctx = context(Duration::from_secs(10));
        let limits = HttpLimits {
            max_connections: 3,
            head_timeout: Duration::from_millis(1500),
        };
        let addr = start_limited(ctx.clone(), Endpoints::All, limits);
        let refused = |reason: &str| {
            ctx.metrics
                .http_connections_refused
                .with_label_values(&[reason])
                .get()
        };
        // Three idle connections take every slot (each accepted once the server reads from it).
        let idle: Vec<std::net::TcpStream> = (0..3)
            .map(|_| std::net::TcpStream::connect_timeout(&addr, T).unwrap())
            .collect();
        // A fourth is closed without an answer while they hold their slots.
        // (Closed with the request unread, which the kernel may turn into a reset.)
        assert!(eventually(T, || {
            match raw(addr, b"GET /metrics HTTP/1.1\r\n\r\n") {
                Ok(out) => out.is_empty(),
                Err(e) => matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                ),
            }
        }));
        assert!(refused("over_limit") >= 1);
        // The idle ones are answered 408 at the head timeout, which frees their slots.
        for mut s in idle {
            s.set_read_timeout(Some(T)).unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            assert_eq!(parse_response(&out).unwrap().0, 408);
        }
        assert!(eventually(T, || refused("head_timeout") == 3));
        assert!(eventually(T, || raw(
            addr,
            b"GET /metrics HTTP/1.1\r\n\r\n"
        )
        .is_ok_and(
            |out| parse_response(&out).is_ok_and(|(code, _)| code == 200)
        )));
    }

    #[test]
    fn metrics_route() {
        let ctx = context(Duration::from_secs(10));
        ctx.metrics.connections_active.set(3);
        let addr = start(ctx);
        let (code, body) = http_get(addr, "/metrics", T).unwrap();
        assert_eq!(code, 200);
        assert!(body.contains("typha_connections_active 3"), "{body}");
        let out = raw(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("Content-Type: text/plain; version=0.0.4\r\n"));
        assert!(text.contains("Connection: close\r\n"));
    }

    #[test]
    fn liveness_follows_beats() {
        let ctx = context(Duration::from_millis(200));
        let status = Arc::clone(&ctx.status);
        let addr = start(ctx);
        std::thread::sleep(Duration::from_millis(300));
        let (code, body) = http_get(addr, "/liveness", T).unwrap();
        assert_eq!(code, 503);
        assert!(body.starts_with("reactor stalled for 0."), "{body}");
        status.reactor_beat();
        status.datastore_beat();
        assert_eq!(http_get(addr, "/liveness", T).unwrap(), (200, "ok".into()));
        status.set_reactor_stopped();
        let (code, body) = http_get(addr, "/liveness", T).unwrap();
        assert_eq!((code, body.as_str()), (503, "reactor stopped"));
    }

    #[test]
    fn liveness_fails_while_the_datastore_is_unreachable() {
        let ctx = Arc::new(HttpContext {
            metrics: Arc::new(Metrics::new()),
            status: Arc::new(StatusBoard::new()),
            liveness_stall: Duration::from_secs(60),
            datastore_unreachable: Duration::from_millis(200),
        });
        let status = Arc::clone(&ctx.status);
        status.reactor_beat();
        status.datastore_beat();
        let addr = start(ctx);
        // Untracked (the sim datastore): reachability plays no part.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(http_get(addr, "/liveness", T).unwrap(), (200, "ok".into()));
        status.track_datastore_contact();
        assert_eq!(http_get(addr, "/liveness", T).unwrap(), (200, "ok".into()));
        std::thread::sleep(Duration::from_millis(300));
        let (code, body) = http_get(addr, "/liveness", T).unwrap();
        assert_eq!(code, 503);
        assert!(body.starts_with("datastore unreachable for 0."), "{body}");
        status.datastore_contact();
        assert_eq!(http_get(addr, "/liveness", T).unwrap(), (200, "ok".into()));
    }

    #[test]
    fn each_listener_serves_only_its_routes() {
        let ctx = context(Duration::from_secs(10));
        ctx.status.reactor_beat();
        ctx.status.datastore_beat();
        ctx.status.record_digests(record(1));
        let health = start_with(Arc::clone(&ctx), Endpoints::Health);
        let metrics = start_with(ctx, Endpoints::Metrics);
        assert_eq!(http_get(health, "/liveness", T).unwrap().0, 200);
        assert_eq!(http_get(health, "/readiness", T).unwrap().0, 503);
        assert_eq!(http_get(health, "/metrics", T).unwrap().0, 404);
        assert_eq!(http_get(health, "/digest", T).unwrap().0, 404);
        assert_eq!(http_get(metrics, "/metrics", T).unwrap().0, 200);
        assert_eq!(http_get(metrics, "/digest", T).unwrap().0, 200);
        assert_eq!(http_get(metrics, "/liveness", T).unwrap().0, 404);
        assert_eq!(http_get(metrics, "/readiness", T).unwrap().0, 404);
    }

    #[test]
    fn readiness_follows_sync_status() {
        let ctx = context(Duration::from_secs(10));
        let status = Arc::clone(&ctx.status);
        let addr = start(ctx);
        let (code, body) = http_get(addr, "/readiness", T).unwrap();
        assert_eq!(code, 503);
        assert!(body.contains("wait-for-ready"), "{body}");
        status.set_sync_status(SyncStatus::InSync);
        assert_eq!(http_get(addr, "/readiness", T).unwrap(), (200, "ok".into()));
        status.set_connections(5, 5);
        let (code, body) = http_get(addr, "/readiness", T).unwrap();
        assert_eq!(
            (code, body.as_str()),
            (503, "at the connection limit (5/5)")
        );
        status.set_connections(4, 5);
        assert_eq!(http_get(addr, "/readiness", T).unwrap(), (200, "ok".into()));
    }

    #[test]
    fn digest_route_serves_records() {
        let ctx = context(Duration::from_secs(10));
        let status = Arc::clone(&ctx.status);
        let addr = start(ctx);
        assert_eq!(http_get(addr, "/digest", T).unwrap().0, 503);
        assert_eq!(http_get(addr, "/digest?seq=1", T).unwrap().0, 503);
        status.record_digests(record(7));
        status.record_digests(record(8));

        let (code, body) = http_get(addr, "/digest", T).unwrap();
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["seq"], 8);
        for (i, t) in SyncerType::ALL.iter().enumerate() {
            let view = &v["syncers"][t.as_str()];
            assert_eq!(view["keys"], 80 + i as u64, "{body}");
            let hex = view["digest"].as_str().unwrap();
            assert_eq!(hex.len(), 32);
            assert_eq!(Digest::from_hex(hex), Some(Digest(8u128 << 64 | i as u128)));
        }
        assert!(body.starts_with(r#"{"seq":8,"syncers":{"felix":{"keys":80,"digest":""#));

        let (code, body) = http_get(addr, "/digest?seq=7", T).unwrap();
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(v["syncers"]["bgp"]["keys"], 71);

        assert_eq!(http_get(addr, "/digest?seq=6", T).unwrap().0, 404);
        assert_eq!(http_get(addr, "/digest?seq=9", T).unwrap().0, 404);
        assert_eq!(http_get(addr, "/digest?seq=x", T).unwrap().0, 400);
        assert_eq!(http_get(addr, "/digest?other=1&seq=8", T).unwrap().0, 200);
    }

    #[test]
    fn errors_for_bad_requests() {
        let addr = start(context(Duration::from_secs(10)));
        assert_eq!(http_get(addr, "/nope", T).unwrap().0, 404);
        assert_eq!(http_get(addr, "/", T).unwrap().0, 404);
        assert_eq!(
            raw_status(
                addr,
                b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
            ),
            405
        );
        assert_eq!(raw_status(addr, b"DELETE /digest HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(raw_status(addr, b"garbage\r\n\r\n"), 400);
        assert_eq!(raw_status(addr, b"GET /metrics SPDY/3\r\n\r\n"), 400);
        assert_eq!(raw_status(addr, b"GET metrics HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(raw_status(addr, b"\xff\xfe\r\n\r\n"), 400);
        // HTTP/1.0 and bare-LF heads are accepted.
        assert_eq!(raw_status(addr, b"GET /metrics HTTP/1.0\n\n"), 200);
        // A half-sent head followed by a close gets a 400.
        assert_eq!(raw_status(addr, b"GET /metr"), 400);
        // A connection closed without a byte gets no answer.
        assert!(raw(addr, b"").unwrap().is_empty());
        assert_eq!(http_get(addr, "/metrics", T).unwrap().0, 200);
        assert!(http_get(addr, "/a b", T).is_err());
    }

    #[test]
    fn oversized_head_is_refused_without_harm() {
        let addr = start(context(Duration::from_secs(10)));
        let mut req = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat(b'a').take(MAX_HEAD_BYTES + 1000));
        req.extend_from_slice(b"\r\n\r\n");
        match raw(addr, &req) {
            Ok(out) if !out.is_empty() => assert_eq!(parse_response(&out).unwrap().0, 400),
            Ok(_) | Err(_) => {} // closed or reset: also acceptable
        }
        // Same, without ever finishing the head.
        let mut req = b"GET /metrics HTTP/1.1\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat(b'a').take(MAX_HEAD_BYTES * 4));
        let _ = raw(addr, &req);
        let (code, body) = http_get(addr, "/metrics", T).unwrap();
        assert_eq!(code, 200);
        assert!(body.contains("typha_connections_active"));
    }

    #[test]
    fn parse_response_handles_content_length() {
        let (c, b) =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA").unwrap();
        assert_eq!((c, b.as_str()), (200, "ok"));
        assert!(parse_response(b"junk").is_err());
        assert!(parse_response(b"HTTP/1.1 abc OK\r\n\r\n").is_err());
    }
}
