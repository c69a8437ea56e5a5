//! What the planner keeps of `Enrich` (its op is `dab_runtime::ops::enrich`):
//! `on = field` (shared with `Join`) and W003 for tables no op reads. The
//! `fields.` path of `on` is checked against declared schemas in
//! `payload.rs`.

use dab_diag::{Code, Diagnostic};

use crate::bindings::Bindings;
use crate::model::Operand;

/// `on = field` of `Enrich` and `Join`: one field of the event (E008 for a
/// literal, with `label` under it).
pub fn on_field(
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
