//! The examples under `examples/` run end to end, as a user runs them:
//! their own `run.sh`, with `DAB_BIN` pointing at the binary under test
//! (no release build). A missing tansu or moto fails the test.

#[path = "kafka_support/broker.rs"]
mod broker;
mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The Python venv of `scripts/setup-python.sh`: `DAB_VENV`, else
/// `~/.cache/dab/venv`.
fn venv() -> PathBuf {
    match std::env::var_os("DAB_VENV") {
        Some(p) => p.into(),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/dab/venv"),
    }
}

/// `bash examples/NAME/run.sh` with `DAB_BIN` the binary under test, the
/// work directory `dir/work`, a free loopback port in each variable of
/// `ports`, and no `RUST_LOG`.
fn example_command(name: &str, dir: &Path, ports: &[&str]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(common::root().join(format!("examples/{name}/run.sh")))
        .env("DAB_BIN", env!("CARGO_BIN_EXE_dab"))
        .env("WORK_DIR", dir.join("work"))
        .env_remove("RUST_LOG");
    for var in ports {
        cmd.env(var, free_port().to_string());
    }
    cmd
}

/// For an example that starts tansu: the broker binary, the venv with its
/// Kafka client, and the broker's storage under `dir/kafka`.
fn with_kafka<'a>(cmd: &'a mut Command, tansu: &Path, venv: &Path, dir: &Path) -> &'a mut Command {
    cmd.env("DAB_TANSU", tansu)
        .env("DAB_VENV", venv)
        .env("DAB_RUN_DIR", dir.join("kafka"))
}

/// Events the warehouse test posts: several batches of `feed.py`'s 500.
const EVENTS: u64 = 3000;
/// `feed.py`'s default span, from 2026-12-01T08:00:00Z.
const HOURS: u128 = 6;
const HOUR_NS: u128 = 3_600_000_000_000;

/// How many of `EVENTS` events `feed.py` puts in each hour (`HH:00`), by
/// its rule: event i at 08:00 + i * HOURS h / EVENTS, rounded down.
fn want_per_hour() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for i in 0..u128::from(EVENTS) {
        let hour = 8 + i * HOURS * HOUR_NS / u128::from(EVENTS) / HOUR_NS;
        *out.entry(format!("2026-12-01 {hour:02}:00")).or_default() += 1;
    }
    out
}

/// Runs `cmd` (an example's `run.sh` under bash) and returns its stdout
/// once it succeeded. Past `limit` the script gets SIGTERM, so that its
/// trap stops what it started (SIGKILL, the Kid's drop, would leave them);
/// a failure shows its output and `dir`'s `work/dab.log`.
fn run_example(name: &str, cmd: &mut Command, limit: Duration, dir: &std::path::Path) -> String {
    let kid = broker::Kid::spawn(name, cmd);
    let (done, watch) = mpsc::channel::<()>();
    let pid = kid.pid();
    let watchdog = std::thread::spawn(move || {
        if watch.recv_timeout(limit).is_err() {
            broker::signal(pid, "TERM");
        }
    });
    let out = kid.finish(limit + Duration::from_secs(40));
    let _ = done.send(());
    watchdog.join().expect("watchdog");
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert!(
        out.status.success(),
        "{name} failed ({}):\n{stdout}\n{stderr}\n{}",
        out.status,
        std::fs::read_to_string(dir.join("work/dab.log")).unwrap_or_default()
    );
    stdout.clone()
}

/// `examples/warehouse/run.sh`: HTTP -> Kafka (tansu) -> Parquet on S3
/// (moto) -> DuckDB. The query's total is the number of events posted,
/// each hour holds the events `feed.py` timed into it, and the rows without
/// a status are exactly feed.py's every 11th.
#[test]
fn warehouse_example_archives_every_event_by_hour() {
    let tansu = broker::tansu();
    let venv = venv();
    let moto = venv.join("bin/moto_server");
    assert!(
        moto.is_file(),
        "moto's S3 server is not installed (looked for {}): run scripts/setup-python.sh",
        moto.display()
    );
    let dir = tempfile::tempdir().expect("dir");
    let mut cmd = example_command(
        "warehouse",
        dir.path(),
        &["KAFKA_PORT", "S3_PORT", "INGEST_PORT", "METRICS_PORT"],
    );
    with_kafka(&mut cmd, &tansu, &venv, dir.path())
        .arg(EVENTS.to_string())
        .env("WAIT_S", "120")
        .env_remove("QUERY_DIR");
    let stdout = &run_example(
        "examples/warehouse/run.sh",
        &mut cmd,
        Duration::from_secs(300),
        dir.path(),
    );

    // The per-hour table: `  2026-12-01 08:00     500  DEBUG INFO ...`.
    let mut per_hour = BTreeMap::new();
    for line in stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.len() == 7 && words[0].starts_with("2026-") {
            let hour = format!("{} {}", words[0], words[1]);
            let events: u64 = words[2].parse().expect("events");
            let levels: u64 = words[3..]
                .iter()
                .map(|w| w.parse::<u64>().expect("level count"))
                .sum();
            assert_eq!(levels, events, "levels of {hour} add up: {line}");
            assert!(per_hour.insert(hour, events).is_none(), "{stdout}");
        }
    }
    assert_eq!(per_hour, want_per_hour(), "{stdout}");
    assert!(
        stdout.contains(&format!("\ntotal rows: {EVENTS}\n")),
        "{stdout}"
    );
    let no_status = EVENTS.div_ceil(11);
    assert!(
        stdout.contains(&format!("NULL status: {no_status} of {EVENTS} rows")),
        "{stdout}"
    );
}

/// `examples/api-stats/run.sh`: the router, the per-team windows with the
/// teams table, and the experiment exposure join, fed over HTTP; its
/// report compares every count with what `feed.py` computed in plain
/// Python and fails on any difference.
#[test]
fn api_stats_example_gives_the_reference_results() {
    let dir = tempfile::tempdir().expect("dir");
    let mut cmd = example_command("api-stats", dir.path(), &["INGEST_PORT", "METRICS_PORT"]);
    cmd.env("WAIT_S", "120");
    let stdout = &run_example(
        "examples/api-stats/run.sh",
        &mut cmd,
        Duration::from_secs(240),
        dir.path(),
    );
    for what in ["API statistics", "variant statistics"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{what}: all ")))
            .unwrap_or_else(|| panic!("no verdict for {what}:\n{stdout}"));
        assert!(line.ends_with("results equal the reference"), "{line}");
        let n: u64 = line
            .split_whitespace()
            .nth(3)
            .and_then(|w| w.parse().ok())
            .unwrap_or(0);
        assert!(n > 0, "{line}");
    }
}

/// `examples/sidecar/run.sh`: the Murron sidecar. gRPC, HTTP, TCP and unix
/// socket clients feed a disk spool; the spool ships each event to the
/// Kafka topic of its type (`events.{type}`) or to the dead letter topic.
/// The broker (tansu, SQLite storage) is killed -9 for 30 s in the middle
/// of the feed. The report must show every input answered throughout the
/// outage, and every accepted event in exactly the topic its type names;
/// here the dead letter topic holds exactly the `Trace` events (every
/// fifth offset of each input), which no route takes, and `events.Signup`,
/// a type first sent while the broker is down, has its events.
#[test]
fn sidecar_example_rides_out_a_30_s_broker_outage() {
    let tansu = broker::tansu();
    let venv = venv();
    let dir = tempfile::tempdir().expect("dir");
    let mut cmd = example_command(
        "sidecar",
        dir.path(),
        &[
            "KAFKA_PORT",
            "METRICS_PORT",
            "GRPC_PORT",
            "HTTP_PORT",
            "TCP_PORT",
        ],
    );
    with_kafka(&mut cmd, &tansu, &venv, dir.path()).env("WAIT_S", "90");
    let stdout = &run_example(
        "examples/sidecar/run.sh",
        &mut cmd,
        Duration::from_secs(240),
        dir.path(),
    );

    // `answers per input (outage: 30.0 s, broker killed -9)`
    let outage: f64 = stdout
        .split("(outage: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no outage length:\n{stdout}"));
    assert!(outage >= 30.0, "{stdout}");
    // `  grpc  39  120  21  135.7  0.29  0`: answered during the outage,
    // never more than 5 s without an answer.
    for input in ["grpc", "http", "tcp", "unix"] {
        let row: Vec<&str> = stdout
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.len() == 7 && w[0] == input)
            .unwrap_or_else(|| panic!("no answers row for {input}:\n{stdout}"));
        let during: u64 = row[2].parse().expect("answers during");
        let gap: f64 = row[5].parse().expect("longest wait");
        assert!(during > 0 && gap <= 5.0, "{input}: {row:?}\n{stdout}");
    }
    // `events accepted: 2880 (grpc 720, http 720, tcp 720, unix 720)`
    let line = stdout
        .lines()
        .find(|l| l.starts_with("events accepted: "))
        .unwrap_or_else(|| panic!("no accepted count:\n{stdout}"));
    let counts: Vec<u64> = line
        .split(['(', ')', ','])
        .skip(1)
        .filter_map(|part| part.split_whitespace().nth(1)?.parse().ok())
        .collect();
    assert_eq!(counts.len(), 4, "{line}");
    let accepted: u64 = counts.iter().sum();
    assert!(
        line.starts_with(&format!("events accepted: {accepted} (")),
        "{line}"
    );
    // Offsets 0.. of each input; types in turn Login, Message, ApiCall,
    // Message, Trace: the Trace events are offsets 4, 9, 14, ...
    let traces: u64 = counts.iter().map(|n| n / 5).sum();
    let dead: Vec<&str> = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("sidecar.dead-letter "))
        .unwrap_or_else(|| panic!("no dead letter row:\n{stdout}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        dead[2],
        traces.to_string(),
        "distinct dead letters: {stdout}"
    );
    // Signup, routed, is sent only from the broker's kill on: its topic is
    // first written during the outage, and the events still reach it.
    let signups: u64 = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("events.Signup "))
        .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or_else(|| panic!("no events.Signup row:\n{stdout}"));
    assert!(signups > 0, "{stdout}");
    assert!(
        stdout.contains("\nmissing: 0; in a wrong topic: 0; in two topics: 0;"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "\nverdict: all {accepted} accepted events delivered, each in its own topic"
        )),
        "{stdout}"
    );
}
