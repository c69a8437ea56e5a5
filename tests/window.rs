//! Windows and aggregates end to end (issue 13, SPEC section 9): `dab run`
//! with real inputs, results compared with what a reference written in
//! plain Python (`scripts/window-reference.py`) computes from the same
//! events.
//!
//! - `kafka_input_killed_9_three_times_gives_exact_results`: a million
//!   events with skewed keys and out-of-order timestamps, from a real
//!   Kafka-protocol broker (tansu), through a tumbling and a sliding window;
//!   dab is killed with -9 at three random moments and started again. Every
//!   result must equal the reference, and a result seen twice must be the
//!   same both times.
//!
//! A missing tansu or Python client fails the test; nothing here passes by
//! skipping.

#![allow(clippy::unwrap_used)]

#[path = "kafka_support/broker.rs"]
mod broker;
#[allow(dead_code)]
mod run_support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use broker::{python_kafka, spawn_client, tansu, Broker};
use run_support::client::{free_addr, metric, scrape};
use run_support::process::Dab;
use run_support::{poll, write_set};
use serde_json::Value;

fn reference_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/window-reference.py")
}

/// Runs the reference script with `args`, stdout to `out`.
fn reference(python: &Path, args: &[&str], out: &Path) {
    let file = std::fs::File::create(out).expect("create reference output");
    let status = Command::new(python)
        .arg(reference_script())
        .args(args)
        .stdout(file)
        .stdin(Stdio::null())
        .status()
        .expect("run window-reference.py");
    assert!(status.success(), "window-reference.py {args:?}: {status}");
}

/// The seed of the events and kill points: `DAB_WINDOW_SEED`, or the clock
/// (printed, so that a failure can be repeated).
fn test_seed() -> u64 {
    let seed = std::env::var("DAB_WINDOW_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(7, |d| d.as_nanos() as u64)
        });
    eprintln!("seed {seed} (DAB_WINDOW_SEED to repeat)");
    seed
}

/// `total` events from the reference script, out of order by up to 500 ms.
fn generate(python: &Path, total: u64, seed: u64, out: &Path) {
    let (total, seed) = (total.to_string(), (seed % 1_000_000).to_string());
    reference(
        python,
        &[
            "gen",
            "--count",
            &total,
            "--seed",
            &seed,
            "--disorder-ms",
            "500",
        ],
        out,
    );
}

/// xorshift: the kill points follow from the printed seed.
fn xorshift(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

/// Stops dab gracefully after a last scrape of its metrics.
fn stop(mut dab: Dab, metrics: &str) -> String {
    let text = scrape(metrics);
    dab.terminate();
    assert!(
        dab.wait(Duration::from_secs(60)).success(),
        "{}",
        dab.stderr()
    );
    text
}

/// Fails, showing the first differences, unless `have` equals `want`.
fn compare(name: &str, have: &[String], want: &[String]) {
    let h: std::collections::BTreeSet<&String> = have.iter().collect();
    let w: std::collections::BTreeSet<&String> = want.iter().collect();
    for m in w.difference(&h).take(10) {
        eprintln!("{name}: expected, not emitted: {m}");
    }
    for m in h.difference(&w).take(10) {
        eprintln!("{name}: emitted, not expected: {m}");
    }
    assert!(
        have == want,
        "{name}: {} results differ from the reference's {}",
        have.len(),
        want.len()
    );
}

/// A result row as the reference writes it: the payload without `final`.
fn row(payload: &Value) -> String {
    let mut p = payload.clone();
    if let Value::Object(m) = &mut p {
        m.remove("final");
    }
    // serde_json's map is sorted: the same text as the script's sort_keys.
    serde_json::to_string(&p).unwrap()
}

/// The results in `dump` (one Kafka value per line), by pipeline: every
/// distinct result row, after checking that each UID always carries the
/// same row and that every result is final.
fn results_by_pipeline(dump: &Path) -> (BTreeMap<String, Vec<String>>, usize) {
    let text = std::fs::read_to_string(dump).expect("read the dump");
    let mut by_uid: HashMap<(String, u64), String> = HashMap::new();
    let mut repeats = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let ev: Value = serde_json::from_str(line).expect("a result event");
        let host = ev["host"].as_str().unwrap().to_owned();
        let offset = ev["offset"].as_u64().unwrap();
        let payload: Value = serde_json::from_str(ev["message"].as_str().unwrap()).unwrap();
        assert_eq!(payload["final"], Value::Bool(true), "{line}");
        if payload["team"] == "__end__" {
            // The markers that open and close the input.
            continue;
        }
        let r = row(&payload);
        match by_uid.get(&(host.clone(), offset)) {
            Some(prev) => {
                assert_eq!(prev, &r, "a result emitted again differs");
                repeats += 1;
            }
            None => {
                by_uid.insert((host, offset), r);
            }
        }
    }
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ((host, _), r) in by_uid {
        out.entry(host).or_default().push(r);
    }
    for v in out.values_mut() {
        v.sort();
    }
    (out, repeats)
}

fn lines_sorted(path: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(path)
        .expect("read")
        .lines()
        .map(|l| {
            let j: Value = serde_json::from_str(l).unwrap();
            serde_json::to_string(&j).unwrap()
        })
        .collect();
    v.sort();
    v
}

const AGGS: &str =
    "calls = Count(), total = Sum(fields.latency_ms), low = Min(fields.latency_ms), \
                    high = Max(fields.latency_ms), users = Distinct(fields.user)";

/// A tansu broker holding `total` generated events in topic `in` (3
/// partitions, keyed by team: a window keeps state per input partition, so
/// a group's events must share one), an empty topic `out`, and what the
/// reference says the tumbling 10s and sliding 20s/5s windows give.
struct KafkaFixture {
    python: PathBuf,
    broker: Broker,
    dir: tempfile::TempDir,
    tumbling: Vec<String>,
    sliding: Vec<String>,
    seed: u64,
}

/// The Kafka tests of this file run one at a time: each runs a broker and
/// several workers, and two at once on two shared cores starve tansu's
/// group coordinator until members are dropped from their group (which
/// tansu 0.6 then never gives partitions again).
static KAFKA: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl KafkaFixture {
    fn new(total: u64) -> KafkaFixture {
        let python = python_kafka();
        let broker = Broker::start(&tansu());
        broker.create_topic("in", 3);
        broker.create_topic("out", 3);
        let dir = tempfile::tempdir().expect("tempdir");
        let events = dir.path().join("events.jsonl");
        let seed = test_seed();
        generate(&python, total, seed, &events);
        let tumbling = dir.path().join("tumbling.expected");
        let sliding = dir.path().join("sliding.expected");
        let ev = events.to_str().unwrap();
        reference(&python, &["expect", "--size-ms", "10000", ev], &tumbling);
        reference(
            &python,
            &["expect", "--size-ms", "20000", "--every-ms", "5000", ev],
            &sliding,
        );
        let produced = spawn_client(
            &python,
            "produce",
            &broker.addr(),
            "in",
            &[
                "--count",
                "0",
                "--from",
                ev,
                "--key",
                "fields.team",
                "--linger-ms",
                "50",
            ],
        )
        .finish(Duration::from_secs(300));
        assert_eq!(produced["produced"], Value::from(total + 16), "{produced}");
        KafkaFixture {
            tumbling: lines_sorted(&tumbling),
            sliding: lines_sorted(&sliding),
            python,
            broker,
            dir,
            seed,
        }
    }

    /// The blueprint set, reading `in` in consumer group `group`.
    ///
    /// Out-of-order by at most 2 x 500 ms: a lateness of 2 s makes no
    /// event late, so the reference needs no watermark. A session of 30 s:
    /// several workers, each broker and the rest of the suite share two
    /// cores, and tansu answers heartbeats late under that load.
    fn write_set(&self, group: &str) {
        let brokers = self.broker.addr();
        write_set(
            self.dir.path(),
            &format!(
                "tumble.NewPipeline().In(KIn).Window(tumbling = 10s, lateness = 2s).\
                 Aggregate(by = [fields.team], as = \"Stats\", {AGGS}).Out(KOut)\n\
                 slide.NewPipeline().In(KIn).Window(sliding = 20s, every = 5s, lateness = 2s).\
                 Aggregate(by = [fields.team], as = \"Stats\", {AGGS}).Out(KOut)\n"
            ),
            &format!(
                "sources:\n  KIn: {{ kind: kafka, brokers: \"{brokers}\", topic: in, group: {group}, \
                 options: {{ session.timeout.ms: 30000 }} }}\n\
                 sinks:\n  KOut: {{ kind: kafka, brokers: \"{brokers}\", topic: out }}\n"
            ),
        );
    }

    /// Starts a worker with its own state directory `state` (and `extra`
    /// arguments) and waits for its first assignment.
    fn start(&self, state: &str, metrics: &str, extra: &[&str]) -> Dab {
        let state = self.dir.path().join(state);
        let mut args = vec![
            "run",
            "t.dab",
            "--metrics",
            metrics,
            "--state-dir",
            state.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut dab = Dab::start(self.dir.path(), &args);
        dab.wait_for_log(Duration::from_secs(60), "partitions assigned", |l| {
            l.contains("kafka partitions assigned")
        });
        dab
    }

    /// Reads every result from `out` and compares them with the reference:
    /// each result exactly once as a row, a repeat only as the same row.
    fn check_results(&self, last: Dab, metrics: &str) -> String {
        let dump = self.dir.path().join("results.jsonl");
        let expect = self.tumbling.len() + self.sliding.len();
        let out = spawn_client(
            &self.python,
            "consume",
            &self.broker.addr(),
            "out",
            &[
                "--expect",
                &expect.to_string(),
                "--dump",
                dump.to_str().unwrap(),
                "--timeout-s",
                "420",
                "--idle-ms",
                "3000",
                // A worker reading a million events from offset 0 keeps
                // tansu's storage busy: its first metadata answer can take
                // longer than the client's default 15 s.
                "--connect-timeout-s",
                "120",
            ],
        )
        .finish(Duration::from_secs(480));
        show_log("the last worker", &last);
        let now = scrape(metrics);
        for l in now.lines().filter(|l| {
            (l.starts_with("dab_window_")
                || l.starts_with("dab_checkpoint")
                || l.starts_with("dab_pipeline_events_in"))
                && !l.starts_with('#')
        }) {
            eprintln!("the last worker: {l}");
        }
        let text = stop(last, metrics);
        let (got, repeats) = results_by_pipeline(&dump);
        eprintln!(
            "{expect} results, {repeats} emitted again identically; consumer: {out}; redelivered after restarts: {:?}",
            metric(&text, "dab_window_redelivered_total{pipeline=\"tumble\"}")
        );
        for p in ["tumble", "slide"] {
            for r in ["late", "window_overflow"] {
                let n = metric(
                    &text,
                    &format!("dab_pipeline_dropped_total{{pipeline=\"{p}\",reason=\"{r}\"}}"),
                );
                eprintln!("{p} dropped {r}: {n:?} (in the last run)");
            }
        }
        let empty = Vec::new();
        compare(
            "tumble",
            got.get("tumble").unwrap_or(&empty),
            &self.tumbling,
        );
        compare("slide", got.get("slide").unwrap_or(&empty), &self.sliding);
        text
    }
}

/// Prints a worker's warnings, errors and window state messages.
fn show_log(who: &str, dab: &Dab) {
    for l in dab.stderr().lines().filter(|l| {
        l.contains("WARN") || l.contains("ERROR") || l.contains("window") || l.contains("assigned")
    }) {
        eprintln!("{who}: {l}");
    }
}

/// Waits until the worker `dab` at `metrics` has read `at` events.
fn read_at_least(dab: &Dab, metrics: &str, at: u64) {
    poll(
        Duration::from_secs(300),
        "events read",
        || {
            let text = scrape(metrics);
            let read =
                metric(&text, "dab_pipeline_events_in_total{pipeline=\"tumble\"}").unwrap_or(0.0);
            (read >= at as f64).then_some(())
        },
        || {
            let err = dab.stderr();
            let tail: Vec<&str> = err.lines().rev().take(60).collect();
            format!(
                "metrics: {}\nlast log lines, newest first:\n{}",
                scrape(metrics),
                tail.join("\n")
            )
        },
    );
}

#[test]
fn kafka_input_killed_9_three_times_gives_exact_results() {
    let _one = KAFKA
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let fx = KafkaFixture::new(1_000_000);
    // Each start joins a new consumer group: tansu 0.6 keeps a member
    // killed with -9 in its group with its partitions assigned, so a
    // restarted member of the same group may be given none. A new group
    // reads every partition from the beginning, so every event the state
    // already holds comes again: the harder case for exactness.
    let mut next = xorshift(fx.seed);
    for k in 0..3 {
        fx.write_set(&format!("stats-{k}"));
        let metrics = free_addr();
        let mut dab = fx.start("state", &metrics, &[]);
        // Kill after this process has read 20,000 to 300,000 events, so
        // the kill falls anywhere: before or after a checkpoint, with
        // results in flight or not.
        let at = 20_000 + next() % 280_000;
        read_at_least(&dab, &metrics, at);
        assert!(dab.running(), "dab ended before the kill: {}", dab.stderr());
        eprintln!("kill -9 number {} after {at} events read", k + 1);
        broker::signal(dab.pid(), "KILL");
        let _ = dab.wait(Duration::from_secs(10));
    }
    fx.write_set("stats-3");
    let metrics = free_addr();
    let dab = fx.start("state", &metrics, &[]);
    fx.check_results(dab, &metrics);
}

/// Scale-out (issue 13 item 4): the state of each input partition moves
/// with the partition. Worker A reads alone; worker B joins the group, so
/// A lets go of the partitions the rebalance gives B (their last
/// checkpoint moves on), and B restores them from the changelog before
/// reading them. B is killed
/// with -9 and A stopped; a third worker C, with an empty state directory
/// of its own, restores every partition from the changelog alone and
/// finishes. Every result equals the reference.
#[test]
fn window_state_moves_with_kafka_partitions_between_workers() {
    let _one = KAFKA
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // 100,000 events: C rereads them all from offset 0 in a new group,
    // in a debug build, beside the rest of the suite.
    let fx = KafkaFixture::new(100_000);
    let mut next = xorshift(fx.seed ^ 0x5CA1E);
    fx.write_set("stats");
    let (ma, mb) = (free_addr(), free_addr());
    let mut a = fx.start("state-a", &ma, &["--partition-state"]);
    read_at_least(&a, &ma, 10_000 + next() % 20_000);
    let mut b = fx.start("state-b", &mb, &["--partition-state"]);
    b.wait_for_log(Duration::from_secs(90), "B restored a partition", |l| {
        l.contains("window partition state restored")
    });
    a.wait_for_log(Duration::from_secs(30), "A released on revoke", |l| {
        l.contains("released on revoke")
    });
    let at = 3_000 + next() % 5_000;
    read_at_least(&b, &mb, at);
    assert!(b.running(), "B ended before the kill: {}", b.stderr());
    eprintln!("kill -9 of worker B after {at} events read");
    broker::signal(b.pid(), "KILL");
    let _ = b.wait(Duration::from_secs(10));
    show_log("B", &b);
    show_log("A", &a);
    let text_a = stop(a, &ma);
    eprintln!(
        "A: restores {:?}, not owned {:?}",
        metric(&text_a, "dab_window_restores_total{pipeline=\"tumble\"}"),
        metric(&text_a, "dab_window_not_owned_total{pipeline=\"tumble\"}")
    );
    // tansu 0.6 keeps the killed B in group `stats` with its partitions:
    // C joins a new group, which reads every partition from the start, and
    // skips what the changelog's positions say is already in the state.
    fx.write_set("stats-c");
    let mc = free_addr();
    let c = fx.start("state-c", &mc, &["--partition-state"]);
    let text = fx.check_results(c, &mc);
    // C's own state directory was empty: what it skipped as already in
    // the state, it knew from the changelog alone. Without the changelog
    // it would have computed everything again from offset 0, and the
    // comparison above would prove nothing about moving state.
    for p in ["tumble", "slide"] {
        let read =
            |name: &str| metric(&text, &format!("{name}{{pipeline=\"{p}\"}}")).unwrap_or(0.0);
        let (restores, records, skipped) = (
            read("dab_window_restores_total"),
            read("dab_window_restored_records_total"),
            read("dab_window_redelivered_total"),
        );
        eprintln!("C {p}: {restores} partitions restored from {records} changelog records; {skipped} events skipped as already in the state");
        assert!(restores >= 3.0, "C restored {restores} partitions of {p}");
        assert!(records > 0.0, "C read no changelog record for {p}");
        assert!(
            skipped > 0.0,
            "C skipped nothing of {p}: the changelog's positions were not used"
        );
    }
}

mod common;
#[allow(dead_code)]
mod fault_support;

fn at(secs: u64, offset: u64) -> String {
    format!(
        "{{\"timestamp\":{},\"host\":\"h\",\"type\":\"A\",\"offset\":{offset},\"message\":\"{{\\\"n\\\":{secs}}}\"}}\n",
        secs * 1_000_000_000
    )
}

#[test]
fn late_events_go_to_the_late_target_and_lateness_is_respected() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_set(
        dir.path(),
        "w.NewPipeline().In(Stdin).Window(tumbling = 10s, lateness = 2s, late = Late).\
         Aggregate(by = [type], as = \"Count\", calls = Count(), ns = Sum(fields.n)).Out(Stdout)\n",
        "sinks:\n  Late: { kind: file, path: late.ndjson }\n",
    );
    // The watermark is the largest time seen. 9 s comes when it is 11 s:
    // [0, 10) is open until 10 + 2 = 12, so 9 is counted. 3 comes at 12:
    // late. 19 comes at 25, after [10, 20) closed at 22: late. 21 is not.
    let order = [1, 5, 11, 9, 12, 3, 13, 25, 19, 21];
    let input: String = order
        .iter()
        .enumerate()
        .map(|(i, s)| at(*s, i as u64))
        .collect();
    let state = dir.path().join("state");
    let out = common::run_with_stdin(
        dir.path(),
        &["run", "t.dab", "--state-dir", state.to_str().unwrap()],
        input,
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let mut results: Vec<(i64, u64, i64)> = common::stdout(&out)
        .lines()
        .map(|l| {
            let ev: Value = serde_json::from_str(l).unwrap();
            let p: Value = serde_json::from_str(ev["message"].as_str().unwrap()).unwrap();
            assert_eq!(p["final"], Value::Bool(true));
            assert_eq!(ev["type"], "Count");
            assert_eq!(
                ev["timestamp"], p["window_end"],
                "a result's time is its window end"
            );
            (
                p["window_start"].as_i64().unwrap() / 1_000_000_000,
                p["calls"].as_u64().unwrap(),
                p["ns"].as_i64().unwrap(),
            )
        })
        .collect();
    results.sort();
    assert_eq!(
        results,
        vec![(0, 3, 1 + 5 + 9), (10, 3, 11 + 12 + 13), (20, 2, 25 + 21)]
    );
    let late: Vec<u64> = run_support::file_lines(&dir.path().join("late.ndjson"))
        .iter()
        .map(|l| {
            let ev: Value = serde_json::from_str(l).unwrap();
            ev["timestamp"].as_u64().unwrap() / 1_000_000_000
        })
        .collect();
    assert_eq!(late, vec![3, 19], "exactly the late events, as they came");
}

#[test]
fn max_groups_bounds_memory_under_a_million_keys_and_counts_the_overflow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let total = 1_000_000u64;
    write_set(
        dir.path(),
        "w.NewPipeline().In(Gen).Window(tumbling = 1h, max_groups = 1000).\
         Aggregate(by = [offset], as = \"PerOffset\", calls = Count()).Out(Blackhole)\n",
        &format!("sources:\n  Gen: {{ kind: generator, count: {total}, types: [A], payload_bytes: 10 }}\n"),
    );
    let metrics = free_addr();
    let state = dir.path().join("state");
    let mut dab = Dab::start(
        dir.path(),
        &[
            "run",
            "t.dab",
            "--metrics",
            &metrics,
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    // Every offset is its own group: a million keys in one window.
    let mut peak_kib = 0;
    let mut last = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(600);
    while dab.running() {
        assert!(
            std::time::Instant::now() < deadline,
            "dab did not finish: {}",
            dab.stderr()
        );
        peak_kib = peak_kib.max(dab.rss_kib().unwrap_or(0));
        if let Ok(t) = std::panic::catch_unwind(|| scrape(&metrics)) {
            if t.contains("dab_window_open_groups") {
                last = t;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        dab.wait(Duration::from_secs(10)).success(),
        "{}",
        dab.stderr()
    );
    let overflow = metric(
        &last,
        "dab_pipeline_dropped_total{pipeline=\"w\",reason=\"window_overflow\"}",
    )
    .unwrap_or(0.0) as u64;
    let open = metric(&last, "dab_window_open_groups{pipeline=\"w\"}").unwrap_or(-1.0);
    eprintln!(
        "peak RSS {} MiB, open groups {open}, overflow {overflow} (last scrape)",
        peak_kib / 1024
    );
    let absorbed_or_not =
        metric(&last, "dab_pipeline_events_in_total{pipeline=\"w\"}").unwrap_or(0.0) as u64;
    assert!(open <= 1000.0, "open groups {open} past max_groups");
    assert!(
        absorbed_or_not >= 100_000,
        "the last scrape came too early: {last}"
    );
    // Each event past the first thousand keys is counted (two thousand if
    // the run crossed an hour, when the first window closes), but for the
    // batches counted in and not yet through the window at the scrape.
    assert!(
        overflow + 2000 + 4 * 1024 >= absorbed_or_not && overflow + 1000 <= absorbed_or_not,
        "overflow {overflow} of {absorbed_or_not} events in"
    );
    // A million entries would take hundreds of MiB; a thousand take
    // nothing. The bound leaves room for the runtime and allocator.
    assert!(peak_kib < 400 * 1024, "peak RSS {} MiB", peak_kib / 1024);
}

/// `dab run t.dab` in `dir` with an HTTP source on `addr`, once it listens.
fn start_http(dir: &Path, addr: &str, metrics: &str, state: &Path, interval: &str) -> Dab {
    let state = state.to_str().unwrap();
    let args = [
        "run",
        "t.dab",
        "--metrics",
        metrics,
        "--state-dir",
        state,
        "--checkpoint-interval",
        interval,
    ];
    let dab = Dab::start(dir, &args);
    run_support::client::wait_tcp(addr, Duration::from_secs(30), || dab.stderr());
    dab
}

/// POSTs `body` until the answer is 200: what a client of a source that
/// cannot replay does (SPEC section 11). Gives up after `limit`.
fn post_until_ok(addr: &str, body: &str, limit: Duration) -> u32 {
    let deadline = std::time::Instant::now() + limit;
    let mut tries = 0;
    loop {
        tries += 1;
        match run_support::client::request(
            addr,
            "POST",
            "/v1/events",
            body.as_bytes(),
            Duration::from_secs(30),
        ) {
            Ok(r) if r.status == 200 => return tries,
            _ => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no 200 from {addr} within {limit:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

#[test]
fn http_input_killed_9_three_times_gives_exact_results() {
    let python = python_kafka();
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("events.jsonl");
    let total = 400_000u64;
    let seed = test_seed();
    generate(&python, total, seed, &events);
    let expected = dir.path().join("tumbling.expected");
    reference(
        &python,
        &["expect", "--size-ms", "10000", events.to_str().unwrap()],
        &expected,
    );
    let expected = lines_sorted(&expected);
    let addr = free_addr();
    write_set(
        dir.path(),
        &format!(
            "tumble.NewPipeline().In(HttpIn).Window(tumbling = 10s, lateness = 2s).\
             Aggregate(by = [fields.team], as = \"Stats\", {AGGS}).Out(Results)\n"
        ),
        &format!(
            "sources:\n  HttpIn: {{ kind: http, listen: \"{addr}\" }}\n\
             sinks:\n  Results: {{ kind: file, path: results.ndjson }}\n"
        ),
    );
    let state = dir.path().join("state");
    let start = |metrics: &str| start_http(dir.path(), &addr, metrics, &state, "200ms");
    let metrics = free_addr();
    let mut dab = start(&metrics);
    // Each host's events in order from its own client, so that the
    // watermark (the slowest host's time) holds no event back by more
    // than the disorder. One first batch names every host at once, so
    // that no host's events come before the others are known.
    let text = std::fs::read_to_string(&events).unwrap();
    let mut by_host: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let ev: Value = serde_json::from_str(line).unwrap();
        by_host
            .entry(ev["host"].as_str().unwrap().to_owned())
            .or_default()
            .push(line.to_owned());
    }
    let hello: Vec<String> = by_host
        .keys()
        .map(|h| {
            format!(
                "{{\"timestamp\":1767225000000000000,\"host\":\"{h}\",\"type\":\"ApiCall\",\"offset\":999999999,\
                 \"message\":\"{{\\\"team\\\":\\\"__end__\\\",\\\"latency_ms\\\":0,\\\"user\\\":\\\"x\\\"}}\"}}"
            )
        })
        .collect();
    post_until_ok(
        &addr,
        &format!("[{}]", hello.join(",")),
        Duration::from_secs(60),
    );
    let clients: Vec<_> = by_host
        .into_values()
        .map(|lines| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let mut retried = 0;
                for chunk in lines.chunks(500) {
                    retried += post_until_ok(
                        &addr,
                        &format!("[{}]", chunk.join(",")),
                        Duration::from_secs(300),
                    ) - 1;
                }
                retried
            })
        })
        .collect();
    let mut next = xorshift(seed);
    let mut metrics = metrics;
    for k in 0..3 {
        let at = 10_000 + next() % 60_000;
        poll(
            Duration::from_secs(300),
            "events read before the kill",
            || {
                let read = metric(
                    &scrape(&metrics),
                    "dab_pipeline_events_in_total{pipeline=\"tumble\"}",
                )
                .unwrap_or(0.0);
                (read >= at as f64).then_some(())
            },
            || format!("metrics: {}", scrape(&metrics)),
        );
        eprintln!("kill -9 number {} after {at} events read", k + 1);
        broker::signal(dab.pid(), "KILL");
        let _ = dab.wait(Duration::from_secs(10));
        metrics = free_addr();
        dab = start(&metrics);
    }
    let retried: u32 = clients.into_iter().map(|c| c.join().expect("client")).sum();
    let results = dir.path().join("results.ndjson");
    let got = poll(
        Duration::from_secs(300),
        "every result in the file",
        || {
            let rows: std::collections::BTreeSet<String> = run_support::file_lines(&results)
                .iter()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .map(|ev| serde_json::from_str::<Value>(ev["message"].as_str().unwrap()).unwrap())
                .filter(|p| p["team"] != "__end__")
                .map(|p| row(&p))
                .collect();
            (rows.len() >= expected.len()).then_some(rows)
        },
        || format!("metrics: {}", scrape(&metrics)),
    );
    let text = stop(dab, &metrics);
    let (by_pipeline, repeats) = results_by_pipeline(&results);
    eprintln!(
        "{} results, {repeats} emitted again identically, {retried} batches posted again, redelivered in the last run: {:?}",
        got.len(),
        metric(&text, "dab_window_redelivered_total{pipeline=\"tumble\"}")
    );
    compare(
        "tumble",
        &by_pipeline.get("tumble").cloned().unwrap_or_default(),
        &expected,
    );
}

/// Fills the filesystem of `dir` with a file until it is full.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write as _;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("create the filler");
    let block = vec![0u8; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    path
}

#[test]
fn a_full_state_disk_answers_no_200_until_the_checkpoint_is_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = fault_support::Tmpfs::mount(&dir.path().join("disk"), "4m");
    let state = dir.path().join("disk/state");
    let addr = free_addr();
    write_set(
        dir.path(),
        "w.NewPipeline().In(HttpIn).Window(tumbling = 10s).\
         Aggregate(by = [host], as = \"Count\", calls = Count()).Out(Results)\n",
        &format!(
            "sources:\n  HttpIn: {{ kind: http, listen: \"{addr}\" }}\n\
             sinks:\n  Results: {{ kind: file, path: results.ndjson }}\n"
        ),
    );
    let start = |metrics: &str| start_http(dir.path(), &addr, metrics, &state, "100ms");
    let batch = |from: u64, n: u64, secs: u64| -> String {
        let evs: Vec<String> = (from..from + n)
            .map(|o| format!("{{\"timestamp\":{},\"host\":\"h\",\"type\":\"A\",\"offset\":{o},\"message\":\"x\"}}", secs * 1_000_000_000))
            .collect();
        format!("[{}]", evs.join(","))
    };
    let post = |body: &str| {
        run_support::client::request(
            &addr,
            "POST",
            "/v1/events",
            body.as_bytes(),
            Duration::from_secs(10),
        )
        .map(|r| r.status)
    };
    let metrics = free_addr();
    let mut dab = start(&metrics);
    assert_eq!(post(&batch(0, 100, 1)).ok(), Some(200), "{}", dab.stderr());
    // The state's disk is full. A checkpoint small enough to fit in the
    // journal's last partly used page may still be written (and then its
    // 200 is true); after that nothing can be durable, so no 200. Each
    // batch is 1,000 events, 16 KB of UIDs: more than a page.
    let filler = fill(&dir.path().join("disk"));
    let mut answers = Vec::new();
    for i in 0..5 {
        answers.push(post(&batch(100 + i * 1000, 1000, 2)));
    }
    let text = scrape(&metrics);
    eprintln!("answers while full: {answers:?}");
    assert!(
        answers.iter().skip(1).all(|a| !matches!(a, Ok(200))),
        "a 200 while the state's disk was full: {answers:?}\n{}",
        dab.stderr()
    );
    assert!(
        metric(&text, "dab_checkpoint_failures_total{pipeline=\"w\"}").unwrap_or(0.0) >= 1.0,
        "no failed checkpoint counted"
    );
    // Space again. A store whose journal write failed refuses further
    // writes (it is poisoned), so the stage may have stopped: start dab
    // again if it did not recover, as an operator would.
    std::fs::remove_file(&filler).expect("remove the filler");
    disk.resize("64m");
    let mut recovered = false;
    for _ in 0..30 {
        if matches!(post(&batch(100, 1000, 2)), Ok(200)) {
            recovered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("answered 200 again without a restart: {recovered}");
    if !recovered {
        dab.terminate();
        let _ = dab.wait(Duration::from_secs(30));
        dab = start(&metrics);
    }
    // The client sends every unanswered batch again until it gets 200.
    for i in 0..5 {
        post_until_ok(
            &addr,
            &batch(100 + i * 1000, 1000, 2),
            Duration::from_secs(60),
        );
    }
    // An event at 30 s closes the window [0, 10).
    post_until_ok(&addr, &batch(10_000, 1, 30), Duration::from_secs(60));
    let results = dir.path().join("results.ndjson");
    let line = poll(
        Duration::from_secs(60),
        "the window's result",
        || run_support::file_lines(&results).into_iter().next(),
        || dab.stderr(),
    );
    let ev: Value = serde_json::from_str(&line).unwrap();
    let p: Value = serde_json::from_str(ev["message"].as_str().unwrap()).unwrap();
    assert_eq!(
        p["calls"],
        Value::from(5100),
        "every event once: {p} (recovered without a restart: {recovered})"
    );
    let _ = stop(dab, &metrics);
}

#[test]
fn results_and_checkpoints_keep_coming_while_the_input_never_pauses() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A generator flat out: the window's input always has a batch ready.
    write_set(
        dir.path(),
        "w.NewPipeline().In(Gen).Window(tumbling = 1s, time = arrival).\
         Aggregate(by = [type], as = \"Count\", calls = Count()).Out(Blackhole)\n",
        "sources:\n  Gen: { kind: generator, count: 0, payload_bytes: 10 }\n",
    );
    let metrics = free_addr();
    let state = dir.path().join("state");
    let dab = Dab::start(
        dir.path(),
        &[
            "run",
            "t.dab",
            "--metrics",
            &metrics,
            "--state-dir",
            state.to_str().unwrap(),
            "--checkpoint-interval",
            "200ms",
        ],
    );
    let text = poll(
        Duration::from_secs(60),
        "results and checkpoints while the input flows",
        || {
            let t = std::panic::catch_unwind(|| scrape(&metrics)).ok()?;
            let checkpoints = metric(&t, "dab_checkpoints_total{pipeline=\"w\"}")?;
            let results = metric(&t, "dab_window_results_total{pipeline=\"w\"}")?;
            (checkpoints >= 3.0 && results >= 2.0).then_some(t)
        },
        || dab.stderr(),
    );
    let read = metric(&text, "dab_pipeline_events_in_total{pipeline=\"w\"}").unwrap_or(0.0);
    eprintln!("{read} events in when checkpoints and results were seen");
    assert!(read > 0.0);
    let _ = stop(dab, &metrics);
}
