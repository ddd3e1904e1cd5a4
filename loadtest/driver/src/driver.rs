//! One client thread: its own mio `Poll` over non-blocking sockets, one [`ClientSession`] per
//! socket. It connects its clients on the ramp's schedule, writes what the sessions queue (the
//! `Hello`, `Pong`s), reads until `WouldBlock` (round-robin, a bounded amount per socket per turn), feeds the sessions and records what their events
//! say, until the deadline or a stop request. A client still in its handshake skips the queue
//! (`Driver::on_ready`), as an independent client would answer at once.

use crate::felix_memo::SnapshotMemo;
use crate::session::{FelixSession, Protocol, Session, SessionEvent};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};
use typha::client::tls::ClientTls;
use typha::client::{ChunkMemo, ClientError, ClientOptions, ClientSession, FrameRecord, Tracking};
use typha::model::{Digest, SyncerType};
use typha::proto::Codec;
use typha_loadtest_common::hist::new_histogram;
use typha_loadtest_common::ready::{serve_turn, ReadySockets};
use typha_loadtest_common::STAMP_LABEL;

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
/// Snapshot chunks a thread remembers: a 100,000-key snapshot is about 250 chunks, so this
/// holds several snapshots (a few MB at most).
const CHUNK_MEMO_CAPACITY: usize = 16 * 1024;
/// Hard failures kept verbatim (the rest are only counted).
const MAX_FAILURE_MESSAGES: usize = 20;
/// Verification mismatches kept verbatim per thread (the rest are only counted).
const MAX_MISMATCH_MESSAGES: usize = 50;
/// `Updates` frames (and full-map digests per seq) a thread remembers for comparing clients;
/// beyond this the later frames are not compared (and said so), keeping memory bounded.
pub const MAX_FRAMES_REMEMBERED: usize = 1 << 20;
/// Write stamps remembered to tell their first delivery from later ones.
const MAX_STAMPS_REMEMBERED: usize = 1 << 20;
/// How often throttled (slow) clients are looked at again.
const THROTTLE_TICK: Duration = Duration::from_millis(10);
/// Only workload endpoints carry pod labels.
const STAMP_KEY_PART: &str = "/workload/";
/// Drop reason of a client killed on purpose (`--kill-rate`); such kills are counted apart.
pub const KILLED: &str = "killed by the harness";
/// Drop reasons of TLS clients whose handshake ended in a TLS error (an alert from the server,
/// a server certificate refused) start with this; they are counted as TLS handshake failures
/// (a failed run: the TLS settings are wrong). A TLS 1.3 server checks the client's
/// certificate after the client finished its side, so an error before the first decrypted
/// byte counts too.
pub const TLS_HANDSHAKE_FAILED: &str = "TLS handshake failed";

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
    /// Stalled clients (`--stalled-fraction`) connected now: they never read, so never sync.
    pub stalled_open: AtomicU64,
    /// Clients killed on purpose so far (`--kill-rate`), and reconnects after a kill.
    pub kills: AtomicU64,
    pub restarts: AtomicU64,
    /// Verification mismatches found while running (frame contents, full-map digests).
    pub mismatches: AtomicU64,
    /// At the end: the highest seq a digest-only client reached, and threads that have
    /// stopped reading their digest-only clients (see [`Driver::catch_up`]).
    pub target_seq: AtomicU64,
    pub frozen: AtomicU64,
    // Published every PUBLISH_EVERY:
    pub updates: AtomicU64,
    pub update_frames: AtomicU64,
    pub bytes: AtomicU64,
}

/// What a client does besides the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Keeps the whole map: the reference the others are verified against. Never slowed,
    /// stalled or killed.
    Full,
    /// Keeps no map ([`Tracking::DigestOnly`]).
    DigestOnly,
    /// As `DigestOnly`, reading at most `--slow-bytes-per-sec`.
    Slow,
    /// Connects, sends its `Hello`, then never reads.
    Stalled,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Full => "full-map",
            Role::DigestOnly => "digest-only",
            Role::Slow => "slow",
            Role::Stalled => "stalled",
        }
    }
}

/// One session of a digest-only client (a killed and restarted client has several): what it
/// received, to verify against the full-map clients and the daemon at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub idx: usize,
    pub snap_seq: u64,
    pub snap_keys: u64,
    /// Checked by the session against the entries received.
    pub snap_digest: Digest,
    /// The last `Updates` frame's `last_seq` (the snapshot's seq without one).
    pub final_seq: u64,
    /// `first_seq` of the first `Updates` frame, if any.
    pub first_frame_seq: Option<u64>,
    /// Every frame of the segment was compared with the thread's record of it.
    pub frames_compared: bool,
    pub ended: &'static str,
}

#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub addr: SocketAddr,
    pub syncer: SyncerType,
    pub codecs: Vec<Codec>,
    pub start: Instant,
    pub deadline: Instant,
    /// Read rate of [`Role::Slow`] clients.
    pub slow_bytes_per_sec: u64,
    /// Clients killed per second by each thread.
    pub kills_per_sec: f64,
    /// A killed client reconnects after a random delay up to this.
    pub restart_delay: Duration,
    /// Client threads in the run.
    pub threads: usize,
    /// Every client connects over TLS with this configuration.
    pub tls: Option<ClientTls>,
    /// The protocol every client speaks.
    pub protocol: Protocol,
}

/// Longest the full-map clients are given at the end to reach the digest-only clients' seq.
const CATCH_UP: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct ClientPlan {
    pub idx: usize,
    /// When to connect, from the start of the run.
    pub offset: Duration,
    pub role: Role,
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
    /// Seq of its snapshot: from there to `seq` it recorded its digest after every frame.
    pub snap_seq: Option<u64>,
    /// Set by the end-of-run check.
    pub verified: bool,
    /// Felix-protocol clients (no seq): `(keys, digest)` after each of their last messages.
    pub recent: Vec<(u64, Digest)>,
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
    /// Datastore write → client latency, from write stamps (µs).
    pub ds_lag_us: Histogram<u64>,
    /// Content hash of every `Updates` frame, by `(first_seq, last_seq)`, with the client that
    /// first received it.
    pub frames_seen: HashMap<(u64, u64), (u128, usize)>,
    /// Full-map clients' map digests by seq (their snapshot's and after each frame).
    pub ref_digests: HashMap<u64, (Digest, usize)>,
    /// The frame or digest records were full: later ones were not compared.
    pub records_full: bool,
    pub segments: Vec<Segment>,
    pub mismatches: Vec<String>,
    pub kills: u64,
    pub restarts: u64,
    /// Clients whose TLS handshake failed (see [`TLS_HANDSHAKE_FAILED`]).
    pub tls_failures: u64,
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
    session: Option<Session>,
    /// The TLS connection over `stream` (with `--ca-file`): the session's bytes go through it.
    tls: Option<Box<rustls::ClientConnection>>,
    /// The server has sent plaintext over TLS: the handshake succeeded on both sides (a TLS
    /// 1.3 server checks the client's certificate after the client's side completed).
    tls_up: bool,
    connect_at: Option<Instant>,
    established: bool,
    /// In the ready queue.
    queued: bool,
    snapshot_done: bool,
    in_sync: bool,
    /// Reached in-sync in any session.
    ever_in_sync: bool,
    /// Waiting in the throttled list (a slow client over its read rate).
    throttled: bool,
    /// Bytes read in this session (for the read rate).
    session_bytes: u64,
    /// The current session's record (digest-only roles, once its snapshot completed).
    segment: Option<Segment>,
    /// Seq of the current session's snapshot.
    snap_seq: Option<u64>,
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
    ds_lag_us: Histogram<u64>,
    kills: u64,
    restarts: u64,
    tls_failures: u64,
}

/// What a thread knows to compare its clients' streams with each other.
#[derive(Default)]
struct Verify {
    frames: HashMap<(u64, u64), (u128, usize)>,
    /// The highest `last_seq` recorded: a client at it is the first to decode what follows.
    frontier: u64,
    ref_digests: HashMap<u64, (Digest, usize)>,
    records_full: bool,
    /// Stamps by the `last_seq` of the frame that first carried them (empty: scanned, none).
    stamps_by_frame: HashMap<u64, Vec<u64>>,
    seen_stamps: HashSet<u64>,
    segments: Vec<Segment>,
    mismatches: Vec<String>,
}

/// xorshift64*: the kill schedule's choices need no quality beyond "spread out".
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Driver {
    cfg: Arc<DriverConfig>,
    shared: Arc<Shared>,
    lag_tx: Sender<Histogram<u64>>,
    poll: Poll,
    clients: Vec<Client>,
    /// Sockets with something to do (a readiness event, or a read budget that ran out).
    ready: VecDeque<usize>,
    /// Slow clients over their read rate, with data possibly waiting.
    throttled: Vec<usize>,
    /// Killed clients and when they reconnect.
    restarts: Vec<(Instant, usize)>,
    rng: Rng,
    /// Snapshot and final seqs whose daemon digest the main thread should fetch.
    seq_tx: Sender<u64>,
    verify: Verify,
    local: Local,
    /// Snapshot chunks this thread's digest-only clients have decoded (see `ChunkMemo`): in a
    /// storm every client receives the same encoded snapshot, which one decode per thread
    /// verifies for all of them.
    chunk_memo: Arc<ChunkMemo>,
    /// The same for Felix-protocol clients: binary snapshots, shared byte for byte (see
    /// `felix_memo`).
    felix_memo: Arc<SnapshotMemo>,
}

impl ReadySockets for Driver {
    fn ready_queue(&mut self) -> &mut VecDeque<usize> {
        &mut self.ready
    }

    fn serve(&mut self, i: usize, buf: &mut [u8]) -> bool {
        self.clients[i].queued = false;
        self.service(i, buf)
    }

    fn requeue(&mut self, i: usize) {
        self.enqueue(i);
    }
}

/// Runs one thread's clients until the deadline or until `shared.stop` is set.
pub fn run_thread(
    thread: usize,
    plans: Vec<ClientPlan>,
    cfg: Arc<DriverConfig>,
    shared: Arc<Shared>,
    lag_tx: Sender<Histogram<u64>>,
    seq_tx: Sender<u64>,
) -> io::Result<ThreadResult> {
    let mut d = Driver::new(thread, plans, cfg, shared, lag_tx, seq_tx)?;
    d.run()?;
    Ok(d.finish())
}

impl Driver {
    fn new(
        thread: usize,
        plans: Vec<ClientPlan>,
        cfg: Arc<DriverConfig>,
        shared: Arc<Shared>,
        lag_tx: Sender<Histogram<u64>>,
        seq_tx: Sender<u64>,
    ) -> io::Result<Driver> {
        let clients = plans
            .into_iter()
            .map(|plan| Client {
                plan,
                state: ConnState::Pending,
                stream: None,
                session: None,
                tls: None,
                tls_up: false,
                connect_at: None,
                established: false,
                queued: false,
                snapshot_done: false,
                in_sync: false,
                ever_in_sync: false,
                throttled: false,
                session_bytes: 0,
                segment: None,
                snap_seq: None,
            })
            .collect();
        let seed = typha::model::now_unix_nanos() ^ ((thread as u64 + 1) << 40) | 1;
        Ok(Driver {
            cfg,
            shared,
            lag_tx,
            poll: Poll::new()?,
            clients,
            ready: VecDeque::new(),
            throttled: Vec::new(),
            restarts: Vec::new(),
            rng: Rng(seed),
            seq_tx,
            verify: Verify::default(),
            chunk_memo: Arc::new(ChunkMemo::new(CHUNK_MEMO_CAPACITY)),
            felix_memo: Arc::new(SnapshotMemo::new()),
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
                ds_lag_us: new_histogram(),
                kills: 0,
                restarts: 0,
                tls_failures: 0,
            },
        })
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; READ_BUF];
        let mut next = 0;
        let mut last_publish = Instant::now();
        let mut kills_done = 0u64;
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
                self.shared.started.fetch_add(1, Relaxed);
                self.connect(next);
                next += 1;
                made += 1;
            }
            if self.cfg.kills_per_sec > 0.0 {
                let due = ((now - self.cfg.start).as_secs_f64() * self.cfg.kills_per_sec) as u64;
                while kills_done < due {
                    kills_done += 1;
                    self.kill_one(now);
                }
            }
            let mut i = 0;
            while i < self.restarts.len() {
                if self.restarts[i].0 <= now {
                    let (_, c) = self.restarts.swap_remove(i);
                    self.restart(c);
                } else {
                    i += 1;
                }
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
                if !self.throttled.is_empty() || !self.restarts.is_empty() {
                    t = t.min(THROTTLE_TICK);
                }
                t
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.on_ready(events.iter().map(|ev| ev.token().0), &mut buf);
            self.release_throttled();
            serve_turn(self, &mut buf, MAX_TURN);
            if last_publish.elapsed() >= PUBLISH_EVERY {
                self.publish();
                last_publish = Instant::now();
            }
        }
        self.publish();
        self.catch_up(&mut buf)
    }

    /// At the end, the digest-only clients stop reading and the full-map clients read on until
    /// they hold the highest seq any digest-only client reached (or [`CATCH_UP`] passes): a
    /// digest-only client is verified through a full-map client that held its final seq, and
    /// a full-map client keeping a map decodes more slowly than one that does not.
    fn catch_up(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mine = self
            .clients
            .iter()
            .filter(|c| c.plan.role != Role::Full && c.state == ConnState::Open)
            .filter_map(|c| c.session.as_ref().map(Session::seq))
            .max()
            .unwrap_or(0);
        self.shared.target_seq.fetch_max(mine, Relaxed);
        self.shared.frozen.fetch_add(1, Relaxed);
        let until = Instant::now() + CATCH_UP;
        while self.shared.frozen.load(Relaxed) < self.cfg.threads as u64 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        let target = self.shared.target_seq.load(Relaxed);
        let mut events = Events::with_capacity(1024);
        loop {
            let behind: Vec<usize> = (0..self.clients.len())
                .filter(|&i| {
                    let c = &self.clients[i];
                    c.plan.role == Role::Full
                        && c.state == ConnState::Open
                        && c.session
                            .as_ref()
                            .is_some_and(|s| s.snapshot_complete() && s.seq() < target)
                })
                .collect();
            if behind.is_empty() || Instant::now() >= until {
                return Ok(());
            }
            for i in behind {
                self.service(i, buf);
            }
            match self.poll.poll(&mut events, Some(Duration::from_millis(5))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes the sockets a poll reported ready: a client in its handshake is served at once,
    /// the others join the round-robin queue.
    ///
    /// Behind the queue a new client would wait for every client ahead of it to decode a turn
    /// of its snapshot before its hello went out (or its ACK, in Typha's protocol): at 1,000
    /// Felix-protocol clients, each decoding a whole snapshot of its own, that wait passed the
    /// daemon's handshake timeout. An independent client answers at once, and what it reads
    /// in its handshake is small, so serving it now keeps the harness from measuring itself.
    fn on_ready(&mut self, ready: impl Iterator<Item = usize>, buf: &mut [u8]) {
        for i in ready {
            if self.clients[i].throttled {
                continue;
            }
            if self.handshaking(i) {
                if self.service(i, buf) {
                    self.enqueue(i);
                }
            } else {
                self.enqueue(i);
            }
        }
    }

    /// Client `i` is connecting, or connected with nothing received from the server yet (over
    /// TLS: no plaintext yet, so the TLS handshake counts too). What it reads first is the
    /// handshake's answer: native, the `ServerHello` and the start of the snapshot; Typha's,
    /// `MsgServerHello` and the decoder restart to ACK (the snapshot waits for the ACK).
    fn handshaking(&self, i: usize) -> bool {
        let c = &self.clients[i];
        match c.state {
            ConnState::Connecting => true,
            ConnState::Open => c.session.as_ref().is_some_and(|s| s.bytes_received() == 0),
            ConnState::Pending | ConnState::Closed => false,
        }
    }

    fn enqueue(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if !c.queued && c.stream.is_some() {
            c.queued = true;
            self.ready.push_back(i);
        }
    }

    /// Bytes slow client `i` may read now.
    fn allowance(&self, i: usize) -> usize {
        let c = &self.clients[i];
        let secs = c.connect_at.map_or(0.0, |t| t.elapsed().as_secs_f64());
        let allowed = (self.cfg.slow_bytes_per_sec as f64 * secs) as u64;
        allowed.saturating_sub(c.session_bytes) as usize
    }

    /// Puts slow clients whose rate allows another read back in the ready queue.
    fn release_throttled(&mut self) {
        let mut i = 0;
        while i < self.throttled.len() {
            let c = self.throttled[i];
            if self.clients[c].stream.is_none() {
                self.clients[c].throttled = false;
                self.throttled.swap_remove(i);
            } else if self.allowance(c) > 0 {
                self.clients[c].throttled = false;
                self.throttled.swap_remove(i);
                self.enqueue(c);
            } else {
                i += 1;
            }
        }
    }

    fn options(&self, plan: &ClientPlan) -> ClientOptions {
        ClientOptions {
            hostname: format!("typha-loadtest-{}", plan.idx),
            client_info: concat!("typha-loadtest ", env!("CARGO_PKG_VERSION")).to_owned(),
            syncer_type: self.cfg.syncer,
            accept_compression: self.cfg.codecs.clone(),
            answer_pings: true,
            tracking: if plan.role == Role::Full {
                Tracking::Full
            } else {
                Tracking::DigestOnly
            },
            chunk_memo: Some(self.chunk_memo.clone()),
            ..ClientOptions::default()
        }
    }

    fn connect(&mut self, i: usize) {
        let opts = self.options(&self.clients[i].plan);
        let c = &mut self.clients[i];
        c.session = Some(match self.cfg.protocol {
            Protocol::Native => {
                let mut session = ClientSession::new(opts);
                session.record_frames(true);
                session.set_stamp_label(STAMP_LABEL, STAMP_KEY_PART);
                Session::Native(Box::new(session))
            }
            Protocol::Typha => Session::Felix(Box::new(FelixSession::new(
                &opts.hostname,
                self.cfg.syncer.as_str(),
                c.plan.idx as u64,
                c.plan.role == Role::Full,
                Some(self.felix_memo.clone()),
            ))),
        });
        c.connect_at = Some(Instant::now());
        c.state = ConnState::Connecting;
        c.session_bytes = 0;
        c.snapshot_done = false;
        c.in_sync = false;
        c.segment = None;
        c.snap_seq = None;
        c.tls_up = false;
        c.tls = None;
        if let Some(tls) = &self.cfg.tls {
            match tls.connection() {
                Ok(conn) => self.clients[i].tls = Some(Box::new(conn)),
                Err(e) => return self.close(i, format!("TLS setup failed: {e}")),
            }
        }
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

    /// Reconnects a killed client (it was counted closed while away).
    fn restart(&mut self, i: usize) {
        if self.clients[i].state != ConnState::Closed {
            return;
        }
        self.shared.closed.fetch_sub(1, Relaxed);
        self.shared.restarts.fetch_add(1, Relaxed);
        self.local.restarts += 1;
        self.connect(i);
    }

    /// Kills one random connected client that may be killed: closes its socket abruptly
    /// (SO_LINGER 0: the daemon sees a reset) and schedules its reconnect.
    fn kill_one(&mut self, now: Instant) {
        let n = self.clients.len();
        for _ in 0..32 {
            let i = self.rng.below(n);
            let c = &self.clients[i];
            if c.state != ConnState::Open || !matches!(c.plan.role, Role::DigestOnly | Role::Slow) {
                continue;
            }
            if let Some(s) = &c.stream {
                set_linger_zero(s);
            }
            self.close(i, KILLED.to_owned());
            self.local.kills += 1;
            self.shared.kills.fetch_add(1, Relaxed);
            let delay = self.cfg.restart_delay.mul_f64(self.rng.unit());
            self.restarts.push((now + delay, i));
            return;
        }
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
                    if c.plan.role == Role::Stalled {
                        self.shared.stalled_open.fetch_add(1, Relaxed);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return false,
                Err(e) => {
                    self.close(i, format!("connect failed: {e}"));
                    return false;
                }
            }
        }
        let c = &self.clients[i];
        let tls = c.tls.as_ref().map(|t| t.is_handshaking());
        let more = if c.plan.role == Role::Stalled && tls != Some(true) {
            // Never reads (over TLS: once its handshake is done, so that its Hello goes out):
            // the daemon's buffers for it fill up until it drops it.
            false
        } else if tls.is_some() {
            match self.read_some_tls(i, buf) {
                Ok(more) => more,
                Err(reason) => {
                    self.close(i, reason);
                    return false;
                }
            }
        } else {
            match self.read_some(i, buf) {
                Ok(more) => more,
                Err(reason) => {
                    self.close(i, reason);
                    return false;
                }
            }
        };
        let flushed = if self.clients[i].tls.is_some() {
            self.flush_tls(i)
        } else {
            self.flush(i)
        };
        if let Err(reason) = flushed {
            self.close(i, reason);
            return false;
        }
        more
    }

    /// Bytes client `i` may read this turn: [`READ_BUDGET`], or less for a slow client (what its
    /// rate allows).
    fn read_budget(&self, i: usize) -> usize {
        if self.clients[i].plan.role == Role::Slow {
            self.allowance(i).min(READ_BUDGET)
        } else {
            READ_BUDGET
        }
    }

    /// Client `i` has read its budget: a slow client waits for its rate (throttled, `false`);
    /// any other may have more waiting (`true`).
    fn budget_spent(&mut self, i: usize) -> bool {
        let c = &mut self.clients[i];
        if c.plan.role != Role::Slow {
            return true;
        }
        if !c.throttled {
            c.throttled = true;
            self.throttled.push(i);
        }
        false
    }

    /// [`Driver::read_some`] over TLS: reads records until `WouldBlock` or the budget (counted
    /// in bytes on the wire), decrypts them and feeds the plaintext to the session.
    fn read_some_tls(&mut self, i: usize, buf: &mut [u8]) -> Result<bool, String> {
        let mut budget = self.read_budget(i);
        loop {
            if budget == 0 {
                return Ok(self.budget_spent(i));
            }
            let c = &mut self.clients[i];
            let (Some(stream), Some(tls)) = (c.stream.as_mut(), c.tls.as_mut()) else {
                return Ok(false);
            };
            let eof = match tls.read_tls(stream) {
                Ok(0) => true,
                Ok(n) => {
                    budget = budget.saturating_sub(n);
                    c.session_bytes += n as u64;
                    false
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_reason("read", &e, i)),
            };
            if let Err(e) = tls.process_new_packets() {
                // Sends the alert that says why, if the socket takes it.
                let _ = tls.write_tls(stream);
                return Err(if c.tls_up {
                    format!("TLS error: {e}")
                } else {
                    format!("{TLS_HANDSHAKE_FAILED}: {e}")
                });
            }
            let mut closed = eof;
            loop {
                let frontier = self.verify.frontier;
                let c = &mut self.clients[i];
                let (Some(tls), Some(session)) = (c.tls.as_mut(), c.session.as_mut()) else {
                    return Ok(false);
                };
                let n = match tls.reader().read(buf) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        closed = true;
                        break;
                    }
                    Err(e) => return Err(format!("TLS read error: {e}")),
                };
                c.tls_up = true;
                self.local.bytes += n as u64;
                session.set_scan_stamps(session.seq() >= frontier);
                let fed = session.feed(&buf[..n]);
                self.drain_events(i);
                if let Err(e) = fed {
                    return Err(self.hard_failure(i, e));
                }
            }
            if closed {
                let Some(session) = self.clients[i].session.as_ref() else {
                    return Ok(false);
                };
                return Err(session.closed_reason());
            }
        }
    }

    /// [`Driver::flush`] over TLS: the session's output is encrypted, then records are written
    /// until done or `WouldBlock` (the socket's WRITABLE edge brings the rest).
    fn flush_tls(&mut self, i: usize) -> Result<(), String> {
        let c = &mut self.clients[i];
        let (Some(stream), Some(session), Some(tls)) =
            (c.stream.as_mut(), c.session.as_mut(), c.tls.as_mut())
        else {
            return Ok(());
        };
        while session.has_output() {
            // Before the handshake completes rustls buffers the plaintext (bounded); 0 means
            // that buffer is full, and the rest waits for the next flush.
            match tls.writer().write(session.pending_output()) {
                Ok(0) => break,
                Ok(n) => session.advance_output(n),
                Err(e) => return Err(format!("TLS write error: {e}")),
            }
        }
        while tls.wants_write() {
            match tls.write_tls(stream) {
                Ok(0) => return Err("write error: wrote 0 bytes".into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_reason("write", &e, i)),
            }
        }
        Ok(())
    }

    /// Reads until `WouldBlock` or [`READ_BUDGET`] bytes (for a slow client: what its rate
    /// allows), feeding the session. `Ok(true)` when the budget ran out first (more may be
    /// waiting); `Err` is why the connection ended.
    fn read_some(&mut self, i: usize, buf: &mut [u8]) -> Result<bool, String> {
        let mut budget = self.read_budget(i);
        loop {
            if budget == 0 {
                return Ok(self.budget_spent(i));
            }
            let frontier = self.verify.frontier;
            let c = &mut self.clients[i];
            let (Some(stream), Some(session)) = (c.stream.as_mut(), c.session.as_mut()) else {
                return Ok(false);
            };
            let want = budget.min(buf.len());
            match stream.read(&mut buf[..want]) {
                Ok(0) => return Err(session.closed_reason()),
                Ok(n) => {
                    budget -= n;
                    c.session_bytes += n as u64;
                    self.local.bytes += n as u64;
                    // Only a client at the thread's frontier decodes frames no other client of
                    // the thread has seen: it scans them for write stamps, the others look the
                    // stamps up.
                    session.set_scan_stamps(session.seq() >= frontier);
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
        if let Some(r) = c.session.as_ref().and_then(Session::goodbye_reason) {
            return format!("goodbye: {r}");
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

    fn mismatch(&mut self, msg: String) {
        if self.verify.mismatches.len() < MAX_MISMATCH_MESSAGES {
            self.verify.mismatches.push(msg);
        }
        self.shared.mismatches.fetch_add(1, Relaxed);
    }

    fn drain_events(&mut self, i: usize) {
        let steady = self.shared.steady.load(Relaxed);
        let c = &mut self.clients[i];
        let Some(session) = c.session.as_mut() else {
            return;
        };
        let l = &mut self.local;
        let mut snapshot: Option<(u64, u64, Digest)> = None;
        while let Some(ev) = session.poll_event() {
            let became_in_sync = match ev {
                SessionEvent::SnapshotComplete {
                    seq,
                    key_count,
                    digest,
                    in_sync,
                } => {
                    c.snapshot_done = true;
                    l.snapshots += 1;
                    // Includes whatever followed the SnapshotEnd in the same read.
                    l.snapshot_bytes += session.bytes_received();
                    // Only a snapshot with a seq can be checked against the daemon's digests.
                    if let (Some(seq), Some(digest)) = (seq, digest) {
                        snapshot = Some((seq, key_count, digest));
                    }
                    in_sync
                }
                SessionEvent::InSync => c.snapshot_done,
                SessionEvent::Updates { count, lag } => {
                    if let Some(lag) = lag {
                        let us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
                        l.lag_us.saturating_record(us);
                        l.interval_lag_us.saturating_record(us);
                        if steady {
                            l.steady_lag_us.saturating_record(us);
                        }
                    }
                    l.updates += count as u64;
                    l.update_frames += 1;
                    false
                }
                SessionEvent::Ping => {
                    l.pings += 1;
                    false
                }
            };
            if became_in_sync && !c.in_sync {
                c.in_sync = true;
                let now = Instant::now();
                let since = c.connect_at.map_or(Duration::ZERO, |t| now - t);
                l.sync_us
                    .saturating_record(u64::try_from(since.as_micros()).unwrap_or(u64::MAX));
                let at = now - self.cfg.start;
                l.last_in_sync = Some(l.last_in_sync.map_or(at, |t| t.max(at)));
                if !c.ever_in_sync {
                    c.ever_in_sync = true;
                    self.shared.in_sync.fetch_add(1, Relaxed);
                }
                if c.state == ConnState::Open {
                    self.shared.in_sync_open.fetch_add(1, Relaxed);
                }
            }
        }
        let mut records = Vec::new();
        while let Some(r) = session.pop_frame_record() {
            records.push(r);
        }
        let (idx, role) = (c.plan.idx, c.plan.role);
        if let Some((seq, keys, digest)) = snapshot {
            self.clients[i].snap_seq = Some(seq);
            if role == Role::Full {
                self.note_ref_digest(idx, seq, digest);
            } else {
                self.clients[i].segment = Some(Segment {
                    idx,
                    snap_seq: seq,
                    snap_keys: keys,
                    snap_digest: digest,
                    final_seq: seq,
                    first_frame_seq: None,
                    frames_compared: true,
                    ended: "open at the end",
                });
                let _ = self.seq_tx.send(seq);
            }
        }
        for r in records {
            self.note_frame(i, r);
        }
    }

    fn note_ref_digest(&mut self, idx: usize, seq: u64, digest: Digest) {
        let v = &mut self.verify;
        match v.ref_digests.get(&seq) {
            Some(&(d, other)) if d != digest => self.mismatch(format!(
                "full-map clients {other} and {idx} disagree at seq {seq}: digest {d} vs {digest}"
            )),
            Some(_) => {}
            None if v.ref_digests.len() >= MAX_FRAMES_REMEMBERED => v.records_full = true,
            None => {
                v.ref_digests.insert(seq, (digest, idx));
            }
        }
    }

    /// Compares one client's `Updates` frame with the thread's record of that frame, records
    /// full-map digests, and turns write stamps into datastore → client latency.
    fn note_frame(&mut self, i: usize, r: FrameRecord) {
        let (idx, role) = (self.clients[i].plan.idx, self.clients[i].plan.role);
        let key = (r.first_seq, r.last_seq);
        let mut compared = true;
        match self.verify.frames.get(&key) {
            Some(&(h, other)) if h != r.content_hash => self.mismatch(format!(
                "client {idx}: Updates {}..={} differs from client {other}'s (content hash {:032x} vs {h:032x})",
                r.first_seq, r.last_seq, r.content_hash
            )),
            Some(_) => {}
            None if self.verify.frames.len() >= MAX_FRAMES_REMEMBERED => {
                self.verify.records_full = true;
                compared = false;
            }
            None => {
                self.verify.frames.insert(key, (r.content_hash, idx));
                self.verify.frontier = self.verify.frontier.max(r.last_seq);
            }
        }
        if let (Role::Full, Some(d)) = (role, r.digest_after) {
            self.note_ref_digest(idx, r.last_seq, d);
        }
        if let Some(seg) = self.clients[i].segment.as_mut() {
            seg.final_seq = r.last_seq;
            seg.first_frame_seq.get_or_insert(r.first_seq);
            seg.frames_compared &= compared;
        }
        let v = &mut self.verify;
        if r.scanned && !v.stamps_by_frame.contains_key(&r.last_seq) {
            if v.seen_stamps.len() >= MAX_STAMPS_REMEMBERED {
                v.seen_stamps.clear();
            }
            let first: Vec<u64> = r
                .stamps
                .iter()
                .copied()
                .filter(|s| v.seen_stamps.insert(*s))
                .collect();
            if !first.is_empty() || v.stamps_by_frame.len() < MAX_FRAMES_REMEMBERED {
                v.stamps_by_frame.insert(r.last_seq, first);
            }
        }
        if let Some(stamps) = v.stamps_by_frame.get(&r.last_seq) {
            for &s in stamps {
                let us = r.decoded_at.saturating_sub(s) / 1000;
                self.local.ds_lag_us.saturating_record(us);
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
        // A TLS client whose handshake the server ended without a TLS error before any
        // decrypted byte (a close or reset, e.g. over the connection limit or a handshake
        // timeout) is a drop like any other, marked as such; only a TLS error (an alert, a
        // certificate the client refused) counts as a handshake failure.
        let reason = if c.tls.is_some()
            && !c.tls_up
            && c.state == ConnState::Open
            && reason != KILLED
            && !reason.starts_with(TLS_HANDSHAKE_FAILED)
        {
            format!("before the TLS session was up: {reason}")
        } else {
            reason
        };
        if reason.starts_with(TLS_HANDSHAKE_FAILED) {
            self.local.tls_failures += 1;
        }
        c.tls = None;
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        if c.state == ConnState::Open {
            self.shared.open.fetch_sub(1, Relaxed);
            if c.in_sync {
                self.shared.in_sync_open.fetch_sub(1, Relaxed);
            }
            if c.plan.role == Role::Stalled {
                self.shared.stalled_open.fetch_sub(1, Relaxed);
            }
        }
        if let Some(mut seg) = c.segment.take() {
            seg.ended = if reason == KILLED {
                "killed"
            } else {
                "dropped"
            };
            self.verify.segments.push(seg);
        }
        c.in_sync = false;
        if c.state != ConnState::Closed {
            c.state = ConnState::Closed;
            self.shared.closed.fetch_add(1, Relaxed);
            if reason != KILLED {
                *self.local.drops.entry(reason).or_default() += 1;
            }
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
        let mut v = self.verify;
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
            ds_lag_us: l.ds_lag_us,
            frames_seen: HashMap::new(),
            ref_digests: HashMap::new(),
            records_full: v.records_full,
            segments: Vec::new(),
            mismatches: std::mem::take(&mut v.mismatches),
            kills: l.kills,
            restarts: l.restarts,
            tls_failures: l.tls_failures,
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
            r.in_sync += u64::from(c.ever_in_sync);
            r.connected += u64::from(c.established);
            if let Some(seg) = c.segment {
                v.segments.push(seg);
            }
            if let Some(s) = &c.session {
                r.frames += s.frames_received();
                if c.plan.role == Role::Full {
                    r.full_maps.push(FullMapState {
                        idx: c.plan.idx,
                        snapshot_complete: s.snapshot_complete(),
                        open,
                        seq: s.seq(),
                        keys: s.key_count(),
                        digest: s.digest().to_string(),
                        snap_seq: c.snap_seq,
                        verified: false,
                        recent: s.recent_digests(),
                    });
                }
            }
            if open {
                if let Some(s) = c.stream {
                    r.streams.push(s);
                }
            }
        }
        r.frames_seen = v.frames;
        r.ref_digests = v.ref_digests;
        r.segments = v.segments;
        r
    }
}

/// Makes the next close of `s` send a reset instead of a FIN (an abrupt client death).
fn set_linger_zero(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket descriptor and a linger struct of the size passed.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use typha::proto::typha::{
        decode_all_client_messages, encode_decoder_restart, encode_server_hello, server_preamble,
        ClientMessage, DecoderRestart, ServerHello, COMPRESSION_SNAPPY,
    };

    /// Reads from the daemon's side of a connection until `want` client messages decode from
    /// everything read, or the read timeout says nothing more came.
    fn read_messages(
        s: &mut std::net::TcpStream,
        got: &mut Vec<u8>,
        want: usize,
    ) -> Vec<ClientMessage> {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(msgs) = decode_all_client_messages(got) {
                if msgs.len() >= want {
                    return msgs;
                }
            }
            match s.read(&mut buf) {
                Ok(0) => panic!("client closed"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => panic!("no message {want} from the client within 3 s: {e}"),
            }
        }
    }

    #[test]
    fn a_client_in_its_handshake_is_served_before_the_ready_queue() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let now = Instant::now();
        let cfg = Arc::new(DriverConfig {
            addr: listener.local_addr().unwrap(),
            syncer: SyncerType::Felix,
            codecs: Vec::new(),
            start: now,
            deadline: now + Duration::from_secs(60),
            slow_bytes_per_sec: 0,
            kills_per_sec: 0.0,
            restart_delay: Duration::ZERO,
            threads: 1,
            tls: None,
            protocol: Protocol::Typha,
        });
        let plans = (0..2)
            .map(|idx| ClientPlan {
                idx,
                offset: Duration::ZERO,
                role: Role::DigestOnly,
            })
            .collect();
        let (lag_tx, _lag_rx) = std::sync::mpsc::channel();
        let (seq_tx, _seq_rx) = std::sync::mpsc::channel();
        let mut d =
            Driver::new(0, plans, cfg, Arc::new(Shared::default()), lag_tx, seq_tx).unwrap();
        let mut buf = vec![0u8; READ_BUF];
        // Client 0 waits in the ready queue, as a client with a snapshot to decode would.
        d.connect(0);
        let _s0 = listener.accept().unwrap().0;
        d.enqueue(0);
        d.connect(1);
        let mut s1 = listener.accept().unwrap().0;

        // Its connect reported: the hello goes out now, not after client 0's turn.
        d.on_ready(std::iter::once(1), &mut buf);
        let mut got = Vec::new();
        match read_messages(&mut s1, &mut got, 1).as_slice() {
            [ClientMessage::Hello(h)] => assert_eq!(h.hostname, "typha-loadtest-1"),
            other => panic!("{other:?}"),
        }
        // The server's hello and decoder restart: ACKed at once too.
        let mut reply = server_preamble().to_vec();
        reply.extend_from_slice(&encode_server_hello(&ServerHello {
            version: "test".into(),
            syncer_type: "felix".into(),
            supports_node_resource_updates: true,
            server_conn_id: 1,
        }));
        reply.extend_from_slice(&encode_decoder_restart(&DecoderRestart {
            message: "enable compression".into(),
            compression: COMPRESSION_SNAPPY.into(),
        }));
        s1.write_all(&reply).unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut events = Events::with_capacity(16);
        while d.clients[1].session_bytes == 0 && Instant::now() < deadline {
            d.poll
                .poll(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
            let tokens: Vec<usize> = events.iter().map(|e| e.token().0).collect();
            d.on_ready(tokens.into_iter(), &mut buf);
        }
        let msgs = read_messages(&mut s1, &mut got, 2);
        assert!(matches!(msgs[1], ClientMessage::Ack), "{msgs:?}");
        // Client 0 kept its place; client 1 never joined the queue.
        assert_eq!(d.ready, VecDeque::from([0]));
    }
}
