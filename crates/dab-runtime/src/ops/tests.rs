//! A pluggable op added the way any op is: `Shout`, one file's worth of
//! code (this one) and one line in `builtin_ops`, behind `#[cfg(test)]`.
//! The check finds its signature and the runtime builds it, with no
//! change to generic code.

use async_trait::async_trait;
use dab_api::{AckToken, Batch, Event, Text};
use dab_plan::model::Stage;
use dab_plan::ops::{ArgValue, CheckCx, Op as Call, OpClass, OpConfig, OpSpec};
use dab_plan::ops::{Param, ParamType};
use dab_plan::{check_set, SourceSet};

use super::{ApplyCx, BuildCx, OpModule, RunStage};
use crate::metrics::PipelineMetrics;

/// `Shout(key)`: sets the tag `key` to "!" on each event.
#[derive(Debug)]
pub struct Shout;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    key: String,
}

static SPEC: OpSpec = OpSpec {
    name: "Shout",
    class: OpClass::Stage,
    positional: &[Param {
        name: "key",
        ty: ParamType::TypeName,
        doc: "a tag key",
    }],
    variadic: false,
    named: &[],
    other_named: None,
    doc: "Set the tag `key` to \"!\"",
};

impl OpModule for Shout {
    type Config = Config;

    fn spec(&self) -> &'static OpSpec {
        &SPEC
    }

    fn check(&self, _cx: &mut CheckCx<'_>, _op: &Call, args: Vec<ArgValue>) -> Option<Config> {
        let Some(ArgValue::Type(key, _)) = args.into_iter().next() else {
            return None;
        };
        Some(Config { key })
    }

    fn build(&self, c: &Config, _cx: &mut BuildCx<'_>) -> Result<Box<dyn RunStage>, String> {
        Ok(Box::new(Run(Text::from(c.key.clone()))))
    }
}

impl OpConfig for Config {
    fn label(&self) -> String {
        format!("Shout({})", self.key)
    }
}

struct Run(Text);

#[async_trait]
impl RunStage for Run {
    async fn apply(&mut self, batch: &mut Batch, _cx: &ApplyCx<'_>) {
        for e in &mut batch.events {
            e.set_tag(self.0.clone(), Text::from_static("!"));
        }
    }
}

fn check(text: &str) -> dab_plan::CheckedSet {
    check_set(
        SourceSet {
            blueprints: vec![("t.dab".into(), text.into())],
            bindings: None,
        },
        &|_| None,
        &|p| std::fs::read(p),
        &super::plan_options(),
    )
}

#[tokio::test]
async fn a_new_op_is_checked_lowered_built_and_applied() {
    let set =
        check("p.NewPipeline().In(Stdin).Shout(level).Filter(tags.level == \"!\").Out(Stdout)");
    assert!(!set.has_errors(), "{:?}", set.diagnostics);
    let stages = &set.plan.pipelines[0].config.stages;
    assert_eq!(stages[0].label(), "Shout(level)");
    assert_eq!(
        stages[0].op_config::<Config>(),
        Some(&Config {
            key: "level".into()
        })
    );
    let metrics = PipelineMetrics::new("p", stages.iter().map(Stage::label).collect(), vec![]);
    let mut batch = Batch::new(
        vec![
            Event {
                ty: Text::from_static("A"),
                ..Event::default()
            },
            Event {
                ty: Text::from_static("B"),
                offset: 1,
                ..Event::default()
            },
        ],
        AckToken::untracked(),
    );
    for s in stages {
        let mut c = crate::stages::compile(s, |_| None, None).expect("the stage builds");
        c.apply(&mut batch, &metrics).await;
    }
    assert_eq!(batch.events.len(), 2, "Filter kept what Shout tagged");
    assert!(batch
        .events
        .iter()
        .all(|e| e.tag("level").map(Text::as_str) == Some("!")));
}

#[test]
fn a_new_op_gets_the_generic_checks_from_its_signature() {
    let set = check("p.NewPipeline().In(Stdin).Shout(a, b).Out(Stdout)");
    let d = &set.diagnostics;
    assert!(
        d.iter()
            .any(|d| d.message == "`Shout` takes 1 argument, found 2"),
        "{d:?}"
    );
    let set = check("p.NewPipeline().In(Stdin).Shuot(a).Out(Stdout)");
    assert!(
        set.diagnostics
            .iter()
            .any(|d| d.help.as_deref() == Some("did you mean `Shout`?")),
        "{:?}",
        set.diagnostics
    );
}
