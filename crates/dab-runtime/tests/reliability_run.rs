//! The reliability tracker wired into a running topology: what the sinks
//! wrote counts as seen, what stages dropped on purpose counts as dropped,
//! and only real gaps are missing.

mod support;

use dab_api::AckStatus;
use dab_runtime::RunOptions;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_count_as_seen_filters_as_dropped_and_gaps_as_missing() {
    let h = Harness::new();
    // Offsets are per (host, pid, type): A and B each run 0..50; A's
    // offsets 10..15 were lost upstream.
    let events: Vec<_> = (0..50)
        .flat_map(|o| [ev("A", o), ev("B", o)])
        .filter(|e| !(e.ty.as_str() == "A" && (10..15).contains(&e.offset)))
        .collect();
    let (_, mut rxs) = h.vec_source("Src", batches(events, 20));
    let s = h.sink("S");
    let plan = plan(
        "p.NewPipeline().In(Src).FilterType(A).Out(S)",
        &bindings(&["Src"], &["S"], ""),
    );
    let opts = RunOptions {
        reliability: true,
        ..RunOptions::default()
    };
    let running = dab_runtime::start(&plan, &h.registry(), &opts).expect("start");
    assert!(acks(&mut rxs)
        .await
        .iter()
        .all(|a| *a == AckStatus::Delivered));
    finish(&running).await;
    let report = running.reliability.as_ref().expect("tracker").snapshot();
    let o = &report.overall;
    // A reached the sink (seen), B was filtered (dropped on purpose, not
    // missing); only A's lost offsets are missing.
    assert_eq!(o.seen, s.len() as u64);
    assert_eq!((o.seen, o.dropped), (45, 50));
    assert_eq!(o.expected, 100);
    assert_eq!(o.missing, 5, "{report:?}");
    assert_eq!(o.duplicates, 0);
    assert!(running
        .render_metrics()
        .contains("dab_reliability_score_overall"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_is_off_unless_asked() {
    let h = Harness::new();
    let (_, _rxs) = h.vec_source("Src", batches(alternating(0, 10), 10));
    let _s = h.sink("S");
    let plan = plan(
        "p.NewPipeline().In(Src).Out(S)",
        &bindings(&["Src"], &["S"], ""),
    );
    let running = h.start(&plan, 8);
    finish(&running).await;
    assert!(running.reliability.is_none());
    assert!(!running.render_metrics().contains("dab_reliability"));
}
