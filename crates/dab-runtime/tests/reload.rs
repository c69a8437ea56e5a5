//! `Running::reload` (SPEC section 5, issue 6) through the runtime alone:
//! a piece that fails to build leaves the running topology as it was; a
//! rebuilt reader of a memory queue takes over its contents with nothing
//! lost; unchanged pipelines and sources keep running; a memory queue whose
//! reader a reload removed fails and counts what it gets.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dab_api::AckStatus;
use dab_runtime::StartError;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_piece_that_fails_to_build_leaves_the_topology_as_it_was() {
    let h = Harness::new();
    let src = h.loop_source("Src", 10);
    let s = h.sink("S");
    let b = bindings(&["Src"], &["S"], "");
    let running = h.start(&plan("p.NewPipeline().In(Src).Out(S)", &b), 4);
    eventually("events at S", || s.len() > 100).await;

    // `Web` is an http sink, a kind this registry has no factory for.
    let bad = plan(
        "p.NewPipeline().In(Src).FilterType(A).Out(S)\nq.NewPipeline().In(Src).Out(Web)\n",
        &bindings(
            &["Src"],
            &["S"],
            "  Web: { kind: http, endpoint: \"http://127.0.0.1:9/x\" }\n",
        ),
    );
    let e = running.reload(&bad).expect_err("the reload must fail");
    assert!(matches!(e, StartError::UnknownKind { .. }), "{e}");
    assert_eq!(running.metrics.reload.failed.get(), 1);
    assert_eq!(running.metrics.reload.ok.get(), 0);
    // The old pipeline is untouched and still delivers, unfiltered.
    let before = s.len();
    eventually("S to keep receiving", || s.len() > before + 100).await;
    assert_eq!(running.metrics.pipelines.len(), 1);
    assert!(src.sent() > 0);
    running.shutdown();
    finish(&running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuilt_queue_reader_takes_over_the_queue_with_nothing_lost() {
    let h = Harness::new();
    let events = alternating(0, 400);
    // The last batch waits for the reload, so the source is still running
    // (a set whose sources have all ended is finishing and takes no
    // reload).
    let reloaded = Arc::new(AtomicBool::new(false));
    let gate = reloaded.clone();
    let pace: Pace = Arc::new(move |i| i < 39 || gate.load(Ordering::SeqCst));
    let (_, mut rxs) = h.paced_source("Src", batches(events.clone(), 10), Some(pace));
    let s = h.sink("S");
    s.write_gate.hold();
    let b = bindings(
        &["Src"],
        &["S"],
        "queues:\n  Q: { kind: memory, capacity: 1000 }\n",
    );
    let running = h.start(
        &plan(
            "w.NewPipeline().In(Src).Out(Q)\nr.NewPipeline().In(Q).FilterType(A, B).Out(S)\n",
            &b,
        ),
        2,
    );
    // S holds its writes: events pile up in the queue and the channels.
    eventually("the queue to fill", || {
        running.metrics.queues.snapshot()[0]
            .depth_events
            .load(Ordering::SeqCst)
            > 100
    })
    .await;
    // Rebuild the reader (its stages changed) while the queue is full.
    let report = running
        .reload(&plan(
            "w.NewPipeline().In(Src).Out(Q)\nr.NewPipeline().In(Q).FilterType(B, A).Out(S)\n",
            &b,
        ))
        .expect("reload");
    assert_eq!(report.kept, vec!["w".to_owned()]);
    assert_eq!(report.rebuilt.len(), 1, "{report:?}");
    assert_eq!(report.rebuilt[0].0, "r");
    reloaded.store(true, Ordering::SeqCst);
    s.write_gate.release();
    for status in acks(&mut rxs).await {
        assert_eq!(status, AckStatus::Delivered);
    }
    let mut got = s.offsets();
    got.sort_unstable();
    assert_eq!(got, offsets(&events), "every event once, none lost");
    running.shutdown();
    finish(&running).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_whose_reader_a_reload_removed_fails_and_counts_what_it_gets() {
    // After the reload nothing in this process reads Q (W001), so what w
    // writes to it is not delivered: its sources hear "failed", and Q's
    // router counts it as `no_reader`, not as abandoned.
    let h = Harness::new();
    let reloaded = Arc::new(AtomicBool::new(false));
    let gate = reloaded.clone();
    let pace: Pace = Arc::new(move |i| i < 2 || gate.load(Ordering::SeqCst));
    let (_, mut rxs) = h.paced_source("Src", batches(alternating(0, 40), 10), Some(pace));
    let s = h.sink("S");
    let b = bindings(&["Src"], &["S"], "queues:\n  Q: { kind: memory }\n");
    let running = h.start(
        &plan(
            "w.NewPipeline().In(Src).Out(Q)\nr.NewPipeline().In(Q).Out(S)\n",
            &b,
        ),
        2,
    );
    assert_eq!(acks(&mut rxs[..2]).await, vec![AckStatus::Delivered; 2]);
    let report = running
        .reload(&plan("w.NewPipeline().In(Src).Out(Q)\n", &b))
        .expect("reload");
    assert_eq!(report.removed, vec!["r".to_owned()]);
    reloaded.store(true, Ordering::SeqCst);
    assert_eq!(acks(&mut rxs[2..]).await, vec![AckStatus::Failed; 2]);
    finish(&running).await;
    assert_eq!(s.len(), 20);
    let text = running.render_metrics();
    for (reason, n) in [("no_reader", 20), ("reader_gone", 0), ("abandoned", 0)] {
        let series =
            format!("dab_input_undelivered_events_total{{input=\"Q\",reason=\"{reason}\"}} {n}\n");
        assert!(text.contains(&series), "no {series:?} in\n{text}");
    }
    assert_eq!(running.abandoned(), 0);
}
