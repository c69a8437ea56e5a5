//! The rows of a `kind: file` table (`tables:`, SPEC section 9), parsed
//! from the file's bytes: JSON lines (one object per line) or CSV with a
//! header row (every column a string). Pure: the bindings check reads the
//! file through its `FileLookup` and parses it here (E018 when it does
//! not parse), and the runtime's loader parses what it reads at start and
//! on every change, so both refuse the same files.
//!
//! A row is found by the text of its `key` column: a string as itself, a
//! number in decimal ([`number_text`], the same text the runtime makes of
//! an event's value). A later row with the same key replaces an earlier
//! one, as in a compacted topic.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

/// How a table file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    /// One JSON object per line; blank lines are skipped.
    JsonLines,
    /// A header row, then one row per record; every value a string.
    Csv,
}

impl TableFormat {
    /// The format a `format:` field names (`jsonl`, `csv`).
    pub fn from_name(name: &str) -> Option<TableFormat> {
        match name {
            "jsonl" => Some(TableFormat::JsonLines),
            "csv" => Some(TableFormat::Csv),
            _ => None,
        }
    }

    /// The format a file's extension says: `.jsonl`, `.ndjson` and `.json`
    /// are JSON lines, `.csv` is CSV (case-insensitive).
    pub fn from_path(path: &str) -> Option<TableFormat> {
        let ext = std::path::Path::new(path)
            .extension()?
            .to_str()?
            .to_ascii_lowercase();
        match ext.as_str() {
            "jsonl" | "ndjson" | "json" => Some(TableFormat::JsonLines),
            "csv" => Some(TableFormat::Csv),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            TableFormat::JsonLines => "jsonl",
            TableFormat::Csv => "csv",
        }
    }
}

/// Why a table file does not parse: the 1-based line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct TableError {
    pub line: u64,
    pub message: String,
}

/// A table's rows by the text of their key. Each row is the JSON text of
/// an object: a JSON-lines row as written on its line (key order kept), a
/// CSV row with its columns in header order.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    by_key: HashMap<String, Arc<str>>,
}

impl Rows {
    pub fn get(&self, key: &str) -> Option<&Arc<str>> {
        self.by_key.get(key)
    }

    /// Puts `row` under `key`, replacing what was there.
    pub fn put(&mut self, key: String, row: Arc<str>) {
        self.by_key.insert(key, row);
    }

    /// Deletes the row under `key`, if any.
    pub fn remove(&mut self, key: &str) {
        self.by_key.remove(key);
    }

    /// Distinct keys (rows after later ones replaced earlier ones).
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// The text of a JSON number as a key: an integer in decimal, any other
/// number as Rust prints an `f64` (`7.5`; `7.0` prints `7`).
pub fn number_text(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        i.to_string()
    } else if let Some(u) = n.as_u64() {
        u.to_string()
    } else {
        n.as_f64().map_or_else(|| n.to_string(), |f| f.to_string())
    }
}

/// Parses a table file's bytes; rows are found by column `key`.
pub fn parse(bytes: &[u8], format: TableFormat, key: &str) -> Result<Rows, TableError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match format {
        TableFormat::JsonLines => json_lines(bytes, key),
        TableFormat::Csv => csv_rows(bytes, key),
    }
}

fn json_lines(bytes: &[u8], key: &str) -> Result<Rows, TableError> {
    let mut rows = Rows::default();
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let line_no = i as u64 + 1;
        let err = |message: String| TableError {
            line: line_no,
            message,
        };
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let text = std::str::from_utf8(line).map_err(|_| err("not UTF-8 text".to_owned()))?;
        let value: Value = serde_json::from_str(text).map_err(|e| {
            // serde_json counts lines within this one line; say the column.
            let full = e.to_string();
            let suffix = format!(" at line {} column {}", e.line(), e.column());
            let what = full.strip_suffix(&suffix).unwrap_or(&full);
            let hint = if text.starts_with('[') {
                " (a table holds one object per line, not a JSON array)"
            } else {
                ""
            };
            err(format!("not JSON at column {}: {what}{hint}", e.column()))
        })?;
        let Value::Object(object) = value else {
            let hint = if value.is_array() {
                " (a table holds one object per line, not a JSON array)"
            } else {
                ""
            };
            return Err(err(format!(
                "a row must be a JSON object, found {}{hint}",
                describe(&value)
            )));
        };
        let k = match object.get(key) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => number_text(n),
            Some(other) => {
                return Err(err(format!(
                    "key column `{key}` must be a string or a number, found {}",
                    describe(other)
                )))
            }
            None => return Err(err(format!("the row has no key column `{key}`"))),
        };
        rows.by_key.insert(k, Arc::from(text));
    }
    Ok(rows)
}

fn csv_rows(bytes: &[u8], key: &str) -> Result<Rows, TableError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(bytes);
    let line_of = |e: &csv::Error| e.position().map_or(1, csv::Position::line);
    let headers = reader
        .headers()
        .map_err(|e| TableError {
            line: line_of(&e),
            message: csv_message(&e),
        })?
        .clone();
    if headers.is_empty() {
        return Err(TableError {
            line: 1,
            message: "the file has no header row".to_owned(),
        });
    }
    for (i, h) in headers.iter().enumerate() {
        if headers.iter().take(i).any(|g| g == h) {
            return Err(TableError {
                line: 1,
                message: format!("column `{h}` appears twice in the header"),
            });
        }
    }
    let Some(key_at) = headers.iter().position(|h| h == key) else {
        let names: Vec<&str> = headers.iter().collect();
        return Err(TableError {
            line: 1,
            message: format!(
                "no key column `{key}` in the header (columns: {})",
                names.join(", ")
            ),
        });
    };
    let mut rows = Rows::default();
    for record in reader.records() {
        let record = record.map_err(|e| TableError {
            line: line_of(&e),
            message: csv_message(&e),
        })?;
        let mut text = String::with_capacity(record.as_slice().len() + 8 * headers.len());
        text.push('{');
        for (i, (h, v)) in headers.iter().zip(record.iter()).enumerate() {
            if i > 0 {
                text.push(',');
            }
            push_json_string(&mut text, h);
            text.push(':');
            push_json_string(&mut text, v);
        }
        text.push('}');
        let k = record.get(key_at).unwrap_or_default().to_owned();
        rows.by_key.insert(k, Arc::from(text));
    }
    Ok(rows)
}

fn push_json_string(out: &mut String, s: &str) {
    // Serialising a string cannot fail.
    out.push_str(&Value::String(s.to_owned()).to_string());
}

/// The csv crate's message, without the position it also prints (the
/// line is reported on its own).
fn csv_message(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("{len} columns, but the header has {expected_len}"),
        csv::ErrorKind::Utf8 { .. } => "not UTF-8 text".to_owned(),
        _ => e.to_string(),
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(rows: &Rows, key: &str) -> Option<String> {
        rows.get(key).map(|v| v.to_string())
    }

    #[test]
    fn json_lines_by_string_and_number_keys() {
        let text = b"{\"id\": \"a\", \"n\": 1}\n\n{\"id\": 7, \"n\": 2}\r\n{\"id\": 2.5}\n";
        let rows = parse(text, TableFormat::JsonLines, "id").expect("parses");
        assert_eq!(rows.len(), 3);
        assert_eq!(
            row(&rows, "a").as_deref(),
            Some("{\"id\": \"a\", \"n\": 1}")
        );
        assert_eq!(row(&rows, "7").as_deref(), Some("{\"id\": 7, \"n\": 2}"));
        assert!(rows.get("2.5").is_some());
    }

    #[test]
    fn a_later_row_replaces_an_earlier_one() {
        let text = b"{\"id\": \"a\", \"v\": 1}\n{\"id\": \"a\", \"v\": 2}\n";
        let rows = parse(text, TableFormat::JsonLines, "id").expect("parses");
        assert_eq!(rows.len(), 1);
        assert_eq!(
            row(&rows, "a").as_deref(),
            Some("{\"id\": \"a\", \"v\": 2}")
        );
    }

    #[test]
    fn json_lines_errors_name_the_line() {
        let cases: [(&[u8], u64, &str); 5] = [
            (b"{\"id\": 1}\n{\"id\": \n", 2, "not JSON"),
            (
                b"{\"id\": 1}\n\n[1]\n",
                3,
                "found a list (a table holds one object per line",
            ),
            (b"[\n{\"id\": 1}\n]\n", 1, "not a JSON array"),
            (b"{\"x\": 1}\n", 1, "no key column `id`"),
            (
                b"{\"id\": true}\n",
                1,
                "string or a number, found a boolean",
            ),
        ];
        for (text, line, says) in cases {
            let e = parse(text, TableFormat::JsonLines, "id").expect_err("refused");
            assert_eq!(e.line, line, "{e}");
            assert!(e.message.contains(says), "{e}");
        }
    }

    #[test]
    fn csv_rows_are_strings_by_header() {
        let text = b"\xEF\xBB\xBFteam_id,name,note\n1,core,\"a, quoted\"\n2,edge,\n";
        let rows = parse(text, TableFormat::Csv, "team_id").expect("parses");
        assert_eq!(rows.len(), 2);
        assert_eq!(
            row(&rows, "1").as_deref(),
            Some("{\"team_id\":\"1\",\"name\":\"core\",\"note\":\"a, quoted\"}")
        );
        assert_eq!(
            row(&rows, "2").as_deref(),
            Some("{\"team_id\":\"2\",\"name\":\"edge\",\"note\":\"\"}")
        );
    }

    #[test]
    fn csv_errors_name_the_line() {
        let e = parse(b"id,name\n1,a\n2\n", TableFormat::Csv, "id").expect_err("short row");
        assert_eq!(
            (e.line, e.message.as_str()),
            (3, "1 columns, but the header has 2")
        );
        let e = parse(b"name\na\n", TableFormat::Csv, "id").expect_err("no key");
        assert_eq!(e.line, 1);
        assert!(e.message.contains("no key column `id`"), "{e}");
        let e = parse(b"id,id\n1,2\n", TableFormat::Csv, "id").expect_err("twice");
        assert!(e.message.contains("appears twice"), "{e}");
        let e = parse(b"", TableFormat::Csv, "id").expect_err("empty");
        assert_eq!(e.line, 1);
    }

    #[test]
    fn formats_from_names_and_extensions() {
        assert_eq!(
            TableFormat::from_path("t.JSONL"),
            Some(TableFormat::JsonLines)
        );
        assert_eq!(
            TableFormat::from_path("d/t.ndjson"),
            Some(TableFormat::JsonLines)
        );
        assert_eq!(
            TableFormat::from_path("t.json"),
            Some(TableFormat::JsonLines)
        );
        assert_eq!(TableFormat::from_path("t.csv"), Some(TableFormat::Csv));
        assert_eq!(TableFormat::from_path("t.txt"), None);
        assert_eq!(TableFormat::from_path("t"), None);
        assert_eq!(TableFormat::from_name("csv"), Some(TableFormat::Csv));
    }

    #[test]
    fn numbers_as_key_text() {
        let n = |s: &str| number_text(&serde_json::from_str(s).expect("number"));
        assert_eq!(n("7"), "7");
        assert_eq!(n("-7"), "-7");
        assert_eq!(n("18446744073709551615"), "18446744073709551615");
        assert_eq!(n("7.5"), "7.5");
        assert_eq!(n("7.0"), "7");
    }
}
