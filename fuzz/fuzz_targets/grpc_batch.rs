//! The Murron gRPC batch wire: the bytes of one `Batch` message as the
//! murron_grpc source receives them, decoded into events.
#![no_main]

use bytes::Bytes;
use dab_connectors::murron::wire::Batch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let batch = Batch::from_bytes(Bytes::copy_from_slice(data));
    if let Ok(events) = batch.decode() {
        // Each event takes at least one byte of the wire.
        assert!(events.len() <= data.len());
    }
});
