//! Spans, the source map and diagnostics, as plain data.
//!
//! Every other crate reports problems as [`Diagnostic`] values; only the CLI
//! turns them into text. JSON output ([`to_json`]) lives here because its shape
//! is part of the product contract (SPEC section 3) and tests compare it.

mod code;
mod json;
mod source;
mod suggest;

pub use code::{Code, Severity};
pub use json::{to_json, JsonDiagnostic, JsonLabel, JsonReport};
pub use source::{FileId, LineCol, SourceFile, SourceMap, Span};
pub use suggest::did_you_mean;

/// A secondary span with its own short message (a cycle member, the first of
/// two duplicates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub span: Span,
    pub message: String,
}

/// One problem found in a blueprint set or its bindings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub code: Code,
    pub message: String,
    /// Where the problem is; the caret goes under it.
    pub span: Span,
    /// Short text printed beside the caret.
    pub span_label: Option<String>,
    pub labels: Vec<Label>,
    pub help: Option<String>,
}

impl Diagnostic {
    pub fn new(code: Code, span: Span, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            message: message.into(),
            span,
            span_label: None,
            labels: Vec::new(),
            help: None,
        }
    }

    pub fn with_label_here(mut self, text: impl Into<String>) -> Self {
        self.span_label = Some(text.into());
        self
    }

    pub fn with_label(mut self, span: Span, message: impl Into<String>) -> Self {
        self.labels.push(Label {
            span,
            message: message.into(),
        });
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Appends a "did you mean" hint when `candidates` holds a close match.
    pub fn with_suggestion<'a>(
        self,
        wrong: &str,
        candidates: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        match did_you_mean(wrong, candidates) {
            Some(best) => self.with_help(format!("did you mean `{best}`?")),
            None => self,
        }
    }

    pub fn severity(&self) -> Severity {
        self.code.severity()
    }

    pub fn is_error(&self) -> bool {
        self.severity() == Severity::Error
    }
}

/// Sorts diagnostics by file, then position, then code, so output is stable
/// whatever order the checks ran in.
pub fn sort(diags: &mut [Diagnostic]) {
    diags.sort_by(|a, b| {
        (a.span.file, a.span.start, a.code).cmp(&(b.span.file, b.span.start, b.code))
    });
}

/// Counts of errors and warnings in a list.
pub fn counts(diags: &[Diagnostic]) -> (usize, usize) {
    let errors = diags.iter().filter(|d| d.is_error()).count();
    (errors, diags.len() - errors)
}
