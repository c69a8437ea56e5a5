//! The bindings file (`dab.yaml`, SPEC section 2): what the names of a
//! blueprint set stand for on this host, checked against the catalog of
//! connector kinds in `dab_api::schema`, every problem an E015 or E017.

mod check;
mod coerce;
mod interpolate;
mod kafka_options;
mod kafka_rules;
mod kafka_table;
mod keys;
mod listen;
mod runnable;
mod scalar;
mod types;
mod yaml;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use dab_diag::{Code, Diagnostic, FileId, SourceMap, Span};
use marked_yaml::Node;

pub use dab_api::schema::Section;

use scalar::describe;
use yaml::{DuplicateKey, Locator};

/// Looks up environment variables; the CLI passes process env + --env-file + --env.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Reads a file the bindings name (a key file, a TLS certificate, key or
/// CA), as written in the file. The CLI passes `std::fs::read`: the check
/// reads what `run` will, yet nothing below the CLI does I/O itself.
pub type FileLookup<'a> = &'a dyn Fn(&str) -> std::io::Result<Vec<u8>>;

/// A field's value after interpolation and typing; span-free so that two
/// loads of the same configuration compare equal (reload diffs).
pub use dab_api::config::ConfigValue;
pub use kafka_options::accepted_samples as kafka_option_samples;
pub use keys::{KeyDecl, KeySource};
pub use types::TypeDecl;

/// One bound name.
#[derive(Debug, Clone)]
pub struct Binding {
    pub name: String,
    pub section: Section,
    pub name_span: Span,
    /// Empty when the binding has no usable `kind`; an unknown kind is kept
    /// as written.
    pub kind: String,
    /// The `kind` value, or the name when there is none.
    pub kind_span: Span,
    /// Span-free, after interpolation and type coercion; excludes `kind`.
    /// Durations are integers of milliseconds. A field with a bad value is
    /// left out (and reported).
    pub fields: BTreeMap<String, ConfigValue>,
    /// Value spans, for later diagnostics.
    pub field_spans: BTreeMap<String, Span>,
}

impl Binding {
    /// Span-free comparable config, for reload diffs.
    pub fn config(&self) -> (&str, &BTreeMap<String, ConfigValue>) {
        (&self.kind, &self.fields)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Bindings {
    pub file: Option<FileId>,
    pub sources: Vec<Binding>,
    pub sinks: Vec<Binding>,
    pub queues: Vec<Binding>,
    /// `tables:`, for `Enrich(Table, ...)`; not names `In` or `Out` take.
    pub tables: Vec<Binding>,
    /// `None` when the file has no `types:` key: then any type name goes.
    pub types: Option<Vec<TypeDecl>>,
    /// Signing keys by name (`keys:`), for `VerifySignature(key = Name)`.
    pub keys: Vec<KeyDecl>,
    /// The file could not be read as YAML at all, so no name in it is
    /// known; the planner then stays quiet about unknown names instead of
    /// burying the one real error under E010s.
    pub unreadable: bool,
}

impl Bindings {
    /// The binding of a name, in any section.
    pub fn get(&self, name: &str) -> Option<&Binding> {
        self.all().find(|b| b.name == name)
    }

    /// Sources, then sinks, then queues, each in file order: the names
    /// `In`, `Out` and the other stream arguments take (not tables).
    pub fn all(&self) -> impl Iterator<Item = &Binding> {
        self.sources.iter().chain(&self.sinks).chain(&self.queues)
    }

    /// Every binding with a kind, tables included.
    pub fn all_with_tables(&self) -> impl Iterator<Item = &Binding> {
        self.all().chain(&self.tables)
    }

    /// The table bound under `name`.
    pub fn table(&self, name: &str) -> Option<&Binding> {
        self.tables.iter().find(|b| b.name == name)
    }

    fn section_mut(&mut self, section: Section) -> &mut Vec<Binding> {
        match section {
            Section::Sources => &mut self.sources,
            Section::Sinks => &mut self.sinks,
            Section::Queues => &mut self.queues,
            Section::Tables => &mut self.tables,
        }
    }
}

/// What the loader carries while walking one file (private to this module
/// and its submodules).
struct Ctx<'a> {
    loc: Locator<'a>,
    env: EnvLookup<'a>,
    files: FileLookup<'a>,
    diags: Vec<Diagnostic>,
}

impl Ctx<'_> {
    /// Records an E015 and returns it for a help line.
    fn error(&mut self, span: Span, message: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::new(Code::E015, span, message));
        let last = self.diags.len() - 1;
        &mut self.diags[last]
    }
}

/// Adds a schema registry file to `map` and reads it: the body of a
/// `types:` entry (`version` and `fields`) for type `ty`. `None` when it
/// declares no schema or cannot be read; problems are E015.
pub fn load_type_file(
    map: &mut SourceMap,
    name: &str,
    text: String,
    ty: &str,
) -> (Option<TypeDecl>, Vec<Diagnostic>) {
    let file = map.add(name, text);
    let Some(src) = map.get(file) else {
        return (None, Vec::new());
    };
    let no_env = |_: &str| None;
    let no_files = |_: &str| Err(std::io::Error::other("not read here"));
    let mut ctx = Ctx {
        loc: Locator::new(file, src),
        env: &no_env,
        files: &no_files,
        diags: Vec::new(),
    };
    let Some(parsed) = yaml::parse(&ctx.loc, &mut ctx.diags) else {
        return (None, ctx.diags);
    };
    let Node::Mapping(body) = &parsed.root else {
        let span = Span::new(file, 0, 0);
        ctx.error(
            span,
            format!("a registry file of type `{ty}` must be a mapping with `version` and `fields`"),
        );
        return (None, ctx.diags);
    };
    let mut field_spans = Vec::new();
    let mut version_span = None;
    let schema = types::schema(&mut ctx, ty, body, &mut field_spans, &mut version_span);
    let decl = TypeDecl {
        name: ty.to_owned(),
        span: Span::new(file, 0, 0),
        schema,
        field_spans,
        version_span,
    };
    (Some(decl), ctx.diags)
}

const TOP_LEVEL: [&str; 6] = ["sources", "sinks", "queues", "tables", "types", "keys"];

/// Adds the file to `map` (so diagnostics can point into it) and loads it. Never panics on any input.
pub fn load_bindings(
    map: &mut SourceMap,
    name: &str,
    text: String,
    env: EnvLookup<'_>,
    files: FileLookup<'_>,
) -> (Bindings, Vec<Diagnostic>) {
    let file = map.add(name, text);
    let mut out = Bindings {
        file: Some(file),
        ..Bindings::default()
    };
    let Some(src) = map.get(file) else {
        return (out, Vec::new());
    };
    let mut ctx = Ctx {
        loc: Locator::new(file, src),
        env,
        files,
        diags: Vec::new(),
    };
    let Some(parsed) = yaml::parse(&ctx.loc, &mut ctx.diags) else {
        out.unreadable = true;
        return (out, ctx.diags);
    };
    if let Node::Mapping(top) = &parsed.root {
        for (key, value) in top.iter() {
            let key_span = ctx.loc.scalar(key);
            match key.as_str() {
                "types" => out.types = Some(types::types(&mut ctx, key_span, value)),
                "keys" => out.keys = keys::keys(&mut ctx, key_span, value),
                k => {
                    match Section::from_key(k) {
                        Some(section) => {
                            let bound = section_bindings(&mut ctx, section, key_span, value);
                            out.section_mut(section).extend(bound);
                        }
                        None => {
                            let d = Diagnostic::new(
                            Code::E015,
                            key_span,
                            format!("unknown top-level key `{k}`"),
                        )
                        .with_help("the top-level keys are sources, sinks, queues, tables, types and keys")
                        .with_suggestion(k, TOP_LEVEL);
                            ctx.diags.push(d);
                        }
                    }
                }
            }
        }
    }
    duplicate_keys(&mut ctx, &out, &parsed.duplicates);
    bound_twice(&mut ctx, &out);
    listen::check(&out.sources, &mut ctx.diags);
    typed_sinks(&mut ctx, &out);
    let mut diags = ctx.diags;
    dab_diag::sort(&mut diags);
    (out, diags)
}

/// The payload schema of the type a binding's `type` field names, when
/// that type is declared with `fields`.
pub fn type_schema<'a>(bindings: &'a Bindings, b: &Binding) -> Option<&'a dab_schema::Schema> {
    let Some(ConfigValue::Str(name)) = b.fields.get("type") else {
        return None;
    };
    bindings
        .types
        .iter()
        .flatten()
        .find(|t| &t.name == name)
        .and_then(|t| t.schema.as_ref())
}

/// What a table binding stands for, when its fields are usable: for
/// `kind: file` a path, a key column and a format (its `format`, else the
/// path's extension); for a feed (`kind: kafka`) its fields. `None` when
/// one is missing, the kind is unknown or the format cannot be told
/// (reported by the check).
pub fn table_spec(b: &Binding) -> Option<crate::model::TableSpec> {
    let text = |k: &str| match b.fields.get(k) {
        Some(ConfigValue::Str(s)) => Some(s.clone()),
        _ => None,
    };
    if b.section != Section::Tables || b.kind.is_empty() {
        return None;
    }
    let source = if b.kind == "file" {
        let path = text("path")?;
        let key = text("key")?;
        let format = match text("format") {
            Some(f) => crate::table::TableFormat::from_name(&f)?,
            None => crate::table::TableFormat::from_path(&path)?,
        };
        crate::model::TableSource::File { path, key, format }
    } else {
        dab_api::schema::find_kind(Section::Tables, &b.kind)?;
        crate::model::TableSource::Feed {
            kind: b.kind.clone(),
            fields: b.fields.clone(),
        }
    };
    Some(crate::model::TableSpec {
        name: b.name.clone(),
        source,
    })
}

/// E015: a sink whose columns come from a type's schema (`parquet`) names
/// a type that is not declared with `fields`.
fn typed_sinks(ctx: &mut Ctx<'_>, out: &Bindings) {
    use crate::HelpOr;
    for b in &out.sinks {
        if !dab_api::schema::SCHEMA_TYPED_SINKS.contains(&b.kind.as_str()) {
            continue;
        }
        let Some(ConfigValue::Str(name)) = b.fields.get("type") else {
            continue;
        };
        if type_schema(out, b).is_some() {
            continue;
        }
        let Some(span) = b.field_spans.get("type").copied() else {
            continue;
        };
        let declared: Vec<&str> = out
            .types
            .iter()
            .flatten()
            .filter(|t| t.schema.is_some())
            .map(|t| t.name.as_str())
            .collect();
        let d = Diagnostic::new(
            Code::E015,
            span,
            format!("type `{name}` is not declared with a schema"),
        )
        .with_label_here(
            "a `{}` sink takes its columns from the type's `fields`".replace("{}", &b.kind),
        )
        .with_suggestion(name, declared.iter().copied())
        .with_help_or(format!(
            "declare it under `types:`: `{name}: {{ version: 1, fields: {{ ... }} }}`"
        ));
        ctx.diags.push(d);
    }
}

fn section_bindings(ctx: &mut Ctx<'_>, section: Section, key: Span, value: &Node) -> Vec<Binding> {
    match value {
        Node::Mapping(entries) => entries
            .iter()
            .map(|(name, v)| check::binding(ctx, section, name, v))
            .collect(),
        Node::Scalar(s) if scalar::is_null(s) => Vec::new(),
        _ => {
            let span = ctx.loc.value(key, value);
            ctx.error(
                span,
                format!(
                    "`{section}` must be a mapping of names to bindings, found {}",
                    describe(value)
                ),
            )
            .help = Some(format!(
                "for example `{section}: {{ Name: {{ kind: ... }} }}`"
            ));
            Vec::new()
        }
    }
}

/// Keys given twice in one mapping. YAML keeps the last value, which would
/// silently drop a binding or a field.
fn duplicate_keys(ctx: &mut Ctx<'_>, out: &Bindings, duplicates: &[DuplicateKey]) {
    for dup in duplicates {
        let binding = out.all_with_tables().find(|b| b.name_span == dup.first);
        let message = match binding {
            Some(b) => format!("name `{}` is bound twice in `{}`", dup.key, b.section),
            None => format!("key `{}` appears twice in one mapping", dup.key),
        };
        ctx.diags.push(
            Diagnostic::new(Code::E015, dup.second, message)
                .with_label(dup.first, "first here")
                .with_help("YAML keeps only the last one; remove or rename one of them"),
        );
    }
}

/// A name bound in two sections.
fn bound_twice(ctx: &mut Ctx<'_>, out: &Bindings) {
    let mut all: Vec<&Binding> = out.all_with_tables().collect();
    all.sort_by_key(|b| b.name_span);
    let mut first: HashMap<&str, &Binding> = HashMap::new();
    for b in all {
        match first.get(b.name.as_str()) {
            Some(earlier) if earlier.section != b.section => {
                ctx.diags.push(
                    Diagnostic::new(
                        Code::E015,
                        b.name_span,
                        format!(
                            "name `{}` is bound as a {} and as a {}",
                            b.name,
                            earlier.section.singular(),
                            b.section.singular()
                        ),
                    )
                    .with_label(
                        earlier.name_span,
                        format!("bound as a {} here", earlier.section.singular()),
                    )
                    .with_help("a name stands for one thing; rename one of them"),
                );
            }
            Some(_) => {}
            None => {
                first.insert(&b.name, b);
            }
        }
    }
}
