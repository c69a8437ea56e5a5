//! The scanner behind `json::decode`: one pass over the bytes, filling an
//! `Event` in place.
//!
//! Shaped for speed, as the NDJSON path has a budget of a few hundred
//! nanoseconds per event: known keys are matched straight in the input,
//! strings without escapes are found eight bytes at a time and become
//! ranges of the input (escapes take a cold path that copies), and an
//! error is recorded in the parser while functions return a unit `Fail`,
//! so results travel in registers rather than through memory.

use base64::Engine as _;
use bytes::Bytes;
use dab_api::{Event, Text};

use super::intern::intern;
use super::swar::{count_digits, find_special, parse_digits};
use super::{DecodeError, Present, BASE64};

/// How deep unknown values may nest before we refuse them; the skipper
/// recurses, so this bounds the stack.
pub(crate) const MAX_DEPTH: usize = 64;

/// Decoding failed; the parser holds where and why.
pub(crate) struct Fail;

type R<T> = Result<T, Fail>;

/// A decoded JSON string: a range of the input when it had no escapes.
enum Str {
    Slice(usize, usize),
    Owned(Vec<u8>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Timestamp,
    Host,
    Type,
    Offset,
    Pid,
    Message,
    MessageB64,
    Signature,
    Tags,
    Unknown,
}

impl Field {
    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    fn of(key: &[u8]) -> Field {
        match key {
            b"timestamp" => Field::Timestamp,
            b"host" => Field::Host,
            b"type" => Field::Type,
            b"offset" => Field::Offset,
            b"pid" => Field::Pid,
            b"message" => Field::Message,
            b"message_b64" => Field::MessageB64,
            b"signature" => Field::Signature,
            b"tags" => Field::Tags,
            _ => Field::Unknown,
        }
    }
}

pub(crate) struct Parser<'a> {
    src: &'a Bytes,
    b: &'a [u8],
    pub(crate) pos: usize,
    /// Set when whitespace skipped since the last `clear_newline` held a
    /// `\n`. Strings cannot hold a raw one, so this tells whether an
    /// object spans lines without searching it again.
    newline: bool,
    error: Option<(usize, String)>,
}

impl<'a> Parser<'a> {
    pub(crate) fn new(src: &'a Bytes) -> Parser<'a> {
        Parser {
            src,
            b: src,
            pos: 0,
            newline: false,
            error: None,
        }
    }

    /// The recorded error, with a 1-based column.
    pub(crate) fn error(&mut self) -> DecodeError {
        let (at, reason) = self
            .error
            .take()
            .unwrap_or((self.pos, "invalid JSON".to_owned()));
        DecodeError::Json {
            column: at + 1,
            reason,
        }
    }

    #[cold]
    #[inline(never)]
    pub(crate) fn fail_at<T>(&mut self, at: usize, reason: impl Into<String>) -> R<T> {
        self.error = Some((at, reason.into()));
        Err(Fail)
    }

    fn fail<T>(&mut self, reason: &str) -> R<T> {
        self.fail_at(self.pos, reason)
    }

    #[inline]
    pub(crate) fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.b.len()
    }

    pub(crate) fn clear_newline(&mut self) {
        self.newline = false;
    }

    pub(crate) fn saw_newline(&self) -> bool {
        self.newline
    }

    #[inline]
    pub(crate) fn ws(&mut self) {
        while let Some(c @ (b' ' | b'\t' | b'\n' | b'\r')) = self.peek() {
            self.newline |= c == b'\n';
            self.pos += 1;
        }
    }

    #[inline]
    pub(crate) fn expect(&mut self, c: u8, reason: &str) -> R<()> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            self.fail(reason)
        }
    }

    /// An event object, at `{`, into `ev`.
    pub(crate) fn object(&mut self, ev: &mut Event, present: &mut Present) -> R<()> {
        let mut seen: u16 = 0;
        self.expect(b'{', "expected `{` to open an event object")?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.ws();
            let key_at = self.pos;
            let field = self.key()?;
            self.ws();
            self.expect(b':', "expected `:` after the key")?;
            self.ws();
            if field == Field::Unknown {
                self.skip_value(0)?;
            } else {
                if seen & field.bit() != 0 {
                    let name = self.key_name(key_at);
                    return self.fail_at(key_at, format!("duplicate key `{name}`"));
                }
                seen |= field.bit();
                let both = Field::Message.bit() | Field::MessageB64.bit();
                if seen & both == both {
                    return self.fail_at(key_at, "both `message` and `message_b64` given");
                }
                if !self.null()? {
                    self.field(field, ev, present)?;
                }
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return self.fail("expected `,` or `}` after a value"),
            }
        }
    }

    /// The key at `at` again, for a message (it was valid once).
    #[cold]
    fn key_name(&mut self, at: usize) -> String {
        let end = self.pos;
        self.pos = at;
        let name = match self.string() {
            Ok(s) => String::from_utf8_lossy(self.bytes_of(&s)).into_owned(),
            Err(Fail) => String::new(),
        };
        self.pos = end;
        name
    }

    /// A key, at its opening quote. Known keys spelt without escapes are
    /// matched in place; anything else goes through the string decoder.
    #[inline]
    fn key(&mut self) -> R<Field> {
        if self.peek() != Some(b'"') {
            return self.fail("expected a key in double quotes");
        }
        let rest = &self.b[self.pos + 1..];
        let known: Option<(Field, usize)> = match rest.first() {
            Some(b't') if rest.starts_with(b"timestamp\"") => Some((Field::Timestamp, 9)),
            Some(b't') if rest.starts_with(b"type\"") => Some((Field::Type, 4)),
            Some(b't') if rest.starts_with(b"tags\"") => Some((Field::Tags, 4)),
            Some(b'h') if rest.starts_with(b"host\"") => Some((Field::Host, 4)),
            Some(b'o') if rest.starts_with(b"offset\"") => Some((Field::Offset, 6)),
            Some(b'p') if rest.starts_with(b"pid\"") => Some((Field::Pid, 3)),
            Some(b'm') if rest.starts_with(b"message\"") => Some((Field::Message, 7)),
            Some(b'm') if rest.starts_with(b"message_b64\"") => Some((Field::MessageB64, 11)),
            Some(b's') if rest.starts_with(b"signature\"") => Some((Field::Signature, 9)),
            _ => None,
        };
        if let Some((field, len)) = known {
            self.pos += len + 2;
            return Ok(field);
        }
        let key = self.string()?;
        Ok(Field::of(self.bytes_of(&key)))
    }

    /// Consumes `null` if it is next.
    #[inline]
    fn null(&mut self) -> R<bool> {
        if self.peek() != Some(b'n') {
            return Ok(false);
        }
        self.literal(b"null")?;
        Ok(true)
    }

    fn field(&mut self, field: Field, ev: &mut Event, present: &mut Present) -> R<()> {
        let at = self.pos;
        match field {
            Field::Timestamp => {
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
            Field::Offset => {
                ev.offset = self.unsigned("offset", u64::MAX)?;
                present.offset = true;
            }
            Field::Pid => {
                let pid = self.unsigned("pid", u64::from(u32::MAX))?;
                ev.pid = u32::try_from(pid).unwrap_or(u32::MAX);
            }
            Field::Host => {
                ev.host = self.text_field("host")?;
                present.host = true;
            }
            Field::Type => ev.ty = self.text_field("type")?,
            Field::Message => {
                let s = self.string_field("message")?;
                ev.message = self.bytes_value(s);
            }
            Field::MessageB64 => {
                let s = self.string_field("message_b64")?;
                ev.message = self.base64(&s, at, "message_b64")?;
            }
            Field::Signature => {
                let s = self.string_field("signature")?;
                ev.signature = self.base64(&s, at, "signature")?;
            }
            Field::Tags => self.tags(&mut ev.tags)?,
            Field::Unknown => self.skip_value(0)?,
        }
        Ok(())
    }

    fn bytes_of<'s>(&'s self, s: &'s Str) -> &'s [u8] {
        match s {
            Str::Slice(a, b) => &self.b[*a..*b],
            Str::Owned(v) => v,
        }
    }

    fn bytes_value(&self, s: Str) -> Bytes {
        match s {
            Str::Slice(a, b) => self.src.slice(a..b),
            Str::Owned(v) => Bytes::from(v),
        }
    }

    /// A string as `Text`, at its opening quote: interned when short (see
    /// `codec::intern`), else a slice of the input.
    #[inline(always)]
    fn text(&mut self) -> R<Text> {
        let at = self.pos;
        let s = match self.plain_string() {
            Some((a, b)) => {
                if let Some(t) = intern(&self.b[a..b]) {
                    return Ok(t);
                }
                Str::Slice(a, b)
            }
            None => self.string_escaped()?,
        };
        self.text_value(s, at)
    }

    fn text_value(&mut self, s: Str, at: usize) -> R<Text> {
        if let Some(t) = intern(self.bytes_of(&s)) {
            return Ok(t);
        }
        match Text::from_bytes(self.bytes_value(s)) {
            Some(t) => Ok(t),
            // Unreachable after the UTF-8 check of the whole input and our
            // own unescaping; an error is still better than a panic.
            None => self.fail_at(at, "invalid UTF-8 in string"),
        }
    }

    #[inline]
    fn string_field(&mut self, name: &str) -> R<Str> {
        if self.peek() != Some(b'"') {
            return self.fail_at(self.pos, format!("`{name}` must be a string"));
        }
        self.string()
    }

    #[inline]
    fn text_field(&mut self, name: &str) -> R<Text> {
        if self.peek() != Some(b'"') {
            return self.fail_at(self.pos, format!("`{name}` must be a string"));
        }
        self.text()
    }

    fn base64(&mut self, s: &Str, at: usize, name: &str) -> R<Bytes> {
        match BASE64.decode(self.bytes_of(s)) {
            Ok(v) => Ok(Bytes::from(v)),
            Err(e) => self.fail_at(at, format!("`{name}` is not valid base64: {e}")),
        }
    }

    fn tags(&mut self, tags: &mut Vec<(Text, Text)>) -> R<()> {
        if self.peek() != Some(b'{') {
            return self.fail("`tags` must be an object of strings");
        }
        self.pos += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        if tags.capacity() == 0 {
            // Room for a typical set at once, not by doubling from one.
            *tags = Vec::with_capacity(4);
        }
        // Past a handful of tags, a set keeps the duplicate check linear.
        let mut index: Option<std::collections::HashSet<Text>> = None;
        loop {
            self.ws();
            let key_at = self.pos;
            if self.peek() != Some(b'"') {
                return self.fail("expected a tag key in double quotes");
            }
            let k = self.text()?;
            self.ws();
            self.expect(b':', "expected `:` after the tag key")?;
            self.ws();
            let val_at = self.pos;
            if self.peek() != Some(b'"') {
                return self.fail_at(val_at, format!("tag `{k}` must have a string value"));
            }
            let v = self.text()?;
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

    /// A string, at its opening quote. The common case, no escapes, stays
    /// here; the rest goes to `string_escaped`.
    #[inline]
    fn string(&mut self) -> R<Str> {
        match self.plain_string() {
            Some((a, b)) => Ok(Str::Slice(a, b)),
            None => self.string_escaped(),
        }
    }

    /// The range of a string without escapes, at its opening quote, and
    /// past it; `None` (not moved) for any other string.
    #[inline(always)]
    fn plain_string(&mut self) -> Option<(usize, usize)> {
        let start = self.pos + 1;
        let i = find_special(self.b.get(start..)?)?;
        if self.b[start + i] != b'"' {
            return None;
        }
        self.pos = start + i + 1;
        Some((start, start + i))
    }

    #[cold]
    #[inline(never)]
    fn string_escaped(&mut self) -> R<Str> {
        self.pos += 1;
        let start = self.pos;
        let mut seg = start;
        let mut v: Vec<u8> = Vec::new();
        loop {
            let Some(i) = find_special(&self.b[self.pos..]) else {
                return self.fail_at(start - 1, "unterminated string");
            };
            let at = self.pos + i;
            match self.b[at] {
                b'"' => {
                    self.pos = at + 1;
                    v.extend_from_slice(&self.b[seg..at]);
                    return Ok(Str::Owned(v));
                }
                b'\\' => {
                    v.extend_from_slice(&self.b[seg..at]);
                    self.pos = at + 1;
                    self.escape(&mut v, at)?;
                    seg = self.pos;
                }
                _ => return self.fail_at(at, "control character in a string (must be escaped)"),
            }
        }
    }

    /// After a backslash at `at`.
    fn escape(&mut self, v: &mut Vec<u8>, at: usize) -> R<()> {
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

    fn hex4(&mut self, at: usize) -> R<u32> {
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

    /// A JSON integer: sign and magnitude. The loop assumes the common
    /// case (at most 19 digits, which cannot overflow); anything else is
    /// sorted out by `integer_checked`.
    #[inline(always)]
    fn integer(&mut self, name: &str) -> R<(bool, u64)> {
        let start = self.pos;
        let neg = self.peek() == Some(b'-');
        let first = start + usize::from(neg);
        let digits = count_digits(&self.b[first..]);
        self.pos = first + digits;
        let plain = digits > 0
            && digits <= 19
            && (digits == 1 || self.b[first] != b'0')
            && !matches!(self.peek(), Some(b'.' | b'e' | b'E'));
        if plain {
            Ok((neg, parse_digits(&self.b[first..self.pos])))
        } else {
            self.integer_checked(start, first, name)
        }
    }

    #[cold]
    #[inline(never)]
    fn integer_checked(&mut self, start: usize, first: usize, name: &str) -> R<(bool, u64)> {
        let digits = self.pos - first;
        if digits == 0 || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return self.fail_at(start, format!("`{name}` must be an integer"));
        }
        if digits > 1 && self.b[first] == b'0' {
            return self.fail_at(start, format!("`{name}` has a leading zero"));
        }
        let mut n = parse_digits(&self.b[first..first + 19]);
        for i in first + 19..self.pos {
            let d = u64::from(self.b[i] - b'0');
            match n.checked_mul(10).and_then(|n| n.checked_add(d)) {
                Some(m) => n = m,
                None => return self.fail_at(start, format!("`{name}` is out of range")),
            }
        }
        Ok((self.b[start] == b'-', n))
    }

    #[inline]
    fn unsigned(&mut self, name: &str, max: u64) -> R<u64> {
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

    fn literal(&mut self, word: &[u8]) -> R<()> {
        if self.b.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(())
        } else {
            self.fail("invalid literal")
        }
    }

    /// Skips any JSON value, checking it is well formed.
    fn skip_value(&mut self, depth: usize) -> R<()> {
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

    fn deeper(&mut self, depth: usize) -> R<usize> {
        if depth >= MAX_DEPTH {
            return self.fail_at(self.pos, format!("values nested deeper than {MAX_DEPTH}"));
        }
        Ok(depth + 1)
    }

    /// Any JSON number, by the grammar of RFC 8259.
    fn skip_number(&mut self) -> R<()> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.pos += count_digits(&self.b[self.pos..]),
            _ => return self.fail_at(start, "invalid number"),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            let n = count_digits(&self.b[self.pos..]);
            if n == 0 {
                return self.fail_at(start, "invalid number");
            }
            self.pos += n;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            let n = count_digits(&self.b[self.pos..]);
            if n == 0 {
                return self.fail_at(start, "invalid number");
            }
            self.pos += n;
        }
        Ok(())
    }
}
