//! End-to-end tests of hot reload (issue 6; SPEC section 5 "Hot reload")
//! through the real binary: `dab run --watch` and SIGHUP, real sockets on
//! 127.0.0.1, real files in a temporary directory. Each test edits the set
//! while `dab` runs and asserts what the log says about the reload, what
//! the `dab_reload_*` metrics count, and which events reached the sinks.
//! Every wait has a deadline, and no assertion is about speed.
//!
//! Edits replace a file by writing a sibling and renaming it over the
//! original, as editors that save atomically do: a plain truncate-then-write
//! could let the watcher read a half-written file, which is a different test.

#[allow(dead_code)]
mod run_support;

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use run_support::client::{
    free_addr, must_metric, request, scrape, wait_http_ok, wait_metrics, wait_tcp,
};
use run_support::process::{catches_sighup, Dab};
use run_support::producer::{Pace, Producer};
use run_support::{file_lines, poll, write_set};

/// Longest wait for dab to start serving.
const START: Duration = Duration::from_secs(15);
/// Longest wait for one reload to be applied or refused.
const RELOAD: Duration = Duration::from_secs(30);
/// Longest wait for events to be delivered.
const DELIVER: Duration = Duration::from_secs(30);
/// Longest wait for a drained dab to exit after SIGTERM.
const EXIT: Duration = Duration::from_secs(30);

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// A path as a double-quoted YAML string.
fn yaml_path(p: &Path) -> String {
    serde_json::to_string(&p.display().to_string()).expect("path as a JSON string")
}

/// Replaces `dir/name` with `text` atomically: a sibling file (whose name
/// the watcher ignores) renamed over it.
fn edit(dir: &Path, name: &str, text: &str) {
    let staged = dir.join(format!(".{name}.new"));
    std::fs::write(&staged, text).expect("write the staged file");
    std::fs::rename(&staged, dir.join(name)).expect("rename over the original");
}

/// Starts `dab run t.dab --metrics ADDR EXTRA...` in `dir` (text logs, so
/// the reload lines read as an operator sees them) and waits until it runs
/// and, with `--watch`, watches.
fn start(dir: &Path, extra: &[&str]) -> (Dab, String) {
    let metrics = free_addr();
    let mut args = vec!["run", "t.dab", "--metrics", &metrics];
    args.extend_from_slice(extra);
    let mut dab = Dab::start(dir, &args);
    wait_http_ok(&metrics, "/healthz", START, || dab.stderr());
    dab.wait_for_log(START, "running", |l| l.contains(" running pipelines="));
    if extra.contains(&"--watch") {
        dab.wait_for_log(START, "the watcher", |l| {
            l.contains("watching the blueprint set for changes")
        });
    }
    (dab, metrics)
}

fn assert_exit_0(dab: &mut Dab) {
    let status = dab.wait(EXIT);
    assert!(
        status.success(),
        "dab exited with {status}; stderr:\n{}",
        dab.stderr()
    );
}

/// A `reloaded` log line, parsed.
#[derive(Debug, Clone, PartialEq)]
struct Reloaded {
    trigger: String,
    added: Vec<String>,
    rebuilt: Vec<String>,
    removed: Vec<String>,
    kept: usize,
}

/// The text between `key=` and the next ` ` that starts another field
/// (`next`), or the end of the line.
fn field<'a>(line: &'a str, key: &str, next: Option<&str>) -> &'a str {
    let start = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no `{key}=` in {line:?}"))
        + key.len()
        + 2;
    let rest = &line[start..];
    match next {
        Some(n) => {
            let end = rest
                .find(&format!(" {n}="))
                .unwrap_or_else(|| panic!("no `{n}=` after `{key}=` in {line:?}"));
            &rest[..end]
        }
        None => rest.split_whitespace().next().unwrap_or(""),
    }
}

/// A list logged with `?` (Rust's `Debug` of a `Vec<String>`), which for
/// these ids and reasons is JSON.
fn list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not a list ({e}): {text}"))
}

/// Every `reloaded` line logged so far, in order.
fn reloads(stderr: &str) -> Vec<Reloaded> {
    stderr
        .lines()
        .filter(|l| l.contains(" reloaded trigger="))
        .map(|l| Reloaded {
            trigger: field(l, "trigger", Some("added")).to_owned(),
            added: list(field(l, "added", Some("rebuilt"))),
            rebuilt: list(field(l, "rebuilt", Some("removed"))),
            removed: list(field(l, "removed", Some("kept"))),
            kept: field(l, "kept", None).parse().expect("kept is a count"),
        })
        .collect()
}

/// Lines that say a reload did not apply.
fn refusals(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|l| {
            l.contains("reload refused")
                || l.contains("reload rolled back")
                || l.contains("reload failed")
        })
        .count()
}

/// Waits until `n` reloads were logged and returns the `n`-th. (Counting
/// needs the whole stderr; `Dab::wait_for_log` looks at one line.)
fn wait_reload(dab: &mut Dab, n: usize) -> Reloaded {
    let deadline = Instant::now() + RELOAD;
    loop {
        let err = dab.stderr();
        let all = reloads(&err);
        if all.len() >= n {
            return all[n - 1].clone();
        }
        assert!(
            dab.running(),
            "dab exited before reload number {n}; stderr:\n{err}"
        );
        assert!(
            Instant::now() < deadline,
            "no reload number {n} within {RELOAD:?}; stderr:\n{err}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until `n` reloads were refused (the "reload refused" line comes
/// after the diagnostics, and after the failure is counted).
fn wait_refusal(dab: &mut Dab, n: usize) {
    let deadline = Instant::now() + RELOAD;
    loop {
        let err = dab.stderr();
        if refusals(&err) >= n {
            assert_eq!(refusals(&err), n, "stderr:\n{err}");
            return;
        }
        assert!(
            dab.running(),
            "dab exited before refusal number {n}; stderr:\n{err}"
        );
        assert!(
            Instant::now() < deadline,
            "no refusal number {n} within {RELOAD:?}; stderr:\n{err}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `dab validate t.dab` on the set as it is in `dir` and asserts that
/// each line of its report (all but the summary) is in the log `err`: a
/// refused reload is rendered as `dab validate` renders it.
fn assert_logged_like_validate(dir: &Path, err: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_dab"))
        .current_dir(dir)
        .args(["validate", "t.dab"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run dab validate");
    assert_eq!(out.status.code(), Some(1), "dab validate: {out:?}");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = report
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("invalid:"))
        .collect();
    assert!(!lines.is_empty(), "dab validate printed nothing: {out:?}");
    for l in lines {
        assert!(
            err.lines()
                .any(|e| e == l || e.ends_with(&format!(": {l}"))),
            "`dab validate` says {l:?}, the reload log does not; stderr:\n{err}"
        );
    }
}

/// An NDJSON event of the set's usual shape.
fn event(ty: &str, offset: u64) -> String {
    format!(r#"{{"type":"{ty}","host":"h","pid":1,"offset":{offset},"message":"m{offset}"}}"#)
}

/// Type A for even offsets, B for odd ones.
fn ab(offset: u64) -> &'static str {
    if offset % 2 == 0 {
        "A"
    } else {
        "B"
    }
}

/// Writes events `range` (typed by `ty`) on `conn`.
fn send(conn: &mut TcpStream, range: std::ops::Range<u64>, ty: fn(u64) -> &'static str) {
    let mut payload = String::new();
    for i in range {
        payload.push_str(&event(ty(i), i));
        payload.push('\n');
    }
    conn.write_all(payload.as_bytes())
        .expect("write events on the connection");
}

/// Sends events on a fresh connection and closes it.
fn send_once(addr: &str, range: std::ops::Range<u64>, ty: fn(u64) -> &'static str) {
    let mut conn = TcpStream::connect(addr).expect("connect to the tcp source");
    send(&mut conn, range, ty);
}

/// (type, offset) of every line of a sink file, sorted.
fn contents(path: &Path) -> Vec<(String, u64)> {
    let mut got: Vec<(String, u64)> = file_lines(path)
        .iter()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
            assert_eq!(v["message"], format!("m{}", v["offset"]), "{l}");
            (
                v["type"].as_str().expect("type").to_owned(),
                v["offset"].as_u64().expect("offset"),
            )
        })
        .collect();
    got.sort();
    got
}

/// The (type, offset) pairs of `range` that `keep` keeps, sorted.
fn expected(
    range: std::ops::Range<u64>,
    ty: fn(u64) -> &'static str,
    keep: impl Fn(&str) -> bool,
) -> Vec<(String, u64)> {
    let mut want: Vec<(String, u64)> = range
        .filter(|i| keep(ty(*i)))
        .map(|i| (ty(i).to_owned(), i))
        .collect();
    want.sort();
    want
}

fn sink_events(sink: &str) -> String {
    format!("dab_sink_events_total{{sink=\"{sink}\"}}")
}

fn signal(dab: &Dab, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &dab.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {} failed", dab.pid());
}

/// Asserts that nothing (no FIN, no RST) arrived on `conn` from dab: a
/// non-blocking peek finds no data and no end of stream.
fn assert_open(conn: &TcpStream, what: &str) {
    conn.set_nonblocking(true).expect("non-blocking");
    let mut buf = [0u8; 1];
    match conn.peek(&mut buf) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Ok(0) => panic!("{what}: dab closed the connection"),
        Ok(_) => panic!("{what}: dab wrote on a tcp source connection"),
        Err(e) => panic!("{what}: the connection failed: {e}"),
    }
    conn.set_nonblocking(false).expect("blocking");
}

// 1 ------------------------------------------------------------------------

/// Under a steady load of about 100,000 events/s, twenty reloads through
/// `--watch` alternate between rebuilding the pipeline that writes the
/// checked sink (FilterType(A) <-> FilterType(A, B); every event is type A,
/// so both versions keep everything) and adding or removing a second
/// pipeline that reads the same source. Every sequence number sent reaches
/// the sink.
#[test]
fn twenty_reloads_under_load_lose_no_event() {
    reloads_under_load(false);
}

/// The same through a memory queue: an unchanged `ingest` pipeline writes
/// every event to `Q`, and `main` (rebuilt ten times) and `extra` (added
/// and removed five times) read it. The queue and its contents survive
/// every reload.
#[test]
fn twenty_reloads_under_load_through_a_memory_queue_lose_no_event() {
    reloads_under_load(true);
}

fn reloads_under_load(via_queue: bool) {
    const N: u64 = 600_000;
    const RELOADS: usize = 20;
    let dir = tmp();
    let listen = free_addr();
    let out = dir.path().join("out").join("main.ndjson");
    let extra = dir.path().join("out").join("extra.ndjson");
    let (input, ingest) = if via_queue {
        ("Q", "ingest.NewPipeline().In(TcpIn).Out(Q)\n")
    } else {
        ("TcpIn", "")
    };
    let main_a = format!("{ingest}main.NewPipeline().In({input}).FilterType(A).Out(FileOut)\n");
    let main_ab = format!("{ingest}main.NewPipeline().In({input}).FilterType(A, B).Out(FileOut)\n");
    let extra_line = format!("extra.NewPipeline().In({input}).WithSampleRate(10).Out(Extra)\n");
    let kept_base = usize::from(via_queue);
    write_set(
        dir.path(),
        &main_a,
        &format!(
            "sources:\n  TcpIn: {{ kind: tcp, listen: \"{listen}\", framing: ndjson }}\nsinks:\n  FileOut: {{ kind: file, path: {}, fsync: false }}\n  Extra: {{ kind: file, path: {}, fsync: false }}\n",
            yaml_path(&out),
            yaml_path(&extra)
        ),
    );
    let (mut dab, metrics) = start(dir.path(), &["--watch"]);
    wait_tcp(&listen, START, || dab.stderr());

    let started = Instant::now();
    // 500 lines every 5 ms: 100,000 events/s at most (back pressure may
    // slow it; it never speeds up).
    let producer = Producer::start(
        &listen,
        N,
        Pace::Steady {
            chunk: 500,
            every: Duration::from_millis(5),
        },
        Duration::from_secs(300),
        |i| {
            format!(
                r#"{{"type":"A","host":"h","pid":1,"offset":{i},"message":"load event number {i}"}}"#
            )
        },
    );

    let (mut has_main_ab, mut has_extra) = (false, false);
    let mut under_load = 0;
    for k in 1..=RELOADS {
        // Spread the reloads over the stream: reload k once k/(R+2) of the
        // events were written, so each one lands while events flow.
        let due = N * k as u64 / (RELOADS as u64 + 2);
        poll(
            Duration::from_secs(300),
            &format!("{due} events written before reload {k}"),
            || (producer.written() >= due || producer.finished()).then_some(()),
            || format!("written {}; stderr:\n{}", producer.written(), dab.stderr()),
        );
        assert!(
            !producer.finished() || producer.written() == N,
            "the producer stopped early at {} events; stderr:\n{}",
            producer.written(),
            dab.stderr()
        );
        if !producer.finished() {
            under_load += 1;
        }
        let change_stage = k % 2 == 1;
        if change_stage {
            has_main_ab = !has_main_ab;
        } else {
            has_extra = !has_extra;
        }
        let mut text = if has_main_ab {
            main_ab.clone()
        } else {
            main_a.clone()
        };
        if has_extra {
            text.push_str(&extra_line);
        }
        edit(dir.path(), "t.dab", &text);
        let r = wait_reload(&mut dab, k);
        let err = dab.stderr();
        assert_eq!(refusals(&err), 0, "a reload was refused:\n{err}");
        let want = if change_stage {
            Reloaded {
                trigger: "Watch".into(),
                added: vec![],
                rebuilt: vec!["main (stages changed)".into()],
                removed: vec![],
                kept: kept_base + usize::from(has_extra),
            }
        } else {
            Reloaded {
                trigger: "Watch".into(),
                added: if has_extra {
                    vec!["extra".into()]
                } else {
                    vec![]
                },
                rebuilt: vec![],
                removed: if has_extra {
                    vec![]
                } else {
                    vec!["extra".into()]
                },
                kept: kept_base + 1,
            }
        };
        assert_eq!(r, want, "reload {k}");
    }

    poll(
        Duration::from_secs(300),
        "the producer to write every event",
        || producer.finished().then_some(()),
        || format!("written {}", producer.written()),
    );
    let ended = producer.stop();
    assert!(
        ended.error.is_none(),
        "the producer's connection failed after {} events: {:?}; stderr:\n{}",
        ended.written,
        ended.error,
        dab.stderr()
    );
    assert_eq!(ended.written, N);
    let send_secs = started.elapsed().as_secs_f64();
    drop(ended.stream);

    // Everything sent was read before the signal, so SIGTERM cannot cut
    // the stream short; then the metrics of the reloads.
    wait_metrics(
        &metrics,
        &[("dab_source_events_total{source=\"TcpIn\"}", N as f64)],
        Duration::from_secs(120),
    );
    let text = scrape(&metrics);
    assert_eq!(must_metric(&text, "dab_reloads_total"), RELOADS as f64);
    assert_eq!(must_metric(&text, "dab_reload_failures_total"), 0.0);
    assert_eq!(
        must_metric(&text, "dab_reload_pipelines_rebuilt_total"),
        (RELOADS / 2) as f64
    );
    assert_eq!(
        must_metric(&text, "dab_reload_pipelines_added_total"),
        (RELOADS / 4) as f64
    );
    assert_eq!(
        must_metric(&text, "dab_reload_pipelines_removed_total"),
        (RELOADS / 4) as f64
    );
    assert!(must_metric(&text, "dab_reload_last_success_timestamp_seconds") > 0.0);

    dab.terminate();
    assert_exit_0(&mut dab);
    let err = dab.stderr();
    assert_eq!(reloads(&err).len(), RELOADS, "stderr:\n{err}");
    let stopped = err
        .lines()
        .find(|l| l.contains("tcp source stopped"))
        .unwrap_or_else(|| panic!("no `tcp source stopped` line; stderr:\n{err}"));
    assert!(
        stopped.contains(" failed=0 "),
        "the source heard of failed events: {stopped}"
    );

    // Every sequence number, counted.
    let bytes = std::fs::read(&out).expect("read the sink file");
    let mut seen = vec![0u32; N as usize];
    let mut lines = 0u64;
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        lines += 1;
        let off = offset_of(line).unwrap_or_else(|| {
            panic!(
                "a line without an offset: {}",
                String::from_utf8_lossy(line)
            )
        });
        assert!(off < N, "offset {off} was never sent");
        seen[off as usize] += 1;
    }
    let missing: Vec<u64> = (0..N).filter(|i| seen[*i as usize] == 0).collect();
    let duplicates: u64 = seen.iter().map(|c| u64::from(c.saturating_sub(1))).sum();
    // The extra sink is retired and built again five times, appending to
    // the same file: every line must still be whole.
    let extra_lines = file_lines(&extra);
    for l in &extra_lines {
        assert!(
            l.starts_with('{') && l.ends_with('}') && offset_of(l.as_bytes()).is_some(),
            "a broken line in the extra sink's file: {l:?}"
        );
    }
    let extra_lines = extra_lines.len();
    eprintln!(
        "{N} events sent in {send_secs:.1} s; {RELOADS} reloads, {under_load} while the producer was writing; \
         {lines} lines in the sink: {} missing, {duplicates} duplicates; {extra_lines} lines from the sampled extra pipeline",
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{} of {N} events never reached the sink, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    assert!(
        extra_lines > 0,
        "the extra pipeline, started five times, wrote nothing"
    );
}

/// The number after `"offset":` in an NDJSON line.
fn offset_of(line: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"offset\":";
    let at = line.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let digits: Vec<u8> = line[at..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

// 2 ------------------------------------------------------------------------

/// A syntax error, then a cycle through queues: both refused, logged with
/// their code and position, counted, and the running pipeline keeps
/// delivering with its old behaviour. Then a valid edit applies.
#[test]
fn invalid_edits_are_refused_and_the_old_pipeline_keeps_delivering() {
    let dir = tmp();
    let listen = free_addr();
    let out = dir.path().join("out").join("t.ndjson");
    let sink = sink_events("FileOut");
    let only_a = "t.NewPipeline().In(TcpIn).FilterType(A).Out(FileOut)\n";
    write_set(
        dir.path(),
        only_a,
        &format!(
            "sources:\n  TcpIn: {{ kind: tcp, listen: \"{listen}\", framing: ndjson }}\nsinks:\n  FileOut: {{ kind: file, path: {} }}\n",
            yaml_path(&out)
        ),
    );
    let (mut dab, metrics) = start(dir.path(), &["--watch"]);
    wait_tcp(&listen, START, || dab.stderr());

    send_once(&listen, 0..20, ab);
    wait_metrics(&metrics, &[(&sink, 10.0)], DELIVER);

    // A syntax error: the closing parenthesis is missing. The statement
    // ends at the end of line 1, column 55.
    let broken = "t.NewPipeline().In(TcpIn).FilterType(A, B).Out(FileOut\n";
    assert_eq!(broken.trim_end().chars().count() + 1, 55);
    edit(dir.path(), "t.dab", broken);
    wait_refusal(&mut dab, 1);
    let err = dab.stderr();
    assert!(
        err.lines().any(|l| l.contains(" ERROR ")
            && l.ends_with("error[E001]: expected `)` or `,`, found end of statement")),
        "no E001 ERROR line; stderr:\n{err}"
    );
    assert!(
        err.lines().any(|l| l == " --> t.dab:1:55"),
        "no t.dab:1:55; stderr:\n{err}"
    );
    assert_logged_like_validate(dir.path(), &err);
    wait_metrics(
        &metrics,
        &[
            ("dab_reload_failures_total", 1.0),
            ("dab_reloads_total", 0.0),
        ],
        RELOAD,
    );
    // The old pipeline still runs, still keeping only A.
    send_once(&listen, 20..40, ab);
    wait_metrics(&metrics, &[(&sink, 20.0)], DELIVER);

    // A cycle through two memory queues, beside the unchanged pipeline.
    let cycle = format!("{only_a}a.NewPipeline().In(Q1).Out(Q2)\nb.NewPipeline().In(Q2).Out(Q1)\n");
    edit(dir.path(), "t.dab", &cycle);
    wait_refusal(&mut dab, 2);
    let err = dab.stderr();
    // The code and message of docs/language.md's table, at the first
    // pipeline of the cycle.
    let e012 = err
        .lines()
        .position(|l| {
            l.contains(" ERROR ")
                && l.ends_with("error[E012]: cycle through queues: a -> Q2 -> b -> Q1 -> a")
        })
        .unwrap_or_else(|| panic!("no E012 ERROR line; stderr:\n{err}"));
    assert_eq!(
        err.lines().nth(e012 + 1),
        Some(" --> t.dab:2:1"),
        "stderr:\n{err}"
    );
    assert_logged_like_validate(dir.path(), &err);
    wait_metrics(
        &metrics,
        &[
            ("dab_reload_failures_total", 2.0),
            ("dab_reloads_total", 0.0),
        ],
        RELOAD,
    );
    send_once(&listen, 40..60, ab);
    wait_metrics(&metrics, &[(&sink, 30.0)], DELIVER);
    assert!(reloads(&dab.stderr()).is_empty(), "{}", dab.stderr());

    // A valid edit applies: B passes from now on.
    edit(
        dir.path(),
        "t.dab",
        "t.NewPipeline().In(TcpIn).FilterType(A, B).Out(FileOut)\n",
    );
    let r = wait_reload(&mut dab, 1);
    assert_eq!(
        r,
        Reloaded {
            trigger: "Watch".into(),
            added: vec![],
            rebuilt: vec!["t (stages changed)".into()],
            removed: vec![],
            kept: 0,
        }
    );
    send_once(&listen, 60..80, ab);
    wait_metrics(
        &metrics,
        &[
            (&sink, 50.0),
            ("dab_reloads_total", 1.0),
            ("dab_reload_failures_total", 2.0),
        ],
        DELIVER,
    );
    dab.terminate();
    assert_exit_0(&mut dab);

    let mut want = expected(0..60, ab, |t| t == "A");
    want.extend(expected(60..80, ab, |_| true));
    want.sort();
    assert_eq!(contents(&out), want);
}

// 3 ------------------------------------------------------------------------

/// A minimal HTTP/1.1 client on one kept-alive connection.
struct KeepAlive {
    conn: TcpStream,
    addr: String,
}

impl KeepAlive {
    fn connect(addr: &str) -> KeepAlive {
        let conn = TcpStream::connect(addr).expect("connect to the http source");
        conn.set_read_timeout(Some(DELIVER)).expect("read timeout");
        conn.set_write_timeout(Some(DELIVER))
            .expect("write timeout");
        KeepAlive {
            conn,
            addr: addr.to_owned(),
        }
    }

    /// POSTs `body` to /v1/events; returns the status, head and body.
    fn post(&mut self, body: &str) -> io::Result<(u16, String, String)> {
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        self.conn.write_all(head.as_bytes())?;
        self.conn.write_all(body.as_bytes())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.conn.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the kept-alive connection",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line: {head:?}")))?;
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .ok_or_else(|| io::Error::other(format!("no Content-Length: {head:?}")))?;
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            let n = self.conn.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed inside the answer body",
                ));
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Ok((status, head, String::from_utf8_lossy(&body).into_owned()))
    }
}

fn json_array(range: std::ops::Range<u64>, ty: fn(u64) -> &'static str) -> String {
    let items: Vec<String> = range.map(|i| event(ty(i), i)).collect();
    format!("[{}]", items.join(","))
}

/// The tcp and http listeners' bindings do not change, so a reload that
/// rebuilds both pipelines keeps the sources and their open connections:
/// events written on the same TCP connection and POSTed on the same
/// kept-alive HTTP connection after the reload arrive, with the new
/// pipelines' behaviour.
#[test]
fn unchanged_listeners_keep_their_connections_across_a_reload() {
    let dir = tmp();
    let tcp = free_addr();
    let http = free_addr();
    let out_t = dir.path().join("out").join("t.ndjson");
    let out_h = dir.path().join("out").join("h.ndjson");
    let (sink_t, sink_h) = (sink_events("FileT"), sink_events("FileH"));
    write_set(
        dir.path(),
        "t.NewPipeline().In(TcpIn).FilterType(A).Out(FileT)\nh.NewPipeline().In(HttpIn).FilterType(A).Out(FileH)\n",
        &format!(
            "sources:\n  TcpIn: {{ kind: tcp, listen: \"{tcp}\", framing: ndjson }}\n  HttpIn: {{ kind: http, listen: \"{http}\" }}\nsinks:\n  FileT: {{ kind: file, path: {} }}\n  FileH: {{ kind: file, path: {} }}\n",
            yaml_path(&out_t),
            yaml_path(&out_h)
        ),
    );
    let (mut dab, metrics) = start(dir.path(), &["--watch"]);
    wait_tcp(&tcp, START, || dab.stderr());
    wait_http_ok(&http, "/healthz", START, || dab.stderr());

    let mut conn = TcpStream::connect(&tcp).expect("connect to the tcp source");
    let mut web = KeepAlive::connect(&http);
    let local = (
        conn.local_addr().expect("tcp local address"),
        web.conn.local_addr().expect("http local address"),
    );
    send(&mut conn, 0..20, ab);
    let (status, head, body) = web.post(&json_array(0..20, ab)).expect("first POST");
    assert_eq!(status, 200, "{head}{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON answer"),
        json!({"accepted": 20})
    );
    assert!(
        !head.to_ascii_lowercase().contains("connection: close"),
        "the server means to close: {head}"
    );
    wait_metrics(&metrics, &[(&sink_t, 10.0), (&sink_h, 10.0)], DELIVER);

    edit(
        dir.path(),
        "t.dab",
        "t.NewPipeline().In(TcpIn).FilterType(A, B).Out(FileT)\nh.NewPipeline().In(HttpIn).FilterType(A, B).Out(FileH)\n",
    );
    let r = wait_reload(&mut dab, 1);
    assert_eq!(
        r,
        Reloaded {
            trigger: "Watch".into(),
            added: vec![],
            rebuilt: vec!["t (stages changed)".into(), "h (stages changed)".into()],
            removed: vec![],
            kept: 0,
        }
    );

    // The same sockets: nothing arrived from dab on the tcp connection,
    // and the writes and the request go through.
    assert_open(&conn, "tcp connection after the reload");
    send(&mut conn, 20..40, ab);
    let (status, head, body) = web
        .post(&json_array(20..40, ab))
        .expect("POST on the kept-alive connection after the reload");
    assert_eq!(status, 200, "{head}{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("JSON answer"),
        json!({"accepted": 20})
    );
    // FileH has them already (200 means delivered); the tcp ones follow.
    wait_metrics(&metrics, &[(&sink_t, 30.0), (&sink_h, 30.0)], DELIVER);
    assert_open(&conn, "tcp connection after the second batch");
    assert_eq!(
        (
            conn.local_addr().expect("tcp local address"),
            web.conn.local_addr().expect("http local address"),
        ),
        local
    );

    // Neither source was restarted: one "listening", no "stopped" yet.
    let err = dab.stderr();
    for (what, n) in [
        ("tcp source listening", 1),
        ("http source listening", 1),
        ("source stopped", 0),
    ] {
        assert_eq!(
            err.lines().filter(|l| l.contains(what)).count(),
            n,
            "`{what}` lines; stderr:\n{err}"
        );
    }

    // Closing our side ends the tcp connection cleanly: dab reads to the
    // end, and our read sees its end of stream, not a reset.
    conn.shutdown(Shutdown::Write).expect("shut down writing");
    conn.set_read_timeout(Some(DELIVER)).expect("read timeout");
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest)
        .expect("dab ends the connection without a reset");
    assert!(rest.is_empty(), "dab wrote {rest:?}");
    drop(web);

    dab.terminate();
    assert_exit_0(&mut dab);
    let err = dab.stderr();
    let stopped = err
        .lines()
        .find(|l| l.contains("tcp source stopped"))
        .unwrap_or_else(|| panic!("no `tcp source stopped` line; stderr:\n{err}"));
    assert!(stopped.contains(" delivered=40 "), "{stopped}");
    assert!(stopped.contains(" failed=0 "), "{stopped}");

    let mut want = expected(0..20, ab, |t| t == "A");
    want.extend(expected(20..40, ab, |_| true));
    want.sort();
    assert_eq!(contents(&out_t), want, "tcp pipeline output");
    assert_eq!(contents(&out_h), want, "http pipeline output");
}

// 4 ------------------------------------------------------------------------

/// A, B, C by offset modulo 3.
fn abc(offset: u64) -> &'static str {
    ["A", "B", "C"][(offset % 3) as usize]
}

/// Changing one sink's path in dab.yaml rebuilds exactly the two pipelines
/// that write it and keeps the third; events afterwards go to the new path.
#[test]
fn a_bindings_change_rebuilds_only_the_pipelines_using_it() {
    let dir = tmp();
    let listen = free_addr();
    let first = dir.path().join("out").join("shared-1.ndjson");
    let second = dir.path().join("out").join("shared-2.ndjson");
    let other = dir.path().join("out").join("other.ndjson");
    let bindings = |shared: &PathBuf| {
        format!(
            "sources:\n  TcpIn: {{ kind: tcp, listen: \"{listen}\", framing: ndjson }}\nsinks:\n  Shared: {{ kind: file, path: {} }}\n  Other: {{ kind: file, path: {} }}\n",
            yaml_path(shared),
            yaml_path(&other)
        )
    };
    write_set(
        dir.path(),
        "p1.NewPipeline().In(TcpIn).FilterType(A).Out(Shared)\np2.NewPipeline().In(TcpIn).FilterType(B).Out(Shared)\np3.NewPipeline().In(TcpIn).FilterType(C).Out(Other)\n",
        &bindings(&first),
    );
    let (mut dab, metrics) = start(dir.path(), &["--watch"]);
    wait_tcp(&listen, START, || dab.stderr());

    send_once(&listen, 0..30, abc);
    wait_metrics(
        &metrics,
        &[
            (&sink_events("Shared"), 20.0),
            (&sink_events("Other"), 10.0),
        ],
        DELIVER,
    );

    edit(dir.path(), "dab.yaml", &bindings(&second));
    let r = wait_reload(&mut dab, 1);
    assert_eq!(
        r,
        Reloaded {
            trigger: "Watch".into(),
            added: vec![],
            rebuilt: vec![
                "p1 (binding `Shared` changed)".into(),
                "p2 (binding `Shared` changed)".into()
            ],
            removed: vec![],
            kept: 1,
        }
    );

    send_once(&listen, 30..60, abc);
    // The rebuilt Shared sink keeps counting in the same series (20 before
    // the reload, 20 after); Other is the same sink.
    wait_metrics(
        &metrics,
        &[
            (&sink_events("Shared"), 40.0),
            (&sink_events("Other"), 20.0),
            ("dab_source_events_total{source=\"TcpIn\"}", 60.0),
            ("dab_reloads_total", 1.0),
            ("dab_reload_pipelines_rebuilt_total", 2.0),
            ("dab_reload_pipelines_added_total", 0.0),
            ("dab_reload_pipelines_removed_total", 0.0),
        ],
        DELIVER,
    );
    dab.terminate();
    assert_exit_0(&mut dab);

    assert_eq!(
        contents(&first),
        expected(0..30, abc, |t| t != "C"),
        "the old path has what came before the reload"
    );
    assert_eq!(
        contents(&second),
        expected(30..60, abc, |t| t != "C"),
        "the new path has what came after"
    );
    assert_eq!(
        contents(&other),
        expected(0..60, abc, |t| t == "C"),
        "the kept pipeline wrote everything to its sink"
    );
}

// 5 ------------------------------------------------------------------------

/// Without `--watch`, an edit does nothing until SIGHUP, which reloads.
#[test]
fn sighup_reloads_without_watch() {
    let dir = tmp();
    let listen = free_addr();
    let out = dir.path().join("out").join("t.ndjson");
    let sink = sink_events("FileOut");
    write_set(
        dir.path(),
        "t.NewPipeline().In(TcpIn).FilterType(A).Out(FileOut)\n",
        &format!(
            "sources:\n  TcpIn: {{ kind: tcp, listen: \"{listen}\", framing: ndjson }}\nsinks:\n  FileOut: {{ kind: file, path: {} }}\n",
            yaml_path(&out)
        ),
    );
    let (mut dab, metrics) = start(dir.path(), &[]);
    wait_tcp(&listen, START, || dab.stderr());
    // SIGHUP's default action ends the process: wait until dab catches it.
    let pid = dab.pid();
    poll(
        START,
        "dab to catch SIGHUP",
        || catches_sighup(pid).then_some(()),
        || dab.stderr(),
    );

    send_once(&listen, 0..20, ab);
    wait_metrics(&metrics, &[(&sink, 10.0)], DELIVER);

    edit(
        dir.path(),
        "t.dab",
        "t.NewPipeline().In(TcpIn).FilterType(A, B).Out(FileOut)\n",
    );
    // Not watching: the edit alone changes nothing.
    send_once(&listen, 20..40, ab);
    wait_metrics(
        &metrics,
        &[(&sink, 20.0), ("dab_reloads_total", 0.0)],
        DELIVER,
    );

    signal(&dab, "HUP");
    let line = dab.wait_for_log(RELOAD, "the reload", |l| {
        l.contains(" reloaded trigger=Hangup")
    });
    let r = wait_reload(&mut dab, 1);
    assert_eq!(
        r,
        Reloaded {
            trigger: "Hangup".into(),
            added: vec![],
            rebuilt: vec!["t (stages changed)".into()],
            removed: vec![],
            kept: 0,
        },
        "{line}"
    );
    send_once(&listen, 40..60, ab);
    wait_metrics(
        &metrics,
        &[
            (&sink, 40.0),
            ("dab_reloads_total", 1.0),
            ("dab_reload_failures_total", 0.0),
        ],
        DELIVER,
    );
    dab.terminate();
    assert_exit_0(&mut dab);
    let err = dab.stderr();
    assert_eq!(reloads(&err).len(), 1, "stderr:\n{err}");
    assert!(!err.contains("watching the blueprint set"), "{err}");

    let mut want = expected(0..40, ab, |t| t == "A");
    want.extend(expected(40..60, ab, |_| true));
    want.sort();
    assert_eq!(contents(&out), want);
}

// 6 ------------------------------------------------------------------------

/// An NDJSON event of type `S` at `offset`, signed with `key`; with
/// `good == false` its signature is spoiled (a poison event).
fn signed(key: &[u8], offset: u64, good: bool) -> String {
    use base64::Engine as _;
    let message = format!("m{offset}");
    let event = dab_api::Event {
        timestamp: 1_732_320_000_000_000_000,
        host: "h".into(),
        ty: "S".into(),
        offset,
        pid: 1,
        message: message.clone().into_bytes().into(),
        ..dab_api::Event::default()
    };
    let mut sig = dab_api::signature::Signer::new(key).sign(&event);
    if !good {
        sig[0] ^= 1;
    }
    json!({
        "timestamp": event.timestamp, "host": "h", "type": "S", "offset": offset,
        "pid": 1, "message": message,
        "signature": base64::engine::general_purpose::STANDARD.encode(sig),
    })
    .to_string()
}

/// Sends `lines` on a fresh connection to the tcp source and closes it.
fn send_lines(addr: &str, lines: &[String]) {
    let mut conn = TcpStream::connect(addr).expect("connect to the tcp source");
    let mut payload = lines.join("\n");
    payload.push('\n');
    conn.write_all(payload.as_bytes()).expect("write events");
}

/// The offsets in a sink file, sorted.
fn offsets(path: &Path) -> Vec<u64> {
    contents(path).into_iter().map(|(_, o)| o).collect()
}

/// Sends the last 40 events (offsets 40..80) of a signing test, waits
/// until `Good` has 40, `dead` its count and the source 80, and stops dab.
fn finish_signed(dab: &mut Dab, metrics: &str, listen: &str, lines: &[String], dead: (&str, f64)) {
    send_lines(listen, lines);
    wait_metrics(
        metrics,
        &[
            (&sink_events("Good"), 40.0),
            (&sink_events(dead.0), dead.1),
            ("dab_source_events_total{source=\"TcpIn\"}", 80.0),
        ],
        DELIVER,
    );
    dab.terminate();
    assert_exit_0(dab);
}

/// Bindings of a tcp source, a `Good` sink, two dead-letter sinks and a
/// key file `K`, all in `dir`.
fn signing_bindings(dir: &Path, listen: &str) -> String {
    let out = |n: &str| yaml_path(&dir.join("out").join(format!("{n}.ndjson")));
    format!(
        "sources:\n  TcpIn: {{ kind: tcp, listen: \"{listen}\", framing: ndjson }}\nsinks:\n  Good: {{ kind: file, path: {} }}\n  Dead1: {{ kind: file, path: {} }}\n  Dead2: {{ kind: file, path: {} }}\nkeys:\n  K: {{ file: {} }}\n",
        out("good"),
        out("dead1"),
        out("dead2"),
        yaml_path(&dir.join("k.key")),
    )
}

/// Only the `OnError` target changes: `dab validate --diff` and the reload
/// both call the pipeline rebuilt, and poison events (bad signatures) sent
/// after the reload land in the new target, those before in the old one.
/// Every event is in exactly one sink.
#[test]
fn an_on_error_only_change_moves_failures_to_the_new_target() {
    let dir = tmp();
    let listen = free_addr();
    let key = b"the signing key";
    std::fs::write(dir.path().join("k.key"), key).expect("write the key");
    let pipeline = |dead: &str| {
        format!("t.NewPipeline().In(TcpIn).VerifySignature(key = K).Out(Good).OnError({dead})\n")
    };
    write_set(
        dir.path(),
        &pipeline("Dead1"),
        &signing_bindings(dir.path(), &listen),
    );
    // What `dab validate --diff` says about the same edit.
    std::fs::create_dir_all(dir.path().join("new")).expect("mkdir");
    std::fs::write(dir.path().join("new").join("t.dab"), pipeline("Dead2")).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_dab"))
        .current_dir(dir.path())
        .args([
            "validate",
            "--diff",
            "t.dab",
            "new/t.dab",
            "--old-config",
            "dab.yaml",
            "--new-config",
            "dab.yaml",
        ])
        .env_remove("RUST_LOG")
        .output()
        .expect("run dab validate --diff");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "reload plan: 0 added, 1 rebuilt, 0 removed, 0 unchanged\n  ~ rebuilt    t (OnError `Dead1` -> `Dead2`; binding `Dead2` added)\n",
        "{out:?}"
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let (mut dab, metrics) = start(dir.path(), &["--watch"]);
    wait_tcp(&listen, START, || dab.stderr());
    let batch = |range: std::ops::Range<u64>| -> Vec<String> {
        range.map(|i| signed(key, i, i % 2 == 0)).collect()
    };
    send_lines(&listen, &batch(0..40));
    wait_metrics(
        &metrics,
        &[(&sink_events("Good"), 20.0), (&sink_events("Dead1"), 20.0)],
        DELIVER,
    );

    edit(dir.path(), "t.dab", &pipeline("Dead2"));
    let r = wait_reload(&mut dab, 1);
    assert_eq!(
        r,
        Reloaded {
            trigger: "Watch".into(),
            added: vec![],
            rebuilt: vec!["t (OnError `Dead1` -> `Dead2`; binding `Dead2` added)".into()],
            removed: vec![],
            kept: 0,
        }
    );
    finish_signed(&mut dab, &metrics, &listen, &batch(40..80), ("Dead2", 20.0));

    let out = |n: &str| dir.path().join("out").join(format!("{n}.ndjson"));
    assert_eq!(
        offsets(&out("good")),
        (0..80).filter(|i| i % 2 == 0).collect::<Vec<_>>()
    );
    assert_eq!(
        offsets(&out("dead1")),
        (0..40).filter(|i| i % 2 == 1).collect::<Vec<_>>()
    );
    assert_eq!(
        offsets(&out("dead2")),
        (40..80).filter(|i| i % 2 == 1).collect::<Vec<_>>()
    );
}

// 7 ------------------------------------------------------------------------

/// The key file is rotated (new contents, same path) and SIGHUP reloads:
/// the pipeline is rebuilt, events signed with the new key pass and those
/// signed with the old one fail to the `OnError` target. Nothing is lost.
#[test]
fn a_rotated_key_file_is_picked_up_by_a_reload() {
    let dir = tmp();
    let listen = free_addr();
    let (old_key, new_key) = (b"the old key".as_slice(), b"the new key".as_slice());
    let key_file = dir.path().join("k.key");
    std::fs::write(&key_file, old_key).expect("write the key");
    write_set(
        dir.path(),
        "t.NewPipeline().In(TcpIn).VerifySignature(key = K).Out(Good).OnError(Dead1)\nu.NewPipeline().In(TcpIn).FilterType(Nothing).Out(Dead2)\n",
        &signing_bindings(dir.path(), &listen),
    );
    let (mut dab, metrics) = start(dir.path(), &[]);
    wait_tcp(&listen, START, || dab.stderr());
    let pid = dab.pid();
    poll(
        START,
        "dab to catch SIGHUP",
        || catches_sighup(pid).then_some(()),
        || dab.stderr(),
    );
    // Even offsets signed with the old key, odd ones with the new.
    let batch = |range: std::ops::Range<u64>| -> Vec<String> {
        range
            .map(|i| signed(if i % 2 == 0 { old_key } else { new_key }, i, true))
            .collect()
    };
    send_lines(&listen, &batch(0..40));
    wait_metrics(
        &metrics,
        &[(&sink_events("Good"), 20.0), (&sink_events("Dead1"), 20.0)],
        DELIVER,
    );

    let staged = dir.path().join(".k.key.new");
    std::fs::write(&staged, new_key).expect("write the new key");
    std::fs::rename(&staged, &key_file).expect("rotate the key file");
    signal(&dab, "HUP");
    let r = wait_reload(&mut dab, 1);
    assert_eq!(
        r,
        Reloaded {
            trigger: "Hangup".into(),
            added: vec![],
            rebuilt: vec!["t (stages changed)".into()],
            removed: vec![],
            kept: 1,
        }
    );
    finish_signed(&mut dab, &metrics, &listen, &batch(40..80), ("Dead1", 40.0));

    let out = |n: &str| dir.path().join("out").join(format!("{n}.ndjson"));
    let mut good: Vec<u64> = (0..40).filter(|i| i % 2 == 0).collect();
    good.extend((40..80).filter(|i| i % 2 == 1));
    let mut dead: Vec<u64> = (0..40).filter(|i| i % 2 == 1).collect();
    dead.extend((40..80).filter(|i| i % 2 == 0));
    dead.sort_unstable();
    assert_eq!(
        offsets(&out("good")),
        good,
        "the old key before, the new after"
    );
    assert_eq!(offsets(&out("dead1")), dead, "the others failed to OnError");
}

// 8 ------------------------------------------------------------------------

/// The tcp and http sources' bindings change (a limit) but keep their
/// addresses: the reload rebuilds both and hands each listening socket to
/// its new source, so there is no EADDRINUSE and no failed source. A tcp
/// client and a kept-alive http client connected before the reload stay
/// connected and keep sending; new clients reach the new sources; every
/// event arrives exactly once and the process keeps running.
#[test]
fn a_listener_rebound_at_its_address_hands_over_with_clients_connected() {
    let dir = tmp();
    let tcp = free_addr();
    let http = free_addr();
    let out_t = dir.path().join("out").join("t.ndjson");
    let out_h = dir.path().join("out").join("h.ndjson");
    let (sink_t, sink_h) = (sink_events("FileT"), sink_events("FileH"));
    let bindings = |frame: u32, body: u32| {
        format!(
            "sources:\n  TcpIn: {{ kind: tcp, listen: \"{tcp}\", framing: ndjson, max_frame_bytes: {frame} }}\n  HttpIn: {{ kind: http, listen: \"{http}\", max_body_bytes: {body} }}\nsinks:\n  FileT: {{ kind: file, path: {} }}\n  FileH: {{ kind: file, path: {} }}\n",
            yaml_path(&out_t),
            yaml_path(&out_h)
        )
    };
    write_set(
        dir.path(),
        "t.NewPipeline().In(TcpIn).Out(FileT)\nh.NewPipeline().In(HttpIn).Out(FileH)\n",
        &bindings(65_536, 1_048_576),
    );
    let (mut dab, metrics) = start(dir.path(), &["--watch"]);
    wait_tcp(&tcp, START, || dab.stderr());
    wait_http_ok(&http, "/healthz", START, || dab.stderr());

    let mut conn = TcpStream::connect(&tcp).expect("connect to the tcp source");
    let mut web = KeepAlive::connect(&http);
    send(&mut conn, 0..20, ab);
    let (status, head, body) = web.post(&json_array(0..20, ab)).expect("first POST");
    assert_eq!(status, 200, "{head}{body}");
    wait_metrics(&metrics, &[(&sink_t, 20.0), (&sink_h, 20.0)], DELIVER);

    for round in 1..=3u32 {
        edit(
            dir.path(),
            "dab.yaml",
            &bindings(65_536 + round, 1_048_576 + round),
        );
        let r = wait_reload(&mut dab, round as usize);
        assert_eq!(
            r,
            Reloaded {
                trigger: "Watch".into(),
                added: vec![],
                rebuilt: vec![
                    "t (binding `TcpIn` changed)".into(),
                    "h (binding `HttpIn` changed)".into()
                ],
                removed: vec![],
                kept: 0,
            }
        );
        let base = u64::from(round) * 100;
        // The clients from before the reload, on their same connections.
        assert_open(&conn, "tcp connection after the reload");
        send(&mut conn, base..base + 20, ab);
        let (status, head, body) = web
            .post(&json_array(base..base + 20, ab))
            .expect("POST on the kept-alive connection after the reload");
        assert_eq!(status, 200, "{head}{body}");
        // New clients, served by the new sources on the handed-over sockets.
        send_once(&tcp, base + 20..base + 40, ab);
        let mut fresh = KeepAlive::connect(&http);
        let (status, head, body) = fresh
            .post(&json_array(base + 20..base + 40, ab))
            .expect("POST on a new connection after the reload");
        assert_eq!(status, 200, "{head}{body}");
        let n = 20.0 + 40.0 * f64::from(round);
        wait_metrics(&metrics, &[(&sink_t, n), (&sink_h, n)], DELIVER);
        assert!(dab.running(), "dab ended; stderr:\n{}", dab.stderr());
    }
    wait_metrics(&metrics, &[("dab_reload_failures_total", 0.0)], DELIVER);
    let err = dab.stderr();
    for bad in [
        "Address already in use",
        "source started by a reload failed",
        "source failed",
    ] {
        assert!(!err.contains(bad), "`{bad}` in stderr:\n{err}");
    }

    conn.shutdown(Shutdown::Write).expect("shut down writing");
    drop(web);
    dab.terminate();
    assert_exit_0(&mut dab);

    let mut want = expected(0..20, ab, |_| true);
    for round in 1..=3u64 {
        want.extend(expected(round * 100..round * 100 + 40, ab, |_| true));
    }
    want.sort();
    assert_eq!(contents(&out_t), want, "tcp pipeline output");
    assert_eq!(contents(&out_h), want, "http pipeline output");
}

// 9 ------------------------------------------------------------------------

/// A reload rebuilds two pipelines (their sinks' paths change) but leaves
/// their ops as they were: the dedup window still knows the UIDs seen
/// before the reload, and the rate limiter's bucket (burst 10, one token
/// per 1,000 s) is still empty. The same ten events sent again are
/// duplicates, and no event passes the limiter; every event is either
/// written once or counted dropped by reason.
#[test]
fn dedup_windows_and_rate_limit_buckets_survive_a_reload_that_keeps_their_op() {
    let dir = tmp();
    let listen = free_addr();
    let out = |n: &str| dir.path().join("out").join(format!("{n}.ndjson"));
    let bindings = |gen: u32| {
        format!(
            "sources:\n  TcpIn: {{ kind: tcp, listen: \"{listen}\", framing: ndjson }}\nsinks:\n  FileD: {{ kind: file, path: {} }}\n  FileR: {{ kind: file, path: {} }}\n",
            yaml_path(&out(&format!("d-{gen}"))),
            yaml_path(&out(&format!("r-{gen}")))
        )
    };
    write_set(
        dir.path(),
        "d.NewPipeline().In(TcpIn).Dedup(within = 10m).Out(FileD)\nr.NewPipeline().In(TcpIn).WithRateLimit(0.001, burst = 10, on_limit = drop).Out(FileR)\n",
        &bindings(1),
    );
    let (mut dab, metrics) = start(dir.path(), &["--watch"]);
    wait_tcp(&listen, START, || dab.stderr());
    send_once(&listen, 0..10, ab);
    wait_metrics(
        &metrics,
        &[(&sink_events("FileD"), 10.0), (&sink_events("FileR"), 10.0)],
        DELIVER,
    );

    edit(dir.path(), "dab.yaml", &bindings(2));
    let r = wait_reload(&mut dab, 1);
    assert_eq!(
        r,
        Reloaded {
            trigger: "Watch".into(),
            added: vec![],
            rebuilt: vec![
                "d (binding `FileD` changed)".into(),
                "r (binding `FileR` changed)".into()
            ],
            removed: vec![],
            kept: 0,
        }
    );
    send_once(&listen, 0..20, ab);
    wait_metrics(
        &metrics,
        &[
            (&sink_events("FileD"), 20.0),
            (&sink_events("FileR"), 10.0),
            ("dab_source_events_total{source=\"TcpIn\"}", 30.0),
            (
                "dab_pipeline_dropped_total{pipeline=\"d\",reason=\"duplicate\"}",
                10.0,
            ),
            (
                "dab_pipeline_dropped_total{pipeline=\"r\",reason=\"rate_limit\"}",
                20.0,
            ),
        ],
        DELIVER,
    );
    dab.terminate();
    assert_exit_0(&mut dab);

    assert_eq!(contents(&out("d-1")), expected(0..10, ab, |_| true));
    assert_eq!(
        contents(&out("d-2")),
        expected(10..20, ab, |_| true),
        "the window remembered 0..10"
    );
    assert_eq!(contents(&out("r-1")), expected(0..10, ab, |_| true));
    assert!(
        !out("r-2").exists() || contents(&out("r-2")).is_empty(),
        "the bucket was still empty: {:?}",
        contents(&out("r-2"))
    );
}

// 10 -----------------------------------------------------------------------

/// Binding a memory queue to Kafka in a running process is refused (E019,
/// at the binding, rendered as `dab validate --diff` renders it); the
/// running set goes on through its memory queue and loses nothing, and
/// editing the binding back is a no-op reload.
#[test]
fn switching_a_memory_queue_to_kafka_is_refused_and_nothing_is_lost() {
    let dir = tmp();
    let listen = free_addr();
    let out = dir.path().join("out").join("t.ndjson");
    let sink = sink_events("FileOut");
    let memory = format!(
        "sources:\n  TcpIn: {{ kind: tcp, listen: \"{listen}\", framing: ndjson }}\nqueues:\n  Q: {{ kind: memory }}\nsinks:\n  FileOut: {{ kind: file, path: {} }}\n",
        yaml_path(&out)
    );
    let kafka = memory.replace(
        "Q: { kind: memory }",
        "Q: { kind: kafka, brokers: \"127.0.0.1:9\", topic: q }",
    );
    write_set(
        dir.path(),
        "a.NewPipeline().In(TcpIn).Out(Q)\nb.NewPipeline().In(Q).Out(FileOut)\n",
        &memory,
    );
    // `dab validate --diff` refuses the same edit with the same words.
    std::fs::create_dir_all(dir.path().join("new")).expect("mkdir");
    std::fs::write(dir.path().join("new").join("dab.yaml"), &kafka).expect("write");
    let diff = Command::new(env!("CARGO_BIN_EXE_dab"))
        .current_dir(dir.path())
        .args([
            "validate",
            "--diff",
            "t.dab",
            "t.dab",
            "--old-config",
            "dab.yaml",
            "--new-config",
            "new/dab.yaml",
        ])
        .env_remove("RUST_LOG")
        .output()
        .expect("run dab validate --diff");
    let report = String::from_utf8_lossy(&diff.stdout).into_owned();
    assert_eq!(diff.status.code(), Some(1), "{diff:?}");
    let first = "error[E019]: queue `Q` would switch from memory to Kafka in a running process";
    assert!(report.starts_with(first), "{report}");
    assert!(report.contains("--> new/dab.yaml:4:3"), "{report}");

    let (mut dab, metrics) = start(dir.path(), &["--watch"]);
    wait_tcp(&listen, START, || dab.stderr());
    send_once(&listen, 0..20, ab);
    wait_metrics(&metrics, &[(&sink, 20.0)], DELIVER);

    edit(dir.path(), "dab.yaml", &kafka);
    wait_refusal(&mut dab, 1);
    let err = dab.stderr();
    assert!(err.contains(first), "stderr:\n{err}");
    assert!(err.contains("dab.yaml:4:3"), "stderr:\n{err}");
    send_once(&listen, 20..40, ab);
    wait_metrics(
        &metrics,
        &[
            (&sink, 40.0),
            ("dab_reloads_total", 0.0),
            ("dab_reload_failures_total", 1.0),
        ],
        DELIVER,
    );

    // Back to memory: the running set is unchanged.
    edit(dir.path(), "dab.yaml", &memory);
    let r = wait_reload(&mut dab, 1);
    assert_eq!(
        (r.added.len(), r.rebuilt.len(), r.removed.len(), r.kept),
        (0, 0, 0, 2)
    );
    send_once(&listen, 40..60, ab);
    wait_metrics(&metrics, &[(&sink, 60.0)], DELIVER);
    dab.terminate();
    assert_exit_0(&mut dab);
    assert_eq!(contents(&out), expected(0..60, ab, |_| true));
}

/// A hot reload that changes a type incompatibly with its registered
/// versions (schemas/<Type>/v<N>.yaml) is refused with the code of the
/// change (E020 here), the running set goes on and loses nothing; a
/// compatible new version (an optional field added) then reloads, and an
/// edit of the registry alone is checked again too.
#[test]
fn an_incompatible_schema_change_is_refused_by_a_reload() {
    let dir = tmp();
    let listen = free_addr();
    let out = dir.path().join("out").join("t.ndjson");
    let sink = sink_events("FileOut");
    let registry = dir.path().join("schemas").join("A");
    std::fs::create_dir_all(&registry).expect("registry");
    std::fs::write(
        registry.join("v1.yaml"),
        "version: 1\nfields:\n  id: int64?\n",
    )
    .expect("v1");
    let bindings = |version: u32, fields: &str| {
        format!(
            "sources:\n  TcpIn: {{ kind: tcp, listen: \"{listen}\", framing: ndjson }}\nsinks:\n  FileOut: {{ kind: file, path: {} }}\ntypes:\n  A:\n    version: {version}\n    fields:\n{fields}  B: {{}}\n",
            yaml_path(&out)
        )
    };
    write_set(
        dir.path(),
        "a.NewPipeline().In(TcpIn).FilterType(A, B).Out(FileOut)\n",
        &bindings(1, "      id: int64?\n"),
    );
    let (mut dab, metrics) = start(dir.path(), &["--watch"]);
    wait_tcp(&listen, START, || dab.stderr());
    // The admin endpoint serves the running set's schemas.
    let schemas = || {
        let r = request(&metrics, "GET", "/schemas", b"", Duration::from_secs(5))
            .expect("GET /schemas");
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str::<Value>(&r.body).expect("JSON")
    };
    assert_eq!(
        schemas(),
        json!({"types": {"A": {"version": 1, "fields": {"id": "int64?"}}}})
    );
    send_once(&listen, 0..20, ab);
    wait_metrics(&metrics, &[(&sink, 20.0)], DELIVER);

    edit(
        dir.path(),
        "dab.yaml",
        &bindings(2, "      id: int64?\n      customer: string\n"),
    );
    wait_refusal(&mut dab, 1);
    let err = dab.stderr();
    assert!(
        err.contains("error[E020]: version 2 of `A` adds the required field `customer`"),
        "stderr:\n{err}"
    );
    send_once(&listen, 20..40, ab);
    wait_metrics(
        &metrics,
        &[
            (&sink, 40.0),
            ("dab_reloads_total", 0.0),
            ("dab_reload_failures_total", 1.0),
        ],
        DELIVER,
    );

    edit(
        dir.path(),
        "dab.yaml",
        &bindings(2, "      id: int64?\n      customer: string?\n"),
    );
    wait_reload(&mut dab, 1);
    assert_eq!(
        schemas(),
        json!({"types": {"A": {"version": 2, "fields": {"id": "int64?", "customer": "string?"}}}})
    );
    send_once(&listen, 40..60, ab);
    wait_metrics(&metrics, &[(&sink, 60.0)], DELIVER);

    // The registry is watched too: registering a version 2 that is not
    // the running one is refused (E025) without touching the bindings.
    edit(
        &registry,
        "v2.yaml",
        "version: 2\nfields:\n  id: int64?\n  customer: int64?\n",
    );
    wait_refusal(&mut dab, 2);
    let err = dab.stderr();
    assert!(
        err.contains("error[E025]: type `A` version 2 is not the registered version 2"),
        "stderr:\n{err}"
    );
    send_once(&listen, 60..80, ab);
    wait_metrics(&metrics, &[(&sink, 80.0)], DELIVER);
    dab.terminate();
    assert_exit_0(&mut dab);
    assert_eq!(contents(&out).len(), 80, "every event once");
}
