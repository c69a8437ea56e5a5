//! Test connectors and helpers for the runtime's integration tests: a
//! finite `VecSource` whose batches carry tracked acks, an endless
//! `LoopSource`, and a `RecordingSink` that can be held (slow or stalled)
//! or told to fail, and can confirm its writes later, as the test says
//! (a Kafka producer's delivery reports). Factories register them under real connector kinds
//! (`generator`, `tcp`, `file`) so the bindings checker accepts the plans,
//! and hand out shared handles keyed by binding name.
//!
//! Every wait here is bounded by `LIMIT`: a hang is a test failure with a
//! message, never a stuck test run.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use dab_api::connector::{Admission, SourceStats};
use dab_api::{
    AckStatus, AckToken, Batch, BuildError, ConfigValue, Confirm, Confirmed, Confirmer,
    ConnectorError, Event, Pending, Sink, SinkError, SinkFactory, Source, SourceContext,
    SourceFactory, Text, Written,
};
use dab_plan::Plan;
use dab_runtime::breaker::BreakerState;
use dab_runtime::metrics::{PipelineMetrics, SinkMetrics};
use dab_runtime::{Registry, RunOptions, Running};
use tokio::sync::{oneshot, watch};

/// The longest any single wait in a test may take.
pub const LIMIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------- events

/// An event with a unique offset; host `web-1`, pid 1, message `m<offset>`.
pub fn ev(ty: &str, offset: u64) -> Event {
    Event {
        timestamp: 1_732_320_000_000_000_000 + offset as i64,
        host: Text::from("web-1"),
        ty: Text::from(ty),
        offset,
        pid: 1,
        message: bytes::Bytes::from(format!("m{offset}")),
        ..Event::default()
    }
}

/// `count` events, types alternating A, B, A, ..., offsets from `first`.
pub fn alternating(first: u64, count: u64) -> Vec<Event> {
    (first..first + count)
        .map(|o| ev(if o % 2 == 0 { "A" } else { "B" }, o))
        .collect()
}

/// Cuts events into batches of `size`.
pub fn batches(events: Vec<Event>, size: usize) -> Vec<Vec<Event>> {
    events.chunks(size).map(<[Event]>::to_vec).collect()
}

/// The offsets of events, in order: the identity tests compare.
pub fn offsets(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.offset).collect()
}

// ---------------------------------------------------------------- gates

/// Open or closed; `pass` waits while closed.
#[derive(Debug)]
pub struct Gate(watch::Sender<bool>);

impl Gate {
    fn new() -> Gate {
        Gate(watch::Sender::new(true))
    }

    pub fn hold(&self) {
        self.0.send_replace(false);
    }

    pub fn release(&self) {
        self.0.send_replace(true);
    }

    async fn pass(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in the handle, which outlives the sink.
        let _ = rx.wait_for(|open| *open).await;
    }
}

// ---------------------------------------------------------------- sinks

/// What a `RecordingSink` saw, and how it should behave.
#[derive(Debug)]
pub struct SinkHandle {
    pub name: String,
    /// Every event a successful `write` took, rewound or not.
    events: Mutex<Vec<Event>>,
    /// Taken since the last good flush; dropped by `rewind`.
    pending: Mutex<Vec<Event>>,
    /// What good flushes made durable: what a reader of the sink finds.
    durable: Mutex<Vec<Event>>,
    /// A write holding an event of this type is refused for good as a
    /// whole (an HTTP 400 for the batch).
    pub poison_type: Mutex<Option<String>>,
    pub rewinds: AtomicU64,
    /// Held: `write` waits before doing anything.
    pub write_gate: Gate,
    /// Held: `flush` waits before doing anything.
    pub flush_gate: Gate,
    /// Calls to `write` (including failed and held ones).
    pub write_calls: AtomicU64,
    /// Successful writes.
    pub writes: AtomicU64,
    pub flush_calls: AtomicU64,
    pub flushes: AtomicU64,
    /// The next this many writes fail (before recording anything).
    pub fail_writes: AtomicU64,
    /// The next this many flushes fail.
    pub fail_flushes: AtomicU64,
    pub always_fail: AtomicBool,
    /// Set before start: the sink confirms its writes later
    /// (`confirms_writes`), when the test calls `confirm`.
    pub confirm_later: AtomicBool,
    /// A confirming sink's writes in call order, with their confirmers
    /// (taken by `confirm`).
    sent: Mutex<Vec<(Vec<Event>, Option<Confirmer>)>>,
    /// Set by `watch_breaker`: the runtime's metrics of this sink, read at
    /// every `write` and `flush` call to record the breaker's state then.
    breaker: Mutex<Option<Arc<SinkMetrics>>>,
    /// ("write" or "flush", the breaker's state at the call), in order.
    pub calls: Mutex<Vec<(&'static str, BreakerState)>>,
    /// The next `write` panics (a bug in a sink): its task dies.
    pub panic_on_write: AtomicBool,
}

impl SinkHandle {
    fn new(name: &str) -> SinkHandle {
        SinkHandle {
            name: name.to_owned(),
            events: Mutex::new(Vec::new()),
            pending: Mutex::new(Vec::new()),
            durable: Mutex::new(Vec::new()),
            poison_type: Mutex::new(None),
            rewinds: AtomicU64::new(0),
            write_gate: Gate::new(),
            flush_gate: Gate::new(),
            write_calls: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            flush_calls: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            fail_writes: AtomicU64::new(0),
            fail_flushes: AtomicU64::new(0),
            always_fail: AtomicBool::new(false),
            confirm_later: AtomicBool::new(false),
            sent: Mutex::new(Vec::new()),
            breaker: Mutex::new(None),
            calls: Mutex::new(Vec::new()),
            panic_on_write: AtomicBool::new(false),
        }
    }

    /// Records the breaker's state at every later `write` and `flush`.
    pub fn watch_breaker(&self, m: Arc<SinkMetrics>) {
        *self.breaker.lock().expect("sink lock") = Some(m);
    }

    fn note_call(&self, what: &'static str) {
        let state = self
            .breaker
            .lock()
            .expect("sink lock")
            .as_ref()
            .map(|m| m.breaker.state());
        if let Some(state) = state {
            self.calls.lock().expect("sink lock").push((what, state));
        }
    }

    /// The calls recorded since `watch_breaker`.
    pub fn calls(&self) -> Vec<(&'static str, BreakerState)> {
        self.calls.lock().expect("sink lock").clone()
    }

    /// Makes the sink confirm its writes later (call before start).
    pub fn confirm_writes_later(&self) {
        self.confirm_later.store(true, Ordering::SeqCst);
    }

    /// The offsets of every write a confirming sink took, in call order.
    pub fn sent_offsets(&self) -> Vec<Vec<u64>> {
        self.sent
            .lock()
            .expect("sink lock")
            .iter()
            .map(|(e, _)| offsets(e))
            .collect()
    }

    /// Confirms write `i` (call order). `Delivered` makes its events but
    /// the rejected ones durable, as a broker's report would.
    pub fn confirm(&self, i: usize, c: Confirmed) {
        let mut sent = self.sent.lock().expect("sink lock");
        let (events, confirmer) = &mut sent[i];
        let confirmer = confirmer
            .take()
            .unwrap_or_else(|| panic!("write {i} was already confirmed"));
        if let Confirmed::Delivered { rejected } = &c {
            let kept = events
                .iter()
                .enumerate()
                .filter(|(j, _)| !rejected.iter().any(|r| r.index == *j))
                .map(|(_, e)| e.clone());
            self.durable.lock().expect("sink lock").extend(kept);
        }
        confirmer.send(c);
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("sink lock").clone()
    }

    pub fn len(&self) -> usize {
        self.events.lock().expect("sink lock").len()
    }

    /// What good flushes made durable, in order.
    pub fn durable(&self) -> Vec<Event> {
        self.durable.lock().expect("sink lock").clone()
    }

    pub fn refuse_type(&self, ty: &str) {
        *self.poison_type.lock().expect("sink lock") = Some(ty.to_owned());
    }

    pub fn offsets(&self) -> Vec<u64> {
        offsets(&self.events())
    }

    pub fn fail_next_writes(&self, k: u64) {
        self.fail_writes.store(k, Ordering::SeqCst);
    }

    pub fn fail_next_flushes(&self, k: u64) {
        self.fail_flushes.store(k, Ordering::SeqCst);
    }
}

/// Takes one from a "fail the next K" counter; true if this call fails.
fn take_one(counter: &AtomicU64) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1))
        .is_ok()
}

#[derive(Debug)]
struct RecordingSink(Arc<SinkHandle>);

#[async_trait]
impl Sink for RecordingSink {
    fn confirms_writes(&self) -> bool {
        self.0.confirm_later.load(Ordering::SeqCst)
    }

    /// Takes the events like `write` (the same gates and failures), then
    /// leaves them waiting for the test's `confirm`.
    async fn write_confirmed(&mut self, events: &[Event]) -> Result<Pending, SinkError> {
        self.write(events).await?;
        self.0.pending.lock().expect("sink lock").clear();
        let (tx, rx) = Confirm::channel();
        self.0
            .sent
            .lock()
            .expect("sink lock")
            .push((events.to_vec(), Some(tx)));
        Ok(Pending {
            rejected: Vec::new(),
            confirm: rx,
        })
    }

    async fn write(&mut self, events: &[Event]) -> Result<Written, SinkError> {
        let h = &self.0;
        h.write_calls.fetch_add(1, Ordering::SeqCst);
        h.write_gate.pass().await;
        h.note_call("write");
        if h.panic_on_write.swap(false, Ordering::SeqCst) {
            panic!("{}: told to panic", h.name);
        }
        if h.always_fail.load(Ordering::SeqCst) {
            return Err(ConnectorError::Other(format!("{}: always fails", h.name)).into());
        }
        if take_one(&h.fail_writes) {
            // A failed write may leave part of itself behind, as a disk
            // that fills up does: `rewind` must take it away again.
            let half = events.len() / 2;
            h.pending
                .lock()
                .expect("sink lock")
                .extend(events[..half].iter().cloned());
            return Err(ConnectorError::Other(format!("{}: told to fail", h.name)).into());
        }
        let poison = h.poison_type.lock().expect("sink lock").clone();
        if let Some(p) = poison {
            if events.iter().any(|e| e.ty.as_str() == p) {
                return Err(SinkError::permanent(ConnectorError::Other(format!(
                    "HTTP 400: batch holds a `{p}`"
                ))));
            }
        }
        h.events
            .lock()
            .expect("sink lock")
            .extend(events.iter().cloned());
        h.pending
            .lock()
            .expect("sink lock")
            .extend(events.iter().cloned());
        h.writes.fetch_add(1, Ordering::SeqCst);
        Ok(Written::all())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        let h = &self.0;
        h.flush_calls.fetch_add(1, Ordering::SeqCst);
        h.flush_gate.pass().await;
        h.note_call("flush");
        if h.always_fail.load(Ordering::SeqCst) || take_one(&h.fail_flushes) {
            return Err(ConnectorError::Other(format!("{}: flush fails", h.name)).into());
        }
        let pending = std::mem::take(&mut *h.pending.lock().expect("sink lock"));
        h.durable.lock().expect("sink lock").extend(pending);
        h.flushes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    async fn rewind(&mut self) -> Result<(), SinkError> {
        let h = &self.0;
        h.rewinds.fetch_add(1, Ordering::SeqCst);
        h.pending.lock().expect("sink lock").clear();
        Ok(())
    }
}

// ---------------------------------------------------------------- sources

/// What a test source did.
#[derive(Debug, Default)]
pub struct SourceHandle {
    /// Events and batches the runtime accepted (`send` returned).
    pub sent_events: AtomicU64,
    pub sent_batches: AtomicU64,
    /// The source returned from `run`.
    pub finished: AtomicBool,
    /// Ack outcomes seen by a `LoopSource`, per batch.
    pub delivered: Arc<AtomicU64>,
    pub failed: Arc<AtomicU64>,
    admission: Mutex<Option<Arc<dyn Admission>>>,
}

impl SourceHandle {
    pub fn sent(&self) -> u64 {
        self.sent_events.load(Ordering::SeqCst)
    }

    /// The admission control the runtime gave this source.
    pub fn admits(&self) -> Option<bool> {
        self.admission
            .lock()
            .expect("source lock")
            .as_ref()
            .map(|a| a.admit())
    }
}

/// Called with the index of the next batch; the source waits until it
/// returns true (lets a test pace a source against a sink).
pub type Pace = Arc<dyn Fn(usize) -> bool + Send + Sync>;

enum SourceSpec {
    Vec {
        batches: Vec<Batch>,
        pace: Option<Pace>,
    },
    Loop {
        batch_size: u64,
    },
    Failing {
        message: String,
    },
    Announcing {
        bound: Arc<Gate>,
    },
}

/// Sends prepared batches, then ends.
struct VecSource {
    batches: Vec<Batch>,
    pace: Option<Pace>,
    handle: Arc<SourceHandle>,
}

/// Sends batches of `A` events with offsets 0, 1, 2, ... until shutdown.
struct LoopSource {
    batch_size: u64,
    handle: Arc<SourceHandle>,
}

fn note_sent(ctx: &SourceContext, h: &SourceHandle, n: u64) {
    SourceStats::add(&ctx.stats.events, n);
    h.sent_events.fetch_add(n, Ordering::SeqCst);
    h.sent_batches.fetch_add(1, Ordering::SeqCst);
}

#[async_trait]
impl Source for VecSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ConnectorError> {
        let VecSource {
            batches,
            pace,
            handle,
        } = *self;
        *handle.admission.lock().expect("source lock") = Some(ctx.admission.clone());
        for (i, batch) in batches.into_iter().enumerate() {
            if let Some(pace) = &pace {
                while !pace(i) {
                    tokio::select! {
                        biased;
                        _ = ctx.shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_millis(1)) => {}
                    }
                }
            }
            let n = batch.len() as u64;
            let permit = tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => return Ok(()),
                p = ctx.out.reserve() => p,
            };
            match permit {
                Ok(p) => p.send(batch),
                Err(_) => return Err(ConnectorError::Other("pipeline input closed".into())),
            }
            note_sent(&ctx, &handle, n);
        }
        handle.finished.store(true, Ordering::SeqCst);
        Ok(())
    }
}

#[async_trait]
impl Source for LoopSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ConnectorError> {
        let h = self.handle;
        *h.admission.lock().expect("source lock") = Some(ctx.admission.clone());
        let mut next = 0u64;
        loop {
            let permit = tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => break,
                p = ctx.out.reserve() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            // The batch exists only once there is room, so a stop never
            // abandons a batch that was not sent.
            let events: Vec<Event> = (next..next + self.batch_size).map(|o| ev("A", o)).collect();
            next += self.batch_size;
            let (delivered, failed) = (h.delivered.clone(), h.failed.clone());
            let ack = AckToken::new(move |status| {
                let c = if status == AckStatus::Delivered {
                    delivered
                } else {
                    failed
                };
                c.fetch_add(1, Ordering::SeqCst);
            });
            permit.send(Batch::new(events, ack));
            note_sent(&ctx, &h, self.batch_size);
        }
        h.finished.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// Ends with an error once it has waited `FAIL_AFTER` (a port in use).
struct FailingSource {
    message: String,
}

const FAIL_AFTER: Duration = Duration::from_millis(50);

#[async_trait]
impl Source for FailingSource {
    async fn run(self: Box<Self>, _ctx: SourceContext) -> Result<(), ConnectorError> {
        tokio::time::sleep(FAIL_AFTER).await;
        Err(ConnectorError::Other(self.message))
    }
}

/// A listener that is slow to bind: it says it serves once the test
/// releases `bound`, then sends nothing until shutdown.
struct AnnouncingSource {
    bound: Arc<Gate>,
}

#[async_trait]
impl Source for AnnouncingSource {
    fn announces_serving(&self) -> bool {
        true
    }

    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ConnectorError> {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return Ok(()),
            () = self.bound.pass() => ctx.stats.set_serving(),
        }
        ctx.shutdown.cancelled().await;
        Ok(())
    }
}

// ---------------------------------------------------------------- harness

#[derive(Default)]
struct Shared {
    sources: Mutex<HashMap<String, (SourceSpec, Arc<SourceHandle>)>>,
    sinks: Mutex<HashMap<String, Arc<SinkHandle>>>,
}

/// The test's side of the connectors: prepare sources, reach sinks.
#[derive(Clone, Default)]
pub struct Harness(Arc<Shared>);

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Harness")
    }
}

impl Harness {
    pub fn new() -> Harness {
        Harness::default()
    }

    /// A finite source sending `batches` in order; one ack receiver per batch.
    pub fn vec_source(
        &self,
        name: &str,
        batches: Vec<Vec<Event>>,
    ) -> (Arc<SourceHandle>, Vec<oneshot::Receiver<AckStatus>>) {
        self.paced_source(name, batches, None)
    }

    /// Like `vec_source`, waiting for `pace(i)` before sending batch `i`.
    pub fn paced_source(
        &self,
        name: &str,
        batches: Vec<Vec<Event>>,
        pace: Option<Pace>,
    ) -> (Arc<SourceHandle>, Vec<oneshot::Receiver<AckStatus>>) {
        let mut rxs = Vec::new();
        let mut prepared = Vec::new();
        for events in batches {
            let (token, rx) = AckToken::channel();
            prepared.push(Batch::new(events, token));
            rxs.push(rx);
        }
        let handle = Arc::new(SourceHandle::default());
        self.0.sources.lock().expect("harness lock").insert(
            name.to_owned(),
            (
                SourceSpec::Vec {
                    batches: prepared,
                    pace,
                },
                handle.clone(),
            ),
        );
        (handle, rxs)
    }

    /// An endless source of `A` events, `batch_size` per batch.
    pub fn loop_source(&self, name: &str, batch_size: u64) -> Arc<SourceHandle> {
        let handle = Arc::new(SourceHandle::default());
        self.0.sources.lock().expect("harness lock").insert(
            name.to_owned(),
            (SourceSpec::Loop { batch_size }, handle.clone()),
        );
        handle
    }

    /// A source that sends nothing and fails with `message`.
    pub fn failing_source(&self, name: &str, message: &str) {
        self.0.sources.lock().expect("harness lock").insert(
            name.to_owned(),
            (
                SourceSpec::Failing {
                    message: message.to_owned(),
                },
                Arc::new(SourceHandle::default()),
            ),
        );
    }

    /// A source that serves once the returned gate is released (held now).
    pub fn announcing_source(&self, name: &str) -> Arc<Gate> {
        let bound = Arc::new(Gate::new());
        bound.hold();
        self.0.sources.lock().expect("harness lock").insert(
            name.to_owned(),
            (
                SourceSpec::Announcing {
                    bound: bound.clone(),
                },
                Arc::new(SourceHandle::default()),
            ),
        );
        bound
    }

    /// The handle of sink `name` (created on first use, before or after start).
    pub fn sink(&self, name: &str) -> Arc<SinkHandle> {
        self.0
            .sinks
            .lock()
            .expect("harness lock")
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(SinkHandle::new(name)))
            .clone()
    }

    /// Test sources as kinds `generator` and `tcp`, test sinks as `file`.
    pub fn registry(&self) -> Registry {
        Registry::new(
            vec![
                Box::new(TestSources {
                    kind: "generator",
                    h: self.clone(),
                }),
                Box::new(TestSources {
                    kind: "tcp",
                    h: self.clone(),
                }),
            ],
            vec![Box::new(TestSinks {
                kind: "file",
                h: self.clone(),
            })],
        )
    }

    /// Starts `plan` with `channel_batches` per bounded channel.
    pub fn start(&self, plan: &Plan, channel_batches: usize) -> Running {
        let opts = RunOptions {
            channel_batches,
            ..RunOptions::default()
        };
        match dab_runtime::start(plan, &self.registry(), &opts) {
            Ok(r) => r,
            Err(e) => panic!("start failed: {e}"),
        }
    }
}

struct TestSources {
    kind: &'static str,
    h: Harness,
}

impl SourceFactory for TestSources {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn build(
        &self,
        name: &str,
        _fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Source>, BuildError> {
        let taken = self.h.0.sources.lock().expect("harness lock").remove(name);
        match taken {
            Some((SourceSpec::Vec { batches, pace }, handle)) => Ok(Box::new(VecSource {
                batches,
                pace,
                handle,
            })),
            Some((SourceSpec::Loop { batch_size }, handle)) => {
                Ok(Box::new(LoopSource { batch_size, handle }))
            }
            Some((SourceSpec::Failing { message }, _)) => Ok(Box::new(FailingSource { message })),
            Some((SourceSpec::Announcing { bound }, _)) => Ok(Box::new(AnnouncingSource { bound })),
            None => Err(BuildError {
                name: name.to_owned(),
                reason: "the test prepared no source of this name".into(),
            }),
        }
    }
}

struct TestSinks {
    kind: &'static str,
    h: Harness,
}

impl SinkFactory for TestSinks {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn build(
        &self,
        name: &str,
        _fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Sink>, BuildError> {
        Ok(Box::new(RecordingSink(self.h.sink(name))))
    }
}

// ---------------------------------------------------------------- plans

/// Checks one blueprint with its bindings: the plan and the errors.
pub fn check(blueprint: &str, bindings: &str) -> (Plan, Vec<String>) {
    let checked = dab_plan::check_set(
        dab_plan::SourceSet {
            blueprints: vec![("test.dab".into(), blueprint.into())],
            bindings: Some(("dab.yaml".into(), bindings.into())),
        },
        &|_| None,
        &|p| std::fs::read(p),
        &dab_runtime::ops::plan_options(),
    );
    let errors: Vec<String> = checked
        .diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(|d| format!("{}: {}", d.code, d.message))
        .collect();
    (checked.plan, errors)
}

/// Checks one blueprint with its bindings; panics with the diagnostics if
/// the set has errors.
pub fn plan(blueprint: &str, bindings: &str) -> Plan {
    let (plan, errors) = check(blueprint, bindings);
    assert!(errors.is_empty(), "blueprint has errors: {errors:#?}");
    plan
}

/// Bindings with the given sources (kind `generator`) and sinks (kind
/// `file`, each with its own path), plus `extra` YAML sections.
pub fn bindings(sources: &[&str], sinks: &[&str], extra: &str) -> String {
    let mut y = String::from("sources:\n");
    for s in sources {
        y.push_str(&format!("  {s}: {{ kind: generator }}\n"));
    }
    y.push_str("sinks:\n");
    for s in sinks {
        y.push_str(&format!(
            "  {s}: {{ kind: file, path: \"/tmp/dab-runtime-tests/{s}.ndjson\" }}\n"
        ));
    }
    y.push_str(extra);
    y
}

// ---------------------------------------------------------------- waits

/// Waits for a batch's ack, at most `LIMIT`.
pub async fn ack(rx: &mut oneshot::Receiver<AckStatus>) -> AckStatus {
    match tokio::time::timeout(LIMIT, rx).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => panic!("ack callback dropped without a status"),
        Err(_) => panic!("no ack within {LIMIT:?}"),
    }
}

/// Waits for every batch's ack and returns them in batch order.
pub async fn acks(rxs: &mut [oneshot::Receiver<AckStatus>]) -> Vec<AckStatus> {
    let mut out = Vec::new();
    for rx in rxs {
        out.push(ack(rx).await);
    }
    out
}

/// True while the batch has no ack yet.
pub fn pending(rx: &mut oneshot::Receiver<AckStatus>) -> bool {
    matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
}

/// Polls `cond` until it holds, at most `LIMIT`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let polled = tokio::time::timeout(LIMIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
    .await;
    assert!(
        polled.is_ok(),
        "timed out after {LIMIT:?} waiting for {what}"
    );
}

/// Waits until `value` has not changed for `quiet`, at most `LIMIT`;
/// returns the settled value.
pub async fn settled(quiet: Duration, mut value: impl FnMut() -> u64) -> u64 {
    let polled = tokio::time::timeout(LIMIT, async {
        let mut last = value();
        loop {
            tokio::time::sleep(quiet).await;
            let now = value();
            if now == last {
                return now;
            }
            last = now;
        }
    })
    .await;
    match polled {
        Ok(v) => v,
        Err(_) => panic!("value kept changing for {LIMIT:?}"),
    }
}

/// Waits for every task of the topology to end, at most `LIMIT`.
pub async fn finish(running: &Running) {
    let ended = tokio::time::timeout(LIMIT, running.wait()).await;
    assert!(ended.is_ok(), "topology did not end within {LIMIT:?}");
}

// ---------------------------------------------------------------- metrics

pub fn pipeline(running: &Running, id: &str) -> Arc<PipelineMetrics> {
    running
        .metrics
        .pipelines
        .snapshot()
        .into_iter()
        .find(|p| p.id == id)
        .unwrap_or_else(|| panic!("no metrics for pipeline {id}"))
}

pub fn sink_metrics(running: &Running, name: &str) -> Arc<SinkMetrics> {
    running
        .metrics
        .sinks
        .snapshot()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no metrics for sink {name}"))
}
