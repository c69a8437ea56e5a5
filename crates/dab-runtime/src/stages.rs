//! The stages of SPEC section 1, compiled for the runtime and applied a
//! batch at a time: FilterType, Filter, WithSampleRate, WithRateLimit.

use std::num::NonZeroU32;
use std::time::Duration;

use bytes::Bytes;
use dab_api::{Batch, Text};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dab_api::signature::Signer;
use dab_plan::model::{OnLimit, Operand, Predicate, Stage, Value};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use dab_api::metrics::ConnectorMetrics;

use crate::enrich::{EnrichOp, Table};
use crate::metrics::{DropReason, PipelineMetrics, Undelivered};
use crate::output::OutputTx;
use crate::predicate::{eval, value_text};
use crate::reliability::Tracker;
use crate::sample::{keep, uid_hash};

pub enum Compiled {
    FilterType(Vec<Bytes>),
    Filter(Predicate),
    Sample {
        rate: u64,
        salt: u64,
        tag: Text,
    },
    RateLimit {
        /// Shared with the same op of the pipeline a reload replaced, so
        /// that a rebuild does not hand out a fresh burst.
        limiter: Arc<DefaultDirectRateLimiter>,
        burst: u32,
        on_limit: Limit,
    },
    VerifySignature {
        signer: Signer,
        on_error: Option<OutputTx>,
    },
    /// Shared with the same op of the pipeline a reload replaced, so that
    /// a rebuild does not forget the UIDs seen in the window.
    Dedup(Arc<Mutex<Dedup>>),
    /// `SetTag(k = v, ...)`: a literal's text is made once.
    SetTag(Vec<(Text, TagValue)>),
    RemoveTag(Vec<String>),
    /// `Route(cond, Name)`: the events for which `cond` holds go to
    /// `target` and leave the batch.
    Route {
        predicate: Predicate,
        target: OutputTx,
    },
    /// `Enrich(Table, ...)` (`enrich.rs`).
    Enrich(EnrichOp),
}

/// The state of an op that outlives a reload which leaves the op unchanged:
/// a dedup window, a rate limiter's bucket.
#[derive(Clone)]
pub enum StageState {
    Dedup(Arc<Mutex<Dedup>>),
    Limiter(Arc<DefaultDirectRateLimiter>),
    /// An `Enrich` stage's table: a rebuild does not read the file again.
    Table(Arc<Table>),
}

impl std::fmt::Debug for StageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StageState::Dedup(_) => "StageState::Dedup",
            StageState::Limiter(_) => "StageState::Limiter",
            StageState::Table(_) => "StageState::Table",
        })
    }
}

/// Remembers UIDs for at least `within` and at most twice that: two
/// generations of 64-bit UID hashes, the older dropped when the newer is
/// `within` old (or holds `max` entries, which also starts a new one and
/// is counted). About 20 to 40 bytes per remembered UID across both
/// generations (a `HashSet<u64>` entry plus table slack), so at most about
/// 80 MB with the default 1,000,000 per generation. A 64-bit hash makes a
/// false "duplicate" a 1 in 10^13 event at a million UIDs.
#[derive(Debug)]
pub struct Dedup {
    within: Duration,
    max: usize,
    current: HashSet<u64>,
    previous: HashSet<u64>,
    started: Instant,
    pub early_rotations: u64,
}

/// The salt of the dedup hash, apart from every sampler's op position.
const DEDUP_SALT: u64 = u64::MAX;

impl Dedup {
    pub fn new(within: Duration, max: usize) -> Dedup {
        Dedup {
            within,
            max: max.max(1),
            current: HashSet::new(),
            previous: HashSet::new(),
            started: Instant::now(),
            early_rotations: 0,
        }
    }

    /// True when the UID was seen within the window; remembers it otherwise.
    pub fn seen(&mut self, e: &dab_api::Event, now: Instant) -> bool {
        if now.duration_since(self.started) >= self.within {
            self.rotate(now);
        } else if self.current.len() >= self.max {
            self.early_rotations += 1;
            self.rotate(now);
        }
        let h = uid_hash(e, DEDUP_SALT);
        if self.current.contains(&h) || self.previous.contains(&h) {
            return true;
        }
        self.current.insert(h);
        false
    }

    fn rotate(&mut self, now: Instant) {
        self.previous = std::mem::take(&mut self.current);
        self.started = now;
    }
}

#[derive(Debug)]
pub enum Limit {
    Wait,
    Drop,
    Overflow(OutputTx),
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compiled::FilterType(_) => "FilterType",
            Compiled::Filter(_) => "Filter",
            Compiled::Sample { .. } => "Sample",
            Compiled::RateLimit { .. } => "RateLimit",
            Compiled::VerifySignature { .. } => "VerifySignature",
            Compiled::Dedup(_) => "Dedup",
            Compiled::Route { .. } => "Route",
            Compiled::SetTag(_) => "SetTag",
            Compiled::RemoveTag(_) => "RemoveTag",
            Compiled::Enrich(_) => "Enrich",
        })
    }
}

pub const SAMPLE_TAG: &str = "dab.sample_rate";

/// What `SetTag` sets a tag to.
#[derive(Debug)]
pub enum TagValue {
    Literal(Text),
    /// The value of this field of each event; no value, no change.
    Field(Operand),
}

/// Events a dedup generation holds at most.
pub const DEDUP_MAX_PER_GENERATION: usize = 1_000_000;

/// Compiles a stage; `overflow` resolves the target of `on_limit = overflow`
/// and `on_error` is the pipeline's `OnError` output. Fails when a stage
/// cannot be built (a table that does not load).
pub fn compile(
    s: &Stage,
    overflow: impl Fn(&str) -> Option<OutputTx>,
    on_error: Option<OutputTx>,
) -> Result<Compiled, String> {
    compile_with(s, overflow, on_error, None)
}

/// Like `compile`, continuing `prior`: the state of the same op in the
/// pipeline a reload replaces (ignored when it is another op's).
pub fn compile_with(
    s: &Stage,
    overflow: impl Fn(&str) -> Option<OutputTx>,
    on_error: Option<OutputTx>,
    prior: Option<StageState>,
) -> Result<Compiled, String> {
    Ok(match s {
        // Built by the pipeline as its window stage (`crate::window`),
        // never as one of these.
        Stage::Aggregate(_) => {
            return Err(
                "`Window(...).Aggregate(...)` is a pipeline's window stage, not an op of an output"
                    .to_owned(),
            )
        }
        // Built by the pipeline as its join stage (`crate::join`).
        Stage::Join(_) => {
            return Err("`Join(...)` is a pipeline's join stage, not an op of an output".to_owned())
        }
        Stage::Enrich(e) => Compiled::Enrich(EnrichOp::new(
            e,
            on_error,
            match prior {
                Some(StageState::Table(t)) => Some(t),
                _ => None,
            },
        )?),
        // The key was read when the set was checked (`dab_plan::model::Secret`).
        Stage::VerifySignature { secret, .. } => Compiled::VerifySignature {
            signer: Signer::new(secret.bytes()),
            on_error,
        },
        Stage::Dedup { within } => Compiled::Dedup(match prior {
            Some(StageState::Dedup(d)) => d,
            _ => Arc::new(Mutex::new(Dedup::new(*within, DEDUP_MAX_PER_GENERATION))),
        }),
        Stage::FilterType { types } => Compiled::FilterType(
            types
                .iter()
                .map(|t| Bytes::copy_from_slice(t.as_bytes()))
                .collect(),
        ),
        Stage::Filter { predicate } => Compiled::Filter(predicate.clone()),
        Stage::SetTag { tags } => Compiled::SetTag(
            tags.iter()
                .map(|(k, v)| {
                    let value = match v {
                        Operand::Value(lit) => TagValue::Literal(Text::from(match lit {
                            Value::Str(s) => s.clone(),
                            other => other.to_string(),
                        })),
                        field => TagValue::Field(field.clone()),
                    };
                    (Text::from(k.clone()), value)
                })
                .collect(),
        ),
        Stage::RemoveTag { keys } => Compiled::RemoveTag(keys.clone()),
        Stage::Route { predicate, target } => Compiled::Route {
            predicate: predicate.clone(),
            target: overflow(target)
                .ok_or_else(|| format!("the route target `{target}` was not built"))?,
        },
        Stage::Sample { rate, salt } => Compiled::Sample {
            rate: *rate,
            salt: *salt,
            tag: Text::from(rate.to_string()),
        },
        Stage::RateLimit {
            per_second,
            burst,
            on_limit,
        } => {
            let period = Duration::from_secs_f64(1.0 / per_second.max(1e-9));
            let burst_nz = NonZeroU32::new((*burst).max(1)).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
                .allow_burst(burst_nz);
            Compiled::RateLimit {
                limiter: match prior {
                    Some(StageState::Limiter(l)) => l,
                    _ => Arc::new(RateLimiter::direct(quota)),
                },
                burst: burst_nz.get(),
                on_limit: match on_limit {
                    OnLimit::Wait => Limit::Wait,
                    OnLimit::Drop => Limit::Drop,
                    OnLimit::Overflow(name) => overflow(name).map_or(Limit::Drop, Limit::Overflow),
                },
            }
        }
    })
}

impl Compiled {
    /// True for a `Route`, whose events out of the stage are fewer than in
    /// by what it took.
    pub fn routes(&self) -> bool {
        matches!(self, Compiled::Route { .. })
    }

    /// What a reload that keeps this op hands to its successor.
    pub fn state(&self) -> Option<StageState> {
        match self {
            Compiled::Dedup(d) => Some(StageState::Dedup(Arc::clone(d))),
            Compiled::RateLimit { limiter, .. } => Some(StageState::Limiter(Arc::clone(limiter))),
            Compiled::Enrich(op) => Some(StageState::Table(Arc::clone(op.table()))),
            _ => None,
        }
    }

    /// The op's own samples, for ops that keep any, labelled with its
    /// pipeline and position (`PipelineMetrics::ops`).
    pub fn metrics(&self, pipeline: &str, stage: usize) -> Option<Arc<dyn ConnectorMetrics>> {
        match self {
            Compiled::Enrich(op) => Some(op.metrics(pipeline, stage)),
            _ => None,
        }
    }

    /// Applies the stage; dropped events are counted by reason.
    pub async fn apply(&mut self, batch: &mut Batch, m: &PipelineMetrics) {
        self.apply_tracked(batch, m, None).await;
    }

    /// Like `apply`; events dropped on purpose are also reported to the
    /// reliability tracker, so they do not count as missing.
    pub async fn apply_tracked(
        &mut self,
        batch: &mut Batch,
        m: &PipelineMetrics,
        tracker: Option<&Tracker>,
    ) {
        let before = batch.events.len();
        match self {
            Compiled::Enrich(op) => op.apply(batch, m, tracker).await,
            Compiled::Dedup(d) => {
                let now = Instant::now();
                // Held for one batch, never across an await; a panic while
                // held leaves a window that is still usable.
                let mut d = d.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                batch.events.retain(|e| !d.seen(e, now));
                m.dropped(DropReason::Duplicate, (before - batch.events.len()) as u64);
            }
            Compiled::VerifySignature { signer, on_error } => {
                let mut bad = Vec::new();
                let mut good = Vec::with_capacity(before);
                for e in batch.events.drain(..) {
                    if signer.verify(&e) {
                        good.push(e);
                    } else {
                        bad.push(e);
                    }
                }
                batch.events = good;
                if !bad.is_empty() {
                    let n = bad.len() as u64;
                    m.failed(n);
                    match on_error {
                        Some(target) => {
                            let routed = Batch::new(bad, batch.ack.share());
                            if let Err(b) = target.send(routed).await {
                                m.undelivered.add(Undelivered::ReaderGone, n);
                                b.ack.fail();
                            }
                        }
                        None => m.dropped(DropReason::BadSignature, n),
                    }
                }
            }
            Compiled::FilterType(types) => {
                keep_where(&mut batch.events, tracker, |e| {
                    types.iter().any(|t| t.as_ref() == e.ty.as_bytes())
                });
                m.dropped(DropReason::Filter, (before - batch.events.len()) as u64);
            }
            Compiled::Filter(p) => {
                keep_where(&mut batch.events, tracker, |e| eval(p, e));
                m.dropped(DropReason::Filter, (before - batch.events.len()) as u64);
            }
            Compiled::SetTag(tags) => {
                for e in &mut batch.events {
                    for (k, v) in tags.iter() {
                        let value = match v {
                            TagValue::Literal(t) => t.clone(),
                            TagValue::Field(o) => match value_text(e, o) {
                                Some(s) => Text::from(s),
                                None => continue,
                            },
                        };
                        // `set_tag` forgets the arrival bytes.
                        e.set_tag(k.clone(), value);
                    }
                }
            }
            Compiled::RemoveTag(keys) => {
                for e in &mut batch.events {
                    for k in keys.iter() {
                        e.remove_tag(k);
                    }
                }
            }
            Compiled::Route { predicate, target } => {
                // Each event is evaluated once: up to the first match,
                // then the rest while splitting.
                let Some(first) = batch.events.iter().position(|e| eval(predicate, e)) else {
                    return;
                };
                let mut taken = Vec::new();
                let mut rest = Vec::with_capacity(batch.events.len());
                for (i, e) in batch.events.drain(..).enumerate() {
                    if i == first || (i > first && eval(predicate, &e)) {
                        taken.push(e);
                    } else {
                        rest.push(e);
                    }
                }
                batch.events = rest;
                // The taken events share the batch's acknowledgement: the
                // source hears "delivered" once both parts are.
                if let Err(b) = target.send(Batch::new(taken, batch.ack.share())).await {
                    m.undelivered.add(Undelivered::ReaderGone, b.len() as u64);
                    b.ack.fail();
                }
            }
            Compiled::Sample { rate, salt, tag } => {
                keep_where(&mut batch.events, tracker, |e| keep(e, *rate, *salt));
                for e in &mut batch.events {
                    e.set_tag(Text::from_static(SAMPLE_TAG), tag.clone());
                }
                m.dropped(DropReason::Sample, (before - batch.events.len()) as u64);
            }
            Compiled::RateLimit {
                limiter,
                burst,
                on_limit,
            } => match on_limit {
                Limit::Wait => {
                    // Wait for tokens a burst at a time: back pressure, nothing lost.
                    let mut left = batch.events.len();
                    while left > 0 {
                        let n = left.min(*burst as usize);
                        let nz = NonZeroU32::new(n as u32).unwrap_or(NonZeroU32::MIN);
                        // n <= burst, so capacity is always sufficient.
                        let _ = limiter.until_n_ready(nz).await;
                        left -= n;
                    }
                }
                Limit::Drop => {
                    keep_where(&mut batch.events, tracker, |_| limiter.check().is_ok());
                    m.dropped(DropReason::RateLimit, (before - batch.events.len()) as u64);
                }
                Limit::Overflow(target) => {
                    let mut excess = Vec::new();
                    let mut kept = Vec::with_capacity(before);
                    for e in batch.events.drain(..) {
                        if limiter.check().is_ok() {
                            kept.push(e);
                        } else {
                            excess.push(e);
                        }
                    }
                    batch.events = kept;
                    if !excess.is_empty() {
                        let spill = Batch::new(excess, batch.ack.share());
                        if let Err(b) = target.send(spill).await {
                            // The overflow target is gone (shutdown): the
                            // copy is lost, and its source hears so.
                            m.undelivered.add(Undelivered::ReaderGone, b.len() as u64);
                            b.ack.fail();
                        }
                    }
                }
            },
        }
    }
}

/// `retain`, but with a tracker the dropped events are reported to it first
/// (moved aside, not cloned; without one this is a plain `retain`).
fn keep_where(
    events: &mut Vec<dab_api::Event>,
    tracker: Option<&Tracker>,
    mut keep: impl FnMut(&dab_api::Event) -> bool,
) {
    match tracker {
        None => events.retain(|e| keep(e)),
        Some(t) => {
            let (kept, dropped): (Vec<_>, Vec<_>) = events.drain(..).partition(|e| keep(e));
            *events = kept;
            if !dropped.is_empty() {
                t.dropped(&dropped);
            }
        }
    }
}
