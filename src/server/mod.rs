//! The reactor: one thread, a hand-written mio event loop owning every client socket.
//!
//! Each iteration: poll; accept new connections; read and decode what clients sent; on a wake,
//! take every batch the datastore thread queued (appending to the ring) and every finished
//! snapshot; then write to each connection that has something new, once, with one vectored
//! write covering everything it is owed (batches that arrived together merge into one syscall
//! per client); then, every tick, check timers and shed a client if over the connection target
//! or shutting down gradually (`docs/rebalancing.md`). Nothing here blocks and nothing is
//! encoded per client except its handshake reply and farewell: batches, snapshots and pings are
//! shared frames.
//!
//! The loop knows no protocol: each connection's [`Session`] decodes what the client sends,
//! answers its hello and says how to ping and close it; the shedding policy ([`shed`]) decides
//! whom to let go, outside the loop.

mod conn;
mod ring;
mod session;
pub mod shed;
mod snapshot;
mod tls;

pub use conn::{Completion, Connection, InFlight, Outbox, Phase, WriteTime, MAX_IOV};
pub use ring::Ring;
pub use session::{
    detect, Accepted, Detected, Release, Session, SessionContext, SessionEvent, SharedPings,
};
pub use snapshot::{Lookup, SnapshotCache, SnapshotKey, Waiter};
pub use tls::{ServerTls, TlsRead, TlsSession, TlsSettings, TLS_OUT_BUFFER};

use crate::batch::{BatchMessage, LegacyKeyDemand};
use crate::metrics::Metrics;
use crate::model::{now_unix_nanos, StateMap, SyncStatus};
use crate::proto::{self, Codec, GoodbyeReason};
use crate::rebalance::ConnectionTarget;
use crate::status::StatusBoard;
use crossbeam_channel::{Receiver, TryRecvError};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use shed::{Counts, Shed, ShedConfig, ShedPolicy, ShedReason};
use slab::Slab;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: usize = 2;

/// Connections beyond the limit are still accepted, told `Goodbye(ServerFull)` and closed;
/// past this many extra, they are closed without a word.
const REJECT_SLACK: usize = 256;

/// Read buffer shared by all connections: clients send only Hellos and Pongs.
const READ_SCRATCH: usize = 16 * 1024;

/// The default bound on live snapshot bytes (`TYPHA_SNAPSHOTCACHEMAXBYTES`): a fixed figure an
/// operator can size a memory limit against, many times a large cluster's snapshot
/// (docs/configuration.md says why).
pub const DEFAULT_SNAPSHOT_MAX_LIVE_BYTES: u64 = 512 << 20;

/// Whether the connection in the waiter's slot is still the one that asked and still has no
/// snapshot (slots are reused, and a connection may have closed meanwhile).
fn awaits_snapshot(c: Option<&Connection>, w: &Waiter) -> bool {
    c.is_some_and(|c| c.id == w.conn_id && c.phase() == Phase::Snapshot && c.out.next_seq.is_none())
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub listen_backlog: i32,
    pub handshake_timeout: Duration,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    pub write_timeout: Duration,
    pub max_fall_behind: Duration,
    pub max_connections: usize,
    pub max_input_frame: usize,
    /// Ring bounds: a client further behind than this is dropped as too slow.
    pub max_backlog_batches: usize,
    pub max_backlog_bytes: usize,
    pub snapshot_reuse: Duration,
    pub snapshot_chunk_bytes: usize,
    /// Bound on the encoded bytes of all snapshots still referenced (the cache's and those
    /// clients are still downloading); beyond it joiners share or wait rather than pin more.
    pub snapshot_max_live_bytes: u64,
    /// The codec for shared compressed frames; `None` disables compression.
    pub codec: Option<Codec>,
    /// How long a closing connection may take to accept its Goodbye and hang up.
    pub goodbye_grace: Duration,
    /// Timer resolution.
    pub tick: Duration,
    pub server_id: String,
    /// Above the connection target, one client is told `Goodbye(Rebalancing)` per interval.
    pub drop_interval: Duration,
    /// Where the replica counter publishes this replica's share (unset: only
    /// `max_connections` applies).
    pub connection_target: ConnectionTarget,
    /// A graceful shutdown sheds clients one at a time over (95 % of) this long, then says
    /// goodbye to whoever is left. Zero: everyone at once.
    pub shutdown_timeout: Duration,
    /// Longest gap between two shutdown drops.
    pub shutdown_drop_interval_max: Duration,
    /// TCP keepalive on client sockets: idle time, probe interval and probe count. With the
    /// user timeout below, they make the kernel notice a peer whose path vanished without a
    /// FIN or RST even while the reactor has nothing to send.
    pub keepalive_idle: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_count: u32,
    /// TCP_USER_TIMEOUT: how long written data may stay unacknowledged before the kernel
    /// fails the socket; `None` leaves the kernel's default (about 15 minutes of retries).
    pub tcp_user_timeout: Option<Duration>,
    /// TLS on the protocol port; `None` serves plaintext.
    pub tls: Option<TlsSettings>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 5473)),
            listen_backlog: 4096,
            handshake_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(10),
            pong_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(120),
            max_fall_behind: Duration::from_secs(300),
            max_connections: 10_000,
            max_input_frame: 64 * 1024,
            max_backlog_batches: 10_000,
            max_backlog_bytes: 256 << 20,
            snapshot_reuse: Duration::from_secs(1),
            snapshot_chunk_bytes: 256 * 1024,
            snapshot_max_live_bytes: DEFAULT_SNAPSHOT_MAX_LIVE_BYTES,
            codec: Some(Codec::Zstd),
            goodbye_grace: Duration::from_secs(5),
            tick: Duration::from_millis(100),
            server_id: "typha-rs".into(),
            drop_interval: Duration::from_secs(1),
            connection_target: ConnectionTarget::default(),
            // Embedded servers (tests) stop at once; the daemon's flag defaults to Typha's 300 s.
            shutdown_timeout: Duration::ZERO,
            shutdown_drop_interval_max: Duration::from_secs(1),
            keepalive_idle: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(10),
            keepalive_count: 3,
            tcp_user_timeout: Some(Duration::from_secs(60)),
            tls: None,
        }
    }
}

/// Asks a running reactor to shut down gracefully; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct ServerHandle {
    shutdown: Arc<AtomicBool>,
    shutdown_now: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ServerHandle {
    /// Stops accepting and sheds clients gradually over the shutdown timeout.
    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }

    /// As [`shutdown`](Self::shutdown), but says goodbye to every remaining client now (a
    /// second signal, or an embedding that cannot wait).
    pub fn shutdown_now(&self) {
        self.shutdown_now.store(true, Ordering::SeqCst);
        self.shutdown();
    }
}

/// Why the server closed a connection; the `reason` label of the drop metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DropReason {
    Goodbye(GoodbyeReason),
    HandshakeTimeout,
    PongTimeout,
    WriteTimeout,
    /// The kernel gave up on the peer: keepalive probes or TCP_USER_TIMEOUT expired.
    TcpTimeout,
    IoError,
    /// The TLS handshake failed: no or untrusted client certificate, not TLS at all, ...
    TlsHandshake,
    /// The client certificate's CN / URI SAN is not the allowed one.
    TlsIdentity,
    /// The first bytes were neither protocol.
    UnknownProtocol,
    /// A TLS record failed after the handshake.
    TlsError,
}

impl DropReason {
    /// Every reason, so each series exists (at zero) from the first scrape and `rate()` works.
    const ALL: [DropReason; 12] = [
        DropReason::Goodbye(GoodbyeReason::Shutdown),
        DropReason::Goodbye(GoodbyeReason::Rebalancing),
        DropReason::Goodbye(GoodbyeReason::TooSlow),
        DropReason::Goodbye(GoodbyeReason::ProtocolError),
        DropReason::Goodbye(GoodbyeReason::ServerFull),
        DropReason::Goodbye(GoodbyeReason::UnsupportedVersion),
        DropReason::HandshakeTimeout,
        DropReason::PongTimeout,
        DropReason::WriteTimeout,
        DropReason::TcpTimeout,
        DropReason::IoError,
        DropReason::UnknownProtocol,
    ];

    fn for_io_error(e: &io::Error) -> DropReason {
        if e.kind() == io::ErrorKind::TimedOut {
            DropReason::TcpTimeout
        } else {
            DropReason::IoError
        }
    }
}

impl DropReason {
    fn label(self) -> &'static str {
        match self {
            DropReason::Goodbye(r) => r.as_str(),
            DropReason::HandshakeTimeout => "handshake-timeout",
            DropReason::PongTimeout => "pong-timeout",
            DropReason::WriteTimeout => "write-timeout",
            DropReason::TcpTimeout => "tcp-timeout",
            DropReason::IoError => "io-error",
            DropReason::TlsHandshake => "tls-handshake",
            DropReason::TlsIdentity => "tls-identity",
            DropReason::TlsError => "tls-error",
            DropReason::UnknownProtocol => "unknown-protocol",
        }
    }
}

enum Housekeeping {
    Ping,
    Drop(DropReason, &'static str),
    Close,
}

pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    local_addr: SocketAddr,
    waker: Arc<Waker>,
    shutdown: Arc<AtomicBool>,
    shutdown_now: Arc<AtomicBool>,
    shutting_down: bool,
    /// Since when `accept` has been failing, and how often: logged once per change of state.
    accept_failing: Option<(Instant, u64)>,
    /// Whom to let go, and when: rebalancing and gradual shutdown.
    shed: ShedPolicy,
    conns: Slab<Connection>,
    next_conn_id: u64,
    rx: Receiver<BatchMessage>,
    datastore_gone: bool,
    ring: Ring,
    state: StateMap,
    status: SyncStatus,
    cache: SnapshotCache,
    /// Legacy (v3.31 policy key) clients, counted for the batcher, which encodes the legacy
    /// variants only while there is one.
    legacy: Arc<LegacyKeyDemand>,
    /// Legacy clients whose snapshot waits for the first batch encoded for them
    /// (slot, connection id).
    legacy_waiting: Vec<(usize, u64)>,
    cfg: ServerConfig,
    metrics: Arc<Metrics>,
    board: Arc<StatusBoard>,
    dirty: Vec<usize>,
    scratch: Box<[u8]>,
    inbox: Vec<SessionEvent>,
    actions: Vec<(usize, Housekeeping)>,
    next_tick: Instant,
    /// An accept failed (EMFILE and the like): retry on the next tick, because the edge-
    /// triggered listener reports nothing more until yet another connection arrives.
    accept_retry: bool,
    ping_id: u64,
    /// This tick's ping, built by the first client due one.
    pings: Option<SharedPings>,
    recent_pings: VecDeque<(u64, Instant)>,
    /// Typha's `ServerConnID`s are this plus the connection id: random per process in the
    /// top 32 bits, as Typha builds them.
    typha_conn_id_base: u64,
    tls: Option<ServerTls>,
}

fn bind_listener(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // Accept IPv4 too on a wildcard IPv6 address, as most daemons do.
        let _ = socket.set_only_v6(false);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Sets the options every accepted client socket gets. Failures are logged and otherwise
/// ignored: the connection still works, and the pong timeout still catches a dead peer.
pub fn configure_client_socket<S: std::os::fd::AsFd>(stream: &S, cfg: &ServerConfig) {
    use socket2::{SockRef, TcpKeepalive};
    let sock = SockRef::from(stream);
    if let Err(e) = sock.set_tcp_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let ka = TcpKeepalive::new()
        .with_time(cfg.keepalive_idle)
        .with_interval(cfg.keepalive_interval);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let ka = ka.with_retries(cfg.keepalive_count);
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        debug!(error = %e, "cannot set TCP keepalive");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = sock.set_tcp_user_timeout(cfg.tcp_user_timeout) {
        debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
    }
}

impl Server {
    /// Binds the listener and sets up the poll instance. The datastore thread gets
    /// [`Server::waker`] to wake the reactor after sending on `rx`'s channel.
    pub fn bind(
        cfg: ServerConfig,
        rx: Receiver<BatchMessage>,
        metrics: Arc<Metrics>,
        board: Arc<StatusBoard>,
    ) -> io::Result<Server> {
        // Bad TLS files are a startup error; `TlsError` is the source, for the caller to tell.
        let tls = cfg
            .tls
            .clone()
            .map(|s| ServerTls::load(s, metrics.tls_reloads.clone()))
            .transpose()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if tls.is_some() {
            // Both series exist from the start, so a dashboard shows 0 rather than nothing.
            for result in ["success", "failure"] {
                metrics.tls_reloads.with_label_values(&[result]);
            }
        }
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listener = bind_listener(cfg.listen, cfg.listen_backlog)?;
        let local_addr = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let w = waker.clone();
        let cache = SnapshotCache::new(
            cfg.snapshot_reuse,
            cfg.snapshot_max_live_bytes,
            cfg.snapshot_chunk_bytes,
            cfg.codec,
            metrics.clone(),
            board.clone(),
            move || {
                let _ = w.wake();
            },
        )?;
        board.set_connections(0, cfg.max_connections);
        board.reactor_beat();
        for d in DropReason::ALL {
            metrics
                .connections_dropped_by_reason
                .with_label_values(&[d.label()]);
        }
        Ok(Server {
            poll,
            listener: Some(listener),
            local_addr,
            waker,
            shutdown: Arc::new(AtomicBool::new(false)),
            shutdown_now: Arc::new(AtomicBool::new(false)),
            shutting_down: false,
            accept_failing: None,
            shed: ShedPolicy::new(
                ShedConfig {
                    drop_interval: cfg.drop_interval,
                    tick: cfg.tick,
                    shutdown_timeout: cfg.shutdown_timeout,
                    shutdown_drop_interval_max: cfg.shutdown_drop_interval_max,
                },
                Instant::now(),
            ),
            conns: Slab::with_capacity(1024),
            next_conn_id: 1,
            rx,
            datastore_gone: false,
            ring: Ring::new(cfg.max_backlog_batches, cfg.max_backlog_bytes),
            state: StateMap::new(),
            status: SyncStatus::WaitingForDatastore,
            cache,
            legacy: Arc::new(LegacyKeyDemand::default()),
            legacy_waiting: Vec::new(),
            metrics,
            board,
            dirty: Vec::with_capacity(1024),
            scratch: vec![0u8; READ_SCRATCH].into_boxed_slice(),
            inbox: Vec::new(),
            actions: Vec::new(),
            next_tick: Instant::now(),
            accept_retry: false,
            ping_id: 0,
            pings: None,
            typha_conn_id_base: random_u32() << 32,
            recent_pings: VecDeque::new(),
            tls,
            cfg,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// The count of legacy clients, for the batcher ([`crate::datastore::ReactorSink`]).
    pub fn legacy_key_demand(&self) -> Arc<LegacyKeyDemand> {
        self.legacy.clone()
    }

    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shutdown: self.shutdown.clone(),
            shutdown_now: self.shutdown_now.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Runs until a graceful shutdown completes.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        info!(addr = %self.local_addr, tls = self.tls.is_some(), "reactor listening");
        loop {
            let now = Instant::now();
            let timeout = self.next_tick.saturating_duration_since(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut woken = false;
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_all(),
                    WAKER => woken = true,
                    Token(t) => {
                        let slot = t - FIRST_CONN;
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.on_readable(slot);
                        }
                        if ev.is_writable() {
                            self.mark_dirty(slot);
                        }
                    }
                }
            }
            if woken {
                if self.shutdown.load(Ordering::SeqCst) && !self.shutting_down {
                    self.begin_shutdown(!self.shutdown_now.load(Ordering::SeqCst));
                }
                if self.shutdown_now.load(Ordering::SeqCst) && self.shed.hurry() {
                    self.goodbye_to_all();
                }
                self.drain_batches();
                self.drain_snapshots();
            }
            self.flush_dirty();
            if Instant::now() >= self.next_tick {
                self.housekeeping();
                self.flush_dirty();
                self.next_tick = Instant::now() + self.cfg.tick;
            }
            if self.shutting_down && self.conns.is_empty() {
                info!("all connections closed; reactor exiting");
                self.board.set_reactor_stopped();
                return Ok(());
            }
        }
    }

    // ---- accepting -------------------------------------------------------------------------

    fn accept_all(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    if let Some((since, failures)) = self.accept_failing.take() {
                        info!(failures, after = ?since.elapsed(), "accept works again");
                    }
                    self.on_accept(stream, peer)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the pending connections stay in the backlog; retry
                    // on the next tick rather than spin. Logged when it starts failing and when
                    // it works again, not on every tick in between (at the descriptor limit
                    // that would be ten lines a second for as long as it lasts).
                    self.metrics.accept_errors.inc();
                    match &mut self.accept_failing {
                        Some((_, failures)) => *failures += 1,
                        None => {
                            warn!(error = %e,
                                "accept failing; retrying every tick, logged again once it works");
                            self.accept_failing = Some((Instant::now(), 1));
                        }
                    }
                    self.accept_retry = true;
                    return;
                }
            }
        }
    }

    fn on_accept(&mut self, mut stream: TcpStream, peer: SocketAddr) {
        self.metrics.connections_accepted.inc();
        if self.conns.len() >= self.cfg.max_connections + REJECT_SLACK {
            self.count_drop(DropReason::Goodbye(GoodbyeReason::ServerFull));
            debug!(%peer, "over the connection limit and its slack; closed without goodbye");
            return;
        }
        configure_client_socket(&stream, &self.cfg);
        let now = Instant::now();
        let entry = self.conns.vacant_entry();
        let slot = entry.key();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut stream, Token(slot + FIRST_CONN), Interest::READABLE)
        {
            warn!(%peer, error = %e, "cannot register connection");
            return;
        }
        let session = match self.tls.as_ref().map(ServerTls::session).transpose() {
            Ok(s) => s.map(Box::new),
            Err(e) => {
                warn!(%peer, error = %e, "cannot start a TLS session");
                let _ = self.poll.registry().deregister(&mut stream);
                return;
            }
        };
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        entry
            .insert(Connection::new(id, stream, peer, Session::detecting(), now))
            .tls = session;
        self.metrics.connections_active.inc();
        debug!(%peer, conn = id, "accepted");
        // (No shutdown case: `begin_shutdown` drops the listener, so nothing is accepted then.)
        if self.conns.len() > self.cfg.max_connections {
            self.close_with_goodbye(
                slot,
                GoodbyeReason::ServerFull,
                "server at its connection limit",
                false,
            );
        }
        self.board
            .set_connections(self.conns.len(), self.cfg.max_connections);
    }

    // ---- reading ---------------------------------------------------------------------------

    fn on_readable(&mut self, slot: usize) {
        let mut inbox = std::mem::take(&mut self.inbox);
        inbox.clear();
        let mut eof = false;
        let mut read_error = None;
        let mut tls_failure = None;
        let mut tls_wants_write = false;
        {
            let Some(c) = self.conns.get_mut(slot) else {
                self.inbox = inbox;
                return;
            };
            let closing = c.is_closing();
            let ctx = SessionContext {
                server_id: &self.cfg.server_id,
                conn_id: c.id,
                typha_conn_id: self.typha_conn_id_base.wrapping_add(c.id),
                max_frame: self.cfg.max_input_frame,
                codec: self.cfg.codec,
            };
            // Clients send a hello and pongs; more than a largest frame and change in one
            // readiness event is a flood, and draining it would hold up every other client.
            let budget = self.cfg.max_input_frame + 64 * 1024;
            let mut total = 0usize;
            let via_tls = c.tls.is_some() && !closing;
            if let (Some(t), Some(server_tls), false) = (c.tls.as_mut(), &self.tls, closing) {
                let session = &mut c.session;
                let end = t.read(
                    &c.stream,
                    server_tls.identity(),
                    &mut self.scratch,
                    budget,
                    |plain| session.feed(plain, ctx, &mut inbox),
                );
                match end {
                    TlsRead::Drained | TlsRead::Stopped => {}
                    TlsRead::Eof => eof = true,
                    TlsRead::OverBudget => inbox.push(SessionEvent::Refuse {
                        reason: GoodbyeReason::ProtocolError,
                        text: format!("sent more than {budget} bytes at once"),
                    }),
                    TlsRead::Io(e) => read_error = Some(e),
                    TlsRead::Handshake(e) => {
                        tls_failure = Some((DropReason::TlsHandshake, e.to_string()))
                    }
                    TlsRead::Identity(e) => {
                        tls_failure = Some((DropReason::TlsIdentity, e.to_string()))
                    }
                    TlsRead::Protocol(e) => {
                        tls_failure = Some((DropReason::TlsError, e.to_string()))
                    }
                }
                tls_wants_write = t.conn.wants_write();
            }
            // Plain connections, and closing ones (whose input is discarded unread), read the
            // socket directly.
            loop {
                if via_tls {
                    break;
                }
                match (&c.stream).read(&mut self.scratch) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        total += n;
                        if total > budget {
                            if !closing {
                                inbox.push(SessionEvent::Refuse {
                                    reason: GoodbyeReason::ProtocolError,
                                    text: format!("sent more than {budget} bytes at once"),
                                });
                            }
                            // Stop reading; the connection is closed below.
                            eof = closing;
                            break;
                        }
                        if closing {
                            continue;
                        }
                        if !c.session.feed(&self.scratch[..n], ctx, &mut inbox) {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        read_error = Some(e);
                        break;
                    }
                }
            }
        }
        if let Some((reason, text)) = tls_failure {
            if let Some(c) = self.conns.get_mut(slot) {
                warn!(peer = %c.peer, conn = c.id, reason = reason.label(), error = %text, "TLS client refused; closing connection");
                if let Some(t) = c.tls.as_mut() {
                    t.flush_alert(&c.stream);
                }
            }
            self.close_now(slot, Some(reason));
            self.inbox = inbox;
            return;
        }
        if tls_wants_write {
            // Handshake records or session tickets to send.
            self.mark_dirty(slot);
        }
        for event in inbox.drain(..) {
            if !self.conns.contains(slot) || self.conns[slot].is_closing() {
                break;
            }
            self.on_session_event(slot, event);
        }
        self.inbox = inbox;
        if let Some(e) = read_error {
            if let Some(c) = self.conns.get(slot) {
                // A reset is how many clients leave; anything else is worth an operator's eye.
                if e.kind() == io::ErrorKind::ConnectionReset {
                    debug!(peer = %c.peer, "connection reset by peer");
                } else {
                    info!(peer = %c.peer, error = %e, "read failed; closing connection");
                }
            }
            self.close_now(slot, Some(DropReason::for_io_error(&e)));
        } else if eof {
            if let Some(c) = self.conns.get(slot) {
                let buffered = c.session.buffered();
                if buffered > 0 && !c.is_closing() {
                    info!(peer = %c.peer, buffered, "peer closed mid-frame");
                } else {
                    debug!(peer = %c.peer, "peer closed");
                }
            }
            self.close_now(slot, None);
        }
    }

    fn on_session_event(&mut self, slot: usize, event: SessionEvent) {
        let now = Instant::now();
        match event {
            SessionEvent::Accepted(a) => self.on_accepted(slot, a, now),
            SessionEvent::Pong { ping_id } => {
                let c = &mut self.conns[slot];
                c.last_pong = now;
                let sent = ping_id.and_then(|id| self.recent_pings.iter().find(|(p, _)| *p == id));
                if let Some((_, sent)) = sent {
                    self.metrics.ping_latency[c.out.syncer.index()]
                        .observe(now.duration_since(*sent).as_secs_f64());
                }
            }
            SessionEvent::Release(r) => {
                let c = &mut self.conns[slot];
                // Each acknowledged step restarts the wait for the next (Typha times ACK waits
                // with the pong timeout).
                c.last_pong = now;
                match r {
                    Release::Snapshot => c.out.release_snapshot(),
                    Release::Live => {
                        c.out.release_ring();
                        c.next_ping = now + self.cfg.ping_interval;
                    }
                }
                self.mark_dirty(slot);
            }
            SessionEvent::Refuse { reason, text } => {
                let c = &self.conns[slot];
                warn!(peer = %c.peer, conn = c.id, protocol = c.session.protocol(), error = %text, "bad message; closing connection");
                self.close_with_goodbye(slot, reason, &text, true);
            }
            SessionEvent::Unrecognised { text } => {
                let c = &self.conns[slot];
                warn!(peer = %c.peer, conn = c.id, error = %text, "unrecognised protocol; closing connection");
                self.close_now(slot, Some(DropReason::UnknownProtocol));
            }
        }
    }

    fn on_accepted(&mut self, slot: usize, a: Accepted, now: Instant) {
        if a.variant.legacy_keys() {
            let from = self.legacy.register();
            self.conns[slot].legacy_snapshot_from = Some(from);
            self.metrics.legacy_key_clients.inc();
        }
        let c = &mut self.conns[slot];
        c.out.syncer = a.syncer;
        c.out.variant = a.variant;
        c.out.hold_snapshot = a.hold_snapshot;
        c.out.hold_ring = a.hold_ring;
        c.hostname = a.hostname;
        c.last_pong = now;
        c.next_ping = now + self.cfg.ping_interval;
        c.out.control.push_back(a.reply);
        info!(
            peer = %c.peer,
            conn = c.id,
            hostname = %c.hostname,
            syncer = a.syncer.as_str(),
            client_info = %a.client_info,
            protocol = c.session.protocol(),
            variant = a.variant.as_str(),
            policy_keys = a.variant.key_form(),
            "client connected"
        );
        self.enter_phase(slot, Phase::Snapshot);
        self.mark_dirty(slot);
        self.request_snapshot(slot);
    }

    fn request_snapshot(&mut self, slot: usize) {
        let c = &self.conns[slot];
        let min_seq = c.legacy_snapshot_from.unwrap_or(0);
        if self.ring.last_seq() < min_seq {
            // Batches up to `min_seq` lack the legacy variant: start after them.
            self.legacy_waiting.push((slot, c.id));
            return;
        }
        let key = (c.out.syncer, c.out.variant);
        let waiter = Waiter {
            slot,
            conn_id: c.id,
            min_seq,
        };
        if let Lookup::Ready(snap) =
            self.cache
                .request(key, waiter, &self.ring, &self.state, self.status)
        {
            self.assign_snapshot(slot, snap);
        }
    }

    fn assign_snapshot(&mut self, slot: usize, snap: Arc<proto::encode::EncodedSnapshot>) {
        self.conns[slot].out.assign_snapshot(snap);
        self.mark_dirty(slot);
    }

    // ---- batches and snapshots -------------------------------------------------------------

    /// Takes the batches the datastore thread queued. A burst larger than the ring is taken in
    /// slices with a write round between them, so a client that keeps up is never pushed off
    /// the ring just because many batches arrived at once.
    fn drain_batches(&mut self) {
        let slice = (self.cfg.max_backlog_batches / 4).max(1);
        loop {
            let got = self.take_batches(slice);
            if got == 0 {
                return;
            }
            self.after_batches();
            self.release_legacy_waiting();
            if got < slice {
                return;
            }
            self.flush_dirty();
        }
    }

    fn take_batches(&mut self, max: usize) -> usize {
        let now = Instant::now();
        let mut got = 0;
        while got < max {
            match self.rx.try_recv() {
                Ok(msg) => {
                    self.status = msg.batch.status;
                    self.ring.push(msg.batch, now);
                    self.state = msg.state;
                    got += 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if !self.datastore_gone && !self.shutting_down {
                        warn!("datastore thread has gone; shutting down");
                        self.begin_shutdown(false);
                    }
                    self.datastore_gone = true;
                    break;
                }
            }
        }
        got
    }

    /// Drops clients the ring no longer serves; marks the others for a write.
    fn after_batches(&mut self) {
        self.metrics.ring_batches.set(self.ring.len() as i64);
        self.metrics.ring_bytes.set(self.ring.bytes() as i64);
        let first = self.ring.first_seq();
        for (slot, c) in self.conns.iter_mut() {
            let Some(next) = c.out.next_seq else { continue };
            if next < first {
                self.actions.push((
                    slot,
                    Housekeeping::Drop(
                        DropReason::Goodbye(GoodbyeReason::TooSlow),
                        "fell off the ring",
                    ),
                ));
            } else if !c.writable_interest && !c.dirty {
                c.dirty = true;
                self.dirty.push(slot);
            }
        }
        self.apply_actions();
    }

    /// Requests the snapshots of legacy clients whose first legacy batch has arrived.
    fn release_legacy_waiting(&mut self) {
        if self.legacy_waiting.is_empty() {
            return;
        }
        for (slot, id) in std::mem::take(&mut self.legacy_waiting) {
            if self.conns.get(slot).is_some_and(|c| c.id == id) {
                self.request_snapshot(slot);
            }
        }
    }

    fn drain_snapshots(&mut self) {
        while let Some((snap, waiters)) = self.cache.poll_finished() {
            self.serve_waiters(&snap, waiters);
        }
        self.admit_deferred();
    }

    /// Serves the joiners the live-snapshot bound held back, once downloads have made room.
    fn admit_deferred(&mut self) {
        let conns = &self.conns;
        let served = self
            .cache
            .admit_deferred(&self.ring, &self.state, self.status, |w| {
                awaits_snapshot(conns.get(w.slot), w)
            });
        for (snap, waiters) in served {
            self.serve_waiters(&snap, waiters);
        }
    }

    fn serve_waiters(&mut self, snap: &Arc<proto::encode::EncodedSnapshot>, waiters: Vec<Waiter>) {
        for w in waiters {
            if !awaits_snapshot(self.conns.get(w.slot), &w) {
                continue;
            }
            // A legacy encode that began before this client's first legacy batch is too old.
            if snap.seq >= w.min_seq && self.ring.holds_from(snap.seq + 1) {
                self.assign_snapshot(w.slot, snap.clone());
            } else {
                // The ring moved on while this one was being built: build a newer one.
                self.request_snapshot(w.slot);
            }
        }
    }

    // ---- writing ---------------------------------------------------------------------------

    fn mark_dirty(&mut self, slot: usize) {
        if let Some(c) = self.conns.get_mut(slot) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(slot);
            }
        }
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            if let Some(c) = self.conns.get_mut(slot) {
                c.dirty = false;
                self.flush(slot);
            }
        }
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Writes what `slot` is owed with one vectored write (more only past `MAX_IOV` frames).
    fn flush(&mut self, slot: usize) {
        if self.conns[slot].tls.is_some() {
            return self.flush_tls(slot);
        }
        loop {
            let c = &mut self.conns[slot];
            let (result, total) = {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let (n, total) = c.out.gather(&self.ring, &mut iov);
                if n == 0 {
                    (None, 0)
                } else {
                    (Some((&c.stream).write_vectored(&iov[..n])), total)
                }
            };
            let now = Instant::now();
            match result {
                None => {
                    c.out.caught_up(&self.ring);
                    c.last_progress = now;
                    if c.writable_interest {
                        c.writable_interest = false;
                        let _ = self.poll.registry().reregister(
                            &mut c.stream,
                            Token(slot + FIRST_CONN),
                            Interest::READABLE,
                        );
                    }
                    if c.is_closing() && !c.write_shut {
                        // Everything (the Goodbye included) is written: half-close and let the
                        // peer's EOF, or the closing deadline, finish the job.
                        c.write_shut = true;
                        if c.stream.shutdown(std::net::Shutdown::Write).is_err() {
                            self.close_now(slot, None);
                        }
                    }
                    return;
                }
                Some(Ok(0)) => {
                    self.close_now(slot, Some(DropReason::IoError));
                    return;
                }
                Some(Ok(n)) => {
                    self.metrics.write_calls.inc();
                    self.metrics.bytes_written.inc_by(n as u64);
                    c.last_progress = now;
                    let snapshot_done = c.out.advance(
                        n,
                        &self.ring,
                        &self.metrics,
                        WriteTime {
                            at: now,
                            unix_nanos: now_unix_nanos(),
                        },
                    );
                    if snapshot_done {
                        self.enter_phase(slot, Phase::Streaming);
                    }
                    if n < total {
                        self.want_writable(slot);
                        return;
                    }
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.want_writable(slot);
                    return;
                }
                Some(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Some(Err(e)) => {
                    debug!(peer = %c.peer, error = %e, "write failed");
                    self.close_now(slot, Some(DropReason::for_io_error(&e)));
                    return;
                }
            }
        }
    }

    /// `flush` for a TLS connection. Shared plaintext is fed to rustls only while its
    /// outgoing buffer has room (`TLS_OUT_BUFFER`), the Outbox advanced by what rustls took,
    /// and the records written to the socket until it would block: per-client memory stays
    /// bounded however large the snapshot.
    fn flush_tls(&mut self, slot: usize) {
        loop {
            let c = &mut self.conns[slot];
            let Some(t) = c.tls.as_mut() else { return };
            let mut out_empty = true;
            let mut fed = 0;
            let had_pending = t.conn.wants_write();
            if !t.conn.is_handshaking() {
                let result = {
                    let mut iov = [IoSlice::new(&[]); MAX_IOV];
                    let (n, _) = c.out.gather(&self.ring, &mut iov);
                    out_empty = n == 0;
                    (n > 0).then(|| t.conn.writer().write_vectored(&iov[..n]))
                };
                match result {
                    None => c.out.caught_up(&self.ring),
                    Some(Ok(0)) if !had_pending => {
                        // An empty buffer that takes nothing would spin this loop.
                        warn!(peer = %c.peer, "TLS session accepts no data; closing connection");
                        self.close_now(slot, Some(DropReason::TlsError));
                        return;
                    }
                    Some(Ok(n)) => fed = n,
                    Some(Err(e)) => {
                        debug!(peer = %c.peer, error = %e, "TLS write failed");
                        self.close_now(slot, Some(DropReason::TlsError));
                        return;
                    }
                }
            }
            let now = Instant::now();
            if fed > 0
                && c.out.advance(
                    fed,
                    &self.ring,
                    &self.metrics,
                    WriteTime {
                        at: now,
                        unix_nanos: now_unix_nanos(),
                    },
                )
            {
                self.enter_phase(slot, Phase::Streaming);
            }
            let c = &mut self.conns[slot];
            let closing = c.is_closing();
            let Some(t) = c.tls.as_mut() else { return };
            let mut blocked = false;
            while t.conn.wants_write() {
                match t.conn.write_tls(&mut &c.stream) {
                    Ok(0) => {
                        self.close_now(slot, Some(DropReason::IoError));
                        return;
                    }
                    Ok(n) => {
                        self.metrics.write_calls.inc();
                        self.metrics.bytes_written.inc_by(n as u64);
                        c.last_progress = now;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        blocked = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        debug!(peer = %c.peer, error = %e, "write failed");
                        self.close_now(slot, Some(DropReason::IoError));
                        return;
                    }
                }
            }
            if blocked {
                self.want_writable(slot);
                return;
            }
            if !out_empty {
                // rustls took some and sent it all: feed it more.
                continue;
            }
            c.last_progress = now;
            if closing && !c.write_shut {
                // Everything (the Goodbye included) is out: a close_notify, then half-close.
                if !t.conn.is_handshaking() {
                    t.conn.send_close_notify();
                    if t.conn.wants_write() {
                        continue;
                    }
                }
                c.write_shut = true;
                if c.stream.shutdown(std::net::Shutdown::Write).is_err() {
                    self.close_now(slot, None);
                    return;
                }
            }
            if c.writable_interest {
                c.writable_interest = false;
                let _ = self.poll.registry().reregister(
                    &mut c.stream,
                    Token(slot + FIRST_CONN),
                    Interest::READABLE,
                );
            }
            return;
        }
    }

    fn want_writable(&mut self, slot: usize) {
        let c = &mut self.conns[slot];
        if !c.writable_interest {
            c.writable_interest = true;
            if let Err(e) = self.poll.registry().reregister(
                &mut c.stream,
                Token(slot + FIRST_CONN),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!(peer = %c.peer, error = %e, "reregister failed");
                self.close_now(slot, Some(DropReason::IoError));
            }
        }
    }

    // ---- closing ---------------------------------------------------------------------------

    fn count_drop(&self, d: DropReason) {
        self.metrics.connections_dropped.inc();
        self.metrics
            .connections_dropped_by_reason
            .with_label_values(&[d.label()])
            .inc();
    }

    /// Closes for `reason`: the session's farewell (a native Goodbye) goes out after any frame
    /// already started, then the connection closes.
    fn close_with_goodbye(&mut self, slot: usize, reason: GoodbyeReason, text: &str, log: bool) {
        self.close_with_goodbye_as(slot, reason, text, log, DropReason::Goodbye(reason));
    }

    /// As `close_with_goodbye`, counted under `drop` (a timeout's own label, say).
    fn close_with_goodbye_as(
        &mut self,
        slot: usize,
        reason: GoodbyeReason,
        text: &str,
        log: bool,
        drop: DropReason,
    ) {
        let Some(c) = self.conns.get(slot) else {
            return;
        };
        if c.is_closing() {
            return;
        }
        if log {
            info!(peer = %c.peer, conn = c.id, hostname = %c.hostname, reason = reason.as_str(), detail = text, "dropping client");
        }
        if c.tls_handshaking() {
            // Nothing can be said before the TLS handshake completes.
            self.close_now(slot, Some(drop));
            return;
        }
        let farewell = c.session.farewell(reason, text);
        self.count_drop(drop);
        self.enter_phase(
            slot,
            Phase::Closing {
                deadline: Instant::now() + self.cfg.goodbye_grace,
            },
        );
        let c = &mut self.conns[slot];
        c.out.stop_after_current(farewell);
        self.mark_dirty(slot);
    }

    /// The one place a connection's phase changes: keeps the per-syncer connection gauge and
    /// the snapshot-send histogram in step with it.
    fn enter_phase(&mut self, slot: usize, phase: Phase) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let old = c.phase();
        if old == phase || c.is_closing() {
            return;
        }
        let now = Instant::now();
        let labels = [c.out.syncer.as_str(), c.session.protocol()];
        match (old, phase) {
            (Phase::Handshake, Phase::Snapshot) => {
                c.handshake_done_at = Some(now);
                self.metrics
                    .connections_by_syncer
                    .with_label_values(&labels)
                    .inc();
            }
            (Phase::Snapshot, Phase::Streaming) => {
                // The pong timeout starts again now (`Connection::answer_due`).
                c.last_pong = now;
                if let Some(t) = c.handshake_done_at {
                    self.metrics.client_snapshot_send_secs[c.out.syncer.index()]
                        .observe(now.duration_since(t).as_secs_f64());
                }
            }
            (Phase::Snapshot | Phase::Streaming, Phase::Closing { .. }) => {
                self.metrics
                    .connections_by_syncer
                    .with_label_values(&labels)
                    .dec();
            }
            _ => {}
        }
        c.set_phase(phase);
    }

    /// Closes at once. `reason` is set when the server decided (for the drop metric).
    fn close_now(&mut self, slot: usize, reason: Option<DropReason>) {
        if !self.conns.contains(slot) {
            return;
        }
        if !self.conns[slot].is_closing() {
            if let Some(r) = reason {
                self.count_drop(r);
            }
            // Leaving through Closing keeps the gauges in one place.
            self.enter_phase(
                slot,
                Phase::Closing {
                    deadline: Instant::now(),
                },
            );
        }
        let mut c = self.conns.remove(slot);
        let _ = self.poll.registry().deregister(&mut c.stream);
        if c.legacy_snapshot_from.is_some() {
            self.metrics.legacy_key_clients.dec();
            if self.legacy.unregister() == 0 {
                // No one takes the legacy variants: the batcher stops encoding them and their
                // cached snapshots go (ring batches that carry them age out with the ring).
                self.cache.forget_legacy();
                info!("last client with v3.31 policy keys left; legacy variants no longer encoded");
            }
        }
        self.metrics.connections_active.dec();
        self.board
            .set_connections(self.conns.len(), self.cfg.max_connections);
        debug!(peer = %c.peer, conn = c.id, "closed");
    }

    /// Stops accepting and fails readiness; then either has the policy plan a gradual shed
    /// (`gradual` and a non-zero shutdown timeout) or lets everyone go now.
    fn begin_shutdown(&mut self, gradual: bool) {
        self.shutting_down = true;
        self.board.set_shutting_down();
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let n = self.open_count();
        match self.shed.begin_shutdown(n, gradual, Instant::now()) {
            Some(gap) => info!(
                connections = n,
                gap = ?gap,
                timeout = ?self.cfg.shutdown_timeout,
                "shutting down: no new connections, shedding clients gradually"
            ),
            None => {
                info!(
                    connections = n,
                    "shutting down: no new connections, saying goodbye to every client"
                );
                self.goodbye_to_all();
            }
        }
    }

    fn goodbye_to_all(&mut self) {
        let slots: Vec<usize> = self.conns.iter().map(|(s, _)| s).collect();
        for slot in slots {
            self.close_with_goodbye(slot, GoodbyeReason::Shutdown, "server shutting down", false);
        }
    }

    /// Connections not already closing.
    fn open_count(&self) -> usize {
        self.conns.iter().filter(|(_, c)| !c.is_closing()).count()
    }

    /// The shedding hook, once per tick: the policy says how many go and why, [`shed::pick`]
    /// says who, and each one's session says how.
    fn shed_hook(&mut self, now: Instant) {
        let target = self.effective_target();
        let counts = Counts {
            total: self.conns.len(),
            open: self.open_count(),
        };
        let (reason, count) = match self.shed.on_tick(now, counts, target) {
            Shed::Nothing => return,
            Shed::Everyone => {
                info!("shutdown timeout reached; saying goodbye to the remaining clients");
                self.goodbye_to_all();
                return;
            }
            Shed::Some { reason, count } => (reason, count),
        };
        let victims = shed::pick(
            self.conns.iter().map(|(slot, c)| (slot, c.phase(), c.id)),
            count,
        );
        for slot in victims {
            match reason {
                ShedReason::Shutdown => self.close_with_goodbye(
                    slot,
                    GoodbyeReason::Shutdown,
                    "server shutting down",
                    false,
                ),
                ShedReason::Rebalancing => {
                    let c = &self.conns[slot];
                    info!(peer = %c.peer, conn = c.id, hostname = %c.hostname, connections = self.conns.len(), target, "over the connection target: asking a client to move");
                    self.close_with_goodbye(
                        slot,
                        GoodbyeReason::Rebalancing,
                        "rebalancing: this replica is above its share of clients",
                        false,
                    );
                }
            }
        }
    }

    fn effective_target(&self) -> usize {
        self.cfg
            .connection_target
            .get()
            .min(self.cfg.max_connections)
    }

    // ---- timers ----------------------------------------------------------------------------

    fn housekeeping(&mut self) {
        let now = Instant::now();
        self.board.reactor_beat();
        self.board
            .set_connections(self.conns.len(), self.cfg.max_connections);
        while self
            .recent_pings
            .front()
            .is_some_and(|(_, t)| now.duration_since(*t) > self.cfg.pong_timeout)
        {
            self.recent_pings.pop_front();
        }
        self.pings = None;
        if std::mem::take(&mut self.accept_retry) {
            self.accept_all();
        }
        if let Some(t) = &mut self.tls {
            t.take_reloaded();
        }
        let cfg = &self.cfg;
        for (slot, c) in self.conns.iter() {
            let action = match c.phase() {
                Phase::Handshake => (now.duration_since(c.accepted_at) > cfg.handshake_timeout)
                    .then_some(Housekeeping::Drop(
                        DropReason::HandshakeTimeout,
                        if c.tls_handshaking() {
                            "TLS handshake not completed in time"
                        } else {
                            "no Hello in time"
                        },
                    )),
                Phase::Snapshot | Phase::Streaming => {
                    if c.writable_interest
                        && now.duration_since(c.last_progress) > cfg.write_timeout
                    {
                        Some(Housekeeping::Drop(
                            DropReason::WriteTimeout,
                            "accepted no bytes in time",
                        ))
                    } else if c.answer_due() && now.duration_since(c.last_pong) > cfg.pong_timeout {
                        Some(Housekeeping::Drop(
                            DropReason::PongTimeout,
                            "no pong in time",
                        ))
                    } else if c.writable_interest && self.fell_behind(c) {
                        Some(Housekeeping::Drop(
                            DropReason::Goodbye(GoodbyeReason::TooSlow),
                            "fell too far behind",
                        ))
                    } else if c.next_ping <= now && c.session.can_ping() {
                        Some(Housekeeping::Ping)
                    } else {
                        None
                    }
                }
                Phase::Closing { deadline } => (now >= deadline).then_some(Housekeeping::Close),
            };
            if let Some(a) = action {
                self.actions.push((slot, a));
            }
        }
        self.apply_actions();
        self.cache.trim(&self.ring);
        // Also takes finished snapshots, should a wake-up from the encoder have been lost.
        self.drain_snapshots();
        self.metrics
            .connections_target
            .set(self.effective_target().min(i64::MAX as usize) as i64);
        self.shed_hook(now);
    }

    fn fell_behind(&self, c: &Connection) -> bool {
        let Some(next) = c.out.next_seq else {
            return false;
        };
        self.ring.get(next).is_some_and(|e| {
            let age = now_unix_nanos().saturating_sub(e.batch.received_at);
            Duration::from_nanos(age) > self.cfg.max_fall_behind
        })
    }

    fn apply_actions(&mut self) {
        let mut actions = std::mem::take(&mut self.actions);
        for (slot, a) in actions.drain(..) {
            if !self.conns.contains(slot) {
                continue;
            }
            match a {
                Housekeeping::Ping => {
                    let pings = self.current_pings();
                    let c = &mut self.conns[slot];
                    let frame = c.session.ping(&pings);
                    c.out.control.push_back(frame);
                    c.next_ping = Instant::now() + self.cfg.ping_interval;
                    self.mark_dirty(slot);
                }
                Housekeeping::Drop(DropReason::Goodbye(reason), text) => {
                    self.close_with_goodbye(slot, reason, text, true);
                }
                Housekeeping::Drop(d, text) => {
                    let c = &self.conns[slot];
                    info!(peer = %c.peer, conn = c.id, hostname = %c.hostname, reason = d.label(), detail = text, "dropping client");
                    if d == DropReason::WriteTimeout {
                        // It reads nothing: a Goodbye would never arrive.
                        self.close_now(slot, Some(d));
                    } else {
                        self.close_with_goodbye_as(slot, GoodbyeReason::Timeout, text, false, d);
                    }
                }
                Housekeeping::Close => {
                    debug!(peer = %self.conns[slot].peer, "goodbye not accepted in time; closing");
                    self.close_now(slot, None);
                }
            }
        }
        self.actions = actions;
    }

    /// The pings of this tick: one id and one encoding per protocol, shared by every client due
    /// a ping.
    fn current_pings(&mut self) -> SharedPings {
        if let Some(p) = &self.pings {
            return p.clone();
        }
        self.ping_id += 1;
        let pings = SharedPings::new(self.ping_id, now_unix_nanos());
        self.recent_pings.push_back((self.ping_id, Instant::now()));
        self.pings = Some(pings.clone());
        pings
    }
}

/// 32 random bits from the standard library's per-process hash seed (no extra dependency).
fn random_u32() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_unix_nanos());
    h.finish() & 0xffff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn client_sockets_get_keepalive_and_user_timeout() {
        use socket2::SockRef;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let cfg = ServerConfig {
            keepalive_idle: Duration::from_secs(7),
            keepalive_interval: Duration::from_secs(3),
            keepalive_count: 4,
            tcp_user_timeout: Some(Duration::from_millis(2500)),
            ..ServerConfig::default()
        };
        configure_client_socket(&accepted, &cfg);
        let s = SockRef::from(&accepted);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(3));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(
            s.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(2500))
        );
        assert!(s.tcp_nodelay().unwrap());
        configure_client_socket(
            &accepted,
            &ServerConfig {
                tcp_user_timeout: None,
                ..cfg
            },
        );
        assert_eq!(s.tcp_user_timeout().unwrap(), None);
    }
}
