//! Payload schemas (SPEC section 7): the field types a `types:` entry may
//! declare, their text form (`int64`, `string?`, `list<string>`,
//! `map<string, float64>?`, nested structs), looking a `fields.` path up in
//! a schema, and checking that a JSON payload conforms.
//!
//! This crate knows nothing of YAML, spans or diagnostics: `dab-plan`
//! reads the bindings and reports; the runtime and sinks check payloads.

use std::fmt;

pub mod compat;

use serde_json::Value;

/// A field's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    Bool,
    Int32,
    Int64,
    Float64,
    String,
    Bytes,
    /// Nanoseconds since the epoch as an integer, or an RFC 3339 string.
    Timestamp,
    List(Box<FieldType>),
    /// Keys are strings.
    Map(Box<FieldType>),
    Struct(Vec<Field>),
}

/// A type and whether it may be null or absent (`?`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldType {
    pub ty: Type,
    pub optional: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub ty: FieldType,
}

/// The schema of one type's payload.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schema {
    pub version: Option<u32>,
    pub fields: Vec<Field>,
}

/// The scalar type names, for messages and suggestions.
pub const SCALARS: &[&str] = &[
    "bool",
    "int32",
    "int64",
    "float64",
    "string",
    "bytes",
    "timestamp",
];

/// What is wrong with a type's text; `at` is a byte offset in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub at: usize,
    pub message: String,
}

impl FieldType {
    /// Reads a scalar, list or map type: `int64`, `string?`,
    /// `list<string>`, `map<string, list<int32>>?`. Structs are written as
    /// YAML mappings, so the caller builds them.
    pub fn parse(text: &str) -> Result<FieldType, ParseError> {
        let mut p = Parser { text, pos: 0 };
        p.ws();
        let t = p.field_type()?;
        p.ws();
        if p.pos < text.len() {
            return Err(p.fail(format!("unexpected `{}` after the type", &text[p.pos..])));
        }
        Ok(t)
    }

    /// The scalar name or shape, for messages: `int64`, `a list`, ...
    pub fn describe(&self) -> String {
        match &self.ty {
            Type::Struct(_) => "a struct".to_owned(),
            _ => format!("`{self}`"),
        }
    }

    /// Whether a comparison with a literal of `kind` can be true.
    pub fn compares_with(&self, kind: LiteralKind) -> bool {
        matches!(
            (&self.ty, kind),
            (Type::Bool, LiteralKind::Bool)
                | (
                    Type::Int32 | Type::Int64 | Type::Float64 | Type::Timestamp,
                    LiteralKind::Int | LiteralKind::Float
                )
                | (
                    Type::String | Type::Bytes | Type::Timestamp,
                    LiteralKind::Str
                )
        )
    }
}

/// The kinds of literal an expression may compare a field with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiteralKind {
    Int,
    Float,
    Str,
    Bool,
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.ty {
            Type::Bool => f.write_str("bool")?,
            Type::Int32 => f.write_str("int32")?,
            Type::Int64 => f.write_str("int64")?,
            Type::Float64 => f.write_str("float64")?,
            Type::String => f.write_str("string")?,
            Type::Bytes => f.write_str("bytes")?,
            Type::Timestamp => f.write_str("timestamp")?,
            Type::List(t) => write!(f, "list<{t}>")?,
            Type::Map(t) => write!(f, "map<string, {t}>")?,
            Type::Struct(fields) => {
                f.write_str("{ ")?;
                for (i, field) in fields.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}: {}", field.name, field.ty)?;
                }
                f.write_str(" }")?;
            }
        }
        if self.optional {
            f.write_str("?")?;
        }
        Ok(())
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn fail(&self, message: String) -> ParseError {
        ParseError {
            at: self.pos,
            message,
        }
    }

    fn ws(&mut self) {
        while self.text[self.pos..].starts_with([' ', '\t']) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        self.ws();
        if self.text[self.pos..].starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char, what: &str) -> Result<(), ParseError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.fail(format!("expected `{c}` {what}")))
        }
    }

    fn word(&mut self) -> &str {
        self.ws();
        let start = self.pos;
        let len = self.text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(self.text.len() - start);
        self.pos += len;
        &self.text[start..self.pos]
    }

    fn field_type(&mut self) -> Result<FieldType, ParseError> {
        let start = self.pos;
        let word = self.word().to_owned();
        let ty = match word.as_str() {
            "bool" => Type::Bool,
            "int32" => Type::Int32,
            "int64" => Type::Int64,
            "float64" => Type::Float64,
            "string" => Type::String,
            "bytes" => Type::Bytes,
            "timestamp" => Type::Timestamp,
            "list" => {
                self.expect('<', "after `list`")?;
                let item = self.field_type()?;
                self.expect('>', "to close `list<`")?;
                Type::List(Box::new(item))
            }
            "map" => {
                self.expect('<', "after `map`")?;
                let key_at = self.pos;
                if self.word() != "string" {
                    self.pos = key_at;
                    return Err(self.fail("map keys are `string`: write `map<string, T>`".into()));
                }
                self.expect(',', "after the map's key type")?;
                let value = self.field_type()?;
                self.expect('>', "to close `map<`")?;
                Type::Map(Box::new(value))
            }
            "" => {
                self.pos = start;
                return Err(self.fail("expected a type".into()));
            }
            other => {
                let found = other.to_owned();
                self.pos = start;
                self.ws();
                return Err(self.fail(format!("unknown type `{found}`")));
            }
        };
        let optional = self.eat('?');
        Ok(FieldType { ty, optional })
    }
}

impl Schema {
    /// `{"version": N, "fields": {...}}`: each field's type text, a nested
    /// struct as an object of its fields (the admin endpoint's document).
    pub fn to_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        if let Some(v) = self.version {
            out.insert("version".into(), Value::from(v));
        }
        out.insert("fields".into(), fields_json(&self.fields));
        Value::Object(out)
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The type at `path` (`fields.a.b` is `["a", "b"]`), or where the path
    /// leaves the schema: `Err((i, known))`, the index of the first step
    /// that is not there and the names that were possible at that step.
    pub fn lookup<S: AsRef<str>>(&self, path: &[S]) -> Result<FieldType, (usize, Vec<String>)> {
        let mut fields = &self.fields;
        let mut optional = false;
        let mut found: Option<&FieldType> = None;
        for (i, step) in path.iter().enumerate() {
            let step = step.as_ref();
            if let Some(t) = found {
                match &t.ty {
                    Type::Struct(inner) => fields = inner,
                    // Any key of a map; the value type follows.
                    Type::Map(value) => {
                        optional = true;
                        found = Some(value);
                        continue;
                    }
                    _ => return Err((i, Vec::new())),
                }
            }
            match fields.iter().find(|f| f.name == step) {
                Some(f) => {
                    optional |= f.ty.optional;
                    found = Some(&f.ty);
                }
                None => return Err((i, fields.iter().map(|f| f.name.clone()).collect())),
            }
        }
        let mut t = found.cloned().ok_or((0, Vec::new()))?;
        t.optional |= optional;
        Ok(t)
    }

    /// Checks a payload against the schema; the error names the first
    /// field that does not conform.
    pub fn conforms(&self, payload: Option<&Value>) -> Result<(), String> {
        let Some(Value::Object(obj)) = payload else {
            return Err("the payload is not a JSON object".into());
        };
        struct_conforms(&self.fields, obj, &String::new)
    }
}

fn fields_json(fields: &[Field]) -> Value {
    Value::Object(
        fields
            .iter()
            .map(|f| {
                let v = match &f.ty.ty {
                    Type::Struct(inner) => fields_json(inner),
                    _ => Value::from(f.ty.to_string()),
                };
                (f.name.clone(), v)
            })
            .collect(),
    )
}

/// A value's path in the payload (`client.ip`, `tags[0]`), made only for
/// an error message: a payload that conforms costs no allocation.
type PathOf<'a> = &'a dyn Fn() -> String;

fn struct_conforms(
    fields: &[Field],
    obj: &serde_json::Map<String, Value>,
    prefix: PathOf<'_>,
) -> Result<(), String> {
    for f in fields {
        value_conforms(&f.ty, obj.get(&f.name), &|| {
            format!("{}{}", prefix(), f.name)
        })?;
    }
    Ok(())
}

fn value_conforms(t: &FieldType, v: Option<&Value>, path: PathOf<'_>) -> Result<(), String> {
    let v = match v {
        None | Some(Value::Null) if t.optional => return Ok(()),
        None => return Err(format!("`{}` is missing ({t})", path())),
        Some(Value::Null) => return Err(format!("`{}` is null ({t})", path())),
        Some(v) => v,
    };
    let ok = match (&t.ty, v) {
        (Type::Bool, Value::Bool(_)) | (Type::String | Type::Bytes, Value::String(_)) => true,
        (Type::Int32, Value::Number(n)) => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
        (Type::Int64, Value::Number(n)) => n.as_i64().is_some(),
        (Type::Float64, Value::Number(_)) => true,
        (Type::Timestamp, Value::Number(n)) => n.as_i64().is_some(),
        (Type::Timestamp, Value::String(s)) => is_rfc3339(s),
        (Type::List(item), Value::Array(items)) => {
            for (i, x) in items.iter().enumerate() {
                value_conforms(item, Some(x), &|| format!("{}[{i}]", path()))?;
            }
            true
        }
        (Type::Map(value), Value::Object(m)) => {
            for (k, x) in m {
                value_conforms(value, Some(x), &|| format!("{}[{k:?}]", path()))?;
            }
            true
        }
        (Type::Struct(fields), Value::Object(m)) => {
            return struct_conforms(fields, m, &|| format!("{}.", path()));
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!("`{}` is {}, not {t}", path(), json_kind(v)))
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a float",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`, checked for shape and ranges:
/// the text a `timestamp` field may hold.
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let num = |r: std::ops::Range<usize>| s[r].parse::<u32>().unwrap_or(99);
    if b.len() < 20
        || !digits(0..4)
        || b[4] != b'-'
        || !digits(5..7)
        || b[7] != b'-'
        || !digits(8..10)
        || !matches!(b[10], b'T' | b't' | b' ')
        || !digits(11..13)
        || b[13] != b':'
        || !digits(14..16)
        || b[16] != b':'
        || !digits(17..19)
    {
        return false;
    }
    if !(1..=12).contains(&num(5..7))
        || !(1..=31).contains(&num(8..10))
        || num(11..13) > 23
        || num(14..16) > 59
        || num(17..19) > 60
    {
        return false;
    }
    let mut i = 19;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match &b[i..] {
        [b'Z' | b'z'] => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => [h1, h2, m1, m2].iter().all(|d| d.is_ascii_digit()),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
