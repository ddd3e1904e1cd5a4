//! One client connection: its phase, its protocol session, and its position in the shared output.
//!
//! A connection owns no copies of batch or snapshot data. What it still has to write is, in
//! order: the unwritten rest of a frame it started (`in_flight`), its own small control frames
//! (ServerHello, pings, Goodbye), the rest of a shared snapshot, and the ring's batches from
//! its cursor on. `gather` lays these out as iovecs for one vectored write; `advance` moves past
//! whatever the kernel took. A partly written frame is kept whole in `in_flight`, so control
//! frames queued meanwhile go after it, never inside it.

use super::ring::Ring;
use super::session::Session;
use crate::metrics::Metrics;
use crate::model::{now_unix_nanos, SyncerType};
use crate::proto::encode::{EncodedSnapshot, WireVariant};
use bytes::Bytes;
use mio::net::TcpStream;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// The time of one write, read once and used for every frame that write completes (two clock
/// reads per write rather than per frame per client).
#[derive(Debug, Clone, Copy)]
pub struct WriteTime {
    pub at: Instant,
    pub unix_nanos: u64,
}

impl WriteTime {
    pub fn now() -> Self {
        WriteTime {
            at: Instant::now(),
            unix_nanos: now_unix_nanos(),
        }
    }
}

/// Most iovecs handed to one `writev`.
pub const MAX_IOV: usize = 64;

/// The connection lifecycle as the loop sees it, whatever the protocol; see `docs/protocol.md`
/// ("Connection lifecycle"). Protocol-specific sub-states live in the connection's
/// [`Session`]. Only `Server::enter_phase` changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Accepted; waiting for the client's hello.
    Handshake,
    /// Hello accepted; waiting for the shared snapshot, then writing it.
    Snapshot,
    /// Snapshot written; writing batches from the ring as they arrive.
    Streaming,
    /// Writing a last farewell (if the protocol has one), then closing, by `deadline` at the
    /// latest.
    Closing { deadline: Instant },
}

/// What finishing a frame means, for the metrics.
#[derive(Debug, Clone, Copy)]
pub enum Completion {
    None,
    Batch { received_at: u64, arrived: Instant },
    SnapshotEnd,
}

#[derive(Debug)]
pub struct InFlight {
    pub bytes: Bytes,
    pub offset: usize,
    pub done: Completion,
}

/// What a connection still has to write, as positions in shared buffers. Independent of the
/// socket, so tests and benchmarks can drive it with any writer.
#[derive(Debug)]
pub struct Outbox {
    pub syncer: SyncerType,
    /// The form of the shared frames this client takes.
    pub variant: WireVariant,
    pub in_flight: Option<InFlight>,
    pub control: VecDeque<Bytes>,
    /// The shared snapshot being written and the index of its next frame.
    pub snapshot: Option<(Arc<EncodedSnapshot>, usize)>,
    /// Ring cursor: the next sequence number to write. `None` until a snapshot is assigned.
    pub next_seq: Option<u64>,
    /// The session has not yet let the snapshot be written (a handshake step awaits an ACK).
    pub hold_snapshot: bool,
    /// The session has not yet let the ring be written. The cursor stays put meanwhile.
    pub hold_ring: bool,
    /// Queued ahead of the ring when the session releases it (the snapshot's live prefix).
    pub live_prefix: Option<Bytes>,
}

#[derive(Debug)]
pub struct Connection {
    /// Unique for the life of the process; a slab slot is reused, this is not.
    pub id: u64,
    pub stream: TcpStream,
    /// The TLS session over `stream`, on a TLS port; `None` writes plaintext straight to it.
    pub tls: Option<Box<super::tls::TlsSession>>,
    pub peer: SocketAddr,
    phase: Phase,
    pub hostname: Box<str>,
    /// The protocol this client speaks: its decoder, handshake state, pings and farewell.
    pub session: Session,
    pub out: Outbox,
    /// Closing, and our side of the stream is shut: waiting for the peer's EOF so that closing
    /// with its unread bytes pending cannot reset the connection before it reads the Goodbye.
    pub write_shut: bool,
    /// WRITABLE interest is registered: the socket filled up and a backlog remains.
    pub writable_interest: bool,
    pub dirty: bool,
    pub accepted_at: Instant,
    pub handshake_done_at: Option<Instant>,
    pub last_pong: Instant,
    pub next_ping: Instant,
    /// Last time bytes were written or the output was found empty.
    pub last_progress: Instant,
    /// A legacy (v3.31 policy key) client, counted in the server's `LegacyKeyDemand`: its
    /// snapshot must be at this sequence number or later (every later batch carries its
    /// variant). `None` for every other client.
    pub legacy_snapshot_from: Option<u64>,
}

impl Connection {
    pub fn new(
        id: u64,
        stream: TcpStream,
        peer: SocketAddr,
        session: Session,
        now: Instant,
    ) -> Self {
        Connection {
            id,
            stream,
            tls: None,
            peer,
            phase: Phase::Handshake,
            hostname: "".into(),
            session,
            out: Outbox::new(SyncerType::Felix, WireVariant::NativePlain),
            write_shut: false,
            writable_interest: false,
            dirty: false,
            accepted_at: now,
            handshake_done_at: None,
            last_pong: now,
            next_ping: now,
            last_progress: now,
            legacy_snapshot_from: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Sets the phase; `Server::enter_phase` is its one caller, which keeps the metrics and
    /// the outbox in step with it.
    pub(super) fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
    }

    /// Whether the pong timeout runs: not while a snapshot is being written. A ping waits
    /// behind every byte queued before it (and none can go inside Typha's binary snapshot),
    /// so a client downloading a large snapshot slowly (thousands reconnecting at once) cannot
    /// answer in time, yet is alive; cut off, it would come back for another. Meanwhile the
    /// write timeout catches one that stopped reading. Typha, too, waits for the ACK that
    /// ends a binary snapshot only once the snapshot is written. Before the snapshot (the
    /// ACK of a decoder restart) and after it, the client owes an answer.
    pub fn answer_due(&self) -> bool {
        match self.phase {
            Phase::Handshake | Phase::Closing { .. } => false,
            Phase::Snapshot => self.out.hold_snapshot,
            Phase::Streaming => true,
        }
    }

    pub fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. })
    }

    /// A TLS connection still in its TLS handshake: nothing can be said to it in our protocol
    /// (not even a Goodbye) until the handshake completes.
    pub fn tls_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.conn.is_handshaking())
    }
}

impl Outbox {
    pub fn new(syncer: SyncerType, variant: WireVariant) -> Self {
        Outbox {
            syncer,
            variant,
            in_flight: None,
            control: VecDeque::new(),
            snapshot: None,
            next_seq: None,
            hold_snapshot: false,
            hold_ring: false,
            live_prefix: None,
        }
    }

    /// Lets the snapshot be written.
    pub fn release_snapshot(&mut self) {
        self.hold_snapshot = false;
    }

    /// Lets the ring be written, after the snapshot's live prefix.
    pub fn release_ring(&mut self) {
        self.hold_snapshot = false;
        self.hold_ring = false;
        self.control.extend(self.live_prefix.take());
    }

    /// Drops everything not yet started, keeping a frame already started, then queues `last`.
    pub fn stop_after_current(&mut self, last: Option<Bytes>) {
        self.snapshot = None;
        self.next_seq = None;
        self.control.clear();
        self.control.extend(last);
    }

    /// Starts writing `snap`, then the ring from the sequence after it.
    pub fn assign_snapshot(&mut self, snap: Arc<EncodedSnapshot>) {
        self.next_seq = Some(snap.seq + 1);
        self.live_prefix = snap.live_prefix.clone();
        self.snapshot = Some((snap, 0));
    }

    /// Fills `iov` with what is left to write, in order; returns the count and total bytes.
    pub fn gather<'a>(
        &'a self,
        ring: &'a Ring,
        iov: &mut [IoSlice<'a>; MAX_IOV],
    ) -> (usize, usize) {
        let mut n = 0;
        let mut total = 0;
        let mut push = |b: &'a [u8], n: &mut usize| -> bool {
            if *n == MAX_IOV {
                return false;
            }
            iov[*n] = IoSlice::new(b);
            *n += 1;
            total += b.len();
            true
        };
        if let Some(f) = &self.in_flight {
            push(&f.bytes[f.offset..], &mut n);
        }
        for c in &self.control {
            if !push(c, &mut n) {
                return (n, total);
            }
        }
        if self.hold_snapshot {
            return (n, total);
        }
        if let Some((snap, idx)) = &self.snapshot {
            for f in &snap.frames[*idx..] {
                if !push(f, &mut n) {
                    return (n, total);
                }
            }
        }
        if self.hold_ring {
            return (n, total);
        }
        if let Some(next) = self.next_seq {
            for (_, b) in ring.parts_from(next, self.syncer, self.variant) {
                if !push(b, &mut n) {
                    break;
                }
            }
        }
        (n, total)
    }

    /// Moves past `n` written bytes. Returns true when the snapshot's last frame completed.
    pub fn advance(&mut self, mut n: usize, ring: &Ring, metrics: &Metrics, t: WriteTime) -> bool {
        let mut snapshot_done = false;
        if let Some(f) = &mut self.in_flight {
            let rest = f.bytes.len() - f.offset;
            if n < rest {
                f.offset += n;
                return false;
            }
            n -= rest;
            snapshot_done |= complete(f.done, self.syncer, metrics, t);
            self.in_flight = None;
        }
        while n > 0 {
            let Some(front) = self.control.pop_front() else {
                break;
            };
            if n < front.len() {
                self.in_flight = Some(InFlight {
                    bytes: front,
                    offset: n,
                    done: Completion::None,
                });
                return snapshot_done;
            }
            n -= front.len();
        }
        if self.hold_snapshot {
            return snapshot_done;
        }
        if let Some((snap, idx)) = &mut self.snapshot {
            while n > 0 && *idx < snap.frames.len() {
                let frame = &snap.frames[*idx];
                *idx += 1;
                let last = *idx == snap.frames.len();
                if n < frame.len() {
                    self.in_flight = Some(InFlight {
                        bytes: frame.clone(),
                        offset: n,
                        done: if last {
                            Completion::SnapshotEnd
                        } else {
                            Completion::None
                        },
                    });
                    n = 0;
                    break;
                }
                n -= frame.len();
                snapshot_done |= last;
            }
            if *idx == snap.frames.len() {
                self.snapshot = None;
            }
        }
        if n == 0 || self.hold_ring {
            return snapshot_done;
        }
        if let Some(next) = self.next_seq {
            let mut next_seq = next;
            for (e, b) in ring.parts_from(next, self.syncer, self.variant) {
                if n == 0 {
                    break;
                }
                next_seq = e.batch.seq + 1;
                let done = Completion::Batch {
                    received_at: e.batch.received_at,
                    arrived: e.arrived,
                };
                if n < b.len() {
                    self.in_flight = Some(InFlight {
                        bytes: b.clone(),
                        offset: n,
                        done,
                    });
                    break;
                }
                n -= b.len();
                complete(done, self.syncer, metrics, t);
            }
            self.next_seq = Some(next_seq);
        }
        snapshot_done
    }

    /// Called when `gather` found nothing to write: the cursor may skip batches that had
    /// nothing for this syncer type, so it never points at data that could be evicted.
    pub fn caught_up(&mut self, ring: &Ring) {
        if self.hold_ring {
            return;
        }
        if let Some(n) = &mut self.next_seq {
            *n = (*n).max(ring.last_seq() + 1);
        }
    }
}

fn complete(done: Completion, syncer: SyncerType, metrics: &Metrics, t: WriteTime) -> bool {
    match done {
        Completion::None => false,
        Completion::SnapshotEnd => true,
        Completion::Batch {
            received_at,
            arrived,
        } => {
            metrics.frames_written.inc();
            let lag = t.unix_nanos.saturating_sub(received_at);
            metrics.fanout_latency_secs.observe(lag as f64 / 1e9);
            metrics.client_write_latency_secs[syncer.index()]
                .observe(t.at.saturating_duration_since(arrived).as_secs_f64());
            false
        }
    }
}
