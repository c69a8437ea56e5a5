//! Human rendering of diagnostics, rustc style: a header with the code, the
//! file:line:col, the source line and a caret under the span; secondary
//! labels get their own snippet; colour is never used, so output is the same
//! on a terminal, in CI logs and in golden files.

use std::fmt::Write as _;

use dab_diag::{Diagnostic, SourceMap, Span};

pub fn render(map: &SourceMap, d: &Diagnostic) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}[{}]: {}", d.severity(), d.code, d.message);
    let width = std::iter::once(d.span)
        .chain(d.labels.iter().map(|l| l.span))
        .map(|s| map.locate(s).1.line.to_string().len())
        .max()
        .unwrap_or(1);
    let pad = " ".repeat(width);
    snippet(
        &mut out,
        map,
        d.span,
        '^',
        d.span_label.as_deref(),
        "-->",
        &pad,
    );
    for l in &d.labels {
        snippet(&mut out, map, l.span, '-', Some(&l.message), ":::", &pad);
    }
    if let Some(help) = &d.help {
        let _ = writeln!(out, "{pad} = help: {help}");
    }
    out
}

fn snippet(
    out: &mut String,
    map: &SourceMap,
    span: Span,
    mark: char,
    label: Option<&str>,
    arrow: &str,
    pad: &str,
) {
    let (file, start, end) = map.locate(span);
    let _ = writeln!(out, "{pad}{arrow} {file}:{}:{}", start.line, start.column);
    let Some(src) = map.get(span.file) else {
        return;
    };
    let text = src.line_text(start.line);
    // Tabs are one column (SPEC), so show them as one space to keep the caret aligned.
    let shown: String = text
        .chars()
        .map(|c| if c == '\t' { ' ' } else { c })
        .collect();
    let line_len = shown.chars().count();
    let from = start.column.saturating_sub(1).min(line_len);
    let to = if end.line == start.line {
        end.column.saturating_sub(1)
    } else {
        line_len
    };
    let marks = to.saturating_sub(from).max(1);
    let _ = writeln!(out, "{pad} |");
    let _ = writeln!(
        out,
        "{:>w$} | {}",
        start.line,
        shown.trim_end(),
        w = pad.len()
    );
    let underline: String = std::iter::repeat_n(mark, marks).collect();
    match label {
        Some(l) => {
            let _ = writeln!(out, "{pad} | {}{underline} {l}", " ".repeat(from));
        }
        None => {
            let _ = writeln!(out, "{pad} | {}{underline}", " ".repeat(from));
        }
    }
}

/// The closing line of a human report.
pub fn summary(errors: usize, warnings: usize, pipelines: usize, files: usize) -> String {
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    if errors == 0 && warnings == 0 {
        format!(
            "ok: {} in {}",
            plural(pipelines, "pipeline"),
            plural(files, "file")
        )
    } else {
        format!(
            "{}: {}, {}",
            if errors > 0 { "invalid" } else { "ok" },
            plural(errors, "error"),
            plural(warnings, "warning")
        )
    }
}
