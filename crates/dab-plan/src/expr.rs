//! Type checking of `Filter` conditions into a span-free [`Predicate`].
//! Unknown fields and comparisons across types are E008 (SPEC section 1).

use dab_diag::{Code, Diagnostic};
use dab_syntax::ast::{BinOp, Expr, ExprKind, PathSeg};

use crate::model::{CmpOp, Field, Operand, Predicate, Value, ValueType};

/// Checks a condition; `None` when it has errors (all pushed to `diags`).
pub(crate) fn check_condition(e: &Expr, diags: &mut Vec<Diagnostic>) -> Option<Predicate> {
    match &e.kind {
        ExprKind::Bool(b) => Some(Predicate::Const(*b)),
        ExprKind::Not(inner) => Some(Predicate::Not(Box::new(check_condition(inner, diags)?))),
        ExprKind::Binary { op, lhs, rhs } => match op {
            BinOp::And | BinOp::Or => {
                let l = check_condition(lhs, diags);
                let r = check_condition(rhs, diags);
                let (l, r) = (Box::new(l?), Box::new(r?));
                Some(if *op == BinOp::And {
                    Predicate::And(l, r)
                } else {
                    Predicate::Or(l, r)
                })
            }
            BinOp::In => check_in(lhs, rhs, diags),
            _ => check_compare(*op, lhs, rhs, e, diags),
        },
        // A payload field on its own is a boolean field: `fields.ok` is
        // `fields.ok == true` (its type is checked against the schema,
        // where one is declared, in `payload.rs`).
        ExprKind::Path(p) if p.root.name == "fields" && !p.segments.is_empty() => {
            let (lhs, _) = operand(e, diags)?;
            Some(Predicate::Compare {
                lhs,
                op: CmpOp::Eq,
                rhs: Operand::Value(Value::Bool(true)),
            })
        }
        _ => {
            let what = match operand(e, &mut Vec::new()) {
                Some((_, t)) => format!("{} is {}, not a condition", quote(e), t.describe()),
                None => format!("{} is not a condition", e.describe()),
            };
            diags.push(
                Diagnostic::new(Code::E008, e.span, what)
                    .with_label_here("expected true or false")
                    .with_help("compare it, e.g. `host == \"web-1\"` or `tags.env != \"dev\"`"),
            );
            None
        }
    }
}

fn check_compare(
    op: BinOp,
    lhs: &Expr,
    rhs: &Expr,
    whole: &Expr,
    diags: &mut Vec<Diagnostic>,
) -> Option<Predicate> {
    let l = operand(lhs, diags);
    let r = operand(rhs, diags);
    let ((lo, lt), (ro, rt)) = (l?, r?);
    let dynamic = lt == ValueType::Dynamic || rt == ValueType::Dynamic;
    if lt != rt && !dynamic {
        diags.push(
            Diagnostic::new(
                Code::E008,
                whole.span,
                format!(
                    "cannot compare {} ({}) with {} ({})",
                    quote(lhs),
                    lt.describe(),
                    quote(rhs),
                    rt.describe()
                ),
            )
            .with_label_here("different types")
            .with_help(type_hint(lt)),
        );
        return None;
    }
    let cmp = match op {
        BinOp::Eq => CmpOp::Eq,
        BinOp::Ne => CmpOp::Ne,
        BinOp::Lt => CmpOp::Lt,
        BinOp::Le => CmpOp::Le,
        BinOp::Gt => CmpOp::Gt,
        _ => CmpOp::Ge,
    };
    if (lt == ValueType::Bool || rt == ValueType::Bool) && !matches!(cmp, CmpOp::Eq | CmpOp::Ne) {
        diags.push(Diagnostic::new(
            Code::E008,
            whole.span,
            format!("booleans cannot be ordered with `{}`", cmp.as_str()),
        ));
        return None;
    }
    Some(Predicate::Compare {
        lhs: lo,
        op: cmp,
        rhs: ro,
    })
}

fn check_in(lhs: &Expr, rhs: &Expr, diags: &mut Vec<Diagnostic>) -> Option<Predicate> {
    let l = operand(lhs, diags);
    let ExprKind::List(items) = &rhs.kind else {
        diags.push(
            Diagnostic::new(
                Code::E008,
                rhs.span,
                format!("`in` needs a list, found {}", rhs.describe()),
            )
            .with_help("write the values in brackets: `type in [\"A\", \"B\"]`"),
        );
        return None;
    };
    let (lo, lt) = l?;
    let mut set = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in items {
        match literal(item) {
            Some(v) if v.value_type() == lt || lt == ValueType::Dynamic => set.push(v),
            Some(v) => {
                ok = false;
                diags.push(
                    Diagnostic::new(
                        Code::E008,
                        item.span,
                        format!(
                            "list item is {}, but {} is {}",
                            v.value_type().describe(),
                            quote(lhs),
                            lt.describe()
                        ),
                    )
                    .with_help(type_hint(lt)),
                );
            }
            None => {
                ok = false;
                diags.push(Diagnostic::new(
                    Code::E008,
                    item.span,
                    format!(
                        "list items must be literal values, found {}",
                        item.describe()
                    ),
                ));
            }
        }
    }
    ok.then_some(Predicate::In { lhs: lo, set })
}

fn type_hint(t: ValueType) -> &'static str {
    match t {
        ValueType::Str => "host, type, message and tags are strings: quote the value",
        ValueType::Int => "timestamp, offset and pid are integers",
        ValueType::Float => "compare floats with floats",
        ValueType::Bool => "compare booleans with true or false",
        ValueType::Dynamic => "a payload field compares with any value",
    }
}

fn literal(e: &Expr) -> Option<Value> {
    Some(match &e.kind {
        ExprKind::Int(v) => Value::Int(*v),
        ExprKind::Float(v) => Value::Float(*v),
        ExprKind::Str(s) => Value::Str(s.clone()),
        ExprKind::Bool(b) => Value::Bool(*b),
        _ => return None,
    })
}

fn quote(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Path(p) => {
            let mut s = p.root.name.clone();
            for seg in &p.segments {
                match seg {
                    PathSeg::Field(i) => {
                        s.push('.');
                        s.push_str(&i.name);
                    }
                    PathSeg::Index(k) => s.push_str(&format!("[{:?}]", k.value)),
                }
            }
            format!("`{s}`")
        }
        _ => match literal(e) {
            Some(v) => format!("`{v}`"),
            None => e.describe().to_owned(),
        },
    }
}

const FIELD_NAMES: &[&str] = &[
    "timestamp",
    "host",
    "type",
    "offset",
    "pid",
    "message",
    "tags",
    "fields",
];

/// A value an expression compares: a field, a tag or a literal.
pub fn operand(e: &Expr, diags: &mut Vec<Diagnostic>) -> Option<(Operand, ValueType)> {
    if let Some(v) = literal(e) {
        let t = v.value_type();
        return Some((Operand::Value(v), t));
    }
    let ExprKind::Path(path) = &e.kind else {
        diags.push(
            Diagnostic::new(
                Code::E008,
                e.span,
                format!("expected a field or a value, found {}", e.describe()),
            )
            .with_help("fields are timestamp, host, type, offset, pid, message, tags.NAME and fields.NAME (the JSON payload)"),
        );
        return None;
    };
    let root = path.root.name.as_str();
    if root == "fields" {
        if path.segments.is_empty() {
            diags.push(
                Diagnostic::new(Code::E008, path.root.span, "`fields` needs a key").with_help(
                    "write `fields.status` or `fields[\"k-1\"]`; `fields.a.b` reads nested objects",
                ),
            );
            return None;
        }
        let keys = path.segments.iter().map(|s| s.text().to_owned()).collect();
        return Some((Operand::Payload(keys), ValueType::Dynamic));
    }
    if root == "tags" {
        return match path.segments.as_slice() {
            [seg] => Some((Operand::Tag(seg.text().to_owned()), ValueType::Str)),
            [] => {
                diags.push(
                    Diagnostic::new(Code::E008, e.span, "`tags` needs a key")
                        .with_help("write `tags.env` or `tags[\"k-1\"]`"),
                );
                None
            }
            [_, extra, ..] => {
                diags.push(Diagnostic::new(
                    Code::E008,
                    extra.span(),
                    "a tag value is a string and has no fields",
                ));
                None
            }
        };
    }
    let Some(&(_, field)) = Field::ALL.iter().find(|(n, _)| *n == root) else {
        diags.push(
            Diagnostic::new(
                Code::E008,
                path.root.span,
                format!("unknown field `{root}`"),
            )
            .with_label_here("not an event field")
            .with_suggestion(root, FIELD_NAMES.iter().copied())
            .with_help_if_none(
                "fields are timestamp, host, type, offset, pid, message, tags.NAME and fields.NAME (the JSON payload)",
            ),
        );
        return None;
    };
    if let Some(seg) = path.segments.first() {
        diags.push(Diagnostic::new(
            Code::E008,
            seg.span(),
            format!("`{root}` has no fields"),
        ));
        return None;
    }
    Some((Operand::Field(field), field.value_type()))
}

trait HelpIfNone {
    fn with_help_if_none(self, help: &str) -> Self;
}

impl HelpIfNone for Diagnostic {
    fn with_help_if_none(self, help: &str) -> Self {
        if self.help.is_some() {
            self
        } else {
            self.with_help(help)
        }
    }
}
