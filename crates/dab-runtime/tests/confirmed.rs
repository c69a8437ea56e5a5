//! The sink driver with a sink that confirms each write later (a Kafka
//! producer's delivery reports, `Sink::confirms_writes`): writes go out
//! without waiting for a flush, each is acknowledged in write order when
//! its confirmation comes, a write confirmed failed is written again on
//! its own, events refused in a confirmation go to `OnError`, the window of
//! writes in flight is bounded, and a forced stop fails what is in flight.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use dab_api::{AckStatus, Confirmed, ConnectorError, Rejection, Text};
use support::*;

const QUIET: Duration = Duration::from_millis(150);

fn delivered() -> Confirmed {
    Confirmed::Delivered {
        rejected: Vec::new(),
    }
}

/// Three writes go out before any is confirmed; confirmations that come
/// out of order still acknowledge the batches in write order, each only
/// once it and every write before it are confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_are_pipelined_and_acknowledged_in_order() {
    let h = Harness::new();
    let (_, mut rxs) = h.vec_source("Src", batches(alternating(0, 9), 3));
    let s = h.sink("S");
    s.confirm_writes_later();
    let plan = plan(
        "p.NewPipeline().In(Src).Out(S)",
        &bindings(&["Src"], &["S"], ""),
    );
    let running = h.start(&plan, 8);

    eventually("three writes in flight", || s.sent_offsets().len() == 3).await;
    assert_eq!(
        s.sent_offsets(),
        vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8]]
    );
    assert_eq!(
        s.flush_calls.load(Ordering::SeqCst),
        0,
        "no flush is needed"
    );
    tokio::time::sleep(QUIET).await;
    assert!(rxs.iter_mut().all(pending), "acked before any confirmation");

    s.confirm(2, delivered());
    tokio::time::sleep(QUIET).await;
    assert!(
        rxs.iter_mut().all(pending),
        "the last write was acked before the ones before it"
    );

    s.confirm(0, delivered());
    assert_eq!(ack(&mut rxs[0]).await, AckStatus::Delivered);
    tokio::time::sleep(QUIET).await;
    assert!(
        pending(&mut rxs[1]),
        "write 1 acked before its confirmation"
    );
    assert!(pending(&mut rxs[2]), "write 2 acked before write 1");

    s.confirm(1, delivered());
    assert_eq!(ack(&mut rxs[1]).await, AckStatus::Delivered);
    assert_eq!(ack(&mut rxs[2]).await, AckStatus::Delivered);
    finish(&running).await;
    assert_eq!(offsets(&s.durable()), vec![6, 7, 8, 0, 1, 2, 3, 4, 5]);
    let m = sink_metrics(&running, "S");
    assert_eq!(m.events.get(), 9);
    assert_eq!(m.batches.get(), 3);
    assert_eq!(m.rewritten_events.get(), 0);
    assert_eq!(s.flush_calls.load(Ordering::SeqCst), 0);
}

/// A write confirmed failed (a broker down past the message timeout) is
/// written again on its own after back-off and a rewind, and acknowledged
/// once its second copy is confirmed; the write after it is not held back
/// from going out, only from being acknowledged first. The duplicate is
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_confirmed_failed_is_written_again_and_acknowledged_once() {
    let h = Harness::new();
    let (_, mut rxs) = h.vec_source("Src", batches(alternating(0, 8), 4));
    let s = h.sink("S");
    s.confirm_writes_later();
    let plan = plan(
        "p.NewPipeline().In(Src).Out(S)",
        &bindings(&["Src"], &["S"], ""),
    );
    let running = h.start(&plan, 8);

    eventually("two writes in flight", || s.sent_offsets().len() == 2).await;
    s.confirm(1, delivered());
    s.confirm(
        0,
        Confirmed::Failed(ConnectorError::Other("broker down".into())),
    );
    eventually("the failed write to go out again", || {
        s.sent_offsets().len() == 3
    })
    .await;
    assert_eq!(s.sent_offsets()[2], vec![0, 1, 2, 3]);
    assert_eq!(s.rewinds.load(Ordering::SeqCst), 1);
    tokio::time::sleep(QUIET).await;
    assert!(
        pending(&mut rxs[0]),
        "acked before the second copy was confirmed"
    );
    assert!(pending(&mut rxs[1]), "acked before the write before it");

    s.confirm(2, delivered());
    assert_eq!(
        acks(&mut rxs).await,
        vec![AckStatus::Delivered, AckStatus::Delivered]
    );
    finish(&running).await;
    assert_eq!(offsets(&s.durable()), vec![4, 5, 6, 7, 0, 1, 2, 3]);
    let m = sink_metrics(&running, "S");
    assert_eq!(m.errors.get(), 1);
    assert_eq!(m.rewritten_events.get(), 4);
    assert_eq!(m.events.get(), 8, "delivered counts each event once");
    assert_eq!(m.failed_events.get(), 0);
}

/// Events a confirmation says were refused for good (a message the broker
/// found too large) go to `OnError` with the reason in `dab.error`; the
/// rest of the write is delivered and the source hears "delivered".
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_refused_in_a_confirmation_go_to_on_error() {
    let h = Harness::new();
    let (_, mut rxs) = h.vec_source("Src", vec![alternating(0, 5)]);
    let s = h.sink("S");
    s.confirm_writes_later();
    let dead = h.sink("Dead");
    let plan = plan(
        "p.NewPipeline().In(Src).OnError(Dead).Out(S)",
        &bindings(&["Src"], &["S", "Dead"], ""),
    );
    let running = h.start(&plan, 8);
    eventually("the write", || s.sent_offsets().len() == 1).await;
    s.confirm(
        0,
        Confirmed::Delivered {
            rejected: vec![Rejection {
                index: 3,
                reason: "kafka: message too large".into(),
            }],
        },
    );
    assert_eq!(ack(&mut rxs[0]).await, AckStatus::Delivered);
    finish(&running).await;
    assert_eq!(offsets(&s.durable()), vec![0, 1, 2, 4]);
    let bad = dead.durable();
    assert_eq!(offsets(&bad), vec![3]);
    assert_eq!(
        bad[0].tag("dab.error").map(Text::as_str),
        Some("kafka: message too large")
    );
    let m = sink_metrics(&running, "S");
    assert_eq!((m.events.get(), m.rejected_rerouted.get()), (4, 1));
}

/// With nothing confirmed, the driver stops taking input once 64 writes
/// are in flight (back pressure), and a forced stop fails every batch in
/// flight or still in the channel, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_window_is_bounded_and_a_forced_stop_fails_what_is_in_flight() {
    const BATCHES: u64 = 80;
    let h = Harness::new();
    let (src, mut rxs) = h.vec_source("Src", batches(alternating(0, BATCHES * 2), 2));
    let s = h.sink("S");
    s.confirm_writes_later();
    let plan = plan(
        "p.NewPipeline().In(Src).Out(S)",
        &bindings(&["Src"], &["S"], ""),
    );
    let running = h.start(&plan, 4);
    eventually("the window to fill", || s.sent_offsets().len() == 64).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(s.sent_offsets().len(), 64, "wrote past the window");
    assert!(src.sent() < BATCHES * 2, "the source was not held back");

    s.confirm(0, delivered());
    assert_eq!(ack(&mut rxs[0]).await, AckStatus::Delivered);
    eventually("one more write", || s.sent_offsets().len() == 65).await;

    running.force();
    finish(&running).await;
    let statuses = acks(&mut rxs[1..]).await;
    assert!(
        statuses.iter().all(|s| *s == AckStatus::Failed),
        "{statuses:?}"
    );
    let m = sink_metrics(&running, "S");
    assert_eq!(m.events.get(), 2);
    // The 64 writes in flight, and what waited in the sink's channel (4
    // batches at most); what was further upstream is failed there.
    let failed = m.failed_events.get();
    assert!((64 * 2..=(64 + 4) * 2).contains(&failed), "{failed}");
    assert_eq!(failed % 2, 0);
    assert_eq!(m.failed_batches.get(), failed / 2);
}
