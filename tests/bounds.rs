//! Bounds under backpressure (docs/operations.md, "Backpressure and bounds"): a reactor that
//! stops taking batches during a large initial list must not make the batcher build a frame no
//! client accepts, nor make it encode the same pending batch again and again.

use crossbeam_channel::TrySendError;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use typha::client::{SyncState, Tracking};
use typha::datastore::{
    BatchLimits, BatchMessage, BatchSink, Batcher, EncodeWork, FlushOutcome, DEFAULT_BATCH_BYTES,
};
use typha::metrics::Metrics;
use typha::model::{Digest, KvUpdate, SyncStatus, SyncerType};
use typha::proto::encode::{EncodeOptions, WireVariant};
use typha::proto::{
    decode_server_message, Codec, FrameDecoder, ServerHello, ServerMessage, MAX_SERVER_FRAME,
    PROTOCOL_VERSION,
};
use typha::status::StatusBoard;

/// A reactor that takes one batch, then stalls until the test lets it take another.
#[derive(Clone, Default)]
struct StallingReactor(Rc<RefCell<ReactorState>>);

#[derive(Default)]
struct ReactorState {
    stalled: bool,
    got: Vec<BatchMessage>,
}

impl BatchSink for StallingReactor {
    fn try_send(&mut self, msg: BatchMessage) -> Result<(), TrySendError<BatchMessage>> {
        let mut s = self.0.borrow_mut();
        if s.stalled {
            return Err(TrySendError::Full(msg));
        }
        s.got.push(msg);
        s.stalled = true;
        Ok(())
    }

    fn has_room(&self) -> bool {
        !self.0.borrow().stalled
    }
}

const KEYS: usize = 100_000;
const VALUE_BYTES: usize = 700;
/// Keys per driver event, as the sim and Calico's watchersyncer chunk a list.
const CHUNK: usize = 1000;

fn list_chunk(from: usize) -> Vec<KvUpdate> {
    (from..(from + CHUNK).min(KEYS))
        .map(|i| {
            let mut v = format!("{{\"endpoint\":{i},\"pad\":\"").into_bytes();
            v.resize(VALUE_BYTES - 2, b'a' + (i % 26) as u8);
            v.extend_from_slice(b"\"}");
            KvUpdate::set(
                format!(
                    "/calico/v1/host/node-{}/workload/k8s/ns%2fpod-{i}/endpoint/eth0",
                    i % 500
                ),
                v,
                format!("{i}"),
            )
        })
        .collect()
}

#[test]
fn a_stalled_reactor_during_a_large_initial_list_yields_only_frames_clients_accept() {
    // 70 MB of values: merged into one batch, as the batcher used to while the reactor was
    // stalled, they made a single `Updates` frame above MAX_SERVER_FRAME.
    const { assert!(KEYS * VALUE_BYTES > MAX_SERVER_FRAME) };
    let reactor = StallingReactor::default();
    let board = Arc::new(StatusBoard::new());
    let mut b = Batcher::new(
        BatchLimits::default(),
        EncodeOptions::default(),
        reactor.clone(),
        Arc::new(Metrics::new()),
        board.clone(),
    );
    b.set_status(SyncStatus::ResyncInProgress);
    let mut held = 0;
    let mut attempts = 0;
    // The datastore thread's loop, with the reactor stalled after every batch it takes: the
    // driver is read only while the batcher accepts; while it does not, the reactor is let to
    // take one more batch (in the daemon, the reactor drains the channel on its own).
    let mut from = 0;
    loop {
        if !b.accepting() {
            held += 1;
            reactor.0.borrow_mut().stalled = false;
            while !b.accepting() {
                assert!(matches!(b.flush(), FlushOutcome::Sent));
                reactor.0.borrow_mut().stalled = false;
            }
            reactor.0.borrow_mut().stalled = true;
            continue;
        }
        if from >= KEYS {
            break;
        }
        b.apply_event(list_chunk(from));
        from += CHUNK;
        assert!(
            b.pending_bytes() <= DEFAULT_BATCH_BYTES,
            "merged {} bytes",
            b.pending_bytes()
        );
        if b.due(Instant::now()) {
            attempts += 1;
            let _ = b.flush();
        }
    }
    b.set_status(SyncStatus::InSync);
    reactor.0.borrow_mut().stalled = false;
    assert!(matches!(b.flush(), FlushOutcome::Sent));
    assert!(held > 0, "the batcher never held the driver back");
    assert!(attempts > 50, "the reactor was never found full");

    let got = std::mem::take(&mut reactor.0.borrow_mut().got);
    assert!(got.len() >= 9, "{} batches for 70 MB", got.len());
    // Encoding was done once per sent part: work equals what was sent, whatever the retries.
    let sent = EncodeWork {
        parts: got
            .iter()
            .map(|m| m.batch.parts.iter().flatten().count() as u64)
            .sum(),
        bytes: got.iter().map(|m| m.batch.encoded_bytes() as u64).sum(),
    };
    assert_eq!(b.encode_work(), sent);

    // A Felix client that joined at seq 0 applies every frame, compressed or not.
    for compressed in [false, true] {
        let mut client = SyncState::new(Tracking::Full);
        for m in [
            ServerMessage::ServerHello(ServerHello {
                protocol_version: PROTOCOL_VERSION,
                server_id: "bounds".into(),
                connection_id: 1,
                syncer_type: "felix".into(),
                compression: None,
            }),
            ServerMessage::SnapshotEnd {
                seq: 0,
                status: SyncStatus::WaitingForDatastore,
                key_count: 0,
                digest: Digest::default().to_bytes(),
            },
        ] {
            client.apply(m, 0).unwrap();
        }
        let mut largest = 0;
        for m in &got {
            let Some(part) = m.batch.part(SyncerType::Felix) else {
                continue;
            };
            let mut frames = FrameDecoder::new(MAX_SERVER_FRAME);
            frames
                .feed(
                    part.frames(WireVariant::native(compressed.then_some(Codec::Zstd)))
                        .unwrap(),
                    |payload| {
                        largest = largest.max(payload.len());
                        let msg = decode_server_message(payload, MAX_SERVER_FRAME)
                            .map_err(|e| e.to_string())?;
                        client.apply(msg, 0).map(|_| ()).map_err(|e| e.to_string())
                    },
                )
                .unwrap();
        }
        assert!(largest <= DEFAULT_BATCH_BYTES + 64, "{largest}");
        assert_eq!(client.len(), KEYS);
        let want = board.digests(None).unwrap();
        assert_eq!(client.seq(), want.seq);
        assert_eq!(
            client.digest(),
            want.views[SyncerType::Felix.index()].digest
        );
    }
}
