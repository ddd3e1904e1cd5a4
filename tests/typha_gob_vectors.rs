//! The Rust Typha codec (`typha::proto::typha`) checked against Go's own `encoding/gob` and
//! `golang/snappy`, both ways:
//!
//! * Go → Rust: `tests/fixtures/typha-gob/*.bin` were written by the interop suite's `vectors`
//!   (interop/vectors, fresh Go encoder per vector plus multi-message streams); `manifest.json`
//!   holds what each contains, in the JSON view of interop/syncproto. The Rust decoders must
//!   yield exactly that. This direction needs no Go at test time.
//! * Rust → Go: what the Rust encoders write is fed to the suite's `decodecheck`, which decodes
//!   it with Go's decoder and prints the same JSON view; it must match what was encoded. This
//!   direction (and the check that the committed vectors are what the generator writes) skips
//!   with "skipped: ..." when the suite is not built and `CI` is not set.

use bytes::{Bytes, BytesMut};
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use typha::proto::typha::{
    encode_decoder_restart, encode_kvs, encode_ping, encode_server_hello, encode_sync_status,
    server_preamble, snappy, ClientEncoder, ClientHello, ClientMessage, ClientStreamDecoder,
    DecoderRestart, GoTime, Pong, SerializedUpdate, ServerHello, ServerMessage,
    ServerStreamDecoder, DEFAULT_MAX_CLIENT_MESSAGE, DEFAULT_MAX_SERVER_MESSAGE,
};

mod interop_bins;
use interop_bins::interop_bins;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/typha-gob")
}

// ---- the JSON view (interop/syncproto/view.go), built from Rust messages --------------------

/// A time as the view has it, without the RFC 3339 text (compared through its numbers).
fn time_view(t: &GoTime) -> Value {
    let zone = if t.offset_minutes == -1 {
        0
    } else {
        i64::from(t.offset_minutes) * 60 + t.offset_seconds.map_or(0, i64::from)
    };
    let nanos = if t.is_zero() { 0 } else { t.unix_nanos() };
    json!({"unix_nanos": nanos as i64, "zone_offset_secs": zone, "is_zero": t.is_zero()})
}

fn kv_view(u: &SerializedUpdate) -> Value {
    json!({
        "key": u.key,
        "value": u.value.as_ref().map(|v| String::from_utf8_lossy(v).into_owned()),
        "revision": u.revision,
        "v3_resource_version": u.v3_resource_version,
        "ttl_ns": u.ttl_nanos,
        "update_type": u.update_type,
    })
}

fn client_hello_view(h: &ClientHello) -> Value {
    json!({
        "type": "MsgClientHello",
        "hostname": h.hostname, "info": h.info, "version": h.version,
        "syncer_type": h.syncer_type,
        "supports_decoder_restart": h.supports_decoder_restart,
        "supported_compression_algorithms": h.supported_compression,
        "supports_modern_policy_keys": h.supports_modern_policy_keys,
        "client_conn_id": h.client_conn_id,
    })
}

fn pong_view(p: &Pong) -> Value {
    json!({"type": "MsgPong", "ping_timestamp": time_view(&p.ping_timestamp),
           "pong_timestamp": time_view(&p.pong_timestamp)})
}

fn client_view(m: &ClientMessage) -> Value {
    match m {
        ClientMessage::Hello(h) => client_hello_view(h),
        ClientMessage::Ack => json!({"type": "MsgACK"}),
        ClientMessage::Pong(p) => pong_view(p),
    }
}

fn server_view(m: &ServerMessage) -> Value {
    match m {
        ServerMessage::Hello(h) => json!({
            "type": "MsgServerHello", "version": h.version, "syncer_type": h.syncer_type,
            "supports_node_resource_updates": h.supports_node_resource_updates,
            "server_conn_id": h.server_conn_id,
        }),
        ServerMessage::DecoderRestart(r) => json!({
            "type": "MsgDecoderRestart", "message": r.message,
            "compression_algorithm": r.compression,
        }),
        ServerMessage::SyncStatus(s) => json!({"type": "MsgSyncStatus", "sync_status": s}),
        ServerMessage::Ping(p) => json!({"type": "MsgPing", "timestamp": time_view(&p.timestamp)}),
        ServerMessage::Kvs(kvs) => {
            json!({"type": "MsgKVs", "kvs": kvs.iter().map(kv_view).collect::<Vec<_>>()})
        }
        ServerMessage::Ack => json!({"type": "MsgACK"}),
        ServerMessage::Pong(p) => pong_view(p),
        ServerMessage::ClientHello(h) => client_hello_view(h),
    }
}

/// A Go view made comparable with a Rust one: times lose their text, and a KV's
/// `revision_type` goes (the Rust codec models Revision as a string; a nil interface decodes
/// to ""), after checking it is one Typha can send.
fn normalise(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        for t in ["timestamp", "ping_timestamp", "pong_timestamp"] {
            if let Some(Value::Object(t)) = o.get_mut(t) {
                t.remove("rfc3339");
            }
        }
        if let Some(Value::Array(kvs)) = o.get_mut("kvs") {
            for kv in kvs {
                let kv = kv.as_object_mut().unwrap();
                let ty = kv.remove("revision_type").unwrap();
                assert!(ty == "string" || ty == "nil", "revision of type {ty}");
            }
        }
    }
    v
}

fn is_client_type(t: &str) -> bool {
    matches!(t, "MsgClientHello" | "MsgACK" | "MsgPong")
}

// ---- Go → Rust -------------------------------------------------------------------------------

fn manifest() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Decodes one vector's bytes the way its reader would: a client stream with the server's
/// decoder of client messages, a server stream with the client's decoder (plain or snappy).
/// Returns the messages decoded before the input ran out, and the error that stopped it, if any.
fn decode_vector(v: &Value, bytes: &[u8]) -> (Vec<Value>, Option<String>, usize) {
    let client_stream = v["framing"] == "gob"
        && v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| is_client_type(m["type"].as_str().unwrap()));
    let mut out = Vec::new();
    if client_stream {
        let mut d = ClientStreamDecoder::new(DEFAULT_MAX_CLIENT_MESSAGE);
        d.feed(bytes);
        loop {
            match d.next_message() {
                Ok(Some(m)) => out.push(client_view(&m)),
                Ok(None) => return (out, None, d.buffered()),
                Err(e) => return (out, Some(e.to_string()), d.buffered()),
            }
        }
    }
    let mut d = ServerStreamDecoder::new(DEFAULT_MAX_SERVER_MESSAGE);
    if v["framing"] == "snappy" {
        d.restart("snappy").unwrap();
    }
    d.feed(bytes);
    loop {
        match d.next_message() {
            Ok(Some(m)) => out.push(server_view(&m)),
            Ok(None) => return (out, None, d.buffered()),
            Err(e) => return (out, Some(e.to_string()), d.buffered()),
        }
    }
}

fn wanted(v: &Value) -> Vec<Value> {
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .cloned()
        .map(normalise)
        .collect()
}

#[test]
fn go_vectors_decode_with_the_rust_codec() {
    let vectors = manifest();
    assert!(vectors.len() >= 20, "the manifest lists every vector");
    // Every vector is checked before failing, so one run shows every mismatch.
    let mut failures = Vec::new();
    for v in &vectors {
        let file = v["file"].as_str().unwrap();
        let bytes = std::fs::read(fixtures().join(file)).unwrap();
        let (got, err, left) = decode_vector(v, &bytes);
        let want = wanted(v);
        if err.is_some() || left != 0 || got != want {
            failures.push(format!(
                "{file} ({}): error {err:?}, {left} bytes left over\n  got  {got:?}\n  want {want:?}",
                v["description"]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every proper prefix of a Go vector is an incomplete stream: the decoders wait for more (or
/// report a clean error), never panic, and never yield a message that is not in the vector.
#[test]
fn truncated_go_vectors_never_yield_wrong_messages() {
    for v in manifest() {
        let file = v["file"].as_str().unwrap();
        let bytes = std::fs::read(fixtures().join(file)).unwrap();
        let want = wanted(&v);
        for cut in 0..bytes.len() {
            let (got, _, _) = decode_vector(&v, &bytes[..cut]);
            assert!(
                got.len() < want.len() && want.starts_with(&got),
                "{file} cut at {cut}: {got:?}"
            );
        }
    }
}

// ---- Rust → Go -------------------------------------------------------------------------------

/// Runs decodecheck on `bytes` and returns its JSON lines (it must succeed).
fn go_decode(bins: &Path, framing: &str, bytes: &[u8]) -> Vec<Value> {
    let mut child = Command::new(bins.join("decodecheck"))
        .args(["-framing", framing])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start decodecheck");
    let mut stdin = child.stdin.take().unwrap();
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "Go could not decode the Rust bytes: {text}"
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn go_views(lines: Vec<Value>) -> Vec<Value> {
    lines
        .into_iter()
        .map(|l| {
            if let Some(kvs) = l["kvs"].as_array() {
                for kv in kvs {
                    // Typha always puts a string in the Revision interface, even an empty one.
                    assert_eq!(kv["revision_type"], "string", "{kv}");
                }
            }
            normalise(l)
        })
        .collect()
}

fn utc(unix_nanos: i128) -> GoTime {
    GoTime::from_unix_nanos(unix_nanos)
}

fn sample_updates(n: usize, value_bytes: usize) -> Vec<SerializedUpdate> {
    (0..n)
        .map(|i| {
            let update_type = [1u8, 2, 3][i % 3];
            SerializedUpdate {
                key: format!("/calico/v1/host/node-{i}/workload/k8s/ns%2fpod-é{i}/endpoint/eth0"),
                value: (update_type != 3).then(|| {
                    let mut v = format!("{{\"i\":{i},\"pad\":\"");
                    v.push_str(&"x".repeat(value_bytes));
                    v.push_str("\"}");
                    Bytes::from(v)
                }),
                revision: if i % 4 == 0 {
                    String::new()
                } else {
                    format!("{}", 1000 + i)
                },
                v3_resource_version: if i % 2 == 0 {
                    format!("{}", 7000 + i)
                } else {
                    String::new()
                },
                ttl_nanos: if i % 5 == 0 { 90_000_000_000 } else { 0 },
                update_type,
            }
        })
        .collect()
}

fn server_hello() -> ServerHello {
    ServerHello {
        version: "typha-rs".into(),
        syncer_type: "felix".into(),
        supports_node_resource_updates: true,
        server_conn_id: u64::MAX,
    }
}

#[test]
fn rust_server_messages_decode_with_go_gob() {
    let Some(bins) = interop_bins("rust_server_messages_decode_with_go_gob") else {
        return;
    };
    let updates = sample_updates(30, 40);
    let odd_zone = GoTime {
        offset_minutes: 330,
        offset_seconds: Some(15),
        ..utc(1_782_325_955_123_456_789)
    };
    let pings = [utc(1_782_325_955_123_456_789), odd_zone, GoTime::ZERO];
    let restart = DecoderRestart {
        message: "End of compressed snapshot.".into(),
        compression: "snappy".into(),
    };
    let mut stream = BytesMut::new();
    let mut want = Vec::new();
    stream.extend_from_slice(&server_preamble());
    stream.extend_from_slice(&encode_server_hello(&server_hello()));
    want.push(ServerMessage::Hello(server_hello()));
    stream.extend_from_slice(&encode_kvs(&updates));
    want.push(ServerMessage::Kvs(updates.clone()));
    stream.extend_from_slice(&encode_kvs(&[]));
    want.push(ServerMessage::Kvs(Vec::new()));
    for s in [2u8, 1, 0] {
        stream.extend_from_slice(&encode_sync_status(s));
        want.push(ServerMessage::SyncStatus(s));
    }
    for p in pings {
        stream.extend_from_slice(&encode_ping(p));
        want.push(ServerMessage::Ping(typha::proto::typha::Ping {
            timestamp: p,
        }));
    }
    stream.extend_from_slice(&encode_decoder_restart(&restart));
    want.push(ServerMessage::DecoderRestart(restart));
    let want: Vec<Value> = want.iter().map(server_view).collect();
    assert_eq!(go_views(go_decode(&bins, "gob", &stream)), want);

    // The same gob bytes in snappy framing, each message framed on its own as the shared
    // frames are.
    let mut framed = BytesMut::from(snappy::STREAM_IDENTIFIER);
    snappy::frame_chunks(&server_preamble(), &mut framed);
    snappy::frame_chunks(&stream[server_preamble().len()..], &mut framed);
    assert_eq!(go_views(go_decode(&bins, "snappy", &framed)), want);
}

/// A whole restart-path server stream as Felix reads it: hello and a restart on the plain
/// stream; a snapshot stream (identifier, preamble, 1000-KV messages with values large enough
/// to span several snappy chunks, a closing restart); then the live stream (identifier,
/// preamble, status, deltas, ping), every message framed once on its own.
#[test]
fn rust_restart_path_stream_decodes_with_go() {
    let Some(bins) = interop_bins("rust_restart_path_stream_decodes_with_go") else {
        return;
    };
    let to_snappy = |message: &str| DecoderRestart {
        message: message.into(),
        compression: "snappy".into(),
    };
    let snapshot = sample_updates(2500, 90);
    let deltas = sample_updates(7, 70_000);
    let mut s = BytesMut::new();
    let mut want = Vec::new();
    s.extend_from_slice(&server_preamble());
    s.extend_from_slice(&encode_server_hello(&server_hello()));
    want.push(ServerMessage::Hello(server_hello()));
    s.extend_from_slice(&encode_decoder_restart(&to_snappy("enable compression")));
    want.push(ServerMessage::DecoderRestart(to_snappy(
        "enable compression",
    )));

    s.extend_from_slice(snappy::STREAM_IDENTIFIER);
    snappy::frame_chunks(&server_preamble(), &mut s);
    for part in snapshot.chunks(1000) {
        snappy::frame_chunks(&encode_kvs(part), &mut s);
        want.push(ServerMessage::Kvs(part.to_vec()));
    }
    snappy::frame_chunks(
        &encode_decoder_restart(&to_snappy("end of snapshot")),
        &mut s,
    );
    want.push(ServerMessage::DecoderRestart(to_snappy("end of snapshot")));

    s.extend_from_slice(snappy::STREAM_IDENTIFIER);
    snappy::frame_chunks(&server_preamble(), &mut s);
    snappy::frame_chunks(&encode_sync_status(2), &mut s);
    want.push(ServerMessage::SyncStatus(2));
    snappy::frame_chunks(&encode_kvs(&deltas), &mut s);
    want.push(ServerMessage::Kvs(deltas));
    let ping = utc(1_700_000_000_000_000_001);
    snappy::frame_chunks(&encode_ping(ping), &mut s);
    want.push(ServerMessage::Ping(typha::proto::typha::Ping {
        timestamp: ping,
    }));

    let want: Vec<Value> = want.iter().map(server_view).collect();
    assert_eq!(go_views(go_decode(&bins, "server", &s)), want);
    // And the Rust client decoder follows the same stream to the same messages.
    let rust: Vec<Value> = typha::proto::typha::decode_all_server_messages(&s)
        .unwrap()
        .iter()
        .map(server_view)
        .collect();
    assert_eq!(rust, want);
}

#[test]
fn rust_client_messages_decode_with_go_gob() {
    let Some(bins) = interop_bins("rust_client_messages_decode_with_go_gob") else {
        return;
    };
    let hello = ClientHello {
        hostname: "node-ü.example".into(),
        info: "Revision: rust; Build date: n/a".into(),
        version: "v3.32.1".into(),
        syncer_type: "felix".into(),
        supports_decoder_restart: true,
        supported_compression: vec!["snappy".into()],
        supports_modern_policy_keys: true,
        client_conn_id: 0x9a3b_c4d5_0000_0001,
    };
    let pong = Pong {
        ping_timestamp: utc(1_782_325_955_123_456_789),
        pong_timestamp: GoTime::ZERO,
    };
    let mut enc = ClientEncoder::new();
    let mut out = BytesMut::new();
    enc.encode_hello(&hello, &mut out);
    enc.encode_ack(&mut out);
    enc.encode_pong(&pong, &mut out);
    enc.encode_ack(&mut out);
    enc.encode_pong(&pong, &mut out);
    let want: Vec<Value> = [
        ClientMessage::Hello(hello),
        ClientMessage::Ack,
        ClientMessage::Pong(pong),
        ClientMessage::Ack,
        ClientMessage::Pong(pong),
    ]
    .iter()
    .map(client_view)
    .collect();
    assert_eq!(go_views(go_decode(&bins, "gob", &out)), want);
}

/// The committed vectors are exactly what the generator writes today (regenerate with
/// `$(scripts/build-interop.sh)/vectors -out tests/fixtures/typha-gob`).
#[test]
fn committed_vectors_are_what_the_go_generator_writes() {
    let Some(bins) = interop_bins("committed_vectors_are_what_the_go_generator_writes") else {
        return;
    };
    let out = std::env::temp_dir().join(format!("typha-gob-vectors-{}", std::process::id()));
    let status = Command::new(bins.join("vectors"))
        .arg("-out")
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let mut names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in &names {
        let fresh = std::fs::read(out.join(name)).unwrap();
        let committed = std::fs::read(fixtures().join(name))
            .unwrap_or_else(|e| panic!("{name:?} is not committed: {e}"));
        assert!(
            fresh == committed,
            "{name:?} differs from the generator's output"
        );
    }
    let committed = std::fs::read_dir(fixtures()).unwrap().count();
    assert_eq!(committed, names.len(), "stale files in the fixtures");
    std::fs::remove_dir_all(&out).unwrap();
}
