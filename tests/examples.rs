//! The examples under `examples/` run end to end, as a user runs them:
//! their own `run.sh`, with `DAB_BIN` pointing at the binary under test
//! (no release build). A missing tansu or moto fails the test.

#[path = "kafka_support/broker.rs"]
mod broker;
mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
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
    let venv: PathBuf = match std::env::var_os("DAB_VENV") {
        Some(p) => p.into(),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/dab/venv"),
    };
    let moto = venv.join("bin/moto_server");
    assert!(
        moto.is_file(),
        "moto's S3 server is not installed (looked for {}): run scripts/setup-python.sh",
        moto.display()
    );
    let dir = tempfile::tempdir().expect("dir");
    let script = common::root().join("examples/warehouse/run.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .arg(EVENTS.to_string())
        .env("DAB_BIN", env!("CARGO_BIN_EXE_dab"))
        .env("DAB_TANSU", &tansu)
        .env("DAB_VENV", &venv)
        .env("DAB_RUN_DIR", dir.path().join("kafka"))
        .env("WORK_DIR", dir.path().join("work"))
        .env("WAIT_S", "120")
        .env_remove("RUST_LOG")
        .env_remove("QUERY_DIR");
    for var in ["KAFKA_PORT", "S3_PORT", "INGEST_PORT", "METRICS_PORT"] {
        cmd.env(var, free_port().to_string());
    }
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
    let script = common::root().join("examples/api-stats/run.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .env("DAB_BIN", env!("CARGO_BIN_EXE_dab"))
        .env("WORK_DIR", dir.path().join("work"))
        .env("WAIT_S", "120")
        .env_remove("RUST_LOG");
    for var in ["INGEST_PORT", "METRICS_PORT"] {
        cmd.env(var, free_port().to_string());
    }
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
