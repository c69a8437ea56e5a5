//! End-to-end tests of `dab run` under producers that push its limits
//! (issue 11 item 5): real `dab` processes, real sockets on 127.0.0.1,
//! RSS sampled from `/proc`. Each test states its bound and checks that
//! every acknowledged event reached the sink's peer.
//!
//! - `four_10_mib_http_bodies_of_empty_objects_stay_in_bounded_memory`;
//! - `a_4_mib_grpc_batch_of_empty_events_stays_in_bounded_memory`;
//! - `idle_connections_and_slow_loris_are_refused_or_timed_out_while_a_client_is_served`;
//! - `tcp_and_grpc_listeners_refuse_connections_over_max_connections`;
//! - `grpc_connections_that_never_finish_the_preface_are_closed_and_free_their_slots`;
//! - `input_claiming_reserved_names_is_renamed_and_counted`;
//! - `admission_on_memory_is_on_by_default_and_refuses_above_the_mark`.

// Events are built field by field, the way other crates must.
#![allow(clippy::field_reassign_with_default)]

#[allow(dead_code)]
mod grpc_support;
#[allow(dead_code)]
mod run_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use dab_connectors::murron::wire;

use grpc_support::RssSampler;
use run_support::client::{free_addr, metric, post_events, scrape, wait_http_ok, wait_tcp};
use run_support::counter::LineCounter;
use run_support::process::Dab;
use run_support::{poll, write_set};

/// The bound on peak RSS the amplification tests hold `dab run` to.
const MAX_RSS_MIB: u64 = 256;
/// Longest wait for dab to start serving.
const START: Duration = Duration::from_secs(20);

/// A pass-through set: `In` (given) to a `tcp` sink on `counter`, metrics
/// on a free port. Returns the process and the metrics address.
fn start_relay(dir: &std::path::Path, source: &str, counter: &LineCounter) -> (Dab, String) {
    write_set(
        dir,
        "p.NewPipeline().In(In).Out(Out)\n",
        &format!(
            "sources:\n  In: {source}\nsinks:\n  Out: {{ kind: tcp, connect: \"{}\" }}\n",
            counter.addr()
        ),
    );
    let metrics = free_addr();
    let dab = Dab::start(dir, &["run", "t.dab", "--metrics", &metrics]);
    wait_http_ok(&metrics, "/healthz", START, || dab.stderr());
    (dab, metrics)
}

/// Waits until the peer has read `n` lines, then checks that no more come
/// in the next 200 ms (a duplicate or a stray event would).
fn wait_lines(counter: &LineCounter, n: u64) {
    poll(
        Duration::from_secs(60),
        &format!("{n} lines at the peer"),
        || (counter.lines() >= n).then_some(()),
        || format!("{} lines", counter.lines()),
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(counter.lines(), n);
}

/// Checks the sampled peak against [`MAX_RSS_MIB`].
fn assert_peak_rss(peak_kib: u64, samples: u64) {
    assert!(samples > 10, "only {samples} RSS samples");
    eprintln!("peak RSS {} MiB over {samples} samples", peak_kib / 1024);
    assert!(
        peak_kib < MAX_RSS_MIB * 1024,
        "peak RSS {} MiB, bound {MAX_RSS_MIB} MiB",
        peak_kib / 1024
    );
}

/// SIGTERM, and a clean exit within 30 s.
fn stop(dab: &mut Dab) {
    dab.terminate();
    assert!(
        dab.wait(Duration::from_secs(30)).success(),
        "{}",
        dab.stderr()
    );
}

/// `[{},{},...]` of `n` empty objects: `3n + 1` bytes.
fn empty_objects(n: usize) -> String {
    let mut body = String::with_capacity(3 * n + 1);
    body.push('[');
    for i in 0..n {
        if i > 0 {
            body.push(',');
        }
        body.push_str("{}");
    }
    body.push(']');
    body
}

/// The `accepted` count of a 200 answer.
fn accepted(body: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(body).expect("answer is JSON");
    v["accepted"].as_u64().expect("`accepted` count")
}

#[test]
fn four_10_mib_http_bodies_of_empty_objects_stay_in_bounded_memory() {
    // The largest body the source takes by default is 10 MiB.
    const EVENTS: usize = (10 * 1024 * 1024 - 1) / 3;
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = LineCounter::start();
    let listen = free_addr();
    let (mut dab, _metrics) = start_relay(
        dir.path(),
        &format!("{{ kind: http, listen: \"{listen}\" }}"),
        &counter,
    );
    wait_tcp(&listen, START, || dab.stderr());
    let body = std::sync::Arc::new(empty_objects(EVENTS));
    assert_eq!(body.len(), 10 * 1024 * 1024);

    let rss = RssSampler::start(dab.pid());
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (body, listen) = (std::sync::Arc::clone(&body), listen.clone());
            std::thread::spawn(move || post_events(&listen, &body, Duration::from_secs(300)))
        })
        .collect();
    let answers: Vec<_> = clients
        .into_iter()
        .map(|c| c.join().expect("client thread"))
        .collect();
    let (peak_kib, samples) = rss.stop();

    let mut acked = 0;
    for a in &answers {
        assert_eq!(
            a.status,
            200,
            "answer: {}; stderr:\n{}",
            a.body,
            dab.stderr()
        );
        acked += accepted(&a.body);
    }
    assert_eq!(acked, 4 * EVENTS as u64);
    // Acknowledged means delivered: the tcp sink acknowledges once the
    // kernel has the lines, so the peer reads every one of them.
    wait_lines(&counter, acked);
    assert_peak_rss(peak_kib, samples);
    stop(&mut dab);
    assert_eq!(counter.lines(), acked, "nothing more after the stop");
}

#[test]
fn a_4_mib_grpc_batch_of_empty_events_stays_in_bounded_memory() {
    // An empty event is two bytes (field 1, length 0); the largest message
    // the source takes by default is 4 MiB.
    const EVENTS: usize = 2 * 1024 * 1024 - 8;
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = LineCounter::start();
    let listen = free_addr();
    let (mut dab, _metrics) = start_relay(
        dir.path(),
        &format!("{{ kind: murron_grpc, listen: \"{listen}\" }}"),
        &counter,
    );
    wait_tcp(&listen, START, || dab.stderr());
    let batch = wire::Batch::from_bytes([0x0a, 0x00].repeat(EVENTS).into());

    let rss = RssSampler::start(dab.pid());
    let rt = grpc_support::runtime();
    let ack = rt.block_on(async {
        let mut client = grpc_support::must_connect(&listen).await;
        grpc_support::send(&mut client, batch, Duration::from_secs(300)).await
    });
    let (peak_kib, samples) = rss.stop();

    let ack = ack.unwrap_or_else(|s| panic!("batch refused: {s}; stderr:\n{}", dab.stderr()));
    assert_eq!(ack.accepted, EVENTS as u64);
    wait_lines(&counter, ack.accepted);
    assert_peak_rss(peak_kib, samples);
    stop(&mut dab);
}

/// Reads until the server closes the connection (EOF or reset); what it
/// sent first. Panics if it stays open for `limit`.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(limit)).expect("read timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("connection still open after {limit:?}: {e}"),
        }
    }
}

#[test]
fn idle_connections_and_slow_loris_are_refused_or_timed_out_while_a_client_is_served() {
    const IDLE: usize = 2000;
    const MAX: usize = 1000;
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = LineCounter::start();
    let listen = free_addr();
    let (dab, metrics) = start_relay(
        dir.path(),
        &format!(
            "{{ kind: http, listen: \"{listen}\", max_connections: {MAX}, header_timeout: 2s, body_timeout: 1s }}"
        ),
        &counter,
    );
    wait_tcp(&listen, START, || dab.stderr());
    let counts = |text: &str| {
        let get = |m: &str| metric(text, &format!("{m}{{source=\"In\"}}")).unwrap_or(-1.0) as i64;
        (
            get("dab_source_connections_refused_total"),
            get("dab_source_timeouts_total"),
        )
    };
    // `wait_tcp`'s probe closed at once: neither refused nor timed out.
    assert_eq!(counts(&scrape(&metrics)), (0, 0));

    // Slow loris, headers: a byte of the head every 100 ms; the head is
    // never done within header_timeout (2 s).
    let head_loris = {
        let listen = listen.clone();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(&listen).expect("connect");
            let head = b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n[]";
            let started = Instant::now();
            for b in head {
                if s.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let answer = read_until_closed(&mut s, Duration::from_secs(10));
            (started.elapsed(), answer)
        })
    };
    // Slow loris, body: the head at once, then the body a byte every
    // 300 ms; body_timeout (1 s) answers 408.
    let body_loris = {
        let listen = listen.clone();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(&listen).expect("connect");
            s.write_all(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[")
                .expect("write head");
            for _ in 0..5 {
                if s.write_all(b" ").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            read_until_closed(&mut s, Duration::from_secs(10))
        })
    };
    // Give the lorises their slots before the idle crowd takes the rest.
    std::thread::sleep(Duration::from_millis(200));
    let opening = Instant::now();
    let mut idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| TcpStream::connect(&listen).unwrap_or_else(|e| panic!("idle connection {i}: {e}")))
        .collect();
    eprintln!("{IDLE} idle connections opened in {:?}", opening.elapsed());

    let (took, head_answer) = head_loris.join().expect("head loris");
    assert!(
        took < Duration::from_secs(8),
        "the head loris was cut off only after {took:?}"
    );
    let head_answer = String::from_utf8_lossy(&head_answer).into_owned();
    assert!(
        head_answer.is_empty() || head_answer.starts_with("HTTP/1.1 408"),
        "head loris got {head_answer:?}"
    );
    let body_answer = String::from_utf8_lossy(&body_loris.join().expect("body loris")).into_owned();
    assert!(
        body_answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "body loris got {body_answer:?}"
    );
    assert!(
        body_answer.contains("the body did not arrive within 1000 ms"),
        "{body_answer}"
    );
    // Every idle connection is closed by the server: refused at once, or
    // timed out after header_timeout.
    for (i, s) in idle.iter_mut().enumerate() {
        let got = read_until_closed(s, Duration::from_secs(20));
        assert!(
            got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
            "idle connection {i} got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    // Each counted once: the two lorises timed out, every idle connection
    // was refused or timed out. At least MAX - 2 idle ones had a slot.
    let (refused, timeouts) = poll(
        Duration::from_secs(10),
        "every connection counted",
        || {
            let (r, t) = counts(&scrape(&metrics));
            (r + t == (IDLE + 2) as i64).then_some((r, t))
        },
        || format!("{:?}", counts(&scrape(&metrics))),
    );
    eprintln!("refused {refused}, timed out {timeouts}");
    assert!(
        (1..=(IDLE - MAX + 2) as i64).contains(&refused),
        "refused {refused}, timeouts {timeouts}"
    );

    // A normal client, with the crowd's sockets still open on its side.
    let ok = post_events(
        &listen,
        r#"[{"type":"ok"},{"type":"ok"}]"#,
        Duration::from_secs(10),
    );
    assert_eq!((ok.status, ok.body.as_str()), (200, r#"{"accepted":2}"#));
    wait_lines(&counter, 2);
    drop(idle);
}

#[test]
fn tcp_and_grpc_listeners_refuse_connections_over_max_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = LineCounter::start();
    let (tcp, grpc) = (free_addr(), free_addr());
    write_set(
        dir.path(),
        "t.NewPipeline().In(TcpIn).Out(Out)\ng.NewPipeline().In(GrpcIn).Out(Out)\n",
        &format!(
            "sources:\n  TcpIn: {{ kind: tcp, listen: \"{tcp}\", max_connections: 3 }}\n  \
             GrpcIn: {{ kind: murron_grpc, listen: \"{grpc}\", max_connections: 1 }}\n\
             sinks:\n  Out: {{ kind: tcp, connect: \"{}\" }}\n",
            counter.addr()
        ),
    );
    let metrics = free_addr();
    let dab = Dab::start(dir.path(), &["run", "t.dab", "--metrics", &metrics]);
    // Ready means both listeners serve. Probing them with a connection
    // instead would take a slot until dab reads its end, and a held
    // connection made just after could be refused.
    wait_http_ok(&metrics, "/readyz", START, || dab.stderr());
    let refused = |source: &str| {
        metric(
            &scrape(&metrics),
            &format!("dab_source_connections_refused_total{{source=\"{source}\"}}"),
        )
    };
    assert_eq!(refused("TcpIn"), Some(0.0));

    // Three connections hold every tcp slot: a line from each arrives.
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(&tcp).expect("connect");
            s.write_all(b"{\"type\":\"held\"}\n").expect("write");
            s
        })
        .collect();
    wait_lines(&counter, 3);
    // Two more are closed at once, and what they sent is not read.
    for _ in 0..2 {
        let mut s = TcpStream::connect(&tcp).expect("connect");
        let _ = s.write_all(b"{\"type\":\"over\"}\n");
        assert_eq!(read_until_closed(&mut s, Duration::from_secs(10)), b"");
    }
    assert_eq!(refused("TcpIn"), Some(2.0));
    // One held connection ends; its slot serves a newcomer. The slot is
    // freed when dab has read the end, so the newcomer may be refused a
    // few times first: each refusal is counted.
    drop(held.pop());
    let mut refusals = 2.0;
    let served = (0..100).any(|_| {
        let mut s = TcpStream::connect(&tcp).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("read timeout");
        let mut buf = [0u8; 1];
        match s.read(&mut buf) {
            // Still open after 300 ms: accepted.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                s.write_all(b"{\"type\":\"new\"}\n").expect("write");
                true
            }
            _ => {
                refusals += 1.0;
                false
            }
        }
    });
    assert!(served, "the newcomer was refused 100 times");
    wait_lines(&counter, 4);
    assert_eq!(refused("TcpIn"), Some(refusals));

    // gRPC: one connection at a time.
    let rt = grpc_support::runtime();
    let one = wire::Batch::from_events(&[grpc_support::event("h", 1, "t", 0)]);
    let mut first = rt.block_on(grpc_support::must_connect(&grpc));
    let ack = rt
        .block_on(grpc_support::send(
            &mut first,
            one.clone(),
            Duration::from_secs(10),
        ))
        .expect("first client served");
    assert_eq!(ack.accepted, 1);
    let second = rt.block_on(async {
        match grpc_support::connect(&grpc).await {
            Ok(mut c) => grpc_support::send(&mut c, one.clone(), Duration::from_secs(10))
                .await
                .map(|a| a.accepted)
                .map_err(|s| s.to_string()),
            Err(e) => Err(e.to_string()),
        }
    });
    assert!(second.is_err(), "second connection served: {second:?}");
    // tonic may try the connection more than once; each try is refused.
    let grpc_refused = refused("GrpcIn").expect("GrpcIn refusals");
    assert!(grpc_refused >= 1.0, "{grpc_refused}");
    wait_lines(&counter, 5);
    drop(held);
}

/// Two clients that connect to a `murron_grpc` listener of two slots and
/// never finish the HTTP/2 preface (one silent, one trickling a byte every
/// 200 ms) hold both slots only until `handshake_timeout`: they are closed
/// and counted, and a real client is served after.
#[test]
fn grpc_connections_that_never_finish_the_preface_are_closed_and_free_their_slots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = LineCounter::start();
    let grpc = free_addr();
    write_set(
        dir.path(),
        "g.NewPipeline().In(GrpcIn).Out(Out)\n",
        &format!(
            "sources:\n  GrpcIn: {{ kind: murron_grpc, listen: \"{grpc}\", max_connections: 2, handshake_timeout: 1s }}\n\
             sinks:\n  Out: {{ kind: tcp, connect: \"{}\" }}\n",
            counter.addr()
        ),
    );
    let metrics = free_addr();
    let dab = Dab::start(dir.path(), &["run", "t.dab", "--metrics", &metrics]);
    wait_http_ok(&metrics, "/readyz", START, || dab.stderr());
    let series = |m: &str| metric(&scrape(&metrics), &format!("{m}{{source=\"GrpcIn\"}}"));

    let started = Instant::now();
    let mut silent = TcpStream::connect(&grpc).expect("connect");
    let trickler = {
        let grpc = grpc.clone();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(&grpc).expect("connect");
            // 20 of the 24 preface bytes, then quiet.
            for b in &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..20] {
                if s.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            read_until_closed(&mut s, Duration::from_secs(10))
        })
    };
    // What the server says first (its SETTINGS frame) may come before
    // the close; the close is what counts.
    read_until_closed(&mut silent, Duration::from_secs(10));
    let silent_after = started.elapsed();
    assert!(
        silent_after >= Duration::from_millis(900),
        "{silent_after:?}"
    );
    // The trickler would take 4 s to send 20 bytes; it is cut at 1 s.
    trickler.join().expect("trickler");
    let closed_after = started.elapsed();
    assert!(closed_after < Duration::from_secs(3), "{closed_after:?}");
    assert_eq!(series("dab_source_timeouts_total"), Some(2.0));

    // Both slots are free again: a real client is served.
    let rt = grpc_support::runtime();
    let one = wire::Batch::from_events(&[grpc_support::event("h", 1, "t", 0)]);
    let mut client = rt.block_on(grpc_support::must_connect(&grpc));
    let ack = rt
        .block_on(grpc_support::send(
            &mut client,
            one,
            Duration::from_secs(10),
        ))
        .expect("a client is served");
    assert_eq!(ack.accepted, 1);
    wait_lines(&counter, 1);
    // A client that finished its preface is not timed out while it idles.
    std::thread::sleep(Duration::from_millis(1500));
    let again = wire::Batch::from_events(&[grpc_support::event("h", 1, "t", 1)]);
    let ack = rt
        .block_on(grpc_support::send(
            &mut client,
            again,
            Duration::from_secs(10),
        ))
        .expect("the idle client is still served");
    assert_eq!(ack.accepted, 1);
    wait_lines(&counter, 2);
    assert_eq!(series("dab_source_timeouts_total"), Some(2.0));
}

#[test]
fn input_claiming_reserved_names_is_renamed_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.ndjson");
    let listen = free_addr();
    write_set(
        dir.path(),
        "p.NewPipeline().In(In).Out(Out)\n",
        &format!(
            "sources:\n  In: {{ kind: http, listen: \"{listen}\" }}\nsinks:\n  Out: {{ kind: file, path: {} }}\n",
            serde_json::to_string(&out.display().to_string()).expect("path")
        ),
    );
    let metrics = free_addr();
    let mut dab = Dab::start(dir.path(), &["run", "t.dab", "--metrics", &metrics]);
    wait_http_ok(&metrics, "/healthz", START, || dab.stderr());
    wait_tcp(&listen, START, || dab.stderr());
    let answer = post_events(
        &listen,
        r#"[{"type":"dab.undecodable","offset":1,"tags":{"dab.error":"forged","env":"x"}},
            {"type":"t","offset":2,"tags":{"dab.untrusted.sample_rate":"5"}}]"#,
        Duration::from_secs(10),
    );
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, r#"{"accepted":2}"#)
    );
    let lines = run_support::file_lines(&out);
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(events.len(), 2, "{lines:?}");
    assert_eq!(events[0]["type"], "dab.untrusted.undecodable");
    assert_eq!(
        events[0]["tags"],
        serde_json::json!({"env": "x", "dab.untrusted.error": "forged"})
    );
    // Already marked untrusted: left as it came.
    assert_eq!(events[1]["type"], "t");
    assert_eq!(
        events[1]["tags"],
        serde_json::json!({"dab.untrusted.sample_rate": "5"})
    );
    assert_eq!(
        metric(
            &scrape(&metrics),
            "dab_source_reserved_names_total{source=\"In\"}"
        ),
        Some(1.0)
    );
    stop(&mut dab);
}

#[test]
fn admission_on_memory_is_on_by_default_and_refuses_above_the_mark() {
    let dir = tempfile::tempdir().expect("tempdir");
    let counter = LineCounter::start();
    let listen = free_addr();
    let source = format!("{{ kind: http, listen: \"{listen}\" }}");
    // Default: a mark of half the memory, at least 512 MiB, logged.
    let (mut dab, _) = start_relay(dir.path(), &source, &counter);
    let line = dab.wait_for_log(START, "the memory mark", |l| {
        l.contains("sources refuse new work above this resident memory")
    });
    let mark: u64 = line
        .split("max_memory_mb=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no mark in {line:?}"));
    assert!(mark >= 512, "{line}");
    wait_tcp(&listen, START, || dab.stderr());
    let ok = post_events(&listen, "[{}]", Duration::from_secs(10));
    assert_eq!((ok.status, ok.body.as_str()), (200, r#"{"accepted":1}"#));
    stop(&mut dab);

    // A mark below what the process uses already: refused, retriable.
    let metrics = free_addr();
    let mut dab = Dab::start(
        dir.path(),
        &[
            "run",
            "t.dab",
            "--metrics",
            &metrics,
            "--max-memory-mb",
            "1",
        ],
    );
    wait_http_ok(&metrics, "/healthz", START, || dab.stderr());
    wait_tcp(&listen, START, || dab.stderr());
    let refused = post_events(&listen, "[{}]", Duration::from_secs(10));
    assert_eq!(
        (refused.status, refused.body.as_str()),
        (429, r#"{"error":"overloaded, retry later"}"#)
    );
    assert_eq!(
        metric(&scrape(&metrics), "dab_source_refused_total{source=\"In\"}"),
        Some(1.0)
    );
    stop(&mut dab);
    wait_lines(&counter, 1);
}
