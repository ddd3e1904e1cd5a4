//! The one error type of the gob and snappy codec.

use thiserror::Error;

/// Why a Typha-protocol byte stream could not be decoded. Every variant means the stream is
/// unusable from that point: the caller closes the connection.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TyphaCodecError {
    /// A gob message (or a snappy chunk) claims more bytes than the configured cap.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge { len: u64, max: usize },
    /// The bytes do not follow gob's encoding rules.
    #[error("malformed gob stream: {0}")]
    Malformed(&'static str),
    /// A type definition reuses an id, or names an id reserved for gob's built-in types.
    #[error("bad type definition for id {0}: duplicate or reserved")]
    BadTypeDefinition(i64),
    /// A value refers to a type id that was never defined on this stream.
    #[error("value uses undefined type id {0}")]
    UndefinedType(i64),
    /// The peer's type for a field we decode is not the type Typha declares for it.
    #[error("wrong wire type for field {field}")]
    TypeMismatch { field: &'static str },
    /// The interface value names a type that is not registered (Go's "name not registered for
    /// interface").
    #[error("name not registered for interface: {0:?}")]
    UnknownInterfaceName(String),
    /// A registered message type that this direction of the connection never carries.
    #[error("unexpected message {0} on this stream")]
    UnexpectedMessage(&'static str),
    /// The envelope carried no message (a nil interface).
    #[error("envelope without a message")]
    EmptyEnvelope,
    /// A `time.Time` in a form `MarshalBinary` never produces.
    #[error("invalid time.Time binary form")]
    BadTime,
    /// Too many gob type definitions on one stream.
    #[error("more than {0} type definitions on one stream")]
    TooManyTypes(usize),
    /// Snappy framing: the stream does not start with the `sNaPpY` identifier chunk.
    #[error("snappy stream does not start with the stream identifier")]
    MissingStreamIdentifier,
    /// Snappy framing: a stream-identifier chunk with the wrong body.
    #[error("bad snappy stream identifier")]
    BadStreamIdentifier,
    /// Snappy framing: a chunk type reserved as unskippable (0x02..=0x7f).
    #[error("reserved unskippable snappy chunk type {0:#04x}")]
    ReservedChunkType(u8),
    /// Snappy framing: a chunk too short, or whose data decompresses to more than 64 KiB.
    #[error("bad snappy chunk: {0}")]
    BadChunk(&'static str),
    /// Snappy framing: the masked CRC-32C of the chunk's data does not match.
    #[error("snappy chunk checksum mismatch: expected {expected:#010x}, computed {actual:#010x}")]
    CrcMismatch { expected: u32, actual: u32 },
    /// Internal: a value continues in a gob message that has not arrived yet. The decoders
    /// turn it into "need more input"; no public function returns it.
    #[doc(hidden)]
    #[error("value continues in a message not yet received")]
    IncompleteValue,
    /// A decoder restart named a compression algorithm this codec does not implement.
    #[error("unsupported compression algorithm {0:?}")]
    UnsupportedCompression(String),
}
