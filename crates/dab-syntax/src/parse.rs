//! pest pairs to AST. pest types stay in this file: the rest of the project
//! sees only the AST and diagnostics.

use dab_diag::{Code, Diagnostic, FileId, Span};
use pest::iterators::Pair;
use pest::Parser as _;

use crate::ast::*;
use crate::split::{statement_starts, too_big, TooBig};

/// Deepest nesting of parentheses and brackets a statement may have.
pub const MAX_NESTING: usize = 64;
/// Most `!`, `&&` and `||` operators a statement may have.
pub const MAX_OPERATORS: usize = 256;

#[derive(pest_derive::Parser)]
#[grammar = "../../grammar/dab.pest"]
struct DabParser;

/// Parses one blueprint file. Never panics; syntax errors come back as E001
/// diagnostics and the statements around them are still parsed.
///
/// Each statement goes through the hand-written parser in `fast.rs` first;
/// pest parses only the statements it gives up on (errors, mostly).
pub fn parse(file: FileId, text: &str) -> (Blueprint, Vec<Diagnostic>) {
    parse_with(file, text, Mode::Both).unwrap_or_default()
}

/// [`parse`] with pest alone, for tests that hold the fast path to pest's
/// answers.
#[doc(hidden)]
pub fn parse_pest_only(file: FileId, text: &str) -> (Blueprint, Vec<Diagnostic>) {
    parse_with(file, text, Mode::PestOnly).unwrap_or_default()
}

/// [`parse`] with the fast path alone: `None` when a statement needed pest.
/// For tests that check the fast path covers valid input.
#[doc(hidden)]
pub fn parse_fast_only(file: FileId, text: &str) -> Option<(Blueprint, Vec<Diagnostic>)> {
    parse_with(file, text, Mode::FastOnly)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Both,
    PestOnly,
    FastOnly,
}

fn parse_with(file: FileId, text: &str, mode: Mode) -> Option<(Blueprint, Vec<Diagnostic>)> {
    let mut cx = Cx {
        file,
        base: 0,
        diags: Vec::new(),
    };
    let mut statements = Vec::new();
    let mut starts = statement_starts(text);
    let leading_blank = {
        let first = starts.first().copied().unwrap_or(text.len());
        is_blank(&text[..first])
    };
    if !leading_blank {
        // Junk before the first statement: parse it as one, for a good message.
        starts.insert(0, 0);
    }
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(text.len());
        let chunk = &text[start..end];
        cx.base = start;
        if let Some((at, why)) = too_big(chunk, MAX_NESTING, MAX_OPERATORS) {
            let (message, label) = match why {
                TooBig::Nesting => (
                    format!("nested more than {MAX_NESTING} levels deep"),
                    "too deep",
                ),
                TooBig::Operators => (
                    format!("more than {MAX_OPERATORS} `!`, `&&` and `||` in one statement"),
                    "one too many",
                ),
            };
            cx.diags.push(
                Diagnostic::new(
                    Code::E001,
                    Span::new(file, start + at, start + at + 1),
                    message,
                )
                .with_label_here(label)
                .with_help("split the condition across pipelines or simplify it"),
            );
            continue;
        }
        let before = cx.diags.len();
        if mode != Mode::PestOnly {
            if let Some(stmt) = crate::fast::statement(&mut cx, chunk) {
                statements.push(stmt);
                continue;
            }
            if mode == Mode::FastOnly {
                return None;
            }
        }
        // Not what the fast path expects: pest decides, and words the error.
        cx.diags.truncate(before);
        match DabParser::parse(Rule::single, chunk) {
            Ok(mut pairs) => {
                let stmt = pairs.next().and_then(|single| {
                    single.into_inner().find(|p| p.as_rule() == Rule::statement)
                });
                if let Some(stmt) = stmt {
                    statements.push(cx.statement(stmt));
                }
            }
            Err(e) => {
                let literals = expected_literals(chunk);
                cx.diags
                    .push(syntax_error(file, start, chunk, e, &literals));
            }
        }
    }
    Some((Blueprint { file, statements }, cx.diags))
}

/// True when the text holds only white space and comments.
fn is_blank(text: &str) -> bool {
    fn skip(t: &str) -> &str {
        t.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}')
    }
    let mut rest = skip(text);
    loop {
        if let Some(r) = rest.strip_prefix("//") {
            rest = skip(r.split_once('\n').map_or("", |(_, after)| after));
        } else if let Some(r) = rest.strip_prefix("/*") {
            match r.split_once("*/") {
                Some((_, after)) => rest = skip(after),
                None => return false,
            }
        } else {
            return rest.is_empty();
        }
    }
}

/// Serialises the detailed re-parse: pest's error detail is one switch
/// for the whole process.
static DETAIL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The punctuation pest would have accepted where a chunk failed. pest
/// tracks literal tokens only with its error detail on, which halves parse
/// speed (an allocation per literal tried), so only a failing chunk is
/// parsed again with it. The switch is process-wide: the re-parse holds a
/// lock, so two failing parses never turn it off under each other and the
/// message never depends on timing; a clean parse on another thread at that
/// moment is merely slower.
fn expected_literals(chunk: &str) -> Vec<String> {
    let guard = DETAIL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    pest::set_error_detail(true);
    let attempts = DabParser::parse(Rule::single, chunk)
        .err()
        .and_then(|e| e.parse_attempts());
    pest::set_error_detail(false);
    drop(guard);
    let Some(attempts) = attempts else {
        return Vec::new();
    };
    attempts
        .expected_tokens()
        .into_iter()
        .map(|t| t.to_string())
        .filter(|t| [")", "]", ",", "(", "=", ".", ";"].contains(&t.as_str()))
        .map(|t| format!("`{t}`"))
        .collect()
}

fn syntax_error(
    file: FileId,
    base: usize,
    chunk: &str,
    e: pest::error::Error<Rule>,
    literals: &[String],
) -> Diagnostic {
    let pos = match e.location {
        pest::error::InputLocation::Pos(p) => p,
        pest::error::InputLocation::Span((s, _)) => s,
    };
    // At the end of a chunk, point just past its last token, not at the
    // white space or comments before the next statement.
    let content_end = chunk.trim_end().len();
    let pos = pos.min(content_end);
    let rest = &chunk[pos..content_end];
    let found_len = first_token(rest).len();
    let found = if rest.is_empty() {
        "end of statement".to_owned()
    } else {
        format!("`{}`", first_token(rest))
    };
    let expected = match &e.variant {
        pest::error::ErrorVariant::ParsingError { positives, .. } => {
            let mut names: Vec<&str> = positives.iter().filter_map(|r| describe(*r)).collect();
            names.extend(literals.iter().map(String::as_str));
            names.sort_unstable();
            names.dedup();
            prune(&mut names);
            join_alternatives(&names)
        }
        pest::error::ErrorVariant::CustomError { message } => message.clone(),
    };
    let message = if expected.is_empty() {
        format!("unexpected {found}")
    } else {
        format!("expected {expected}, found {found}")
    };
    let span = Span::new(file, base + pos, base + pos + found_len);
    let mut d = Diagnostic::new(Code::E001, span, message);
    if rest.is_empty() {
        d = d.with_help("the statement ends here; is a `)` or `]` missing?");
    } else {
        d = d.with_label_here("unexpected here");
    }
    d
}

/// Keeps the alternatives a person would type next: where a list or call
/// could close, "an operator could continue the expression" is only noise.
fn prune(names: &mut Vec<&str>) {
    let has = |names: &Vec<&str>, n: &str| names.contains(&n);
    if has(names, "`)`") || has(names, "`]`") {
        names.retain(|n| {
            !matches!(
                *n,
                "`&&`" | "`||`" | "a comparison" | "`.field`" | "`=`" | "`.`" | "`(`"
            )
        });
    }
    if has(names, "`.Op(...)`") {
        names.retain(|n| *n != "`.`");
    }
    if has(names, "an argument") {
        names.retain(|n| *n != "`(`");
    }
}

fn first_token(s: &str) -> &str {
    let end = s
        .char_indices()
        .find(|&(i, c)| i > 0 && !(c.is_alphanumeric() || c == '_'))
        .map_or(s.len(), |(i, _)| i);
    let first = s.chars().next().map_or(0, char::len_utf8);
    if s.starts_with(|c: char| c.is_alphanumeric() || c == '_') {
        &s[..end]
    } else {
        &s[..first]
    }
}

fn join_alternatives(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} or {}", init.join(", "), last),
    }
}

/// A person's words for a grammar rule; `None` hides rules that only add noise.
fn describe(rule: Rule) -> Option<&'static str> {
    Some(match rule {
        Rule::ident | Rule::path => "a name",
        Rule::statement | Rule::single | Rule::file => "a statement `service.NewPipeline()`",
        Rule::new_pipeline => "`NewPipeline`",
        Rule::pipeline_name | Rule::string | Rule::str_inner | Rule::str_char => "a string",
        Rule::op => "`.Op(...)`",
        Rule::args
        | Rule::arg
        | Rule::named_arg
        | Rule::expr
        | Rule::and_expr
        | Rule::unary
        | Rule::compare => "an argument",
        Rule::or_op => "`||`",
        Rule::and_op => "`&&`",
        Rule::not_op => "`!`",
        Rule::cmp_op | Rule::kw_in => "a comparison",
        Rule::path_seg => "`.field`",
        Rule::list => "a list",
        Rule::call => "a call such as `Count()`",
        Rule::duration | Rule::float | Rule::integer | Rule::boolean => "a value",
        Rule::EOI => "end of statement",
        _ => return None,
    })
}

pub(crate) struct Cx {
    pub(crate) file: FileId,
    pub(crate) base: usize,
    pub(crate) diags: Vec<Diagnostic>,
}

impl Cx {
    fn span(&self, p: &Pair<'_, Rule>) -> Span {
        let s = p.as_span();
        Span::new(self.file, self.base + s.start(), self.base + s.end())
    }

    fn ident(&self, p: Pair<'_, Rule>) -> Ident {
        Ident {
            name: p.as_str().to_owned(),
            span: self.span(&p),
        }
    }

    fn statement(&mut self, p: Pair<'_, Rule>) -> Statement {
        let span = self.span(&p);
        let mut service = None;
        let mut name = None;
        let mut ops = Vec::new();
        let mut head_end = span.start;
        for inner in p.into_inner() {
            match inner.as_rule() {
                Rule::ident => service = Some(self.ident(inner)),
                Rule::new_pipeline => head_end = self.span(&inner).end,
                Rule::pipeline_name => {
                    if let Some(s) = inner.into_inner().next() {
                        let lit = self.string(s);
                        head_end = lit.span.end;
                        name = Some(lit);
                    }
                }
                Rule::op => ops.push(self.op(inner)),
                _ => {}
            }
        }
        let service = service.unwrap_or(Ident {
            name: String::new(),
            span,
        });
        statement_of(service, name, ops, head_end, span)
    }

    fn op(&mut self, p: Pair<'_, Rule>) -> Op {
        let whole = self.span(&p);
        let mut name = None;
        let mut args = Vec::new();
        for inner in p.into_inner() {
            match inner.as_rule() {
                Rule::ident => name = Some(self.ident(inner)),
                Rule::args => {
                    for a in inner.into_inner() {
                        args.push(self.arg(a));
                    }
                }
                _ => {}
            }
        }
        let name = name.unwrap_or(Ident {
            name: String::new(),
            span: whole,
        });
        // The span starts at the name, not the dot before it.
        let span = Span {
            start: name.span.start,
            ..whole
        };
        Op { name, args, span }
    }

    fn arg(&mut self, p: Pair<'_, Rule>) -> Arg {
        let span = self.span(&p);
        let inner = p.into_inner().next();
        match inner {
            Some(named) if named.as_rule() == Rule::named_arg => {
                let mut it = named.into_inner();
                let key = it.next().map(|k| self.ident(k));
                let value = match it.next() {
                    Some(v) => self.expr(v),
                    None => self.empty(span),
                };
                Arg { key, value, span }
            }
            Some(e) => Arg {
                key: None,
                value: self.expr(e),
                span,
            },
            None => Arg {
                key: None,
                value: self.empty(span),
                span,
            },
        }
    }

    fn empty(&self, span: Span) -> Expr {
        Expr {
            kind: ExprKind::List(Vec::new()),
            span,
        }
    }

    /// Left-associative chain: `a op b op c`.
    fn chain(&mut self, p: Pair<'_, Rule>) -> Expr {
        let span = self.span(&p);
        let mut it = p.into_inner();
        let Some(first) = it.next() else {
            return self.empty(span);
        };
        let mut lhs = self.expr(first);
        while let (Some(op), Some(rhs)) = (it.next(), it.next()) {
            let op = match op.as_rule() {
                Rule::or_op => BinOp::Or,
                Rule::and_op => BinOp::And,
                _ => cmp_op(op.as_str()),
            };
            let rhs = self.expr(rhs);
            lhs = Expr {
                span: lhs.span.to(rhs.span),
                kind: ExprKind::Binary {
                    op,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                },
            };
        }
        lhs
    }

    fn expr(&mut self, p: Pair<'_, Rule>) -> Expr {
        let span = self.span(&p);
        match p.as_rule() {
            Rule::expr | Rule::and_expr | Rule::compare => self.chain(p),
            Rule::unary => {
                let mut nots = Vec::new();
                let mut operand = None;
                for inner in p.into_inner() {
                    if inner.as_rule() == Rule::not_op {
                        nots.push(self.span(&inner));
                    } else {
                        operand = Some(self.expr(inner));
                    }
                }
                let mut e = operand.unwrap_or_else(|| self.empty(span));
                for not in nots.into_iter().rev() {
                    e = Expr {
                        span: not.to(e.span),
                        kind: ExprKind::Not(Box::new(e)),
                    };
                }
                e
            }
            Rule::integer => self.integer(p.as_str(), span),
            Rule::float => self.float(p.as_str(), span),
            Rule::duration => Expr {
                kind: ExprKind::Duration(self.duration(p.as_str(), span)),
                span,
            },
            Rule::boolean => Expr {
                kind: ExprKind::Bool(p.as_str() == "true"),
                span,
            },
            Rule::string => {
                let s = self.string(p);
                Expr {
                    kind: ExprKind::Str(s.value),
                    span,
                }
            }
            Rule::list => {
                let items = p.into_inner().map(|i| self.expr(i)).collect();
                Expr {
                    kind: ExprKind::List(items),
                    span,
                }
            }
            Rule::call => {
                let mut it = p.into_inner();
                let name = it.next().map_or_else(
                    || Ident {
                        name: String::new(),
                        span,
                    },
                    |n| self.ident(n),
                );
                let args = it.map(|a| self.expr(a)).collect();
                Expr {
                    kind: ExprKind::Call { name, args },
                    span,
                }
            }
            Rule::path => {
                let mut it = p.into_inner();
                let root = it.next().map_or_else(
                    || Ident {
                        name: String::new(),
                        span,
                    },
                    |r| self.ident(r),
                );
                let segments = it
                    .filter_map(|seg| {
                        let inner = seg.into_inner().next()?;
                        Some(match inner.as_rule() {
                            Rule::string => PathSeg::Index(self.string(inner)),
                            _ => PathSeg::Field(self.ident(inner)),
                        })
                    })
                    .collect();
                Expr {
                    kind: ExprKind::Path(Path { root, segments }),
                    span,
                }
            }
            _ => self.empty(span),
        }
    }

    pub(crate) fn integer(&mut self, text: &str, span: Span) -> Expr {
        let kind = match text.parse::<i64>() {
            Ok(v) => ExprKind::Int(v),
            Err(_) => {
                self.diags.push(
                    Diagnostic::new(Code::E009, span, "integer literal out of range")
                        .with_help("integers are 64-bit: at most 9223372036854775807"),
                );
                ExprKind::Int(0)
            }
        };
        Expr { kind, span }
    }

    pub(crate) fn float(&mut self, text: &str, span: Span) -> Expr {
        let v = text.parse::<f64>().unwrap_or(f64::NAN);
        let kind = if v.is_finite() {
            ExprKind::Float(v)
        } else {
            self.diags.push(Diagnostic::new(
                Code::E009,
                span,
                "float literal out of range",
            ));
            ExprKind::Float(0.0)
        };
        Expr { kind, span }
    }

    pub(crate) fn duration(&mut self, text: &str, span: Span) -> std::time::Duration {
        let (digits, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
            Some(i) => text.split_at(i),
            None => (text, "ms"),
        };
        let factor_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            _ => 3_600_000,
        };
        let ms = if digits.starts_with('-') {
            None
        } else {
            digits
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(factor_ms))
        };
        match ms {
            Some(ms) => std::time::Duration::from_millis(ms),
            None => {
                self.diags.push(
                    Diagnostic::new(Code::E009, span, format!("duration `{text}` out of range"))
                        .with_help("durations are zero or more, e.g. `250ms`, `10s`, `5m`, `1h`"),
                );
                std::time::Duration::ZERO
            }
        }
    }

    fn string(&mut self, p: Pair<'_, Rule>) -> StrLit {
        let span = self.span(&p);
        let raw = p.into_inner().next().map_or("", |inner| inner.as_str());
        self.string_lit(raw, span)
    }

    /// A string literal from the text between its quotes (`raw`) and the
    /// span of the whole literal, quotes included.
    pub(crate) fn string_lit(&mut self, raw: &str, span: Span) -> StrLit {
        let mut value = String::with_capacity(raw.len());
        let mut chars = raw.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '\\' {
                value.push(c);
                continue;
            }
            match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, 't')) => value.push('\t'),
                Some((_, '"')) => value.push('"'),
                Some((_, '\\')) => value.push('\\'),
                Some((_, 'u')) => {
                    let rest = &raw[i + 2..];
                    let close = rest.find('}').unwrap_or(rest.len());
                    let hex = rest.get(1..close).unwrap_or("");
                    match u32::from_str_radix(hex, 16).ok().and_then(char::from_u32) {
                        Some(ch) => value.push(ch),
                        None => {
                            // +1 for the opening quote of the string.
                            let at = span.start as usize + 1 + i;
                            self.diags.push(
                                Diagnostic::new(
                                    Code::E001,
                                    Span::new(self.file, at, at + 2 + close + 1),
                                    format!("`\\u{{{hex}}}` is not a Unicode scalar value"),
                                )
                                .with_help("use a code point up to 10FFFF, not a surrogate"),
                            );
                        }
                    }
                    for _ in 0..=close {
                        chars.next();
                    }
                }
                _ => {}
            }
        }
        StrLit { value, span }
    }
}

/// The statement, with its head span running through the closing
/// parenthesis of `NewPipeline(...)` (`head_end` is where the name, or
/// `NewPipeline`, ends).
pub(crate) fn statement_of(
    service: Ident,
    name: Option<StrLit>,
    ops: Vec<Op>,
    head_end: u32,
    span: Span,
) -> Statement {
    let head_end = ops
        .first()
        .map_or(span.end, |o| o.span.start.saturating_sub(1))
        .max(head_end);
    let head_span = Span {
        end: head_end,
        ..span
    };
    Statement {
        service,
        name,
        ops,
        head_span,
        span,
    }
}

fn cmp_op(s: &str) -> BinOp {
    match s {
        "==" => BinOp::Eq,
        "!=" => BinOp::Ne,
        "<" => BinOp::Lt,
        "<=" => BinOp::Le,
        ">" => BinOp::Gt,
        ">=" => BinOp::Ge,
        _ => BinOp::In,
    }
}
