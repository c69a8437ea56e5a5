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
    /// The bytes the event arrived as, while it is unchanged. Code that
    /// changes a field directly must call [`Event::touch`]; prefer
    /// [`Event::with_raw`] and [`Event::raw`] to reading this.
    pub raw: Option<(RawCodec, Bytes)>,
    /// `message` parsed as JSON on first use by a `fields.` expression
    /// (`crate::payload`); not part of the event's value.
    pub payload: crate::payload::PayloadCache,
    /// Where a source with positions read the event from (a Kafka topic,
    /// partition and offset); not part of the event's value.
    pub origin: Origin,
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

    /// Records the bytes this event was decoded from.
    #[inline]
    pub fn with_raw(mut self, codec: RawCodec, bytes: Bytes) -> Event {
        self.raw = Some((codec, bytes));
        self
    }

    /// Records the bytes this event was decoded from, in place (decoders
    /// avoid moving the whole event twice).
    #[inline]
    pub fn set_raw(&mut self, codec: RawCodec, bytes: Bytes) {
        self.raw = Some((codec, bytes));
    }

    /// The arrival bytes, if the event is unchanged and was in `codec`.
    #[inline]
    pub fn raw(&self, codec: RawCodec) -> Option<&Bytes> {
        match &self.raw {
            Some((c, b)) if *c == codec => Some(b),
            _ => None,
        }
    }

    /// A rough size for byte metrics and memory bounds.
    pub fn size_hint(&self) -> usize {
        match &self.raw {
            Some((_, b)) => b.len(),
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

    #[test]
    fn text_rejects_invalid_utf8() {
        assert!(Text::from_bytes(Bytes::from_static(&[0xff])).is_none());
        assert_eq!(
            Text::from_bytes(Bytes::from_static(b"ok")).map(|t| t.len()),
            Some(2)
        );
    }
}
