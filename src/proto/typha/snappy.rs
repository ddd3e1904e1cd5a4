//! The snappy framing format (github.com/google/snappy `framing_format.txt`), as Go's
//! `github.com/golang/snappy` writer and reader use it around a gob stream.
//!
//! A stream is the stream-identifier chunk followed by data chunks. Each chunk is a type byte,
//! a 3-byte little-endian length, and that many bytes; a data chunk's bytes begin with the
//! masked CRC-32C (little-endian) of its *uncompressed* data, which is at most 64 KiB. Chunks
//! share no state, so a chunk sequence encoded once may follow any stream's identifier.
//!
//! Raw block compression and decompression come from the `snap` crate (the Rust port of the
//! reference implementation, already used for the native protocol). Its framing types are
//! `io::Read`/`io::Write` adapters that own their buffers and hide the checksum, which suits
//! neither encoding straight into a shared `BytesMut` nor incremental decoding of bytes as
//! they arrive, so the chunk layer and its CRC-32C live here.

use super::error::TyphaCodecError;
use bytes::{BufMut, BytesMut};
use std::cell::RefCell;

/// The stream-identifier chunk every snappy framing stream starts with.
pub const STREAM_IDENTIFIER: &[u8] = b"\xff\x06\x00\x00sNaPpY";

/// Chunk types.
pub const CHUNK_COMPRESSED: u8 = 0x00;
pub const CHUNK_UNCOMPRESSED: u8 = 0x01;
pub const CHUNK_PADDING: u8 = 0xfe;
pub const CHUNK_STREAM_IDENTIFIER: u8 = 0xff;

/// Most uncompressed bytes one data chunk may carry.
pub const MAX_CHUNK_INPUT: usize = 65_536;

/// Largest chunk body (checksum + data) this reader accepts for a data chunk: the worst case of
/// compressing 64 KiB. Skippable chunks may be up to the format's 16 MiB.
fn max_data_chunk_body() -> usize {
    4 + snap::raw::max_compress_len(MAX_CHUNK_INPUT)
}

/// Go's snappy writer stores a block uncompressed unless compression saves at least 1/8.
fn worth_compressing(input: usize, compressed: usize) -> bool {
    compressed < input - input / 8
}

const fn crc32c_tables() -> [[u32; 256]; 8] {
    const POLY: u32 = 0x82f6_3b78; // Castagnoli, reflected
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut j = 1;
        while j < 8 {
            let prev = t[j - 1][i];
            t[j][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            j += 1;
        }
        i += 1;
    }
    t
}

static CRC32C: [[u32; 256]; 8] = crc32c_tables();

/// CRC-32C (Castagnoli), slicing by 8.
pub fn crc32c(data: &[u8]) -> u32 {
    let t = &CRC32C;
    let mut crc = !0u32;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let lo = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) ^ crc;
        let hi = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        crc = t[0][((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The checksum stored in a data chunk: CRC-32C rotated and offset, as the format specifies.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

thread_local! {
    static ENCODER: RefCell<snap::raw::Encoder> = RefCell::new(snap::raw::Encoder::new());
}

fn put_chunk_header(out: &mut BytesMut, kind: u8, body_len: usize) {
    out.put_u8(kind);
    out.put_slice(&(body_len as u32).to_le_bytes()[..3]);
}

/// Appends `gob` to `out` as snappy data chunks of at most 64 KiB of input each (no stream
/// identifier). A block that compresses by less than 1/8, or fails to compress, is stored in an
/// uncompressed chunk, so the output always decodes to exactly `gob`.
pub fn frame_chunks(gob: &[u8], out: &mut BytesMut) {
    for block in gob.chunks(MAX_CHUNK_INPUT) {
        let crc = masked_crc32c(block);
        let start = out.len();
        let max = snap::raw::max_compress_len(block.len());
        out.resize(start + 8 + max, 0);
        let compressed =
            ENCODER.with(|e| e.borrow_mut().compress(block, &mut out[start + 8..]).ok());
        match compressed {
            Some(n) if n > 0 && worth_compressing(block.len(), n) => {
                out.truncate(start + 8 + n);
                let header = [
                    CHUNK_COMPRESSED,
                    (n + 4) as u8,
                    ((n + 4) >> 8) as u8,
                    ((n + 4) >> 16) as u8,
                ];
                out[start..start + 4].copy_from_slice(&header);
                out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
            }
            _ => {
                out.truncate(start);
                write_uncompressed_chunk(block, crc, out);
            }
        }
    }
}

fn write_uncompressed_chunk(block: &[u8], crc: u32, out: &mut BytesMut) {
    put_chunk_header(out, CHUNK_UNCOMPRESSED, block.len() + 4);
    out.put_u32_le(crc);
    out.put_slice(block);
}

/// Appends `gob` as uncompressed chunks only: the fallback path, exposed for tests.
pub fn frame_chunks_uncompressed(gob: &[u8], out: &mut BytesMut) {
    for block in gob.chunks(MAX_CHUNK_INPUT) {
        write_uncompressed_chunk(block, masked_crc32c(block), out);
    }
}

/// A complete framed stream: identifier then chunks.
pub fn frame_stream(gob: &[u8]) -> BytesMut {
    let mut out = BytesMut::with_capacity(STREAM_IDENTIFIER.len() + gob.len() + 64);
    out.put_slice(STREAM_IDENTIFIER);
    frame_chunks(gob, &mut out);
    out
}

/// Incremental reader of the framing format: takes raw bytes, yields the data they carry.
pub struct FrameReader {
    seen_identifier: bool,
    decoder: snap::raw::Decoder,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    pub fn new() -> Self {
        FrameReader {
            seen_identifier: false,
            decoder: snap::raw::Decoder::new(),
        }
    }

    /// Expects a new stream identifier next (a decoder restart).
    pub fn reset(&mut self) {
        self.seen_identifier = false;
    }

    /// Parses the chunk at the front of `raw`, appending its data (if any) to `out`. Returns the
    /// bytes consumed, or 0 when `raw` does not yet hold a whole chunk. Never reads or reserves
    /// more than one chunk's worth (bounded by the format's limits) whatever the header says.
    pub fn read_chunk(&mut self, raw: &[u8], out: &mut BytesMut) -> Result<usize, TyphaCodecError> {
        if raw.len() < 4 {
            return Ok(0);
        }
        let kind = raw[0];
        let len = raw[1] as usize | (raw[2] as usize) << 8 | (raw[3] as usize) << 16;
        if !self.seen_identifier && kind != CHUNK_STREAM_IDENTIFIER {
            return Err(TyphaCodecError::MissingStreamIdentifier);
        }
        match kind {
            CHUNK_STREAM_IDENTIFIER if len != 6 => {
                return Err(TyphaCodecError::BadStreamIdentifier)
            }
            CHUNK_COMPRESSED | CHUNK_UNCOMPRESSED => {
                if len < 4 {
                    return Err(TyphaCodecError::BadChunk(
                        "data chunk shorter than its checksum",
                    ));
                }
                if len > max_data_chunk_body() {
                    return Err(TyphaCodecError::BadChunk(
                        "data chunk longer than 64 KiB allows",
                    ));
                }
            }
            0x02..=0x7f => return Err(TyphaCodecError::ReservedChunkType(kind)),
            _ => {}
        }
        if raw.len() < 4 + len {
            return Ok(0);
        }
        let body = &raw[4..4 + len];
        match kind {
            CHUNK_STREAM_IDENTIFIER => {
                if body != &STREAM_IDENTIFIER[4..] {
                    return Err(TyphaCodecError::BadStreamIdentifier);
                }
                self.seen_identifier = true;
            }
            CHUNK_COMPRESSED | CHUNK_UNCOMPRESSED => {
                let expected = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
                let data = &body[4..];
                let start = out.len();
                if kind == CHUNK_UNCOMPRESSED {
                    if data.len() > MAX_CHUNK_INPUT {
                        return Err(TyphaCodecError::BadChunk("uncompressed chunk over 64 KiB"));
                    }
                    out.put_slice(data);
                } else {
                    let n = snap::raw::decompress_len(data)
                        .map_err(|_| TyphaCodecError::BadChunk("corrupt compressed data"))?;
                    if n > MAX_CHUNK_INPUT {
                        return Err(TyphaCodecError::BadChunk(
                            "chunk decompresses to over 64 KiB",
                        ));
                    }
                    out.resize(start + n, 0);
                    match self.decoder.decompress(data, &mut out[start..]) {
                        Ok(m) if m == n => {}
                        _ => {
                            out.truncate(start);
                            return Err(TyphaCodecError::BadChunk("corrupt compressed data"));
                        }
                    }
                }
                let actual = masked_crc32c(&out[start..]);
                if actual != expected {
                    out.truncate(start);
                    return Err(TyphaCodecError::CrcMismatch { expected, actual });
                }
            }
            // Padding and the other skippable types carry nothing.
            _ => {}
        }
        Ok(4 + len)
    }
}

/// Decodes a complete framed stream (identifier first) into the data it carries.
pub fn unframe_all(mut raw: &[u8]) -> Result<Vec<u8>, TyphaCodecError> {
    let mut reader = FrameReader::new();
    let mut out = BytesMut::new();
    while !raw.is_empty() {
        let n = reader.read_chunk(raw, &mut out)?;
        if n == 0 {
            return Err(TyphaCodecError::BadChunk("truncated chunk"));
        }
        raw = &raw[n..];
    }
    Ok(out.to_vec())
}
