//! Codec comparison for `docs/benchmarks-codecs-and-micro.md` ("Codec choice").
//!
//! Builds Felix snapshots of the embedded sim cluster at three sizes, encodes each with every
//! codec exactly as the daemon does (`encode_snapshot`, 256 KiB chunks), and measures the
//! client side too: splitting the byte stream into frames and decoding (and decompressing)
//! every one. Then the same for one typical churn batch part of 100 updates, compressed alone.
//!
//! Run with `cargo run --release --example codecs`; prints a Markdown table.

use std::hint::black_box;
use std::time::Instant;
use typha::datastore::sim::{churn_batch, SimCluster, SimConfig};
use typha::model::{SyncStatus, SyncerType, Update};
use typha::proto::encode::{encode_batch_part, encode_snapshot, EncodeOptions};
use typha::proto::{decode_server_message, Codec, FrameDecoder, MAX_SERVER_FRAME, ZSTD_LEVEL};

/// Endpoint counts of the snapshots.
const SIZES: [usize; 3] = [3_000, 10_000, 50_000];
/// Pods per node, as in the sim's default (3,000 endpoints on 100 nodes).
const PODS_PER_NODE: usize = 30;
const CODECS: [Option<Codec>; 4] = [
    None,
    Some(Codec::Zstd),
    Some(Codec::Lz4),
    Some(Codec::Snappy),
];
/// A client reads the socket in pieces of this size (the blocking client's buffer).
const READ_BYTES: usize = 64 * 1024;
const SNAPSHOT_RUNS: usize = 5;
const BATCH_RUNS: usize = 201;
const BATCH_UPDATES: usize = 100;

fn codec_name(c: Option<Codec>) -> String {
    match c {
        None => "none".into(),
        Some(Codec::Zstd) => format!("zstd (level {ZSTD_LEVEL})"),
        Some(Codec::Lz4) => "lz4".into(),
        Some(Codec::Snappy) => "snappy".into(),
    }
}

/// Median wall time of `runs` calls, in milliseconds.
fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[runs / 2]
}

/// What a client does with the stream: split it into frames as the reads deliver it, and
/// decode (decompressing where needed) every frame. Returns the number of messages.
fn decode_stream(stream: &[u8]) -> usize {
    let mut dec = FrameDecoder::new(MAX_SERVER_FRAME);
    let mut messages = 0;
    for read in stream.chunks(READ_BYTES) {
        dec.feed(read, |payload| {
            let msg = decode_server_message(payload, MAX_SERVER_FRAME)?;
            black_box(msg);
            messages += 1;
            Ok::<(), typha::proto::ProtoError>(())
        })
        .expect("the encoder's own output decodes");
    }
    messages
}

struct Row {
    what: String,
    codec: Option<Codec>,
    raw: u64,
    wire: u64,
    encode_ms: f64,
    decode_ms: f64,
}

fn print_table(rows: &[Row], decimals: usize) {
    println!("| keys | codec | raw bytes | wire bytes | ratio | encode ms | decode ms |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.d$} | {:.d$} |",
            r.what,
            codec_name(r.codec),
            r.raw,
            r.wire,
            r.raw as f64 / r.wire as f64,
            r.encode_ms,
            r.decode_ms,
            d = decimals,
        );
    }
}

fn main() {
    let opts = EncodeOptions::default();
    let chunk = opts.snapshot_chunk_bytes;

    println!(
        "Felix snapshots of the sim cluster ({PODS_PER_NODE} endpoints per node, seed {}), \
         {} KiB chunks; median of {SNAPSHOT_RUNS} runs; decode = frame split of {} KiB reads \
         + decode_server_message of every frame.\n",
        SimConfig::default().seed,
        chunk / 1024,
        READ_BYTES / 1024,
    );
    let mut rows = Vec::new();
    for endpoints in SIZES {
        let sim = SimCluster::new(SimConfig::scaled(endpoints));
        let state = SimCluster::state_map(&sim);
        drop(sim);
        for codec in CODECS {
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
            let snap = encode();
            let encode_ms = median_ms(SNAPSHOT_RUNS, || {
                black_box(encode());
            });
            let stream: Vec<u8> = snap.frames.iter().flat_map(|f| f.iter().copied()).collect();
            assert_eq!(stream.len() as u64, snap.wire_bytes);
            assert_eq!(decode_stream(&stream), snap.frames.len());
            let decode_ms = median_ms(SNAPSHOT_RUNS, || {
                black_box(decode_stream(&stream));
            });
            rows.push(Row {
                what: format!("{} ({endpoints} endpoints)", snap.key_count),
                codec,
                raw: snap.raw_bytes,
                wire: snap.wire_bytes,
                encode_ms,
                decode_ms,
            });
        }
    }
    print_table(&rows, 1);

    let updates = churn_batch(SimConfig::default(), BATCH_UPDATES);
    let refs: Vec<&Update> = updates.iter().collect();
    let weps = updates
        .iter()
        .filter(|u| u.key.contains("/workload/"))
        .count();
    println!(
        "\nOne Felix batch part of {BATCH_UPDATES} churn updates ({weps} workload endpoints) \
         from the default sim cluster, compressed alone; median of {BATCH_RUNS} runs; encode = \
         encode_batch_part (bincode + compression).\n"
    );
    let mut rows = Vec::new();
    for codec in CODECS {
        let opts = EncodeOptions { codec, ..opts };
        let encode = || encode_batch_part(1, 1, 0, &refs, None, &opts).unwrap();
        let part = encode();
        let wire = part.compressed().unwrap_or(part.plain()).clone();
        assert_eq!(decode_stream(&wire), 1);
        let encode_ms = median_ms(BATCH_RUNS, || {
            black_box(encode());
        });
        let decode_ms = median_ms(BATCH_RUNS, || {
            black_box(decode_stream(&wire));
        });
        rows.push(Row {
            what: format!("{BATCH_UPDATES} (batch)"),
            codec,
            raw: part.plain().len() as u64,
            wire: wire.len() as u64,
            encode_ms,
            decode_ms,
        });
    }
    print_table(&rows, 3);
}
