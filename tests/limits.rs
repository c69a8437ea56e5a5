//! End-to-end tests of `dab run` under producers that push its limits
//! (issue 11 item 5): real `dab` processes, real sockets on 127.0.0.1,
//! RSS sampled from `/proc`. Each test states its bound and checks that
//! every acknowledged event reached the sink's peer.
//!
//! - `four_10_mib_http_bodies_of_empty_objects_stay_in_bounded_memory`;
//! - `a_4_mib_grpc_batch_of_empty_events_stays_in_bounded_memory`.

#[allow(dead_code)]
mod grpc_support;
#[allow(dead_code)]
mod run_support;

use std::time::Duration;

use dab_connectors::murron::wire;

use grpc_support::RssSampler;
use run_support::client::{free_addr, post_events, wait_http_ok, wait_tcp};
use run_support::counter::LineCounter;
use run_support::process::Dab;
use run_support::write_set;

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
    // Acknowledged means delivered: every line is at the peer already.
    assert_eq!(counter.lines(), acked);
    assert!(samples > 10, "only {samples} RSS samples");
    println!("peak RSS {} MiB over {samples} samples", peak_kib / 1024);
    assert!(
        peak_kib < MAX_RSS_MIB * 1024,
        "peak RSS {} MiB, bound {MAX_RSS_MIB} MiB",
        peak_kib / 1024
    );
    dab.terminate();
    assert!(
        dab.wait(Duration::from_secs(30)).success(),
        "{}",
        dab.stderr()
    );
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
    assert_eq!(counter.lines(), ack.accepted);
    assert!(samples > 10, "only {samples} RSS samples");
    println!("peak RSS {} MiB over {samples} samples", peak_kib / 1024);
    assert!(
        peak_kib < MAX_RSS_MIB * 1024,
        "peak RSS {} MiB, bound {MAX_RSS_MIB} MiB",
        peak_kib / 1024
    );
    dab.terminate();
    assert!(
        dab.wait(Duration::from_secs(30)).success(),
        "{}",
        dab.stderr()
    );
}
