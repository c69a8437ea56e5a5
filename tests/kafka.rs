//! End-to-end Kafka tests (issue 5) against a real Kafka-protocol broker,
//! tansu, started per test on a free loopback port
//! (`kafka_support/broker.rs`), with an outside client nobody here wrote
//! (Python confluent-kafka, `kafka_support/client.py`) producing the input
//! and counting the output. Every wait has a deadline and every child
//! process is killed if a test fails.
//!
//! - `outside_events_are_filtered_and_bad_ones_routed_to_on_error`
//! - `kill_9_mid_stream_and_restart_loses_nothing`
//! - `two_members_split_the_partitions_and_one_takes_over`
//! - `a_broker_that_stops_answering_mid_stream_loses_nothing`

#[path = "kafka_support/broker.rs"]
mod broker;
#[allow(dead_code)]
mod run_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use broker::{python_kafka_or_skip, spawn_client, tansu_or_skip, Broker};
use run_support::client::{free_addr, metric, scrape};
use run_support::process::Dab;
use run_support::{file_lines, poll, write_set};
use serde_json::Value;

/// `In(KIn).FilterType(A).OnError(Bad).Out(KOut)` between two topics, the
/// group given, metrics on `metrics`.
fn relay_set(dir: &Path, brokers: &str, group: &str) {
    write_set(
        dir,
        "relay.NewPipeline().In(KIn).FilterType(A).OnError(Bad).Out(KOut)\n",
        &format!(
            "sources:\n  KIn: {{ kind: kafka, brokers: \"{brokers}\", topic: in, group: {group} }}\n\
             sinks:\n  KOut: {{ kind: kafka, brokers: \"{brokers}\", topic: out }}\n  \
             Bad: {{ kind: file, path: bad.ndjson }}\n"
        ),
    );
}

fn start_relay(dir: &Path, metrics: &str) -> Dab {
    let mut dab = Dab::start(dir, &["run", "t.dab", "--metrics", metrics]);
    dab.wait_for_log(Duration::from_secs(30), "partitions assigned", |l| {
        l.contains("kafka partitions assigned")
    });
    dab
}

fn series(text: &str, s: &str) -> f64 {
    metric(text, s).unwrap_or(0.0)
}

fn delivered(metrics: &str) -> f64 {
    series(&scrape(metrics), "dab_kafka_delivered_total{sink=\"KOut\"}")
}

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number `{key}` in {v}"))
}

/// Counts the output topic with the outside client: every offset of
/// `0..expect` must be there.
fn count_out(python: &Path, brokers: &str, expect: u64) -> Value {
    let range = format!("0:{expect}");
    let v = broker::consume(
        python,
        brokers,
        "out",
        &[
            "--expect",
            &expect.to_string(),
            "--expect-range",
            &range,
            "--idle-ms",
            "1500",
            "--timeout-s",
            "90",
        ],
    );
    eprintln!("output topic: {v}");
    v
}

#[test]
fn outside_events_are_filtered_and_bad_ones_routed_to_on_error() {
    let Some((broker, python)) = tansu_and_python(
        "outside_events_are_filtered_and_bad_ones_routed_to_on_error",
        3,
    ) else {
        return;
    };
    let brokers = broker.addr();
    // 20,000 messages, every 50th not JSON: 19,600 events, A and B in turn.
    let p = broker::produce(
        &python,
        &brokers,
        "in",
        &["--count", "20000", "--types", "A,B", "--bad-every", "50"],
    );
    assert_eq!(
        (num(&p, "good"), num(&p, "bad"), num(&p, "errors")),
        (19_600, 400, 0),
        "{p}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    relay_set(dir.path(), &brokers, "relay-1");
    let metrics = free_addr();
    let mut dab = start_relay(dir.path(), &metrics);
    poll(
        Duration::from_secs(60),
        "9,800 A events delivered",
        || (delivered(&metrics) >= 9_800.0).then_some(()),
        || dab.stderr(),
    );
    let bad = poll(
        Duration::from_secs(30),
        "400 undecodable messages in bad.ndjson",
        || {
            let lines = file_lines(&dir.path().join("bad.ndjson"));
            (lines.len() >= 400).then_some(lines)
        },
        String::new,
    );
    let text = scrape(&metrics);
    assert_eq!(
        series(&text, "dab_source_decode_errors_total{source=\"KIn\"}"),
        400.0
    );
    assert_eq!(
        series(
            &text,
            "dab_pipeline_failed_events_total{pipeline=\"relay\"}"
        ),
        400.0,
        "{text}"
    );
    assert_eq!(
        series(&text, "dab_kafka_delivered_total{sink=\"KOut\"}"),
        9_800.0
    );
    dab.terminate();
    assert!(
        dab.wait(Duration::from_secs(30)).success(),
        "{}",
        dab.stderr()
    );

    // The routed copies keep the bytes and say why and where from.
    assert_eq!(bad.len(), 400);
    for l in &bad {
        let v: Value = serde_json::from_str(l).expect("bad.ndjson is NDJSON");
        assert_eq!(v["type"], "dab.undecodable", "{v}");
        assert_eq!(v["message"], "not json {", "{v}");
        let why = v["tags"]["dab.error"].as_str().unwrap_or_default();
        assert!(
            why.starts_with("in[") && why.contains("invalid JSON"),
            "{why}"
        );
    }
    // The outside client reads exactly the A events, once each.
    let out = broker::consume(
        &python,
        &brokers,
        "out",
        &["--expect", "9800", "--timeout-s", "60"],
    );
    assert_eq!(num(&out, "distinct"), 9_800, "{out}");
    assert_eq!(num(&out, "duplicates"), 0, "{out}");
    assert_eq!(num(&out, "undecodable"), 0, "{out}");
    assert_eq!(out["by_type"], serde_json::json!({"A": 9800}), "{out}");
}

#[test]
fn kill_9_mid_stream_and_restart_loses_nothing() {
    let Some((broker, python)) = tansu_and_python("kill_9_mid_stream_and_restart_loses_nothing", 3)
    else {
        return;
    };
    let brokers = broker.addr();
    let total: u64 = 60_000;
    let producer = spawn_client(
        &python,
        "produce",
        &brokers,
        "in",
        &[
            "--count",
            &total.to_string(),
            "--types",
            "A",
            "--rate",
            "20000",
        ],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    relay_set(dir.path(), &brokers, "relay-k");
    let metrics = free_addr();
    let mut dab = start_relay(dir.path(), &metrics);
    poll(
        Duration::from_secs(60),
        "10,000 events delivered before the kill",
        || (delivered(&metrics) >= 10_000.0).then_some(()),
        || dab.stderr(),
    );
    broker::signal(dab.pid(), "KILL");
    let _ = dab.wait(Duration::from_secs(10));

    let metrics2 = free_addr();
    let mut again = start_relay(dir.path(), &metrics2);
    let p = producer.finish(Duration::from_secs(120));
    assert_eq!((num(&p, "produced"), num(&p, "errors")), (total, 0), "{p}");
    let out = count_out(&python, &brokers, total);
    assert_eq!(num(&out, "missing_count"), 0, "{out}");
    assert_eq!(num(&out, "distinct"), total, "{out}");
    // Duplicates come only from events delivered but not yet committed at
    // the kill: at most the auto-commit interval (1 s) at the input rate
    // (20,000/s) plus the batches in flight; report the figure.
    let dups = num(&out, "duplicates");
    eprintln!("kill -9: {dups} duplicates of {total}");
    assert!(
        dups <= 30_000,
        "{dups} duplicates: more than the in-flight window\n{out}"
    );
    again.terminate();
    assert!(
        again.wait(Duration::from_secs(30)).success(),
        "{}",
        again.stderr()
    );
}

/// How a scenario disturbs the group or the broker mid-stream.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// One of two members ends: `TERM` (leaves the group) or `KILL`.
    MemberEnds(&'static str),
    /// The broker stops answering for a while, then comes back.
    BrokerStalls(Duration),
}

/// Two topics on `brokers`; `members` relays in one group; an outside
/// producer of `total` events at 10,000 events/s; `fault` in the middle; then every event
/// must be on the output topic. `stall`/`unstall` pause the broker.
fn relay_through(
    python: &Path,
    brokers: &str,
    members: usize,
    fault: Fault,
    stall: &dyn Fn(bool),
    count: &dyn Fn(&Path, &str, u64) -> Value,
    total: u64,
) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    relay_set(dir.path(), brokers, "relay-group");
    let metrics: Vec<String> = (0..members).map(|_| free_addr()).collect();
    let mut dabs: Vec<Dab> = Vec::new();
    for m in &metrics {
        let mut d = Dab::start(dir.path(), &["run", "t.dab", "--metrics", m]);
        d.wait_for_log(Duration::from_secs(30), "partitions assigned", |l| {
            l.contains("kafka partitions assigned")
        });
        dabs.push(d);
    }
    // After the last join, every member holds part of the partitions.
    let assigned = |d: &Dab| -> Vec<String> {
        d.stderr()
            .lines()
            .filter(|l| l.contains("kafka partitions assigned"))
            .map(str::to_owned)
            .collect()
    };
    let producer = spawn_client(
        python,
        "produce",
        brokers,
        "in",
        &[
            "--count",
            &total.to_string(),
            "--types",
            "A",
            "--rate",
            "10000",
            "--key",
            "offset",
        ],
    );
    poll(
        Duration::from_secs(60),
        "every member delivering",
        || {
            metrics
                .iter()
                .all(|m| delivered(m) >= 1_000.0)
                .then_some(())
        },
        || {
            dabs.iter()
                .map(Dab::stderr)
                .collect::<Vec<_>>()
                .join("\n---\n")
        },
    );
    match fault {
        Fault::MemberEnds(sig) => {
            let mut gone = dabs.pop().expect("a member to end");
            let before = assigned(&dabs[0]).len();
            broker::signal(gone.pid(), sig);
            let _ = gone.wait(Duration::from_secs(30));
            // The survivor is given the partitions of the one that ended.
            poll(
                Duration::from_secs(40),
                "the survivor to take every partition",
                || {
                    let lines = assigned(&dabs[0]);
                    lines[before..]
                        .iter()
                        .any(|l| l.matches("in[").count() == 4)
                        .then_some(())
                },
                || dabs[0].stderr(),
            );
        }
        Fault::BrokerStalls(d) => {
            stall(true);
            std::thread::sleep(d);
            stall(false);
        }
    }
    let p = producer.finish(Duration::from_secs(150));
    assert_eq!((num(&p, "produced"), num(&p, "errors")), (total, 0), "{p}");
    let out = count(python, brokers, total);
    let state = || {
        metrics
            .iter()
            .zip(&dabs)
            .map(|(m, d)| format!("{}\n{}", scrape(m), d.stderr()))
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    assert_eq!(num(&out, "missing_count"), 0, "{out}\n{}", state());
    assert_eq!(num(&out, "distinct"), total, "{out}");
    eprintln!(
        "{fault:?}: {} duplicates of {total}",
        num(&out, "duplicates")
    );
    for mut d in dabs {
        assert!(d.running(), "dab must ride it out: {}", d.stderr());
        d.terminate();
        assert!(d.wait(Duration::from_secs(30)).success(), "{}", d.stderr());
    }
    out
}

/// A broker with topics `in` (`partitions`) and `out` (3), and the
/// outside client's Python; `None` (a loud skip) without them.
fn tansu_and_python(test: &str, partitions: u32) -> Option<(Broker, PathBuf)> {
    let (Some(tansu), Some(python)) = (tansu_or_skip(test), python_kafka_or_skip(test)) else {
        return None;
    };
    let broker = Broker::start(&tansu);
    broker.create_topic("in", partitions);
    broker.create_topic("out", 3);
    Some((broker, python))
}

/// On tansu a member that leaves (SIGTERM: drain, commit, LeaveGroup)
/// hands its partitions to the other. (tansu 0.6 never expires a member
/// that dies without leaving: after a kill -9 its partitions stay assigned
/// to the dead member, for confluent-kafka's consumer as much as for dab's;
/// the kill -9 case runs on librdkafka's mock cluster below.)
#[test]
fn two_members_split_the_partitions_and_one_leaving_hands_them_over() {
    let Some((broker, python)) = tansu_and_python(
        "two_members_split_the_partitions_and_one_leaving_hands_them_over",
        4,
    ) else {
        return;
    };
    relay_through(
        &python,
        &broker.addr(),
        2,
        Fault::MemberEnds("TERM"),
        &|_| {},
        &count_out,
        60_000,
    );
}

/// SIGSTOP of tansu for 4 s: connections stay open and nothing answers,
/// shorter than the 6 s session timeout (tansu 0.6 does not readmit a
/// member whose session expired while it was stopped, whatever the
/// client; the longer outage runs on the mock cluster below).
#[test]
fn a_broker_that_stops_answering_mid_stream_loses_nothing() {
    let Some((broker, python)) =
        tansu_and_python("a_broker_that_stops_answering_mid_stream_loses_nothing", 4)
    else {
        return;
    };
    relay_through(
        &python,
        &broker.addr(),
        1,
        Fault::BrokerStalls(Duration::from_secs(4)),
        &|stop| {
            if stop {
                broker.pause()
            } else {
                broker.resume()
            }
        },
        &count_out,
        60_000,
    );
}

/// librdkafka's mock cluster (in this test process, listening on
/// loopback): a member killed with -9 is expired after the session timeout
/// and the survivor takes its partitions.
#[test]
fn on_the_mock_cluster_a_member_killed_9_is_replaced() {
    let test = "on_the_mock_cluster_a_member_killed_9_is_replaced";
    let Some(python) = python_kafka_or_skip(test) else {
        return;
    };
    let cluster = mock_cluster();
    relay_through(
        &python,
        &cluster.bootstrap_servers(),
        2,
        Fault::MemberEnds("KILL"),
        &|_| {},
        &read_back,
        MOCK_EVENTS,
    );
}

/// The mock cluster's brokers go down for 10 s (longer than the session
/// timeout and far longer than a retry) and come back.
#[test]
fn on_the_mock_cluster_a_broker_down_for_10_s_loses_nothing() {
    let test = "on_the_mock_cluster_a_broker_down_for_10_s_loses_nothing";
    let Some(python) = python_kafka_or_skip(test) else {
        return;
    };
    let cluster = mock_cluster();
    relay_through(
        &python,
        &cluster.bootstrap_servers(),
        1,
        Fault::BrokerStalls(Duration::from_secs(10)),
        &|down| {
            if down {
                cluster.broker_down(-1).expect("broker down");
            } else {
                cluster.broker_up(-1).expect("broker up");
            }
        },
        &read_back,
        MOCK_EVENTS,
    );
}

/// The mock cluster keeps at most 5 MiB per partition and silently drops
/// the oldest messages past that, so its tests move fewer events.
const MOCK_EVENTS: u64 = 20_000;

fn mock_cluster(
) -> rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("in", 4, 1).expect("topic in");
    cluster.create_topic("out", 3, 1).expect("topic out");
    cluster
}

/// Reads the output topic of the mock cluster back in this process, from
/// the beginning of each partition, and summarises
/// it like `client.py consume` does (the Python client's fetches from the
/// mock cluster stall on one partition now and then, which is not what
/// these tests are about).
fn read_back(_python: &Path, brokers: &str, expect: u64) -> Value {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "read-back")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset("out", p, Offset::Beginning)
            .expect("partition");
    }
    c.assign(&tpl).expect("assign");
    // Until every expected event is there and 1.5 s pass quietly, at most
    // 90 s.
    let mut offsets = std::collections::BTreeMap::<u64, u64>::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut quiet_since = std::time::Instant::now();
    while std::time::Instant::now() < deadline {
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            if offsets.len() as u64 >= expect && quiet_since.elapsed() > Duration::from_millis(1500)
            {
                break;
            }
            continue;
        };
        quiet_since = std::time::Instant::now();
        let m = m.expect("message");
        let v: Value = serde_json::from_slice(m.payload().unwrap_or_default()).expect("JSON");
        *offsets
            .entry(v["offset"].as_u64().expect("offset"))
            .or_default() += 1;
    }
    let messages: u64 = offsets.values().sum();
    let distinct = offsets.len() as u64;
    let missing: Vec<u64> = (0..expect).filter(|o| !offsets.contains_key(o)).collect();
    serde_json::json!({
        "messages": messages,
        "distinct": distinct,
        "duplicates": messages - distinct,
        "missing_count": missing.len(),
        "missing": &missing[..missing.len().min(20)],
    })
}
