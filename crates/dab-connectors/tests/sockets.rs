//! The `tcp` and `unix` sources and the `tcp` sink over real sockets:
//! framing, bad input, back pressure, admission, acks and shutdown.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dab_api::connector::{Admission, SourceStats};
use dab_api::{
    Batch, ConfigValue, ConnectorError, Event, Sink, SinkFactory, Source, SourceContext,
    SourceFactory, Text,
};
use dab_connectors::codec;
use dab_connectors::framing::{write_delimited, DelimitedFramer};
use dab_connectors::tcp::{
    bind_listener, AckCounts, Framing, SocketSettings, TcpSink, TcpSinkFactory, TcpSource,
    TcpSourceFactory,
};
use dab_connectors::unix::{UnixSource, UnixSourceFactory};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug)]
struct Gate(AtomicBool);

impl Admission for Gate {
    fn admit(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

struct Running {
    rx: mpsc::Receiver<Batch>,
    stats: Arc<SourceStats>,
    shutdown: CancellationToken,
    gate: Arc<Gate>,
    acks: Arc<AckCounts>,
    task: JoinHandle<Result<(), ConnectorError>>,
}

impl Running {
    /// Receives until `n` events arrived, settling every batch.
    async fn take(&mut self, n: usize) -> Vec<Event> {
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            let batch = timeout(WAIT, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} events arrived", events.len()))
                .expect("source ended early");
            assert!(batch.len() <= 1024, "batch of {}", batch.len());
            assert!(batch.ack.is_tracked());
            events.extend(batch.events);
            batch.ack.complete();
        }
        assert_eq!(events.len(), n, "more events than sent");
        events
    }

    /// Nothing more arrives within a short wait.
    async fn assert_quiet(&mut self) {
        if let Ok(Some(batch)) = timeout(Duration::from_millis(200), self.rx.recv()).await {
            panic!("unexpected batch: {:?}", batch.events);
        }
    }

    async fn stop(self) -> Result<(), ConnectorError> {
        self.shutdown.cancel();
        timeout(Duration::from_secs(1), self.task)
            .await
            .expect("run() did not return within 1 s after shutdown")
            .expect("source task panicked")
    }
}

fn start(name: &str, source: Box<dyn Source>, capacity: usize, acks: Arc<AckCounts>) -> Running {
    let (tx, rx) = mpsc::channel(capacity);
    let stats = Arc::new(SourceStats::default());
    let shutdown = CancellationToken::new();
    let gate = Arc::new(Gate(AtomicBool::new(true)));
    let ctx = SourceContext {
        name: name.to_owned(),
        out: tx,
        shutdown: shutdown.clone(),
        stats: Arc::clone(&stats),
        admission: gate.clone(),
    };
    let task = tokio::spawn(source.run(ctx));
    Running {
        rx,
        stats,
        shutdown,
        gate,
        acks,
        task,
    }
}

async fn start_tcp(settings: SocketSettings, capacity: usize) -> (Running, SocketAddr) {
    let listener = bind_listener("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let source = TcpSource::with_listener(listener, settings);
    let acks = source.acks();
    (start("TcpIn", Box::new(source), capacity, acks), addr)
}

fn ndjson(settings_max: usize) -> SocketSettings {
    SocketSettings {
        framing: Framing::Ndjson,
        max_frame_bytes: settings_max,
        ..SocketSettings::default()
    }
}

fn line(host: &str, offset: u64, message: &str) -> String {
    format!(
        "{{\"timestamp\":1732320000000000000,\"host\":\"{host}\",\"type\":\"T\",\"offset\":{offset},\"pid\":7,\"message\":\"{message}\"}}\n"
    )
}

/// Writes `data` in random-sized chunks, so lines and frames straddle reads.
async fn write_chunked<W: AsyncWriteExt + Unpin>(w: &mut W, data: &[u8], seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rest = data;
    while !rest.is_empty() {
        let n = rng.random_range(1..=4096).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        w.write_all(chunk).await.expect("write");
        rest = tail;
    }
    w.flush().await.expect("flush");
}

fn uids(events: &[Event]) -> BTreeSet<(String, u64)> {
    events
        .iter()
        .map(|e| (e.host.as_str().to_owned(), e.offset))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_source_reads_ndjson_from_concurrent_connections() {
    const N: u64 = 10_000;
    let (mut run, addr) = start_tcp(SocketSettings::default(), 16).await;
    let mut expected = BTreeSet::new();
    let mut clients = Vec::new();
    let mut sent_bytes = 0;
    for c in 0..3u64 {
        let host = format!("client-{c}");
        let mut data = Vec::new();
        for offset in (c..N).step_by(3) {
            data.extend_from_slice(line(&host, offset, "hello").as_bytes());
            expected.insert((host.clone(), offset));
        }
        sent_bytes += data.len() as u64;
        clients.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            write_chunked(&mut s, &data, c).await;
        }));
    }
    let events = run.take(N as usize).await;
    for c in clients {
        c.await.expect("client");
    }
    assert_eq!(uids(&events), expected);
    assert!(events
        .iter()
        .all(|e| e.ty.as_str() == "T" && e.pid == 7 && &e.message[..] == b"hello"));
    run.assert_quiet().await;
    assert_eq!(run.stats.events.load(Ordering::SeqCst), N);
    assert_eq!(run.stats.bytes.load(Ordering::SeqCst), sent_bytes);
    assert_eq!(run.stats.decode_errors.load(Ordering::SeqCst), 0);
    assert_eq!(run.acks.delivered(), N);
    assert_eq!(run.acks.failed(), 0);
    run.stop().await.expect("clean stop");
}

// `Event` has a private field, so no struct literal outside `dab-api`.
#[allow(clippy::field_reassign_with_default)]
fn proto_event(host: &str, offset: u64) -> Event {
    let mut e = Event::default();
    e.timestamp = 1_732_320_000_000_000_000;
    e.host = Text::from(host);
    e.ty = Text::from("P");
    e.offset = offset;
    e.pid = 3;
    e.message = Bytes::from(format!("payload {offset}"));
    e
}

fn delimited(events: impl IntoIterator<Item = Event>) -> BytesMut {
    let mut out = BytesMut::new();
    let mut msg = BytesMut::new();
    for e in events {
        msg.clear();
        codec::proto::encode(&e, &mut msg);
        write_delimited(&msg, &mut out);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_source_reads_length_delimited_protobuf() {
    const N: u64 = 1_000;
    let settings = SocketSettings {
        framing: Framing::Protobuf,
        max_frame_bytes: 4096,
        ..SocketSettings::default()
    };
    let (mut run, addr) = start_tcp(settings, 16).await;
    let mut expected = BTreeSet::new();
    let mut clients = Vec::new();
    for c in 0..3u64 {
        let host = format!("pb-{c}");
        let events: Vec<Event> = (c..N).step_by(3).map(|o| proto_event(&host, o)).collect();
        expected.extend(events.iter().map(|e| (host.clone(), e.offset)));
        let data = delimited(events);
        clients.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            write_chunked(&mut s, &data, 100 + c).await;
        }));
    }
    // The first batch fails: its events count as failed, the rest as delivered.
    let first = timeout(WAIT, run.rx.recv())
        .await
        .expect("first batch")
        .expect("open");
    let failed = first.len() as u64;
    let mut events = first.events.clone();
    first.ack.fail();
    events.extend(run.take((N - failed) as usize).await);
    for c in clients {
        c.await.expect("client");
    }
    assert_eq!(uids(&events), expected);
    assert!(events.iter().all(|e| e.ty.as_str() == "P"
        && e.pid == 3
        && e.message[..] == *format!("payload {}", e.offset).as_bytes()));
    assert_eq!(run.stats.decode_errors.load(Ordering::SeqCst), 0);
    assert_eq!(run.acks.failed(), failed);
    assert_eq!(run.acks.delivered(), N - failed);
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_source_skips_bad_lines_and_keeps_serving() {
    let (mut run, addr) = start_tcp(ndjson(1024), 16).await;

    let mut bad = TcpStream::connect(addr).await.expect("connect");
    let mut good = TcpStream::connect(addr).await.expect("connect");
    let mut data: Vec<u8> = Vec::new();
    data.extend_from_slice(b"{\"type\":\"A\"}\n");
    data.extend_from_slice(b"not json\n");
    data.extend_from_slice(b"{\"type\":\n");
    data.extend_from_slice(b"{\"type\":\"\xff\xfe\",\"host\":\"x\"}\n");
    data.extend_from_slice(line("big", 1, &"x".repeat(5000)).as_bytes());
    data.extend_from_slice(line("a", 7, "after").as_bytes());
    let good_data: Vec<u8> = (0..500)
        .flat_map(|o| line("b", o, "fine").into_bytes())
        .collect();
    tokio::join!(
        write_chunked(&mut bad, &data, 1),
        write_chunked(&mut good, &good_data, 2)
    );

    let events = run.take(502).await;
    let mut want: BTreeSet<(String, u64)> = (0..500).map(|o| ("b".to_owned(), o)).collect();
    want.insert(("a".to_owned(), 7));
    let filled: Vec<&Event> = events.iter().filter(|e| e.ty.as_str() == "A").collect();
    assert_eq!(filled.len(), 1);
    // A missing host is the binding's name; the missing offset comes from the
    // source's own sequence.
    assert_eq!(filled[0].host.as_str(), "TcpIn");
    want.insert(("TcpIn".to_owned(), filled[0].offset));
    assert_eq!(uids(&events), want);
    assert_eq!(run.stats.decode_errors.load(Ordering::SeqCst), 4);

    // The connection that sent garbage is still served.
    bad.write_all(line("a", 8, "still here").as_bytes())
        .await
        .expect("write");
    let more = run.take(1).await;
    assert_eq!(uids(&more), BTreeSet::from([("a".to_owned(), 8)]));

    // A line cut short by EOF is one more decode error; a new connection
    // is served as before.
    bad.write_all(b"{\"type\":\"C\"").await.expect("write");
    drop(bad);
    let mut late = TcpStream::connect(addr).await.expect("connect");
    late.write_all(line("late", 1, "ok").as_bytes())
        .await
        .expect("write");
    let late_events = run.take(1).await;
    assert_eq!(uids(&late_events), BTreeSet::from([("late".to_owned(), 1)]));
    let deadline = tokio::time::Instant::now() + WAIT;
    while run.stats.decode_errors.load(Ordering::SeqCst) < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "truncated line not counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    run.assert_quiet().await;
    assert_eq!(run.stats.decode_errors.load(Ordering::SeqCst), 5);
    assert_eq!(run.stats.events.load(Ordering::SeqCst), 504);
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_source_closes_only_a_poisoned_protobuf_stream() {
    let settings = SocketSettings {
        framing: Framing::Protobuf,
        max_frame_bytes: 4096,
        ..SocketSettings::default()
    };
    let (mut run, addr) = start_tcp(settings, 16).await;
    let mut poisoned = TcpStream::connect(addr).await.expect("connect");
    let mut healthy = TcpStream::connect(addr).await.expect("connect");

    let mut data = delimited([proto_event("p", 1)]);
    // Eleven continuation bytes: no valid varint length can follow.
    data.extend_from_slice(&[0xff; 11]);
    data.extend_from_slice(&delimited([proto_event("p", 2)]));
    poisoned.write_all(&data).await.expect("write");
    let events = run.take(1).await;
    assert_eq!(uids(&events), BTreeSet::from([("p".to_owned(), 1)]));

    // The source hangs up on the poisoned stream...
    let mut buf = [0u8; 16];
    let n = timeout(WAIT, poisoned.read(&mut buf))
        .await
        .expect("server did not close the poisoned connection");
    assert!(matches!(n, Ok(0) | Err(_)), "expected EOF, got {n:?}");
    assert_eq!(run.stats.decode_errors.load(Ordering::SeqCst), 1);

    // ...and keeps serving the other one.
    healthy
        .write_all(&delimited((0..10).map(|o| proto_event("h", o))))
        .await
        .expect("write");
    let events = run.take(10).await;
    assert_eq!(
        uids(&events),
        (0..10).map(|o| ("h".to_owned(), o)).collect()
    );
    run.assert_quiet().await;
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_source_back_pressure_stops_reading_the_socket() {
    const TOTAL: usize = 50 * 1024 * 1024;
    let (mut run, addr) = start_tcp(SocketSettings::default(), 1).await;
    let message = "m".repeat(1000);
    let mut data = Vec::with_capacity(TOTAL + 2048);
    let mut n_events = 0u64;
    while data.len() < TOTAL {
        data.extend_from_slice(line("bp", n_events, &message).as_bytes());
        n_events += 1;
    }
    let written = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&written);
    let client = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        for chunk in data.chunks(64 * 1024) {
            s.write_all(chunk).await.expect("write");
            counter.fetch_add(chunk.len() as u64, Ordering::SeqCst);
        }
        s.shutdown().await.expect("shutdown");
    });

    // Nobody receives: once the channel and the socket buffers are full the
    // writer stops.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = written.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = written.load(Ordering::SeqCst);
    assert!(
        after - before < 1024 * 1024,
        "writer kept going: {before} -> {after} bytes in 1 s"
    );
    assert!(
        after < 16 * 1024 * 1024,
        "{after} bytes accepted with nobody reading"
    );
    assert!(!client.is_finished());

    // Draining lets everything through.
    let events = timeout(Duration::from_secs(120), run.take(n_events as usize))
        .await
        .expect("drain");
    assert_eq!(
        uids(&events),
        (0..n_events).map(|o| ("bp".to_owned(), o)).collect()
    );
    timeout(WAIT, client)
        .await
        .expect("writer finished")
        .expect("client");
    assert_eq!(run.acks.delivered(), n_events);
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_source_pauses_reads_while_admission_refuses() {
    let (mut run, addr) = start_tcp(SocketSettings::default(), 16).await;
    run.gate.0.store(false, Ordering::SeqCst);
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let data: Vec<u8> = (0..100)
        .flat_map(|o| line("adm", o, "x").into_bytes())
        .collect();
    s.write_all(&data).await.expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(run.rx.try_recv().is_err(), "read while refused");
    assert_eq!(run.stats.bytes.load(Ordering::SeqCst), 0);
    // One refusal episode, however many times it re-checked.
    assert_eq!(run.stats.refused.load(Ordering::SeqCst), 1);

    run.gate.0.store(true, Ordering::SeqCst);
    let events = run.take(100).await;
    assert_eq!(
        uids(&events),
        (0..100).map(|o| ("adm".to_owned(), o)).collect()
    );
    assert_eq!(run.stats.refused.load(Ordering::SeqCst), 1);
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_source_shutdown_returns_promptly_and_releases_the_port() {
    let (mut run, addr) = start_tcp(SocketSettings::default(), 16).await;
    // An idle connection and one mid-line must not hold shutdown up.
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    let mut partial = TcpStream::connect(addr).await.expect("connect");
    partial
        .write_all(line("s", 1, "whole").as_bytes())
        .await
        .expect("write");
    partial.write_all(b"{\"type\":").await.expect("write");
    assert_eq!(run.take(1).await.len(), 1);

    let rx_closed = {
        let shutdown = run.shutdown.clone();
        let task = run.task;
        shutdown.cancel();
        let result = timeout(Duration::from_secs(1), task)
            .await
            .expect("run() did not return within 1 s")
            .expect("panicked");
        assert!(result.is_ok(), "{result:?}");
        // Every sender is gone: downstream sees the end.
        timeout(Duration::from_secs(1), run.rx.recv())
            .await
            .expect("channel end")
            .is_none()
    };
    assert!(rx_closed);
    let mut buf = [0u8; 8];
    let n = timeout(Duration::from_secs(1), idle.read(&mut buf))
        .await
        .expect("connection closed");
    assert!(matches!(n, Ok(0) | Err(_)));
    let again = TcpListener::bind(addr).await;
    assert!(again.is_ok(), "port still held: {again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_source_bind_error_names_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let fields = BTreeMap::from([("listen".to_owned(), ConfigValue::Str(addr.clone()))]);
    let source = TcpSourceFactory.build("TcpIn", &fields).expect("build");
    let run = start("TcpIn", source, 4, Arc::default());
    let result = timeout(WAIT, run.task)
        .await
        .expect("returns")
        .expect("task");
    let message = result.expect_err("address in use").to_string();
    assert!(message.contains(&addr), "{message}");
    assert!(message.contains("cannot listen"), "{message}");
}

#[test]
fn factories_check_their_fields() {
    let f = |pairs: &[(&str, ConfigValue)]| -> BTreeMap<String, ConfigValue> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    };
    let s = |v: &str| ConfigValue::Str(v.to_owned());
    assert_eq!(TcpSourceFactory.kind(), "tcp");
    assert_eq!(UnixSourceFactory.kind(), "unix");
    assert_eq!(TcpSinkFactory.kind(), "tcp");

    let ok = f(&[
        ("listen", s("127.0.0.1:9000")),
        ("framing", s("protobuf")),
        ("max_frame_bytes", ConfigValue::Int(4096)),
    ]);
    assert!(TcpSourceFactory.build("In", &ok).is_ok());
    let reason = |r: Result<Box<dyn Source>, dab_api::BuildError>| match r {
        Ok(_) => panic!("built"),
        Err(e) => {
            assert_eq!(e.name, "In");
            e.reason
        }
    };
    assert_eq!(
        reason(TcpSourceFactory.build("In", &f(&[]))),
        "missing field `listen`"
    );
    assert!(
        reason(TcpSourceFactory.build("In", &f(&[("listen", s("nope"))]))).contains("host:port")
    );
    assert!(reason(TcpSourceFactory.build(
        "In",
        &f(&[("listen", s("127.0.0.1:1")), ("framing", s("xml"))])
    ))
    .contains("unknown framing `xml`"));
    assert!(reason(TcpSourceFactory.build(
        "In",
        &f(&[
            ("listen", s("127.0.0.1:1")),
            ("max_frame_bytes", ConfigValue::Int(0))
        ])
    ))
    .contains("max_frame_bytes"));
    assert_eq!(
        reason(UnixSourceFactory.build("In", &f(&[]))),
        "missing field `path`"
    );
    assert!(UnixSourceFactory
        .build("In", &f(&[("path", s("/tmp/x.sock"))]))
        .is_ok());
    assert!(TcpSinkFactory
        .build("Out", &f(&[("connect", s("localhost:9001"))]))
        .is_ok());
    match TcpSinkFactory.build("Out", &f(&[])) {
        Ok(_) => panic!("built"),
        Err(e) => assert_eq!(e.to_string(), "Out: missing field `connect`"),
    }
}

fn start_unix(path: &Path) -> Running {
    let source = UnixSource::new(path, SocketSettings::default());
    let acks = source.acks();
    start("UnixIn", Box::new(source), 16, acks)
}

async fn connect_unix(path: &Path) -> UnixStream {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match UnixStream::connect(path).await {
            Ok(s) => return s,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "connect: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_source_replaces_a_stale_socket_and_removes_its_own() {
    const N: u64 = 1_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("in.sock");
    // A socket file left behind by a process that is gone.
    drop(std::os::unix::net::UnixListener::bind(&path).expect("stale"));
    assert!(path.exists());

    let mut run = start_unix(&path);
    let mut clients = Vec::new();
    for c in 0..2u64 {
        let data: Vec<u8> = (c..N)
            .step_by(2)
            .flat_map(|o| line("u", o, "via unix").into_bytes())
            .collect();
        let path = path.clone();
        clients.push(tokio::spawn(async move {
            let mut s = connect_unix(&path).await;
            write_chunked(&mut s, &data, 10 + c).await;
        }));
    }
    let events = run.take(N as usize).await;
    for c in clients {
        c.await.expect("client");
    }
    assert_eq!(uids(&events), (0..N).map(|o| ("u".to_owned(), o)).collect());
    assert_eq!(run.acks.delivered(), N);
    run.stop().await.expect("clean stop");
    assert!(!path.exists(), "socket file left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_source_leaves_a_regular_file_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("not-a-socket");
    std::fs::write(&path, b"precious").expect("write");
    let run = start_unix(&path);
    let result = timeout(WAIT, run.task)
        .await
        .expect("returns")
        .expect("task");
    let message = result.expect_err("not a socket").to_string();
    assert!(message.contains("not a socket"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert_eq!(std::fs::read(&path).expect("read"), b"precious");
}

/// Reads from `s` until `len` bytes arrived.
async fn read_exactly(s: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    timeout(WAIT, s.read_exact(&mut buf))
        .await
        .expect("bytes arrive")
        .expect("read");
    buf
}

fn json_events(lines: &[&str]) -> Vec<Event> {
    lines
        .iter()
        .map(|l| {
            codec::json::decode(Bytes::copy_from_slice(l.as_bytes()))
                .expect("valid line")
                .0
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_sink_writes_ndjson_and_reconnects() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut sink = TcpSink::new(addr.to_string(), Framing::Ndjson);

    let lines = [
        r#"{"timestamp":1,"host":"h","type":"A","offset":0,"pid":1,"message":"one"}"#,
        r#"{"timestamp":2,"host":"h","type":"B","offset":1,"pid":1,"message":"two"}"#,
    ];
    let expected = format!("{}\n{}\n", lines[0], lines[1]);
    sink.write(&json_events(&lines)).await.expect("write");
    sink.flush().await.expect("flush");
    let (mut peer, _) = timeout(WAIT, listener.accept())
        .await
        .expect("accept")
        .expect("accept");
    assert_eq!(
        read_exactly(&mut peer, expected.len()).await,
        expected.as_bytes()
    );

    // The peer goes away entirely: the next write fails.
    drop(peer);
    drop(listener);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = sink
        .write(&json_events(&lines[..1]))
        .await
        .expect_err("write with nobody listening");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");

    // It comes back: the sink connects again on the next write.
    let listener = TcpListener::bind(addr).await.expect("rebind");
    sink.write(&json_events(&lines[1..]))
        .await
        .expect("write again");
    let (mut peer, _) = timeout(WAIT, listener.accept())
        .await
        .expect("accept")
        .expect("accept");
    let again = format!("{}\n", lines[1]);
    assert_eq!(read_exactly(&mut peer, again.len()).await, again.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_sink_writes_length_delimited_protobuf() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut sink = TcpSink::new(addr.to_string(), Framing::Protobuf);
    let events: Vec<Event> = (0..50).map(|o| proto_event("out", o)).collect();
    sink.write(&events).await.expect("write");
    let expected = delimited(events.clone());
    let (mut peer, _) = timeout(WAIT, listener.accept())
        .await
        .expect("accept")
        .expect("accept");
    let got = read_exactly(&mut peer, expected.len()).await;
    assert_eq!(got, &expected[..]);

    let mut framer = DelimitedFramer::new(4096);
    let mut frames = Vec::new();
    framer.push(&got, &mut frames);
    let decoded: Vec<Event> = frames
        .into_iter()
        .map(|f| codec::proto::decode(f.expect("frame")).expect("event").0)
        .collect();
    assert_eq!(uids(&decoded), uids(&events));
    assert!(decoded
        .iter()
        .zip(&events)
        .all(|(a, b)| a.message == b.message));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_source_refuses_a_socket_in_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("busy.sock");
    let _owner = tokio::net::UnixListener::bind(&path).expect("bind");
    let run = start_unix(&path);
    let result = timeout(WAIT, run.task)
        .await
        .expect("returns")
        .expect("task");
    let message = result.expect_err("in use").to_string();
    assert!(
        message.contains("another process is listening"),
        "{message}"
    );
    assert!(path.exists(), "a live socket was removed");
}
