//! Reading one YAML scalar: its type by the YAML 1.2 core schema, `${...}`
//! interpolation of strings, and the "found ..." words of messages.
//!
//! Plain scalars are typed (`100` is an integer, `"100"` a string) because a
//! message should say what the user wrote, and a `Str` field should still take
//! a topic called `2024`.

use dab_diag::Span;
use marked_yaml::types::MarkedScalarNode;
use marked_yaml::Node;

use super::interpolate::{interpolate, Problem};
use super::Ctx;

/// A scalar after YAML typing and interpolation.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

impl Val {
    /// For "found ..." in messages.
    pub fn describe(&self) -> String {
        match self {
            Val::Null => "null".to_owned(),
            Val::Bool(b) => format!("boolean {b}"),
            Val::Int(i) => format!("integer {i}"),
            Val::Float(f) => format!("float {f}"),
            Val::Str(s) => format!("string {s:?}"),
        }
    }
}

/// "found ..." for any node, without interpolating.
pub(super) fn describe(node: &Node) -> String {
    match node {
        Node::Scalar(s) => match plain(s) {
            Val::Str(_) => format!("string {:?}", s.as_str()),
            v => v.describe(),
        },
        Node::Mapping(_) => "a mapping".to_owned(),
        Node::Sequence(_) => "a list".to_owned(),
    }
}

/// The YAML 1.2 core schema reading of a scalar; quoted and block scalars
/// are always strings.
fn plain(s: &MarkedScalarNode) -> Val {
    let text = s.as_str();
    if !s.may_coerce() {
        return Val::Str(text.to_owned());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => Val::Null,
        "true" | "True" | "TRUE" => Val::Bool(true),
        "false" | "False" | "FALSE" => Val::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" => Val::Float(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => Val::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => Val::Float(f64::NAN),
        _ => number(text).unwrap_or_else(|| Val::Str(text.to_owned())),
    }
}

/// `~`, `null` or nothing at all.
pub(super) fn is_null(s: &MarkedScalarNode) -> bool {
    plain(s) == Val::Null
}

/// An integer or float written the YAML way (Rust's parser alone would also
/// take `inf` and `NaN`, which YAML reads as strings).
pub(super) fn number(text: &str) -> Option<Val> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(Val::Int(i));
    }
    let numeric = text.chars().any(|c| c.is_ascii_digit())
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | 'e' | 'E'));
    if numeric {
        text.parse::<f64>().ok().map(Val::Float)
    } else {
        None
    }
}

/// Types a scalar and interpolates it if it is a string. `None` when
/// interpolation failed (reported).
pub(super) fn resolve(ctx: &mut Ctx<'_>, s: &MarkedScalarNode, span: Span) -> Option<Val> {
    match plain(s) {
        Val::Str(text) => match interpolate(&text, ctx.env) {
            Ok(value) => Some(Val::Str(value)),
            Err(problems) => {
                let verbatim = ctx.loc.verbatim(s);
                for p in problems {
                    let at = match verbatim {
                        Some(start) => ctx.loc.span(start + p.range.start, start + p.range.end),
                        None => span,
                    };
                    report_interpolation(ctx, at, p.problem);
                }
                None
            }
        },
        v => Some(v),
    }
}

fn report_interpolation(ctx: &mut Ctx<'_>, at: Span, problem: Problem) {
    match problem {
        Problem::Unset { var } => {
            ctx.error(at, format!("environment variable `{var}` is not set"))
                .help = Some(format!(
                "set it, give a default with ${{{var}:-default}}, or pass --env {var}=... to dab validate"
            ));
        }
        Problem::Required { var, message } => {
            let text = if message.is_empty() {
                format!("environment variable `{var}` is not set")
            } else {
                message
            };
            ctx.error(at, text).help = Some(format!(
                "`{var}` must be set and not empty here; pass --env {var}=... to dab validate"
            ));
        }
        Problem::Malformed { reason } => {
            ctx.error(at, format!("malformed variable reference: {reason}"))
                .help = Some(
                "write ${VAR}, ${VAR:-default} or ${VAR:?message}; $$ is a literal $".to_owned(),
            );
        }
    }
}

/// A scalar as a string: strings interpolated, other plain scalars as
/// written (a topic may well be called `2024`). `Err` holds what was found
/// instead; `Ok(None)` means interpolation failed (reported).
pub(super) fn text(ctx: &mut Ctx<'_>, node: &Node, span: Span) -> Result<Option<String>, String> {
    let Node::Scalar(s) = node else {
        return Err(describe(node));
    };
    match resolve(ctx, s, span) {
        None => Ok(None),
        Some(Val::Null) => Err(Val::Null.describe()),
        Some(Val::Str(v)) => Ok(Some(v)),
        Some(_) => Ok(Some(s.as_str().to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalars_follow_the_core_schema() {
        let node = |s: &str| MarkedScalarNode::new(marked_yaml::Span::new_blank(), s);
        assert_eq!(plain(&node("100")), Val::Int(100));
        assert_eq!(plain(&node("-1.5e3")), Val::Float(-1500.0));
        assert_eq!(plain(&node("127.0.0.1")), Val::Str("127.0.0.1".into()));
        assert_eq!(plain(&node("inf")), Val::Str("inf".into()));
        assert_eq!(plain(&node("~")), Val::Null);
        assert_eq!(plain(&node("TRUE")), Val::Bool(true));
        let mut quoted = node("100");
        quoted.set_coerce(false);
        assert_eq!(plain(&quoted), Val::Str("100".into()));
    }
}
