//! Events as JSON objects (SPEC section 4): NDJSON lines over TCP, unix
//! sockets and stdio, arrays of objects in HTTP bodies.
//!
//! The decoder is a hand-written scanner, because the NDJSON pass-through
//! path must run at a million events a second on two cores: `message`
//! becomes a slice of the input `Bytes` (no copy); host, type and tags are
//! interned (`codec::intern` says why), or sliced too when longer than
//! `MAX_INTERNED_LEN`; only escaped strings and base64 allocate. The object's own bytes
//! are kept as the event's raw form so that [`encode`] writes an unchanged
//! event back byte for byte.
//!
//! Choices where JSON leaves room:
//! - A known key given twice is an error, and so is a tag key given twice.
//!   JSON leaves the meaning of duplicates to the reader, and the raw line
//!   travels on to readers that may pick differently from us.
//! - `null` for a known field means the field is absent (then filled by
//!   `Filler` where SPEC section 4 says so, otherwise empty/zero).
//! - Integer fields take JSON integers in range only: no fraction, no
//!   exponent, no leading zeros; a negative `offset` or `pid` is an error.
//! - `message` and `message_b64` together are an error. Base64 is the
//!   standard alphabet, padding optional.
//! - Unknown keys are skipped (their values must still be valid JSON,
//!   nested at most 64 deep) and stay in the raw bytes.
//! - The raw bytes are kept unless the object spans lines (a pretty-printed
//!   HTTP body), since writing them into NDJSON would break the framing.
//!   A raw `\n` can only be whitespace (strings must escape it), so the
//!   scanner notes it while skipping whitespace instead of searching.

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use dab_api::event::RawCodec;
use dab_api::Event;

use super::json_parse::{Fail, Parser};
use super::swar::{find_special, is_ascii};
use super::{DecodeError, Present, BASE64};

/// Decodes one JSON object (an NDJSON line without its newline).
pub fn decode(line: Bytes) -> Result<(Event, Present), DecodeError> {
    check_utf8(&line)?;
    let mut ev = Event::default();
    let mut present = Present::default();
    let mut p = Parser::new(&line);
    let (start, end, spans_lines) = match decode_one(&mut p, &mut ev, &mut present) {
        Ok(found) => found,
        Err(Fail) => return Err(p.error()),
    };
    if spans_lines {
        return Ok((ev, present));
    }
    // The usual line is the object alone: keep it as it is, which spares
    // the reference-count traffic of a slice.
    let raw = if start == 0 && end == line.len() {
        line
    } else {
        line.slice(start..end)
    };
    ev.set_raw(RawCodec::Json, raw);
    Ok((ev, present))
}

/// The object and where it lies, with whether it spans lines.
fn decode_one(
    p: &mut Parser<'_>,
    ev: &mut Event,
    present: &mut Present,
) -> Result<(usize, usize, bool), Fail> {
    p.ws();
    p.clear_newline();
    let start = p.pos;
    p.object(ev, present)?;
    let end = p.pos;
    let spans_lines = p.saw_newline();
    p.ws();
    if !p.at_end() {
        return p.fail_at(p.pos, "unexpected characters after the object");
    }
    Ok((start, end, spans_lines))
}

/// Decodes a JSON array of event objects (an HTTP body). Each event's raw
/// bytes are its own element.
pub fn decode_array(body: Bytes) -> Result<Vec<(Event, Present)>, DecodeError> {
    let mut reader = ArrayReader::new(body)?;
    let mut events = Vec::new();
    while !reader.is_done() {
        reader.next_chunk(usize::MAX, &mut events)?;
    }
    Ok(events)
}

/// Reads a JSON array of event objects a few events at a time, so that a
/// large body (an HTTP request of millions of `{}`) never becomes all its
/// events at once: memory follows the chunk, not the body.
#[derive(Debug, Clone)]
pub struct ArrayReader {
    body: Bytes,
    /// Where the next element (or the closing `]`) starts.
    pos: usize,
    done: bool,
}

impl ArrayReader {
    /// Checks that the body is UTF-8 and opens the array.
    pub fn new(body: Bytes) -> Result<ArrayReader, DecodeError> {
        check_utf8(&body)?;
        let mut p = Parser::new(&body);
        let opened = (|| {
            p.ws();
            p.expect(b'[', "expected `[` to open an array of events")?;
            p.ws();
            if p.peek() == Some(b']') {
                p.pos += 1;
                return end(&mut p).map(|()| true);
            }
            Ok(false)
        })();
        match opened {
            Ok(done) => {
                let pos = p.pos;
                Ok(ArrayReader { body, pos, done })
            }
            Err(Fail) => Err(p.error()),
        }
    }

    /// True once the closing `]` (and only whitespace after it) was read.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Appends up to `max` more events to `out`. An error names its byte
    /// in the whole body; the reader is then done.
    pub fn next_chunk(
        &mut self,
        max: usize,
        out: &mut Vec<(Event, Present)>,
    ) -> Result<(), DecodeError> {
        let mut p = Parser::new(&self.body);
        p.pos = self.pos;
        let mut read = 0;
        let step = (|| {
            while read < max && !self.done {
                p.ws();
                p.clear_newline();
                let start = p.pos;
                let mut ev = Event::default();
                let mut present = Present::default();
                p.object(&mut ev, &mut present)?;
                if !p.saw_newline() {
                    ev.set_raw(RawCodec::Json, self.body.slice(start..p.pos));
                }
                out.push((ev, present));
                read += 1;
                p.ws();
                match p.peek() {
                    Some(b',') => p.pos += 1,
                    Some(b']') => {
                        p.pos += 1;
                        end(&mut p)?;
                        self.done = true;
                    }
                    _ => return p.fail_at(p.pos, "expected `,` or `]` after an event"),
                }
            }
            Ok(())
        })();
        self.pos = p.pos;
        match step {
            Ok(()) => Ok(()),
            Err(Fail) => {
                self.done = true;
                Err(p.error())
            }
        }
    }
}

/// After the array: only whitespace.
fn end(p: &mut Parser<'_>) -> Result<(), Fail> {
    p.ws();
    if !p.at_end() {
        return p.fail_at(p.pos, "unexpected characters after the array");
    }
    Ok(())
}

/// Writes one JSON object, no newline: the raw bytes when the event still
/// has them, otherwise every field in the order timestamp, host, type,
/// offset, pid, message (or message_b64 when not UTF-8), signature (when
/// not empty), tags (when not empty).
pub fn encode(ev: &Event, out: &mut BytesMut) {
    if let Some(raw) = ev.raw(RawCodec::Json) {
        out.extend_from_slice(raw);
        return;
    }
    out.reserve(96 + ev.size_hint() + ev.message.len() / 3 + ev.signature.len() / 3);
    out.put_slice(b"{\"timestamp\":");
    write_i64(out, ev.timestamp);
    out.put_slice(b",\"host\":");
    write_str(out, ev.host.as_bytes());
    out.put_slice(b",\"type\":");
    write_str(out, ev.ty.as_bytes());
    out.put_slice(b",\"offset\":");
    write_u64(out, ev.offset);
    out.put_slice(b",\"pid\":");
    write_u64(out, u64::from(ev.pid));
    if is_ascii(&ev.message) || std::str::from_utf8(&ev.message).is_ok() {
        out.put_slice(b",\"message\":");
        write_str(out, &ev.message);
    } else {
        out.put_slice(b",\"message_b64\":\"");
        write_base64(out, &ev.message);
        out.put_u8(b'"');
    }
    if !ev.signature.is_empty() {
        out.put_slice(b",\"signature\":\"");
        write_base64(out, &ev.signature);
        out.put_u8(b'"');
    }
    if !ev.tags.is_empty() {
        out.put_slice(b",\"tags\":{");
        for (i, (k, v)) in ev.tags.iter().enumerate() {
            if i > 0 {
                out.put_u8(b',');
            }
            write_str(out, k.as_bytes());
            out.put_u8(b':');
            write_str(out, v.as_bytes());
        }
        out.put_u8(b'}');
    }
    out.put_u8(b'}');
}

/// JSON text is UTF-8. Checking the whole input once up front means every
/// string slice taken later is valid, and unknown values passed on in the
/// raw bytes are too.
fn check_utf8(b: &[u8]) -> Result<(), DecodeError> {
    // Most lines are ASCII, which is far quicker to check than UTF-8.
    if is_ascii(b) {
        return Ok(());
    }
    std::str::from_utf8(b)
        .map(|_| ())
        .map_err(|e| DecodeError::Json {
            column: e.valid_up_to() + 1,
            reason: "invalid UTF-8".to_owned(),
        })
}

/// For each byte: 0 when it stands for itself in a JSON string, else the
/// letter of its escape (`u` for `\u00XX`).
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// A JSON string from UTF-8 bytes, quotes included. Runs that need no
/// escape (the bytes `find_special` skips) are copied whole.
fn write_str(out: &mut BytesMut, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.put_u8(b'"');
    let mut rest = s;
    while let Some(i) = find_special(rest) {
        out.put_slice(&rest[..i]);
        let c = rest[i];
        match ESCAPE[c as usize] {
            b'u' => out.put_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(c >> 4) as usize],
                HEX[(c & 15) as usize],
            ]),
            e => out.put_slice(&[b'\\', e]),
        }
        rest = &rest[i + 1..];
    }
    out.put_slice(rest);
    out.put_u8(b'"');
}

fn write_u64(out: &mut BytesMut, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&buf[i..]);
}

fn write_i64(out: &mut BytesMut, n: i64) {
    if n < 0 {
        out.put_u8(b'-');
    }
    write_u64(out, n.unsigned_abs());
}

fn write_base64(out: &mut BytesMut, data: &[u8]) {
    let Some(n) = base64::encoded_len(data.len(), true) else {
        return;
    };
    let start = out.len();
    out.resize(start + n, 0);
    let written = BASE64.encode_slice(data, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
}

#[cfg(test)]
#[path = "json_tests.rs"]
mod tests;
