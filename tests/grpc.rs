//! End-to-end tests of the Murron protocol over gRPC through `dab run`
//! (issue 4): real `dab` processes on 127.0.0.1, real files, Python grpcio
//! and tonic clients, `kill -9` from outside. Each test asserts which
//! events arrived and how many, which answers the clients got, and what
//! the metrics counted. Every wait has a deadline, every loop is bounded,
//! and every child process is killed if a test fails (`Dab`, `Kid`).
//!
//! - `python_grpcio_clients_through_dab_run_land_every_kept_event`: two
//!   Python grpcio clients (the repository's and a mixed-type one) against
//!   `murron_grpc -> FilterType -> file`;
//! - `relay_through_two_dabs_survives_kill_9_of_the_second`: client -> A
//!   -> `SidecarClient` -> B -> file, B killed and restarted mid-stream,
//!   then `dab inspect` on the file;
//! - `reconnect_storm_of_1000_clients_is_served_or_told_to_back_off`;
//! - `bad_input_gets_clear_statuses_is_counted_and_others_are_served`:
//!   corrupt protobuf, oversized messages, missing fields, signatures.

// Events are built field by field, the way other crates must.
#![allow(clippy::field_reassign_with_default)]

mod grpc_support;
#[allow(dead_code)]
mod run_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use dab_api::signature::Signer;
use dab_api::{Event, Text};
use dab_connectors::murron::wire;
use serde_json::{json, Value};
use tonic::Code;

use grpc_support::{
    connect, event, kill9, must_connect, python_with_grpc, read_events, root, runtime, send,
    uid_counts, uid_of, uid_of_json, Jitter, Kid, RssSampler, Uid,
};
use run_support::client::{
    free_addr, metric, must_metric, request, scrape, wait_http_ok, wait_metrics, wait_tcp,
};
use run_support::process::Dab;
use run_support::{poll, write_set};

/// Longest wait for dab to start listening.
const START: Duration = Duration::from_secs(10);
/// Longest wait for a drained dab to exit after SIGTERM.
const EXIT: Duration = Duration::from_secs(20);

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// A path as a double-quoted YAML string.
fn yaml_path(p: &Path) -> String {
    serde_json::to_string(&p.display().to_string()).expect("path as a JSON string")
}

/// Starts `dab run t.dab --metrics ADDR EXTRA...` in `dir` (its `dab.yaml`
/// is found beside `t.dab`) and waits for `/healthz`.
fn start_with_metrics(dir: &Path, extra: &[&str]) -> (Dab, String) {
    let metrics = free_addr();
    let mut args = vec!["run", "t.dab", "--metrics", &metrics];
    args.extend_from_slice(extra);
    let dab = Dab::start(dir, &args);
    wait_http_ok(&metrics, "/healthz", START, || dab.stderr());
    (dab, metrics)
}

fn assert_exit_0(dab: &mut Dab, what: &str) {
    let status = dab.wait(EXIT);
    assert!(
        status.success(),
        "{what} exited with {status}; stderr:\n{}",
        dab.stderr()
    );
}

/// `got == want`, reporting the first difference rather than thousands of
/// lines.
fn assert_same_events(got: &[Value], want: &[Value], what: &str) {
    if let Some(i) = (0..got.len().min(want.len())).find(|&i| got[i] != want[i]) {
        panic!(
            "{what}: event {i} differs:\n got  {}\n want {}",
            got[i], want[i]
        );
    }
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} events, expected {}",
        got.len(),
        want.len()
    );
}

fn events(host: &str, pid: u32, ty: &str, first: u64, n: u64) -> Vec<Event> {
    (first..first + n)
        .map(|o| event(host, pid, ty, o))
        .collect()
}

// 1 ------------------------------------------------------------------------

#[test]
fn python_grpcio_clients_through_dab_run_land_every_kept_event() {
    let test = "python_grpcio_clients_through_dab_run_land_every_kept_event";
    let python = python_with_grpc(test);
    let root = root();
    let dir = tmp();
    let listen = free_addr();
    let out = dir.path().join("out.ndjson");
    write_set(
        dir.path(),
        "ingest.NewPipeline().In(Grpc).FilterType(PyEvent).Out(F)\n",
        &format!(
            "sources:\n  Grpc: {{ kind: murron_grpc, listen: \"{listen}\" }}\n\
             sinks:\n  F: {{ kind: file, path: {} }}\n\
             types:\n  PyEvent: {{}}\n",
            yaml_path(&out)
        ),
    );
    let (mut dab, metrics) = start_with_metrics(dir.path(), &[]);
    wait_tcp(&listen, START, || dab.stderr());

    // Both clients at once: the repository's (every event a PyEvent, binary
    // messages) and the mixed one (one event in four is Noise, UTF-8
    // messages with quotes and a newline, non-ASCII tags).
    let proto_dir = root.join("proto");
    let (unary, streamed, per) = (10u64, 10u64, 50u64);
    let repo_client = Kid::spawn(
        "tests/interop/murron_client.py",
        Command::new(&python)
            .arg(root.join("tests/interop/murron_client.py"))
            .arg("--target")
            .arg(&listen)
            .arg("--proto-dir")
            .arg(&proto_dir)
            .args(["--unary-batches", &unary.to_string()])
            .args(["--stream-batches", &streamed.to_string()])
            .args(["--events", &per.to_string(), "--host", "py-a"]),
    );
    let (m_unary, m_streamed, m_per) = (10u64, 10u64, 40u64);
    let mixed_client = Kid::spawn(
        "tests/grpc_support/mixed_client.py",
        Command::new(&python)
            .arg(root.join("tests/grpc_support/mixed_client.py"))
            .arg("--target")
            .arg(&listen)
            .arg("--proto-dir")
            .arg(&proto_dir)
            .args(["--unary-batches", &m_unary.to_string()])
            .args(["--stream-batches", &m_streamed.to_string()])
            .args(["--events", &m_per.to_string(), "--host", "py-b"]),
    );
    let repo = repo_client.finish(Duration::from_secs(60));
    let mixed = mixed_client.finish(Duration::from_secs(60));
    assert!(
        repo.status.success(),
        "murron_client.py failed ({}): {}\ndab stderr:\n{}",
        repo.status,
        repo.stderr,
        dab.stderr()
    );
    assert!(
        mixed.status.success(),
        "mixed_client.py failed ({}): {}",
        mixed.status,
        mixed.stderr
    );

    // Every Ack came back, counting its batch (the repository's client
    // checks each count itself and exits non-zero otherwise).
    let total_a = unary * per + (0..streamed).map(|i| per - i % 3).sum::<u64>();
    let summary: Value = serde_json::from_str(repo.stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {:?} {}", repo.stdout, repo.stderr));
    assert_eq!(
        summary,
        json!({"sent_events": total_a, "acked_events": total_a,
               "unary_acks": unary, "stream_acks": streamed})
    );
    let acks: Value = serde_json::from_str(mixed.stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {:?} {}", mixed.stdout, mixed.stderr));
    let stream_sizes: Vec<u64> = (0..m_streamed).map(|k| (m_per - k % 5).max(1)).collect();
    assert_eq!(
        acks,
        json!({"unary_acks": vec![m_per; m_unary as usize],
               "stream_acks": stream_sizes, "errors": []}),
        "the mixed client's answers"
    );
    let total_b = m_unary * m_per + stream_sizes.iter().sum::<u64>();

    // The file holds exactly the kept events, each client's in its order.
    let b64 = base64::engine::general_purpose::STANDARD;
    let want_a: Vec<Value> = (0..total_a)
        .map(|o| {
            let mut message = b"\x00\xffpython ".to_vec();
            message.extend_from_slice(o.to_string().as_bytes());
            json!({"timestamp": 1_700_000_000_000_000_000u64 + o, "host": "py-a",
                   "type": "PyEvent", "offset": o, "pid": 4242,
                   "message_b64": b64.encode(&message),
                   "tags": {"client": "grpcio", "seq": o.to_string()}})
        })
        .collect();
    let want_b: Vec<Value> = (0..total_b)
        .filter(|i| i % 4 != 3)
        .map(|i| {
            json!({"timestamp": 1_700_000_000_000_000_000u64 + i, "host": "py-b",
                   "type": "PyEvent", "offset": i, "pid": 77,
                   "message": format!("héllo {i} \"quoted\"\n"),
                   "tags": {"i": i.to_string(), "city": "zürich"}})
        })
        .collect();
    let kept_b = want_b.len() as u64;
    let lines = read_events(&out);
    let of = |host: &str| -> Vec<Value> {
        lines
            .iter()
            .filter(|e| e["host"] == host)
            .cloned()
            .collect()
    };
    let strangers: Vec<&Value> = lines
        .iter()
        .filter(|e| e["host"] != "py-a" && e["host"] != "py-b")
        .collect();
    assert!(strangers.is_empty(), "unexpected events: {strangers:?}");
    assert_same_events(&of("py-a"), &want_a, "py-a (murron_client.py)");
    assert_same_events(&of("py-b"), &want_b, "py-b (mixed_client.py)");

    wait_metrics(
        &metrics,
        &[
            (
                "dab_source_events_total{source=\"Grpc\"}",
                (total_a + total_b) as f64,
            ),
            (
                "dab_pipeline_dropped_total{pipeline=\"ingest\",reason=\"filter\"}",
                (total_b - kept_b) as f64,
            ),
            (
                "dab_sink_events_total{sink=\"F\"}",
                (total_a + kept_b) as f64,
            ),
            ("dab_source_decode_errors_total{source=\"Grpc\"}", 0.0),
            ("dab_source_refused_total{source=\"Grpc\"}", 0.0),
        ],
        Duration::from_secs(5),
    );
    dab.terminate();
    assert_exit_0(&mut dab, "dab run");
    assert_eq!(read_events(&out).len() as u64, total_a + kept_b);
}

// 2 ------------------------------------------------------------------------

/// Relay clients, events per client, events per batch.
const RELAY_CLIENTS: u64 = 4;
const RELAY_PER_CLIENT: u64 = 5_000;
const RELAY_BATCH: u64 = 100;
/// (pid, type) of event `j` of a client: four keys per host, in turn.
const RELAY_KEYS: [(u32, &str); 4] = [(10, "Alpha"), (10, "Beta"), (11, "Alpha"), (11, "Beta")];

/// Event `j` of relay client `c`: its key in turn, the key's next offset.
fn relay_event(c: u64, j: u64) -> Event {
    let (pid, ty) = RELAY_KEYS[(j % 4) as usize];
    event(&format!("relay-{c}"), pid, ty, j / 4)
}

#[derive(Debug, Default)]
struct RelayClient {
    /// Batches sent again after an error answer.
    resent_batches: u64,
    slowest: Duration,
    errors: Vec<String>,
}

#[test]
fn relay_through_two_dabs_survives_kill_9_of_the_second() {
    let dir = tmp();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a_dir).expect("mkdir a");
    std::fs::create_dir_all(&b_dir).expect("mkdir b");
    let (a_listen, b_listen) = (free_addr(), free_addr());
    let out = dir.path().join("relay.ndjson");
    write_set(
        &a_dir,
        "relay.NewPipeline().In(Grpc).Out(SidecarClient)\n",
        &format!(
            "sources:\n  Grpc: {{ kind: murron_grpc, listen: \"{a_listen}\" }}\n\
             sinks:\n  SidecarClient: {{ kind: murron_grpc, endpoint: \"http://{b_listen}\" }}\n"
        ),
    );
    write_set(
        &b_dir,
        "store.NewPipeline().In(Grpc).Out(F)\n",
        &format!(
            "sources:\n  Grpc: {{ kind: murron_grpc, listen: \"{b_listen}\" }}\n\
             sinks:\n  F: {{ kind: file, path: {} }}\n",
            yaml_path(&out)
        ),
    );
    let (mut b, _) = start_with_metrics(&b_dir, &[]);
    wait_tcp(&b_listen, START, || b.stderr());
    let (mut a, a_metrics) = start_with_metrics(&a_dir, &[]);
    wait_tcp(&a_listen, START, || a.stderr());

    let rt = runtime();
    let acked = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..RELAY_CLIENTS)
        .map(|c| {
            let (addr, acked) = (a_listen.clone(), Arc::clone(&acked));
            rt.spawn(async move {
                let mut report = RelayClient::default();
                let mut client = must_connect(&addr).await;
                for first in (0..RELAY_PER_CLIENT).step_by(RELAY_BATCH as usize) {
                    let batch: Vec<Event> = (first..first + RELAY_BATCH)
                        .map(|j| relay_event(c, j))
                        .collect();
                    let batch = wire::Batch::from_events(&batch);
                    // Waits for each Ack; a batch that was not acked is
                    // sent again (at most 5 times).
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        let sent = Instant::now();
                        let answer =
                            send(&mut client, batch.clone(), Duration::from_secs(30)).await;
                        report.slowest = report.slowest.max(sent.elapsed());
                        match answer {
                            Ok(ack) => {
                                assert_eq!(ack.accepted, RELAY_BATCH, "client {c} batch {first}");
                                acked.fetch_add(RELAY_BATCH, Ordering::SeqCst);
                                break;
                            }
                            Err(status) if tries < 5 => {
                                report.errors.push(format!(
                                    "{:?}: {}",
                                    status.code(),
                                    status.message()
                                ));
                                report.resent_batches += 1;
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            Err(status) => {
                                panic!("client {c}: batch at {first} never acked: {status:?}")
                            }
                        }
                    }
                }
                report
            })
        })
        .collect();

    // Mid-stream: B dies without a word, and comes back a second later on
    // the same port, appending to the same file.
    let total = RELAY_CLIENTS * RELAY_PER_CLIENT;
    poll(
        Duration::from_secs(30),
        "a third of the events acked",
        || (acked.load(Ordering::SeqCst) >= total / 3).then_some(()),
        || format!("{} acked; A:\n{}", acked.load(Ordering::SeqCst), a.stderr()),
    );
    let killed_at = acked.load(Ordering::SeqCst);
    let status = kill9(&mut b);
    assert!(!status.success(), "B was killed: {status}");
    let lines_at_kill = read_events(&out).len();
    std::thread::sleep(Duration::from_secs(1));
    let (mut b2, b2_metrics) = start_with_metrics(&b_dir, &[]);
    let restarted = Instant::now();
    wait_tcp(&b_listen, START, || b2.stderr());

    let reports: Vec<RelayClient> = rt.block_on(async {
        let mut reports = Vec::new();
        for client in clients {
            let joined = tokio::time::timeout(Duration::from_secs(60), client)
                .await
                .expect("relay clients finish in time");
            reports.push(joined.expect("relay client"));
        }
        reports
    });
    let done_after_restart = restarted.elapsed();
    assert_eq!(acked.load(Ordering::SeqCst), total);
    let resent: u64 = reports.iter().map(|r| r.resent_batches).sum();
    let slowest = reports.iter().map(|r| r.slowest).max().unwrap_or_default();

    // Every ack from A came after B had the events, so A has nothing
    // left: no failed events, and the file stops growing.
    let a_text = wait_metrics(
        &a_metrics,
        &[("dab_sink_failed_events_total{sink=\"SidecarClient\"}", 0.0)],
        Duration::from_secs(5),
    );
    let relayed = must_metric(&a_text, "dab_sink_events_total{sink=\"SidecarClient\"}");
    let a_errors = must_metric(&a_text, "dab_sink_errors_total{sink=\"SidecarClient\"}");
    assert_eq!(
        relayed as u64,
        total + resent * RELAY_BATCH,
        "events A's sink wrote"
    );
    let last = std::cell::Cell::new(usize::MAX);
    poll(
        Duration::from_secs(10),
        "B's file to stop growing",
        || {
            let n = read_events(&out).len();
            let stable = n == last.get() && n as u64 >= total;
            last.set(n);
            std::thread::sleep(Duration::from_millis(200));
            stable.then_some(n)
        },
        || format!("{} lines", last.get()),
    );
    let b2_events = must_metric(
        &scrape(&b2_metrics),
        "dab_source_events_total{source=\"Grpc\"}",
    );
    a.terminate();
    assert_exit_0(&mut a, "A");
    b2.terminate();
    assert_exit_0(&mut b2, "B (restarted)");

    // The file: exactly the sent UIDs; duplicates only from the batches in
    // flight when B died (each client has one batch in flight at a time,
    // plus what it sent again).
    let lines = read_events(&out);
    let counts = uid_counts(&lines);
    let sent: BTreeSet<Uid> = (0..RELAY_CLIENTS)
        .flat_map(|c| (0..RELAY_PER_CLIENT).map(move |j| uid_of(&relay_event(c, j))))
        .collect();
    let got: BTreeSet<Uid> = counts.keys().cloned().collect();
    let missing: Vec<&Uid> = sent.difference(&got).take(5).collect();
    let extra: Vec<&Uid> = got.difference(&sent).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} missing (first {missing:?}), {} not sent (first {extra:?})",
        sent.difference(&got).count(),
        got.difference(&sent).count()
    );
    let duplicates = lines.len() as u64 - total;
    let window = RELAY_CLIENTS * RELAY_BATCH + resent * RELAY_BATCH;
    // Order is kept per stream: in file order, the first copies of each
    // key's events are its offsets 0, 1, 2, ... (a re-sent batch may only
    // repeat what came before).
    let mut next: BTreeMap<(String, u32, String), u64> = BTreeMap::new();
    for (i, e) in lines.iter().enumerate() {
        let (host, pid, ty, offset) = uid_of_json(e);
        let want = next.entry((host, pid, ty)).or_insert(0);
        assert!(
            offset <= *want,
            "line {}: offset {offset} before {want} of its key: {e}",
            i + 1
        );
        if offset == *want {
            *want += 1;
        }
    }

    // `dab inspect` agrees: nothing missing for any key, duplicates apart.
    let inspect = Command::new(env!("CARGO_BIN_EXE_dab"))
        .args(["inspect", "--format", "json"])
        .arg(&out)
        .env_remove("RUST_LOG")
        .output()
        .expect("run dab inspect");
    let inspect_err = String::from_utf8_lossy(&inspect.stderr);
    assert!(
        inspect.status.success(),
        "dab inspect failed: {inspect_err}"
    );
    let report: Value = serde_json::from_slice(&inspect.stdout)
        .unwrap_or_else(|e| panic!("dab inspect JSON ({e}): {inspect_err}"));
    let keys = report["keys"].as_array().expect("keys");
    assert_eq!(keys.len() as u64, RELAY_CLIENTS * 4, "{report}");
    let per_key = RELAY_PER_CLIENT / 4;
    let mut dup_by_inspect = 0;
    for k in keys {
        assert_eq!(
            (
                &k["first"],
                &k["last"],
                &k["expected"],
                &k["seen"],
                &k["missing"]
            ),
            (
                &json!(0),
                &json!(per_key - 1),
                &json!(per_key),
                &json!(per_key),
                &json!(0)
            ),
            "{k}"
        );
        assert_eq!(k["score"].as_f64(), Some(100.0), "{k}");
        dup_by_inspect += k["duplicates"].as_u64().expect("duplicates");
    }
    let overall = &report["overall"];
    assert_eq!(overall["missing"], json!(0), "{report}");
    assert_eq!(overall["expected"], json!(total), "{report}");
    assert_eq!(overall["score"].as_f64(), Some(100.0), "{report}");
    assert_eq!(overall["duplicates"], json!(duplicates), "{report}");
    assert_eq!(dup_by_inspect, duplicates, "{report}");

    eprintln!(
        "relay: {total} events; B killed at {killed_at} acked ({lines_at_kill} lines written); \
         clients done {done_after_restart:?} after the restart; slowest ack {slowest:?}; \
         A's sink errors {a_errors}; batches resent by clients {resent} {:?}; \
         duplicates {duplicates} (in-flight window {window}); restarted B took {b2_events}",
        reports
            .iter()
            .flat_map(|r| r.errors.iter())
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(
        killed_at < total && b2_events > 0.0,
        "B was not killed mid-stream: {killed_at} acked before, {b2_events} after"
    );
    assert!(
        duplicates <= window,
        "{duplicates} duplicates, more than the {window} events that can be in flight"
    );
    assert!(a_errors >= 1.0, "A's sink never saw B gone");
}

// 3 ------------------------------------------------------------------------

const STORM_CLIENTS: u64 = 1_000;
const STORM_BATCHES: u64 = 5;
const STORM_EVENTS: u64 = 20;
/// Attempts per batch before a client gives up (it was told to back off).
const STORM_ATTEMPTS: u32 = 40;
/// The RSS the storm must stay under: a debug build idles at about 20 MiB
/// and peaked at about 46 MiB in this storm when the test was written.
const STORM_RSS_LIMIT_KIB: u64 = 128 * 1024;

/// What one storm client was answered.
#[derive(Debug, Default, Clone, Copy)]
struct Answers {
    acked_batches: u64,
    /// `RESOURCE_EXHAUSTED` answers (admission control).
    refused: u64,
    /// `UNAVAILABLE` answers.
    unavailable: u64,
}

#[derive(Debug)]
enum Storm {
    /// Every batch acked.
    Served(Answers),
    /// A batch was refused `STORM_ATTEMPTS` times.
    BackedOff(Answers),
    /// Anything else: a failure of the test.
    Failed(String),
}

#[test]
fn reconnect_storm_of_1000_clients_is_served_or_told_to_back_off() {
    let dir = tmp();
    let listen = free_addr();
    let out = dir.path().join("storm.ndjson");
    write_set(
        dir.path(),
        "storm.NewPipeline().In(Grpc).Out(F)\n",
        &format!(
            "sources:\n  Grpc: {{ kind: murron_grpc, listen: \"{listen}\" }}\n\
             sinks:\n  F: {{ kind: file, path: {}, fsync: false }}\n",
            yaml_path(&out)
        ),
    );
    // Two batches per channel: the source's channel fills at once, so
    // admission control refuses work (RESOURCE_EXHAUSTED).
    let (mut dab, metrics) = start_with_metrics(dir.path(), &["--channel-batches", "2"]);
    wait_tcp(&listen, START, || dab.stderr());
    let rss = RssSampler::start(dab.pid());

    let rt = runtime();
    let acked = Arc::new(std::sync::Mutex::new(Vec::<Uid>::new()));
    let began = Instant::now();
    let outcomes: Vec<Storm> = rt.block_on(async {
        let gate = Arc::new(tokio::sync::Barrier::new(STORM_CLIENTS as usize));
        let tasks: Vec<_> = (0..STORM_CLIENTS)
            .map(|c| {
                let (addr, gate, acked) = (listen.clone(), Arc::clone(&gate), Arc::clone(&acked));
                tokio::spawn(async move { storm_client(c, &addr, &gate, &acked).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for t in tasks {
            let joined = tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("storm clients finish in time");
            outcomes.push(joined.unwrap_or_else(|e| Storm::Failed(format!("task: {e}"))));
        }
        outcomes
    });
    let storm_time = began.elapsed();

    // Still alive and serving.
    assert!(dab.running(), "dab died in the storm:\n{}", dab.stderr());
    let health = request(&metrics, "GET", "/healthz", b"", Duration::from_secs(5))
        .expect("GET /healthz after the storm");
    assert_eq!(health.status, 200, "/healthz after the storm");

    let failed: Vec<&String> = outcomes
        .iter()
        .filter_map(|o| match o {
            Storm::Failed(why) => Some(why),
            _ => None,
        })
        .collect();
    let served = outcomes
        .iter()
        .filter(|o| matches!(o, Storm::Served(_)))
        .count();
    let backed_off = outcomes
        .iter()
        .filter(|o| matches!(o, Storm::BackedOff(_)))
        .count();
    let answers: Vec<Answers> = outcomes
        .iter()
        .filter_map(|o| match o {
            Storm::Served(a) | Storm::BackedOff(a) => Some(*a),
            Storm::Failed(_) => None,
        })
        .collect();
    let acked_batches: u64 = answers.iter().map(|a| a.acked_batches).sum();
    let refusals: u64 = answers.iter().map(|a| a.refused).sum();
    let unavailable: u64 = answers.iter().map(|a| a.unavailable).sum();
    assert!(
        failed.is_empty(),
        "{} clients failed otherwise than by being told to back off, e.g. {:?}",
        failed.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(served + backed_off, STORM_CLIENTS as usize);

    // Every acked event is in the file; nothing was taken from a refused
    // call, so without ambiguous answers the file is exactly the acked set.
    let acked = std::mem::take(&mut *acked.lock().expect("acked lock"));
    let acked_n = acked.len() as u64;
    let text = wait_metrics(
        &metrics,
        &[
            ("dab_sink_events_total{sink=\"F\"}", acked_n as f64),
            ("dab_source_events_total{source=\"Grpc\"}", acked_n as f64),
        ],
        Duration::from_secs(10),
    );
    let refused_metric = must_metric(&text, "dab_source_refused_total{source=\"Grpc\"}");
    assert_eq!(acked_n, acked_batches * STORM_EVENTS);
    let lines = read_events(&out);
    let counts = uid_counts(&lines);
    let acked_set: BTreeSet<Uid> = acked.iter().cloned().collect();
    assert_eq!(acked_set.len() as u64, acked_n, "a UID acked twice");
    let not_delivered = acked_set
        .iter()
        .filter(|u| !counts.contains_key(*u))
        .count();
    assert_eq!(not_delivered, 0, "acked events missing from the file");
    let (max_rss, samples) = rss.stop();
    eprintln!(
        "storm: {STORM_CLIENTS} clients in {storm_time:?}: {served} served, {backed_off} told \
         to back off for good; {refusals} RESOURCE_EXHAUSTED answers \
         (dab_source_refused_total {refused_metric}), {unavailable} UNAVAILABLE; \
         {acked_n} events acked; max RSS {} MiB ({samples} samples)",
        max_rss / 1024
    );
    assert_eq!(
        lines.len() as u64,
        acked_n,
        "file lines vs acked events (unavailable answers: {unavailable})"
    );
    assert!(counts.values().all(|&n| n == 1), "an event written twice");
    // Each RESOURCE_EXHAUSTED a client saw is one refusal dab counted.
    assert_eq!(refused_metric, refusals as f64, "dab_source_refused_total");
    assert!(samples > 0, "no RSS sample");
    assert!(
        max_rss < STORM_RSS_LIMIT_KIB,
        "max RSS {max_rss} KiB over the bound of {STORM_RSS_LIMIT_KIB} KiB"
    );

    dab.terminate();
    assert_exit_0(&mut dab, "dab run");
}

async fn storm_client(
    c: u64,
    addr: &str,
    gate: &tokio::sync::Barrier,
    acked: &std::sync::Mutex<Vec<Uid>>,
) -> Storm {
    let mut jitter = Jitter::new(c + 1);
    // Everyone connects at once.
    gate.wait().await;
    let mut client = None;
    for attempt in 0..10u32 {
        match connect(addr).await {
            Ok(cl) => {
                client = Some(cl);
                break;
            }
            Err(e) if attempt == 9 => return Storm::Failed(format!("connect: {e}")),
            Err(_) => {
                tokio::time::sleep(jitter.scale(Duration::from_millis(100 << attempt.min(4))))
                    .await;
            }
        }
    }
    let Some(mut client) = client else {
        return Storm::Failed("no connection".into());
    };
    let host = format!("storm-{c}");
    let mut answers = Answers::default();
    for b in 0..STORM_BATCHES {
        let events = events(&host, 1, "Storm", b * STORM_EVENTS, STORM_EVENTS);
        let batch = wire::Batch::from_events(&events);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match send(&mut client, batch.clone(), Duration::from_secs(20)).await {
                Ok(ack) if ack.accepted == STORM_EVENTS => {
                    acked
                        .lock()
                        .expect("acked lock")
                        .extend(events.iter().map(uid_of));
                    answers.acked_batches += 1;
                    break;
                }
                Ok(ack) => {
                    return Storm::Failed(format!("acked {} of {STORM_EVENTS}", ack.accepted))
                }
                Err(s) if matches!(s.code(), Code::ResourceExhausted | Code::Unavailable) => {
                    if s.code() == Code::ResourceExhausted {
                        answers.refused += 1;
                    } else {
                        answers.unavailable += 1;
                    }
                    if attempt >= STORM_ATTEMPTS {
                        return Storm::BackedOff(answers);
                    }
                    let base = Duration::from_millis(25 << attempt.min(5));
                    tokio::time::sleep(jitter.scale(base)).await;
                }
                Err(s) => {
                    return Storm::Failed(format!("batch {b}: {:?}: {}", s.code(), s.message()))
                }
            }
        }
    }
    Storm::Served(answers)
}

// 4 ------------------------------------------------------------------------

#[test]
fn bad_input_gets_clear_statuses_is_counted_and_others_are_served() {
    let dir = tmp();
    let (raw_listen, signed_listen) = (free_addr(), free_addr());
    let (raw_out, good_out, bad_out) = (
        dir.path().join("raw.ndjson"),
        dir.path().join("good.ndjson"),
        dir.path().join("bad.ndjson"),
    );
    let key_file = dir.path().join("hmac.key");
    // The trailing newline is dropped when the key is read.
    std::fs::write(&key_file, "s3cret key\n").expect("write key");
    let key = b"s3cret key";
    write_set(
        dir.path(),
        "raw.NewPipeline().In(Grpc).Out(F)\n\
         signed.NewPipeline().In(SignedIn).VerifySignature(key = K).Out(Good).OnError(Bad)\n",
        &format!(
            "sources:\n  Grpc: {{ kind: murron_grpc, listen: \"{raw_listen}\", max_message_bytes: 4096 }}\n  \
             SignedIn: {{ kind: murron_grpc, listen: \"{signed_listen}\" }}\n\
             sinks:\n  F: {{ kind: file, path: {} }}\n  Good: {{ kind: file, path: {} }}\n  \
             Bad: {{ kind: file, path: {} }}\n\
             keys:\n  K: {{ file: {} }}\n",
            yaml_path(&raw_out),
            yaml_path(&good_out),
            yaml_path(&bad_out),
            yaml_path(&key_file)
        ),
    );
    let (mut dab, metrics) = start_with_metrics(dir.path(), &[]);
    wait_tcp(&raw_listen, START, || dab.stderr());
    wait_tcp(&signed_listen, START, || dab.stderr());
    let rt = runtime();

    // ---- Corrupt, oversized and incomplete input on `Grpc` ----
    let before_ns = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos(),
    )
    .expect("ns fit i64");
    let limit = Duration::from_secs(10);
    let (neighbour_acked, decode_errors) = rt.block_on(async {
        // A neighbour on its own connection sends good batches all along.
        let stop = Arc::new(AtomicBool::new(false));
        let neighbour = {
            let (addr, stop) = (raw_listen.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut client = must_connect(&addr).await;
                let mut acked = 0u64;
                for b in 0..500u64 {
                    if stop.load(Ordering::SeqCst) && b >= 5 {
                        break;
                    }
                    let batch = wire::Batch::from_events(&events("neighbour", 1, "N", b * 4, 4));
                    let ack = send(&mut client, batch, limit)
                        .await
                        .unwrap_or_else(|s| panic!("neighbour batch {b}: {s:?}"));
                    assert_eq!(ack.accepted, 4);
                    acked += 4;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                acked
            })
        };

        let mut client = must_connect(&raw_listen).await;
        let ok = |ack: Result<_, tonic::Status>, n: u64, what: &str| {
            let ack: dab_connectors::murron::rpc::Ack =
                ack.unwrap_or_else(|s| panic!("{what}: {s:?}"));
            assert_eq!(ack.accepted, n, "{what}");
        };
        ok(
            send(
                &mut client,
                wire::Batch::from_events(&events("probe", 1, "P", 0, 5)),
                limit,
            )
            .await,
            5,
            "the first good batch",
        );

        let good = wire::Batch::from_events(&events("probe", 1, "P", 100, 2));
        let mut cut = good.as_bytes().to_vec();
        cut.truncate(cut.len() - 3);
        let corrupt: Vec<(Vec<u8>, &str)> = vec![
            (b"\x0a\x05\xff\xff\xff\xff\xff".to_vec(), "event 0"),
            (cut, "runs past the end"),
            // An event whose host is not UTF-8.
            (b"\x0a\x03\x12\x01\xff".to_vec(), "not valid UTF-8"),
            // Field 1 as a varint.
            (b"\x08\x01".to_vec(), "wire type 0"),
        ];
        for (bytes, want) in &corrupt {
            let status = send(
                &mut client,
                wire::Batch::from_bytes(bytes.clone().into()),
                limit,
            )
            .await
            .expect_err("a corrupt batch is refused");
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{bytes:?}: {status:?}"
            );
            assert!(status.message().contains(want), "{bytes:?}: {status:?}");
        }

        // Over `max_message_bytes: 4096`, unary and on a stream.
        let big = wire::Batch::from_events(&events("probe", 1, "P", 200, 40));
        assert!(big.len() > 4096, "{} bytes", big.len());
        let status = send(&mut client, big.clone(), limit)
            .await
            .expect_err("an oversized batch is refused");
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
        let stream = tokio::time::timeout(limit, client.stream(tokio_stream::iter(vec![big])))
            .await
            .expect("stream opens in time");
        let status = match stream {
            Err(status) => status,
            Ok(acks) => {
                let mut acks = acks.into_inner();
                tokio::time::timeout(limit, acks.message())
                    .await
                    .expect("stream answers in time")
                    .expect_err("an oversized batch ends the stream")
            }
        };
        assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

        // On a stream, a corrupt batch ends it after the acks before it.
        let stream = vec![
            wire::Batch::from_events(&events("probe", 1, "P", 300, 2)),
            wire::Batch::from_bytes(b"\x08\x01".to_vec().into()),
        ];
        let mut acks = tokio::time::timeout(limit, client.stream(tokio_stream::iter(stream)))
            .await
            .expect("stream opens in time")
            .expect("stream opens")
            .into_inner();
        let first = tokio::time::timeout(limit, acks.message())
            .await
            .expect("stream answers in time");
        let first = first.unwrap_or_else(|s| panic!("the good batch on the stream: {s:?}"));
        assert_eq!(first.map(|a| a.accepted), Some(2));
        let status = tokio::time::timeout(limit, acks.message())
            .await
            .expect("stream answers in time")
            .expect_err("a corrupt batch ends the stream");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

        // An empty batch is acknowledged at once.
        ok(
            send(&mut client, wire::Batch::default(), limit).await,
            0,
            "an empty batch",
        );

        // Missing fields are not an error: they are filled.
        let bare: Vec<Event> = (0..2)
            .map(|_| {
                let mut e = Event::default();
                e.ty = Text::from("Bare");
                e.message = b"bare".to_vec().into();
                e
            })
            .collect();
        ok(
            send(&mut client, wire::Batch::from_events(&bare), limit).await,
            2,
            "bare events",
        );

        // The same connection, and a new one, still serve.
        ok(
            send(
                &mut client,
                wire::Batch::from_events(&events("probe", 1, "P", 5, 5)),
                limit,
            )
            .await,
            5,
            "a good batch after the bad ones",
        );
        let mut fresh = must_connect(&raw_listen).await;
        ok(
            send(
                &mut fresh,
                wire::Batch::from_events(&events("probe", 2, "P", 0, 3)),
                limit,
            )
            .await,
            3,
            "a good batch on a new connection",
        );
        stop.store(true, Ordering::SeqCst);
        let neighbour_acked = tokio::time::timeout(Duration::from_secs(20), neighbour)
            .await
            .expect("neighbour ends in time")
            .expect("neighbour");
        // Corrupt (unary and streamed) and oversized (unary and streamed).
        (neighbour_acked, corrupt.len() as u64 + 1 + 2)
    });
    let raw_total = 5 + 2 + 2 + 5 + 3 + neighbour_acked;
    wait_metrics(
        &metrics,
        &[
            (
                "dab_source_decode_errors_total{source=\"Grpc\"}",
                decode_errors as f64,
            ),
            ("dab_source_events_total{source=\"Grpc\"}", raw_total as f64),
            ("dab_sink_events_total{sink=\"F\"}", raw_total as f64),
        ],
        Duration::from_secs(5),
    );
    let raw = read_events(&raw_out);
    let mut want: BTreeMap<Uid, u64> = BTreeMap::new();
    let uids = (0..10)
        .chain(300..302)
        .map(|o| ("probe".to_owned(), 1, "P".to_owned(), o))
        .chain((0..3).map(|o| ("probe".to_owned(), 2, "P".to_owned(), o)))
        .chain((0..neighbour_acked).map(|o| ("neighbour".to_owned(), 1, "N".to_owned(), o)));
    for u in uids {
        *want.entry(u).or_insert(0) += 1;
    }
    let (bare, rest): (Vec<Value>, Vec<Value>) = raw.into_iter().partition(|e| e["type"] == "Bare");
    assert_eq!(uid_counts(&rest), want, "the events of `Grpc` in the file");
    // Filled: the host from the source's name, the timestamp with the
    // arrival time. (proto3 cannot tell offset 0 from no offset; what the
    // offsets are is left open here.)
    assert_eq!(bare.len(), 2, "{bare:?}");
    for e in &bare {
        let ts = e["timestamp"].as_i64().expect("timestamp");
        assert!(
            ts >= before_ns,
            "missing timestamp not filled with the arrival time: {e}"
        );
        assert_eq!((&e["host"], &e["pid"]), (&json!("Grpc"), &json!(0)), "{e}");
        assert_eq!(e["message"], "bare", "{e}");
    }
    eprintln!(
        "bad input: offsets given to the two events sent without one: {:?}",
        bare.iter().map(|e| e["offset"].clone()).collect::<Vec<_>>()
    );

    // ---- Signatures on `SignedIn` ----
    let mut signer = Signer::new(key);
    let mut wrong = Signer::new(b"not the key");
    let sign = |s: &mut Signer, mut e: Event| {
        e.signature = s.sign(&e).to_vec().into();
        e
    };
    let mut batch = Vec::new();
    let mut good_uids = BTreeSet::new();
    let mut bad_uids = BTreeSet::new();
    for o in 0..6 {
        batch.push(sign(&mut signer, event("signer", 9, "Signed", o)));
    }
    // `dab.` tags are left out of the signature: added on the way, still good.
    let mut via = sign(&mut signer, event("signer", 9, "Signed", 6));
    via.tags
        .push((Text::from("dab.via"), Text::from("relay-1")));
    batch.push(via);
    batch.push(sign(&mut wrong, event("signer", 9, "Signed", 7)));
    batch.push(sign(&mut wrong, event("signer", 9, "Signed", 8)));
    let mut tampered = sign(&mut signer, event("signer", 9, "Signed", 9));
    tampered.message = b"tampered".to_vec().into();
    batch.push(tampered);
    batch.push(event("signer", 9, "Signed", 10)); // unsigned
    let mut retagged = sign(&mut signer, event("signer", 9, "Signed", 11));
    retagged.tags.push((Text::from("env2"), Text::from("evil")));
    batch.push(retagged);
    let mut short = sign(&mut signer, event("signer", 9, "Signed", 12));
    short.signature = short.signature.slice(..31);
    batch.push(short);
    for e in &batch {
        if e.offset <= 6 {
            good_uids.insert(uid_of(e));
        } else {
            bad_uids.insert(uid_of(e));
        }
    }
    let more: Vec<Event> = (13..16)
        .map(|o| sign(&mut signer, event("signer", 9, "Signed", o)))
        .collect();
    good_uids.extend(more.iter().map(uid_of));
    rt.block_on(async {
        let mut client = must_connect(&signed_listen).await;
        // Events routed to `OnError` are delivered there: the batch is acked whole.
        let ack = send(&mut client, wire::Batch::from_events(&batch), limit)
            .await
            .expect("the mixed signed batch is acked");
        assert_eq!(ack.accepted, batch.len() as u64);
        let ack = send(&mut client, wire::Batch::from_events(&more), limit)
            .await
            .expect("the good signed batch is acked");
        assert_eq!(ack.accepted, 3);
    });
    let (n_good, n_bad) = (good_uids.len() as f64, bad_uids.len() as f64);
    let text = wait_metrics(
        &metrics,
        &[
            ("dab_sink_events_total{sink=\"Good\"}", n_good),
            ("dab_sink_events_total{sink=\"Bad\"}", n_bad),
            (
                "dab_pipeline_dropped_total{pipeline=\"signed\",reason=\"bad_signature\"}",
                0.0,
            ),
        ],
        Duration::from_secs(5),
    );
    let good_lines = read_events(&good_out);
    let bad_lines = read_events(&bad_out);
    let as_set = |lines: &[Value]| -> BTreeSet<Uid> { lines.iter().map(uid_of_json).collect() };
    assert_eq!(good_lines.len() as f64, n_good);
    assert_eq!(bad_lines.len() as f64, n_bad);
    assert_eq!(as_set(&good_lines), good_uids, "the Good file");
    assert_eq!(as_set(&bad_lines), bad_uids, "the Bad file");
    let b64 = base64::engine::general_purpose::STANDARD;
    let first_good = &good_lines[0];
    assert_eq!(
        first_good["signature"]
            .as_str()
            .map(|s| b64.decode(s).map(|b| b.len())),
        Some(Ok(32)),
        "the signature is kept, base64: {first_good}"
    );

    dab.terminate();
    assert_exit_0(&mut dab, "dab run");

    // docs/language.md: "Either way `dab_pipeline_failed_events_total`
    // counts them."
    assert_eq!(
        metric(
            &text,
            "dab_pipeline_failed_events_total{pipeline=\"signed\"}"
        ),
        Some(n_bad),
        "dab_pipeline_failed_events_total for the bad signatures; /metrics:\n{}",
        text.lines()
            .filter(|l| l.contains("pipeline=\"signed\""))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// 5 ------------------------------------------------------------------------

/// The murron_grpc source's binding changes (a limit) but keeps its
/// address, twice, under `--watch`: each reload rebuilds the pipeline and
/// hands the listening socket to the new source (no EADDRINUSE, no failed
/// source). A client connected before the reloads keeps sending on its
/// channel, a new client reaches the new source, every batch is
/// acknowledged, and every event lands exactly once.
#[test]
fn a_rebound_murron_grpc_listener_hands_over_with_a_client_connected() {
    let dir = tmp();
    let listen = free_addr();
    let out = dir.path().join("out.ndjson");
    let bindings = |limit: u32| {
        format!(
            "sources:\n  Grpc: {{ kind: murron_grpc, listen: \"{listen}\", max_message_bytes: {limit} }}\n\
             sinks:\n  F: {{ kind: file, path: {} }}\n",
            yaml_path(&out)
        )
    };
    write_set(
        dir.path(),
        "ingest.NewPipeline().In(Grpc).Out(F)\n",
        &bindings(4_194_304),
    );
    let (mut dab, metrics) = start_with_metrics(dir.path(), &["--watch"]);
    wait_tcp(&listen, START, || dab.stderr());
    dab.wait_for_log(START, "the watcher", |l| {
        l.contains("watching the blueprint set for changes")
    });
    let rt = runtime();
    let mut kept = rt.block_on(must_connect(&listen));
    let limit = Duration::from_secs(20);
    let batch = |first: u64| wire::Batch::from_events(&events("h", 1, "T", first, 50));
    rt.block_on(send(&mut kept, batch(0), limit))
        .expect("a batch before the reload");

    for round in 1..=2u64 {
        let staged = dir.path().join(".dab.yaml.new");
        std::fs::write(&staged, bindings(4_194_304 + round as u32)).expect("write");
        std::fs::rename(&staged, dir.path().join("dab.yaml")).expect("rename");
        poll(
            Duration::from_secs(30),
            "the reload",
            || {
                let n = dab
                    .stderr()
                    .lines()
                    .filter(|l| {
                        l.contains(" reloaded trigger=Watch")
                            && l.contains("rebuilt=[\"ingest (binding `Grpc` changed)\"]")
                    })
                    .count();
                (n as u64 >= round).then_some(())
            },
            || dab.stderr(),
        );
        rt.block_on(send(&mut kept, batch(round * 1000), limit))
            .expect("a batch from the client connected before the reload");
        let mut fresh = rt.block_on(must_connect(&listen));
        rt.block_on(send(&mut fresh, batch(round * 1000 + 500), limit))
            .expect("a batch from a new client");
        assert!(dab.running(), "dab ended; stderr:\n{}", dab.stderr());
    }
    wait_metrics(
        &metrics,
        &[
            ("dab_sink_events_total{sink=\"F\"}", 250.0),
            ("dab_reload_failures_total", 0.0),
            ("dab_reloads_total", 2.0),
        ],
        Duration::from_secs(30),
    );
    let err = dab.stderr();
    for bad in [
        "Address already in use",
        "source started by a reload failed",
        "source failed",
    ] {
        assert!(!err.contains(bad), "`{bad}` in stderr:\n{err}");
    }
    drop(kept);
    drop(rt);
    dab.terminate();
    assert_exit_0(&mut dab, "dab");

    let got = uid_counts(&read_events(&out));
    let mut want: BTreeMap<Uid, u64> = BTreeMap::new();
    for first in [0, 1000, 1500, 2000, 2500] {
        for e in events("h", 1, "T", first, 50) {
            want.insert(uid_of(&e), 1);
        }
    }
    assert_eq!(got, want, "every event exactly once");
}
