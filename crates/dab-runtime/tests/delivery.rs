//! Delivery promises of SPEC section 5, end to end through `start`: a
//! source hears "delivered" only after every copy of its batch was written
//! and flushed; sinks retry; forced shutdown reports what is undelivered;
//! fan-out and memory queues give every reader every event; back pressure
//! bounds what is taken from a source; runs end by themselves or on
//! shutdown with nothing lost.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dab_api::{AckStatus, Event, Text};
use dab_plan::Plan;
use dab_runtime::breaker::BreakerState;
use dab_runtime::metrics::DropReason;
use support::*;
use tokio::sync::oneshot;

const QUIET: Duration = Duration::from_millis(150);

/// `p.NewPipeline().In(Src).Out(S)`, the plan of most tests here.
fn src_to_s() -> Plan {
    plan(
        "p.NewPipeline().In(Src).Out(S)",
        &bindings(&["Src"], &["S"], ""),
    )
}

/// `count` alternating events whose events at `at` have the type `Poison`.
fn with_poison(count: u64, at: &[usize]) -> Vec<Event> {
    let mut events = alternating(0, count);
    for &i in at {
        events[i].ty = Text::from_static("Poison");
        events[i].touch();
    }
    events
}

/// Every batch, in order, hears "delivered".
async fn all_delivered(rxs: &mut [oneshot::Receiver<AckStatus>]) {
    for rx in rxs {
        assert_eq!(ack(rx).await, AckStatus::Delivered);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ack_waits_for_the_write_and_the_flush() {
    let h = Harness::new();
    let (_, mut rxs) = h.vec_source("Src", vec![alternating(0, 3)]);
    let s = h.sink("S");
    s.write_gate.hold();
    s.flush_gate.hold();
    let running = h.start(&src_to_s(), 8);

    eventually("the write to start", || {
        s.write_calls.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(QUIET).await;
    assert!(pending(&mut rxs[0]), "acked while the write was held");
    assert_eq!(s.len(), 0);

    s.write_gate.release();
    eventually("the flush to start", || {
        s.flush_calls.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(s.offsets(), vec![0, 1, 2]);
    tokio::time::sleep(QUIET).await;
    assert!(
        pending(&mut rxs[0]),
        "acked after the write but before the flush"
    );

    s.flush_gate.release();
    assert_eq!(ack(&mut rxs[0]).await, AckStatus::Delivered);
    finish(&running).await;
    assert_eq!(s.flushes.load(Ordering::SeqCst), 1);
    assert_eq!(s.events(), alternating(0, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sink_that_fails_k_times_then_succeeds_delivers_once() {
    const K: u64 = 3;
    let h = Harness::new();
    let events = alternating(0, 10);
    let (_, mut rxs) = h.vec_source("Src", batches(events.clone(), 5));
    let s = h.sink("S");
    s.fail_next_writes(K);
    let running = h.start(&src_to_s(), 8);

    assert_eq!(
        acks(&mut rxs).await,
        vec![AckStatus::Delivered, AckStatus::Delivered]
    );
    finish(&running).await;
    // The sink fails before recording, so nothing is written twice.
    assert_eq!(s.events(), events);
    assert_eq!(s.write_calls.load(Ordering::SeqCst), K + 2);
    assert_eq!(s.writes.load(Ordering::SeqCst), 2);
    let m = sink_metrics(&running, "S");
    assert_eq!(m.errors.get(), K);
    assert_eq!(m.events.get(), 10);
    assert_eq!(m.batches.get(), 2);
    assert_eq!(m.failed_events.get(), 0);
    // K < 5 failures in a row: the breaker never opened.
    assert_eq!(m.breaker.state(), BreakerState::Closed);
    assert_eq!(m.breaker.transitions_to(BreakerState::Open), 0);
}

/// Issue 10's first fault: a flush that fails (a full disk) must not
/// acknowledge what the sink took since its last good flush. The driver
/// rewinds the sink and writes those events again; they are acknowledged
/// once, after the one good flush, and found in the sink exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_flush_writes_again_and_acknowledges_only_after_a_good_flush() {
    const K: u64 = 3;
    let h = Harness::new();
    let (_, mut rxs) = h.vec_source("Src", batches(alternating(0, 8), 4));
    let s = h.sink("S");
    s.fail_next_flushes(K);
    let running = h.start(&src_to_s(), 8);

    for rx in &mut rxs {
        assert_eq!(ack(rx).await, AckStatus::Delivered);
        // The acknowledgement came after the good flush, not before.
        assert!(s.flushes.load(Ordering::SeqCst) >= 1);
    }
    finish(&running).await;
    assert_eq!(offsets(&s.durable()), (0..8).collect::<Vec<_>>());
    // Each failure rewinds at once (no torn record while backing off) and
    // again before writing the held events.
    assert_eq!(s.rewinds.load(Ordering::SeqCst), 2 * K);
    let m = sink_metrics(&running, "S");
    assert_eq!(m.errors.get(), K);
    // Every failed flush wrote again what was held since the last good one.
    assert!(
        m.rewritten_events.get() >= K * 4,
        "{}",
        m.rewritten_events.get()
    );
    assert_eq!(m.events.get(), 8, "delivered counts each event once");
    assert_eq!(m.failed_events.get(), 0);
}

/// A write that fails half way (a disk that fills during the write) leaves
/// a partial write behind; the rewind takes it away, so what the sink
/// holds at the end is every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_that_fails_half_way_leaves_nothing_torn() {
    const K: u64 = 2;
    let h = Harness::new();
    let (_, mut rxs) = h.vec_source("Src", batches(alternating(0, 12), 4));
    let s = h.sink("S");
    s.fail_next_writes(K);
    let running = h.start(&src_to_s(), 8);
    all_delivered(&mut rxs).await;
    finish(&running).await;
    assert_eq!(offsets(&s.durable()), (0..12).collect::<Vec<_>>());
    assert_eq!(s.rewinds.load(Ordering::SeqCst), 2 * K);
}

/// Issue 10: a peer that refuses any batch holding a poison event (an HTTP
/// 400 for the batch). The driver narrows the refusal down to the poison
/// events alone; they go to `OnError` with the reason in `dab.error`, and
/// every other event is delivered. The source hears "delivered" once both
/// are settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_events_go_to_on_error_and_the_rest_is_delivered() {
    let h = Harness::new();
    let events = with_poison(64, &[5, 6, 40]);
    let (_, mut rxs) = h.vec_source("Src", batches(events, 16));
    let s = h.sink("S");
    s.refuse_type("Poison");
    let dead = h.sink("Dead");
    let plan = plan(
        "p.NewPipeline().In(Src).OnError(Dead).Out(S)",
        &bindings(&["Src"], &["S", "Dead"], ""),
    );
    let running = h.start(&plan, 8);
    all_delivered(&mut rxs).await;
    finish(&running).await;
    let good: Vec<u64> = (0..64).filter(|i| ![5, 6, 40].contains(i)).collect();
    assert_eq!(offsets(&s.durable()), good);
    let bad = dead.durable();
    assert_eq!(offsets(&bad), vec![5, 6, 40]);
    for e in &bad {
        let reason = e.tag("dab.error").map(|t| t.as_str().to_owned());
        assert_eq!(reason.as_deref(), Some("HTTP 400: batch holds a `Poison`"));
    }
    let m = sink_metrics(&running, "S");
    assert_eq!(m.rejected_events.get(), 3);
    assert_eq!(m.rejected_rerouted.get(), 3);
    assert_eq!(m.dropped_rejected.get(), 0);
    assert_eq!(m.events.get(), 61);
}

/// Without `OnError`, refused events are counted dropped (`rejected`);
/// the rest of the batch is still delivered and the sink never wedges.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_events_without_on_error_are_counted_as_rejected() {
    let h = Harness::new();
    let events = with_poison(32, &[31]);
    let (_, mut rxs) = h.vec_source("Src", batches(events, 8));
    let s = h.sink("S");
    s.refuse_type("Poison");
    let running = h.start(&src_to_s(), 8);
    all_delivered(&mut rxs).await;
    finish(&running).await;
    assert_eq!(s.durable().len(), 31);
    let m = sink_metrics(&running, "S");
    assert_eq!((m.rejected_events.get(), m.dropped_rejected.get()), (1, 1));
    let text = running.render_metrics();
    assert!(
        text.contains("dab_sink_dropped_events_total{sink=\"S\",reason=\"rejected\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_sink_fails_its_batches_on_forced_shutdown() {
    let h = Harness::new();
    let (_, mut rxs) = h.vec_source("Src", batches(alternating(0, 7), 4));
    let s = h.sink("S");
    s.always_fail.store(true, Ordering::SeqCst);
    let running = h.start(&src_to_s(), 8);

    eventually("the sink to fail twice", || {
        sink_metrics(&running, "S").errors.get() >= 2
    })
    .await;
    assert!(pending(&mut rxs[0]), "a failing batch was acknowledged");
    assert!(pending(&mut rxs[1]));

    running.force();
    assert_eq!(
        acks(&mut rxs).await,
        vec![AckStatus::Failed, AckStatus::Failed]
    );
    finish(&running).await;
    assert_eq!(s.len(), 0);
    let m = sink_metrics(&running, "S");
    assert_eq!(m.failed_events.get(), 7);
    assert_eq!(m.failed_batches.get(), 2);
    assert_eq!(m.events.get(), 0);
    // Both batches reached the sink: nothing was abandoned elsewhere.
    assert_eq!(running.abandoned(), 7);
    assert_eq!(running.abandoned_by_place(), "sink:S=7");
    assert!(running
        .render_metrics()
        .contains("\ndab_abandoned_events_total 7\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forced_shutdown_ends_a_sink_stuck_in_a_write() {
    // A write that never returns (a peer that stopped reading) must not keep
    // a forced stop from ending, and the batch is reported failed.
    let h = Harness::new();
    let (_, mut rxs) = h.vec_source("Src", vec![alternating(0, 3)]);
    let s = h.sink("S");
    s.write_gate.hold();
    let running = h.start(&src_to_s(), 8);
    eventually("the write to start", || {
        s.write_calls.load(Ordering::SeqCst) == 1
    })
    .await;

    running.force();
    finish(&running).await;
    assert_eq!(ack(&mut rxs[0]).await, AckStatus::Failed);
    assert_eq!(sink_metrics(&running, "S").failed_events.get(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fan_out_acks_after_both_outputs_wrote() {
    let h = Harness::new();
    let events = alternating(0, 20);
    let (_, mut rxs) = h.vec_source("Src", batches(events.clone(), 10));
    let (a, b) = (h.sink("A"), h.sink("B"));
    a.write_gate.hold();
    let plan = plan(
        "p.NewPipeline().In(Src).Out(A, B)",
        &bindings(&["Src"], &["A", "B"], ""),
    );
    let running = h.start(&plan, 8);

    eventually("B to get every event", || b.len() == 20).await;
    tokio::time::sleep(QUIET).await;
    assert!(pending(&mut rxs[0]), "acked before A wrote");
    assert!(pending(&mut rxs[1]), "acked before A wrote");
    assert_eq!(a.len(), 0);

    a.write_gate.release();
    assert_eq!(
        acks(&mut rxs).await,
        vec![AckStatus::Delivered, AckStatus::Delivered]
    );
    finish(&running).await;
    assert_eq!(a.events(), events);
    assert_eq!(b.events(), events);
    let p = pipeline(&running, "p");
    assert_eq!(p.events_in.get(), 20);
    assert_eq!(p.outputs[0].events.get(), 20);
    assert_eq!(p.outputs[1].events.get(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drop_newest_keeps_the_sibling_flowing_and_counts_the_drops() {
    const CAP: usize = 2;
    const BATCH: usize = 10;
    const SENT: usize = 500;
    let h = Harness::new();
    let (a, b) = (h.sink("A"), h.sink("B"));
    a.write_gate.hold();
    // Batch i is sent only once B has written batches 0..i, so B always has
    // room and any drop is A's.
    let pace_b = b.clone();
    let pace: Pace = Arc::new(move |i| pace_b.len() >= i * BATCH);
    let (src, mut rxs) = h.paced_source(
        "Src",
        batches(alternating(0, SENT as u64), BATCH),
        Some(pace),
    );
    let plan = plan(
        "p.NewPipeline().In(Src).Out(A, B, when_full = drop_newest)",
        &bindings(&["Src"], &["A", "B"], ""),
    );
    let running = h.start(&plan, CAP);

    eventually("B to get every event while A is held", || b.len() == SENT).await;
    assert_eq!(src.sent(), SENT as u64);
    assert_eq!(b.offsets(), (0..SENT as u64).collect::<Vec<_>>());
    assert_eq!(a.len(), 0);

    a.write_gate.release();
    let statuses = acks(&mut rxs).await;
    assert!(statuses.iter().all(|s| *s == AckStatus::Delivered));
    finish(&running).await;

    let got_a = a.len();
    let p = pipeline(&running, "p");
    let dropped = p.dropped_count(DropReason::OutputFull);
    assert!(dropped > 0, "nothing was dropped for A");
    assert_eq!(dropped, (SENT - got_a) as u64, "dropped != sent - received");
    assert_eq!(p.outputs[0].dropped_full.get(), dropped);
    assert_eq!(p.outputs[1].dropped_full.get(), 0);
    assert_eq!(p.outputs[0].events.get(), got_a as u64);
    assert_eq!(p.outputs[1].events.get(), SENT as u64);
    // Held, A holds one batch in its write and CAP in its channel (plus one
    // taken while its task had not yet picked the first up).
    assert!(
        got_a <= (CAP + 2) * BATCH,
        "A got {got_a} events while held"
    );
    // A got whole batches, in order, with no duplicates.
    let offs = a.offsets();
    assert!(offs.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(offs.len() % BATCH, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn block_lets_a_held_output_stall_its_sibling_and_loses_nothing() {
    const CAP: usize = 2;
    const BATCH: usize = 10;
    const SENT: usize = 500;
    let h = Harness::new();
    let events = alternating(0, SENT as u64);
    let (_, mut rxs) = h.vec_source("Src", batches(events.clone(), BATCH));
    let (a, b) = (h.sink("A"), h.sink("B"));
    a.write_gate.hold();
    let plan = plan(
        "p.NewPipeline().In(Src).Out(A, B)",
        &bindings(&["Src"], &["A", "B"], ""),
    );
    let running = h.start(&plan, CAP);

    eventually("A's write to start", || {
        a.write_calls.load(Ordering::SeqCst) >= 1
    })
    .await;
    let got_b = settled(QUIET, || b.len() as u64).await;
    // A: one batch in its write, CAP in its channel, one the pipeline waits
    // to hand over; B gets what went before that.
    assert!(
        got_b <= ((CAP + 2) * BATCH) as u64,
        "B got {got_b} events while A was held"
    );
    assert!(pending(&mut rxs[0]));

    tokio::time::sleep(Duration::from_millis(100)).await;
    a.write_gate.release();
    let statuses = acks(&mut rxs).await;
    assert!(statuses.iter().all(|s| *s == AckStatus::Delivered));
    finish(&running).await;
    assert_eq!(a.events(), events);
    assert_eq!(b.events(), events);
    let p = pipeline(&running, "p");
    assert_eq!(p.dropped_count(DropReason::OutputFull), 0);
    // The metrics say which output held the other back.
    let blocked_a = p.outputs[0].blocked_ns.get();
    assert!(
        blocked_a >= Duration::from_millis(200).as_nanos() as u64,
        "A blocked {blocked_a} ns"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_memory_queue_gives_every_reader_every_event() {
    let h = Harness::new();
    let events = alternating(0, 20);
    let (_, mut rxs) = h.vec_source("Src", batches(events.clone(), 5));
    let (s1, s2) = (h.sink("S1"), h.sink("S2"));
    s2.write_gate.hold();
    let plan = plan(
        "w.NewPipeline().In(Src).Out(Q)\n\
         r1.NewPipeline().In(Q).Out(S1)\n\
         r2.NewPipeline().In(Q).FilterType(A).Out(S2)\n",
        &bindings(&["Src"], &["S1", "S2"], ""),
    );
    let running = h.start(&plan, 8);

    eventually("S1 to get every event", || s1.len() == 20).await;
    tokio::time::sleep(QUIET).await;
    for rx in &mut rxs {
        assert!(pending(rx), "acked before S2 wrote");
    }

    s2.write_gate.release();
    let statuses = acks(&mut rxs).await;
    assert_eq!(statuses, vec![AckStatus::Delivered; 4]);
    finish(&running).await;
    assert_eq!(s1.events(), events);
    let only_a: Vec<_> = events
        .iter()
        .filter(|e| e.ty.as_str() == "A")
        .cloned()
        .collect();
    assert_eq!(s2.events(), only_a);
    assert_eq!(pipeline(&running, "r1").events_in.get(), 20);
    assert_eq!(pipeline(&running, "r2").events_in.get(), 20);
    assert_eq!(
        pipeline(&running, "r2").dropped_count(DropReason::Filter),
        10
    );
    assert_eq!(running.metrics.queues.snapshot()[0].events.get(), 20);
    assert_eq!(
        running.metrics.queues.snapshot()[0]
            .depth_events
            .load(Ordering::SeqCst),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_read_by_two_pipelines_acks_after_both() {
    let h = Harness::new();
    let events = alternating(0, 12);
    let (_, mut rxs) = h.vec_source("Src", batches(events.clone(), 6));
    let (s1, s2) = (h.sink("S1"), h.sink("S2"));
    s1.write_gate.hold();
    let plan = plan(
        "r1.NewPipeline().In(Src).Out(S1)\n\
         r2.NewPipeline().In(Src).Out(S2)\n",
        &bindings(&["Src"], &["S1", "S2"], ""),
    );
    let running = h.start(&plan, 8);

    eventually("S2 to get every event", || s2.len() == 12).await;
    tokio::time::sleep(QUIET).await;
    assert!(pending(&mut rxs[0]) && pending(&mut rxs[1]));

    s1.write_gate.release();
    assert_eq!(acks(&mut rxs).await, vec![AckStatus::Delivered; 2]);
    finish(&running).await;
    assert_eq!(s1.events(), events);
    assert_eq!(s2.events(), events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_memory_queue_bounds_what_is_taken_from_the_source() {
    const CAP: usize = 2;
    const BATCH: usize = 10;
    const QUEUE: usize = 100;
    const SENT: usize = 1000;
    let h = Harness::new();
    let events = alternating(0, SENT as u64);
    let (src, mut rxs) = h.vec_source("Src", batches(events.clone(), BATCH));
    let s = h.sink("S");
    s.write_gate.hold();
    let plan = plan(
        "w.NewPipeline().In(Src).Out(Q)\n\
         r.NewPipeline().In(Q).Out(S)\n",
        &bindings(
            &["Src"],
            &["S"],
            "queues:\n  Q: { kind: memory, capacity: 100 }\n",
        ),
    );
    let running = h.start(&plan, CAP);

    let taken = settled(QUIET, || src.sent()).await;
    // Every input has a router (reloads swap its readers): downstream of
    // the queue, its router's batch in hand, the reader's channel, the
    // reader's batch in hand, S's channel and S's write; upstream, the
    // source's channel, its router's batch in hand, the writer's channel
    // and the writer's batch in hand.
    let bound = (QUEUE + (4 * CAP + 5) * BATCH) as u64;
    assert!(
        taken >= QUEUE as u64,
        "only {taken} taken: the queue never filled"
    );
    assert!(
        taken <= bound,
        "{taken} events taken from the source, bound {bound}"
    );
    assert_eq!(
        running.metrics.queues.snapshot()[0]
            .depth_events
            .load(Ordering::SeqCst),
        QUEUE as u64
    );
    assert_eq!(
        src.admits(),
        Some(false),
        "admission let work in past a full queue"
    );
    assert!(!src.finished.load(Ordering::SeqCst));

    s.write_gate.release();
    let statuses = acks(&mut rxs).await;
    assert!(statuses.iter().all(|st| *st == AckStatus::Delivered));
    finish(&running).await;
    assert_eq!(src.sent(), SENT as u64);
    assert_eq!(s.events(), events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_finite_source_ends_the_run_by_itself() {
    let h = Harness::new();
    let events = alternating(0, 100);
    let (src, mut rxs) = h.vec_source("Src", batches(events.clone(), 7));
    let s = h.sink("S");
    let running = h.start(&src_to_s(), 2);

    finish(&running).await;
    assert!(src.finished.load(Ordering::SeqCst));
    assert_eq!(s.events(), events);
    assert_eq!(acks(&mut rxs).await, vec![AckStatus::Delivered; 15]);
    assert!(running.failures().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_stops_an_endless_source_and_drains_what_it_sent() {
    let h = Harness::new();
    let src = h.loop_source("Src", 25);
    let s = h.sink("S");
    let running = h.start(&src_to_s(), 2);

    eventually("1000 events to arrive", || s.len() >= 1000).await;
    running.shutdown();
    finish(&running).await;

    assert!(src.finished.load(Ordering::SeqCst));
    let sent = src.sent();
    assert_eq!(
        s.len() as u64,
        sent,
        "events sent before the stop were lost"
    );
    assert_eq!(s.offsets(), (0..sent).collect::<Vec<_>>());
    let batches = src.sent_batches.load(Ordering::SeqCst);
    assert_eq!(src.delivered.load(Ordering::SeqCst), batches);
    assert_eq!(src.failed.load(Ordering::SeqCst), 0);
    assert_eq!(pipeline(&running, "p").events_in.get(), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_drains_batches_held_up_by_a_slow_sink() {
    let h = Harness::new();
    let src = h.loop_source("Src", 10);
    let s = h.sink("S");
    s.write_gate.hold();
    let running = h.start(&src_to_s(), 2);

    // Back pressure stops the source with batches in every channel.
    let sent = settled(QUIET, || src.sent()).await;
    assert!(sent > 0);
    running.shutdown();
    tokio::time::sleep(QUIET).await;
    assert_eq!(src.delivered.load(Ordering::SeqCst), 0);
    s.write_gate.release();
    finish(&running).await;

    assert_eq!(src.sent(), sent, "the source read on after shutdown");
    assert_eq!(s.offsets(), (0..sent).collect::<Vec<_>>());
    let batches = src.sent_batches.load(Ordering::SeqCst);
    assert_eq!(src.delivered.load(Ordering::SeqCst), batches);
    assert_eq!(src.failed.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_source_stops_the_others_and_is_reported() {
    let h = Harness::new();
    let good = h.loop_source("Good", 10);
    h.failing_source("Bad", "address in use");
    let s = h.sink("S");
    let plan = plan(
        "a.NewPipeline().In(Good).Out(S)\nb.NewPipeline().In(Bad).Out(S)\n",
        &bindings(&["Good", "Bad"], &["S"], ""),
    );
    let running = h.start(&plan, 2);

    finish(&running).await;
    assert_eq!(
        running.failures(),
        vec!["source `Bad`: address in use".to_owned()]
    );
    assert!(good.finished.load(Ordering::SeqCst));
    // What the good source sent before the stop is delivered.
    assert_eq!(s.len() as u64, good.sent());
    assert_eq!(
        good.delivered.load(Ordering::SeqCst),
        good.sent_batches.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_larger_than_its_queue_still_passes() {
    let h = Harness::new();
    let events = alternating(0, 250);
    let (_, mut rxs) = h.vec_source("Src", vec![events.clone(), alternating(250, 10)]);
    let s = h.sink("S");
    let plan = plan(
        "w.NewPipeline().In(Src).Out(Q)\n\
         r.NewPipeline().In(Q).Out(S)\n",
        &bindings(
            &["Src"],
            &["S"],
            "queues:\n  Q: { kind: memory, capacity: 100 }\n",
        ),
    );
    let running = h.start(&plan, 2);
    assert_eq!(acks(&mut rxs).await, vec![AckStatus::Delivered; 2]);
    finish(&running).await;
    assert_eq!(s.offsets(), (0..260).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_with_two_writers_ends_after_both() {
    let h = Harness::new();
    let (_, mut rx1) = h.vec_source("Src1", batches(alternating(0, 30), 10));
    let (_, mut rx2) = h.vec_source("Src2", batches(alternating(100, 30), 10));
    let s = h.sink("S");
    let plan = plan(
        "w1.NewPipeline().In(Src1).Out(Q)\n\
         w2.NewPipeline().In(Src2).Out(Q)\n\
         r.NewPipeline().In(Q).Out(S)\n",
        &bindings(&["Src1", "Src2"], &["S"], ""),
    );
    let running = h.start(&plan, 2);
    assert_eq!(acks(&mut rx1).await, vec![AckStatus::Delivered; 3]);
    assert_eq!(acks(&mut rx2).await, vec![AckStatus::Delivered; 3]);
    finish(&running).await;
    let mut got = s.offsets();
    got.sort_unstable();
    let want: Vec<u64> = (0..30).chain(100..130).collect();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_queue_whose_reader_runs_elsewhere_fails_its_acks() {
    // `--service w`: the reader of Q is not in this process, so handing
    // events to Q is not delivery.
    let h = Harness::new();
    let (_, mut rxs) = h.vec_source("Src", batches(alternating(0, 20), 10));
    let plan = plan(
        "w.NewPipeline().In(Src).Out(Q)\nr.NewPipeline().In(Q).Out(S)\n",
        &bindings(&["Src"], &["S"], ""),
    );
    let opts = dab_runtime::RunOptions {
        service: Some("w".into()),
        ..dab_runtime::RunOptions::default()
    };
    let running = match dab_runtime::start(&plan, &h.registry(), &opts) {
        Ok(r) => r,
        Err(e) => panic!("start failed: {e}"),
    };
    assert_eq!(acks(&mut rxs).await, vec![AckStatus::Failed; 2]);
    finish(&running).await;
    assert_eq!(h.sink("S").len(), 0);
    assert_eq!(running.metrics.pipelines.len(), 1);
    // Failed, and counted by reason at Q's router: not a silent loss, and
    // not an abandonment (nothing was forced).
    let text = running.render_metrics();
    for (reason, n) in [("no_reader", 20), ("reader_gone", 0), ("abandoned", 0)] {
        let series =
            format!("dab_input_undelivered_events_total{{input=\"Q\",reason=\"{reason}\"}} {n}\n");
        assert!(text.contains(&series), "no {series:?} in\n{text}");
    }
    assert_eq!(running.abandoned(), 0);
}

/// `OnError(S).Out(S)`: handing a sink its own poison again would loop (and
/// could wait on its own full input). Such events are counted as rejected
/// instead; the rest is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_is_not_sent_back_to_the_sink_that_refused_it() {
    let h = Harness::new();
    let events = with_poison(16, &[3]);
    let (_, mut rxs) = h.vec_source("Src", batches(events, 8));
    let s = h.sink("S");
    s.refuse_type("Poison");
    let plan = plan(
        "p.NewPipeline().In(Src).OnError(S).Out(S)",
        &bindings(&["Src"], &["S"], ""),
    );
    let running = h.start(&plan, 8);
    all_delivered(&mut rxs).await;
    finish(&running).await;
    assert_eq!(s.durable().len(), 15);
    let m = sink_metrics(&running, "S");
    assert_eq!((m.rejected_events.get(), m.dropped_rejected.get()), (1, 1));
}
