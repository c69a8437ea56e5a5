//! Front-end throughput on a large, valid blueprint set (docs/PERFORMANCE.md,
//! "Validation"): `parse` is the syntax crate alone (`parse_pest_only` the
//! same with pest alone, as before the hand-written parser), `check_set` is
//! what `dab validate` does between reading the files and rendering (parse,
//! bindings, plan), and `check_set_cached_one_file_changed` is what a
//! reload does after an edit to one file. All report bytes per second.
//!
//! The set is 10,000 pipelines in 100 files, generated here with a fixed seed
//! in the spirit of `scripts/gen-corpus.py` (services, named pipelines,
//! queues linking files, every operator, fan-out, comments, bindings), so
//! `cargo bench -p dab-plan` needs nothing else. `DAB_BENCH_CORPUS=DIR`
//! (absolute: cargo runs benches in the crate's directory) benchmarks
//! `DIR/*.dab` and `DIR/dab.yaml` instead, e.g. the output of the Python
//! generator.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use dab_diag::FileId;
use dab_plan::{check_set, check_set_cached, ParseCache, SourceSet};

const FILES: usize = 100;
const PIPELINES_PER_FILE: usize = 100;

fn bench(c: &mut Criterion) {
    let set = corpus();
    let blueprint_bytes: usize = set.blueprints.iter().map(|(_, t)| t.len()).sum();
    let bindings_bytes = set.bindings.as_ref().map_or(0, |(_, t)| t.len());

    // Measure the happy path only: a set with findings would time rendering
    // of help texts and suggestions instead.
    let checked = check_set(
        set.clone(),
        &env,
        &|p| std::fs::read(p),
        &dab_runtime::ops::plan_options(),
    );
    assert!(
        checked.diagnostics.is_empty(),
        "the benchmark set must be valid, found {} diagnostics, first: {:?}",
        checked.diagnostics.len(),
        checked.diagnostics.first().map(|d| &d.message)
    );
    let pipelines = checked.plan.pipelines.len();
    eprintln!(
        "benchmark set: {pipelines} pipelines in {} files, {blueprint_bytes} bytes of blueprints, {bindings_bytes} bytes of bindings",
        set.blueprints.len()
    );

    let mut group = c.benchmark_group(format!("validate_{pipelines}_pipelines"));
    // One iteration is tens to hundreds of milliseconds: few, flat samples
    // keep the whole run near a minute.
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(10));

    group.throughput(Throughput::BytesDecimal(blueprint_bytes as u64));
    group.bench_function("parse", |b| {
        // The ASTs are dropped outside the timing; `check_set` drops them
        // inside (in `parse_and_plan`) and only its result outside.
        b.iter_with_large_drop(|| {
            set.blueprints
                .iter()
                .enumerate()
                .map(|(i, (_, text))| {
                    let file = FileId(u32::try_from(i).expect("fewer than 2^32 files"));
                    dab_syntax::parse(file, black_box(text))
                })
                .collect::<Vec<_>>()
        });
    });

    // The same with pest alone, as before the hand-written parser: the
    // comparison in the same run.
    group.bench_function("parse_pest_only", |b| {
        b.iter_with_large_drop(|| {
            set.blueprints
                .iter()
                .enumerate()
                .map(|(i, (_, text))| {
                    let file = FileId(u32::try_from(i).expect("fewer than 2^32 files"));
                    dab_syntax::parse_pest_only(file, black_box(text))
                })
                .collect::<Vec<_>>()
        });
    });

    group.throughput(Throughput::BytesDecimal(
        (blueprint_bytes + bindings_bytes) as u64,
    ));
    group.bench_function("check_set", |b| {
        b.iter_batched(
            || set.clone(),
            |set| {
                check_set(
                    set,
                    &env,
                    &|p| std::fs::read(p),
                    &dab_runtime::ops::plan_options(),
                )
            },
            BatchSize::LargeInput,
        );
    });
    // What a reload does after an edit to one file: the same check with the
    // parse cache of the previous one. Each iteration flips the first file
    // between two texts, so exactly one file is parsed again.
    let mut edited = set.clone();
    if let Some((_, text)) = edited.blueprints.first_mut() {
        text.push_str("// edited\n");
    }
    let mut cache = ParseCache::default();
    let warm = check_set_cached(
        set.clone(),
        &env,
        &|p| std::fs::read(p),
        &dab_runtime::ops::plan_options(),
        &mut cache,
    );
    assert!(warm.diagnostics.is_empty());
    let mut flip = false;
    group.bench_function("check_set_cached_one_file_changed", |b| {
        b.iter_batched(
            || {
                flip = !flip;
                if flip {
                    edited.clone()
                } else {
                    set.clone()
                }
            },
            |s| {
                let r = check_set_cached(
                    s,
                    &env,
                    &|p| std::fs::read(p),
                    &dab_runtime::ops::plan_options(),
                    &mut cache,
                );
                debug_assert_eq!(cache.parsed_last(), 1);
                r
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// `DAB_BENCH_CORPUS` if set, else the generated set.
fn corpus() -> SourceSet {
    match std::env::var_os("DAB_BENCH_CORPUS") {
        Some(dir) => read_dir(std::path::Path::new(&dir)),
        None => generate(FILES, PIPELINES_PER_FILE, 42),
    }
}

fn read_dir(dir: &std::path::Path) -> SourceSet {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| {
            // cargo runs benches in the crate's directory: give an absolute path.
            panic!("cannot read DAB_BENCH_CORPUS `{}`: {e}", dir.display())
        })
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "dab"))
        .collect();
    paths.sort();
    let read = |p: &std::path::Path| {
        let text = std::fs::read_to_string(p).expect("blueprints and bindings are UTF-8 files");
        (p.display().to_string(), text)
    };
    let yaml = dir.join("dab.yaml");
    SourceSet {
        blueprints: paths.iter().map(|p| read(p)).collect(),
        bindings: yaml.is_file().then(|| read(&yaml)),
    }
}

/// SplitMix64: a fixed, tiny generator, so the set is the same on every
/// machine and no dependency is needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// True with probability `percent`/100.
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const TYPES: &[&str] = &[
    "LoginEvent",
    "LogoutEvent",
    "PaymentEvent",
    "RefundEvent",
    "ClickEvent",
    "ViewEvent",
    "SearchEvent",
    "OrderEvent",
    "AuditV2",
    "MetricV2",
    "TraceV2",
    "\"chat.message\"",
];
const SERVICES: &[&str] = &[
    "ingest", "billing", "auth", "search", "ledger", "audit", "gateway", "orders",
];
const SOURCES: &[&str] = &[
    "TcpIn0", "TcpIn1", "TcpIn2", "TcpIn3", "HttpIn0", "HttpIn1", "Gen0", "Gen1",
];
const SINKS: &[&str] = &[
    "FileOut0",
    "FileOut1",
    "FileOut2",
    "TcpOut0",
    "HttpOut0",
    "Drop0",
    "Blackhole",
];

fn bindings_yaml() -> String {
    let mut y = String::from("sources:\n");
    for (i, s) in SOURCES.iter().enumerate() {
        let port = 20000 + i;
        let line = match &s[..3] {
            "Tcp" => format!("  {s}: {{ kind: tcp, listen: \"127.0.0.1:{port}\", framing: ndjson }}\n"),
            "Htt" => format!("  {s}: {{ kind: http, listen: \"127.0.0.1:{port}\" }}\n"),
            _ => format!("  {s}: {{ kind: generator, rate: 1000, count: 100000, types: [LoginEvent, ClickEvent], seed: {i} }}\n"),
        };
        y.push_str(&line);
    }
    y.push_str(
        "sinks:\n\
         \x20 FileOut0: { kind: file, path: \"out/a.ndjson\" }\n\
         \x20 FileOut1: { kind: file, path: \"out/b.ndjson\" }\n\
         \x20 FileOut2: { kind: file, path: \"out/c.ndjson\", fsync: true }\n\
         \x20 TcpOut0: { kind: tcp, connect: \"127.0.0.1:30000\", framing: ndjson }\n\
         \x20 HttpOut0: { kind: http, endpoint: \"http://127.0.0.1:31000/ingest\", timeout: 5s }\n\
         \x20 Drop0: { kind: blackhole }\n\
         queues:\n",
    );
    y
}

/// Each queue is written by one pipeline and read by a later one (so there
/// is no cycle); every fifth queue is bound as a memory queue, the rest are
/// implicit.
fn generate(files: usize, per_file: usize, seed: u64) -> SourceSet {
    let mut rng = Rng(seed);
    let total = files * per_file;
    let mut pending: Vec<String> = Vec::new();
    let mut queues = 0usize;
    let mut yaml = bindings_yaml();
    let mut blueprints = Vec::with_capacity(files);
    for f in 0..files {
        let mut text = format!("// Generated for the parse_plan bench: file {f}\n");
        for i in 0..per_file {
            let remaining = total - f * per_file - i;
            let service = SERVICES[(f + i) % SERVICES.len()];
            let svc = format!("{service}_{f:03}_{}", i % 5);
            if rng.chance(30) {
                let _ = writeln!(text, "\n// {svc}: hot path, owned by the platform team");
            } else {
                text.push('\n');
            }
            let head = if i < 5 {
                format!("{svc}.NewPipeline()")
            } else {
                format!("{svc}.NewPipeline(\"p{i:03}\")")
            };
            // Sources are used in turn first, so that every binding is read.
            let input = if !pending.is_empty() && (pending.len() >= remaining || rng.chance(60)) {
                pending.swap_remove(rng.below(pending.len()))
            } else if f * per_file + i < SOURCES.len() {
                SOURCES[f * per_file + i].to_owned()
            } else {
                rng.pick(SOURCES).to_owned()
            };
            let mut ops = vec![format!("In({input})")];
            if rng.chance(70) {
                let n = if rng.chance(70) { 1 } else { 2 };
                let ts: Vec<&str> = (0..n).map(|_| rng.pick(TYPES)).collect();
                ops.push(format!("FilterType({})", ts.join(", ")));
            }
            if rng.chance(60) {
                ops.push(format!("Filter({})", expression(&mut rng)));
            }
            if rng.chance(30) {
                ops.push(format!("WithSampleRate({})", 2 + rng.below(100)));
            }
            if rng.chance(30) {
                ops.push(match rng.below(3) {
                    0 => format!("WithRateLimitPerSecond({})", 100 * (1 + rng.below(50))),
                    1 => "WithRateLimit(0.5, burst = 10, on_limit = drop)".to_owned(),
                    _ => format!("WithRateLimitPerSecond(1000, burst = 100, on_limit = overflow, overflow = {})", rng.pick(SINKS)),
                });
            }
            let fan_out = if rng.chance(20) { 2 } else { 1 };
            let mut outs = Vec::new();
            for k in 0..fan_out {
                // Sinks are used in turn first, like sources.
                let sink_turn = f * per_file + i + k;
                if sink_turn >= SINKS.len() && pending.len() + 1 < remaining && rng.chance(50) {
                    queues += 1;
                    let q = format!("Q{f:03}_{queues:05}");
                    if queues % 5 == 0 {
                        let _ = writeln!(yaml, "  {q}: {{ kind: memory, capacity: 10000 }}");
                    }
                    pending.push(q.clone());
                    outs.push(q);
                } else if sink_turn < SINKS.len() {
                    outs.push(SINKS[sink_turn].to_owned());
                } else {
                    // Each output once: a repeat is W002.
                    let mut sink = rng.pick(SINKS);
                    while outs.iter().any(|o| o == sink) {
                        sink = rng.pick(SINKS);
                    }
                    outs.push(sink.to_owned());
                }
            }
            ops.push(format!("Out({})", outs.join(", ")));
            if rng.chance(10) {
                ops.push("WithSampleRate(4)".to_owned());
            }
            if rng.chance(50) {
                let _ = write!(text, "{head}.\n    {}", ops.join(".\n    "));
            } else {
                let _ = write!(text, "{head}.{}", ops.join("."));
            }
            text.push_str(if rng.chance(10) { ";\n" } else { "\n" });
        }
        blueprints.push((format!("gen/f{f:03}.dab"), text));
    }
    assert!(pending.is_empty(), "every generated queue is read");
    yaml.push_str("types:\n");
    for t in TYPES {
        let _ = writeln!(yaml, "  {t}: {{}}");
    }
    SourceSet {
        blueprints,
        bindings: Some(("gen/dab.yaml".to_owned(), yaml)),
    }
}

fn expression(rng: &mut Rng) -> String {
    let mut parts = Vec::new();
    for _ in 0..1 + rng.below(3) {
        parts.push(match rng.below(7) {
            0 => format!("tags.env == \"{}\"", rng.pick(&["prod", "staging", "dev"])),
            1 => format!("tags[\"aws-region\"] != \"eu-west-{}\"", rng.below(3)),
            2 => format!(
                "host in [\"web-{}\", \"web-{}\"]",
                rng.below(100),
                rng.below(100)
            ),
            3 => format!("pid > {}", rng.below(5000)),
            4 => format!("offset >= {}", rng.below(1_000_000)),
            5 => "!(message == \"\")".to_owned(),
            _ => format!(
                "(type == \"{}\" || host != \"canary-{}\")",
                rng.pick(&TYPES[..8]),
                rng.below(10)
            ),
        });
    }
    let mut out = parts[0].clone();
    for p in &parts[1..] {
        out.push_str(if rng.chance(70) { " && " } else { " || " });
        out.push_str(p);
    }
    out
}

criterion_group!(benches, bench);
criterion_main!(benches);
