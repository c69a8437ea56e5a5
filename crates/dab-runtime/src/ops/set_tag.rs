//! `SetTag(k = value, ...)`: sets tags on each event, to a literal or to
//! the value of a field (a field with no value leaves its tag as it was).
//! `Event::set_tag` forgets the arrival bytes.

use async_trait::async_trait;
use dab_api::{Batch, Text};
use dab_plan::model::{Operand, Value};
use dab_plan::ops::{operand, ArgValue, CheckCx, Code, Diagnostic, Op as Call, OpClass};
use dab_plan::ops::{OpConfig, OpSpec, Param, ParamType};

use super::{ApplyCx, BuildCx, OpModule, RunStage};
use crate::predicate::value_text;

#[derive(Debug)]
pub struct SetTag;

/// Each tag with a literal (`Operand::Value`) or the field whose value it
/// copies.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub tags: Vec<(String, Operand)>,
}

static SPEC: OpSpec = OpSpec {
    name: "SetTag",
    class: OpClass::Stage,
    positional: &[],
    variadic: false,
    named: &[],
    other_named: Some(Param {
        name: "KEY",
        ty: ParamType::TagValue,
        doc: "the tag `KEY` takes this value: a literal, or a field (`host`, `tags.k`, `fields.x`) whose value it copies",
    }),
    doc: "Set tags on each event; a field with no value leaves its tag as it was",
};

impl OpModule for SetTag {
    type Config = Config;

    fn spec(&self) -> &'static OpSpec {
        &SPEC
    }

    fn check(&self, cx: &mut CheckCx<'_>, op: &Call, _args: Vec<ArgValue>) -> Option<Config> {
        let mut tags = Vec::new();
        let mut ok = true;
        for a in &op.args {
            let Some(key) = &a.key else { continue };
            match operand(&a.value, cx.diags) {
                Some((value, _)) => tags.push((key.name.clone(), value)),
                None => ok = false,
            }
        }
        if tags.is_empty() && ok {
            cx.diags.push(
                Diagnostic::new(Code::E007, op.span, "`SetTag` sets no tag")
                    .with_label_here("no `key = value`")
                    .with_help("for example `SetTag(env = \"prod\", team = fields.team)`"),
            );
        }
        (ok && !tags.is_empty()).then_some(Config { tags })
    }

    fn build(&self, c: &Config, _cx: &mut BuildCx<'_>) -> Result<Box<dyn RunStage>, String> {
        Ok(Box::new(Run(c
            .tags
            .iter()
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
            .collect())))
    }
}

impl OpConfig for Config {
    fn label(&self) -> String {
        let t: Vec<String> = self
            .tags
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect();
        format!("SetTag({})", t.join(", "))
    }
}

/// What a tag is set to; a literal's text is made once.
enum TagValue {
    Literal(Text),
    /// The value of this field of each event; no value, no change.
    Field(Operand),
}

struct Run(Vec<(Text, TagValue)>);

#[async_trait]
impl RunStage for Run {
    async fn apply(&mut self, batch: &mut Batch, _cx: &ApplyCx<'_>) {
        for e in &mut batch.events {
            for (k, v) in &self.0 {
                let value = match v {
                    TagValue::Literal(t) => t.clone(),
                    TagValue::Field(o) => match value_text(e, o) {
                        Some(s) => Text::from(s),
                        None => continue,
                    },
                };
                e.set_tag(k.clone(), value);
            }
        }
    }
}
