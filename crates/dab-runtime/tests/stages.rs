//! The stages of SPEC section 1 as they run: FilterType matches bytes,
//! Filter follows the expression rules, samplers decide by the documented
//! hash and tag what they keep, rate limits wait, drop or overflow. Every
//! deliberate drop is counted by reason and counts as delivered.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dab_api::{AckStatus, Event, Text};
use dab_runtime::metrics::{DropReason, Undelivered};
use dab_runtime::sample::keep;
use support::*;

fn tagged(mut e: Event, tags: &[(&str, &str)]) -> Event {
    for (k, v) in tags {
        e.set_tag(Text::from(*k), Text::from(*v));
    }
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_events_count_as_delivered_and_by_reason() {
    let h = Harness::new();
    // Batch 0: only B (all filtered out); batch 1: mixed; batch 2: empty.
    let b_only: Vec<Event> = (0..6).map(|o| ev("B", o)).collect();
    let mixed = alternating(6, 40);
    let (_, mut rxs) = h.vec_source("Src", vec![b_only, mixed.clone(), Vec::new()]);
    let s = h.sink("S");
    let plan = plan(
        "p.NewPipeline().In(Src).FilterType(A).WithSampleRate(3).Out(S)",
        &bindings(&["Src"], &["S"], ""),
    );
    let running = h.start(&plan, 8);

    assert_eq!(acks(&mut rxs).await, vec![AckStatus::Delivered; 3]);
    finish(&running).await;

    let a: Vec<&Event> = mixed.iter().filter(|e| e.ty.as_str() == "A").collect();
    // FilterType is op 1, the sampler op 2 (its salt).
    let kept: Vec<u64> = a
        .iter()
        .filter(|e| keep(e, 3, 2))
        .map(|e| e.offset)
        .collect();
    assert_eq!(s.offsets(), kept);
    let p = pipeline(&running, "p");
    assert_eq!(p.events_in.get(), 46);
    assert_eq!(p.dropped_count(DropReason::Filter), 6 + 20);
    assert_eq!(
        p.dropped_count(DropReason::Sample),
        (a.len() - kept.len()) as u64
    );
    assert_eq!(p.dropped_count(DropReason::RateLimit), 0);
    assert_eq!(p.dropped_count(DropReason::OutputFull), 0);
    assert_eq!(p.events_out.get(), kept.len() as u64);
    // The all-B batch never reached the sink.
    let writes = s.writes.load(Ordering::SeqCst);
    assert_eq!(writes, u64::from(!kept.is_empty()));
}

/// One source read by one pipeline per filter; each sink's offsets must be
/// exactly those the Rust predicate keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filter_type_and_filter_keep_exactly_the_matching_events() {
    let types = [
        "chat.message",
        "Chat.message",
        "chat.message ",
        "chat.messages",
        "chat",
        "A",
        "a",
    ];
    let hosts = ["web-1", "web-2", "web-3"];
    let mut events = Vec::new();
    for o in 0..84u64 {
        let mut e = ev(types[o as usize % types.len()], o);
        e.host = Text::from(hosts[o as usize % hosts.len()]);
        e.pid = (o % 5) as u32;
        let e = match o % 4 {
            0 => tagged(e, &[("env", "prod")]),
            1 => tagged(e, &[("env", "staging"), ("k-1", "v")]),
            2 => tagged(e, &[("k-1", "w")]),
            _ => e,
        };
        events.push(e);
    }
    type Check = fn(&Event) -> bool;
    let cases: Vec<(&str, &str, Check)> = vec![
        ("FilterType(\"chat.message\", A)", "S0", |e| {
            matches!(e.ty.as_str(), "chat.message" | "A")
        }),
        ("Filter(tags.env == \"prod\")", "S1", |e| {
            e.tag("env").map(Text::as_str) == Some("prod")
        }),
        ("Filter(tags.env != \"prod\")", "S2", |e| {
            e.tag("env").map(Text::as_str) != Some("prod")
        }),
        ("Filter(host in [\"web-1\", \"web-3\"])", "S3", |e| {
            matches!(e.host.as_str(), "web-1" | "web-3")
        }),
        ("Filter(pid >= 3 && offset < 40)", "S4", |e| {
            e.pid >= 3 && e.offset < 40
        }),
        (
            "Filter(!(type == \"A\") || tags[\"k-1\"] == \"v\")",
            "S5",
            |e| e.ty.as_str() != "A" || e.tag("k-1").map(Text::as_str) == Some("v"),
        ),
        ("Filter(tags.missing != \"x\")", "S6", |_| true),
        ("Filter(tags.missing == \"\")", "S7", |_| false),
        ("Filter(pid in [0, 4] || type in [\"chat\"])", "S8", |e| {
            e.pid == 0 || e.pid == 4 || e.ty.as_str() == "chat"
        }),
        ("FilterType(chat)", "S9", |e| e.ty.as_str() == "chat"),
    ];
    let mut blueprint = String::new();
    for (i, (stage, sink, _)) in cases.iter().enumerate() {
        blueprint.push_str(&format!("f{i}.NewPipeline().In(Src).{stage}.Out({sink})\n"));
    }
    let sinks: Vec<&str> = cases.iter().map(|c| c.1).collect();
    let h = Harness::new();
    let (_, mut rxs) = h.vec_source("Src", batches(events.clone(), 10));
    let plan = plan(&blueprint, &bindings(&["Src"], &sinks, ""));
    let running = h.start(&plan, 8);

    let statuses = acks(&mut rxs).await;
    assert!(statuses.iter().all(|s| *s == AckStatus::Delivered));
    finish(&running).await;
    for (i, (stage, sink, check)) in cases.iter().enumerate() {
        let want: Vec<Event> = events.iter().filter(|e| check(e)).cloned().collect();
        assert_eq!(
            h.sink(sink).offsets(),
            offsets(&want),
            "{stage} kept the wrong events"
        );
        // Kept events leave unchanged.
        assert_eq!(h.sink(sink).events(), want, "{stage} changed events");
        let p = pipeline(&running, &format!("f{i}"));
        assert_eq!(
            p.dropped_count(DropReason::Filter),
            (events.len() - want.len()) as u64,
            "{stage} drop count"
        );
    }
}

/// `fields.` reads the JSON payload (SPEC section 7): numbers compare as
/// numbers, an absent field, a null, a list, or a payload that is not a
/// JSON object behaves like a missing tag; two stages reading the payload
/// share one parse. Each sink gets exactly what the Rust check keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filter_on_payload_fields_keeps_exactly_the_matching_events() {
    let payloads: [&[u8]; 9] = [
        br#"{"status":500,"user":{"id":"u1","k-1":true},"ratio":0.5}"#,
        br#"{"status":200.0,"user":{"id":"u2","k-1":false},"ratio":2}"#,
        br#"{"status":"500","user":{"id":"u3"}}"#,
        br#"{"status":null,"user":"u1"}"#,
        br#"{"status":[500]}"#,
        br#"{}"#,
        b"[1,2]",
        b"not json",
        br#"{"status":503,"user":{"id":"u2","k-1":true},"ratio":0.25}"#,
    ];
    let events: Vec<Event> = (0..45u64)
        .map(|o| {
            let mut e = ev("A", o);
            e.message = bytes::Bytes::from_static(payloads[o as usize % payloads.len()]);
            e
        })
        .collect();
    let kind = |e: &Event| o_of(e) % payloads.len();
    fn o_of(e: &Event) -> usize {
        e.offset as usize
    }
    type Check = fn(usize) -> bool;
    let cases: Vec<(&str, &str, Check)> = vec![
        ("Filter(fields.status >= 500)", "S0", |k| matches!(k, 0 | 8)),
        ("Filter(fields.status == 200)", "S1", |k| k == 1),
        ("Filter(fields.user[\"k-1\"] == true)", "S2", |k| {
            matches!(k, 0 | 8)
        }),
        ("Filter(fields.user.id in [\"u1\", \"u3\"])", "S3", |k| {
            matches!(k, 0 | 2)
        }),
        ("Filter(fields.status != 500)", "S4", |k| k != 0),
        ("Filter(fields.status == \"500\")", "S5", |k| k == 2),
        (
            "Filter(fields.ratio < 1).Filter(fields.status > 500)",
            "S6",
            |k| k == 8,
        ),
        ("Filter(fields.missing.deeper != 1)", "S7", |_| true),
    ];
    let mut blueprint = String::new();
    for (i, (stage, sink, _)) in cases.iter().enumerate() {
        blueprint.push_str(&format!("p{i}.NewPipeline().In(Src).{stage}.Out({sink})\n"));
    }
    let sinks: Vec<&str> = cases.iter().map(|c| c.1).collect();
    let h = Harness::new();
    let (_, mut rxs) = h.vec_source("Src", batches(events.clone(), 10));
    let plan = plan(&blueprint, &bindings(&["Src"], &sinks, ""));
    let running = h.start(&plan, 8);
    let statuses = acks(&mut rxs).await;
    assert!(statuses.iter().all(|s| *s == AckStatus::Delivered));
    finish(&running).await;
    for (stage, sink, check) in &cases {
        let want: Vec<Event> = events.iter().filter(|e| check(kind(e))).cloned().collect();
        assert_eq!(
            h.sink(sink).offsets(),
            offsets(&want),
            "{stage} kept the wrong events"
        );
        assert_eq!(h.sink(sink).events(), want, "{stage} changed events");
    }
    // The two payload stages of p6 parsed each payload once: what reached
    // its sink carries the parse.
    assert!(h.sink("S6").events().iter().all(|e| e.payload.is_parsed()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn samplers_follow_the_documented_hash_and_tag_what_they_keep() {
    const N: u64 = 100_000;
    let events: Vec<Event> = (0..N)
        .map(|o| ev(if o % 3 == 0 { "A" } else { "B" }, o))
        .collect();
    let h = Harness::new();
    let (_, mut rxs) = h.vec_source("Src", batches(events.clone(), 1000));
    let plan = plan(
        "one.NewPipeline().In(Src).WithSampleRate(7).Out(S1)\n\
         two.NewPipeline().In(Src).WithSampleRate(10).WithSampleRate(10).Out(S2)\n\
         after.NewPipeline().In(Src).Out(S3).WithSampleRate(5)\n",
        &bindings(&["Src"], &["S1", "S2", "S3"], ""),
    );
    let running = h.start(&plan, 8);
    let statuses = acks(&mut rxs).await;
    assert!(statuses.iter().all(|s| *s == AckStatus::Delivered));
    finish(&running).await;

    // Salts are op positions in the statement, `In` being 0.
    let want_one: Vec<u64> = events
        .iter()
        .filter(|e| keep(e, 7, 1))
        .map(|e| e.offset)
        .collect();
    let want_two: Vec<u64> = events
        .iter()
        .filter(|e| keep(e, 10, 1) && keep(e, 10, 2))
        .map(|e| e.offset)
        .collect();
    let want_after: Vec<u64> = events
        .iter()
        .filter(|e| keep(e, 5, 2))
        .map(|e| e.offset)
        .collect();
    let (s1, s2, s3) = (h.sink("S1"), h.sink("S2"), h.sink("S3"));
    assert_eq!(s1.offsets(), want_one);
    assert_eq!(s2.offsets(), want_two);
    assert_eq!(s3.offsets(), want_after);

    // Two samplers in a row are independent: about 1 in 100 pass both.
    let both = want_two.len();
    assert!(
        (700..=1300).contains(&both),
        "{both} of {N} passed two 1-in-10 samplers"
    );
    let one = want_one.len() as f64 / N as f64;
    assert!(
        (one - 1.0 / 7.0).abs() < 0.01,
        "1-in-7 kept a fraction {one}"
    );

    for (sink, rate) in [(&s1, "7"), (&s2, "10"), (&s3, "5")] {
        for e in sink.events() {
            assert_eq!(e.tags.len(), 1, "{}: tags {:?}", sink.name, e.tags);
            assert_eq!(e.tag("dab.sample_rate").map(Text::as_str), Some(rate));
        }
    }
    let dropped = |id: &str| pipeline(&running, id).dropped_count(DropReason::Sample);
    assert_eq!(dropped("one"), N - want_one.len() as u64);
    assert_eq!(dropped("two"), N - want_two.len() as u64);
    assert_eq!(dropped("after"), N - want_after.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_wait_slows_down_and_loses_nothing() {
    // governor keeps its own clock (quanta) and timer (futures-timer), so
    // tokio's paused time does not apply: this measures real time, briefly.
    // 1000 events at 2000/s with a burst of 100: at least 900 / 2000 s.
    let h = Harness::new();
    let events = alternating(0, 1000);
    let (_, mut rxs) = h.vec_source("Src", batches(events.clone(), 50));
    let s = h.sink("S");
    let plan = plan(
        "p.NewPipeline().In(Src).WithRateLimitPerSecond(2000, burst = 100).Out(S)",
        &bindings(&["Src"], &["S"], ""),
    );
    let t0 = Instant::now();
    let running = h.start(&plan, 8);
    finish(&running).await;
    let took = t0.elapsed();

    assert!(
        took >= Duration::from_millis(440),
        "1000 events took {took:?}"
    );
    assert!(took < Duration::from_secs(5), "1000 events took {took:?}");
    assert_eq!(s.events(), events);
    assert_eq!(acks(&mut rxs).await, vec![AckStatus::Delivered; 20]);
    assert_eq!(
        pipeline(&running, "p").dropped_count(DropReason::RateLimit),
        0
    );
}

/// Whole periods of 1 ms (the limiter's period at 1,000/s) in `d`.
fn periods(d: Duration) -> u64 {
    d.as_micros() as u64 / 1_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_drop_lets_through_exactly_what_the_bucket_holds() {
    // governor's bucket (GCRA) at 1,000/s with a burst of 100: one cell
    // every T = 1 ms, at most 100 held; a drop-limited batch larger than
    // what the bucket holds takes all of it. The test releases batches at
    // instants it measures, so the cells each batch finds are bounded by
    // the clock on both sides: n = whole periods since the bucket was last
    // emptied, capped at the burst, +-1 for the rounding of an instant to
    // a period. Batch 0 finds a full bucket; batch 1 comes >= 40 ms after
    // batch 0 emptied it; batch 2 (150 events) after >= 150 ms, when the
    // bucket has been full (100, not 150) for a while.
    const B: u64 = 100;
    let h = Harness::new();
    let sizes = [100u64, 100, 150];
    let mut events = Vec::new();
    let mut first = 0;
    let mut ranges = Vec::new();
    for n in sizes {
        events.push(alternating(first, n));
        ranges.push(first..first + n);
        first += n;
    }
    let released = Arc::new(AtomicUsize::new(0));
    let gate = released.clone();
    let pace: Pace = Arc::new(move |i| i < gate.load(Ordering::SeqCst));
    let (_, mut rxs) = h.paced_source("Src", events, Some(pace));
    let s = h.sink("S");
    let plan = plan(
        "p.NewPipeline().In(Src).WithRateLimitPerSecond(1000, burst = 100, on_limit = drop).Out(S)",
        &bindings(&["Src"], &["S"], ""),
    );
    let running = h.start(&plan, 8);
    let released0 = Instant::now();
    released.store(1, Ordering::SeqCst);
    assert_eq!(ack(&mut rxs[0]).await, AckStatus::Delivered);
    let acked0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(40)).await;
    let released1 = Instant::now();
    released.store(2, Ordering::SeqCst);
    assert_eq!(ack(&mut rxs[1]).await, AckStatus::Delivered);
    let acked1 = Instant::now();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let released2 = Instant::now();
    released.store(3, Ordering::SeqCst);
    assert_eq!(ack(&mut rxs[2]).await, AckStatus::Delivered);
    let acked2 = Instant::now();
    finish(&running).await;

    let offs = s.offsets();
    assert!(
        offs.windows(2).all(|w| w[0] < w[1]),
        "duplicates or reordering: {offs:?}"
    );
    let got: Vec<u64> = ranges
        .iter()
        .map(|r| offs.iter().filter(|o| r.contains(o)).count() as u64)
        .collect();
    // Batch 0: the full bucket, all 100.
    assert_eq!(got[0], B, "batch 0");
    // Batch 1: the cells that came back since batch 0 emptied the bucket
    // (no later than acked0) until batch 1 was checked (no earlier than
    // released1, no later than acked1; batch 0 was checked after
    // released0).
    let (lo, hi) = (
        periods(released1 - acked0).saturating_sub(1).min(B),
        (periods(acked1 - released0) + 1).min(B),
    );
    assert!(
        (lo..=hi).contains(&got[1]),
        "batch 1 let {} through; the bucket arithmetic says {lo}..={hi}",
        got[1]
    );
    // Batch 2: >= 150 ms later the bucket is full, and holds 100, not
    // more: exactly the burst, plus a cell per period its checks took.
    let hi2 = B + periods(acked2 - released2) + 1;
    assert!(periods(released2 - acked1) > B + 1);
    assert!(
        (B..=hi2).contains(&got[2]),
        "batch 2 let {} through; the bucket arithmetic says {B}..={hi2}",
        got[2]
    );
    // Everything else was dropped, and counted, and counts as delivered.
    let sent: u64 = sizes.iter().sum();
    let passed: u64 = got.iter().sum();
    assert_eq!(
        pipeline(&running, "p").dropped_count(DropReason::RateLimit),
        sent - passed
    );
    assert_eq!(sink_metrics(&running, "S").events.get(), passed);
    eprintln!("rate limit drop: batches let through {got:?} (batch 1 bounds {lo}..={hi}, batch 2 {B}..={hi2})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_overflow_sends_the_excess_on_and_acks_after_both() {
    const SENT: u64 = 1000;
    let h = Harness::new();
    let events = alternating(0, SENT);
    let (_, mut rxs) = h.vec_source("Src", batches(events.clone(), 100));
    let (s, spill) = (h.sink("S"), h.sink("Spill"));
    spill.write_gate.hold();
    let plan = plan(
        "p.NewPipeline().In(Src)\
           .WithRateLimitPerSecond(1000, burst = 100, on_limit = overflow, overflow = Spill)\
           .Out(S)",
        &bindings(&["Src"], &["S", "Spill"], ""),
    );
    let running = h.start(&plan, 16);

    // The first batch fits the burst and needs only S.
    assert_eq!(ack(&mut rxs[0]).await, AckStatus::Delivered);
    eventually("the excess to reach Spill", || {
        spill.write_calls.load(Ordering::SeqCst) >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(pending(&mut rxs[9]), "acked before the overflow sink wrote");

    spill.write_gate.release();
    let statuses = acks(&mut rxs[1..]).await;
    assert!(statuses.iter().all(|st| *st == AckStatus::Delivered));
    finish(&running).await;

    let (got, spilled) = (s.len() as u64, spill.len() as u64);
    assert_eq!(got + spilled, SENT, "S {got} + Spill {spilled}");
    assert!(spilled > 0);
    let all: BTreeSet<u64> = s.offsets().into_iter().chain(spill.offsets()).collect();
    assert_eq!(
        all,
        (0..SENT).collect::<BTreeSet<_>>(),
        "lost or duplicated"
    );
    let p = pipeline(&running, "p");
    assert_eq!(p.dropped_count(DropReason::RateLimit), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forced_shutdown_ends_a_pipeline_waiting_on_its_rate_limit() {
    // 50 events at 1/s would take 49 s to drain; a forced stop must not wait
    // for them, and what was not delivered is reported failed.
    let h = Harness::new();
    let (_, mut rxs) = h.vec_source("Src", batches(alternating(0, 50), 25));
    let s = h.sink("S");
    let plan = plan(
        "p.NewPipeline().In(Src).WithRateLimitPerSecond(1, burst = 1).Out(S)",
        &bindings(&["Src"], &["S"], ""),
    );
    let running = h.start(&plan, 8);
    eventually("the pipeline to take the first batch", || {
        pipeline(&running, "p").events_in.get() >= 25
    })
    .await;

    running.shutdown();
    running.force();
    finish(&running).await;
    assert_eq!(acks(&mut rxs).await, vec![AckStatus::Failed; 2]);
    assert!(s.len() < 50, "{} events written", s.len());
    // The pipeline dropped the batch it held (waiting for tokens), and the
    // second batch was abandoned where it waited: at the pipeline's input,
    // or still at the router. Either way 50 are counted, each where it was.
    let p = pipeline(&running, "p");
    let held = p.undelivered.get(Undelivered::Abandoned);
    let place = running.abandoned_by_place();
    match held {
        50 => assert_eq!(place, "pipeline:p=50"),
        25 => assert_eq!(place, "input:Src=25 pipeline:p=25"),
        _ => panic!("the pipeline counted {held} abandoned; places: {place}"),
    }
    assert_eq!(running.abandoned(), 50);
    let text = running.render_metrics();
    let series = format!(
        "dab_pipeline_undelivered_events_total{{pipeline=\"p\",reason=\"abandoned\"}} {held}\n"
    );
    assert!(text.contains(&series), "no {series:?} in\n{text}");
    assert!(text.contains("\ndab_abandoned_events_total 50\n"), "{text}");
}
