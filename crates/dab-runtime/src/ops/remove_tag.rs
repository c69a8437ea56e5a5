//! `RemoveTag(k, ...)`: removes tags from each event (`Event::remove_tag`
//! forgets the arrival bytes). DAB's own `dab.` tags cannot be removed.

use async_trait::async_trait;
use dab_api::Batch;
use dab_plan::ops::{ArgValue, CheckCx, Code, Diagnostic, Op as Call, OpClass};
use dab_plan::ops::{OpConfig, OpSpec, Param, ParamType};

use super::{ApplyCx, BuildCx, OpModule, RunStage};

#[derive(Debug)]
pub struct RemoveTag;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub keys: Vec<String>,
}

static SPEC: OpSpec = OpSpec {
    name: "RemoveTag",
    class: OpClass::Stage,
    positional: &[Param {
        name: "key",
        ty: ParamType::TypeName,
        doc: "a tag key: a name, or a string such as \"k-1\"",
    }],
    variadic: true,
    named: &[],
    other_named: None,
    doc: "Remove tags from each event",
};

impl OpModule for RemoveTag {
    type Config = Config;

    fn spec(&self) -> &'static OpSpec {
        &SPEC
    }

    fn check(&self, cx: &mut CheckCx<'_>, _op: &Call, args: Vec<ArgValue>) -> Option<Config> {
        let mut keys = Vec::new();
        for a in args {
            if let ArgValue::Type(k, span) = a {
                if k.starts_with("dab.") {
                    cx.diags.push(
                        Diagnostic::new(Code::E009, span, format!("`{k}` is one of DAB's own tags"))
                            .with_label_here("reserved")
                            .with_help("tags starting `dab.` are set by DAB and cannot be changed from blueprints"),
                    );
                    return None;
                }
                keys.push(k);
            }
        }
        Some(Config { keys })
    }

    fn build(&self, c: &Config, _cx: &mut BuildCx<'_>) -> Result<Box<dyn RunStage>, String> {
        Ok(Box::new(Run(c.keys.clone())))
    }
}

impl OpConfig for Config {
    fn label(&self) -> String {
        format!("RemoveTag({})", self.keys.join(", "))
    }
}

struct Run(Vec<String>);

#[async_trait]
impl RunStage for Run {
    async fn apply(&mut self, batch: &mut Batch, _cx: &ApplyCx<'_>) {
        for e in &mut batch.events {
            for k in &self.0 {
                e.remove_tag(k);
            }
        }
    }
}
