//! Zero-copy decoding of the two bulk server messages (`SnapshotChunk`, `Updates`): keys,
//! values and revisions are borrowed from the payload, one update at a time, so a receiver that
//! only hashes or counts them allocates nothing per entry. Same wire format as the owned types.

use super::codec::{ProtoError, MAX_SERVER_FRAME};
use super::messages::{server_tag, Codec};
use crate::model::UpdateType;
use bincode::error::DecodeError;

fn cfg() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_SERVER_FRAME>,
> {
    bincode::config::standard().with_limit::<MAX_SERVER_FRAME>()
}

/// One update borrowed from a payload; the layout of [`WireUpdate`](super::WireUpdate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::BorrowDecode)]
pub struct WireUpdateRef<'a> {
    pub key: &'a str,
    pub value: Option<&'a [u8]>,
    pub revision: &'a str,
    pub update_type: UpdateType,
}

/// A server payload, decoded only as far as the bulk messages need.
#[derive(Debug)]
pub enum ServerFrameRef<'a> {
    SnapshotChunk {
        seq: u64,
        updates: UpdatesIter<'a>,
    },
    Updates {
        first_seq: u64,
        last_seq: u64,
        received_at: u64,
        updates: UpdatesIter<'a>,
    },
    /// A `Compressed` frame: decompress `data` and decode the result again.
    Compressed {
        codec: Codec,
        uncompressed_len: u32,
        data: &'a [u8],
    },
    /// Any other message: decode it with [`decode_server_message`](super::decode_server_message).
    Other,
}

/// The updates of a bulk message, decoded lazily. Iterate to the end, then call
/// [`finish`](Self::finish) to refuse trailing bytes.
#[derive(Debug)]
pub struct UpdatesIter<'a> {
    rest: &'a [u8],
    remaining: u64,
}

impl<'a> UpdatesIter<'a> {
    /// Updates not yet decoded, as the message declares them.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Checks that the message ended with its last update.
    pub fn finish(self) -> Result<(), ProtoError> {
        if self.remaining > 0 {
            return Err(ProtoError::Malformed(DecodeError::UnexpectedEnd {
                additional: self.remaining as usize,
            }));
        }
        if !self.rest.is_empty() {
            return Err(ProtoError::TrailingBytes {
                trailing: self.rest.len(),
            });
        }
        Ok(())
    }
}

impl<'a> Iterator for UpdatesIter<'a> {
    type Item = Result<WireUpdateRef<'a>, ProtoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        match bincode::borrow_decode_from_slice::<WireUpdateRef<'a>, _>(self.rest, cfg()) {
            Ok((u, used)) => {
                self.rest = &self.rest[used..];
                self.remaining -= 1;
                Some(Ok(u))
            }
            Err(e) => {
                // Stop here: the rest cannot be framed.
                self.remaining = 0;
                Some(Err(ProtoError::Malformed(e)))
            }
        }
    }
}

/// Reads one value and advances `rest` past it.
fn take<'a, T: bincode::BorrowDecode<'a, ()>>(rest: &mut &'a [u8]) -> Result<T, ProtoError> {
    let (v, used) = bincode::borrow_decode_from_slice::<T, _>(rest, cfg())?;
    *rest = &rest[used..];
    Ok(v)
}

/// Decodes the head of a server payload without copying: a bulk message's fixed fields and a
/// lazy iterator over its updates, or a compressed frame's borrowed data. `max` bounds the
/// payload (clamped to [`MAX_SERVER_FRAME`]).
pub fn decode_server_frame_ref(
    payload: &[u8],
    max: usize,
) -> Result<ServerFrameRef<'_>, ProtoError> {
    let max = max.min(MAX_SERVER_FRAME);
    if payload.len() > max {
        return Err(ProtoError::FrameTooLarge {
            len: payload.len(),
            max,
        });
    }
    let mut rest = payload;
    let tag: u32 = take(&mut rest)?;
    Ok(match tag {
        server_tag::SNAPSHOT_CHUNK => {
            let seq = take(&mut rest)?;
            let remaining = take(&mut rest)?;
            ServerFrameRef::SnapshotChunk {
                seq,
                updates: UpdatesIter { rest, remaining },
            }
        }
        server_tag::UPDATES => {
            let first_seq = take(&mut rest)?;
            let last_seq = take(&mut rest)?;
            let received_at = take(&mut rest)?;
            let remaining = take(&mut rest)?;
            ServerFrameRef::Updates {
                first_seq,
                last_seq,
                received_at,
                updates: UpdatesIter { rest, remaining },
            }
        }
        server_tag::COMPRESSED => {
            let codec = take(&mut rest)?;
            let uncompressed_len = take(&mut rest)?;
            let data: &[u8] = take(&mut rest)?;
            if !rest.is_empty() {
                return Err(ProtoError::TrailingBytes {
                    trailing: rest.len(),
                });
            }
            ServerFrameRef::Compressed {
                codec,
                uncompressed_len,
                data,
            }
        }
        _ => ServerFrameRef::Other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Entry, Key, StateMap, SyncStatus, SyncerType, Update};
    use crate::proto::encode::{encode_batch_part, encode_snapshot, EncodeOptions};
    use crate::proto::{decode_server_message, ServerMessage, FRAME_HEADER_LEN};
    use std::sync::Arc;

    fn owned(payload: &[u8]) -> ServerMessage {
        decode_server_message(payload, MAX_SERVER_FRAME).unwrap()
    }

    fn collect(it: UpdatesIter<'_>) -> Vec<(String, Option<Vec<u8>>, String, UpdateType)> {
        let mut it = it;
        let v = it
            .by_ref()
            .map(|u| {
                let u = u.unwrap();
                (
                    u.key.to_owned(),
                    u.value.map(<[u8]>::to_vec),
                    u.revision.to_owned(),
                    u.update_type,
                )
            })
            .collect();
        it.finish().unwrap();
        v
    }

    #[test]
    fn borrowed_matches_owned() {
        let mut m = StateMap::new();
        for i in 0..50 {
            let k: Key = format!("/calico/v1/host/n{i}/config/X").into();
            m.insert(
                k,
                Arc::new(Entry {
                    value: format!("v{i}").into(),
                    revision: format!("{i}"),
                }),
            );
        }
        let snap = encode_snapshot(&m, 9, SyncStatus::InSync, SyncerType::Felix, None, 200);
        for f in &snap.frames {
            let p = &f[FRAME_HEADER_LEN..];
            match (
                decode_server_frame_ref(p, MAX_SERVER_FRAME).unwrap(),
                owned(p),
            ) {
                (
                    ServerFrameRef::SnapshotChunk { seq, updates },
                    ServerMessage::SnapshotChunk {
                        seq: s2,
                        updates: u2,
                    },
                ) => {
                    assert_eq!(seq, s2);
                    let got = collect(updates);
                    let want: Vec<_> = u2
                        .into_iter()
                        .map(|u| (u.key, u.value, u.revision, u.update_type))
                        .collect();
                    assert_eq!(got, want);
                }
                (ServerFrameRef::Other, ServerMessage::SnapshotEnd { .. }) => {}
                (a, b) => panic!("{a:?} vs {b:?}"),
            }
        }
        let ups = [
            Update {
                key: "/a".into(),
                value: Some(bytes::Bytes::from_static(b"x")),
                revision: "1".into(),
                update_type: UpdateType::Updated,
            },
            Update {
                key: "/b".into(),
                value: None,
                revision: "2".into(),
                update_type: UpdateType::Deleted,
            },
        ];
        let refs: Vec<&Update> = ups.iter().collect();
        let opts = EncodeOptions {
            codec: Some(Codec::Zstd),
            compress_min_bytes: 0,
            snapshot_chunk_bytes: 300,
        };
        let part = encode_batch_part(3, 4, 77, &refs, None, &opts).unwrap();
        let p = &part.plain()[FRAME_HEADER_LEN..];
        let ServerFrameRef::Updates {
            first_seq: 3,
            last_seq: 4,
            received_at: 77,
            updates,
        } = decode_server_frame_ref(p, MAX_SERVER_FRAME).unwrap()
        else {
            panic!("not Updates")
        };
        assert_eq!(
            collect(updates),
            vec![
                (
                    "/a".into(),
                    Some(b"x".to_vec()),
                    "1".into(),
                    UpdateType::Updated
                ),
                ("/b".into(), None, "2".into(), UpdateType::Deleted)
            ]
        );
        if let Some(z) = part.compressed() {
            let ServerFrameRef::Compressed { codec, .. } =
                decode_server_frame_ref(&z[FRAME_HEADER_LEN..], MAX_SERVER_FRAME).unwrap()
            else {
                panic!("not Compressed")
            };
            assert_eq!(codec, Codec::Zstd);
        }
        // Truncated and padded payloads are refused.
        let ServerFrameRef::Updates { updates, .. } =
            decode_server_frame_ref(&p[..p.len() - 1], MAX_SERVER_FRAME).unwrap()
        else {
            panic!()
        };
        let mut it = updates;
        assert!(it.by_ref().any(|u| u.is_err()));
        let mut padded = p.to_vec();
        padded.push(0);
        let ServerFrameRef::Updates { updates, .. } =
            decode_server_frame_ref(&padded, MAX_SERVER_FRAME).unwrap()
        else {
            panic!()
        };
        let mut it = updates;
        assert!(it.by_ref().all(|u| u.is_ok()));
        assert!(matches!(
            it.finish(),
            Err(ProtoError::TrailingBytes { trailing: 1 })
        ));
    }
}
