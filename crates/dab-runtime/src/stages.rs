//! The stages of SPEC section 1, compiled for the runtime and applied a
//! batch at a time: FilterType, Filter, WithSampleRate, WithRateLimit.

use std::num::NonZeroU32;
use std::time::Duration;

use bytes::Bytes;
use dab_api::{Batch, Text};
use dab_plan::model::{OnLimit, Predicate, Stage};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::metrics::{DropReason, PipelineMetrics};
use crate::output::OutputTx;
use crate::predicate::eval;
use crate::sample::keep;

pub enum Compiled {
    FilterType(Vec<Bytes>),
    Filter(Predicate),
    Sample {
        rate: u64,
        salt: u64,
        tag: Text,
    },
    RateLimit {
        limiter: DefaultDirectRateLimiter,
        burst: u32,
        on_limit: Limit,
    },
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
        })
    }
}

pub const SAMPLE_TAG: &str = "dab.sample_rate";

/// Compiles a stage; `overflow` resolves the target of `on_limit = overflow`.
pub fn compile(s: &Stage, overflow: impl Fn(&str) -> Option<OutputTx>) -> Compiled {
    match s {
        Stage::FilterType { types } => Compiled::FilterType(
            types
                .iter()
                .map(|t| Bytes::copy_from_slice(t.as_bytes()))
                .collect(),
        ),
        Stage::Filter { predicate } => Compiled::Filter(predicate.clone()),
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
                limiter: RateLimiter::direct(quota),
                burst: burst_nz.get(),
                on_limit: match on_limit {
                    OnLimit::Wait => Limit::Wait,
                    OnLimit::Drop => Limit::Drop,
                    OnLimit::Overflow(name) => overflow(name).map_or(Limit::Drop, Limit::Overflow),
                },
            }
        }
    }
}

impl Compiled {
    /// Applies the stage; dropped events are counted by reason.
    pub async fn apply(&mut self, batch: &mut Batch, m: &PipelineMetrics) {
        let before = batch.events.len();
        match self {
            Compiled::FilterType(types) => {
                batch
                    .events
                    .retain(|e| types.iter().any(|t| t.as_ref() == e.ty.as_bytes()));
                m.dropped(DropReason::Filter, (before - batch.events.len()) as u64);
            }
            Compiled::Filter(p) => {
                batch.events.retain(|e| eval(p, e));
                m.dropped(DropReason::Filter, (before - batch.events.len()) as u64);
            }
            Compiled::Sample { rate, salt, tag } => {
                batch.events.retain(|e| keep(e, *rate, *salt));
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
                    batch.events.retain(|_| limiter.check().is_ok());
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
                            b.ack.fail();
                        }
                    }
                }
            },
        }
    }
}
