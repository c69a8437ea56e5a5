//! `fields.` paths against the schemas of the types that reach them (SPEC
//! section 7). After `FilterType(A, B)`, a `Filter` on `fields.x` must
//! name a field of A or B where they declare a schema, and compare it with
//! a value of its type; both are E008, with "did you mean". Before any
//! `FilterType`, or where no reaching type declares a schema, a payload
//! field stays untyped (`ValueType::Dynamic`).

use dab_diag::{Code, Diagnostic, Span};
use dab_schema::{FieldType, LiteralKind, Schema, Type};
use dab_syntax::ast::{BinOp, Expr, ExprKind, Op, Path, Statement};

use crate::bindings::{Binding, ConfigValue, TypeDecl};
use crate::HelpOr as _;

/// The schemas of the types that reach an op, and the payload keys an
/// `Enrich` before it added (`into`), whose contents no schema declares.
struct Scope<'s> {
    schemas: Vec<(&'s str, &'s Schema)>,
    added: &'s [String],
}

/// Checks every `fields.` path of every `Filter` in `st`.
pub(crate) fn check_statement(
    st: &Statement,
    types: &[TypeDecl],
    sinks: &[Binding],
    diags: &mut Vec<Diagnostic>,
) {
    let mut reaching: Option<Vec<String>> = None;
    let mut added: Vec<String> = Vec::new();
    for op in &st.ops {
        match op.name.name.as_str() {
            "FilterType" => {
                let names = op
                    .positional()
                    .filter_map(|a| match &a.value.kind {
                        ExprKind::Str(s) => Some(s.clone()),
                        _ => a.value.as_name().map(|n| n.name.clone()),
                    })
                    .collect();
                reaching = Some(names);
            }
            "Filter" | "Aggregate" | "Out" | "Enrich" | "Route" | "Join" => {
                let Some(names) = &reaching else { continue };
                let schemas: Vec<(&str, &Schema)> = names
                    .iter()
                    .filter_map(|n| {
                        let decl = types.iter().find(|t| t.name == *n)?;
                        Some((decl.name.as_str(), decl.schema.as_ref()?))
                    })
                    .collect();
                if schemas.is_empty() {
                    continue;
                }
                let scope = Scope {
                    schemas,
                    added: &added,
                };
                match op.name.name.as_str() {
                    "Route" => sink_templates(op, &scope, sinks, diags),
                    "Out" => {
                        key_and_call_paths(op, &scope, diags);
                        sink_templates(op, &scope, sinks, diags);
                    }
                    "Aggregate" => key_and_call_paths(op, &scope, diags),
                    "Enrich" | "Join" => enrich_key(op, &scope, diags),
                    _ => {
                        for arg in op.positional() {
                            walk(&arg.value, &scope, diags);
                        }
                    }
                }
            }
            _ => {}
        }
        if op.name.name == "Enrich" || op.name.name == "Join" {
            if let Some(ExprKind::Str(into)) = op.named("into").map(|a| &a.value.kind) {
                added.push(into.clone());
            }
        }
    }
}

/// `{fields.x}` in the template of a sink this op writes (a file sink's
/// `path`, a Kafka sink's `topic`, SPEC section 10) must be a field of a
/// type that reaches it, and one with a value to render (not a list, map
/// or struct): E008 at the template in the bindings file, with a label
/// at the sink's name here.
fn sink_templates(op: &Op, scope: &Scope<'_>, sinks: &[Binding], diags: &mut Vec<Diagnostic>) {
    use dab_api::template::{Placeholder, Template};
    for arg in op.positional() {
        let Some(name) = arg.value.as_name() else {
            continue;
        };
        let Some(b) = sinks.iter().find(|b| b.name == name.name) else {
            continue;
        };
        let field = match b.kind.as_str() {
            "file" => "path",
            "kafka" => "topic",
            _ => continue,
        };
        let (Some(ConfigValue::Str(text)), Some(at)) =
            (b.fields.get(field), b.field_spans.get(field))
        else {
            continue;
        };
        let Ok(t) = Template::parse(text) else {
            continue;
        };
        let names = scope
            .schemas
            .iter()
            .map(|(n, _)| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ");
        for (p, _) in t.placeholders() {
            let Placeholder::Field(path) = p else {
                continue;
            };
            if path.first().is_some_and(|k| scope.added.contains(k)) {
                continue;
            }
            let found: Vec<FieldType> = scope
                .schemas
                .iter()
                .filter_map(|(_, s)| s.lookup(path).ok())
                .collect();
            let problem = if found.is_empty() {
                format!("no field `{}` in the payload of {names}", path.join("."))
            } else if found.iter().all(|f| {
                matches!(
                    f.ty,
                    dab_schema::Type::List(_)
                        | dab_schema::Type::Map(_)
                        | dab_schema::Type::Struct(_)
                )
            }) {
                format!(
                    "`{}` is {} in {names}, not a value a template can render",
                    path.join("."),
                    found[0].describe()
                )
            } else {
                continue;
            };
            diags.push(
                Diagnostic::new(
                    Code::E008,
                    *at,
                    format!("`{field}` of sink `{}` reads {p}: {problem}", b.name),
                )
                .with_label(name.span, "the events written here")
                .with_help(format!(
                    "the fields of {names} are declared under `types:`; an event without the field would go to `OnError`"
                )),
            );
        }
    }
}

/// `Enrich(on = fields.x)` and `Join(on = fields.x)`: a declared field whose value is a string or a
/// number, the only values a key is looked up by.
fn enrich_key(op: &Op, scope: &Scope<'_>, diags: &mut Vec<Diagnostic>) {
    let Some(a) = op.named("on") else { return };
    let Some(found) = side(&a.value, &[], a.value.span, scope, diags) else {
        return;
    };
    if !found
        .iter()
        .any(|(_, t)| is_number(t) || matches!(t.ty, Type::String))
    {
        let (ty, t) = &found[0];
        diags.push(
            Diagnostic::new(
                Code::E008,
                a.value.span,
                format!(
                    "`on` needs a string or a number; `{}` is {} in `{ty}`",
                    path_text(&a.value),
                    t.describe()
                ),
            )
            .with_label_here("never equals a key")
            .with_help(if op.name.name == "Join" {
                "events match by the text of this field on both sides: name a string or number field"
            } else {
                "a row is found by the text of its key column: name a string or number field"
            }),
        );
    }
}

/// The payload paths of `by = ...` keys (`Aggregate`, `Out`) and of
/// aggregate calls.
fn key_and_call_paths(op: &Op, scope: &Scope<'_>, diags: &mut Vec<Diagnostic>) {
    for a in &op.args {
        match (&a.key, &a.value.kind) {
            (Some(k), ExprKind::List(keys)) if k.name == "by" => {
                for key in keys {
                    side(key, &[], key.span, scope, diags);
                }
            }
            (Some(k), _) if k.name == "by" => {
                side(&a.value, &[], a.value.span, scope, diags);
            }
            (_, ExprKind::Call { name, args }) if name.name == "Count" => {
                for cond in args {
                    walk(cond, scope, diags);
                }
            }
            (_, ExprKind::Call { name, args }) => {
                let Some(x) = args.first() else { continue };
                let numeric = matches!(name.name.as_str(), "Sum" | "Avg" | "Percentile");
                if let Some(found) = side(x, &[], x.span, scope, diags) {
                    if numeric && !found.iter().any(|(_, t)| is_number(t)) {
                        let (ty, t) = &found[0];
                        diags.push(
                            Diagnostic::new(
                                Code::E008,
                                x.span,
                                format!(
                                    "`{}` needs a number; `{}` is {} in `{ty}`",
                                    name.name,
                                    path_text(x),
                                    t.describe()
                                ),
                            )
                            .with_label_here("not a number"),
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

fn is_number(t: &FieldType) -> bool {
    matches!(
        t.ty,
        Type::Int32 | Type::Int64 | Type::Float64 | Type::Timestamp
    )
}

fn path_text(e: &Expr) -> String {
    payload_path(e).map_or_else(String::new, |p| {
        render(&p.segments.iter().map(|s| s.text()).collect::<Vec<_>>())
    })
}

fn walk(e: &Expr, scope: &Scope<'_>, diags: &mut Vec<Diagnostic>) {
    match &e.kind {
        // A payload field standing alone as a condition must be a boolean.
        ExprKind::Path(_) => {
            let Some(found) = side(e, &[], e.span, scope, diags) else {
                return;
            };
            if !found.iter().any(|(_, t)| t.ty == Type::Bool) {
                let (ty, t) = &found[0];
                let text = path_text(e);
                diags.push(
                    Diagnostic::new(
                        Code::E008,
                        e.span,
                        format!("`{text}` is {} in `{ty}`, not a condition", t.describe()),
                    )
                    .with_label_here("expected true or false")
                    .with_help(format!(
                        "compare it, e.g. `{text} == ...`; a field alone must be a bool"
                    )),
                );
            }
        }
        ExprKind::Not(inner) => walk(inner, scope, diags),
        ExprKind::Binary { op, lhs, rhs } => match op {
            BinOp::And | BinOp::Or => {
                walk(lhs, scope, diags);
                walk(rhs, scope, diags);
            }
            BinOp::In => {
                let items: Vec<&Expr> = match &rhs.kind {
                    ExprKind::List(items) => items.iter().collect(),
                    _ => Vec::new(),
                };
                side(lhs, &items, e.span, scope, diags);
            }
            _ => {
                side(lhs, &[rhs], e.span, scope, diags);
                side(rhs, &[lhs], e.span, scope, diags);
            }
        },
        _ => {}
    }
}

fn payload_path(e: &Expr) -> Option<&Path> {
    match &e.kind {
        ExprKind::Path(p) if p.root.name == "fields" && !p.segments.is_empty() => Some(p),
        _ => None,
    }
}

fn literal_kind(e: &Expr) -> Option<LiteralKind> {
    Some(match e.kind {
        ExprKind::Int(_) => LiteralKind::Int,
        ExprKind::Float(_) => LiteralKind::Float,
        ExprKind::Str(_) => LiteralKind::Str,
        ExprKind::Bool(_) => LiteralKind::Bool,
        _ => return None,
    })
}

/// `e`, when it is a payload path, compared with `others`; the types it
/// has in the schemas that declare it, when it is in one.
fn side<'s>(
    e: &Expr,
    others: &[&Expr],
    whole: Span,
    scope: &Scope<'s>,
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<(&'s str, FieldType)>> {
    let path = payload_path(e)?;
    let keys: Vec<&str> = path.segments.iter().map(|s| s.text()).collect();
    // What an `Enrich` added comes from a table, which declares no schema.
    if keys
        .first()
        .is_some_and(|k| scope.added.iter().any(|a| a == k))
    {
        return None;
    }
    let schemas = &scope.schemas;
    let text = render(&keys);
    let mut found: Vec<(&str, FieldType)> = Vec::new();
    let mut deepest: Option<(usize, Vec<String>)> = None;
    for (ty, schema) in schemas {
        match schema.lookup(&keys) {
            Ok(t) => found.push((ty, t)),
            Err((at, known)) => {
                if deepest.as_ref().is_none_or(|(d, _)| at > *d) {
                    deepest = Some((at, known));
                }
            }
        }
    }
    let names = schemas
        .iter()
        .map(|(n, _)| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if found.is_empty() {
        let (at, known) = deepest.unwrap_or((0, Vec::new()));
        let seg = &path.segments[at.min(path.segments.len() - 1)];
        let step = seg.text();
        let message = if known.is_empty() && at > 0 {
            format!("`{}` has no fields in {names}", render(&keys[..at]))
        } else {
            format!(
                "no field `{}` in the payload of {names}",
                render(&keys[..=at])
            )
        };
        diags.push(
            Diagnostic::new(Code::E008, seg.span(), message)
                .with_label_here("not in the schema")
                .with_suggestion(step, known.iter().map(String::as_str))
                .with_help_or(format!(
                    "the fields of {names} are declared under `types:` in the bindings file"
                )),
        );
        return None;
    }
    for other in others {
        let Some(kind) = literal_kind(other) else {
            continue;
        };
        if found.iter().any(|(_, t)| t.compares_with(kind)) {
            continue;
        }
        let (ty, t) = &found[0];
        diags.push(
            Diagnostic::new(
                Code::E008,
                whole,
                format!(
                    "cannot compare `{text}` ({} in `{ty}`) with {}",
                    t.describe(),
                    match kind {
                        LiteralKind::Int => "an integer",
                        LiteralKind::Float => "a float",
                        LiteralKind::Str => "a string",
                        LiteralKind::Bool => "a boolean",
                    }
                ),
            )
            .with_label(other.span, "of another type"),
        );
    }
    Some(found)
}

/// `fields.a["k-1"]`, as the plan prints a payload operand.
fn render(keys: &[&str]) -> String {
    crate::model::Operand::Payload(keys.iter().map(|k| (*k).to_owned()).collect()).to_string()
}
