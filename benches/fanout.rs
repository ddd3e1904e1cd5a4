//! Criterion micro-benchmarks of the three hot paths, reported in
//! `docs/benchmarks-codecs-and-micro.md`:
//!
//! * `encode_batch`: one syncer type's part of a 100-update churn batch, plain and with zstd;
//! * `fanout/N`: the reactor's per-delivery CPU for N caught-up clients and one new batch
//!   (gather the iovecs, "write" them to `std::io::sink`, advance), without the syscall;
//!   `fanout_copy/N` does the same but copies the bytes into a reused buffer, standing in for
//!   the copy the kernel makes; `fanout_gather/N` only gathers and "writes" (no `advance`),
//!   to split the cost;
//! * `fanout_tls/{plain,tls}/N`: the same delivery for N clients, plain beside TLS: each TLS
//!   client's `rustls::ServerConnection` (handshake done in memory, with client certificates as
//!   in production) takes the shared plaintext frame, encrypts it, and its records are "written"
//!   to `std::io::sink`; the difference is the TLS cost per delivery;
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
use typha::batch::DeltaBatch;
use typha::client::tls::{ClientTls, ClientTlsOptions};
use typha::datastore::sim::{churn_batch, SimCluster, SimConfig};
use typha::metrics::Metrics;
use typha::model::{StateMap, SyncStatus, SyncerType, Update};
use typha::proto::encode::{
    encode_batch_part, encode_snapshot, EncodeOptions, EncodedPart, WireVariant,
};
use typha::proto::Codec;
use typha::server::{Outbox, Ring, ServerTls, TlsSession, TlsSettings, WriteTime, MAX_IOV};

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
        let raw = encode_batch_part(1, 1, 0, &refs, None, &opts)
            .unwrap()
            .plain()
            .len();
        g.throughput(Throughput::Bytes(raw as u64));
        g.bench_function(name, |b| {
            b.iter(|| encode_batch_part(1, 1, 0, black_box(&refs), None, &opts).unwrap())
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
        encode_batch_part(1, 1, 0, &refs, None, &opts).unwrap()
    };
    // The shortest prefix of a churn batch whose part reaches ~8 KiB.
    let all = churn_batch(SimConfig::default(), 400);
    let n = (1..=all.len())
        .find(|&k| part(&all[..k]).plain().len() >= 8 * 1024)
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
        .map_or(0, |p| p.plain().len());
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
                    let mut o = Outbox::new(SyncerType::Felix, WireVariant::NativePlain);
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

/// A server session and a client connection with their handshake done in memory, using the
/// server's real TLS setup (`ServerTls`) and the client library's (`ClientTls`).
fn tls_pairs(n: usize) -> Vec<(TlsSession, rustls::ClientConnection)> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let dir = std::env::temp_dir().join(format!("typha-rs-bench-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "bench CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let leaf = |cn: &str, eku: ExtendedKeyUsagePurpose| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        let key = KeyPair::generate().unwrap();
        (p.signed_by(&key, &ca).unwrap().pem(), key.serialize_pem())
    };
    let ca_file = write("ca.pem", &ca.pem());
    let (cert, key) = leaf("typha", ExtendedKeyUsagePurpose::ServerAuth);
    let settings = TlsSettings {
        cert_file: write("server.pem", &cert),
        key_file: write("server-key.pem", &key),
        ca_file: ca_file.clone(),
        client_cn: Some("felix".into()),
        client_uri_san: None,
        reload_interval: Duration::from_secs(3600),
    };
    let (cert, key) = leaf("felix", ExtendedKeyUsagePurpose::ClientAuth);
    let client = ClientTls::from_files(&ClientTlsOptions {
        ca_file,
        cert_file: Some(write("client.pem", &cert)),
        key_file: Some(write("client-key.pem", &key)),
        server_cn: Some("typha".into()),
        server_uri_san: None,
    })
    .unwrap();
    let server = ServerTls::load(settings, Metrics::new().tls_reloads).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let pairs: Vec<_> = (0..n)
        .map(|_| {
            let mut s = server.session().unwrap();
            let mut c = client.connection().unwrap();
            let mut buf = Vec::new();
            while s.conn.is_handshaking() || c.is_handshaking() {
                buf.clear();
                while c.wants_write() {
                    c.write_tls(&mut buf).unwrap();
                }
                s.conn.read_tls(&mut &buf[..]).unwrap();
                s.conn.process_new_packets().unwrap();
                buf.clear();
                while s.conn.wants_write() {
                    s.conn.write_tls(&mut buf).unwrap();
                }
                c.read_tls(&mut &buf[..]).unwrap();
                c.process_new_packets().unwrap();
            }
            (s, c)
        })
        .collect();
    if let Some((s, _)) = pairs.first() {
        eprintln!(
            "fanout_tls: {:?} with {:?}",
            s.conn.protocol_version(),
            s.conn.negotiated_cipher_suite().map(|c| c.suite())
        );
    }
    pairs
}

fn fanout_tls(c: &mut Criterion) {
    let (ring, seq) = one_batch_ring();
    let metrics = Metrics::new();
    let frame_len = ring
        .get(seq)
        .and_then(|e| e.batch.part(SyncerType::Felix))
        .map_or(0, |p| p.plain().len());
    let mut g = c.benchmark_group("fanout_tls");
    g.sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for n in [100usize, 1000] {
        let mut outs: Vec<Outbox> = (0..n)
            .map(|_| Outbox::new(SyncerType::Felix, WireVariant::NativePlain))
            .collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("plain", n), &n, |b, _| {
            b.iter(|| {
                let mut written = 0;
                for out in outs.iter_mut() {
                    out.next_seq = Some(seq);
                    let mut iov = [IoSlice::new(&[]); MAX_IOV];
                    let (k, _) = out.gather(&ring, &mut iov);
                    let w = std::io::sink().write_vectored(&iov[..k]).unwrap_or(0);
                    out.advance(w, &ring, &metrics, WriteTime::now());
                    written += w;
                }
                assert_eq!(written, n * frame_len);
                written
            })
        });
        // The reactor's TLS write: plaintext into rustls (encrypting it), records out.
        let mut pairs = tls_pairs(n);
        // What is encrypted decrypts to the frame (checked once, before the timing, since the
        // timed loop throws records away and so desynchronises the client).
        let (s, c) = &mut pairs[0];
        let mut outbox = Outbox::new(SyncerType::Felix, WireVariant::NativePlain);
        outbox.next_seq = Some(seq);
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let (k, _) = outbox.gather(&ring, &mut iov);
        assert_eq!(
            s.conn.writer().write_vectored(&iov[..k]).unwrap(),
            frame_len
        );
        let mut wire = Vec::new();
        while s.conn.wants_write() {
            s.conn.write_tls(&mut wire).unwrap();
        }
        let mut rd = &wire[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().unwrap();
        }
        // Reads what is there, then stops at WouldBlock; what it read stays in `plain`.
        let mut plain = Vec::new();
        let _ = std::io::Read::read_to_end(&mut c.reader(), &mut plain);
        let frame = ring.get(seq).and_then(|e| e.batch.part(SyncerType::Felix));
        assert!(
            frame.is_some_and(|f| f.plain()[..] == plain[..]),
            "the client decrypts the frame"
        );
        g.bench_with_input(BenchmarkId::new("tls", n), &n, |b, _| {
            b.iter(|| {
                let mut written = 0;
                let mut records = 0;
                for (out, (s, _)) in outs.iter_mut().zip(pairs.iter_mut()) {
                    out.next_seq = Some(seq);
                    let mut iov = [IoSlice::new(&[]); MAX_IOV];
                    let (k, _) = out.gather(&ring, &mut iov);
                    let w = s.conn.writer().write_vectored(&iov[..k]).unwrap_or(0);
                    out.advance(w, &ring, &metrics, WriteTime::now());
                    while s.conn.wants_write() {
                        records += s.conn.write_tls(&mut std::io::sink()).unwrap_or(0);
                    }
                    written += w;
                }
                assert_eq!(written, n * frame_len);
                black_box(records)
            })
        });
    }
    g.finish();
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

criterion_group!(benches, encode_batch, fanout, fanout_tls, snapshot);
criterion_main!(benches);
