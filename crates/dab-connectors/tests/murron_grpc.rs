//! The `murron_grpc` source and sink over real gRPC on loopback. The tests
//! play the runtime: they run the source with a context they made, take its
//! batches and settle their acknowledgements, and check what tonic clients
//! (and, in `python_grpcio_client_interop`, Python's grpcio) see. The sink
//! is checked against a small `Murron` server of the test's own and
//! against the source. Every wait has a timeout; every loop is bounded.

#![allow(clippy::unwrap_used)]
// `Event` is built field by field, the way other crates must.
#![allow(clippy::field_reassign_with_default)]

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dab_api::connector::{Admission, SourceStats};
use dab_api::event::RawCodec;
use dab_api::{
    Batch, ConfigValue, ConnectorError, Event, Sink, SinkError, SinkFactory, Source, SourceContext,
    Text,
};
use dab_connectors::murron::rpc::murron_client::MurronClient;
use dab_connectors::murron::rpc::murron_server::{Murron, MurronServer};
use dab_connectors::murron::rpc::Ack;
use dab_connectors::murron::{
    wire, MurronSinkFactory, MurronSource, MurronSourceConfig, TlsFiles, STREAM_WINDOW,
};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Server};
use tonic::{Code, Request, Response, Status, Streaming};

const WAIT: Duration = Duration::from_secs(10);

/// Admission control the test can flip.
#[derive(Debug)]
struct Gate(AtomicBool);

impl Admission for Gate {
    fn admit(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A running source, with the runtime's end of it.
struct Harness {
    addr: SocketAddr,
    batches: mpsc::Receiver<Batch>,
    shutdown: CancellationToken,
    stats: Arc<SourceStats>,
    gate: Arc<Gate>,
    task: JoinHandle<Result<(), ConnectorError>>,
}

async fn start(tweak: impl FnOnce(&mut MurronSourceConfig)) -> Harness {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fields = BTreeMap::from([("listen".to_owned(), ConfigValue::Str(addr.to_string()))]);
    let mut config = MurronSourceConfig::from_fields("GrpcIn", &fields).unwrap();
    tweak(&mut config);
    let source = Box::new(MurronSource::with_listener("GrpcIn", config, listener));
    let (out, batches) = mpsc::channel(8);
    let shutdown = CancellationToken::new();
    let stats = Arc::new(SourceStats::default());
    let gate = Arc::new(Gate(AtomicBool::new(true)));
    let ctx = SourceContext {
        name: "GrpcIn".into(),
        out,
        shutdown: shutdown.clone(),
        stats: stats.clone(),
        admission: gate.clone(),
    };
    let task = tokio::spawn(source.run(ctx));
    Harness {
        addr,
        batches,
        shutdown,
        stats,
        gate,
        task,
    }
}

impl Harness {
    async fn next_batch(&mut self) -> Batch {
        timeout(WAIT, self.batches.recv())
            .await
            .expect("a batch in time")
            .expect("source still running")
    }

    /// Nothing more arrives within `d`.
    async fn quiet_for(&mut self, d: Duration) {
        if let Ok(b) = timeout(d, self.batches.recv()).await {
            panic!("unexpected batch: {:?}", b.map(|b| b.len()));
        }
    }

    fn count(&self, counter: fn(&SourceStats) -> &AtomicU64) -> u64 {
        counter(&self.stats).load(Ordering::Relaxed)
    }

    async fn stop(self) -> mpsc::Receiver<Batch> {
        self.shutdown.cancel();
        timeout(WAIT, self.task)
            .await
            .expect("source stops in time")
            .expect("source task")
            .expect("source ends Ok");
        self.batches
    }
}

async fn connect(addr: SocketAddr) -> MurronClient<Channel> {
    timeout(WAIT, MurronClient::connect(format!("http://{addr}")))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// A complete event of about 250 bytes on the wire.
fn ev(host: &str, offset: u64) -> Event {
    let mut e = Event::default();
    e.timestamp = 1_732_320_000_000_000_000 + offset as i64;
    e.host = Text::from(host);
    e.ty = Text::from("MyEvent");
    e.offset = offset;
    e.pid = 311;
    e.message = Bytes::from(format!("{offset:>8} {}", "x".repeat(190)));
    e.tags = vec![(Text::from("env"), Text::from("prod"))];
    e
}

fn events(host: &str, first: u64, n: u64) -> Vec<Event> {
    (first..first + n).map(|o| ev(host, o)).collect()
}

/// Forgets arrival bytes so events compare by their fields.
fn plain(mut events: Vec<Event>) -> Vec<Event> {
    for e in &mut events {
        e.touch();
    }
    events
}

async fn send(
    client: &mut MurronClient<Channel>,
    batch: wire::Batch,
) -> Result<Response<Ack>, Status> {
    timeout(WAIT, client.send(batch))
        .await
        .expect("an answer in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_batches_from_four_clients_are_acked_only_after_settlement() {
    let mut h = start(|_| {}).await;
    // (batch, what happened) in the order it happened.
    let log = Arc::new(Mutex::new(Vec::<(String, &'static str)>::new()));
    let mut clients = JoinSet::new();
    for c in 0..4 {
        let (log, addr) = (log.clone(), h.addr);
        clients.spawn(async move {
            let mut client = connect(addr).await;
            let host = format!("client-{c}");
            let mut slowest = Duration::ZERO;
            for b in 0..25u64 {
                let sent = Instant::now();
                let batch = wire::Batch::from_events(&events(&host, b * 100, 100));
                let ack = send(&mut client, batch).await.expect("acked");
                slowest = slowest.max(sent.elapsed());
                assert_eq!(ack.get_ref().accepted, 100);
                log.lock().unwrap().push((format!("{host}/{b}"), "acked"));
            }
            (host, slowest)
        });
    }

    let mut seen = HashSet::new();
    let mut held = None;
    for n in 0..100 {
        let batch = h.next_batch().await;
        assert_eq!(batch.len(), 100);
        for e in &batch.events {
            assert!(
                seen.insert((e.host.to_string(), e.offset)),
                "{}/{} twice",
                e.host,
                e.offset
            );
        }
        let id = format!("{}/{}", batch.events[0].host, batch.events[0].offset / 100);
        if n == 0 {
            // Hold the first batch for 200 ms; the others go on meanwhile.
            let log = log.clone();
            held = Some((
                id.clone(),
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    log.lock().unwrap().push((id, "settled"));
                    batch.ack.complete();
                }),
            ));
        } else {
            log.lock().unwrap().push((id, "settled"));
            batch.ack.complete();
        }
    }
    let (held_id, settle) = held.unwrap();
    timeout(WAIT, settle).await.unwrap().unwrap();
    let mut slowest = Vec::new();
    for _ in 0..4 {
        let joined = timeout(WAIT, clients.join_next()).await.unwrap();
        slowest.push(joined.unwrap().unwrap());
    }
    assert_eq!(seen.len(), 10_000);
    assert_eq!(h.count(|s| &s.events), 10_000);

    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 200);
    let at = |id: &str, what: &str| {
        log.iter()
            .position(|(i, w)| i == id && *w == what)
            .unwrap_or_else(|| panic!("no {what} for {id}"))
    };
    for (id, what) in &log {
        if *what == "acked" {
            assert!(
                at(id, "settled") < at(id, "acked"),
                "{id} acked before settled"
            );
        }
    }
    // While the first batch was held, other clients were answered.
    let held_settled = at(&held_id, "settled");
    let others_acked = log[..held_settled]
        .iter()
        .filter(|(id, w)| *w == "acked" && id.split('/').next() != held_id.split('/').next())
        .count();
    assert!(
        others_acked >= 3,
        "only {others_acked} acks during the hold"
    );
    let held_host = held_id.split('/').next().unwrap();
    let (_, held_slowest) = slowest.iter().find(|(h, _)| h == held_host).unwrap();
    assert!(
        *held_slowest >= Duration::from_millis(200),
        "{held_slowest:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn failed_or_abandoned_batches_answer_unavailable() {
    let mut h = start(|_| {}).await;
    for abandon in [false, true] {
        let mut client = connect(h.addr).await;
        let call = tokio::spawn(async move {
            send(&mut client, wire::Batch::from_events(&events("h", 0, 3))).await
        });
        let batch = h.next_batch().await;
        if abandon {
            drop(batch);
        } else {
            batch.ack.fail();
        }
        let status = call.await.unwrap().expect_err("not acked");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("send them again"), "{status:?}");
    }
    h.stop().await;
}

#[tokio::test]
async fn admission_refusal_answers_resource_exhausted_and_is_counted() {
    let mut h = start(|_| {}).await;
    let mut client = connect(h.addr).await;
    h.gate.0.store(false, Ordering::SeqCst);
    for _ in 0..3 {
        let status = send(&mut client, wire::Batch::from_events(&events("h", 0, 5)))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    }
    assert_eq!(h.count(|s| &s.refused), 3);
    // A stream is refused batch-wise too, and ends.
    let (tx, rx) = mpsc::channel(1);
    tx.send(wire::Batch::from_events(&events("h", 0, 5)))
        .await
        .unwrap();
    let mut acks = timeout(WAIT, client.stream(ReceiverStream::new(rx)))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    let status = timeout(WAIT, acks.message())
        .await
        .unwrap()
        .expect_err("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    drop(tx);
    assert_eq!(h.count(|s| &s.refused), 4);
    h.quiet_for(Duration::from_millis(50)).await;

    h.gate.0.store(true, Ordering::SeqCst);
    let call = tokio::spawn(async move {
        send(&mut client, wire::Batch::from_events(&events("h", 0, 5))).await
    });
    h.next_batch().await.ack.complete();
    assert_eq!(call.await.unwrap().unwrap().get_ref().accepted, 5);
    h.stop().await;
}

#[tokio::test]
async fn calls_beyond_max_concurrent_streams_wait_their_turn() {
    let mut h = start(|c| c.max_concurrent_streams = 1).await;
    let client = connect(h.addr).await;
    // Until the client has the server's SETTINGS, it may open more streams
    // than allowed, and the extra ones are refused (REFUSED_STREAM, which
    // gRPC clients see as UNAVAILABLE and retry). One call first makes sure
    // it has them.
    let mut warm = client.clone();
    let warm_up =
        tokio::spawn(
            async move { send(&mut warm, wire::Batch::from_events(&events("w", 0, 1))).await },
        );
    h.next_batch().await.ack.complete();
    timeout(WAIT, warm_up).await.unwrap().unwrap().unwrap();

    let mut calls = JoinSet::new();
    for first in [0, 10] {
        let mut client = client.clone();
        calls.spawn(async move {
            send(
                &mut client,
                wire::Batch::from_events(&events("h", first, 2)),
            )
            .await
        });
    }
    let a = h.next_batch().await;
    // One connection, one stream at a time: the other call waits.
    h.quiet_for(Duration::from_millis(200)).await;
    let first_offset = a.events[0].offset;
    a.ack.complete();
    let b = h.next_batch().await;
    assert_eq!(b.events[0].offset + first_offset, 10);
    b.ack.complete();
    for _ in 0..2 {
        let answer = timeout(WAIT, calls.join_next()).await.unwrap().unwrap();
        assert_eq!(answer.unwrap().unwrap().get_ref().accepted, 2);
    }
    h.stop().await;
}

#[tokio::test]
async fn oversized_messages_are_refused_counted_and_the_server_keeps_serving() {
    let mut h = start(|c| c.max_message_bytes = 64 * 1024).await;
    let mut client = connect(h.addr).await;
    // About 300 events of 250 bytes: 75 KB.
    let big = wire::Batch::from_events(&events("h", 0, 300));
    assert!(big.len() > 64 * 1024);
    let status = send(&mut client, big.clone()).await.expect_err("too big");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(h.count(|s| &s.decode_errors), 1);

    // The same stream-wise: the stream ends with the same code.
    let (tx, rx) = mpsc::channel(1);
    tx.send(big).await.unwrap();
    let mut acks = timeout(WAIT, client.stream(ReceiverStream::new(rx)))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    let status = timeout(WAIT, acks.message())
        .await
        .unwrap()
        .expect_err("too big");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    drop(tx);
    assert_eq!(h.count(|s| &s.decode_errors), 2);

    // The same connection still serves.
    let call = tokio::spawn(async move {
        send(&mut client, wire::Batch::from_events(&events("h", 0, 10))).await
    });
    h.next_batch().await.ack.complete();
    assert_eq!(call.await.unwrap().unwrap().get_ref().accepted, 10);
    h.quiet_for(Duration::from_millis(50)).await;
    h.stop().await;
}

#[tokio::test]
async fn corrupt_protobuf_is_refused_counted_and_the_server_keeps_serving() {
    let mut h = start(|_| {}).await;
    let mut client = connect(h.addr).await;
    let good = wire::Batch::from_events(&events("h", 0, 2));
    let mut cut = good.as_bytes().to_vec();
    cut.truncate(cut.len() - 3);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"\x0a\x05\xff\xff\xff\xff\xff".to_vec(), "event 0"),
        (cut, "runs past the end"),
        // An event whose host is not UTF-8.
        (b"\x0a\x03\x12\x01\xff".to_vec(), "not valid UTF-8"),
        (b"\x08\x01".to_vec(), "wire type 0"),
    ];
    for (i, (bytes, want)) in cases.iter().enumerate() {
        let status = send(
            &mut client,
            wire::Batch::from_bytes(Bytes::from(bytes.clone())),
        )
        .await
        .expect_err("corrupt");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(want), "{i}: {status:?}");
    }
    assert_eq!(h.count(|s| &s.decode_errors), cases.len() as u64);
    h.quiet_for(Duration::from_millis(50)).await;

    let call = tokio::spawn(async move { send(&mut client, good).await });
    let batch = h.next_batch().await;
    assert_eq!(plain(batch.events.clone()), events("h", 0, 2));
    batch.ack.complete();
    assert_eq!(call.await.unwrap().unwrap().get_ref().accepted, 2);
    h.stop().await;
}

#[tokio::test]
async fn missing_fields_are_filled_and_empty_batches_acked_at_once() {
    let mut h = start(|_| {}).await;
    let mut client = connect(h.addr).await;
    let status = send(&mut client, wire::Batch::default()).await.unwrap();
    assert_eq!(status.get_ref().accepted, 0);
    h.quiet_for(Duration::from_millis(50)).await;

    let bare: Vec<Event> = (0..3)
        .map(|_| {
            let mut e = Event::default();
            e.ty = Text::from("T");
            e.message = Bytes::from_static(b"m");
            e
        })
        .collect();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let call =
        tokio::spawn(async move { send(&mut client, wire::Batch::from_events(&bare)).await });
    let batch = h.next_batch().await;
    let got: Vec<(&str, u64, bool)> = batch
        .events
        .iter()
        .map(|e| (e.host.as_str(), e.offset, e.timestamp >= before))
        .collect();
    // proto3 has no presence for `offset`: 0 is a real offset, kept.
    assert_eq!(
        got,
        vec![
            ("GrpcIn", 0, true),
            ("GrpcIn", 0, true),
            ("GrpcIn", 0, true)
        ]
    );
    assert!(batch.events[0].raw(RawCodec::Protobuf).is_none());
    batch.ack.complete();
    assert_eq!(call.await.unwrap().unwrap().get_ref().accepted, 3);
    h.stop().await;
}

/// Batch `i` of a stream holds `i % 7 + 1` events, so an ack out of order
/// shows a wrong count.
fn stream_batch(i: u64) -> Vec<Event> {
    events("streamer", i * 10, i % 7 + 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_1000_batches_is_acked_in_order_within_its_window() {
    let mut h = start(|_| {}).await;
    let mut client = connect(h.addr).await;
    let (tx, rx) = mpsc::channel(16);
    let feeder = tokio::spawn(async move {
        for i in 0..1000 {
            if tx
                .send(wire::Batch::from_events(&stream_batch(i)))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let mut acks = timeout(WAIT, client.stream(ReceiverStream::new(rx)))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        for _ in 0..=1000 {
            match timeout(WAIT, acks.message()).await.expect("an ack in time") {
                Ok(Some(ack)) => got.push(ack.accepted),
                Ok(None) => return got,
                Err(status) => panic!("stream failed after {} acks: {status:?}", got.len()),
            }
        }
        panic!("more acks than batches");
    });

    // The window: four batches are read ahead of their acks, no more.
    let mut first = Vec::new();
    for _ in 0..STREAM_WINDOW {
        first.push(h.next_batch().await);
    }
    h.quiet_for(Duration::from_millis(300)).await;
    let mut next = 0u64;
    let mut check = |b: &Batch| {
        assert_eq!(plain(b.events.clone()), stream_batch(next), "batch {next}");
        next += 1;
    };
    for b in &first {
        check(b);
    }
    // Settled last to first: the acks still come in order.
    for b in first.into_iter().rev() {
        b.ack.complete();
    }
    // Then in pairs, the second before the first.
    for _ in 0..(1000 - STREAM_WINDOW) / 2 {
        let a = h.next_batch().await;
        let b = h.next_batch().await;
        check(&a);
        check(&b);
        b.ack.complete();
        a.ack.complete();
    }
    timeout(WAIT, feeder).await.unwrap().unwrap();
    let got = timeout(WAIT, reader).await.unwrap().unwrap();
    let want: Vec<u64> = (0..1000).map(|i| i % 7 + 1).collect();
    assert_eq!(got, want);
    assert_eq!(h.count(|s| &s.events), want.iter().sum::<u64>());
    h.stop().await;
}

#[tokio::test]
async fn a_failed_batch_ends_its_stream_after_the_acks_before_it() {
    let mut h = start(|_| {}).await;
    let mut client = connect(h.addr).await;
    let (tx, rx) = mpsc::channel(4);
    for i in 0..3 {
        tx.send(wire::Batch::from_events(&stream_batch(i)))
            .await
            .unwrap();
    }
    let mut acks = timeout(WAIT, client.stream(ReceiverStream::new(rx)))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    let (a, b, c) = (
        h.next_batch().await,
        h.next_batch().await,
        h.next_batch().await,
    );
    c.ack.complete();
    b.ack.fail();
    a.ack.complete();
    let first = timeout(WAIT, acks.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.accepted, 1);
    let status = timeout(WAIT, acks.message())
        .await
        .unwrap()
        .expect_err("failed");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    drop(tx);
    h.stop().await;
}

#[tokio::test]
async fn shutdown_answers_calls_in_flight_then_ends_streams_and_stops() {
    let mut h = start(|_| {}).await;
    let mut client = connect(h.addr).await;
    let mut streamer = client.clone();
    let call = tokio::spawn(async move {
        send(&mut client, wire::Batch::from_events(&events("h", 0, 4))).await
    });
    let unary = h.next_batch().await;

    let (tx, rx) = mpsc::channel(4);
    tx.send(wire::Batch::from_events(&stream_batch(0)))
        .await
        .unwrap();
    let mut acks = timeout(WAIT, streamer.stream(ReceiverStream::new(rx)))
        .await
        .unwrap()
        .unwrap()
        .into_inner();
    let streamed = h.next_batch().await;

    h.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!h.task.is_finished(), "waits for the batches in flight");
    unary.ack.complete();
    streamed.ack.complete();
    assert_eq!(call.await.unwrap().unwrap().get_ref().accepted, 4);
    let ack = timeout(WAIT, acks.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ack.accepted, 1);
    let status = timeout(WAIT, acks.message())
        .await
        .unwrap()
        .expect_err("ended");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    drop(tx);

    let mut rest = h.stop().await;
    // Every sender is gone: the pipeline downstream can drain.
    assert!(timeout(WAIT, rest.recv()).await.unwrap().is_none());
}

#[tokio::test]
async fn tls_source_serves_clients_that_trust_its_certificate() {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, key.cert.pem()).unwrap();
    std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();
    let tls = TlsFiles {
        cert: cert_path.clone(),
        key: key_path,
    };
    let mut h = start(|c| c.tls = Some(tls)).await;

    let channel = Endpoint::from_shared(format!("https://{}", h.addr))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(key.cert.pem()))
                .domain_name("localhost"),
        )
        .unwrap();
    let channel = timeout(WAIT, channel.connect()).await.unwrap().unwrap();
    let mut client = MurronClient::new(channel);
    let call = tokio::spawn(async move {
        send(&mut client, wire::Batch::from_events(&events("tls", 0, 3))).await
    });
    let batch = h.next_batch().await;
    assert_eq!(plain(batch.events.clone()), events("tls", 0, 3));
    batch.ack.complete();
    assert_eq!(call.await.unwrap().unwrap().get_ref().accepted, 3);

    // Plain text to the TLS port gets nowhere.
    let plain_text = async {
        let mut c = MurronClient::connect(format!("http://{}", h.addr)).await?;
        c.send(wire::Batch::from_events(&events("p", 0, 1)))
            .await
            .map_err(Into::into)
    };
    let r: Result<_, Box<dyn std::error::Error>> = timeout(WAIT, plain_text).await.unwrap();
    assert!(r.is_err());
    h.quiet_for(Duration::from_millis(50)).await;
    h.stop().await;

    // A missing key file fails the source at start, naming the file.
    let mut h = start(|c| {
        c.tls = Some(TlsFiles {
            cert: cert_path,
            key: dir.path().join("missing.pem"),
        })
    })
    .await;
    let err = timeout(WAIT, &mut h.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
}

// ---- The sink ----

/// A `Murron` server that records each call's events, or refuses with the
/// code it is told.
#[derive(Debug, Default, Clone)]
struct Recorder {
    calls: Arc<Mutex<Vec<Vec<Event>>>>,
    refuse: Arc<Mutex<Option<Code>>>,
}

#[tonic::async_trait]
impl Murron for Recorder {
    async fn send(&self, request: Request<wire::Batch>) -> Result<Response<Ack>, Status> {
        if let Some(code) = *self.refuse.lock().unwrap() {
            return Err(Status::new(code, "refused by the test"));
        }
        let events: Vec<Event> = request
            .into_inner()
            .decode()
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        let accepted = events.len() as u64;
        self.calls.lock().unwrap().push(plain(events));
        Ok(Response::new(Ack { accepted }))
    }

    type StreamStream = ReceiverStream<Result<Ack, Status>>;

    async fn stream(
        &self,
        _: Request<Streaming<wire::Batch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// Serves `recorder` on `addr` until the token is cancelled.
async fn serve(recorder: Recorder, addr: SocketAddr) -> (CancellationToken, JoinHandle<()>) {
    let mut listener = None;
    for _ in 0..100 {
        match TcpListener::bind(addr).await {
            Ok(l) => {
                listener = Some(l);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let listener = listener.expect("port free again");
    let stop = CancellationToken::new();
    let signal = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move {
        Server::builder()
            .add_service(MurronServer::new(recorder))
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), signal)
            .await
            .unwrap();
    });
    (stop, task)
}

async fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

fn sink(addr: SocketAddr, batch_size: i64) -> Box<dyn Sink> {
    let fields = BTreeMap::from([
        (
            "endpoint".to_owned(),
            ConfigValue::Str(format!("http://{addr}")),
        ),
        ("batch_size".to_owned(), ConfigValue::Int(batch_size)),
    ]);
    MurronSinkFactory.build("GrpcOut", &fields).unwrap()
}

async fn write(sink: &mut Box<dyn Sink>, events: &[Event]) -> Result<(), SinkError> {
    timeout(WAIT, sink.write(events))
        .await
        .expect("write ends in time")
        .map(|w| assert!(w.rejected.is_empty(), "{:?}", w.rejected))
}

#[tokio::test]
async fn sink_sends_exactly_the_events_in_calls_of_batch_size() {
    let addr = free_addr().await;
    let recorder = Recorder::default();
    let (stop, task) = serve(recorder.clone(), addr).await;
    let mut sink = sink(addr, 500);

    // Half the events arrived as protobuf (written back as they came).
    let mut input = events("relay", 0, 1234);
    let raw: Vec<Event> = wire::Batch::from_events(&input[..600])
        .decode()
        .unwrap()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert!(raw[0].raw(RawCodec::Protobuf).is_some());
    input.splice(..600, raw);
    write(&mut sink, &input).await.unwrap();
    write(&mut sink, &[]).await.unwrap();

    let calls = recorder.calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![500, 500, 234]
    );
    assert_eq!(calls.concat(), plain(input));
    stop.cancel();
    timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test]
async fn sink_fails_while_the_server_is_down_or_refusing_and_recovers() {
    let addr = free_addr().await;
    let mut sink = sink(addr, 100);
    let batch = events("r", 0, 150);

    let err = write(&mut sink, &batch).await.unwrap_err().to_string();
    assert!(
        err.contains("GrpcOut") && err.contains("cannot connect"),
        "{err}"
    );

    let recorder = Recorder::default();
    let (stop, task) = serve(recorder.clone(), addr).await;
    write(&mut sink, &batch).await.unwrap();
    assert_eq!(recorder.calls.lock().unwrap().len(), 2);

    *recorder.refuse.lock().unwrap() = Some(Code::ResourceExhausted);
    let err = write(&mut sink, &batch).await.unwrap_err().to_string();
    assert!(err.contains("ResourceExhausted"), "{err}");
    *recorder.refuse.lock().unwrap() = None;
    write(&mut sink, &batch).await.unwrap();

    // Down again, then back on the same port.
    stop.cancel();
    timeout(WAIT, task).await.unwrap().unwrap();
    assert!(write(&mut sink, &batch).await.is_err());
    let (stop, task) = serve(recorder.clone(), addr).await;
    let mut ok = false;
    // The first write after the restart may still meet the old connection.
    for _ in 0..3 {
        if write(&mut sink, &batch).await.is_ok() {
            ok = true;
            break;
        }
    }
    assert!(ok, "the sink never recovered");
    let calls = recorder.calls.lock().unwrap().concat();
    assert_eq!(calls.len(), 450);
    assert_eq!(&calls[300..], &plain(batch)[..]);
    stop.cancel();
    timeout(WAIT, task).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_to_source_relay_is_acked_end_to_end() {
    let mut h = start(|_| {}).await;
    let mut sink = sink(h.addr, 100);
    let input = events("relay", 0, 250);
    let writer = {
        let input = input.clone();
        tokio::spawn(async move {
            let r = write(&mut sink, &input).await;
            (sink, r)
        })
    };
    let mut got = Vec::new();
    for _ in 0..3 {
        let b = h.next_batch().await;
        got.extend(b.events.clone());
        b.ack.complete();
    }
    let (mut sink, r) = timeout(WAIT, writer).await.unwrap().unwrap();
    r.unwrap();
    assert_eq!(plain(got), input);

    // The source's "not delivered" is the sink's error.
    let writer = tokio::spawn(async move { write(&mut sink, &events("relay", 250, 10)).await });
    h.next_batch().await.ack.fail();
    let err = timeout(WAIT, writer).await.unwrap().unwrap().unwrap_err();
    assert!(err.to_string().contains("Unavailable"), "{err}");
    h.stop().await;
}

// ---- Interop with Python's grpcio ----

/// The venv `scripts/setup-python.sh` makes, or `DAB_PYTHON`.
fn python_with_grpc() -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = match std::env::var_os("DAB_PYTHON") {
        Some(p) => vec![p.into()],
        None => {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            vec![home.join(".cache/dab/venv/bin/python")]
        }
    };
    for python in &candidates {
        let ok = std::process::Command::new(python)
            .args(["-c", "import grpc, grpc_tools"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(python.clone());
        }
    }
    Err(format!(
        "Python grpcio is not installed (looked for {}).\n\
         Install it with: scripts/setup-python.sh   (a venv under ~/.cache/dab/venv \
         with tests/interop/requirements.txt), or point DAB_PYTHON at a python \
         that imports grpc and grpc_tools.",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_interop() {
    // A missing dependency is a failure, never a pass.
    let python = python_with_grpc().unwrap_or_else(|how| panic!("{how}"));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut h = start(|_| {}).await;
    let (unary, streamed, per) = (20u64, 20u64, 50u64);
    let child = tokio::process::Command::new(&python)
        .arg(root.join("tests/interop/murron_client.py"))
        .arg("--target")
        .arg(h.addr.to_string())
        .arg("--proto-dir")
        .arg(root.join("proto"))
        .args(["--unary-batches", &unary.to_string()])
        .args(["--stream-batches", &streamed.to_string()])
        .args(["--events", &per.to_string(), "--host", "py-1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python starts");
    let total = unary * per + (0..streamed).map(|i| per - i % 3).sum::<u64>();

    let mut got = Vec::new();
    for _ in 0..unary + streamed {
        let b = timeout(Duration::from_secs(60), h.batches.recv())
            .await
            .expect("a batch from the python client in time")
            .expect("source running");
        got.extend(b.events.clone());
        b.ack.complete();
    }
    let out = timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("python client ends in time")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python client failed: {stderr}");
    let summary: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(summary["sent_events"], total);
    assert_eq!(summary["acked_events"], total);
    assert_eq!(summary["unary_acks"], unary);
    assert_eq!(summary["stream_acks"], streamed);

    // Every event arrived once, in order, with every field.
    assert_eq!(got.len() as u64, total);
    for (i, e) in got.iter().enumerate() {
        let o = i as u64;
        assert_eq!(
            (e.host.as_str(), e.ty.as_str(), e.pid, e.offset),
            ("py-1", "PyEvent", 4242, o)
        );
        assert_eq!(e.timestamp, 1_700_000_000_000_000_000 + o as i64);
        let mut message = b"\x00\xffpython ".to_vec();
        message.extend_from_slice(o.to_string().as_bytes());
        assert_eq!(&e.message[..], &message[..]);
        let mut tags: Vec<(&str, &str)> = e
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        tags.sort();
        assert_eq!(
            tags,
            vec![("client", "grpcio"), ("seq", o.to_string().as_str())]
        );
    }
    h.stop().await;
}
