//! The Typha gob + snappy codec (`typha::proto::typha`), checked against byte vectors built
//! here by hand from Go's encoding rules (not with the library's own writer): different type
//! ids, reordered and unknown fields, definitions in every position Go's decoder accepts.
//! `docs/typha-gob-codec.md` names the invariant each test holds.

use bytes::{Bytes, BytesMut};
use typha::proto::typha::snappy::{self, STREAM_IDENTIFIER};
use typha::proto::typha::*;

// ---- An independent gob writer, straight from the format description ----

fn u(x: u64) -> Vec<u8> {
    if x < 0x80 {
        return vec![x as u8];
    }
    let be = x.to_be_bytes();
    let skip = be.iter().take_while(|b| **b == 0).count();
    let mut v = vec![(256 - (8 - skip)) as u8];
    v.extend_from_slice(&be[skip..]);
    v
}

fn i(x: i64) -> Vec<u8> {
    u(if x < 0 {
        ((!x as u64) << 1) | 1
    } else {
        (x as u64) << 1
    })
}

fn s(x: &str) -> Vec<u8> {
    b(x.as_bytes())
}

fn b(x: &[u8]) -> Vec<u8> {
    let mut v = u(x.len() as u64);
    v.extend_from_slice(x);
    v
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// A gob message: byte count, then the body.
fn msg(parts: &[Vec<u8>]) -> Vec<u8> {
    let body = cat(parts);
    cat(&[u(body.len() as u64), body])
}

const T_BOOL: i64 = 1;
const T_INT: i64 = 2;
const T_UINT: i64 = 3;
const T_BYTES: i64 = 5;
const T_STRING: i64 = 6;
const T_INTERFACE: i64 = 8;

fn common(name: &str, id: i64) -> Vec<u8> {
    cat(&[u(1), s(name), u(1), i(id), u(0)])
}

fn wt_struct(id: i64, name: &str, fields: &[(&str, i64)]) -> Vec<u8> {
    let mut v = cat(&[u(3), u(1), common(name, id)]);
    if !fields.is_empty() {
        v.extend(u(1));
        v.extend(u(fields.len() as u64));
        for (n, fid) in fields {
            v.extend(cat(&[u(1), s(n), u(1), i(*fid), u(0)]));
        }
    }
    v.extend([0, 0]);
    v
}

fn wt_slice(id: i64, name: &str, elem: i64) -> Vec<u8> {
    cat(&[u(2), u(1), common(name, id), u(1), i(elem), u(0), u(0)])
}

fn wt_map(id: i64, name: &str, key: i64, elem: i64) -> Vec<u8> {
    cat(&[
        u(4),
        u(1),
        common(name, id),
        u(1),
        i(key),
        u(1),
        i(elem),
        u(0),
        u(0),
    ])
}

fn wt_gob_encoder(id: i64, name: &str) -> Vec<u8> {
    cat(&[u(5), u(1), common(name, id), u(0), u(0)])
}

fn def(id: i64, wire_type: Vec<u8>) -> Vec<u8> {
    msg(&[i(-id), wire_type])
}

/// The interface encoding of a registered concrete value: name, type id, byte count, value.
fn iface(name: &str, id: i64, value: Vec<u8>) -> Vec<u8> {
    cat(&[s(name), i(id), u(value.len() as u64), value])
}

/// `Envelope{Message: <iface>}` as a value message of envelope type `env_id`.
fn envelope(env_id: i64, iface: Vec<u8>) -> Vec<u8> {
    msg(&[i(env_id), u(1), iface, u(0)])
}

/// A struct value from (delta, value bytes) pairs.
fn fields(fs: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (delta, val) in fs {
        v.extend(u(*delta));
        v.extend_from_slice(val);
    }
    v.push(0);
    v
}

fn time_bytes(t: &GoTime) -> Vec<u8> {
    let (raw, len) = t.to_binary();
    raw[..len].to_vec()
}

fn sample_updates() -> Vec<SerializedUpdate> {
    vec![
        SerializedUpdate {
            key: "/calico/v1/policy/NetworkPolicy/ns/np1".into(),
            value: Some(Bytes::from_static(br#"{"spec":{"order":10}}"#)),
            revision: "1234".into(),
            v3_resource_version: "99".into(),
            ttl_nanos: 0,
            update_type: UPDATE_TYPE_NEW,
        },
        SerializedUpdate {
            key: "/calico/v1/host/node-1/metadata".into(),
            value: None,
            revision: String::new(),
            v3_resource_version: String::new(),
            ttl_nanos: -5,
            update_type: UPDATE_TYPE_DELETED,
        },
        SerializedUpdate {
            key: "k".repeat(300),
            value: Some(Bytes::from(vec![7u8; 70_000])),
            revision: "r".repeat(200),
            v3_resource_version: String::new(),
            ttl_nanos: 30_000_000_000,
            update_type: UPDATE_TYPE_UPDATED,
        },
    ]
}

fn drain_server(d: &mut ServerStreamDecoder) -> Vec<ServerMessage> {
    let mut out = Vec::new();
    while let Some(m) = d.next_message().expect("decodes") {
        out.push(m);
    }
    out
}

// ---- Server encoder: exact bytes and round trips ----

#[test]
fn preamble_is_the_fixed_definition_table() {
    let want = cat(&[
        def(64, wt_struct(64, "Envelope", &[("Message", T_INTERFACE)])),
        def(
            65,
            wt_struct(
                65,
                "MsgServerHello",
                &[
                    ("Version", T_STRING),
                    ("SyncerType", T_STRING),
                    ("SupportsNodeResourceUpdates", T_BOOL),
                    ("ServerConnID", T_UINT),
                ],
            ),
        ),
        def(
            66,
            wt_struct(
                66,
                "MsgDecoderRestart",
                &[("Message", T_STRING), ("CompressionAlgorithm", T_STRING)],
            ),
        ),
        def(
            67,
            wt_struct(67, "MsgSyncStatus", &[("SyncStatus", T_UINT)]),
        ),
        def(68, wt_struct(68, "MsgPing", &[("Timestamp", 69)])),
        def(69, wt_gob_encoder(69, "Time")),
        def(70, wt_struct(70, "MsgKVs", &[("KVs", 71)])),
        def(71, wt_slice(71, "[]syncproto.SerializedUpdate", 72)),
        def(
            72,
            wt_struct(
                72,
                "SerializedUpdate",
                &[
                    ("Key", T_STRING),
                    ("Value", T_BYTES),
                    ("Revision", T_INTERFACE),
                    ("V3ResourceVersion", T_STRING),
                    ("TTL", T_INT),
                    ("UpdateType", T_UINT),
                ],
            ),
        ),
    ]);
    assert_eq!(server_preamble().as_ref(), &want[..]);
    // One shared buffer, not a fresh encoding per call.
    assert_eq!(server_preamble().as_ptr(), server_preamble().as_ptr());
}

#[test]
fn server_values_have_the_exact_gob_bytes() {
    assert_eq!(
        encode_sync_status(SYNC_STATUS_IN_SYNC).as_ref(),
        &envelope(64, iface(names::SYNC_STATUS, 67, fields(&[(1, u(2))])))[..]
    );
    let t = GoTime::from_unix_nanos(1_700_000_000_123_456_789);
    assert_eq!(
        encode_ping(t).as_ref(),
        &envelope(
            64,
            iface(names::PING, 68, fields(&[(1, b(&time_bytes(&t)))]))
        )[..]
    );
    let upd = SerializedUpdate {
        key: "/k".into(),
        value: None,
        revision: String::new(),
        v3_resource_version: String::new(),
        ttl_nanos: 0,
        update_type: UPDATE_TYPE_DELETED,
    };
    // Revision is an interface holding "": name "string", id 6, count 2, singleton 0, len 0.
    let revision = iface("string", T_STRING, vec![0, 0]);
    let elem = fields(&[(1, s("/k")), (2, revision), (3, u(3))]);
    let kvs = fields(&[(1, cat(&[u(1), elem]))]);
    assert_eq!(
        encode_kvs([&upd]).as_ref(),
        &envelope(64, iface(names::KVS, 70, kvs))[..]
    );
    // An empty batch omits the slice.
    assert_eq!(
        encode_kvs(std::iter::empty::<&SerializedUpdate>()).as_ref(),
        &envelope(64, iface(names::KVS, 70, vec![0]))[..]
    );
}

/// docs/typha-gob-codec.md §7 shows the bytes of `MsgSyncStatus{InSync}`; they must stay the
/// encoder's output.
#[test]
fn the_sync_status_example_in_the_doc_is_the_encoders_output() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/typha-gob-codec.md"
    ))
    .unwrap();
    let hex: String = encode_sync_status(SYNC_STATUS_IN_SYNC)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        doc.lines().any(|l| l.trim() == hex),
        "doc example out of date; encoder says:\n{hex}"
    );
}

#[test]
fn every_server_message_round_trips_after_the_preamble() {
    let hello = ServerHello {
        version: "v3.32.1-typha-rs".into(),
        syncer_type: SYNCER_BGP.into(),
        supports_node_resource_updates: true,
        server_conn_id: (0xdead_beef << 32) | 7,
    };
    let restart = DecoderRestart {
        message: "enable compression: snappy;send binary snapshot".into(),
        compression: String::new(),
    };
    let t = GoTime::now();
    let updates = sample_updates();
    let mut stream = server_preamble().to_vec();
    for part in [
        encode_server_hello(&hello),
        encode_sync_status(SYNC_STATUS_RESYNC_IN_PROGRESS),
        encode_ping(t),
        encode_kvs(&updates),
        encode_sync_status(SYNC_STATUS_WAIT_FOR_DATASTORE),
        encode_ping(GoTime::ZERO),
        encode_decoder_restart(&restart),
    ] {
        stream.extend_from_slice(&part);
    }
    let want = vec![
        ServerMessage::Hello(hello),
        ServerMessage::SyncStatus(SYNC_STATUS_RESYNC_IN_PROGRESS),
        ServerMessage::Ping(Ping { timestamp: t }),
        ServerMessage::Kvs(updates),
        ServerMessage::SyncStatus(SYNC_STATUS_WAIT_FOR_DATASTORE),
        ServerMessage::Ping(Ping {
            timestamp: GoTime::ZERO,
        }),
        ServerMessage::DecoderRestart(restart),
    ];
    assert_eq!(decode_all_server_messages(&stream).unwrap(), want);

    // Byte at a time: the same messages, none early.
    let mut d = ServerStreamDecoder::default();
    let mut got = Vec::new();
    for byte in &stream {
        d.feed(std::slice::from_ref(byte));
        got.extend(drain_server(&mut d));
    }
    assert_eq!(got, want);
}

#[test]
fn values_without_the_preamble_are_refused() {
    let err = decode_all_server_messages(&encode_sync_status(2)).unwrap_err();
    assert_eq!(err, TyphaCodecError::UndefinedType(64));
}

#[test]
fn kvs_from_refs_equal_kvs_from_owned_updates() {
    let updates = sample_updates();
    let refs: Vec<SerializedUpdateRef<'_>> = updates.iter().map(Into::into).collect();
    assert_eq!(encode_kvs(&updates), encode_kvs_refs(refs.iter().copied()));
    let mut out = BytesMut::from(&b"prefix"[..]);
    encode_kvs_into(&mut out, refs.iter().copied());
    assert_eq!(&out[..6], b"prefix");
    assert_eq!(&out[6..], &encode_kvs(&updates)[..]);
}

#[test]
fn an_empty_value_is_sent_as_nil() {
    let mut upd = sample_updates().remove(0);
    upd.value = Some(Bytes::new());
    let mut stream = server_preamble().to_vec();
    stream.extend_from_slice(&encode_kvs([&upd]));
    let got = decode_all_server_messages(&stream).unwrap();
    upd.value = None;
    assert_eq!(got, vec![ServerMessage::Kvs(vec![upd])]);
}

// ---- Client encoder and the server's decoder ----

fn felix_hello() -> ClientHello {
    ClientHello {
        hostname: "node-17".into(),
        info: "Revision: abc; Build date: today".into(),
        version: "v3.32.1".into(),
        syncer_type: SYNCER_FELIX.into(),
        supports_decoder_restart: true,
        supported_compression: vec![COMPRESSION_SNAPPY.into()],
        supports_modern_policy_keys: true,
        client_conn_id: (12345 << 32) + 1,
    }
}

#[test]
fn client_messages_round_trip_with_definitions_on_first_use() {
    let mut enc = ClientEncoder::new();
    let mut out = BytesMut::new();
    enc.encode_hello(&felix_hello(), &mut out);
    let hello_len = out.len();
    enc.encode_ack(&mut out);
    let after_first_ack = out.len();
    enc.encode_ack(&mut out);
    let second_ack = out.len() - after_first_ack;
    let ping_ts = GoTime {
        seconds: 63_900_000_000,
        nanos: 5,
        offset_minutes: 330,
        offset_seconds: Some(-7),
    };
    let pong = Pong {
        ping_timestamp: ping_ts,
        pong_timestamp: GoTime::ZERO,
    };
    enc.encode_pong(&pong, &mut out);
    enc.encode_pong(&pong, &mut out);
    // The first ACK carried MsgACK's definition; the second is a bare value message.
    assert!(after_first_ack - hello_len > second_ack);
    assert_eq!(
        decode_all_client_messages(&out).unwrap(),
        vec![
            ClientMessage::Hello(felix_hello()),
            ClientMessage::Ack,
            ClientMessage::Ack,
            ClientMessage::Pong(pong),
            ClientMessage::Pong(pong),
        ]
    );
}

/// Go's layout for a concrete type first sent inside an interface: its definition ends the
/// envelope's message, the field types' definitions follow, then a message with the id, value
/// and the envelope's end. The client encoder writes exactly that, and the decoder reassembles
/// it even when it arrives a byte at a time.
#[test]
fn first_use_inside_an_interface_splits_the_value_across_messages() {
    let hello_fields: &[(&str, i64)] = &[
        ("Hostname", T_STRING),
        ("Info", T_STRING),
        ("Version", T_STRING),
        ("SyncerType", T_STRING),
        ("SupportsDecoderRestart", T_BOOL),
        ("SupportedCompressionAlgorithms", 66),
        ("SupportsModernPolicyKeys", T_BOOL),
        ("ClientConnID", T_UINT),
    ];
    let h = felix_hello();
    let value = fields(&[
        (1, s(&h.hostname)),
        (1, s(&h.info)),
        (1, s(&h.version)),
        (1, s(&h.syncer_type)),
        (1, u(1)),
        (1, cat(&[u(1), s("snappy")])),
        (1, u(1)),
        (1, u(h.client_conn_id)),
    ]);
    let want = cat(&[
        def(64, wt_struct(64, "Envelope", &[("Message", T_INTERFACE)])),
        msg(&[
            i(64),
            u(1),
            s(names::CLIENT_HELLO),
            i(-65),
            wt_struct(65, "MsgClientHello", hello_fields),
        ]),
        def(
            66,
            wt_slice(66, "[]syncproto.CompressionAlgorithm", T_STRING),
        ),
        msg(&[i(65), u(value.len() as u64), value, u(0)]),
    ]);
    let mut enc = ClientEncoder::new();
    let mut out = BytesMut::new();
    enc.encode_hello(&h, &mut out);
    assert_eq!(&out[..], &want[..]);

    let mut d = ClientStreamDecoder::default();
    let mut got = Vec::new();
    for byte in &want {
        d.feed(std::slice::from_ref(byte));
        while let Some(m) = d.next_message().unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got, vec![ClientMessage::Hello(h)]);
    assert_eq!(d.buffered(), 0);
}

/// The same layout on the server side: Typha's Go encoder sends the first `MsgKVs` this way.
#[test]
fn split_first_kvs_from_a_go_server_decodes() {
    let value = fields(&[(
        1,
        cat(&[
            u(1),
            fields(&[
                (1, s("/calico/v1/x")),
                (1, b(b"{}")),
                (1, iface("string", T_STRING, cat(&[vec![0], s("5")]))),
                (3, u(1)),
            ]),
        ]),
    )]);
    let stream = cat(&[
        def(64, wt_struct(64, "Envelope", &[("Message", T_INTERFACE)])),
        msg(&[
            i(64),
            u(1),
            s(names::KVS),
            i(-70),
            wt_struct(70, "MsgKVs", &[("KVs", 71)]),
        ]),
        def(71, wt_slice(71, "[]syncproto.SerializedUpdate", 72)),
        def(
            72,
            wt_struct(
                72,
                "SerializedUpdate",
                &[
                    ("Key", T_STRING),
                    ("Value", T_BYTES),
                    ("Revision", T_INTERFACE),
                    ("V3ResourceVersion", T_STRING),
                    ("TTL", T_INT),
                    ("UpdateType", T_UINT),
                ],
            ),
        ),
        msg(&[i(70), u(value.len() as u64), value.clone(), u(0)]),
        // The second MsgKVs is one message.
        msg(&[
            i(64),
            u(1),
            s(names::KVS),
            i(70),
            u(value.len() as u64),
            value,
            u(0),
        ]),
    ]);
    let one = SerializedUpdate {
        key: "/calico/v1/x".into(),
        value: Some(Bytes::from_static(b"{}")),
        revision: "5".into(),
        update_type: 1,
        ..SerializedUpdate::default()
    };
    assert_eq!(
        decode_all_server_messages(&stream).unwrap(),
        vec![
            ServerMessage::Kvs(vec![one.clone()]),
            ServerMessage::Kvs(vec![one])
        ]
    );
    // Cut anywhere, the decoder waits rather than failing.
    for cut in 1..stream.len() {
        let mut d = ServerStreamDecoder::default();
        d.feed(&stream[..cut]);
        let first = drain_server(&mut d);
        d.feed(&stream[cut..]);
        let rest = drain_server(&mut d);
        assert_eq!(first.len() + rest.len(), 2, "cut at {cut}");
    }
}

/// A ClientHello as another encoder might write it: other ids, fields in another order, a
/// field this codec does not know (of a nested type), some fields missing.
#[test]
fn client_hello_with_foreign_ids_order_and_unknown_fields() {
    let stream = cat(&[
        def(100, wt_struct(100, "Envelope", &[("Message", T_INTERFACE)])),
        def(
            90,
            wt_struct(
                90,
                "MsgClientHello",
                &[
                    ("ClientConnID", T_UINT),
                    ("Hostname", T_STRING),
                    ("Extra", 91),
                    ("SupportsChecksum", T_BOOL),
                    ("SyncerType", T_STRING),
                    ("SupportedCompressionAlgorithms", 93),
                    ("SupportsDecoderRestart", T_BOOL),
                    ("SupportsModernPolicyKeys", T_BOOL),
                ],
            ),
        ),
        def(
            91,
            wt_struct(91, "Extra", &[("A", T_INT), ("B", 92), ("C", T_INTERFACE)]),
        ),
        def(92, wt_map(92, "map[string]int", T_STRING, T_INT)),
        def(
            93,
            wt_slice(93, "[]syncproto.CompressionAlgorithm", T_STRING),
        ),
        envelope(
            100,
            iface(
                names::CLIENT_HELLO,
                90,
                fields(&[
                    (1, u(77)),
                    (1, s("node-a")),
                    (
                        1,
                        fields(&[
                            (1, i(-3)),
                            (1, cat(&[u(2), s("x"), i(1), s("y"), i(2)])),
                            (1, iface("string", T_STRING, cat(&[vec![0], s("ignored")]))),
                        ]),
                    ),
                    (1, u(1)),
                    (2, cat(&[u(2), s("zstd"), s("snappy")])),
                    (1, u(1)),
                ]),
            ),
        ),
    ]);
    let got = decode_all_client_messages(&stream).unwrap();
    assert_eq!(
        got,
        vec![ClientMessage::Hello(ClientHello {
            hostname: "node-a".into(),
            supported_compression: vec!["zstd".into(), "snappy".into()],
            supports_decoder_restart: true,
            client_conn_id: 77,
            ..ClientHello::default()
        })]
    );
}

#[test]
fn pong_with_reordered_fields_and_16_byte_time() {
    let ping_ts = GoTime {
        seconds: 63_861_000_000,
        nanos: 999_999_999,
        offset_minutes: -300,
        offset_seconds: Some(30),
    };
    let t = time_bytes(&ping_ts);
    assert_eq!(t.len(), 16);
    let stream = cat(&[
        def(64, wt_struct(64, "Envelope", &[("Message", T_INTERFACE)])),
        def(
            65,
            wt_struct(
                65,
                "MsgPong",
                &[("PongTimestamp", 66), ("PingTimestamp", 66)],
            ),
        ),
        def(66, wt_gob_encoder(66, "Time")),
        envelope(64, iface(names::PONG, 65, fields(&[(2, b(&t))]))),
    ]);
    assert_eq!(
        decode_all_client_messages(&stream).unwrap(),
        vec![ClientMessage::Pong(Pong {
            ping_timestamp: ping_ts,
            pong_timestamp: GoTime::ZERO
        })]
    );
}

#[test]
fn client_stream_errors_are_named() {
    let env = def(64, wt_struct(64, "Envelope", &[("Message", T_INTERFACE)]));
    let ack = def(65, wt_struct(65, "MsgACK", &[]));
    // Unregistered interface name.
    let bad_name = cat(&[
        env.clone(),
        ack.clone(),
        envelope(64, iface("main.Evil", 65, vec![0])),
    ]);
    assert_eq!(
        decode_all_client_messages(&bad_name).unwrap_err(),
        TyphaCodecError::UnknownInterfaceName("main.Evil".into())
    );
    // A server message on the client stream.
    let restart = def(
        66,
        wt_struct(66, "MsgDecoderRestart", &[("Message", T_STRING)]),
    );
    let wrong_dir = cat(&[
        env.clone(),
        restart,
        envelope(64, iface(names::DECODER_RESTART, 66, vec![0])),
    ]);
    assert_eq!(
        decode_all_client_messages(&wrong_dir).unwrap_err(),
        TyphaCodecError::UnexpectedMessage("MsgDecoderRestart")
    );
    // A nil message.
    let nil = cat(&[env.clone(), msg(&[i(64), u(0)])]);
    assert_eq!(
        decode_all_client_messages(&nil).unwrap_err(),
        TyphaCodecError::EmptyEnvelope
    );
    // A field of the wrong type.
    let mismatch = cat(&[
        env.clone(),
        def(65, wt_struct(65, "MsgClientHello", &[("Hostname", T_INT)])),
        envelope(64, iface(names::CLIENT_HELLO, 65, fields(&[(1, i(1))]))),
    ]);
    assert_eq!(
        decode_all_client_messages(&mismatch).unwrap_err(),
        TyphaCodecError::TypeMismatch { field: "Hostname" }
    );
    // Redefinition of an id.
    let dup = cat(&[env.clone(), env.clone()]);
    assert_eq!(
        decode_all_client_messages(&dup).unwrap_err(),
        TyphaCodecError::BadTypeDefinition(64)
    );
    // A built-in id redefined.
    let reserved = def(6, wt_struct(6, "X", &[]));
    assert_eq!(
        decode_all_client_messages(&reserved).unwrap_err(),
        TyphaCodecError::BadTypeDefinition(6)
    );
}

#[test]
fn oversized_client_message_is_refused_before_it_is_buffered() {
    let mut d = ClientStreamDecoder::default();
    // Just the byte count of a 1 MiB + 1 message.
    d.feed(&u(DEFAULT_MAX_CLIENT_MESSAGE as u64 + 1));
    assert_eq!(
        d.next_message().unwrap_err(),
        TyphaCodecError::MessageTooLarge {
            len: DEFAULT_MAX_CLIENT_MESSAGE as u64 + 1,
            max: DEFAULT_MAX_CLIENT_MESSAGE
        }
    );
    // The error sticks.
    d.feed(&[1, 2, 3]);
    assert!(d.next_message().is_err());
    // A message of exactly the cap is accepted (as far as the cap goes).
    let mut d = ClientStreamDecoder::new(16);
    let mut enc = ClientEncoder::new();
    let mut out = BytesMut::new();
    enc.encode_ack(&mut out);
    d.feed(&out);
    assert!(matches!(
        d.next_message(),
        Err(TyphaCodecError::MessageTooLarge { max: 16, .. })
    ));
}

// ---- Server stream: foreign encodings ----

/// KVs the way Go's own encoder could write them: different ids, reordered fields, an unknown
/// map field, an empty revision, a nil revision, a nil value, and type definitions placed
/// inside the interface value (the older in-interface form).
#[test]
fn kvs_with_foreign_layout_decode_by_field_name() {
    let su_fields: &[(&str, i64)] = &[
        ("UpdateType", T_UINT),
        ("Revision", T_INTERFACE),
        ("Key", T_STRING),
        ("Value", T_BYTES),
        ("Labels", 203),
        ("V3ResourceVersion", T_STRING),
        ("TTL", T_INT),
    ];
    let rev_empty = iface("string", T_STRING, vec![0, 0]);
    let rev_int = iface("int64", T_INT, cat(&[vec![0], i(-42)]));
    let labels = cat(&[u(1), s("a"), i(5)]);
    let elem1 = fields(&[
        (1, u(1)),
        (1, rev_empty),
        (1, s("/calico/v1/a")),
        (1, b(b"{}")),
        (1, labels),
        (1, s("17")),
    ]);
    let elem2 = fields(&[(1, u(3)), (2, s("/calico/v1/b")), (4, i(-9))]);
    let elem3 = fields(&[(2, rev_int), (1, s("/calico/v1/c"))]);
    let kvs_value = fields(&[(1, cat(&[u(3), elem1, elem2, elem3]))]);
    // Envelope defined up front; MsgKVs, its slice and element defined inside the interface.
    let inner_defs = cat(&[
        i(-200),
        wt_struct(200, "MsgKVs", &[("KVs", 201)]),
        u(0),
        i(-201),
        wt_slice(201, "[]syncproto.SerializedUpdate", 202),
        u(0),
        i(-202),
        wt_struct(202, "SerializedUpdate", su_fields),
        u(0),
        i(-203),
        wt_map(203, "map[string]int", T_STRING, T_INT),
        u(0),
    ]);
    let value_msg = msg(&[
        i(150),
        u(1),
        s(names::KVS),
        inner_defs,
        i(200),
        u(kvs_value.len() as u64),
        kvs_value,
        u(0),
    ]);
    let stream = cat(&[
        def(150, wt_struct(150, "Envelope", &[("Message", T_INTERFACE)])),
        value_msg,
    ]);
    let got = decode_all_server_messages(&stream).unwrap();
    assert_eq!(
        got,
        vec![ServerMessage::Kvs(vec![
            SerializedUpdate {
                key: "/calico/v1/a".into(),
                value: Some(Bytes::from_static(b"{}")),
                revision: String::new(),
                v3_resource_version: "17".into(),
                ttl_nanos: 0,
                update_type: 1,
            },
            SerializedUpdate {
                key: "/calico/v1/b".into(),
                value: None,
                revision: String::new(),
                v3_resource_version: String::new(),
                ttl_nanos: -9,
                update_type: 3,
            },
            SerializedUpdate {
                key: "/calico/v1/c".into(),
                revision: "-42".into(),
                ..SerializedUpdate::default()
            },
        ])]
    );
}

#[test]
fn ping_with_16_byte_time_and_unknown_message_fields() {
    let ts = GoTime {
        seconds: 63_800_000_000,
        nanos: 1,
        offset_minutes: 60,
        offset_seconds: Some(1),
    };
    let stream = cat(&[
        def(
            70,
            wt_struct(
                70,
                "Envelope",
                &[("Trace", T_STRING), ("Message", T_INTERFACE)],
            ),
        ),
        def(71, wt_gob_encoder(71, "Time")),
        def(
            72,
            wt_struct(72, "MsgPing", &[("Seq", T_UINT), ("Timestamp", 71)]),
        ),
        msg(&[
            i(70),
            u(1),
            s("trace-id"),
            u(1),
            iface(
                names::PING,
                72,
                fields(&[(1, u(9)), (1, b(&time_bytes(&ts)))]),
            ),
            u(0),
        ]),
    ]);
    assert_eq!(
        decode_all_server_messages(&stream).unwrap(),
        vec![ServerMessage::Ping(Ping { timestamp: ts })]
    );
}

#[test]
fn bad_time_forms_are_refused() {
    for bad in [
        &[1u8; 14][..],
        &[1u8; 16][..],
        &[3u8; 15][..],
        &[2u8; 15][..],
    ] {
        assert_eq!(GoTime::from_binary(bad), None, "{bad:?}");
    }
    let t = GoTime::from_unix_nanos(-1);
    assert_eq!(t.unix_nanos(), -1);
    assert_eq!(t.nanos, 999_999_999);
    let now = std::time::SystemTime::now();
    assert_eq!(GoTime::from_system_time(now).to_system_time(), now);
}

// ---- Snappy framing ----

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn crc32c_matches_the_standard_check_value() {
    assert_eq!(snappy::crc32c(b"123456789"), 0xe306_9283);
    assert_eq!(snappy::crc32c(b""), 0);
}

#[test]
fn chunks_encoded_once_decode_in_any_position_after_an_identifier() {
    let a = encode_kvs(&sample_updates());
    let b_msg = encode_sync_status(2);
    let mut a_chunks = BytesMut::new();
    snappy::frame_chunks(&a, &mut a_chunks);
    let mut b_chunks = BytesMut::new();
    snappy::frame_chunks(&b_msg, &mut b_chunks);
    let mut preamble = BytesMut::from(STREAM_IDENTIFIER);
    snappy::frame_chunks(&server_preamble(), &mut preamble);
    // Two streams that share the same chunk bytes in different orders and positions.
    for order in [
        vec![&a_chunks, &b_chunks],
        vec![&b_chunks, &b_chunks, &a_chunks],
    ] {
        let mut stream = preamble.to_vec();
        let mut want = Vec::new();
        for part in order {
            stream.extend_from_slice(part);
            want.push(if std::ptr::eq(part, &a_chunks) {
                ServerMessage::Kvs(sample_updates())
            } else {
                ServerMessage::SyncStatus(2)
            });
        }
        let mut d = ServerStreamDecoder::default();
        d.restart(COMPRESSION_SNAPPY).unwrap();
        d.feed(&stream);
        assert_eq!(drain_server(&mut d), want);
        assert_eq!(d.buffered(), 0);
    }
    // A message over 64 KiB spans several chunks; compressible data is compressed.
    assert!(a.len() > 65_536);
    assert!(a_chunks.len() < a.len() / 2);
    assert_eq!(
        snappy::unframe_all(&[STREAM_IDENTIFIER, &a_chunks[..]].concat()).unwrap(),
        a
    );
}

#[test]
fn incompressible_data_falls_back_to_uncompressed_chunks() {
    let data = pseudo_random(100_000, 42);
    let mut out = BytesMut::new();
    snappy::frame_chunks(&data, &mut out);
    assert_eq!(out[0], snappy::CHUNK_UNCOMPRESSED);
    assert_eq!(out.len(), data.len() + 2 * 8);
    let stream = [STREAM_IDENTIFIER, &out[..]].concat();
    assert_eq!(snappy::unframe_all(&stream).unwrap(), data);
    // The explicit uncompressed path decodes too, as does an empty input (no chunks).
    let mut plain = BytesMut::new();
    snappy::frame_chunks_uncompressed(b"hello", &mut plain);
    assert_eq!(
        snappy::unframe_all(&[STREAM_IDENTIFIER, &plain[..]].concat()).unwrap(),
        b"hello"
    );
    let mut none = BytesMut::new();
    snappy::frame_chunks(b"", &mut none);
    assert!(none.is_empty());
}

#[test]
fn snappy_framing_errors() {
    let mut chunks = BytesMut::new();
    snappy::frame_chunks(&encode_kvs(&sample_updates()), &mut chunks);
    // A flipped checksum byte.
    let mut bad = [STREAM_IDENTIFIER, &chunks[..]].concat();
    bad[STREAM_IDENTIFIER.len() + 4] ^= 1;
    assert!(matches!(
        snappy::unframe_all(&bad),
        Err(TyphaCodecError::CrcMismatch { .. })
    ));
    // No identifier first.
    assert_eq!(
        snappy::unframe_all(&chunks),
        Err(TyphaCodecError::MissingStreamIdentifier)
    );
    // A wrong identifier body.
    let mut id = STREAM_IDENTIFIER.to_vec();
    id[4] = b'S';
    assert_eq!(
        snappy::unframe_all(&id),
        Err(TyphaCodecError::BadStreamIdentifier)
    );
    // Reserved unskippable chunk type; skippable padding is fine.
    let reserved = [STREAM_IDENTIFIER, &[0x02, 0, 0, 0][..]].concat();
    assert_eq!(
        snappy::unframe_all(&reserved),
        Err(TyphaCodecError::ReservedChunkType(2))
    );
    let padding = [
        STREAM_IDENTIFIER,
        &[0xfe, 2, 0, 0, 9, 9][..],
        STREAM_IDENTIFIER,
    ]
    .concat();
    assert_eq!(snappy::unframe_all(&padding).unwrap(), b"");
    // A data chunk claiming more than a 64 KiB block can need is refused from its header.
    let huge = [STREAM_IDENTIFIER, &[0x00, 0xff, 0xff, 0xff][..]].concat();
    assert!(matches!(
        snappy::unframe_all(&huge),
        Err(TyphaCodecError::BadChunk(_))
    ));
}

// ---- Decoder restarts and the Felix client session ----

/// The whole of Path A as Typha sends it: plain hello + restart, then a binary snapshot (a
/// fresh snappy stream with its own preamble ending in a restart), then the live stream.
fn path_a_stream(hello: &ServerHello, updates: &[SerializedUpdate], ping: GoTime) -> Vec<Vec<u8>> {
    let mut s1 = server_preamble().to_vec();
    s1.extend_from_slice(&encode_server_hello(hello));
    s1.extend_from_slice(&encode_decoder_restart(&DecoderRestart {
        message: "enable compression: snappy;send binary snapshot".into(),
        compression: COMPRESSION_SNAPPY.into(),
    }));
    let mut snapshot_gob = server_preamble().to_vec();
    for chunk in updates.chunks(2) {
        snapshot_gob.extend_from_slice(&encode_kvs(chunk));
    }
    snapshot_gob.extend_from_slice(&encode_decoder_restart(&DecoderRestart {
        message: "End of compressed snapshot.".into(),
        compression: COMPRESSION_SNAPPY.into(),
    }));
    let snapshot = snappy::frame_stream(&snapshot_gob).to_vec();
    let mut live = snappy::frame_stream(&server_preamble()).to_vec();
    let mut shared = BytesMut::new();
    snappy::frame_chunks(&encode_sync_status(SYNC_STATUS_IN_SYNC), &mut shared);
    snappy::frame_chunks(&encode_ping(ping), &mut shared);
    live.extend_from_slice(&shared);
    vec![s1, snapshot, live]
}

#[test]
fn felix_session_follows_path_a() {
    let hello = ServerHello {
        version: "typha-rs".into(),
        syncer_type: SYNCER_FELIX.into(),
        supports_node_resource_updates: true,
        server_conn_id: 9,
    };
    let updates = sample_updates();
    let ping = GoTime::from_unix_nanos(1_000_000_000_000_000_000);
    let parts = path_a_stream(&hello, &updates, ping);
    let mut session = FelixClientSession::new(FelixClientConfig::felix("node-1", "", 5));
    let sent_hello = session.take_outbound();
    assert_eq!(
        decode_all_client_messages(&sent_hello).unwrap(),
        vec![ClientMessage::Hello(session.hello().clone())]
    );
    let mut events = Vec::new();
    let mut acks = 0;
    let mut client_stream = sent_hello.to_vec();
    for part in parts {
        // Each part arrives only after the previous restart was ACKed, as Typha waits for it.
        session.feed(&part);
        while let Some(ev) = session.poll_event().unwrap() {
            if matches!(ev, FelixClientEvent::DecoderRestart(_)) {
                acks += 1;
            }
            events.push(ev);
        }
        client_stream.extend_from_slice(&session.take_outbound());
    }
    assert_eq!(acks, 2);
    assert_eq!(session.compression(), COMPRESSION_SNAPPY);
    let kvs: Vec<SerializedUpdate> = events
        .iter()
        .filter_map(|e| match e {
            FelixClientEvent::Kvs(k) => Some(k.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(kvs, updates);
    assert!(matches!(events[0], FelixClientEvent::ServerHello(_)));
    assert_eq!(
        events[events.len() - 2..],
        [
            FelixClientEvent::SyncStatus(SYNC_STATUS_IN_SYNC),
            FelixClientEvent::Ping(ping)
        ]
    );
    // What the session sent: hello, two ACKs, a pong echoing the ping.
    let sent = decode_all_client_messages(&client_stream).unwrap();
    assert_eq!(sent.len(), 4);
    assert_eq!(sent[1..3], [ClientMessage::Ack, ClientMessage::Ack]);
    assert_eq!(
        sent[3],
        ClientMessage::Pong(Pong {
            ping_timestamp: ping,
            pong_timestamp: GoTime::ZERO
        })
    );
}

#[test]
fn a_binary_snapshot_alone_decodes_from_snappy() {
    let mut gob = server_preamble().to_vec();
    gob.extend_from_slice(&encode_kvs(&sample_updates()));
    let restart = DecoderRestart {
        message: "End of compressed snapshot.".into(),
        compression: COMPRESSION_SNAPPY.into(),
    };
    gob.extend_from_slice(&encode_decoder_restart(&restart));
    let mut stream = server_preamble_snappy().to_vec();
    assert!(stream.starts_with(STREAM_IDENTIFIER));
    let mut chunks = BytesMut::new();
    snappy::frame_chunks(&gob[server_preamble().len()..], &mut chunks);
    stream.extend_from_slice(&chunks);
    assert_eq!(
        decode_all_server_messages_from(&stream, COMPRESSION_SNAPPY).unwrap(),
        vec![
            ServerMessage::Kvs(sample_updates()),
            ServerMessage::DecoderRestart(restart)
        ]
    );
}

#[test]
fn restart_keeps_bytes_already_received() {
    // Everything in one read: the restart must switch framing for the bytes after it.
    let hello = ServerHello {
        syncer_type: SYNCER_FELIX.into(),
        supports_node_resource_updates: true,
        ..ServerHello::default()
    };
    let all: Vec<u8> = path_a_stream(&hello, &sample_updates(), GoTime::now()).concat();
    let got = decode_all_server_messages(&all).unwrap();
    assert_eq!(got.len(), 1 + 1 + 2 + 1 + 2);
}

#[test]
fn felix_session_refusals() {
    let cfg = FelixClientConfig::felix("n", SYNCER_BGP, 1);
    let hello = |syncer: &str, nru: bool| {
        let mut s = server_preamble().to_vec();
        s.extend_from_slice(&encode_server_hello(&ServerHello {
            syncer_type: syncer.into(),
            supports_node_resource_updates: nru,
            ..ServerHello::default()
        }));
        s
    };
    let run = |bytes: &[u8]| {
        let mut s = FelixClientSession::new(cfg.clone());
        s.feed(bytes);
        loop {
            match s.poll_event() {
                Ok(Some(_)) => continue,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    };
    assert!(run(&hello(SYNCER_BGP, true)).is_ok());
    assert_eq!(
        run(&hello("", true)),
        Err(FelixSessionError::SyncerTypeMismatch {
            want: SYNCER_BGP.into(),
            got: String::new()
        })
    );
    assert_eq!(
        run(&hello(SYNCER_BGP, false)),
        Err(FelixSessionError::NoNodeResourceUpdates)
    );
    let mut twice = hello(SYNCER_BGP, true);
    twice.extend_from_slice(&encode_server_hello(&ServerHello {
        syncer_type: SYNCER_BGP.into(),
        supports_node_resource_updates: true,
        ..ServerHello::default()
    }));
    assert_eq!(run(&twice), Err(FelixSessionError::DuplicateServerHello));
    let mut first_not_hello = server_preamble().to_vec();
    first_not_hello.extend_from_slice(&encode_sync_status(2));
    assert_eq!(
        run(&first_not_hello),
        Err(FelixSessionError::NoServerHello("MsgSyncStatus"))
    );
}

// ---- Fuzzing: arbitrary and mutated bytes never panic and never allocate by a peer's word ----

mod alloc_watch {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    /// Records the largest single allocation each thread makes, so a test can prove that no
    /// length read from the peer sized an allocation.
    pub struct Watch;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
        static COUNT: Cell<usize> = const { Cell::new(0) };
    }

    fn note(size: usize) {
        let _ = LARGEST.try_with(|l| {
            if size > l.get() {
                l.set(size)
            }
        });
        let _ = COUNT.try_with(|c| c.set(c.get() + 1));
    }

    pub fn reset() {
        LARGEST.with(|l| l.set(0));
        COUNT.with(|c| c.set(0));
    }

    /// Allocations (and reallocations) on this thread since the last reset.
    pub fn count() -> usize {
        COUNT.with(|c| c.get())
    }

    pub fn largest() -> usize {
        LARGEST.with(|l| l.get())
    }

    unsafe impl GlobalAlloc for Watch {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }
}

#[global_allocator]
static ALLOC: alloc_watch::Watch = alloc_watch::Watch;

/// Fuzz cap on one message: small, so an unbounded allocation would stand out.
const FUZZ_CAP: usize = 1 << 16;

/// Largest single allocation a decoder may make for `input` bytes: its buffers grow with the
/// input (doubling), a snappy chunk is at most 64 KiB, an update vector starts at most 1024
/// entries; nothing else may scale with what the bytes claim.
fn allowed_allocation(input: usize) -> usize {
    4 * input + 4 * FUZZ_CAP + 256 * 1024
}

/// Feeds `bytes` in pieces of `split` bytes, draining after each; returns whether it ended in
/// an error. Panics (fails) if any allocation exceeds the bound.
fn fuzz_client(bytes: &[u8], split: usize) -> bool {
    alloc_watch::reset();
    let mut d = ClientStreamDecoder::new(FUZZ_CAP);
    let mut failed = false;
    'outer: for piece in bytes.chunks(split.max(1)) {
        d.feed(piece);
        loop {
            match d.next_message() {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    assert_ne!(e, TyphaCodecError::IncompleteValue);
                    failed = true;
                    break 'outer;
                }
            }
        }
    }
    let largest = alloc_watch::largest();
    assert!(
        largest <= allowed_allocation(bytes.len()),
        "allocation of {largest} bytes for {} input bytes",
        bytes.len()
    );
    failed
}

fn fuzz_server(bytes: &[u8], split: usize, snappy_first: bool) -> bool {
    alloc_watch::reset();
    let mut d = ServerStreamDecoder::new(FUZZ_CAP);
    if snappy_first {
        d.restart(COMPRESSION_SNAPPY).unwrap();
    }
    let mut failed = false;
    'outer: for piece in bytes.chunks(split.max(1)) {
        d.feed(piece);
        loop {
            match d.next_message() {
                Ok(Some(ServerMessage::DecoderRestart(r))) => {
                    let _ = d.restart(&r.compression);
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    assert_ne!(e, TyphaCodecError::IncompleteValue);
                    failed = true;
                    break 'outer;
                }
            }
        }
    }
    let largest = alloc_watch::largest();
    assert!(
        largest <= allowed_allocation(bytes.len()),
        "allocation of {largest} bytes for {} input bytes",
        bytes.len()
    );
    failed
}

fn valid_client_stream() -> Vec<u8> {
    let mut enc = ClientEncoder::new();
    let mut out = BytesMut::new();
    enc.encode_hello(&felix_hello(), &mut out);
    enc.encode_ack(&mut out);
    enc.encode_pong(
        &Pong {
            ping_timestamp: GoTime::now(),
            pong_timestamp: GoTime::ZERO,
        },
        &mut out,
    );
    out.to_vec()
}

fn valid_server_stream() -> Vec<u8> {
    let hello = ServerHello {
        syncer_type: SYNCER_FELIX.into(),
        supports_node_resource_updates: true,
        ..ServerHello::default()
    };
    let mut small = sample_updates();
    small.truncate(2);
    path_a_stream(&hello, &small, GoTime::now()).concat()
}

/// Every server message on one plain stream, so mutations land in gob, not in snappy checksums.
fn valid_plain_server_stream() -> Vec<u8> {
    let mut v = server_preamble().to_vec();
    v.extend_from_slice(&encode_server_hello(&ServerHello {
        version: "v".into(),
        syncer_type: SYNCER_FELIX.into(),
        supports_node_resource_updates: true,
        server_conn_id: 3,
    }));
    let mut small = sample_updates();
    small.truncate(2);
    v.extend_from_slice(&encode_kvs(&small));
    v.extend_from_slice(&encode_sync_status(2));
    v.extend_from_slice(&encode_ping(GoTime::now()));
    v.extend_from_slice(&encode_decoder_restart(&DecoderRestart {
        message: "m".into(),
        compression: String::new(),
    }));
    v
}

#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
}

fn mutate(mut v: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        if v.is_empty() {
            break;
        }
        match m {
            Mutation::Set(at, byte) => {
                let n = v.len();
                v[at % n] = *byte;
            }
            Mutation::Insert(at, bytes) => {
                let at = at % (v.len() + 1);
                v.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove(at, len) => {
                let at = at % v.len();
                let end = (at + len).min(v.len());
                v.drain(at..end);
            }
            Mutation::Truncate(at) => {
                let n = v.len();
                v.truncate(at % n);
            }
        }
    }
    v
}

/// The per-batch encoders allocate nothing beyond their output: `encode_kvs_into` into a
/// reserved buffer makes no allocation at all, `encode_kvs` exactly one, and framing a message
/// into a reserved buffer none (after the thread's compressor exists).
#[test]
fn batch_encoding_is_allocation_free_into_a_reserved_buffer() {
    let updates: Vec<SerializedUpdate> = (0..1000)
        .map(|n| SerializedUpdate {
            key: format!("/calico/v1/policy/NetworkPolicy/ns/np-{n}"),
            value: Some(Bytes::from(format!("{{\"spec\":{{\"order\":{n}}}}}"))),
            revision: n.to_string(),
            v3_resource_version: String::new(),
            ttl_nanos: 0,
            update_type: UPDATE_TYPE_NEW,
        })
        .collect();
    let refs: Vec<SerializedUpdateRef<'_>> = updates.iter().map(Into::into).collect();
    let mut out = BytesMut::with_capacity(1 << 20);
    alloc_watch::reset();
    encode_kvs_into(&mut out, refs.iter().copied());
    assert_eq!(alloc_watch::count(), 0);
    alloc_watch::reset();
    let one = encode_kvs(&updates);
    assert_eq!(alloc_watch::count(), 1);
    assert_eq!(one, out.split().freeze());

    let mut framed = BytesMut::with_capacity(1 << 20);
    snappy::frame_chunks(&one, &mut framed);
    framed.clear();
    alloc_watch::reset();
    snappy::frame_chunks(&one, &mut framed);
    assert_eq!(alloc_watch::count(), 0);
    assert_eq!(
        snappy::unframe_all(&[STREAM_IDENTIFIER, &framed[..]].concat()).unwrap(),
        &one[..]
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            4 => (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Mutation::Set(a, b)),
            2 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..12))
                .prop_map(|(a, b)| Mutation::Insert(a, b)),
            1 => (any::<usize>(), 1usize..16).prop_map(|(a, l)| Mutation::Remove(a, l)),
            1 => any::<usize>().prop_map(Mutation::Truncate),
        ]
    }

    /// A gob-ish prefix makes arbitrary bytes reach past the first length check more often.
    fn arbitrary_stream() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..2048),
            proptest::collection::vec(any::<u8>(), 0..512).prop_map(|tail| {
                let mut v = u(tail.len() as u64);
                v.extend(tail);
                v
            }),
            proptest::collection::vec(any::<u8>(), 0..512)
                .prop_map(|tail| { [STREAM_IDENTIFIER, &tail[..]].concat() }),
        ]
    }

    // 3000 cases per property, 5 properties: 15,000 decoder runs per `cargo test`.
    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn arbitrary_bytes_into_the_client_decoder(bytes in arbitrary_stream(), split in 1usize..64) {
            fuzz_client(&bytes, split);
        }

        #[test]
        fn arbitrary_bytes_into_the_server_decoder(
            bytes in arbitrary_stream(), split in 1usize..64, snappy_first in any::<bool>()
        ) {
            fuzz_server(&bytes, split, snappy_first);
        }

        #[test]
        fn mutated_client_streams(muts in proptest::collection::vec(mutation(), 1..6), split in 1usize..200) {
            fuzz_client(&mutate(valid_client_stream(), &muts), split);
        }

        #[test]
        fn mutated_plain_server_streams(muts in proptest::collection::vec(mutation(), 1..6), split in 1usize..4096) {
            fuzz_server(&mutate(valid_plain_server_stream(), &muts), split, false);
        }

        #[test]
        fn mutated_server_streams(muts in proptest::collection::vec(mutation(), 1..6), split in 1usize..4096) {
            fuzz_server(&mutate(valid_server_stream(), &muts), split, false);
        }
    }

    #[test]
    fn the_unmutated_streams_decode_cleanly() {
        assert!(!fuzz_client(&valid_client_stream(), 7));
        assert!(!fuzz_server(&valid_server_stream(), 7, false));
        assert!(!fuzz_server(&valid_plain_server_stream(), 7, false));
    }
}
