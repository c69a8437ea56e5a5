//! `Join(Stream, on = field, within = D, into = "key", miss = keep | drop)`
//! at run time (SPEC section 9): a stream-stream join with no state store.
//!
//! The pipeline's input is the left side, `Stream` the right side (a second
//! inlet of the pipeline task). A left event `l` and a right event `r`
//! match when their `on` values are equal and `|l.timestamp - r.timestamp|
//! <= within`. Each match is one output event, emitted as soon as the
//! second of the two arrives: the left event with the right event's
//! payload under `into`. Its UID is the left event's host, pid and type
//! with an offset hashed from both UIDs, so a re-emission after a restart
//! is the same event.
//!
//! Time is event time, per side: `M(side)` is the largest timestamp seen
//! on a side. An event of one side is held until the other side's
//! watermark `M(other) - lateness` passes its own bound `timestamp +
//! within` (so up to `lateness`, by default `within`, of disorder within
//! each side is tolerated), until the other side ends (a finite input),
//! or until the other side has been silent for `idle` and the event has
//! been held that long; never during the warm-up, which ends `idle` after
//! the stage first heard from both sides (or from one, the other silent
//! that long): after a restart the sources send again what was held, in
//! no order between the two sides, and it must all be in first; their
//! clients may take a while to begin, so the warm-up counts from them,
//! not from the start of the process. Then an event leaves the buffer: a
//! left event that matched nothing goes on unchanged (`miss = keep`) or
//! is counted dropped (`join_miss`); any other event simply leaves. An
//! event that arrives after the other side's watermark passed its bound
//! is matched against what is held and leaves at once (counted late); one
//! that arrives more than `lateness` behind its own side's largest
//! timestamp is counted late too (the other side may have let go of its
//! matches).
//!
//! Exactness without a store: every buffered event holds its share of its
//! source batch's acknowledgement until it leaves the buffer, every
//! output holds shares of the acknowledgements of the events it was made
//! from until it is delivered, and the right events a left event matched
//! are acknowledged only after that left event's batch is (else a restart
//! could send the left event again without them, and it would miss). A
//! crash therefore acknowledges nothing that is not in the output, the
//! sources send the rest again, and the buffer is rebuilt from it. A stop (graceful or a reload that replaces the
//! pipeline) fails what the buffer holds, for the same reason.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dab_api::metrics::{ConnectorMetrics, Sample};
use dab_api::{AckStatus, AckToken, Batch, Event};
use dab_plan::model::{Join, Miss, Operand};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Counter, DropReason, Gauge, PipelineMetrics, Undelivered};
use crate::pipeline::{Inlet, PipelineTask};
use crate::predicate::key_text;
use crate::stages::Compiled;

/// The two inputs of a join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The pipeline's `In`.
    Left = 0,
    /// The `Join`'s stream.
    Right = 1,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Left => Side::Right,
            Side::Right => Side::Left,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Side::Left => "left",
            Side::Right => "right",
        }
    }
}

/// One buffered event.
struct Held {
    event: Event,
    key: String,
    /// Its share of its source batch's acknowledgement.
    ack: AckToken,
    arrived: Instant,
    /// A left event that was part of at least one output.
    matched: bool,
    /// For a left event, its batch's [`Pins`].
    pins: Option<Pins>,
}

/// Shares of the acknowledgements of the right events that the events of
/// one left batch matched. They are settled after that batch's own
/// acknowledgement (its source hears first), so no right event is
/// acknowledged while a left event it matched could still be sent again:
/// sent again, it finds them again instead of missing.
type Pins = Arc<Mutex<Vec<AckToken>>>;

fn settle(t: AckToken, status: AckStatus) {
    match status {
        AckStatus::Delivered => t.complete(),
        AckStatus::Failed => t.fail(),
    }
}

/// `ack` wrapped so that, once every share of the wrapper is settled,
/// `ack` is settled and then the pins with the same outcome.
fn pinned(ack: AckToken) -> (AckToken, Pins) {
    let pins: Pins = Arc::default();
    let held = Arc::clone(&pins);
    let wrapper = AckToken::new(move |status| {
        settle(ack, status);
        let pins = std::mem::take(&mut *held.lock().unwrap_or_else(PoisonError::into_inner));
        for p in pins {
            settle(p, status);
        }
    });
    (wrapper, pins)
}

/// The warm-up after a start: it is over `idle` after the stage first
/// heard from both sides, or from one while the other stayed silent that
/// long. It counts from the sources, not from the start of the process:
/// after a restart their clients may take a while to send again what was
/// held (a retry's back-off, a connection's timeout), and until both have
/// begun no bound can be judged.
#[derive(Debug, Default)]
struct Warmup {
    /// When each side was first heard from.
    first: [Option<Instant>; 2],
    over: bool,
}

impl Warmup {
    fn heard(&mut self, side: Side, now: Instant) {
        self.first[side as usize].get_or_insert(now);
    }

    /// Whether the warm-up is over at `now`; once over, it stays over.
    fn over(&mut self, now: Instant, idle: Duration) -> bool {
        if !self.over {
            let end = match self.first {
                [Some(a), Some(b)] => Some(a.max(b) + idle),
                [Some(a), None] | [None, Some(a)] => Some(a + idle),
                [None, None] => None,
            };
            self.over = end.is_some_and(|e| now >= e);
        }
        self.over
    }
}

/// What one side holds.
struct Buffer {
    /// By (timestamp, arrival sequence): released in time order.
    held: BTreeMap<(i64, u64), Held>,
    /// The same events by key, in time order: a match is a range of
    /// them, and a hot key costs a logarithm, not a scan.
    by_key: HashMap<String, BTreeSet<(i64, u64)>>,
    /// The largest timestamp seen on this side.
    max_ts: Option<i64>,
    last_arrival: Instant,
    /// The input ended by itself: nothing more comes from this side.
    ended: bool,
}

impl Buffer {
    fn new(now: Instant) -> Buffer {
        Buffer {
            held: BTreeMap::new(),
            by_key: HashMap::new(),
            max_ts: None,
            last_arrival: now,
            ended: false,
        }
    }

    fn remove(&mut self, at: (i64, u64)) -> Option<Held> {
        let h = self.held.remove(&at)?;
        if let Some(list) = self.by_key.get_mut(&h.key) {
            list.remove(&at);
            if list.is_empty() {
                self.by_key.remove(&h.key);
            }
        }
        Some(h)
    }
}

/// One output event and the acknowledgement shares it holds.
#[derive(Debug)]
pub struct Out {
    pub event: Event,
    pub acks: Vec<AckToken>,
}

/// Counts of one `Join` stage, exported as its samples.
#[derive(Debug, Default)]
pub struct JoinCounts {
    /// Outputs made from a match.
    hits: Counter,
    /// Left events that left the buffer with no match.
    misses: Counter,
    /// Events not buffered because their side held `max_buffered`, by side.
    overflow: [Counter; 2],
    /// Matches whose left payload is not a JSON object: no output.
    unjoinable: Counter,
    /// Events whose acknowledgement failed because the pipeline stopped
    /// while they were held (their sources send them again).
    failed_on_stop: Counter,
    /// Events held now, by side.
    buffered: [Gauge; 2],
    /// Events that came after the other side's watermark had passed their
    /// bound (more disorder than `lateness`), by side: matched against
    /// what was held, then let go.
    late: [Counter; 2],
}

/// The state of one `Join` stage.
pub struct JoinStage {
    on: Operand,
    within: i64,
    /// `within + lateness`: how far the other side's largest timestamp
    /// must be past an event's own for it to leave.
    hold: i64,
    into: String,
    miss: Miss,
    max_buffered: usize,
    idle: Duration,
    sides: [Buffer; 2],
    /// No bound is judged until it is over: what the sources send again
    /// after a restart comes in any order between the two sides, and must
    /// all be in before anything leaves.
    warmup: Warmup,
    seq: u64,
    /// A stop: nothing is held any more, what arrives fails at once.
    stopped: bool,
    counts: Arc<JoinCounts>,
}

impl std::fmt::Debug for JoinStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinStage")
            .field("left", &self.sides[0].held.len())
            .field("right", &self.sides[1].held.len())
            .finish()
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

impl JoinStage {
    pub fn new(j: &Join) -> JoinStage {
        let now = Instant::now();
        JoinStage {
            on: j.on.clone(),
            within: nanos(j.within),
            hold: nanos(j.within).saturating_add(nanos(j.lateness)),
            into: j.into.clone(),
            miss: j.miss,
            max_buffered: usize::try_from(j.max_buffered).unwrap_or(usize::MAX).max(1),
            idle: j.idle,
            sides: [Buffer::new(now), Buffer::new(now)],
            warmup: Warmup::default(),
            seq: 0,
            stopped: false,
            counts: Arc::default(),
        }
    }

    /// How often the pipeline task releases what is due.
    pub fn tick_every(&self) -> Duration {
        Duration::from_nanos(u64::try_from(self.within / 4).unwrap_or(0))
            .clamp(Duration::from_millis(10), Duration::from_millis(200))
    }

    /// The stage's samples, labelled with its pipeline and position.
    pub fn metrics(&self, pipeline: &str, stage: usize) -> Arc<dyn ConnectorMetrics> {
        Arc::new(JoinMetrics {
            pipeline: pipeline.to_owned(),
            stage: stage.to_string(),
            counts: Arc::clone(&self.counts),
        })
    }

    /// Whether the other side's progress has passed the bound of an event
    /// of `side` with timestamp `ts`: no event still to come can match it.
    /// `warm`: the warm-up is over.
    fn passed(&self, side: Side, ts: i64, warm: bool) -> bool {
        let o = &self.sides[side.other() as usize];
        o.ended || (warm && o.max_ts.is_some_and(|m| m.saturating_sub(self.hold) > ts))
    }

    /// Takes a batch of one side: matches each event against the other
    /// side's buffer (one output per match) and buffers it, or lets it
    /// leave at once when its bound has already passed or its side is
    /// full. Returns the outputs, then those of what became due.
    pub fn absorb(&mut self, side: Side, batch: Batch, m: &PipelineMetrics, out: &mut Vec<Out>) {
        let Batch { events, ack, .. } = batch;
        if self.stopped {
            self.counts.failed_on_stop.add(events.len() as u64);
            ack.fail();
            return;
        }
        let (ack, pins) = match side {
            Side::Left => {
                let (a, p) = pinned(ack);
                (a, Some(p))
            }
            Side::Right => (ack, None),
        };
        let now = Instant::now();
        self.warmup.heard(side, now);
        let warm = self.warmup.over(now, self.idle);
        let lateness = self.hold - self.within;
        let s = side as usize;
        let o = side.other() as usize;
        for e in events {
            let share = ack.share();
            let ts = e.timestamp;
            let b = &mut self.sides[s];
            // More than `lateness` behind its own side: the other side may
            // have let go of its matches already.
            let behind = warm && b.max_ts.is_some_and(|m| m.saturating_sub(lateness) > ts);
            b.max_ts = Some(b.max_ts.map_or(ts, |m| m.max(ts)));
            let Some(key) = key_text(&e, &self.on) else {
                // Nothing to match by: a left event misses at once.
                self.leave(side, e, share, false, m, out);
                continue;
            };
            let matched = self.probe(side, &e, &key, &share, pins.as_ref(), out);
            let full = self.sides[s].held.len() >= self.max_buffered;
            if full {
                self.counts.overflow[s].add(1);
            }
            let late = self.passed(side, ts, warm);
            if (late || behind) && !self.sides[o].ended {
                if self.counts.late[s].get() == 0 {
                    tracing::warn!(side = side.name(), "an event came more than `lateness` behind its own side, or after the other side's watermark had passed its bound: more disorder than `lateness`; it may miss matches (counted in dab_join_late_total)");
                }
                self.counts.late[s].add(1);
            }
            if full || late {
                self.leave(side, e, share, matched, m, out);
                continue;
            }
            self.seq += 1;
            let at = (ts, self.seq);
            let b = &mut self.sides[s];
            b.by_key.entry(key.clone()).or_default().insert(at);
            b.held.insert(
                at,
                Held {
                    event: e,
                    key,
                    ack: share,
                    arrived: now,
                    matched,
                    pins: pins.clone(),
                },
            );
        }
        ack.complete();
        let b = &mut self.sides[s];
        b.last_arrival = now;
        self.release(now, m, out);
    }

    /// Outputs for `e` of `side` and every matching event the other side
    /// holds; true when there was at least one. Each match pins the right
    /// event's acknowledgement behind the left event's batch (`pins`: the
    /// batch of a left `e`).
    fn probe(
        &mut self,
        side: Side,
        e: &Event,
        key: &str,
        ack: &AckToken,
        pins: Option<&Pins>,
        out: &mut Vec<Out>,
    ) -> bool {
        let o = side.other() as usize;
        let Some(list) = self.sides[o].by_key.get(key) else {
            return false;
        };
        let from = (e.timestamp.saturating_sub(self.within), 0);
        let to = (e.timestamp.saturating_add(self.within), u64::MAX);
        let ats: Vec<(i64, u64)> = list.range(from..=to).copied().collect();
        let mut any = false;
        for at in ats {
            let Some(h) = self.sides[o].held.get_mut(&at) else {
                continue;
            };
            let (l, r) = match side {
                Side::Left => (e, &h.event),
                Side::Right => (&h.event, e),
            };
            let Some(joined) = joined(l, r, &self.into) else {
                self.counts.unjoinable.add(1);
                continue;
            };
            let (pins, right) = match side {
                Side::Right => {
                    h.matched = true;
                    (h.pins.as_ref(), ack)
                }
                Side::Left => (pins, &h.ack),
            };
            if let Some(p) = pins {
                p.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(right.share());
            }
            any = true;
            self.counts.hits.add(1);
            out.push(Out {
                event: joined,
                acks: vec![ack.share(), h.ack.share()],
            });
        }
        any
    }

    /// An event leaves the join: a left event with no match goes on or is
    /// dropped as `miss` says; anything else is done.
    fn leave(
        &self,
        side: Side,
        e: Event,
        ack: AckToken,
        matched: bool,
        m: &PipelineMetrics,
        out: &mut Vec<Out>,
    ) {
        if side == Side::Right || matched {
            ack.complete();
            return;
        }
        self.counts.misses.add(1);
        match self.miss {
            Miss::Keep => out.push(Out {
                event: e,
                acks: vec![ack],
            }),
            _ => {
                m.dropped(DropReason::JoinMiss, 1);
                ack.complete();
            }
        }
    }

    /// Lets every event whose bound has passed leave, on both sides.
    pub fn release(&mut self, now: Instant, m: &PipelineMetrics, out: &mut Vec<Out>) {
        let warm = self.warmup.over(now, self.idle);
        for side in [Side::Left, Side::Right] {
            let s = side as usize;
            let o = &self.sides[side.other() as usize];
            let all = o.ended;
            let cutoff = o.max_ts.map(|mx| mx.saturating_sub(self.hold));
            let idle = now.saturating_duration_since(o.last_arrival) >= self.idle;
            let mut due: Vec<(i64, u64)> = Vec::new();
            if !all && !warm {
                continue;
            }
            if all {
                due.extend(self.sides[s].held.keys().copied());
            } else {
                if let Some(c) = cutoff {
                    due.extend(self.sides[s].held.range(..(c, 0)).map(|(k, _)| *k));
                }
                if idle {
                    due.extend(
                        self.sides[s]
                            .held
                            .iter()
                            .filter(|(k, h)| {
                                now.saturating_duration_since(h.arrived) >= self.idle
                                    && cutoff.is_none_or(|c| k.0 >= c)
                            })
                            .map(|(k, _)| *k),
                    );
                }
            }
            for at in due {
                if let Some(h) = self.sides[s].remove(at) {
                    self.leave(side, h.event, h.ack, h.matched, m, out);
                }
            }
            self.counts.buffered[s].set(self.sides[s].held.len() as i64);
        }
    }

    /// A side's input ended by itself (a finite source): the other side's
    /// events no longer wait for it.
    pub fn end(&mut self, side: Side, m: &PipelineMetrics, out: &mut Vec<Out>) {
        self.sides[side as usize].ended = true;
        self.release(Instant::now(), m, out);
    }

    /// A stop: every held acknowledgement fails (the sources send those
    /// events again to whoever runs next), and so does whatever arrives
    /// from now on. Returns how many events were held.
    pub fn stop(&mut self) -> u64 {
        self.stopped = true;
        let mut n = 0;
        for (s, b) in self.sides.iter_mut().enumerate() {
            for (_, h) in std::mem::take(&mut b.held) {
                h.ack.fail();
                n += 1;
            }
            b.by_key.clear();
            self.counts.buffered[s].set(0);
        }
        self.counts.failed_on_stop.add(n);
        n
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }
}

/// The output of a match: `l` with `r`'s payload under `into` (its JSON
/// text when it is JSON, else a JSON string of it), and an offset hashed
/// from both UIDs. `None` when `l`'s payload is not a JSON object.
fn joined(l: &Event, r: &Event, into: &str) -> Option<Event> {
    let value = match serde_json::from_slice::<&serde_json::value::RawValue>(&r.message) {
        Ok(v) => v.get().to_owned(),
        Err(_) => serde_json::Value::from(String::from_utf8_lossy(&r.message)).to_string(),
    };
    let mut e = l.clone();
    if !crate::enrich::merge(&mut e, into, &value) {
        return None;
    }
    e.offset = pair_offset(l, r);
    Some(e)
}

/// The offset of the output of `l` joined with `r`: xxh64 (seed
/// "JOIN") of both UIDs, each as host, 0xFF, pid (little endian), type,
/// 0xFF, offset (little endian).
pub fn pair_offset(l: &Event, r: &Event) -> u64 {
    let mut id = Vec::with_capacity(64);
    for e in [l, r] {
        id.extend_from_slice(e.host.as_bytes());
        id.push(0xFF);
        id.extend_from_slice(&e.pid.to_le_bytes());
        id.extend_from_slice(e.ty.as_bytes());
        id.push(0xFF);
        id.extend_from_slice(&e.offset.to_le_bytes());
    }
    xxhash_rust::xxh64::xxh64(&id, 0x4A4F_494E)
}

/// Outputs as one batch whose acknowledgement settles every share they
/// hold once the batch is settled.
pub fn into_batch(outs: Vec<Out>) -> Option<Batch> {
    if outs.is_empty() {
        return None;
    }
    let mut events = Vec::with_capacity(outs.len());
    let mut acks = Vec::with_capacity(outs.len() * 2);
    for o in outs {
        events.push(o.event);
        acks.extend(o.acks);
    }
    let token = AckToken::new(move |status| {
        for a in acks {
            match status {
                AckStatus::Delivered => a.complete(),
                AckStatus::Failed => a.fail(),
            }
        }
    });
    Some(Batch::new(events, token))
}

/// The join stage of a pipeline: the second input and the ops after it.
#[derive(Debug)]
pub struct JoinPart {
    pub stage: JoinStage,
    /// Its place among the pipeline's ops (for stage metrics).
    pub index: usize,
    /// The `Join`'s stream.
    pub right: Inlet,
    /// Where the stream's undecodable input and the batches its source
    /// gave up on go: the pipeline's `OnError`, or a counted drop.
    pub right_screen: crate::pipeline::Screen,
    pub post: Vec<Compiled>,
    /// A graceful stop of the process.
    pub shutdown: CancellationToken,
    /// Cancelled when a reload replaces or removes this pipeline.
    pub retired: CancellationToken,
}

impl PipelineTask {
    /// The loop of a pipeline with a `Join`: batches of both inputs are
    /// absorbed, a timer releases what is due.
    pub(crate) async fn run_joined(mut self, mut j: JoinPart) {
        let mut tick = tokio::time::interval(j.stage.tick_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut left_open, mut right_open) = (true, true);
        while left_open || right_open {
            let mut out = Vec::new();
            tokio::select! {
                biased;
                _ = self.force.cancelled() => break,
                _ = j.shutdown.cancelled(), if !j.stage.is_stopped() => {
                    self.stop_join(&mut j, "the process stops");
                }
                _ = j.retired.cancelled(), if !j.stage.is_stopped() => {
                    self.stop_join(&mut j, "a reload replaced the pipeline");
                }
                _ = tick.tick() => j.stage.release(Instant::now(), &self.metrics, &mut out),
                b = self.input.recv(), if left_open => match b {
                    Some(batch) => {
                        let ctx = crate::pipeline::ctx!(self);
                        if let Some(batch) = crate::pipeline::prepare(&ctx, &mut self.stages, batch).await {
                            if let Some(sm) = self.metrics.stages.get(j.index) {
                                sm.events_in.add(batch.len() as u64);
                            }
                            j.stage.absorb(Side::Left, batch, &self.metrics, &mut out);
                        }
                    }
                    None => {
                        left_open = false;
                        if !j.stage.is_stopped() {
                            j.stage.end(Side::Left, &self.metrics, &mut out);
                        }
                    }
                },
                b = j.right.recv(), if right_open => match b {
                    Some(batch) => {
                        let screened = crate::pipeline::screen(
                            Some(&j.right_screen),
                            batch,
                            &self.metrics,
                            &self.force,
                        )
                        .await;
                        if let Some(batch) = screened {
                            j.stage.absorb(Side::Right, batch, &self.metrics, &mut out);
                        }
                    }
                    None => {
                        right_open = false;
                        if !j.stage.is_stopped() {
                            j.stage.end(Side::Right, &self.metrics, &mut out);
                        }
                    }
                },
            }
            if let Some(batch) = into_batch(out) {
                let force = self.force.clone();
                let work = self.emit_joined(&mut j, batch);
                tokio::select! {
                    biased;
                    _ = force.cancelled() => break,
                    _ = work => {}
                }
            }
        }
        if self.force.is_cancelled() {
            j.stage.stop();
            for b in j.right.close_and_drain() {
                self.metrics
                    .undelivered
                    .add(Undelivered::Abandoned, b.len() as u64);
                b.ack.fail();
            }
            self.abandon_rest();
        }
    }

    fn stop_join(&self, j: &mut JoinPart, why: &str) {
        let held = j.stage.stop();
        if held > 0 {
            tracing::info!(
                events = held,
                "{why}: the events a Join held are reported failed; their sources send them again"
            );
        }
    }

    /// Hands join outputs through the ops after the join to the outputs.
    async fn emit_joined(&mut self, j: &mut JoinPart, mut batch: Batch) {
        let mut ctx = crate::pipeline::ctx!(self);
        ctx.first_stage = j.index + 1;
        crate::pipeline::run_stages(&ctx, &mut j.post, &mut batch).await;
        if let Some(sm) = ctx.metrics.stages.get(j.index) {
            sm.events_out.add(batch.len() as u64);
        }
        if batch.is_empty() {
            batch.ack.complete();
            return;
        }
        let first = ctx.first_stage + j.post.len();
        crate::pipeline::deliver(&ctx, first, &mut self.outputs, batch).await;
    }
}

/// One `Join` stage's samples.
#[derive(Debug)]
struct JoinMetrics {
    pipeline: String,
    stage: String,
    counts: Arc<JoinCounts>,
}

impl ConnectorMetrics for JoinMetrics {
    fn samples(&self, out: &mut Vec<Sample>) {
        let labels = |s: Sample| {
            s.label("pipeline", self.pipeline.clone())
                .label("stage", self.stage.clone())
        };
        let c = &self.counts;
        for (result, n) in [
            ("hit", c.hits.get()),
            ("miss", c.misses.get()),
            ("unjoinable", c.unjoinable.get()),
        ] {
            out.push(
                labels(Sample::counter(
                    "dab_join_total",
                    "Join results: hit (an output made from a match), miss (an input event that left with no match), unjoinable (a match whose input payload is not a JSON object)",
                    n,
                ))
                .label("result", result),
            );
        }
        for side in [Side::Left, Side::Right] {
            let s = side as usize;
            out.push(
                labels(Sample::gauge(
                    "dab_join_buffered",
                    "Events a Join holds now, by side (left: the pipeline's input, right: the joined stream)",
                    c.buffered[s].get() as f64,
                ))
                .label("side", side.name()),
            );
            out.push(
                labels(Sample::counter(
                    "dab_join_overflow_total",
                    "Events a Join did not hold because their side held max_buffered (matched against what was held, then let go)",
                    c.overflow[s].get(),
                ))
                .label("side", side.name()),
            );
        }
        for side in [Side::Left, Side::Right] {
            out.push(
                labels(Sample::counter(
                    "dab_join_late_total",
                    "Events that came more than `lateness` behind their own side, or after the other side's watermark had passed their bound (more disorder than `lateness`; they may miss matches), by side",
                    c.late[side as usize].get(),
                ))
                .label("side", side.name()),
            );
        }
        out.push(labels(Sample::counter(
            "dab_join_failed_on_stop_total",
            "Events a Join held when its pipeline stopped, reported failed to their sources (sent again)",
            c.failed_on_stop.get(),
        )));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use bytes::Bytes;

    /// A payload that is not JSON.
    const NOT_JSON: Bytes = Bytes::from_static(b"not json");
    use dab_api::Text;
    use std::sync::Mutex;

    fn ev(host: &str, ts_s: i64, key: &str, offset: u64) -> Event {
        Event {
            timestamp: ts_s * 1_000_000_000,
            host: Text::from(host.to_owned()),
            ty: Text::from_static("T"),
            offset,
            message: Bytes::from(format!("{{\"k\":\"{key}\",\"h\":\"{host}\"}}")),
            ..Event::default()
        }
    }

    fn stage(within_s: u64, miss: Miss, max: u64) -> JoinStage {
        let mut j = JoinStage::new(&Join {
            stream: "R".into(),
            on: Operand::Payload(vec!["k".into()]),
            within: Duration::from_secs(within_s),
            lateness: Duration::from_secs(within_s),
            into: "r".into(),
            miss,
            max_buffered: max,
            idle: Duration::from_secs(3600),
        });
        // No warm-up: bounds are judged from the first event on.
        j.warmup.over = true;
        j
    }

    fn tracked(events: Vec<Event>, log: &Arc<Mutex<Vec<AckStatus>>>) -> Batch {
        let log = log.clone();
        Batch::new(events, AckToken::new(move |s| log.lock().unwrap().push(s)))
    }

    fn settle(out: Vec<Out>) -> Vec<Event> {
        let b = into_batch(out);
        match b {
            Some(b) => {
                let ev = b.events.clone();
                b.ack.complete();
                ev
            }
            None => vec![],
        }
    }

    /// Both arrival orders, a pair outside the bound, a miss kept, and
    /// acknowledgements held until the bound passed.
    #[test]
    fn matches_within_the_bound_in_either_order() {
        let m = PipelineMetrics::default();
        let mut j = stage(10, Miss::Keep, 100);
        let acks = Arc::new(Mutex::new(Vec::new()));
        let mut out = Vec::new();
        // Left first, then right 5 s later: a match.
        j.absorb(
            Side::Left,
            tracked(vec![ev("l", 100, "a", 1)], &acks),
            &m,
            &mut out,
        );
        j.absorb(
            Side::Right,
            tracked(vec![ev("r", 105, "a", 1)], &acks),
            &m,
            &mut out,
        );
        // Right first, then left: a match.
        j.absorb(
            Side::Right,
            tracked(vec![ev("r", 110, "b", 2)], &acks),
            &m,
            &mut out,
        );
        j.absorb(
            Side::Left,
            tracked(vec![ev("l", 101, "b", 2)], &acks),
            &m,
            &mut out,
        );
        // Outside the bound: 11 s apart.
        j.absorb(
            Side::Left,
            tracked(vec![ev("l", 102, "c", 3)], &acks),
            &m,
            &mut out,
        );
        j.absorb(
            Side::Right,
            tracked(vec![ev("r", 113, "c", 3)], &acks),
            &m,
            &mut out,
        );
        let got = settle(std::mem::take(&mut out));
        assert_eq!(got.len(), 2, "{got:?}");
        for e in &got {
            let v: serde_json::Value = serde_json::from_slice(&e.message).unwrap();
            assert_eq!(v["k"], v["r"]["k"]);
            assert_eq!(v["h"], "l");
            assert_eq!(v["r"]["h"], "r");
        }
        // Nothing acknowledged yet: every event is still held.
        assert!(acks.lock().unwrap().is_empty());
        // Both sides move past 102 + 2 * 10: everything leaves.
        j.absorb(
            Side::Left,
            tracked(vec![ev("l", 200, "z", 9)], &acks),
            &m,
            &mut out,
        );
        j.absorb(
            Side::Right,
            tracked(vec![ev("r", 200, "y", 9)], &acks),
            &m,
            &mut out,
        );
        let rest = settle(std::mem::take(&mut out));
        // The unmatched left `c` is kept as it was.
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0], ev("l", 102, "c", 3));
        assert_eq!(acks.lock().unwrap().len(), 6);
        assert!(acks
            .lock()
            .unwrap()
            .iter()
            .all(|s| *s == AckStatus::Delivered));
    }

    #[test]
    fn a_joined_event_is_the_same_whatever_the_order() {
        let m = PipelineMetrics::default();
        let run = |right_first: bool| {
            let mut j = stage(10, Miss::Drop, 100);
            let mut out = Vec::new();
            let l = Batch::new(vec![ev("l", 100, "a", 1)], AckToken::untracked());
            let r = Batch::new(
                vec![ev("r", 95, "a", 7), ev("r", 104, "a", 8)],
                AckToken::untracked(),
            );
            if right_first {
                j.absorb(Side::Right, r, &m, &mut out);
                j.absorb(Side::Left, l, &m, &mut out);
            } else {
                j.absorb(Side::Left, l, &m, &mut out);
                j.absorb(Side::Right, r, &m, &mut out);
            }
            j.end(Side::Left, &m, &mut out);
            j.end(Side::Right, &m, &mut out);
            let mut e = settle(out);
            e.sort_by_key(|e| e.offset);
            e
        };
        let a = run(false);
        assert_eq!(a.len(), 2, "one output per match");
        assert_eq!(a, run(true));
        assert_ne!(a[0].offset, a[1].offset);
    }

    #[test]
    fn a_miss_is_dropped_and_counted_and_a_failed_output_fails_its_sources() {
        let m = PipelineMetrics::default();
        let mut j = stage(1, Miss::Drop, 100);
        let acks = Arc::new(Mutex::new(Vec::new()));
        let mut out = Vec::new();
        j.absorb(
            Side::Left,
            tracked(vec![ev("l", 100, "a", 1), ev("l", 100, "x", 2)], &acks),
            &m,
            &mut out,
        );
        j.absorb(
            Side::Right,
            tracked(vec![ev("r", 100, "a", 1)], &acks),
            &m,
            &mut out,
        );
        let b = into_batch(std::mem::take(&mut out)).unwrap();
        assert_eq!(b.len(), 1);
        b.ack.fail();
        j.end(Side::Left, &m, &mut out);
        j.end(Side::Right, &m, &mut out);
        assert!(out.is_empty());
        assert_eq!(m.dropped_count(DropReason::JoinMiss), 1);
        assert_eq!(
            *acks.lock().unwrap(),
            vec![AckStatus::Failed, AckStatus::Failed]
        );
    }

    #[test]
    fn overflow_and_stop() {
        let m = PipelineMetrics::default();
        let mut j = stage(10, Miss::Keep, 1);
        let acks = Arc::new(Mutex::new(Vec::new()));
        let mut out = Vec::new();
        j.absorb(
            Side::Left,
            tracked(vec![ev("l", 100, "a", 1), ev("l", 100, "b", 2)], &acks),
            &m,
            &mut out,
        );
        // The second did not fit: it left at once, unchanged.
        assert_eq!(settle(std::mem::take(&mut out)).len(), 1);
        assert_eq!(j.counts.overflow[0].get(), 1);
        assert_eq!(j.stop(), 1);
        assert_eq!(*acks.lock().unwrap(), vec![AckStatus::Failed]);
        let mut e = ev("r", 100, "a", 1);
        e.message = NOT_JSON;
        j.absorb(Side::Right, tracked(vec![e], &acks), &m, &mut out);
        assert_eq!(acks.lock().unwrap().len(), 2);
    }

    /// Many events under one key: each match is a range, not a scan, and
    /// every pair within the bound is found.
    #[test]
    fn a_hot_key_matches_by_range() {
        let m = PipelineMetrics::default();
        let mut j = stage(1, Miss::Keep, 1_000_000);
        let mut out = Vec::new();
        let rights: Vec<Event> = (0..20_000)
            .map(|i| ev_ms("r", i, "hot", i as u64))
            .collect();
        j.absorb(
            Side::Right,
            Batch::new(rights, AckToken::untracked()),
            &m,
            &mut out,
        );
        j.absorb(
            Side::Left,
            Batch::new(vec![ev_ms("l", 10_000, "hot", 1)], AckToken::untracked()),
            &m,
            &mut out,
        );
        // Right events from 9,000 ms to 11,000 ms: 2,001 pairs.
        assert_eq!(settle(out).len(), 2_001);
    }

    /// A right event a left batch matched is acknowledged only after that
    /// left batch, even when it leaves the buffer first.
    #[test]
    fn a_matched_right_event_waits_for_the_left_batch() {
        let m = PipelineMetrics::default();
        let mut j = stage(1, Miss::Keep, 100);
        let order = Arc::new(Mutex::new(Vec::new()));
        let named = |name: &'static str, events: Vec<Event>| {
            let order = order.clone();
            Batch::new(
                events,
                AckToken::new(move |_| order.lock().unwrap().push(name)),
            )
        };
        let mut out = Vec::new();
        j.absorb(
            Side::Right,
            named("right", vec![ev("r", 100, "a", 1)]),
            &m,
            &mut out,
        );
        j.absorb(
            Side::Left,
            named("left", vec![ev("l", 101, "a", 1)]),
            &m,
            &mut out,
        );
        let pairs = into_batch(std::mem::take(&mut out)).unwrap();
        pairs.ack.complete();
        // The left side moves on: the right event leaves the buffer.
        j.absorb(
            Side::Left,
            named("later", vec![ev("l", 200, "z", 2)]),
            &m,
            &mut out,
        );
        assert!(out.is_empty());
        assert!(
            order.lock().unwrap().is_empty(),
            "the right event waits for its left batch"
        );
        // The right side moves on: the left event leaves, then both are done.
        j.absorb(
            Side::Right,
            Batch::new(vec![ev("r", 300, "y", 2)], AckToken::untracked()),
            &m,
            &mut out,
        );
        let _ = settle(out);
        assert_eq!(order.lock().unwrap()[..2], ["left", "right"]);
    }

    /// After a restart whose clients take longer than `idle` to begin, the
    /// warm-up still holds what they send: it counts from the sources.
    #[test]
    fn the_warm_up_counts_from_the_sources_not_the_start() {
        let m = PipelineMetrics::default();
        let idle = Duration::from_millis(200);
        let mut j = JoinStage::new(&Join {
            stream: "R".into(),
            on: Operand::Payload(vec!["k".into()]),
            within: Duration::from_secs(1),
            lateness: Duration::from_secs(1),
            into: "r".into(),
            miss: Miss::Keep,
            max_buffered: 100,
            idle,
        });
        // The clients come back later than `idle` after the start.
        std::thread::sleep(idle + Duration::from_millis(100));
        let mut out = Vec::new();
        // The right side's resent requests come first and reach far ahead...
        j.absorb(
            Side::Right,
            Batch::new(vec![ev("r", 500, "z", 1)], AckToken::untracked()),
            &m,
            &mut out,
        );
        // ...then the left side's, whose matches come after them.
        j.absorb(
            Side::Left,
            Batch::new(vec![ev("l", 100, "a", 1)], AckToken::untracked()),
            &m,
            &mut out,
        );
        j.absorb(
            Side::Right,
            Batch::new(vec![ev("r", 100, "a", 2)], AckToken::untracked()),
            &m,
            &mut out,
        );
        assert_eq!(j.counts.late[0].get(), 0, "nothing is late in the warm-up");
        j.release(Instant::now() + idle, &m, &mut out);
        let outs = settle(out);
        assert_eq!(outs.len(), 1, "one output: the match, not a miss");
        assert!(String::from_utf8_lossy(&outs[0].message).contains("\"r\":"));
        assert_eq!(j.counts.misses.get(), 0);
    }

    /// An event more than `lateness` behind its own side is counted late:
    /// the other side may have let go of its matches.
    #[test]
    fn disorder_beyond_lateness_within_a_side_is_counted_late() {
        let m = PipelineMetrics::default();
        let mut j = stage(1, Miss::Keep, 100);
        let mut out = Vec::new();
        for (ts, n) in [(100, 1), (99, 2), (97, 3)] {
            j.absorb(
                Side::Left,
                Batch::new(vec![ev("l", ts, "a", n)], AckToken::untracked()),
                &m,
                &mut out,
            );
        }
        // 99 is 1 s behind (within `lateness`), 97 is 3 s behind.
        assert_eq!(j.counts.late[0].get(), 1);
        assert_eq!(j.counts.late[1].get(), 0);
    }

    fn ev_ms(host: &str, ms: i64, key: &str, offset: u64) -> Event {
        let mut e = ev(host, 0, key, offset);
        e.timestamp = ms * 1_000_000;
        e
    }
}
