//! Events as JSON objects (SPEC section 4): NDJSON lines over TCP, unix
//! sockets and stdio, arrays of objects in HTTP bodies.
//!
//! The decoder is a hand-written scanner, because the NDJSON pass-through
//! path must run at a million events a second on two cores: strings
//! without escapes become slices of the input `Bytes` (no copy), only
//! escaped strings and base64 allocate, and the object's own bytes are kept
//! as the event's raw form so that [`encode`] writes an unchanged event
//! back byte for byte.
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

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use dab_api::event::RawCodec;
use dab_api::{Event, Text};

use super::{DecodeError, Present, BASE64};

/// How deep unknown values may nest before we refuse them; the skipper
/// recurses, so this bounds the stack.
const MAX_DEPTH: usize = 64;

/// Decodes one JSON object (an NDJSON line without its newline).
pub fn decode(line: Bytes) -> Result<(Event, Present), DecodeError> {
    check_utf8(&line)?;
    let mut p = Parser {
        src: &line,
        b: &line,
        pos: 0,
    };
    p.ws();
    let start = p.pos;
    let (ev, present) = p.object()?;
    let end = p.pos;
    p.ws();
    if p.pos != p.b.len() {
        return p.fail("unexpected characters after the object");
    }
    Ok((keep_raw(ev, &line, start, end), present))
}

/// Decodes a JSON array of event objects (an HTTP body). Each event's raw
/// bytes are its own element.
pub fn decode_array(body: Bytes) -> Result<Vec<(Event, Present)>, DecodeError> {
    check_utf8(&body)?;
    let mut p = Parser {
        src: &body,
        b: &body,
        pos: 0,
    };
    let mut events = Vec::new();
    p.ws();
    p.expect(b'[', "expected `[` to open an array of events")?;
    p.ws();
    if p.peek() == Some(b']') {
        p.pos += 1;
    } else {
        loop {
            p.ws();
            let start = p.pos;
            let (ev, present) = p.object()?;
            events.push((keep_raw(ev, &body, start, p.pos), present));
            p.ws();
            match p.peek() {
                Some(b',') => p.pos += 1,
                Some(b']') => {
                    p.pos += 1;
                    break;
                }
                _ => return p.fail("expected `,` or `]` after an event"),
            }
        }
    }
    p.ws();
    if p.pos != p.b.len() {
        return p.fail("unexpected characters after the array");
    }
    Ok(events)
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
    if std::str::from_utf8(&ev.message).is_ok() {
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

fn keep_raw(ev: Event, src: &Bytes, start: usize, end: usize) -> Event {
    if memchr::memchr(b'\n', &src[start..end]).is_some() {
        ev
    } else {
        ev.with_raw(RawCodec::Json, src.slice(start..end))
    }
}

/// JSON text is UTF-8. Checking the whole input once up front means every
/// string slice taken later is valid, and unknown values passed on in the
/// raw bytes are too.
fn check_utf8(b: &[u8]) -> Result<(), DecodeError> {
    std::str::from_utf8(b)
        .map(|_| ())
        .map_err(|e| DecodeError::Json {
            column: e.valid_up_to() + 1,
            reason: "invalid UTF-8".to_owned(),
        })
}

/// A decoded JSON string: a range of the input when it had no escapes.
enum Str {
    Slice(usize, usize),
    Owned(Vec<u8>),
}

// Bits for the known keys, to refuse duplicates.
const K_TIMESTAMP: u16 = 1;
const K_HOST: u16 = 1 << 1;
const K_TYPE: u16 = 1 << 2;
const K_OFFSET: u16 = 1 << 3;
const K_PID: u16 = 1 << 4;
const K_MESSAGE: u16 = 1 << 5;
const K_MESSAGE_B64: u16 = 1 << 6;
const K_SIGNATURE: u16 = 1 << 7;
const K_TAGS: u16 = 1 << 8;

struct Parser<'a> {
    src: &'a Bytes,
    b: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn fail<T>(&self, reason: impl Into<String>) -> Result<T, DecodeError> {
        self.fail_at(self.pos, reason)
    }

    fn fail_at<T>(&self, pos: usize, reason: impl Into<String>) -> Result<T, DecodeError> {
        Err(DecodeError::Json {
            column: pos + 1,
            reason: reason.into(),
        })
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect(&mut self, c: u8, reason: &str) -> Result<(), DecodeError> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            self.fail(reason)
        }
    }

    fn bytes_of<'s>(&'s self, s: &'s Str) -> &'s [u8] {
        match s {
            Str::Slice(a, b) => &self.b[*a..*b],
            Str::Owned(v) => v,
        }
    }

    fn into_bytes(&self, s: Str) -> Bytes {
        match s {
            Str::Slice(a, b) => self.src.slice(a..b),
            Str::Owned(v) => Bytes::from(v),
        }
    }

    fn into_text(&self, s: Str, at: usize) -> Result<Text, DecodeError> {
        match Text::from_bytes(self.into_bytes(s)) {
            Some(t) => Ok(t),
            // Unreachable after check_utf8 and our own unescaping; an error
            // is still a better answer than a panic.
            None => self.fail_at(at, "invalid UTF-8 in string"),
        }
    }

    /// The event object, at `{`.
    fn object(&mut self) -> Result<(Event, Present), DecodeError> {
        let mut ev = Event::default();
        let mut present = Present::default();
        let mut seen: u16 = 0;
        self.expect(b'{', "expected `{` to open an event object")?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok((ev, present));
        }
        loop {
            self.ws();
            let key_at = self.pos;
            if self.peek() != Some(b'"') {
                return self.fail("expected a key in double quotes");
            }
            let key = self.string()?;
            self.ws();
            self.expect(b':', "expected `:` after the key")?;
            self.ws();
            let bit = match self.bytes_of(&key) {
                b"timestamp" => K_TIMESTAMP,
                b"host" => K_HOST,
                b"type" => K_TYPE,
                b"offset" => K_OFFSET,
                b"pid" => K_PID,
                b"message" => K_MESSAGE,
                b"message_b64" => K_MESSAGE_B64,
                b"signature" => K_SIGNATURE,
                b"tags" => K_TAGS,
                _ => 0,
            };
            if bit == 0 {
                self.skip_value(0)?;
            } else {
                if seen & bit != 0 {
                    let name = String::from_utf8_lossy(self.bytes_of(&key)).into_owned();
                    return self.fail_at(key_at, format!("duplicate key `{name}`"));
                }
                seen |= bit;
                if seen & (K_MESSAGE | K_MESSAGE_B64) == K_MESSAGE | K_MESSAGE_B64 {
                    return self.fail_at(key_at, "both `message` and `message_b64` given");
                }
                if !self.null()? {
                    self.field(bit, &mut ev, &mut present)?;
                }
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok((ev, present));
                }
                _ => return self.fail("expected `,` or `}` after a value"),
            }
        }
    }

    /// Consumes `null` if it is next.
    fn null(&mut self) -> Result<bool, DecodeError> {
        if self.peek() != Some(b'n') {
            return Ok(false);
        }
        self.literal(b"null")?;
        Ok(true)
    }

    fn field(
        &mut self,
        bit: u16,
        ev: &mut Event,
        present: &mut Present,
    ) -> Result<(), DecodeError> {
        let at = self.pos;
        match bit {
            K_TIMESTAMP => {
                let (neg, mag) = self.integer("timestamp")?;
                let v = if neg {
                    0i64.checked_sub_unsigned(mag)
                } else {
                    i64::try_from(mag).ok()
                };
                match v {
                    Some(v) => ev.timestamp = v,
                    None => {
                        return self.fail_at(at, "`timestamp` is out of range for a 64-bit integer")
                    }
                }
                present.timestamp = true;
            }
            K_OFFSET => {
                ev.offset = self.unsigned("offset", u64::MAX)?;
                present.offset = true;
            }
            K_PID => {
                // Bounded by u32::MAX just above, so the cast cannot cut.
                ev.pid = self.unsigned("pid", u64::from(u32::MAX))? as u32;
            }
            K_HOST => {
                let s = self.string_field("host")?;
                ev.host = self.into_text(s, at)?;
                present.host = true;
            }
            K_TYPE => {
                let s = self.string_field("type")?;
                ev.ty = self.into_text(s, at)?;
            }
            K_MESSAGE => {
                let s = self.string_field("message")?;
                ev.message = self.into_bytes(s);
            }
            K_MESSAGE_B64 => {
                let s = self.string_field("message_b64")?;
                ev.message = self.base64(&s, at, "message_b64")?;
            }
            K_SIGNATURE => {
                let s = self.string_field("signature")?;
                ev.signature = self.base64(&s, at, "signature")?;
            }
            _ => self.tags(&mut ev.tags)?,
        }
        Ok(())
    }

    fn string_field(&mut self, name: &str) -> Result<Str, DecodeError> {
        if self.peek() != Some(b'"') {
            return self.fail(format!("`{name}` must be a string"));
        }
        self.string()
    }

    fn base64(&self, s: &Str, at: usize, name: &str) -> Result<Bytes, DecodeError> {
        match BASE64.decode(self.bytes_of(s)) {
            Ok(v) => Ok(Bytes::from(v)),
            Err(e) => self.fail_at(at, format!("`{name}` is not valid base64: {e}")),
        }
    }

    fn tags(&mut self, tags: &mut Vec<(Text, Text)>) -> Result<(), DecodeError> {
        if self.peek() != Some(b'{') {
            return self.fail("`tags` must be an object of strings");
        }
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        // Past a handful of tags, a set keeps the duplicate check linear.
        let mut index: Option<std::collections::HashSet<Text>> = None;
        loop {
            self.ws();
            let key_at = self.pos;
            if self.peek() != Some(b'"') {
                return self.fail("expected a tag key in double quotes");
            }
            let k = self.string()?;
            let k = self.into_text(k, key_at)?;
            self.ws();
            self.expect(b':', "expected `:` after the tag key")?;
            self.ws();
            let val_at = self.pos;
            if self.peek() != Some(b'"') {
                return self.fail(format!("tag `{k}` must have a string value"));
            }
            let v = self.string()?;
            let v = self.into_text(v, val_at)?;
            let duplicate = if tags.len() < 16 {
                tags.iter().any(|(old, _)| *old == k)
            } else {
                let set =
                    index.get_or_insert_with(|| tags.iter().map(|(k, _)| k.clone()).collect());
                !set.insert(k.clone())
            };
            if duplicate {
                return self.fail_at(key_at, format!("duplicate tag `{k}`"));
            }
            tags.push((k, v));
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return self.fail("expected `,` or `}` in `tags`"),
            }
        }
    }

    /// A string, at its opening quote.
    fn string(&mut self) -> Result<Str, DecodeError> {
        self.pos += 1;
        let start = self.pos;
        let mut seg = start;
        let mut owned: Option<Vec<u8>> = None;
        loop {
            let Some(i) = memchr::memchr2(b'"', b'\\', &self.b[self.pos..]) else {
                return self.fail_at(start - 1, "unterminated string");
            };
            let at = self.pos + i;
            self.no_control(seg, at)?;
            if self.b[at] == b'"' {
                self.pos = at + 1;
                return Ok(match owned {
                    None => Str::Slice(start, at),
                    Some(mut v) => {
                        v.extend_from_slice(&self.b[seg..at]);
                        Str::Owned(v)
                    }
                });
            }
            let mut v = owned
                .take()
                .unwrap_or_else(|| Vec::with_capacity(at - start + 16));
            v.extend_from_slice(&self.b[seg..at]);
            self.pos = at + 1;
            self.escape(&mut v, at)?;
            owned = Some(v);
            seg = self.pos;
        }
    }

    /// JSON forbids raw control characters in strings. The check folds
    /// without an early exit so that it vectorises; the position is looked
    /// for only on failure.
    #[inline]
    fn no_control(&self, from: usize, to: usize) -> Result<(), DecodeError> {
        let s = &self.b[from..to];
        if s.iter().fold(false, |acc, &c| acc | (c < 0x20)) {
            let i = s.iter().position(|&c| c < 0x20).unwrap_or(0);
            return self.fail_at(from + i, "control character in a string (must be escaped)");
        }
        Ok(())
    }

    /// After a backslash at `at`.
    fn escape(&mut self, v: &mut Vec<u8>, at: usize) -> Result<(), DecodeError> {
        let Some(c) = self.peek() else {
            return self.fail_at(at, "unterminated escape");
        };
        self.pos += 1;
        let simple = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let hi = self.hex4(at)?;
                let cp = match hi {
                    0xD800..=0xDBFF => {
                        if self.b.get(self.pos..self.pos + 2) != Some(b"\\u") {
                            return self.fail_at(at, "unpaired surrogate in \\u escape");
                        }
                        self.pos += 2;
                        let lo = self.hex4(at)?;
                        if !(0xDC00..=0xDFFF).contains(&lo) {
                            return self.fail_at(at, "unpaired surrogate in \\u escape");
                        }
                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                    }
                    0xDC00..=0xDFFF => {
                        return self.fail_at(at, "unpaired surrogate in \\u escape");
                    }
                    _ => hi,
                };
                let Some(ch) = char::from_u32(cp) else {
                    return self.fail_at(at, "invalid \\u escape");
                };
                let mut buf = [0u8; 4];
                v.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                return Ok(());
            }
            _ => return self.fail_at(at, "invalid escape"),
        };
        v.push(simple);
        Ok(())
    }

    fn hex4(&mut self, at: usize) -> Result<u32, DecodeError> {
        let Some(digits) = self.b.get(self.pos..self.pos + 4) else {
            return self.fail_at(at, "truncated \\u escape");
        };
        let mut n = 0u32;
        for &d in digits {
            let x = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return self.fail_at(at, "invalid \\u escape"),
            };
            n = n * 16 + u32::from(x);
        }
        self.pos += 4;
        Ok(n)
    }

    /// A JSON integer: sign and magnitude.
    fn integer(&mut self, name: &str) -> Result<(bool, u64), DecodeError> {
        let start = self.pos;
        let neg = self.peek() == Some(b'-');
        if neg {
            self.pos += 1;
        }
        let first = self.pos;
        let mut n: u64 = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            n = match n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
            {
                Some(n) => n,
                None => return self.fail_at(start, format!("`{name}` is out of range")),
            };
            self.pos += 1;
        }
        let digits = self.pos - first;
        if digits == 0 {
            return self.fail_at(start, format!("`{name}` must be an integer"));
        }
        if digits > 1 && self.b[first] == b'0' {
            return self.fail_at(start, format!("`{name}` has a leading zero"));
        }
        if let Some(b'.' | b'e' | b'E') = self.peek() {
            return self.fail_at(start, format!("`{name}` must be an integer"));
        }
        Ok((neg, n))
    }

    fn unsigned(&mut self, name: &str, max: u64) -> Result<u64, DecodeError> {
        let at = self.pos;
        let (neg, n) = self.integer(name)?;
        if neg && n != 0 {
            return self.fail_at(at, format!("`{name}` must not be negative"));
        }
        if n > max {
            return self.fail_at(at, format!("`{name}` is out of range (at most {max})"));
        }
        Ok(n)
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), DecodeError> {
        if self.b.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(())
        } else {
            self.fail("invalid literal")
        }
    }

    /// Skips any JSON value, checking it is well formed.
    fn skip_value(&mut self, depth: usize) -> Result<(), DecodeError> {
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(b'{') => {
                let depth = self.deeper(depth)?;
                self.pos += 1;
                self.ws();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    if self.peek() != Some(b'"') {
                        return self.fail("expected a key in double quotes");
                    }
                    self.string()?;
                    self.ws();
                    self.expect(b':', "expected `:` after the key")?;
                    self.ws();
                    self.skip_value(depth)?;
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return self.fail("expected `,` or `}` in an object"),
                    }
                }
            }
            Some(b'[') => {
                let depth = self.deeper(depth)?;
                self.pos += 1;
                self.ws();
                if self.peek() == Some(b']') {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    self.ws();
                    self.skip_value(depth)?;
                    self.ws();
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            return Ok(());
                        }
                        _ => return self.fail("expected `,` or `]` in an array"),
                    }
                }
            }
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.skip_number(),
            Some(_) => self.fail("expected a value"),
            None => self.fail("unexpected end of input"),
        }
    }

    fn deeper(&self, depth: usize) -> Result<usize, DecodeError> {
        if depth >= MAX_DEPTH {
            return self.fail(format!("values nested deeper than {MAX_DEPTH}"));
        }
        Ok(depth + 1)
    }

    /// Any JSON number, by the grammar of RFC 8259.
    fn skip_number(&mut self) -> Result<(), DecodeError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return self.fail_at(start, "invalid number"),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return self.fail_at(start, "invalid number");
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return self.fail_at(start, "invalid number");
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }
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

/// A JSON string from UTF-8 bytes, quotes included.
fn write_str(out: &mut BytesMut, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.put_u8(b'"');
    let mut run = 0;
    for (i, &c) in s.iter().enumerate() {
        let e = ESCAPE[c as usize];
        if e == 0 {
            continue;
        }
        out.put_slice(&s[run..i]);
        if e == b'u' {
            out.put_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(c >> 4) as usize],
                HEX[(c & 15) as usize],
            ]);
        } else {
            out.put_slice(&[b'\\', e]);
        }
        run = i + 1;
    }
    out.put_slice(&s[run..]);
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
