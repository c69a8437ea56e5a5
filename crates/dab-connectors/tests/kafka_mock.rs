//! The Kafka source and sink against librdkafka's mock cluster: fault
//! injection (broker down) and exact offset checks that are awkward on a
//! real broker. The same connectors run against a real broker (tansu) in
//! the workspace's `tests/kafka.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use dab_api::connector::{Admission, SourceStats};
use dab_api::{
    Batch, ConfigValue, Confirm, Confirmed, Event, Sink, SinkFactory, SourceContext, SourceFactory,
    Text,
};
use dab_connectors::kafka::{KafkaSinkFactory, KafkaSourceFactory};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct Always;
impl Admission for Always {
    fn admit(&self) -> bool {
        true
    }
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, ConfigValue> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), ConfigValue::Str((*v).to_owned())))
        .collect()
}

fn event(i: u64) -> Event {
    Event {
        timestamp: 1,
        host: Text::from("h1"),
        ty: Text::from(if i % 2 == 0 { "A" } else { "B" }),
        offset: i,
        pid: 7,
        message: bytes::Bytes::from(format!("payload {i}")),
        ..Event::default()
    }
}

async fn produce(brokers: &str, topic: &str, n: u64) -> Box<dyn Sink> {
    let mut sink = KafkaSinkFactory
        .build(
            "Out",
            &fields(&[("brokers", brokers), ("topic", topic), ("key", "type")]),
        )
        .expect("sink");
    let events: Vec<Event> = (0..n).map(event).collect();
    for chunk in events.chunks(500) {
        sink.write(chunk).await.expect("write");
    }
    tokio::time::timeout(Duration::from_secs(30), sink.flush())
        .await
        .expect("flush in time")
        .expect("flush");
    sink
}

/// Runs a source; `ack` decides per batch whether it is delivered.
struct Running {
    rx: mpsc::Receiver<Batch>,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    stats: Arc<SourceStats>,
    source_metrics: Arc<dyn dab_api::metrics::ConnectorMetrics>,
}

fn start_source(brokers: &str, topic: &str, group: &str) -> Running {
    start_source_with(brokers, topic, group, "json")
}

fn start_source_with(brokers: &str, topic: &str, group: &str, codec: &str) -> Running {
    let source = KafkaSourceFactory
        .build(
            "In",
            &fields(&[
                ("brokers", brokers),
                ("topic", topic),
                ("group", group),
                ("codec", codec),
            ]),
        )
        .expect("source");
    start_built(source)
}

fn start_built(source: Box<dyn dab_api::Source>) -> Running {
    let source_metrics = source.metrics().expect("kafka source metrics");
    let (tx, rx) = mpsc::channel(4);
    let stop = CancellationToken::new();
    let stats = Arc::new(SourceStats::default());
    let ctx = SourceContext {
        name: "In".into(),
        out: tx,
        shutdown: stop.clone(),
        stats: stats.clone(),
        admission: Arc::new(Always),
    };
    let handle = tokio::spawn(async move {
        source.run(ctx).await.expect("source runs");
    });
    Running {
        rx,
        stop,
        handle,
        stats,
        source_metrics,
    }
}

/// Stops a source and waits for it to commit and leave.
async fn stop(r: Running) {
    r.stop.cancel();
    drop(r.rx);
    tokio::time::timeout(Duration::from_secs(20), r.handle)
        .await
        .expect("source stops")
        .expect("join");
}

/// Receives until `n` events arrived or nothing came for `idle`.
async fn take(
    r: &mut Running,
    n: usize,
    idle: Duration,
    keep: impl Fn(usize) -> bool,
) -> Vec<Event> {
    let mut got = Vec::new();
    let mut i = 0;
    while got.len() < n {
        let Ok(Some(b)) = tokio::time::timeout(idle, r.rx.recv()).await else {
            break;
        };
        let Batch { events, ack, .. } = b;
        if keep(i) {
            ack.complete();
        } else {
            ack.fail();
        }
        i += 1;
        got.extend(events);
    }
    got
}

fn committed(brokers: &str, topic: &str, group: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

fn uids(events: &[Event]) -> BTreeSet<u64> {
    events.iter().map(|e| e.offset).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_are_committed_and_nothing_else() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("events", 3, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let sink = produce(&brokers, "events", 3000).await;
    let m = sink.metrics().expect("sink metrics");
    let mut samples = Vec::new();
    m.samples(&mut samples);
    let delivered = samples
        .iter()
        .find(|s| s.name == "dab_kafka_delivered_total")
        .map(|s| s.value);
    assert_eq!(delivered, Some(3000.0));

    // First reader: delivers every batch; all 3000 arrive and are committed.
    let mut r = start_source(&brokers, "events", "g1");
    let got = take(&mut r, 3000, Duration::from_secs(20), |_| true).await;
    assert_eq!(uids(&got).len(), 3000, "every event once");
    let stats = r.stats.clone();
    stop(r).await;
    let c = committed(&brokers, "events", "g1", 3);
    assert_eq!(
        c.iter().map(|o| o.max(&0)).sum::<i64>(),
        3000,
        "committed {c:?}"
    );
    assert_eq!(
        stats.events.load(std::sync::atomic::Ordering::Relaxed),
        3000
    );
}

/// Runs a source with `max_redeliveries`.
fn start_source_redelivering(brokers: &str, topic: &str, group: &str, max: i64) -> Running {
    let mut f = fields(&[("brokers", brokers), ("topic", topic), ("group", group)]);
    f.insert("max_redeliveries".into(), ConfigValue::Int(max));
    start_built(KafkaSourceFactory.build("In", &f).expect("source"))
}

/// Receives the next batch, or panics after `limit`.
async fn next_batch(r: &mut Running, limit: Duration) -> Batch {
    tokio::time::timeout(limit, r.rx.recv())
        .await
        .expect("a batch in time")
        .expect("source open")
}

fn sample(r: &dyn dab_api::metrics::ConnectorMetrics, name: &str) -> f64 {
    let mut samples = Vec::new();
    r.samples(&mut samples);
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_is_sent_again_and_then_committed() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("events", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "events", 2000).await;

    // The second batch fails once (a downstream that was gone). The same
    // consumer sends exactly its events again after the back-off; once
    // that is delivered, everything is committed.
    let mut r = start_source_redelivering(&brokers, "events", "g2", 5);
    let mut seen = Vec::new();
    let mut failed: Option<Vec<u64>> = None;
    let mut again: Option<Vec<u64>> = None;
    let mut n = 0usize;
    while n < 2000 || again.is_none() {
        let b = next_batch(&mut r, Duration::from_secs(20)).await;
        let offsets: Vec<u64> = b.events.iter().map(|e| e.offset).collect();
        assert!(!b.retries_exhausted);
        if failed.is_none() && !seen.is_empty() {
            failed = Some(offsets);
            b.ack.fail();
            continue;
        }
        if failed.as_ref() == Some(&offsets) {
            assert!(again.is_none(), "sent again once: {offsets:?}");
            again = Some(offsets.clone());
        }
        n += offsets.len();
        seen.extend(offsets);
        b.ack.complete();
    }
    assert_eq!(failed, again, "the failed batch, exactly");
    assert_eq!(seen.len(), 2000, "no duplicates besides the failed batch");
    assert_eq!(seen.iter().copied().collect::<BTreeSet<u64>>().len(), 2000);
    let metrics = r.source_metrics.clone();
    stop(r).await;
    assert_eq!(committed(&brokers, "events", "g2", 1), vec![2000]);
    assert_eq!(
        sample(metrics.as_ref(), "dab_kafka_failed_batches_total"),
        1.0
    );
    assert_eq!(
        sample(metrics.as_ref(), "dab_kafka_redelivered_batches_total"),
        1.0
    );
    assert_eq!(
        sample(metrics.as_ref(), "dab_kafka_exhausted_events_total"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_failing_past_max_redeliveries_is_marked_and_committed_past() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("events", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "events", 2000).await;

    // The first batch fails every time it is sent: once read, then sent
    // again twice (max_redeliveries 2), then it comes a fourth time,
    // marked `retries_exhausted` with the reason on every event.
    let mut r = start_source_redelivering(&brokers, "events", "g7", 2);
    let mut poison: Option<Vec<u64>> = None;
    let mut arrivals = 0;
    let mut marked: Option<Batch> = None;
    let mut others = BTreeSet::new();
    let t0 = std::time::Instant::now();
    while marked.is_none() || others.len() + poison.as_ref().map_or(0, Vec::len) < 2000 {
        let b = next_batch(&mut r, Duration::from_secs(20)).await;
        let offsets: Vec<u64> = b.events.iter().map(|e| e.offset).collect();
        if poison.is_none() {
            poison = Some(offsets.clone());
        }
        if poison.as_ref() == Some(&offsets) {
            arrivals += 1;
            if b.retries_exhausted {
                marked = Some(b);
            } else {
                assert!(arrivals <= 3, "sent unmarked {arrivals} times");
                b.ack.fail();
            }
            continue;
        }
        assert!(!b.retries_exhausted);
        others.extend(offsets);
        b.ack.complete();
    }
    // Back-offs of 250 ms and 500 ms came before the last two sends.
    assert!(
        t0.elapsed() >= Duration::from_millis(750),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(arrivals, 4, "read once, sent again twice, then marked");
    let marked = marked.expect("marked");
    let first = marked.events[0].offset;
    let reason = marked.events[0]
        .tag(dab_api::event::ERROR_TAG)
        .map(|t| t.to_string())
        .unwrap_or_default();
    assert_eq!(
        reason,
        format!("events[0]@{first}: not delivered after 3 attempts (max_redeliveries 2)")
    );
    // Nothing is committed past the poison batch until it settles...
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(committed(&brokers, "events", "g7", 1), vec![-1]);
    // ... and everything once it does (OnError took it).
    let n = marked.len() as f64;
    marked.ack.complete();
    let metrics = r.source_metrics.clone();
    stop(r).await;
    assert_eq!(committed(&brokers, "events", "g7", 1), vec![2000]);
    assert_eq!(
        sample(metrics.as_ref(), "dab_kafka_failed_batches_total"),
        3.0
    );
    assert_eq!(
        sample(metrics.as_ref(), "dab_kafka_redelivered_batches_total"),
        2.0
    );
    assert_eq!(
        sample(metrics.as_ref(), "dab_kafka_exhausted_events_total"),
        n
    );
    assert_eq!(
        sample(metrics.as_ref(), "dab_kafka_source_dropped_events_total"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_batch_nobody_takes_is_counted_dropped_and_committed_past() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("events", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "events", 500).await;
    // max_redeliveries 0: the first failure gives up; the marked batch
    // fails too (no OnError target left): counted, then committed past.
    let mut r = start_source_redelivering(&brokers, "events", "g8", 0);
    let mut total = 0;
    let mut dropped = 0;
    while total < 500 {
        let b = next_batch(&mut r, Duration::from_secs(20)).await;
        if b.retries_exhausted {
            dropped += b.len();
            total += b.len();
        }
        b.ack.fail();
    }
    assert_eq!(dropped, 500);
    let metrics = r.source_metrics.clone();
    stop(r).await;
    assert_eq!(committed(&brokers, "events", "g8", 1), vec![500]);
    assert_eq!(
        sample(metrics.as_ref(), "dab_kafka_source_dropped_events_total"),
        500.0
    );
    assert_eq!(
        sample(metrics.as_ref(), "dab_kafka_exhausted_events_total"),
        500.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_batches_left_waiting_at_stop_are_read_again_by_the_next_consumer() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("events", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "events", 2000).await;
    // The second batch fails once everything was read; the source stops
    // right away, well inside the 250 ms back-off.
    let mut r = start_source(&brokers, "events", "g9");
    let mut first = Vec::new();
    let mut held = None;
    while first.len() < 2000 {
        let b = next_batch(&mut r, Duration::from_secs(20)).await;
        first.extend(b.events.iter().cloned());
        if held.is_none() && first.len() > b.len() {
            held = Some(b);
        } else {
            b.ack.complete();
        }
    }
    assert_eq!(uids(&first).len(), 2000);
    held.expect("a second batch").ack.fail();
    stop(r).await;
    let c = committed(&brokers, "events", "g9", 1);
    assert!(
        c[0] < 2000,
        "commit must stop before the failed batch: {c:?}"
    );
    let mut r2 = start_source(&brokers, "events", "g9");
    let again = take(&mut r2, 2000, Duration::from_secs(8), |_| true).await;
    assert_eq!(
        again.first().map(|e| e.offset),
        u64::try_from(c[0]).ok(),
        "resumes at the commit"
    );
    let mut all = uids(&first);
    all.extend(uids(&again));
    assert_eq!(all.len(), 2000);
    stop(r2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_waits_out_a_broker_that_is_down() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("events", 2, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let mut sink = KafkaSinkFactory
        .build(
            "Out",
            &fields(&[("brokers", &brokers), ("topic", "events")]),
        )
        .expect("sink");
    sink.write(&(0..100).map(event).collect::<Vec<_>>())
        .await
        .expect("write");
    sink.flush().await.expect("flush");
    cluster.broker_down(-1).expect("down");
    sink.write(&(100..600).map(event).collect::<Vec<_>>())
        .await
        .expect("write while down");
    // The flush cannot finish while the broker is down.
    assert!(
        tokio::time::timeout(Duration::from_secs(2), sink.flush())
            .await
            .is_err(),
        "flush must wait for the broker"
    );
    cluster.broker_up(-1).expect("up");
    tokio::time::timeout(Duration::from_secs(30), sink.flush())
        .await
        .expect("flush after the broker is back")
        .expect("flush");
    let mut r = start_source(&brokers, "events", "g3");
    let got = take(&mut r, 600, Duration::from_secs(20), |_| true).await;
    assert_eq!(uids(&got), (0..600).collect::<BTreeSet<u64>>());
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_marked_counted_and_do_not_block() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("raw", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("producer");
    for i in 0..30 {
        let v = if i % 10 == 3 {
            "not json {".to_owned()
        } else {
            format!(r#"{{"type":"A","host":"h","offset":{i},"message":"m"}}"#)
        };
        p.send(BaseRecord::<(), str>::to("raw").payload(&v))
            .expect("send");
    }
    p.flush(Duration::from_secs(10)).expect("flush");
    let mut r = start_source(&brokers, "raw", "g4");
    let got = take(&mut r, 30, Duration::from_secs(20), |_| true).await;
    assert_eq!(got.len(), 30);
    let bad: Vec<&Event> = got.iter().filter(|e| e.is_undecodable()).collect();
    assert_eq!(bad.len(), 3);
    assert!(bad.iter().all(|e| e.message.as_ref() == b"not json {"));
    let reason = bad[0]
        .tag(dab_api::event::ERROR_TAG)
        .map(|t| t.to_string())
        .unwrap_or_default();
    assert!(reason.starts_with("raw[0]@3: invalid JSON"), "{reason}");
    assert_eq!(
        r.stats
            .decode_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_committed_while_batches_are_unacknowledged() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("events", 2, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "events", 3000).await;
    let mut r = start_source(&brokers, "events", "g5");
    // Hold every batch: read, never settled.
    let mut held = Vec::new();
    let mut n = 0;
    while n < 3000 {
        let Ok(Some(b)) = tokio::time::timeout(Duration::from_secs(20), r.rx.recv()).await else {
            break;
        };
        n += b.len();
        held.push(b);
    }
    assert_eq!(n, 3000);
    // Several auto-commit intervals pass.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let c = committed(&brokers, "events", "g5", 2);
    assert!(
        c.iter().all(|o| *o <= 0),
        "committed {c:?} with nothing acknowledged"
    );
    // Acknowledge the first batch only: its offsets, nothing past.
    let first = held.remove(0);
    let covered = first.len() as i64;
    first.ack.complete();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let c = committed(&brokers, "events", "g5", 2);
    assert!(
        c.iter().map(|o| o.max(&0)).sum::<i64>() <= covered,
        "committed {c:?} past the first batch of {covered}"
    );
    drop(held);
    stop(r).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_protobuf_is_marked_counted_and_does_not_block() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("pb", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("producer");
    for i in 0..20u64 {
        let mut buf = bytes::BytesMut::new();
        let value: Vec<u8> = if i % 5 == 2 {
            // A field header promising 100 bytes that never come.
            vec![0x32, 100, 1, 2, 3]
        } else {
            dab_connectors::codec::proto::encode(&event(i), &mut buf);
            buf.to_vec()
        };
        p.send(BaseRecord::<(), [u8]>::to("pb").payload(&value[..]))
            .expect("send");
    }
    p.flush(Duration::from_secs(10)).expect("flush");
    let mut r = start_source_with(&brokers, "pb", "g6", "protobuf");
    let got = take(&mut r, 20, Duration::from_secs(20), |_| true).await;
    assert_eq!(got.len(), 20);
    let bad: Vec<&Event> = got.iter().filter(|e| e.is_undecodable()).collect();
    assert_eq!(bad.len(), 4);
    let reason = bad[0]
        .tag(dab_api::event::ERROR_TAG)
        .map(|t| t.to_string())
        .unwrap_or_default();
    assert!(reason.starts_with("pb[0]@2: invalid protobuf"), "{reason}");
    let good: BTreeSet<u64> = got
        .iter()
        .filter(|e| !e.is_undecodable())
        .map(|e| e.offset)
        .collect();
    assert_eq!(good.len(), 16);
    assert_eq!(
        r.stats
            .decode_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        4
    );
    stop(r).await;
}

/// A rebalance while a batch is unacknowledged: the revoked member waits
/// up to 2 s for it inside librdkafka's rebalance callback. That wait
/// runs on the source's own thread, so the only tokio worker here keeps
/// running tasks: a 10 ms ticker never stalls.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_rebalance_drain_never_holds_a_tokio_worker() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("events", 2, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "events", 2000).await;
    let mut r1 = start_source(&brokers, "events", "g10");
    // Hold the first batch: the revoke drain has to wait for it.
    let held = next_batch(&mut r1, Duration::from_secs(20)).await;
    let gap = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let stop_ticking = CancellationToken::new();
    let ticker = {
        let gap = gap.clone();
        let stop = stop_ticking.clone();
        tokio::spawn(async move {
            let mut last = std::time::Instant::now();
            while !stop.is_cancelled() {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let now = std::time::Instant::now();
                let mut g = gap.lock().expect("gap");
                *g = (*g).max(now - last);
                last = now;
            }
        })
    };
    let revoked = || {
        sample(
            r1.source_metrics.as_ref(),
            "dab_kafka_partitions_revoked_total",
        )
    };
    let r2 = start_source(&brokers, "events", "g10");
    let t0 = std::time::Instant::now();
    while revoked() < 1.0 {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "no rebalance within 30 s"
        );
        // Keep r1's channel moving so its reader gets to poll.
        while let Ok(b) = r1.rx.try_recv() {
            b.ack.complete();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_ticking.cancel();
    ticker.await.expect("ticker");
    let worst = *gap.lock().expect("gap");
    assert!(
        worst < Duration::from_millis(500),
        "a tokio worker stalled for {worst:?} during the rebalance"
    );
    drop(held);
    stop(r1).await;
    stop(r2).await;
}

// ------------------------------------------------- the sink's confirmations

fn sink_on(brokers: &str, topic: &str) -> Box<dyn Sink> {
    KafkaSinkFactory
        .build("Out", &fields(&[("brokers", brokers), ("topic", topic)]))
        .expect("sink")
}

/// Every message of `topic` (its `partitions` partitions), as
/// (partition, the event's `offset`) in each partition's order, read with
/// a plain consumer until `n` came or nothing came for 5 s.
fn read_back(brokers: &str, topic: &str, partitions: i32, n: usize) -> Vec<(i32, u64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "read-back")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    c.assign(&tpl).expect("assign");
    let mut got = Vec::new();
    let mut quiet_since = std::time::Instant::now();
    while got.len() < n && quiet_since.elapsed() < Duration::from_secs(5) {
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.expect("message");
        quiet_since = std::time::Instant::now();
        let v: serde_json::Value =
            serde_json::from_slice(rdkafka::Message::payload(&m).unwrap_or_default())
                .expect("json");
        got.push((
            rdkafka::Message::partition(&m),
            v["offset"].as_u64().expect("offset"),
        ));
    }
    got
}

fn sink_counter(sink: &dyn Sink, name: &str) -> f64 {
    let mut samples = Vec::new();
    sink.metrics().expect("sink metrics").samples(&mut samples);
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

fn delivered(c: &Confirmed) -> bool {
    matches!(c, Confirmed::Delivered { rejected } if rejected.is_empty())
}

/// Writes go out one after another without waiting, and each write's
/// confirmation comes when its own messages are delivered: on one
/// partition, in write order, every one `Delivered`, and the topic holds
/// every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_write_is_confirmed_in_order_as_its_reports_arrive() {
    const WRITES: u64 = 40;
    const PER: u64 = 100;
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("events", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let mut sink = sink_on(&brokers, "events");
    assert!(sink.confirms_writes());
    let mut confirms = Vec::new();
    for w in 0..WRITES {
        let events: Vec<Event> = (w * PER..(w + 1) * PER).map(event).collect();
        let p = sink.write_confirmed(&events).await.expect("write");
        assert!(p.rejected.is_empty());
        confirms.push(p.confirm);
    }
    // Which confirmation resolves first, among those still open, each time.
    let mut order = Vec::new();
    let mut open: Vec<(usize, Confirm)> = confirms.into_iter().enumerate().collect();
    while !open.is_empty() {
        let waits = open.iter_mut().map(|(i, c)| {
            let i = *i;
            Box::pin(async move { (i, c.recv().await) })
        });
        let ((i, c), _) =
            tokio::time::timeout(Duration::from_secs(30), futures_select_all(waits.collect()))
                .await
                .expect("a confirmation within 30 s");
        assert!(delivered(&c), "write {i}: {c:?}");
        order.push(i);
        open.retain(|(j, _)| *j != i);
    }
    assert_eq!(order, (0..WRITES as usize).collect::<Vec<_>>());
    let back = read_back(&brokers, "events", 1, (WRITES * PER) as usize);
    assert_eq!(
        back.iter().map(|(_, o)| *o).collect::<Vec<_>>(),
        (0..WRITES * PER).collect::<Vec<_>>()
    );
    assert_eq!(
        sink_counter(sink.as_ref(), "dab_kafka_delivered_total"),
        (WRITES * PER) as f64
    );
}

/// `select_all` without the futures crate: polls every future, returns
/// the first ready one with its position.
async fn futures_select_all<F: std::future::Future + Unpin>(mut fs: Vec<F>) -> (F::Output, usize) {
    std::future::poll_fn(|cx| {
        for (i, f) in fs.iter_mut().enumerate() {
            if let std::task::Poll::Ready(out) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready((out, i));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// A broker that is down delays the confirmations of the writes made
/// meanwhile; none says failed, and once the broker is back every write
/// is confirmed delivered and every event is in the topic once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_is_down_delays_confirmations_and_loses_nothing() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("events", 2, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let mut sink = sink_on(&brokers, "events");
    let first = (0..100).map(event).collect::<Vec<_>>();
    let mut c0 = sink.write_confirmed(&first).await.expect("write").confirm;
    let c0 = tokio::time::timeout(Duration::from_secs(30), c0.recv())
        .await
        .expect("first confirmation");
    assert!(delivered(&c0), "{c0:?}");

    cluster.broker_down(-1).expect("down");
    let mut confirms = Vec::new();
    for w in 1..6u64 {
        let events: Vec<Event> = (w * 100..(w + 1) * 100).map(event).collect();
        confirms.push(sink.write_confirmed(&events).await.expect("write").confirm);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for c in &mut confirms {
        let early = tokio::time::timeout(Duration::from_millis(10), c.recv()).await;
        assert!(
            early.is_err(),
            "confirmed while the broker was down: {early:?}"
        );
    }
    cluster.broker_up(-1).expect("up");
    for (i, c) in confirms.iter_mut().enumerate() {
        let c = tokio::time::timeout(Duration::from_secs(30), c.recv())
            .await
            .expect("confirmation after the broker is back");
        assert!(delivered(&c), "write {}: {c:?}", i + 1);
    }
    let mut back: Vec<u64> = read_back(&brokers, "events", 2, 600)
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    back.sort_unstable();
    assert_eq!(back, (0..600).collect::<Vec<u64>>());
}

/// Too large, both ways: a message over the client's `message.max.bytes`
/// is refused when it is handed over, and one the broker refuses in its
/// delivery report (the mock broker is told to answer the next produce
/// request MSG_SIZE_TOO_LARGE) is refused in the write's confirmation.
/// Each is rejected alone, with its reason; every other event of the
/// writes is delivered, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_is_rejected_alone_and_the_rest_delivered() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("events", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let mut sink = sink_on(&brokers, "events");

    // At send time: event 50 of 100 is 1.5 MB.
    let mut events: Vec<Event> = (0..100).map(event).collect();
    events[50].message = bytes::Bytes::from(vec![b'x'; 1_500_000]);
    events[50].touch();
    let p = sink.write_confirmed(&events).await.expect("write");
    assert_eq!(p.rejected.len(), 1);
    assert_eq!(p.rejected[0].index, 50);
    assert!(
        p.rejected[0].reason.contains("too large"),
        "{}",
        p.rejected[0].reason
    );
    let mut c = p.confirm;
    let c = tokio::time::timeout(Duration::from_secs(30), c.recv())
        .await
        .expect("confirmation");
    assert!(delivered(&c), "{c:?}");

    // In the delivery report: the next produce request is refused.
    cluster.request_errors(
        rdkafka::types::RDKafkaApiKey::Produce,
        &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let mut c = sink
        .write_confirmed(&[event(100)])
        .await
        .expect("write")
        .confirm;
    match tokio::time::timeout(Duration::from_secs(30), c.recv())
        .await
        .expect("confirmation")
    {
        Confirmed::Delivered { rejected } => {
            assert_eq!(rejected.len(), 1, "{rejected:?}");
            assert_eq!(rejected[0].index, 0);
            assert!(
                rejected[0].reason.contains("too large for the broker"),
                "{}",
                rejected[0].reason
            );
        }
        other => panic!("the report's refusal must be a rejection: {other:?}"),
    }

    // The sink goes on: the next write is delivered whole.
    let rest: Vec<Event> = (101..200).map(event).collect();
    let mut c = sink.write_confirmed(&rest).await.expect("write").confirm;
    let c = tokio::time::timeout(Duration::from_secs(30), c.recv())
        .await
        .expect("confirmation");
    assert!(delivered(&c), "{c:?}");

    let back: Vec<u64> = read_back(&brokers, "events", 1, 198)
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    let expected: Vec<u64> = (0..200).filter(|o| *o != 50 && *o != 100).collect();
    assert_eq!(back, expected);
    assert_eq!(
        sink_counter(sink.as_ref(), "dab_kafka_too_large_total"),
        2.0
    );
}

/// A producer fatal error (the broker answers a head-of-line produce
/// request OUT_OF_ORDER_SEQUENCE_NUMBER: its idempotence state no longer
/// matches the producer's) fails the write in flight; `rewind`, as the
/// runtime calls it before writing that write again, builds a new
/// producer, and the write then goes through. Nothing is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_rebuilds_the_producer_and_loses_nothing() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("events", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let mut sink = sink_on(&brokers, "events");
    let first: Vec<Event> = (0..100).map(event).collect();
    let mut c = sink.write_confirmed(&first).await.expect("write").confirm;
    let c = tokio::time::timeout(Duration::from_secs(30), c.recv())
        .await
        .expect("confirmation");
    assert!(delivered(&c), "{c:?}");

    cluster.request_errors(
        rdkafka::types::RDKafkaApiKey::Produce,
        &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let second: Vec<Event> = (100..200).map(event).collect();
    let mut c = sink.write_confirmed(&second).await.expect("write").confirm;
    let c = tokio::time::timeout(Duration::from_secs(30), c.recv())
        .await
        .expect("confirmation");
    assert!(matches!(c, Confirmed::Failed(_)), "{c:?}");

    sink.rewind().await.expect("rewind builds a new producer");
    assert_eq!(
        sink_counter(sink.as_ref(), "dab_kafka_producer_restarts_total"),
        1.0
    );
    let mut c = sink.write_confirmed(&second).await.expect("write").confirm;
    let c = tokio::time::timeout(Duration::from_secs(30), c.recv())
        .await
        .expect("confirmation");
    assert!(delivered(&c), "{c:?}");
    let mut back: Vec<u64> = read_back(&brokers, "events", 1, 200)
        .into_iter()
        .map(|(_, o)| o)
        .collect();
    back.sort_unstable();
    back.dedup();
    assert_eq!(back, (0..200).collect::<Vec<u64>>());
}
