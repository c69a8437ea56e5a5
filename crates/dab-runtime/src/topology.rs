//! A checked plan compiled into running tasks joined by bounded channels:
//! a task per source, per pipeline and per sink; memory queues between
//! pipelines; a fan-out task where one source or queue has several readers.
//!
//! Shutdown flows downstream: sources stop and drop their senders, each
//! pipeline drains its input and drops its outputs, queues and sinks drain
//! and end. The topology keeps no sender itself, so "everything is drained"
//! is simply "every task has ended".

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dab_api::connector::{Admission, SourceStats};
use dab_api::{Batch, ConfigValue, SinkFactory, SourceContext, SourceFactory};
use dab_plan::model::{Endpoint, Pipeline, Role};
use dab_plan::Plan;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::RuntimeAdmission;
use crate::breaker::{BreakerConfig, BreakerState};
use crate::health::{Health, Readiness};
use crate::metrics::{
    rss_bytes, InputMetrics, Metrics, PipelineMetrics, QueueMetrics, SinkMetrics, Undelivered,
    UndeliveredCounts,
};
use crate::output::{memory_queue, OutputTx, QueueReader, QueueWriter};
use crate::pipeline::{Inlet, Output, PipelineTask, Screen};
use crate::reliability::{Limits, Tracker};
use crate::sink::SinkTask;
use crate::stages::{compile_with, StageState};

/// The connector kinds this build knows, handed in by the CLI. Cheap to
/// clone: reloads keep one.
#[derive(Clone)]
pub struct Registry {
    sources: Arc<Vec<Box<dyn SourceFactory>>>,
    sinks: Arc<Vec<Box<dyn SinkFactory>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s: Vec<&str> = self.sources.iter().map(|s| s.kind()).collect();
        let k: Vec<&str> = self.sinks.iter().map(|s| s.kind()).collect();
        f.debug_struct("Registry")
            .field("sources", &s)
            .field("sinks", &k)
            .finish()
    }
}

impl Registry {
    pub fn new(sources: Vec<Box<dyn SourceFactory>>, sinks: Vec<Box<dyn SinkFactory>>) -> Registry {
        Registry {
            sources: Arc::new(sources),
            sinks: Arc::new(sinks),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Run only this service's pipelines.
    pub service: Option<String>,
    /// Capacity of each bounded channel, in batches.
    pub channel_batches: usize,
    /// Refuse new work above this resident set size (0: no limit).
    pub max_rss_bytes: u64,
    /// Refuse new work when a memory queue is fuller than this fraction.
    pub queue_high_water: f64,
    /// Events a memory queue holds when its binding says nothing.
    pub default_queue_capacity: u32,
    /// Bytes of events a memory queue holds when its binding says nothing.
    pub default_queue_bytes: u64,
    /// Track the reliability (REP) score at the sinks. Off by default: it
    /// costs a lock and a table lookup per key per batch.
    pub reliability: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            service: None,
            channel_batches: 8,
            max_rss_bytes: 0,
            queue_high_water: 0.9,
            default_queue_capacity: 10_000,
            default_queue_bytes: 64 << 20,
            reliability: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Build(#[from] dab_api::BuildError),
    #[error("`{name}` is a {role} of kind `{kind}`, which this build of dab cannot run yet")]
    UnknownKind {
        name: String,
        role: &'static str,
        kind: String,
    },
    #[error("no pipeline of service `{0}` in this blueprint set")]
    NoPipelines(String),
    #[error("pipeline `{pipeline}`: {reason}")]
    Stage { pipeline: String, reason: String },
    #[error("shutting down; nothing new is started")]
    ShuttingDown,
}

/// A started topology. `reload` swaps pipelines while it runs.
#[derive(Debug)]
pub struct Running {
    shutdown: CancellationToken,
    force: CancellationToken,
    tracker: TaskTracker,
    background: CancellationToken,
    pub metrics: Arc<Metrics>,
    /// The reliability tracker, when `RunOptions::reliability` is on.
    pub reliability: Option<Arc<Tracker>>,
    failures: Arc<Mutex<Vec<String>>>,
    /// Failed sources and dead tasks, for `readiness`.
    health: Arc<Health>,
    /// What runs now; `None` once shutdown began (nothing more is built,
    /// and the senders it held are gone so everything can drain).
    state: Arc<Mutex<Option<State>>>,
    registry: Arc<Registry>,
    opts: RunOptions,
    rss: Arc<AtomicU64>,
    /// Sources running; when the last ends by itself (finite sources) the
    /// topology finishes.
    live_sources: Arc<AtomicU64>,
    /// True until the first plan is applied: a source of the first plan
    /// that fails stops the process; one started by a reload does not.
    state_is_first: std::sync::atomic::AtomicBool,
}

impl Running {
    /// Graceful: sources stop reading; everything read is drained.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
        finish(&self.state, &self.tracker);
    }

    /// Forced: sinks stop retrying; what is undelivered is reported failed.
    pub fn force(&self) {
        self.shutdown();
        self.force.cancel();
    }

    /// Waits until every task has ended.
    pub async fn wait(&self) {
        self.tracker.wait().await;
        self.background.cancel();
    }

    /// Prometheus text of every metric, reliability scores included.
    pub fn render_metrics(&self) -> String {
        let mut out = self.metrics.render();
        if let Some(t) = &self.reliability {
            t.prometheus(&mut out);
        }
        out
    }

    /// Events a stop abandoned (forced, or a source that gave up what it
    /// read): 0 after a clean drain.
    pub fn abandoned(&self) -> u64 {
        self.metrics.abandoned.get()
    }

    /// Where events were abandoned (`Metrics::abandoned_by_place`).
    pub fn abandoned_by_place(&self) -> String {
        self.metrics.abandoned_by_place()
    }

    /// Errors sources ended with (a port in use, a socket that vanished).
    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// What `/readyz` answers: not ready while draining, while a source
    /// is not serving (it ended with an error), after a pipeline, sink or
    /// router task died, and while a sink's circuit breaker is not closed.
    pub fn readiness(&self) -> Readiness {
        let mut reasons = Vec::new();
        if self.shutdown.is_cancelled() {
            reasons.push("draining: stopping, delivering what was read".to_owned());
        }
        self.health.reasons(&mut reasons);
        for s in self.metrics.sinks.snapshot() {
            match s.breaker.state() {
                BreakerState::Closed => {}
                BreakerState::Open => reasons.push(format!(
                    "sink `{}`: circuit breaker open (the peer keeps failing)",
                    s.name
                )),
                BreakerState::HalfOpen => reasons.push(format!(
                    "sink `{}`: circuit breaker half-open (probing the peer)",
                    s.name
                )),
            }
        }
        Readiness { reasons }
    }
}

/// `batch_timeout` (ms) in a sink's binding turns on batching by time,
/// up to `batch_size` events (500 when not given).
fn coalesce_of(fields: &BTreeMap<String, ConfigValue>) -> Option<crate::sink::Coalesce> {
    let wait = match fields.get("batch_timeout") {
        Some(ConfigValue::Int(ms)) if *ms > 0 => Duration::from_millis(u64::try_from(*ms).ok()?),
        _ => return None,
    };
    let max_events = match fields.get("batch_size") {
        Some(ConfigValue::Int(n)) if *n > 0 => usize::try_from(*n).ok()?,
        _ => 500,
    };
    Some(crate::sink::Coalesce {
        max_events,
        max_wait: wait,
    })
}

/// Input depth, in batches, of a Kafka sink (at least `channel_batches`).
const KAFKA_SINK_BATCHES: usize = 64;

/// A source to build: its name (a Kafka queue's reader is
/// `queue:pipeline`), kind and settings.
struct SourceSpec<'a> {
    name: String,
    kind: &'a str,
    fields: std::borrow::Cow<'a, BTreeMap<String, ConfigValue>>,
}

fn builtin_kind(name: &str) -> &'static str {
    match name {
        "Stdin" => "stdin",
        "Generator" => "generator",
        "Stdout" => "stdout",
        _ => "blackhole",
    }
}

/// What a reload changed, by pipeline id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub rebuilt: Vec<(String, Vec<String>)>,
    pub removed: Vec<String>,
    pub kept: Vec<String>,
}

/// Readers of one input, by pipeline id, in plan order.
type Readers = Vec<(String, mpsc::Sender<Batch>)>;

/// What runs now, keyed for reloads.
struct State {
    plan: Option<Plan>,
    pipelines: HashMap<String, PipelineSlot>,
    /// By input key: a source's name, a memory queue's name, or
    /// `queue:pipeline` for a Kafka queue's reader.
    inputs: HashMap<String, InputSlot>,
    sinks: HashMap<String, SinkSlot>,
    queues: HashMap<String, QueueWriter>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("pipelines", &self.pipelines.keys().collect::<Vec<_>>())
            .field("inputs", &self.inputs.keys().collect::<Vec<_>>())
            .field("sinks", &self.sinks.keys().collect::<Vec<_>>())
            .field("queues", &self.queues.keys().collect::<Vec<_>>())
            .finish()
    }
}

struct PipelineSlot {
    tx: mpsc::Sender<Batch>,
    metrics: Arc<PipelineMetrics>,
    /// Its dedup windows and rate-limit buckets, by place (`None` for the
    /// pipeline's stages, `Some(target)` for an output's modifiers) and op,
    /// for a rebuild that keeps the op (SPEC section 5).
    states: Vec<OpState>,
}

/// One op's state that a rebuild of its pipeline carries over.
type OpState = (Option<String>, dab_plan::model::Stage, StageState);

/// Compiles `stages` (at `place`), each continuing the state of an equal op
/// at the same place in `prior`, which it takes; records the new states.
fn compile_ops(
    place: Option<&str>,
    stages: &[dab_plan::model::Stage],
    sink_tx: impl Fn(&str) -> Option<OutputTx> + Copy,
    on_error: impl Fn() -> Option<OutputTx>,
    prior: &mut Vec<OpState>,
    states: &mut Vec<OpState>,
) -> Result<Vec<crate::stages::Compiled>, String> {
    let mut out = Vec::with_capacity(stages.len());
    for s in stages {
        let carried = prior
            .iter()
            .position(|(at, op, _)| at.as_deref() == place && op == s)
            .map(|i| prior.remove(i).2);
        let c = compile_with(s, sink_tx, on_error(), carried)?;
        if let Some(state) = c.state() {
            states.push((place.map(str::to_owned), s.clone(), state));
        }
        out.push(c);
    }
    Ok(out)
}

struct InputSlot {
    readers: watch::Sender<Readers>,
    metrics: Arc<InputMetrics>,
    /// Set for sources (not for memory queues).
    source: Option<SourceSlot>,
}

struct SourceSlot {
    /// The binding it was built from; a different one means a new source.
    spec: (String, BTreeMap<String, ConfigValue>),
    stop: CancellationToken,
    stats: Arc<SourceStats>,
    connector: Option<Arc<dyn dab_api::metrics::ConnectorMetrics>>,
}

struct SinkSlot {
    spec: (String, BTreeMap<String, ConfigValue>),
    tx: mpsc::Sender<Batch>,
    metrics: Arc<SinkMetrics>,
    connector: Option<Arc<dyn dab_api::metrics::ConnectorMetrics>>,
}

/// Drops what the running topology holds (so everything can drain) and
/// lets `wait` return once every task has ended.
fn finish(state: &Mutex<Option<State>>, tracker: &TaskTracker) {
    let taken = state.lock().map(|mut s| s.take()).unwrap_or(None);
    drop(taken);
    tracker.close();
}

/// Compiles and starts a plan. Must run inside a tokio runtime.
pub fn start(plan: &Plan, registry: &Registry, opts: &RunOptions) -> Result<Running, StartError> {
    let running = Running {
        shutdown: CancellationToken::new(),
        force: CancellationToken::new(),
        tracker: TaskTracker::new(),
        background: CancellationToken::new(),
        metrics: Arc::new(Metrics::default()),
        reliability: opts
            .reliability
            .then(|| Arc::new(Tracker::new(Limits::default()))),
        failures: Arc::new(Mutex::new(Vec::new())),
        health: Arc::new(Health::default()),
        state: Arc::new(Mutex::new(Some(State {
            plan: None,
            pipelines: HashMap::new(),
            inputs: HashMap::new(),
            sinks: HashMap::new(),
            queues: HashMap::new(),
        }))),
        registry: Arc::new(registry.clone()),
        opts: opts.clone(),
        rss: Arc::new(AtomicU64::new(rss_bytes())),
        live_sources: Arc::new(AtomicU64::new(0)),
        state_is_first: std::sync::atomic::AtomicBool::new(true),
    };
    running.apply(plan.clone())?;
    running.state_is_first.store(false, Ordering::Release);
    {
        let rss = running.rss.clone();
        let stop = running.background.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => rss.store(rss_bytes(), Ordering::Relaxed),
                    _ = stop.cancelled() => return,
                }
            }
        });
    }
    // A set with no source at all has nothing to wait for.
    if running.live_sources.load(Ordering::Acquire) == 0 {
        finish(&running.state, &running.tracker);
    }
    Ok(running)
}

impl Running {
    /// Swaps in a new plan: pipelines that changed (by `dab_plan::diff`)
    /// are rebuilt, added ones started, removed ones drained and stopped.
    /// Memory queues keep their contents; sources and sinks whose binding
    /// did not change keep running (a listener keeps its connections).
    /// Every new piece is built before anything changes, so a piece that
    /// fails to build leaves the running topology as it was.
    /// Calls `f` with the plan running now (`None` once shutting down),
    /// e.g. to check what a reload to another plan would refuse.
    pub fn with_plan<R>(&self, f: impl FnOnce(Option<&Plan>) -> R) -> R {
        let guard = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(guard.as_ref().and_then(|st| st.plan.as_ref()))
    }

    pub fn reload(&self, plan: &Plan) -> Result<ReloadReport, StartError> {
        self.reload_owned(plan.clone())
    }

    /// [`Running::reload`] of a plan the caller no longer needs: it becomes
    /// the running plan without a copy (a copy of a large set's plan is a
    /// good part of a reload).
    pub fn reload_owned(&self, plan: Plan) -> Result<ReloadReport, StartError> {
        let started = std::time::Instant::now();
        let r = self.apply(plan);
        let m = &self.metrics.reload;
        match &r {
            Ok(report) => {
                m.ok.add(1);
                m.added.add(report.added.len() as u64);
                m.rebuilt.add(report.rebuilt.len() as u64);
                m.removed.add(report.removed.len() as u64);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                m.last_success_unix.store(now, Ordering::Relaxed);
                m.last_duration_us
                    .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            Err(_) => m.failed.add(1),
        }
        r
    }

    fn apply(&self, plan: Plan) -> Result<ReloadReport, StartError> {
        let (report, old) = self.apply_keeping_old(plan)?;
        // The replaced plan is dropped here, outside the state's lock.
        drop(old);
        Ok(report)
    }

    fn apply_keeping_old(&self, plan: Plan) -> Result<(ReloadReport, Option<Plan>), StartError> {
        let opts = &self.opts;
        let selected: Vec<&Pipeline> = plan
            .pipelines
            .iter()
            .filter(|p| opts.service.as_ref().is_none_or(|s| &p.service == s))
            .collect();
        if let (Some(s), true) = (&opts.service, selected.is_empty()) {
            return Err(StartError::NoPipelines(s.clone()));
        }
        let mut guard = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(st) = guard.as_mut() else {
            return Err(StartError::ShuttingDown);
        };
        let staged = self.build(&plan, &selected, st)?;
        let report = self.commit(&plan, &selected, st, staged);
        drop(selected);
        let old = st.plan.replace(plan);
        drop(guard);
        Ok((report, old))
    }
}

/// Everything a reload builds before it changes anything.
struct Staged {
    report: ReloadReport,
    queues: Vec<(String, QueueWriter, QueueReader)>,
    sinks: Vec<(String, SinkSlot, SinkTask)>,
    sources: Vec<StagedSource>,
    pipelines: Vec<(String, PipelineSlot, PipelineTask)>,
}

struct StagedSource {
    key: String,
    slot: SourceSlot,
    source: Box<dyn dab_api::Source>,
    tx: mpsc::Sender<Batch>,
    rx: mpsc::Receiver<Batch>,
}

/// The input key of a pipeline, and, for a Kafka queue, its fields with
/// the pipeline's consumer group.
fn input_of<'a>(plan: &'a Plan, p: &Pipeline) -> (String, Option<SourceSpec<'a>>) {
    let name = p.config.input.as_str();
    let empty: &'static BTreeMap<String, ConfigValue> = empty_fields();
    match plan.endpoints.get(name) {
        Some(Endpoint::Bound { kind, fields, role }) if *role == Role::Queue && kind == "kafka" => {
            let key = format!("{name}:{}", p.id);
            let mut fields = fields.clone();
            fields.insert(
                "group".to_owned(),
                ConfigValue::Str(format!("dab.{name}.{}", p.id)),
            );
            (
                key.clone(),
                Some(SourceSpec {
                    name: key,
                    kind: "kafka",
                    fields: std::borrow::Cow::Owned(fields),
                }),
            )
        }
        Some(Endpoint::Bound {
            role: Role::Source,
            kind,
            fields,
        }) => (
            name.to_owned(),
            Some(SourceSpec {
                name: name.to_owned(),
                kind: kind.as_str(),
                fields: std::borrow::Cow::Borrowed(fields),
            }),
        ),
        Some(Endpoint::Builtin { role: Role::Source }) => (
            name.to_owned(),
            Some(SourceSpec {
                name: name.to_owned(),
                kind: builtin_kind(name),
                fields: std::borrow::Cow::Borrowed(empty),
            }),
        ),
        _ => (name.to_owned(), None),
    }
}

fn empty_fields() -> &'static BTreeMap<String, ConfigValue> {
    static EMPTY: std::sync::OnceLock<BTreeMap<String, ConfigValue>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(BTreeMap::new)
}

impl Running {
    fn build(&self, plan: &Plan, selected: &[&Pipeline], st: &State) -> Result<Staged, StartError> {
        let opts = &self.opts;
        let cap = opts.channel_batches.max(1);
        let endpoint = |name: &str| plan.endpoints.get(name);
        let old = st.plan.as_ref();
        let diff = old.map(|o| dab_plan::diff(o, plan));
        let mut report = ReloadReport::default();
        let mut rebuild: Vec<&Pipeline> = Vec::new();
        for p in selected {
            match (st.pipelines.contains_key(&p.id), &diff) {
                (false, _) => {
                    report.added.push(p.id.clone());
                    rebuild.push(p);
                }
                (true, Some(d)) => match d.rebuilt.iter().find(|(id, _)| *id == p.id) {
                    Some((_, why)) => {
                        report.rebuilt.push((p.id.clone(), why.clone()));
                        rebuild.push(p);
                    }
                    None => report.kept.push(p.id.clone()),
                },
                (true, None) => report.kept.push(p.id.clone()),
            }
        }
        let selected_ids: std::collections::HashSet<&str> =
            selected.iter().map(|p| p.id.as_str()).collect();
        for id in st.pipelines.keys() {
            if !selected_ids.contains(id.as_str()) {
                report.removed.push(id.clone());
            }
        }
        report.removed.sort();

        // Memory queues used by the selected pipelines that do not exist yet.
        let mut queues = Vec::new();
        let mut kafka_queues: HashMap<&str, &BTreeMap<String, ConfigValue>> = HashMap::new();
        let used = selected
            .iter()
            .flat_map(|p| std::iter::once(p.config.input.as_str()).chain(p.config.writes()));
        for name in used {
            let Some(ep) = endpoint(name) else { continue };
            if ep.role() != Role::Queue {
                continue;
            }
            if let Endpoint::Bound { kind, fields, .. } = ep {
                if kind == "kafka" {
                    kafka_queues.insert(name, fields);
                    continue;
                }
            }
            if !ep.is_memory_queue() {
                let kind = match ep {
                    Endpoint::Bound { kind, .. } => kind.clone(),
                    _ => "?".into(),
                };
                return Err(StartError::UnknownKind {
                    name: name.to_owned(),
                    role: "queue",
                    kind,
                });
            }
            if st.queues.contains_key(name) || queues.iter().any(|(n, _, _)| n == name) {
                continue;
            }
            let field = |key: &str| match ep {
                Endpoint::Bound { fields, .. } => match fields.get(key) {
                    Some(ConfigValue::Int(c)) => u64::try_from(*c).ok(),
                    _ => None,
                },
                _ => None,
            };
            let capacity = field("capacity").map_or(opts.default_queue_capacity, |c| {
                u32::try_from(c).unwrap_or(u32::MAX)
            });
            let capacity_bytes = field("capacity_bytes").unwrap_or(opts.default_queue_bytes);
            let qm = Arc::new(QueueMetrics {
                name: name.to_owned(),
                capacity_events: u64::from(capacity),
                ..QueueMetrics::default()
            });
            self.metrics.queues.push(qm.clone());
            let (w, r) = memory_queue(capacity, capacity_bytes, qm);
            queues.push((name.to_owned(), w, r));
        }

        // Sinks (and Kafka queues written) by pipelines being built.
        let mut sinks: Vec<(String, SinkSlot, SinkTask)> = Vec::new();
        for p in &rebuild {
            for name in p.config.writes() {
                let Some(ep) = endpoint(name) else { continue };
                let (kind, fields) = match (kafka_queues.get(name), ep) {
                    (Some(fields), _) => ("kafka", *fields),
                    (None, _) if ep.role() != Role::Sink => continue,
                    (None, Endpoint::Bound { kind, fields, .. }) => (kind.as_str(), fields),
                    (None, _) => (builtin_kind(name), empty_fields()),
                };
                let spec = (kind.to_owned(), fields.clone());
                let unchanged = st.sinks.get(name).is_some_and(|s| s.spec == spec);
                if unchanged || sinks.iter().any(|(n, _, _)| n == name) {
                    continue;
                }
                let factory = self
                    .registry
                    .sinks
                    .iter()
                    .find(|f| f.kind() == kind)
                    .ok_or_else(|| StartError::UnknownKind {
                        name: name.to_owned(),
                        role: if kafka_queues.contains_key(name) {
                            "queue"
                        } else {
                            "sink"
                        },
                        kind: kind.to_owned(),
                    })?;
                let sink = factory.build(name, fields)?;
                let connector = sink.metrics();
                // A Kafka sink's flush waits a broker round trip for every
                // delivery report; a deeper input keeps the pipelines
                // flowing meanwhile (a bandwidth-delay product, about
                // 16 MiB of 250-byte events).
                let depth = if kind == "kafka" {
                    cap.max(KAFKA_SINK_BATCHES)
                } else {
                    cap
                };
                let (tx, rx) = mpsc::channel(depth);
                // A sink rebuilt under the same name keeps counting in the
                // same series, the old instance's last writes included.
                let sm = st.sinks.get(name).map_or_else(
                    || {
                        Arc::new(SinkMetrics {
                            name: name.to_owned(),
                            abandoned: self.metrics.abandoned.clone(),
                            ..SinkMetrics::default()
                        })
                    },
                    |old| old.metrics.clone(),
                );
                let task = SinkTask {
                    sink,
                    input: rx,
                    metrics: sm.clone(),
                    force: self.force.clone(),
                    reliability: self.reliability.clone(),
                    coalesce: coalesce_of(fields),
                    breaker: BreakerConfig::from_fields(fields),
                };
                sinks.push((
                    name.to_owned(),
                    SinkSlot {
                        spec,
                        tx,
                        metrics: sm,
                        connector,
                    },
                    task,
                ));
            }
        }

        // Sources: new ones, and ones whose binding changed.
        let mut sources: Vec<StagedSource> = Vec::new();
        for p in selected {
            let (key, spec) = input_of(plan, p);
            let Some(spec) = spec else { continue };
            // Compared in place: most pipelines share a running source, and
            // a copy of its fields for each would cost more than the rest.
            let unchanged = st
                .inputs
                .get(&key)
                .and_then(|i| i.source.as_ref())
                .is_some_and(|s| s.spec.0 == spec.kind && s.spec.1 == *spec.fields);
            if unchanged || sources.iter().any(|s| s.key == key) {
                continue;
            }
            let wanted = (spec.kind.to_owned(), spec.fields.clone().into_owned());
            let factory = self
                .registry
                .sources
                .iter()
                .find(|f| f.kind() == spec.kind)
                .ok_or_else(|| StartError::UnknownKind {
                    name: spec.name.clone(),
                    role: "source",
                    kind: spec.kind.to_owned(),
                })?;
            let source = factory.build(&spec.name, &spec.fields)?;
            let connector = source.metrics();
            let (tx, rx) = mpsc::channel(cap);
            sources.push(StagedSource {
                key,
                slot: SourceSlot {
                    spec: wanted,
                    stop: self.shutdown.child_token(),
                    stats: Arc::new(SourceStats::default()),
                    connector,
                },
                source,
                tx,
                rx,
            });
        }

        // Pipelines: compiled against the sinks and queues they will have.
        let sink_tx = |name: &str| -> Option<OutputTx> {
            if let Some((_, slot, _)) = sinks.iter().find(|(n, _, _)| n == name) {
                return Some(OutputTx::Channel(slot.tx.clone()));
            }
            if let Some(slot) = st.sinks.get(name) {
                return Some(OutputTx::Channel(slot.tx.clone()));
            }
            if let Some(w) = st.queues.get(name) {
                return Some(OutputTx::Queue(w.clone()));
            }
            queues
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, w, _)| OutputTx::Queue(w.clone()))
        };
        let mut pipelines = Vec::new();
        for p in &rebuild {
            let c = &p.config;
            let mut labels: Vec<String> = c.stages.iter().map(|s| s.label()).collect();
            for o in &c.outputs {
                labels.extend(
                    o.modifiers
                        .iter()
                        .map(|m| format!("{} -> {}", m.label(), o.target)),
                );
            }
            let pm = Arc::new(
                PipelineMetrics::new(
                    &p.id,
                    labels,
                    c.outputs.iter().map(|o| o.target.clone()).collect(),
                )
                .with_total(self.metrics.abandoned.clone()),
            );
            let on_error = || c.on_error.as_deref().and_then(sink_tx);
            let bad_key = |e: String| StartError::Stage {
                pipeline: p.id.clone(),
                reason: e,
            };
            // The dedup windows and rate-limit buckets of the pipeline this
            // one replaces, for the ops that did not change.
            let mut prior = st
                .pipelines
                .get(&p.id)
                .map(|old| old.states.clone())
                .unwrap_or_default();
            let mut states = Vec::new();
            let stages = compile_ops(None, &c.stages, sink_tx, on_error, &mut prior, &mut states)
                .map_err(bad_key)?;
            let mut outputs = Vec::new();
            for o in &c.outputs {
                let Some(tx) = sink_tx(&o.target) else {
                    continue;
                };
                let modifiers = compile_ops(
                    Some(&o.target),
                    &o.modifiers,
                    sink_tx,
                    on_error,
                    &mut prior,
                    &mut states,
                )
                .map_err(bad_key)?;
                outputs.push(Output {
                    reroute: c.on_error.as_deref() != Some(o.target.as_str()),
                    tx,
                    modifiers,
                });
            }
            let kafka_input = kafka_queues.contains_key(c.input.as_str())
                || matches!(endpoint(&c.input), Some(Endpoint::Bound { kind, .. }) if kind == "kafka");
            let screen = kafka_input.then(|| Screen {
                on_error: on_error(),
            });
            let (tx, rx) = mpsc::channel(cap);
            pipelines.push((
                p.id.clone(),
                PipelineSlot {
                    tx,
                    metrics: pm.clone(),
                    states,
                },
                PipelineTask {
                    input: Inlet::Channel(rx),
                    screen,
                    stages,
                    outputs,
                    when_full: c.when_full,
                    metrics: pm,
                    force: self.force.clone(),
                    reliability: self.reliability.clone(),
                    on_error: on_error().map(|t| Arc::new(t) as Arc<dyn dab_api::batch::Reroute>),
                },
            ));
        }
        Ok(Staged {
            report,
            queues,
            sinks,
            sources,
            pipelines,
        })
    }

    /// Starts what `build` made and retires what it replaces. Cannot fail.
    fn commit(
        &self,
        plan: &Plan,
        selected: &[&Pipeline],
        st: &mut State,
        staged: Staged,
    ) -> ReloadReport {
        let Staged {
            report,
            queues,
            sinks,
            sources,
            pipelines,
        } = staged;
        let m = &self.metrics;
        let channel =
            |owner: String, tx: &mpsc::Sender<Batch>| m.channels.push((owner, tx.downgrade()));

        // New memory queues; their readers become inputs below.
        let mut queue_readers: HashMap<String, QueueReader> = HashMap::new();
        for (name, w, r) in queues {
            st.queues.insert(name.clone(), w);
            queue_readers.insert(name, r);
        }
        // Sinks: the new ones start; a replaced one drains what the
        // pipelines it served still send, then ends.
        for (name, slot, task) in sinks {
            if !m
                .sinks
                .snapshot()
                .iter()
                .any(|x| Arc::ptr_eq(x, &slot.metrics))
            {
                m.sinks.push(slot.metrics.clone());
            }
            if let Some(c) = &slot.connector {
                m.connectors.push(c.clone());
            }
            channel(format!("sink:{name}"), &slot.tx);
            self.health
                .spawn(&self.tracker, format!("sink `{name}`"), task.run());
            let shared = slot.metrics.clone();
            if let Some(old) = st.sinks.insert(name, slot) {
                retire_sink(m, &old, Arc::ptr_eq(&old.metrics, &shared));
            }
        }
        // Pipelines: new ones start; replaced and removed ones drain.
        for (id, slot, task) in pipelines {
            m.pipelines.push(slot.metrics.clone());
            channel(format!("pipeline:{id}"), &slot.tx);
            self.health
                .spawn(&self.tracker, format!("pipeline `{id}`"), task.run());
            if let Some(old) = st.pipelines.insert(id, slot) {
                m.pipelines.retain(|p| !Arc::ptr_eq(p, &old.metrics));
            }
        }
        for id in &report.removed {
            if let Some(old) = st.pipelines.remove(id) {
                m.pipelines.retain(|p| !Arc::ptr_eq(p, &old.metrics));
            }
        }
        // Sources whose binding changed stop; their routers hand what is
        // left to the pipelines they served.
        let mut new_sources: HashMap<String, StagedSource> =
            sources.into_iter().map(|s| (s.key.clone(), s)).collect();
        for key in new_sources.keys() {
            if let Some(old) = st.inputs.remove(key) {
                retire_input(m, old);
            }
            self.health.source_cleared(key);
        }
        // Inputs: each gets the readers the new plan gives it.
        let mut readers: BTreeMap<String, Readers> = BTreeMap::new();
        for p in selected {
            let (key, _) = input_of(plan, p);
            let entry = readers.entry(key).or_default();
            if let Some(slot) = st.pipelines.get(&p.id) {
                entry.push((p.id.clone(), slot.tx.clone()));
            }
        }
        // Memory queues nobody here reads still get a router, which fails
        // what is written to them (W001, or read by a service run elsewhere).
        for name in st.queues.keys() {
            readers.entry(name.clone()).or_default();
        }
        let queue_gauges: Vec<_> = st.queues.values().map(QueueWriter::fill_gauge).collect();
        for (key, list) in readers {
            if let Some(slot) = st.inputs.get(&key) {
                slot.readers.send_replace(list);
                continue;
            }
            let (wtx, wrx) = watch::channel(list);
            let im = Arc::new(InputMetrics {
                name: key.clone(),
                undelivered: UndeliveredCounts::new(m.abandoned.clone()),
            });
            if let Some(staged) = new_sources.remove(&key) {
                self.spawn_source(&key, staged.source, &staged.slot, staged.tx, &queue_gauges);
                m.inputs.push(im.clone());
                self.health.spawn(
                    &self.tracker,
                    format!("router of `{key}`"),
                    route(
                        Inlet::Channel(staged.rx),
                        wrx,
                        im.clone(),
                        self.force.clone(),
                    ),
                );
                st.inputs.insert(
                    key,
                    InputSlot {
                        readers: wtx,
                        metrics: im,
                        source: Some(staged.slot),
                    },
                );
            } else if let Some(q) = queue_readers.remove(&key) {
                m.inputs.push(im.clone());
                self.health.spawn(
                    &self.tracker,
                    format!("router of `{key}`"),
                    route(Inlet::Queue(q), wrx, im.clone(), self.force.clone()),
                );
                st.inputs.insert(
                    key,
                    InputSlot {
                        readers: wtx,
                        metrics: im,
                        source: None,
                    },
                );
            }
        }
        // Inputs no pipeline reads any more: sources stop; memory queues
        // that nothing writes either are dropped once drained.
        let keep: std::collections::HashSet<String> = selected
            .iter()
            .map(|p| input_of(plan, p).0)
            .chain(st.queues.keys().cloned())
            .collect();
        let gone: Vec<String> = st
            .inputs
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(old) = st.inputs.remove(&key) {
                retire_input(m, old);
            }
            self.health.source_cleared(&key);
        }
        // Sinks and queues nothing writes any more.
        let written: std::collections::HashSet<&str> =
            selected.iter().flat_map(|p| p.config.writes()).collect();
        let unused: Vec<String> = st
            .sinks
            .keys()
            .filter(|k| !written.contains(k.as_str()))
            .cloned()
            .collect();
        for name in unused {
            if let Some(old) = st.sinks.remove(&name) {
                retire_sink(m, &old, false);
            }
        }
        let read: std::collections::HashSet<&str> =
            selected.iter().map(|p| p.config.input.as_str()).collect();
        st.queues
            .retain(|name, _| written.contains(name.as_str()) || read.contains(name.as_str()));
        m.channels.retain(|(_, w)| w.upgrade().is_some());
        report
    }

    fn spawn_source(
        &self,
        name: &str,
        source: Box<dyn dab_api::Source>,
        slot: &SourceSlot,
        out: mpsc::Sender<Batch>,
        queue_gauges: &[crate::output::FillGauge],
    ) {
        let m = &self.metrics;
        m.sources.push((name.to_owned(), slot.stats.clone()));
        if let Some(c) = &slot.connector {
            m.connectors.push(c.clone());
        }
        m.channels.push((format!("source:{name}"), out.downgrade()));
        let admission: Arc<dyn Admission> = Arc::new(RuntimeAdmission {
            rss: self.rss.clone(),
            max_rss: self.opts.max_rss_bytes,
            out: out.downgrade(),
            queues: queue_gauges.to_vec(),
            high_water: self.opts.queue_high_water,
        });
        let ctx = SourceContext {
            name: name.to_owned(),
            out,
            shutdown: slot.stop.clone(),
            stats: slot.stats.clone(),
            admission,
        };
        let failures = self.failures.clone();
        let health = self.health.clone();
        let stop = slot.stop.clone();
        let stop_all = self.shutdown.clone();
        // A source that a reload started (the first start is `plan: None`)
        // and that fails (a port in use) must not stop everything else.
        let fatal = self.state_is_first.load(Ordering::Acquire);
        let metrics = self.metrics.clone();
        let stats = slot.stats.clone();
        let live = self.live_sources.clone();
        let state = self.state.clone();
        let tracker = self.tracker.clone();
        let name = name.to_owned();
        if source.announces_serving() {
            self.health.source_announcing(&name, slot.stats.clone());
        }
        live.fetch_add(1, Ordering::AcqRel);
        self.tracker.spawn(async move {
            let ended = source.run(ctx).await;
            health.source_ended(&name, &stats);
            // What the source read but could not hand on is lost for good:
            // it counts towards the forced-stop total (and exit status).
            metrics
                .abandoned
                .add(stats.abandoned.load(Ordering::Relaxed));
            // A source a reload started that failed is no end of input:
            // the process waits for a reload that fixes its binding.
            let by_itself = ended.is_ok() || fatal;
            if let Err(e) = ended {
                // A source a reload retired says nothing about the one
                // that replaced it under the same name.
                let retired = stop.is_cancelled() && !stop_all.is_cancelled();
                if !retired {
                    health.source_failed(&name, e.to_string());
                }
                if fatal {
                    tracing::error!(source = %name, error = %e, "source failed; shutting down");
                    if let Ok(mut f) = failures.lock() {
                        f.push(format!("source `{name}`: {e}"));
                    }
                    stop_all.cancel();
                } else {
                    metrics.reload.failed.add(1);
                    tracing::error!(source = %name, error = %e, "source started by a reload failed; the rest keeps running; fix the binding and reload");
                }
            }
            // The last source ended by itself (finite input): drain and end.
            if live.fetch_sub(1, Ordering::AcqRel) == 1 && by_itself {
                finish(&state, &tracker);
            }
        });
    }
}

fn retire_sink(m: &Metrics, old: &SinkSlot, metrics_live_on: bool) {
    if !metrics_live_on {
        m.sinks.retain(|s| !Arc::ptr_eq(s, &old.metrics));
    }
    if let Some(c) = &old.connector {
        m.connectors.retain(|x| !Arc::ptr_eq(x, c));
    }
}

fn retire_input(m: &Metrics, old: InputSlot) {
    m.inputs.retain(|i| !Arc::ptr_eq(i, &old.metrics));
    if let Some(s) = old.source {
        s.stop.cancel();
        m.sources.retain(|(_, st)| !Arc::ptr_eq(st, &s.stats));
        if let Some(c) = &s.connector {
            m.connectors.retain(|x| !Arc::ptr_eq(x, c));
        }
    }
}

/// Hands each batch of an input (a source or a memory queue) to the
/// pipelines reading it now; a reload changes the list between batches.
/// One reader gets the batch itself, several get shares (fan-out). When
/// the list is replaced, the senders of pipelines no longer listed are
/// dropped at once, so those pipelines drain and end. Every batch it
/// cannot hand on fails, counted by reason (`Undelivered`); a forced stop
/// fails and counts the batch in hand and everything still queued.
async fn route(
    mut input: Inlet,
    mut readers: watch::Receiver<Readers>,
    m: Arc<InputMetrics>,
    force: CancellationToken,
) {
    let mut current: Readers = readers.borrow_and_update().clone();
    let mut warned = false;
    loop {
        let batch = tokio::select! {
            b = input.recv() => b,
            Ok(()) = readers.changed() => {
                current = readers.borrow_and_update().clone();
                continue;
            }
            _ = force.cancelled() => {
                abandon_rest(input, &m.undelivered);
                return;
            }
        };
        let Some(batch) = batch else { return };
        if readers.has_changed().unwrap_or(false) {
            current = readers.borrow_and_update().clone();
        }
        let n = batch.len() as u64;
        match current.len() {
            0 => {
                if !warned {
                    warned = true;
                    tracing::warn!(input = %m.name, "no pipeline in this process reads this input; its events are reported failed (counted as no_reader)");
                }
                m.undelivered.add(Undelivered::NoReader, n);
                batch.ack.fail();
            }
            1 => {
                let send = current[0].1.send(batch);
                let r = tokio::select! {
                    biased;
                    _ = force.cancelled() => {
                        // The batch in hand is dropped with the send.
                        m.undelivered.add(Undelivered::Abandoned, n);
                        abandon_rest(input, &m.undelivered);
                        return;
                    }
                    r = send => r,
                };
                if let Err(e) = r {
                    m.undelivered
                        .add(Undelivered::reader_closed(force.is_cancelled()), n);
                    e.0.ack.fail();
                }
            }
            _ => {
                let hand_on = async {
                    let mut delivered = true;
                    for (_, r) in &current {
                        if let Err(e) = r.send(batch.share()).await {
                            e.0.ack.fail();
                            delivered = false;
                        }
                    }
                    delivered
                };
                let delivered = tokio::select! {
                    biased;
                    _ = force.cancelled() => false,
                    d = hand_on => d,
                };
                if delivered {
                    batch.ack.complete();
                } else {
                    m.undelivered
                        .add(Undelivered::reader_closed(force.is_cancelled()), n);
                    batch.ack.fail();
                }
            }
        }
    }
}

/// Forced stop: fails and counts every batch still queued at `input`.
fn abandon_rest(input: Inlet, counts: &UndeliveredCounts) {
    for b in input.close_and_drain() {
        counts.add(Undelivered::Abandoned, b.len() as u64);
        b.ack.fail();
    }
}
