//! Property tests of the protocol v1 codec: round trips through framing and decoding, the
//! shared-value encoders (`UpdateSeq`) against the owned types, robustness against arbitrary
//! input, and a bound on what decoding a client payload may allocate.

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::Config;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex};
use typha::model::{Digest, Entry, Key, StateMap, SyncStatus, SyncerType, Update, UpdateType};
use typha::proto::encode::{encode_batch_part, encode_snapshot, EncodeOptions, WireVariant};
use typha::proto::{
    compress, decode_client_message, decode_server_message, encode_frame, encode_payload,
    ClientMessage, Codec, FeedError, FrameDecoder, GoodbyeReason, Hello, ProtoError,
    ProtocolVersion, ServerHello, ServerMessage, WireUpdate, FRAME_HEADER_LEN, MAX_CLIENT_FRAME,
    MAX_SERVER_FRAME,
};

// ---------------------------------------------------------------------------------------------
// A counting allocator: measures the bytes allocated by the current thread between
// `measure`'s start and end (other test threads are not counted).

struct Counting;

static CURRENT: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);
static MEASURE_LOCK: Mutex<()> = Mutex::new(());

thread_local! {
    static MEASURING: Cell<bool> = const { Cell::new(false) };
}

fn measuring() -> bool {
    MEASURING.try_with(Cell::get).unwrap_or(false)
}

fn grow(n: usize) {
    if measuring() {
        let now = CURRENT.fetch_add(n as isize, Ordering::Relaxed) + n as isize;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

fn shrink(n: usize) {
    if measuring() {
        CURRENT.fetch_sub(n as isize, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        shrink(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            if new_size >= layout.size() {
                grow(new_size - layout.size());
            } else {
                shrink(layout.size() - new_size);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, returning its result and the peak of bytes it held allocated at once.
fn measure<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let _guard = MEASURE_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    CURRENT.store(0, Ordering::Relaxed);
    PEAK.store(0, Ordering::Relaxed);
    MEASURING.with(|m| m.set(true));
    let r = f();
    MEASURING.with(|m| m.set(false));
    (r, PEAK.load(Ordering::Relaxed).max(0) as usize)
}

// ---------------------------------------------------------------------------------------------
// Strategies.

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,24}",
        "/calico/v1/[a-z0-9/._-]{0,48}",
        Just(String::new()),
    ]
}

fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        // Compressible values, so the compression paths get exercised.
        (any::<u8>(), 0usize..600).prop_map(|(b, n)| vec![b; n]),
        "[a-z{}\":,]{0,200}".prop_map(String::into_bytes),
    ]
}

fn arb_u64() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..300, any::<u64>(), Just(u64::MAX)]
}

fn arb_codec() -> impl Strategy<Value = Codec> {
    proptest::sample::select(Codec::ALL.to_vec())
}

fn arb_status() -> impl Strategy<Value = SyncStatus> {
    proptest::sample::select(vec![
        SyncStatus::WaitingForDatastore,
        SyncStatus::ResyncInProgress,
        SyncStatus::InSync,
    ])
}

fn arb_update_type() -> impl Strategy<Value = UpdateType> {
    proptest::sample::select(vec![
        UpdateType::New,
        UpdateType::Updated,
        UpdateType::Deleted,
    ])
}

fn arb_reason() -> impl Strategy<Value = GoodbyeReason> {
    proptest::sample::select(vec![
        GoodbyeReason::Shutdown,
        GoodbyeReason::Rebalancing,
        GoodbyeReason::TooSlow,
        GoodbyeReason::ProtocolError,
        GoodbyeReason::ServerFull,
        GoodbyeReason::UnsupportedVersion,
        GoodbyeReason::Timeout,
    ])
}

fn arb_version() -> impl Strategy<Value = ProtocolVersion> {
    (any::<u16>(), any::<u16>()).prop_map(|(major, minor)| ProtocolVersion { major, minor })
}

fn arb_wire_update() -> impl Strategy<Value = WireUpdate> {
    (
        arb_string(),
        proptest::option::of(arb_bytes()),
        arb_string(),
        arb_update_type(),
    )
        .prop_map(|(key, value, revision, update_type)| WireUpdate {
            key,
            value,
            revision,
            update_type,
        })
}

fn arb_wire_updates() -> impl Strategy<Value = Vec<WireUpdate>> {
    proptest::collection::vec(arb_wire_update(), 0..8)
}

fn arb_client_message() -> impl Strategy<Value = ClientMessage> {
    prop_oneof![
        (
            arb_version(),
            arb_string(),
            arb_string(),
            arb_string(),
            proptest::collection::vec(arb_string(), 0..5),
        )
            .prop_map(|(v, hostname, client_info, syncer_type, accepts)| {
                ClientMessage::Hello(Hello {
                    protocol_version: v,
                    hostname,
                    client_info,
                    syncer_type,
                    accepts_compression: accepts,
                })
            }),
        arb_u64().prop_map(|id| ClientMessage::Pong { id }),
    ]
}

/// Every server message except `Compressed`.
fn arb_plain_server_message() -> impl Strategy<Value = ServerMessage> {
    prop_oneof![
        (
            arb_version(),
            arb_string(),
            arb_u64(),
            arb_string(),
            proptest::option::of(arb_codec()),
        )
            .prop_map(|(v, server_id, connection_id, syncer_type, compression)| {
                ServerMessage::ServerHello(ServerHello {
                    protocol_version: v,
                    server_id,
                    connection_id,
                    syncer_type,
                    compression,
                })
            }),
        arb_status().prop_map(ServerMessage::SyncStatus),
        (arb_u64(), arb_wire_updates())
            .prop_map(|(seq, updates)| ServerMessage::SnapshotChunk { seq, updates }),
        (arb_u64(), arb_status(), arb_u64(), any::<[u8; 16]>()).prop_map(
            |(seq, status, key_count, digest)| ServerMessage::SnapshotEnd {
                seq,
                status,
                key_count,
                digest,
            }
        ),
        (arb_u64(), arb_u64(), arb_u64(), arb_wire_updates()).prop_map(
            |(first_seq, last_seq, received_at, updates)| ServerMessage::Updates {
                first_seq,
                last_seq,
                received_at,
                updates,
            }
        ),
        (arb_u64(), arb_u64()).prop_map(|(id, sent_at)| ServerMessage::Ping { id, sent_at }),
        (arb_reason(), arb_string())
            .prop_map(|(reason, message)| ServerMessage::Goodbye { reason, message }),
    ]
}

fn compressed(inner: &ServerMessage, codec: Codec) -> ServerMessage {
    let payload = encode_payload(inner);
    ServerMessage::Compressed {
        codec,
        uncompressed_len: payload.len() as u32,
        data: compress(codec, &payload).unwrap(),
    }
}

/// A server message as sent, and what `decode_server_message` must return for it: itself,
/// or for `Compressed` the message inside.
fn arb_server_message() -> impl Strategy<Value = (ServerMessage, ServerMessage)> {
    prop_oneof![
        3 => arb_plain_server_message().prop_map(|m| (m.clone(), m)),
        1 => (arb_plain_server_message(), arb_codec())
            .prop_map(|(m, c)| (compressed(&m, c), m)),
    ]
}

/// Cut positions, reduced modulo the stream length by `feed_split`.
fn arb_cuts() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(any::<usize>(), 0..10)
}

/// Feeds `stream` to a fresh decoder in pieces cut at `cuts`, returning the payloads.
fn feed_split(stream: &[u8], cuts: &[usize], max: usize) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(stream.len());
    let mut dec = FrameDecoder::new(max);
    let mut out = Vec::new();
    let mut at = 0;
    for c in cuts {
        dec.feed(&stream[at..c], |p| {
            out.push(p.to_vec());
            Ok::<(), ()>(())
        })
        .expect("valid frames must feed");
        at = c;
    }
    assert_eq!(dec.buffered(), 0, "bytes left after the last frame");
    out
}

// ---------------------------------------------------------------------------------------------
// Round trips.

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn client_messages_round_trip(
        msgs in proptest::collection::vec(arb_client_message(), 1..6),
        cuts in arb_cuts(),
    ) {
        let mut stream = Vec::new();
        for m in &msgs {
            let frame = encode_frame(m);
            prop_assert_eq!(frame.len(), FRAME_HEADER_LEN + encode_payload(m).len());
            stream.extend_from_slice(&frame);
        }
        let payloads = feed_split(&stream, &cuts, MAX_CLIENT_FRAME);
        prop_assert_eq!(payloads.len(), msgs.len());
        for (p, m) in payloads.iter().zip(&msgs) {
            prop_assert_eq!(&decode_client_message(p).unwrap(), m);
            // Any strict prefix of a payload is truncated, never another message.
            for cut in [0, p.len() / 2, p.len() - 1] {
                prop_assert!(decode_client_message(&p[..cut]).is_err());
            }
        }
    }

    #[test]
    fn server_messages_round_trip(
        msgs in proptest::collection::vec(arb_server_message(), 1..6),
        cuts in arb_cuts(),
    ) {
        let mut stream = Vec::new();
        for (sent, _) in &msgs {
            stream.extend_from_slice(&encode_frame(sent));
        }
        let payloads = feed_split(&stream, &cuts, MAX_SERVER_FRAME);
        prop_assert_eq!(payloads.len(), msgs.len());
        for (p, (sent, expected)) in payloads.iter().zip(&msgs) {
            // What was sent, as plain bincode...
            let (raw, used): (ServerMessage, usize) =
                bincode::decode_from_slice(p, typha::proto::config()).unwrap();
            prop_assert_eq!(used, p.len());
            prop_assert_eq!(&raw, sent);
            // ...and what a client sees, decompressed.
            prop_assert_eq!(&decode_server_message(p, MAX_SERVER_FRAME).unwrap(), expected);
            for cut in [0, p.len() / 2, p.len() - 1] {
                prop_assert!(decode_server_message(&p[..cut], MAX_SERVER_FRAME).is_err());
            }
        }
    }

    #[test]
    fn nested_compression_is_refused(m in arb_plain_server_message(), a in arb_codec(), b in arb_codec()) {
        let twice = compressed(&compressed(&m, a), b);
        let r = decode_server_message(&encode_payload(&twice), MAX_SERVER_FRAME);
        prop_assert!(matches!(r, Err(ProtoError::NestedCompression)), "{:?}", r);
    }
}

#[test]
fn frames_fed_one_byte_at_a_time() {
    let msgs = [
        ClientMessage::Pong { id: 0 },
        ClientMessage::Hello(Hello {
            protocol_version: ProtocolVersion { major: 1, minor: 0 },
            hostname: "n".repeat(300),
            client_info: String::new(),
            syncer_type: "bgp".into(),
            accepts_compression: vec!["lz4".into(), "snappy".into()],
        }),
        ClientMessage::Pong { id: u64::MAX },
    ];
    let stream: Vec<u8> = msgs.iter().flat_map(|m| encode_frame(m).to_vec()).collect();
    let mut dec = FrameDecoder::new(MAX_CLIENT_FRAME);
    let mut got = Vec::new();
    for b in &stream {
        dec.feed(std::slice::from_ref(b), |p| {
            got.push(decode_client_message(p).unwrap());
            Ok::<(), ()>(())
        })
        .unwrap();
    }
    assert_eq!(got, msgs);
    assert_eq!(dec.buffered(), 0);
}

// ---------------------------------------------------------------------------------------------
// Batches and snapshots encoded from shared model values.

fn arb_key() -> impl Strategy<Value = String> {
    let prefixes = vec![
        "/calico/v1/host/node-1/",
        "/calico/v1/policy/NetworkPolicy/default/",
        "/calico/v1/ipam/v4/pool/",
        "/calico/ipam/v2/host/node-2/ipv4/block/",
        "/calico/ipam/v2/assignment/ipv4/block/",
        "/calico/resources/v3/projectcalico.org/nodes/",
        "/calico/resources/v3/projectcalico.org/bgppeers/",
        "/calico/resources/v3/projectcalico.org/caliconodestatuses/",
        "/other/",
    ];
    (proptest::sample::select(prefixes), "[a-z0-9.-]{0,12}").prop_map(|(p, s)| format!("{p}{s}"))
}

fn arb_model_update() -> impl Strategy<Value = Update> {
    (
        arb_key(),
        proptest::option::of(arb_bytes()),
        "[0-9]{0,6}",
        any::<bool>(),
    )
        .prop_map(|(key, value, revision, new)| {
            let update_type = match (&value, new) {
                (None, _) => UpdateType::Deleted,
                (Some(_), true) => UpdateType::New,
                (Some(_), false) => UpdateType::Updated,
            };
            Update {
                key: Key::from(key),
                value: value.map(Bytes::from),
                revision,
                update_type,
            }
        })
}

fn wire(u: &Update) -> WireUpdate {
    WireUpdate {
        key: u.key.to_string(),
        value: u.value.as_ref().map(|v| v.to_vec()),
        revision: u.revision.clone(),
        update_type: u.update_type,
    }
}

/// Splits a concatenation of frames and decodes each as a client would.
fn decode_frames(bytes: &[u8]) -> Vec<(u8, ServerMessage)> {
    let mut out = Vec::new();
    FrameDecoder::new(MAX_SERVER_FRAME)
        .feed(bytes, |p| {
            out.push((p[0], decode_server_message(p, MAX_SERVER_FRAME).unwrap()));
            Ok::<(), ()>(())
        })
        .unwrap();
    out
}

fn check_part_frames(
    frames: &[(u8, ServerMessage)],
    updates: &[Update],
    status: Option<SyncStatus>,
    first_seq: u64,
    last_seq: u64,
    received_at: u64,
) -> Result<(), TestCaseError> {
    let mut expected = Vec::new();
    if !updates.is_empty() {
        expected.push(ServerMessage::Updates {
            first_seq,
            last_seq,
            received_at,
            updates: updates.iter().map(wire).collect(),
        });
    }
    if let Some(s) = status {
        expected.push(ServerMessage::SyncStatus(s));
    }
    let got: Vec<ServerMessage> = frames.iter().map(|(_, m)| m.clone()).collect();
    prop_assert_eq!(got, expected);
    Ok(())
}

proptest! {
    #![proptest_config(config(128))]

    #[test]
    fn batch_parts_decode_to_the_model_updates(
        updates in proptest::collection::vec(arb_model_update(), 0..40),
        first_seq in 1u64..1000,
        span in 0u64..5,
        received_at in arb_u64(),
        status in proptest::option::of(arb_status()),
        codec in proptest::option::of(arb_codec()),
        compress_min_bytes in prop_oneof![Just(0usize), 0usize..4096],
    ) {
        let last_seq = first_seq + span;
        let refs: Vec<&Update> = updates.iter().collect();
        let opts = EncodeOptions { codec, compress_min_bytes, ..EncodeOptions::default() };
        let part = encode_batch_part(first_seq, last_seq, received_at, &refs, status, &opts).unwrap();
        prop_assert_eq!(part.first_seq, first_seq);
        prop_assert_eq!(part.last_seq, last_seq);
        prop_assert_eq!(part.update_count, updates.len());

        // Plain: byte-identical to the owned encoding, and decodes to the model values.
        let plain = decode_frames(part.plain());
        check_part_frames(&plain, &updates, status, first_seq, last_seq, received_at)?;
        if !updates.is_empty() {
            let owned = encode_frame(&ServerMessage::Updates {
                first_seq,
                last_seq,
                received_at,
                updates: updates.iter().map(wire).collect(),
            });
            prop_assert!(part.plain().starts_with(&owned));
        }
        prop_assert!(plain.iter().all(|(tag, _)| *tag != 7));

        // Compressed: the same messages, with the Updates frame wrapped in `codec`.
        match (part.compressed(), codec) {
            (None, _) => {}
            (Some(_), None) => prop_assert!(false, "compressed variant without a codec"),
            (Some(z), Some(c)) => {
                prop_assert!(!updates.is_empty());
                prop_assert!(z.len() < part.plain().len());
                let frames = decode_frames(z);
                prop_assert_eq!(frames[0].0, 7u8);
                let (raw, _): (ServerMessage, usize) = bincode::decode_from_slice(
                    &z[FRAME_HEADER_LEN..],
                    typha::proto::config(),
                ).unwrap();
                let same_codec = matches!(raw, ServerMessage::Compressed { codec, .. } if codec == c);
                prop_assert!(same_codec);
                check_part_frames(&frames, &updates, status, first_seq, last_seq, received_at)?;
            }
        }
        prop_assert_eq!(part.frames(WireVariant::NativePlain), Some(part.plain()));
    }

    #[test]
    fn snapshots_decode_to_the_view_with_its_digest(
        entries in proptest::collection::btree_map(arb_key(), (arb_bytes(), "[0-9]{0,6}"), 0..60),
        seq in arb_u64(),
        status in arb_status(),
        syncer in proptest::sample::select(SyncerType::ALL.to_vec()),
        codec in proptest::option::of(arb_codec()),
        chunk_bytes in prop_oneof![1usize..64, 64usize..4096, Just(256 * 1024)],
    ) {
        let mut state = StateMap::new();
        for (k, (v, r)) in &entries {
            state.insert(
                Key::from(k.as_str()),
                Arc::new(Entry { value: Bytes::from(v.clone()), revision: r.clone() }),
            );
        }
        let snap = encode_snapshot(&state, seq, status, syncer, codec, chunk_bytes);

        // What the syncer type should see, and its digest computed directly (in reverse order:
        // the digest must not depend on it).
        let view: Vec<(&String, &(Vec<u8>, String))> =
            entries.iter().filter(|(k, _)| syncer.wants(k)).collect();
        let mut digest = Digest::default();
        for (k, (v, _)) in view.iter().rev() {
            digest.add(k, v);
        }

        let mut stream = Vec::new();
        for f in &snap.frames {
            stream.extend_from_slice(f);
        }
        prop_assert_eq!(snap.wire_bytes, stream.len() as u64);
        let frames = decode_frames(&stream);
        prop_assert_eq!(frames.len(), snap.frames.len());
        let (end_tag, end) = frames.last().unwrap().clone();
        prop_assert_eq!(end_tag, 3u8);
        prop_assert_eq!(end, ServerMessage::SnapshotEnd {
            seq,
            status,
            key_count: view.len() as u64,
            digest: digest.to_bytes(),
        });
        prop_assert_eq!(snap.key_count, view.len() as u64);
        prop_assert_eq!(snap.digest, digest);
        prop_assert_eq!(snap.seq, seq);

        let mut got = Vec::new();
        for ((tag, m), frame) in frames[..frames.len() - 1].iter().zip(&snap.frames) {
            match *tag {
                2 => {
                    // Plain chunk: byte-identical to the owned encoding.
                    prop_assert_eq!(&encode_frame(m)[..], &frame[..]);
                }
                7 => {
                    let (raw, _): (ServerMessage, usize) = bincode::decode_from_slice(
                        &frame[FRAME_HEADER_LEN..],
                        typha::proto::config(),
                    ).unwrap();
                    let same_codec =
                        matches!(raw, ServerMessage::Compressed { codec: c, .. } if Some(c) == codec);
                    prop_assert!(same_codec);
                }
                t => prop_assert!(false, "unexpected tag {} in a snapshot", t),
            }
            match m {
                ServerMessage::SnapshotChunk { seq: s, updates } => {
                    prop_assert_eq!(*s, seq);
                    prop_assert!(!updates.is_empty());
                    got.extend(updates.iter().cloned());
                }
                other => prop_assert!(false, "expected a chunk, got {:?}", other),
            }
        }
        let expected: Vec<WireUpdate> = view
            .iter()
            .map(|(k, (v, r))| WireUpdate {
                key: (*k).clone(),
                value: Some(v.clone()),
                revision: r.clone(),
                update_type: UpdateType::New,
            })
            .collect();
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn large_repetitive_batches_are_compressed_with_every_codec() {
    let updates: Vec<Update> = (0..200)
        .map(|i| Update {
            key: Key::from(format!(
                "/calico/v1/host/node-1/workload/k8s/default%2fpod-{i}/endpoint/eth0"
            )),
            value: Some(Bytes::from(format!(
                "{{\"state\":\"active\",\"name\":\"cali{i:08}\",\"profile_ids\":[\"kns.default\"]}}"
            ))),
            revision: format!("{}", 1000 + i),
            update_type: UpdateType::New,
        })
        .collect();
    let refs: Vec<&Update> = updates.iter().collect();
    for codec in Codec::ALL {
        let opts = EncodeOptions {
            codec: Some(codec),
            ..EncodeOptions::default()
        };
        let part = encode_batch_part(3, 5, 42, &refs, Some(SyncStatus::InSync), &opts).unwrap();
        let z = part.compressed().expect("a repetitive batch compresses");
        assert!(z.len() < part.plain().len() / 2, "{codec:?}");
        let frames = decode_frames(z);
        assert_eq!(frames[0].0, 7);
        assert_eq!(
            frames.into_iter().map(|(_, m)| m).collect::<Vec<_>>(),
            decode_frames(part.plain())
                .into_iter()
                .map(|(_, m)| m)
                .collect::<Vec<_>>()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Arbitrary input: decode or error, never panic.

fn arb_payload(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..max_len),
        // A valid tag first, so the field decoders get exercised.
        (0u8..9, proptest::collection::vec(any::<u8>(), 0..max_len)).prop_map(|(t, mut b)| {
            b.insert(0, t);
            b
        }),
    ]
}

/// A valid payload with some bytes overwritten and maybe truncated.
fn arb_mutated_payload() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            arb_client_message().prop_map(|m| encode_payload(&m)),
            arb_server_message().prop_map(|(m, _)| encode_payload(&m)),
        ],
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
        any::<Option<usize>>(),
    )
        .prop_map(|(mut p, edits, cut)| {
            for (i, b) in edits {
                if !p.is_empty() {
                    let n = p.len();
                    p[i % n] = b;
                }
            }
            if let Some(c) = cut {
                p.truncate(c % (p.len() + 1));
            }
            p
        })
}

#[derive(Debug, Clone, Copy)]
enum Lie {
    By(i64),
    Is(u32),
}

fn decode_both(p: &[u8]) {
    let _ = decode_client_message(p);
    let _ = decode_server_message(p, 1 << 20);
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn arbitrary_streams_never_panic(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2048),
            // Mostly plausible frame lengths.
            proptest::collection::vec((0u8..40, proptest::collection::vec(any::<u8>(), 0..40)), 0..20)
                .prop_map(|fs| fs.into_iter().flat_map(|(n, mut b)| {
                    let mut f = (n as u32).to_le_bytes().to_vec();
                    b.resize(n as usize, 0);
                    f.append(&mut b);
                    f
                }).collect()),
        ],
        cuts in arb_cuts(),
    ) {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(bytes.len());
        let mut dec = FrameDecoder::new(1 << 20);
        let mut at = 0;
        for c in cuts {
            let r = dec.feed(&bytes[at..c], |p| {
                decode_both(p);
                Ok::<(), ()>(())
            });
            match r {
                Ok(()) => {}
                Err(FeedError::Frame(ProtoError::FrameTooLarge { len, max })) => {
                    prop_assert!(len > max);
                    break;
                }
                Err(e) => prop_assert!(false, "unexpected feed error {:?}", e),
            }
            prop_assert!(dec.buffered() <= FRAME_HEADER_LEN + (1 << 20));
            at = c;
        }
    }

    #[test]
    fn arbitrary_payloads_never_panic(p in arb_payload(512)) {
        decode_both(&p);
    }

    #[test]
    fn mutated_payloads_never_panic(p in arb_mutated_payload()) {
        decode_both(&p);
    }

    #[test]
    fn compressed_frames_with_lying_lengths_are_refused(
        inner in arb_plain_server_message(),
        codec in arb_codec(),
        // The claimed length: off from the real one by a little, or anything at all.
        lie in prop_oneof![
            Just(Lie::By(0)),
            (-16i64..16).prop_map(Lie::By),
            any::<u32>().prop_map(Lie::Is),
        ],
        corrupt in proptest::option::of((any::<usize>(), any::<u8>())),
    ) {
        let payload = encode_payload(&inner);
        let real = payload.len() as i64;
        let claimed = match lie {
            Lie::By(d) => (real + d).max(0) as u32,
            Lie::Is(n) => n,
        };
        let mut data = compress(codec, &payload).unwrap();
        if let Some((i, b)) = corrupt {
            let n = data.len();
            data[i % n] = b;
        }
        let msg = ServerMessage::Compressed { codec, uncompressed_len: claimed, data };
        let max = 1 << 20;
        let r = decode_server_message(&encode_payload(&msg), max);
        if claimed as usize > max {
            prop_assert!(matches!(r, Err(ProtoError::FrameTooLarge { .. })), "{:?}", r);
        } else if claimed as i64 != real {
            prop_assert!(r.is_err(), "a wrong uncompressed_len was accepted: {:?}", r);
        } else if corrupt.is_none() {
            prop_assert_eq!(r.unwrap(), inner);
        }
    }

    #[test]
    fn compressed_frames_with_arbitrary_data_never_panic(
        codec in arb_codec(),
        claimed in prop_oneof![0u32..4096, any::<u32>()],
        data in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let msg = ServerMessage::Compressed { codec, uncompressed_len: claimed, data };
        let _ = decode_server_message(&encode_payload(&msg), 1 << 20);
    }
}

// ---------------------------------------------------------------------------------------------
// Allocation bound for client payloads.

/// What decoding a client payload of at most 64 KiB may hold allocated at once.
const CLIENT_DECODE_BOUND: usize = MAX_CLIENT_FRAME + 64 * 1024;

fn varint(n: u64) -> Vec<u8> {
    encode_payload(&n)
}

/// Hello-shaped payloads: tag, version, then a run of length fields (small, large, hostile)
/// each followed by some bytes.
fn arb_hello_like() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(
            (
                prop_oneof![0u64..300, 0u64..(1 << 21), any::<u64>()],
                proptest::collection::vec(any::<u8>(), 0..64),
            ),
            0..8,
        ),
        any::<bool>(),
    )
        .prop_map(|(fields, ascii)| {
            let mut p = vec![0u8, 1, 0];
            for (len, mut bytes) in fields {
                p.extend(varint(len));
                if ascii {
                    bytes.iter_mut().for_each(|b| *b = b'a' + *b % 26);
                }
                p.extend(bytes);
            }
            p.truncate(64 * 1024);
            p
        })
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn decoding_a_client_payload_allocates_a_bounded_amount(
        p in prop_oneof![
            arb_payload(64 * 1024),
            arb_hello_like(),
            arb_client_message().prop_map(|m| encode_payload(&m)),
        ],
    ) {
        prop_assert!(p.len() <= 64 * 1024);
        let (_, peak) = measure(|| decode_client_message(&p));
        prop_assert!(peak <= CLIENT_DECODE_BOUND, "peak {} for a {}-byte payload", peak, p.len());
    }
}

#[test]
fn the_allocator_counts() {
    let (v, peak) = measure(|| vec![1u8; MAX_CLIENT_FRAME]);
    assert!(peak >= MAX_CLIENT_FRAME && v.len() == MAX_CLIENT_FRAME);
    // A Hello with a long list of codec names really is measured.
    let hello = ClientMessage::Hello(Hello {
        protocol_version: ProtocolVersion { major: 1, minor: 0 },
        hostname: String::new(),
        client_info: String::new(),
        syncer_type: String::new(),
        accepts_compression: vec![String::new(); 10_000],
    });
    let p = encode_payload(&hello);
    let (r, peak) = measure(|| decode_client_message(&p));
    assert_eq!(r.unwrap(), hello);
    assert!(
        peak >= 10_000 * std::mem::size_of::<String>(),
        "peak {peak}"
    );
}

#[test]
fn hostile_lengths_fail_without_allocating() {
    let huge = 1u64 << 40;
    let cases = [
        // Hello: tag, version 1.0, then a 2^40-byte hostname...
        [vec![0, 1, 0], varint(huge)].concat(),
        // ... a 2^40-byte client_info, syncer_type.
        [vec![0, 1, 0, 0], varint(huge)].concat(),
        [vec![0, 1, 0, 0, 0], varint(huge)].concat(),
        // ... 2^40 codec names.
        [vec![0, 1, 0, 0, 0, 0], varint(huge)].concat(),
        // ... u64::MAX codec names (len * size_of::<String>() overflows).
        [vec![0, 1, 0, 0, 0, 0], varint(u64::MAX)].concat(),
        // ... a hostname just over the client limit.
        [vec![0, 1, 0], varint(MAX_CLIENT_FRAME as u64 + 1)].concat(),
    ];
    for p in &cases {
        let (r, peak) = measure(|| decode_client_message(p));
        assert!(r.is_err(), "{p:02x?} decoded");
        assert!(peak < 64 * 1024, "{p:02x?}: peak {peak}");
    }

    // Server side: a SnapshotChunk with 2^40 updates, an Updates whose first key claims 2^40
    // bytes, a Compressed claiming 2^40 data bytes.
    let server_cases = [
        [vec![2, 1], varint(huge)].concat(),
        [vec![4, 1, 1, 1, 1], varint(huge)].concat(),
        [vec![7, 0, 0], varint(huge)].concat(),
    ];
    for p in &server_cases {
        let (r, peak) = measure(|| decode_server_message(p, 1 << 20));
        assert!(r.is_err(), "{p:02x?} decoded");
        assert!(peak < 64 * 1024, "{p:02x?}: peak {peak}");
    }
}

/// A 43 702-byte Hello that makes `decode_client_message` hold ~1.67 MiB at once: a codec-name
/// list claiming 43 689 entries (bincode reserves 43 689 × 24 bytes up front and counts that
/// against its 1 MiB limit), 43 688 empty names (each gives back 24 bytes of the limit but only
/// charges 8 for its length, while the reserved capacity stays allocated), then a name claiming
/// 699 000 bytes, which bincode allocates before finding the payload too short.
///
/// Fails against `src/proto/codec.rs` as of this writing (see the report that added it); the
/// property test above cannot find it because random bytes rarely form ~40 000 valid empty
/// strings in a row.
#[test]
fn vec_of_empty_strings_then_a_long_claim_stays_bounded() {
    let count: u64 = 43_689;
    let mut p = vec![0u8, 1, 0, 0, 0, 0];
    p.extend(varint(count));
    p.extend(std::iter::repeat(0u8).take(count as usize - 1));
    p.extend(varint(699_000));
    assert!(p.len() <= 64 * 1024);
    let (r, peak) = measure(|| decode_client_message(&p));
    assert!(r.is_err());
    assert!(
        peak <= CLIENT_DECODE_BOUND,
        "peak {peak} > {CLIENT_DECODE_BOUND} for a {}-byte payload",
        p.len()
    );
}
