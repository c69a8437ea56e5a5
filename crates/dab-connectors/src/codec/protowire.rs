//! The protobuf wire format's primitives, kept in one place: varints,
//! field keys, length-delimited fields and the skipping of unknown fields.
//! `codec::proto` (events), `murron::wire` (batches) and `framing`
//! (length-delimited streams) all read and write through these.
//!
//! Readers hand out positions and ranges of the input, never copies, so
//! callers can slice `Bytes` out of it; writers append to any `BufMut`
//! without allocating beyond what the buffer itself grows by.

use std::ops::Range;

use bytes::BufMut;

use super::DecodeError;

pub(crate) const VARINT: u8 = 0;
pub(crate) const I64: u8 = 1;
pub(crate) const LEN: u8 = 2;
pub(crate) const I32: u8 = 5;

/// The bytes a varint takes at the most (64 bits, 7 a byte).
pub(crate) const MAX_VARINT_LEN: usize = 10;

pub(crate) fn fail(reason: impl Into<String>) -> DecodeError {
    DecodeError::Protobuf {
        reason: reason.into(),
    }
}

/// A varint at the start of a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Varint {
    /// The value, and how many bytes it took.
    Value(u64, usize),
    /// The slice ends inside it.
    CutOff,
    /// It does not fit in 64 bits.
    TooLong,
}

/// Reads the varint at the start of `b`.
#[inline]
pub(crate) fn read_varint(b: &[u8]) -> Varint {
    let mut v = 0u64;
    for (i, &byte) in b.iter().take(MAX_VARINT_LEN).enumerate() {
        // The tenth byte holds bit 63 only.
        if i == MAX_VARINT_LEN - 1 && byte > 1 {
            return Varint::TooLong;
        }
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Varint::Value(v, i + 1);
        }
    }
    // Ten bytes always end above (a value or too long), so fewer were left.
    Varint::CutOff
}

/// Appends `v` as a varint.
#[inline]
pub(crate) fn put_varint(out: &mut impl BufMut, mut v: u64) {
    while v >= 0x80 {
        out.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// The bytes `put_varint` writes for `v`.
#[inline]
pub(crate) fn varint_len(v: u64) -> usize {
    // One byte per started group of 7 bits; 0 still takes one byte.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Reads `b[pos..]`; positions stay those of the whole buffer so that
/// ranges can be sliced from it.
pub(crate) struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader of `b` from `pos` (at most `b.len()`).
    pub(crate) fn new(b: &'a [u8], pos: usize) -> Reader<'a> {
        Reader { b, pos }
    }

    /// Where the next read starts.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn done(&self) -> bool {
        self.pos >= self.b.len()
    }

    #[inline]
    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        let start = self.pos;
        match read_varint(self.b.get(start..).unwrap_or_default()) {
            Varint::Value(v, n) => {
                self.pos += n;
                Ok(v)
            }
            Varint::CutOff => Err(fail(format!("varint at byte {start} is cut off"))),
            Varint::TooLong => Err(fail(format!(
                "varint at byte {start} is longer than 64 bits"
            ))),
        }
    }

    /// A field key: its number (1 to 2^29 - 1) and wire type.
    pub(crate) fn key(&mut self) -> Result<(u32, u8), DecodeError> {
        let at = self.pos;
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > (1 << 29) - 1 {
            return Err(fail(format!("invalid field number {field} at byte {at}")));
        }
        // Both fit: field < 2^29, and the wire type is three bits.
        Ok((field as u32, (key & 7) as u8))
    }

    /// A length-delimited field's contents, as a range of the buffer.
    pub(crate) fn len_delim(&mut self) -> Result<Range<usize>, DecodeError> {
        let at = self.pos;
        let n = self.varint()?;
        let left = self.b.len() - self.pos;
        match usize::try_from(n) {
            Ok(n) if n <= left => {
                let r = self.pos..self.pos + n;
                self.pos += n;
                Ok(r)
            }
            _ => Err(fail(format!(
                "length {n} at byte {at} runs past the end ({left} bytes left)"
            ))),
        }
    }

    fn fixed(&mut self, n: usize) -> Result<(), DecodeError> {
        if self.b.len() - self.pos < n {
            return Err(fail(format!(
                "fixed-width field at byte {} is cut off",
                self.pos
            )));
        }
        self.pos += n;
        Ok(())
    }

    /// Steps over a field of wire type `wire` (proto3 skips unknown fields).
    pub(crate) fn skip(&mut self, wire: u8) -> Result<(), DecodeError> {
        match wire {
            VARINT => self.varint().map(|_| ()),
            I64 => self.fixed(8),
            LEN => self.len_delim().map(|_| ()),
            I32 => self.fixed(4),
            3 | 4 => Err(fail("groups are not supported")),
            _ => Err(fail(format!("invalid wire type {wire}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::BytesMut;
    use proptest::prelude::*;

    #[test]
    fn varint_edges() {
        assert_eq!(read_varint(&[]), Varint::CutOff);
        assert_eq!(read_varint(&[0]), Varint::Value(0, 1));
        assert_eq!(read_varint(&[0x80]), Varint::CutOff);
        assert_eq!(read_varint(&[0xac, 0x02, 0xff]), Varint::Value(300, 2));
        let mut max = [0xff; 10];
        max[9] = 1;
        assert_eq!(read_varint(&max), Varint::Value(u64::MAX, 10));
        max[9] = 2;
        assert_eq!(read_varint(&max), Varint::TooLong);
        assert_eq!(read_varint(&[0x80; 11]), Varint::TooLong);
        assert_eq!(read_varint(&[0x80; 9]), Varint::CutOff);
    }

    #[test]
    fn reader_errors_name_the_byte() {
        let mut r = Reader::new(&[0x08, 0x80], 1);
        assert_eq!(
            r.varint().unwrap_err().reason(),
            "varint at byte 1 is cut off"
        );
        let mut r = Reader::new(&[0x0a, 0x05, 1, 2], 1);
        assert_eq!(
            r.len_delim().unwrap_err().reason(),
            "length 5 at byte 1 runs past the end (2 bytes left)"
        );
        let mut r = Reader::new(&[0x00], 0);
        assert_eq!(
            r.key().unwrap_err().reason(),
            "invalid field number 0 at byte 0"
        );
    }

    proptest! {
        #[test]
        fn varints_round_trip(v in any::<u64>(), tail in proptest::collection::vec(any::<u8>(), 0..4)) {
            let mut out = BytesMut::new();
            put_varint(&mut out, v);
            prop_assert_eq!(out.len(), varint_len(v));
            let n = out.len();
            out.extend_from_slice(&tail);
            prop_assert_eq!(read_varint(&out), Varint::Value(v, n));
            prop_assert_eq!(read_varint(&out[..n - 1]), Varint::CutOff);
        }
    }
}
