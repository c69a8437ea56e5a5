//! `types:` entries: a name, and optionally the schema of its payload
//! (SPEC section 7): `version` and `fields`, each field a type text
//! (`int64`, `string?`, `list<T>`, `map<string, T>`) or a mapping (a
//! nested struct). Problems are E015 at the exact place.

use dab_diag::Span;
use dab_schema::{Field, FieldType, Schema, Type, SCALARS};
use marked_yaml::types::MarkedMappingNode;
use marked_yaml::Node;

use super::scalar::{self, describe};
use super::Ctx;

/// A name declared under `types:`, with its schema when it declares one.
#[derive(Debug, Clone)]
pub struct TypeDecl {
    pub name: String,
    pub span: Span,
    pub schema: Option<Schema>,
    /// Where each field of the schema is named (`a.b` for nested), and the
    /// `version` value, for diagnostics about the schema.
    pub field_spans: Vec<(String, Span)>,
    pub version_span: Option<Span>,
}

/// Structs nest at most this deep, so a hostile file cannot recurse far.
const MAX_DEPTH: usize = 32;

pub(super) fn types(ctx: &mut Ctx<'_>, key: Span, value: &Node) -> Vec<TypeDecl> {
    let entries = match value {
        Node::Mapping(entries) => entries,
        Node::Scalar(s) if scalar::is_null(s) => return Vec::new(),
        _ => {
            let span = ctx.loc.value(key, value);
            ctx.error(
                span,
                format!(
                    "`types` must be a mapping of type names, found {}",
                    describe(value)
                ),
            )
            .help = Some("for example `types: { MyEvent: {} }`".to_owned());
            return Vec::new();
        }
    };
    let mut out = Vec::with_capacity(entries.len());
    for (name, decl) in entries.iter() {
        let span = ctx.loc.scalar(name);
        let mut field_spans = Vec::new();
        let mut version_span = None;
        let schema = match decl {
            Node::Mapping(body) => schema(
                ctx,
                name.as_str(),
                body,
                &mut field_spans,
                &mut version_span,
            ),
            Node::Scalar(s) if scalar::is_null(s) => None,
            _ => {
                let at = ctx.loc.value(span, decl);
                ctx.error(
                    at,
                    format!(
                        "type `{}` must map to a mapping, found {}",
                        name.as_str(),
                        describe(decl)
                    ),
                )
                .help = Some(format!(
                    "write `{}: {{}}`, or declare its payload: `{}: {{ version: 1, fields: {{ id: int64 }} }}`",
                    name.as_str(),
                    name.as_str()
                ));
                None
            }
        };
        // Declared even if its body is wrong, so FilterType does not also
        // report it as unknown.
        out.push(TypeDecl {
            name: name.as_str().to_owned(),
            span,
            schema,
            field_spans,
            version_span,
        });
    }
    out
}

/// `{ version: N, fields: {...} }`; `None` for `{}` (no schema).
pub(super) fn schema(
    ctx: &mut Ctx<'_>,
    ty: &str,
    body: &MarkedMappingNode,
    spans: &mut Vec<(String, Span)>,
    version_span: &mut Option<Span>,
) -> Option<Schema> {
    let mut out = Schema::default();
    let mut declared = false;
    for (key, value) in body.iter() {
        let key_span = ctx.loc.scalar(key);
        match key.as_str() {
            "version" => {
                declared = true;
                *version_span = Some(ctx.loc.value(key_span, value));
                let version = match value {
                    Node::Scalar(s) => s.as_str().parse::<u32>().ok().filter(|v| *v >= 1),
                    _ => None,
                };
                if version.is_none() {
                    let at = ctx.loc.value(key_span, value);
                    ctx.error(
                        at,
                        format!(
                            "`version` of type `{ty}` must be a whole number from 1, found {}",
                            describe(value)
                        ),
                    );
                }
                out.version = version;
            }
            "fields" => {
                declared = true;
                out.fields = match value {
                    Node::Mapping(fields) => struct_fields(ctx, fields, 0, "", spans),
                    _ => {
                        let at = ctx.loc.value(key_span, value);
                        ctx.error(
                            at,
                            format!(
                                "`fields` of type `{ty}` must be a mapping of field names to types, found {}",
                                describe(value)
                            ),
                        )
                        .help = Some("for example `fields: { id: int64, name: string? }`".into());
                        Vec::new()
                    }
                };
            }
            other => {
                ctx.error(key_span, format!("unknown key `{other}` in type `{ty}`"))
                    .help = Some("a type declares `version` and `fields`".into());
            }
        }
    }
    declared.then_some(out)
}

fn struct_fields(
    ctx: &mut Ctx<'_>,
    fields: &MarkedMappingNode,
    depth: usize,
    prefix: &str,
    spans: &mut Vec<(String, Span)>,
) -> Vec<Field> {
    let mut out = Vec::with_capacity(fields.len());
    for (name, value) in fields.iter() {
        let name_span = ctx.loc.scalar(name);
        let path = format!("{prefix}{}", name.as_str());
        spans.push((path.clone(), name_span));
        let ty = match value {
            Node::Scalar(s) if !scalar::is_null(s) => {
                match FieldType::parse(s.as_str()) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        // Point into the text when it stands verbatim.
                        let at = match ctx.loc.verbatim(s) {
                            Some(start) => {
                                let span = ctx.loc.scalar(s);
                                let word = s.as_str()[e.at..]
                                    .chars()
                                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                                    .count()
                                    .max(1);
                                let from = start + e.at;
                                Span::new(span.file, from, (from + word).min(span.end as usize))
                            }
                            None => ctx.loc.scalar(s),
                        };
                        ctx.error(at, format!("field `{}`: {}", name.as_str(), e.message))
                            .help = Some(format!(
                            "types are {}, list<T>, map<string, T>, or a mapping for a struct; `?` makes a field optional",
                            SCALARS.join(", ")
                        ));
                        None
                    }
                }
            }
            Node::Mapping(inner) if depth < MAX_DEPTH => Some(FieldType {
                ty: Type::Struct(struct_fields(
                    ctx,
                    inner,
                    depth + 1,
                    &format!("{path}."),
                    spans,
                )),
                optional: false,
            }),
            _ => {
                let at = match value {
                    Node::Scalar(_) => name_span,
                    _ => ctx.loc.value(name_span, value),
                };
                let message = if matches!(value, Node::Mapping(_)) {
                    format!(
                        "field `{}`: structs nest at most {MAX_DEPTH} deep",
                        name.as_str()
                    )
                } else {
                    format!(
                        "field `{}` needs a type, found {}",
                        name.as_str(),
                        describe(value)
                    )
                };
                ctx.error(at, message);
                None
            }
        };
        if let Some(ty) = ty {
            out.push(Field {
                name: name.as_str().to_owned(),
                ty,
            });
        }
    }
    out
}
