//! One decode of a Felix-protocol binary snapshot shared by every client of a driver thread
//! that receives the same bytes.
//!
//! A current Felix asks for a binary snapshot: the server's `MsgDecoderRestart` names it, waits
//! for the ACK, then writes a complete snappy stream ending in a second `MsgDecoderRestart`,
//! and writes nothing more until the second ACK. Both typha-rs and Calico's Typha encode that
//! stream once per snapshot and send the same bytes to every client that joins at it, so in a
//! reconnect storm thousands of clients receive identical snapshots; decoding each of them per
//! client (snappy, CRC-32C, gob) made the harness, not the daemon, the bottleneck.
//!
//! A [`Recording`] is the bytes of one snapshot stream as some client received them, fed to a
//! decoder of its own as they arrive. A client in its snapshot window follows a recording: it
//! compares each byte it reads with the recording's byte at its position (a `memcmp`), and
//! while they are equal its decoder would be in exactly the recording's state, so it feeds its
//! own decoder nothing. A client that reads past the recording's end extends it (and its
//! decoder). When the client reaches the end the recording's decoder found (the closing
//! restart), it takes the summary (messages, keys) and acts on the restart as if it had
//! decoded it.
//!
//! Equality is checked on every byte, never assumed from a hash, and decoding is never
//! skipped for bytes that differ: a client whose bytes diverge switches to another recording
//! that holds the same prefix and its next byte, or forks a new one from the common prefix
//! (whose decoder then decodes this client's bytes). A recording whose decoder failed, or met
//! a message a binary snapshot does not hold, is not shared: its followers replay the prefix
//! they matched into their own decoder and go on alone, meeting the error themselves.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use typha::proto::typha::{
    DecoderRestart, ServerMessage, ServerStreamDecoder, DEFAULT_MAX_SERVER_MESSAGE,
};

/// Recordings a thread keeps: several snapshots (clients joining at different sequence numbers
/// under churn); followers hold on to theirs after it leaves the list.
const RECORDINGS_KEPT: usize = 8;
/// A snapshot stream longer than this is not recorded (its followers go on alone).
const MAX_RECORDING: usize = 512 << 20;

/// The `MsgDecoderRestart` text (Typha's and typha-rs') announcing a binary snapshot.
pub const SEND_BINARY_SNAPSHOT: &str = "send binary snapshot";

/// What the whole snapshot stream decoded to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// Messages, the closing restart included.
    pub messages: u64,
    /// Updates that carry a value (one per key in a snapshot).
    pub keys: u64,
    /// The closing `MsgDecoderRestart`.
    pub restart: DecoderRestart,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum RecState {
    /// The closing restart has not been decoded yet.
    Open,
    /// The stream ended at byte `end` (the recording holds exactly those bytes).
    Done {
        end: usize,
        summary: SnapshotSummary,
    },
    /// Its decoder failed, met a message a binary snapshot does not hold, or it grew too big:
    /// nobody may take a result from it.
    Unshareable,
}

/// The bytes of one snapshot stream and their decode so far.
pub struct Recording {
    /// The memo's count of bytes decoded.
    decoded: Arc<AtomicU64>,
    compression: String,
    bytes: Vec<u8>,
    decoder: ServerStreamDecoder,
    messages: u64,
    keys: u64,
    state: RecState,
}

impl Recording {
    fn new(compression: &str, decoded: Arc<AtomicU64>) -> Recording {
        let mut decoder = ServerStreamDecoder::new(DEFAULT_MAX_SERVER_MESSAGE);
        let state = match decoder.restart(compression) {
            Ok(()) => RecState::Open,
            Err(_) => RecState::Unshareable,
        };
        Recording {
            decoded,
            compression: compression.to_owned(),
            bytes: Vec::new(),
            decoder,
            messages: 0,
            keys: 0,
            state,
        }
    }

    /// Appends received bytes and decodes them; returns how many belong to the snapshot
    /// stream (all of them, unless its end was decoded in them).
    fn extend(&mut self, input: &[u8]) -> usize {
        if self.state != RecState::Open {
            return 0;
        }
        if self.bytes.len() + input.len() > MAX_RECORDING {
            self.state = RecState::Unshareable;
            return 0;
        }
        let before = self.bytes.len();
        self.bytes.extend_from_slice(input);
        self.decoder.feed(input);
        self.decoded.fetch_add(input.len() as u64, Relaxed);
        loop {
            match self.decoder.next_message() {
                Ok(None) => return input.len(),
                Ok(Some(ServerMessage::Kvs(kvs))) => {
                    self.messages += 1;
                    self.keys += kvs.iter().filter(|u| u.value.is_some()).count() as u64;
                }
                Ok(Some(ServerMessage::DecoderRestart(restart))) => {
                    self.messages += 1;
                    // The bytes the decoder has not unframed yet follow the closing chunk.
                    let end = self.bytes.len() - self.decoder.framed_buffered();
                    self.bytes.truncate(end);
                    self.state = RecState::Done {
                        end,
                        summary: SnapshotSummary {
                            messages: self.messages,
                            keys: self.keys,
                            restart,
                        },
                    };
                    return end - before;
                }
                Ok(Some(_)) | Err(_) => {
                    self.state = RecState::Unshareable;
                    return input.len();
                }
            }
        }
    }
}

/// How many leading bytes `a` and `b` share. Whole blocks are compared with `memcmp` first:
/// a follower checks every byte of a snapshot (gigabytes in a storm), and a byte-at-a-time
/// loop made this comparison most of the load generator's CPU.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    const BLOCK: usize = 512;
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + BLOCK <= n && a[i..i + BLOCK] == b[i..i + BLOCK] {
        i += BLOCK;
    }
    i + a[i..n]
        .iter()
        .zip(&b[i..n])
        .take_while(|(x, y)| x == y)
        .count()
}

fn lock(r: &Mutex<Recording>) -> MutexGuard<'_, Recording> {
    // A poisoned lock means a panic elsewhere in this thread, which ends the run anyway; the
    // data is still only bytes and counters.
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// The recordings of one driver thread.
#[derive(Default)]
pub struct SnapshotMemo {
    recordings: Mutex<Vec<Arc<Mutex<Recording>>>>,
    /// Bytes fed to the recordings' decoders, ever.
    decoded: Arc<AtomicU64>,
}

impl SnapshotMemo {
    pub fn new() -> Self {
        Self::default()
    }

    /// Recordings kept now.
    pub fn len(&self) -> usize {
        self.list().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Snapshot bytes decoded so far (each recorded byte once, a fork's prefix again).
    pub fn decoded_bytes(&self) -> u64 {
        self.decoded.load(Relaxed)
    }

    fn list(&self) -> MutexGuard<'_, Vec<Arc<Mutex<Recording>>>> {
        self.recordings.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keep(&self, r: Arc<Mutex<Recording>>) {
        let mut list = self.list();
        if list.len() >= RECORDINGS_KEPT {
            list.remove(0);
        }
        list.push(r);
    }

    /// A shareable recording of `compression` whose bytes agree with `prefix` (those the
    /// caller matched so far, its own recording's first `prefix.len()` bytes) followed by
    /// `next`, or a new one forked from `prefix`.
    fn find_or_fork(&self, compression: &str, prefix: &[u8], next: u8) -> Arc<Mutex<Recording>> {
        let p = prefix.len();
        for r in self.list().iter().rev() {
            let g = lock(r);
            if g.compression == compression
                && g.state != RecState::Unshareable
                && g.bytes.len() > p
                && g.bytes[p] == next
                && g.bytes[..p] == *prefix
            {
                drop(g);
                return r.clone();
            }
        }
        let mut fork = Recording::new(compression, self.decoded.clone());
        fork.extend(prefix);
        let fork = Arc::new(Mutex::new(fork));
        self.keep(fork.clone());
        fork
    }
}

/// What [`SnapshotFollower::feed`] says.
#[derive(Debug, PartialEq, Eq)]
pub enum Follow {
    /// All the input was the snapshot's; more is to come.
    More,
    /// The snapshot ended: its summary, and how many input bytes it took (the rest follow it).
    Done {
        used: usize,
        summary: SnapshotSummary,
    },
    /// The recording cannot be shared: the caller feeds `replay` (the bytes it matched so far,
    /// this input's included), then `input[used..]`, to its own decoder, and stops following.
    Alone { replay: Vec<u8>, used: usize },
}

/// A client in its snapshot window: the recording it follows and how far it matched it.
pub struct SnapshotFollower {
    memo: Arc<SnapshotMemo>,
    compression: String,
    rec: Option<Arc<Mutex<Recording>>>,
    pos: usize,
}

impl SnapshotFollower {
    /// For a client whose decoder was just restarted with `compression` for a binary snapshot,
    /// with nothing received after that restart yet.
    pub fn new(memo: Arc<SnapshotMemo>, compression: &str) -> Self {
        SnapshotFollower {
            memo,
            compression: compression.to_owned(),
            rec: None,
            pos: 0,
        }
    }

    /// Takes the next bytes the client received.
    pub fn feed(&mut self, input: &[u8]) -> Follow {
        let mut i = 0;
        while i < input.len() {
            let rec = match &self.rec {
                Some(r) => r.clone(),
                None => {
                    let r = self.memo.find_or_fork(&self.compression, &[], input[i]);
                    self.rec = Some(r.clone());
                    r
                }
            };
            let mut g = lock(&rec);
            if g.state == RecState::Unshareable {
                return Follow::Alone {
                    replay: g.bytes[..self.pos].to_vec(),
                    used: i,
                };
            }
            let have = g.bytes.len() - self.pos;
            let n = have.min(input.len() - i);
            let same = common_prefix(&g.bytes[self.pos..self.pos + n], &input[i..i + n]);
            self.pos += same;
            i += same;
            if let RecState::Done { end, summary } = &g.state {
                if self.pos == *end {
                    return Follow::Done {
                        used: i,
                        summary: summary.clone(),
                    };
                }
            }
            if same < n {
                // Diverged: the client's bytes are not this recording's.
                let prefix = g.bytes[..self.pos].to_vec();
                drop(g);
                self.rec = Some(self.memo.find_or_fork(&self.compression, &prefix, input[i]));
                continue;
            }
            if i < input.len() {
                // At the recording's end, which is still open: extend it.
                debug_assert_eq!(self.pos, g.bytes.len());
                let used = g.extend(&input[i..]);
                if g.state == RecState::Unshareable {
                    return Follow::Alone {
                        replay: g.bytes[..self.pos].to_vec(),
                        used: i,
                    };
                }
                self.pos += used;
                i += used;
                if let RecState::Done { summary, .. } = &g.state {
                    return Follow::Done {
                        used: i,
                        summary: summary.clone(),
                    };
                }
            }
        }
        Follow::More
    }
}

#[cfg(test)]
mod tests {
    use super::common_prefix;

    #[test]
    fn common_prefix_finds_the_first_difference_at_any_position_and_length() {
        let a: Vec<u8> = (0..3000u32).map(|i| (i * 31 % 251) as u8).collect();
        for len in [0, 1, 511, 512, 513, 1024, 3000] {
            assert_eq!(common_prefix(&a[..len], &a[..len]), len);
            // The shorter input bounds the answer.
            assert_eq!(common_prefix(&a[..len], &a), len);
            assert_eq!(common_prefix(&a, &a[..len]), len);
        }
        for at in [0, 1, 255, 511, 512, 513, 1500, 2999] {
            let mut b = a.clone();
            b[at] ^= 0x55;
            assert_eq!(common_prefix(&a, &b), at, "difference at {at}");
            assert_eq!(common_prefix(&b[..at + 1], &a), at);
        }
    }
}
