//! Subscriber threads: each owns a mio `Poll` over its share of the subscriber sockets, feeds
//! what it reads to each socket's [`Wire`] and records, per message, the latency (arrival minus
//! the message's stamp) and whether it belongs to the measured window.

use super::wire::{Wire, WireEvent};
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use typha_loadtest_common::ready::{serve_turn, ReadySockets};

const CONNECTS_PER_ITERATION: usize = 256;
const READ_BUF: usize = 256 * 1024;
/// Bytes read from one socket per turn before the next ready socket is served.
const READ_BUDGET: usize = 1 << 20;
const MAX_WAIT: Duration = Duration::from_millis(20);
const PUBLISH_EVERY: Duration = Duration::from_millis(50);
const MAX_FAILURE_MESSAGES: usize = 10;
/// Latencies above an hour saturate.
const HIST_MAX_US: u64 = 3_600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

pub fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// What the subscriber threads share with the main thread.
#[derive(Debug)]
pub struct Shared {
    pub stop: AtomicBool,
    /// The measured window `[start, end)` in Unix nanoseconds; `u64::MAX` until set. Messages
    /// stamped in it are counted and timed; arrivals in it are paired with the server's CPU.
    pub window_start_ns: AtomicU64,
    pub window_end_ns: AtomicU64,
    pub connected: AtomicU64,
    pub subscribed: AtomicU64,
    pub closed: AtomicU64,
    /// Window messages delivered so far (published every [`PUBLISH_EVERY`]).
    pub window_delivered: AtomicU64,
    /// Lowest and highest sequence number of a window message seen by any subscriber (for the
    /// typha target, whose publisher is the daemon's own datastore).
    pub window_min_seq: AtomicU64,
    pub window_max_seq: AtomicU64,
    /// Some message stamped at or after the window's end has arrived.
    pub seen_after_window: AtomicBool,
    pub failures: Mutex<Vec<String>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            stop: AtomicBool::new(false),
            window_start_ns: AtomicU64::new(u64::MAX),
            window_end_ns: AtomicU64::new(u64::MAX),
            connected: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            window_delivered: AtomicU64::new(0),
            window_min_seq: AtomicU64::new(u64::MAX),
            window_max_seq: AtomicU64::new(0),
            seen_after_window: AtomicBool::new(false),
            failures: Mutex::new(Vec::new()),
        }
    }
}

/// One subscriber at the end of the run.
#[derive(Debug, Clone, Copy)]
pub struct SubscriberEnd {
    pub subscribed: bool,
    pub open: bool,
    /// Highest sequence number received.
    pub last_seq: u64,
}

#[derive(Debug)]
pub struct ThreadResult {
    /// Latency of window messages, microseconds.
    pub latency_us: Histogram<u64>,
    /// Window messages delivered (whenever they arrived).
    pub window_delivered: u64,
    /// Messages (any stamp) that arrived inside the window.
    pub window_arrivals: u64,
    pub messages: u64,
    pub bytes: u64,
    pub subscribers: Vec<SubscriberEnd>,
    pub drops: BTreeMap<String, u64>,
}

struct Sub {
    stream: Option<TcpStream>,
    wire: Box<dyn Wire>,
    out: Vec<u8>,
    out_pos: usize,
    connected: bool,
    subscribed: bool,
    queued: bool,
    last_seq: u64,
}

struct Thread<'a> {
    addr: SocketAddr,
    shared: &'a Shared,
    poll: Poll,
    subs: Vec<Sub>,
    ready: VecDeque<usize>,
    events: Vec<WireEvent>,
    latency_us: Histogram<u64>,
    window_delivered: u64,
    published_delivered: u64,
    window_arrivals: u64,
    messages: u64,
    bytes: u64,
    min_seq: u64,
    max_seq: u64,
    drops: BTreeMap<String, u64>,
}

/// Runs `wires.len()` subscribers against `addr` until `shared.stop`.
pub fn run_thread(
    addr: SocketAddr,
    wires: Vec<Box<dyn Wire>>,
    shared: &Shared,
) -> io::Result<ThreadResult> {
    let subs = wires
        .into_iter()
        .map(|wire| Sub {
            stream: None,
            wire,
            out: Vec::new(),
            out_pos: 0,
            connected: false,
            subscribed: false,
            queued: false,
            last_seq: 0,
        })
        .collect();
    let mut t = Thread {
        addr,
        shared,
        poll: Poll::new()?,
        subs,
        ready: VecDeque::new(),
        events: Vec::new(),
        latency_us: new_histogram(),
        window_delivered: 0,
        published_delivered: 0,
        window_arrivals: 0,
        messages: 0,
        bytes: 0,
        min_seq: u64::MAX,
        max_seq: 0,
        drops: BTreeMap::new(),
    };
    t.run()?;
    Ok(t.finish())
}

impl ReadySockets for Thread<'_> {
    fn ready_queue(&mut self) -> &mut VecDeque<usize> {
        &mut self.ready
    }

    fn serve(&mut self, i: usize, buf: &mut [u8]) -> bool {
        self.subs[i].queued = false;
        self.service(i, buf)
    }

    fn requeue(&mut self, i: usize) {
        self.enqueue(i);
    }
}

impl Thread<'_> {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut buf = vec![0u8; READ_BUF];
        let mut next = 0;
        let mut last_publish = Instant::now();
        while !self.shared.stop.load(Relaxed) {
            let mut made = 0;
            while next < self.subs.len() && made < CONNECTS_PER_ITERATION {
                self.connect(next);
                next += 1;
                made += 1;
            }
            let timeout = if next < self.subs.len() || !self.ready.is_empty() {
                Duration::ZERO
            } else {
                MAX_WAIT
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                self.enqueue(ev.token().0);
            }
            serve_turn(self, &mut buf, MAX_WAIT);
            if last_publish.elapsed() >= PUBLISH_EVERY {
                self.publish();
                last_publish = Instant::now();
            }
        }
        self.publish();
        Ok(())
    }

    fn enqueue(&mut self, i: usize) {
        if let Some(s) = self.subs.get_mut(i) {
            if !s.queued && s.stream.is_some() {
                s.queued = true;
                self.ready.push_back(i);
            }
        }
    }

    fn connect(&mut self, i: usize) {
        let mut stream = match TcpStream::connect(self.addr) {
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
        self.subs[i].stream = Some(stream);
    }

    /// Completes a connect, reads up to [`READ_BUDGET`], writes what is pending. Returns
    /// whether more may be waiting.
    fn service(&mut self, i: usize, buf: &mut [u8]) -> bool {
        let s = &mut self.subs[i];
        let Some(stream) = s.stream.as_mut() else {
            return false;
        };
        if !s.connected {
            match stream.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    self.close(i, format!("connect failed: {e}"));
                    return false;
                }
            }
            match stream.peer_addr() {
                Ok(_) => {
                    s.connected = true;
                    let _ = stream.set_nodelay(true);
                    s.wire.start(&mut s.out);
                    self.shared.connected.fetch_add(1, Relaxed);
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

    fn read_some(&mut self, i: usize, buf: &mut [u8]) -> Result<bool, String> {
        let mut budget = READ_BUDGET;
        while budget > 0 {
            let s = &mut self.subs[i];
            let Some(stream) = s.stream.as_mut() else {
                return Ok(false);
            };
            let want = budget.min(buf.len());
            match stream.read(&mut buf[..want]) {
                Ok(0) => return Err("closed by server".into()),
                Ok(n) => {
                    budget -= n;
                    self.bytes += n as u64;
                    let now = unix_nanos();
                    let mut events = std::mem::take(&mut self.events);
                    let fed = s.wire.feed(&buf[..n], &mut s.out, &mut events);
                    for ev in events.drain(..) {
                        self.record(i, ev, now);
                    }
                    self.events = events;
                    if let Err(e) = fed {
                        let mut f = self
                            .shared
                            .failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner());
                        if f.len() < MAX_FAILURE_MESSAGES {
                            f.push(format!("subscriber {i}: {e}"));
                        }
                        return Err("protocol error".into());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read error: {}", e.kind())),
            }
        }
        Ok(true)
    }

    fn record(&mut self, i: usize, ev: WireEvent, now: u64) {
        let s = &mut self.subs[i];
        match ev {
            WireEvent::Subscribed => {
                if !s.subscribed {
                    s.subscribed = true;
                    self.shared.subscribed.fetch_add(1, Relaxed);
                }
            }
            WireEvent::Message { stamp, seq, count } => {
                s.last_seq = s.last_seq.max(seq);
                self.messages += count;
                let start = self.shared.window_start_ns.load(Relaxed);
                let end = self.shared.window_end_ns.load(Relaxed);
                if (start..end).contains(&now) {
                    self.window_arrivals += count;
                }
                if (start..end).contains(&stamp) {
                    self.window_delivered += count;
                    let us = now.saturating_sub(stamp) / 1000;
                    self.latency_us.saturating_record_n(us, count);
                    let first = seq.saturating_sub(count.saturating_sub(1));
                    if first < self.min_seq {
                        self.min_seq = first;
                        self.shared.window_min_seq.fetch_min(first, Relaxed);
                    }
                    if seq > self.max_seq {
                        self.max_seq = seq;
                        self.shared.window_max_seq.fetch_max(seq, Relaxed);
                    }
                } else if stamp >= end {
                    self.shared.seen_after_window.store(true, Relaxed);
                }
            }
        }
    }

    fn flush(&mut self, i: usize) -> Result<(), String> {
        let s = &mut self.subs[i];
        let Some(stream) = s.stream.as_mut() else {
            return Ok(());
        };
        while s.out_pos < s.out.len() {
            match stream.write(&s.out[s.out_pos..]) {
                Ok(0) => return Err("write error: wrote 0 bytes".into()),
                Ok(n) => s.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("write error: {}", e.kind())),
            }
        }
        s.out.clear();
        s.out_pos = 0;
        Ok(())
    }

    fn close(&mut self, i: usize, reason: String) {
        let s = &mut self.subs[i];
        if let Some(mut st) = s.stream.take() {
            let _ = self.poll.registry().deregister(&mut st);
        }
        self.shared.closed.fetch_add(1, Relaxed);
        *self.drops.entry(reason).or_default() += 1;
    }

    fn publish(&mut self) {
        let d = self.window_delivered - self.published_delivered;
        self.shared.window_delivered.fetch_add(d, Relaxed);
        self.published_delivered = self.window_delivered;
    }

    fn finish(self) -> ThreadResult {
        ThreadResult {
            latency_us: self.latency_us,
            window_delivered: self.window_delivered,
            window_arrivals: self.window_arrivals,
            messages: self.messages,
            bytes: self.bytes,
            subscribers: self
                .subs
                .iter()
                .map(|s| SubscriberEnd {
                    subscribed: s.subscribed,
                    open: s.stream.is_some(),
                    last_seq: s.last_seq,
                })
                .collect(),
            drops: self.drops,
        }
    }
}
