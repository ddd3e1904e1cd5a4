//! Holds `docs/protocol.md` to the encoder: its hex examples must be exactly what
//! `typha::proto` writes, must decode back to the messages they describe, and the tags in its
//! tables must be the bytes the encoder writes.

use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;
use typha::model::{Digest, Entry, Key, StateMap, SyncStatus, SyncerType, Update, UpdateType};
use typha::proto::encode::{encode_batch_part, encode_snapshot, EncodeOptions};
use typha::proto::{
    decode_client_message, decode_server_message, encode_frame, encode_payload, peek_hello_version,
    ClientMessage, Codec, FrameDecoder, GoodbyeReason, Hello, ProtocolVersion, ServerHello,
    ServerMessage, SnapshotChunkRef, UpdateSeq, UpdatesRef, WireUpdate, MAX_CLIENT_FRAME,
    MAX_SERVER_FRAME, PROTOCOL_VERSION,
};

const TUNNEL_KEY: &str = "/calico/v1/host/node-1/config/IpInIpTunnelAddr";
const POLICY_KEY: &str = "/calico/v1/policy/GlobalNetworkPolicy//deny-all";

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The bytes of the one fenced block whose info string is `hex <name>`.
fn hex_block(doc: &str, name: &str) -> Vec<u8> {
    let fence = format!("```hex {name}");
    let starts: Vec<usize> = doc
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_end() == fence)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(starts.len(), 1, "expected exactly one ```hex {name} block");
    let mut out = Vec::new();
    let mut closed = false;
    for line in doc.lines().skip(starts[0] + 1) {
        if line.trim_start().starts_with("```") {
            closed = true;
            break;
        }
        for tok in line.split_whitespace() {
            assert!(
                tok.len() == 2 && tok.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
                "block {name}: {tok:?} is not a lowercase hex byte"
            );
            out.push(u8::from_str_radix(tok, 16).unwrap());
        }
    }
    assert!(closed, "block {name} is not closed");
    out
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn assert_bytes(name: &str, doc_bytes: &[u8], encoded: &[u8]) {
    assert_eq!(
        hex(doc_bytes),
        hex(encoded),
        "docs/protocol.md block `hex {name}` (left) differs from the encoder (right)"
    );
}

/// The single payload of a frame, checked through the frame decoder.
fn single_payload(frame: &[u8], max: usize) -> Vec<u8> {
    let mut payloads = Vec::new();
    let mut dec = FrameDecoder::new(max);
    dec.feed(frame, |p| {
        payloads.push(p.to_vec());
        Ok::<(), ()>(())
    })
    .unwrap();
    assert_eq!(dec.buffered(), 0, "frame has trailing bytes");
    assert_eq!(payloads.len(), 1);
    payloads.pop().unwrap()
}

fn hello_message() -> ClientMessage {
    ClientMessage::Hello(Hello {
        protocol_version: ProtocolVersion { major: 1, minor: 0 },
        hostname: "node-1".into(),
        client_info: "typha-rs test".into(),
        syncer_type: "felix".into(),
        accepts_compression: vec!["zstd".into()],
    })
}

const RECEIVED_AT: u64 = 1_700_000_000_000_000_000;

fn model_updates() -> Vec<Update> {
    vec![
        Update {
            key: Key::from(TUNNEL_KEY),
            value: Some(Bytes::from_static(b"10.0.0.1")),
            revision: "42".into(),
            update_type: UpdateType::New,
        },
        Update {
            key: Key::from(POLICY_KEY),
            value: None,
            revision: "43".into(),
            update_type: UpdateType::Deleted,
        },
    ]
}

fn updates_message() -> ServerMessage {
    ServerMessage::Updates {
        first_seq: 7,
        last_seq: 7,
        received_at: RECEIVED_AT,
        updates: vec![
            WireUpdate {
                key: TUNNEL_KEY.into(),
                value: Some(b"10.0.0.1".to_vec()),
                revision: "42".into(),
                update_type: UpdateType::New,
            },
            WireUpdate {
                key: POLICY_KEY.into(),
                value: None,
                revision: "43".into(),
                update_type: UpdateType::Deleted,
            },
        ],
    }
}

#[test]
fn protocol_version_is_1_0() {
    assert_eq!(PROTOCOL_VERSION, ProtocolVersion { major: 1, minor: 0 });
}

#[test]
fn hello_example_matches_the_encoder() {
    let doc = doc();
    let bytes = hex_block(&doc, "hello");
    let msg = hello_message();
    assert_bytes("hello", &bytes, &encode_frame(&msg));
    let payload = single_payload(&bytes, MAX_CLIENT_FRAME);
    assert_eq!(decode_client_message(&payload).unwrap(), msg);
    assert_eq!(
        peek_hello_version(&payload),
        Some(ProtocolVersion { major: 1, minor: 0 })
    );
}

#[test]
fn updates_example_matches_both_encoders() {
    let doc = doc();
    let bytes = hex_block(&doc, "updates");
    let msg = updates_message();
    assert_bytes("updates", &bytes, &encode_frame(&msg));

    // The hot path: straight from the model values, no WireUpdate built.
    let model = model_updates();
    let refs: Vec<&Update> = model.iter().collect();
    let by_ref = encode_frame(&UpdatesRef {
        first_seq: 7,
        last_seq: 7,
        received_at: RECEIVED_AT,
        updates: UpdateSeq::Batch(&refs),
    });
    assert_bytes("updates", &bytes, &by_ref);

    // And as the batcher produces it (no compression, no status change).
    let part = encode_batch_part(
        7,
        7,
        RECEIVED_AT,
        &refs,
        None,
        &EncodeOptions {
            codec: None,
            ..EncodeOptions::default()
        },
    )
    .unwrap();
    assert_bytes("updates", &bytes, part.plain());

    let payload = single_payload(&bytes, MAX_SERVER_FRAME);
    assert_eq!(
        decode_server_message(&payload, MAX_SERVER_FRAME).unwrap(),
        msg
    );
}

#[test]
fn snapshot_example_and_digests_match() {
    let doc = doc();
    let chunk_bytes = hex_block(&doc, "snapshot-chunk");
    let end_bytes = hex_block(&doc, "snapshot-end");

    let mut digest = Digest::default();
    digest.add(POLICY_KEY, b"{}");
    let chunk = ServerMessage::SnapshotChunk {
        seq: 6,
        updates: vec![WireUpdate {
            key: POLICY_KEY.into(),
            value: Some(b"{}".to_vec()),
            revision: "40".into(),
            update_type: UpdateType::New,
        }],
    };
    let end = ServerMessage::SnapshotEnd {
        seq: 6,
        status: SyncStatus::InSync,
        key_count: 1,
        digest: digest.to_bytes(),
    };
    assert_bytes("snapshot-chunk", &chunk_bytes, &encode_frame(&chunk));
    assert_bytes("snapshot-end", &end_bytes, &encode_frame(&end));

    // The same chunk from shared model values, and the whole snapshot as the server builds it.
    let key = Key::from(POLICY_KEY);
    let entry = Arc::new(Entry {
        value: Bytes::from_static(b"{}"),
        revision: "40".into(),
    });
    let entries = [(&key, &entry)];
    let by_ref = encode_frame(&SnapshotChunkRef {
        seq: 6,
        updates: UpdateSeq::Snapshot(&entries),
    });
    assert_bytes("snapshot-chunk", &chunk_bytes, &by_ref);
    let mut state = StateMap::new();
    state.insert(key.clone(), entry.clone());
    let snap = encode_snapshot(
        &state,
        6,
        SyncStatus::InSync,
        SyncerType::Felix,
        None,
        256 * 1024,
    );
    assert_eq!(snap.frames.len(), 2);
    assert_bytes("snapshot-chunk", &chunk_bytes, &snap.frames[0]);
    assert_bytes("snapshot-end", &end_bytes, &snap.frames[1]);

    for (bytes, msg) in [(&chunk_bytes, chunk), (&end_bytes, end)] {
        let payload = single_payload(bytes, MAX_SERVER_FRAME);
        assert_eq!(
            decode_server_message(&payload, MAX_SERVER_FRAME).unwrap(),
            msg
        );
    }

    // Printed digests quoted in the prose: the snapshot at 6, the view after the update at 7,
    // and the XXH3-128 check value.
    let printed_6 = digest.to_string();
    assert!(
        doc.contains(&printed_6),
        "doc lacks the snapshot digest {printed_6}"
    );
    digest.remove(POLICY_KEY, b"{}");
    digest.add(TUNNEL_KEY, b"10.0.0.1");
    let printed_7 = digest.to_string();
    assert!(
        doc.contains(&printed_7),
        "doc lacks the digest at 7 {printed_7}"
    );
    let empty = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(b""));
    assert!(
        doc.contains(&empty),
        "doc lacks the XXH3-128 check value {empty}"
    );
    // The printed form is the wire bytes reversed.
    let mut rev = digest.to_bytes();
    rev.reverse();
    assert_eq!(hex(&rev).replace(' ', ""), printed_7);
}

#[test]
fn other_major_version_is_readable_from_a_broken_hello() {
    // §8: the version is read from the Hello's first field even if the rest does not decode.
    let mut payload = encode_payload(&hello_message());
    payload[1] = 2; // major
    payload.truncate(5);
    payload.push(0xff);
    assert!(decode_client_message(&payload).is_err());
    assert_eq!(
        peek_hello_version(&payload),
        Some(ProtocolVersion { major: 2, minor: 0 })
    );
}

#[test]
fn size_limits_match_the_doc() {
    let doc = doc();
    assert_eq!(MAX_CLIENT_FRAME, 1_048_576);
    assert_eq!(MAX_SERVER_FRAME, 67_108_864);
    assert!(doc.contains("1 048 576") && doc.contains("67 108 864"));
}

/// Every tag the doc's tables give (rows starting `| 0xNN | `Name` |`), by variant name.
fn doc_tags(doc: &str) -> BTreeMap<String, Vec<u8>> {
    let mut tags: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[0].is_empty() {
            continue;
        }
        let Some(tag) = cells[1].strip_prefix("0x") else {
            continue;
        };
        let Some(name) = cells[2].strip_prefix('`').and_then(|n| n.strip_suffix('`')) else {
            continue;
        };
        let tag = u8::from_str_radix(tag, 16).unwrap_or_else(|_| panic!("bad tag in {line:?}"));
        tags.entry(name.to_string()).or_default().push(tag);
    }
    tags
}

#[test]
fn tag_tables_match_the_encoder() {
    let first = |b: Vec<u8>| b[0];
    let hello = hello_message();
    let server_hello = ServerMessage::ServerHello(ServerHello {
        protocol_version: PROTOCOL_VERSION,
        server_id: "s".into(),
        connection_id: 1,
        syncer_type: "felix".into(),
        compression: None,
    });
    let mut expected: Vec<(&str, u8)> = vec![
        ("Hello", first(encode_payload(&hello))),
        (
            "Pong",
            first(encode_payload(&ClientMessage::Pong { id: 1 })),
        ),
        ("ServerHello", first(encode_payload(&server_hello))),
        (
            "SyncStatus",
            first(encode_payload(&ServerMessage::SyncStatus(
                SyncStatus::InSync,
            ))),
        ),
        (
            "SnapshotChunk",
            first(encode_payload(&ServerMessage::SnapshotChunk {
                seq: 1,
                updates: vec![],
            })),
        ),
        (
            "SnapshotEnd",
            first(encode_payload(&ServerMessage::SnapshotEnd {
                seq: 1,
                status: SyncStatus::InSync,
                key_count: 0,
                digest: [0; 16],
            })),
        ),
        ("Updates", first(encode_payload(&updates_message()))),
        (
            "Ping",
            first(encode_payload(&ServerMessage::Ping { id: 1, sent_at: 2 })),
        ),
        (
            "Goodbye",
            first(encode_payload(&ServerMessage::Goodbye {
                reason: GoodbyeReason::Shutdown,
                message: String::new(),
            })),
        ),
        (
            "Compressed",
            first(encode_payload(&ServerMessage::Compressed {
                codec: Codec::Zstd,
                uncompressed_len: 0,
                data: vec![],
            })),
        ),
    ];
    for (name, c) in [
        ("Zstd", Codec::Zstd),
        ("Lz4", Codec::Lz4),
        ("Snappy", Codec::Snappy),
    ] {
        expected.push((name, first(encode_payload(&c))));
    }
    for (name, r) in [
        ("Shutdown", GoodbyeReason::Shutdown),
        ("Rebalancing", GoodbyeReason::Rebalancing),
        ("TooSlow", GoodbyeReason::TooSlow),
        ("ProtocolError", GoodbyeReason::ProtocolError),
        ("ServerFull", GoodbyeReason::ServerFull),
        ("UnsupportedVersion", GoodbyeReason::UnsupportedVersion),
        ("Timeout", GoodbyeReason::Timeout),
    ] {
        expected.push((name, first(encode_payload(&r))));
    }
    for (name, s) in [
        ("WaitingForDatastore", SyncStatus::WaitingForDatastore),
        ("ResyncInProgress", SyncStatus::ResyncInProgress),
        ("InSync", SyncStatus::InSync),
    ] {
        expected.push((name, first(encode_payload(&s))));
    }
    for (name, t) in [
        ("New", UpdateType::New),
        ("Updated", UpdateType::Updated),
        ("Deleted", UpdateType::Deleted),
    ] {
        expected.push((name, first(encode_payload(&t))));
    }

    let doc_tags = doc_tags(&doc());
    for (name, tag) in &expected {
        let got = doc_tags
            .get(*name)
            .unwrap_or_else(|| panic!("no tag table row for `{name}` in docs/protocol.md"));
        for t in got {
            assert_eq!(
                t, tag,
                "docs/protocol.md gives `{name}` tag {t:#04x}, the encoder writes {tag:#04x}"
            );
        }
    }
    for name in doc_tags.keys() {
        assert!(
            expected.iter().any(|(n, _)| n == name),
            "docs/protocol.md has a tag row for unknown variant `{name}`"
        );
    }
}
