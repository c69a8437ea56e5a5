//! `FilterType(A, B, ...)`: keeps events whose `type` is one of those
//! listed, byte for byte.

use async_trait::async_trait;
use bytes::Bytes;
use dab_api::Batch;
use dab_plan::ops::{ArgValue, CheckCx, Op as Call, OpClass, OpConfig, OpSpec};
use dab_plan::ops::{Param, ParamType};

use super::{ApplyCx, BuildCx, OpModule, RunStage};
use crate::metrics::DropReason;

#[derive(Debug)]
pub struct FilterType;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub types: Vec<String>,
}

static SPEC: OpSpec = OpSpec {
    name: "FilterType",
    class: OpClass::Stage,
    positional: &[Param {
        name: "type",
        ty: ParamType::TypeName,
        doc: "an event type",
    }],
    variadic: true,
    named: &[],
    other_named: None,
    doc: "Keep events whose `type` is one of those listed, byte for byte",
};

impl OpModule for FilterType {
    type Config = Config;

    fn spec(&self) -> &'static OpSpec {
        &SPEC
    }

    fn check(&self, cx: &mut CheckCx<'_>, _op: &Call, args: Vec<ArgValue>) -> Option<Config> {
        let mut types = Vec::new();
        for a in args {
            if let ArgValue::Type(t, span) = a {
                cx.names_type(&t, span);
                types.push(t);
            }
        }
        Some(Config { types })
    }

    fn build(&self, c: &Config, _cx: &mut BuildCx<'_>) -> Result<Box<dyn RunStage>, String> {
        Ok(Box::new(Run(c
            .types
            .iter()
            .map(|t| Bytes::copy_from_slice(t.as_bytes()))
            .collect())))
    }
}

impl OpConfig for Config {
    fn label(&self) -> String {
        format!("FilterType({})", self.types.join(", "))
    }
}

struct Run(Vec<Bytes>);

#[async_trait]
impl RunStage for Run {
    async fn apply(&mut self, batch: &mut Batch, cx: &ApplyCx<'_>) {
        let types = &self.0;
        cx.keep_where(&mut batch.events, DropReason::Filter, |e| {
            types.iter().any(|t| t.as_ref() == e.ty.as_bytes())
        });
    }
}
