//! Templated sink targets (SPEC section 10): a file sink's
//! `path: "out/{type}/{host}.ndjson"`, a Kafka sink's
//! `topic: "events.{type}"`.
//!
//! Placeholders: `{type}`, `{host}`, `{tags.k}` (the tag `k`) and
//! `{fields.a.b}` (a payload path, as in expressions); `{{` and `}}` are
//! literal braces. [`Template::parse`] is shared by the bindings check
//! (`dab validate`, each problem at its byte range in the value) and the
//! sinks, which render a template per event:
//!
//! - [`Template::render_path`]: each value has `/`, `\`, NUL and control
//!   characters replaced by `_`, so it never adds a path component; a
//!   component made with a value that comes out `.` or `..` has its dots
//!   replaced by `_`. So the rendered path stays under the directory of
//!   the template's fixed prefix, and a relative template never renders
//!   an absolute path. A component over 255 bytes is refused.
//! - [`Template::render_topic`]: every character of a value that Kafka
//!   refuses in a topic name (anything but `[A-Za-z0-9._-]`) is replaced
//!   by `_`; a topic that comes out `.` or `..` has its dots replaced; one
//!   over 249 bytes is refused.
//!
//! A value that is missing (no such tag, an absent payload field, a field
//! that is null, a list or an object) or empty is a [`Missing`] naming the
//! placeholder: the sink refuses that event on its own, and the runtime
//! sends it to `OnError` (or counts it dropped).

use std::fmt::Write as _;

use crate::payload::Scalar;
use crate::Event;

/// The longest file name most filesystems take (`NAME_MAX`).
pub const MAX_PATH_COMPONENT: usize = 255;
/// The longest topic name Kafka takes.
pub const MAX_TOPIC: usize = 249;

/// What a placeholder reads from an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    Type,
    Host,
    /// `{tags.k}`: the key after `tags.`, dots and all.
    Tag(String),
    /// `{fields.a.b}`: the steps of the payload path.
    Field(Vec<String>),
}

impl std::fmt::Display for Placeholder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Placeholder::Type => f.write_str("{type}"),
            Placeholder::Host => f.write_str("{host}"),
            Placeholder::Tag(k) => write!(f, "{{tags.{k}}}"),
            Placeholder::Field(p) => write!(f, "{{fields.{}}}", p.join(".")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(Placeholder),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    /// Byte ranges of each placeholder in the text, in order.
    spans: Vec<std::ops::Range<usize>>,
}

/// A problem in a template's text, at a byte range of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub range: std::ops::Range<usize>,
    pub message: String,
    pub help: String,
}

/// A value a template needs that the event does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing(pub String);

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a rendered template is used; says how values are made safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Path,
    Topic,
}

const KNOWN: &str = "the placeholders are {type}, {host}, {tags.KEY} and {fields.PATH}; write {{ and }} for literal braces";

impl Template {
    /// Parses `text`; every problem in it, each at its byte range.
    /// [`Template::parse`] for a connector's build: the errors as one
    /// sentence naming the field (`path`, `topic`).
    pub fn parse_field(field: &str, text: &str) -> Result<Template, String> {
        Template::parse(text).map_err(|errors| {
            format!(
                "`{field}` is not a valid template: {}",
                errors
                    .iter()
                    .map(|e| e.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })
    }

    pub fn parse(text: &str) -> Result<Template, Vec<TemplateError>> {
        let mut parts = Vec::new();
        let mut spans = Vec::new();
        let mut errors = Vec::new();
        let mut lit = String::new();
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'{' if bytes.get(i + 1) == Some(&b'{') => {
                    lit.push('{');
                    i += 2;
                }
                b'}' if bytes.get(i + 1) == Some(&b'}') => {
                    lit.push('}');
                    i += 2;
                }
                b'}' => {
                    errors.push(TemplateError {
                        range: i..i + 1,
                        message: "`}` closes no placeholder".into(),
                        help: "write `}}` for a literal brace".into(),
                    });
                    i += 1;
                }
                b'{' => {
                    let close = text[i + 1..]
                        .find(['}', '{'])
                        .map(|j| i + 1 + j)
                        .filter(|&j| bytes[j] == b'}');
                    let Some(close) = close else {
                        errors.push(TemplateError {
                            range: i..i + 1,
                            message: "`{` is not closed".into(),
                            help:
                                "close the placeholder with `}`, or write `{{` for a literal brace"
                                    .into(),
                        });
                        i += 1;
                        continue;
                    };
                    match placeholder(&text[i + 1..close]) {
                        Ok(p) => {
                            if !lit.is_empty() {
                                parts.push(Part::Lit(std::mem::take(&mut lit)));
                            }
                            parts.push(Part::Var(p));
                            spans.push(i..close + 1);
                        }
                        Err((message, help)) => errors.push(TemplateError {
                            range: i..close + 1,
                            message,
                            help,
                        }),
                    }
                    i = close + 1;
                }
                _ => {
                    // A whole UTF-8 character: `{` and `}` are ASCII, so
                    // the next one of them starts a character too.
                    let next = text[i..].find(['{', '}']).map_or(text.len(), |j| i + j);
                    lit.push_str(&text[i..next]);
                    i = next;
                }
            }
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        if errors.is_empty() {
            Ok(Template { parts, spans })
        } else {
            Err(errors)
        }
    }

    /// True when the template has no placeholder.
    pub fn is_static(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }

    /// The placeholders, each with its byte range in the text.
    pub fn placeholders(&self) -> impl Iterator<Item = (&Placeholder, std::ops::Range<usize>)> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Var(v) => Some(v),
                Part::Lit(_) => None,
            })
            .zip(self.spans.iter().cloned())
    }

    /// The text before the first placeholder (braces unescaped).
    pub fn fixed_prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Lit(s)) => s,
            _ => "",
        }
    }

    /// The text with `{{` and `}}` unescaped, for a template with no
    /// placeholder.
    pub fn literal(&self) -> Option<String> {
        self.is_static().then(|| {
            self.parts
                .iter()
                .filter_map(|p| match p {
                    Part::Lit(s) => Some(s.as_str()),
                    Part::Var(_) => None,
                })
                .collect()
        })
    }

    /// The file path for `ev`, in `out` (cleared first). See the module
    /// documentation for how values are made safe.
    pub fn render_path(&self, ev: &Event, out: &mut String) -> Result<(), Missing> {
        self.render(ev, out, Use::Path)
    }

    /// The Kafka topic for `ev`, in `out` (cleared first).
    pub fn render_topic(&self, ev: &Event, out: &mut String) -> Result<(), Missing> {
        self.render(ev, out, Use::Topic)
    }

    fn render(&self, ev: &Event, out: &mut String, to: Use) -> Result<(), Missing> {
        out.clear();
        // Where the current path component starts, and whether a value is
        // in it.
        let mut start = 0;
        let mut dynamic = false;
        let mut scratch = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => {
                    if to == Use::Topic {
                        out.push_str(s);
                        continue;
                    }
                    let mut rest = s.as_str();
                    while let Some(slash) = rest.find('/') {
                        out.push_str(&rest[..slash]);
                        end_component(out, start, dynamic, to)?;
                        out.push('/');
                        start = out.len();
                        dynamic = false;
                        rest = &rest[slash + 1..];
                    }
                    out.push_str(rest);
                }
                Part::Var(p) => {
                    let value = value_of(ev, p, &mut scratch)?;
                    if value.is_empty() {
                        return Err(Missing(format!("template placeholder {p} is empty")));
                    }
                    out.extend(value.chars().map(|c| safe(c, to)));
                    dynamic = true;
                }
            }
        }
        match to {
            Use::Path => end_component(out, start, dynamic, to),
            Use::Topic => end_component(out, 0, !self.is_static(), to),
        }
    }
}

/// Checks the component `out[start..]` a value went into: dots alone are
/// replaced, an overlong one refused.
fn end_component(out: &mut String, start: usize, dynamic: bool, to: Use) -> Result<(), Missing> {
    if !dynamic {
        return Ok(());
    }
    let comp = &out[start..];
    if comp == "." || comp == ".." {
        let n = comp.len();
        out.truncate(start);
        out.extend(std::iter::repeat_n('_', n));
    }
    let (max, what) = match to {
        Use::Path => (MAX_PATH_COMPONENT, "a path component"),
        Use::Topic => (MAX_TOPIC, "a Kafka topic"),
    };
    let len = out.len() - start;
    if len > max {
        return Err(Missing(format!(
            "the template renders {what} of {len} bytes; at most {max} are allowed"
        )));
    }
    Ok(())
}

fn safe(c: char, to: Use) -> char {
    match to {
        Use::Path if c == '/' || c == '\\' || c.is_control() => '_',
        Use::Path => c,
        Use::Topic if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') => c,
        Use::Topic => '_',
    }
}

/// The text a placeholder stands for in `ev`.
fn value_of<'e>(
    ev: &'e Event,
    p: &Placeholder,
    scratch: &'e mut String,
) -> Result<&'e str, Missing> {
    match p {
        Placeholder::Type => Ok(ev.ty.as_str()),
        Placeholder::Host => Ok(ev.host.as_str()),
        Placeholder::Tag(k) => ev.tag(k).map(crate::Text::as_str).ok_or_else(|| {
            Missing(format!(
                "template placeholder {p}: the event has no tag `{k}`"
            ))
        }),
        Placeholder::Field(path) => {
            scratch.clear();
            match ev.payload.field(&ev.message, path) {
                Some(Scalar::Str(s)) => scratch.push_str(&s),
                Some(Scalar::Int(n)) => {
                    let _ = write!(scratch, "{n}");
                }
                Some(Scalar::Float(x)) => {
                    let _ = write!(scratch, "{x}");
                }
                Some(Scalar::Bool(b)) => {
                    let _ = write!(scratch, "{b}");
                }
                Some(Scalar::Other) => {
                    return Err(Missing(format!(
                        "template placeholder {p}: the payload field is null, a list or an object, not a value"
                    )))
                }
                None => {
                    return Err(Missing(format!(
                        "template placeholder {p}: the payload has no such field"
                    )))
                }
            }
            Ok(scratch.as_str())
        }
    }
}

/// A placeholder's name (between the braces).
fn placeholder(name: &str) -> Result<Placeholder, (String, String)> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(("empty placeholder `{}`".into(), KNOWN.into()));
    }
    if trimmed != name {
        return Err((
            format!("placeholder `{{{name}}}` has spaces around its name"),
            format!("write `{{{trimmed}}}`"),
        ));
    }
    match name {
        "type" => return Ok(Placeholder::Type),
        "host" => return Ok(Placeholder::Host),
        _ => {}
    }
    if let Some(key) = name.strip_prefix("tags.") {
        if key.is_empty() {
            return Err(("`{tags.}` names no tag".into(), "write `{tags.KEY}`".into()));
        }
        return Ok(Placeholder::Tag(key.to_owned()));
    }
    if let Some(path) = name.strip_prefix("fields.") {
        let steps: Vec<String> = path.split('.').map(str::to_owned).collect();
        if steps.iter().any(String::is_empty) {
            return Err((
                format!("`{{{name}}}` has an empty step in its field path"),
                "write `{fields.a}` or `{fields.a.b}`".into(),
            ));
        }
        return Ok(Placeholder::Field(steps));
    }
    let help = match name {
        "tags" | "fields" => format!("write `{{{name}.NAME}}`"),
        "ty" | "kind" | "event_type" => "did you mean `{type}`?".into(),
        "hostname" | "source" => "did you mean `{host}`?".into(),
        _ => KNOWN.into(),
    };
    Err((format!("unknown placeholder `{{{name}}}`"), help))
}

#[cfg(test)]
mod tests;
