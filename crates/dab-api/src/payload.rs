//! An event's payload (`message`) read as a JSON object, for expressions
//! over `fields.` (SPEC section 7). The parse is kept on the event, so a
//! payload is parsed at most once however many stages read it; the cache
//! remembers which bytes it parsed, so code that replaces `message` can
//! never read a stale parse.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::Value;

/// One step of a `fields.` path: `.name` or `["k-1"]` (both are keys).
pub type PathKey = str;

/// The parse of an event's payload, made on first use.
#[derive(Clone, Default)]
pub struct PayloadCache(OnceLock<Parsed>);

#[derive(Clone)]
struct Parsed {
    /// Which bytes were parsed: the message's address and length.
    of: (usize, usize),
    /// `None` when the message is not a JSON object.
    object: Option<Arc<Value>>,
}

/// The cache says nothing about the event: events are equal without it.
impl PartialEq for PayloadCache {
    fn eq(&self, _: &PayloadCache) -> bool {
        true
    }
}

impl std::fmt::Debug for PayloadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "PayloadCache(parsed)"
        } else {
            "PayloadCache"
        })
    }
}

fn identity(message: &Bytes) -> (usize, usize) {
    (message.as_ptr() as usize, message.len())
}

fn parse(message: &[u8]) -> Option<Arc<Value>> {
    match serde_json::from_slice::<Value>(message) {
        Ok(v @ Value::Object(_)) => Some(Arc::new(v)),
        _ => None,
    }
}

impl PayloadCache {
    /// Calls `f` with the payload of `message` as a JSON object, or `None`
    /// when it is not one, parsing it only the first time.
    pub fn with<R>(&self, message: &Bytes, f: impl FnOnce(Option<&Value>) -> R) -> R {
        let of = identity(message);
        let parsed = self.0.get_or_init(|| Parsed {
            of,
            object: parse(message),
        });
        if parsed.of == of {
            f(parsed.object.as_deref())
        } else {
            // `message` was replaced after the first parse.
            f(parse(message).as_deref())
        }
    }

    /// Whether a parse is kept (for tests and benchmarks).
    pub fn is_parsed(&self) -> bool {
        self.0.get().is_some()
    }
}

/// The value at `path` in a payload object: `None` when a step is absent
/// or steps into something that is not an object.
pub fn lookup<'a, S: AsRef<PathKey>>(object: &'a Value, path: &[S]) -> Option<&'a Value> {
    path.iter()
        .try_fold(object, |v, key| v.as_object()?.get(key.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_once_and_follows_a_replaced_message() {
        let cache = PayloadCache::default();
        let first = Bytes::from_static(br#"{"a":{"b":1}}"#);
        let got = cache.with(&first, |v| lookup(v.expect("object"), &["a", "b"]).cloned());
        assert_eq!(got, Some(Value::from(1)));
        assert!(cache.is_parsed());
        // The same bytes: the kept parse.
        assert_eq!(
            cache.with(&first, |v| v.map(|o| o["a"]["b"].clone())),
            Some(Value::from(1))
        );
        // Other bytes in the message: parsed again, never the stale value.
        let second = Bytes::from_static(br#"{"a":{"b":2}}"#);
        assert_eq!(
            cache.with(&second, |v| v.map(|o| o["a"]["b"].clone())),
            Some(Value::from(2))
        );
    }

    #[test]
    fn a_message_that_is_not_an_object_has_no_fields() {
        for m in [&b"[1]"[..], b"7", b"not json", b"", b"\"s\""] {
            let cache = PayloadCache::default();
            assert!(cache.with(&Bytes::copy_from_slice(m), |v| v.is_none()));
        }
    }

    #[test]
    fn lookup_stops_at_what_is_not_an_object() {
        let v: Value = serde_json::from_str(r#"{"a":[1],"k-1":{"x":true}}"#).expect("json");
        assert_eq!(lookup(&v, &["k-1", "x"]), Some(&Value::Bool(true)));
        assert_eq!(lookup(&v, &["a", "0"]), None);
        assert_eq!(lookup(&v, &["missing"]), None);
    }
}
