//! The circuit breaker of a sink and what `/readyz` says (SPEC sections 5
//! and 11, issue 11 items 3 and 4), through `start` with the test sink:
//! the breaker opens after `breaker_after` failures in a row, leaves the
//! peer alone while open (no write, no flush), sends one probe when
//! half-open and closes on a delivery, with nothing acknowledged before
//! it is delivered and nothing lost; `Running::readiness` names every
//! reason not to be ready: a breaker not closed, a dead task, a source
//! that failed or is not bound yet, a drain.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use dab_api::AckStatus;
use dab_runtime::breaker::BreakerState;
use dab_runtime::metrics::SinkMetrics;
use dab_runtime::Running;
use support::*;

/// Starts `Src -> S`, where sink `S` has a breaker that opens after
/// `after` failures and cools down for 300 ms, and records the breaker's
/// state at every call of `S` from its first write on.
fn start_watched(h: &Harness, after: u32) -> (Running, Arc<SinkMetrics>) {
    let y = format!(
        "sources:\n  Src: {{ kind: generator }}\nsinks:\n  S: {{ kind: file, path: \"/tmp/dab-runtime-tests/S.ndjson\", breaker_after: {after}, breaker_cooldown: 300ms }}\n"
    );
    let s = h.sink("S");
    // Held until the breaker is watched, so that every call is recorded.
    s.write_gate.hold();
    let running = h.start(&plan("p.NewPipeline().In(Src).Out(S)", &y), 8);
    let m = sink_metrics(&running, "S");
    s.watch_breaker(m.clone());
    s.write_gate.release();
    (running, m)
}

fn calls_in(calls: &[(&'static str, BreakerState)], state: BreakerState) -> Vec<&'static str> {
    calls
        .iter()
        .filter(|(_, s)| *s == state)
        .map(|(c, _)| *c)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_open_breaker_leaves_the_peer_alone_probes_once_and_closes_with_nothing_lost() {
    let h = Harness::new();
    let events = alternating(0, 12);
    let (_, mut rxs) = h.vec_source("Src", batches(events.clone(), 4));
    let s = h.sink("S");
    s.always_fail.store(true, Ordering::SeqCst);
    let (running, m) = start_watched(&h, 3);

    // Opened, probed once, failed, opened again.
    eventually("the breaker to open a second time", || {
        m.breaker.state() == BreakerState::Open && m.breaker.transitions_to(BreakerState::Open) == 2
    })
    .await;
    let half = m.breaker.transitions_to(BreakerState::HalfOpen);
    let calls = s.calls();
    let errors = m.errors.get();
    let ready = running.readiness();
    // Still in the same cool-down (300 ms): the figures above agree.
    assert_eq!(m.breaker.state(), BreakerState::Open);
    assert_eq!(m.breaker.transitions_to(BreakerState::HalfOpen), half);
    assert_eq!(half, 1);
    assert_eq!(
        ready.reasons,
        vec!["sink `S`: circuit breaker open (the peer keeps failing)".to_owned()]
    );
    // Three failures in a row while closed opened it; the one probe of
    // the half-open state was one write, which failed.
    assert_eq!(calls_in(&calls, BreakerState::Closed), vec!["write"; 3]);
    assert_eq!(calls_in(&calls, BreakerState::HalfOpen), vec!["write"]);
    assert!(
        calls_in(&calls, BreakerState::Open).is_empty(),
        "the sink was called while the breaker was open: {calls:?}"
    );
    assert_eq!(errors, 4);
    // Nothing acknowledged, nothing failed: the events are held.
    for rx in &mut rxs {
        assert!(
            pending(rx),
            "a batch was acknowledged while the sink failed"
        );
    }
    assert_eq!(m.failed_events.get(), 0);
    assert_eq!(m.events.get(), 0);

    // The peer comes back during the cool-down: the next probe (write
    // again, then flush) delivers and closes the breaker.
    s.always_fail.store(false, Ordering::SeqCst);
    assert_eq!(
        acks(&mut rxs).await,
        vec![AckStatus::Delivered; 3],
        "every batch delivered once the peer is back"
    );
    assert_eq!(m.breaker.state(), BreakerState::Closed);
    assert!(running.readiness().is_ready(), "{:?}", running.readiness());
    finish(&running).await;
    let calls = s.calls();
    assert!(calls_in(&calls, BreakerState::Open).is_empty(), "{calls:?}");
    assert_eq!(
        calls_in(&calls, BreakerState::HalfOpen),
        vec!["write", "write", "flush"],
        "one failed probe, then one that wrote and flushed"
    );
    assert_eq!(m.breaker.transitions_to(BreakerState::Open), 2);
    assert_eq!(m.breaker.transitions_to(BreakerState::HalfOpen), 2);
    assert_eq!(m.breaker.transitions_to(BreakerState::Closed), 1);
    assert_eq!(m.errors.get(), 4);
    // Every event once, in order; none given up on.
    assert_eq!(offsets(&s.durable()), offsets(&events));
    assert_eq!(m.events.get(), 12);
    assert_eq!(m.failed_events.get(), 0);
    let text = running.metrics.render();
    for line in [
        "dab_sink_breaker_state{sink=\"S\"} 0",
        "dab_sink_breaker_transitions_total{sink=\"S\",to=\"open\"} 2",
        "dab_sink_breaker_transitions_total{sink=\"S\",to=\"half_open\"} 2",
        "dab_sink_breaker_transitions_total{sink=\"S\",to=\"closed\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }
}

/// A failing flush counts towards the breaker like a failing write, and
/// a write that is taken does not close it: only a delivery does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_flushes_open_the_breaker_although_writes_are_taken() {
    let h = Harness::new();
    let (_, mut rxs) = h.vec_source("Src", vec![alternating(0, 5)]);
    let s = h.sink("S");
    // Three flushes fail: the breaker opens, then the probe delivers.
    s.fail_next_flushes(3);
    let (running, m) = start_watched(&h, 3);
    assert_eq!(ack(&mut rxs[0]).await, AckStatus::Delivered);
    finish(&running).await;
    let calls = s.calls();
    assert_eq!(
        calls_in(&calls, BreakerState::Closed),
        vec!["write", "flush", "write", "flush", "write", "flush"]
    );
    assert!(calls_in(&calls, BreakerState::Open).is_empty(), "{calls:?}");
    assert_eq!(
        calls_in(&calls, BreakerState::HalfOpen),
        vec!["write", "flush"]
    );
    assert_eq!(m.breaker.transitions_to(BreakerState::Open), 1);
    assert_eq!(m.breaker.transitions_to(BreakerState::Closed), 1);
    assert_eq!(offsets(&s.durable()), (0..5).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sink_task_that_dies_makes_the_process_not_ready() {
    let h = Harness::new();
    let (_, mut rxs) = h.vec_source("Src", vec![alternating(0, 2)]);
    let s = h.sink("S");
    s.panic_on_write.store(true, Ordering::SeqCst);
    let plan = plan(
        "p.NewPipeline().In(Src).Out(S)",
        &bindings(&["Src"], &["S"], ""),
    );
    let running = h.start(&plan, 8);
    eventually("the sink task to die", || !running.readiness().is_ready()).await;
    assert_eq!(
        running.readiness().reasons,
        vec!["sink `S` task died".to_owned()]
    );
    // Its batch was never delivered, and the source hears so.
    assert_eq!(ack(&mut rxs[0]).await, AckStatus::Failed);
    finish(&running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draining_is_not_ready() {
    let h = Harness::new();
    let (_, mut rxs) = h.vec_source("Src", vec![alternating(0, 2)]);
    let s = h.sink("S");
    s.write_gate.hold();
    let plan = plan(
        "p.NewPipeline().In(Src).Out(S)",
        &bindings(&["Src"], &["S"], ""),
    );
    let running = h.start(&plan, 8);
    eventually("the write to start", || {
        s.write_calls.load(Ordering::SeqCst) == 1
    })
    .await;
    assert!(running.readiness().is_ready(), "{:?}", running.readiness());
    running.shutdown();
    assert_eq!(
        running.readiness().reasons,
        vec!["draining: stopping, delivering what was read".to_owned()]
    );
    s.write_gate.release();
    assert_eq!(ack(&mut rxs[0]).await, AckStatus::Delivered);
    finish(&running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_source_that_failed_is_not_serving() {
    let h = Harness::new();
    h.failing_source("Src", "address in use");
    let _ = h.sink("S");
    let plan = plan(
        "p.NewPipeline().In(Src).Out(S)",
        &bindings(&["Src"], &["S"], ""),
    );
    let running = h.start(&plan, 8);
    finish(&running).await;
    // A source of the first start that fails stops the process: both say so.
    assert_eq!(
        running.readiness().reasons,
        vec![
            "draining: stopping, delivering what was read".to_owned(),
            "source `Src` is not serving: address in use".to_owned(),
        ]
    );
}

/// A sink that confirms writes later (Kafka): failed confirmations count
/// towards the breaker, the probe is the write sent again after the
/// cool-down, and only its confirmation "delivered" closes the breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_confirming_sink_opens_on_failed_confirmations_and_closes_on_a_delivered_probe() {
    use dab_api::{Confirmed, ConnectorError};
    let h = Harness::new();
    let (_, mut rxs) = h.vec_source("Src", vec![alternating(0, 4)]);
    let s = h.sink("S");
    s.confirm_writes_later();
    let (running, m) = start_watched(&h, 2);

    let failed = || Confirmed::Failed(ConnectorError::Other("broker down".into()));
    for i in 0..2 {
        eventually("the write to be sent", || s.sent_offsets().len() == i + 1).await;
        s.confirm(i, failed());
    }
    eventually("the breaker to open", || {
        m.breaker.state() == BreakerState::Open
    })
    .await;
    assert!(pending(&mut rxs[0]));
    assert!(!running.readiness().is_ready());
    // The probe: the write sent again once the cool-down is over.
    eventually("the probe", || s.sent_offsets().len() == 3).await;
    assert_eq!(m.breaker.state(), BreakerState::HalfOpen);
    assert!(
        pending(&mut rxs[0]),
        "acknowledged before the probe's confirmation"
    );
    s.confirm(
        2,
        Confirmed::Delivered {
            rejected: Vec::new(),
        },
    );
    assert_eq!(ack(&mut rxs[0]).await, AckStatus::Delivered);
    finish(&running).await;
    assert_eq!(m.breaker.state(), BreakerState::Closed);
    assert_eq!(
        s.calls(),
        vec![
            ("write", BreakerState::Closed),
            ("write", BreakerState::Closed),
            ("write", BreakerState::HalfOpen),
        ]
    );
    assert_eq!(s.sent_offsets(), vec![vec![0, 1, 2, 3]; 3]);
    assert_eq!(offsets(&s.durable()), vec![0, 1, 2, 3]);
    assert_eq!(m.events.get(), 4);
    assert_eq!(m.failed_events.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listener_is_not_serving_until_it_is_bound() {
    let h = Harness::new();
    let bound = h.announcing_source("Src");
    let _ = h.sink("S");
    let plan = plan(
        "p.NewPipeline().In(Src).Out(S)",
        &bindings(&["Src"], &["S"], ""),
    );
    let running = h.start(&plan, 8);
    assert_eq!(
        running.readiness().reasons,
        vec!["source `Src` is not serving yet: starting".to_owned()]
    );
    bound.release();
    eventually("the source to serve", || running.readiness().is_ready()).await;
    running.shutdown();
    finish(&running).await;
}
