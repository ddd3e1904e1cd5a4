//! Framing, the one bincode configuration, compression, and the incremental frame decoder.

use super::messages::*;
use crate::model::SyncStatus;
use bincode::enc::Encoder;
use bincode::error::EncodeError;
use bincode::Encode;
use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// The length prefix before every payload.
pub const FRAME_HEADER_LEN: usize = 4;

/// Hard ceiling on a client→server payload. Clients only ever send a `Hello` and `Pong`s; the
/// configurable limit can be lower, never higher. Decoding never claims more memory than this.
pub const MAX_CLIENT_FRAME: usize = 1 << 20;

/// What decoding one client message may claim. bincode reserves a container's full length up
/// front but later charges elements less than they hold, so real allocation can reach about
/// 1.7 times the claim limit; a quarter of [`MAX_CLIENT_FRAME`] keeps it under that frame
/// limit. A `Hello` needs a few hundred bytes.
const CLIENT_DECODE_CLAIM: usize = MAX_CLIENT_FRAME / 4;

/// Hard ceiling on a server→client payload after decompression. The server's own frames stay
/// far below it (snapshot chunks are ~256 KiB); a receiver refuses anything larger.
pub const MAX_SERVER_FRAME: usize = 64 << 20;

/// The one bincode configuration of protocol v1: little-endian, variable-length integers.
pub fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn config_limited<const N: usize>() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<N>,
> {
    bincode::config::standard().with_limit::<N>()
}

#[derive(Debug, Error)]
pub enum ProtoError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Malformed(#[from] bincode::error::DecodeError),
    #[error("{trailing} unexpected bytes after the message")]
    TrailingBytes { trailing: usize },
    #[error("decompression with {codec:?} failed: {reason}")]
    Decompress { codec: Codec, reason: String },
    #[error("compressed frame inside a compressed frame")]
    NestedCompression,
}

/// Encodes a server→client message as one frame, refusing a payload above
/// [`MAX_SERVER_FRAME`] (which no client accepts) with [`ProtoError::FrameTooLarge`]. The
/// writer stops at the limit, so an oversized message costs no more memory than the limit.
pub fn encode_server_frame<M: Encode>(msg: &M) -> Result<Bytes, ProtoError> {
    let mut w = FrameWriter::with_capacity(256);
    w.limit = MAX_SERVER_FRAME;
    match bincode::encode_into_writer(msg, &mut w, config()) {
        Ok(()) => Ok(w.finish()),
        Err(_) if w.over_limit => Err(ProtoError::FrameTooLarge {
            len: w.attempted,
            max: MAX_SERVER_FRAME,
        }),
        Err(e) => {
            // Only a bug in a manual `Encode` impl gets here; the codec tests exercise them.
            debug_assert!(false, "encoding failed: {e}");
            Ok(w.finish())
        }
    }
}

/// Encodes `msg` as one frame: the little-endian `u32` payload length, then the payload.
pub fn encode_frame<M: Encode>(msg: &M) -> Bytes {
    let mut w = FrameWriter::with_capacity(256);
    // Encoding into memory cannot fail for our types; an error would be a bug in a manual
    // `Encode` impl, which the codec tests exercise.
    if let Err(e) = bincode::encode_into_writer(msg, &mut w, config()) {
        debug_assert!(false, "encoding failed: {e}");
    }
    w.finish()
}

/// Encodes the payload of `msg` (no frame header).
pub fn encode_payload<M: Encode>(msg: &M) -> Vec<u8> {
    bincode::encode_to_vec(msg, config()).unwrap_or_default()
}

/// Builds a frame in place: reserves the length prefix, lets bincode write the payload, then
/// fills the prefix in. One allocation per frame.
pub struct FrameWriter {
    buf: BytesMut,
    /// Payload bytes beyond which a write fails (`usize::MAX`: no limit).
    limit: usize,
    over_limit: bool,
    /// Payload length the failed write would have reached.
    attempted: usize,
}

impl FrameWriter {
    pub fn with_capacity(cap: usize) -> Self {
        let mut buf = BytesMut::with_capacity(cap + FRAME_HEADER_LEN);
        buf.put_u32_le(0);
        FrameWriter {
            buf,
            limit: usize::MAX,
            over_limit: false,
            attempted: 0,
        }
    }

    pub fn payload_len(&self) -> usize {
        self.buf.len() - FRAME_HEADER_LEN
    }

    pub fn finish(mut self) -> Bytes {
        let len = self.payload_len() as u32;
        self.buf[..FRAME_HEADER_LEN].copy_from_slice(&len.to_le_bytes());
        self.buf.freeze()
    }
}

impl bincode::enc::write::Writer for FrameWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let len = self.payload_len().saturating_add(bytes.len());
        if len > self.limit {
            self.over_limit = true;
            self.attempted = len;
            return Err(EncodeError::Other("frame over the size limit"));
        }
        self.buf.extend_from_slice(bytes);
        Ok(())
    }
}

/// An `Updates` message encoded from shared model values.
pub struct UpdatesRef<'a> {
    pub first_seq: u64,
    pub last_seq: u64,
    pub received_at: u64,
    pub updates: UpdateSeq<'a>,
}

impl Encode for UpdatesRef<'_> {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        server_tag::UPDATES.encode(e)?;
        self.first_seq.encode(e)?;
        self.last_seq.encode(e)?;
        self.received_at.encode(e)?;
        self.updates.encode(e)
    }
}

/// A `SnapshotChunk` message encoded from shared model values.
pub struct SnapshotChunkRef<'a> {
    pub seq: u64,
    pub updates: UpdateSeq<'a>,
}

impl Encode for SnapshotChunkRef<'_> {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        server_tag::SNAPSHOT_CHUNK.encode(e)?;
        self.seq.encode(e)?;
        self.updates.encode(e)
    }
}

pub fn sync_status_frame(status: SyncStatus) -> Bytes {
    encode_frame(&ServerMessage::SyncStatus(status))
}

pub fn goodbye_frame(reason: GoodbyeReason, message: &str) -> Bytes {
    encode_frame(&ServerMessage::Goodbye {
        reason,
        message: message.to_owned(),
    })
}

pub fn ping_frame(id: u64, sent_at: u64) -> Bytes {
    encode_frame(&ServerMessage::Ping { id, sent_at })
}

/// Compresses a frame's payload with `codec` and wraps it in a `Compressed` frame. Returns `None`
/// when that would not save bytes, or when the compressor fails, so the caller keeps the plain
/// frame: a shared frame goes to every client of its kind, and a broken one would fail them all.
pub fn compress_frame(frame: &Bytes, codec: Codec) -> Option<Bytes> {
    compress_frame_with(frame, codec, compress)
}

/// [`compress_frame`] with the compressor passed in: the seam through which tests make it fail.
pub fn compress_frame_with(
    frame: &Bytes,
    codec: Codec,
    compressor: impl FnOnce(Codec, &[u8]) -> std::io::Result<Vec<u8>>,
) -> Option<Bytes> {
    let payload = frame.get(FRAME_HEADER_LEN..)?;
    let data = match compressor(codec, payload) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(?codec, error = %e, bytes = payload.len(),
                "compression failed; sending the frame uncompressed");
            return None;
        }
    };
    let len = u32::try_from(payload.len()).ok()?;
    // Variant tag, codec, varint length and the data's length prefix: a dozen bytes at most.
    if data.len() + 12 >= payload.len() {
        return None;
    }
    Some(encode_frame(&CompressedRef {
        codec,
        uncompressed_len: len,
        data: &data,
    }))
}

struct CompressedRef<'a> {
    codec: Codec,
    uncompressed_len: u32,
    data: &'a [u8],
}

impl Encode for CompressedRef<'_> {
    fn encode<E: Encoder>(&self, e: &mut E) -> Result<(), EncodeError> {
        server_tag::COMPRESSED.encode(e)?;
        self.codec.encode(e)?;
        self.uncompressed_len.encode(e)?;
        self.data.encode(e)
    }
}

/// zstd level used for shared frames. Each frame is compressed once for every client, so a
/// level above zstd's fastest pays off; 3 is zstd's default and measured in
/// `docs/benchmarks-codecs-and-micro.md`.
pub const ZSTD_LEVEL: i32 = 3;

/// Compresses `data` in `codec`'s wire format (§6 of docs/protocol.md).
pub fn compress(codec: Codec, data: &[u8]) -> std::io::Result<Vec<u8>> {
    match codec {
        Codec::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL),
        Codec::Lz4 => Ok(lz4_flex::block::compress(data)),
        Codec::Snappy => snap::raw::Encoder::new()
            .compress_vec(data)
            .map_err(std::io::Error::other),
    }
}

/// Decompresses exactly `expected_len` bytes, refusing anything above `max`.
pub fn decompress(
    codec: Codec,
    data: &[u8],
    expected_len: usize,
    max: usize,
) -> Result<Vec<u8>, ProtoError> {
    let err = |reason: String| ProtoError::Decompress { codec, reason };
    if expected_len > max {
        return Err(ProtoError::FrameTooLarge {
            len: expected_len,
            max,
        });
    }
    let out = match codec {
        Codec::Zstd => zstd_decompress(data, expected_len).map_err(|e| err(e.to_string()))?,
        Codec::Lz4 => {
            lz4_flex::block::decompress(data, expected_len).map_err(|e| err(e.to_string()))?
        }
        Codec::Snappy => {
            let n = snap::raw::decompress_len(data).map_err(|e| err(e.to_string()))?;
            if n != expected_len {
                return Err(err(format!("length {n}, header said {expected_len}")));
            }
            snap::raw::Decoder::new()
                .decompress_vec(data)
                .map_err(|e| err(e.to_string()))?
        }
    };
    if out.len() != expected_len {
        return Err(err(format!(
            "produced {} bytes, header said {expected_len}",
            out.len()
        )));
    }
    Ok(out)
}

/// zstd with one decompression context per thread: creating a context per frame was a third of
/// a load-test client's CPU.
fn zstd_decompress(data: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static CTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    CTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(zstd::bulk::Decompressor::new()?);
        }
        match c.as_mut() {
            Some(d) => d.decompress(data, capacity),
            None => zstd::bulk::decompress(data, capacity),
        }
    })
}

fn decode_exact<T: bincode::Decode<()>, const N: usize>(payload: &[u8]) -> Result<T, ProtoError> {
    let (msg, used) = bincode::decode_from_slice(payload, config_limited::<N>())?;
    if used != payload.len() {
        return Err(ProtoError::TrailingBytes {
            trailing: payload.len() - used,
        });
    }
    Ok(msg)
}

/// Decodes one client→server payload.
pub fn decode_client_message(payload: &[u8]) -> Result<ClientMessage, ProtoError> {
    if payload.len() > MAX_CLIENT_FRAME {
        return Err(ProtoError::FrameTooLarge {
            len: payload.len(),
            max: MAX_CLIENT_FRAME,
        });
    }
    decode_exact::<ClientMessage, CLIENT_DECODE_CLAIM>(payload)
}

/// Reads the protocol version of a payload that claims to be a `Hello`, whatever follows it.
pub fn peek_hello_version(payload: &[u8]) -> Option<ProtocolVersion> {
    let (tag, used): (u32, usize) =
        bincode::decode_from_slice(payload, config_limited::<16>()).ok()?;
    if tag != 0 {
        return None;
    }
    let (p, _): (HelloPrefix, usize) =
        bincode::decode_from_slice(&payload[used..], config_limited::<16>()).ok()?;
    Some(p.protocol_version)
}

/// Decodes one server→client payload, transparently decompressing a `Compressed` frame.
/// `max` bounds the payload after decompression (clamped to [`MAX_SERVER_FRAME`]).
pub fn decode_server_message(payload: &[u8], max: usize) -> Result<ServerMessage, ProtoError> {
    let max = max.min(MAX_SERVER_FRAME);
    if payload.len() > max {
        return Err(ProtoError::FrameTooLarge {
            len: payload.len(),
            max,
        });
    }
    match decode_server_bounded(payload, max)? {
        ServerMessage::Compressed {
            codec,
            uncompressed_len,
            data,
        } => {
            let inner = decompress(codec, &data, uncompressed_len as usize, max)?;
            drop(data);
            match decode_server_bounded(&inner, max)? {
                ServerMessage::Compressed { .. } => Err(ProtoError::NestedCompression),
                m => Ok(m),
            }
        }
        m => Ok(m),
    }
}

/// Decodes with the smallest claim limit that covers `max`, so a receiver that set a small
/// frame limit is not made to reserve memory for a large one.
fn decode_server_bounded(payload: &[u8], max: usize) -> Result<ServerMessage, ProtoError> {
    const MIB: usize = 1 << 20;
    if max <= MIB {
        decode_exact::<ServerMessage, MIB>(payload)
    } else if max <= 16 * MIB {
        decode_exact::<ServerMessage, { 16 * MIB }>(payload)
    } else {
        decode_exact::<ServerMessage, MAX_SERVER_FRAME>(payload)
    }
}

/// Splits a byte stream into frame payloads, whatever the read boundaries.
///
/// Complete frames are handed out straight from the caller's buffer; only the tail of a frame
/// split across reads is copied, into a buffer that grows to that frame's size at most. A length
/// above the limit is an error as soon as its four bytes arrive, before anything is buffered.
#[derive(Debug)]
pub struct FrameDecoder {
    partial: Vec<u8>,
    max_frame: usize,
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> Self {
        FrameDecoder {
            partial: Vec::new(),
            max_frame,
        }
    }

    /// Bytes held of an incomplete frame.
    pub fn buffered(&self) -> usize {
        self.partial.len()
    }

    /// Feeds `input`, calling `on_frame` with each complete payload. Stops at the first error,
    /// from the framing or from `on_frame`; the decoder should then be discarded.
    pub fn feed<E>(
        &mut self,
        mut input: &[u8],
        mut on_frame: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), FeedError<E>> {
        if !self.partial.is_empty() {
            // Complete the header first, then the payload, taking only what this frame needs.
            if self.partial.len() < FRAME_HEADER_LEN {
                let take = (FRAME_HEADER_LEN - self.partial.len()).min(input.len());
                self.partial.extend_from_slice(&input[..take]);
                input = &input[take..];
                if self.partial.len() < FRAME_HEADER_LEN {
                    return Ok(());
                }
                self.check_len(self.header_len())?;
            }
            let total = FRAME_HEADER_LEN + self.header_len();
            let take = (total - self.partial.len()).min(input.len());
            self.partial.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.partial.len() < total {
                return Ok(());
            }
            let frame = std::mem::take(&mut self.partial);
            on_frame(&frame[FRAME_HEADER_LEN..]).map_err(FeedError::Handler)?;
        }
        while input.len() >= FRAME_HEADER_LEN {
            let len = u32::from_le_bytes([input[0], input[1], input[2], input[3]]) as usize;
            self.check_len(len)?;
            if input.len() < FRAME_HEADER_LEN + len {
                break;
            }
            on_frame(&input[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len])
                .map_err(FeedError::Handler)?;
            input = &input[FRAME_HEADER_LEN + len..];
        }
        if !input.is_empty() {
            if input.len() >= FRAME_HEADER_LEN {
                let len = u32::from_le_bytes([input[0], input[1], input[2], input[3]]) as usize;
                self.partial.reserve_exact(FRAME_HEADER_LEN + len);
            }
            self.partial.extend_from_slice(input);
        }
        Ok(())
    }

    fn header_len(&self) -> usize {
        u32::from_le_bytes([
            self.partial[0],
            self.partial[1],
            self.partial[2],
            self.partial[3],
        ]) as usize
    }

    fn check_len<E>(&self, len: usize) -> Result<(), FeedError<E>> {
        if len > self.max_frame {
            return Err(FeedError::Frame(ProtoError::FrameTooLarge {
                len,
                max: self.max_frame,
            }));
        }
        Ok(())
    }
}

#[derive(Debug, Error)]
pub enum FeedError<E> {
    #[error(transparent)]
    Frame(ProtoError),
    #[error("{0}")]
    Handler(E),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SyncStatus;

    fn big_frame() -> Bytes {
        encode_frame(&ServerMessage::Goodbye {
            reason: GoodbyeReason::Shutdown,
            message: "x".repeat(4096),
        })
    }

    #[test]
    fn a_failed_compression_keeps_the_plain_frame() {
        let frame = big_frame();
        for codec in [Codec::Zstd, Codec::Lz4, Codec::Snappy] {
            // The real compressor wraps the frame and round-trips.
            let z = compress_frame(&frame, codec).unwrap();
            assert!(z.len() < frame.len());
            let got = decode_server_message(&z[FRAME_HEADER_LEN..], MAX_SERVER_FRAME).unwrap();
            assert_eq!(
                got,
                decode_server_message(&frame[FRAME_HEADER_LEN..], MAX_SERVER_FRAME).unwrap()
            );
            // A failing one yields nothing to send, so the caller sends the plain frame; it
            // used to yield a `Compressed` frame with empty data, which no client decodes.
            let failed =
                compress_frame_with(&frame, codec, |_, _| Err(std::io::Error::other("injected")));
            assert_eq!(failed, None, "{codec:?}");
        }
    }

    #[test]
    fn server_frames_above_the_limit_are_refused() {
        let ok = encode_server_frame(&ServerMessage::SyncStatus(SyncStatus::InSync)).unwrap();
        assert_eq!(
            ok,
            encode_frame(&ServerMessage::SyncStatus(SyncStatus::InSync))
        );
        // A payload of exactly the limit passes; one byte more does not.
        // Tag, reason, the string length as `fc` + u32, then the string.
        let fits = MAX_SERVER_FRAME - 1 - 1 - 5;
        let m = ServerMessage::Goodbye {
            reason: GoodbyeReason::Shutdown,
            message: "g".repeat(fits),
        };
        assert_eq!(
            encode_server_frame(&m).unwrap().len(),
            MAX_SERVER_FRAME + FRAME_HEADER_LEN
        );
        let m = ServerMessage::Goodbye {
            reason: GoodbyeReason::Shutdown,
            message: "g".repeat(fits + 1),
        };
        assert!(matches!(
            encode_server_frame(&m),
            Err(ProtoError::FrameTooLarge {
                max: MAX_SERVER_FRAME,
                ..
            })
        ));
    }
}
