//! Events/s of a whole in-process pipeline on ONE thread: the plan comes
//! from `dab_plan::check_set` exactly as `dab run` builds it, the real
//! `generator` source and `Blackhole` sink come from `dab_connectors`, and
//! `dab_runtime::start` runs it on a current-thread tokio runtime. The
//! target is 3 million events/s for
//! `Generator -> FilterType -> WithSampleRate -> Blackhole`; the bare
//! `Generator -> Blackhole` figure shows what the stages add. Issue 14's
//! `generator_3_routes_out_by_pid_blackholes` (three `Route`s and
//! `Out(..., by = pid)`, 1,000 pids spread over the three outputs) is to
//! reach 0.8 of `generator_blackhole`.
//!
//! `taskset -c 0 cargo bench -p dab-runtime --bench pipeline`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use dab_plan::{check_set, Plan, SourceSet};
use dab_runtime::{Registry, RunOptions};

/// Events the generator emits per run.
const EVENTS: u64 = 1_000_000;

fn plan(blueprint: &str) -> Plan {
    // 1,000 pids: the group keys of the window cases.
    let bindings = format!(
        "sources:\n  Gen: {{ kind: generator, count: {EVENTS}, types: [A, B], payload_bytes: 100, seed: 7, pids: 1000 }}\nsinks:\n  B1: {{ kind: blackhole }}\n  B2: {{ kind: blackhole }}\n  B3: {{ kind: blackhole }}\ntypes:\n  A: {{}}\n  B: {{}}\n"
    );
    let set = check_set(
        SourceSet {
            blueprints: vec![("bench.dab".into(), blueprint.into())],
            bindings: Some(("dab.yaml".into(), bindings)),
        },
        &|_| None,
        &|p| std::fs::read(p),
        &dab_runtime::ops::plan_options(),
    );
    assert!(!set.has_errors(), "{:?}", set.diagnostics);
    set.plan
}

fn registry() -> Registry {
    Registry::new(
        dab_connectors::builtin_sources(),
        dab_connectors::builtin_sinks(),
    )
}

/// Starts the plan on a fresh current-thread runtime and waits until the
/// generator is exhausted and everything drained. Returns the wall time
/// and the events the pipeline received and the sink took.
fn run_once(
    plan: &Plan,
    registry: &Registry,
    checkpoints: Option<Duration>,
) -> (Duration, u64, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // A fresh store per run: a store kept from the last run would know
    // every UID and skip every event as redelivered.
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = RunOptions {
        state: checkpoints.map(|interval| dab_runtime::window::StateOptions {
            store: dab_state::StateStore::open(dir.path()).expect("state store"),
            interval,
            partitioned: false,
        }),
        ..RunOptions::default()
    };
    rt.block_on(async {
        let t0 = Instant::now();
        let running = dab_runtime::start(plan, registry, &opts).expect("start");
        running.wait().await;
        let elapsed = t0.elapsed();
        let m = &running.metrics;
        let events_in = m
            .pipelines
            .snapshot()
            .iter()
            .map(|p| p.events_in.get())
            .sum();
        let sunk = m.sinks.snapshot().iter().map(|s| s.events.get()).sum();
        (elapsed, events_in, sunk)
    })
}

fn pipeline(c: &mut Criterion) {
    let registry = registry();
    const WINDOW: &str = "bench.NewPipeline().In(Gen).Window(tumbling = 1s).Aggregate(by = [pid], as = \"S\", n = Count(), s = Sum(offset), m = Max(offset)).Out(Blackhole)";
    let cases = [
        (
            "generator_filtertype_sample_blackhole",
            "bench.NewPipeline().In(Gen).FilterType(A).WithSampleRate(5).Out(Blackhole)",
            None,
        ),
        // Issue 13 item 5's figure: two pluggable ops in a row (one
        // dynamic call per op per batch).
        (
            "generator_filtertype_filter_blackhole",
            "bench.NewPipeline().In(Gen).FilterType(A).Filter(pid != 4000000 && tags.zone != \"none\").Out(Blackhole)",
            None,
        ),
        (
            "generator_blackhole",
            "bench.NewPipeline().In(Gen).Out(Blackhole)",
            None,
        ),
        // Issue 13's window figures: 1,000 keys, Count, Sum and Max, in
        // memory only, then with a durable checkpoint every second (each
        // event's acknowledgement waits for one).
        ("generator_window_1000_keys_blackhole", WINDOW, None),
        (
            "generator_window_1000_keys_checkpoint_1s_blackhole",
            WINDOW,
            Some(Duration::from_secs(1)),
        ),
        // Issue 14's routing figure: three routes that every event passes
        // (none matches, so each is evaluated on every event), then each
        // event to one of three sinks by its host.
        (
            "generator_3_routes_out_by_pid_blackholes",
            "bench.NewPipeline().In(Gen).Route(type == \"C\", B1).Route(tags.zone == \"none\", B2).Route(pid == 4000000, B3).Out(B1, B2, B3, by = pid)",
            None,
        ),
    ];
    let mut g = c.benchmark_group("pipeline_1thread");
    g.throughput(Throughput::Elements(EVENTS));
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(6));
    for (name, blueprint, checkpoints) in cases {
        let plan = plan(blueprint);
        // The figure is only meaningful if every event went through.
        let (_, events_in, sunk) = run_once(&plan, &registry, checkpoints);
        assert_eq!(events_in, EVENTS, "{name}: the pipeline saw {events_in}");
        assert!(sunk > 0 && sunk <= EVENTS, "{name}: the sink took {sunk}");
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| run_once(&plan, &registry, checkpoints).0)
                    .sum()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
