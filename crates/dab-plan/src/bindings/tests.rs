//! Tests of the bindings loader: clean files, each diagnostic at its line and
//! column, interpolation, E017, and odd input that must not panic.

use std::collections::BTreeMap;

use dab_diag::{Code, Diagnostic, SourceMap};

use super::*;

fn load_env(text: &str, vars: &[(&str, &str)]) -> (SourceMap, Bindings, Vec<Diagnostic>) {
    let vars: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let env = move |name: &str| vars.get(name).cloned();
    let mut map = SourceMap::new();
    let (b, d) = load_bindings(&mut map, "dab.yaml", text.to_owned(), &env, &|p| {
        std::fs::read(p)
    });
    (map, b, d)
}

fn load(text: &str) -> (SourceMap, Bindings, Vec<Diagnostic>) {
    load_env(text, &[])
}

/// `CODE line:col message`, one per diagnostic, in order.
fn render(map: &SourceMap, diags: &[Diagnostic]) -> Vec<String> {
    diags
        .iter()
        .map(|d| {
            let (_, start, _) = map.locate(d.span);
            format!("{} {}:{} {}", d.code, start.line, start.column, d.message)
        })
        .collect()
}

/// The only diagnostic of a file, rendered, with its span's text.
fn only(text: &str) -> (String, String, Option<String>) {
    let (map, _, diags) = load(text);
    assert_eq!(diags.len(), 1, "{:#?}", render(&map, &diags));
    let d = &diags[0];
    (
        render(&map, &diags).remove(0),
        map.snippet(d.span).to_owned(),
        d.help.clone(),
    )
}

fn s(v: &str) -> ConfigValue {
    ConfigValue::Str(v.to_owned())
}

const SEED: &str = r#"sources:
  MurronGRPC: { kind: murron_grpc, listen: "127.0.0.1:8990" }
sinks:
  SidecarClient: { kind: murron_grpc, endpoint: "http://127.0.0.1:8991" }
queues:
  MyEventQueue: { kind: memory, capacity: 10000 }     # in-process channel
  # MyEventQueue: { kind: kafka, topic: my-events, brokers: "${KAFKA_BROKERS}" }
types:
  MyEvent: {}          # later: a schema
"#;

#[test]
fn the_seed_file_loads_clean() {
    let (map, b, diags) = load(SEED);
    assert_eq!(render(&map, &diags), Vec::<String>::new());
    assert_eq!(b.file, Some(dab_diag::FileId(0)));
    let grpc = b.get("MurronGRPC").expect("bound");
    assert_eq!(grpc.section, Section::Sources);
    assert_eq!(grpc.config().0, "murron_grpc");
    assert_eq!(grpc.fields.get("listen"), Some(&s("127.0.0.1:8990")));
    assert_eq!(map.snippet(grpc.name_span), "MurronGRPC");
    assert_eq!(map.snippet(grpc.kind_span), "murron_grpc");
    assert_eq!(
        map.snippet(grpc.field_spans["listen"]),
        "\"127.0.0.1:8990\""
    );
    let q = b.get("MyEventQueue").expect("bound");
    assert_eq!(q.fields.get("capacity"), Some(&ConfigValue::Int(10000)));
    assert!(!q.fields.contains_key("kind"));
    assert_eq!(b.sinks.len(), 1);
    let types = b.types.as_ref().expect("declared");
    assert_eq!(types.len(), 1);
    assert_eq!(map.snippet(types[0].span), "MyEvent");
    assert_eq!(
        b.all().map(|b| b.name.as_str()).collect::<Vec<_>>(),
        ["MurronGRPC", "SidecarClient", "MyEventQueue"]
    );
}

#[test]
fn every_kind_of_spec_section_2_loads_clean() {
    let text = r#"sources:
  TcpIn:   { kind: tcp,   listen: "127.0.0.1:9000", framing: ndjson }
  UnixIn:  { kind: unix,  path: "/run/dab/in.sock", framing: ndjson }
  HttpIn:  { kind: http,  listen: "127.0.0.1:8080" }
  GrpcIn:  { kind: murron_grpc, listen: "127.0.0.1:8992" }
  KafkaIn: { kind: kafka, brokers: "127.0.0.1:9092", topic: events, group: dab-events, codec: json,
             options: { session.timeout.ms: "6000" } }
  Gen:     { kind: generator, rate: 10000, count: 1000000, types: [A, B], payload_bytes: 200, seed: 7 }
sinks:
  TcpOut:   { kind: tcp,  connect: "127.0.0.1:9001", framing: ndjson }
  FileOut:  { kind: file, path: "out/events.ndjson" }
  HttpOut:  { kind: http, endpoint: "http://127.0.0.1:8081/ingest" }
  GrpcOut:  { kind: murron_grpc, endpoint: "http://127.0.0.1:8991", batch_timeout: 250ms }
  KafkaOut: { kind: kafka, brokers: "127.0.0.1:9092", topic: filtered, key: host, codec: json }
  Out: { kind: stdout }
  Nothing: { kind: blackhole }
queues:
  Mem: { kind: memory }
  Shared: { kind: kafka, brokers: "k:9092", topic: shared, partitions: 3 }
"#;
    let (map, b, diags) = load(text);
    assert_eq!(render(&map, &diags), Vec::<String>::new());
    assert_eq!((b.sources.len(), b.sinks.len(), b.queues.len()), (6, 7, 2));
    assert!(b.types.is_none());
    let kafka = b.get("KafkaIn").expect("bound");
    let options = BTreeMap::from([("session.timeout.ms".to_owned(), s("6000"))]);
    assert_eq!(
        kafka.fields.get("options"),
        Some(&ConfigValue::Map(options))
    );
    let gen = b.get("Gen").expect("bound");
    assert_eq!(
        gen.fields.get("types"),
        Some(&ConfigValue::List(vec![s("A"), s("B")]))
    );
    assert_eq!(gen.fields.get("rate"), Some(&ConfigValue::Int(10000)));
    let grpc = b.get("GrpcOut").expect("bound");
    assert_eq!(
        grpc.fields.get("batch_timeout"),
        Some(&ConfigValue::Int(250))
    );
}

#[test]
fn the_conformance_bindings_files() {
    let (line, snippet, help) =
        only("sources:\n  Src: { kind: teleporter, listen: \"127.0.0.1:1\" }\n");
    assert_eq!(line, "E015 2:16 unknown source kind `teleporter`");
    assert_eq!(snippet, "teleporter");
    assert_eq!(
        help.as_deref(),
        Some("the source kinds are tcp, unix, http, murron_grpc, kafka, generator")
    );
    let (_, b, diags) = load("queues:\n  OrphanQueue: { kind: memory, capacity: 100 }\n");
    assert!(diags.is_empty());
    assert_eq!(b.queues.len(), 1);
}

#[test]
fn empty_and_comment_only_files_bind_nothing() {
    for text in [
        "",
        "\n\n",
        "# nothing yet\n",
        "{}",
        "sources:\nsinks: ~\nqueues: {}\n",
    ] {
        let (map, b, diags) = load(text);
        assert_eq!(render(&map, &diags), Vec::<String>::new(), "{text:?}");
        assert_eq!(b.all().count(), 0);
        assert!(b.types.is_none());
    }
    let (_, b, _) = load("types:\n");
    assert_eq!(b.types.map(|t| t.len()), Some(0));
}

#[test]
fn yaml_errors_point_at_the_parser_position() {
    let (line, _, _) = only("sources:\n  A: { kind: tcp\nsinks: {}\n");
    assert!(line.starts_with("E015 3:"), "{line}");
    assert!(line.contains("YAML syntax error: "), "{line}");
    let (line, _, _) = only("sources:\n  A: b: c\n");
    assert_eq!(
        line,
        "E015 2:7 YAML syntax error: mapping values are not allowed in this context"
    );
    let (line, _, help) = only("- sources\n");
    assert_eq!(line, "E015 1:1 a bindings file must be a mapping");
    assert!(help.is_some_and(|h| h.contains("sources:")));
    let (line, snippet, _) = only("sources:\n  A: &x { kind: stdout }\n");
    assert_eq!(
        line,
        "E015 2:9 YAML anchors and aliases are not supported in a bindings file"
    );
    assert_eq!(snippet, "{");
    let (line, _, _) = only("queues:\n  Q: !!map { kind: memory }\n");
    assert!(
        line.starts_with("E015 2:") && line.contains("YAML tags"),
        "{line}"
    );
    let (line, _, _) = only("queues: {}\n---\nsinks: {}\n");
    assert_eq!(
        line,
        "E015 2:1 a bindings file holds one YAML document, this is a second one"
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let deep: String = (0..5000)
        .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
        .collect();
    let (map, _, diags) = load(&deep);
    assert_eq!(
        render(&map, &diags),
        ["E015 65:68 YAML nested deeper than 64 levels"]
    );
    let flow = format!("sources: {}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (_, _, diags) = load(&flow);
    assert_eq!(diags.len(), 1);
}

#[test]
fn unknown_top_level_keys_get_a_suggestion() {
    let (line, snippet, help) = only("soruces:\n  A: { kind: stdout }\n");
    assert_eq!(line, "E015 1:1 unknown top-level key `soruces`");
    assert_eq!(snippet, "soruces");
    assert_eq!(help.as_deref(), Some("did you mean `sources`?"));
    let (_, _, help) = only("pipelines: {}\n");
    assert_eq!(
        help.as_deref(),
        Some("the top-level keys are sources, sinks, queues, tables, types and keys")
    );
}

#[test]
fn a_binding_that_is_not_a_mapping() {
    let (line, snippet, help) = only("queues:\n  Q: memory\n");
    assert_eq!(
        line,
        "E015 2:6 binding `Q` must be a mapping with a `kind`, found string \"memory\""
    );
    assert_eq!(snippet, "memory");
    assert_eq!(help.as_deref(), Some("for example `Q: { kind: memory }`"));
    // An empty value has no span of its own: the name is pointed at.
    let (line, snippet, _) = only("sinks:\n  S:\n");
    assert_eq!(
        line,
        "E015 2:3 binding `S` must be a mapping with a `kind`, found null"
    );
    assert_eq!(snippet, "S");
    let (_, b, _) = load("sinks:\n  S: [1]\n");
    assert_eq!(b.get("S").map(|b| b.kind.as_str()), Some(""));
}

#[test]
fn missing_and_bad_kinds() {
    let (line, snippet, help) = only("sinks:\n  S: { endpoint: \"http://x\" }\n");
    assert_eq!(line, "E015 2:3 binding `S` has no `kind`");
    assert_eq!(snippet, "S");
    assert!(help.is_some_and(|h| h.contains("stdout, blackhole")));
    let (line, snippet, _) = only("sinks:\n  S: { kind: [stdout] }\n");
    assert_eq!(line, "E015 2:14 `kind` must be a string, found a list");
    assert_eq!(snippet, "[stdout]");
    let (line, _, help) = only("sources:\n  S: { kind: tpc, listen: \"127.0.0.1:1\" }\n");
    assert_eq!(line, "E015 2:14 unknown source kind `tpc`");
    assert_eq!(
        help.as_deref(),
        Some("did you mean `tcp`? The source kinds are tcp, unix, http, murron_grpc, kafka, generator")
    );
    let (line, _, help) = only("sources:\n  Q: { kind: memory }\n");
    assert_eq!(line, "E015 2:14 unknown source kind `memory`");
    assert!(help.is_some_and(|h| h.starts_with(
        "`memory` is a queue kind; to bind `Q` as a queue, move it under `queues:`."
    )));
    // Kept with its kind, so the planner does not call the name unknown.
    let (_, b, _) = load("sources:\n  S: { kind: tpc, listen: 1 }\n");
    let s = b.get("S").expect("kept");
    assert_eq!(s.kind, "tpc");
    assert!(s.fields.is_empty());
}

#[test]
fn unknown_fields_get_a_suggestion_or_the_list() {
    let (line, snippet, help) =
        only("sources:\n  S: { kind: tcp, lisen: \"127.0.0.1:1\", listen: \"127.0.0.1:2\" }\n");
    assert_eq!(line, "E015 2:19 unknown field `lisen` for a `tcp` source");
    assert_eq!(snippet, "lisen");
    assert_eq!(help.as_deref(), Some("did you mean `listen`?"));
    let (_, _, help) = only("queues:\n  Q: { kind: memory, size: 5 }\n");
    assert_eq!(
        help.as_deref(),
        Some("the fields of a `memory` queue are capacity, capacity_bytes")
    );
    // Every sink has its breaker's fields, even one with no others.
    let (_, _, help) = only("sinks:\n  S: { kind: stdout, pretty: true }\n");
    assert_eq!(
        help.as_deref(),
        Some("the fields of a `stdout` sink are breaker_after, breaker_cooldown")
    );
}

#[test]
fn missing_required_fields_point_at_the_name() {
    let text = "sinks:\n  K:\n    kind: kafka\n    brokers: \"k:9092\"\n";
    let (line, snippet, help) = only(text);
    assert_eq!(
        line,
        "E015 2:3 kafka sink `K` is missing required field `topic`"
    );
    assert_eq!(snippet, "K");
    assert_eq!(
        help.as_deref(),
        Some("add `topic`: topic to write, or a template such as `events.{type}`")
    );
    // A present but bad value is reported as bad, not as missing.
    let (line, _, _) = only("sources:\n  T: { kind: tcp, listen: 8990 }\n");
    assert_eq!(
        line,
        "E015 2:27 `listen` must be an address host:port, found integer 8990"
    );
}

#[test]
fn wrong_types_name_the_field_and_what_was_found() {
    let (line, snippet, _) = only("queues:\n  Q: { kind: memory, capacity: \"abc\" }\n");
    assert_eq!(
        line,
        "E015 2:32 `capacity` must be an integer, found string \"abc\""
    );
    assert_eq!(snippet, "\"abc\"");
    let (line, _, _) = only("queues:\n  Q: { kind: memory, capacity: 1.5 }\n");
    assert_eq!(
        line,
        "E015 2:32 `capacity` must be an integer, found float 1.5"
    );
    let (line, _, _) = only("queues:\n  Q: { kind: memory, capacity: -3 }\n");
    assert_eq!(line, "E015 2:32 `capacity` must not be negative, found -3");
    let (line, _, _) = only("queues:\n  Q: { kind: memory, capacity: 0 }\n");
    assert_eq!(line, "E015 2:32 `capacity` must be at least 1, found 0");
    let (line, _, _) = only("sinks:\n  F: { kind: file, path: out, fsync: maybe }\n");
    assert_eq!(
        line,
        "E015 2:38 `fsync` must be true or false, found string \"maybe\""
    );
    let (line, snippet, _) = only("sources:\n  G: { kind: generator, types: [A, [B]] }\n");
    assert_eq!(
        line,
        "E015 2:36 items of `types` must be strings, found a list"
    );
    assert_eq!(snippet, "[B]");
    let (line, _, _) = only("sources:\n  G:\n    kind: generator\n    types:\n      x: 1\n");
    assert_eq!(
        line,
        "E015 4:5 `types` must be a list of strings, found a mapping"
    );
    let (line, _, help) = only("sinks:\n  H: { kind: http, endpoint: \"127.0.0.1:80\" }\n");
    assert_eq!(
        line,
        "E015 2:30 `endpoint` must be a URL such as \"http://127.0.0.1:8991\", found string \"127.0.0.1:80\""
    );
    assert!(help.is_none());
    let (line, _, _) =
        only("sinks:\n  G: { kind: murron_grpc, endpoint: \"http://x\", batch_timeout: soon }\n");
    assert_eq!(
        line,
        "E015 2:64 `batch_timeout` must be a duration such as \"250ms\" or \"10s\", found string \"soon\""
    );
    let (line, _, _) =
        only("sources:\n  K: { kind: kafka, brokers: b, topic: t, options: { a: [1] } }\n");
    assert_eq!(
        line,
        "E015 2:57 values of `options` must be strings, found a list"
    );
}

#[test]
fn enum_values_list_the_allowed_ones() {
    let (line, snippet, help) =
        only("sources:\n  T: { kind: tcp, listen: \"h:1\", framing: ndjsn }\n");
    assert_eq!(
        line,
        "E015 2:43 `framing` must be one of ndjson, protobuf, found string \"ndjsn\""
    );
    assert_eq!(snippet, "ndjsn");
    assert_eq!(help.as_deref(), Some("did you mean `ndjson`?"));
    let (_, b, diags) =
        load("sinks:\n  K: { kind: kafka, brokers: b, topic: t, compression: zstd }\n");
    assert!(diags.is_empty());
    assert_eq!(b.sinks[0].fields.get("compression"), Some(&s("zstd")));
}

#[test]
fn a_kafka_source_needs_one_of_topic_and_topics() {
    let (line, _, _) = only("sources:\n  K: { kind: kafka, brokers: b }\n");
    assert_eq!(line, "E015 2:3 kafka source `K` needs `topic` or `topics`");
    let (line, snippet, _) =
        only("sources:\n  K: { kind: kafka, brokers: b, topic: a, topics: [b] }\n");
    assert_eq!(
        line,
        "E015 2:43 kafka source `K` has both `topic` and `topics`"
    );
    assert_eq!(snippet, "topics");
    let (_, b, diags) = load("sources:\n  K: { kind: kafka, brokers: b, topics: [a, b] }\n");
    assert!(diags.is_empty());
    assert_eq!(
        b.sources[0].fields.get("topics"),
        Some(&ConfigValue::List(vec![s("a"), s("b")]))
    );
}

#[test]
fn a_name_bound_twice_is_reported_at_the_second() {
    let text = "sources:\n  X: { kind: tcp, listen: \"h:1\" }\nqueues:\n  X: { kind: memory }\n";
    let (map, b, diags) = load(text);
    assert_eq!(
        render(&map, &diags),
        ["E015 4:3 name `X` is bound as a source and as a queue"]
    );
    let (_, first, _) = map.locate(diags[0].labels[0].span);
    assert_eq!((first.line, first.column), (2, 3));
    assert_eq!(b.all().filter(|b| b.name == "X").count(), 2);

    let text = "queues:\n  Q: { kind: memory }\n  R: { kind: memory }\n  Q: { kind: memory, capacity: 5 }\n  R: {kind: memory}\n";
    let (map, b, diags) = load(text);
    assert_eq!(
        render(&map, &diags),
        [
            "E015 4:3 name `Q` is bound twice in `queues`",
            "E015 5:3 name `R` is bound twice in `queues`"
        ]
    );
    let (_, first, _) = map.locate(diags[0].labels[0].span);
    assert_eq!((first.line, first.column), (2, 3));
    assert_eq!(b.queues.len(), 2);

    let (line, _, _) = only("sinks:\n  S: { kind: stdout, kind: blackhole }\n");
    assert_eq!(line, "E015 2:22 key `kind` appears twice in one mapping");
}

#[test]
fn binding_names_must_be_identifiers() {
    let (line, snippet, _) = only("sinks:\n  my-sink: { kind: stdout }\n");
    assert_eq!(line, "E015 2:3 binding name `my-sink` is not an identifier");
    assert_eq!(snippet, "my-sink");
}

#[test]
fn types_must_map_to_mappings() {
    let (line, _, _) = only("types: [A, B]\n");
    assert_eq!(
        line,
        "E015 1:8 `types` must be a mapping of type names, found a list"
    );
    let (map, b, diags) = load("types:\n  A:\n  B: {}\n  \"chat.message\": ~\n  C: 3\n");
    assert_eq!(
        render(&map, &diags),
        ["E015 5:6 type `C` must map to a mapping, found integer 3"]
    );
    let names: Vec<_> = b.types.iter().flatten().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["A", "B", "chat.message", "C"]);
}

#[test]
fn sections_must_be_mappings() {
    let (line, _, _) = only("sources: [a]\n");
    assert_eq!(
        line,
        "E015 1:10 `sources` must be a mapping of names to bindings, found a list"
    );
    let (line, snippet, _) = only("sinks:\n  - x\n");
    assert_eq!(
        line,
        "E015 1:1 `sinks` must be a mapping of names to bindings, found a list"
    );
    assert_eq!(snippet, "sinks");
}

#[test]
fn interpolation_fills_strings_and_types_them() {
    let text = r#"sources:
  K: { kind: kafka, brokers: "${BROKERS}", topic: "${TOPIC:-events}", codec: "${CODEC:-json}",
       options: { client.id: "dab-${HOST}" } }
  G: { kind: generator, rate: "${RATE:-0.5}", count: "${COUNT}", hosts: "${HOSTS}", types: ["$$A"] }
queues:
  Q: { kind: memory, capacity: "${CAP:-100}" }
"#;
    let env = [
        ("BROKERS", "k1:9092,k2:9092"),
        ("TOPIC", ""),
        ("HOST", "h1"),
        ("COUNT", " 42 "),
        ("HOSTS", "a, b,,c"),
    ];
    let (map, b, diags) = load_env(text, &env);
    assert_eq!(render(&map, &diags), Vec::<String>::new());
    let k = &b.get("K").expect("bound").fields;
    assert_eq!(k["brokers"], s("k1:9092,k2:9092"));
    assert_eq!(k["topic"], s("events"));
    assert_eq!(k["codec"], s("json"));
    assert_eq!(
        k["options"],
        ConfigValue::Map(BTreeMap::from([("client.id".to_owned(), s("dab-h1"))]))
    );
    let g = &b.get("G").expect("bound").fields;
    assert_eq!(g["rate"], ConfigValue::Float(0.5));
    assert_eq!(g["count"], ConfigValue::Int(42));
    assert_eq!(g["hosts"], ConfigValue::List(vec![s("a"), s("b"), s("c")]));
    assert_eq!(g["types"], ConfigValue::List(vec![s("$A")]));
    assert_eq!(
        b.get("Q").expect("bound").fields["capacity"],
        ConfigValue::Int(100)
    );
}

#[test]
fn an_unset_variable_is_reported_at_its_reference() {
    let text = "queues:\n  Q: { kind: kafka, topic: t, brokers: \"kafka-${KAFKA_BROKERS}\" }\n";
    let (line, snippet, help) = only(text);
    assert_eq!(
        line,
        "E015 2:47 environment variable `KAFKA_BROKERS` is not set"
    );
    assert_eq!(snippet, "${KAFKA_BROKERS}");
    assert_eq!(
        help.as_deref(),
        Some("set it, give a default with ${KAFKA_BROKERS:-default}, or pass --env KAFKA_BROKERS=... to dab validate")
    );
    // With escapes the reference cannot be located inside: the value is.
    let (line, snippet, _) =
        only("queues:\n  Q: { kind: kafka, topic: t, brokers: \"\\x41${B}\" }\n");
    assert_eq!(line, "E015 2:40 environment variable `B` is not set");
    assert_eq!(snippet, "\"\\x41${B}\"");
}

#[test]
fn required_and_malformed_references() {
    let text =
        "queues:\n  Q: { kind: kafka, topic: t, brokers: \"${B:?set B to the broker list}\" }\n";
    let (line, snippet, help) = only(text);
    assert_eq!(line, "E015 2:41 set B to the broker list");
    assert_eq!(snippet, "${B:?set B to the broker list}");
    assert!(help.is_some_and(|h| h.contains("--env B=...")));
    let (line, snippet, help) = only("sinks:\n  F: { kind: file, path: \"out/${DIR\" }\n");
    assert_eq!(
        line,
        "E015 2:31 malformed variable reference: `${` is never closed by `}`"
    );
    assert_eq!(snippet, "${DIR");
    assert_eq!(
        help.as_deref(),
        Some("write ${VAR}, ${VAR:-default} or ${VAR:?message}; $$ is a literal $")
    );
    // Every problem of a file, not only the first.
    let text = "sinks:\n  A: { kind: file, path: \"${X}${Y}\" }\n  B: { kind: http, endpoint: \"${Z}\" }\n";
    let (map, _, diags) = load(text);
    assert_eq!(
        render(&map, &diags),
        [
            "E015 2:27 environment variable `X` is not set",
            "E015 2:31 environment variable `Y` is not set",
            "E015 3:31 environment variable `Z` is not set"
        ]
    );
}

#[test]
fn interpolated_values_are_checked_after_substitution() {
    let (map, _, diags) = load_env(
        "queues:\n  Q: { kind: memory, capacity: \"${CAP}\" }\n",
        &[("CAP", "lots")],
    );
    assert_eq!(
        render(&map, &diags),
        ["E015 2:32 `capacity` must be an integer, found string \"lots\""]
    );
    let (map, _, diags) = load_env(
        "sources:\n  T: { kind: tcp, listen: \"${ADDR}\" }\n",
        &[("ADDR", "127.0.0.1")],
    );
    assert_eq!(
        render(&map, &diags),
        ["E015 2:27 `listen` must be an address host:port, found string \"127.0.0.1\""]
    );
    assert_eq!(
        diags[0].help.as_deref(),
        Some("for example \"127.0.0.1:8990\"")
    );
    // Keys are never interpolated: `${K}` is checked as written.
    let (map, b, diags) =
        load("sinks:\n  S: { kind: kafka, brokers: b, topic: t, options: { \"${K}\": v } }\n");
    assert_eq!(
        render(&map, &diags),
        ["E015 2:54 `${K}` is not a librdkafka property"]
    );
    let opts = &b.sinks[0].fields["options"];
    assert_eq!(
        opts,
        &ConfigValue::Map(BTreeMap::from([("${K}".to_owned(), s("v"))]))
    );
}

#[test]
fn two_sources_on_one_address_is_e017() {
    let text = r#"sources:
  A: { kind: murron_grpc, listen: "127.0.0.1:8990" }
  B: { kind: tcp, listen: "${B_ADDR}" }
  C: { kind: http, listen: "127.0.0.1:8991" }
  U: { kind: unix, path: /run/dab.sock }
  V: { kind: unix, path: "/run/dab.sock" }
"#;
    let (map, _, diags) = load_env(text, &[("B_ADDR", "localhost:8990")]);
    assert_eq!(
        render(&map, &diags),
        [
            "E017 3:27 source `B` listens on `localhost:8990`, which source `A` already uses",
            "E017 6:26 source `V` listens on `/run/dab.sock`, which source `U` already uses"
        ]
    );
    assert_eq!(diags[0].code, Code::E017);
    let (_, first, _) = map.locate(diags[0].labels[0].span);
    assert_eq!((first.line, first.column), (2, 35));
    assert_eq!(
        diags[0].labels[0].message,
        "`A` listens on `127.0.0.1:8990` here"
    );
}

#[test]
fn every_problem_of_a_file_in_one_pass() {
    let text = r#"sources:
  A: { kind: tcp }
  B: { kind: nope }
sinks:
  C: { kind: stdout, x: 1 }
queues:
  D: { kind: memory, capacity: big }
extra: 1
"#;
    let (map, b, diags) = load(text);
    assert_eq!(
        render(&map, &diags),
        [
            "E015 2:3 tcp source `A` is missing required field `listen`",
            "E015 3:14 unknown source kind `nope`",
            "E015 5:22 unknown field `x` for a `stdout` sink",
            "E015 7:32 `capacity` must be an integer, found string \"big\"",
            "E015 8:1 unknown top-level key `extra`"
        ]
    );
    // Broken bindings are still bound.
    assert_eq!(b.all().count(), 4);
}

#[test]
fn crlf_tabs_and_unicode_keep_columns_right() {
    let text = "queues:\r\n  Qé: { kind: memory, capacity: x }\r\n";
    let (map, _, diags) = load(text);
    assert_eq!(
        render(&map, &diags),
        [
            "E015 2:3 binding name `Qé` is not an identifier",
            "E015 2:33 `capacity` must be an integer, found string \"x\""
        ]
    );
    assert_eq!(map.snippet(diags[1].span), "x");
}

#[test]
fn config_compares_without_spans() {
    let (_, a, _) = load("queues:\n  Q: { kind: memory, capacity: 5 }\n");
    let (_, b, _) = load("\n\nqueues:\n    Q:\n      capacity: \"5\"\n      kind: memory\n");
    let (qa, qb) = (a.get("Q").expect("bound"), b.get("Q").expect("bound"));
    assert_ne!(qa.name_span, qb.name_span);
    assert_eq!(qa.config(), qb.config());
}

/// Truncations, byte flips and splices of a valid file must all load
/// without a panic, each problem a located E015 or E017.
#[test]
fn odd_input_never_panics() {
    let all_kinds = "sources:\n  T: { kind: tcp, listen: \"${A:-127.0.0.1:1}\", framing: ndjson }\n  K: {kind: kafka, brokers: b, topics: [x, 'y'], options: {a.b: 1}}\nsinks:\n  S: |\n    text\nqueues:\n  Q: { kind: memory, capacity: \"${C:?no}\" }\ntypes: { E: {} }\n";
    let mut inputs: Vec<String> = Vec::new();
    for base in [SEED, all_kinds] {
        for cut in 0..=base.len() {
            if let Some(prefix) = base.get(..cut) {
                inputs.push(prefix.to_owned());
            }
        }
        let bytes = base.as_bytes();
        for (i, junk) in [
            b'{', b'[', b'"', b'\'', b':', b'-', b'\t', b'&', b'*', b'!', b'$', b'}', 0xff, b'\n',
            b'#', b'|',
        ]
        .into_iter()
        .enumerate()
        {
            for at in (i..bytes.len()).step_by(7) {
                let mut v = bytes.to_vec();
                v[at] = junk;
                inputs.push(String::from_utf8_lossy(&v).into_owned());
            }
        }
    }
    for odd in [
        "\u{feff}",
        "\0",
        "---",
        "...",
        "?",
        ": x",
        "- - -",
        "a: *b",
        "%YAML 1.2\n---\n{}",
        "[",
        "{a: {b: {c: [",
        "sources: { A: { kind: ${ } }",
        "sources:\n  \"\": { kind: tcp }",
        "types: { ? [a] : b }",
        "sources: { A: { kind: \"${X:-\" } }",
        "\r\r\r",
        "sources:\n\tA: 1",
    ] {
        inputs.push(odd.to_owned());
    }
    assert!(inputs.len() > 500, "{}", inputs.len());
    let mut with_errors = 0;
    for text in &inputs {
        let (map, _, diags) = load(text);
        for d in &diags {
            assert!(matches!(d.code, Code::E015 | Code::E017), "{text:?}: {d:?}");
            assert!(!d.message.ends_with('.'), "{}", d.message);
            assert!(map
                .get(d.span.file)
                .is_some_and(|f| d.span.end as usize <= f.text.len()));
        }
        with_errors += usize::from(!diags.is_empty());
    }
    assert!(
        with_errors > inputs.len() / 2,
        "{with_errors} of {}",
        inputs.len()
    );
}

#[test]
fn kafka_options_that_switch_off_a_delivery_guarantee_are_e015() {
    let (map, _, diags) = load(
        "queues:\n  Q: { kind: kafka, brokers: b, topic: t, options: { enable.auto.offset.store: \"true\", acks: \"0\" } }\n\
         sources:\n  K: { kind: kafka, brokers: b, topic: t, options: { enable.auto.commit: \"true\", enable.idempotence: \"False\" } }\n",
    );
    assert_eq!(
        render(&map, &diags),
        [
            "E015 2:54 kafka queue `Q`: `options.enable.auto.offset.store` would switch off a delivery guarantee",
            "E015 2:88 kafka queue `Q`: `options.acks` would switch off a delivery guarantee",
            "E015 4:54 kafka source `K`: `options.enable.auto.commit` would switch off a delivery guarantee",
            "E015 4:82 kafka source `K`: `options.enable.idempotence` would switch off a delivery guarantee",
        ]
    );
}

/// The rendered diagnostics of a file, with its help lines.
fn all(text: &str) -> Vec<String> {
    let (map, _, diags) = load(text);
    render(&map, &diags)
}

#[test]
fn numbers_are_held_to_their_fields_bounds() {
    assert_eq!(
        all("sources:\n  G: { kind: generator, pids: 10001 }\n"),
        ["E015 2:31 `pids` must be at most 10000, found 10001"]
    );
    assert_eq!(
        all("sources:\n  G: { kind: generator, payload_bytes: 1048577 }\n"),
        ["E015 2:40 `payload_bytes` must be at most 1048576, found 1048577"]
    );
    assert_eq!(
        all("sources:\n  G: { kind: generator, rate: 1.5e9 }\n"),
        ["E015 2:31 `rate` must be at most 1000000000, found 1500000000"]
    );
    assert_eq!(
        all("queues:\n  Q: { kind: kafka, brokers: b, topic: t, partitions: 100001 }\n"),
        ["E015 2:55 `partitions` must be at most 100000, found 100001"]
    );
    assert_eq!(
        all("sinks:\n  S: { kind: http, endpoint: \"http://h:1\", timeout: 2h }\n"),
        ["E015 2:53 `timeout` must be at most 3600000 ms, found 7200000 ms"]
    );
    assert_eq!(
        all("sources:\n  G: { kind: generator, hosts: [] }\n"),
        ["E015 2:32 `hosts` must list 1 to 1000 items, found 0"]
    );
    // The bounds themselves are accepted.
    assert!(all(
        "sources:\n  G: { kind: generator, pids: 10000, payload_bytes: 1048576, rate: 1000000000 }\n"
    )
    .is_empty());
}

#[test]
fn a_generator_keeps_its_counters_bounded() {
    let hosts: Vec<String> = (0..200).map(|i| format!("h{i}")).collect();
    let text = format!(
        "sources:\n  G: {{ kind: generator, pids: 10000, hosts: [{}] }}\n",
        hosts.join(", ")
    );
    assert_eq!(
        all(&text),
        ["E015 2:3 generator `G` makes 4000000 (host, pid, type) combinations, more than 1000000"]
    );
}

#[test]
fn sink_endpoints_are_http_or_https_with_a_ca() {
    assert_eq!(
        all("sinks:\n  S: { kind: http, endpoint: \"https://h:1/x\" }\n"),
        ["E015 2:30 `endpoint` `https://h:1/x` is https:// and needs `tls_ca`"]
    );
    assert_eq!(
        all("sinks:\n  S: { kind: http, endpoint: \"http://h:1/x\", tls_ca: ca.pem }\n"),
        ["E015 2:54 `tls_ca` is for https:// endpoints, and `http://h:1/x` is http://"]
    );
    let (map, _, diags) = load(
        "sinks:\n  S: { kind: murron_grpc, endpoint: \"https://h:1\", tls_ca: /no/such/ca.pem }\n",
    );
    assert_eq!(
        render(&map, &diags),
        ["E018 2:60 cannot read `tls_ca` file `/no/such/ca.pem`: No such file or directory (os error 2)"]
    );
    assert_eq!(
        all("sinks:\n  S: { kind: murron_grpc, endpoint: \"ftp://h:1\" }\n"),
        ["E015 2:37 `endpoint` `ftp://h:1`: scheme `ftp` is not http or https"]
    );
    assert_eq!(
        all("sinks:\n  S: { kind: murron_grpc, endpoint: \"http://h:1\" }\n"),
        Vec::<String>::new()
    );
}

#[test]
fn kafka_options_that_keep_the_guarantees_are_fine() {
    let (map, _, diags) = load(
        "sinks:\n  K: { kind: kafka, brokers: b, topic: t, options: { acks: all, enable.idempotence: true, linger.ms: 5 } }\n  \
         L: { kind: kafka, brokers: b, topic: t, options: { acks: \"-1\" } }\n",
    );
    assert!(diags.is_empty(), "{:#?}", render(&map, &diags));
}

#[test]
fn kafka_options_are_librdkafka_properties_with_fitting_values() {
    assert_eq!(
        all("sources:\n  K: { kind: kafka, brokers: b, topic: t, options: { session.timeout: \"6000\", fetch.wait.max.ms: \"-5\" } }\n"),
        [
            "E015 2:54 `session.timeout` is not a librdkafka property",
            "E015 2:98 librdkafka property `fetch.wait.max.ms` must be an integer from 0 to 300000, found `-5`",
        ]
    );
    let (_, _, diags) = load(
        "sources:\n  K: { kind: kafka, brokers: b, topic: t, options: { session.timeout: \"6000\" } }\n",
    );
    assert_eq!(
        diags[0].help.as_deref(),
        Some("did you mean `session.timeout.ms`?")
    );
}

#[test]
fn tls_needs_both_files_and_reads_them() {
    assert_eq!(
        all("sources:\n  G: { kind: murron_grpc, listen: \"127.0.0.1:1\", tls_cert: c.pem }\n"),
        ["E015 2:60 source `G` has `tls_cert` but no `tls_key`"]
    );
    let dir = std::env::temp_dir().join(format!("dab-plan-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let junk = dir.join("junk.pem");
    std::fs::write(&junk, "not pem at all\n").expect("write");
    let missing = dir.join("missing.pem");
    let text = format!(
        "sources:\n  G: {{ kind: murron_grpc, listen: \"127.0.0.1:1\", tls_cert: \"{}\", tls_key: \"{}\" }}\n",
        junk.display(),
        missing.display()
    );
    let (map, _, diags) = load(&text);
    let got = render(&map, &diags);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(diags.iter().all(|d| d.code == Code::E018));
    assert!(
        got[0].ends_with("junk.pem` holds no PEM certificate"),
        "{got:#?}"
    );
    assert!(
        got[1].contains("missing.pem`: No such file or directory"),
        "{got:#?}"
    );
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn key_files_are_read_when_the_set_is_checked() {
    let dir = std::env::temp_dir().join(format!("dab-plan-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let good = dir.join("good.key");
    std::fs::write(&good, "s3cret\n").expect("write");
    let empty = dir.join("empty.key");
    std::fs::write(&empty, "\n").expect("write");
    let text = format!(
        "keys:\n  A: {{ file: \"{}\" }}\n  B: {{ file: \"{}\" }}\n  C: {{ file: \"{}/none.key\" }}\n  D: {{ env: K }}\n",
        good.display(),
        empty.display(),
        dir.display()
    );
    let (map, b, diags) = load_env(&text, &[("K", "from-env")]);
    let got = render(&map, &diags);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(got[0].starts_with("E018 3:"), "{got:#?}");
    assert!(
        got[0].ends_with("empty.key` of key `B` is empty"),
        "{got:#?}"
    );
    assert!(got[1].starts_with("E018 4:"), "{got:#?}");
    assert!(
        got[1].contains("none.key` of key `C`: No such file"),
        "{got:#?}"
    );
    let secret = |n: &str| {
        b.keys
            .iter()
            .find(|k| k.name == n)
            .and_then(|k| k.secret.clone())
            .map(|s| s.bytes().to_vec())
    };
    assert_eq!(secret("A").as_deref(), Some(&b"s3cret"[..]));
    assert_eq!(secret("B"), None);
    assert_eq!(secret("D").as_deref(), Some(&b"from-env"[..]));
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn a_socket_path_too_long_to_bind_is_refused() {
    let long = format!("/tmp/{}", "s".repeat(103));
    assert_eq!(long.len(), 108);
    assert_eq!(
        all(&format!(
            "sources:\n  U: {{ kind: unix, path: \"{long}\" }}\n"
        )),
        ["E015 2:26 socket path is 108 bytes, longer than the 107 a Unix socket can bind"]
    );
    assert!(all(&format!(
        "sources:\n  U: {{ kind: unix, path: \"{}\" }}\n",
        &long[..107]
    ))
    .is_empty());
}
