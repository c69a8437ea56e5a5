//! The Murron gRPC batch wire: the bytes of one `Batch` message as the
//! murron_grpc source receives them, read as the source reads them, a few
//! events at a time (`BatchReader`). However the batch is cut into
//! chunks, the events, or the error, are those of decoding it whole.
#![no_main]

use bytes::Bytes;
use dab_connectors::murron::wire::Batch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let batch = Batch::from_bytes(Bytes::copy_from_slice(data));
    let whole = batch.decode();
    if let Ok(events) = &whole {
        // Each event takes at least one byte of the wire.
        assert!(events.len() <= data.len());
    }
    // A chunk size from 1 to 7 that the input chooses without spending
    // bytes on it.
    let max = data.len() % 7 + 1;
    let mut reader = batch.reader();
    let mut events = Vec::new();
    let chunked = loop {
        if reader.is_done() {
            break Ok(events);
        }
        let before = events.len();
        if let Err(e) = reader.next_chunk(max, &mut events) {
            break Err(e);
        }
        assert!(events.len() - before <= max, "a chunk over its size");
    };
    assert_eq!(whole, chunked, "chunks of {max} disagree with the whole batch");
});
