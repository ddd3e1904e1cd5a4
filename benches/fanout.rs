//! Criterion micro-benchmarks of the three hot paths, reported in
//! `docs/benchmarks-codecs-and-micro.md`:
//!
//! * `encode_batch`: one syncer type's part of a 100-update churn batch, plain and with zstd;
//! * `fanout/N`: the reactor's per-delivery CPU for N caught-up clients and one new batch
//!   (gather the iovecs, "write" them to `std::io::sink`, advance), without the syscall;
//!   `fanout_copy/N` does the same but copies the bytes into a reused buffer, standing in for
//!   the copy the kernel makes; `fanout_gather/N` only gathers and "writes" (no `advance`),
//!   to split the cost;
//! * `snapshot`: a Felix snapshot of the sim cluster at 10,000 and 50,000 endpoints, encoded
//!   with every codec.
//!
//! Sample counts and times are kept small so `cargo bench --bench fanout` stays near a minute.

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use std::hint::black_box;
use std::io::{IoSlice, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};
use typha::datastore::sim::{churn_batch, SimCluster, SimConfig};
use typha::datastore::DeltaBatch;
use typha::metrics::Metrics;
use typha::model::{StateMap, SyncStatus, SyncerType, Update};
use typha::proto::encode::{encode_batch_part, encode_snapshot, EncodeOptions, EncodedPart};
use typha::proto::Codec;
use typha::server::{Outbox, Ring, WriteTime, MAX_IOV};

fn encode_batch(c: &mut Criterion) {
    let updates = churn_batch(SimConfig::default(), 100);
    let refs: Vec<&Update> = updates.iter().collect();
    let mut g = c.benchmark_group("encode_batch");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, codec) in [("plain", None), ("zstd", Some(Codec::Zstd))] {
        let opts = EncodeOptions {
            codec,
            ..EncodeOptions::default()
        };
        let raw = encode_batch_part(1, 1, 0, &refs, None, &opts).plain.len();
        g.throughput(Throughput::Bytes(raw as u64));
        g.bench_function(name, |b| {
            b.iter(|| encode_batch_part(1, 1, 0, black_box(&refs), None, &opts))
        });
    }
    g.finish();
}

/// A ring holding one batch whose Felix part is a plain ~8 KiB `Updates` frame.
fn one_batch_ring() -> (Ring, u64) {
    let opts = EncodeOptions {
        codec: None,
        ..EncodeOptions::default()
    };
    let part = |u: &[Update]| -> EncodedPart {
        let refs: Vec<&Update> = u.iter().collect();
        encode_batch_part(1, 1, 0, &refs, None, &opts)
    };
    // The shortest prefix of a churn batch whose part reaches ~8 KiB.
    let all = churn_batch(SimConfig::default(), 400);
    let n = (1..=all.len())
        .find(|&k| part(&all[..k]).plain.len() >= 8 * 1024)
        .unwrap_or(all.len());
    let updates = all[..n].to_vec();
    let mut parts: [Option<EncodedPart>; SyncerType::COUNT] = Default::default();
    parts[SyncerType::Felix.index()] = Some(part(&updates));
    let batch = DeltaBatch {
        seq: 1,
        received_at: typha::model::now_unix_nanos(),
        status: SyncStatus::InSync,
        update_count: updates.len(),
        parts,
    };
    let mut ring = Ring::new(1024, usize::MAX);
    ring.push(Arc::new(batch), Instant::now());
    (ring, 1)
}

fn fanout(c: &mut Criterion) {
    let (ring, seq) = one_batch_ring();
    let metrics = Metrics::new();
    let frame_len = ring
        .get(seq)
        .and_then(|e| e.batch.part(SyncerType::Felix))
        .map_or(0, |p| p.plain.len());
    let mut copy_buf: Vec<u8> = Vec::with_capacity(frame_len);
    for (group, copy, advance) in [
        ("fanout", false, true),
        ("fanout_copy", true, true),
        ("fanout_gather", false, false),
    ] {
        let mut g = c.benchmark_group(group);
        g.sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        let sizes: &[usize] = if group == "fanout" {
            &[100, 1000, 10_000]
        } else {
            &[1000]
        };
        for &n in sizes {
            let mut outs: Vec<Outbox> = (0..n)
                .map(|_| {
                    let mut o = Outbox::new(SyncerType::Felix, false);
                    o.next_seq = Some(seq);
                    o
                })
                .collect();
            g.throughput(Throughput::Elements(n as u64));
            g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
                b.iter(|| {
                    let mut written = 0;
                    for out in outs.iter_mut() {
                        // Every client is caught up, its cursor at the new batch.
                        out.next_seq = Some(seq);
                        let mut iov = [IoSlice::new(&[]); MAX_IOV];
                        let (k, _) = out.gather(&ring, &mut iov);
                        let w = if copy {
                            copy_buf.clear();
                            for s in &iov[..k] {
                                copy_buf.extend_from_slice(s);
                            }
                            black_box(&copy_buf);
                            copy_buf.len()
                        } else {
                            std::io::sink().write_vectored(&iov[..k]).unwrap_or(0)
                        };
                        if advance {
                            // As the reactor does: one time reading per write.
                            let t = WriteTime::now();
                            out.advance(w, &ring, &metrics, t);
                        }
                        written += w;
                    }
                    assert_eq!(written, n * frame_len);
                    written
                })
            });
        }
        g.finish();
    }
}

fn snapshot(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let chunk = EncodeOptions::default().snapshot_chunk_bytes;
    for endpoints in [10_000usize, 50_000] {
        let state: StateMap = SimCluster::new(SimConfig::scaled(endpoints)).state_map();
        for (name, codec) in [
            ("none", None),
            ("zstd", Some(Codec::Zstd)),
            ("lz4", Some(Codec::Lz4)),
            ("snappy", Some(Codec::Snappy)),
        ] {
            let encode = || {
                encode_snapshot(
                    &state,
                    1,
                    SyncStatus::InSync,
                    SyncerType::Felix,
                    codec,
                    chunk,
                )
            };
            g.throughput(Throughput::Bytes(encode().raw_bytes));
            g.bench_function(BenchmarkId::new(endpoints.to_string(), name), |b| {
                b.iter(encode)
            });
        }
    }
    g.finish();
}

criterion_group!(benches, encode_batch, fanout, snapshot);
criterion_main!(benches);
