//! `WithRateLimitPerSecond(rate, burst = n, on_limit = ...)` and its other
//! name `WithRateLimit`: a token bucket (governor). `wait` waits for tokens
//! a burst at a time (back pressure, nothing lost), `drop` drops the excess
//! (counted), `overflow` sends it to `overflow = Name`. The bucket is the
//! op's state: a reload that keeps the op does not hand out a fresh burst.

use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;
use dab_api::Batch;
use dab_plan::ops::{ArgValue, CheckCx, Code, Diagnostic, Ident, Op as Call, OpClass};
use dab_plan::ops::{OpConfig, OpSpec, Param, ParamType, SideOutput};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::sync::Arc;

use super::{ApplyCx, BuildCx, OpModule, RunStage};
use crate::metrics::DropReason;
use crate::output::OutputTx;

/// The op under one of its names: [`PER_SECOND`] or [`SHORT`].
#[derive(Debug)]
pub struct RateLimit(pub &'static OpSpec);

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub per_second: f64,
    pub burst: u32,
    pub on_limit: OnLimit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnLimit {
    Wait,
    Drop,
    Overflow(String),
}

const NAMED: &[Param] = &[
    Param {
        name: "burst",
        ty: ParamType::Int,
        doc: "bucket size: events allowed at once (default: the rate, at least 1)",
    },
    Param {
        name: "on_limit",
        ty: ParamType::Choice(&["wait", "drop", "overflow"]),
        doc: "wait (default, back pressure), drop (counted), overflow (to `overflow`)",
    },
    Param {
        name: "overflow",
        ty: ParamType::Name,
        doc: "the queue or sink that takes the excess with `on_limit = overflow`",
    },
];

const RATE: Param = Param {
    name: "rate",
    ty: ParamType::Number,
    doc: "events per second, > 0 (0.5 is one event every two seconds)",
};

pub static PER_SECOND: OpSpec = OpSpec {
    name: "WithRateLimitPerSecond",
    class: OpClass::Modifier,
    positional: &[RATE],
    variadic: false,
    named: NAMED,
    other_named: None,
    doc: "At most `rate` events per second (token bucket)",
};

pub static SHORT: OpSpec = OpSpec {
    name: "WithRateLimit",
    class: OpClass::Modifier,
    positional: &[RATE],
    variadic: false,
    named: NAMED,
    other_named: None,
    doc: "Same as WithRateLimitPerSecond",
};

impl OpModule for RateLimit {
    type Config = Config;

    fn spec(&self) -> &'static OpSpec {
        self.0
    }

    fn check(&self, cx: &mut CheckCx<'_>, op: &Call, args: Vec<ArgValue>) -> Option<Config> {
        check(cx, op, args)
    }

    fn build(&self, c: &Config, cx: &mut BuildCx<'_>) -> Result<Box<dyn RunStage>, String> {
        build(c, cx)
    }
}

fn check(cx: &mut CheckCx<'_>, op: &Call, args: Vec<ArgValue>) -> Option<Config> {
    let mut rate = None;
    let mut burst = None;
    let mut on_limit = "wait".to_owned();
    let mut overflow: Option<Ident> = None;
    for (i, a) in args.into_iter().enumerate() {
        match a {
            ArgValue::Number(r, span) if i == 0 => rate = Some((r, span)),
            ArgValue::Int(b, span) => burst = Some((b, span)),
            ArgValue::Choice(c) => on_limit = c,
            ArgValue::Name(n) => overflow = Some(n),
            _ => {}
        }
    }
    let (per_second, rate_span) = rate?;
    let mut ok = true;
    if per_second <= 0.0 {
        ok = false;
        cx.diags.push(
            Diagnostic::new(
                Code::E009,
                rate_span,
                format!("rate must be greater than 0, found {per_second}"),
            )
            .with_label_here("out of range")
            .with_help("the rate is events per second; 0.5 is one event every two seconds"),
        );
    }
    let burst = match burst {
        Some((b, span)) => match u32::try_from(b) {
            Ok(b) if b >= 1 => b,
            _ => {
                ok = false;
                cx.diags.push(
                    Diagnostic::new(
                        Code::E009,
                        span,
                        format!("burst must be between 1 and {}, found {b}", u32::MAX),
                    )
                    .with_label_here("out of range"),
                );
                1
            }
        },
        // One second's worth, at least one event.
        None => per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32,
    };
    // SPEC: every argument naming a queue or sink is a write, so it is
    // resolved and cycle-checked even where it has no effect.
    if let Some(target) = &overflow {
        cx.writes_to(target);
    }
    let on_limit = match (on_limit.as_str(), overflow) {
        ("overflow", Some(target)) => OnLimit::Overflow(target.name),
        ("overflow", None) => {
            ok = false;
            cx.diags.push(
                Diagnostic::new(
                    Code::E007,
                    op.span,
                    "`on_limit = overflow` needs `overflow = Name`",
                )
                .with_label_here("missing `overflow`")
                .with_help("name the queue or sink that takes the excess: `overflow = Spill`"),
            );
            OnLimit::Wait
        }
        (other, Some(target)) => {
            cx.diags.push(
                Diagnostic::new(
                    Code::W002,
                    target.span,
                    format!("`overflow` has no effect with `on_limit = {other}`"),
                )
                .with_label_here("ignored")
                .with_help("add `on_limit = overflow`, or remove `overflow`"),
            );
            if other == "drop" {
                OnLimit::Drop
            } else {
                OnLimit::Wait
            }
        }
        ("drop", None) => OnLimit::Drop,
        _ => OnLimit::Wait,
    };
    ok.then_some(Config {
        per_second,
        burst,
        on_limit,
    })
}

impl OpConfig for Config {
    fn label(&self) -> String {
        let limit = match &self.on_limit {
            OnLimit::Wait => String::new(),
            OnLimit::Drop => ", on_limit = drop".to_owned(),
            OnLimit::Overflow(n) => format!(", on_limit = overflow, overflow = {n}"),
        };
        format!(
            "WithRateLimit({}, burst = {}{limit})",
            self.per_second, self.burst
        )
    }

    fn side_output(&self) -> Option<SideOutput<'_>> {
        match &self.on_limit {
            OnLimit::Overflow(target) => Some(SideOutput {
                target,
                condition: None,
            }),
            _ => None,
        }
    }
}

fn build(c: &Config, cx: &mut BuildCx<'_>) -> Result<Box<dyn RunStage>, String> {
    let period = Duration::from_secs_f64(1.0 / c.per_second.max(1e-9));
    let burst = NonZeroU32::new(c.burst.max(1)).unwrap_or(NonZeroU32::MIN);
    let quota = Quota::with_period(period.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst);
    let on_limit = match &c.on_limit {
        OnLimit::Wait => Limit::Wait,
        OnLimit::Drop => Limit::Drop,
        OnLimit::Overflow(name) => cx.output(name).map_or(Limit::Drop, Limit::Overflow),
    };
    Ok(Box::new(Run {
        // Shared with the same op of the pipeline a reload replaced.
        limiter: cx.state(|| RateLimiter::direct(quota)),
        burst: burst.get(),
        on_limit,
    }))
}

enum Limit {
    Wait,
    Drop,
    Overflow(OutputTx),
}

struct Run {
    limiter: Arc<DefaultDirectRateLimiter>,
    burst: u32,
    on_limit: Limit,
}

#[async_trait]
impl RunStage for Run {
    async fn apply(&mut self, batch: &mut Batch, cx: &ApplyCx<'_>) {
        let limiter = &self.limiter;
        match &self.on_limit {
            Limit::Wait => {
                // Wait for tokens a burst at a time: back pressure, nothing lost.
                let mut left = batch.events.len();
                while left > 0 {
                    let n = left.min(self.burst as usize);
                    let nz = NonZeroU32::new(n as u32).unwrap_or(NonZeroU32::MIN);
                    // n <= burst, so capacity is always sufficient.
                    let _ = limiter.until_n_ready(nz).await;
                    left -= n;
                }
            }
            Limit::Drop => {
                cx.keep_where(&mut batch.events, DropReason::RateLimit, |_| {
                    limiter.check().is_ok()
                });
            }
            Limit::Overflow(target) => {
                let mut excess = Vec::new();
                let mut kept = Vec::with_capacity(batch.events.len());
                for e in batch.events.drain(..) {
                    if limiter.check().is_ok() {
                        kept.push(e);
                    } else {
                        excess.push(e);
                    }
                }
                batch.events = kept;
                // A target that is gone (shutdown) fails the copy, and its
                // source hears so.
                cx.send_aside(batch, excess, target).await;
            }
        }
    }
}
