//! Tests of the JSON codec: the SPEC's example, escapes, every way a line
//! can be wrong (with its column), raw pass-through, and property tests for
//! the round trip and for never panicking.

#![allow(clippy::unwrap_used)]
// `Event` has a private field: no struct literals outside dab-api.
#![allow(clippy::field_reassign_with_default)]

use super::*;
use crate::codec::testing::event;
use crate::codec::DecodeError;
use dab_api::Text;
use proptest::collection::vec;
use proptest::prelude::*;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn ok(s: &str) -> (Event, Present) {
    match decode(b(s)) {
        Ok(v) => v,
        Err(e) => panic!("{s:?} should decode: {e}"),
    }
}

fn err(s: &str) -> (usize, String) {
    match decode(b(s)) {
        Ok((ev, _)) => panic!("{s:?} should fail, decoded {ev:?}"),
        Err(DecodeError::Json { column, reason }) => (column, reason),
        Err(e) => panic!("not a JSON error: {e:?}"),
    }
}

fn enc(ev: &Event) -> Bytes {
    let mut out = BytesMut::new();
    encode(ev, &mut out);
    out.freeze()
}

fn untouched(mut ev: Event) -> Event {
    ev.touch();
    ev
}

const SPEC_EXAMPLE: &str = r#"{"timestamp": 1732320000000000000, "host": "web-1", "type": "MyEvent", "offset": 42,
 "pid": 311, "message": "GET /api/chat.postMessage 200", "tags": {"env": "prod"}}"#;

#[test]
fn decodes_the_spec_example() {
    let (ev, present) = ok(SPEC_EXAMPLE);
    assert_eq!(ev.timestamp, 1_732_320_000_000_000_000);
    assert_eq!(ev.host.as_str(), "web-1");
    assert_eq!(ev.ty.as_str(), "MyEvent");
    assert_eq!(ev.offset, 42);
    assert_eq!(ev.pid, 311);
    assert_eq!(&ev.message[..], b"GET /api/chat.postMessage 200");
    assert!(ev.signature.is_empty());
    assert_eq!(ev.tags, vec![(Text::from("env"), Text::from("prod"))]);
    assert_eq!(present, Present::ALL);
    // Printed over two lines, it must not be written back raw into NDJSON.
    assert!(ev.raw(RawCodec::Json).is_none());

    let one_line = SPEC_EXAMPLE.replace('\n', "");
    let (ev, _) = ok(&one_line);
    assert_eq!(
        ev.raw(RawCodec::Json).map(|r| &r[..]),
        Some(one_line.as_bytes())
    );
}

const CANONICAL: &str = r#"{"timestamp":1732320000000000000,"host":"web-1","type":"MyEvent","offset":42,"pid":311,"message":"GET /api/chat.postMessage 200 \"ok\"","signature":"3q2+7w==","tags":{"env":"prod","dab.src":"tcp"}}"#;

#[test]
fn raw_is_written_back_unchanged_and_matches_a_fresh_encoding() {
    let (ev, _) = ok(CANONICAL);
    assert_eq!(&enc(&ev)[..], CANONICAL.as_bytes());
    // Our encoder's own output for this event is byte-identical, so raw
    // and re-encoded outputs agree for canonical input.
    assert_eq!(&enc(&untouched(ev.clone()))[..], CANONICAL.as_bytes());
    assert_eq!(&ev.signature[..], &[0xde, 0xad, 0xbe, 0xef]);
}

#[test]
fn raw_is_the_object_without_surrounding_whitespace_and_keeps_unknown_keys() {
    let line = r#"  {"type":"A","x":{"y":[1,2.5e3,true,null,"z"]}}  "#;
    let (ev, present) = ok(line);
    assert_eq!(ev.ty.as_str(), "A");
    assert_eq!(present, Present::default());
    assert_eq!(&enc(&ev)[..], line.trim().as_bytes());
}

#[test]
fn message_is_a_slice_of_the_line_and_short_strings_are_interned() {
    let line = b(CANONICAL);
    let range = line.as_ptr_range();
    let (ev, _) = decode(line.clone()).unwrap();
    // The escaped message had to be copied.
    assert!(!range.contains(&ev.message.as_ptr()));
    assert!(range.contains(&ev.raw(RawCodec::Json).unwrap().as_ptr()));

    let line2 = b(r#"{"host":"web-1","type":"MyEvent","message":"plain payload"}"#);
    let (ev2, _) = decode(line2.clone()).unwrap();
    assert!(line2.as_ptr_range().contains(&ev2.message.as_ptr()));
    // host and type live in neither line: both events share one copy.
    for (a, b) in [(&ev.host, &ev2.host), (&ev.ty, &ev2.ty)] {
        assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
        assert!(!range.contains(&a.as_bytes().as_ptr()));
    }

    // Past the interning length, strings are slices of the line.
    let long = "h".repeat(crate::codec::MAX_INTERNED_LEN + 1);
    let line3 = b(&format!(r#"{{"host":"{long}"}}"#));
    let (ev3, _) = decode(line3.clone()).unwrap();
    assert_eq!(ev3.host.as_str(), long);
    assert!(line3.as_ptr_range().contains(&ev3.host.as_bytes().as_ptr()));
}

#[test]
fn escapes_are_decoded() {
    let (ev, _) = ok(
        r#"{"host":"a\"b\\c\/d","type":"\n\t\r\b\f","message":"caf\u00e9 \u00E9 \ud83d\ude00 \u0000"}"#,
    );
    assert_eq!(ev.host.as_str(), "a\"b\\c/d");
    assert_eq!(ev.ty.as_str(), "\n\t\r\u{8}\u{c}");
    assert_eq!(std::str::from_utf8(&ev.message).unwrap(), "café é 😀 \u{0}");
    // Escaped tag keys and values, and an escaped known key.
    let (ev, _) = ok(r#"{"t\u0079pe":"x","tags":{"k\"":"v\u00e9"}}"#);
    assert_eq!(ev.ty.as_str(), "x");
    assert_eq!(ev.tags, vec![(Text::from("k\""), Text::from("vé"))]);
}

#[test]
fn null_means_missing() {
    let (ev, present) = ok(
        r#"{"timestamp":null,"host":null,"type":"T","offset":null,"pid":null,"message":null,"tags":null}"#,
    );
    assert_eq!(present, Present::default());
    assert_eq!(
        (ev.timestamp, ev.host.as_str(), ev.offset, ev.pid),
        (0, "", 0, 0)
    );
    assert!(ev.message.is_empty() && ev.tags.is_empty());
}

#[test]
fn binary_message_and_signature_use_base64() {
    let (ev, _) = ok(r#"{"message_b64":"AP/+","signature":"AAE"}"#);
    assert_eq!(&ev.message[..], &[0x00, 0xff, 0xfe]);
    // Padding is optional on input.
    assert_eq!(&ev.signature[..], &[0x00, 0x01]);
    let out = enc(&untouched(ev));
    assert_eq!(
        &out[..],
        br#"{"timestamp":0,"host":"","type":"","offset":0,"pid":0,"message_b64":"AP/+","signature":"AAE="}"#
    );
}

#[test]
fn encode_escapes_control_characters_and_quotes() {
    let mut ev = Event::default();
    ev.host = Text::from("a\"b\\");
    ev.ty = Text::from("\u{1}\u{1f}\n");
    ev.message = Bytes::from_static("é😀\u{7f}".as_bytes());
    ev.timestamp = -5;
    let out = enc(&ev);
    assert_eq!(
        &out[..],
        "{\"timestamp\":-5,\"host\":\"a\\\"b\\\\\",\"type\":\"\\u0001\\u001f\\n\",\"offset\":0,\"pid\":0,\"message\":\"é😀\u{7f}\"}".as_bytes()
    );
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["type"], "\u{1}\u{1f}\n");
}

#[test]
fn integer_limits() {
    let (ev, _) =
        ok(r#"{"timestamp":-9223372036854775808,"offset":18446744073709551615,"pid":4294967295}"#);
    assert_eq!(
        (ev.timestamp, ev.offset, ev.pid),
        (i64::MIN, u64::MAX, u32::MAX)
    );
    let (ev, _) = ok(r#"{"timestamp":9223372036854775807,"offset":-0,"pid":0}"#);
    assert_eq!((ev.timestamp, ev.offset), (i64::MAX, 0));
}

#[test]
fn invalid_lines_say_where_and_why() {
    let cases: &[(&str, usize, &str)] = &[
        ("", 1, "expected `{`"),
        ("   ", 4, "expected `{`"),
        ("[1]", 1, "expected `{`"),
        (r#"{"type":"A""#, 12, "expected `,` or `}`"),
        (r#"{"type":"A"#, 9, "unterminated string"),
        (r#"{"type":"A",}"#, 13, "expected a key"),
        (r#"{"type" "A"}"#, 9, "expected `:`"),
        (r#"{"type":"A"} x"#, 14, "unexpected characters after"),
        (
            r#"{"type":"A"}{"type":"B"}"#,
            13,
            "unexpected characters after",
        ),
        (r#"{type:"A"}"#, 2, "expected a key"),
        (r#"{"type":1}"#, 9, "`type` must be a string"),
        (r#"{"host":["a"]}"#, 9, "`host` must be a string"),
        (r#"{"timestamp":"1"}"#, 14, "`timestamp` must be an integer"),
        (r#"{"timestamp":1.5}"#, 14, "`timestamp` must be an integer"),
        (r#"{"timestamp":1e9}"#, 14, "`timestamp` must be an integer"),
        (r#"{"timestamp":01}"#, 14, "leading zero"),
        (r#"{"timestamp":9223372036854775808}"#, 14, "out of range"),
        (r#"{"timestamp":-9223372036854775809}"#, 14, "out of range"),
        (r#"{"offset":18446744073709551616}"#, 11, "out of range"),
        (r#"{"offset":-1}"#, 11, "must not be negative"),
        (r#"{"pid":4294967296}"#, 8, "out of range"),
        (r#"{"pid":true}"#, 8, "`pid` must be an integer"),
        (r#"{"tags":["a"]}"#, 9, "`tags` must be an object"),
        (
            r#"{"tags":{"a":1}}"#,
            14,
            "tag `a` must have a string value",
        ),
        (r#"{"tags":{"a":"1","a":"2"}}"#, 18, "duplicate tag `a`"),
        (r#"{"type":"A","type":"B"}"#, 13, "duplicate key `type`"),
        (
            r#"{"message":"a","message_b64":"AA=="}"#,
            16,
            "both `message` and `message_b64`",
        ),
        (
            r#"{"message_b64":"!!"}"#,
            16,
            "`message_b64` is not valid base64",
        ),
        (
            r#"{"signature":"AAAAA"}"#,
            14,
            "`signature` is not valid base64",
        ),
        (r#"{"message_b64":5}"#, 16, "`message_b64` must be a string"),
        ("{\"type\":\"a\u{1}b\"}", 11, "control character"),
        ("{\"type\":\"a\tb\"}", 11, "control character"),
        (r#"{"type":"\x"}"#, 10, "invalid escape"),
        (r#"{"type":"\u12"}"#, 10, "invalid \\u escape"),
        (r#"{"type":"\u12"#, 10, "truncated \\u escape"),
        (r#"{"type":"\ud83d"}"#, 10, "unpaired surrogate"),
        (r#"{"type":"\ude00"}"#, 10, "unpaired surrogate"),
        (r#"{"type":"\ud83d\u0041"}"#, 10, "unpaired surrogate"),
        (r#"{"x":[1,}"#, 9, "expected a value"),
        (r#"{"x":{"a" 1}}"#, 11, "expected `:`"),
        (r#"{"x":tru}"#, 6, "invalid literal"),
        (r#"{"x":-}"#, 6, "invalid number"),
        (r#"{"x":1.}"#, 6, "invalid number"),
        (r#"{"x":1e+}"#, 6, "invalid number"),
        (r#"{"x":[1 2]}"#, 9, "expected `,` or `]`"),
        (r#"{"x":{"a":1]}"#, 12, "expected `,` or `}`"),
        (r#"{"timestamp":nul}"#, 14, "invalid literal"),
    ];
    for (line, column, reason) in cases {
        let (c, r) = err(line);
        assert!(
            r.contains(reason),
            "{line:?}: reason {r:?}, wanted {reason:?}"
        );
        assert_eq!(c, *column, "{line:?}: column ({r})");
    }
}

#[test]
fn invalid_utf8_is_refused_with_its_column() {
    let mut line = br#"{"type":"ab"}"#.to_vec();
    line[10] = 0xff;
    let e = decode(Bytes::from(line)).unwrap_err();
    assert_eq!(
        e,
        DecodeError::Json {
            column: 11,
            reason: "invalid UTF-8".to_owned()
        }
    );
    assert_eq!(e.reason(), "invalid UTF-8");
    assert_eq!(
        e.to_string(),
        "invalid JSON event at column 11: invalid UTF-8"
    );
}

#[test]
fn nesting_is_bounded() {
    let deep = format!("{{\"x\":{}{}}}", "[".repeat(64), "]".repeat(64));
    assert!(decode(b(&deep)).is_ok());
    let deeper = format!("{{\"x\":{}{}}}", "[".repeat(65), "]".repeat(65));
    let (column, reason) = err(&deeper);
    assert!(reason.contains("nested deeper than 64"), "{reason}");
    assert_eq!(column, 6 + 64);
    // Far deeper garbage must not overflow the stack either.
    let garbage = format!("{{\"x\":{}", "[{\"a\":".repeat(100_000));
    assert!(decode(b(&garbage)).is_err());
}

#[test]
fn many_tags_are_checked_for_duplicates() {
    let tags: Vec<String> = (0..40).map(|i| format!("\"k{i}\":\"v\"")).collect();
    let line = format!("{{\"tags\":{{{}}}}}", tags.join(","));
    assert_eq!(ok(&line).0.tags.len(), 40);
    let line = format!("{{\"tags\":{{{},\"k3\":\"w\"}}}}", tags.join(","));
    assert!(err(&line).1.contains("duplicate tag `k3`"));
}

#[test]
fn decode_array_keeps_each_element_raw() {
    let body = r#" [ {"type":"A","offset":1} , {"type":"B"} ] "#;
    let got = decode_array(b(body)).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].0.ty.as_str(), "A");
    assert!(got[0].1.offset && !got[1].1.offset);
    assert_eq!(&enc(&got[0].0)[..], br#"{"type":"A","offset":1}"#);
    assert_eq!(&enc(&got[1].0)[..], br#"{"type":"B"}"#);

    assert!(decode_array(b("[]")).unwrap().is_empty());
    assert!(decode_array(b(" [\n] ")).unwrap().is_empty());

    let pretty = "[\n  {\n    \"type\": \"A\"\n  },\n  {\"type\": \"B\"}\n]";
    let got = decode_array(b(pretty)).unwrap();
    assert!(got[0].0.raw(RawCodec::Json).is_none());
    assert!(got[1].0.raw(RawCodec::Json).is_some());
}

#[test]
fn decode_array_errors_point_into_the_body() {
    let cases: &[(&str, usize, &str)] = &[
        ("{}", 1, "expected `[`"),
        ("[{}", 4, "expected `,` or `]`"),
        ("[{},]", 5, "expected `{`"),
        ("[{} {}]", 5, "expected `,` or `]`"),
        (r#"[{},{"pid":-1}]"#, 12, "must not be negative"),
        ("[] x", 4, "unexpected characters after the array"),
        ("[1]", 2, "expected `{`"),
    ];
    for (body, column, reason) in cases {
        match decode_array(b(body)) {
            Err(DecodeError::Json {
                column: c,
                reason: r,
            }) => {
                assert!(r.contains(reason), "{body:?}: {r:?}");
                assert_eq!(c, *column, "{body:?}: {r}");
            }
            other => panic!("{body:?}: {other:?}"),
        }
    }
}

// ---- properties ----

proptest! {
    #[test]
    fn round_trip(ev in event()) {
        let line = enc(&ev);
        prop_assert!(!line.contains(&b'\n'));
        let (got, present) = decode(line.clone()).unwrap();
        prop_assert_eq!(present, Present::ALL);
        // The decoded event keeps the line and writes it back as it came.
        prop_assert_eq!(got.raw(RawCodec::Json), Some(&line));
        prop_assert_eq!(&enc(&got), &line);
        prop_assert_eq!(untouched(got), ev.clone());

        // Any JSON reader agrees with what we wrote.
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        prop_assert_eq!(v["host"].as_str(), Some(ev.host.as_str()));
        prop_assert_eq!(v["offset"].as_u64(), Some(ev.offset));
        prop_assert_eq!(v["timestamp"].as_i64(), Some(ev.timestamp));
    }

    #[test]
    fn round_trip_through_an_array(evs in vec(event(), 0..5)) {
        let mut body = BytesMut::from(&b"["[..]);
        for (i, ev) in evs.iter().enumerate() {
            if i > 0 {
                body.extend_from_slice(b", ");
            }
            encode(ev, &mut body);
        }
        body.extend_from_slice(b"]");
        let got = decode_array(body.freeze()).unwrap();
        prop_assert_eq!(got.len(), evs.len());
        for ((g, _), e) in got.into_iter().zip(evs) {
            prop_assert_eq!(&enc(&g), &enc(&e));
            prop_assert_eq!(untouched(g), e);
        }
    }

    // A line another JSON writer produced (serde_json, keys in another
    // order, \u escapes for non-ASCII) decodes to the same event.
    #[test]
    fn reads_what_serde_json_writes(ev in event()) {
        let mut obj = serde_json::Map::new();
        obj.insert("pid".into(), ev.pid.into());
        obj.insert("type".into(), ev.ty.as_str().into());
        obj.insert("host".into(), ev.host.as_str().into());
        obj.insert("offset".into(), ev.offset.into());
        obj.insert("timestamp".into(), ev.timestamp.into());
        match std::str::from_utf8(&ev.message) {
            Ok(s) => obj.insert("message".into(), s.into()),
            Err(_) => obj.insert("message_b64".into(), BASE64.encode(&ev.message).into()),
        };
        if !ev.signature.is_empty() {
            obj.insert("signature".into(), BASE64.encode(&ev.signature).into());
        }
        let tags: serde_json::Map<String, serde_json::Value> =
            ev.tags.iter().map(|(k, v)| (k.to_string(), v.as_str().into())).collect();
        obj.insert("tags".into(), tags.into());
        obj.insert("extra".into(), serde_json::json!({"nested": [1, -2.5e-3, null, "x\u{1}"]}));
        let line = serde_json::to_vec(&serde_json::Value::Object(obj)).unwrap();
        let (got, _) = decode(Bytes::from(line)).unwrap();
        let mut got = untouched(got);
        let mut want = ev;
        // serde_json's Map sorts its keys.
        got.tags.sort();
        want.tags.sort();
        prop_assert_eq!(got, want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn never_panics_on_arbitrary_bytes(data in vec(any::<u8>(), 0..300)) {
        let line = Bytes::from(data);
        let _ = decode(line.clone());
        let _ = decode_array(line);
    }

    // Random bytes rarely get past the first `{`; damaged real lines reach
    // every state of the scanner.
    #[test]
    fn never_panics_on_damaged_lines(
        ev in event(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
    ) {
        let mut line = enc(&ev).to_vec();
        for (at, byte, op) in edits {
            if line.is_empty() {
                break;
            }
            let i = at.index(line.len());
            match op {
                0 => line[i] = byte,
                1 => line.insert(i, byte),
                _ => line.truncate(i),
            }
        }
        if let Ok((got, _)) = decode(Bytes::from(line.clone())) {
            // Whatever is accepted is written back as it came, unless an
            // inserted newline made it span lines.
            if got.raw(RawCodec::Json).is_some() {
                prop_assert_eq!(&enc(&got)[..], line.trim_ascii());
            } else {
                prop_assert!(line.contains(&b'\n'));
            }
        }
    }
}
