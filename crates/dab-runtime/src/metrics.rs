//! Counters and gauges of a running topology, and their Prometheus text
//! rendering (SPEC section 5: per pipeline and stage events in/out, drops by
//! reason, bytes, channel depth, batch latency; process RSS). Plain atomics
//! on the hot path; rendering walks them on scrape.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dab_api::connector::SourceStats;
use dab_api::metrics::{ConnectorMetrics, Sample};
use dab_api::Batch;
use tokio::sync::mpsc::WeakSender;

/// Why an event was dropped on purpose. Every drop is counted by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    Filter,
    Sample,
    RateLimit,
    /// A `when_full = drop_newest` output was full.
    OutputFull,
    /// A sink gave up on a batch at forced shutdown.
    SinkFailed,
    /// `VerifySignature` failed and the pipeline has no `OnError`.
    BadSignature,
    /// `Dedup` saw the UID within its window.
    Duplicate,
    /// Input a source could not decode (a Kafka message that is not an
    /// event), and the pipeline has no `OnError`.
    Undecodable,
    /// A source gave up sending a batch again (a Kafka batch past
    /// `max_redeliveries`), and the pipeline has no `OnError`.
    RetriesExhausted,
    /// `In(Name, when_full = drop_newest)`: this pipeline's input buffer
    /// was full, so its copy of a batch was dropped.
    InputFull,
    /// An event for windows that had all closed (past `lateness`), in a
    /// window with no `late = Name` target.
    Late,
    /// An event that would have opened a (window, group) past
    /// `max_groups`.
    WindowOverflow,
    /// `Enrich(..., miss = drop)` found no row for the event.
    EnrichMiss,
    /// `Enrich(..., miss = error)` found no row, and the pipeline has no
    /// `OnError`.
    EnrichError,
    /// `Join(..., miss = drop)`: an event whose bound passed with no match.
    JoinMiss,
}

impl DropReason {
    pub const ALL: [DropReason; 15] = [
        DropReason::Filter,
        DropReason::Sample,
        DropReason::RateLimit,
        DropReason::OutputFull,
        DropReason::SinkFailed,
        DropReason::BadSignature,
        DropReason::Duplicate,
        DropReason::Undecodable,
        DropReason::RetriesExhausted,
        DropReason::InputFull,
        DropReason::Late,
        DropReason::WindowOverflow,
        DropReason::EnrichMiss,
        DropReason::EnrichError,
        DropReason::JoinMiss,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Filter => "filter",
            DropReason::Sample => "sample",
            DropReason::RateLimit => "rate_limit",
            DropReason::OutputFull => "output_full",
            DropReason::SinkFailed => "sink_failed",
            DropReason::BadSignature => "bad_signature",
            DropReason::Duplicate => "duplicate",
            DropReason::Undecodable => "undecodable",
            DropReason::InputFull => "input_full",
            DropReason::Late => "late",
            DropReason::WindowOverflow => "window_overflow",
            DropReason::RetriesExhausted => "retries_exhausted",
            DropReason::EnrichMiss => "enrich_miss",
            DropReason::EnrichError => "enrich_error",
            DropReason::JoinMiss => "join_miss",
        }
    }
}

/// Why events were *not* delivered (their sources hear "failed"). These
/// are failures, not drops on purpose ([`DropReason`]); each is counted
/// where it happens, so that no loss is silent (SPEC section 11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Undelivered {
    /// An input that no pipeline in this process reads: a memory queue
    /// whose readers a reload removed, or that a service run elsewhere
    /// reads (W004).
    NoReader,
    /// The next task's input was closed before it took the batch (that
    /// task ended or died).
    ReaderGone,
    /// A forced stop abandoned them: the batch in hand, or batches still
    /// queued at the task's input.
    Abandoned,
}

impl Undelivered {
    pub const ALL: [Undelivered; 3] = [
        Undelivered::NoReader,
        Undelivered::ReaderGone,
        Undelivered::Abandoned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Undelivered::NoReader => "no_reader",
            Undelivered::ReaderGone => "reader_gone",
            Undelivered::Abandoned => "abandoned",
        }
    }

    /// A send that failed because the next task's input was closed: by a
    /// forced stop (`Abandoned`), or because that task ended or died.
    pub fn reader_closed(forced: bool) -> Undelivered {
        if forced {
            Undelivered::Abandoned
        } else {
            Undelivered::ReaderGone
        }
    }

    fn index(self) -> usize {
        match self {
            Undelivered::NoReader => 0,
            Undelivered::ReaderGone => 1,
            Undelivered::Abandoned => 2,
        }
    }
}

/// Events a forced stop abandoned anywhere in the process (routers,
/// pipelines, sinks, sources), each also counted under its own place.
/// `dab run` exits non-zero when this is not 0 (docs/runtime.md).
/// Cloning shares the count.
#[derive(Debug, Default, Clone)]
pub struct AbandonedTotal(Arc<Counter>);

impl AbandonedTotal {
    pub fn add(&self, n: u64) {
        self.0.add(n);
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// Undelivered events of one place, by reason; abandoned ones also go to
/// the process total.
#[derive(Debug, Default)]
pub struct UndeliveredCounts {
    by_reason: [Counter; 3],
    total: AbandonedTotal,
}

impl UndeliveredCounts {
    /// Counts that add abandoned events to `total` as well.
    pub fn new(total: AbandonedTotal) -> UndeliveredCounts {
        UndeliveredCounts {
            by_reason: Default::default(),
            total,
        }
    }

    pub fn add(&self, r: Undelivered, n: u64) {
        self.by_reason[r.index()].add(n);
        if r == Undelivered::Abandoned {
            self.total.add(n);
        }
    }

    pub fn get(&self, r: Undelivered) -> u64 {
        self.by_reason[r.index()].get()
    }
}

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that is set, not added to.
#[derive(Debug, Default)]
pub struct Gauge(std::sync::atomic::AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Batch latency through a pipeline, in fixed buckets (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_ns: AtomicU64,
    count: AtomicU64,
}

const LATENCY_BOUNDS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            bounds: LATENCY_BOUNDS,
            counts: LATENCY_BOUNDS.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| s <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct StageMetrics {
    pub label: String,
    pub events_in: Counter,
    pub events_out: Counter,
    /// Events a `Route` took (`dab_route_events_total`).
    pub routed: Counter,
}

#[derive(Debug, Default)]
pub struct OutputMetrics {
    pub target: String,
    pub events: Counter,
    pub dropped_full: Counter,
    /// Time spent waiting for this output's buffer: which output holds the
    /// others back (SPEC section 5).
    pub blocked_ns: Counter,
}

#[derive(Debug, Default)]
pub struct PipelineMetrics {
    pub id: String,
    pub events_in: Counter,
    pub bytes_in: Counter,
    pub events_out: Counter,
    dropped: [Counter; DropReason::ALL.len()],
    /// Events that failed a stage (a bad signature), routed or dropped.
    pub failed_events: Counter,
    pub stages: Vec<StageMetrics>,
    pub outputs: Vec<OutputMetrics>,
    pub latency: Histogram,
    /// Events this pipeline failed to hand on (an output or `OnError`
    /// gone, a forced stop), by reason.
    pub undelivered: UndeliveredCounts,
    /// Samples of ops that keep their own (`Enrich`: hits, misses, its
    /// table), rendered with the connectors' samples.
    pub ops: Vec<Arc<dyn ConnectorMetrics>>,
    /// Set for a pipeline with `Window(...).Aggregate(...)`.
    pub window: Option<WindowMetrics>,
}

/// The window stage of a pipeline and its checkpoints (SPEC section 9).
#[derive(Debug, Default)]
pub struct WindowMetrics {
    /// Arrival time minus the watermark, ns (event time only).
    pub watermark_lag_ns: Gauge,
    /// Open (window, group) entries.
    pub open_groups: Gauge,
    /// Result events emitted, final and early.
    pub results: Counter,
    /// Events recognised as already absorbed (a replayed Kafka offset, a
    /// UID seen), acknowledged without counting them again.
    pub redelivered: Counter,
    /// Bytes the last checkpoint wrote for this window.
    pub checkpoint_bytes: Gauge,
    /// Duration of the last checkpoint, ns.
    pub checkpoint_ns: Gauge,
    /// Unix time of the last durable checkpoint, ns (0: none yet).
    pub checkpoint_at_ns: Gauge,
    pub checkpoints: Counter,
    pub checkpoint_failures: Counter,
    /// 1 once a failed write left the state store unusable (every later
    /// checkpoint fails until `dab run` restarts).
    pub state_unusable: Gauge,
    /// Input partitions whose state this stage holds now (state per Kafka
    /// partition).
    pub partitions: Gauge,
    /// Partition states restored on assignment (from the local store and
    /// the changelog).
    pub restores: Counter,
    /// Changelog records read by those restores.
    pub restored_records: Counter,
    /// Events of a partition this process no longer holds (read before a
    /// revoke): not absorbed; the partition's next owner reads them.
    pub not_owned: Counter,
}

impl PipelineMetrics {
    pub fn new(id: &str, stages: Vec<String>, outputs: Vec<String>) -> PipelineMetrics {
        PipelineMetrics {
            id: id.to_owned(),
            stages: stages
                .into_iter()
                .map(|label| StageMetrics {
                    label,
                    ..StageMetrics::default()
                })
                .collect(),
            outputs: outputs
                .into_iter()
                .map(|target| OutputMetrics {
                    target,
                    ..OutputMetrics::default()
                })
                .collect(),
            ..PipelineMetrics::default()
        }
    }

    /// Metrics whose abandoned events also count in `total`.
    pub fn with_total(mut self, total: AbandonedTotal) -> PipelineMetrics {
        self.undelivered = UndeliveredCounts::new(total);
        self
    }

    /// Metrics with the samples of the pipeline's ops that keep their own.
    pub fn with_ops(mut self, ops: Vec<Arc<dyn ConnectorMetrics>>) -> PipelineMetrics {
        self.ops = ops;
        self
    }

    pub fn dropped(&self, r: DropReason, n: u64) {
        let i = DropReason::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.dropped[i].add(n);
    }

    pub fn failed(&self, n: u64) {
        self.failed_events.add(n);
    }

    pub fn dropped_count(&self, r: DropReason) -> u64 {
        let i = DropReason::ALL.iter().position(|x| *x == r).unwrap_or(0);
        self.dropped[i].get()
    }
}

#[derive(Debug, Default)]
pub struct SinkMetrics {
    pub name: String,
    pub events: Counter,
    pub bytes: Counter,
    pub batches: Counter,
    pub errors: Counter,
    /// Batches given up on (forced shutdown); their sources see a failed ack.
    pub failed_batches: Counter,
    pub failed_events: Counter,
    /// Events written again after a failed write or flush (a rewind).
    pub rewritten_events: Counter,
    /// Events the peer refused for good (SPEC section 11) ...
    pub rejected_events: Counter,
    /// ... of which sent to the pipeline's `OnError` target ...
    pub rejected_rerouted: Counter,
    /// ... and dropped (reason `rejected`), for want of one.
    pub dropped_rejected: Counter,
    /// The sink's circuit breaker: state and transitions.
    pub breaker: crate::breaker::BreakerGauge,
    /// The process total that `failed_events` also counts into.
    pub abandoned: AbandonedTotal,
}

impl SinkMetrics {
    /// Counts events the sink failed (their sources hear "failed"): given
    /// up at a forced stop, left in its input by one, or refused for good
    /// with their `OnError` target gone.
    pub fn gave_up(&self, batches: u64, events: u64) {
        self.failed_batches.add(batches);
        self.failed_events.add(events);
        self.abandoned.add(events);
    }
}

/// What the router of one input (a source, a memory queue, a Kafka
/// queue's reader) failed to hand on, by reason.
#[derive(Debug)]
pub struct InputMetrics {
    pub name: String,
    pub undelivered: UndeliveredCounts,
}

#[derive(Debug, Default)]
pub struct QueueMetrics {
    pub name: String,
    pub events: Counter,
    pub depth_events: AtomicU64,
    pub capacity_events: u64,
}

/// Everything a topology exports.
#[derive(Debug, Default)]
pub struct Metrics {
    pub pipelines: Live<Arc<PipelineMetrics>>,
    pub sources: Live<(String, Arc<SourceStats>)>,
    /// Routers, by input.
    pub inputs: Live<Arc<InputMetrics>>,
    pub sinks: Live<Arc<SinkMetrics>>,
    pub queues: Live<Arc<QueueMetrics>>,
    /// Bounded channels, for depth gauges: (owner, weak sender).
    pub channels: Live<(String, WeakSender<Batch>)>,
    /// Connectors' own metrics (Kafka lag, commits, produce latency).
    pub connectors: Live<Arc<dyn ConnectorMetrics>>,
    /// Hot reloads (SPEC section 5).
    pub reload: ReloadMetrics,
    /// Events a forced stop abandoned, over the whole process.
    pub abandoned: AbandonedTotal,
}

/// A list a reload changes while scrapes read it.
#[derive(Debug)]
pub struct Live<T>(Mutex<Vec<T>>);

impl<T> Default for Live<T> {
    fn default() -> Self {
        Live(Mutex::new(Vec::new()))
    }
}

impl<T: Clone> Live<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn push(&self, v: T) {
        self.lock().push(v);
    }

    pub fn retain(&self, keep: impl FnMut(&T) -> bool) {
        self.lock().retain(keep);
    }

    pub fn snapshot(&self) -> Vec<T> {
        self.lock().clone()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Reload outcomes.
#[derive(Debug, Default)]
pub struct ReloadMetrics {
    pub ok: Counter,
    /// Invalid sets (diagnostics) and pieces that failed to build.
    pub failed: Counter,
    /// Unix seconds of the last successful reload (0: none yet).
    pub last_success_unix: AtomicU64,
    /// Duration of the last reload, check to serving, in microseconds.
    pub last_duration_us: AtomicU64,
    pub added: Counter,
    pub rebuilt: Counter,
    pub removed: Counter,
}

/// Source counters of the limits against abusive producers (issue 11
/// item 5): name, help, and the counter.
type GuardCounter = fn(&SourceStats) -> &AtomicU64;
const SOURCE_GUARDS: [(&str, &str, GuardCounter); 3] = [
    (
        "dab_source_connections_refused_total",
        "Connections a listener closed at once because max_connections were open",
        |s| &s.connections_refused,
    ),
    (
        "dab_source_timeouts_total",
        "Connections or requests closed because the client was too slow (HTTP header_timeout, body_timeout)",
        |s| &s.timeouts,
    ),
    (
        "dab_source_reserved_names_total",
        "Events whose type or tag key claimed a name reserved to DAB (dab.*) and was renamed at ingest",
        |s| &s.reserved_names,
    ),
];

/// Resident set size of this process in bytes (Linux), 0 elsewhere.
pub fn rss_bytes() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let pipelines = self.pipelines.snapshot();
        let sources = self.sources.snapshot();
        let inputs = self.inputs.snapshot();
        let sinks = self.sinks.snapshot();
        let queues = self.queues.snapshot();
        let channels = self.channels.snapshot();
        let connectors = self.connectors.snapshot();
        let mut o = String::with_capacity(4096);
        let family = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            &mut o,
            "dab_pipeline_events_in_total",
            "counter",
            "Events a pipeline received",
        );
        for p in &pipelines {
            let _ = writeln!(
                o,
                "dab_pipeline_events_in_total{{pipeline=\"{}\"}} {}",
                esc(&p.id),
                p.events_in.get()
            );
        }
        family(
            &mut o,
            "dab_pipeline_bytes_in_total",
            "counter",
            "Bytes a pipeline received",
        );
        for p in &pipelines {
            let _ = writeln!(
                o,
                "dab_pipeline_bytes_in_total{{pipeline=\"{}\"}} {}",
                esc(&p.id),
                p.bytes_in.get()
            );
        }
        family(
            &mut o,
            "dab_pipeline_events_out_total",
            "counter",
            "Events a pipeline handed to its outputs",
        );
        for p in &pipelines {
            let _ = writeln!(
                o,
                "dab_pipeline_events_out_total{{pipeline=\"{}\"}} {}",
                esc(&p.id),
                p.events_out.get()
            );
        }
        family(
            &mut o,
            "dab_pipeline_dropped_total",
            "counter",
            "Events dropped on purpose, by reason",
        );
        for p in &pipelines {
            for r in DropReason::ALL {
                let _ = writeln!(
                    o,
                    "dab_pipeline_dropped_total{{pipeline=\"{}\",reason=\"{}\"}} {}",
                    esc(&p.id),
                    r.as_str(),
                    p.dropped_count(r)
                );
            }
        }
        family(
            &mut o,
            "dab_pipeline_failed_events_total",
            "counter",
            "Events that failed a stage (a bad signature) or were undecodable, sent to OnError or dropped",
        );
        for p in &pipelines {
            let _ = writeln!(
                o,
                "dab_pipeline_failed_events_total{{pipeline=\"{}\"}} {}",
                esc(&p.id),
                p.failed_events.get()
            );
        }
        family(
            &mut o,
            "dab_pipeline_undelivered_events_total",
            "counter",
            "Events a pipeline failed to hand on (their sources heard failed), by reason",
        );
        for p in &pipelines {
            for r in [Undelivered::ReaderGone, Undelivered::Abandoned] {
                let _ = writeln!(
                    o,
                    "dab_pipeline_undelivered_events_total{{pipeline=\"{}\",reason=\"{}\"}} {}",
                    esc(&p.id),
                    r.as_str(),
                    p.undelivered.get(r)
                );
            }
        }
        family(
            &mut o,
            "dab_stage_events_in_total",
            "counter",
            "Events into a stage",
        );
        for p in &pipelines {
            for (i, s) in p.stages.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "dab_stage_events_in_total{{pipeline=\"{}\",stage=\"{i}\",op=\"{}\"}} {}",
                    esc(&p.id),
                    esc(&s.label),
                    s.events_in.get()
                );
            }
        }
        family(
            &mut o,
            "dab_stage_events_out_total",
            "counter",
            "Events out of a stage",
        );
        for p in &pipelines {
            for (i, s) in p.stages.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "dab_stage_events_out_total{{pipeline=\"{}\",stage=\"{i}\",op=\"{}\"}} {}",
                    esc(&p.id),
                    esc(&s.label),
                    s.events_out.get()
                );
            }
        }
        family(
            &mut o,
            "dab_route_events_total",
            "counter",
            "Events a Route took out of its pipeline, to its target",
        );
        for p in &pipelines {
            for (i, s) in p.stages.iter().enumerate() {
                if s.label.starts_with("Route(") {
                    let _ = writeln!(
                        o,
                        "dab_route_events_total{{pipeline=\"{}\",stage=\"{i}\",op=\"{}\"}} {}",
                        esc(&p.id),
                        esc(&s.label),
                        s.routed.get()
                    );
                }
            }
        }
        let windows: Vec<(&str, &WindowMetrics)> = pipelines
            .iter()
            .filter_map(|p| p.window.as_ref().map(|w| (p.id.as_str(), w)))
            .collect();
        type Read = fn(&WindowMetrics) -> i64;
        let window_families: [(&str, &str, &str, Read); 14] = [
            ("dab_window_watermark_lag_seconds", "gauge", "Arrival time minus the watermark of a window stage", |w| w.watermark_lag_ns.get()),
            ("dab_window_open_groups", "gauge", "Open (window, group) entries", |w| w.open_groups.get()),
            ("dab_window_results_total", "counter", "Result events a window stage emitted", |w| w.results.get() as i64),
            ("dab_window_redelivered_total", "counter", "Events recognised as already absorbed (replayed offset or UID seen) and not counted again", |w| w.redelivered.get() as i64),
            ("dab_checkpoint_bytes", "gauge", "Bytes the last checkpoint of a window stage wrote", |w| w.checkpoint_bytes.get()),
            ("dab_checkpoint_duration_seconds", "gauge", "Duration of the last checkpoint", |w| w.checkpoint_ns.get()),
            ("dab_checkpoint_last_unixtime_seconds", "gauge", "When the last durable checkpoint was committed (0: none yet)", |w| w.checkpoint_at_ns.get()),
            ("dab_checkpoints_total", "counter", "Durable checkpoints committed", |w| w.checkpoints.get() as i64),
            ("dab_checkpoint_failures_total", "counter", "Checkpoints that failed; the stage went back to the last durable one", |w| w.checkpoint_failures.get() as i64),
            ("dab_checkpoint_store_unusable", "gauge", "1 once a failed write left the state store unusable: every later checkpoint fails until dab restarts", |w| w.state_unusable.get()),
            ("dab_window_partitions", "gauge", "Input partitions whose window state this process holds", |w| w.partitions.get()),
            ("dab_window_restores_total", "counter", "Partition states restored on assignment", |w| w.restores.get() as i64),
            ("dab_window_restored_records_total", "counter", "Changelog records read by restores", |w| w.restored_records.get() as i64),
            ("dab_window_not_owned_total", "counter", "Events of a partition revoked from this process, left to its next owner", |w| w.not_owned.get() as i64),
        ];
        for (name, kind, help, read) in window_families {
            family(&mut o, name, kind, help);
            for (id, w) in &windows {
                let v = read(w);
                if name.ends_with("_seconds") {
                    let _ = writeln!(o, "{name}{{pipeline=\"{}\"}} {}", esc(id), v as f64 / 1e9);
                } else {
                    let _ = writeln!(o, "{name}{{pipeline=\"{}\"}} {v}", esc(id));
                }
            }
        }
        family(
            &mut o,
            "dab_output_blocked_seconds_total",
            "counter",
            "Time a pipeline waited on one output's full buffer",
        );
        for p in &pipelines {
            for out in &p.outputs {
                let _ = writeln!(
                    o,
                    "dab_output_blocked_seconds_total{{pipeline=\"{}\",output=\"{}\"}} {}",
                    esc(&p.id),
                    esc(&out.target),
                    out.blocked_ns.get() as f64 / 1e9
                );
            }
        }
        family(
            &mut o,
            "dab_pipeline_batch_latency_seconds",
            "histogram",
            "Time from a batch's arrival in a pipeline to its hand-off to the outputs",
        );
        for p in &pipelines {
            let h = &p.latency;
            let mut cum = 0;
            for (b, c) in h.bounds.iter().zip(&h.counts) {
                cum += c.load(Ordering::Relaxed);
                let _ = writeln!(
                    o,
                    "dab_pipeline_batch_latency_seconds_bucket{{pipeline=\"{}\",le=\"{b}\"}} {cum}",
                    esc(&p.id)
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "dab_pipeline_batch_latency_seconds_bucket{{pipeline=\"{}\",le=\"+Inf\"}} {count}",
                esc(&p.id)
            );
            let _ = writeln!(
                o,
                "dab_pipeline_batch_latency_seconds_sum{{pipeline=\"{}\"}} {}",
                esc(&p.id),
                h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
            );
            let _ = writeln!(
                o,
                "dab_pipeline_batch_latency_seconds_count{{pipeline=\"{}\"}} {count}",
                esc(&p.id)
            );
        }
        family(
            &mut o,
            "dab_source_events_total",
            "counter",
            "Events a source decoded and sent on",
        );
        for (n, s) in &sources {
            let _ = writeln!(
                o,
                "dab_source_events_total{{source=\"{}\"}} {}",
                esc(n),
                s.events.load(Ordering::Relaxed)
            );
        }
        family(
            &mut o,
            "dab_source_bytes_total",
            "counter",
            "Bytes a source decoded",
        );
        for (n, s) in &sources {
            let _ = writeln!(
                o,
                "dab_source_bytes_total{{source=\"{}\"}} {}",
                esc(n),
                s.bytes.load(Ordering::Relaxed)
            );
        }
        family(
            &mut o,
            "dab_source_decode_errors_total",
            "counter",
            "Input a source could not decode",
        );
        for (n, s) in &sources {
            let _ = writeln!(
                o,
                "dab_source_decode_errors_total{{source=\"{}\"}} {}",
                esc(n),
                s.decode_errors.load(Ordering::Relaxed)
            );
        }
        family(
            &mut o,
            "dab_source_refused_total",
            "counter",
            "Work a source refused under admission control",
        );
        for (n, s) in &sources {
            let _ = writeln!(
                o,
                "dab_source_refused_total{{source=\"{}\"}} {}",
                esc(n),
                s.refused.load(Ordering::Relaxed)
            );
        }
        for (metric, help, counter) in SOURCE_GUARDS {
            family(&mut o, metric, "counter", help);
            for (n, s) in &sources {
                let _ = writeln!(
                    o,
                    "{metric}{{source=\"{}\"}} {}",
                    esc(n),
                    counter(s).load(Ordering::Relaxed)
                );
            }
        }
        family(
            &mut o,
            "dab_source_abandoned_events_total",
            "counter",
            "Events a source read but never handed on (no room downstream, or downstream gone, when it stopped)",
        );
        for (n, s) in &sources {
            let _ = writeln!(
                o,
                "dab_source_abandoned_events_total{{source=\"{}\"}} {}",
                esc(n),
                s.abandoned.load(Ordering::Relaxed)
            );
        }
        family(
            &mut o,
            "dab_input_undelivered_events_total",
            "counter",
            "Events an input's router failed to hand to a pipeline (their sources heard failed), by reason",
        );
        for i in &inputs {
            for r in Undelivered::ALL {
                let _ = writeln!(
                    o,
                    "dab_input_undelivered_events_total{{input=\"{}\",reason=\"{}\"}} {}",
                    esc(&i.name),
                    r.as_str(),
                    i.undelivered.get(r)
                );
            }
        }
        family(
            &mut o,
            "dab_sink_events_total",
            "counter",
            "Events a sink wrote",
        );
        for s in &sinks {
            let _ = writeln!(
                o,
                "dab_sink_events_total{{sink=\"{}\"}} {}",
                esc(&s.name),
                s.events.get()
            );
        }
        family(
            &mut o,
            "dab_sink_bytes_total",
            "counter",
            "Bytes (event size) a sink wrote",
        );
        for s in &sinks {
            let _ = writeln!(
                o,
                "dab_sink_bytes_total{{sink=\"{}\"}} {}",
                esc(&s.name),
                s.bytes.get()
            );
        }
        family(
            &mut o,
            "dab_sink_errors_total",
            "counter",
            "Failed sink writes (each is retried)",
        );
        for s in &sinks {
            let _ = writeln!(
                o,
                "dab_sink_errors_total{{sink=\"{}\"}} {}",
                esc(&s.name),
                s.errors.get()
            );
        }
        family(
            &mut o,
            "dab_sink_failed_events_total",
            "counter",
            "Events a sink gave up on (a forced stop, or refused events whose OnError target was gone); their sources saw a failed ack",
        );
        for s in &sinks {
            let _ = writeln!(
                o,
                "dab_sink_failed_events_total{{sink=\"{}\"}} {}",
                esc(&s.name),
                s.failed_events.get()
            );
        }
        family(
            &mut o,
            "dab_sink_rewritten_events_total",
            "counter",
            "Events a sink wrote again after a failed write or flush (nothing acknowledged was lost)",
        );
        for s in &sinks {
            let _ = writeln!(
                o,
                "dab_sink_rewritten_events_total{{sink=\"{}\"}} {}",
                esc(&s.name),
                s.rewritten_events.get()
            );
        }
        family(
            &mut o,
            "dab_sink_rejected_events_total",
            "counter",
            "Events a sink's peer refused for good, by where they went (on_error, or dropped)",
        );
        for s in &sinks {
            let routed = s.rejected_rerouted.get();
            let dropped = s.dropped_rejected.get();
            for (outcome, v) in [("on_error", routed), ("dropped", dropped)] {
                let _ = writeln!(
                    o,
                    "dab_sink_rejected_events_total{{sink=\"{}\",outcome=\"{outcome}\"}} {v}",
                    esc(&s.name),
                );
            }
        }
        family(
            &mut o,
            "dab_sink_dropped_events_total",
            "counter",
            "Events a sink did not deliver and will not retry, by reason",
        );
        for s in &sinks {
            let _ = writeln!(
                o,
                "dab_sink_dropped_events_total{{sink=\"{}\",reason=\"rejected\"}} {}",
                esc(&s.name),
                s.dropped_rejected.get()
            );
        }
        family(
            &mut o,
            "dab_sink_breaker_state",
            "gauge",
            "State of a sink's circuit breaker: 0 closed, 1 open (the peer is left alone), 2 half-open (probing)",
        );
        for s in &sinks {
            let _ = writeln!(
                o,
                "dab_sink_breaker_state{{sink=\"{}\"}} {}",
                esc(&s.name),
                s.breaker.state() as u8
            );
        }
        family(
            &mut o,
            "dab_sink_breaker_transitions_total",
            "counter",
            "Times a sink's circuit breaker entered each state",
        );
        for s in &sinks {
            for st in crate::breaker::BreakerState::ALL {
                let _ = writeln!(
                    o,
                    "dab_sink_breaker_transitions_total{{sink=\"{}\",to=\"{}\"}} {}",
                    esc(&s.name),
                    st.label(),
                    s.breaker.transitions_to(st)
                );
            }
        }
        family(
            &mut o,
            "dab_queue_depth_events",
            "gauge",
            "Events held in a memory queue",
        );
        for q in &queues {
            let _ = writeln!(
                o,
                "dab_queue_depth_events{{queue=\"{}\"}} {}",
                esc(&q.name),
                q.depth_events.load(Ordering::Relaxed)
            );
        }
        family(
            &mut o,
            "dab_channel_depth_batches",
            "gauge",
            "Batches waiting in a bounded channel",
        );
        for (owner, weak) in channels.iter() {
            if let Some(tx) = weak.upgrade() {
                let _ = writeln!(
                    o,
                    "dab_channel_depth_batches{{channel=\"{}\"}} {}",
                    esc(owner),
                    tx.max_capacity() - tx.capacity()
                );
            }
        }
        family(
            &mut o,
            "dab_process_resident_memory_bytes",
            "gauge",
            "Resident set size of the process",
        );
        let _ = writeln!(o, "dab_process_resident_memory_bytes {}", rss_bytes());
        family(
            &mut o,
            "dab_abandoned_events_total",
            "counter",
            "Events a forced stop abandoned anywhere in the process (a non-zero count makes dab run exit 3)",
        );
        let _ = writeln!(o, "dab_abandoned_events_total {}", self.abandoned.get());
        let ops: Vec<Arc<dyn ConnectorMetrics>> = pipelines
            .iter()
            .flat_map(|p| p.ops.iter().cloned())
            .chain(connectors)
            .collect();
        render_samples(&mut o, &ops);
        self.reload.render(&mut o);
        o
    }
}

impl Metrics {
    /// Where events were abandoned, for the log at exit: `source:NAME`,
    /// `input:NAME`, `pipeline:ID` and `sink:NAME` with their counts, the
    /// non-zero ones, space-separated in that order (places a reload
    /// retired are no longer listed; the total still counts them).
    pub fn abandoned_by_place(&self) -> String {
        let mut places = Vec::new();
        for (n, s) in self.sources.snapshot() {
            places.push((format!("source:{n}"), s.abandoned.load(Ordering::Relaxed)));
        }
        for i in self.inputs.snapshot() {
            let n = i.undelivered.get(Undelivered::Abandoned);
            places.push((format!("input:{}", i.name), n));
        }
        for p in self.pipelines.snapshot() {
            let n = p.undelivered.get(Undelivered::Abandoned);
            places.push((format!("pipeline:{}", p.id), n));
        }
        for s in self.sinks.snapshot() {
            places.push((format!("sink:{}", s.name), s.failed_events.get()));
        }
        places
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(p, n)| format!("{p}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl ReloadMetrics {
    fn render(&self, o: &mut String) {
        let rows: [(&str, &str, &str, u64); 6] = [
            (
                "dab_reloads_total",
                "counter",
                "Reloads applied",
                self.ok.get(),
            ),
            (
                "dab_reload_failures_total",
                "counter",
                "Reloads refused (invalid set) or rolled back (a piece failed to build)",
                self.failed.get(),
            ),
            (
                "dab_reload_last_success_timestamp_seconds",
                "gauge",
                "Unix time of the last applied reload",
                self.last_success_unix.load(Ordering::Relaxed),
            ),
            (
                "dab_reload_pipelines_added_total",
                "counter",
                "Pipelines started by reloads",
                self.added.get(),
            ),
            (
                "dab_reload_pipelines_rebuilt_total",
                "counter",
                "Pipelines rebuilt by reloads",
                self.rebuilt.get(),
            ),
            (
                "dab_reload_pipelines_removed_total",
                "counter",
                "Pipelines drained and stopped by reloads",
                self.removed.get(),
            ),
        ];
        for (name, kind, help, v) in rows {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        let _ = writeln!(
            o,
            "# HELP dab_reload_duration_seconds Duration of the last reload, from reading the files to the new topology serving\n# TYPE dab_reload_duration_seconds gauge\ndab_reload_duration_seconds {}",
            self.last_duration_us.load(Ordering::Relaxed) as f64 / 1e6
        );
    }
}

/// Connectors' samples, grouped by family so each family's HELP and TYPE
/// lines appear once, in the order families were first seen.
pub fn render_samples(o: &mut String, connectors: &[Arc<dyn ConnectorMetrics>]) {
    let mut samples = Vec::new();
    for c in connectors {
        c.samples(&mut samples);
    }
    let mut families: Vec<&'static str> = Vec::new();
    for s in &samples {
        if !families.contains(&s.family) {
            families.push(s.family);
        }
    }
    for f in families {
        let mut first = true;
        for s in samples.iter().filter(|s| s.family == f) {
            if first {
                let _ = writeln!(
                    o,
                    "# HELP {} {}\n# TYPE {} {}",
                    f,
                    s.help,
                    f,
                    s.kind.as_str()
                );
                first = false;
            }
            write_sample(o, s);
        }
    }
}

fn write_sample(o: &mut String, s: &Sample) {
    o.push_str(s.name);
    if !s.labels.is_empty() {
        o.push('{');
        for (i, (k, v)) in s.labels.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            let _ = write!(o, "{k}=\"{}\"", esc(v));
        }
        o.push('}');
    }
    let _ = writeln!(o, " {}", s.value);
}
