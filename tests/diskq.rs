//! The `kind: disk` queue end to end (issue 14 item 6, SPEC section 10):
//! real `dab run` processes, HTTP clients posting numbered events to an
//! `http` source whose pipeline writes a disk queue, and a second pipeline
//! draining the queue, slowed by a rate limit, into a file.
//!
//! - kill -9 twice, restarted on the same queue directory: every event
//!   answered 200 (a 200 means the events are on disk under the `fsync`
//!   policy) ends up in the file; duplicates are allowed and counted.
//! - A torn tail (the last segment truncated mid-record while dab is
//!   stopped) is cut off on restart, counted in `/metrics`, and the queue
//!   goes on.
//! - A full queue (small `max_bytes`, a slow reader) holds the writers
//!   back: the clients' answers wait, and the segment files never take more
//!   than `max_bytes` plus one segment. Under `when_full: drop_newest` it
//!   refuses the newest events instead, counted.
//! - A reload keeps an unchanged disk queue; a reading pipeline it adds
//!   gets every record the queue keeps.
//! - SIGTERM with a backlog exits 0 and leaves the backlog for the next
//!   start.

#[allow(dead_code)]
mod fault_support;
#[allow(dead_code)]
mod run_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fault_support::load::{Load, Spec};
use fault_support::{file_offsets, signal, start_dab, terminate_ok, yaml_path, Row};
use run_support::client::{free_addr, metric, post_events, scrape, wait_http_ok};
use run_support::process::Dab;
use run_support::{poll, write_set};

/// The set: `HttpIn -> Spool` and `Spool -> FileOut` at most `rate` events
/// a second (`on_limit = wait`: the reader is slow, nothing is dropped).
fn spool_set(dir: &Path, listen: &str, queue: &str, rate: u32) -> PathBuf {
    let out = dir.join("out.ndjson");
    write_set(
        dir,
        &format!(
            "ingest.NewPipeline().In(HttpIn).Out(Spool)\ndrain.NewPipeline().In(Spool).Out(FileOut).WithRateLimit({rate})\n"
        ),
        &format!(
            "sources:\n  HttpIn: {{ kind: http, listen: \"{listen}\" }}\nsinks:\n  FileOut: {{ kind: file, path: {} }}\nqueues:\n  Spool: {{ kind: disk, path: {}, {queue} }}\n",
            yaml_path(&out),
            yaml_path(&dir.join("spool")),
        ),
    );
    out
}

/// The queue's segment files, oldest first.
fn segments(spool: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(spool) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seg-"))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", spool.display()),
    };
    v.sort();
    v
}

/// Bytes the segment files take now (a file deleted meanwhile counts 0).
fn disk_usage(spool: &Path) -> u64 {
    segments(spool)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

fn series(metrics: &str, name: &str) -> f64 {
    let text = scrape(metrics);
    metric(&text, name).unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Waits until a series reads `want` (the queue's figures are refreshed
/// every 250 ms).
fn wait_series(metrics: &str, name: &str, want: f64) {
    poll(
        Duration::from_secs(10),
        &format!("{name} = {want}"),
        || (metric(&scrape(metrics), name) == Some(want)).then_some(()),
        || scrape(metrics),
    );
}

fn distinct(offsets: &[u64]) -> usize {
    offsets
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}

/// Waits until `load` has `n` events acknowledged in all.
fn wait_acked(load: &Load, n: u64, describe: impl Fn() -> String) {
    poll(
        Duration::from_secs(60),
        &format!("{n} events acknowledged"),
        || (load.acked() >= n).then_some(()),
        || format!("acked {}; {}", load.acked(), describe()),
    );
}

#[test]
fn every_acknowledged_event_survives_two_kill_9s() {
    const PHASE: u64 = 3_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_addr();
    let out = spool_set(dir.path(), &listen, "fsync: 20ms, max_bytes: 256MiB", 1_500);
    let (mut dab, mut metrics) = start_serving(dir.path(), &listen);
    let load = Load::start(
        &listen,
        Spec {
            clients: 4,
            batch: 50,
            limit: Duration::from_secs(120),
            timeout: Duration::from_secs(10),
            ..Spec::default()
        },
    );
    let mut backlogs = Vec::new();
    for kill in 1..=2u64 {
        wait_acked(&load, kill * PHASE, || dab.stderr());
        // What was acknowledged and not yet in the file is only on disk.
        let acked = load.acked();
        let backlog = acked.saturating_sub(distinct(&file_offsets(&out)) as u64);
        assert!(
            series(
                &metrics,
                "dab_diskq_appended_records_total{queue=\"Spool\"}"
            ) > 0.0,
            "the queue took nothing"
        );
        signal(dab.pid(), "KILL");
        let status = dab.wait(Duration::from_secs(10));
        assert!(!status.success(), "dab was killed: {status}");
        backlogs.push(backlog);
        (dab, metrics) = start_serving(dir.path(), &listen);
    }
    wait_acked(&load, 3 * PHASE, || dab.stderr());
    let outcome = load.stop();
    let want = outcome.acked.len();
    poll(
        Duration::from_secs(60),
        "every acknowledged event in the file",
        || {
            let got = file_offsets(&out);
            let seen: std::collections::BTreeSet<u64> = got.into_iter().collect();
            outcome.acked.is_subset(&seen).then_some(())
        },
        || {
            format!(
                "{} of {want} in the file; stderr:\n{}",
                distinct(&file_offsets(&out)),
                dab.stderr()
            )
        },
    );
    terminate_ok(&mut dab);
    let delivered = file_offsets(&out);
    let mut row = Row::of_load("disk queue, kill -9 twice", &outcome, &delivered);
    row.note = format!(
        "acknowledged but only on disk at each kill: {backlogs:?}; refused: {}",
        outcome.refusals_text()
    );
    row.report();
    assert!(
        backlogs.iter().any(|b| *b > 0),
        "no kill found acknowledged events still in the queue: the test proved nothing ({backlogs:?})"
    );
}

/// Frames of a segment: (start, length with the 24-byte header).
fn frames(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut at = 0;
    let mut out = Vec::new();
    while at + 24 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        out.push((at, 24 + len));
        at += 24 + len;
    }
    assert_eq!(at, bytes.len(), "the segment ends with a whole frame");
    out
}

/// Starts dab on `dir` and waits for its metrics and its http source.
fn start_serving(dir: &Path, listen: &str) -> (Dab, String) {
    let (dab, metrics) = start_dab(dir);
    wait_http_ok(listen, "/healthz", Duration::from_secs(15), || dab.stderr());
    (dab, metrics)
}

/// Waits until the file holds `n` distinct events.
fn wait_in_file(out: &Path, n: usize, dab: &Dab) {
    poll(
        Duration::from_secs(30),
        &format!("{n} events in the file"),
        || (distinct(&file_offsets(out)) == n).then_some(()),
        || dab.stderr(),
    );
}

fn post_range(listen: &str, first: u64, n: u64) {
    let r = post_events(
        listen,
        &fault_support::load::body(first, n),
        Duration::from_secs(10),
    );
    assert_eq!(r.status, 200, "POST of {first}..{}: {}", first + n, r.body);
}

#[test]
fn a_torn_tail_is_cut_off_on_restart_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_addr();
    let out = spool_set(dir.path(), &listen, "fsync: always", 100_000);
    let spool = dir.path().join("spool");
    let (mut dab, _) = start_serving(dir.path(), &listen);
    for b in 0..10 {
        post_range(&listen, b * 10, 10);
    }
    wait_in_file(&out, 100, &dab);
    terminate_ok(&mut dab);

    // Cut the last segment 7 bytes short: inside its last record.
    let last = segments(&spool).pop().expect("a segment file");
    let bytes = std::fs::read(&last).expect("read the segment");
    let (start, _) = *frames(&bytes).last().expect("a record in the segment");
    let cut_to = bytes.len() - 7;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .and_then(|f| f.set_len(cut_to as u64))
        .expect("truncate the segment");

    let (mut dab, metrics) = start_serving(dir.path(), &listen);
    assert_eq!(
        series(&metrics, "dab_diskq_torn_records_total{queue=\"Spool\"}"),
        1.0
    );
    assert_eq!(
        series(&metrics, "dab_diskq_torn_bytes_total{queue=\"Spool\"}"),
        (cut_to - start) as f64
    );
    assert_eq!(
        std::fs::metadata(&last).expect("segment").len(),
        start as u64,
        "the torn record was cut off the file"
    );
    assert!(
        dab.stderr().contains("a torn tail was cut off"),
        "the recovery was not logged:\n{}",
        dab.stderr()
    );
    // The queue goes on: new events pass through it.
    post_range(&listen, 100, 10);
    wait_in_file(&out, 110, &dab);
    terminate_ok(&mut dab);
}

#[test]
fn a_full_queue_holds_writers_back_and_disk_use_stays_bounded() {
    const MAX_BYTES: u64 = 1 << 20;
    // max_bytes / 4, the default segment size under 256 MiB.
    const SEGMENT: u64 = MAX_BYTES / 4;
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_addr();
    let out = spool_set(
        dir.path(),
        &listen,
        &format!("fsync: 10ms, max_bytes: {MAX_BYTES}"),
        1_000,
    );
    let spool = dir.path().join("spool");
    let (mut dab, metrics) = start_serving(dir.path(), &listen);
    let load = Load::start(
        &listen,
        Spec {
            clients: 4,
            batch: 100,
            limit: Duration::from_secs(6),
            timeout: Duration::from_secs(3),
            ..Spec::default()
        },
    );
    let mut most = 0;
    let mut held = 0.0f64;
    let t0 = Instant::now();
    while !load.finished() && t0.elapsed() < Duration::from_secs(10) {
        most = most.max(disk_usage(&spool));
        let text = scrape(&metrics);
        held = held.max(metric(&text, "dab_diskq_held_records{queue=\"Spool\"}").unwrap_or(0.0));
        std::thread::sleep(Duration::from_millis(10));
    }
    let outcome = load.stop();
    let full = series(&metrics, "dab_diskq_full_total{queue=\"Spool\"}");
    assert!(
        full > 0.0,
        "the queue was never full: the test proved nothing"
    );
    assert!(held > 0.0, "no write was ever held back");
    assert!(
        most <= MAX_BYTES + SEGMENT,
        "segment files took {most} bytes, over max_bytes {MAX_BYTES} plus a segment"
    );
    // Back pressure, not loss: everything acknowledged is delivered.
    poll(
        Duration::from_secs(60),
        "every acknowledged event in the file",
        || {
            let seen: std::collections::BTreeSet<u64> = file_offsets(&out).into_iter().collect();
            outcome.acked.is_subset(&seen).then_some(())
        },
        || dab.stderr(),
    );
    terminate_ok(&mut dab);
    let mut row = Row::of_load(
        "disk queue full (1 MiB, slow reader)",
        &outcome,
        &file_offsets(&out),
    );
    row.note = format!(
        "most disk use {most} bytes; appends held back {full}; answers not 200: {}",
        outcome.refusals_text()
    );
    row.report();
}

/// A reload that rebuilds the pipelines around a disk queue whose binding
/// is unchanged keeps the queue (its owner, its counters, its readers'
/// positions) running: nothing is read twice, and everything arrives.
#[test]
fn an_unchanged_disk_queue_keeps_running_across_a_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_addr();
    let out = spool_set(dir.path(), &listen, "fsync: 10ms", 100_000);
    let (mut dab, metrics) = start_serving(dir.path(), &listen);
    for b in 0..5 {
        post_range(&listen, b * 20, 20);
    }
    wait_in_file(&out, 100, &dab);
    let appended = "dab_diskq_appended_records_total{queue=\"Spool\"}";
    wait_series(&metrics, appended, 100.0);

    // Both pipelines change (a filter each side that keeps every event):
    // both are rebuilt, the queue's binding is the same.
    std::fs::write(
        dir.path().join("t.dab"),
        "ingest.NewPipeline().In(HttpIn).FilterType(A).Out(Spool)\ndrain.NewPipeline().In(Spool).FilterType(A).Out(FileOut).WithRateLimit(100000)\n",
    )
    .expect("write t.dab");
    signal(dab.pid(), "HUP");
    dab.wait_for_log(Duration::from_secs(30), "the reload", |l| {
        l.contains("reloaded") && l.contains("ingest") && l.contains("drain")
    });
    for b in 5..10 {
        post_range(&listen, b * 20, 20);
    }
    wait_in_file(&out, 200, &dab);
    // The same queue, opened once: its counters go on from before.
    wait_series(&metrics, appended, 200.0);
    assert_eq!(
        series(&metrics, "dab_diskq_torn_records_total{queue=\"Spool\"}"),
        0.0
    );
    assert_eq!(
        file_offsets(&out).len(),
        200,
        "every event once: nothing was read again after the reload"
    );

    // A new reading pipeline: a new reader, which starts at the oldest
    // record the queue keeps (all of them: one segment, never deleted).
    let audit = dir.path().join("audit.ndjson");
    let yaml = std::fs::read_to_string(dir.path().join("dab.yaml")).expect("read dab.yaml");
    std::fs::write(
        dir.path().join("dab.yaml"),
        yaml.replace(
            "sinks:\n",
            &format!(
                "sinks:\n  AuditOut: {{ kind: file, path: {} }}\n",
                yaml_path(&audit)
            ),
        ),
    )
    .expect("write dab.yaml");
    std::fs::write(
        dir.path().join("t.dab"),
        "ingest.NewPipeline().In(HttpIn).FilterType(A).Out(Spool)\ndrain.NewPipeline().In(Spool).FilterType(A).Out(FileOut).WithRateLimit(100000)\naudit.NewPipeline().In(Spool).Out(AuditOut)\n",
    )
    .expect("write t.dab");
    signal(dab.pid(), "HUP");
    poll(
        Duration::from_secs(30),
        "the second reload",
        || {
            let reloads = dab
                .stderr()
                .lines()
                .filter(|l| l.contains("reloaded") && l.contains("audit"))
                .count();
            (reloads == 1).then_some(())
        },
        || dab.stderr(),
    );
    post_range(&listen, 200, 20);
    wait_in_file(&out, 220, &dab);
    wait_in_file(&audit, 220, &dab);
    terminate_ok(&mut dab);
}

/// SIGTERM while a slow reader is behind: dab exits 0 (what the reader
/// has not delivered is not abandoned: it stays in the queue), and the
/// next start delivers the rest.
#[test]
fn a_stop_leaves_the_backlog_in_the_queue_for_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_addr();
    let out = spool_set(dir.path(), &listen, "fsync: 10ms", 500);
    let (mut dab, _) = start_serving(dir.path(), &listen);
    for b in 0..20 {
        post_range(&listen, b * 100, 100);
    }
    let at_stop = distinct(&file_offsets(&out));
    assert!(
        at_stop < 2_000,
        "the reader was not behind: the test proves nothing"
    );
    // Exit 0: the stop drains what the reader handed on, and counts
    // nothing abandoned for what it had not.
    let took = terminate_ok(&mut dab);
    assert!(took < Duration::from_secs(20), "the stop took {took:?}");
    let after_stop = distinct(&file_offsets(&out));
    let (mut dab, _) = start_serving(dir.path(), &listen);
    poll(
        Duration::from_secs(60),
        "all 2000 events in the file",
        || (distinct(&file_offsets(&out)) == 2_000).then_some(()),
        || dab.stderr(),
    );
    terminate_ok(&mut dab);
    eprintln!(
        "stop with a backlog: {at_stop} delivered at SIGTERM, {after_stop} at exit, {} duplicates after the restart",
        file_offsets(&out).len() - 2_000
    );
}

/// `when_full: drop_newest`: a full queue refuses the newest events instead
/// of holding the writers back; each is counted (by the writing sink as
/// `rejected`, and by the queue), and everything else is delivered.
#[test]
fn drop_newest_counts_what_a_full_queue_refuses() {
    const MAX_BYTES: u64 = 1 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_addr();
    let out = spool_set(
        dir.path(),
        &listen,
        &format!("fsync: 10ms, max_bytes: {MAX_BYTES}, when_full: drop_newest"),
        1_000,
    );
    let spool = dir.path().join("spool");
    let (mut dab, metrics) = start_serving(dir.path(), &listen);
    let mut most = 0;
    // About 3 MiB of records offered at once: more than the queue holds.
    for b in 0..200 {
        post_range(&listen, b * 100, 100);
        most = most.max(disk_usage(&spool));
    }
    let dropped = series(
        &metrics,
        "dab_sink_dropped_events_total{sink=\"Spool\",reason=\"rejected\"}",
    );
    assert!(
        dropped > 0.0,
        "nothing was dropped: the test proves nothing"
    );
    assert!(most <= MAX_BYTES, "segment files took {most} bytes");
    wait_series(
        &metrics,
        "dab_diskq_dropped_records_total{queue=\"Spool\"}",
        dropped,
    );
    let kept = 20_000 - dropped as usize;
    poll(
        Duration::from_secs(60),
        &format!("the {kept} events not dropped in the file"),
        || (distinct(&file_offsets(&out)) == kept).then_some(()),
        || dab.stderr(),
    );
    terminate_ok(&mut dab);
    eprintln!(
        "drop_newest: {dropped} of 20000 dropped, {kept} delivered, most disk use {most} bytes"
    );
}

/// A second process on a queue directory another one has open is refused
/// at start with a clear error, and the first goes on serving: two
/// writers interleaving frames in one segment would corrupt it.
#[test]
fn a_second_process_on_the_same_queue_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_addr();
    let out = spool_set(dir.path(), &listen, "fsync: always", 1_000);
    let (mut first, _) = start_serving(dir.path(), &listen);
    let other = tempfile::tempdir().expect("tempdir");
    let listen2 = free_addr();
    write_set(
        other.path(),
        "ingest.NewPipeline().In(HttpIn).Out(Spool)\ndrain.NewPipeline().In(Spool).Out(FileOut)\n",
        &format!(
            "sources:\n  HttpIn: {{ kind: http, listen: \"{listen2}\" }}\nsinks:\n  FileOut: {{ kind: file, path: {} }}\nqueues:\n  Spool: {{ kind: disk, path: {} }}\n",
            yaml_path(&other.path().join("out.ndjson")),
            yaml_path(&dir.path().join("spool")),
        ),
    );
    let mut second = Dab::start(other.path(), &["run", "t.dab"]);
    let status = second.wait(Duration::from_secs(30));
    assert!(!status.success(), "a second process opened a locked queue");
    let err = second.stderr();
    assert!(
        err.contains("open in another process") && err.contains("spool"),
        "the refusal does not say why: {err}"
    );
    post_range(&listen, 0, 100);
    wait_in_file(&out, 100, &first);
    terminate_ok(&mut first);
}
