//! Fault paths that `tests/faults.rs` does not cover: a full disk under a
//! `kind: disk` queue and under the `tcp`, `unix` and `murron_grpc`
//! sources, and a Kafka sink that refuses events for good (too large).
//! Real `dab run`
//! processes, HTTP clients posting numbered events, and a small tmpfs the
//! test mounts (root, as in CI). Each test counts the events answered 200
//! against the events that arrived: nothing acknowledged may be missing
//! (`Row::report`), and what happened must show in `/metrics`.

#[path = "kafka_support/broker.rs"]
mod broker;
#[allow(dead_code)]
mod fault_support;
#[allow(dead_code)]
mod run_support;
#[path = "s3_support/mod.rs"]
mod s3_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fault_support::load::{line, Load, Spec};
use fault_support::peer::{Handler, Peer, Seen};
use fault_support::{file_offsets, start_dab, terminate_ok, yaml_path, Row, Tmpfs, START};
use run_support::client::{free_addr, metric, request, scrape, wait_http_ok, wait_tcp};
use run_support::process::Dab;
use run_support::{poll, write_set};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// A series of `/metrics`, 0 when absent.
fn series(metrics: &str, name: &str) -> f64 {
    metric(&scrape(metrics), name).unwrap_or(0.0)
}

/// The lines of dab's log that tell of a panic.
fn panics(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| l.contains("panicked")).collect()
}

/// A peer that answers 503 while `paused` holds, else 200.
fn pausable_peer(paused: &Arc<AtomicBool>) -> (Peer, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let p = Arc::clone(paused);
    let handler: Arc<Handler> = Arc::new(move |_: &[u64]| {
        if p.load(Ordering::SeqCst) {
            (503, Duration::ZERO)
        } else {
            (200, Duration::ZERO)
        }
    });
    (Peer::start("127.0.0.1:0", &seen, &handler), seen)
}

/// Waits until every offset of `acked` is in `delivered()`.
fn wait_all_delivered(
    acked: &BTreeSet<u64>,
    delivered: &dyn Fn() -> Vec<u64>,
    dab: &Dab,
    metrics: &str,
    limit: Duration,
) {
    poll(
        limit,
        "every acknowledged event delivered",
        || {
            let have: BTreeSet<u64> = delivered().into_iter().collect();
            acked.is_subset(&have).then_some(())
        },
        || {
            let have: BTreeSet<u64> = delivered().into_iter().collect();
            format!(
                "{} of {} acknowledged events delivered; metrics:\n{}\ndab:\n{}",
                acked.intersection(&have).count(),
                acked.len(),
                scrape(metrics),
                dab.stderr()
            )
        },
    );
}

/// Holds for `d` while the disk is full: dab must answer `/healthz` and
/// stay up all along.
fn full_for(dab: &mut Dab, metrics: &str, d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        let r = request(metrics, "GET", "/healthz", b"", Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("/healthz while the disk is full: {e}"));
        assert_eq!(r.status, 200, "/healthz while the disk is full: {}", r.body);
        assert!(dab.running(), "dab stopped while the disk was full");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The 200s that came while the disk was full: from a second after it
/// filled (posts already written then may still be answered) to `freed`.
fn acks_while_full(times: &[Instant], full_at: Instant, freed: Instant) -> usize {
    let grace = full_at + Duration::from_secs(1);
    times.iter().filter(|t| **t >= grace && **t < freed).count()
}

/// Waits until `sink` has counted a failed write: the disk is full.
fn wait_sink_error(metrics: &str, sink: &str, dab: &Dab, acked: &dyn Fn() -> String) {
    let errors = format!("dab_sink_errors_total{{sink=\"{sink}\"}}");
    poll(
        Duration::from_secs(30),
        "the tmpfs to fill up (a sink error)",
        || (series(metrics, &errors) >= 1.0).then_some(()),
        || {
            format!(
                "{}; metrics:\n{}\ndab:\n{}",
                acked(),
                scrape(metrics),
                dab.stderr()
            )
        },
    );
}

/// The paced load of the queue rows: 4 clients, 20 events a post.
fn paced(listen: &str) -> Load {
    Load::start(
        listen,
        Spec {
            batch: 20,
            pause: Duration::from_millis(20),
            budget: 1_000_000,
            timeout: Duration::from_secs(20),
            ..Spec::default()
        },
    )
}

/// A row's fault under `load`: waits until `sink` fails (the disk is
/// full), holds 3 s while dab must serve its probes, remounts the tmpfs
/// with `options`, and waits for 1,000 more 200s (no restart). Returns the
/// load's outcome, the 200s that came while full, and the time from the
/// remount to the first 200 after it.
fn fill_hold_free(
    load: Load,
    dab: &mut Dab,
    metrics: &str,
    sink: &str,
    disk: &Tmpfs,
    options: &str,
) -> (fault_support::load::Outcome, usize, Option<Duration>) {
    wait_sink_error(metrics, sink, dab, &|| format!("{} acked", load.acked()));
    let full_at = Instant::now();
    full_for(dab, metrics, Duration::from_secs(3));
    disk.resize(options);
    let freed = Instant::now();
    let want = load.acked() + 1_000;
    poll(
        Duration::from_secs(30),
        "posts answered 200 again after the space came back (no restart)",
        || (load.acked() >= want).then_some(()),
        || {
            format!(
                "{} acked of {want}; metrics:\n{}\ndab:\n{}",
                load.acked(),
                scrape(metrics),
                dab.stderr()
            )
        },
    );
    let outcome = load.stop();
    let while_full = acks_while_full(&outcome.ack_times, full_at, freed);
    let recovered = outcome.first_ack_after(freed);
    (outcome, while_full, recovered)
}

// A full disk under a disk queue --------------------------------------------

/// The set of the disk-queue row: `HttpIn -> Spool` (a disk queue in
/// `spool`), and `Spool -> HttpOut` (the HTTP peer at `peer`).
fn spool_set(dir: &Path, listen: &str, spool: &Path, peer: &str) {
    write_set(
        dir,
        "ingest.NewPipeline().In(HttpIn).Out(Spool)\ndrain.NewPipeline().In(Spool).Out(HttpOut)\n",
        &format!(
            "sources:\n  HttpIn: {{ kind: http, listen: \"{listen}\" }}\nsinks:\n  HttpOut: {{ kind: http, endpoint: \"http://{peer}/ingest\", timeout: 2000 }}\nqueues:\n  Spool: {{ kind: disk, path: {}, segment_bytes: 64KiB, fsync: 10ms }}\n",
            yaml_path(spool),
        ),
    );
}

/// HTTP clients post into a disk queue on a 256 KiB tmpfs; the pipeline
/// draining it ships to an HTTP peer that answers 503 (paused), so the
/// queue keeps its segments and the tmpfs fills: appends fail with ENOSPC.
/// While it is full, no post is answered 200 (the posts wait: back
/// pressure) and `/healthz` answers;
/// when the tmpfs grows to 8 MiB, posts are answered 200 again with no
/// restart. Then the peer answers 200, and every event answered 200
/// reaches it, dab still running.
#[test]
fn full_disk_under_a_disk_queue() {
    let dir = tmp();
    let spool = dir.path().join("spool");
    let disk = Tmpfs::mount(&spool, "256k");
    let paused = Arc::new(AtomicBool::new(true));
    let (peer, seen) = pausable_peer(&paused);
    let listen = free_addr();
    spool_set(dir.path(), &listen, &spool, peer.addr());
    let (mut dab, metrics) = start_dab(dir.path());
    wait_http_ok(&listen, "/healthz", START, || dab.stderr());
    let errors = "dab_sink_errors_total{sink=\"Spool\"}";
    let (outcome, acked_while_full, recovered) =
        fill_hold_free(paced(&listen), &mut dab, &metrics, "Spool", &disk, "8m");
    let errors_seen = series(&metrics, errors);
    assert!(
        seen.lock().expect("seen").delivered.is_empty(),
        "the paused peer took events"
    );
    paused.store(false, Ordering::SeqCst);
    let delivered = || seen.lock().expect("seen").delivered.clone();
    wait_all_delivered(
        &outcome.acked,
        &delivered,
        &dab,
        &metrics,
        Duration::from_secs(60),
    );
    let text = scrape(&metrics);
    let stderr = dab.stderr();
    assert!(panics(&stderr).is_empty(), "dab panicked:\n{stderr}");
    terminate_ok(&mut dab);
    let delivered = delivered();
    drop(peer);
    drop(disk);

    let mut row = Row::of_load(
        "full disk under a disk queue, then freed",
        &outcome,
        &delivered,
    );
    row.recovered = recovered;
    row.note = format!(
        "{errors_seen} queue sink errors; {acked_while_full} posts answered 200 while full; refused: {}",
        outcome.refusals_text()
    );
    row.report();
    assert!(errors_seen >= 1.0, "the full disk was not counted");
    assert_eq!(
        metric(&text, "dab_sink_failed_events_total{sink=\"Spool\"}"),
        Some(0.0),
        "the queue's sink gave events up:\n{text}"
    );
    // Posts that arrived while the disk was full were held (back
    // pressure), not answered: none got a 200 before the space came back.
    assert_eq!(
        acked_while_full, 0,
        "posts answered 200 while the disk was full"
    );
}

// tcp and unix sources on a full disk ----------------------------------------

/// A socket source's client: writes events `0..first` as NDJSON lines,
/// waits for `go`, writes `first..n`, 100 lines at a time, and closes.
/// The writes block while dab does not read (back pressure); a socket
/// source has no answer, so this is all a client can do.
fn stream_client<W: std::io::Write + Send + 'static>(
    mut w: W,
    first: u64,
    n: u64,
    go: std::sync::mpsc::Receiver<()>,
) -> std::thread::JoinHandle<std::io::Result<()>> {
    std::thread::spawn(move || {
        let mut write = |from: u64, to: u64| -> std::io::Result<()> {
            for at in (from..to).step_by(100) {
                let mut chunk = String::new();
                for i in at..(at + 100).min(to) {
                    chunk.push_str(&line(i));
                    chunk.push('\n');
                }
                w.write_all(chunk.as_bytes())?;
            }
            w.flush()
        };
        write(0, first)?;
        if go.recv().is_ok() {
            write(first, n)?;
        }
        Ok(())
    })
}

/// A socket source (`tcp` or `unix`, bound by `source`) into a file sink
/// on a 512 KiB tmpfs (some batches fit, then it is full: a socket source
/// hands on batches of up to 1,024 events, 150 KB, more than 64 KiB). One
/// client writes `N` events; the file fills, the
/// sink fails and holds, the source stops reading. While the disk is full,
/// the source counts no more events delivered, and every event it counted
/// delivered is in the file. After the tmpfs grows to 8 MiB, every event
/// is delivered, counted delivered, and none failed.
fn socket_source_on_a_full_disk(
    label: &str,
    source: &str,
    connect: &dyn Fn() -> Box<dyn std::io::Write + Send>,
    dir: &Path,
) {
    const N: u64 = 10_000;
    // Delivered before the disk fills (150 KB).
    const FIRST: u64 = 1_000;
    let disk = Tmpfs::mount(&dir.join("disk"), "512k");
    let out = dir.join("disk").join("out.ndjson");
    write_set(
        dir,
        "t.NewPipeline().In(SockIn).Out(FileOut)\n",
        &format!(
            "sources:\n  SockIn: {source}\nsinks:\n  FileOut: {{ kind: file, path: {} }}\n",
            yaml_path(&out)
        ),
    );
    let (mut dab, metrics) = start_dab(dir);
    let (go, gate) = std::sync::mpsc::channel();
    let client = stream_client(connect(), FIRST, N, gate);
    let delivered_n = || {
        series(
            &metrics,
            "dab_source_acked_events_total{source=\"SockIn\",outcome=\"delivered\"}",
        )
    };
    let failed_n = || {
        series(
            &metrics,
            "dab_source_acked_events_total{source=\"SockIn\",outcome=\"failed\"}",
        )
    };
    poll(
        Duration::from_secs(30),
        "the first events delivered",
        || (delivered_n() >= FIRST as f64).then_some(()),
        || dab.stderr(),
    );
    go.send(()).expect("the client is waiting");
    wait_sink_error(&metrics, "FileOut", &dab, &|| {
        format!("{} counted delivered", delivered_n())
    });
    std::thread::sleep(Duration::from_secs(1));
    let counted_at_full = delivered_n();
    full_for(&mut dab, &metrics, Duration::from_secs(2));
    let counted_while_full = delivered_n() - counted_at_full;
    // What the source counted delivered is in the file (read after).
    let counted_now = delivered_n();
    let in_file_while_full = file_offsets(&out).len();
    assert!(
        in_file_while_full as f64 >= counted_now,
        "{label}: the source counted {counted_now} events delivered while the full file holds {in_file_while_full}"
    );
    disk.resize("8m");
    let freed = Instant::now();
    let recovered = poll(
        Duration::from_secs(30),
        "an event counted delivered after the space came back",
        || (delivered_n() > counted_now).then(|| freed.elapsed()),
        || dab.stderr(),
    );
    let wrote = client.join().expect("client thread");
    assert!(
        wrote.is_ok(),
        "{label}: the client's writes failed: {wrote:?}"
    );
    poll(
        Duration::from_secs(60),
        "every event counted delivered",
        || (delivered_n() >= N as f64).then_some(()),
        || {
            format!(
                "{} of {N} counted delivered, {} failed; dab:\n{}",
                delivered_n(),
                failed_n(),
                dab.stderr()
            )
        },
    );
    let (counted, failed) = (delivered_n(), failed_n());
    let stderr = dab.stderr();
    assert!(panics(&stderr).is_empty(), "dab panicked:\n{stderr}");
    terminate_ok(&mut dab);
    let delivered = file_offsets(&out);
    drop(disk);

    // No answer channel: every event counted delivered is acknowledged.
    let acked: BTreeSet<u64> = (0..N).collect();
    let mut row = Row::tally(label, N, &acked, &delivered);
    row.recovered = Some(recovered);
    row.note = format!(
        "counted delivered {counted}, failed {failed}; {counted_while_full} counted delivered while full; {in_file_while_full} lines in the file while full"
    );
    row.report();
    assert_eq!(counted, N as f64, "{label}: events counted delivered");
    assert_eq!(failed, 0.0, "{label}: events counted failed");
    assert!(
        counted_at_full > 0.0 && in_file_while_full > 0,
        "{label}: nothing was delivered before the disk was full: the test proves less"
    );
    assert_eq!(
        counted_while_full, 0.0,
        "{label}: counted delivered while the disk was full"
    );
}

#[test]
fn full_disk_under_a_tcp_source() {
    let dir = tmp();
    let listen = free_addr();
    let addr = listen.clone();
    socket_source_on_a_full_disk(
        "full disk, then freed (tcp source, file sink)",
        &format!("{{ kind: tcp, listen: \"{listen}\", framing: ndjson }}"),
        &move || {
            wait_tcp(&addr, START, String::new);
            Box::new(std::net::TcpStream::connect(&addr).expect("connect to the tcp source"))
        },
        dir.path(),
    );
}

#[test]
fn full_disk_under_a_unix_source() {
    let dir = tmp();
    let sock = dir.path().join("in.sock");
    let path = sock.clone();
    socket_source_on_a_full_disk(
        "full disk, then freed (unix source, file sink)",
        &format!(
            "{{ kind: unix, path: {}, framing: ndjson }}",
            yaml_path(&sock)
        ),
        &move || {
            let s = poll(
                START,
                "the unix source to listen",
                || std::os::unix::net::UnixStream::connect(&path).ok(),
                String::new,
            );
            Box::new(s)
        },
        dir.path(),
    );
}

// A murron_grpc source on a full disk ------------------------------------------

/// Clients -> A (`http` in, `murron_grpc` out) -> B (`murron_grpc` in,
/// file out on a 512 KiB tmpfs). B's disk fills: B must not answer
/// `Ack{accepted}` for what it could not write, so A must not answer 200
/// for it. Full for 3 s, then 8 MiB: every 200 of A is in B's file, with
/// both still running.
#[test]
fn full_disk_under_a_murron_grpc_source() {
    let dir = tmp();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a_dir).expect("mkdir a");
    std::fs::create_dir_all(&b_dir).expect("mkdir b");
    let disk = Tmpfs::mount(&dir.path().join("disk"), "512k");
    let out = dir.path().join("disk").join("relay.ndjson");
    let b_listen = free_addr();
    write_set(
        &b_dir,
        "store.NewPipeline().In(Grpc).Out(F)\n",
        &format!(
            "sources:\n  Grpc: {{ kind: murron_grpc, listen: \"{b_listen}\" }}\nsinks:\n  F: {{ kind: file, path: {} }}\n",
            yaml_path(&out)
        ),
    );
    let (mut b, b_metrics) = start_dab(&b_dir);
    let listen = free_addr();
    write_set(
        &a_dir,
        "relay.NewPipeline().In(HttpIn).Out(SidecarClient)\n",
        &format!(
            "sources:\n  HttpIn: {{ kind: http, listen: \"{listen}\" }}\nsinks:\n  SidecarClient: {{ kind: murron_grpc, endpoint: \"http://{b_listen}\" }}\n"
        ),
    );
    let (mut a, a_metrics) = start_dab(&a_dir);
    wait_http_ok(&listen, "/healthz", START, || a.stderr());
    let load = Load::start(
        &listen,
        Spec {
            batch: 20,
            pause: Duration::from_millis(20),
            budget: 40_000,
            timeout: Duration::from_secs(30),
            ..Spec::default()
        },
    );
    wait_sink_error(&b_metrics, "F", &b, &|| format!("{} acked", load.acked()));
    let full_at = Instant::now();
    full_for(&mut b, &b_metrics, Duration::from_secs(3));
    assert!(a.running(), "A stopped while B's disk was full");
    disk.resize("8m");
    let freed = Instant::now();
    let want = load.acked() + 1_000;
    poll(
        Duration::from_secs(30),
        "posts answered 200 again after B's space came back",
        || (load.acked() >= want).then_some(()),
        || {
            format!(
                "{} acked of {want}; A:\n{}\nB:\n{}",
                load.acked(),
                a.stderr(),
                b.stderr()
            )
        },
    );
    let outcome = load.stop();
    let acked_while_full = acks_while_full(&outcome.ack_times, full_at, freed);
    let a_text = scrape(&a_metrics);
    let b_errors = series(&b_metrics, "dab_sink_errors_total{sink=\"F\"}");
    let (a_err, b_err) = (a.stderr(), b.stderr());
    assert!(panics(&a_err).is_empty(), "A panicked:\n{a_err}");
    assert!(panics(&b_err).is_empty(), "B panicked:\n{b_err}");
    // Every 200 is in B's file already, before any stop.
    let before_stop: BTreeSet<u64> = file_offsets(&out).into_iter().collect();
    let missing_before_stop = outcome.acked.difference(&before_stop).count();
    terminate_ok(&mut a);
    terminate_ok(&mut b);
    let delivered = file_offsets(&out);
    drop(disk);

    let mut row = Row::of_load(
        "full disk under a murron_grpc source (gRPC relay), then freed",
        &outcome,
        &delivered,
    );
    row.recovered = outcome.first_ack_after(freed);
    row.note = format!(
        "B's file sink errors: {}; A's gRPC sink errors: {}; {acked_while_full} posts answered 200 while full; refused: {}",
        b_errors,
        metric(&a_text, "dab_sink_errors_total{sink=\"SidecarClient\"}").unwrap_or(-1.0),
        outcome.refusals_text()
    );
    row.report();
    assert_eq!(
        missing_before_stop, 0,
        "acknowledged but not yet in B's file"
    );
    assert_eq!(
        acked_while_full, 0,
        "posts answered 200 while B's disk was full"
    );
}

// A Kafka sink refusing events for good (too large) ----------------------------

/// Event `i` with a message of `pad` bytes.
fn big_line(i: u64, pad: usize) -> String {
    format!(
        r#"{{"timestamp":{},"host":"fault-1","type":"A","offset":{i},"pid":7,"message":"{}"}}"#,
        1_700_000_000_000_000_000u64 + i,
        "x".repeat(pad)
    )
}

/// Posts `posts` batches of 20 events to `addr`, offsets from `base`; one
/// event in every fifth post (at offset `base + 20k + 7`) carries a 50 KB
/// message. Returns the offsets answered 200 and the big ones offered.
fn post_with_big_events(addr: &str, base: u64, posts: u64) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let (mut acked, mut big) = (BTreeSet::new(), BTreeSet::new());
    for p in 0..posts {
        let first = base + p * 20;
        let lines: Vec<String> = (first..first + 20)
            .map(|i| {
                if p % 5 == 0 && i == first + 7 {
                    big.insert(i);
                    big_line(i, 50_000)
                } else {
                    line(i)
                }
            })
            .collect();
        let body = format!("[{}]", lines.join(","));
        let r = request(
            addr,
            "POST",
            "/v1/events",
            body.as_bytes(),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("post to {addr}: {e}"));
        assert_eq!(r.status, 200, "post {p} to {addr}: {}", r.body);
        acked.extend(first..first + 20);
    }
    (acked, big)
}

/// A Kafka sink whose producer takes messages of at most 20,000 bytes
/// (`message.max.bytes`) is given events of 50 KB among small ones. Each
/// big event is refused for good: with `OnError(Bad)` it lands in `Bad`
/// with the reason in `dab.error`; without, it is counted dropped
/// (`rejected`). Either way the rest of its batch reaches the topic, the
/// client gets its 200 (the refusal is a deliberate, counted outcome) and
/// nothing blocks: the posts after it are answered too.
#[test]
fn a_kafka_sink_refusing_too_large_events_blocks_nothing() {
    const POSTS: u64 = 50;
    let python = fault_support::kafka::python();
    let b = broker::Broker::start(&fault_support::kafka::tansu());
    b.create_topic("out", 1);
    b.create_topic("out2", 1);
    let brokers = b.addr();
    let dir = tmp();
    let bad = dir.path().join("bad.ndjson");
    let (with, without) = (free_addr(), free_addr());
    write_set(
        dir.path(),
        "a.NewPipeline().In(HttpA).OnError(Bad).Out(KOut)\nb.NewPipeline().In(HttpB).Out(KOut2)\n",
        &format!(
            "sources:\n  HttpA: {{ kind: http, listen: \"{with}\" }}\n  HttpB: {{ kind: http, listen: \"{without}\" }}\n\
             sinks:\n  Bad: {{ kind: file, path: {} }}\n\
             \x20 KOut: {{ kind: kafka, brokers: \"{brokers}\", topic: out, options: {{ message.max.bytes: \"20000\" }} }}\n\
             \x20 KOut2: {{ kind: kafka, brokers: \"{brokers}\", topic: out2, options: {{ message.max.bytes: \"20000\" }} }}\n",
            yaml_path(&bad)
        ),
    );
    let (mut dab, metrics) = start_dab(dir.path());
    wait_http_ok(&with, "/healthz", START, || dab.stderr());
    wait_http_ok(&without, "/healthz", START, || dab.stderr());
    let (acked_a, big_a) = post_with_big_events(&with, 0, POSTS);
    let (acked_b, big_b) = post_with_big_events(&without, 1_000_000, POSTS);
    let text = scrape(&metrics);
    let stderr = dab.stderr();
    assert!(panics(&stderr).is_empty(), "dab panicked:\n{stderr}");
    terminate_ok(&mut dab);

    let topic = |name: &str, expect: usize| -> Vec<u64> {
        let dump = dir.path().join(format!("{name}.dump"));
        broker::consume(
            &python,
            &brokers,
            name,
            &[
                "--dump",
                &dump.display().to_string(),
                "--expect",
                &expect.to_string(),
                "--idle-ms",
                "1500",
                "--timeout-s",
                "60",
            ],
        );
        fault_support::file_offsets(&dump)
    };
    // With OnError: the big events are in `Bad`, with the reason.
    let small_a: BTreeSet<u64> = acked_a.difference(&big_a).copied().collect();
    let in_topic = topic("out", small_a.len());
    let bad_events = fault_support::file_events(&bad);
    let in_bad: Vec<u64> = bad_events
        .iter()
        .map(|e| e["offset"].as_u64().expect("offset"))
        .collect();
    for e in &bad_events {
        let why = e["tags"]["dab.error"].as_str().unwrap_or_default();
        assert!(
            why.contains("too large"),
            "an OnError event without the reason in dab.error: {e}"
        );
    }
    let mut delivered = in_topic.clone();
    delivered.extend(&in_bad);
    let mut row = Row::tally(
        "Kafka sink refuses events too large (OnError)",
        acked_a.len() as u64,
        &acked_a,
        &delivered,
    );
    row.note = format!(
        "{} of 50 KB refused (message.max.bytes 20000), {} in OnError with dab.error; {} in the topic",
        big_a.len(),
        in_bad.len(),
        in_topic.len()
    );
    row.report();
    assert_eq!(
        in_bad.iter().copied().collect::<BTreeSet<u64>>(),
        big_a,
        "OnError holds exactly the big events"
    );
    assert!(
        in_topic.iter().all(|o| !big_a.contains(o)),
        "a big event reached the topic"
    );
    assert_eq!(
        metric(
            &text,
            "dab_sink_rejected_events_total{sink=\"KOut\",outcome=\"on_error\"}"
        ),
        Some(big_a.len() as f64),
        "{text}"
    );

    // Without OnError: counted dropped, the rest delivered.
    let small_b: BTreeSet<u64> = acked_b.difference(&big_b).copied().collect();
    let in_topic2: BTreeSet<u64> = topic("out2", small_b.len()).into_iter().collect();
    assert_eq!(
        in_topic2, small_b,
        "the topic holds every small event, nothing else"
    );
    assert_eq!(
        metric(
            &text,
            "dab_sink_dropped_events_total{sink=\"KOut2\",reason=\"rejected\"}"
        ),
        Some(big_b.len() as f64),
        "the refused events counted dropped by reason:\n{text}"
    );
    assert_eq!(
        metric(&text, "dab_kafka_too_large_total{sink=\"KOut2\"}"),
        Some(big_b.len() as f64),
        "{text}"
    );
    drop(b);
}

/// The offsets of the events in partition 0 of `topic` (repeats kept):
/// read from the beginning until `expect` distinct ones and 1.5 s of
/// quiet, at most 60 s.
fn read_topic(brokers: &str, topic: &str, expect: usize) -> Vec<u64> {
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
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    c.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut distinct = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            if distinct.len() >= expect && quiet_since.elapsed() > Duration::from_millis(1500) {
                break;
            }
            continue;
        };
        quiet_since = Instant::now();
        let m = m.expect("message");
        let v: serde_json::Value =
            serde_json::from_slice(m.payload().unwrap_or_default()).expect("a JSON event");
        let o = v["offset"].as_u64().expect("offset");
        distinct.insert(o);
        out.push(o);
    }
    out
}

/// The broker refuses a produce request for good (librdkafka's mock
/// cluster answers `MSG_SIZE_TOO_LARGE` to it, as a broker whose topic
/// takes smaller messages would). The events of that request go to
/// `OnError(Bad)` with the broker's reason in `dab.error`; every other
/// event reaches the topic; every post is answered 200, and the posts
/// after the refusal are delivered too: the idempotent producer is not
/// left stuck.
#[test]
fn a_broker_refusing_a_produce_request_for_good_blocks_nothing() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    const POSTS: u64 = 20;
    let cluster = MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("out", 1, 1).expect("topic out");
    let brokers = cluster.bootstrap_servers();
    let dir = tmp();
    let bad = dir.path().join("bad.ndjson");
    let listen = free_addr();
    write_set(
        dir.path(),
        "t.NewPipeline().In(HttpIn).OnError(Bad).Out(KOut)\n",
        &format!(
            "sources:\n  HttpIn: {{ kind: http, listen: \"{listen}\" }}\n\
             sinks:\n  Bad: {{ kind: file, path: {} }}\n\
             \x20 KOut: {{ kind: kafka, brokers: \"{brokers}\", topic: out }}\n",
            yaml_path(&bad)
        ),
    );
    let (mut dab, metrics) = start_dab(dir.path());
    wait_http_ok(&listen, "/healthz", START, || dab.stderr());
    let post = |p: u64| {
        let first = p * 20;
        let body = fault_support::load::body(first, 20);
        let r = request(
            &listen,
            "POST",
            "/v1/events",
            body.as_bytes(),
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("post {p}: {e}"));
        assert_eq!(
            r.status,
            200,
            "post {p}: {}\ndab:\n{}",
            r.body,
            dab.stderr()
        );
    };
    for p in 0..POSTS / 2 {
        post(p);
    }
    // The next produce request is refused for good.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    for p in POSTS / 2..POSTS {
        post(p);
    }
    let text = scrape(&metrics);
    let stderr = dab.stderr();
    assert!(panics(&stderr).is_empty(), "dab panicked:\n{stderr}");
    terminate_ok(&mut dab);

    let bad_events = fault_support::file_events(&bad);
    for e in &bad_events {
        let why = e["tags"]["dab.error"].as_str().unwrap_or_default();
        assert!(
            why.contains("too large"),
            "an OnError event without the broker's reason in dab.error: {e}"
        );
    }
    let in_bad: BTreeSet<u64> = bad_events
        .iter()
        .map(|e| e["offset"].as_u64().expect("offset"))
        .collect();
    let acked: BTreeSet<u64> = (0..POSTS * 20).collect();
    let in_topic = read_topic(&brokers, "out", acked.len() - in_bad.len());
    let mut delivered = in_topic.clone();
    delivered.extend(&in_bad);
    let mut row = Row::tally(
        "Kafka broker refuses a produce request (MSG_SIZE_TOO_LARGE, mock cluster)",
        acked.len() as u64,
        &acked,
        &delivered,
    );
    row.note = format!(
        "{} events in OnError with the reason; {} in the topic; too large counted: {:?}",
        in_bad.len(),
        in_topic.len(),
        metric(&text, "dab_kafka_too_large_total{sink=\"KOut\"}")
    );
    row.report();
    assert!(
        !in_bad.is_empty(),
        "the broker's refusal reached no OnError"
    );
    assert!(
        in_topic.iter().all(|o| !in_bad.contains(o)),
        "an event both in the topic and in OnError"
    );
    assert_eq!(
        metric(
            &text,
            "dab_sink_rejected_events_total{sink=\"KOut\",outcome=\"on_error\"}"
        ),
        Some(in_bad.len() as f64),
        "{text}"
    );
}

// A disk queue that cannot create its next segment ------------------------------

/// The disk queue's tmpfs has room but few inodes: the queue cannot create
/// its next segment file (ENOSPC at `roll`). While it cannot, no post is
/// answered 200; once the tmpfs has inodes again (a remount), posts are
/// answered 200 again, and every event answered 200 reaches the peer.
#[test]
fn a_disk_queue_that_cannot_create_a_segment() {
    let dir = tmp();
    let spool = dir.path().join("spool");
    // The root, `readers/`, `lock`, `readers/drain.pos` (and its `.tmp`
    // while it is created), and two segments.
    let disk = Tmpfs::mount(&spool, "8m,nr_inodes=7");
    let paused = Arc::new(AtomicBool::new(true));
    let (peer, seen) = pausable_peer(&paused);
    let listen = free_addr();
    spool_set(dir.path(), &listen, &spool, peer.addr());
    let (mut dab, metrics) = start_dab(dir.path());
    wait_http_ok(&listen, "/healthz", START, || dab.stderr());
    let (outcome, acked_while_full, recovered) = fill_hold_free(
        paced(&listen),
        &mut dab,
        &metrics,
        "Spool",
        &disk,
        "8m,nr_inodes=1000",
    );
    paused.store(false, Ordering::SeqCst);
    let delivered = || seen.lock().expect("seen").delivered.clone();
    wait_all_delivered(
        &outcome.acked,
        &delivered,
        &dab,
        &metrics,
        Duration::from_secs(60),
    );
    let stderr = dab.stderr();
    assert!(panics(&stderr).is_empty(), "dab panicked:\n{stderr}");
    terminate_ok(&mut dab);
    let delivered = delivered();
    drop(peer);
    drop(disk);
    let mut row = Row::of_load(
        "disk queue out of inodes (no new segment), then freed",
        &outcome,
        &delivered,
    );
    row.recovered = recovered;
    row.note = format!(
        "{acked_while_full} posts answered 200 while out of inodes; refused: {}",
        outcome.refusals_text()
    );
    row.report();
    assert_eq!(
        acked_while_full, 0,
        "posts answered 200 while out of inodes"
    );
}

/// As [`full_disk_under_a_disk_queue`], but dab is killed with -9 while
/// the queue's tmpfs is full and started again on it, still full: it must
/// start (recovering the queue on a full disk) and answer no 200 while
/// full; once the tmpfs grows, it answers 200 again, and every event
/// answered 200, before the kill or after, reaches the peer.
#[test]
fn kill_9_while_a_disk_queue_is_full_then_restart() {
    // The offsets posted after the restart start here.
    const AFTER: u64 = 1_000_000;
    let dir = tmp();
    let spool = dir.path().join("spool");
    let disk = Tmpfs::mount(&spool, "256k");
    let paused = Arc::new(AtomicBool::new(true));
    let (peer, seen) = pausable_peer(&paused);
    let listen = free_addr();
    spool_set(dir.path(), &listen, &spool, peer.addr());
    let (mut dab, metrics) = start_dab(dir.path());
    wait_http_ok(&listen, "/healthz", START, || dab.stderr());
    let load = Load::start(
        &listen,
        Spec {
            batch: 20,
            pause: Duration::from_millis(20),
            budget: AFTER,
            timeout: Duration::from_secs(20),
            ..Spec::default()
        },
    );
    wait_sink_error(&metrics, "Spool", &dab, &|| {
        format!("{} acked", load.acked())
    });
    std::thread::sleep(Duration::from_secs(1));
    fault_support::signal(dab.pid(), "KILL");
    let _ = dab.wait(Duration::from_secs(10));
    let before = load.stop();
    // Again on the same queue directory, still full.
    let (mut dab, metrics) = start_dab(dir.path());
    wait_http_ok(&listen, "/healthz", START, || dab.stderr());
    let post = |first: u64, timeout: Duration| {
        let body = fault_support::load::body(first, 20);
        request(&listen, "POST", "/v1/events", body.as_bytes(), timeout)
    };
    let while_full = post(AFTER, Duration::from_secs(3));
    assert!(
        !matches!(&while_full, Ok(r) if r.status == 200),
        "a 200 after the restart while the disk is still full"
    );
    disk.resize("8m");
    let freed = Instant::now();
    let mut acked = before.acked.clone();
    let mut recovered = None;
    // The post that was not answered, then 49 more.
    for k in 0..50 {
        let first = AFTER + k * 20;
        poll(
            Duration::from_secs(30),
            "a post answered 200 after the space came back",
            || {
                matches!(post(first, Duration::from_secs(10)), Ok(r) if r.status == 200)
                    .then_some(())
            },
            || dab.stderr(),
        );
        recovered.get_or_insert_with(|| freed.elapsed());
        acked.extend(first..first + 20);
    }
    let torn = series(&metrics, "dab_diskq_torn_records_total{queue=\"Spool\"}");
    paused.store(false, Ordering::SeqCst);
    let delivered = || seen.lock().expect("seen").delivered.clone();
    wait_all_delivered(&acked, &delivered, &dab, &metrics, Duration::from_secs(60));
    let stderr = dab.stderr();
    assert!(panics(&stderr).is_empty(), "dab panicked:\n{stderr}");
    terminate_ok(&mut dab);
    let delivered = delivered();
    drop(peer);
    drop(disk);
    let mut row = Row::tally(
        "kill -9 while a disk queue is full, restart on the full disk, then freed",
        before.offered + 1_000,
        &acked,
        &delivered,
    );
    row.recovered = recovered;
    row.note = format!(
        "{} acked before the kill; torn records cut off on restart: {torn}; the post while still full: {}",
        before.acked.len(),
        match &while_full {
            Ok(r) => format!("HTTP {}", r.status),
            Err(e) => format!("{:?}", e.kind()),
        }
    );
    row.report();
}

/// The disk queue on the normal disk, its reader's file sink on a 64 KiB
/// tmpfs: the clients keep getting 200 (the queue is where a 200 lands)
/// while the drain's writes fail; once the tmpfs grows, every event
/// answered 200 is in the file, as whole lines, dab still running.
#[test]
fn full_disk_under_the_reader_of_a_disk_queue() {
    let dir = tmp();
    let spool = dir.path().join("spool");
    let disk = Tmpfs::mount(&dir.path().join("disk"), "64k");
    let out = dir.path().join("disk").join("out.ndjson");
    let listen = free_addr();
    write_set(
        dir.path(),
        "ingest.NewPipeline().In(HttpIn).Out(Spool)\ndrain.NewPipeline().In(Spool).Out(FileOut)\n",
        &format!(
            "sources:\n  HttpIn: {{ kind: http, listen: \"{listen}\" }}\nsinks:\n  FileOut: {{ kind: file, path: {} }}\nqueues:\n  Spool: {{ kind: disk, path: {}, fsync: 10ms }}\n",
            yaml_path(&out),
            yaml_path(&spool),
        ),
    );
    let (mut dab, metrics) = start_dab(dir.path());
    wait_http_ok(&listen, "/healthz", START, || dab.stderr());
    let load = Load::start(
        &listen,
        Spec {
            batch: 20,
            pause: Duration::from_millis(20),
            budget: 40_000,
            ..Spec::default()
        },
    );
    wait_sink_error(&metrics, "FileOut", &dab, &|| {
        format!("{} acked", load.acked())
    });
    let acked_at_full = load.acked();
    full_for(&mut dab, &metrics, Duration::from_secs(3));
    let acked_while_full = load.acked() - acked_at_full;
    disk.resize("8m");
    let want = load.acked() + 1_000;
    poll(
        Duration::from_secs(30),
        "more posts answered 200",
        || (load.acked() >= want).then_some(()),
        || dab.stderr(),
    );
    let outcome = load.stop();
    let delivered = || file_offsets(&out);
    wait_all_delivered(
        &outcome.acked,
        &delivered,
        &dab,
        &metrics,
        Duration::from_secs(60),
    );
    let text = scrape(&metrics);
    let stderr = dab.stderr();
    assert!(panics(&stderr).is_empty(), "dab panicked:\n{stderr}");
    terminate_ok(&mut dab);
    let delivered = delivered();
    drop(disk);
    let mut row = Row::of_load(
        "full disk under the reader of a disk queue (file sink), then freed",
        &outcome,
        &delivered,
    );
    // The first delivery after the space came back is not timed here: the
    // clients' 200s never stopped.
    row.note = format!(
        "{acked_while_full} events answered 200 while the file's disk was full (the queue took them); file sink errors: {}; reader batches failed: {}; refused: {}",
        metric(&text, "dab_sink_errors_total{sink=\"FileOut\"}").unwrap_or(-1.0),
        metric(&text, "dab_diskq_reader_failed_batches_total{queue=\"Spool\",reader=\"drain\"}").unwrap_or(-1.0),
        outcome.refusals_text()
    );
    row.report();
    assert!(
        acked_while_full > 0,
        "the queue took nothing while the file's disk was full"
    );
}

// A templated file sink on a full disk -------------------------------------------

/// Event `i` of type `A`, `B`, `C` or `D` (by `i % 4`).
fn typed_line(i: u64) -> String {
    line(i).replacen(
        r#""type":"A""#,
        &format!(r#""type":"{}""#, ["A", "B", "C", "D"][(i % 4) as usize]),
        1,
    )
}

/// Clients posting batches of 20 events of four types: what
/// [`fault_support::load::Load`] does, with [`typed_line`].
struct TypedLoad {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<(BTreeSet<u64>, Vec<Instant>)>>,
    offered: Arc<std::sync::atomic::AtomicU64>,
    clients: Vec<std::thread::JoinHandle<()>>,
}

impl TypedLoad {
    fn start(addr: &str, clients: usize) -> TypedLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new((BTreeSet::new(), Vec::new())));
        let offered = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let clients = (0..clients)
            .map(|_| {
                let (addr, stop, acked, offered) = (
                    addr.to_owned(),
                    Arc::clone(&stop),
                    Arc::clone(&acked),
                    Arc::clone(&offered),
                );
                std::thread::spawn(move || {
                    let t0 = Instant::now();
                    while !stop.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(90) {
                        let first = offered.fetch_add(20, Ordering::SeqCst);
                        let lines: Vec<String> = (first..first + 20).map(typed_line).collect();
                        let body = format!("[{}]", lines.join(","));
                        match request(
                            &addr,
                            "POST",
                            "/v1/events",
                            body.as_bytes(),
                            Duration::from_secs(20),
                        ) {
                            Ok(r) if r.status == 200 => {
                                let mut a = acked.lock().expect("acked");
                                a.0.extend(first..first + 20);
                                a.1.push(r.at);
                            }
                            _ => std::thread::sleep(Duration::from_millis(20)),
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
            })
            .collect();
        TypedLoad {
            stop,
            acked,
            offered,
            clients,
        }
    }

    fn acked(&self) -> usize {
        self.acked.lock().expect("acked").0.len()
    }

    /// Offered, the offsets answered 200, and when each 200 came.
    fn stop(self) -> (u64, BTreeSet<u64>, Vec<Instant>) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.clients {
            c.join().expect("client");
        }
        let offered = self.offered.load(Ordering::SeqCst);
        let mut a = self.acked.lock().expect("acked");
        (offered, std::mem::take(&mut a.0), std::mem::take(&mut a.1))
    }
}

/// A file sink whose `path` is a template (`{type}`: four files) on a
/// 64 KiB tmpfs. When the disk fills, a failed write must cut every file
/// written since the last good flush back, so that no file keeps a torn
/// line and nothing acknowledged is lost; once the tmpfs grows, posts are
/// answered 200 again, and every 200 is in one of the files as a whole
/// line (duplicates counted).
#[test]
fn full_disk_under_a_templated_file_sink() {
    templated_file_sink_on_a_full_disk("", "full disk, then freed (templated file sink, 4 files)");
}

/// As [`full_disk_under_a_templated_file_sink`] with `max_targets: 2`:
/// files are closed and opened again all the time, and the cut-back after
/// a failed write must reach the closed ones too.
#[test]
fn full_disk_under_a_templated_file_sink_with_two_targets_open() {
    templated_file_sink_on_a_full_disk(
        ", max_targets: 2",
        "full disk, then freed (templated file sink, 4 files, max_targets 2)",
    );
}

fn templated_file_sink_on_a_full_disk(extra: &str, label: &str) {
    let dir = tmp();
    let disk = Tmpfs::mount(&dir.path().join("disk"), "64k");
    let template = dir.path().join("disk").join("out").join("{type}.ndjson");
    let listen = free_addr();
    write_set(
        dir.path(),
        "t.NewPipeline().In(HttpIn).Out(FileOut)\n",
        &format!(
            "sources:\n  HttpIn: {{ kind: http, listen: \"{listen}\" }}\nsinks:\n  FileOut: {{ kind: file, path: {}{extra} }}\n",
            yaml_path(&template)
        ),
    );
    let (mut dab, metrics) = start_dab(dir.path());
    wait_http_ok(&listen, "/healthz", START, || dab.stderr());
    let files = || -> Vec<u64> {
        ["A", "B", "C", "D"]
            .iter()
            .flat_map(|t| {
                file_offsets(
                    &dir.path()
                        .join("disk")
                        .join("out")
                        .join(format!("{t}.ndjson")),
                )
            })
            .collect()
    };
    let load = TypedLoad::start(&listen, 4);
    wait_sink_error(&metrics, "FileOut", &dab, &|| {
        format!("{} acked", load.acked())
    });
    let full_at = Instant::now();
    full_for(&mut dab, &metrics, Duration::from_secs(3));
    // Every file holds whole lines while the disk is full.
    let in_files_while_full = files().len();
    disk.resize("8m");
    let freed = Instant::now();
    let want = load.acked() + 1_000;
    poll(
        Duration::from_secs(30),
        "posts answered 200 again after the space came back",
        || (load.acked() >= want).then_some(()),
        || format!("{} acked; dab:\n{}", load.acked(), dab.stderr()),
    );
    let (offered, acked, times) = load.stop();
    let acked_while_full = acks_while_full(&times, full_at, freed);
    let recovered = times
        .iter()
        .filter(|t| **t >= freed)
        .min()
        .map(|t| *t - freed);
    let before_stop: BTreeSet<u64> = files().into_iter().collect();
    let missing_before_stop = acked.difference(&before_stop).count();
    let stderr = dab.stderr();
    assert!(panics(&stderr).is_empty(), "dab panicked:\n{stderr}");
    terminate_ok(&mut dab);
    let delivered = files();
    drop(disk);
    let mut row = Row::tally(label, offered, &acked, &delivered);
    row.recovered = recovered;
    row.note = format!(
        "{acked_while_full} posts answered 200 while full; {in_files_while_full} whole lines in the files while full"
    );
    row.report();
    assert_eq!(
        missing_before_stop, 0,
        "acknowledged but not yet in the files"
    );
    assert_eq!(
        acked_while_full, 0,
        "posts answered 200 while the disk was full"
    );
}

// SIGTERM while a disk queue is full ----------------------------------------------

/// SIGTERM while the disk queue's tmpfs is full, with posts waiting on
/// it: dab cannot drain them, so after `--shutdown-timeout 3` it forces
/// the stop, exits 3 (events abandoned, counted), and none of the waiting
/// posts is answered 200. Started again once the tmpfs has grown, it
/// ships every event answered 200 before the stop.
#[test]
fn sigterm_while_a_disk_queue_is_full() {
    let dir = tmp();
    let spool = dir.path().join("spool");
    let disk = Tmpfs::mount(&spool, "256k");
    let paused = Arc::new(AtomicBool::new(true));
    let (peer, seen) = pausable_peer(&paused);
    let listen = free_addr();
    spool_set(dir.path(), &listen, &spool, peer.addr());
    let (mut dab, metrics) =
        fault_support::start_dab_with(dir.path(), &["--shutdown-timeout", "3"]);
    wait_http_ok(&listen, "/healthz", START, || dab.stderr());
    let load = Load::start(
        &listen,
        Spec {
            batch: 20,
            pause: Duration::from_millis(20),
            budget: 1_000_000,
            timeout: Duration::from_secs(30),
            ..Spec::default()
        },
    );
    wait_sink_error(&metrics, "Spool", &dab, &|| {
        format!("{} acked", load.acked())
    });
    std::thread::sleep(Duration::from_secs(1));
    let acked_at_term = load.acked();
    let t = Instant::now();
    dab.terminate();
    let status = dab.wait(Duration::from_secs(30));
    let took = t.elapsed();
    let outcome = load.stop();
    let stderr = dab.stderr();
    assert!(panics(&stderr).is_empty(), "dab panicked:\n{stderr}");
    assert_eq!(
        status.code(),
        Some(3),
        "a forced stop with events abandoned exits 3; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("stopped with events abandoned"),
        "the abandoned events are not reported:\n{stderr}"
    );
    assert_eq!(
        outcome.acked.len() as u64,
        acked_at_term,
        "posts answered 200 after SIGTERM while the disk was full"
    );
    disk.resize("8m");
    paused.store(false, Ordering::SeqCst);
    let (mut dab, metrics) = start_dab(dir.path());
    let delivered = || seen.lock().expect("seen").delivered.clone();
    wait_all_delivered(
        &outcome.acked,
        &delivered,
        &dab,
        &metrics,
        Duration::from_secs(60),
    );
    terminate_ok(&mut dab);
    let delivered = delivered();
    drop(peer);
    drop(disk);
    let mut row = Row::of_load(
        "SIGTERM while a disk queue is full (shutdown timeout 3 s), restart after freeing",
        &outcome,
        &delivered,
    );
    row.note = format!(
        "exit 3 {:.1} s after SIGTERM; 0 answered 200 after it; refused: {}",
        took.as_secs_f64(),
        outcome.refusals_text()
    );
    row.report();
}

// A full state disk under a windowed pipeline -----------------------------------

/// Posts the 1,000 events from `first`; the answer's status.
fn post_1000(listen: &str, first: u64) -> std::io::Result<u16> {
    let body = fault_support::load::body(first, 1_000);
    request(
        listen,
        "POST",
        "/v1/events",
        body.as_bytes(),
        Duration::from_secs(10),
    )
    .map(|r| r.status)
}

/// A windowed pipeline (`w`, checkpoints every 100 ms) on HTTP input, its
/// `--state-dir` on a 4 MiB tmpfs; one post answered 200, then the tmpfs
/// is filled and a checkpoint fails (no 200 for the posts meanwhile), then
/// the filler is removed and the tmpfs grown to 64 MiB. Returns the
/// directory, the tmpfs, dab, its metrics address and the source's.
fn a_state_disk_full_then_freed() -> (tempfile::TempDir, Tmpfs, Dab, String, String) {
    let dir = tmp();
    let disk = Tmpfs::mount(&dir.path().join("disk"), "4m");
    let state = dir.path().join("disk").join("state");
    let listen = free_addr();
    write_set(
        dir.path(),
        "w.NewPipeline().In(HttpIn).Window(tumbling = 10s).\
         Aggregate(by = [host], as = \"Count\", calls = Count()).Out(Results)\n",
        &format!(
            "sources:\n  HttpIn: {{ kind: http, listen: \"{listen}\" }}\n\
             sinks:\n  Results: {{ kind: file, path: results.ndjson }}\n"
        ),
    );
    let state_arg = state.display().to_string();
    let (dab, metrics) = fault_support::start_dab_with(
        dir.path(),
        &["--state-dir", &state_arg, "--checkpoint-interval", "100ms"],
    );
    wait_http_ok(&listen, "/healthz", START, || dab.stderr());
    let post = |first: u64| post_1000(&listen, first);
    assert_eq!(post(0).ok(), Some(200), "{}", dab.stderr());
    // Fill the state's disk.
    let filler = dir.path().join("disk").join("filler");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&filler).expect("create the filler");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let answers: Vec<_> = (1..4).map(|k| post(k * 1_000)).collect();
    assert!(
        answers.iter().skip(1).all(|a| !matches!(a, Ok(200))),
        "a 200 while the state's disk was full: {answers:?}"
    );
    poll(
        Duration::from_secs(10),
        "a failed checkpoint counted",
        || (series(&metrics, "dab_checkpoint_failures_total{pipeline=\"w\"}") >= 1.0).then_some(()),
        || scrape(&metrics),
    );
    std::fs::remove_file(&filler).expect("remove the filler");
    disk.resize("64m");
    (dir, disk, dab, metrics, listen)
}

/// After a checkpoint failed on a full `--state-dir`, the state store
/// refuses every later write (fjall poisons it) until dab restarts: the
/// metrics must say so (`dab_checkpoint_store_unusable`), and a restart
/// takes events again.
#[test]
fn a_full_state_disk_is_reported_and_a_restart_recovers() {
    let (dir, disk, mut dab, metrics, listen) = a_state_disk_full_then_freed();
    poll(
        Duration::from_secs(10),
        "dab_checkpoint_store_unusable = 1",
        || (series(&metrics, "dab_checkpoint_store_unusable{pipeline=\"w\"}") == 1.0).then_some(()),
        || scrape(&metrics),
    );
    terminate_ok(&mut dab);
    let state = dir.path().join("disk").join("state").display().to_string();
    let (mut dab, metrics) = fault_support::start_dab_with(
        dir.path(),
        &["--state-dir", &state, "--checkpoint-interval", "100ms"],
    );
    wait_http_ok(&listen, "/healthz", START, || dab.stderr());
    assert_eq!(
        post_1000(&listen, 20_000).ok(),
        Some(200),
        "{}",
        dab.stderr()
    );
    assert_eq!(
        series(&metrics, "dab_checkpoint_store_unusable{pipeline=\"w\"}"),
        0.0
    );
    terminate_ok(&mut dab);
    drop(disk);
}

/// A windowed pipeline's `--state-dir` on a tmpfs that fills: the
/// checkpoint fails, and the clients get no 200 (`tests/window.rs` holds
/// that, and the exact results after a restart). Here: once the space is
/// back, dab must either take events again (200) without a restart, or
/// say on `/readyz` that it is not ready, so that an operator or an
/// orchestrator knows it must be restarted.
#[test]
fn a_full_state_disk_recovers_or_says_it_is_not_ready() {
    let (_dir, disk, mut dab, metrics, listen) = a_state_disk_full_then_freed();
    let post = |first: u64| post_1000(&listen, first);

    // Space again: a 200 within 10 s, or /readyz saying not ready.
    let answered = Mutex::new(Vec::new());
    let outcome = poll(
        Duration::from_secs(10),
        "a 200 again, or /readyz not ready",
        || {
            let mut seen = answered.lock().expect("answers");
            let a = post(10_000 + seen.len() as u64 * 1_000);
            seen.push(a.as_ref().map(|s| *s).map_err(|e| e.kind()));
            if matches!(a, Ok(200)) {
                return Some("answered 200 again without a restart".to_owned());
            }
            let r = request(&metrics, "GET", "/readyz", b"", Duration::from_secs(2)).ok()?;
            (r.status == 503).then(|| format!("/readyz 503: {}", r.body))
        },
        || {
            format!(
                "posts after the space came back: {:?}; /readyz: {:?}; dab:\n{}",
                answered.lock().expect("answers"),
                request(&metrics, "GET", "/readyz", b"", Duration::from_secs(2))
                    .map(|r| (r.status, r.body)),
                dab.stderr()
            )
        },
    );
    eprintln!("after a full state disk: {outcome}");
    terminate_ok(&mut dab);
    drop(disk);
}

// A full spool disk under a parquet sink on S3 ------------------------------------

/// A parquet sink on S3 (moto on loopback) whose local `spool` directory
/// is a 4 KiB tmpfs: the files it builds before upload do not fit.
/// No post may be answered 200 while the spool is full; after the tmpfs
/// grows to 8 MiB, posts are answered 200 again, and every 200 is in a
/// committed object before dab stops.
#[test]
fn full_spool_disk_under_a_parquet_sink_on_s3() {
    let s3 = s3_support::S3Server::start();
    s3.mkbucket("warehouse");
    let dir = tmp();
    let spool = dir.path().join("spool");
    let disk = Tmpfs::mount(&spool, "4k");
    let listen = free_addr();
    write_set(
        dir.path(),
        "t.NewPipeline().In(HttpIn).Out(Warehouse)\n",
        &format!(
            "types:\n  A: {{ version: 1, fields: {{ n: int64, note: string }} }}\n\
             sources:\n  HttpIn: {{ kind: http, listen: \"{listen}\" }}\n\
             sinks:\n  Warehouse: {{ kind: parquet, path: \"s3://warehouse/faults\", type: A, \
             max_file_age: 1s, s3_endpoint: \"http://{}\", spool: {}, access_key: \"${{S3_ACCESS_KEY}}\", \
             secret_key: \"${{S3_SECRET_KEY}}\" }}\n",
            s3.addr(),
            yaml_path(&spool)
        ),
    );
    let (mut dab, metrics) = fault_support::start_dab_with(
        dir.path(),
        &[
            "--env",
            "S3_ACCESS_KEY=dab-test-access-key",
            "--env",
            "S3_SECRET_KEY=dab-test-secret-key",
        ],
    );
    wait_http_ok(&listen, "/healthz", START, || dab.stderr());
    // Posts of 200 events without a pause: files of thousands of rows.
    let load = Load::start(
        &listen,
        Spec {
            batch: 200,
            budget: 200_000,
            timeout: Duration::from_secs(30),
            ..Spec::default()
        },
    );
    let (outcome, acked_while_full, recovered) =
        fill_hold_free(load, &mut dab, &metrics, "Warehouse", &disk, "8m");
    let errors = series(&metrics, "dab_sink_errors_total{sink=\"Warehouse\"}");
    // Every 200 is in S3 before any stop.
    let before: BTreeSet<u64> = s3_support::committed_offsets(&s3, &dir.path().join("before"))
        .into_iter()
        .collect();
    let missing_before_stop = outcome.acked.difference(&before).count();
    let stderr = dab.stderr();
    assert!(panics(&stderr).is_empty(), "dab panicked:\n{stderr}");
    terminate_ok(&mut dab);
    let delivered = s3_support::committed_offsets(&s3, &dir.path().join("after"));
    drop(disk);
    let mut row = Row::of_load(
        "full spool disk under a parquet sink on S3, then freed",
        &outcome,
        &delivered,
    );
    row.recovered = recovered;
    row.note = format!(
        "{errors} sink errors; {acked_while_full} posts answered 200 while full; refused: {}",
        outcome.refusals_text()
    );
    row.report();
    assert_eq!(missing_before_stop, 0, "acknowledged but not yet in S3");
    assert_eq!(
        acked_while_full, 0,
        "posts answered 200 while the spool was full"
    );
}
