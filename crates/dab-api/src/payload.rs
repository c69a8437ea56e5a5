//! An event's payload (`message`) read as a JSON object, for expressions
//! over `fields.` (SPEC section 7). The parse is kept on the event, so a
//! payload is parsed at most once however many stages read it; the cache
//! remembers which bytes it parsed, so code that replaces `message` can
//! never read a stale parse.
//!
//! Two forms, each made on first use: an index of the top-level object
//! (each key and where its value lies in `message`; one allocation, values
//! read in place), which is what expressions use, and the whole
//! `serde_json::Value`, for consumers that need every field.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

/// The parse of an event's payload, made on first use.
#[derive(Clone, Default)]
pub struct PayloadCache {
    index: OnceLock<Kept<Index>>,
    value: OnceLock<Kept<Value>>,
}

/// A parse and the bytes it was made of (their address and length).
struct Kept<T> {
    of: (usize, usize),
    /// `None` when the message is not a JSON object.
    parsed: Option<Arc<T>>,
}

impl<T> Clone for Kept<T> {
    fn clone(&self) -> Self {
        Kept {
            of: self.of,
            parsed: self.parsed.clone(),
        }
    }
}

/// The cache says nothing about the event: events are equal without it.
impl PartialEq for PayloadCache {
    fn eq(&self, _: &PayloadCache) -> bool {
        true
    }
}

impl fmt::Debug for PayloadCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_parsed() {
            "PayloadCache(parsed)"
        } else {
            "PayloadCache"
        })
    }
}

fn identity(message: &Bytes) -> (usize, usize) {
    (message.as_ptr() as usize, message.len())
}

fn parse_value(message: &[u8]) -> Option<Arc<Value>> {
    match serde_json::from_slice::<Value>(message) {
        Ok(v @ Value::Object(_)) => Some(Arc::new(v)),
        _ => None,
    }
}

/// A payload value as an expression compares it: scalars read in place
/// (a string without escapes is borrowed), anything else `Other`.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Bool(bool),
    /// `null`, a list or an object.
    Other,
}

impl PayloadCache {
    /// Calls `f` with the payload of `message` as a JSON object, or `None`
    /// when it is not one, parsing it only the first time.
    pub fn with<R>(&self, message: &Bytes, f: impl FnOnce(Option<&Value>) -> R) -> R {
        f(self.value(message).as_deref())
    }

    /// The payload of `message` as a JSON object, shared (`None` when it
    /// is not one): for consumers that keep it beyond a call, without a
    /// copy. Parsed only the first time.
    pub fn value(&self, message: &Bytes) -> Option<Arc<Value>> {
        let of = identity(message);
        let kept = self.value.get_or_init(|| Kept {
            of,
            parsed: parse_value(message),
        });
        if kept.of == of {
            kept.parsed.clone()
        } else {
            parse_value(message)
        }
    }

    /// The value at `path` (`fields.a.b` is `["a", "b"]`) in the payload
    /// of `message`: `None` when the payload is not a JSON object or a step
    /// is absent or not an object. The top level is indexed once; nested
    /// objects are scanned where a path steps into them.
    pub fn field<'m, S: AsRef<str>>(&self, message: &'m Bytes, path: &[S]) -> Option<Scalar<'m>> {
        let (first, rest) = path.split_first()?;
        let of = identity(message);
        let kept = self.index.get_or_init(|| Kept {
            of,
            parsed: Index::of(message).map(Arc::new),
        });
        let fresh;
        let index = if kept.of == of {
            kept.parsed.as_deref()?
        } else {
            fresh = Index::of(message)?;
            &fresh
        };
        let mut raw = index.get(message, first.as_ref())?;
        for step in rest {
            let inner = Index::of(raw)?;
            raw = inner.get(raw, step.as_ref())?;
        }
        Some(scalar(raw))
    }

    /// The payload as [`PayloadCache::value`] gives it, but a new parse is
    /// not kept: for a consumer that reads it once (the parquet sink), so
    /// that it is freed as soon as that consumer is done, on its thread,
    /// rather than with the event, after its acknowledgement.
    pub fn value_once(&self, message: &Bytes) -> Option<Arc<Value>> {
        match self.value.get() {
            Some(kept) if kept.of == identity(message) => kept.parsed.clone(),
            _ => parse_value(message),
        }
    }

    /// Whether a parse is kept (for tests and benchmarks).
    pub fn is_parsed(&self) -> bool {
        self.index.get().is_some() || self.value.get().is_some()
    }
}

/// The keys of a JSON object and where each value lies in its text.
struct Index {
    entries: Vec<(Key, Range<usize>)>,
}

enum Key {
    /// Where the key stands in the text (it has no escapes).
    At(Range<usize>),
    /// A key with escapes, unescaped.
    Owned(Box<str>),
}

impl Index {
    /// `None` unless `text` is exactly one JSON object (whitespace around
    /// allowed), validated whole.
    fn of(text: &[u8]) -> Option<Index> {
        let base = text.as_ptr() as usize;
        let mut de = serde_json::Deserializer::from_slice(text);
        let entries = de.deserialize_map(IndexVisitor { base }).ok()?;
        de.end().ok()?;
        Some(Index { entries })
    }

    /// The text of the value of `key` (the last one, if given twice, as
    /// `serde_json::Value` keeps it).
    fn get<'t>(&self, text: &'t [u8], key: &str) -> Option<&'t [u8]> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| match k {
                Key::At(r) => text.get(r.clone()) == Some(key.as_bytes()),
                Key::Owned(s) => &**s == key,
            })
            .and_then(|(_, r)| text.get(r.clone()))
    }
}

fn offset(base: usize, s: &str) -> Range<usize> {
    let start = (s.as_ptr() as usize).wrapping_sub(base);
    start..start + s.len()
}

struct IndexVisitor {
    base: usize,
}

impl<'de> Visitor<'de> for IndexVisitor {
    type Value = Vec<(Key, Range<usize>)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(key) = map.next_key_seed(KeySeed { base: self.base })? {
            let raw: &'de RawValue = map.next_value()?;
            entries.push((key, offset(self.base, raw.get())));
        }
        Ok(entries)
    }
}

struct KeySeed {
    base: usize,
}

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key, E> {
        Ok(Key::At(offset(self.base, s)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Key, E> {
        Ok(Key::Owned(s.into()))
    }
}

/// Reads a value's text (already validated by the index) as a scalar.
fn scalar(raw: &[u8]) -> Scalar<'_> {
    match raw.first() {
        Some(b'"') => {
            let inner = &raw[1..raw.len().saturating_sub(1).max(1)];
            if !inner.contains(&b'\\') {
                if let Ok(s) = std::str::from_utf8(inner) {
                    return Scalar::Str(Cow::Borrowed(s));
                }
            }
            serde_json::from_slice::<String>(raw)
                .map_or(Scalar::Other, |s| Scalar::Str(Cow::Owned(s)))
        }
        Some(b't') => Scalar::Bool(true),
        Some(b'f') => Scalar::Bool(false),
        Some(b'-' | b'0'..=b'9') => match serde_json::from_slice::<serde_json::Number>(raw) {
            Ok(n) => match n.as_i64() {
                Some(i) => Scalar::Int(i),
                None => n.as_f64().map_or(Scalar::Other, Scalar::Float),
            },
            Err(_) => Scalar::Other,
        },
        _ => Scalar::Other,
    }
}

/// The value at `path` in a payload object: `None` when a step is absent
/// or steps into something that is not an object.
pub fn lookup<'a, S: AsRef<str>>(object: &'a Value, path: &[S]) -> Option<&'a Value> {
    path.iter()
        .try_fold(object, |v, key| v.as_object()?.get(key.as_ref()))
}

#[cfg(test)]
mod tests;
