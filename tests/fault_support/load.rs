//! HTTP clients posting numbered events to dab's `http` source: each
//! client posts batches of fresh offsets (one connection per request),
//! remembers which offsets were answered 200 (acknowledged) and when, and
//! ends on request, at an event budget, or at a time limit. Nothing is
//! retried: an event is offered once, and a 200 is the only promise dab
//! makes about it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::run_support::client::request;

/// Event `i`: type `A`, about 150 bytes as a line. The payload is a JSON
/// object (`n`, `note`), so that a typed sink (parquet) takes it too.
pub fn line(i: u64) -> String {
    format!(
        r#"{{"timestamp":{},"host":"fault-1","type":"A","offset":{i},"pid":7,"message":"{{\"n\":{i},\"note\":\"fault matrix event {i:0>12}\"}}","tags":{{"run":"faults"}}}}"#,
        1_700_000_000_000_000_000u64 + i
    )
}

/// A JSON array of the events `first..first + n`.
pub fn body(first: u64, n: u64) -> String {
    let mut s = String::with_capacity(n as usize * 140 + 2);
    s.push('[');
    for i in first..first + n {
        if i > first {
            s.push(',');
        }
        s.push_str(&line(i));
    }
    s.push(']');
    s
}

#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub clients: usize,
    /// Events per POST.
    pub batch: u64,
    /// Pause of each client between its posts.
    pub pause: Duration,
    /// Offsets handed out at most (the load ends when they are used up).
    pub budget: u64,
    /// The load ends after this long whatever happens.
    pub limit: Duration,
    /// How long one POST may wait for its answer.
    pub timeout: Duration,
}

impl Default for Spec {
    /// The usual row's load: 4 clients posting 50 events at a time without
    /// a pause, no budget, ending after 2 minutes at the latest.
    fn default() -> Spec {
        Spec {
            clients: 4,
            batch: 50,
            pause: Duration::ZERO,
            budget: u64::MAX,
            limit: Duration::from_secs(120),
            timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    next: AtomicU64,
    offered: AtomicU64,
    acked_n: AtomicU64,
    acked: Mutex<Vec<u64>>,
    ack_times: Mutex<Vec<Instant>>,
    /// Answers other than 200 and transport errors, by a short name.
    refusals: Mutex<BTreeMap<String, u64>>,
}

#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    clients: Vec<JoinHandle<()>>,
}

/// What a load offered and got.
#[derive(Debug)]
pub struct Outcome {
    pub offered: u64,
    pub acked: BTreeSet<u64>,
    /// When each 200 arrived, in order.
    pub ack_times: Vec<Instant>,
    pub refusals: BTreeMap<String, u64>,
}

impl Outcome {
    /// From `t` to the first 200 at or after it.
    pub fn first_ack_after(&self, t: Instant) -> Option<Duration> {
        self.ack_times
            .iter()
            .filter(|a| **a >= t)
            .min()
            .map(|a| *a - t)
    }

    /// The refusals as `name×count, ...` (or `none`).
    pub fn refusals_text(&self) -> String {
        if self.refusals.is_empty() {
            return "none".into();
        }
        self.refusals
            .iter()
            .map(|(k, v)| format!("{k}×{v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Load {
    pub fn start(addr: &str, spec: Spec) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let t0 = Instant::now();
        let clients = (0..spec.clients)
            .map(|_| {
                let (addr, stop, shared) =
                    (addr.to_owned(), Arc::clone(&stop), Arc::clone(&shared));
                std::thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn(move || client(&addr, spec, t0, &stop, &shared))
                    .expect("spawn load client")
            })
            .collect();
        Load {
            stop,
            shared,
            clients,
        }
    }

    pub fn acked(&self) -> u64 {
        self.shared.acked_n.load(Ordering::SeqCst)
    }

    pub fn offered(&self) -> u64 {
        self.shared.offered.load(Ordering::SeqCst)
    }

    /// Whether every client has ended by itself (budget or limit).
    pub fn finished(&self) -> bool {
        self.clients.iter().all(JoinHandle::is_finished)
    }

    /// Asks the clients to post nothing more, waits for the answers of the
    /// posts in flight, and returns the outcome.
    pub fn stop(mut self) -> Outcome {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.clients.drain(..) {
            c.join().expect("load client panicked");
        }
        let s = &self.shared;
        let mut ack_times = std::mem::take(&mut *s.ack_times.lock().expect("ack times"));
        ack_times.sort();
        Outcome {
            offered: s.offered.load(Ordering::SeqCst),
            acked: s.acked.lock().expect("acked").iter().copied().collect(),
            ack_times,
            refusals: std::mem::take(&mut *s.refusals.lock().expect("refusals")),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.clients.drain(..) {
            let _ = c.join();
        }
    }
}

fn client(addr: &str, spec: Spec, t0: Instant, stop: &AtomicBool, shared: &Shared) {
    while !stop.load(Ordering::SeqCst) && t0.elapsed() < spec.limit {
        let first = shared.next.fetch_add(spec.batch, Ordering::SeqCst);
        if first >= spec.budget {
            return;
        }
        let n = spec.batch.min(spec.budget - first);
        shared.offered.fetch_add(n, Ordering::SeqCst);
        let refusal = match request(
            addr,
            "POST",
            "/v1/events",
            body(first, n).as_bytes(),
            spec.timeout,
        ) {
            Ok(r) if r.status == 200 => {
                let answer: serde_json::Value = serde_json::from_str(&r.body)
                    .unwrap_or_else(|e| panic!("a 200 that is not JSON ({e}): {}", r.body));
                assert_eq!(
                    answer,
                    serde_json::json!({ "accepted": n }),
                    "the 200 for a batch of {n}"
                );
                shared.ack_times.lock().expect("ack times").push(r.at);
                shared.acked.lock().expect("acked").extend(first..first + n);
                shared.acked_n.fetch_add(n, Ordering::SeqCst);
                None
            }
            Ok(r) => Some(format!("HTTP {}", r.status)),
            Err(e) => Some(format!("{:?}", e.kind())),
        };
        if let Some(r) = refusal {
            *shared
                .refusals
                .lock()
                .expect("refusals")
                .entry(r)
                .or_default() += 1;
            // A refused client backs off a little, as a real one would.
            std::thread::sleep(Duration::from_millis(20));
        }
        if !spec.pause.is_zero() {
            std::thread::sleep(spec.pause);
        }
    }
}
