//! The record frame: how one record is laid out in a segment file, and the
//! checks that tell a whole record from a torn or damaged one.

/// Bytes of a frame before its payload: crc32 (4), payload length (4),
/// sequence number (8), append time in unix nanoseconds (8), all little
/// endian.
pub const FRAME_HEADER: usize = 24;

/// The parsed header of one frame.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub crc: u32,
    pub len: u32,
    pub seq: u64,
    pub nanos: u64,
}

impl Header {
    pub(crate) fn parse(b: &[u8; FRAME_HEADER]) -> Header {
        let word = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let long = |at: usize| u64::from(word(at)) | (u64::from(word(at + 4)) << 32);
        Header {
            crc: word(0),
            len: word(4),
            seq: long(8),
            nanos: long(16),
        }
    }

    /// Whether `payload` (of `self.len` bytes) is the one this header was
    /// written with.
    pub(crate) fn matches(&self, payload: &[u8]) -> bool {
        checksum(&head(self.len, self.seq, self.nanos), payload) == self.crc
    }

    /// Whether `frame` (this header's whole frame, header included) is the
    /// one this header was written with: one checksum pass over it.
    pub(crate) fn matches_frame(&self, frame: &[u8]) -> bool {
        frame
            .get(4..)
            .is_some_and(|rest| crc32fast::hash(rest) == self.crc)
    }

    /// Bytes of the whole frame.
    pub(crate) fn frame_len(&self) -> u64 {
        FRAME_HEADER as u64 + u64::from(self.len)
    }
}

/// The header after the checksum: length, sequence number, time.
fn head(len: u32, seq: u64, nanos: u64) -> [u8; FRAME_HEADER - 4] {
    let mut b = [0u8; FRAME_HEADER - 4];
    b[..4].copy_from_slice(&len.to_le_bytes());
    b[4..12].copy_from_slice(&seq.to_le_bytes());
    b[12..].copy_from_slice(&nanos.to_le_bytes());
    b
}

/// The checksum covers everything in the frame but itself, so a damaged
/// length, sequence number or time is caught as well as damaged bytes.
/// (Two updates, not four: crc32fast's fast path wants long slices.)
fn checksum(head: &[u8; FRAME_HEADER - 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(head);
    h.update(payload);
    h.finalize()
}

/// Appends the frame of one record to `buf`. The caller has checked that
/// the payload length fits in a u32.
pub(crate) fn encode(buf: &mut Vec<u8>, len: u32, seq: u64, nanos: u64, payload: &[u8]) {
    // The checksum is taken over the frame once it is laid out, in one
    // pass (crc32fast is fastest on one long slice).
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&head(len, seq, nanos));
    buf.extend_from_slice(payload);
    let crc = crc32fast::hash(&buf[at + 4..]);
    buf[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}
