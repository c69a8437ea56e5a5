//! What `start` refuses, and what a finished run's metrics say.

mod support;

use dab_api::AckStatus;
use dab_runtime::metrics::DropReason;
use dab_runtime::sample::keep;
use dab_runtime::{RunOptions, StartError};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_render_exact_counts_after_a_run() {
    let h = Harness::new();
    let events = alternating(0, 30);
    let (_, mut rxs) = h.vec_source("Src", batches(events.clone(), 10));
    let plan = plan(
        "m.NewPipeline(\"render\").In(Src).FilterType(A).WithSampleRate(3).Out(S)",
        &bindings(&["Src"], &["S"], ""),
    );
    let running = h.start(&plan, 8);
    assert_eq!(acks(&mut rxs).await, vec![AckStatus::Delivered; 3]);
    finish(&running).await;

    let kept = events
        .iter()
        .filter(|e| e.ty.as_str() == "A" && keep(e, 3, 2))
        .count();
    let sampled_out = 15 - kept;
    let p = "pipeline=\"m/render\"";
    let want = [
        format!("dab_pipeline_events_in_total{{{p}}} 30"),
        format!("dab_pipeline_events_out_total{{{p}}} {kept}"),
        format!("dab_pipeline_dropped_total{{{p},reason=\"filter\"}} 15"),
        format!("dab_pipeline_dropped_total{{{p},reason=\"sample\"}} {sampled_out}"),
        format!("dab_pipeline_dropped_total{{{p},reason=\"rate_limit\"}} 0"),
        format!("dab_pipeline_dropped_total{{{p},reason=\"output_full\"}} 0"),
        format!("dab_stage_events_in_total{{{p},stage=\"0\",op=\"FilterType(A)\"}} 30"),
        format!("dab_stage_events_out_total{{{p},stage=\"0\",op=\"FilterType(A)\"}} 15"),
        format!("dab_stage_events_in_total{{{p},stage=\"1\",op=\"WithSampleRate(3)\"}} 15"),
        format!("dab_stage_events_out_total{{{p},stage=\"1\",op=\"WithSampleRate(3)\"}} {kept}"),
        format!("dab_pipeline_batch_latency_seconds_count{{{p}}} 3"),
        "dab_source_events_total{source=\"Src\"} 30".to_owned(),
        format!("dab_sink_events_total{{sink=\"S\"}} {kept}"),
        "dab_sink_errors_total{sink=\"S\"} 0".to_owned(),
        "dab_sink_failed_events_total{sink=\"S\"} 0".to_owned(),
        "dab_sink_breaker_state{sink=\"S\"} 0".to_owned(),
        "dab_sink_breaker_transitions_total{sink=\"S\",to=\"open\"} 0".to_owned(),
    ];
    let text = running.metrics.render();
    let lines: Vec<&str> = text.lines().collect();
    for w in &want {
        assert!(lines.contains(&w.as_str()), "missing line {w}\nin:\n{text}");
    }
    // Each family is declared once.
    let types = lines
        .iter()
        .filter(|l| **l == "# TYPE dab_pipeline_dropped_total counter")
        .count();
    assert_eq!(types, 1);
    assert_eq!(
        pipeline(&running, "m/render").dropped_count(DropReason::Sample),
        sampled_out as u64
    );
}

fn start_error(blueprint: &str, bindings: &str) -> StartError {
    let h = Harness::new();
    let plan = plan(blueprint, bindings);
    match dab_runtime::start(&plan, &h.registry(), &RunOptions::default()) {
        Ok(_) => panic!("started a plan with an endpoint this build cannot run"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_source_kind_with_no_factory_is_a_start_error_naming_the_binding() {
    let e = start_error(
        "p.NewPipeline().In(Grpc).Out(S)",
        "sources:\n  Grpc: { kind: murron_grpc, listen: \"127.0.0.1:8990\" }\n\
         sinks:\n  S: { kind: file, path: \"/tmp/dab-runtime-tests/S.ndjson\" }\n",
    );
    match &e {
        StartError::UnknownKind { name, role, kind } => {
            assert_eq!(
                (name.as_str(), *role, kind.as_str()),
                ("Grpc", "source", "murron_grpc")
            );
        }
        other => panic!("expected UnknownKind, got {other:?}"),
    }
    assert_eq!(
        e.to_string(),
        "`Grpc` is a source of kind `murron_grpc`, which this build of dab cannot run yet"
    );
}

#[tokio::test]
async fn a_sink_or_queue_kind_with_no_factory_is_a_start_error() {
    let e = start_error(
        "p.NewPipeline().In(Src).Out(Web)",
        "sources:\n  Src: { kind: generator }\n\
         sinks:\n  Web: { kind: http, endpoint: \"http://127.0.0.1:8081/ingest\" }\n",
    );
    assert!(
        matches!(&e, StartError::UnknownKind { name, role: "sink", kind } if name == "Web" && kind == "http"),
        "{e:?}"
    );

    let e = start_error(
        "w.NewPipeline().In(Src).Out(K)\nr.NewPipeline().In(K).Out(S)\n",
        &bindings(
            &["Src"],
            &["S"],
            "queues:\n  K: { kind: kafka, brokers: \"127.0.0.1:9092\", topic: t }\n",
        ),
    );
    assert!(
        matches!(&e, StartError::UnknownKind { name, role: "queue", kind } if name == "K" && kind == "kafka"),
        "{e:?}"
    );
    assert!(e.to_string().contains("`K`"), "{e}");
}

/// A name the plan calls built-in but that has no connector kind (a plan
/// from a newer dab-plan, say) is refused by name; it never falls back to
/// a kind that runs, least of all a Blackhole that would discard the data.
#[tokio::test]
async fn a_builtin_name_with_no_kind_is_a_start_error_not_a_blackhole() {
    use dab_plan::model::{Endpoint, Role};
    let registry = dab_runtime::Registry::new(
        dab_connectors::builtin_sources(),
        dab_connectors::builtin_sinks(),
    );
    for (name, role) in [("S", Role::Sink), ("Src", Role::Source)] {
        let mut plan = plan(
            "p.NewPipeline().In(Src).Out(S)",
            &bindings(&["Src"], &["S"], ""),
        );
        plan.endpoints
            .insert(name.to_owned(), Endpoint::Builtin { role });
        match dab_runtime::start(&plan, &registry, &RunOptions::default()) {
            Ok(_) => panic!("started `{name}`, a built-in name with no kind"),
            Err(e) => {
                assert!(
                    matches!(&e, StartError::UnknownBuiltin(n) if n == name),
                    "{e:?}"
                );
                assert_eq!(
                    e.to_string(),
                    format!("`{name}` is not a built-in connector of this build of dab")
                );
            }
        }
    }
}

#[tokio::test]
async fn a_service_with_no_pipeline_is_a_start_error() {
    let h = Harness::new();
    let plan = plan(
        "p.NewPipeline().In(Src).Out(S)",
        &bindings(&["Src"], &["S"], ""),
    );
    let opts = RunOptions {
        service: Some("nope".into()),
        ..RunOptions::default()
    };
    match dab_runtime::start(&plan, &h.registry(), &opts) {
        Err(StartError::NoPipelines(s)) => assert_eq!(s, "nope"),
        Err(e) => panic!("wrong error {e:?}"),
        Ok(_) => panic!("started with no pipeline of the service"),
    }
}
