//! Kafka message values: a Kafka source decodes each with its binding's
//! codec, JSON or protobuf; both run here on the same bytes.
#![no_main]

use bytes::Bytes;
use dab_connectors::codec::{json, proto};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let value = Bytes::copy_from_slice(data);
    let _ = json::decode(value.clone());
    let _ = proto::decode(value);
});
