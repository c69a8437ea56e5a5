//! HTTP request bodies: the JSON array of events the http source takes.
#![no_main]

use bytes::Bytes;
use dab_connectors::codec::json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(events) = json::decode_array(Bytes::copy_from_slice(data)) {
        // `{}` is the shortest event: at least two bytes each.
        assert!(events.len() <= data.len() / 2);
    }
});
