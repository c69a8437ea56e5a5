//! `Join(Stream, on = field, within = D, into = "key", miss = keep | drop)`
//! (SPEC section 9) beyond its signature: `Stream` is read like `In`'s
//! name (resolved in `names.rs`: E010 with "did you mean", E016 for a
//! sink) and must not be the pipeline's own input (E009); `on` is one
//! field of the event (E008 for a literal); `within` is longer than 0
//! (`lateness` may be 0 and defaults to `within`),
//! `into` a non-empty string, `max_buffered` at least 1 and `idle` longer
//! than 0 (E009); `on`, `within` and `into` are required (E007). One
//! `Join` per pipeline, and not beside a `Window` (E007): each holds its
//! input's acknowledgements in its own way. The `fields.` path of `on` is
//! checked against declared schemas in `payload.rs`, like `Enrich`'s.

use dab_diag::{Code, Diagnostic, Span};
use dab_syntax::ast::{ExprKind, Op};

use crate::model::{Join, Miss, Stage, DEFAULT_IDLE, DEFAULT_JOIN_MAX_BUFFERED};
use crate::pipeline::{ArgValue, CheckedStatement, NameUse};

const EXAMPLE: &str =
    "for example `Join(Clicks, on = fields.request_id, within = 30s, into = \"click\")`";

pub(crate) fn check(
    op: &Op,
    args: Vec<ArgValue>,
    out: &mut CheckedStatement,
    diags: &mut Vec<Diagnostic>,
) -> Option<Stage> {
    let mut stream = None;
    let mut into = None;
    let mut miss = Miss::Keep;
    let mut max_buffered = None;
    for a in args {
        match a {
            ArgValue::Name(n) => stream = Some(n),
            ArgValue::Text(s, span) => into = Some((s, span)),
            ArgValue::Choice(c) if c == "drop" => miss = Miss::Drop,
            ArgValue::Int(n, span) => max_buffered = Some((n, span)),
            _ => {}
        }
    }
    let stream = stream?;
    // Read like `In`'s name: resolved, and checked for cycles, with the
    // set's other names.
    out.uses.push(NameUse {
        name: stream.name.clone(),
        span: stream.span,
        write: false,
    });
    let mut ok = true;
    let on = match op.named("on") {
        Some(a) => crate::enrich::on_field(a, "a field is compared, not a value", EXAMPLE, diags),
        None => {
            diags.push(missing(
                op,
                "on = field",
                "name the field whose value must be equal on both sides",
            ));
            None
        }
    };
    ok &= on.is_some();
    let within = duration(op, "within");
    if let Some((d, span)) = within {
        if d.is_zero() {
            ok = false;
            diags.push(out_of_range(span, "`within` must be longer than 0"));
        }
    } else {
        ok = false;
        diags.push(missing(
            op,
            "within = duration",
            "say how far apart the timestamps of a matching pair may be",
        ));
    }
    let lateness = duration(op, "lateness").map(|(d, _)| d);
    let idle = match duration(op, "idle") {
        Some((d, span)) if d.is_zero() => {
            ok = false;
            diags.push(out_of_range(span, "`idle` must be longer than 0"));
            d
        }
        Some((d, _)) => d,
        None => DEFAULT_IDLE,
    };
    let max_buffered = match max_buffered {
        Some((n, span)) => match u64::try_from(n) {
            Ok(n) if n >= 1 => n,
            _ => {
                ok = false;
                diags.push(out_of_range(
                    span,
                    &format!("`max_buffered` must be at least 1, found {n}"),
                ));
                1
            }
        },
        None => DEFAULT_JOIN_MAX_BUFFERED,
    };
    match &into {
        Some((s, span)) if s.is_empty() => {
            ok = false;
            diags.push(out_of_range(*span, "`into` must not be empty"));
        }
        Some(_) => {}
        None => {
            ok = false;
            diags.push(missing(
                op,
                "into = \"key\"",
                "name the payload key the matching event's payload is added under",
            ));
        }
    }
    let (Some(on), Some((d, _)), Some((into, _)), true) = (on, within, into, ok) else {
        return None;
    };
    Some(Stage::Join(Box::new(Join {
        stream: stream.name,
        on,
        within: d,
        lateness: lateness.unwrap_or(d),
        into,
        miss,
        max_buffered,
        idle,
    })))
}

/// E009: a `Join` whose stream is the pipeline's own `In`: every event
/// would meet itself.
pub(crate) fn self_join(input: &str, join: &Op, diags: &mut Vec<Diagnostic>) {
    let Some(stream) = join.positional().next().and_then(|a| a.value.as_name()) else {
        return;
    };
    if stream.name == input {
        diags.push(
            Diagnostic::new(
                Code::E009,
                stream.span,
                format!("`Join` reads `{input}`, which is this pipeline's `In`"),
            )
            .with_label_here("the same stream on both sides")
            .with_help("join with another source or queue; to pair events of one stream, write them to two queues first"),
        );
    }
}

/// E007: a second `Join`, or a `Join` beside a `Window`, in one pipeline.
pub(crate) fn one_stateful_stage(op: &Op, first: &Op) -> Diagnostic {
    let message = if first.name.name == op.name.name {
        format!("only one `{}` per pipeline", op.name.name)
    } else {
        format!(
            "a pipeline with a `{}` cannot also have a `{}`",
            first.name.name, op.name.name
        )
    };
    Diagnostic::new(Code::E007, op.span, message)
    .with_label_here("second stateful stage")
    .with_label(first.span, format!("`{}` here", first.name.name))
    .with_help("split the pipeline in two, linked by a queue: `.Out(Joined)` here and `.In(Joined)` in the next one")
}

fn duration(op: &Op, key: &str) -> Option<(std::time::Duration, Span)> {
    // The signature check already refused anything but a duration.
    match op.named(key).map(|a| (&a.value.kind, a.value.span)) {
        Some((ExprKind::Duration(d), span)) => Some((*d, span)),
        _ => None,
    }
}

fn out_of_range(span: Span, message: &str) -> Diagnostic {
    Diagnostic::new(Code::E009, span, message.to_owned())
        .with_label_here("out of range")
        .with_help(EXAMPLE)
}

fn missing(op: &Op, what: &str, why: &str) -> Diagnostic {
    let key = what.split(' ').next().unwrap_or(what);
    Diagnostic::new(Code::E007, op.span, format!("`Join` needs `{what}`"))
        .with_label_here(format!("missing `{key}`"))
        .with_help(format!("{why}; {EXAMPLE}"))
}
