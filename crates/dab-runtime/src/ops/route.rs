//! `Route(cond, Name)` (SPEC section 10): the events for which `cond`
//! holds leave the pipeline for `Name`, with a share of the batch's
//! acknowledgement; the rest go on. Of chained routes, the first that
//! matches takes the event.

use async_trait::async_trait;
use dab_api::Batch;
use dab_plan::model::Predicate;
use dab_plan::ops::{ArgValue, CheckCx, Code, Diagnostic, Op as Call, OpClass};
use dab_plan::ops::{OpConfig, OpSpec, Param, ParamType, SideOutput};

use super::{ApplyCx, BuildCx, OpModule, RunStage};
use crate::output::OutputTx;
use crate::predicate::Prepared;

#[derive(Debug)]
pub struct Route;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub predicate: Predicate,
    pub target: String,
}

static SPEC: OpSpec = OpSpec {
    name: "Route",
    class: OpClass::Stage,
    positional: &[
        Param {
            name: "condition",
            ty: ParamType::Condition,
            doc: "a boolean expression over event fields and tags",
        },
        Param {
            name: "name",
            ty: ParamType::Name,
            doc: "the sink or queue that takes the events for which it holds",
        },
    ],
    variadic: false,
    named: &[],
    other_named: None,
    doc: "Send the events for which the condition holds to a sink or queue; the rest go on. Of chained routes, the first that matches takes the event",
};

impl OpModule for Route {
    type Config = Config;

    fn spec(&self) -> &'static OpSpec {
        &SPEC
    }

    fn check(&self, cx: &mut CheckCx<'_>, op: &Call, args: Vec<ArgValue>) -> Option<Config> {
        let mut args = args.into_iter();
        let (Some(ArgValue::Condition(predicate)), Some(ArgValue::Name(target))) =
            (args.next(), args.next())
        else {
            return None;
        };
        cx.writes_to(&target);
        if predicate == Predicate::Const(false) {
            cx.diags.push(
                Diagnostic::new(Code::W002, op.span, "`Route(false, ...)` takes no event")
                    .with_label_here("no effect")
                    .with_help("remove it"),
            );
        }
        Some(Config {
            predicate,
            target: target.name,
        })
    }

    fn build(&self, c: &Config, cx: &mut BuildCx<'_>) -> Result<Box<dyn RunStage>, String> {
        Ok(Box::new(Run {
            predicate: Prepared::new(&c.predicate),
            target: cx
                .output(&c.target)
                .ok_or_else(|| format!("the route target `{}` was not built", c.target))?,
        }))
    }
}

impl OpConfig for Config {
    fn label(&self) -> String {
        format!("Route({}, {})", self.predicate, self.target)
    }

    fn side_output(&self) -> Option<SideOutput<'_>> {
        Some(SideOutput {
            target: &self.target,
            condition: Some(self.predicate.to_string()),
        })
    }
}

struct Run {
    predicate: Prepared,
    target: OutputTx,
}

#[async_trait]
impl RunStage for Run {
    async fn apply(&mut self, batch: &mut Batch, cx: &ApplyCx<'_>) {
        let predicate = &self.predicate;
        // Each event is evaluated once: up to the first match, then the
        // rest while splitting.
        let Some(first) = batch.events.iter().position(|e| predicate.eval(e)) else {
            return;
        };
        let mut taken = Vec::new();
        let mut rest = Vec::with_capacity(batch.events.len());
        for (i, e) in batch.events.drain(..).enumerate() {
            if i == first || (i > first && predicate.eval(&e)) {
                taken.push(e);
            } else {
                rest.push(e);
            }
        }
        batch.events = rest;
        cx.send_aside(batch, taken, &self.target).await;
    }

    fn routes(&self) -> bool {
        true
    }
}
