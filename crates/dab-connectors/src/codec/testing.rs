//! Proptest strategies shared by the codec tests.

// `Event` has a private field: no struct literals outside dab-api.
#![allow(clippy::field_reassign_with_default)]

use bytes::Bytes;
use dab_api::{Event, Text};
use proptest::collection::vec;
use proptest::prelude::*;

/// Strings with what JSON must escape, unicode, and plain names.
pub(crate) fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_.-]{0,12}",
        any::<String>(),
        // The characters that need escaping, densely.
        "[\"\\\\/\n\r\t\u{0}-\u{1f}\u{7f}é😀\u{2028}a]{0,10}",
    ]
}

/// Any event: UTF-8 or binary messages, signatures, unique tag keys.
pub(crate) fn event() -> impl Strategy<Value = Event> {
    let message = prop_oneof![
        text().prop_map(Bytes::from),
        vec(any::<u8>(), 0..64).prop_map(Bytes::from),
    ];
    (
        any::<i64>(),
        text(),
        text(),
        any::<u64>(),
        any::<u32>(),
        message,
        vec(any::<u8>(), 0..40),
        vec((text(), text()), 0..6),
    )
        .prop_map(
            |(timestamp, host, ty, offset, pid, message, signature, tags)| {
                let mut ev = Event::default();
                ev.timestamp = timestamp;
                ev.host = Text::from(host);
                ev.ty = Text::from(ty);
                ev.offset = offset;
                ev.pid = pid;
                ev.message = message;
                ev.signature = Bytes::from(signature);
                for (k, v) in tags {
                    if ev.tag(&k).is_none() {
                        ev.tags.push((Text::from(k), Text::from(v)));
                    }
                }
                ev
            },
        )
}
