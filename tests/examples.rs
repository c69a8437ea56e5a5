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
    let kid = broker::Kid::spawn("examples/warehouse/run.sh", &mut cmd);
    // Past its time the script gets SIGTERM, so that its trap stops the
    // broker, moto and dab; SIGKILL (the Kid's drop) would leave them.
    let (done, watch) = mpsc::channel::<()>();
    let pid = kid.pid();
    let watchdog = std::thread::spawn(move || {
        if watch.recv_timeout(Duration::from_secs(300)).is_err() {
            broker::signal(pid, "TERM");
        }
    });
    let out = kid.finish(Duration::from_secs(340));
    let _ = done.send(());
    watchdog.join().expect("watchdog");
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert!(
        out.status.success(),
        "run.sh failed ({}):\n{stdout}\n{stderr}\n{}",
        out.status,
        std::fs::read_to_string(dir.path().join("work/dab.log")).unwrap_or_default()
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
