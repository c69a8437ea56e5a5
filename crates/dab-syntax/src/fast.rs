//! A hand-written parser for the happy path: one statement chunk, exactly as
//! `single` in `grammar/dab.pest` would parse it, giving the very AST that
//! `parse.rs` builds from pest's pairs (spans included).
//!
//! It never reports a syntax error. Wherever the text is not what it expects
//! it gives up (`None`), and the caller parses the chunk with pest, which
//! gives the error message; a chunk it accepts, pest accepts too. So pest
//! stays the definition of the language and of its messages, and this file
//! is only a faster way to the same answer. `tests/fast_parse.rs` checks
//! that the two agree, on valid and on broken input.
//!
//! The spans follow pest's rules, including its implicit `WHITESPACE` and
//! `COMMENT` skip: a rule ending in `x ~ y*` or `x ~ y?` ends after the
//! skip that follows `x` when `y` does not match. That is why a path's span
//! (and an argument's) reaches over the white space after it.

use dab_diag::Span;

use crate::ast::*;
use crate::parse::{statement_of, Cx};

/// The statement in `chunk`, or `None` when pest must decide.
pub(crate) fn statement(cx: &mut Cx, chunk: &str) -> Option<Statement> {
    let mut p = Fast {
        b: chunk.as_bytes(),
        text: chunk,
        cx,
    };
    let at = p.skip(0);
    let (st, end) = p.statement(at)?;
    let mut at = p.skip(end);
    if p.b.get(at) == Some(&b';') {
        at = p.skip(at + 1);
    }
    (at == p.b.len()).then_some(st)
}

struct Fast<'a, 'c> {
    b: &'a [u8],
    text: &'a str,
    cx: &'c mut Cx,
}

fn ident_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

impl Fast<'_, '_> {
    fn span(&self, start: usize, end: usize) -> Span {
        Span::new(self.cx.file, self.cx.base + start, self.cx.base + end)
    }

    fn at(&self, i: usize) -> u8 {
        self.b.get(i).copied().unwrap_or(0)
    }

    fn starts(&self, i: usize, lit: &[u8]) -> bool {
        self.b.get(i..i + lit.len()) == Some(lit)
    }

    fn ident_char_at(&self, i: usize) -> bool {
        i < self.b.len() && ident_char(self.b[i])
    }

    /// pest's implicit skip: `WHITESPACE* (COMMENT WHITESPACE*)*`. An
    /// unterminated block comment is not skipped.
    fn skip(&self, mut i: usize) -> usize {
        let b = self.b;
        loop {
            match b.get(i) {
                Some(b' ' | b'\t' | b'\r' | b'\n') => i += 1,
                Some(0xEF) if self.starts(i, "\u{FEFF}".as_bytes()) => i += 3,
                Some(b'/') if self.at(i + 1) == b'/' => {
                    i += 2;
                    while i < b.len() && b[i] != b'\n' {
                        i += 1;
                    }
                }
                Some(b'/') if self.at(i + 1) == b'*' => {
                    let mut j = i + 2;
                    loop {
                        if j + 1 >= b.len() {
                            return i;
                        }
                        if b[j] == b'*' && b[j + 1] == b'/' {
                            break;
                        }
                        j += 1;
                    }
                    i = j + 2;
                }
                _ => return i,
            }
        }
    }

    /// Where the `ident` at `i` ends: ASCII, not `true`, `false` or `in`.
    fn ident_end(&self, i: usize) -> Option<usize> {
        let c = self.at(i);
        if !(c.is_ascii_alphabetic() || c == b'_') {
            return None;
        }
        let mut end = i + 1;
        while self.ident_char_at(end) {
            end += 1;
        }
        let reserved = matches!(&self.b[i..end], b"true" | b"false" | b"in");
        (!reserved).then_some(end)
    }

    fn ident(&self, i: usize) -> Option<(Ident, usize)> {
        let end = self.ident_end(i)?;
        let name = &self.text[i..end];
        Some((
            Ident {
                name: name.to_owned(),
                span: self.span(i, end),
            },
            end,
        ))
    }

    /// `string`: the literal and the position after its closing quote.
    fn string(&mut self, i: usize) -> Option<(StrLit, usize)> {
        if self.at(i) != b'"' {
            return None;
        }
        let b = self.b;
        let mut j = i + 1;
        loop {
            match b.get(j)? {
                b'"' => break,
                b'\n' => return None,
                b'\\' => match b.get(j + 1)? {
                    b'"' | b'\\' | b'n' | b't' => j += 2,
                    b'u' => {
                        if self.at(j + 2) != b'{' {
                            return None;
                        }
                        let mut k = j + 3;
                        while k < b.len() && k - (j + 3) < 6 && b[k].is_ascii_hexdigit() {
                            k += 1;
                        }
                        if k == j + 3 || self.at(k) != b'}' {
                            return None;
                        }
                        j = k + 1;
                    }
                    _ => return None,
                },
                _ => j += 1,
            }
        }
        let raw = &self.text[i + 1..j];
        let span = self.span(i, j + 1);
        Some((self.cx.string_lit(raw, span), j + 1))
    }

    /// `statement = { ident ~ "." ~ new_pipeline ~ "(" ~ pipeline_name? ~ ")" ~ op+ }`
    fn statement(&mut self, i: usize) -> Option<(Statement, usize)> {
        let (service, at) = self.ident(i)?;
        let at = self.skip(at);
        if self.at(at) != b'.' {
            return None;
        }
        let at = self.skip(at + 1);
        if !self.starts(at, b"NewPipeline") {
            return None;
        }
        let mut head_end = self.span(at, at + "NewPipeline".len()).end;
        let at = self.skip(at + "NewPipeline".len());
        if self.at(at) != b'(' {
            return None;
        }
        let mut at = self.skip(at + 1);
        let mut name = None;
        if self.at(at) == b'"' {
            let (lit, end) = self.string(at)?;
            head_end = lit.span.end;
            name = Some(lit);
            at = self.skip(end);
        }
        if self.at(at) != b')' {
            return None;
        }
        let (first, mut end) = self.op(self.skip(at + 1))?;
        let mut ops = vec![first];
        loop {
            let next = self.skip(end);
            if self.at(next) != b'.' {
                break;
            }
            let (op, e) = self.op(next)?;
            ops.push(op);
            end = e;
        }
        if ops.len() == 1 {
            // pest reads `op+` as `op ~ op*`: the skip between them stays
            // consumed when no second op follows.
            end = self.skip(end);
        }
        let span = self.span(i, end);
        Some((statement_of(service, name, ops, head_end, span), end))
    }

    /// `op = { "." ~ ident ~ "(" ~ args? ~ ")" }`
    fn op(&mut self, i: usize) -> Option<(Op, usize)> {
        if self.at(i) != b'.' {
            return None;
        }
        let (name, at) = self.ident(self.skip(i + 1))?;
        let at = self.skip(at);
        if self.at(at) != b'(' {
            return None;
        }
        // args = { arg ~ ("," ~ arg)* ~ ","? }
        let (args, at) = self.comma_list(self.skip(at + 1), b')', Self::arg)?;
        let end = at + 1;
        let span = Span {
            start: name.span.start,
            ..self.span(i, end)
        };
        Some((Op { name, args, span }, end))
    }

    /// `arg = { named_arg | expr }`, `named_arg = { ident ~ "=" ~ !"=" ~ expr }`
    fn arg(&mut self, i: usize) -> Option<(Arg, usize)> {
        if let Some(after) = self.ident_end(i) {
            let eq = self.skip(after);
            if self.at(eq) == b'=' {
                let value_at = self.skip(eq + 1);
                if self.at(value_at) != b'=' {
                    let (key, _) = self.ident(i)?;
                    let (value, end) = self.expr(value_at)?;
                    let span = self.span(i, end);
                    return Some((
                        Arg {
                            key: Some(key),
                            value,
                            span,
                        },
                        end,
                    ));
                }
            }
        }
        let (value, end) = self.expr(i)?;
        let span = self.span(i, end);
        Some((
            Arg {
                key: None,
                value,
                span,
            },
            end,
        ))
    }

    /// `expr = { and_expr ~ (or_op ~ and_expr)* }`. Like every rule here,
    /// it returns where pest's pair ends: after the skip that follows the
    /// first operand when nothing repeats, at the last operand's end when
    /// something did.
    fn expr(&mut self, i: usize) -> Option<(Expr, usize)> {
        self.chain(i, b"||", BinOp::Or, Self::and_expr)
    }

    /// `and_expr = { unary ~ (and_op ~ unary)* }`
    fn and_expr(&mut self, i: usize) -> Option<(Expr, usize)> {
        self.chain(i, b"&&", BinOp::And, Self::unary)
    }

    /// `x ~ (op ~ x)*`, left-associative.
    fn chain(
        &mut self,
        i: usize,
        token: &[u8],
        op: BinOp,
        operand: fn(&mut Self, usize) -> Option<(Expr, usize)>,
    ) -> Option<(Expr, usize)> {
        let (mut lhs, first_end) = operand(self, i)?;
        let mut end = None;
        loop {
            let at = self.skip(end.unwrap_or(first_end));
            if !self.starts(at, token) {
                return Some((lhs, end.unwrap_or(at)));
            }
            let (rhs, e) = operand(self, self.skip(at + token.len()))?;
            lhs = binary(op, lhs, rhs);
            end = Some(e);
        }
    }

    /// `unary = { not_op* ~ compare }`, `not_op = { "!" ~ !"=" }`
    fn unary(&mut self, i: usize) -> Option<(Expr, usize)> {
        let mut nots = Vec::new();
        let mut at = i;
        while self.at(at) == b'!' {
            let after = self.skip(at + 1);
            if self.at(after) == b'=' {
                return None;
            }
            nots.push(self.span(at, after));
            at = after;
        }
        let (mut e, end) = self.compare(at)?;
        for not in nots.into_iter().rev() {
            e = Expr {
                span: not.to(e.span),
                kind: ExprKind::Not(Box::new(e)),
            };
        }
        Some((e, end))
    }

    /// `compare = { primary ~ (cmp_op ~ primary)? }`
    fn compare(&mut self, i: usize) -> Option<(Expr, usize)> {
        let (lhs, end) = self.primary(i)?;
        let at = self.skip(end);
        let op = match (self.at(at), self.at(at + 1)) {
            (b'=', b'=') => Some((BinOp::Eq, 2)),
            (b'!', b'=') => Some((BinOp::Ne, 2)),
            (b'<', b'=') => Some((BinOp::Le, 2)),
            (b'>', b'=') => Some((BinOp::Ge, 2)),
            (b'<', _) => Some((BinOp::Lt, 1)),
            (b'>', _) => Some((BinOp::Gt, 1)),
            (b'i', b'n') if !self.ident_char_at(at + 2) => Some((BinOp::In, 2)),
            _ => None,
        };
        let Some((op, len)) = op else {
            return Some((lhs, at));
        };
        let (rhs, end) = self.primary(self.skip(at + len))?;
        Some((binary(op, lhs, rhs), end))
    }

    /// `primary = _{ "(" ~ expr ~ ")" | literal | list | call | path }`: the
    /// expression and the end of its own pair (a path's includes the skip
    /// after it).
    fn primary(&mut self, i: usize) -> Option<(Expr, usize)> {
        match self.at(i) {
            b'(' => {
                let (e, end) = self.expr(self.skip(i + 1))?;
                (self.at(end) == b')').then_some((e, end + 1))
            }
            b'"' => {
                let (s, end) = self.string(i)?;
                Some((
                    Expr {
                        kind: ExprKind::Str(s.value),
                        span: s.span,
                    },
                    end,
                ))
            }
            b'-' | b'0'..=b'9' => self.number(i),
            b'[' => self.list(i),
            b't' | b'f' => {
                for (word, value) in [("true", true), ("false", false)] {
                    let end = i + word.len();
                    if self.starts(i, word.as_bytes()) && !self.ident_char_at(end) {
                        return Some((
                            Expr {
                                kind: ExprKind::Bool(value),
                                span: self.span(i, end),
                            },
                            end,
                        ));
                    }
                }
                self.call_or_path(i)
            }
            _ => self.call_or_path(i),
        }
    }

    /// `duration | float | integer`, in that order.
    fn number(&mut self, i: usize) -> Option<(Expr, usize)> {
        let digits = |from: usize| {
            let mut j = from;
            while self.at(j).is_ascii_digit() {
                j += 1;
            }
            j
        };
        let int_start = if self.at(i) == b'-' { i + 1 } else { i };
        let int_end = digits(int_start);
        if int_end == int_start {
            return None;
        }
        // duration: ("ms" | "s" | "m" | "h") ~ !ident_char
        let unit = match self.at(int_end) {
            b'm' if self.at(int_end + 1) == b's' => 2,
            b's' | b'm' | b'h' => 1,
            _ => 0,
        };
        if unit > 0 {
            let end = int_end + unit;
            if self.ident_char_at(end) {
                // No float or integer can follow digits and a letter either.
                return None;
            }
            let span = self.span(i, end);
            let d = self.cx.duration(&self.text[i..end], span);
            return Some((
                Expr {
                    kind: ExprKind::Duration(d),
                    span,
                },
                end,
            ));
        }
        // float: "." ~ DIGIT+ ~ (^"e" ~ ("+" | "-")? ~ DIGIT+)? ~ !ident_char
        if self.at(int_end) == b'.' && self.at(int_end + 1).is_ascii_digit() {
            let mut end = digits(int_end + 1);
            if matches!(self.at(end), b'e' | b'E') {
                let mut k = end + 1;
                if matches!(self.at(k), b'+' | b'-') {
                    k += 1;
                }
                let exp_end = digits(k);
                if exp_end > k {
                    end = exp_end;
                }
            }
            if self.ident_char_at(end) {
                return None;
            }
            let span = self.span(i, end);
            return Some((self.cx.float(&self.text[i..end], span), end));
        }
        // integer: !ident_char
        if self.ident_char_at(int_end) {
            return None;
        }
        let span = self.span(i, int_end);
        Some((self.cx.integer(&self.text[i..int_end], span), int_end))
    }

    /// `item ~ ("," ~ item)* ~ ","?`, or nothing, then `close`: the items
    /// and where `close` is.
    fn comma_list<T>(
        &mut self,
        mut at: usize,
        close: u8,
        item: fn(&mut Self, usize) -> Option<(T, usize)>,
    ) -> Option<(Vec<T>, usize)> {
        let mut items = Vec::new();
        if self.at(at) != close {
            loop {
                let (it, end) = item(self, at)?;
                items.push(it);
                at = self.skip(end);
                if self.at(at) != b',' {
                    break;
                }
                at = self.skip(at + 1);
                if self.at(at) == close {
                    break;
                }
            }
        }
        (self.at(at) == close).then_some((items, at))
    }

    /// `list = { "[" ~ (expr ~ ("," ~ expr)* ~ ","?)? ~ "]" }`
    fn list(&mut self, i: usize) -> Option<(Expr, usize)> {
        let (items, at) = self.comma_list(self.skip(i + 1), b']', Self::expr)?;
        let end = at + 1;
        Some((
            Expr {
                kind: ExprKind::List(items),
                span: self.span(i, end),
            },
            end,
        ))
    }

    /// `call = { ident ~ "(" ~ (expr ~ ("," ~ expr)* ~ ","?)? ~ ")" }`,
    /// tried before `path` as in `primary`.
    fn call_or_path(&mut self, i: usize) -> Option<(Expr, usize)> {
        let (name, end) = self.ident(i)?;
        let open = self.skip(end);
        if self.at(open) != b'(' {
            return self.path(i);
        }
        let (args, at) = self.comma_list(self.skip(open + 1), b')', Self::expr)?;
        let end = at + 1;
        Some((
            Expr {
                kind: ExprKind::Call { name, args },
                span: self.span(i, end),
            },
            end,
        ))
    }

    /// `path = { ident ~ path_seg* }`, `path_seg = { "." ~ ident | "[" ~ string ~ "]" }`.
    /// Without segments its span reaches over the skip after the root.
    fn path(&mut self, i: usize) -> Option<(Expr, usize)> {
        let (root, mut end) = self.ident(i)?;
        let mut segments = Vec::new();
        loop {
            let at = self.skip(end);
            match self.at(at) {
                b'.' => {
                    let Some((field, e)) = self.ident(self.skip(at + 1)) else {
                        break;
                    };
                    segments.push(PathSeg::Field(field));
                    end = e;
                }
                b'[' => {
                    let (s, e) = self.string(self.skip(at + 1))?;
                    let close = self.skip(e);
                    if self.at(close) != b']' {
                        return None;
                    }
                    segments.push(PathSeg::Index(s));
                    end = close + 1;
                }
                _ => break,
            }
        }
        if segments.is_empty() {
            end = self.skip(end);
        }
        let span = self.span(i, end);
        Some((
            Expr {
                kind: ExprKind::Path(Path { root, segments }),
                span,
            },
            end,
        ))
    }
}

fn binary(op: BinOp, lhs: Expr, rhs: Expr) -> Expr {
    Expr {
        span: lhs.span.to(rhs.span),
        kind: ExprKind::Binary {
            op,
            lhs: Box::new(lhs),
            rhs: Box::new(rhs),
        },
    }
}
