//! Events/s of each stage on its own: `stages::compile` + `Compiled::apply`
//! on batches of 1024 events, the size sources hand on. The events are
//! decoded from 250-byte NDJSON lines, as the TCP path sees them: types A
//! and B in turn, a `level` tag that is `error` one time in eight.
//!
//! `stage_payload` compares `Filter` on a payload field (SPEC section 7)
//! with `Filter` on `host`, on events whose `message` is a 190-byte JSON
//! object; each batch is fresh, so every event's payload is parsed once.
//!
//! `cargo bench -p dab-runtime --bench stages`

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dab_api::{AckToken, Batch, Event};
use dab_plan::model::Stage;
use dab_plan::{check_set, SourceSet};
use dab_runtime::metrics::PipelineMetrics;
use dab_runtime::stages::compile;

const BATCH: usize = 1024;

fn events() -> Vec<Event> {
    (0..BATCH)
        .map(|i| {
            let ty = if i % 2 == 0 { "A" } else { "B" };
            let level = if i % 8 == 0 { "error" } else { "info" };
            let line = format!(
                r#"{{"timestamp":1732320000123456789,"host":"web-17.prod.example.net","type":"{ty}","offset":{},"pid":31102,"message":"GET /api/chat.postMessage?channel=C024BE91L HTTP/1.1 200 153 0.012","tags":{{"env":"prod","level":"{level}"}}}}"#,
                1_000_000 + i
            );
            dab_connectors::codec::json::decode(Bytes::from(line))
                .expect("valid line")
                .0
        })
        .collect()
}

/// The first stage of each pipeline `<name>.NewPipeline().In(Src).<op>.Out(Dst)`.
fn stages(ops: &[(&str, &str)]) -> Vec<(String, Stage)> {
    let text: String = ops
        .iter()
        .map(|(name, op)| format!("{name}.NewPipeline().In(Src).{op}.Out(Dst)\n"))
        .collect();
    let bindings = "sources:\n  Src: { kind: generator }\nsinks:\n  Dst: { kind: blackhole }\ntypes:\n  A: {}\n  B: {}\n  C: {}\n  D: {}\n";
    let set = check_set(
        SourceSet {
            blueprints: vec![("stages.dab".into(), text)],
            bindings: Some(("dab.yaml".into(), bindings.into())),
        },
        &|_| None,
        &|p| std::fs::read(p),
        &dab_runtime::ops::plan_options(),
    );
    assert!(!set.has_errors(), "{:?}", set.diagnostics);
    ops.iter()
        .map(|(name, _)| {
            let p = set.plan.pipeline(name).expect("pipeline");
            let stage = p.config.stages.first().expect("one stage").clone();
            ((*name).to_owned(), stage)
        })
        .collect()
}

fn bench_stages(c: &mut Criterion) {
    let template = events();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let groups: &[(&str, &[(&str, &str)])] = &[
        (
            "filter_type",
            &[
                ("one_type_keeps_half", "FilterType(A)"),
                ("three_types_keeps_half", "FilterType(C, D, B)"),
            ],
        ),
        (
            "filter",
            &[
                ("tag_eq", r#"Filter(tags.level == "error")"#),
                (
                    "and_or_in",
                    r#"Filter((type == "A" && tags.env == "prod") || pid in [1, 2, 3])"#,
                ),
            ],
        ),
        (
            "sample",
            &[
                ("rate_5", "WithSampleRate(5)"),
                ("rate_100", "WithSampleRate(100)"),
            ],
        ),
        (
            "rate_limit",
            &[
                (
                    "drop_all_pass",
                    "WithRateLimitPerSecond(1000000000, on_limit = drop)",
                ),
                (
                    "drop_most_dropped",
                    "WithRateLimitPerSecond(1000, on_limit = drop)",
                ),
                ("wait_no_wait", "WithRateLimitPerSecond(1000000000)"),
            ],
        ),
    ];
    for (group, ops) in groups {
        bench_group(c, &rt, group, &template, ops);
    }
}

/// One criterion group `stage_<group>`: each op applied to a fresh copy of
/// `template` per iteration.
fn bench_group(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    group: &str,
    template: &[Event],
    ops: &[(&str, &str)],
) {
    let mut g = c.benchmark_group(format!("stage_{group}"));
    g.throughput(Throughput::Elements(BATCH as u64));
    g.measurement_time(Duration::from_secs(3));
    for (name, stage) in stages(ops) {
        let mut compiled = compile(&stage, |_| None, None).expect("the stage compiles");
        let metrics = PipelineMetrics::new("bench", vec![stage.label()], Vec::new());
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || Batch::new(template.to_vec(), AckToken::untracked()),
                |batch| rt.block_on(compiled.apply(batch, &metrics)),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// Events whose message is a JSON object, status 500 one time in eight.
fn payload_events() -> Vec<Event> {
    events()
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            let status = if i % 8 == 0 { 500 } else { 200 };
            e.message = Bytes::from(format!(
                r#"{{"method":"chat.postMessage","status":{status},"latency_ms":12.5,"user":{{"id":"U024BE7LH","team":"T024BE7LD"}},"channel":"C024BE91L","bytes":153,"ok":true,"ua":"slack-sdk/1.2"}}"#
            ));
            e.touch();
            e
        })
        .collect()
}

fn bench_payload(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ops: &[(&str, &str)] = &[
        ("host_eq", r#"Filter(host == "web-1.prod.example.net")"#),
        ("field_ge", "Filter(fields.status >= 500)"),
        ("nested_field_eq", r#"Filter(fields.user.team == "T1")"#),
    ];
    bench_group(c, &rt, "payload", &payload_events(), ops);
}

criterion_group!(benches, bench_stages, bench_payload);
criterion_main!(benches);
