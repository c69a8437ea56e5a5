//! HTTP request bodies: the JSON array of events the http source takes,
//! read as the source reads it, a few events at a time (`ArrayReader`).
//! However the body is cut into chunks, the events, or the error, are
//! those of reading it whole.
#![no_main]

use bytes::Bytes;
use dab_connectors::codec::json::{self, ArrayReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let body = Bytes::copy_from_slice(data);
    let whole = json::decode_array(body.clone());
    if let Ok(events) = &whole {
        // `{}` is the shortest event: at least two bytes each.
        assert!(events.len() <= data.len() / 2);
    }
    // A chunk size from 1 to 7 that the input chooses without spending
    // bytes on it.
    let max = data.len() % 7 + 1;
    let chunked = ArrayReader::new(body).and_then(|mut reader| {
        let mut events = Vec::new();
        while !reader.is_done() {
            let before = events.len();
            reader.next_chunk(max, &mut events)?;
            assert!(events.len() - before <= max, "a chunk over its size");
        }
        Ok(events)
    });
    assert_eq!(whole, chunked, "chunks of {max} disagree with the whole body");
});
