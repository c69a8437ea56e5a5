//! `${VAR}`, `${VAR:-default}`, `${VAR:?message}` and `$$` in string values.
//!
//! Resolved at load time so that an unset variable is a validate-time error
//! (SPEC section 2), not a surprise when a connector starts.

use std::ops::Range;

use super::EnvLookup;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Problem {
    /// `${VAR}` with `VAR` unset.
    Unset {
        var: String,
    },
    /// `${VAR:?message}` with `VAR` unset or empty.
    Required {
        var: String,
        message: String,
    },
    Malformed {
        reason: &'static str,
    },
}

/// A problem and the byte range of its `${...}` in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Located {
    pub range: Range<usize>,
    pub problem: Problem,
}

/// The value with every reference replaced, or every problem in it.
pub(super) fn interpolate(input: &str, env: EnvLookup<'_>) -> Result<String, Vec<Located>> {
    let mut out = String::with_capacity(input.len());
    let mut problems = Vec::new();
    let mut rest = input;
    let mut pos = 0;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let at = pos + dollar;
        let after = &rest[dollar + 1..];
        let consumed = if after.starts_with('$') {
            out.push('$');
            2
        } else if let Some(body_and_rest) = after.strip_prefix('{') {
            match body_and_rest.find('}') {
                Some(close) => {
                    let len = close + 3;
                    match reference(&body_and_rest[..close], env) {
                        Ok(value) => out.push_str(&value),
                        Err(problem) => problems.push(Located {
                            range: at..at + len,
                            problem,
                        }),
                    }
                    len
                }
                None => {
                    problems.push(Located {
                        range: at..input.len(),
                        problem: Problem::Malformed {
                            reason: "`${` is never closed by `}`",
                        },
                    });
                    rest.len() - dollar
                }
            }
        } else {
            // A `$` not followed by `{` or `$` is literal, as in Compose files.
            out.push('$');
            1
        };
        pos = at + consumed;
        rest = &input[pos..];
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

/// Resolves the inside of one `${...}`.
fn reference(body: &str, env: EnvLookup<'_>) -> Result<String, Problem> {
    let name_len = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(body.len());
    let (var, form) = body.split_at(name_len);
    if var.is_empty() || var.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(Problem::Malformed {
            reason: "`${...}` must start with a variable name",
        });
    }
    // Like the shell, the `:` forms treat an empty value as unset.
    let set = || env(var).filter(|v| !v.is_empty());
    if form.is_empty() {
        env(var).ok_or_else(|| Problem::Unset {
            var: var.to_owned(),
        })
    } else if let Some(default) = form.strip_prefix(":-") {
        if default.contains("${") {
            return Err(Problem::Malformed {
                reason: "a default may not contain another `${...}`",
            });
        }
        Ok(set().unwrap_or_else(|| default.to_owned()))
    } else if let Some(message) = form.strip_prefix(":?") {
        set().ok_or_else(|| Problem::Required {
            var: var.to_owned(),
            message: message.trim().to_owned(),
        })
    } else {
        Err(Problem::Malformed {
            reason: "expected `}`, `:-default` or `:?message` after the variable name",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("10.0.0.1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn run(s: &str) -> Result<String, Vec<Located>> {
        interpolate(s, &env)
    }

    #[test]
    fn replaces_references_and_keeps_literal_dollars() {
        assert_eq!(run("${HOST}:9092").as_deref(), Ok("10.0.0.1:9092"));
        assert_eq!(
            run("${NOPE:-a b}|${EMPTY:-d}|${HOST:-x}").as_deref(),
            Ok("a b|d|10.0.0.1")
        );
        assert_eq!(run("${EMPTY}").as_deref(), Ok(""));
        assert_eq!(run("$$HOST $5 a$ $").as_deref(), Ok("$HOST $5 a$ $"));
        assert_eq!(run("$${HOST}").as_deref(), Ok("${HOST}"));
        assert_eq!(run("é${HOST}é").as_deref(), Ok("é10.0.0.1é"));
        assert_eq!(run("${NOPE:-}").as_deref(), Ok(""));
    }

    #[test]
    fn reports_every_problem_with_its_range() {
        let errs = run("a${NOPE}b${EMPTY:?say why}c${1X}${HOST").expect_err("an error");
        assert_eq!(
            errs,
            vec![
                Located {
                    range: 1..8,
                    problem: Problem::Unset { var: "NOPE".into() }
                },
                Located {
                    range: 9..26,
                    problem: Problem::Required {
                        var: "EMPTY".into(),
                        message: "say why".into()
                    }
                },
                Located {
                    range: 27..32,
                    problem: Problem::Malformed {
                        reason: "`${...}` must start with a variable name"
                    }
                },
                Located {
                    range: 32..38,
                    problem: Problem::Malformed {
                        reason: "`${` is never closed by `}`"
                    }
                },
            ]
        );
    }

    #[test]
    fn rejects_other_forms_and_nested_defaults() {
        assert!(matches!(
            run("${HOST-x}").expect_err("an error")[0].problem,
            Problem::Malformed { .. }
        ));
        assert!(matches!(
            run("${A:-${B}}").expect_err("an error")[0].problem,
            Problem::Malformed { .. }
        ));
    }
}
