//! Invariants of the snapshot cache and the ring (docs/snapshot-cache.md), checked on the real
//! batcher, encoder, ring and connection output path, with the real client verifying.
//!
//! Clients join at random points of a random churn: each gets the snapshot as of the sequence
//! it joins at, then the ring from the next sequence, written through `Outbox` in random short
//! writes. Every client must end with exactly the batcher's view for its syncer type, and the
//! client itself rejects any gap, duplicate or snapshot digest mismatch on the way.

use proptest::prelude::*;
use std::cell::RefCell;
use std::io::IoSlice;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use typha::client::{ClientOptions, ClientSession};
use typha::datastore::{BatchLimits, BatchMessage, BatchSink, Batcher};
use typha::metrics::Metrics;
use typha::model::{KvUpdate, SyncStatus, SyncerType};
use typha::proto::encode::{encode_snapshot, EncodeOptions, WireVariant};
use typha::proto::{encode_frame, Codec, ServerHello, ServerMessage, PROTOCOL_VERSION};
use typha::server::{Outbox, Ring, WriteTime, MAX_IOV};
use typha::status::StatusBoard;

#[derive(Clone, Default)]
struct Collect(Rc<RefCell<Vec<BatchMessage>>>);

impl BatchSink for Collect {
    fn try_send(
        &mut self,
        msg: BatchMessage,
    ) -> Result<(), crossbeam_channel::TrySendError<BatchMessage>> {
        self.0.borrow_mut().push(msg);
        Ok(())
    }
}

/// A deterministic generator so a failing case replays from its seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn key(rng: &mut Rng) -> String {
    let i = rng.below(12);
    match rng.below(4) {
        0 => format!(
            "/calico/v1/host/n{i}/workload/k8s/ns%2fp{}/endpoint/eth0",
            rng.below(5)
        ),
        1 => format!("/calico/resources/v3/projectcalico.org/nodes/n{i}"),
        2 => format!("/calico/ipam/v2/host/n{i}/ipv4/block/10.0.{i}.0-26"),
        _ => format!("/calico/v1/ipam/v4/pool/10.{i}.0.0-16"),
    }
}

struct TestClient {
    joined_at: u64,
    out: Outbox,
    session: ClientSession,
    syncer: SyncerType,
}

impl TestClient {
    /// One "write": the kernel takes at most `limit` bytes of what `gather` offers.
    fn write_some(&mut self, ring: &Ring, limit: usize, metrics: &Metrics) -> usize {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let (n, _) = self.out.gather(ring, &mut iov);
        let mut taken = Vec::new();
        for s in &iov[..n] {
            let room = limit - taken.len();
            if room == 0 {
                break;
            }
            taken.extend_from_slice(&s[..s.len().min(room)]);
        }
        if taken.is_empty() {
            self.out.caught_up(ring);
            return 0;
        }
        self.out
            .advance(taken.len(), ring, metrics, WriteTime::now());
        if let Err(e) = self.session.feed(&taken) {
            panic!("client ({}) rejected the stream: {e}", self.syncer);
        }
        while self.session.poll_event().is_some() {}
        taken.len()
    }
}

fn run_case(seed: u64, steps: usize, codec: Option<Codec>, max_updates: usize) {
    let mut rng = Rng(seed);
    let metrics = Arc::new(Metrics::new());
    let board = Arc::new(StatusBoard::new());
    let sink = Collect::default();
    let encode = EncodeOptions {
        codec,
        compress_min_bytes: 64,
        snapshot_chunk_bytes: 512,
    };
    let mut batcher = Batcher::new(
        BatchLimits {
            max_updates,
            max_age: Duration::from_secs(3600),
            ..BatchLimits::default()
        },
        encode,
        sink.clone(),
        metrics.clone(),
        board.clone(),
    );
    let mut ring = Ring::new(1 << 20, usize::MAX);
    let mut state = typha::model::StateMap::new();
    let mut status = SyncStatus::WaitingForDatastore;
    let mut clients: Vec<TestClient> = Vec::new();
    let mut revision = 0u64;

    for step in 0..steps {
        match rng.below(100) {
            0..=59 => {
                revision += 1;
                let k = key(&mut rng);
                let u = if rng.below(5) == 0 {
                    KvUpdate::delete(k, revision.to_string())
                } else {
                    // Few distinct values, so no-op rewrites happen often.
                    let v = format!("{{\"v\":{}}}", rng.below(3));
                    KvUpdate::set(k, v.into_bytes(), revision.to_string())
                };
                batcher.apply(u);
                if batcher.due(Instant::now()) {
                    batcher.flush();
                }
            }
            60..=64 => {
                batcher.flush();
            }
            65..=66 => {
                batcher.set_status(if step % 2 == 0 {
                    SyncStatus::InSync
                } else {
                    SyncStatus::ResyncInProgress
                });
                batcher.flush();
            }
            67..=72 => {
                // A client joins at the ring's newest sequence, from the map as of it.
                let syncer = [
                    SyncerType::Felix,
                    SyncerType::Bgp,
                    SyncerType::TunnelIpAllocation,
                ][rng.below(3) as usize];
                let compressed = codec.is_some() && rng.below(2) == 0;
                let snap = encode_snapshot(
                    &state,
                    ring.last_seq(),
                    status,
                    syncer,
                    if compressed { codec } else { None },
                    512,
                );
                let mut out = Outbox::new(
                    syncer,
                    WireVariant::native(if compressed { codec } else { None }),
                );
                out.control
                    .push_back(encode_frame(&ServerMessage::ServerHello(ServerHello {
                        protocol_version: PROTOCOL_VERSION,
                        server_id: "test".into(),
                        connection_id: clients.len() as u64,
                        syncer_type: syncer.as_str().into(),
                        compression: if compressed { codec } else { None },
                    })));
                out.assign_snapshot(Arc::new(snap));
                let mut session = ClientSession::new(ClientOptions {
                    syncer_type: syncer,
                    ..ClientOptions::default()
                });
                session.discard_output();
                clients.push(TestClient {
                    joined_at: ring.last_seq(),
                    out,
                    session,
                    syncer,
                });
            }
            _ => {
                if !clients.is_empty() {
                    let i = rng.below(clients.len() as u64) as usize;
                    let limit = 1 + rng.below(700) as usize;
                    clients[i].write_some(&ring, limit, &metrics);
                }
            }
        }
        // The reactor side: take what the batcher sent, as the reactor's drain does.
        for msg in sink.0.borrow_mut().drain(..) {
            status = msg.batch.status;
            ring.push(msg.batch, Instant::now());
            state = msg.state;
        }
    }
    batcher.flush();
    for msg in sink.0.borrow_mut().drain(..) {
        ring.push(msg.batch, Instant::now());
    }
    let final_state = batcher.state().clone();
    for c in &mut clients {
        while c.write_some(&ring, 4096, &metrics) > 0 {}
        let st = c.session.state();
        assert!(st.snapshot_complete(), "client never finished its snapshot");
        // Its sequence is the newest one that carried updates for its type (or its snapshot's).
        let last_with_updates = (c.joined_at + 1..=ring.last_seq())
            .filter(|s| {
                ring.get(*s)
                    .and_then(|e| e.batch.part(c.syncer))
                    .is_some_and(|p| p.update_count > 0)
            })
            .max()
            .unwrap_or(c.joined_at);
        assert_eq!(
            st.seq(),
            last_with_updates,
            "client did not reach the newest batch"
        );
        let expect: Vec<(String, Vec<u8>)> = final_state
            .iter()
            .filter(|(k, _)| c.syncer.wants(k))
            .map(|(k, e)| (k.to_string(), e.value.to_vec()))
            .collect();
        let mut got: Vec<(String, Vec<u8>)> = st
            .iter()
            .map(|(k, e)| (k.clone(), e.value.clone()))
            .collect();
        got.sort();
        assert_eq!(
            got, expect,
            "{} client map differs from the server's view",
            c.syncer
        );
        let rec = board.digests(None).expect("digest record");
        assert_eq!(st.digest(), rec.views[c.syncer.index()].digest);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn clients_joining_anywhere_converge(
        seed in any::<u64>(),
        steps in 100usize..800,
        codec in prop_oneof![Just(None), Just(Some(Codec::Zstd)), Just(Some(Codec::Lz4)), Just(Some(Codec::Snappy))],
        max_updates in 1usize..20,
    ) {
        run_case(seed, steps, codec, max_updates);
    }
}

#[test]
fn long_churn_with_many_joiners() {
    for seed in 0..4 {
        run_case(seed, 5000, Some(Codec::Zstd), 7);
    }
}
