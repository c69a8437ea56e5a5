//! `Enrich(Table, on = field, into = "key", miss = keep | drop | error)`
//! (SPEC section 9) beyond its signature: the table is one bound under
//! `tables:` (E010, or E016 for a name bound as a source, sink or queue),
//! `on` is one field of the event (E008 for a literal), `into` a non-empty
//! string (E009), and both are required (E007). The `fields.` path of
//! `on` is checked against declared schemas in `payload.rs`.

use dab_diag::{Code, Diagnostic};
use dab_syntax::ast::Op;

use crate::bindings::{table_spec, Bindings};
use crate::model::{Enrich, Miss, Operand, Stage};
use crate::pipeline::{ArgValue, CheckedStatement};
use crate::HelpOr as _;

const EXAMPLE: &str = "for example `Enrich(Teams, on = fields.team_id, into = \"team\")`";

pub(crate) fn check(
    op: &Op,
    args: Vec<ArgValue>,
    bindings: &Bindings,
    out: &mut CheckedStatement,
    diags: &mut Vec<Diagnostic>,
) -> Option<Stage> {
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
        Some(a) => on_field(a, "a field is looked up, not a value", EXAMPLE, diags),
        None => {
            diags.push(
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
            diags.push(
                Diagnostic::new(Code::E009, *span, "`into` must not be empty")
                    .with_label_here("out of range")
                    .with_help(EXAMPLE),
            );
        }
        Some(_) => {}
        None => {
            ok = false;
            diags.push(
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
            out.missing_stage = true;
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
        diags.push(d.with_help_or(format!(
            "bind it under `tables:` in the bindings file: `tables: {{ {}: {{ kind: file, path: {}.jsonl, key: id }} }}`",
            table.name,
            table.name.to_lowercase()
        )));
        return None;
    };
    out.tables.push(table.name.clone());
    // A binding that cannot be used was reported where it is bound; the
    // set has an error, and the pipeline is not planned without its stage.
    let Some(spec) = table_spec(binding) else {
        out.missing_stage = true;
        return None;
    };
    let (Some(on), Some((into, _)), true) = (on, into, ok) else {
        return None;
    };
    Some(Stage::Enrich(Box::new(Enrich {
        table: spec,
        on,
        into,
        miss,
    })))
}

/// `on = field` of `Enrich` and `Join`: one field of the event (E008 for a
/// literal, with `label` under it).
pub(crate) fn on_field(
    a: &dab_syntax::ast::Arg,
    label: &str,
    example: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<Operand> {
    match crate::expr::operand(&a.value, diags)? {
        (Operand::Value(v), _) => {
            diags.push(
                Diagnostic::new(
                    Code::E008,
                    a.value.span,
                    format!("`on` must be a field of the event, found the value {v}"),
                )
                .with_label_here(label.to_owned())
                .with_help(example),
            );
            None
        }
        (o, _) => Some(o),
    }
}

/// W003 for tables no `Enrich` reads, as for other bindings.
pub(crate) fn unused_tables<'a>(
    bindings: &Bindings,
    used: impl Iterator<Item = &'a str> + Clone,
    diags: &mut Vec<Diagnostic>,
) {
    for b in &bindings.tables {
        if used.clone().any(|u| u == b.name) {
            continue;
        }
        diags.push(
            Diagnostic::new(
                Code::W003,
                b.name_span,
                format!("table `{}` is bound but never used", b.name),
            )
            .with_label_here("unused binding")
            .with_help(format!(
                "read it with `.Enrich({}, on = ..., into = \"...\")`, or remove it from the bindings file",
                b.name
            )),
        );
    }
}
