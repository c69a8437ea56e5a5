//! A checked plan compiled into running tasks joined by bounded channels:
//! a task per source, per pipeline and per sink; memory queues between
//! pipelines; a fan-out task where one source or queue has several readers.
//!
//! Shutdown flows downstream: sources stop and drop their senders, each
//! pipeline drains its input and drops its outputs, queues and sinks drain
//! and end. The topology keeps no sender itself, so "everything is drained"
//! is simply "every task has ended".
//!
//! A start or reload is `apply`: `build` (build.rs) makes every new piece
//! and can fail, leaving everything as it was; `commit` (commit.rs) starts
//! them and retires what they replace, and cannot fail. `route` (route.rs)
//! hands an input's batches to its readers; state.rs holds what runs now,
//! keyed for reloads, with the op state a rebuild carries over.

mod build;
mod commit;
mod route;
mod state;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dab_api::{SinkFactory, SourceFactory};
use dab_plan::model::Pipeline;
use dab_plan::Plan;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::breaker::BreakerState;
use crate::health::{Health, Readiness};
use crate::metrics::{rss_bytes, Metrics};
use crate::reliability::{Limits, Tracker};

use self::state::State;

/// The connector kinds this build knows, handed in by the CLI. Cheap to
/// clone: reloads keep one.
#[derive(Clone)]
pub struct Registry {
    sources: Arc<Vec<Box<dyn SourceFactory>>>,
    sinks: Arc<Vec<Box<dyn SinkFactory>>>,
    /// Feeds of tables that are not files (`Enrich`, `kind: kafka`).
    tables: Arc<Vec<Box<dyn dab_api::table::TableFactory>>>,
    /// Changelogs of window state, by the kind of source a window reads.
    changelogs: Arc<Vec<Box<dyn dab_api::changelog::ChangelogFactory>>>,
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
            tables: Arc::default(),
            changelogs: Arc::default(),
        }
    }

    /// The registry with the feeds of table kinds other than `file`.
    pub fn with_tables(mut self, tables: Vec<Box<dyn dab_api::table::TableFactory>>) -> Registry {
        self.tables = Arc::new(tables);
        self
    }

    /// The registry with the changelogs of window state that moves with
    /// the partitions of a source (`kind: kafka`).
    pub fn with_changelogs(
        mut self,
        changelogs: Vec<Box<dyn dab_api::changelog::ChangelogFactory>>,
    ) -> Registry {
        self.changelogs = Arc::new(changelogs);
        self
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
    /// Where windows keep their state, and how often it is checkpointed;
    /// `None` keeps it in memory only (an absorbed event is acknowledged
    /// at once, and a crash loses open windows).
    pub state: Option<crate::window::StateOptions>,
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
            state: None,
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
    #[error("`{0}` is not a built-in connector of this build of dab")]
    UnknownBuiltin(String),
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
        for p in self.metrics.pipelines.snapshot() {
            if p.window
                .as_ref()
                .is_some_and(|w| w.state_unusable.get() > 0)
            {
                reasons.push(format!(
                    "pipeline `{}`: state store unusable after a failed write; restart dab",
                    p.id
                ));
            }
        }
        Readiness { reasons }
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
    /// Calls `f` with the plan running now (`None` once shutting down),
    /// e.g. to check what a reload to another plan would refuse.
    pub fn with_plan<R>(&self, f: impl FnOnce(Option<&Plan>) -> R) -> R {
        let guard = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(guard.as_ref().and_then(|st| st.plan.as_ref()))
    }

    /// Swaps in a new plan: pipelines that changed (by `dab_plan::diff`)
    /// are rebuilt, added ones started, removed ones drained and stopped.
    /// Memory queues keep their contents; sources and sinks whose binding
    /// did not change keep running (a listener keeps its connections).
    /// Every new piece is built before anything changes, so a piece that
    /// fails to build leaves the running topology as it was.
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

    /// Builds the pieces `plan` needs (`build`), then starts them and
    /// retires what they replace (`commit`).
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
