//! gob's primitive encodings: unsigned and signed integers, strings, and the readers that
//! parse them without trusting any length they read.

use super::error::TyphaCodecError;
use bytes::BufMut;

/// Built-in gob type ids (Go `encoding/gob/type.go`).
pub(crate) const T_BOOL: i64 = 1;
pub(crate) const T_INT: i64 = 2;
pub(crate) const T_UINT: i64 = 3;
pub(crate) const T_FLOAT: i64 = 4;
pub(crate) const T_BYTES: i64 = 5;
pub(crate) const T_STRING: i64 = 6;
pub(crate) const T_COMPLEX: i64 = 7;
pub(crate) const T_INTERFACE: i64 = 8;
/// The first id a user-defined type may have.
pub(crate) const FIRST_USER_ID: i64 = 64;

/// Encoded length of a gob unsigned integer.
#[inline]
pub(crate) fn uint_len(x: u64) -> usize {
    if x < 0x80 {
        1
    } else {
        1 + (8 - (x.leading_zeros() as usize) / 8)
    }
}

/// gob's signed-to-unsigned mapping: the sign goes in bit 0.
#[inline]
pub(crate) fn zigzag(i: i64) -> u64 {
    if i < 0 {
        ((!i as u64) << 1) | 1
    } else {
        (i as u64) << 1
    }
}

#[inline]
pub(crate) fn unzigzag(u: u64) -> i64 {
    if u & 1 == 1 {
        !((u >> 1) as i64)
    } else {
        (u >> 1) as i64
    }
}

#[inline]
pub(crate) fn int_len(i: i64) -> usize {
    uint_len(zigzag(i))
}

/// Encoded length of a string or byte slice: its length then its bytes.
#[inline]
pub(crate) fn bytes_len(n: usize) -> usize {
    uint_len(n as u64) + n
}

/// Writes a gob unsigned integer: below 128 one byte; otherwise the negated byte count followed
/// by the big-endian bytes without leading zeros.
#[inline]
pub(crate) fn put_uint<B: BufMut + ?Sized>(out: &mut B, x: u64) {
    if x < 0x80 {
        out.put_u8(x as u8);
    } else {
        let n = 8 - (x.leading_zeros() as usize) / 8;
        out.put_u8((256 - n) as u8);
        out.put_slice(&x.to_be_bytes()[8 - n..]);
    }
}

#[inline]
pub(crate) fn put_int<B: BufMut + ?Sized>(out: &mut B, i: i64) {
    put_uint(out, zigzag(i));
}

#[inline]
pub(crate) fn put_bytes<B: BufMut + ?Sized>(out: &mut B, b: &[u8]) {
    put_uint(out, b.len() as u64);
    out.put_slice(b);
}

/// Writes a struct value field by field. gob sends a field as the delta from the previous
/// field number followed by its value, omits zero values, and ends the struct with delta 0.
pub(crate) struct StructWriter<'a> {
    out: &'a mut Vec<u8>,
    last: i64,
}

impl<'a> StructWriter<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        StructWriter { out, last: -1 }
    }

    fn field(&mut self, n: i64) {
        put_uint(self.out, (n - self.last) as u64);
        self.last = n;
    }

    pub(crate) fn string(&mut self, n: i64, s: &str) {
        if !s.is_empty() {
            self.field(n);
            put_bytes(self.out, s.as_bytes());
        }
    }

    pub(crate) fn bool(&mut self, n: i64, b: bool) {
        if b {
            self.field(n);
            put_uint(self.out, 1);
        }
    }

    pub(crate) fn uint(&mut self, n: i64, x: u64) {
        if x != 0 {
            self.field(n);
            put_uint(self.out, x);
        }
    }

    pub(crate) fn string_slice(&mut self, n: i64, v: &[String]) {
        if !v.is_empty() {
            self.field(n);
            put_uint(self.out, v.len() as u64);
            for s in v {
                // Slice elements are sent even when empty.
                put_bytes(self.out, s.as_bytes());
            }
        }
    }

    /// A `time.Time` field: a GobEncoder, sent as its `MarshalBinary` bytes unless zero.
    pub(crate) fn time(&mut self, n: i64, t: &super::messages::GoTime) {
        if !t.is_zero() {
            self.field(n);
            let (b, len) = t.to_binary();
            put_bytes(self.out, &b[..len]);
        }
    }

    pub(crate) fn finish(self) {
        put_uint(self.out, 0);
    }
}

/// A cursor over one complete gob message. Every read checks the bytes that remain, so a
/// length read from the peer never sizes anything beyond the message itself.
#[derive(Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    #[inline]
    pub(crate) fn read_u8(&mut self) -> Result<u8, TyphaCodecError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(TyphaCodecError::Malformed("unexpected end of message"))?;
        self.pos += 1;
        Ok(b)
    }

    #[inline]
    pub(crate) fn read_uint(&mut self) -> Result<u64, TyphaCodecError> {
        let b = self.read_u8()?;
        if b < 0x80 {
            return Ok(b as u64);
        }
        let n = 256 - b as usize;
        if n > 8 {
            return Err(TyphaCodecError::Malformed("integer longer than 8 bytes"));
        }
        let bytes = self.take(n)?;
        let mut x = 0u64;
        for &c in bytes {
            x = (x << 8) | c as u64;
        }
        Ok(x)
    }

    #[inline]
    pub(crate) fn read_int(&mut self) -> Result<i64, TyphaCodecError> {
        Ok(unzigzag(self.read_uint()?))
    }

    #[inline]
    pub(crate) fn read_bool(&mut self) -> Result<bool, TyphaCodecError> {
        match self.read_uint()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(TyphaCodecError::Malformed("invalid bool")),
        }
    }

    #[inline]
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], TyphaCodecError> {
        if n > self.remaining() {
            return Err(TyphaCodecError::Malformed("length exceeds message"));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// A length-prefixed byte string, borrowed from the message.
    #[inline]
    pub(crate) fn read_bytes(&mut self) -> Result<&'a [u8], TyphaCodecError> {
        let n = self.read_uint()?;
        if n > self.remaining() as u64 {
            return Err(TyphaCodecError::Malformed("length exceeds message"));
        }
        self.take(n as usize)
    }

    /// A length-prefixed string. Go strings need not be UTF-8; invalid sequences are replaced
    /// rather than refused, as they only ever reach logs or opaque keys.
    pub(crate) fn read_string(&mut self) -> Result<String, TyphaCodecError> {
        let b = self.read_bytes()?;
        Ok(match std::str::from_utf8(b) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(b).into_owned(),
        })
    }

    /// A count of elements that each take at least one byte: never more than the bytes left.
    pub(crate) fn read_count(&mut self) -> Result<usize, TyphaCodecError> {
        let n = self.read_uint()?;
        if n > self.remaining() as u64 {
            return Err(TyphaCodecError::Malformed("element count exceeds message"));
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uints_follow_gobs_examples() {
        // The examples in Go's encoding/gob package documentation.
        let mut v = Vec::new();
        put_uint(&mut v, 7);
        assert_eq!(v, [0x07]);
        v.clear();
        put_uint(&mut v, 256);
        assert_eq!(v, [0xFE, 0x01, 0x00]);
        v.clear();
        put_int(&mut v, -129);
        assert_eq!(v, [0xFE, 0x01, 0x01]);
        v.clear();
        put_int(&mut v, 64 * 2);
        assert_eq!(v, [0xFE, 0x01, 0x00]);
    }

    #[test]
    fn uint_and_int_round_trip_at_every_width() {
        let mut samples = vec![0u64, 1, 0x7f, 0x80, 0xff, 0x100, u64::MAX, u64::MAX - 1];
        for shift in 0..64 {
            samples.push(1u64 << shift);
            samples.push((1u64 << shift) - 1);
        }
        for x in samples {
            let mut v = Vec::new();
            put_uint(&mut v, x);
            assert_eq!(v.len(), uint_len(x), "{x}");
            let mut r = Reader::new(&v);
            assert_eq!(r.read_uint().unwrap(), x);
            assert_eq!(r.remaining(), 0);
            for i in [x as i64, (x as i64).wrapping_neg(), i64::MIN, i64::MAX] {
                let mut v = Vec::new();
                put_int(&mut v, i);
                assert_eq!(v.len(), int_len(i));
                assert_eq!(Reader::new(&v).read_int().unwrap(), i);
            }
        }
    }

    #[test]
    fn lengths_beyond_the_message_are_errors() {
        let mut v = Vec::new();
        put_uint(&mut v, 1 << 40);
        assert!(Reader::new(&v).read_bytes().is_err());
        assert!(Reader::new(&[0xF7]).read_uint().is_err(), "9-byte integer");
        assert!(Reader::new(&[0xFE, 0x01]).read_uint().is_err(), "truncated");
    }
}
