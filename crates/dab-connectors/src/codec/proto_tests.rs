//! Tests of the protobuf codec: golden bytes written by Python's protobuf
//! from `proto/murron.proto` (and read field by field below), agreement
//! with prost's messages in both directions, presence, raw pass-through,
//! bad input.

#![allow(clippy::unwrap_used)]
// `Event` has a private field: no struct literals outside dab-api.
#![allow(clippy::field_reassign_with_default)]

use super::*;
use crate::codec::testing::event;
use proptest::collection::vec;
use proptest::prelude::*;
use prost::Message as _;

fn enc(ev: &Event) -> Bytes {
    let mut out = BytesMut::new();
    encode(ev, &mut out);
    out.freeze()
}

fn untouched(mut ev: Event) -> Event {
    ev.touch();
    ev
}

fn sample() -> Event {
    let mut ev = Event::default();
    ev.timestamp = 1_732_320_000_000_000_000;
    ev.host = Text::from("web-1");
    ev.ty = Text::from("MyEvent");
    ev.offset = 42;
    ev.pid = 311;
    ev.message = Bytes::from_static(b"GET /api/chat.postMessage 200");
    ev.tags = vec![(Text::from("env"), Text::from("prod"))];
    ev
}

fn reason(buf: &[u8]) -> String {
    match decode(Bytes::copy_from_slice(buf)) {
        Ok((ev, _)) => panic!("{buf:?} should fail, decoded {ev:?}"),
        Err(e) => e.reason(),
    }
}

/// `sample()` as Python's protobuf (grpcio-tools 1.x, `protoc -Iproto
/// --python_out`, `SerializeToString(deterministic=True)`) writes it:
///
/// ```text
/// e = murron_pb2.Event(timestamp=1732320000000000000, host="web-1", type="MyEvent",
///                      offset=42, pid=311, message=b"GET /api/chat.postMessage 200")
/// e.tags["env"] = "prod"
/// ```
#[rustfmt::skip]
const GOLDEN_SAMPLE: &[u8] = &[
    // 1: timestamp, varint 1732320000000000000
    0x08, 0x80, 0x80, 0xb8, 0xea, 0xc9, 0xfb, 0x9b, 0x85, 0x18,
    // 2: host, 5 bytes "web-1"
    0x12, 0x05, b'w', b'e', b'b', b'-', b'1',
    // 3: type, 7 bytes "MyEvent"
    0x1a, 0x07, b'M', b'y', b'E', b'v', b'e', b'n', b't',
    // 4: offset 42; 5: pid 311 (0xb7 0x02)
    0x20, 0x2a, 0x28, 0xb7, 0x02,
    // 6: message, 29 bytes
    0x32, 0x1d, b'G', b'E', b'T', b' ', b'/', b'a', b'p', b'i', b'/', b'c', b'h', b'a', b't',
    b'.', b'p', b'o', b's', b't', b'M', b'e', b's', b's', b'a', b'g', b'e', b' ', b'2', b'0', b'0',
    // 8: one tags entry of 11 bytes: 1: key "env", 2: value "prod"
    0x42, 0x0b, 0x0a, 0x03, b'e', b'n', b'v', 0x12, 0x04, b'p', b'r', b'o', b'd',
];

/// The extremes, as Python's protobuf writes them:
///
/// ```text
/// e = murron_pb2.Event(timestamp=-1, host="h", type="T", offset=2**64-1, pid=2**32-1,
///                      message=b"\x00\xff", signature=b"\x01\x02\x03")
/// e.tags["b"] = "2"; e.tags["a"] = "1"
/// ```
#[rustfmt::skip]
const GOLDEN_EXTREMES: &[u8] = &[
    // 1: timestamp -1: int64 is a ten-byte varint of two's complement
    0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    // 2: host "h"; 3: type "T"
    0x12, 0x01, b'h', 0x1a, 0x01, b'T',
    // 4: offset u64::MAX (ten bytes); 5: pid u32::MAX (five bytes)
    0x20, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    0x28, 0xff, 0xff, 0xff, 0xff, 0x0f,
    // 6: message 00 ff; 7: signature 01 02 03
    0x32, 0x02, 0x00, 0xff, 0x3a, 0x03, 0x01, 0x02, 0x03,
    // 8: tags in key order, one entry each
    0x42, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, b'1',
    0x42, 0x06, 0x0a, 0x01, b'b', 0x12, 0x01, b'2',
];

fn extremes() -> Event {
    let mut ev = Event::default();
    ev.timestamp = -1;
    ev.host = Text::from("h");
    ev.ty = Text::from("T");
    ev.offset = u64::MAX;
    ev.pid = u32::MAX;
    ev.message = Bytes::from_static(&[0x00, 0xff]);
    ev.signature = Bytes::from_static(&[1, 2, 3]);
    ev.tags = vec![
        (Text::from("a"), Text::from("1")),
        (Text::from("b"), Text::from("2")),
    ];
    ev
}

#[test]
fn writes_and_reads_the_bytes_python_protobuf_writes() {
    for (ev, golden) in [(sample(), GOLDEN_SAMPLE), (extremes(), GOLDEN_EXTREMES)] {
        assert_eq!(&enc(&ev)[..], golden, "{ev:?}");
        let (got, present) = decode(Bytes::from_static(golden)).unwrap();
        assert_eq!(present, Present::ALL);
        assert_eq!(untouched(got), ev);
        // prost reads the same event from them.
        assert_eq!(pb::Event::decode(golden).unwrap(), to_pb(&ev));
    }
}

#[test]
fn decodes_what_prost_writes() {
    let bytes = Bytes::from(to_pb(&sample()).encode_to_vec());
    let (ev, present) = decode(bytes.clone()).unwrap();
    assert_eq!(present, Present::ALL);
    assert_eq!(ev.raw(RawCodec::Protobuf), Some(&bytes));
    assert_eq!(untouched(ev), sample());
    // And writes the same bytes prost does.
    assert_eq!(enc(&sample()), bytes);
}

#[test]
fn payload_is_a_slice_of_the_input_and_short_strings_are_interned() {
    let bytes = Bytes::from(to_pb(&sample()).encode_to_vec());
    let range = bytes.as_ptr_range();
    let (ev, _) = decode(bytes.clone()).unwrap();
    assert!(range.contains(&ev.message.as_ptr()));
    let again = Bytes::from(to_pb(&sample()).encode_to_vec());
    let (ev2, _) = decode(again).unwrap();
    assert_eq!(ev.host.as_bytes().as_ptr(), ev2.host.as_bytes().as_ptr());
    assert!(!range.contains(&ev.host.as_bytes().as_ptr()));
}

#[test]
fn zero_timestamp_and_empty_host_are_missing_offset_never() {
    let (ev, present) = decode(Bytes::new()).unwrap();
    assert_eq!(
        present,
        Present {
            timestamp: false,
            host: false,
            offset: true
        }
    );
    assert_eq!(untouched(ev), Event::default());
}

#[test]
fn unknown_fields_are_skipped_and_kept_in_raw() {
    let mut buf = to_pb(&sample()).encode_to_vec();
    // field 9 varint, field 10 fixed64, field 11 bytes, field 12 fixed32
    buf.extend_from_slice(&[9 << 3, 0x96, 0x01]);
    buf.extend_from_slice(&[10 << 3 | 1, 1, 2, 3, 4, 5, 6, 7, 8]);
    buf.extend_from_slice(&[11 << 3 | 2, 2, b'h', b'i']);
    buf.extend_from_slice(&[12 << 3 | 5, 1, 2, 3, 4]);
    let buf = Bytes::from(buf);
    let (ev, _) = decode(buf.clone()).unwrap();
    assert_eq!(enc(&ev), buf);
    assert_eq!(untouched(ev), sample());
}

#[test]
fn map_keys_given_twice_keep_the_last_value_in_the_first_place() {
    let mut buf = Vec::new();
    for (k, v) in [("a", "1"), ("b", "2"), ("a", "3")] {
        buf.extend_from_slice(&[
            8 << 3 | 2,
            6,
            0x0a,
            1,
            k.as_bytes()[0],
            0x12,
            1,
            v.as_bytes()[0],
        ]);
    }
    // An entry without a value, and one with an unknown field.
    buf.extend_from_slice(&[8 << 3 | 2, 3, 0x0a, 1, b'c']);
    buf.extend_from_slice(&[8 << 3 | 2, 5, 0x0a, 1, b'd', 3 << 3, 7]);
    let (ev, _) = decode(Bytes::from(buf)).unwrap();
    let tags: Vec<(&str, &str)> = ev
        .tags
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(tags, vec![("a", "3"), ("b", "2"), ("c", ""), ("d", "")]);
}

#[test]
fn negative_timestamp_and_large_numbers() {
    let mut ev = sample();
    ev.timestamp = -1;
    ev.offset = u64::MAX;
    ev.pid = u32::MAX;
    let bytes = enc(&ev);
    assert_eq!(pb::Event::decode(bytes.clone()).unwrap(), to_pb(&ev));
    assert_eq!(untouched(decode(bytes).unwrap().0), ev);
}

#[test]
fn bad_input_is_refused_with_a_reason() {
    let cases: &[(&[u8], &str)] = &[
        (&[0x08], "varint at byte 1 is cut off"),
        (
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ],
            "longer than 64 bits",
        ),
        (
            &[0x12, 5, b'a'],
            "length 5 at byte 1 runs past the end (1 bytes left)",
        ),
        (
            &[0x12, 2, 0xc3, 0x28],
            "`host` at byte 2 is not valid UTF-8",
        ),
        (&[0x10, 1], "field 2 has wire type 0, expected 2"),
        (
            &[0x09, 0, 0, 0, 0, 0, 0, 0, 0],
            "field 1 has wire type 1, expected 0",
        ),
        (&[0x00, 1], "invalid field number 0"),
        (&[9 << 3 | 3], "groups are not supported"),
        (&[9 << 3 | 6], "invalid wire type 6"),
        (
            &[9 << 3 | 1, 1, 2],
            "fixed-width field at byte 1 is cut off",
        ),
        (
            &[0x42, 3, 0x0a, 1, 0xff],
            "`tags key` at byte 4 is not valid UTF-8",
        ),
        (
            &[0x42, 2, 0x10, 1],
            "tags entry field 2 has wire type 0, expected 2",
        ),
        (&[0x42, 3, 0x0a, 5, b'a'], "runs past the end"),
    ];
    for (buf, want) in cases {
        let got = reason(buf);
        assert!(got.contains(want), "{buf:?}: {got:?}, wanted {want:?}");
    }
}

#[test]
fn batch_message_is_what_python_protobuf_writes() {
    // murron_pb2.Batch(events=[e, murron_pb2.Event()]): field 1 twice,
    // the sample's 75 bytes, then an empty event.
    let mut golden = vec![0x0a, 75];
    golden.extend_from_slice(GOLDEN_SAMPLE);
    golden.extend_from_slice(&[0x0a, 0x00]);
    let batch = pb::Batch {
        events: vec![to_pb(&sample()), pb::Event::default()],
    };
    assert_eq!(batch.encode_to_vec(), golden);
    let got = pb::Batch::decode(golden.as_slice()).unwrap();
    assert_eq!(got.events.len(), 2);
    assert_eq!(from_pb(got.events[0].clone()).0, sample());
    assert!(!from_pb(got.events[1].clone()).1.host);
}

proptest! {
    #[test]
    fn round_trip(ev in event()) {
        let bytes = enc(&ev);
        // The bytes mean this event to an independent reader (prost), not
        // only to our own decoder.
        prop_assert_eq!(pb::Event::decode(bytes.clone()).unwrap(), to_pb(&ev));
        let (got, present) = decode(bytes.clone()).unwrap();
        prop_assert_eq!(present.timestamp, ev.timestamp != 0);
        prop_assert_eq!(present.host, !ev.host.is_empty());
        prop_assert_eq!(got.raw(RawCodec::Protobuf), Some(&bytes));
        prop_assert_eq!(&enc(&got), &bytes);
        prop_assert_eq!(untouched(got), ev);
    }

    #[test]
    fn agrees_with_prost(ev in event()) {
        let mut sorted = ev.clone();
        sorted.tags.sort();
        // prost writes tags in key order; so do we for sorted tags.
        let ours = enc(&sorted);
        let theirs = to_pb(&sorted).encode_to_vec();
        prop_assert_eq!(&ours[..], &theirs[..]);
        prop_assert_eq!(pb::Event::decode(ours.clone()).unwrap(), to_pb(&ev));
        let (got, _) = decode(Bytes::from(theirs)).unwrap();
        prop_assert_eq!(untouched(got), sorted.clone());
        prop_assert_eq!(from_pb(to_pb(&ev)).0, sorted);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn never_panics_and_accepts_what_prost_accepts(data in vec(any::<u8>(), 0..300)) {
        let bytes = Bytes::from(data);
        let ours = decode(bytes.clone());
        if let Ok((ev, _)) = &ours {
            prop_assert_eq!(&enc(ev), &bytes);
            // prost's reading of the same bytes is the same event.
            let theirs = pb::Event::decode(bytes.clone());
            prop_assert!(theirs.is_ok(), "prost refused what we took: {:?}", theirs);
        }
    }
}
