//! The `--format json` report, field for field as in SPEC section 3.

use serde::Serialize;

use crate::{counts, Diagnostic, SourceMap, Span};

#[derive(Debug, Serialize)]
pub struct JsonReport {
    pub diagnostics: Vec<JsonDiagnostic>,
    pub errors: usize,
    pub warnings: usize,
}

#[derive(Debug, Serialize)]
pub struct JsonDiagnostic {
    pub code: String,
    pub severity: crate::Severity,
    pub message: String,
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
    pub help: Option<String>,
    pub labels: Vec<JsonLabel>,
}

#[derive(Debug, Serialize)]
pub struct JsonLabel {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
    pub end_column: usize,
    pub message: String,
}

fn position(map: &SourceMap, span: Span) -> (String, usize, usize, usize, usize) {
    let (file, start, end) = map.locate(span);
    (
        file.to_owned(),
        start.line,
        start.column,
        end.line,
        end.column,
    )
}

/// Builds the JSON report of a list of diagnostics.
pub fn to_json(map: &SourceMap, diags: &[Diagnostic]) -> JsonReport {
    let (errors, warnings) = counts(diags);
    let diagnostics = diags
        .iter()
        .map(|d| {
            let (file, line, column, end_line, end_column) = position(map, d.span);
            JsonDiagnostic {
                code: d.code.as_str().to_owned(),
                severity: d.severity(),
                message: d.message.clone(),
                file,
                line,
                column,
                end_line,
                end_column,
                help: d.help.clone(),
                labels: d
                    .labels
                    .iter()
                    .map(|l| {
                        let (file, line, column, end_line, end_column) = position(map, l.span);
                        JsonLabel {
                            file,
                            line,
                            column,
                            end_line,
                            end_column,
                            message: l.message.clone(),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    JsonReport {
        diagnostics,
        errors,
        warnings,
    }
}
