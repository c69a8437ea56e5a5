//! Framing of byte streams into messages: NDJSON lines and length-delimited
//! protobuf frames (SPEC section 4), for the TCP and unix socket sources
//! and for stdio and files.
//!
//! Both framers copy what they are fed into one `BytesMut` and hand out
//! complete messages as `split_to().freeze()`: the message shares that
//! buffer instead of being copied again, so the decoder can slice fields
//! out of it (see `codec::json`). The price: a message kept alive keeps
//! its whole chunk of the buffer alive (at least 64 KiB, or one push), so
//! code that holds events for long should copy what it keeps. Both bound
//! what they hold of an incomplete message, so a peer cannot make us
//! buffer without limit, and give the same output whatever the chunk
//! boundaries are.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codec::protowire::{put_varint, read_varint, Varint, MAX_VARINT_LEN};

/// A message the framer could not hand out.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum FrameError {
    #[error("message of {len} bytes is over the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("input ended inside a message: have {have} of {want} bytes")]
    Truncated { have: usize, want: usize },
    #[error("malformed length prefix")]
    BadLength,
}

/// Below this much free room the buffer grows by a whole chunk, so that a
/// stream of small pushes does not reallocate for each one.
const MIN_GROWTH: usize = 64 * 1024;

fn append(buf: &mut BytesMut, data: &[u8]) {
    if buf.capacity() - buf.len() < data.len() {
        buf.reserve(data.len().max(MIN_GROWTH));
    }
    buf.extend_from_slice(data);
}

/// Splits a byte stream into NDJSON lines.
///
/// Lines come out without their `\n` and without a `\r` before it; blank
/// lines are skipped silently. `max_line` bounds a line's bytes before its
/// `\n` (a `\r` included). At most that much of a partial line is held:
/// a longer line is skipped up to its end and reported as
/// [`FrameError::TooLong`] with its full length, and the stream goes on
/// with the next line.
#[derive(Debug)]
pub struct LineFramer {
    buf: BytesMut,
    max_line: usize,
    /// Bytes of an over-long line dropped so far, while skipping it.
    skipping: Option<usize>,
}

impl LineFramer {
    pub fn new(max_line: usize) -> Self {
        LineFramer {
            buf: BytesMut::new(),
            max_line,
            skipping: None,
        }
    }

    /// Feeds more bytes; appends every line they complete to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Result<Bytes, FrameError>>) {
        let mut data = data;
        if let Some(skipped) = self.skipping {
            match memchr::memchr(b'\n', data) {
                None => {
                    self.skipping = Some(skipped + data.len());
                    return;
                }
                Some(i) => {
                    out.push(Err(FrameError::TooLong {
                        len: skipped + i,
                        max: self.max_line,
                    }));
                    self.skipping = None;
                    data = &data[i + 1..];
                }
            }
        }
        // The partial line already held has no '\n'; look in the new bytes only.
        let mut from = self.buf.len();
        append(&mut self.buf, data);
        while let Some(i) = memchr::memchr(b'\n', &self.buf[from..]) {
            let line = self.buf.split_to(from + i + 1);
            from = 0;
            self.emit(line, 1, out);
        }
        if self.buf.len() > self.max_line {
            self.skipping = Some(self.buf.len());
            self.buf.clear();
        }
    }

    /// At the end of input: a last line without `\n` still counts.
    pub fn finish(&mut self, out: &mut Vec<Result<Bytes, FrameError>>) {
        if let Some(skipped) = self.skipping.take() {
            out.push(Err(FrameError::TooLong {
                len: skipped,
                max: self.max_line,
            }));
        }
        let line = self.buf.split();
        self.emit(line, 0, out);
    }

    /// `line` ends with `newline` bytes of '\n' (0 or 1).
    fn emit(&self, mut line: BytesMut, newline: usize, out: &mut Vec<Result<Bytes, FrameError>>) {
        let len = line.len() - newline;
        if len > self.max_line {
            out.push(Err(FrameError::TooLong {
                len,
                max: self.max_line,
            }));
            return;
        }
        let mut end = len;
        if end > 0 && line[end - 1] == b'\r' {
            end -= 1;
        }
        if end == 0 {
            return;
        }
        line.truncate(end);
        out.push(Ok(line.freeze()));
    }
}

/// Splits a byte stream into length-delimited frames: a varint length (as
/// protobuf's `writeDelimitedTo` writes it), then that many bytes.
///
/// A frame longer than `max_frame` is reported as [`FrameError::TooLong`]
/// and its bytes are skipped (the length says how many), never held. A
/// length prefix that is not a varint of at most 10 bytes is
/// [`FrameError::BadLength`]: nothing after it can be trusted to be a frame
/// boundary, so the framer is poisoned (it yields nothing more) and the
/// caller must close the connection.
#[derive(Debug)]
pub struct DelimitedFramer {
    buf: BytesMut,
    max_frame: usize,
    /// Bytes of an over-long frame still to drop.
    skip: usize,
    poisoned: bool,
}

enum Prefix {
    /// The length, and how many bytes it took.
    Len(usize, usize),
    Incomplete,
    Bad,
}

fn read_prefix(b: &[u8]) -> Prefix {
    match read_varint(b) {
        Varint::Value(v, head) => match usize::try_from(v) {
            Ok(n) => Prefix::Len(n, head),
            Err(_) => Prefix::Bad,
        },
        Varint::CutOff => Prefix::Incomplete,
        Varint::TooLong => Prefix::Bad,
    }
}

impl DelimitedFramer {
    pub fn new(max_frame: usize) -> Self {
        DelimitedFramer {
            buf: BytesMut::new(),
            max_frame,
            skip: 0,
            poisoned: false,
        }
    }

    /// True after [`FrameError::BadLength`]: close the connection.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Feeds more bytes; appends every frame they complete to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Result<Bytes, FrameError>>) {
        if self.poisoned {
            return;
        }
        let dropped = self.skip.min(data.len());
        self.skip -= dropped;
        append(&mut self.buf, &data[dropped..]);
        loop {
            match read_prefix(&self.buf) {
                Prefix::Incomplete => return,
                Prefix::Bad => {
                    out.push(Err(FrameError::BadLength));
                    self.poisoned = true;
                    self.buf = BytesMut::new();
                    return;
                }
                Prefix::Len(len, head) if len > self.max_frame => {
                    out.push(Err(FrameError::TooLong {
                        len,
                        max: self.max_frame,
                    }));
                    self.buf.advance(head);
                    let now = len.min(self.buf.len());
                    self.buf.advance(now);
                    self.skip = len - now;
                    if self.skip > 0 {
                        return;
                    }
                }
                Prefix::Len(len, head) => {
                    if self.buf.len() - head < len {
                        return;
                    }
                    self.buf.advance(head);
                    out.push(Ok(self.buf.split_to(len).freeze()));
                }
            }
        }
    }

    /// At the end of input: a frame cut off is [`FrameError::Truncated`], a
    /// cut-off length prefix [`FrameError::BadLength`]. The rest of a frame
    /// already reported as too long is not reported again.
    pub fn finish(&mut self, out: &mut Vec<Result<Bytes, FrameError>>) {
        if self.poisoned || self.buf.is_empty() {
            self.buf.clear();
            self.skip = 0;
            return;
        }
        match read_prefix(&self.buf) {
            Prefix::Len(len, head) => out.push(Err(FrameError::Truncated {
                have: self.buf.len() - head,
                want: len,
            })),
            Prefix::Incomplete | Prefix::Bad => out.push(Err(FrameError::BadLength)),
        }
        self.buf.clear();
    }
}

/// Writes `msg` with its varint length prefix.
pub fn write_delimited(msg: &[u8], out: &mut BytesMut) {
    out.reserve(msg.len() + MAX_VARINT_LEN);
    put_varint(out, msg.len() as u64);
    out.put_slice(msg);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    type Out = Vec<Result<Bytes, FrameError>>;

    fn lines(max: usize, chunks: &[&[u8]]) -> Out {
        let mut f = LineFramer::new(max);
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut out);
        }
        f.finish(&mut out);
        out
    }

    fn ok(s: &str) -> Result<Bytes, FrameError> {
        Ok(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn lines_are_split_and_cleaned() {
        let out = lines(100, &[b"a\r\nbb\n\n\r\n  \nccc\r"]);
        assert_eq!(out, vec![ok("a"), ok("bb"), ok("  "), ok("ccc")]);
    }

    #[test]
    fn a_line_split_across_pushes_is_joined() {
        let out = lines(100, &[b"ab", b"", b"c\nd", b"e\n"]);
        assert_eq!(out, vec![ok("abc"), ok("de")]);
    }

    #[test]
    fn lines_share_the_buffer_they_arrived_in() {
        let mut f = LineFramer::new(100);
        let mut out = Vec::new();
        f.push(b"first\nsecond\n", &mut out);
        let a = out[0].as_ref().unwrap();
        let b = out[1].as_ref().unwrap();
        assert_eq!(b.as_ptr(), a.as_ptr().wrapping_add(6));
    }

    #[test]
    fn too_long_lines_are_reported_and_skipped() {
        // Whole in one push.
        assert_eq!(
            lines(3, &[b"ok\ntoolong\nyes\n"]),
            vec![
                ok("ok"),
                Err(FrameError::TooLong { len: 7, max: 3 }),
                ok("yes")
            ]
        );
        // Spread over pushes; exactly `max` is fine, the \r counts.
        assert_eq!(
            lines(3, &[b"abc\nab", b"cd", b"efg", b"h\nxyz\r\n", b"q"]),
            vec![
                ok("abc"),
                Err(FrameError::TooLong { len: 8, max: 3 }),
                Err(FrameError::TooLong { len: 4, max: 3 }),
                ok("q")
            ]
        );
        // Cut off by the end of input.
        assert_eq!(
            lines(3, &[b"a\nlonger"]),
            vec![ok("a"), Err(FrameError::TooLong { len: 6, max: 3 })]
        );
    }

    #[test]
    fn a_partial_line_is_held_only_up_to_the_limit() {
        let mut f = LineFramer::new(1000);
        let mut out = Vec::new();
        for _ in 0..1000 {
            f.push(&[b'x'; 999], &mut out);
            assert!(f.buf.len() <= 1000);
        }
        f.push(b"\nnext\n", &mut out);
        assert_eq!(
            out,
            vec![
                Err(FrameError::TooLong {
                    len: 999_000,
                    max: 1000
                }),
                ok("next")
            ]
        );
    }

    fn frames(max: usize, chunks: &[&[u8]]) -> (Out, bool) {
        let mut f = DelimitedFramer::new(max);
        let mut out = Vec::new();
        for c in chunks {
            f.push(c, &mut out);
        }
        f.finish(&mut out);
        (out, f.is_poisoned())
    }

    fn delimited(msgs: &[&[u8]]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for m in msgs {
            write_delimited(m, &mut out);
        }
        out.to_vec()
    }

    #[test]
    fn frames_round_trip_including_empty_and_long_prefixes() {
        let big = vec![7u8; 300];
        let stream = delimited(&[b"one", b"", &big]);
        assert_eq!(&stream[..5], &[3, b'o', b'n', b'e', 0]);
        // 300 = 0b10_0101100 -> 0xac 0x02
        assert_eq!(&stream[5..7], &[0xac, 0x02]);
        let (out, poisoned) = frames(1000, &[&stream]);
        assert!(!poisoned);
        assert_eq!(out, vec![ok("one"), Ok(Bytes::new()), Ok(Bytes::from(big))]);
    }

    #[test]
    fn too_long_frames_are_skipped_by_their_length() {
        let stream = delimited(&[b"a", b"0123456789", b"b"]);
        let (out, _) = frames(4, &[&stream]);
        assert_eq!(
            out,
            vec![
                ok("a"),
                Err(FrameError::TooLong { len: 10, max: 4 }),
                ok("b")
            ]
        );
        // Skipped across pushes, never buffered.
        let mut f = DelimitedFramer::new(4);
        let mut out = Vec::new();
        f.push(&stream[..5], &mut out);
        assert!(f.buf.is_empty());
        f.push(&stream[5..], &mut out);
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn a_bad_length_poisons_the_framer() {
        let mut stream = delimited(&[b"a"]);
        stream.extend_from_slice(&[0xff; 10]);
        stream.extend_from_slice(&delimited(&[b"b"]));
        let (out, poisoned) = frames(100, &[&stream[..4], &stream[4..]]);
        assert!(poisoned);
        assert_eq!(out, vec![ok("a"), Err(FrameError::BadLength)]);
        // A 10th byte above 1 overflows 64 bits.
        let mut over = vec![0x80; 9];
        over.push(0x02);
        assert_eq!(frames(100, &[&over]).0, vec![Err(FrameError::BadLength)]);
    }

    #[test]
    fn the_end_of_input_inside_a_frame_is_an_error() {
        let stream = delimited(&[b"a", b"hello"]);
        let (out, _) = frames(100, &[&stream[..5]]);
        assert_eq!(
            out,
            vec![ok("a"), Err(FrameError::Truncated { have: 2, want: 5 })]
        );
        // Inside the length prefix itself.
        assert_eq!(frames(100, &[&[0x80]]).0, vec![Err(FrameError::BadLength)]);
        // The cut-off rest of a too-long frame is not reported twice.
        let stream = delimited(&[&[1u8; 50]]);
        assert_eq!(
            frames(10, &[&stream[..20]]).0,
            vec![Err(FrameError::TooLong { len: 50, max: 10 })]
        );
    }

    fn cut<'a>(data: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
        at.sort_unstable();
        let mut chunks = Vec::new();
        let mut from = 0;
        for a in at {
            chunks.push(&data[from..a]);
            from = a;
        }
        chunks.push(&data[from..]);
        chunks
    }

    /// What LineFramer must produce, written the obvious way.
    fn line_model(data: &[u8], max: usize) -> Out {
        let mut parts: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        if data.last() == Some(&b'\n') || data.is_empty() {
            parts.pop();
        }
        let mut out = Vec::new();
        for p in parts {
            if p.len() > max {
                out.push(Err(FrameError::TooLong { len: p.len(), max }));
                continue;
            }
            let p = p.strip_suffix(b"\r").unwrap_or(p);
            if !p.is_empty() {
                out.push(Ok(Bytes::copy_from_slice(p)));
            }
        }
        out
    }

    fn line_bytes() -> impl Strategy<Value = Vec<u8>> {
        vec(
            prop_oneof![Just(b'a'), Just(b'b'), Just(b'\n'), Just(b'\r')],
            0..200,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn lines_do_not_depend_on_chunking(
            data in prop_oneof![line_bytes(), vec(any::<u8>(), 0..200)],
            max in 0usize..12,
            cuts in vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let whole = lines(max, &[&data]);
            prop_assert_eq!(&whole, &line_model(&data, max));
            prop_assert_eq!(lines(max, &cut(&data, &cuts)), whole);
        }

        #[test]
        fn frames_do_not_depend_on_chunking(
            msgs in vec(vec(any::<u8>(), 0..20), 0..8),
            tail in vec(any::<u8>(), 0..12),
            max in 0usize..16,
            cuts in vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
            let mut data = delimited(&refs);
            let (clean, _) = frames(max, &[&data]);
            let want: Out = msgs
                .iter()
                .map(|m| {
                    if m.len() > max {
                        Err(FrameError::TooLong { len: m.len(), max })
                    } else {
                        Ok(Bytes::copy_from_slice(m))
                    }
                })
                .collect();
            prop_assert_eq!(clean, want);
            // Garbage after the frames: whatever it means, chunking must not
            // change it.
            data.extend_from_slice(&tail);
            let whole = frames(max, &[&data]);
            prop_assert_eq!(frames(max, &cut(&data, &cuts)), whole);
        }

        #[test]
        fn frames_of_arbitrary_bytes_do_not_depend_on_chunking(
            data in vec(any::<u8>(), 0..200),
            max in 0usize..64,
            cuts in vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let whole = frames(max, &[&data]);
            prop_assert_eq!(frames(max, &cut(&data, &cuts)), whole);
        }
    }
}
