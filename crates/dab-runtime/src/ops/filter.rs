//! `Filter(condition)`: keeps events for which the condition is true.

use async_trait::async_trait;
use dab_api::Batch;
use dab_plan::model::Predicate;
use dab_plan::ops::{ArgValue, CheckCx, Code, Diagnostic, Op as Call, OpClass};
use dab_plan::ops::{OpConfig, OpSpec, Param, ParamType};

use super::{ApplyCx, BuildCx, OpModule, RunStage};
use crate::metrics::DropReason;
use crate::predicate::Prepared;

#[derive(Debug)]
pub struct Filter;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub predicate: Predicate,
}

static SPEC: OpSpec = OpSpec {
    name: "Filter",
    class: OpClass::Stage,
    positional: &[Param {
        name: "condition",
        ty: ParamType::Condition,
        doc: "a boolean expression over event fields and tags",
    }],
    variadic: false,
    named: &[],
    other_named: None,
    doc: "Keep events for which the condition is true",
};

impl OpModule for Filter {
    type Config = Config;

    fn spec(&self) -> &'static OpSpec {
        &SPEC
    }

    fn check(&self, cx: &mut CheckCx<'_>, op: &Call, args: Vec<ArgValue>) -> Option<Config> {
        let predicate = args.into_iter().find_map(|a| match a {
            ArgValue::Condition(p) => Some(p),
            _ => None,
        })?;
        if predicate == Predicate::Const(true) {
            cx.diags.push(
                Diagnostic::new(Code::W002, op.span, "`Filter(true)` keeps every event")
                    .with_label_here("no effect")
                    .with_help("remove it"),
            );
        }
        Some(Config { predicate })
    }

    fn build(&self, c: &Config, _cx: &mut BuildCx<'_>) -> Result<Box<dyn RunStage>, String> {
        Ok(Box::new(Run(Prepared::new(&c.predicate))))
    }
}

impl OpConfig for Config {
    fn label(&self) -> String {
        format!("Filter({})", self.predicate)
    }
}

struct Run(Prepared);

#[async_trait]
impl RunStage for Run {
    async fn apply(&mut self, batch: &mut Batch, cx: &ApplyCx<'_>) {
        let p = &self.0;
        cx.keep_where(&mut batch.events, DropReason::Filter, |e| p.eval(e));
    }
}
