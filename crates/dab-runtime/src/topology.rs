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
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::RuntimeAdmission;
use crate::metrics::{rss_bytes, Metrics, PipelineMetrics, QueueMetrics, SinkMetrics};
use crate::output::{memory_queue, OutputTx, QueueReader, QueueWriter};
use crate::pipeline::{fan_out, Inlet, Output, PipelineTask, Screen};
use crate::reliability::{Limits, Tracker};
use crate::sink::SinkTask;
use crate::stages::compile;

/// The connector kinds this build knows, handed in by the CLI.
pub struct Registry {
    sources: Vec<Box<dyn SourceFactory>>,
    sinks: Vec<Box<dyn SinkFactory>>,
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
        Registry { sources, sinks }
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
}

/// A started topology.
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
}

impl Running {
    /// Graceful: sources stop reading; everything read is drained.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Forced: sinks stop retrying; what is undelivered is reported failed.
    pub fn force(&self) {
        self.shutdown.cancel();
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

    /// Errors sources ended with (a port in use, a socket that vanished).
    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().map(|f| f.clone()).unwrap_or_default()
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

/// Compiles and starts a plan. Must run inside a tokio runtime.
pub fn start(plan: &Plan, registry: &Registry, opts: &RunOptions) -> Result<Running, StartError> {
    let pipelines: Vec<&Pipeline> = plan
        .pipelines
        .iter()
        .filter(|p| opts.service.as_ref().is_none_or(|s| &p.service == s))
        .collect();
    if let (Some(s), true) = (&opts.service, pipelines.is_empty()) {
        return Err(StartError::NoPipelines(s.clone()));
    }
    let empty = BTreeMap::new();
    let endpoint = |name: &str| plan.endpoints.get(name);
    let cap = opts.channel_batches.max(1);

    let shutdown = CancellationToken::new();
    let force = CancellationToken::new();
    let background = CancellationToken::new();
    let tracker = TaskTracker::new();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut metrics = Metrics::default();
    let reliability = opts
        .reliability
        .then(|| Arc::new(Tracker::new(Limits::default())));
    let channels: Mutex<Vec<(String, mpsc::WeakSender<Batch>)>> = Mutex::new(Vec::new());

    // Readers of each name, in plan order.
    let mut readers: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, p) in pipelines.iter().enumerate() {
        readers.entry(p.config.input.as_str()).or_default().push(i);
    }

    // Memory queues used by the selected pipelines.
    let mut queue_writers: HashMap<&str, QueueWriter> = HashMap::new();
    let mut queue_readers: HashMap<&str, QueueReader> = HashMap::new();
    // Queues bound to Kafka topics: a producer for the writers, a consumer
    // group per reading pipeline.
    let mut kafka_queues: HashMap<&str, &BTreeMap<String, ConfigValue>> = HashMap::new();
    let used = pipelines
        .iter()
        .flat_map(|p| std::iter::once(p.config.input.as_str()).chain(p.config.writes()));
    for name in used {
        let Some(ep) = endpoint(name) else { continue };
        if ep.role() != Role::Queue || queue_writers.contains_key(name) {
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
        metrics.queues.push(qm.clone());
        let (w, r) = memory_queue(capacity, capacity_bytes, qm);
        queue_writers.insert(name, w);
        queue_readers.insert(name, r);
    }
    let queue_gauges: Vec<_> = queue_writers
        .values()
        .map(QueueWriter::fill_gauge)
        .collect();

    // Sinks used by the selected pipelines.
    let mut sink_txs: HashMap<&str, mpsc::Sender<Batch>> = HashMap::new();
    let mut sink_tasks = Vec::new();
    for p in &pipelines {
        for name in p.config.writes() {
            let Some(ep) = endpoint(name) else { continue };
            if sink_txs.contains_key(name) {
                continue;
            }
            let (kind, fields) = match (kafka_queues.get(name), ep) {
                (Some(fields), _) => ("kafka", *fields),
                (None, _) if ep.role() != Role::Sink => continue,
                (None, Endpoint::Bound { kind, fields, .. }) => (kind.as_str(), fields),
                (None, _) => (builtin_kind(name), &empty),
            };
            let factory = registry
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
            if let Some(m) = sink.metrics() {
                metrics.connectors.push(m);
            }
            let (tx, rx) = mpsc::channel(cap);
            if let Ok(mut c) = channels.lock() {
                c.push((format!("sink:{name}"), tx.downgrade()));
            }
            let sm = Arc::new(SinkMetrics {
                name: name.to_owned(),
                ..SinkMetrics::default()
            });
            metrics.sinks.push(sm.clone());
            sink_txs.insert(name, tx);
            sink_tasks.push(SinkTask {
                sink,
                input: rx,
                metrics: sm,
                force: force.clone(),
                reliability: reliability.clone(),
                coalesce: coalesce_of(fields),
            });
        }
    }

    let output_for = |name: &str| -> Option<OutputTx> {
        if let Some(tx) = sink_txs.get(name) {
            return Some(OutputTx::Channel(tx.clone()));
        }
        queue_writers.get(name).map(|w| OutputTx::Queue(w.clone()))
    };

    // Pipeline inputs: a channel per reader, except a queue read by one
    // pipeline, which that pipeline reads directly.
    let mut inlets: Vec<Option<Inlet>> = (0..pipelines.len()).map(|_| None).collect();
    let mut source_outs: Vec<(SourceSpec<'_>, mpsc::Sender<Batch>)> = Vec::new();
    let mut fanouts = Vec::new();
    for (&name, idxs) in &readers {
        if let Some(fields) = kafka_queues.get(name) {
            // Each reading pipeline is its own consumer group, so different
            // pipelines each get every event and replicas of one pipeline
            // share the partitions (SPEC section 2).
            for &i in idxs {
                let (tx, rx) = mpsc::channel(cap);
                let id = &pipelines[i].id;
                if let Ok(mut c) = channels.lock() {
                    c.push((format!("pipeline:{id}"), tx.downgrade()));
                }
                inlets[i] = Some(Inlet::Channel(rx));
                let mut fields = (*fields).clone();
                fields.insert(
                    "group".to_owned(),
                    ConfigValue::Str(format!("dab.{name}.{id}")),
                );
                source_outs.push((
                    SourceSpec {
                        name: format!("{name}:{id}"),
                        kind: "kafka",
                        fields: std::borrow::Cow::Owned(fields),
                    },
                    tx,
                ));
            }
            continue;
        }
        let is_queue = queue_readers.contains_key(name);
        if is_queue && idxs.len() == 1 {
            if let Some(q) = queue_readers.remove(name) {
                inlets[idxs[0]] = Some(Inlet::Queue(q));
            }
            continue;
        }
        let mut reader_txs = Vec::new();
        for &i in idxs {
            let (tx, rx) = mpsc::channel(cap);
            if let Ok(mut c) = channels.lock() {
                c.push((format!("pipeline:{}", pipelines[i].id), tx.downgrade()));
            }
            inlets[i] = Some(Inlet::Channel(rx));
            reader_txs.push(tx);
        }
        if let Some(q) = queue_readers.remove(name) {
            fanouts.push((Inlet::Queue(q), reader_txs));
        } else {
            let Some(ep) = endpoint(name) else { continue };
            let spec = match ep {
                Endpoint::Bound { kind, fields, .. } => SourceSpec {
                    name: name.to_owned(),
                    kind: kind.as_str(),
                    fields: std::borrow::Cow::Borrowed(fields),
                },
                _ => SourceSpec {
                    name: name.to_owned(),
                    kind: builtin_kind(name),
                    fields: std::borrow::Cow::Borrowed(&empty),
                },
            };
            if reader_txs.len() == 1 {
                if let Some(tx) = reader_txs.pop() {
                    source_outs.push((spec, tx));
                }
            } else {
                let (tx, rx) = mpsc::channel(cap);
                source_outs.push((spec, tx));
                fanouts.push((Inlet::Channel(rx), reader_txs));
            }
        }
    }
    // Queues nobody here reads (W001, or read by a service run elsewhere):
    // drain them so writers never block forever, and report the copies as
    // not delivered.
    for (name, mut q) in queue_readers.drain() {
        tracing::warn!(queue = name, "memory queue has no reader in this process; its events are dropped and reported failed");
        let force = force.clone();
        tracker.spawn(async move {
            loop {
                let b = tokio::select! {
                    b = q.recv() => b,
                    _ = force.cancelled() => None,
                };
                let Some(b) = b else { return };
                b.ack.fail();
            }
        });
    }

    // Build every source before starting anything, so a bad setting fails
    // the start, not half a topology.
    let mut sources = Vec::new();
    for (spec, out) in source_outs {
        let factory = registry
            .sources
            .iter()
            .find(|f| f.kind() == spec.kind)
            .ok_or_else(|| StartError::UnknownKind {
                name: spec.name.clone(),
                role: "source",
                kind: spec.kind.to_owned(),
            })?;
        let source = factory.build(&spec.name, &spec.fields)?;
        if let Some(m) = source.metrics() {
            metrics.connectors.push(m);
        }
        sources.push((spec.name, source, out));
    }

    let mut pipeline_tasks = Vec::new();
    for (i, p) in pipelines.iter().enumerate() {
        let Some(input) = inlets[i].take() else {
            continue;
        };
        let c = &p.config;
        let mut labels: Vec<String> = c.stages.iter().map(|s| s.label()).collect();
        for o in &c.outputs {
            labels.extend(
                o.modifiers
                    .iter()
                    .map(|m| format!("{} -> {}", m.label(), o.target)),
            );
        }
        let pm = Arc::new(PipelineMetrics::new(
            &p.id,
            labels,
            c.outputs.iter().map(|o| o.target.clone()).collect(),
        ));
        metrics.pipelines.push(pm.clone());
        let on_error = || c.on_error.as_deref().and_then(output_for);
        let bad_key = |e: String| StartError::Stage {
            pipeline: p.id.clone(),
            reason: e,
        };
        let stages = c
            .stages
            .iter()
            .map(|s| compile(s, output_for, on_error()).map_err(bad_key))
            .collect::<Result<Vec<_>, _>>()?;
        let mut outputs = Vec::new();
        for o in &c.outputs {
            let Some(tx) = output_for(&o.target) else {
                continue;
            };
            outputs.push(Output {
                tx,
                modifiers: o
                    .modifiers
                    .iter()
                    .map(|s| compile(s, output_for, on_error()).map_err(bad_key))
                    .collect::<Result<Vec<_>, _>>()?,
            });
        }
        // Kafka input can carry messages that are not events.
        let kafka_input = kafka_queues.contains_key(c.input.as_str())
            || matches!(endpoint(&c.input), Some(Endpoint::Bound { kind, .. }) if kind == "kafka");
        let screen = kafka_input.then(|| Screen {
            on_error: on_error(),
        });
        pipeline_tasks.push(PipelineTask {
            input,
            screen,
            stages,
            outputs,
            when_full: c.when_full,
            metrics: pm,
            force: force.clone(),
            reliability: reliability.clone(),
        });
    }

    // Everything is built; now start it. No sender stays behind here.
    drop(sink_txs);
    drop(queue_writers);
    let rss = Arc::new(AtomicU64::new(rss_bytes()));
    {
        let rss = rss.clone();
        let stop = background.clone();
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
    for t in sink_tasks {
        tracker.spawn(t.run());
    }
    for t in pipeline_tasks {
        tracker.spawn(t.run());
    }
    for (inlet, readers) in fanouts {
        tracker.spawn(fan_out(inlet, readers, force.clone()));
    }
    for (name, source, out) in sources {
        let stats = Arc::new(SourceStats::default());
        metrics.sources.push((name.clone(), stats.clone()));
        let admission: Arc<dyn Admission> = Arc::new(RuntimeAdmission {
            rss: rss.clone(),
            max_rss: opts.max_rss_bytes,
            out: out.downgrade(),
            queues: queue_gauges.clone(),
            high_water: opts.queue_high_water,
        });
        if let Ok(mut c) = channels.lock() {
            c.push((format!("source:{name}"), out.downgrade()));
        }
        let ctx = SourceContext {
            name: name.clone(),
            out,
            shutdown: shutdown.child_token(),
            stats,
            admission,
        };
        let failures = failures.clone();
        let stop_all = shutdown.clone();
        tracker.spawn(async move {
            if let Err(e) = source.run(ctx).await {
                tracing::error!(source = %name, error = %e, "source failed; shutting down");
                if let Ok(mut f) = failures.lock() {
                    f.push(format!("source `{name}`: {e}"));
                }
                stop_all.cancel();
            }
        });
    }
    tracker.close();
    metrics.channels = channels;
    Ok(Running {
        shutdown,
        force,
        tracker,
        background,
        metrics: Arc::new(metrics),
        reliability,
        failures,
    })
}
