//! `Window(...)` and `Aggregate(...)` (SPEC section 9): the semantic checks
//! beyond the signature. `check_args` has already checked each argument's
//! kind (durations, names, choices); here: which window, the rules between
//! its settings (E007, E008, E009), and every aggregate call (function,
//! arity, argument kinds, E006-style "did you mean" as E008). Payload paths
//! are checked against schemas in `payload.rs`, like `Filter`'s.

use std::time::Duration;

use dab_diag::{Code, Diagnostic, Span};
use dab_syntax::ast::{Expr, ExprKind, Op};

use crate::expr::{check_condition, operand};
use crate::model::{
    AggFn, AggregateSpec, Field, Operand, TimeBase, ValueType, WindowKind, WindowSpec,
    DEFAULT_IDLE, DEFAULT_MAX_GROUPS,
};
use crate::pipeline::{CheckedStatement, NameUse};

/// The names a result payload always holds.
pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";
/// False in an `early` partial result, true in a final one.
pub const FINAL: &str = "final";

fn duration_of(op: &Op, key: &str) -> Option<(Duration, Span)> {
    let a = op.named(key)?;
    match a.value.kind {
        ExprKind::Duration(d) => Some((d, a.value.span)),
        _ => None,
    }
}

fn positive(d: Option<(Duration, Span)>, key: &str, diags: &mut Vec<Diagnostic>) -> bool {
    match d {
        Some((d, span)) if d.is_zero() => {
            diags.push(
                Diagnostic::new(Code::E009, span, format!("`{key}` must be longer than 0"))
                    .with_label_here("out of range"),
            );
            false
        }
        _ => true,
    }
}

/// `Window(...)`, its arguments' kinds already checked.
pub(crate) fn check_window(
    op: &Op,
    out: &mut CheckedStatement,
    diags: &mut Vec<Diagnostic>,
) -> Option<WindowSpec> {
    let before = diags.len();
    let tumbling = duration_of(op, "tumbling");
    let sliding = duration_of(op, "sliding");
    let session = duration_of(op, "session");
    let every = duration_of(op, "every");
    let given: Vec<&str> = [
        ("tumbling", tumbling),
        ("sliding", sliding),
        ("session", session),
    ]
    .iter()
    .filter(|(_, d)| d.is_some())
    .map(|(k, _)| *k)
    .collect();
    let usage = "write one of `Window(tumbling = 1m)`, `Window(sliding = 10m, every = 1m)`, `Window(session = 30s)`";
    match given.as_slice() {
        [] => diags.push(
            Diagnostic::new(Code::E007, op.span, "`Window` needs a kind of window")
                .with_label_here("no `tumbling`, `sliding` or `session`")
                .with_help(usage),
        ),
        [_] => {}
        [first, second, ..] => diags.push(
            Diagnostic::new(
                Code::E007,
                op.named(second).map_or(op.span, |a| a.span),
                format!("`Window` takes one kind of window, found `{first}` and `{second}`"),
            )
            .with_label_here("a second kind")
            .with_help(usage),
        ),
    }
    for (key, d) in [
        ("tumbling", tumbling),
        ("sliding", sliding),
        ("session", session),
        ("every", every),
        ("early", duration_of(op, "early")),
        ("idle", duration_of(op, "idle")),
    ] {
        positive(d, key, diags);
    }
    match (sliding, every) {
        (Some(_), None) => diags.push(
            Diagnostic::new(Code::E007, op.span, "`sliding` needs `every`")
                .with_label_here("how often does a window start?")
                .with_help("for example `Window(sliding = 10m, every = 1m)`"),
        ),
        (None, Some((_, span))) => diags.push(
            Diagnostic::new(Code::E008, span, "`every` goes with `sliding`")
                .with_label_here("no sliding window")
                .with_help(usage),
        ),
        (Some((size, _)), Some((step, span)))
            if !step.is_zero()
                && !size.is_zero()
                && (step > size || size.as_nanos() % step.as_nanos() != 0) =>
        {
            diags.push(
                Diagnostic::new(
                    Code::E009,
                    span,
                    format!("`every` must divide the window size {size:?}, found {step:?}"),
                )
                .with_label_here("out of range")
                .with_help("each event then belongs to exactly size / every windows"),
            );
        }
        _ => {}
    }
    let max_groups = match op
        .named("max_groups")
        .map(|a| (&a.value.kind, a.value.span))
    {
        Some((ExprKind::Int(n), span)) => match u64::try_from(*n) {
            Ok(n) if n >= 1 => n,
            _ => {
                diags.push(
                    Diagnostic::new(
                        Code::E009,
                        span,
                        format!("`max_groups` must be at least 1, found {n}"),
                    )
                    .with_label_here("out of range"),
                );
                0
            }
        },
        _ => DEFAULT_MAX_GROUPS,
    };
    let late = op.named("late").and_then(|a| a.value.as_name()).map(|n| {
        out.uses.push(NameUse {
            name: n.name.clone(),
            span: n.span,
            write: true,
        });
        n.name.clone()
    });
    if diags[before..].iter().any(Diagnostic::is_error) {
        return None;
    }
    let kind = match (tumbling, sliding, session, every) {
        (Some((size, _)), _, _, _) => WindowKind::Tumbling { size },
        (_, Some((size, _)), _, Some((every, _))) => WindowKind::Sliding { size, every },
        (_, _, Some((gap, _)), _) => WindowKind::Session { gap },
        _ => return None,
    };
    let time = match op.named("time").and_then(|a| a.value.as_name()) {
        Some(n) if n.name == "arrival" => TimeBase::Arrival,
        _ => TimeBase::Event,
    };
    Some(WindowSpec {
        kind,
        time,
        lateness: duration_of(op, "lateness").map_or(Duration::ZERO, |(d, _)| d),
        late,
        early: duration_of(op, "early").map(|(d, _)| d),
        max_groups,
        idle: duration_of(op, "idle").map_or(DEFAULT_IDLE, |(d, _)| d),
    })
}

/// The name a group key takes in the result: the last segment of a path
/// (`tags.team` -> `team`, `fields.a.b` -> `b`), or the field's own name.
fn key_name(e: &Expr) -> Option<String> {
    match &e.kind {
        ExprKind::Path(p) => Some(
            p.segments
                .last()
                .map_or_else(|| p.root.name.clone(), |s| s.text().to_owned()),
        ),
        _ => None,
    }
}

/// `by = field` or `by = [field, ...]` (`Aggregate`, `Out`): each field
/// with its name in a result and its place; constants and unknown fields
/// are reported and left out.
pub(crate) fn keys(value: &Expr, diags: &mut Vec<Diagnostic>) -> Vec<(String, Operand, Span)> {
    let items: Vec<&Expr> = match &value.kind {
        ExprKind::List(items) => items.iter().collect(),
        _ => vec![value],
    };
    let mut out = Vec::new();
    for k in items {
        let Some((operand, _)) = operand(k, diags) else {
            continue;
        };
        if let Operand::Value(_) = operand {
            diags.push(
                Diagnostic::new(Code::E008, k.span, "a key is a field, not a value")
                    .with_label_here("a constant")
                    .with_help("use fields such as `host`, `tags.team` or `fields.method`"),
            );
            continue;
        }
        if let Some(name) = key_name(k) {
            out.push((name, operand, k.span));
        }
    }
    out
}

/// `Aggregate(...)`, its arguments' kinds already checked.
pub(crate) fn check_aggregate(op: &Op, diags: &mut Vec<Diagnostic>) -> Option<AggregateSpec> {
    let before = diags.len();
    // Result field names, each with where it was given.
    let mut names: Vec<(String, Span)> = vec![
        (WINDOW_START.to_owned(), op.span),
        (WINDOW_END.to_owned(), op.span),
        (FINAL.to_owned(), op.span),
    ];
    let mut claim = |name: String, span: Span, diags: &mut Vec<Diagnostic>| -> bool {
        if let Some((_, first)) = names.iter().find(|(n, _)| *n == name) {
            let mut d = Diagnostic::new(
                Code::E008,
                span,
                format!("the result field `{name}` is given twice"),
            )
            .with_label_here("a second field of this name");
            if *first == op.span {
                d = d.with_help(format!(
                    "`{WINDOW_START}` and `{WINDOW_END}` hold the window's bounds in every result, and `{FINAL}` whether it is final; choose another name"
                ));
            } else {
                d = d.with_label(*first, "first here");
            }
            diags.push(d);
            return false;
        }
        names.push((name, span));
        true
    };

    let mut by = Vec::new();
    if let Some(a) = op.named("by") {
        for (name, operand, span) in keys(&a.value, diags) {
            if claim(name.clone(), span, diags) {
                by.push((name, operand));
            }
        }
    }
    let result_type = match op.named("as").map(|a| &a.value) {
        Some(e) => match &e.kind {
            ExprKind::Str(s) => s.clone(),
            _ => e.as_name().map(|n| n.name.clone()).unwrap_or_default(),
        },
        None => {
            diags.push(
                Diagnostic::new(Code::E007, op.span, "`Aggregate` needs `as = \"Type\"`")
                    .with_label_here("no result type")
                    .with_help("name the type of the result events, e.g. `as = \"ApiStats\"`"),
            );
            String::new()
        }
    };
    let mut aggregates = Vec::new();
    for a in &op.args {
        let Some(key) = &a.key else { continue };
        if key.name == "by" || key.name == "as" {
            continue;
        }
        let Some(f) = check_call(&a.value, diags) else {
            continue;
        };
        if claim(key.name.clone(), key.span, diags) {
            aggregates.push((key.name.clone(), f));
        }
    }
    if aggregates.is_empty() && !diags[before..].iter().any(Diagnostic::is_error) {
        diags.push(
            Diagnostic::new(Code::E007, op.span, "`Aggregate` computes nothing")
                .with_label_here("no aggregate")
                .with_help(
                    "add at least one, e.g. `calls = Count()` or `bytes = Sum(fields.bytes)`",
                ),
        );
    }
    if diags[before..].iter().any(Diagnostic::is_error) {
        return None;
    }
    Some(AggregateSpec {
        by,
        result_type,
        aggregates,
    })
}

/// Whether an aggregate's value argument must be a number.
fn needs_number(f: &str) -> bool {
    matches!(f, "Sum" | "Avg" | "Percentile")
}

/// One aggregate call: `Count()`, `Sum(fields.bytes)`, ...
pub(crate) fn check_call(e: &Expr, diags: &mut Vec<Diagnostic>) -> Option<AggFn> {
    let ExprKind::Call { name, args } = &e.kind else {
        diags.push(
            Diagnostic::new(
                Code::E008,
                e.span,
                format!(
                    "expected an aggregate such as `Count()`, found {}",
                    e.describe()
                ),
            )
            .with_label_here("not an aggregate")
            .with_help(format!(
                "aggregates are {}",
                AggFn::NAMES.join("(), ") + "()"
            )),
        );
        return None;
    };
    let f = name.name.as_str();
    if !AggFn::NAMES.contains(&f) {
        diags.push(
            Diagnostic::new(Code::E008, name.span, format!("unknown aggregate `{f}`"))
                .with_label_here("not an aggregate")
                .with_suggestion(f, AggFn::NAMES.iter().copied()),
        );
        return None;
    }
    let arity = |want: &str, diags: &mut Vec<Diagnostic>| {
        diags.push(
            Diagnostic::new(
                Code::E007,
                args.get(1).map_or(e.span, |a| a.span),
                format!("`{f}` takes {want}, found {}", args.len()),
            )
            .with_label_here("wrong number of arguments"),
        );
    };
    if f == "Count" {
        return match args.as_slice() {
            [] => Some(AggFn::Count(None)),
            [cond] => check_condition(cond, diags).map(|p| AggFn::Count(Some(p))),
            _ => {
                arity("no argument or a condition", diags);
                None
            }
        };
    }
    let (x, rest) = match args.split_first() {
        Some((x, rest)) if f == "Percentile" && !rest.is_empty() => (x, rest),
        Some((x, [])) if f != "Percentile" => (x, &[][..]),
        _ => {
            arity(
                if f == "Percentile" {
                    "a field and one or more ranks such as `0.99`"
                } else {
                    "1 argument, a field"
                },
                diags,
            );
            return None;
        }
    };
    let (value, ty) = operand(x, diags)?;
    if let Operand::Value(_) = value {
        diags.push(
            Diagnostic::new(
                Code::E008,
                x.span,
                format!("`{f}` reads a field, not a value"),
            )
            .with_label_here("a constant")
            .with_help("for example `fields.latency_ms`, `offset` or `tags.team`"),
        );
        return None;
    }
    if needs_number(f) && matches!(ty, ValueType::Str | ValueType::Bool) {
        let what = match &value {
            Operand::Tag(_) => "a tag is a string".to_owned(),
            Operand::Field(field) => format!("`{}` is a string", Field::name(*field)),
            _ => "it is not a number".to_owned(),
        };
        diags.push(
            Diagnostic::new(Code::E008, x.span, format!("`{f}` needs a number; {what}"))
                .with_label_here("not a number")
                .with_help("numbers are `offset`, `pid`, `timestamp` and numeric payload fields"),
        );
        return None;
    }
    if f != "Percentile" {
        return Some(match f {
            "Sum" => AggFn::Sum(value),
            "Min" => AggFn::Min(value),
            "Max" => AggFn::Max(value),
            "Avg" => AggFn::Avg(value),
            "First" => AggFn::First(value),
            "Last" => AggFn::Last(value),
            _ => AggFn::Distinct(value),
        });
    }
    let mut ranks = Vec::new();
    for p in rest {
        let v = match p.kind {
            ExprKind::Float(v) => v,
            ExprKind::Int(v) => v as f64,
            _ => {
                diags.push(
                    Diagnostic::new(
                        Code::E008,
                        p.span,
                        format!("expected a rank such as `0.99`, found {}", p.describe()),
                    )
                    .with_label_here("not a number"),
                );
                return None;
            }
        };
        if !(0.0..=1.0).contains(&v) {
            diags.push(
                Diagnostic::new(
                    Code::E009,
                    p.span,
                    format!("a rank is between 0 and 1, found {v}"),
                )
                .with_label_here("out of range")
                .with_help("0.5 is the median, 0.99 the 99th percentile"),
            );
            return None;
        }
        ranks.push(v);
    }
    Some(AggFn::Percentile(value, ranks))
}
