//! Cuts a file into statements at each `IDENT.NewPipeline(`, so that a syntax
//! error in one statement never hides the statements after it (SPEC section 1:
//! parsing resumes at the next `IDENT.NewPipeline(`).
//!
//! This is a small lexer that only knows enough to skip comments and strings;
//! the grammar proper is in `grammar/dab.pest`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Ident(usize, usize),
    Dot,
    LParen,
    Other,
}

/// Byte offsets where statements start.
pub(crate) fn statement_starts(text: &str) -> Vec<usize> {
    let toks = lex(text);
    let mut starts = Vec::new();
    for w in toks.windows(4) {
        if let [Tok::Ident(s, _), Tok::Dot, Tok::Ident(a, b), Tok::LParen] = *w {
            if &text[a..b] == "NewPipeline" {
                starts.push(s);
            }
        }
    }
    starts
}

/// Why a statement is refused before pest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TooBig {
    /// `(` or `[` nested deeper than the limit.
    Nesting,
    /// More `!`, `&&`, `||` operators than the limit.
    Operators,
}

/// The offset and kind of the first place where a statement is too deeply
/// nested or has too many logical operators, outside comments and strings.
/// pest and the expression tree recurse once per level (and an `a && b &&
/// ...` chain is a tree as deep as it is long), so such text would exhaust
/// the stack; it is refused before pest runs.
pub(crate) fn too_big(text: &str, max_depth: usize, max_ops: usize) -> Option<(usize, TooBig)> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut ops = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i += 1;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    // An escape covers the next character, but never a line
                    // break: an unterminated string ends at the line's end.
                    if bytes[i] == b'\\' && bytes.get(i + 1).is_some_and(|&c| c != b'\n') {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'(' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Some((i, TooBig::Nesting));
                }
            }
            b')' | b']' => depth = depth.saturating_sub(1),
            b'!' | b'&' | b'|' => {
                let pair = matches!(
                    (bytes[i], bytes.get(i + 1)),
                    (b'&', Some(b'&')) | (b'|', Some(b'|'))
                );
                let not = bytes[i] == b'!' && bytes.get(i + 1) != Some(&b'=');
                if pair || not {
                    ops += 1;
                    if ops > max_ops {
                        return Some((i, TooBig::Operators));
                    }
                    if pair {
                        i += 1;
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn lex(text: &str) -> Vec<Tok> {
    let bytes = text.as_bytes();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => i += 1,
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                    i += 1;
                }
                i = (i + 2).min(bytes.len());
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    // An escape covers the next character, but never a line
                    // break: an unterminated string ends at the line's end.
                    if bytes[i] == b'\\' && bytes.get(i + 1).is_some_and(|&c| c != b'\n') {
                        i += 1;
                    }
                    i += 1;
                }
                i = (i + 1).min(bytes.len());
                toks.push(Tok::Other);
            }
            b'.' => {
                toks.push(Tok::Dot);
                i += 1;
            }
            b'(' => {
                toks.push(Tok::LParen);
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let s = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                toks.push(Tok::Ident(s, i));
            }
            c if c.is_ascii_digit() => {
                // A number, possibly with a unit: one token, so `1.NewPipeline` is no start.
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                toks.push(Tok::Other);
            }
            _ => {
                toks.push(Tok::Other);
                // Step over a whole UTF-8 character.
                i += 1;
                while i < bytes.len() && (bytes[i] & 0xC0) == 0x80 {
                    i += 1;
                }
            }
        }
    }
    toks
}

#[cfg(test)]
mod tests {
    use super::statement_starts;

    #[test]
    fn finds_starts_across_lines_and_skips_comments_and_strings() {
        let text =
            "a.NewPipeline().In(X)\n// b.NewPipeline(\n\"c.NewPipeline(\" d\n  .NewPipeline ( )";
        let starts = statement_starts(text);
        assert_eq!(starts, vec![0, text.find('d').unwrap_or(0)]);
    }

    #[test]
    fn unterminated_comment_and_string_do_not_panic() {
        assert!(statement_starts("/* a.NewPipeline(").is_empty());
        assert!(statement_starts("\"a.NewPipeline(").is_empty());
        assert_eq!(statement_starts("é a.NewPipeline("), vec![3]);
    }
}
