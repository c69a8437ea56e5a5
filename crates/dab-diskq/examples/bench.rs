//! Disk queue throughput against the disk's own ceiling, in one run.
//!
//! `cargo run --release -p dab-diskq --example bench -- [DIR] [MIB] [ROUNDS]`
//! (or `scripts/bench-diskq.sh`). Each round measures, in DIR:
//! - the ceiling: `dd if=/dev/zero of=DIR/dd.bin bs=1M count=MIB conv=fdatasync`;
//! - write + read with `fsync: 100ms`: 200-byte records appended in batches
//!   of 1,024 while one reader reads and acknowledges what is durable, until
//!   MIB of payload went through both;
//! - the same with `fsync: always`.
//!
//! It prints each round and the medians, events/s and MB/s (payload, and
//! bytes on disk with the 24-byte frame headers), and the ratio of the
//! queue's disk bandwidth to dd's. With `PROFILE=interval` it runs only
//! the `fsync: 100ms` case, once (to run under `perf record`).

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dab_diskq::{DiskQueue, FsyncPolicy, Options, WhenFull, FRAME_HEADER};

const RECORD: usize = 200;
const BATCH: usize = 1024;

struct Run {
    events_per_s: f64,
    payload_mb_s: f64,
    disk_mb_s: f64,
}

fn dd(dir: &Path, mib: u64) -> Result<f64, String> {
    let file = dir.join("dd.bin");
    let t = Instant::now();
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .args(["bs=1M", &format!("count={mib}"), "conv=fdatasync"])
        .output()
        .map_err(|e| format!("dd: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&file);
    if !out.status.success() {
        return Err(format!(
            "dd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((mib << 20) as f64 / secs / 1e6)
}

fn queue_run(dir: &Path, mib: u64, fsync: FsyncPolicy) -> Result<Run, String> {
    let qdir = dir.join("queue");
    let _ = std::fs::remove_dir_all(&qdir);
    let opts = Options {
        max_bytes: 4 << 30,
        segment_bytes: 64 << 20,
        fsync,
        when_full: WhenFull::Block,
        readers: vec!["bench".to_string()],
    };
    let mut q = DiskQueue::open(&qdir, opts).map_err(|e| e.to_string())?;
    let batches = ((mib << 20) / (RECORD * BATCH) as u64).max(1);
    let batch: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| {
            let mut r = vec![b'x'; RECORD];
            r[..8].copy_from_slice(&(i as u64).to_le_bytes());
            r
        })
        .collect();
    let (mut read, mut bytes_read) = (0u64, 0u64);
    let mut drain = |q: &mut DiskQueue| -> Result<(), String> {
        loop {
            let got = q.read("bench", 4096, 4 << 20).map_err(|e| e.to_string())?;
            let Some(last) = got.last_seq() else {
                return Ok(());
            };
            read += got.len() as u64;
            bytes_read += got.iter().map(|r| r.bytes.len() as u64).sum::<u64>();
            q.ack("bench", last).map_err(|e| e.to_string())?;
        }
    };
    let t = Instant::now();
    for _ in 0..batches {
        q.append(&batch).map_err(|e| e.to_string())?;
        drain(&mut q)?;
    }
    q.sync().map_err(|e| e.to_string())?;
    drain(&mut q)?;
    q.sync().map_err(|e| e.to_string())?;
    let secs = t.elapsed().as_secs_f64();
    let events = batches * BATCH as u64;
    if read != events || bytes_read != events * RECORD as u64 {
        return Err(format!("read {read} of {events} records back"));
    }
    let m = q.metrics();
    drop(q);
    let _ = std::fs::remove_dir_all(&qdir);
    if m.segments != 1 {
        return Err(format!(
            "{} segments left after everything was acked",
            m.segments
        ));
    }
    Ok(Run {
        events_per_s: events as f64 / secs,
        payload_mb_s: (events * RECORD as u64) as f64 / secs / 1e6,
        disk_mb_s: (events * (RECORD + FRAME_HEADER) as u64) as f64 / secs / 1e6,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().map_or_else(std::env::temp_dir, PathBuf::from);
    let mib: u64 = args
        .next()
        .map_or(Ok(256), |s| s.parse())
        .map_err(|e| format!("MIB: {e}"))?;
    let rounds: usize = args
        .next()
        .map_or(Ok(3), |s| s.parse())
        .map_err(|e| format!("ROUNDS: {e}"))?;
    // PROFILE=interval runs the fsync 100ms case once, without dd (for
    // `perf record`).
    if std::env::var("PROFILE").is_ok_and(|p| p == "interval") {
        let iv = queue_run(&dir, mib, FsyncPolicy::Interval(Duration::from_millis(100)))?;
        println!(
            "fsync 100ms: {:.0} ev/s, {:.1} MB/s on disk",
            iv.events_per_s, iv.disk_mb_s
        );
        return Ok(());
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    println!(
        "disk queue bench in {}: {mib} MiB per run, {RECORD}-byte records, batches of {BATCH}, {rounds} rounds",
        dir.display()
    );
    let (mut dds, mut ivs, mut als) = (Vec::new(), Vec::new(), Vec::new());
    let interval = FsyncPolicy::Interval(Duration::from_millis(100));
    for round in 1..=rounds {
        let d = dd(&dir, mib)?;
        let iv = queue_run(&dir, mib, interval)?;
        let al = queue_run(&dir, mib, FsyncPolicy::Always)?;
        println!(
            "round {round}: dd fdatasync {d:.1} MB/s | fsync 100ms: {:.0} ev/s, {:.1} MB/s payload, {:.1} MB/s disk | fsync always: {:.0} ev/s, {:.1} MB/s payload, {:.1} MB/s disk",
            iv.events_per_s, iv.payload_mb_s, iv.disk_mb_s, al.events_per_s, al.payload_mb_s, al.disk_mb_s
        );
        dds.push(d);
        ivs.push(iv);
        als.push(al);
    }
    let dd_m = median(dds);
    for (name, runs) in [("fsync 100ms", &ivs), ("fsync always", &als)] {
        let ev = median(runs.iter().map(|r| r.events_per_s).collect());
        let pay = median(runs.iter().map(|r| r.payload_mb_s).collect());
        let disk = median(runs.iter().map(|r| r.disk_mb_s).collect());
        println!(
            "median {name}: {ev:.0} events/s, {pay:.1} MB/s payload, {disk:.1} MB/s on disk; ratio to dd {:.2} (payload {:.2})",
            disk / dd_m,
            pay / dd_m
        );
    }
    println!("median dd conv=fdatasync: {dd_m:.1} MB/s");
    Ok(())
}
