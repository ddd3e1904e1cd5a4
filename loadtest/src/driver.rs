//! One client thread: its own mio `Poll` over non-blocking sockets, one [`ClientSession`] per
//! socket. It connects its clients on the ramp's schedule, writes what the sessions queue (the
//! `Hello`, `Pong`s), reads until `WouldBlock` (round-robin, a bounded amount per socket per turn), feeds the sessions and records what their events
//! say, until the deadline or a stop request.

use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};
use typha::client::{ClientError, ClientEvent, ClientOptions, ClientSession, Tracking};
use typha::model::{SyncStatus, SyncerType};
use typha::proto::Codec;

/// Largest value the histograms track: one hour in microseconds (larger values saturate).
pub const HIST_MAX_US: u64 = 3_600_000_000;
/// Connects made per loop iteration, so a storm does not starve the reading.
const CONNECTS_PER_ITERATION: usize = 256;
/// How often a thread publishes its counters and its interval lag histogram.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
/// Longest poll wait, so the stop flag is seen promptly.
const MAX_WAIT: Duration = Duration::from_millis(50);
const READ_BUF: usize = 64 * 1024;
/// Bytes read from one socket per turn before the next ready socket is served: large enough
/// that a socket is normally drained in one turn (as an independent client with its own CPU
/// would drain it), bounded so one socket cannot hold a thread indefinitely.
const READ_BUDGET: usize = 4 * 1024 * 1024;
/// Longest a thread serves ready sockets before it looks at connects and counters again.
const MAX_TURN: Duration = Duration::from_millis(20);
/// Hard failures kept verbatim (the rest are only counted).
const MAX_FAILURE_MESSAGES: usize = 20;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// What every thread shares with the main thread.
#[derive(Debug, Default)]
pub struct Shared {
    pub stop: AtomicBool,
    /// Set by the main thread when the steady state begins (every client in sync or gone):
    /// lag is then also recorded in the steady-state histogram.
    pub steady: AtomicBool,
    /// Clients whose connect has been started.
    pub started: AtomicU64,
    /// Clients whose connection was established (ever).
    pub connected: AtomicU64,
    /// Clients connected now.
    pub open: AtomicU64,
    /// Clients that reached snapshot-complete + in-sync (ever).
    pub in_sync: AtomicU64,
    /// Clients connected now and in sync.
    pub in_sync_open: AtomicU64,
    /// Clients whose connection failed or ended.
    pub closed: AtomicU64,
    /// Protocol errors and undecodable frames: each is a hard failure of the run.
    pub hard_failures: AtomicU64,
    // Published every PUBLISH_EVERY:
    pub updates: AtomicU64,
    pub update_frames: AtomicU64,
    pub bytes: AtomicU64,
}

#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub addr: SocketAddr,
    pub syncer: SyncerType,
    pub codecs: Vec<Codec>,
    pub start: Instant,
    pub deadline: Instant,
}

#[derive(Debug, Clone, Copy)]
pub struct ClientPlan {
    pub idx: usize,
    /// When to connect, from the start of the run.
    pub offset: Duration,
    /// Keep the full map (verified at the end) rather than sequence numbers only.
    pub full: bool,
}

/// A full-map client's state at the end, to compare with the daemon's `/digest`.
#[derive(Debug, Clone)]
pub struct FullMapState {
    pub idx: usize,
    pub snapshot_complete: bool,
    pub open: bool,
    pub seq: u64,
    pub keys: u64,
    pub digest: String,
}

/// What a thread hands back at the end.
#[derive(Debug)]
pub struct ThreadResult {
    pub lag_us: Histogram<u64>,
    pub steady_lag_us: Histogram<u64>,
    pub sync_us: Histogram<u64>,
    pub connected: u64,
    pub in_sync: u64,
    pub open_at_end: u64,
    pub in_sync_at_end: u64,
    /// Clients whose connect time had not come when the run ended.
    pub never_started: u64,
    pub snapshots: u64,
    pub snapshot_bytes: u64,
    pub updates: u64,
    pub update_frames: u64,
    pub frames: u64,
    pub bytes: u64,
    pub pings: u64,
    pub drops: BTreeMap<String, u64>,
    pub failures: Vec<String>,
    pub full_maps: Vec<FullMapState>,
    /// When the last client of this thread reached in-sync, from the start of the run.
    pub last_in_sync: Option<Duration>,
    /// Open connections, kept open until the caller has sampled the server.
    pub streams: Vec<TcpStream>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    Pending,
    Connecting,
    Open,
    Closed,
}

struct Client {
    plan: ClientPlan,
    state: ConnState,
    stream: Option<TcpStream>,
    session: Option<ClientSession>,
    connect_at: Option<Instant>,
    established: bool,
    /// In the ready queue.
    queued: bool,
    snapshot_done: bool,
    in_sync: bool,
}

struct Local {
    lag_us: Histogram<u64>,
    steady_lag_us: Histogram<u64>,
    interval_lag_us: Histogram<u64>,
    sync_us: Histogram<u64>,
    snapshots: u64,
    snapshot_bytes: u64,
    updates: u64,
    update_frames: u64,
    bytes: u64,
    pings: u64,
    published: (u64, u64, u64),
    drops: BTreeMap<String, u64>,
    failures: Vec<String>,
    last_in_sync: Option<Duration>,
}

struct Driver {
    cfg: Arc<DriverConfig>,
    shared: Arc<Shared>,
    lag_tx: Sender<Histogram<u64>>,
    poll: Poll,
    clients: Vec<Client>,
    /// Sockets with something to do (a readiness event, or a read budget that ran out).
    ready: VecDeque<usize>,
    local: Local,
}

/// Runs one thread's clients until the deadline or until `shared.stop` is set.
pub fn run_thread(
    plans: Vec<ClientPlan>,
    cfg: Arc<DriverConfig>,
    shared: Arc<Shared>,
    lag_tx: Sender<Histogram<u64>>,
) -> io::Result<ThreadResult> {
    let clients = plans
        .into_iter()
        .map(|plan| Client {
            plan,
            state: ConnState::Pending,
            stream: None,
            session: None,
            connect_at: None,
            established: false,
            queued: false,
            snapshot_done: false,
            in_sync: false,
        })
        .collect();
    let mut d = Driver {
        cfg,
        shared,
        lag_tx,
        poll: Poll::new()?,
        clients,
        ready: VecDeque::new(),
        local: Local {
            lag_us: new_histogram(),
            steady_lag_us: new_histogram(),
            interval_lag_us: new_histogram(),
            sync_us: new_histogram(),
            snapshots: 0,
            snapshot_bytes: 0,
            updates: 0,
            update_frames: 0,
            bytes: 0,
            pings: 0,
            published: (0, 0, 0),
            drops: BTreeMap::new(),
            failures: Vec::new(),
            last_in_sync: None,
        },
    };
    d.run()?;
    Ok(d.finish())
}

impl Driver {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; READ_BUF];
        let mut next = 0;
        let mut last_publish = Instant::now();
        loop {
            let now = Instant::now();
            if self.shared.stop.load(Relaxed) || now >= self.cfg.deadline {
                break;
            }
            let mut made = 0;
            while next < self.clients.len()
                && made < CONNECTS_PER_ITERATION
                && self.cfg.start + self.clients[next].plan.offset <= now
            {
                self.connect(next);
                next += 1;
                made += 1;
            }
            let connects_due =
                next < self.clients.len() && self.cfg.start + self.clients[next].plan.offset <= now;
            let timeout = if connects_due || !self.ready.is_empty() {
                Duration::ZERO
            } else {
                let mut t = (self.cfg.deadline - now).min(MAX_WAIT);
                if let Some(c) = self.clients.get(next) {
                    t = t.min((self.cfg.start + c.plan.offset).saturating_duration_since(now));
                }
                t
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                self.enqueue(ev.token().0);
            }
            // Serve the ready sockets round-robin, a bounded amount each, for a bounded time,
            // so that connects stay on schedule and one big snapshot does not starve the rest.
            let turn = Instant::now();
            for _ in 0..self.ready.len() {
                if turn.elapsed() >= MAX_TURN {
                    break;
                }
                let Some(i) = self.ready.pop_front() else {
                    break;
                };
                self.clients[i].queued = false;
                if self.service(i, &mut buf) {
                    self.enqueue(i);
                }
            }
            if last_publish.elapsed() >= PUBLISH_EVERY {
                self.publish();
                last_publish = Instant::now();
            }
        }
        self.publish();
        Ok(())
    }

    fn enqueue(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if !c.queued && c.stream.is_some() {
            c.queued = true;
            self.ready.push_back(i);
        }
    }

    fn options(&self, plan: &ClientPlan) -> ClientOptions {
        ClientOptions {
            hostname: format!("typha-loadtest-{}", plan.idx),
            client_info: concat!("typha-loadtest ", env!("CARGO_PKG_VERSION")).to_owned(),
            syncer_type: self.cfg.syncer,
            accept_compression: self.cfg.codecs.clone(),
            answer_pings: true,
            tracking: if plan.full {
                Tracking::Full
            } else {
                Tracking::SeqOnly
            },
            ..ClientOptions::default()
        }
    }

    fn connect(&mut self, i: usize) {
        self.shared.started.fetch_add(1, Relaxed);
        let opts = self.options(&self.clients[i].plan);
        let c = &mut self.clients[i];
        c.session = Some(ClientSession::new(opts));
        c.connect_at = Some(Instant::now());
        c.state = ConnState::Connecting;
        let mut stream = match TcpStream::connect(self.cfg.addr) {
            Ok(s) => s,
            Err(e) => return self.close(i, format!("connect failed: {e}")),
        };
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.close(i, format!("poll register failed: {e}"));
        }
        self.clients[i].stream = Some(stream);
    }

    /// Serves one ready socket: completes its connect, reads up to [`READ_BUDGET`] bytes,
    /// writes pending output. Returns whether it may have more to read.
    fn service(&mut self, i: usize, buf: &mut [u8]) -> bool {
        let c = &mut self.clients[i];
        let Some(stream) = c.stream.as_mut() else {
            return false;
        };
        if c.state == ConnState::Connecting {
            match stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    self.close(i, format!("connect failed: {e}"));
                    return false;
                }
            }
            match stream.peer_addr() {
                Ok(_) => {
                    c.state = ConnState::Open;
                    c.established = true;
                    self.shared.connected.fetch_add(1, Relaxed);
                    self.shared.open.fetch_add(1, Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return false,
                Err(e) => {
                    self.close(i, format!("connect failed: {e}"));
                    return false;
                }
            }
        }
        let more = match self.read_some(i, buf) {
            Ok(more) => more,
            Err(reason) => {
                self.close(i, reason);
                return false;
            }
        };
        if let Err(reason) = self.flush(i) {
            self.close(i, reason);
            return false;
        }
        more
    }

    /// Reads until `WouldBlock` or [`READ_BUDGET`] bytes, feeding the session. `Ok(true)` when
    /// the budget ran out first (more may be waiting); `Err` is why the connection ended.
    fn read_some(&mut self, i: usize, buf: &mut [u8]) -> Result<bool, String> {
        let mut budget = READ_BUDGET;
        loop {
            if budget == 0 {
                return Ok(true);
            }
            let c = &mut self.clients[i];
            let (Some(stream), Some(session)) = (c.stream.as_mut(), c.session.as_mut()) else {
                return Ok(false);
            };
            let want = budget.min(buf.len());
            match stream.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(match session.goodbye() {
                        Some((r, _)) => format!("goodbye: {}", r.as_str()),
                        None if session.buffered() > 0 => "closed by server mid-frame".into(),
                        None => "closed by server".into(),
                    })
                }
                Ok(n) => {
                    budget -= n;
                    self.local.bytes += n as u64;
                    let fed = session.feed(&buf[..n]);
                    self.drain_events(i);
                    if let Err(e) = fed {
                        return Err(self.hard_failure(i, e));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_reason("read", &e, i)),
            }
        }
    }

    fn io_reason(&self, op: &str, e: &io::Error, i: usize) -> String {
        let c = &self.clients[i];
        if let Some((r, _)) = c.session.as_ref().and_then(|s| s.goodbye()) {
            return format!("goodbye: {}", r.as_str());
        }
        match e.kind() {
            io::ErrorKind::ConnectionReset => "reset by server".into(),
            io::ErrorKind::BrokenPipe => "broken pipe".into(),
            _ => format!("{op} error: {e}"),
        }
    }

    /// Records a protocol error or undecodable frame and stops the run.
    fn hard_failure(&mut self, i: usize, e: ClientError) -> String {
        let idx = self.clients[i].plan.idx;
        let reason = match &e {
            ClientError::Protocol(_) => "protocol error",
            ClientError::Proto(_) => "undecodable frame",
            _ => "client error",
        };
        if self.local.failures.len() < MAX_FAILURE_MESSAGES {
            self.local.failures.push(format!("client {idx}: {e}"));
        }
        self.shared.hard_failures.fetch_add(1, Relaxed);
        self.shared.stop.store(true, Relaxed);
        reason.into()
    }

    fn drain_events(&mut self, i: usize) {
        let c = &mut self.clients[i];
        let Some(session) = c.session.as_mut() else {
            return;
        };
        let l = &mut self.local;
        let steady = self.shared.steady.load(Relaxed);
        while let Some(ev) = session.poll_event() {
            let became_in_sync = match ev {
                ClientEvent::SnapshotComplete { status, .. } => {
                    c.snapshot_done = true;
                    l.snapshots += 1;
                    // Includes whatever followed the SnapshotEnd in the same read.
                    l.snapshot_bytes += session.bytes_received();
                    status == SyncStatus::InSync
                }
                ClientEvent::Status(SyncStatus::InSync) => c.snapshot_done,
                ClientEvent::Updates { count, lag, .. } => {
                    let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
                    l.lag_us.saturating_record(us);
                    l.interval_lag_us.saturating_record(us);
                    if steady {
                        l.steady_lag_us.saturating_record(us);
                    }
                    l.updates += count as u64;
                    l.update_frames += 1;
                    false
                }
                ClientEvent::Ping { .. } => {
                    l.pings += 1;
                    false
                }
                _ => false,
            };
            if became_in_sync && !c.in_sync {
                c.in_sync = true;
                let now = Instant::now();
                let since = c.connect_at.map_or(Duration::ZERO, |t| now - t);
                l.sync_us
                    .saturating_record(u64::try_from(since.as_micros()).unwrap_or(u64::MAX));
                let at = now - self.cfg.start;
                l.last_in_sync = Some(l.last_in_sync.map_or(at, |t| t.max(at)));
                self.shared.in_sync.fetch_add(1, Relaxed);
                if c.state == ConnState::Open {
                    self.shared.in_sync_open.fetch_add(1, Relaxed);
                }
            }
        }
    }

    /// Writes the session's pending output until done or `WouldBlock`.
    fn flush(&mut self, i: usize) -> Result<(), String> {
        let c = &mut self.clients[i];
        let (Some(stream), Some(session)) = (c.stream.as_mut(), c.session.as_mut()) else {
            return Ok(());
        };
        while session.has_output() {
            match stream.write(session.pending_output()) {
                Ok(0) => return Err("write error: wrote 0 bytes".into()),
                Ok(n) => session.advance_output(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_reason("write", &e, i)),
            }
        }
        Ok(())
    }

    fn close(&mut self, i: usize, reason: String) {
        let c = &mut self.clients[i];
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        if c.state == ConnState::Open {
            self.shared.open.fetch_sub(1, Relaxed);
            if c.in_sync {
                self.shared.in_sync_open.fetch_sub(1, Relaxed);
            }
        }
        if c.state != ConnState::Closed {
            c.state = ConnState::Closed;
            self.shared.closed.fetch_add(1, Relaxed);
            *self.local.drops.entry(reason).or_default() += 1;
        }
    }

    fn publish(&mut self) {
        let l = &mut self.local;
        let (u, f, b) = l.published;
        self.shared.updates.fetch_add(l.updates - u, Relaxed);
        self.shared
            .update_frames
            .fetch_add(l.update_frames - f, Relaxed);
        self.shared.bytes.fetch_add(l.bytes - b, Relaxed);
        l.published = (l.updates, l.update_frames, l.bytes);
        if !l.interval_lag_us.is_empty() {
            // The receiver may be gone at the very end; the totals are in the result anyway.
            let _ = self.lag_tx.send(l.interval_lag_us.clone());
            l.interval_lag_us.reset();
        }
    }

    fn finish(self) -> ThreadResult {
        let l = self.local;
        let mut r = ThreadResult {
            lag_us: l.lag_us,
            steady_lag_us: l.steady_lag_us,
            sync_us: l.sync_us,
            connected: 0,
            in_sync: 0,
            open_at_end: 0,
            in_sync_at_end: 0,
            never_started: 0,
            snapshots: l.snapshots,
            snapshot_bytes: l.snapshot_bytes,
            updates: l.updates,
            update_frames: l.update_frames,
            frames: 0,
            bytes: l.bytes,
            pings: l.pings,
            drops: l.drops,
            failures: l.failures,
            full_maps: Vec::new(),
            last_in_sync: l.last_in_sync,
            streams: Vec::new(),
        };
        for c in self.clients {
            let open = c.state == ConnState::Open;
            match c.state {
                ConnState::Pending => r.never_started += 1,
                // A connect still in progress at the end: counted as a drop.
                ConnState::Connecting => {
                    *r.drops
                        .entry("still connecting at the end".into())
                        .or_default() += 1
                }
                ConnState::Open | ConnState::Closed => {}
            }
            if open {
                r.open_at_end += 1;
                r.in_sync_at_end += u64::from(c.in_sync);
            }
            r.in_sync += u64::from(c.in_sync);
            r.connected += u64::from(c.established);
            if let Some(s) = &c.session {
                r.frames += s.frames_received();
                if c.plan.full {
                    let st = s.state();
                    r.full_maps.push(FullMapState {
                        idx: c.plan.idx,
                        snapshot_complete: st.snapshot_complete(),
                        open,
                        seq: st.seq(),
                        keys: st.len() as u64,
                        digest: st.digest().to_string(),
                    });
                }
            }
            if open {
                if let Some(s) = c.stream {
                    r.streams.push(s);
                }
            }
        }
        r
    }
}
