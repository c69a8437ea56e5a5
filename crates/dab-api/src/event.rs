//! The Murron event (SPEC section 4).
//!
//! Strings are `Text`, a UTF-8 view over `bytes::Bytes`, so a decoder can
//! slice fields out of the buffer that arrived without copying, and fan-out
//! clones are reference-count bumps. An event also keeps the bytes it
//! arrived as (`raw`) while nothing has changed it, so an NDJSON-in,
//! NDJSON-out pipeline writes them back without encoding again.

use bytes::Bytes;

/// UTF-8 text held in `Bytes`. Construction checks UTF-8 once.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Text(Bytes);

impl Text {
    pub const fn from_static(s: &'static str) -> Text {
        Text(Bytes::from_static(s.as_bytes()))
    }

    /// `None` when the bytes are not UTF-8.
    pub fn from_bytes(b: Bytes) -> Option<Text> {
        std::str::from_utf8(&b).is_ok().then_some(Text(b))
    }

    pub fn as_str(&self) -> &str {
        // Checked at construction; a failure here is impossible, and "" is a
        // harmless answer rather than a panic.
        std::str::from_utf8(&self.0).unwrap_or("")
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for Text {
    fn from(s: String) -> Text {
        Text(Bytes::from(s))
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How `raw` is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawCodec {
    /// One JSON object, no trailing newline.
    Json,
    /// The protobuf `Event` message, no length prefix.
    Protobuf,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event {
    /// Nanoseconds since the epoch.
    pub timestamp: i64,
    pub host: Text,
    /// What `FilterType` matches, byte for byte.
    pub ty: Text,
    /// Per (host, pid, type) sequence number.
    pub offset: u64,
    pub pid: u32,
    pub message: Bytes,
    /// HMAC-SHA256 over the other fields; empty when unsigned.
    pub signature: Bytes,
    /// In arrival order; keys are unique. `dab.*` keys are DAB's own.
    pub tags: Vec<(Text, Text)>,
    /// The bytes the event arrived as, with a stamp of the fields they
    /// hold: [`Event::raw`] hands them out only while every encoded field
    /// is as it was, so no change, even one that forgets
    /// [`Event::touch`], can write stale bytes (issue 14 item 2). Made
    /// only by [`Event::with_raw`] and [`Event::set_raw`].
    pub raw: Option<Arrival>,
    /// `message` parsed as JSON on first use by a `fields.` expression
    /// (`crate::payload`); not part of the event's value.
    pub payload: crate::payload::PayloadCache,
    /// Where a source with positions read the event from (a Kafka topic,
    /// partition and offset); not part of the event's value.
    pub origin: Origin,
}

/// The bytes an event arrived as, and what its fields were then.
#[derive(Debug, Clone)]
pub struct Arrival {
    codec: RawCodec,
    bytes: Bytes,
    /// The message at arrival. Holding it keeps its memory from being
    /// reused while this lives, so an address and a length that match are
    /// the same bytes, and a payload need not be hashed.
    message: Bytes,
    /// [`stamp`] of the other encoded fields at arrival.
    stamp: u64,
}

impl PartialEq for Arrival {
    fn eq(&self, other: &Arrival) -> bool {
        self.codec == other.codec && self.bytes == other.bytes
    }
}

/// The same bytes: one slice of one allocation (held by an [`Arrival`],
/// so its address cannot have been reused).
fn same(a: &Bytes, b: &Bytes) -> bool {
    a.len() == b.len() && (a.is_empty() || a.as_ptr() == b.as_ptr())
}

/// A hash of the encoded fields other than the message: timestamp,
/// offset, pid, host, type, signature (mostly empty) and the tags in
/// order. Each text
/// is hashed on its own (two independent multiplies for one of up to 16
/// bytes, the usual case), and the field hashes are folded by position,
/// so the work overlaps: about 10 ns for a usual event. Any change of a
/// field changes it but for a 64-bit collision.
fn stamp(e: &Event) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut acc = (e.timestamp as u64).wrapping_mul(K)
        ^ e.offset.rotate_left(21).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ u64::from(e.pid).rotate_left(42);
    let mut fold = |h: u64| acc = acc.rotate_left(7) ^ h;
    fold(text_hash(e.host.as_bytes()));
    fold(text_hash(e.ty.as_bytes()));
    fold(text_hash(&e.signature));
    fold(e.tags.len() as u64);
    for (k, v) in &e.tags {
        fold(text_hash(k.as_bytes()));
        fold(text_hash(v.as_bytes()));
    }
    // splitmix64's avalanche, so that nearby inputs differ in every bit.
    let mut z = acc;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The little-endian word of `b[at..at + 8]` (a fixed-size read: one
/// load, no copy loop). The caller keeps `at + 8 <= b.len()`.
fn w8(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn w4(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u64::from(u32::from_le_bytes(w))
}

/// A hash of one text, wyhash-style: overlapping fixed-size reads of its
/// first and last bytes and its length for up to 16 bytes (the usual
/// case), two lanes of words for longer ones.
fn text_hash(b: &[u8]) -> u64 {
    let n = b.len();
    let (a, c) = match n {
        0 => (0, 0),
        1..=3 => (
            (u64::from(b[0]) << 16) | (u64::from(b[n / 2]) << 8) | u64::from(b[n - 1]),
            0,
        ),
        4..=8 => (w4(b, 0), w4(b, n - 4)),
        9..=16 => (w8(b, 0), w8(b, n - 8)),
        _ => {
            let (mut a, mut c) = (0u64, 0u64);
            let mut at = 0;
            while at + 16 <= n {
                a = (a ^ w8(b, at)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                c = (c ^ w8(b, at + 8)).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
                at += 16;
            }
            // The last 16 bytes (overlapping): covers the remainder.
            (a ^ w8(b, n - 16), c ^ w8(b, n - 8))
        }
    };
    (a ^ 0x243F_6A88_85A3_08D3).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (c ^ n as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
}

/// A position in a partitioned, replayable log: where an event was read.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub topic: Text,
    pub partition: i32,
    pub offset: i64,
}

/// The position an event was read from, when its source has one. It rides
/// along with the event for sinks that name their output by it (the
/// parquet sink); equality, encodings and the UID ignore it.
#[derive(Debug, Clone, Default)]
pub struct Origin(pub Option<Position>);

impl PartialEq for Origin {
    fn eq(&self, _: &Origin) -> bool {
        true
    }
}

/// The type of an event that stands for input a source could not decode
/// (a Kafka message that is not an event). Pipelines send such events to
/// their `OnError` output, or count and drop them; they never reach a
/// stage or an ordinary output.
pub const UNDECODABLE_TYPE: &str = "dab.undecodable";

/// The tag that says why input was undecodable.
pub const ERROR_TAG: &str = "dab.error";

impl Event {
    /// Calls `f` with the payload as a JSON object (`None` when it is not
    /// one), parsed at most once for this event.
    pub fn with_payload<R>(&self, f: impl FnOnce(Option<&serde_json::Value>) -> R) -> R {
        self.payload.with(&self.message, f)
    }

    /// The payload as a JSON object, shared with the event's cache (no
    /// copy); `None` when it is not one. Parsed at most once.
    pub fn payload_value(&self) -> Option<std::sync::Arc<serde_json::Value>> {
        self.payload.value(&self.message)
    }

    /// Stands for input that is not an event: the bytes as they came in
    /// `message`, the reason in the `dab.error` tag, and where they came from
    /// in `host`.
    pub fn undecodable(origin: Text, input: Bytes, reason: String) -> Event {
        Event {
            host: origin,
            ty: Text::from_static(UNDECODABLE_TYPE),
            message: input,
            tags: vec![(Text::from_static(ERROR_TAG), Text::from(reason))],
            ..Event::default()
        }
    }

    pub fn is_undecodable(&self) -> bool {
        self.ty.as_bytes() == UNDECODABLE_TYPE.as_bytes()
    }

    pub fn tag(&self, key: &str) -> Option<&Text> {
        self.tags
            .iter()
            .find(|(k, _)| k.as_str() == key)
            .map(|(_, v)| v)
    }

    /// Sets or replaces a tag.
    pub fn set_tag(&mut self, key: Text, value: Text) {
        self.raw = None;
        match self.tags.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.tags.push((key, value)),
        }
    }

    /// Removes a tag; true when there was one. Forgets the arrival bytes
    /// only when something changed.
    pub fn remove_tag(&mut self, key: &str) -> bool {
        let before = self.tags.len();
        self.tags.retain(|(k, _)| k.as_str() != key);
        let changed = self.tags.len() != before;
        if changed {
            self.raw = None;
        }
        changed
    }

    /// Forgets the arrival bytes after a direct change of a field.
    pub fn touch(&mut self) {
        self.raw = None;
    }

    /// Records the bytes this event was decoded from: call it once the
    /// fields hold what the bytes say.
    #[inline]
    pub fn with_raw(mut self, codec: RawCodec, bytes: Bytes) -> Event {
        self.set_raw(codec, bytes);
        self
    }

    /// Records the bytes this event was decoded from, in place (decoders
    /// avoid moving the whole event twice).
    #[inline]
    pub fn set_raw(&mut self, codec: RawCodec, bytes: Bytes) {
        self.raw = Some(Arrival {
            codec,
            bytes,
            message: self.message.clone(),
            stamp: stamp(self),
        });
    }

    /// The arrival bytes, if they were in `codec` and every encoded field
    /// is as it was when they were recorded.
    #[inline]
    pub fn raw(&self, codec: RawCodec) -> Option<&Bytes> {
        let a = self.raw.as_ref()?;
        let fresh = a.codec == codec && same(&a.message, &self.message) && a.stamp == stamp(self);
        fresh.then_some(&a.bytes)
    }

    /// A rough size for byte metrics and memory bounds.
    pub fn size_hint(&self) -> usize {
        match &self.raw {
            Some(a) => a.bytes.len(),
            None => {
                48 + self.host.len()
                    + self.ty.len()
                    + self.message.len()
                    + self.signature.len()
                    + self
                        .tags
                        .iter()
                        .map(|(k, v)| k.len() + v.len() + 8)
                        .sum::<usize>()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changing_a_tag_forgets_the_arrival_bytes() {
        let mut e = Event {
            ty: Text::from("A"),
            ..Event::default()
        }
        .with_raw(RawCodec::Json, Bytes::from_static(b"{\"type\":\"A\"}"));
        assert!(e.raw(RawCodec::Json).is_some());
        assert!(e.raw(RawCodec::Protobuf).is_none());
        e.set_tag(Text::from("k"), Text::from("v"));
        assert!(e.raw(RawCodec::Json).is_none());
        assert_eq!(e.tag("k").map(Text::as_str), Some("v"));
        e.set_tag(Text::from("k"), Text::from("w"));
        assert_eq!(e.tags.len(), 1);
    }

    /// Direct writes to any encoded field, with no `touch`, make the
    /// arrival bytes stale; the origin and the payload cache are not
    /// encoded and leave them fresh.
    #[test]
    fn a_direct_change_of_any_encoded_field_forgets_the_arrival_bytes() {
        let fresh = || {
            Event {
                timestamp: 5,
                host: Text::from("h"),
                ty: Text::from("A"),
                offset: 7,
                pid: 9,
                message: Bytes::from(b"payload".to_vec()),
                signature: Bytes::from(b"sig".to_vec()),
                tags: vec![(Text::from("k"), Text::from("v"))],
                ..Event::default()
            }
            .with_raw(RawCodec::Json, Bytes::from_static(b"{\"type\":\"A\"}"))
        };
        type Change = (&'static str, fn(&mut Event));
        let changes: Vec<Change> = vec![
            ("timestamp", |e| e.timestamp += 1),
            ("host", |e| e.host = Text::from("g")),
            ("type", |e| e.ty = Text::from("B")),
            ("offset", |e| e.offset += 1),
            ("pid", |e| e.pid += 1),
            // The same text in a new buffer is a change too (conservative).
            ("message", |e| e.message = Bytes::from(b"payload".to_vec())),
            ("message length", |e| e.message.truncate(3)),
            ("signature", |e| e.signature = Bytes::new()),
            ("tag value", |e| e.tags[0].1 = Text::from("w")),
            ("tag key", |e| e.tags[0].0 = Text::from("j")),
            ("tag added", |e| {
                e.tags.push((Text::from("x"), Text::from("y")))
            }),
            ("tags cleared", |e| e.tags.clear()),
        ];
        for (what, change) in changes {
            let mut e = fresh();
            assert!(e.raw(RawCodec::Json).is_some(), "{what}: fresh at first");
            change(&mut e);
            assert!(e.raw(RawCodec::Json).is_none(), "{what}: stale bytes kept");
        }
        let mut e = fresh();
        e.origin = Origin(Some(Position {
            topic: Text::from("t"),
            partition: 1,
            offset: 2,
        }));
        let clone = e.clone();
        assert!(e.raw(RawCodec::Json).is_some(), "the origin is not encoded");
        assert!(clone.raw(RawCodec::Json).is_some(), "a clone is as fresh");
        // A change made and undone leaves the event as it arrived.
        e.host = Text::from("g");
        e.host = Text::from("h");
        assert!(e.raw(RawCodec::Json).is_some());
    }

    /// Every length class of `text_hash` sees a change of any one byte.
    #[test]
    fn a_text_hash_changes_with_any_byte() {
        for n in 0..40usize {
            let base: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            let h = text_hash(&base);
            for i in 0..n {
                let mut changed = base.clone();
                changed[i] ^= 0x20;
                assert_ne!(text_hash(&changed), h, "length {n}, byte {i}");
            }
            let mut longer = base.clone();
            longer.push(0);
            assert_ne!(text_hash(&longer), h, "length {n} and a NUL more");
        }
    }

    #[test]
    fn text_rejects_invalid_utf8() {
        assert!(Text::from_bytes(Bytes::from_static(&[0xff])).is_none());
        assert_eq!(
            Text::from_bytes(Bytes::from_static(b"ok")).map(|t| t.len()),
            Some(2)
        );
    }
}
