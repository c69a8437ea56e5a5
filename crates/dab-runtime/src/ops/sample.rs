//! `WithSampleRate(n)`: keeps 1 event in n by a fixed hash of the event
//! UID (`crate::sample`), salted by the op's position so that two samplers
//! in a row decide independently; kept events carry the rate in the tag
//! `dab.sample_rate`.

use async_trait::async_trait;
use dab_api::{Batch, Text};
use dab_plan::ops::{ArgValue, CheckCx, Code, Diagnostic, Op as Call, OpClass};
use dab_plan::ops::{OpConfig, OpSpec, Param, ParamType};

use super::{ApplyCx, BuildCx, OpModule, RunStage};
use crate::metrics::DropReason;
use crate::sample::keep;

pub const SAMPLE_TAG: &str = "dab.sample_rate";

#[derive(Debug)]
pub struct WithSampleRate;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub rate: u64,
    /// The op's position in its pipeline; salts the hash.
    pub salt: u64,
}

static SPEC: OpSpec = OpSpec {
    name: "WithSampleRate",
    class: OpClass::Modifier,
    positional: &[Param {
        name: "n",
        ty: ParamType::Int,
        doc: "keep 1 event in n, n >= 1",
    }],
    variadic: false,
    named: &[],
    other_named: None,
    doc: "Keep 1 event in n, by a fixed hash of the event UID",
};

impl OpModule for WithSampleRate {
    type Config = Config;

    fn spec(&self) -> &'static OpSpec {
        &SPEC
    }

    fn check(&self, cx: &mut CheckCx<'_>, op: &Call, args: Vec<ArgValue>) -> Option<Config> {
        let Some(ArgValue::Int(n, span)) = args.into_iter().next() else {
            return None;
        };
        if n < 1 {
            cx.diags.push(
                Diagnostic::new(
                    Code::E009,
                    span,
                    format!("sample rate must be at least 1, found {n}"),
                )
                .with_label_here("out of range")
                .with_help("`WithSampleRate(n)` keeps 1 event in n; n = 1 keeps all"),
            );
            return None;
        }
        if n == 1 {
            cx.diags.push(
                Diagnostic::new(Code::W002, op.span, "`WithSampleRate(1)` keeps every event")
                    .with_label_here("no effect")
                    .with_help("remove it, or sample with n > 1"),
            );
        }
        Some(Config {
            rate: n.unsigned_abs(),
            salt: cx.index as u64,
        })
    }

    fn build(&self, c: &Config, _cx: &mut BuildCx<'_>) -> Result<Box<dyn RunStage>, String> {
        Ok(Box::new(Run {
            rate: c.rate,
            salt: c.salt,
            tag: Text::from(c.rate.to_string()),
        }))
    }
}

impl OpConfig for Config {
    fn label(&self) -> String {
        format!("WithSampleRate({})", self.rate)
    }
}

struct Run {
    rate: u64,
    salt: u64,
    tag: Text,
}

#[async_trait]
impl RunStage for Run {
    async fn apply(&mut self, batch: &mut Batch, cx: &ApplyCx<'_>) {
        let (rate, salt) = (self.rate, self.salt);
        cx.keep_where(&mut batch.events, DropReason::Sample, |e| {
            keep(e, rate, salt)
        });
        for e in &mut batch.events {
            e.set_tag(Text::from_static(SAMPLE_TAG), self.tag.clone());
        }
    }
}
