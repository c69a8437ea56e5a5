//! The decoder against the `Value` path it replaced: for any payload
//! text (conforming or not, fields twice, map keys in any order, escapes,
//! odd timestamps), the sink's rows and rejections are exactly what the
//! `Value` path gives.

use super::super::columns::{check_timestamps, parse_rfc3339, record_batch_of_values};
use super::*;
use proptest::prelude::*;

fn ft(t: &str) -> FieldType {
    FieldType::parse(t).expect("type")
}

fn field(name: &str, ty: FieldType) -> Field {
    Field {
        name: name.into(),
        ty,
    }
}

/// Every field type, nested ones included.
fn schema() -> Schema {
    let inner = FieldType {
        ty: Type::Struct(vec![
            field("ip", ft("string")),
            field("ua", ft("string?")),
            field("n", ft("list<int64>?")),
        ]),
        optional: true,
    };
    Schema {
        version: Some(1),
        fields: vec![
            field("b", ft("bool?")),
            field("i", ft("int32")),
            field("l", ft("int64?")),
            field("f", ft("float64?")),
            field("s", ft("string?")),
            field("y", ft("bytes?")),
            field("t", ft("timestamp?")),
            field("xs", ft("list<int32?>?")),
            field("m", ft("map<string, float64?>?")),
            field("c", inner),
        ],
    }
}

/// JSON text that may hold a key twice.
#[derive(Debug, Clone)]
enum Json {
    Raw(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn text(&self) -> String {
        match self {
            Json::Raw(s) => s.clone(),
            Json::Arr(xs) => format!(
                "[{}]",
                xs.iter().map(Json::text).collect::<Vec<_>>().join(",")
            ),
            Json::Obj(kv) => format!(
                "{{{}}}",
                kv.iter()
                    .map(|(k, v)| format!("{}:{}", serde_json::Value::from(k.as_str()), v.text()))
                    .collect::<Vec<_>>()
                    .join(" , ")
            ),
        }
    }
}

fn raw(s: impl Into<String>) -> Json {
    Json::Raw(s.into())
}

fn scalar() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(raw("null")),
        any::<bool>().prop_map(|b| raw(b.to_string())),
        any::<i32>().prop_map(|i| raw(i.to_string())),
        any::<i64>().prop_map(|i| raw(i.to_string())),
        any::<u64>().prop_map(|i| raw(i.to_string())),
        (-1e6f64..1e6).prop_map(|f| raw(format!("{f:?}"))),
        Just(raw("1.0")),
        Just(raw("1e3")),
        "[a-c\"\\\\é\u{1F600}]{0,4}".prop_map(|s| raw(serde_json::Value::from(s).to_string())),
        timestamp().prop_map(|s| raw(serde_json::Value::from(s).to_string())),
    ]
}

/// Timestamp texts, most of them well formed, some out of range or odd.
fn timestamp() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just(1970u32),
            Just(2024),
            Just(2000),
            Just(1900),
            0u32..10000
        ],
        0u32..14,
        0u32..33,
        prop_oneof![Just("T"), Just("t"), Just(" "), Just("x")],
        0u32..25,
        0u32..61,
        0u32..62,
        prop_oneof![
            Just(String::new()),
            "\\.[0-9]{1,12}".prop_map(|s| s),
            Just(".".to_owned())
        ],
        prop_oneof![
            Just("Z".to_owned()),
            Just("z".to_owned()),
            (prop_oneof![Just('+'), Just('-')], 0u32..25, 0u32..61)
                .prop_map(|(s, h, m)| format!("{s}{h:02}:{m:02}")),
            Just("+0100".to_owned()),
            Just(String::new()),
        ],
    )
        .prop_map(|(y, mo, d, sep, h, mi, s, frac, off)| {
            format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{frac}{off}")
        })
}

fn value() -> impl Strategy<Value = Json> {
    let leaf = scalar();
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Arr),
            prop::collection::vec(("[a-c]{1,2}|ip|ua|n", inner), 0..4).prop_map(Json::Obj),
        ]
    })
}

/// A payload: mostly the schema's fields with values of their type, some
/// absent, null, of another type, twice, or unknown.
fn payload() -> impl Strategy<Value = Json> {
    let good = |name: &'static str, v: BoxedStrategy<Json>| {
        prop_oneof![
            6 => v.prop_map(move |v| vec![(name.to_owned(), v)]),
            1 => Just(vec![]),
            1 => Just(vec![(name.to_owned(), raw("null"))]),
            1 => value().prop_map(move |v| vec![(name.to_owned(), v)]),
        ]
    };
    let int = || prop_oneof![any::<i32>().prop_map(|i| raw(i.to_string()))].boxed();
    let text = || "[a-z]{0,6}".prop_map(|s| raw(format!("\"{s}\""))).boxed();
    let map = prop::collection::vec(
        (
            "[a-d]{1,2}",
            prop_oneof![
                (-1e3f64..1e3).prop_map(|f| raw(format!("{f:?}"))),
                Just(raw("null")),
                Just(raw("7"))
            ],
        ),
        0..5,
    )
    .prop_map(Json::Obj)
    .boxed();
    let inner = prop::collection::vec(
        prop_oneof![
            text().prop_map(|v| ("ip".to_owned(), v)),
            text().prop_map(|v| ("ua".to_owned(), v)),
            prop::collection::vec(any::<i64>().prop_map(|i| raw(i.to_string())), 0..3)
                .prop_map(|xs| ("n".to_owned(), Json::Arr(xs))),
            value().prop_map(|v| ("zz".to_owned(), v)),
        ],
        0..4,
    )
    .prop_map(Json::Obj)
    .boxed();
    let parts = vec![
        good("b", any::<bool>().prop_map(|b| raw(b.to_string())).boxed()),
        good("i", int()),
        good("l", any::<i64>().prop_map(|i| raw(i.to_string())).boxed()),
        good(
            "f",
            (-1e9f64..1e9).prop_map(|f| raw(format!("{f:e}"))).boxed(),
        ),
        good("s", text()),
        good("y", text()),
        good(
            "t",
            prop_oneof![
                timestamp().prop_map(|s| raw(format!("\"{s}\""))),
                any::<i64>().prop_map(|i| raw(i.to_string())),
            ]
            .boxed(),
        ),
        good(
            "xs",
            prop::collection::vec(prop_oneof![int(), Just(raw("null")).boxed()], 0..4)
                .prop_map(Json::Arr)
                .boxed(),
        ),
        good("m", map),
        good("c", inner),
        good("extra", value().boxed()),
    ];
    (
        parts,
        any::<bool>(),
        prop::collection::vec(0usize..11, 0..2),
    )
        .prop_map(|(parts, reverse, twice)| {
            let mut kv: Vec<(String, Json)> = parts.iter().flatten().cloned().collect();
            for i in twice {
                if let Some(p) = parts.get(i).and_then(|p| p.first()) {
                    kv.push(p.clone());
                }
            }
            if reverse {
                kv.reverse();
            }
            Json::Obj(kv)
        })
}

fn sink(dir: &Path) -> ParquetSink {
    super::super::tests::local_sink(
        dir,
        schema(),
        4,
        DEFAULT_MAX_FILE_BYTES,
        DEFAULT_MAX_FILE_AGE,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn decoder_equals_value_path(
        payloads in prop::collection::vec(
            prop_oneof![8 => payload().prop_map(|p| p.text()), 1 => value().prop_map(|v| v.text()), 1 => Just("{\"i\": 1".to_owned())],
            1..12,
        )
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut s = sink(dir.path());
        let events: Vec<Event> = payloads
            .iter()
            .enumerate()
            .map(|(n, p)| Event {
                timestamp: 1_732_320_000_000_000_000 + n as i64,
                offset: n as u64,
                message: bytes::Bytes::from(p.clone()),
                tags: vec![("k".into(), format!("v{n}").into())],
                ..Event::default()
            })
            .collect();
        let (encoded, rejected) = s.encode(&events).expect("encode");

        // The `Value` path, as the sink had it.
        let fields = &s.cfg.schema.fields;
        let values: Vec<Option<Value>> =
            payloads.iter().map(|p| serde_json::from_str(p).ok()).collect();
        let mut want_rows = Vec::new();
        let mut want_rejected = Vec::new();
        for (i, (v, e)) in values.iter().zip(&events).enumerate() {
            let p = v.as_ref().filter(|v| v.is_object());
            match s.cfg.schema.conforms(p).and_then(|()| check_timestamps(fields, p)) {
                Ok(()) => want_rows.push((p.expect("an object"), e)),
                Err(reason) => want_rejected.push((i, format!("payload does not conform to type `T`: {reason}"))),
            }
        }
        let got_rejected: Vec<(usize, String)> =
            rejected.into_iter().map(|r| (r.index, r.reason)).collect();
        prop_assert_eq!(got_rejected, want_rejected);
        if want_rows.is_empty() {
            prop_assert!(encoded.is_empty());
        } else {
            prop_assert_eq!(encoded.len(), 1);
            let want = record_batch_of_values(&s.arrow, fields, &want_rows).expect("reference batch");
            prop_assert_eq!(&encoded[0].1, &want);
        }
    }

    #[test]
    fn fast_timestamps_equal_chrono(s in timestamp()) {
        let slow = dab_schema::is_rfc3339(&s).then(|| parse_rfc3339(&s)).flatten();
        if let Some(ns) = fast_rfc3339(s.as_bytes()) {
            prop_assert_eq!(Some(ns), slow, "{}", s);
        }
    }

    #[test]
    fn fast_timestamps_take_the_common_forms(
        secs in -2_000_000_000i64..7_000_000_000,
        nanos in 0u32..1_000_000_000,
        digits in 0usize..10,
        offset_min in -1439i32..1440,
    ) {
        let off = chrono::FixedOffset::east_opt(offset_min * 60).expect("offset");
        let t = chrono::DateTime::from_timestamp(secs, nanos).expect("time").with_timezone(&off);
        let frac = match digits { 0 => String::new(), d => format!(".{:09}", nanos)[..=d].to_owned() };
        let text = format!("{}{frac}{}", t.format("%Y-%m-%dT%H:%M:%S"), t.format("%:z"));
        let text = if offset_min == 0 { text.replace("+00:00", "Z") } else { text };
        let fast = fast_rfc3339(text.as_bytes());
        prop_assert!(fast.is_some(), "{}", text);
        prop_assert_eq!(fast, parse_rfc3339(&text), "{}", text);
    }
}

#[test]
fn a_refused_payload_leaves_the_columns_as_they_were() {
    let s = schema();
    let mut cols = Columns::new(&s.fields);
    assert!(cols.append(&s.fields, br#"{"i": 1, "xs": [1, null], "m": {"a": 1.5}}"#));
    // Refused deep inside: the list, the map and the struct had taken
    // values of this row already.
    for bad in [
        &br#"{"i": 2, "xs": [1, 2], "m": {"a": 1, "b": 2}, "c": {"ip": "x", "n": [1, "no"]}}"#[..],
        br#"{"i": 2, "xs": [3], "m": {"b": 1, "a": 2}}"#,
        br#"{"i": 2, "i": 3}"#,
        br#"{"i": 2} trailing"#,
        br#"[1]"#,
    ] {
        assert!(
            !cols.append(&s.fields, bad),
            "{}",
            String::from_utf8_lossy(bad)
        );
        assert_eq!(cols.rows(), 1);
    }
    assert!(cols.append(&s.fields, br#"{"i": 3, "c": {"ip": "h", "n": []}}"#));
    let arrow = Arc::new(arrow_schema(&s));
    let events = [Event::default(), Event::default()];
    let refs: Vec<&Event> = events.iter().collect();
    let batch = record_batch(&arrow, &s.fields, &mut cols, &refs).expect("batch");
    let v1: Value =
        serde_json::from_str(r#"{"i": 1, "xs": [1, null], "m": {"a": 1.5}}"#).expect("json");
    let v2: Value = serde_json::from_str(r#"{"i": 3, "c": {"ip": "h", "n": []}}"#).expect("json");
    let want = record_batch_of_values(&arrow, &s.fields, &[(&v1, &events[0]), (&v2, &events[1])])
        .expect("reference");
    assert_eq!(batch, want);
}
