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
//! - `a_batch_failing_downstream_is_sent_again_until_the_downstream_is_back`
//! - `exhausted_redeliveries_go_to_on_error_or_are_counted_and_commits_move_on`
//! - `a_broker_restart_with_sigterm_and_sigkill_loses_nothing`
//! - `switching_a_kafka_queue_to_memory_is_refused_and_nothing_is_lost`
//! - `a_kafka_source_renames_reserved_names_unless_kept_and_a_kafka_queue_keeps_them`
//!
//! A missing tansu or Python client fails the test (see
//! `kafka_support/broker.rs`); nothing here passes by skipping.

#[path = "kafka_support/broker.rs"]
mod broker;
#[allow(dead_code)]
mod run_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use broker::{python_kafka, spawn_client, tansu, Broker};
use run_support::client::{free_addr, metric, scrape, wait_metrics, wait_tcp};
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
    let (broker, python) = tansu_and_python(3);
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

/// The input rate of the kill -9 test, events/s. dab keeps up with it
/// (it starts first and moves hundreds of thousands of events/s), so it
/// reads at this rate.
const KILL_RATE: u64 = 5_000;
/// librdkafka commits the stored offsets every `auto.commit.interval.ms`.
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// The in-flight window, as time: from reading an event to its offset
/// being stored (the pipeline hop, the Kafka sink's delivery report with
/// `acks=all` on loopback, the acknowledgement), plus the commit's round
/// trip. Each is milliseconds on loopback (the produce latency histogram,
/// `dab_kafka_produce_latency_seconds`, is printed below); 1 s is the
/// allowance.
const IN_FLIGHT: Duration = Duration::from_secs(1);

#[test]
fn kill_9_mid_stream_and_restart_loses_nothing() {
    let (broker, python) = tansu_and_python(3);
    let brokers = broker.addr();
    let total: u64 = 40_000;
    let dir = tempfile::tempdir().expect("tempdir");
    relay_set(dir.path(), &brokers, "relay-k");
    let metrics = free_addr();
    let mut dab = start_relay(dir.path(), &metrics);
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
            &KILL_RATE.to_string(),
        ],
    );
    poll(
        Duration::from_secs(60),
        "10,000 events delivered before the kill",
        || (delivered(&metrics) >= 10_000.0).then_some(()),
        || dab.stderr(),
    );
    let text = scrape(&metrics);
    eprintln!(
        "produce latency before the kill: {} s over {} deliveries",
        series(
            &text,
            "dab_kafka_produce_latency_seconds_sum{sink=\"KOut\"}"
        ),
        series(
            &text,
            "dab_kafka_produce_latency_seconds_count{sink=\"KOut\"}"
        )
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
    // Duplicates are the events written to `out` whose offsets were not
    // committed at the kill: those acknowledged since the last auto-commit
    // (at most COMMIT_INTERVAL of input) and those in flight (read, maybe
    // written, not yet acknowledged and committed: at most IN_FLIGHT of
    // input). dab reads at the input rate, so at most
    // 5,000/s x (1 s + 1 s) = 10,000 events, a quarter of the input.
    let bound = KILL_RATE * (COMMIT_INTERVAL + IN_FLIGHT).as_secs();
    let dups = num(&out, "duplicates");
    eprintln!("kill -9: {dups} duplicates of {total} (bound {bound})");
    assert!(
        dups <= bound,
        "{dups} duplicates: more than the commit interval and the in-flight window allow ({bound})\n{out}"
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
/// outside client's Python; a missing one fails the test.
fn tansu_and_python(partitions: u32) -> (Broker, PathBuf) {
    let python = python_kafka();
    let broker = Broker::start(&tansu());
    broker.create_topic("in", partitions);
    broker.create_topic("out", 3);
    (broker, python)
}

/// On tansu a member that leaves (SIGTERM: drain, commit, LeaveGroup)
/// hands its partitions to the other. (tansu 0.6 never expires a member
/// that dies without leaving: after a kill -9 its partitions stay assigned
/// to the dead member, for confluent-kafka's consumer as much as for dab's;
/// the kill -9 case runs on librdkafka's mock cluster below.)
#[test]
fn two_members_split_the_partitions_and_one_leaving_hands_them_over() {
    let (broker, python) = tansu_and_python(4);
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
    let (broker, python) = tansu_and_python(4);
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
    let python = python_kafka();
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
    let python = python_kafka();
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

/// The group's committed offsets of `topic`, from the outside client
/// (`client.py committed`): `{"committed": {..}, "total": N}`.
fn committed(python: &Path, brokers: &str, topic: &str, group: &str) -> Value {
    spawn_client(python, "committed", brokers, topic, &["--group", group])
        .finish(broker::CLIENT_LIMIT)
}

/// Polls until the group's commits of `topic` add up to `total`, its
/// message count (offsets start at 0): everything is committed.
fn wait_committed(
    python: &Path,
    brokers: &str,
    topic: &str,
    group: &str,
    total: u64,
    dab: &Dab,
) -> Value {
    poll(
        Duration::from_secs(60),
        "the group's commits to reach the end of the topic",
        || {
            let c = committed(python, brokers, topic, group);
            (c["total"].as_u64() == Some(total)).then_some(c)
        },
        || {
            format!(
                "{}\n{}",
                committed(python, brokers, topic, group),
                dab.stderr()
            )
        },
    )
}

/// A memory queue `Q` between two services, run with `--service ingest`:
/// `Q` has no reader in this process, so every batch the Kafka source
/// hands on comes back failed, as from any downstream that is gone.
fn ingest_set(dir: &Path, brokers: &str, ingest: &str, work_service: &str, sources: &str) {
    write_set(
        dir,
        &format!("{ingest}{work_service}.NewPipeline(\"work\").In(Q).Out(Done)\n"),
        &format!(
            "sources:\n{sources}\
             queues:\n  Q: {{ kind: memory }}\n\
             sinks:\n  Done: {{ kind: file, path: done.ndjson }}\n  \
             Bad: {{ kind: file, path: bad.ndjson }}\n"
        )
        .replace("BROKERS", brokers),
    );
}

/// The `offset` field of each NDJSON line (the producer's sequence).
fn seqs(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("NDJSON");
            v["offset"].as_u64().expect("offset")
        })
        .collect()
}

#[test]
fn a_batch_failing_downstream_is_sent_again_until_the_downstream_is_back() {
    let (broker, python) = tansu_and_python(3);
    let brokers = broker.addr();
    let total: u64 = 5_000;
    let p = broker::produce(&python, &brokers, "in", &["--count", "5000"]);
    assert_eq!((num(&p, "produced"), num(&p, "errors")), (total, 0), "{p}");
    let dir = tempfile::tempdir().expect("tempdir");
    let sources = "  KIn: { kind: kafka, brokers: \"BROKERS\", topic: in, group: redeliver, max_redeliveries: 100 }\n";
    let ingest = "ingest.NewPipeline().In(KIn).Out(Q)\n";
    // `work` runs in another process: nothing here reads Q.
    ingest_set(dir.path(), &brokers, ingest, "work", sources);
    let metrics = free_addr();
    let mut dab = Dab::start(
        dir.path(),
        &["run", "t.dab", "--service", "ingest", "--metrics", &metrics],
    );
    dab.wait_for_log(Duration::from_secs(30), "partitions assigned", |l| {
        l.contains("kafka partitions assigned")
    });
    let m = |name: &str| series(&scrape(&metrics), &format!("{name}{{source=\"KIn\"}}"));
    poll(
        Duration::from_secs(60),
        "failed batches sent again",
        || (m("dab_kafka_redelivered_batches_total") >= 3.0).then_some(()),
        || format!("{}\n{}", scrape(&metrics), dab.stderr()),
    );
    assert!(
        !dir.path().join("done.ndjson").exists()
            || file_lines(&dir.path().join("done.ndjson")).is_empty()
    );
    let c = committed(&python, &brokers, "in", "redeliver");
    assert_eq!(
        c["total"].as_u64(),
        Some(0),
        "nothing committed while failing: {c}"
    );
    // The downstream comes back: `work` moves into this process's service.
    ingest_set(dir.path(), &brokers, ingest, "ingest", sources);
    broker::signal(dab.pid(), "HUP");
    let done = poll(
        Duration::from_secs(60),
        "every event in done.ndjson",
        || {
            let lines = file_lines(&dir.path().join("done.ndjson"));
            (lines.len() as u64 >= total).then_some(lines)
        },
        || format!("{}\n{}", scrape(&metrics), dab.stderr()),
    );
    wait_committed(&python, &brokers, "in", "redeliver", total, &dab);
    // Each event exactly once: a failed batch never reached the file.
    let mut got = seqs(&done);
    got.sort_unstable();
    assert_eq!(got, (0..total).collect::<Vec<u64>>());
    let text = scrape(&metrics);
    let failed = series(&text, "dab_kafka_failed_batches_total{source=\"KIn\"}");
    let again = series(&text, "dab_kafka_redelivered_batches_total{source=\"KIn\"}");
    assert!(failed >= 3.0, "{text}");
    // Every failure was followed by a redelivery (none given up on).
    assert_eq!(failed, again, "{text}");
    assert_eq!(
        series(&text, "dab_kafka_exhausted_events_total{source=\"KIn\"}"),
        0.0
    );
    dab.terminate();
    assert!(
        dab.wait(Duration::from_secs(30)).success(),
        "{}",
        dab.stderr()
    );
}

#[test]
fn exhausted_redeliveries_go_to_on_error_or_are_counted_and_commits_move_on() {
    let (broker, python) = tansu_and_python(3);
    let brokers = broker.addr();
    let total: u64 = 3_000;
    let p = broker::produce(&python, &brokers, "in", &["--count", "3000"]);
    assert_eq!((num(&p, "produced"), num(&p, "errors")), (total, 0), "{p}");
    let dir = tempfile::tempdir().expect("tempdir");
    // Two readers of `in`, each its own group: one with OnError and one
    // redelivery, one without OnError and none.
    let sources = "  KIn: { kind: kafka, brokers: \"BROKERS\", topic: in, group: g-onerror, max_redeliveries: 1 }\n  \
                   KIn2: { kind: kafka, brokers: \"BROKERS\", topic: in, group: g-drop, max_redeliveries: 0 }\n";
    let ingest = "ingest.NewPipeline().In(KIn).OnError(Bad).Out(Q)\n\
                  ingest.NewPipeline(\"plain\").In(KIn2).Out(Q)\n";
    ingest_set(dir.path(), &brokers, ingest, "work", sources);
    let metrics = free_addr();
    let mut dab = Dab::start(
        dir.path(),
        &["run", "t.dab", "--service", "ingest", "--metrics", &metrics],
    );
    let bad = poll(
        Duration::from_secs(90),
        "every event in bad.ndjson",
        || {
            let lines = file_lines(&dir.path().join("bad.ndjson"));
            (lines.len() as u64 >= total).then_some(lines)
        },
        || format!("{}\n{}", scrape(&metrics), dab.stderr()),
    );
    // Commits move on past what was given up on, for both groups.
    wait_committed(&python, &brokers, "in", "g-onerror", total, &dab);
    wait_committed(&python, &brokers, "in", "g-drop", total, &dab);
    let mut got = seqs(&bad);
    got.sort_unstable();
    assert_eq!(
        got,
        (0..total).collect::<Vec<u64>>(),
        "each event once in bad.ndjson"
    );
    for l in &bad {
        let v: Value = serde_json::from_str(l).expect("NDJSON");
        let why = v["tags"]["dab.error"].as_str().unwrap_or_default();
        assert!(
            why.starts_with("in[")
                && why.ends_with(": not delivered after 2 attempts (max_redeliveries 1)"),
            "{why}"
        );
        assert_eq!(v["type"], "A", "the event as it was read: {v}");
    }
    let text = poll(
        Duration::from_secs(10),
        "the drop count",
        || {
            let t = scrape(&metrics);
            (series(
                &t,
                "dab_pipeline_dropped_total{pipeline=\"ingest/plain\",reason=\"retries_exhausted\"}",
            ) >= total as f64)
                .then_some(t)
        },
        || scrape(&metrics),
    );
    let s = |k: &str| series(&text, k);
    assert_eq!(
        s("dab_pipeline_dropped_total{pipeline=\"ingest/plain\",reason=\"retries_exhausted\"}"),
        total as f64
    );
    assert_eq!(
        s("dab_pipeline_dropped_total{pipeline=\"ingest\",reason=\"retries_exhausted\"}"),
        0.0
    );
    assert_eq!(
        s("dab_kafka_exhausted_events_total{source=\"KIn\"}"),
        total as f64
    );
    assert_eq!(
        s("dab_kafka_exhausted_events_total{source=\"KIn2\"}"),
        total as f64
    );
    // KIn: every batch failed twice (read, sent again once); KIn2: once.
    let (f1, r1) = (
        s("dab_kafka_failed_batches_total{source=\"KIn\"}"),
        s("dab_kafka_redelivered_batches_total{source=\"KIn\"}"),
    );
    assert!(r1 >= 1.0 && f1 == 2.0 * r1, "{text}");
    assert_eq!(
        s("dab_kafka_redelivered_batches_total{source=\"KIn2\"}"),
        0.0
    );
    // Both pipelines took their given-up batches: none was lost on the way.
    for src in ["KIn", "KIn2"] {
        assert_eq!(
            metric(
                &text,
                &format!(
                    "dab_kafka_source_dropped_events_total{{source=\"{src}\",reason=\"retries_exhausted\"}}"
                )
            ),
            Some(0.0),
            "{text}"
        );
    }
    assert!(
        !dir.path().join("done.ndjson").exists()
            || file_lines(&dir.path().join("done.ndjson")).is_empty()
    );
    dab.terminate();
    assert!(
        dab.wait(Duration::from_secs(30)).success(),
        "{}",
        dab.stderr()
    );
}

/// tansu with `sqlite://` storage, killed mid-stream with SIGKILL twice,
/// and started again on the same port each time, while
/// an outside producer feeds `in` and dab relays `in` to `out` (a Kafka
/// source and a Kafka sink): every event the broker acknowledged to the
/// producer reaches `out`.
#[test]
fn a_broker_killed_and_restarted_twice_loses_nothing() {
    let python = python_kafka();
    let mut broker = Broker::start_with_storage(&tansu(), broker::SQLITE);
    broker.create_topic("in", 3);
    broker.create_topic("out", 3);
    let brokers = broker.addr();
    let total: u64 = 30_000;
    let dir = tempfile::tempdir().expect("tempdir");
    relay_set(dir.path(), &brokers, "relay-restart");
    let metrics = free_addr();
    let mut dab = start_relay(dir.path(), &metrics);
    // Not idempotent, and sending again what failed: the outside producer
    // is not what is under test. tansu 0.6 answers produce requests with an
    // error ("Unknown broker error") between SIGTERM and its exit, which
    // librdkafka does not retry; sent again, such a message may only be
    // duplicated, never lost.
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
            "2500",
            "--no-idempotence",
            "--resend-failed",
        ],
    );
    let mut downs = Vec::new();
    // SIGTERM is not in this loop: tansu 0.6 panics in its storage task on
    // a graceful stop and, after that restart, on every idempotent
    // produce (docs/decisions.md); the test then fails on the broker, not
    // on dab, in about half the runs.
    for (sig, after) in [("KILL", 4_000.0), ("KILL", 14_000.0)] {
        poll(
            Duration::from_secs(90),
            "events delivered before the broker stops",
            || (delivered(&metrics) >= after).then_some(()),
            || {
                let log = broker.log();
                // A known tansu 0.6 bug (docs/decisions.md): after a restart
                // its SQLite engine can panic on an idempotent producer's
                // produce request, so dab's producer never gets through.
                let known = if log.contains("more or less than one row") {
                    "tansu panicked in idempotent_message_check (\"more or less than one row\") \
                     after the restart: the broker bug in docs/decisions.md, not dab's\n"
                } else {
                    ""
                };
                format!("{known}{}\n{}\n{log}", scrape(&metrics), dab.stderr())
            },
        );
        let t0 = std::time::Instant::now();
        let status = broker.stop(sig, Duration::from_secs(30));
        let exited_after = t0.elapsed();
        std::thread::sleep(Duration::from_secs(2));
        broker.start_again();
        downs.push(format!(
            "SIG{sig}: {status} after {exited_after:?}, ready again {:?} after its start",
            broker.ready_after()
        ));
    }
    let p = producer.finish(Duration::from_secs(150));
    eprintln!("producer: {p}");
    assert_eq!((num(&p, "produced"), num(&p, "pending")), (total, 0), "{p}");
    let out = count_out(&python, &brokers, total);
    eprintln!(
        "broker restarts {downs:?}: {} duplicates of {total}",
        num(&out, "duplicates")
    );
    let text = scrape(&metrics);
    let show: Vec<String> = text
        .lines()
        .filter(|l| {
            [
                "dab_kafka_consumer_errors_total",
                "dab_kafka_delivery_errors_total",
                "dab_kafka_resent_total",
                "dab_kafka_producer_restarts_total",
                "dab_kafka_failed_batches_total",
                "dab_sink_errors_total",
            ]
            .iter()
            .any(|m| l.starts_with(m))
        })
        .map(str::to_owned)
        .collect();
    eprintln!("dab through the restarts:\n{}", show.join("\n"));
    // The restarts reached dab: its consumer saw the broker go away.
    assert!(
        series(&text, "dab_kafka_consumer_errors_total{source=\"KIn\"}") > 0.0,
        "{text}"
    );
    assert_eq!(
        num(&out, "missing_count"),
        0,
        "{out}\n{}\n{}\n{}",
        scrape(&metrics),
        dab.stderr(),
        broker.log()
    );
    assert_eq!(num(&out, "distinct"), total, "{out}");
    assert!(dab.running(), "dab must ride it out: {}", dab.stderr());
    dab.terminate();
    assert!(
        dab.wait(Duration::from_secs(30)).success(),
        "{}",
        dab.stderr()
    );
}

/// A running set whose queue `Q` is a Kafka topic: binding `Q` to memory
/// instead is refused by the reload (E019, at the binding), the running set
/// goes on through Kafka, and every event sent before and after the edit
/// reaches the sink once.
#[test]
fn switching_a_kafka_queue_to_memory_is_refused_and_nothing_is_lost() {
    let broker = Broker::start(&tansu());
    broker.create_topic("q", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_addr();
    let kafka = format!(
        "sources:\n  TcpIn: {{ kind: tcp, listen: \"{listen}\", framing: ndjson }}\n\
         queues:\n  Q: {{ kind: kafka, brokers: \"{}\", topic: q }}\n\
         sinks:\n  Done: {{ kind: file, path: done.ndjson }}\n",
        broker.addr()
    );
    let memory = kafka.replace(
        &format!(
            "Q: {{ kind: kafka, brokers: \"{}\", topic: q }}",
            broker.addr()
        ),
        "Q: { kind: memory }",
    );
    assert_ne!(kafka, memory);
    write_set(
        dir.path(),
        "a.NewPipeline().In(TcpIn).Out(Q)\nb.NewPipeline().In(Q).Out(Done)\n",
        &kafka,
    );
    let metrics = free_addr();
    let mut dab = Dab::start(
        dir.path(),
        &["run", "t.dab", "--watch", "--metrics", &metrics],
    );
    dab.wait_for_log(Duration::from_secs(30), "partitions assigned", |l| {
        l.contains("kafka partitions assigned")
    });
    dab.wait_for_log(Duration::from_secs(30), "the watcher", |l| {
        l.contains("watching the blueprint set for changes")
    });
    wait_tcp(&listen, Duration::from_secs(30), || dab.stderr());
    let send = |range: std::ops::Range<u64>| {
        use std::io::Write as _;
        let mut conn = std::net::TcpStream::connect(&listen).expect("connect");
        let text: String = range
            .map(|i| format!("{{\"type\":\"A\",\"host\":\"h\",\"pid\":1,\"offset\":{i},\"message\":\"m{i}\"}}\n"))
            .collect();
        conn.write_all(text.as_bytes()).expect("write");
    };
    let done = "dab_sink_events_total{sink=\"Done\"}";
    send(0..20);
    wait_metrics(&metrics, &[(done, 20.0)], Duration::from_secs(60));

    let staged = dir.path().join(".dab.yaml.new");
    std::fs::write(&staged, &memory).expect("write");
    std::fs::rename(&staged, dir.path().join("dab.yaml")).expect("rename");
    let line = dab.wait_for_log(Duration::from_secs(30), "the refusal", |l| {
        l.contains("error[E019]: queue `Q` would switch from Kafka to memory in a running process")
    });
    assert!(line.contains("E019"), "{line}");
    dab.wait_for_log(Duration::from_secs(30), "reload refused", |l| {
        l.contains("reload refused")
    });
    assert!(dab.stderr().contains("dab.yaml:4:3"), "{}", dab.stderr());
    send(20..40);
    wait_metrics(
        &metrics,
        &[
            (done, 40.0),
            ("dab_reloads_total", 0.0),
            ("dab_reload_failures_total", 1.0),
        ],
        Duration::from_secs(60),
    );
    dab.terminate();
    let status = dab.wait(Duration::from_secs(60));
    assert!(status.success(), "{status}; stderr:\n{}", dab.stderr());
    assert_eq!(
        seqs(&file_lines(&dir.path().join("done.ndjson"))),
        (0..40).collect::<Vec<u64>>(),
        "every event once, in order (one partition)"
    );
}

/// Messages from outside that claim DAB's reserved names (`dab.*` types)
/// are renamed `dab.untrusted.*` by a Kafka source and counted; a source
/// bound with `reserved_names: keep` keeps them, and a queue bound to
/// Kafka keeps the `dab.sample_rate` tag DAB itself wrote.
#[test]
fn a_kafka_source_renames_reserved_names_unless_kept_and_a_kafka_queue_keeps_them() {
    let (broker, python) = tansu_and_python(1);
    let brokers = broker.addr();
    broker.create_topic("q", 1);
    let p = broker::produce(
        &python,
        &brokers,
        "in",
        &["--count", "1000", "--types", "A,dab.sample"],
    );
    assert_eq!((num(&p, "good"), num(&p, "errors")), (1_000, 0), "{p}");

    let dir = tempfile::tempdir().expect("tempdir");
    write_set(
        dir.path(),
        "renamed.NewPipeline().In(KIn).Out(Renamed)\n\
         kept.NewPipeline().In(KKeep).Out(Kept)\n\
         sampled.NewPipeline().In(KSample).FilterType(A).WithSampleRate(2).Out(Q)\n\
         queued.NewPipeline().In(Q).Out(Queued)\n",
        &format!(
            "sources:\n  \
             KIn: {{ kind: kafka, brokers: \"{brokers}\", topic: in, group: g-renamed }}\n  \
             KKeep: {{ kind: kafka, brokers: \"{brokers}\", topic: in, group: g-kept, reserved_names: keep }}\n  \
             KSample: {{ kind: kafka, brokers: \"{brokers}\", topic: in, group: g-sampled }}\n\
             queues:\n  Q: {{ kind: kafka, brokers: \"{brokers}\", topic: q }}\n\
             sinks:\n  \
             Renamed: {{ kind: file, path: renamed.ndjson }}\n  \
             Kept: {{ kind: file, path: kept.ndjson }}\n  \
             Queued: {{ kind: file, path: queued.ndjson }}\n"
        ),
    );
    let metrics = free_addr();
    let mut dab = Dab::start(dir.path(), &["run", "t.dab", "--metrics", &metrics]);
    let lines = |file: &str, n: usize| {
        poll(
            Duration::from_secs(60),
            &format!("{n} lines in {file}"),
            || {
                let lines = file_lines(&dir.path().join(file));
                (lines.len() >= n).then_some(lines)
            },
            || dab.stderr(),
        )
    };
    let types = |lines: &[String]| {
        let mut by_type = std::collections::BTreeMap::<String, usize>::new();
        for l in lines {
            let v: Value = serde_json::from_str(l).expect("NDJSON");
            *by_type
                .entry(v["type"].as_str().unwrap_or_default().to_owned())
                .or_default() += 1;
        }
        by_type
    };
    let renamed = lines("renamed.ndjson", 1_000);
    let kept = lines("kept.ndjson", 1_000);
    // Sampling is random: about 250 of the 500 A events pass; a hundred
    // are enough to see the tag.
    let queued = lines("queued.ndjson", 100);
    let text = scrape(&metrics);
    dab.terminate();
    assert!(
        dab.wait(Duration::from_secs(30)).success(),
        "{}",
        dab.stderr()
    );

    assert_eq!(
        types(&renamed),
        [
            ("A".to_owned(), 500),
            ("dab.untrusted.sample".to_owned(), 500)
        ]
        .into(),
    );
    assert_eq!(
        types(&kept),
        [("A".to_owned(), 500), ("dab.sample".to_owned(), 500)].into(),
    );
    assert_eq!(
        series(&text, "dab_source_reserved_names_total{source=\"KIn\"}"),
        500.0,
        "{text}"
    );
    assert_eq!(
        series(&text, "dab_source_reserved_names_total{source=\"KKeep\"}"),
        0.0,
        "{text}"
    );
    // Each sampled event read back from the queue carries the rate DAB
    // recorded, under its own name.
    for l in &queued {
        let v: Value = serde_json::from_str(l).expect("NDJSON");
        assert_eq!(v["tags"]["dab.sample_rate"], "2", "{v}");
        assert!(v["tags"].get("dab.untrusted.sample_rate").is_none(), "{v}");
    }
}

/// Now in RFC 3339 with milliseconds, UTC.
fn now_rfc3339() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis();
    let out = std::process::Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("@{}.{:03}", ms / 1000, ms % 1000),
            "+%Y-%m-%dT%H:%M:%S.%3NZ",
        ])
        .output()
        .expect("date");
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// Every file under `dir` (relative path, bytes), sorted.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("prefix").display().to_string();
                out.push((rel, std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

/// `dab backfill` over a past time range: messages produced before and
/// after it are left out, every message in it lands in Parquet exactly
/// once (the offsets, read back with pyarrow), and a second run over the
/// same range leaves byte-identical files.
#[test]
fn backfill_writes_a_time_range_once_and_again_leaves_identical_files() {
    let (broker, python) = tansu_and_python(3);
    let brokers = broker.addr();
    let produce = |start: u64, count: u64| {
        let p = broker::produce(
            &python,
            &brokers,
            "in",
            &[
                "--count",
                &count.to_string(),
                "--start",
                &start.to_string(),
                "--key",
                "offset",
                "--json-payload",
            ],
        );
        assert_eq!((num(&p, "produced"), num(&p, "errors")), (count, 0), "{p}");
    };
    produce(0, 1_000);
    std::thread::sleep(Duration::from_millis(1_500));
    let from = now_rfc3339();
    std::thread::sleep(Duration::from_millis(100));
    produce(1_000, 2_000);
    std::thread::sleep(Duration::from_millis(100));
    let to = now_rfc3339();
    std::thread::sleep(Duration::from_millis(1_500));
    produce(3_000, 500);

    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("warehouse");
    write_set(
        dir.path(),
        "archive.NewPipeline().In(KIn).Out(Warehouse)\n",
        &format!(
            "sources:\n  KIn: {{ kind: kafka, brokers: \"{brokers}\", topic: in, group: live }}\n\
             types:\n  A: {{ version: 1, fields: {{ n: int64, note: string }} }}\n\
             sinks:\n  Warehouse: {{ kind: parquet, path: {:?}, type: A }}\n",
            out.display().to_string()
        ),
    );
    let backfill = || {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_dab"))
            .current_dir(dir.path())
            .args([
                "backfill",
                "t.dab",
                "--pipeline",
                "archive",
                "--from",
                &from,
                "--to",
                &to,
                "--quiet",
            ])
            .env_remove("RUST_LOG")
            .output()
            .expect("run dab backfill");
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{stderr}");
        stderr
    };
    let first = backfill();
    assert!(first.contains("2000 messages in 3 partitions"), "{first}");
    assert!(first.contains("done, 2000 messages read"), "{first}");
    let read = std::process::Command::new(&python)
        .args([
            "-c",
            "import sys, glob, pyarrow.parquet as pq\n\
             o = []\n\
             for f in glob.glob(sys.argv[1] + '/**/*.parquet', recursive=True):\n    \
                 t = pq.read_table(f, columns=['dab_offset', 'n'])\n    \
                 o += [a for a, b in zip(t['dab_offset'].to_pylist(), t['n'].to_pylist()) if a == b]\n\
             print(len(o), len(set(o)), min(o), max(o))",
        ])
        .arg(&out)
        .output()
        .expect("pyarrow");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&read.stdout).trim(),
        "2000 2000 1000 2999",
        "every message of the range, once, and nothing else"
    );
    let files = tree(&out);
    assert!(!files.is_empty());
    let second = backfill();
    assert!(second.contains("done, 2000 messages read"), "{second}");
    assert!(tree(&out) == files, "the second run changed the files");
    // The live group was never used: a backfill commits nothing.
    drop(broker);
}

/// Kafka's `Utils.murmur2` (the Java client's default partitioner), written
/// here from the Java source's algorithm, independently of librdkafka.
fn java_murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    for c in data.chunks_exact(4) {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = &data[len & !3..];
    if tail.len() == 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The Java producer's partition of a keyed message.
fn java_partition(key: &[u8], partitions: u32) -> u32 {
    (java_murmur2(key) as u32 & 0x7fff_ffff) % partitions
}

/// A Kafka sink with `key:` puts each keyed message in the partition a
/// Java producer would (murmur2 of the key), so consumers and tools that
/// rely on Java's placement (Kafka Streams joins, co-partitioned topics)
/// see the same layout. 60 hosts over 4 partitions, read back with
/// confluent-kafka; every key in exactly its Java partition.
#[test]
fn the_kafka_sink_partitions_keys_like_the_java_client() {
    // Kafka's own test vectors for murmur2 (UtilsTest).
    assert_eq!(java_murmur2(b"21"), -973_932_308);
    assert_eq!(java_murmur2(b"foobar"), -790_332_482);
    assert_eq!(java_murmur2(b"a-little-bit-long-string"), -985_981_536);
    assert_eq!(java_murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
    let (broker, python) = tansu_and_python(1);
    let brokers = broker.addr();
    broker.create_topic("keyed", 4);
    let dir = tempfile::tempdir().expect("tempdir");
    write_set(
        dir.path(),
        "k.NewPipeline().In(Stdin).Out(KOut)\n",
        &format!(
            "sinks:\n  KOut: {{ kind: kafka, brokers: \"{brokers}\", topic: keyed, key: host }}\n"
        ),
    );
    let n = 600u64;
    let input: String = (0..n)
        .map(|i| {
            format!(
                "{{\"type\":\"A\",\"host\":\"host-{}\",\"offset\":{i},\"message\":\"m\"}}\n",
                i % 60
            )
        })
        .collect();
    // stdin in, so dab ends by itself once everything is delivered.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dab"))
        .current_dir(dir.path())
        .args(["run", "t.dab"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start dab");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write stdin");
    }
    let status = poll(
        Duration::from_secs(60),
        "dab to end",
        || child.try_wait().ok().flatten(),
        String::new,
    );
    assert!(status.success(), "dab exited with {status}");
    let got = broker::consume(&python, &brokers, "keyed", &["--expect", &n.to_string()]);
    assert_eq!(num(&got, "messages"), n, "{got}");
    let keys = got["key_partitions"].as_object().expect("key_partitions");
    assert_eq!(keys.len(), 60, "{got}");
    let mut used = std::collections::BTreeSet::new();
    for (key, parts) in keys {
        let want = java_partition(key.as_bytes(), 4);
        assert_eq!(parts, &serde_json::json!([want]), "key {key}");
        used.insert(want);
    }
    assert_eq!(used.len(), 4, "60 keys should reach all 4 partitions");
}
