//! `Window(...).Aggregate(...)` in a running pipeline (SPEC section 9): the
//! bridge between DAB events and the `dab-window` engine, and the
//! checkpoints that make its results exact across crashes.
//!
//! Per event the stage reads the time (the `timestamp` field, or the
//! arrival time), the group key (`by`, encoded as a JSON array so that a
//! result can name its key fields again) and one value per aggregate, and
//! absorbs them. Results leave as events of type `as` whose payload holds
//! the window bounds, the key fields and the aggregates; their UID is
//! (pipeline, 0, `as`, a hash of window start and group key), so a result
//! emitted again after a restart is the same event.
//!
//! With a state store, the acknowledgement of every absorbed event is held
//! until a checkpoint that holds it is durable. A checkpoint is one atomic
//! batch: the engine's changed entries, its bookkeeping, the Kafka offsets
//! absorbed and the UIDs absorbed from sources that cannot replay. Before a
//! checkpoint commits, every result and late event emitted since the last
//! one must be delivered: the checkpoint forgets the windows they came
//! from. After a crash the engine restarts from the last checkpoint; a
//! replayed Kafka offset below the checkpointed one, or a UID the
//! checkpoint holds, is recognised and not counted again.
//!
//! With a Kafka input and `dab run --partition-state`, state is kept per
//! assigned topic partition and mirrored to a changelog topic, so that it
//! moves with the partition to another process (`parts.rs`).

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dab_api::ack::AckStatus;
use dab_api::connector::SourceStats;
use dab_api::{AckToken, Batch, Event, Text};
use dab_plan::model::{self, Operand, Predicate, TimeBase, Windowed};
use dab_plan::window;
use dab_state::{StateStore, GLOBAL};

mod parts;

use crate::seen::SeenLog;
use dab_window::{Absorb, AggValue, DecodeError, Engine, RestoreError, Value, WindowResult};
use parts::{Partitioned, Tp};
use serde_json::{Map, Value as Json};
use std::sync::Arc;
use tokio::sync::oneshot;

use crate::metrics::{DropReason, PipelineMetrics, Undelivered};
use crate::output::OutputTx;
use crate::predicate::{eval, read_into, Owned};
use crate::reliability::Tracker;

/// UIDs of events from sources that cannot replay, kept per window stage
/// to recognise a client's retry after a crash. It must cover the events
/// in flight across a crash: about the checkpoint interval times the input
/// rate, plus a client's retried batches.
pub const SEEN_UIDS: usize = 1_000_000;

/// The state store and checkpoint interval of a run (`dab run
/// --state-dir`, `--checkpoint-interval`).
#[derive(Debug, Clone)]
pub struct StateOptions {
    pub store: StateStore,
    pub interval: Duration,
    /// State per Kafka partition with a changelog (`dab run
    /// --partition-state`).
    pub partitioned: bool,
}

/// What each aggregate reads of an event.
#[derive(Debug)]
enum Arg {
    /// `Count()`.
    Nothing,
    /// `Count(cond)`.
    Cond(Predicate),
    Operand(Operand),
}

/// A result or late copy handed to an output and not yet confirmed.
#[derive(Debug)]
struct Pending {
    events: Vec<Event>,
    /// True for late events (to the `late` target), false for results
    /// (to the pipeline's outputs).
    late: bool,
    rx: oneshot::Receiver<AckStatus>,
}

#[derive(Debug)]
struct Durable {
    store: StateStore,
    interval: Duration,
    ns: String,
    seen: SeenLog,
    /// Next offset after the last absorbed one, per Kafka topic partition.
    positions: HashMap<(Text, i32), i64>,
    /// Acknowledgements of absorbed input, settled by the next checkpoint.
    held: Vec<AckToken>,
    pending: Vec<Pending>,
    /// Keys of entries a changed configuration left behind, deleted by
    /// the first checkpoint.
    stale: Vec<Vec<u8>>,
    last: Instant,
    changed: bool,
}

/// The window stage of one pipeline.
#[derive(Debug)]
pub struct WindowStage {
    engine: Engine,
    time: TimeBase,
    by: Vec<Operand>,
    names: Vec<String>,
    args: Vec<Arg>,
    agg_names: Vec<String>,
    /// Per aggregate: a `Percentile` with one `p` gives a number.
    single_p: Vec<bool>,
    host: Text,
    result_type: Text,
    late: Option<OutputTx>,
    durable: Option<Durable>,
    /// The input's source, when it publishes its partitions (Kafka): each
    /// assigned partition holds the watermark from its assignment on.
    source: Option<Arc<SourceStats>>,
    source_gen: u64,
    /// With a state store and a Kafka input: one engine per assigned
    /// partition, mirrored to a changelog (`parts.rs`); `engine` then
    /// holds only input from elsewhere.
    partitioned: Option<Partitioned>,
    /// The engine configuration, for partitions restored later.
    spec: dab_window::WindowSpec,
    /// Reused per event.
    key: Vec<u8>,
    owned: Vec<Owned>,
    key_parts: Vec<Owned>,
}

fn ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, ns)
}

/// The engine's configuration for the planner's `Window` and `Aggregate`.
fn engine_spec(w: &Windowed, track_changes: bool) -> (dab_window::WindowSpec, Vec<Arg>) {
    use dab_window::AggFn as E;
    let kind = match w.window.kind {
        model::WindowKind::Tumbling { size } => dab_window::WindowKind::Tumbling { size: ns(size) },
        model::WindowKind::Sliding { size, every } => dab_window::WindowKind::Sliding {
            size: ns(size),
            every: ns(every),
        },
        model::WindowKind::Session { gap } => dab_window::WindowKind::Session { gap: ns(gap) },
    };
    let mut aggs = Vec::new();
    let mut args = Vec::new();
    for (name, f) in &w.aggregate.aggregates {
        let (e, a) = match f {
            model::AggFn::Count(None) => (E::Count, Arg::Nothing),
            model::AggFn::Count(Some(p)) => (E::CountIf, Arg::Cond(p.clone())),
            model::AggFn::Sum(x) => (E::Sum, Arg::Operand(x.clone())),
            model::AggFn::Min(x) => (E::Min, Arg::Operand(x.clone())),
            model::AggFn::Max(x) => (E::Max, Arg::Operand(x.clone())),
            model::AggFn::Avg(x) => (E::Avg, Arg::Operand(x.clone())),
            model::AggFn::First(x) => (E::First, Arg::Operand(x.clone())),
            model::AggFn::Last(x) => (E::Last, Arg::Operand(x.clone())),
            model::AggFn::Distinct(x) => (E::Distinct, Arg::Operand(x.clone())),
            model::AggFn::Percentile(x, ps) => (E::Percentile(ps.clone()), Arg::Operand(x.clone())),
        };
        aggs.push((name.clone(), e));
        args.push(a);
    }
    let mut spec = dab_window::WindowSpec::new(kind, aggs);
    spec.lateness = ns(w.window.lateness);
    spec.idle_after = Some(ns(w.window.idle));
    spec.early = w.window.early.map(ns);
    spec.max_groups = usize::try_from(w.window.max_groups).unwrap_or(usize::MAX);
    spec.track_changes = track_changes;
    (spec, args)
}

/// Why a window stage could not start.
pub type StartError = String;

impl WindowStage {
    /// Builds the stage of pipeline `pipeline`, restoring its state from
    /// the store when there is one. A store whose state was made by a
    /// different window kind or aggregate list restarts empty (logged); a
    /// damaged one is an error.
    pub fn new(
        pipeline: &str,
        index: usize,
        w: &Windowed,
        late: Option<OutputTx>,
        state: Option<&StateOptions>,
    ) -> Result<WindowStage, StartError> {
        let (spec, args) = engine_spec(w, state.is_some());
        let fresh = || Engine::new(spec.clone()).map_err(|e| format!("window: {e}"));
        let mut durable = None;
        let engine = match state {
            None => fresh()?,
            Some(opts) => {
                let ns = format!("w/{pipeline}/{index}");
                let store = &opts.store;
                let read_err = |e: dab_state::Error| {
                    format!(
                        "reading the state of its window from {}: {e}",
                        store.dir().display()
                    )
                };
                let t0 = Instant::now();
                let book = store.bookkeeping(&ns, GLOBAL).map_err(read_err)?;
                let mut stale = Vec::new();
                let book_found = book.is_some();
                let engine = match book {
                    None => fresh()?,
                    Some(book) => {
                        let entries = store.state_of(&ns, GLOBAL).map_err(read_err)?;
                        match Engine::restore(
                            spec.clone(),
                            entries.iter().map(|(k, v)| (k, v)),
                            &book,
                        ) {
                            Ok(mut engine) => {
                                engine.resume_partitions(now_ns());
                                engine
                            }
                            Err(RestoreError::Bookkeeping(DecodeError::Invalid {
                                what, ..
                            })) if what.starts_with("spec fingerprint") => {
                                tracing::warn!(
                                    pipeline,
                                    groups = entries.len(),
                                    "the window or aggregates changed since the last checkpoint: \
                                     the pipeline's window state restarts empty"
                                );
                                stale = entries.into_iter().map(|(k, _)| k).collect();
                                fresh()?
                            }
                            Err(e) => {
                                return Err(format!(
                                    "the state of its window in {} cannot be read ({e}); \
                                     move the directory aside to start empty",
                                    store.dir().display()
                                ))
                            }
                        }
                    }
                };
                let seen_ns = format!("u/{pipeline}/{index}");
                let seen = SeenLog::load(store, &seen_ns, SEEN_UIDS).map_err(|e| {
                    format!(
                        "reading the seen UIDs of its window from {}: {e}",
                        store.dir().display()
                    )
                })?;
                let mut positions = HashMap::new();
                let prefix = format!("{ns}@");
                for (source, pos) in store.positions(GLOBAL).map_err(read_err)? {
                    let Some(rest) = source.strip_prefix(&prefix) else {
                        continue;
                    };
                    let (Some((topic, part)), Ok(next)) =
                        (rest.rsplit_once(':'), <[u8; 8]>::try_from(pos.as_slice()))
                    else {
                        continue;
                    };
                    if let Ok(part) = part.parse::<i32>() {
                        positions.insert(
                            (Text::from(topic.to_owned()), part),
                            i64::from_be_bytes(next),
                        );
                    }
                }
                if book_found {
                    tracing::info!(
                        pipeline,
                        groups = engine.stats().open_entries,
                        uids = seen.len(),
                        seconds = t0.elapsed().as_secs_f64(),
                        "window state restored"
                    );
                }
                durable = Some(Durable {
                    store: store.clone(),
                    interval: opts.interval,
                    ns,
                    seen,
                    positions,
                    held: Vec::new(),
                    pending: Vec::new(),
                    changed: !stale.is_empty(),
                    stale,
                    last: Instant::now(),
                });
                engine
            }
        };
        let single_p = w
            .aggregate
            .aggregates
            .iter()
            .map(|(_, f)| matches!(f, model::AggFn::Percentile(_, ps) if ps.len() == 1))
            .collect();
        Ok(WindowStage {
            engine,
            time: w.window.time,
            by: w.aggregate.by.iter().map(|(_, o)| o.clone()).collect(),
            names: w.aggregate.by.iter().map(|(n, _)| n.clone()).collect(),
            agg_names: w
                .aggregate
                .aggregates
                .iter()
                .map(|(n, _)| n.clone())
                .collect(),
            owned: vec![Owned::Missing; args.len()],
            key_parts: vec![Owned::Missing; w.aggregate.by.len()],
            args,
            single_p,
            host: Text::from(pipeline.to_owned()),
            result_type: Text::from(w.aggregate.result_type.clone()),
            late,
            durable,
            source: None,
            source_gen: 0,
            partitioned: None,
            spec,
            key: Vec::with_capacity(64),
        })
    }

    /// Follows the partitions `stats` publishes (a Kafka source's
    /// assignment).
    pub fn follow_partitions(&mut self, stats: Arc<SourceStats>) {
        self.source = Some(stats);
    }

    /// Keeps state per partition of the source `stats` describes,
    /// mirrored to `changelog` (with a state store only).
    pub fn partition_state(
        &mut self,
        changelog: Arc<dyn dab_api::changelog::Changelog>,
        stats: Arc<SourceStats>,
    ) {
        if self.durable.is_some() {
            self.partitioned = Some(Partitioned::new(changelog, stats));
        }
    }

    /// Restores the partitions assigned since the last look (before any
    /// of their events is absorbed) and forgets those no longer assigned.
    pub async fn sync_assignment(&mut self, m: &PipelineMetrics) -> Result<(), String> {
        let (Some(pt), Some(d)) = (&mut self.partitioned, &mut self.durable) else {
            return Ok(());
        };
        let Some((gen, list)) = pt.stats.partitions_since(pt.gen) else {
            return Ok(());
        };
        let assigned: std::collections::HashSet<Tp> =
            list.into_iter().map(|(t, p)| (Text::from(t), p)).collect();
        pt.parts.retain(|tp, _| assigned.contains(tp));
        let missing: Vec<Tp> = assigned
            .iter()
            .filter(|tp| !pt.parts.contains_key(*tp))
            .cloned()
            .collect();
        pt.assigned = assigned;
        for (topic, p) in missing {
            let t0 = Instant::now();
            let (store, ns, spec, changelog) = (
                d.store.clone(),
                d.ns.clone(),
                self.spec.clone(),
                pt.changelog.clone(),
            );
            let pipeline = self.host.as_str().to_owned();
            let t = topic.as_str().to_owned();
            let restored = tokio::task::spawn_blocking(move || {
                parts::restore(
                    &store,
                    &ns,
                    &spec,
                    &*changelog,
                    (&t, p),
                    now_ns(),
                    &pipeline,
                )
            })
            .await
            .map_err(|e| format!("restore task: {e}"))??;
            tracing::info!(
                pipeline = %self.host.as_str(),
                partition = %format!("{}[{p}]", topic.as_str()),
                groups = restored.groups,
                changelog_records = restored.records,
                seconds = t0.elapsed().as_secs_f64(),
                "window partition state restored"
            );
            if let Some(w) = &m.window {
                w.restores.add(1);
                w.restored_records.add(restored.records);
            }
            if !restored.rewrite.is_empty() {
                d.changed = true;
                pt.rewrite
                    .entry((topic.clone(), p))
                    .or_default()
                    .extend(restored.rewrite);
            }
            pt.parts.insert((topic, p), restored.part);
        }
        pt.gen = gen;
        if let Some(w) = &m.window {
            w.partitions.set(pt.parts.len() as i64);
        }
        Ok(())
    }

    /// A revocation the source waits for: the pipeline checkpoints, then
    /// calls [`WindowStage::release`].
    pub fn revoke_request(&self) -> Option<(u64, Vec<(String, i32)>)> {
        self.partitioned.as_ref().and_then(Partitioned::revoking)
    }

    /// Lets go of revoked partitions' state: what the next owner restores
    /// is the last checkpoint. Input absorbed into them since is not
    /// durable, so the held acknowledgements fail (their sources send them
    /// again: the next owner reads the revoked partitions' events from the
    /// committed offsets, and this stage skips the rest by offset). No
    /// checkpoint is written here: the source's rebalance waits for this,
    /// and must not wait on the broker.
    pub fn release(&mut self, gen: u64, list: &[(String, i32)], m: &PipelineMetrics) {
        if let Some(pt) = &mut self.partitioned {
            let dirty = list.iter().any(|(t, p)| {
                pt.parts
                    .get(&(Text::from(t.clone()), *p))
                    .is_some_and(|part| part.changed)
            });
            let mut failed = 0;
            if let (true, Some(d)) = (dirty, &mut self.durable) {
                failed = d.held.len();
                for a in d.held.drain(..) {
                    a.fail();
                }
            }
            pt.release(gen, list);
            tracing::info!(pipeline = %self.host.as_str(), partitions = ?list, batches_failed = failed, "window partition state released on revoke (the last checkpoint moves on)");
            if let Some(w) = &m.window {
                w.partitions.set(pt.parts.len() as i64);
            }
        }
    }

    /// Registers the partitions assigned since the last look, so that a
    /// partition holds the watermark back before its first event: else
    /// the first partition to deliver would carry the watermark past the
    /// others' data.
    fn sync_partitions(&mut self, now: i64) {
        let Some(src) = &self.source else { return };
        if let Some((gen, list)) = src.partitions_since(self.source_gen) {
            self.source_gen = gen;
            for (topic, p) in list {
                self.engine
                    .register_partition(part_id(topic.as_bytes(), p), now);
            }
        }
    }

    /// Whether absorbed input waits for checkpoints.
    pub fn is_durable(&self) -> bool {
        self.durable.is_some()
    }

    /// How often the pipeline task polls for results and checks whether a
    /// checkpoint is due.
    pub fn tick_every(&self) -> Duration {
        let mut d = Duration::from_millis(100);
        if let Some(dur) = &self.durable {
            d = d.min(dur.interval.max(Duration::from_millis(10)));
        }
        d
    }

    /// Absorbs a batch that went through the stages before the window.
    /// Late events go to the `late` target (or are counted dropped), events
    /// past `max_groups` are counted dropped. The batch's acknowledgement
    /// is settled now without a store, or held for the next checkpoint.
    pub async fn absorb(
        &mut self,
        mut batch: Batch,
        m: &PipelineMetrics,
        tracker: Option<&Tracker>,
    ) {
        let arrival = now_ns();
        let mut late = Vec::new();
        let mut overflow = Vec::new();
        // Events of a partition whose state this process does not hold:
        // the batch is reported failed, so that their offsets are not
        // committed (the partition's owner reads them); what the batch
        // also held is recognised by its offsets when it comes again.
        let mut not_held = 0u64;
        for e in batch.events.drain(..) {
            let tp = match (&mut self.partitioned, &e.origin.0) {
                (Some(pt), Some(o)) => {
                    let tp = (o.topic.clone(), o.partition);
                    let Some(part) = pt.parts.get_mut(&tp) else {
                        not_held += 1;
                        continue;
                    };
                    if o.offset < part.next {
                        if let Some(w) = &m.window {
                            w.redelivered.add(1);
                        }
                        part.last_arrival = arrival;
                        part.engine
                            .touch_partition(part_id(o.topic.as_bytes(), o.partition), arrival);
                        continue;
                    }
                    Some((tp, o.offset))
                }
                _ => None,
            };
            if tp.is_none() {
                if let Some(d) = &mut self.durable {
                    if already_absorbed(d, &e) {
                        if let Some(w) = &m.window {
                            w.redelivered.add(1);
                        }
                        // A replay still shows its partition alive.
                        self.engine.touch_partition(partition_of(&e), arrival);
                        continue;
                    }
                }
            }
            match self.absorb_one(&e, arrival, tp.as_ref().map(|(tp, _)| tp)) {
                Absorb::Absorbed => {
                    if let Some(d) = &mut self.durable {
                        d.changed = true;
                        match (&tp, &mut self.partitioned) {
                            (Some((tp, offset)), Some(pt)) => {
                                if let Some(part) = pt.parts.get_mut(tp) {
                                    part.next = part.next.max(offset.saturating_add(1));
                                    part.changed = true;
                                    part.last_arrival = arrival;
                                }
                            }
                            _ => remember(d, &e),
                        }
                    }
                }
                Absorb::Late => late.push(e),
                Absorb::Overflow => overflow.push(e),
            }
        }
        if !overflow.is_empty() {
            m.dropped(DropReason::WindowOverflow, overflow.len() as u64);
            if let Some(t) = tracker {
                t.dropped(&overflow);
            }
        }
        if !late.is_empty() {
            let n = late.len() as u64;
            match (&self.late, &mut self.durable) {
                (None, _) => {
                    m.dropped(DropReason::Late, n);
                    if let Some(t) = tracker {
                        t.dropped(&late);
                    }
                }
                (Some(target), None) => {
                    if let Err(b) = target.send(Batch::new(late, batch.ack.share())).await {
                        m.undelivered.add(Undelivered::ReaderGone, n);
                        b.ack.fail();
                    }
                }
                (Some(target), Some(d)) => {
                    let (ack, rx) = AckToken::channel();
                    let copy = late.clone();
                    if let Err(b) = target.send(Batch::new(late, ack)).await {
                        m.undelivered.add(Undelivered::ReaderGone, n);
                        b.ack.fail();
                    }
                    d.changed = true;
                    d.pending.push(Pending {
                        events: copy,
                        late: true,
                        rx,
                    });
                }
            }
        }
        if not_held > 0 {
            if let Some(w) = &m.window {
                w.not_owned.add(not_held);
            }
            batch.ack.fail();
        } else {
            match &mut self.durable {
                Some(d) => d.held.push(batch.ack),
                None => batch.ack.complete(),
            }
        }
        if let Some(w) = &m.window {
            w.open_groups.set(self.open_groups() as i64);
        }
    }

    fn open_groups(&self) -> usize {
        self.engine.stats().open_entries
            + self.partitioned.as_ref().map_or(0, |pt| {
                pt.parts
                    .values()
                    .map(|p| p.engine.stats().open_entries)
                    .sum()
            })
    }

    fn absorb_one(&mut self, e: &Event, arrival: i64, tp: Option<&Tp>) -> Absorb {
        // The group key: a JSON array of the `by` values.
        self.key.clear();
        self.key.push(b'[');
        for (i, o) in self.by.iter().enumerate() {
            if i > 0 {
                self.key.push(b',');
            }
            read_into(e, o, &mut self.key_parts[i]);
            write_json(&mut self.key, &self.key_parts[i]);
        }
        self.key.push(b']');
        for (i, a) in self.args.iter().enumerate() {
            self.owned[i] = match a {
                Arg::Nothing => Owned::Missing,
                Arg::Cond(p) => Owned::Bool(eval(p, e)),
                Arg::Operand(o) => {
                    let mut v = std::mem::take(&mut self.owned[i]);
                    read_into(e, o, &mut v);
                    v
                }
            };
        }
        let time = match self.time {
            TimeBase::Event => e.timestamp,
            TimeBase::Arrival => arrival,
        };
        let partition = partition_of(e);
        // On the stack for the usual handful of aggregates: no allocation
        // per event.
        const ON_STACK: usize = 16;
        let mut stack = [Value::Absent; ON_STACK];
        let heap: Vec<Value<'_>>;
        let values: &[Value<'_>] = if self.owned.len() <= ON_STACK {
            for (slot, o) in stack.iter_mut().zip(&self.owned) {
                *slot = as_value(o);
            }
            &stack[..self.owned.len()]
        } else {
            heap = self.owned.iter().map(as_value).collect();
            &heap
        };
        let engine = match (tp, &mut self.partitioned) {
            (Some(tp), Some(pt)) => match pt.parts.get_mut(tp) {
                Some(part) => &mut part.engine,
                None => &mut self.engine,
            },
            _ => &mut self.engine,
        };
        engine.absorb(&dab_window::Event {
            partition,
            time,
            arrival,
            key: &self.key,
            values,
        })
    }

    /// The results that became final (and early partial ones), as events.
    pub fn poll(&mut self, m: &PipelineMetrics) -> Vec<Event> {
        let now = now_ns();
        self.sync_partitions(now);
        if self.time == TimeBase::Arrival {
            self.engine.advance_watermark(now);
        }
        let results = self.engine.poll(now);
        let mut events = self.to_events(results, None, m);
        let mut watermark = self.engine.stats().watermark;
        if let Some(pt) = &mut self.partitioned {
            let idle_after = self.spec.idle_after;
            let stats = pt.stats.clone();
            // Quiet for `idle` and read to its end: a partition the fetcher
            // has not reached yet is not idle, it is behind.
            let idle_now: std::collections::HashSet<Tp> = pt
                .parts
                .iter()
                .filter(|(tp, p)| {
                    idle_after.is_some_and(|d| now.saturating_sub(p.last_arrival) >= d)
                        && stats.caught_up(tp.0.as_str(), tp.1)
                })
                .map(|(tp, _)| tp.clone())
                .collect();
            if self.time == TimeBase::Arrival {
                for p in pt.parts.values_mut() {
                    p.engine.advance_watermark(now);
                }
            } else {
                // An idle partition does not hold its windows open: it
                // follows the slowest partition that still delivers.
                // When every partition is idle, the one furthest ahead
                // leads (as one engine's partitions do).
                let active = pt
                    .parts
                    .iter()
                    .filter(|(tp, _)| !idle_now.contains(*tp))
                    .map(|(_, p)| p.engine.stats().watermark)
                    .min()
                    .or_else(|| pt.parts.values().map(|p| p.engine.stats().watermark).max());
                if let Some(floor) = active {
                    for (tp, p) in &mut pt.parts {
                        if idle_now.contains(tp) && floor > p.engine.stats().watermark {
                            p.engine.advance_watermark(floor);
                            p.changed = true;
                        }
                    }
                }
            }
            let mut out = Vec::new();
            for (tp, p) in &mut pt.parts {
                let r = p.engine.poll(now);
                if !r.is_empty() {
                    // The windows they came from are gone from the state.
                    p.changed = true;
                    out.push((tp.clone(), r));
                }
                let wm = p.engine.stats().watermark;
                if wm > i64::MIN && (watermark == i64::MIN || wm < watermark) {
                    watermark = wm;
                }
            }
            for (tp, r) in out {
                events.extend(self.to_events(r, Some(&tp), m));
            }
        }
        if let Some(w) = &m.window {
            w.open_groups.set(self.open_groups() as i64);
            if self.time == TimeBase::Event && watermark > i64::MIN {
                w.watermark_lag_ns.set(now.saturating_sub(watermark).max(0));
            }
        }
        events
    }

    /// End of input: every open window as final.
    pub fn flush(&mut self, m: &PipelineMetrics) -> Vec<Event> {
        let results = self.engine.flush();
        let mut events = self.to_events(results, None, m);
        let mut out = Vec::new();
        if let Some(pt) = &mut self.partitioned {
            for (tp, p) in &mut pt.parts {
                p.changed = true;
                out.push((tp.clone(), p.engine.flush()));
            }
        }
        for (tp, r) in out {
            events.extend(self.to_events(r, Some(&tp), m));
        }
        events
    }

    fn to_events(
        &self,
        results: Vec<WindowResult>,
        tp: Option<&Tp>,
        m: &PipelineMetrics,
    ) -> Vec<Event> {
        if let (Some(w), false) = (&m.window, results.is_empty()) {
            w.results.add(results.len() as u64);
        }
        results
            .into_iter()
            .map(|r| self.result_event(r, tp))
            .collect()
    }

    fn result_event(&self, r: WindowResult, tp: Option<&Tp>) -> Event {
        let mut obj = Map::new();
        obj.insert(window::WINDOW_START.into(), Json::from(r.start));
        obj.insert(window::WINDOW_END.into(), Json::from(r.end));
        let key: Vec<Json> = serde_json::from_slice(&r.key).unwrap_or_default();
        for (name, v) in self.names.iter().zip(key) {
            obj.insert(name.clone(), v);
        }
        for (i, (name, v)) in self.agg_names.iter().zip(r.values).enumerate() {
            obj.insert(name.clone(), agg_json(v, self.single_p[i]));
        }
        obj.insert(window::FINAL.into(), Json::Bool(r.is_final));
        let mut id = Vec::with_capacity(8 + r.key.len());
        id.extend_from_slice(&r.start.to_be_bytes());
        id.extend_from_slice(&r.key);
        // A partition's state aggregates that partition's events: its
        // results are its own.
        if let Some((topic, p)) = tp {
            id.extend_from_slice(topic.as_bytes());
            id.extend_from_slice(&p.to_be_bytes());
        }
        // Final and early results of one window are told apart.
        let offset = xxhash_rust::xxh64::xxh64(&id, u64::from(!r.is_final));
        Event {
            timestamp: r.end,
            host: self.host.clone(),
            ty: self.result_type.clone(),
            offset,
            message: Bytes::from(serde_json::to_vec(&Json::Object(obj)).unwrap_or_default()),
            ..Event::default()
        }
    }

    /// Records results handed to the outputs with the acknowledgement
    /// `rx` listens to: the next checkpoint waits for it.
    pub fn sent(&mut self, events: Vec<Event>, rx: oneshot::Receiver<AckStatus>) {
        if let Some(d) = &mut self.durable {
            d.changed = true;
            d.pending.push(Pending {
                events,
                late: false,
                rx,
            });
        }
    }

    /// Whether a checkpoint is due now.
    pub fn checkpoint_due(&self) -> bool {
        self.durable
            .as_ref()
            .is_some_and(|d| (d.changed || !d.held.is_empty()) && d.last.elapsed() >= d.interval)
    }

    /// Whether anything awaits a checkpoint.
    pub fn has_changes(&self) -> bool {
        self.durable
            .as_ref()
            .is_some_and(|d| d.changed || !d.held.is_empty())
    }

    /// The copies not yet confirmed, to wait for: each result or late
    /// batch, whether it was delivered. Failed ones are returned for the
    /// caller to send again.
    pub async fn settle(&mut self) -> Vec<(bool, Vec<Event>)> {
        let Some(d) = &mut self.durable else {
            return Vec::new();
        };
        let mut again = Vec::new();
        for p in d.pending.drain(..) {
            match p.rx.await {
                Ok(AckStatus::Delivered) => {}
                _ => again.push((p.late, p.events)),
            }
        }
        again
    }

    /// Sends late events again after a failed delivery; their
    /// confirmation joins the pending ones.
    pub async fn resend_late(&mut self, events: Vec<Event>) -> bool {
        let (Some(target), Some(d)) = (&self.late, &mut self.durable) else {
            return false;
        };
        let (ack, rx) = AckToken::channel();
        let copy = events.clone();
        if let Err(b) = target.send(Batch::new(events, ack)).await {
            b.ack.fail();
            return false;
        }
        d.pending.push(Pending {
            events: copy,
            late: true,
            rx,
        });
        true
    }

    /// Writes a checkpoint; every result and late copy emitted before it
    /// must be settled. On success the held acknowledgements complete. On
    /// failure the stage goes back to the last durable checkpoint and the
    /// held acknowledgements fail, so that their sources send them again.
    pub async fn checkpoint(&mut self, m: &PipelineMetrics) -> Result<(), String> {
        let Some(d) = &mut self.durable else {
            return Ok(());
        };
        let t0 = Instant::now();
        // Partitions' changes go to the changelog first: the local store
        // never holds a checkpoint the changelog lacks.
        let parts_local = match &mut self.partitioned {
            Some(pt) => mirror(pt).await,
            None => Ok(Vec::new()),
        };
        let staged = (|| -> Result<(dab_state::Checkpoint, u64), dab_state::Error> {
            let mut cp = d.store.checkpoint();
            let mut bytes = 0u64;
            for l in parts_local.iter().flatten() {
                for (k, v) in &l.puts {
                    bytes += (k.len() + v.len()) as u64;
                    cp.put(&d.ns, &l.label, k, v)?;
                }
                for k in &l.deletes {
                    cp.delete(&d.ns, &l.label, k)?;
                }
                cp.set_bookkeeping(&d.ns, &l.label, &l.book)?;
                cp.set_offset(
                    &l.label,
                    &parts::input_source(&d.ns),
                    u64::try_from(l.next).unwrap_or(0),
                )?;
                cp.set_offset(
                    &l.label,
                    &parts::changelog_source(&d.ns),
                    u64::try_from(l.cl_next).unwrap_or(0),
                )?;
            }
            for k in d.stale.drain(..) {
                cp.delete(&d.ns, GLOBAL, &k)?;
            }
            let dirty = self.engine.take_dirty();
            for (k, v) in &dirty.written {
                bytes += (k.len() + v.len()) as u64;
                cp.put(&d.ns, GLOBAL, k, v)?;
            }
            for k in &dirty.deleted {
                cp.delete(&d.ns, GLOBAL, k)?;
            }
            cp.set_bookkeeping(&d.ns, GLOBAL, &self.engine.encode_bookkeeping())?;
            for ((topic, part), next) in &d.positions {
                let label = format!("{}@{}:{part}", d.ns, topic.as_str());
                cp.set_offset(GLOBAL, &label, u64::try_from(*next).unwrap_or(0))?;
            }
            d.seen.stage(&mut cp)?;
            Ok((cp, bytes))
        })();
        let result = match (parts_local, staged) {
            (Err(e), _) => Err(e),
            (Ok(_), Ok((cp, bytes))) => tokio::task::spawn_blocking(move || cp.commit(true))
                .await
                .map_err(|e| format!("checkpoint task: {e}"))
                .and_then(|r| {
                    r.map_err(|e| {
                        if e.is_poisoned() {
                            if let Some(w) = &m.window {
                                w.state_unusable.set(1);
                            }
                        }
                        e.to_string()
                    })
                })
                .map(|_| bytes),
            (Ok(_), Err(e)) => Err(e.to_string()),
        };
        let held = std::mem::take(&mut d.held);
        match result {
            Ok(bytes) => {
                d.changed = false;
                d.last = Instant::now();
                for a in held {
                    a.complete();
                }
                if let Some(w) = &m.window {
                    w.checkpoints.add(1);
                    w.checkpoint_bytes.set(bytes as i64);
                    w.checkpoint_ns.set(ns(t0.elapsed()));
                    w.checkpoint_at_ns.set(now_ns());
                }
                Ok(())
            }
            Err(e) => {
                if let Some(w) = &m.window {
                    w.checkpoint_failures.add(1);
                }
                for a in held {
                    a.fail();
                }
                d.last = Instant::now();
                Err(e)
            }
        }
    }

    /// After a failed checkpoint: the engine, UIDs and offsets as the last
    /// durable checkpoint has them.
    pub fn rollback(&mut self, pipeline: &str, index: usize, w: &Windowed) -> Result<(), String> {
        let Some(d) = &self.durable else {
            return Ok(());
        };
        let opts = StateOptions {
            store: d.store.clone(),
            interval: d.interval,
            partitioned: self.partitioned.is_some(),
        };
        let late = self.late.take();
        let source = self.source.take();
        let partitioned = self.partitioned.take();
        *self = WindowStage::new(pipeline, index, w, late, Some(&opts))?;
        self.source = source;
        // Partitions are restored again, from the local store and the
        // changelog, before their next event.
        self.partitioned = partitioned.map(|mut pt| {
            pt.parts.clear();
            pt.gen = 0;
            pt
        });
        Ok(())
    }

    /// A forced stop: the held acknowledgements fail (nothing they cover
    /// is durable); returns how many batches they were.
    pub fn abandon(&mut self) -> usize {
        let Some(d) = &mut self.durable else {
            return 0;
        };
        let n = d.held.len();
        for a in d.held.drain(..) {
            a.fail();
        }
        n
    }
}

/// What a checkpoint writes to the local store for one partition, once
/// the changelog holds it.
#[derive(Debug)]
struct PartLocal {
    label: String,
    puts: Vec<(Vec<u8>, Vec<u8>)>,
    deletes: Vec<Vec<u8>>,
    book: Vec<u8>,
    next: i64,
    cl_next: i64,
}

/// Appends every changed partition's entries and a commit record to the
/// changelog, all under one new checkpoint id. On failure the keys written
/// are rewritten by the next checkpoint of their partition.
async fn mirror(pt: &mut Partitioned) -> Result<Vec<PartLocal>, String> {
    use dab_api::changelog::ChangeRecord;
    use std::collections::{BTreeMap, HashSet};
    let id: u64 = rand::random();
    let mut batches: BTreeMap<i32, Vec<ChangeRecord>> = BTreeMap::new();
    let mut locals = Vec::new();
    let mut written: Vec<(Tp, Vec<Vec<u8>>)> = Vec::new();
    for (tp, part) in &mut pt.parts {
        let rewrite = pt.rewrite.get(tp);
        if !part.changed && rewrite.is_none() {
            continue;
        }
        let dirty = part.engine.take_dirty();
        let (puts, mut deletes) = match rewrite {
            None => (dirty.written, dirty.deleted),
            Some(keys) => {
                let all = part.engine.snapshot();
                let have: HashSet<&[u8]> = all.iter().map(|(k, _)| k.as_slice()).collect();
                let mut gone: Vec<Vec<u8>> = keys
                    .iter()
                    .filter(|k| !have.contains(k.as_slice()))
                    .cloned()
                    .collect();
                gone.extend(dirty.deleted);
                gone.sort_unstable();
                gone.dedup();
                (all, gone)
            }
        };
        deletes.retain(|k| puts.binary_search_by(|(w, _)| w.as_slice().cmp(k)).is_err());
        let book = part.engine.encode_bookkeeping();
        let topic = tp.0.as_str();
        let records = batches.entry(tp.1).or_default();
        for (k, v) in &puts {
            records.push(parts::entry_record(topic, k, Some(v.clone()), id));
        }
        for k in &deletes {
            records.push(parts::entry_record(topic, k, None, id));
        }
        records.push(parts::commit_record(topic, part.next, &book, id));
        written.push((
            tp.clone(),
            puts.iter()
                .map(|(k, _)| k.clone())
                .chain(deletes.iter().cloned())
                .collect(),
        ));
        locals.push((
            tp.clone(),
            PartLocal {
                label: parts::label(topic, tp.1),
                puts,
                deletes,
                book,
                next: part.next,
                cl_next: part.cl_next,
            },
        ));
    }
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    let changelog = pt.changelog.clone();
    let batches: Vec<(i32, Vec<ChangeRecord>)> = batches.into_iter().collect();
    let appended = tokio::task::spawn_blocking(move || changelog.append(&batches))
        .await
        .map_err(|e| format!("changelog task: {e}"))
        .and_then(|r| r);
    match appended {
        Ok(ends) => {
            let ends: HashMap<i32, i64> = ends.into_iter().collect();
            let mut out = Vec::with_capacity(locals.len());
            for (tp, mut l) in locals {
                pt.rewrite.remove(&tp);
                if let Some(end) = ends.get(&tp.1) {
                    l.cl_next = *end;
                }
                if let Some(part) = pt.parts.get_mut(&tp) {
                    part.changed = false;
                    part.cl_next = l.cl_next;
                }
                out.push(l);
            }
            Ok(out)
        }
        Err(e) => {
            for (tp, keys) in written {
                pt.rewrite.entry(tp).or_default().extend(keys);
            }
            Err(format!(
                "writing the changelog `{}`: {e}",
                pt.changelog.name()
            ))
        }
    }
}

/// The engine's partition of an event: its Kafka topic partition, or its
/// host.
fn partition_of(e: &Event) -> u32 {
    match &e.origin.0 {
        Some(p) => part_id(p.topic.as_bytes(), p.partition),
        None => dab_window::hash64(e.host.as_bytes()) as u32,
    }
}

/// The engine's partition id of a Kafka topic partition.
fn part_id(topic: &[u8], partition: i32) -> u32 {
    (dab_window::hash64(topic) as u32) ^ (partition as u32)
}

/// Whether `e` is already in the state: a Kafka offset below the one the
/// stage absorbed last in its partition, or a UID it holds.
fn already_absorbed(d: &Durable, e: &Event) -> bool {
    match &e.origin.0 {
        Some(p) => d
            .positions
            .get(&(p.topic.clone(), p.partition))
            .is_some_and(|next| p.offset < *next),
        None => d.seen.contains(uid_key(e)),
    }
}

fn remember(d: &mut Durable, e: &Event) {
    match &e.origin.0 {
        Some(p) => {
            let next = d
                .positions
                .entry((p.topic.clone(), p.partition))
                .or_insert(0);
            *next = (*next).max(p.offset.saturating_add(1));
        }
        None => {
            d.seen.insert(uid_key(e));
        }
    }
}

/// 128 bits standing for the UID (host, pid, type, offset).
fn uid_key(e: &Event) -> u128 {
    let a = crate::sample::uid_hash(e, 0x5EE1);
    let b = crate::sample::uid_hash(e, 0x5EE2);
    (u128::from(a) << 64) | u128::from(b)
}

fn as_value(o: &Owned) -> Value<'_> {
    match o {
        Owned::Missing => Value::Absent,
        Owned::Int(i) => Value::Int(*i),
        Owned::Float(x) => Value::Float(*x),
        Owned::Bool(b) => Value::Bool(*b),
        Owned::Text(t) => match std::str::from_utf8(t) {
            Ok(s) => Value::Str(s),
            Err(_) => Value::Bytes(t),
        },
    }
}

fn write_json(out: &mut Vec<u8>, v: &Owned) {
    use std::io::Write as _;
    match v {
        Owned::Missing => out.extend_from_slice(b"null"),
        Owned::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Owned::Float(x) if x.is_finite() => {
            let _ = serde_json::to_writer(&mut *out, x);
        }
        Owned::Float(_) => out.extend_from_slice(b"null"),
        Owned::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Owned::Text(t) => {
            let _ = match std::str::from_utf8(t) {
                Ok(s) => serde_json::to_writer(&mut *out, s),
                Err(_) => serde_json::to_writer(&mut *out, &String::from_utf8_lossy(t)),
            };
        }
    }
}

fn agg_json(v: AggValue, single_p: bool) -> Json {
    let float = |x: f64| serde_json::Number::from_f64(x).map_or(Json::Null, Json::Number);
    match v {
        AggValue::Null => Json::Null,
        AggValue::Count(n) => Json::from(n),
        AggValue::Int(i) => Json::from(i),
        AggValue::Float(x) => float(x),
        AggValue::Bool(b) => Json::Bool(b),
        AggValue::Str(s) => Json::String(s),
        AggValue::Bytes(b) => Json::String(String::from_utf8_lossy(&b).into_owned()),
        AggValue::Distinct { count, .. } => Json::from(count),
        AggValue::Percentiles(ps) => {
            let mut vals: Vec<Json> = ps
                .into_iter()
                .map(|p| p.map_or(Json::Null, float))
                .collect();
            if single_p && vals.len() == 1 {
                vals.pop().unwrap_or(Json::Null)
            } else {
                Json::Array(vals)
            }
        }
    }
}
