//! The Kafka source and sink against librdkafka's mock cluster: fault
//! injection (broker down) and exact offset checks that are awkward on a
//! real broker. The same connectors run against a real broker (tansu) in
//! the workspace's `tests/kafka.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use dab_api::connector::{Admission, SourceStats};
use dab_api::{Batch, ConfigValue, Event, Sink, SinkFactory, SourceContext, SourceFactory, Text};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_is_read_again_by_the_next_consumer() {
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("events", 1, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    produce(&brokers, "events", 2000).await;

    // The second batch fails (a sink given up on): nothing from it on is
    // committed, however many later batches succeed.
    let mut r = start_source(&brokers, "events", "g2");
    let first = take(&mut r, 2000, Duration::from_secs(20), |i| i != 1).await;
    assert_eq!(uids(&first).len(), 2000);
    stop(r).await;
    let c = committed(&brokers, "events", "g2", 1);
    assert!(
        c[0] < 2000,
        "commit must stop before the failed batch: {c:?}"
    );

    // The next member of the group reads from there: the union is whole.
    let mut r2 = start_source(&brokers, "events", "g2");
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
