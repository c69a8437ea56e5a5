//! Parsing the YAML of a bindings file into a tree whose nodes map back to
//! byte spans, and the YAML-level diagnostics (syntax, nesting, duplicates).
//!
//! marked-yaml builds the tree because it keeps a position on every node
//! (serde_yaml keeps none and is archived). Its loader recurses once per
//! nesting level and keeps only the last of two equal keys, so a first,
//! non-recursive pass over yaml-rust2's event stream bounds the nesting and
//! finds every duplicate key before the tree is built.

use std::collections::HashMap;

use dab_diag::{Code, Diagnostic, FileId, SourceFile, Span};
use marked_yaml::types::MarkedScalarNode;
use marked_yaml::{LoadError, LoaderOptions, Node};
use yaml_rust2::parser::{Event, Parser};

/// Deeper than any sensible bindings file, and far below the depth at which
/// the recursive tree loader would overflow the stack.
const MAX_DEPTH: usize = 64;

const BOM: char = '\u{feff}';

/// Turns parser positions (line, column) into spans of one file.
#[derive(Debug, Clone, Copy)]
pub(super) struct Locator<'a> {
    pub file: FileId,
    src: &'a SourceFile,
    /// yaml-rust2 reads a byte order mark as part of the first key, so the
    /// parser is given the text without it; the parser's columns on line 1
    /// are then one short of the file's.
    bom: bool,
}

impl<'a> Locator<'a> {
    pub fn new(file: FileId, src: &'a SourceFile) -> Self {
        Locator {
            file,
            src,
            bom: src.text.starts_with(BOM),
        }
    }

    /// The text the parser sees.
    fn yaml_text(&self) -> &'a str {
        self.src.text.strip_prefix(BOM).unwrap_or(&self.src.text)
    }

    fn text(&self) -> &'a str {
        &self.src.text
    }

    /// Byte offset of a 1-based line and column as the parser counts them.
    fn offset(&self, line: usize, column: usize) -> usize {
        let column = if self.bom && line == 1 {
            column + 1
        } else {
            column
        };
        self.src.offset_of(line, column)
    }

    /// marked-yaml markers are 1-based in line and column.
    fn marked(&self, m: Option<&marked_yaml::Marker>) -> usize {
        m.map_or(0, |m| self.offset(m.line(), m.column()))
    }

    /// yaml-rust2 markers have 1-based lines but 0-based columns.
    fn raw(&self, m: &yaml_rust2::scanner::Marker) -> usize {
        self.offset(m.line(), m.col() + 1)
    }

    pub fn span(&self, start: usize, end: usize) -> Span {
        Span::new(self.file, start, end)
    }

    /// A span over the character at `offset` (empty at the end of the file).
    pub fn point(&self, offset: usize) -> Span {
        let len = self
            .text()
            .get(offset..)
            .and_then(|rest| rest.chars().next())
            .map_or(0, char::len_utf8);
        self.span(offset, offset + len)
    }

    /// The source of a scalar, quotes included. Markers only give where a
    /// scalar starts; where it ends is read off the text.
    pub fn scalar(&self, node: &MarkedScalarNode) -> Span {
        let start = self.marked(node.span().start());
        let rest = self.text().get(start..).unwrap_or("");
        let len = scalar_len(rest, node.as_str());
        self.span(start, start + len)
    }

    /// The span of a value, or `None` where marked-yaml's markers would point
    /// somewhere unhelpful: an empty value (its marker is on the next token)
    /// and block collections (their marker is on the first key's colon).
    pub fn node(&self, node: &Node) -> Option<Span> {
        match node {
            Node::Scalar(s) => {
                let span = self.scalar(s);
                (span.start != span.end).then_some(span)
            }
            Node::Mapping(m) => self.flow(m.span(), '{', '}'),
            Node::Sequence(s) => self.flow(s.span(), '[', ']'),
        }
    }

    /// Where to point for a value: itself if it has a good span, else its key.
    pub fn value(&self, key: Span, node: &Node) -> Span {
        self.node(node).unwrap_or(key)
    }

    fn flow(&self, span: &marked_yaml::Span, open: char, close: char) -> Option<Span> {
        let start = self.marked(span.start());
        let end = self.marked(span.end());
        let text = self.text();
        let opens = text.get(start..)?.starts_with(open);
        let closes = text.get(end..)?.starts_with(close);
        (opens && closes && end >= start).then(|| self.span(start, end + close.len_utf8()))
    }

    /// The byte offset where a scalar's value appears verbatim in the file,
    /// if it does (no escapes, folding or quote doubling), so a problem
    /// inside the value can be pointed at precisely.
    pub fn verbatim(&self, node: &MarkedScalarNode) -> Option<usize> {
        let span = self.scalar(node);
        let source = self.text().get(span.range())?;
        let value = node.as_str();
        if source == value {
            return Some(span.start as usize);
        }
        let quoted = source.len() == value.len() + 2
            && (source.starts_with('"') || source.starts_with('\''));
        (quoted && source.get(1..source.len() - 1) == Some(value))
            .then_some(span.start as usize + 1)
    }
}

/// Length in bytes of the scalar starting `rest`, whose value is `value`.
fn scalar_len(rest: &str, value: &str) -> usize {
    let line_end = rest.find(['\n', '\r']).unwrap_or(rest.len());
    match rest.chars().next() {
        Some('"') => {
            let mut escaped = false;
            for (i, c) in rest.char_indices().skip(1) {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => return i + 1,
                    _ => {}
                }
            }
            line_end
        }
        Some('\'') => {
            let mut chars = rest.char_indices().skip(1).peekable();
            while let Some((i, c)) = chars.next() {
                if c == '\'' {
                    if chars.peek().is_some_and(|&(_, n)| n == '\'') {
                        chars.next();
                    } else {
                        return i + 1;
                    }
                }
            }
            line_end
        }
        _ if !value.is_empty() && rest.starts_with(value) => value.len(),
        // A folded, literal or multi-line plain scalar: its first line will do.
        _ => {
            let line = &rest[..line_end];
            line.find(" #")
                .map_or(line, |i| &line[..i])
                .trim_end()
                .len()
        }
    }
}

/// A key given twice in one mapping.
#[derive(Debug, Clone)]
pub(super) struct DuplicateKey {
    pub key: String,
    pub first: Span,
    pub second: Span,
}

/// The tree of a bindings file that parsed, and its duplicate keys.
#[derive(Debug)]
pub(super) struct Parsed {
    pub root: Node,
    pub duplicates: Vec<DuplicateKey>,
}

/// Parses the file. `None` when there is no tree to check; the reason is
/// in `diags`.
pub(super) fn parse(loc: &Locator<'_>, diags: &mut Vec<Diagnostic>) -> Option<Parsed> {
    let duplicates = prescan(loc, diags)?;
    // Scalars keep whether they were plain (may_coerce) or quoted, which
    // decides whether `100` is an integer and `"100"` a string.
    let options = LoaderOptions::default().prevent_coercion(true);
    match marked_yaml::parse_yaml_with_options(0, loc.yaml_text(), options) {
        Ok(root) => Some(Parsed { root, duplicates }),
        Err(e) => {
            diags.push(load_error(loc, &e));
            None
        }
    }
}

fn load_error(loc: &Locator<'_>, e: &LoadError) -> Diagnostic {
    let (marker, message, help) = match e {
        LoadError::TopLevelMustBeMapping(m) | LoadError::TopLevelMustBeSequence(m) => (
            m,
            "a bindings file must be a mapping".to_owned(),
            Some("start with `sources:`, `sinks:`, `queues:` or `types:`"),
        ),
        LoadError::UnexpectedAnchor(m) => (
            m,
            "YAML anchors and aliases are not supported in a bindings file".to_owned(),
            Some("write the value out in full"),
        ),
        LoadError::MappingKeyMustBeScalar(m) => {
            (m, "a mapping key must be a plain string".to_owned(), None)
        }
        LoadError::UnexpectedTag(m) => (
            m,
            "YAML tags are not supported in a bindings file".to_owned(),
            Some("quote the value to make it a string"),
        ),
        LoadError::ScanError(m, se) => (m, format!("YAML syntax error: {}", se.info()), None),
        LoadError::DuplicateKey(inner) => {
            // Not asked for (the loader runs with duplicates allowed); kept
            // so that a change of defaults still yields a located diagnostic.
            let span = loc.scalar(&inner.key);
            let first = loc.scalar(&inner.prev_key);
            return Diagnostic::new(
                Code::E015,
                span,
                format!("key `{}` appears twice in one mapping", inner.key.as_str()),
            )
            .with_label(first, "first here");
        }
    };
    let d = Diagnostic::new(Code::E015, loc.point(loc.marked(Some(marker))), message);
    match help {
        Some(h) => d.with_help(h),
        None => d,
    }
}

enum Frame {
    Mapping {
        keys: HashMap<String, Span>,
        /// The next node is a key (else a value).
        at_key: bool,
    },
    Sequence,
}

/// Walks the parser's events once: rejects over-deep nesting and a second
/// document, and collects duplicate keys. `None` when the tree must not be
/// built. Syntax errors are left to the tree loader, which reports the same
/// error from the same parser.
fn prescan(loc: &Locator<'_>, diags: &mut Vec<Diagnostic>) -> Option<Vec<DuplicateKey>> {
    let mut parser = Parser::new_from_str(loc.yaml_text());
    let mut stack: Vec<Frame> = Vec::new();
    let mut duplicates = Vec::new();
    let mut documents = 0usize;
    loop {
        let Ok((event, mark)) = parser.next_token() else {
            return Some(duplicates);
        };
        let opens = matches!(event, Event::MappingStart(..) | Event::SequenceStart(..));
        let is_node = opens || matches!(event, Event::Scalar(..) | Event::Alias(..));
        if is_node {
            if let Some(Frame::Mapping { keys, at_key }) = stack.last_mut() {
                if *at_key {
                    if let Event::Scalar(key, ..) = &event {
                        let start = loc.raw(&mark);
                        let rest = loc.text().get(start..).unwrap_or("");
                        let span = loc.span(start, start + scalar_len(rest, key));
                        match keys.get(key) {
                            Some(&first) => duplicates.push(DuplicateKey {
                                key: key.clone(),
                                first,
                                second: span,
                            }),
                            None => {
                                keys.insert(key.clone(), span);
                            }
                        }
                    }
                }
                *at_key = !*at_key;
            }
        }
        match event {
            Event::MappingStart(..) => stack.push(Frame::Mapping {
                keys: HashMap::new(),
                at_key: true,
            }),
            Event::SequenceStart(..) => stack.push(Frame::Sequence),
            Event::MappingEnd | Event::SequenceEnd => {
                stack.pop();
            }
            Event::DocumentStart => {
                documents += 1;
                if documents == 2 {
                    diags.push(
                        Diagnostic::new(
                            Code::E015,
                            loc.point(loc.raw(&mark)),
                            "a bindings file holds one YAML document, this is a second one",
                        )
                        .with_help("merge the documents and remove the `---` line"),
                    );
                }
            }
            Event::StreamEnd => return Some(duplicates),
            _ => {}
        }
        if stack.len() > MAX_DEPTH {
            diags.push(Diagnostic::new(
                Code::E015,
                loc.point(loc.raw(&mark)),
                format!("YAML nested deeper than {MAX_DEPTH} levels"),
            ));
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dab_diag::SourceMap;

    fn first_key_span(text: &str) -> (SourceMap, Span) {
        let mut map = SourceMap::new();
        let file = map.add("t.yaml", text);
        let src = map.get(file).expect("just added");
        let loc = Locator::new(file, src);
        let root = marked_yaml::parse_yaml(0, loc.yaml_text()).expect("valid YAML");
        let (key, _) = root
            .as_mapping()
            .and_then(|m| m.iter().next())
            .expect("one key");
        let span = loc.scalar(key);
        (map, span)
    }

    #[test]
    fn marked_yaml_columns_are_one_based_and_count_characters() {
        let (map, span) = first_key_span("\n\t é: 1\n");
        let (_, start, end) = map.locate(span);
        assert_eq!((start.line, start.column), (2, 3));
        assert_eq!((end.line, end.column), (2, 4));
        assert_eq!(map.snippet(span), "é");
    }

    #[test]
    fn a_byte_order_mark_does_not_shift_columns() {
        let (map, span) = first_key_span("\u{feff}abc: 1\n");
        assert_eq!(map.snippet(span), "abc");
        let (_, start, _) = map.locate(span);
        assert_eq!((start.line, start.column), (1, 2));
    }

    #[test]
    fn quoted_scalars_span_their_quotes() {
        assert_eq!(scalar_len(r#""a\"b" rest"#, "a\"b"), 6);
        assert_eq!(scalar_len("'it''s' rest", "it's"), 7);
        assert_eq!(scalar_len("plain, more", "plain"), 5);
        assert_eq!(scalar_len("abc\n  def\n", "abc def"), 3);
        assert_eq!(scalar_len("\"unclosed\n", "x"), 9);
    }
}
