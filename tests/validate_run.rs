//! validate ≡ run (SPEC section 3, issue 11): for every connector kind of
//! the catalog and every one of its fields, a spread of values (each
//! bound, one past each bound, every enum word, good and bad files and
//! URLs) goes through the bindings loader as `dab validate` runs it. Every
//! binding the loader accepts must then build with the connector factory
//! `dab run` uses, without touching the network; the values past a bound
//! must be refused. A Kafka binding is also built with every value the
//! librdkafka table accepts for every property.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dab_api::schema::{builtin_kinds, FieldSpec, FieldType, KindSpec, Section, SCHEMA_TYPED_SINKS};
use dab_api::{ConfigValue, PayloadSchema};
use dab_diag::SourceMap;
use dab_plan::bindings::{kafka_option_samples, load_bindings, type_schema, Binding};
use dab_plan::model::{TableSource, TableSpec};
use dab_plan::table::TableFormat;

/// Files the Path fields point at.
struct Files {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    junk: PathBuf,
    /// A JSON-lines table whose rows have a column `t` (the base `key`).
    table: PathBuf,
}

impl Files {
    fn new(dir: &Path) -> Files {
        let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("a test certificate");
        let files = Files {
            dir: dir.to_owned(),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            junk: dir.join("junk.pem"),
            table: dir.join("table.jsonl"),
        };
        std::fs::write(&files.cert, pair.cert.pem()).expect("write cert");
        std::fs::write(&files.key, pair.signing_key.serialize_pem()).expect("write key");
        std::fs::write(&files.junk, "-----BEGIN NOTHING-----\n").expect("write junk");
        std::fs::write(&files.table, "{\"t\": 1, \"v\": \"x\"}\n").expect("write table");
        files
    }
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

/// A valid value of a required field, to fill the binding around the
/// field under test.
fn base_value(kind: &KindSpec, f: &FieldSpec, files: &Files) -> String {
    match (f.ty, f.name) {
        (FieldType::Address, _) => quoted("127.0.0.1:0"),
        (FieldType::Url, _) => quoted("http://127.0.0.1:1/ingest"),
        (FieldType::Path, "tls_cert") => quoted(&files.cert.display().to_string()),
        (FieldType::Path, "tls_key") => quoted(&files.key.display().to_string()),
        (FieldType::Path, _) if kind.section == Section::Tables => {
            quoted(&files.table.display().to_string())
        }
        (FieldType::Path, name) => quoted(
            &files
                .dir
                .join(format!("{}-{}-{name}", kind.section, kind.kind))
                .display()
                .to_string(),
        ),
        (FieldType::Str, "brokers") => quoted("127.0.0.1:1"),
        _ => quoted("t"),
    }
}

/// Values to try for a field: the accepted ones and the refused ones
/// alike; the loader decides which is which.
fn candidates(f: &FieldSpec, files: &Files) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let (true, Some((min, max))) = (
        matches!(
            f.ty,
            FieldType::Int
                | FieldType::Number
                | FieldType::Duration
                | FieldType::DurationOr(_)
                | FieldType::Size
        ),
        f.bounds,
    ) {
        let (lo, hi) = (i128::from(min), i128::from(max));
        for v in [lo - 1, lo, lo + 1, (lo + hi) / 2, hi - 1, hi, hi + 1] {
            out.push(v.to_string());
        }
    }
    match f.ty {
        FieldType::Int => out.extend(["1.5".into(), quoted("12"), quoted("x")]),
        FieldType::Number => out.extend(["0.5".into(), quoted("2.5"), "1e3".into()]),
        FieldType::Duration => out.extend([
            quoted("250ms"),
            quoted("10s"),
            quoted("60m"),
            quoted("61m"),
            quoted("1h"),
            quoted("0s"),
        ]),
        FieldType::DurationOr(words) => {
            out.extend(words.iter().map(|w| (*w).to_owned()));
            out.extend([
                quoted("100ms"),
                quoted("1s"),
                quoted("0ms"),
                quoted("2h"),
                "bogus".into(),
            ]);
        }
        FieldType::Size => out.extend(
            [
                "512KiB", "1MiB", "10GiB", "1GB", "64KiB", "1TiB", "1PiB", "1.5GiB", "10gb", "GiB",
            ]
            .map(quoted),
        ),
        FieldType::Bool => out.extend(["true".into(), "false".into(), quoted("yes")]),
        FieldType::Enum(words) => {
            out.extend(words.iter().map(|w| (*w).to_owned()));
            out.push("bogus".into());
        }
        FieldType::Address => out.extend(
            [
                "127.0.0.1:0",
                "[::1]:0",
                "localhost:0",
                "0.0.0.0:0",
                "127.0.0.1",
                "h:99999",
                ":80",
            ]
            .map(quoted),
        ),
        FieldType::Url => out.extend(
            [
                "http://127.0.0.1:1/ingest",
                "http://[::1]:1",
                "http://localhost:1/a/b?c=d",
                "https://127.0.0.1:1/",
                "ftp://127.0.0.1:1",
                "http://",
                "http://exa mple",
                "HTTP://127.0.0.1:1",
                "127.0.0.1:1",
            ]
            .map(quoted),
        ),
        FieldType::Path => {
            out.extend(
                [
                    files.cert.display().to_string(),
                    files.key.display().to_string(),
                    files.junk.display().to_string(),
                    files.table.display().to_string(),
                    files.dir.join("missing.pem").display().to_string(),
                    files.dir.join("some-path").display().to_string(),
                    String::new(),
                ]
                .map(|p| quoted(&p)),
            );
        }
        FieldType::Str => out.extend(
            [
                "t",
                "",
                "  ",
                "a,b",
                "127.0.0.1:1",
                "host",
                "http://127.0.0.1:1",
                "${DAB_TEST_KEY}",
            ]
            .map(quoted)
            .into_iter()
            .chain(["2024".to_owned()]),
        ),
        FieldType::StrList => {
            let many = |n: usize| {
                let items: Vec<String> = (0..n).map(|i| format!("i{i}")).collect();
                format!("[{}]", items.join(", "))
            };
            out.extend([
                "[a]".into(),
                "[a, b]".into(),
                "[]".into(),
                quoted("a, b"),
                quoted(""),
                many(1_000),
                many(1_001),
            ]);
        }
        FieldType::Map => out.extend([
            "{}".into(),
            r#"{ client.id: "x" }"#.into(),
            r#"{ session.timeout.ms: "6000", linger.ms: "0.5" }"#.into(),
            r#"{ acks: all }"#.into(),
            r#"{ no.such.property: "1" }"#.into(),
            r#"{ session.timeout.ms: "0" }"#.into(),
        ]),
    }
    out
}

/// Loads one binding of `kind` whose field `field` has `value` (YAML), the
/// required fields around it filled in. `None` when the loader refuses it.
fn load(
    kind: &KindSpec,
    field: Option<(&str, &str)>,
    files: &Files,
) -> (Option<(Binding, Option<PayloadSchema>)>, Vec<String>) {
    let mut entries: Vec<String> = vec![format!("kind: {}", kind.kind)];
    for f in kind.fields.iter().filter(|f| f.required) {
        if field.is_none_or(|(name, _)| name != f.name) {
            entries.push(format!("{}: {}", f.name, base_value(kind, f, files)));
        }
    }
    // One of `topic`/`topics` is required of a Kafka source; TLS needs both files.
    let companions: &[(&str, &str)] = match (kind.section, kind.kind) {
        (Section::Sources, "kafka") => &[("topic", "topics")],
        (Section::Sources, "murron_grpc") => &[("tls_cert", "tls_key"), ("tls_key", "tls_cert")],
        _ => &[],
    };
    for (needed, when) in companions {
        if let Some((name, _)) = field {
            let fill = if kind.kind == "kafka" {
                name != *needed && name != *when
            } else {
                name == *when
            };
            if fill {
                let f = kind.field(needed).expect("companion field");
                entries.push(format!("{needed}: {}", base_value(kind, f, files)));
            }
        } else if kind.kind == "kafka" {
            entries.push(format!("{needed}: t"));
        }
    }
    // An https endpoint needs `tls_ca`, and `tls_ca` an https endpoint.
    if kind.section == Section::Sinks && kind.field("tls_ca").is_some() {
        match field {
            Some(("tls_ca", _)) => {
                entries.retain(|e| !e.starts_with("endpoint:"));
                entries.push(format!(
                    "endpoint: {}",
                    quoted("https://localhost:1/ingest")
                ));
            }
            Some(("endpoint", v)) if v.starts_with("\"https") || v.starts_with("\"HTTPS") => {
                entries.push(format!(
                    "tls_ca: {}",
                    quoted(&files.cert.display().to_string())
                ));
            }
            _ => {}
        }
    }
    // The parquet sink's S3 fields go with an s3:// path and its keys.
    const S3_FIELDS: [&str; 5] = [
        "s3_endpoint",
        "s3_region",
        "access_key",
        "secret_key",
        "spool",
    ];
    if let (Section::Sinks, "parquet", Some((name, _))) = (kind.section, kind.kind, field) {
        if S3_FIELDS.contains(&name) {
            entries.retain(|e| !e.starts_with("path:"));
            entries.push(format!("path: {}", quoted("s3://w/p")));
            for key in ["access_key", "secret_key"] {
                if name != key {
                    entries.push(format!("{key}: {}", quoted("${DAB_TEST_KEY}")));
                }
            }
        }
    }
    if let Some((name, value)) = field {
        entries.push(format!("{name}: {value}"));
    }
    // A sink typed by a schema names a type declared with one.
    let types = if kind.section == Section::Sinks && SCHEMA_TYPED_SINKS.contains(&kind.kind) {
        "types:\n  t: { version: 1, fields: { x: int64 } }\n"
    } else {
        ""
    };
    let text = format!(
        "{types}{}:\n  X: {{ {} }}\n",
        kind.section.key(),
        entries.join(", ")
    );
    let mut map = SourceMap::new();
    let env = |k: &str| (k == "DAB_TEST_KEY").then(|| "k".to_owned());
    let (bindings, diags) = load_bindings(&mut map, "dab.yaml", text.clone(), &env, &|p| {
        std::fs::read(p)
    });
    let errors: Vec<String> = diags
        .iter()
        .filter(|d| d.is_error())
        .map(|d| format!("{}: {}", d.code, d.message))
        .collect();
    if errors.is_empty() {
        let b = bindings.all_with_tables().find(|b| b.name == "X").cloned();
        let schema = b.as_ref().and_then(|b| type_schema(&bindings, b)).cloned();
        (b.map(|b| (b, schema)), Vec::new())
    } else {
        (
            None,
            errors
                .into_iter()
                .map(|e| format!("{text}  -> {e}"))
                .collect(),
        )
    }
}

/// Builds what `dab run` builds for a binding, as the runtime does:
/// sources and sinks by their factory, a Kafka queue as its producer and
/// one pipeline's consumer. Memory queues cannot fail to build.
fn build(
    section: Section,
    kind: &str,
    fields: &BTreeMap<String, ConfigValue>,
    schema: Option<&PayloadSchema>,
) -> Result<(), String> {
    let source = |kind: &str, fields: &BTreeMap<String, ConfigValue>| {
        dab_connectors::builtin_sources()
            .into_iter()
            .find(|f| f.kind() == kind)
            .ok_or_else(|| format!("no source factory for {kind}"))?
            .build("X", fields)
            .map(drop)
            .map_err(|e| e.to_string())
    };
    let sink = |kind: &str, fields: &BTreeMap<String, ConfigValue>| {
        dab_connectors::builtin_sinks()
            .into_iter()
            .find(|f| f.kind() == kind)
            .ok_or_else(|| format!("no sink factory for {kind}"))?
            .build_typed("X", fields, schema)
            .map(drop)
            .map_err(|e| e.to_string())
    };
    match (section, kind) {
        (Section::Sources, k) => source(k, fields),
        (Section::Sinks, k) => sink(k, fields),
        (Section::Queues, "memory") => Ok(()),
        (Section::Queues, "kafka") => {
            let mut reader = fields.clone();
            reader.insert("group".into(), ConfigValue::Str("dab.X.p".into()));
            source("kafka", &reader)?;
            sink("kafka", fields)
        }
        (Section::Queues, "disk") => {
            // The writers' sink and one pipeline's reader, over one owner.
            let writer = sink("disk", fields);
            let mut reader = fields.clone();
            reader.insert("queue".into(), ConfigValue::Str("X".into()));
            reader.insert("reader".into(), ConfigValue::Str("svc/p".into()));
            source("disk", &reader)?;
            writer
        }
        (Section::Queues, k) => Err(format!("unknown queue kind {k}")),
        (Section::Tables, "file") => {
            // What `dab run` loads at start for an `Enrich` stage.
            let text = |k: &str| match fields.get(k) {
                Some(ConfigValue::Str(s)) => Ok(s.clone()),
                other => Err(format!("table field `{k}`: {other:?}")),
            };
            let path = text("path")?;
            let format = match fields.get("format") {
                Some(ConfigValue::Str(f)) => TableFormat::from_name(f),
                _ => TableFormat::from_path(&path),
            }
            .ok_or("no table format")?;
            let spec = TableSpec {
                name: "X".into(),
                source: TableSource::File {
                    path,
                    key: text("key")?,
                    format,
                },
            };
            dab_runtime::enrich::Table::open(&spec, &[]).map(drop)
        }
        // A feed's consumer, built as `dab run` builds it (its start reads
        // the topic, which needs a broker).
        (Section::Tables, k) => dab_connectors::builtin_tables()
            .into_iter()
            .find(|f| f.kind() == k)
            .ok_or_else(|| format!("no table feed for {k}"))?
            .build("X", fields)
            .map(drop)
            .map_err(|e| e.to_string()),
    }
}

#[test]
fn every_value_validate_accepts_builds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = Files::new(dir.path());
    // Kafka clients are built inside a runtime, as `dab run` does.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = rt.enter();
    let mut failures = Vec::new();
    let (mut accepted, mut refused) = (0usize, 0usize);
    for kind in builtin_kinds() {
        let mut tries: Vec<Option<(&str, String)>> = vec![None];
        for f in kind.fields {
            tries.extend(candidates(f, &files).into_iter().map(|v| Some((f.name, v))));
        }
        let mut accepted_per_field: BTreeMap<&str, usize> = BTreeMap::new();
        for t in &tries {
            let field = t.as_ref().map(|(n, v)| (*n, v.as_str()));
            match load(kind, field, &files) {
                (Some((b, schema)), _) => {
                    accepted += 1;
                    if let Some((name, _)) = field {
                        *accepted_per_field.entry(name).or_default() += 1;
                    }
                    if let Err(e) = build(kind.section, kind.kind, &b.fields, schema.as_ref()) {
                        failures.push(format!(
                            "{} {} with {field:?}: validate accepts, build refuses: {e}",
                            kind.section, kind.kind
                        ));
                    }
                }
                (None, errors) => {
                    refused += 1;
                    if field.is_none() {
                        failures.push(format!("the base binding is refused: {errors:?}"));
                    }
                }
            }
        }
        // Each field takes some value, and each bound holds.
        for f in kind.fields {
            if accepted_per_field.get(f.name).copied().unwrap_or(0) == 0 {
                failures.push(format!(
                    "{} {}.{}: no value accepted",
                    kind.section, kind.kind, f.name
                ));
            }
            if let (
                FieldType::Int
                | FieldType::Number
                | FieldType::Duration
                | FieldType::DurationOr(_)
                | FieldType::Size,
                Some((min, max)),
            ) = (f.ty, f.bounds)
            {
                for past in [i128::from(min) - 1, i128::from(max) + 1] {
                    let v = past.to_string();
                    if load(kind, Some((f.name, &v)), &files).0.is_some() {
                        failures.push(format!(
                            "{} {}.{} = {v} is past its bounds {min}..={max} but accepted",
                            kind.section, kind.kind, f.name
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The spread is wide enough to mean something: both outcomes occur.
    assert!(
        accepted > 200 && refused > 100,
        "accepted {accepted}, refused {refused}"
    );
}

#[test]
fn every_librdkafka_value_validate_accepts_builds_a_kafka_client() {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = Files::new(dir.path());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _guard = rt.enter();
    let mut failures = Vec::new();
    let (mut built, mut clashing) = (0usize, 0usize);
    let kinds: Vec<&KindSpec> = builtin_kinds()
        .iter()
        .filter(|k| k.kind == "kafka")
        .collect();
    assert_eq!(kinds.len(), 4, "kafka source, sink, queue and table");
    for (property, values) in kafka_option_samples() {
        for value in values {
            let option = format!("{{ {property}: {} }}", quoted(&value));
            for kind in &kinds {
                // Fine alone, but clashing with DAB's defaults for this
                // client (`kafka_rules.rs`): refused, so nothing to build.
                let Some((b, _)) = load(kind, Some(("options", &option)), &files).0 else {
                    clashing += 1;
                    continue;
                };
                built += 1;
                if let Err(e) = build(kind.section, "kafka", &b.fields, None) {
                    failures.push(format!(
                        "{} kafka with {property} = {value}: validate accepts, build refuses: {e}",
                        kind.section
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {built}:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Four kinds: the table's consumer clashes where the source's does.
    assert!(
        built > 650 && clashing < 80,
        "built {built}, refused {clashing}"
    );
}
