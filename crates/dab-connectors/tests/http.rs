//! The `http` source and sink over real loopback sockets. The tests play the
//! runtime: they run the source with a context they made, take its batches
//! and settle their acknowledgements, and check what the HTTP clients see.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dab_api::connector::{Admission, SourceStats};
use dab_api::{
    Batch, ConfigValue, ConnectorError, ErrorClass, Event, Sink, SinkError, SinkFactory,
    SourceContext, SourceFactory, Text,
};
use dab_connectors::http::{HttpSinkFactory, HttpSourceFactory};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Always(bool);

impl Admission for Always {
    fn admit(&self) -> bool {
        self.0
    }
}

/// A running source, with the runtime's end of it.
struct Harness {
    addr: String,
    batches: mpsc::Receiver<Batch>,
    shutdown: CancellationToken,
    stats: Arc<SourceStats>,
    task: JoinHandle<Result<(), ConnectorError>>,
}

fn str_fields(pairs: &[(&str, &str)]) -> BTreeMap<String, ConfigValue> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), ConfigValue::Str((*v).to_owned())))
        .collect()
}

/// A port nobody listens on right now.
async fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind :0");
    let addr = l.local_addr().expect("local addr").to_string();
    drop(l);
    addr
}

async fn start_source(admit: bool, max_body_bytes: Option<i64>) -> Harness {
    let addr = free_addr().await;
    let mut fields = str_fields(&[("listen", &addr)]);
    if let Some(max) = max_body_bytes {
        fields.insert("max_body_bytes".into(), ConfigValue::Int(max));
    }
    let source = HttpSourceFactory
        .build("HttpIn", &fields)
        .expect("source builds");
    let (out, batches) = mpsc::channel(2);
    let shutdown = CancellationToken::new();
    let stats = Arc::new(SourceStats::default());
    let ctx = SourceContext {
        name: "HttpIn".into(),
        out,
        shutdown: shutdown.clone(),
        stats: stats.clone(),
        admission: Arc::new(Always(admit)),
    };
    let task = tokio::spawn(source.run(ctx));
    let h = Harness {
        addr,
        batches,
        shutdown,
        stats,
        task,
    };
    // Up once /healthz answers.
    let client = client();
    for _ in 0..200 {
        let url = format!("http://{}/healthz", h.addr);
        if let Ok(Ok((status, _, body))) =
            timeout(WAIT, request(&client, Method::GET, &url, Bytes::new())).await
        {
            assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
            return h;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("http source on {} never came up", h.addr);
}

impl Harness {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn next_batch(&mut self) -> Batch {
        timeout(WAIT, self.batches.recv())
            .await
            .expect("a batch in time")
            .expect("source still running")
    }

    fn count(&self, counter: fn(&SourceStats) -> &std::sync::atomic::AtomicU64) -> u64 {
        counter(&self.stats).load(Ordering::Relaxed)
    }
}

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn request(
    client: &TestClient,
    method: Method,
    url: &str,
    body: Bytes,
) -> Result<(StatusCode, HeaderMap, String), String> {
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = url.parse().map_err(|e| format!("{e}"))?;
    req.headers_mut()
        .insert(CONTENT_TYPE, "application/json".parse().map_err(|_| "ct")?);
    let answer = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = answer.status();
    let headers = answer.headers().clone();
    let body = answer
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

async fn post(
    client: &TestClient,
    url: &str,
    body: impl Into<Bytes>,
) -> (StatusCode, HeaderMap, String) {
    timeout(WAIT, request(client, Method::POST, url, body.into()))
        .await
        .expect("an answer in time")
        .expect("request succeeds")
}

/// `[{host, type, pid, offset, message}, ...]` with offsets `first..first+n`.
fn events_json(host: &str, pid: u32, first: u64, n: u64) -> String {
    let items: Vec<String> = (first..first + n)
        .map(|o| {
            format!(
                r#"{{"timestamp":1,"host":"{host}","type":"T","pid":{pid},"offset":{o},"message":"m{o}"}}"#
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_posts_are_answered_only_after_their_ack() {
    const CLIENTS: u32 = 4;
    const REQUESTS: u64 = 25;
    const PER_REQUEST: u64 = 100;
    const HOLD: Duration = Duration::from_millis(200);
    // Every fifth request of each client has its ack held back.
    let held = |first_offset: u64| (first_offset / PER_REQUEST) % 5 == 0;

    let mut h = start_source(true, None).await;

    // The runtime: settle each batch, some after a delay, noting when.
    let acked_at: Arc<Mutex<HashMap<(String, u64), Instant>>> = Arc::default();
    let mut seen: HashMap<(String, u64), u32> = HashMap::new();
    let runtime = {
        let acked_at = acked_at.clone();
        let mut batches = std::mem::replace(&mut h.batches, mpsc::channel(1).1);
        tokio::spawn(async move {
            let mut settling = JoinSet::new();
            for _ in 0..CLIENTS as u64 * REQUESTS {
                let batch = timeout(WAIT, batches.recv())
                    .await
                    .expect("a batch in time")
                    .expect("source running");
                assert_eq!(batch.len(), PER_REQUEST as usize);
                for e in &batch.events {
                    *seen.entry((e.host.to_string(), e.offset)).or_default() += 1;
                }
                let key = (batch.events[0].host.to_string(), batch.events[0].offset);
                let delay = if held(key.1) { HOLD } else { Duration::ZERO };
                let acked_at = acked_at.clone();
                settling.spawn(async move {
                    tokio::time::sleep(delay).await;
                    acked_at.lock().expect("lock").insert(key, Instant::now());
                    batch.ack.complete();
                });
            }
            while settling.join_next().await.is_some() {}
            (seen, batches)
        })
    };

    let mut clients = JoinSet::new();
    for c in 0..CLIENTS {
        let url = h.url("/v1/events");
        clients.spawn(async move {
            let client = client();
            let host = format!("client-{c}");
            let mut answers = Vec::new();
            for r in 0..REQUESTS {
                let first = r * PER_REQUEST;
                let sent = Instant::now();
                let (status, _, body) =
                    post(&client, &url, events_json(&host, c, first, PER_REQUEST)).await;
                let answered = Instant::now();
                assert_eq!(status, StatusCode::OK, "{body}");
                assert_eq!(body, format!("{{\"accepted\":{PER_REQUEST}}}"));
                answers.push(((host.clone(), first), sent, answered));
            }
            answers
        });
    }
    let mut answers = Vec::new();
    while let Some(done) = timeout(Duration::from_secs(60), clients.join_next())
        .await
        .expect("clients finish in time")
    {
        answers.extend(done.expect("client task"));
    }
    let (seen, batches) = timeout(WAIT, runtime)
        .await
        .expect("runtime finishes")
        .expect("runtime task");
    h.batches = batches;

    assert_eq!(answers.len(), (CLIENTS as u64 * REQUESTS) as usize);
    let acked_at = acked_at.lock().expect("lock");
    for (key, sent, answered) in &answers {
        let acked = acked_at.get(key).expect("every request's batch was acked");
        assert!(answered >= acked, "{key:?} answered before its ack");
        if held(key.1) {
            assert!(
                answered.duration_since(*sent) >= HOLD,
                "{key:?} answered after {:?}, while its ack was held {HOLD:?}",
                answered.duration_since(*sent)
            );
        }
    }
    assert_eq!(seen.len(), 10_000, "distinct (host, offset) pairs");
    assert!(seen.values().all(|n| *n == 1), "a pair came twice");
    for c in 0..CLIENTS {
        for o in 0..REQUESTS * PER_REQUEST {
            assert!(seen.contains_key(&(format!("client-{c}"), o)));
        }
    }
    assert_eq!(h.count(|s| &s.events), 10_000);
    assert_eq!(h.count(|s| &s.decode_errors), 0);
    h.shutdown.cancel();
}

#[tokio::test]
async fn failed_or_abandoned_ack_answers_503() {
    let mut h = start_source(true, None).await;
    let client = client();
    let url = h.url("/v1/events");

    let answer = tokio::spawn({
        let client = client.clone();
        let url = url.clone();
        async move { post(&client, &url, events_json("h", 1, 0, 3)).await }
    });
    let batch = h.next_batch().await;
    assert_eq!(batch.len(), 3);
    batch.ack.fail();
    let (status, headers, body) = answer.await.expect("client task");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        headers.get(RETRY_AFTER).map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert!(body.contains("not delivered"), "{body}");

    // A batch the runtime drops unsettled is a failure too.
    let answer = tokio::spawn({
        let client = client.clone();
        async move { post(&client, &url, events_json("h", 1, 3, 1)).await }
    });
    drop(h.next_batch().await);
    let (status, _, _) = answer.await.expect("client task");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    h.shutdown.cancel();
}

/// Posts `body` while the test settles whatever batch comes of it.
async fn post_and_deliver(h: &mut Harness, body: &str) -> (StatusCode, String, Option<Vec<Event>>) {
    let client = client();
    let url = h.url("/v1/events");
    let body = body.to_owned();
    let mut answer = tokio::spawn(async move { post(&client, &url, body).await });
    tokio::select! {
        done = &mut answer => {
            let (status, _, body) = done.expect("client task");
            (status, body, None)
        }
        batch = h.batches.recv() => {
            let batch = batch.expect("source running");
            let events = batch.events.clone();
            batch.ack.complete();
            let (status, _, body) = answer.await.expect("client task");
            (status, body, Some(events))
        }
    }
}

#[tokio::test]
async fn bad_requests_get_reasons_and_good_ones_still_pass() {
    let mut h = start_source(true, Some(1024)).await;
    let client = client();

    let (status, body, batch) = post_and_deliver(&mut h, r#"[{"type": ]"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(batch.is_none());
    let reason: serde_json::Value = serde_json::from_str(&body).expect("JSON error body");
    let reason = reason["error"].as_str().expect("an error string");
    assert!(reason.contains("invalid JSON event at column"), "{reason}");
    assert_eq!(h.count(|s| &s.decode_errors), 1);

    let (status, body, batch) = post_and_deliver(&mut h, r#"[{"type":"T"}, 7]"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(batch.is_none());
    assert_eq!(h.count(|s| &s.decode_errors), 2);

    let (status, _, body) =
        post(&client, &h.url("/v1/events"), &b"[{\"type\":\"\xff\"}]"[..]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("invalid UTF-8"), "{body}");
    assert_eq!(h.count(|s| &s.decode_errors), 3);

    let (status, body, batch) = post_and_deliver(&mut h, &events_json("h", 1, 0, 2)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"accepted":2}"#)
    );
    assert_eq!(batch.map(|b| b.len()), Some(2));

    let (status, body, batch) = post_and_deliver(&mut h, "[]").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"accepted":0}"#)
    );
    assert!(batch.is_none(), "an empty array sends no batch");

    let big = events_json("h", 1, 0, 20);
    assert!(big.len() > 1024);
    let (status, _, body) = post(&client, &h.url("/v1/events"), big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(body.contains("1024"), "{body}");

    let (status, headers, _) = timeout(
        WAIT,
        request(&client, Method::GET, &h.url("/v1/events"), Bytes::new()),
    )
    .await
    .expect("in time")
    .expect("answer");
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers.get(ALLOW).map(|v| v.as_bytes()), Some(&b"POST"[..]));

    let (status, _, body) = post(&client, &h.url("/nope"), "[]").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("/v1/events"), "{body}");

    // Nothing above but the one good request reached the pipeline.
    assert_eq!(h.count(|s| &s.events), 2);
    assert_eq!(h.count(|s| &s.decode_errors), 3);
    assert!(h.batches.try_recv().is_err());
    h.shutdown.cancel();
}

#[tokio::test]
async fn missing_fields_are_filled_from_the_source() {
    let mut h = start_source(true, None).await;
    let body =
        r#"[{"type":"T","pid":3},{"type":"T","pid":3},{"type":"T","host":"web-1","offset":9}]"#;
    let (status, _, batch) = post_and_deliver(&mut h, body).await;
    assert_eq!(status, StatusCode::OK);
    let batch = batch.expect("a batch");
    let got: Vec<(&str, u64)> = batch.iter().map(|e| (e.host.as_str(), e.offset)).collect();
    assert_eq!(got, [("HttpIn", 0), ("HttpIn", 1), ("web-1", 9)]);
    assert!(batch.iter().all(|e| e.timestamp > 0));

    // The sequence is the source's, not the request's.
    let (_, _, batch) = post_and_deliver(&mut h, r#"[{"type":"T","pid":3}]"#).await;
    assert_eq!(batch.expect("a batch")[0].offset, 2);
    h.shutdown.cancel();
}

#[tokio::test]
async fn admission_refusal_answers_429_before_reading() {
    let mut h = start_source(false, None).await;
    let client = client();
    for i in 1..=3 {
        let (status, headers, body) =
            post(&client, &h.url("/v1/events"), events_json("h", 1, 0, 5)).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            headers.get(RETRY_AFTER).map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert!(body.contains("retry"), "{body}");
        assert_eq!(h.count(|s| &s.refused), i);
    }
    assert_eq!(h.count(|s| &s.events), 0);
    assert!(h.batches.try_recv().is_err());
    h.shutdown.cancel();
}

#[tokio::test]
async fn shutdown_finishes_requests_in_flight_then_frees_the_port() {
    let mut h = start_source(true, None).await;
    let client = client();
    // An idle kept-alive connection must not hold shutdown up.
    let (status, _, _) = post(&client, &h.url("/v1/events"), "[]").await;
    assert_eq!(status, StatusCode::OK);

    let answer = tokio::spawn({
        let url = h.url("/v1/events");
        let client = client.clone();
        async move { post(&client, &url, events_json("h", 1, 0, 4)).await }
    });
    let batch = h.next_batch().await;
    let cancelled = Instant::now();
    h.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!h.task.is_finished(), "returned with a request in flight");
    batch.ack.complete();
    let (status, _, body) = answer.await.expect("client task");
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"accepted":4}"#)
    );

    let result = timeout(Duration::from_secs(6), &mut h.task)
        .await
        .expect("run returns within the grace period")
        .expect("source task");
    assert!(result.is_ok(), "{result:?}");
    assert!(cancelled.elapsed() < Duration::from_secs(5));
    // The sender is gone, so the pipeline downstream can drain.
    assert!(timeout(WAIT, h.batches.recv())
        .await
        .expect("in time")
        .is_none());
    TcpListener::bind(&h.addr)
        .await
        .expect("port is free again");
}

#[tokio::test]
async fn shutdown_with_an_unsettled_batch_returns_after_the_grace_period() {
    let mut h = start_source(true, None).await;
    let answer = tokio::spawn({
        let url = h.url("/v1/events");
        async move {
            request(
                &client(),
                Method::POST,
                &url,
                events_json("h", 1, 0, 1).into(),
            )
            .await
        }
    });
    let _held = h.next_batch().await;
    let cancelled = Instant::now();
    h.shutdown.cancel();
    let result = timeout(Duration::from_secs(8), &mut h.task)
        .await
        .expect("run returns")
        .expect("source task");
    assert!(result.is_ok(), "{result:?}");
    let took = cancelled.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(7),
        "{took:?}"
    );
    // The client got no 200: its connection was closed.
    let got = timeout(WAIT, answer).await.expect("in time").expect("task");
    assert!(got.is_err(), "{got:?}");
    TcpListener::bind(&h.addr)
        .await
        .expect("port is free again");
}

#[tokio::test]
async fn bind_error_names_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let source = HttpSourceFactory
        .build("HttpIn", &str_fields(&[("listen", &addr)]))
        .expect("builds");
    let (out, _rx) = mpsc::channel(1);
    let ctx = SourceContext {
        name: "HttpIn".into(),
        out,
        shutdown: CancellationToken::new(),
        stats: Arc::default(),
        admission: Arc::new(Always(true)),
    };
    let err = timeout(WAIT, source.run(ctx))
        .await
        .expect("in time")
        .expect_err("port is taken");
    let msg = err.to_string();
    assert!(msg.contains(&addr) && msg.contains("HttpIn"), "{msg}");
}

/// A small HTTP server for the sink: records each request and answers with
/// the status the test sets.
struct TestServer {
    addr: String,
    status: Arc<AtomicU16>,
    answer_body: Arc<Mutex<&'static str>>,
    received: Arc<Mutex<Vec<(String, String, Bytes)>>>,
    connections: Arc<AtomicUsize>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl TestServer {
    async fn start(addr: &str) -> TestServer {
        let listener = TcpListener::bind(addr).await.expect("test server binds");
        let addr = listener.local_addr().expect("addr").to_string();
        let status = Arc::new(AtomicU16::new(200));
        let answer_body = Arc::new(Mutex::new(""));
        let received = Arc::<Mutex<Vec<_>>>::default();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (status, answer_body, received, connections, stop) = (
                status.clone(),
                answer_body.clone(),
                received.clone(),
                connections.clone(),
                stop.clone(),
            );
            async move {
                let mut conns = JoinSet::new();
                loop {
                    let (stream, _) = tokio::select! {
                        () = stop.cancelled() => break,
                        accepted = listener.accept() => match accepted {
                            Ok(a) => a,
                            Err(_) => continue,
                        },
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let (status, answer_body, received) =
                        (status.clone(), answer_body.clone(), received.clone());
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (status, answer_body, received) =
                            (status.clone(), answer_body.clone(), received.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            let ct = req
                                .headers()
                                .get(CONTENT_TYPE)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            received.lock().expect("lock").push((
                                path,
                                ct,
                                body.unwrap_or_default(),
                            ));
                            let mut answer = Response::new(Full::new(Bytes::from_static(
                                answer_body.lock().expect("lock").as_bytes(),
                            )));
                            *answer.status_mut() =
                                StatusCode::from_u16(status.load(Ordering::SeqCst))
                                    .expect("status");
                            Ok::<_, Infallible>(answer)
                        }
                    });
                    conns.spawn(
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service),
                    );
                }
                // Down means down: kept-alive connections go too.
                conns.shutdown().await;
            }
        });
        TestServer {
            addr,
            status,
            answer_body,
            received,
            connections,
            stop,
            task,
        }
    }

    async fn stop(self) -> String {
        self.stop.cancel();
        timeout(WAIT, self.task)
            .await
            .expect("test server stops")
            .expect("test server task");
        self.addr
    }

    fn answer(&self, status: u16, body: &'static str) {
        self.status.store(status, Ordering::SeqCst);
        *self.answer_body.lock().expect("lock") = body;
    }
}

// Field by field so this holds whether or not `Event::raw` is public.
#[allow(clippy::field_reassign_with_default)]
fn sample_events() -> Vec<Event> {
    (0..3u64)
        .map(|i| {
            let mut e = Event::default();
            e.timestamp = 1_732_320_000_000_000_000 + i as i64;
            e.host = Text::from("web-1");
            e.ty = Text::from("MyEvent");
            e.offset = 40 + i;
            e.pid = 311;
            e.message = Bytes::from(format!("GET /api/{i} 200"));
            e.tags = vec![(Text::from("env"), Text::from("prod"))];
            e
        })
        .collect()
}

fn build_sink(addr: &str, timeout_ms: i64) -> Box<dyn Sink> {
    let mut fields = str_fields(&[("endpoint", &format!("http://{addr}/ingest"))]);
    fields.insert("timeout".into(), ConfigValue::Int(timeout_ms));
    HttpSinkFactory
        .build("HttpOut", &fields)
        .expect("sink builds")
}

async fn write(sink: &mut Box<dyn Sink>, events: &[Event]) -> Result<(), SinkError> {
    timeout(WAIT, sink.write(events))
        .await
        .expect("write returns in time")
        .map(|w| assert!(w.rejected.is_empty(), "{:?}", w.rejected))
}

#[tokio::test]
async fn sink_posts_json_arrays_and_reports_refusals() {
    let server = TestServer::start("127.0.0.1:0").await;
    let mut sink = build_sink(&server.addr, 2_000);
    let events = sample_events();

    for _ in 0..3 {
        write(&mut sink, &events).await.expect("2xx is delivered");
    }
    assert_eq!(server.connections.load(Ordering::SeqCst), 1, "keep-alive");
    {
        let received = server.received.lock().expect("lock");
        assert_eq!(received.len(), 3);
        let (path, ct, body) = &received[0];
        assert_eq!(
            (path.as_str(), ct.as_str()),
            ("/ingest", "application/json")
        );
        let parsed: serde_json::Value = serde_json::from_slice(body).expect("a JSON body");
        let items = parsed.as_array().expect("a JSON array");
        assert_eq!(items.len(), events.len());
        for (item, e) in items.iter().zip(&events) {
            assert_eq!(item["host"], "web-1");
            assert_eq!(item["type"], "MyEvent");
            assert_eq!(item["offset"].as_u64(), Some(e.offset));
            assert_eq!(item["pid"].as_u64(), Some(311));
            assert_eq!(item["timestamp"].as_i64(), Some(e.timestamp));
            assert_eq!(
                item["message"].as_str().map(str::as_bytes),
                Some(&e.message[..])
            );
            assert_eq!(item["tags"]["env"], "prod");
        }
    }
    write(&mut sink, &[]).await.expect("nothing to write");
    assert_eq!(
        server.received.lock().expect("lock").len(),
        3,
        "no empty POST"
    );

    server.answer(500, "boom");
    let err = write(&mut sink, &events)
        .await
        .expect_err("500 is an error");
    assert!(err.to_string().contains("500"), "{err}");
    assert_eq!(err.class, ErrorClass::Transient, "500 is worth a retry");
    server.answer(429, "");
    let err = write(&mut sink, &events)
        .await
        .expect_err("429 is an error");
    assert!(err.to_string().contains("429"), "{err}");
    assert_eq!(err.class, ErrorClass::Transient, "429 is worth a retry");
    server.answer(400, "unknown field `typ`");
    let err = write(&mut sink, &events)
        .await
        .expect_err("400 is an error");
    assert_eq!(err.class, ErrorClass::Permanent, "400 is a refusal");
    let msg = err.to_string();
    assert!(
        msg.contains("400") && msg.contains("unknown field `typ`"),
        "{msg}"
    );
    assert!(msg.contains("HttpOut"), "{msg}");
    // Refusals are answers: the connection was kept all along.
    assert_eq!(server.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn sink_fails_while_the_server_is_down_and_recovers() {
    let server = TestServer::start("127.0.0.1:0").await;
    let mut sink = build_sink(&server.addr, 2_000);
    let events = sample_events();
    write(&mut sink, &events).await.expect("up");

    let addr = server.stop().await;
    let err = write(&mut sink, &events).await.expect_err("server is down");
    assert!(err.to_string().contains(&addr), "{err}");
    assert_eq!(err.class, ErrorClass::Transient);

    let server = TestServer::start(&addr).await;
    write(&mut sink, &events).await.expect("back up");
    assert_eq!(server.received.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn sink_times_out_on_a_silent_server() {
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let mut sink = build_sink(&addr, 300);
    let started = Instant::now();
    let err = write(&mut sink, &sample_events())
        .await
        .expect_err("no answer");
    assert!(err.to_string().contains("no answer within"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    holder.abort();
}

/// An HTTPS peer on loopback presenting a certificate for `names`,
/// answering 200 to every request and keeping the bodies it got.
async fn https_peer(names: &[&str]) -> (String, String, Arc<Mutex<Vec<Bytes>>>, JoinHandle<()>) {
    use rustls_pki_types::pem::PemObject;
    let pair = rcgen::generate_simple_self_signed(
        names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
    )
    .expect("a test certificate");
    let ca_pem = pair.cert.pem();
    let certs = vec![pair.cert.der().clone()];
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(
        pair.signing_key.serialize_pem().as_bytes(),
    )
    .expect("the key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("addr").to_string();
    let received = Arc::<Mutex<Vec<Bytes>>>::default();
    let task = tokio::spawn({
        let received = received.clone();
        async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, received) = (acceptor.clone(), received.clone());
                conns.spawn(async move {
                    // A client that does not trust us ends the handshake.
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |req: Request<Incoming>| {
                        let received = received.clone();
                        async move {
                            let body = req.into_body().collect().await.map(|b| b.to_bytes());
                            received
                                .lock()
                                .expect("lock")
                                .push(body.unwrap_or_default());
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        }
    });
    (addr, ca_pem, received, task)
}

fn https_sink(endpoint: &str, ca_file: &std::path::Path) -> Box<dyn Sink> {
    let mut fields = str_fields(&[
        ("endpoint", endpoint),
        ("tls_ca", &ca_file.display().to_string()),
    ]);
    fields.insert("timeout".into(), ConfigValue::Int(2_000));
    HttpSinkFactory
        .build("HttpsOut", &fields)
        .expect("sink builds")
}

#[tokio::test]
async fn sink_speaks_https_to_a_peer_whose_certificate_chains_to_tls_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (addr, ca_pem, received, task) = https_peer(&["localhost"]).await;
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &ca_pem).expect("write ca");
    let port = addr.rsplit_once(':').expect("port").1;
    let events = sample_events();

    let mut sink = https_sink(&format!("https://localhost:{port}/ingest"), &ca);
    for _ in 0..2 {
        write(&mut sink, &events).await.expect("delivered over TLS");
    }
    {
        let got = received.lock().expect("lock");
        assert_eq!(got.len(), 2);
        let parsed: serde_json::Value = serde_json::from_slice(&got[0]).expect("a JSON body");
        assert_eq!(parsed.as_array().map(Vec::len), Some(events.len()));
    }

    // The name is checked: the certificate is for localhost, not 127.0.0.1.
    let mut by_ip = https_sink(&format!("https://{addr}/ingest"), &ca);
    let err = write(&mut by_ip, &events).await.expect_err("wrong name");
    assert!(!err.is_permanent(), "{err}");
    // And only `tls_ca` is trusted: another CA's certificate is refused.
    let (other_addr, other_ca_pem, other_received, other_task) = https_peer(&["localhost"]).await;
    let other_port = other_addr.rsplit_once(':').expect("port").1;
    let mut wrong_ca = https_sink(&format!("https://localhost:{other_port}/ingest"), &ca);
    let err = write(&mut wrong_ca, &events).await.expect_err("untrusted");
    assert!(!err.is_permanent(), "{err}");
    assert!(other_received.lock().expect("lock").is_empty());
    assert_ne!(other_ca_pem, ca_pem);
    assert_eq!(received.lock().expect("lock").len(), 2);
    task.abort();
    other_task.abort();
}

#[test]
fn https_needs_a_readable_tls_ca_and_http_takes_none() {
    let dir = tempfile::tempdir().expect("temp dir");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "no certificate here\n").expect("write");
    let build = |pairs: &[(&str, &str)]| {
        HttpSinkFactory
            .build("Out", &str_fields(pairs))
            .err()
            .map(|e| e.to_string())
    };
    assert_eq!(
        build(&[("endpoint", "https://localhost:1/x")]).as_deref(),
        Some("Out: `endpoint` `https://localhost:1/x` is https:// and needs `tls_ca`, the PEM CA its certificate chains to")
    );
    let junk = junk.display().to_string();
    assert_eq!(
        build(&[("endpoint", "https://localhost:1/x"), ("tls_ca", &junk)]),
        Some(format!(
            "Out: `tls_ca` file `{junk}` holds no PEM certificate"
        ))
    );
    assert_eq!(
        build(&[("endpoint", "http://localhost:1/x"), ("tls_ca", &junk)]).as_deref(),
        Some("Out: `tls_ca` is for https:// endpoints, and `http://localhost:1/x` is http://")
    );
}
