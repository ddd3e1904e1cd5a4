//! Client-side CPU of receiving one snapshot per [`Tracking`] mode, for `docs/benchmarks.md`
//! ("Load test"): a 50,000-endpoint Felix snapshot of the sim cluster, zstd-compressed as the
//! daemon sends it, fed to a `ClientSession` in 64 KiB reads.
//!
//! Run with `cargo run --release --example client_tracking`.

use std::time::Instant;
use typha::client::{ClientOptions, ClientSession, Tracking};
use typha::datastore::sim::{SimCluster, SimConfig};
use typha::model::{SyncStatus, SyncerType};
use typha::proto::encode::encode_snapshot;
use typha::proto::{encode_frame, Codec, ServerHello, ServerMessage, PROTOCOL_VERSION};

const ENDPOINTS: usize = 50_000;
const RUNS: usize = 7;
const READ_BYTES: usize = 64 * 1024;

fn main() {
    let sim = SimCluster::new(SimConfig::scaled(ENDPOINTS));
    let state = SimCluster::state_map(&sim);
    drop(sim);
    println!("| codec | tracking | ms per snapshot |");
    println!("|---|---|---:|");
    for codec in [None, Some(Codec::Zstd)] {
        measure(&state, codec);
    }
}

fn measure(state: &typha::model::StateMap, codec: Option<Codec>) {
    let snap = encode_snapshot(
        state,
        1,
        SyncStatus::InSync,
        SyncerType::Felix,
        codec,
        256 * 1024,
    );
    let mut stream = encode_frame(&ServerMessage::ServerHello(ServerHello {
        protocol_version: PROTOCOL_VERSION,
        server_id: "bench".into(),
        connection_id: 1,
        syncer_type: "felix".into(),
        compression: codec,
    }))
    .to_vec();
    for f in &snap.frames {
        stream.extend_from_slice(f);
    }
    let cname = codec.map_or("none", Codec::as_str);
    eprintln!(
        "Felix snapshot of {ENDPOINTS} endpoints: {} keys, {} bytes on the wire ({cname}); median of {RUNS} runs",
        snap.key_count,
        stream.len()
    );
    for (name, tracking) in [
        ("Full (map kept)", Tracking::Full),
        ("SeqOnly (entries decoded, dropped)", Tracking::SeqOnly),
        (
            "DigestOnly (zero-copy, digest checked)",
            Tracking::DigestOnly,
        ),
    ] {
        let mut t: Vec<f64> = (0..RUNS)
            .map(|_| {
                let mut s = ClientSession::new(ClientOptions {
                    tracking,
                    accept_compression: codec.into_iter().collect(),
                    ..Default::default()
                });
                let start = Instant::now();
                for read in stream.chunks(READ_BYTES) {
                    s.feed(read).expect("the snapshot decodes");
                }
                let ms = start.elapsed().as_secs_f64() * 1e3;
                assert!(s.state().snapshot_complete());
                ms
            })
            .collect();
        t.sort_by(f64::total_cmp);
        println!("| {cname} | {name} | {:.1} |", t[RUNS / 2]);
    }
}
