//! `Enrich(Table, on = field, into = "key", miss = keep | drop | error)`
//! (SPEC section 9): adds the table row whose key equals a field of the
//! event to its JSON payload. Its check, beyond the signature: the table
//! is one bound under `tables:` (E010, or E016 for a name bound as a
//! source, sink or queue), `on` is one field of the event (E008 for a
//! literal), `into` a non-empty string (E009), and both are required
//! (E007). Its table (`crate::enrich`: loader and stage) is its state: a
//! reload that keeps the op keeps the table, and a table kept current by a
//! connector's feed is opened through the registry's feeds
//! (`BuildCx::tables`).

use async_trait::async_trait;
use dab_api::Batch;
use dab_plan::bindings::table_spec;
use dab_plan::model::{Miss, Operand, TableSpec};
use dab_plan::ops::{on_field, ArgValue, CheckCx, Code, Diagnostic, HelpOr as _, Op as Call};
use dab_plan::ops::{OpClass, OpConfig, OpSpec, Param, ParamType};

use super::{ApplyCx, BuildCx, OpModule, RunStage};
use crate::enrich::{EnrichOp, Table};

#[derive(Debug)]
pub struct Enrich;

/// A checked `Enrich(...)`: each event's `on` value looks up a row of
/// `table`, merged into the JSON payload under `into`. The table's binding
/// is part of it, so a changed binding rebuilds the pipelines that enrich
/// from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub table: TableSpec,
    pub on: Operand,
    pub into: String,
    pub miss: Miss,
}

static SPEC: OpSpec = OpSpec {
    name: "Enrich",
    class: OpClass::Stage,
    positional: &[Param {
        name: "table",
        ty: ParamType::Name,
        doc: "a table bound under `tables:` in the bindings file",
    }],
    variadic: false,
    named: &[
        Param {
            name: "on",
            ty: ParamType::Field,
            doc: "the field whose value (a string, or a number's text) is looked up in the table's key column (required)",
        },
        Param {
            name: "into",
            ty: ParamType::Text,
            doc: "the payload key the row is added under (required)",
        },
        Param {
            name: "miss",
            ty: ParamType::Choice(&["keep", "drop", "error"]),
            doc: "an event with no row: keep (default: unchanged), drop (counted) or error (to `OnError`, else counted dropped)",
        },
    ],
    other_named: None,
    doc: "Add the table row whose key equals a field of the event to its JSON payload",
};

const EXAMPLE: &str = "for example `Enrich(Teams, on = fields.team_id, into = \"team\")`";

impl OpModule for Enrich {
    type Config = Config;

    fn spec(&self) -> &'static OpSpec {
        &SPEC
    }

    fn check(&self, cx: &mut CheckCx<'_>, op: &Call, args: Vec<ArgValue>) -> Option<Config> {
        check(cx, op, args)
    }

    fn build(&self, c: &Config, cx: &mut BuildCx<'_>) -> Result<Box<dyn RunStage>, String> {
        let feeds = cx.tables;
        let on_error = cx.on_error();
        let table = cx.try_state(|| Table::open(&c.table, feeds))?;
        Ok(Box::new(EnrichOp::new(c, on_error, table)))
    }
}

impl OpConfig for Config {
    fn label(&self) -> String {
        format!(
            "Enrich({}, on = {}, into = {:?}, miss = {})",
            self.table.name,
            self.on,
            self.into,
            self.miss.as_str()
        )
    }

    fn table(&self) -> Option<&str> {
        Some(&self.table.name)
    }
}

fn check(cx: &mut CheckCx<'_>, op: &Call, args: Vec<ArgValue>) -> Option<Config> {
    let bindings = cx.bindings;
    let mut table = None;
    let mut into = None;
    let mut miss = Miss::Keep;
    for a in args {
        match a {
            ArgValue::Name(n) => table = Some(n),
            ArgValue::Text(s, span) => into = Some((s, span)),
            ArgValue::Choice(c) => {
                miss = match c.as_str() {
                    "drop" => Miss::Drop,
                    "error" => Miss::Error,
                    _ => Miss::Keep,
                }
            }
            _ => {}
        }
    }
    let table = table?;
    let mut ok = true;
    let on = match op.named("on") {
        Some(a) => on_field(a, "a field is looked up, not a value", EXAMPLE, cx.diags),
        None => {
            cx.diags.push(
                Diagnostic::new(Code::E007, op.span, "`Enrich` needs `on = field`")
                    .with_label_here("missing `on`")
                    .with_help(format!(
                        "name the field whose value is looked up in the table's key column; {EXAMPLE}"
                    )),
            );
            None
        }
    };
    ok &= on.is_some();
    match &into {
        Some((s, span)) if s.is_empty() => {
            ok = false;
            cx.diags.push(
                Diagnostic::new(Code::E009, *span, "`into` must not be empty")
                    .with_label_here("out of range")
                    .with_help(EXAMPLE),
            );
        }
        Some(_) => {}
        None => {
            ok = false;
            cx.diags.push(
                Diagnostic::new(Code::E007, op.span, "`Enrich` needs `into = \"key\"`")
                    .with_label_here("missing `into`")
                    .with_help(format!(
                        "name the payload key the row is added under; {EXAMPLE}"
                    )),
            );
        }
    }
    let Some(binding) = bindings.table(&table.name) else {
        if bindings.unreadable {
            // The bindings file is broken (reported): no name is known.
            cx.unavailable();
            return None;
        }
        let d = match bindings.get(&table.name) {
            Some(b) => Diagnostic::new(
                Code::E016,
                table.span,
                format!(
                    "`{}` is a {}, but `Enrich` reads a table",
                    table.name,
                    b.section.singular()
                ),
            )
            .with_label_here("not a table")
            .with_label(b.name_span, format!("bound as a {} here", b.section.singular()))
            .with_help(format!(
                "`Enrich` looks rows up in a table bound under `tables:`; a {} is read with `In` or written with `Out`",
                b.section.singular()
            )),
            None => Diagnostic::new(
                Code::E010,
                table.span,
                format!("unknown table `{}`", table.name),
            )
            .with_label_here("not under `tables:`")
            .with_suggestion(&table.name, bindings.tables.iter().map(|t| t.name.as_str())),
        };
        cx.diags.push(d.with_help_or(format!(
            "bind it under `tables:` in the bindings file: `tables: {{ {}: {{ kind: file, path: {}.jsonl, key: id }} }}`",
            table.name,
            table.name.to_lowercase()
        )));
        return None;
    };
    cx.reads_table(&table.name);
    // A binding that cannot be used was reported where it is bound; the
    // set has an error, and the pipeline is not planned without its stage.
    let Some(spec) = table_spec(binding) else {
        cx.unavailable();
        return None;
    };
    let (Some(on), Some((into, _)), true) = (on, into, ok) else {
        return None;
    };
    Some(Config {
        table: spec,
        on,
        into,
        miss,
    })
}

#[async_trait]
impl RunStage for EnrichOp {
    async fn apply(&mut self, batch: &mut Batch, cx: &ApplyCx<'_>) {
        EnrichOp::apply(self, batch, cx.metrics, cx.tracker).await;
    }

    fn metrics(
        &self,
        pipeline: &str,
        stage: usize,
    ) -> Option<std::sync::Arc<dyn dab_api::metrics::ConnectorMetrics>> {
        Some(EnrichOp::metrics(self, pipeline, stage))
    }
}
