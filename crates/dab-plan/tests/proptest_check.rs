//! Property tests of the whole check (SPEC sections 1-3): mutated blueprints
//! and bindings files go through `check_set` and `load_bindings` without a
//! panic, every diagnostic points inside the file it names on character
//! boundaries, the JSON report's positions are real positions, and generated
//! well-formed blueprints come back as a plan with exactly the pipelines,
//! stages and outputs that were written. Long conditions are checked in a
//! child process, because a stack overflow aborts rather than panics.

#![allow(clippy::unwrap_used)]

use dab_diag::{Code, Diagnostic, SourceMap, Span};
use dab_plan::bindings::load_bindings;
use dab_plan::model::Stage;
use dab_plan::{check_set, CheckedSet, Options, SourceSet};
use proptest::prelude::*;
use proptest::sample::select;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 10_000,
        // ChaCha, the default, takes a fifth of the run time in debug builds.
        rng_algorithm: proptest::test_runner::RngAlgorithm::XorShift,
        ..ProptestConfig::default()
    }
}

/// Set for some names, empty for one, unset for the rest.
fn env(name: &str) -> Option<String> {
    match name {
        "KAFKA_BROKERS" => Some("127.0.0.1:9092".to_owned()),
        "MURRON_LISTEN" => Some("127.0.0.1:8990".to_owned()),
        "PORT" => Some("9000".to_owned()),
        "EMPTY" => Some(String::new()),
        "WEIRD" => Some("${NOPE} \"q\" {a: [b]}\n#".to_owned()),
        _ => None,
    }
}

// ---------------------------------------------------------------- seeds

/// Valid blueprints covering the features of SPEC section 1.
const BLUEPRINT_SEEDS: &[&str] = &[
    // The SPEC seed.
    "// Ingestion\nmurron_server.NewPipeline().\n    In(MurronGRPC).\n    FilterType(MyEvent).\n    Out(MyEventQueue)\n\n// Sinks\nmy_event_worker.NewPipeline().In(MyEventQueue).\n    WithRateLimitPerSecond(1000).\n    WithSampleRate(5).\n    Out(SidecarClient)\n",
    // The short form, with the reader of its queue.
    "ingest.NewPipeline().In(Stdin).FilterType(X).Out(Queue).WithRateLimit(1000).WithSampleRate(5)\nworker.NewPipeline().In(Queue).Out(Stdout)",
    // A Filter expression.
    "f.NewPipeline(\"prod\").In(Stdin).Filter(tags.env == \"prod\" && host != \"canary-1\" || !(pid in [1, 2]) && tags[\"k-1\"] >= \"a\").Out(Stdout)",
    // Named arguments and an overflow queue.
    "a.NewPipeline(\"n\").In(Generator).WithRateLimit(0.5, burst = 3, on_limit = overflow, overflow = Spill).Out(Stdout, Blackhole, when_full = drop_newest)\nb.NewPipeline().In(Spill).Out(Blackhole)",
    // Comments and `;`.
    "/* block */ x.NewPipeline() // line\n  .In(Stdin) /* c */ .Out(Stdout); y.NewPipeline(\"p\").In(Stdin).FilterType(\"chat.message\", A).WithRateLimitPerSecond(0.5).Out(Stdout);\n// trailing",
    // A cycle through queues and a string name with escapes.
    "p.NewPipeline(\"\\u{e9}t\\u{3b1}-1.x\").In(Q1).Out(Q2)\nq.NewPipeline().In(Q2).WithSampleRate(2).Out(Q1, Stdout)\nr.NewPipeline().In(Stdin).Out(Q1)",
];

/// The bindings files of SPEC section 2, and the same in block style and
/// with interpolation.
const YAML_SEEDS: &[&str] = &[
    r#"sources:
  MurronGRPC: { kind: murron_grpc, listen: "127.0.0.1:8990" }
sinks:
  SidecarClient: { kind: murron_grpc, endpoint: "http://127.0.0.1:8991" }
queues:
  MyEventQueue: { kind: memory, capacity: 10000 }     # in-process channel
  # MyEventQueue: { kind: kafka, topic: my-events, brokers: "${KAFKA_BROKERS}" }
types:
  MyEvent: {}          # later: a schema
"#,
    r#"sources:
  TcpIn:   { kind: tcp,   listen: "127.0.0.1:9000", framing: ndjson }   # or framing: protobuf (length-delimited)
  UnixIn:  { kind: unix,  path: "/run/dab/in.sock", framing: ndjson }
  HttpIn:  { kind: http,  listen: "127.0.0.1:8080" }                    # POST /v1/events, JSON array of events
  GrpcIn:  { kind: murron_grpc, listen: "127.0.0.1:8992" }
  KafkaIn: { kind: kafka, brokers: "127.0.0.1:9092", topic: events, group: dab-events, codec: json,   # or codec: protobuf
             options: { session.timeout.ms: "6000" } }                                              # passed to librdkafka as is
  Gen:     { kind: generator, rate: 10000, count: 1000000, types: [A, B], payload_bytes: 200, seed: 7 }
sinks:
  TcpOut:   { kind: tcp,  connect: "127.0.0.1:9001", framing: ndjson }
  FileOut:  { kind: file, path: "out/events.ndjson" }
  HttpOut:  { kind: http, endpoint: "http://127.0.0.1:8081/ingest" }
  GrpcOut:  { kind: murron_grpc, endpoint: "http://127.0.0.1:8991" }
  KafkaOut: { kind: kafka, brokers: "127.0.0.1:9092", topic: filtered, key: host, codec: json }
"#,
    r#"sources:
  MurronGRPC:
    kind: murron_grpc
    listen: "${MURRON_LISTEN:-127.0.0.1:8990}"
  Tcp:
    kind: tcp
    listen: '127.0.0.1:${PORT}'
    framing: ndjson
sinks:
  SidecarClient: { kind: murron_grpc, endpoint: "${SIDECAR_ENDPOINT:-http://127.0.0.1:8991}" }
queues:
  MyEventQueue: { kind: kafka, topic: my-events, brokers: "${KAFKA_BROKERS}" }
types:
  MyEvent: {}
  "chat.message": {}
"#,
];

// ------------------------------------------------------------ mutations

/// A position as a fraction of the text's length (`u32::MAX` is the end),
/// so that it stays meaningful while other mutations change the length and
/// shrinks towards the start of the text.
type Pos = u32;

fn place(pos: Pos, len: usize) -> usize {
    ((len as u64 * u64::from(pos)) / u64::from(u32::MAX)) as usize
}

#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: Pos, len: usize },
    Insert { at: Pos, text: String },
    Duplicate { from: Pos, len: usize, to: Pos },
    Swap { a: Pos, b: Pos, len: usize },
    Truncate { at: Pos },
}

/// Applied to characters, so every cut falls on a character boundary and any
/// bad span is the checker's doing.
fn apply(seed: &str, mutations: &[Mutation]) -> String {
    let mut chars: Vec<char> = seed.chars().collect();
    for m in mutations {
        let n = chars.len();
        match m {
            Mutation::Delete { at, len } => {
                let start = place(*at, n);
                chars.drain(start..(start + len).min(n));
            }
            Mutation::Insert { at, text } => {
                let i = place(*at, n);
                chars.splice(i..i, text.chars());
            }
            Mutation::Duplicate { from, len, to } => {
                let start = place(*from, n);
                let piece: Vec<char> = chars[start..(start + len).min(n)].to_vec();
                let to = place(*to, n);
                chars.splice(to..to, piece);
            }
            Mutation::Swap { a, b, len } => {
                let (i, j) = {
                    let (x, y) = (place(*a, n), place(*b, n));
                    (x.min(y), x.max(y))
                };
                let len = (*len).min(j - i).min(n - j);
                let (left, right) = chars.split_at_mut(j);
                left[i..i + len].swap_with_slice(&mut right[..len]);
            }
            Mutation::Truncate { at } => chars.truncate(place(*at, n)),
        }
    }
    chars.into_iter().collect()
}

fn mutations(fragments: &'static [&'static str]) -> impl Strategy<Value = Vec<Mutation>> {
    let insert = proptest::collection::vec(select(fragments), 1..6)
        .prop_map(|f| f.concat())
        .boxed();
    let mutation = prop_oneof![
        1 => (any::<Pos>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
        3 => (any::<Pos>(), insert).prop_map(|(at, text)| Mutation::Insert { at, text }),
        1 => (any::<Pos>(), 1usize..24, any::<Pos>())
            .prop_map(|(from, len, to)| Mutation::Duplicate { from, len, to }),
        1 => (any::<Pos>(), any::<Pos>(), 1usize..16)
            .prop_map(|(a, b, len)| Mutation::Swap { a, b, len }),
        1 => any::<Pos>().prop_map(|at| Mutation::Truncate { at }),
    ];
    proptest::collection::vec(mutation, 1..6)
}

#[rustfmt::skip]
const BLUEPRINT_FRAGMENTS: &[&str] = &[
    "(", ")", ".", ",", "=", ";", "\"", "/", "*", "[", "]", "!", "&", "|", "&&", "||", "==", "<",
    ">=", "a", "_x", "Stdin", "Stdout", "Blackhole", "Generator", "In", "Out", "Filter",
    "FilterType", "WithSampleRate", "WithRateLimit", "NewPipeline", "tags", "host", "pid", "type",
    "in", "true", "0", "1", "-1", "0.5", "1e999", "10s", "99999999999999999999", "\\", "\\u{", "}",
    "\n", " ", "\t", "é", "🙂", "x.NewPipeline(", "overflow", "on_limit", "burst", "when_full",
    "drop_newest", "drop", "Q1", "Q2", "Spill", "MyEventQueue",
];

#[rustfmt::skip]
const YAML_FRAGMENTS: &[&str] = &[
    ":", ": ", " ", "\n", "\n  ", "\n    ", "-", "- ", "{", "}", "[", "]", ",", "#", "\"", "'",
    "${", "${KAFKA_BROKERS}", "${NOPE}", "${EMPTY:?why}", "${EMPTY}", "${A:-d}", "${PORT}",
    "${WEIRD}", "${1}", "$$", "&a ", "*a", "!!str ", "!!binary ", "---\n", "...\n", "kind: ",
    "listen: ", "path: ", "\"127.0.0.1:9000\"", "127.0.0.1:8990", "/run/dab/in.sock", "tcp",
    "unix", "http", "memory", "kafka", "generator", "file", "capacity: ", "rate: ", "0", "-1",
    "99999999999999999999", "1.5", ".inf", "true", "null", "~", "sources:", "sinks:", "queues:",
    "types:", "\t", "é", "\u{feff}", "\\", "|\n", ">\n", "? ", "%YAML 1.2\n", "@", "`", "\r",
];

// --------------------------------------------------------------- checks

/// The text of the file a span points into, after checking the span lies
/// within it on character boundaries.
fn check_span<'m>(map: &'m SourceMap, span: Span, what: &str) -> Result<&'m str, TestCaseError> {
    let Some(file) = map.get(span.file) else {
        return Err(TestCaseError::fail(format!(
            "{what}: span {span:?} in no file"
        )));
    };
    let text = file.text.as_str();
    let (start, end) = (span.start as usize, span.end as usize);
    prop_assert!(
        start <= end && end <= text.len(),
        "{}: span {}..{} outside 0..{} of {}: {:?}",
        what,
        start,
        end,
        text.len(),
        file.name,
        text
    );
    prop_assert!(
        text.is_char_boundary(start) && text.is_char_boundary(end),
        "{}: span {}..{} not on char boundaries of {:?}",
        what,
        start,
        end,
        text
    );
    Ok(text)
}

fn check_diagnostic_spans(map: &SourceMap, diags: &[Diagnostic]) -> Result<(), TestCaseError> {
    for d in diags {
        let what = format!("{} {:?}", d.code, d.message);
        prop_assert!(!d.message.is_empty(), "empty message");
        check_span(map, d.span, &what)?;
        for l in &d.labels {
            check_span(map, l.span, &what)?;
        }
    }
    Ok(())
}

/// 1-based line and the number of characters on it (without its `\n`).
/// Lines end at `\n`, `\r\n`, or a lone `\r` (as YAML counts them, and as
/// the source map does); the length excludes the break.
fn line_len(text: &str, line: usize) -> Option<usize> {
    text.replace("\r\n", "\n")
        .split(['\n', '\r'])
        .nth(line - 1)
        .map(|l| l.chars().count())
}

/// The JSON report agrees with the diagnostics and holds real positions
/// (SPEC section 3: 1-based lines and columns, `end_*` exclusive).
fn check_json(checked: &CheckedSet) -> Result<(), TestCaseError> {
    let diags = &checked.diagnostics;
    let report = dab_diag::to_json(&checked.map, diags);
    let errors = diags.iter().filter(|d| d.is_error()).count();
    prop_assert_eq!(report.diagnostics.len(), diags.len());
    prop_assert_eq!(
        (report.errors, report.warnings),
        (errors, diags.len() - errors)
    );
    let position_ok = |file: &str, line: usize, column: usize| {
        checked
            .map
            .files()
            .find(|(_, f)| f.name == file)
            .and_then(|(_, f)| line_len(&f.text, line.max(1)))
            .is_some_and(|len| line >= 1 && column >= 1 && column <= len + 1)
    };
    for (j, d) in report.diagnostics.iter().zip(diags) {
        prop_assert_eq!(j.code.as_str(), d.code.as_str());
        prop_assert_eq!(&j.message, &d.message);
        prop_assert_eq!(j.labels.len(), d.labels.len());
        prop_assert_eq!(
            checked.map.get(d.span.file).map(|f| f.name.as_str()),
            Some(j.file.as_str())
        );
        let mut positions = vec![(&j.file, (j.line, j.column), (j.end_line, j.end_column))];
        positions.extend(
            j.labels
                .iter()
                .map(|l| (&l.file, (l.line, l.column), (l.end_line, l.end_column))),
        );
        for (file, start, end) in positions {
            prop_assert!(
                start <= end,
                "{}: start {:?} after end {:?}",
                d.code,
                start,
                end
            );
            prop_assert!(
                position_ok(file, start.0, start.1) && position_ok(file, end.0, end.1),
                "{}: {:?}..{:?} is not a position in {}",
                d.code,
                start,
                end,
                file
            );
        }
    }
    Ok(())
}

/// Everything that must hold for any set, valid or not.
fn check_checked_set(checked: &CheckedSet) -> Result<(), TestCaseError> {
    check_diagnostic_spans(&checked.map, &checked.diagnostics)?;
    check_json(checked)?;
    let keys: Vec<_> = checked
        .diagnostics
        .iter()
        .map(|d| (d.span.file, d.span.start))
        .collect();
    prop_assert!(
        keys.windows(2).all(|w| w[0] <= w[1]),
        "diagnostics not sorted by file and position"
    );
    if !checked.has_errors() {
        // Without errors, ids are unique and every statement is a pipeline.
        let mut ids: Vec<&str> = checked
            .plan
            .pipelines
            .iter()
            .map(|p| p.id.as_str())
            .collect();
        ids.sort_unstable();
        prop_assert!(
            ids.windows(2).all(|w| w[0] != w[1]),
            "duplicate ids in the plan"
        );
        let statements: usize = checked
            .map
            .files()
            .filter(|(id, _)| Some(*id) != checked.bindings.file)
            .map(|(id, f)| dab_syntax::parse(id, &f.text).0.statements.len())
            .sum();
        prop_assert_eq!(checked.plan.pipelines.len(), statements);
    }
    Ok(())
}

fn check_bindings_text(text: String) -> Result<(), TestCaseError> {
    let mut map = SourceMap::new();
    map.add("other.dab", "x");
    let (bindings, diags) = load_bindings(&mut map, "dab.yaml", text, &env, &|p| std::fs::read(p));
    let file = bindings.file;
    prop_assert!(file.is_some());
    for d in &diags {
        prop_assert!(
            matches!(d.code, Code::E015 | Code::E017),
            "the bindings loader reported {} ({})",
            d.code,
            d.message
        );
        prop_assert_eq!(
            Some(d.span.file),
            file,
            "{} points outside dab.yaml",
            d.code
        );
        for l in &d.labels {
            prop_assert_eq!(Some(l.span.file), file, "a label outside dab.yaml");
        }
    }
    check_diagnostic_spans(&map, &diags)?;
    // Each binding's name span covers its name (quotes included), or the
    // first line of a name that spans lines. Empty names, and names written
    // with escapes, differ from their source and are not compared.
    for b in bindings.all() {
        let text = check_span(&map, b.name_span, "binding name")?;
        let covered = &text[b.name_span.range()];
        let unquoted = covered.trim_matches(|c| c == '"' || c == '\'');
        let escaped = covered.contains('\\') || covered.contains("''");
        prop_assert!(
            escaped || b.name.is_empty() || (!unquoted.is_empty() && b.name.starts_with(unquoted)),
            "the span of name {:?} covers {:?} in {:?}",
            b.name,
            covered,
            text
        );
    }
    Ok(())
}

fn blueprints_only(text: String) -> CheckedSet {
    let set = SourceSet {
        blueprints: vec![("a.dab".to_owned(), text)],
        bindings: None,
    };
    check_set(
        set,
        &env,
        &|p| std::fs::read(p),
        &dab_runtime::ops::plan_options(),
    )
}

// ------------------------------------------------ generated blueprints

/// What a generated stage must become in the plan.
#[derive(Debug, Clone, PartialEq)]
enum Expected {
    FilterType(Vec<String>),
    Filter,
    Sample(u64),
    RateLimit {
        per_second: f64,
        burst: Option<u32>,
        overflow: Option<&'static str>,
    },
}

#[derive(Debug, Clone)]
struct GenStage {
    tokens: Vec<String>,
    expected: Expected,
}

#[derive(Debug, Clone)]
struct GenPipeline {
    /// Unique once the generator appends the pipeline's index.
    service: String,
    /// (literal as written, decoded value)
    name: Option<(String, String)>,
    input: &'static str,
    stages: Vec<GenStage>,
    outputs: Vec<&'static str>,
    when_full: Option<&'static str>,
    modifiers: Vec<GenStage>,
    semicolon: bool,
}

fn tokens(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// A string literal as written and its value.
fn string_literal() -> impl Strategy<Value = (String, String)> {
    let ch = prop_oneof![
        4 => proptest::char::range('a', 'z'),
        1 => select(&['A', 'Z', '0', '9', ' ', '-', '_', '.', '/', 'é', '🙂', '"', '\\', '\n', '\t'][..]),
    ];
    proptest::collection::vec((ch, proptest::bool::weighted(0.1)), 0..8).prop_map(|chars| {
        let mut written = String::from("\"");
        let mut value = String::new();
        for (c, as_unicode_escape) in chars {
            value.push(c);
            match c {
                _ if as_unicode_escape => written.push_str(&format!("\\u{{{:x}}}", c as u32)),
                '"' => written.push_str("\\\""),
                '\\' => written.push_str("\\\\"),
                '\n' => written.push_str("\\n"),
                '\t' => written.push_str("\\t"),
                c => written.push(c),
            }
        }
        written.push('"');
        (written, value)
    })
}

/// An identifier: one of `first`, then up to `max` of `rest`. (Cheaper
/// than a regex strategy, which parses its regex for every case.)
fn identifier(
    first: &'static str,
    rest: &'static str,
    max: usize,
) -> impl Strategy<Value = String> {
    let first: Vec<char> = first.chars().collect();
    let rest: Vec<char> = rest.chars().collect();
    (
        select(first),
        proptest::collection::vec(select(rest), 0..=max),
    )
        .prop_map(|(f, r)| std::iter::once(f).chain(r).collect())
}

const CMP: &[&str] = &["==", "!=", "<", "<=", ">", ">="];

/// One comparison of SPEC section 1, well typed.
fn comparison() -> impl Strategy<Value = Vec<String>> {
    let tag = prop_oneof![
        identifier("k", "abcz09_", 5).prop_map(|k| vec!["tags".to_owned(), ".".to_owned(), k]),
        string_literal().prop_map(|(s, _)| vec![
            "tags".to_owned(),
            "[".to_owned(),
            s,
            "]".to_owned()
        ]),
    ];
    let string_field = select(&["host", "type", "message"][..]);
    let int_field = select(&["timestamp", "offset", "pid"][..]);
    prop_oneof![
        (string_field.clone(), select(CMP), string_literal())
            .prop_map(|(f, op, (s, _))| tokens(&[f, op, &s])),
        (int_field.clone(), select(CMP), any::<i64>()).prop_map(|(f, op, n)| tokens(&[
            f,
            op,
            &n.to_string()
        ])),
        (tag, select(&["==", "!="][..]), string_literal()).prop_map(|(mut t, op, (s, _))| {
            t.extend(tokens(&[op, &s]));
            t
        }),
        (
            string_field,
            proptest::collection::vec(string_literal(), 1..4)
        )
            .prop_map(|(f, items)| {
                let mut t = tokens(&[f, "in", "["]);
                for (i, (s, _)) in items.into_iter().enumerate() {
                    if i > 0 {
                        t.push(",".to_owned());
                    }
                    t.push(s);
                }
                t.push("]".to_owned());
                t
            }),
        (int_field, proptest::collection::vec(any::<i32>(), 0..4)).prop_map(|(f, items)| {
            let mut t = tokens(&[f, "in", "["]);
            let items: Vec<String> = items.iter().map(i32::to_string).collect();
            t.push(items.join(","));
            t.push("]".to_owned());
            t
        }),
    ]
}

fn condition() -> impl Strategy<Value = Vec<String>> {
    comparison().prop_recursive(2, 6, 2, |inner| {
        prop_oneof![
            (inner.clone(), select(&["&&", "||"][..]), inner.clone()).prop_map(|(mut l, op, r)| {
                l.push(op.to_owned());
                l.extend(r);
                l
            }),
            inner.clone().prop_map(|t| {
                let mut out = vec!["!".to_owned(), "(".to_owned()];
                out.extend(t);
                out.push(")".to_owned());
                out
            }),
            inner.prop_map(|t| {
                let mut out = vec!["!".to_owned()];
                out.extend(t);
                out
            }),
        ]
    })
}

fn call(op: &str, args: Vec<String>) -> Vec<String> {
    let mut t = tokens(&[".", op, "("]);
    t.extend(args);
    t.push(")".to_owned());
    t
}

/// `WithSampleRate(n >= 2)` or `WithRateLimit(r > 0, ...)`: no W002.
fn modifier() -> impl Strategy<Value = GenStage> {
    let rate = prop_oneof![
        (1u32..=1_000_000).prop_map(|r| r.to_string()),
        (0u32..1000, 1u32..1000).prop_map(|(i, f)| format!("{i}.{f}")),
    ];
    let on_limit = prop_oneof![
        Just(None),
        Just(Some(("wait", None))),
        Just(Some(("drop", None))),
        select(&["Stdout", "Blackhole"][..]).prop_map(|o| Some(("overflow", Some(o)))),
    ];
    prop_oneof![
        (2u64..=1_000_000_000).prop_map(|n| GenStage {
            tokens: call("WithSampleRate", vec![n.to_string()]),
            expected: Expected::Sample(n),
        }),
        (
            select(&["WithRateLimit", "WithRateLimitPerSecond"][..]),
            rate,
            proptest::option::of(1u32..=100_000),
            on_limit,
        )
            .prop_map(|(op, rate, burst, on_limit)| {
                let mut args = vec![rate.clone()];
                if let Some(b) = burst {
                    args.extend(tokens(&[",", "burst", "=", &b.to_string()]));
                }
                let mut overflow = None;
                if let Some((choice, target)) = on_limit {
                    args.extend(tokens(&[",", "on_limit", "=", choice]));
                    if let Some(t) = target {
                        args.extend(tokens(&[",", "overflow", "=", t]));
                        overflow = Some(t);
                    }
                }
                GenStage {
                    tokens: call(op, args),
                    expected: Expected::RateLimit {
                        per_second: rate.parse().unwrap(),
                        burst,
                        overflow,
                    },
                }
            }),
    ]
}

fn stage() -> impl Strategy<Value = GenStage> {
    let type_name = prop_oneof![
        identifier("AMZ", "aBz09_", 6).prop_map(|t| (t.clone(), t)),
        string_literal(),
    ];
    prop_oneof![
        proptest::collection::vec(type_name, 1..4).prop_map(|types| {
            let mut args = Vec::new();
            for (i, (written, _)) in types.iter().enumerate() {
                if i > 0 {
                    args.push(",".to_owned());
                }
                args.push(written.clone());
            }
            GenStage {
                tokens: call("FilterType", args),
                expected: Expected::FilterType(types.into_iter().map(|(_, v)| v).collect()),
            }
        }),
        condition().prop_map(|c| GenStage {
            tokens: call("Filter", c),
            expected: Expected::Filter,
        }),
        modifier(),
    ]
}

/// A pipeline name (letters, digits, `_`, `-`, `.`), some characters
/// written as `\u{...}`: as written and its value.
fn pipeline_name() -> impl Strategy<Value = (String, String)> {
    let ch = prop_oneof![
        4 => proptest::char::range('a', 'z'),
        1 => select(&['A', 'Z', '0', '9', '-', '_', '.', 'é', 'ß', 'α', '名'][..]),
    ];
    proptest::collection::vec((ch, proptest::bool::weighted(0.1)), 1..8).prop_map(|chars| {
        let mut written = String::from("\"");
        let mut value = String::new();
        for (c, as_unicode_escape) in chars {
            value.push(c);
            if as_unicode_escape {
                written.push_str(&format!("\\u{{{:x}}}", c as u32));
            } else {
                written.push(c);
            }
        }
        written.push('"');
        (written, value)
    })
}

/// 1 or 2 distinct built-in sinks (a repeated output is W002).
fn outputs() -> impl Strategy<Value = Vec<&'static str>> {
    prop_oneof![
        Just(vec!["Stdout"]),
        Just(vec!["Blackhole"]),
        Just(vec!["Stdout", "Blackhole"]),
        Just(vec!["Blackhole", "Stdout"]),
    ]
}

fn pipeline() -> impl Strategy<Value = GenPipeline> {
    (
        identifier("amz_", "amz09_", 8),
        proptest::option::of(pipeline_name()),
        select(&["Stdin", "Generator"][..]),
        proptest::collection::vec(stage(), 0..4),
        outputs(),
        proptest::option::of(select(&["block", "drop_newest"][..])),
        proptest::collection::vec(modifier(), 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(service, name, input, stages, outputs, when_full, modifiers, semicolon)| {
                GenPipeline {
                    service,
                    name,
                    input,
                    stages,
                    outputs,
                    when_full,
                    modifiers,
                    semicolon,
                }
            },
        )
}

/// What may stand between two tokens.
#[rustfmt::skip]
const SEPARATORS: &[&str] = &[
    "", "", " ", " ", "\n", "\t", "  \n    ", "\r\n", "/* c */", "/**/", " // note\n",
    "/* two\nlines */", "\n// x.NewPipeline(\n",
];

fn is_word(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The blueprint's text, with separators between all tokens.
fn render(pipelines: &[GenPipeline], separators: &[usize]) -> String {
    let mut all: Vec<String> = Vec::new();
    for (i, p) in pipelines.iter().enumerate() {
        all.extend(tokens(&[
            &format!("{}_{i}", p.service),
            ".",
            "NewPipeline",
            "(",
        ]));
        if let Some((written, _)) = &p.name {
            all.push(written.clone());
        }
        all.push(")".to_owned());
        all.extend(call("In", vec![p.input.to_owned()]));
        for s in &p.stages {
            all.extend(s.tokens.iter().cloned());
        }
        let mut out_args = Vec::new();
        for (k, o) in p.outputs.iter().enumerate() {
            if k > 0 {
                out_args.push(",".to_owned());
            }
            out_args.push((*o).to_owned());
        }
        if let Some(w) = p.when_full {
            out_args.extend(tokens(&[",", "when_full", "=", w]));
        }
        all.extend(call("Out", out_args));
        for m in &p.modifiers {
            all.extend(m.tokens.iter().cloned());
        }
        if p.semicolon {
            all.push(";".to_owned());
        }
    }
    let mut text = String::new();
    for (k, tok) in all.iter().enumerate() {
        let sep = SEPARATORS[separators[k % separators.len()]];
        let sep = if sep.is_empty() && is_word(text.chars().last()) && is_word(tok.chars().next()) {
            " "
        } else {
            sep
        };
        text.push_str(sep);
        text.push_str(tok);
    }
    text
}

fn check_stage(got: &Stage, want: &Expected) -> Result<(), TestCaseError> {
    use dab_runtime::ops::{filter, filter_type, rate_limit, sample};
    match want {
        Expected::FilterType(want) => match got.op_config::<filter_type::Config>() {
            Some(c) => prop_assert_eq!(&c.types, want),
            None => return Err(TestCaseError::fail(format!("{got:?} is not {want:?}"))),
        },
        Expected::Filter if got.op_config::<filter::Config>().is_some() => {}
        Expected::Sample(n) => match got.op_config::<sample::Config>() {
            Some(c) => prop_assert_eq!(&c.rate, n),
            None => return Err(TestCaseError::fail(format!("{got:?} is not {want:?}"))),
        },
        Expected::RateLimit {
            per_second: want_rate,
            burst: want_burst,
            overflow,
        } => {
            let Some(c) = got.op_config::<rate_limit::Config>() else {
                return Err(TestCaseError::fail(format!("{got:?} is not {want:?}")));
            };
            prop_assert_eq!(&c.per_second, want_rate);
            if let Some(b) = want_burst {
                prop_assert_eq!(&c.burst, b);
            }
            prop_assert!(c.burst >= 1);
            if let Some(target) = overflow {
                prop_assert_eq!(
                    &c.on_limit,
                    &rate_limit::OnLimit::Overflow((*target).to_owned())
                );
            }
        }
        _ => return Err(TestCaseError::fail(format!("{got:?} is not {want:?}"))),
    }
    Ok(())
}

// ----------------------------------------------------------- properties

proptest! {
    #![proptest_config(config())]

    #[test]
    fn check_set_survives_mutated_blueprints(
        seed in select(BLUEPRINT_SEEDS),
        mutations in mutations(BLUEPRINT_FRAGMENTS),
    ) {
        let text = apply(seed, &mutations);
        let checked = blueprints_only(text);
        check_checked_set(&checked)?;
    }

    #[test]
    fn check_set_survives_mutated_blueprints_and_bindings(
        seed in select(BLUEPRINT_SEEDS),
        blueprint_mutations in proptest::collection::vec(mutations(BLUEPRINT_FRAGMENTS), 0..2),
        // The connector catalogue (seed 1) binds no name these blueprints use
        // and is the slowest to load; the loader's own properties cover it.
        yaml in select(vec![YAML_SEEDS[0], YAML_SEEDS[2]]),
        yaml_mutations in proptest::collection::vec(mutations(YAML_FRAGMENTS), 0..2),
    ) {
        let set = SourceSet {
            blueprints: vec![
                ("a.dab".to_owned(), apply(seed, &blueprint_mutations.concat())),
                ("b.dab".to_owned(), "c.NewPipeline().In(Stdin).Out(MyEventQueue)".to_owned()),
            ],
            bindings: Some(("dab.yaml".to_owned(), apply(yaml, &yaml_mutations.concat()))),
        };
        let checked = check_set(set, &env, &|p| std::fs::read(p), &Options { service: Some("q".to_owned()), ops: dab_runtime::ops::plan_ops() });
        check_checked_set(&checked)?;
    }

    #[test]
    fn bindings_loader_survives_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        check_bindings_text(String::from_utf8_lossy(&bytes).into_owned())?;
    }

    #[test]
    fn bindings_loader_survives_mutated_files(
        seed in select(YAML_SEEDS),
        mutations in mutations(YAML_FRAGMENTS),
    ) {
        check_bindings_text(apply(seed, &mutations))?;
    }

    /// Well-formed blueprints, with any white space and comments between
    /// tokens, check clean and plan exactly what was written.
    #[test]
    fn generated_blueprints_plan_what_was_written(
        pipelines in proptest::collection::vec(pipeline(), 1..4),
        separators in proptest::collection::vec(0..SEPARATORS.len(), 1..32),
    ) {
        let text = render(&pipelines, &separators);
        let checked = blueprints_only(text.clone());
        prop_assert!(
            checked.diagnostics.is_empty(),
            "{:#?}\nfor {}",
            checked.diagnostics,
            text
        );
        let plan = &checked.plan;
        prop_assert_eq!(plan.pipelines.len(), pipelines.len(), "for {}", text);
        for (i, (got, want)) in plan.pipelines.iter().zip(&pipelines).enumerate() {
            let service = format!("{}_{i}", want.service);
            let id = match &want.name {
                Some((_, value)) => format!("{service}/{value}"),
                None => service.clone(),
            };
            prop_assert_eq!(&got.id, &id);
            prop_assert_eq!(&got.service, &service);
            prop_assert_eq!(got.config.input.as_str(), want.input);
            prop_assert_eq!(got.config.stages.len(), want.stages.len());
            for (s, w) in got.config.stages.iter().zip(&want.stages) {
                check_stage(s, &w.expected)?;
            }
            let targets: Vec<&str> = got.config.outputs.iter().map(|o| o.target.as_str()).collect();
            prop_assert_eq!(targets, want.outputs.clone());
            for o in &got.config.outputs {
                prop_assert_eq!(o.modifiers.len(), want.modifiers.len());
                for (s, w) in o.modifiers.iter().zip(&want.modifiers) {
                    check_stage(s, &w.expected)?;
                }
            }
        }
    }
}

#[test]
fn seeds_are_valid() {
    for seed in BLUEPRINT_SEEDS {
        let checked = blueprints_only((*seed).to_owned());
        // Without bindings the SPEC seed's names are unknown (E010), and one
        // seed is a cycle on purpose (E012); nothing else may be wrong.
        let errors: Vec<_> = checked
            .diagnostics
            .iter()
            .filter(|d| d.is_error() && d.code != Code::E012 && d.code != Code::E010)
            .collect();
        assert!(errors.is_empty(), "{seed:?}: {errors:#?}");
    }
    for seed in YAML_SEEDS {
        let mut map = SourceMap::new();
        let (bindings, diags) =
            load_bindings(&mut map, "dab.yaml", (*seed).to_owned(), &env, &|p| {
                std::fs::read(p)
            });
        assert!(diags.is_empty(), "{seed}: {diags:#?}");
        assert!(bindings.all().count() >= 3, "{seed}");
    }
}

#[test]
fn mutations_cut_on_characters() {
    assert_eq!(
        (place(0, 6), place(u32::MAX / 2, 6), place(u32::MAX, 6)),
        (0, 2, 6)
    );
    let swap = Mutation::Swap {
        a: 0,
        b: u32::MAX / 2,
        len: 2,
    };
    assert_eq!(apply("aébc🙂d", &[swap]), "bcaé🙂d");
    let duplicate = Mutation::Duplicate {
        from: 0,
        len: 3,
        to: u32::MAX,
    };
    assert_eq!(apply("é🙂", &[duplicate]), "é🙂é🙂");
    let delete = Mutation::Delete {
        at: u32::MAX / 2,
        len: 9,
    };
    assert_eq!(apply("é🙂xy", &[delete]), "é");
    let insert = Mutation::Insert {
        at: u32::MAX,
        text: "(".to_owned(),
    };
    assert_eq!(apply("é", &[insert, Mutation::Truncate { at: 0 }]), "");
}

/// Long conditions: (repeated part, innermost).
const CONDITIONS: [(&str, &str); 3] = [
    ("!", "host == \"x\""),
    ("host == \"x\" && ", "pid > 1"),
    ("tags.k != \"v\" || ", "type in [\"A\"]"),
];

/// Checks one shape of `CONDITIONS` (index in `DAB_CONDITION_CHILD`) at
/// growing lengths, in this thread's 2 MiB stack like any test. Runs only as
/// a child of `long_conditions_never_overflow_the_stack`.
#[test]
#[ignore = "run in a child process by long_conditions_never_overflow_the_stack"]
fn long_conditions_child() {
    let Some((repeated, inner)) = std::env::var("DAB_CONDITION_CHILD")
        .ok()
        .and_then(|i| i.parse::<usize>().ok())
        .and_then(|i| CONDITIONS.get(i))
    else {
        return;
    };
    for n in (1..=64).chain((100..=5_000).step_by(100)) {
        // Printed first: if the stack overflows, the last line names the input.
        eprintln!("checking length {n}");
        let text = format!(
            "a.NewPipeline().In(Stdin).Filter({}{inner}).Out(Stdout)",
            repeated.repeat(n)
        );
        let checked = blueprints_only(text);
        // Accepted as it is, or refused with an error: never a crash.
        let accepted = checked.diagnostics.is_empty() && checked.plan.pipelines.len() == 1;
        assert!(
            accepted || checked.has_errors(),
            "length {n}: {:#?}",
            checked.diagnostics
        );
    }
    eprintln!("checked every length");
}

/// SPEC section 3: bad input never panics, and a long but valid condition
/// is not even bad input. A stack overflow aborts the process instead of
/// panicking, so each shape runs in a child process and this test reads how
/// it ended.
#[test]
fn long_conditions_never_overflow_the_stack() {
    let exe = std::env::current_exe().unwrap();
    let mut failures = Vec::new();
    for (i, (repeated, inner)) in CONDITIONS.iter().enumerate() {
        let out = std::process::Command::new(&exe)
            .args([
                "--exact",
                "long_conditions_child",
                "--ignored",
                "--nocapture",
            ])
            .env("DAB_CONDITION_CHILD", i.to_string())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rfind(|l| l.starts_with("checking length ") || *l == "checked every length")
            .unwrap_or("");
        if !(out.status.success() && last == "checked every length") {
            let why = stderr
                .lines()
                .find(|l| l.contains("overflow") || l.contains("panicked"))
                .unwrap_or("");
            failures.push(format!(
                "`Filter({repeated}{repeated}...{inner})`, {last}: {} ({why})",
                out.status
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
