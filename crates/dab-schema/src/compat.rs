//! Full transitive compatibility between versions of a schema (SPEC
//! section 7): a new version must be readable by readers of every earlier
//! version and the other way round. Optional fields may be added or
//! removed; a required field may not be added or removed, nor turn
//! optional or required; a field's type may not change except by widening
//! (`int32` to `int64`, also inside lists, maps and structs); a name is
//! never reused with another type.

use crate::{Field, FieldType, Schema, Type};

/// One way a newer version breaks an older one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incompatibility {
    /// A required field that `older` does not have.
    RequiredAdded { path: String },
    /// A required field of `older` that the newer version drops.
    RequiredRemoved { path: String },
    /// The type changed other than by widening.
    TypeChanged {
        path: String,
        was: String,
        now: String,
    },
    /// A name that an earlier version used with another type, removed in
    /// between and declared again.
    NameReused {
        path: String,
        was: String,
        now: String,
    },
    /// Optional became required or required became optional.
    OptionalityChanged { path: String, now_optional: bool },
}

impl Incompatibility {
    /// The field the problem is about, as `a.b`.
    pub fn path(&self) -> &str {
        match self {
            Incompatibility::RequiredAdded { path }
            | Incompatibility::RequiredRemoved { path }
            | Incompatibility::TypeChanged { path, .. }
            | Incompatibility::NameReused { path, .. }
            | Incompatibility::OptionalityChanged { path, .. } => path,
        }
    }
}

/// What `newer` breaks of `older`. `reused` says whether a field absent
/// from the version right before `newer` but present in `older` counts as
/// a name reused (true) or a type change (false) when its type differs.
pub fn incompatibilities(older: &Schema, newer: &Schema, reused: bool) -> Vec<Incompatibility> {
    let mut out = Vec::new();
    fields(&older.fields, &newer.fields, "", reused, &mut out);
    out
}

fn fields(
    old: &[Field],
    new: &[Field],
    prefix: &str,
    reused: bool,
    out: &mut Vec<Incompatibility>,
) {
    for n in new {
        let path = format!("{prefix}{}", n.name);
        match old.iter().find(|o| o.name == n.name) {
            None if !n.ty.optional => out.push(Incompatibility::RequiredAdded { path }),
            None => {}
            Some(o) => field(&o.ty, &n.ty, &path, reused, out),
        }
    }
    for o in old {
        if !o.ty.optional && !new.iter().any(|n| n.name == o.name) {
            out.push(Incompatibility::RequiredRemoved {
                path: format!("{prefix}{}", o.name),
            });
        }
    }
}

fn field(
    old: &FieldType,
    new: &FieldType,
    path: &str,
    reused: bool,
    out: &mut Vec<Incompatibility>,
) {
    if old.optional != new.optional {
        out.push(Incompatibility::OptionalityChanged {
            path: path.to_owned(),
            now_optional: new.optional,
        });
    }
    match (&old.ty, &new.ty) {
        (Type::Struct(o), Type::Struct(n)) => fields(o, n, &format!("{path}."), reused, out),
        (Type::List(o), Type::List(n)) | (Type::Map(o), Type::Map(n)) => {
            if !same_or_wider(o, n) {
                changed(old, new, path, reused, out);
            }
        }
        _ if same_or_wider(old, new) => {}
        _ => changed(old, new, path, reused, out),
    }
}

fn changed(
    old: &FieldType,
    new: &FieldType,
    path: &str,
    reused: bool,
    out: &mut Vec<Incompatibility>,
) {
    let (was, now) = (bare(old), bare(new));
    out.push(if reused {
        Incompatibility::NameReused {
            path: path.to_owned(),
            was,
            now,
        }
    } else {
        Incompatibility::TypeChanged {
            path: path.to_owned(),
            was,
            now,
        }
    });
}

/// The type without its `?`, for messages.
fn bare(t: &FieldType) -> String {
    FieldType {
        ty: t.ty.clone(),
        optional: false,
    }
    .to_string()
}

/// Whether values of `old` read as `new`, ignoring optionality at the top.
fn same_or_wider(old: &FieldType, new: &FieldType) -> bool {
    match (&old.ty, &new.ty) {
        (Type::Int32, Type::Int64) => true,
        (Type::List(o), Type::List(n)) | (Type::Map(o), Type::Map(n)) => {
            o.optional == n.optional && same_or_wider(o, n)
        }
        (Type::Struct(o), Type::Struct(n)) => {
            let mut probe = Vec::new();
            fields(o, n, "", false, &mut probe);
            probe.is_empty()
        }
        (a, b) => a == b,
    }
}

/// Checks `versions` (oldest first) each against every earlier one, and
/// returns, per version index, what it breaks. A field absent from the
/// version just before but present, with another type, in an older one is
/// a name reused.
pub fn check_history(versions: &[&Schema]) -> Vec<(usize, Incompatibility)> {
    let mut out = Vec::new();
    for (i, newer) in versions.iter().enumerate().skip(1) {
        let mut seen: Vec<Incompatibility> = Vec::new();
        for (j, older) in versions[..i].iter().enumerate().rev() {
            let previous = j + 1 == i;
            for inc in incompatibilities(older, newer, !previous) {
                // Report each field once, against the nearest version.
                if !seen.iter().any(|s| s.path() == inc.path()) {
                    seen.push(inc);
                }
            }
        }
        out.extend(seen.into_iter().map(|inc| (i, inc)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &[(&str, &str)]) -> Schema {
        Schema {
            version: None,
            fields: fields
                .iter()
                .map(|(n, t)| Field {
                    name: (*n).into(),
                    ty: FieldType::parse(t).expect("type"),
                })
                .collect(),
        }
    }

    #[test]
    fn optional_fields_come_and_go_and_int32_widens() {
        let v1 = schema(&[("id", "int32"), ("n", "string?"), ("l", "list<int32>")]);
        let v2 = schema(&[("id", "int64"), ("extra", "bool?"), ("l", "list<int64>")]);
        assert_eq!(incompatibilities(&v1, &v2, false), vec![]);
    }

    #[test]
    fn every_breaking_change_is_named() {
        let v1 = schema(&[("id", "int64"), ("name", "string"), ("opt", "string?")]);
        let v2 = schema(&[("id", "string"), ("opt", "string"), ("new", "bool")]);
        assert_eq!(
            incompatibilities(&v1, &v2, false),
            vec![
                Incompatibility::TypeChanged {
                    path: "id".into(),
                    was: "int64".into(),
                    now: "string".into()
                },
                Incompatibility::OptionalityChanged {
                    path: "opt".into(),
                    now_optional: false
                },
                Incompatibility::RequiredAdded { path: "new".into() },
                Incompatibility::RequiredRemoved {
                    path: "name".into()
                },
            ]
        );
        // Narrowing is a change too.
        let wide = schema(&[("id", "int64")]);
        let narrow = schema(&[("id", "int32")]);
        assert_eq!(incompatibilities(&wide, &narrow, false).len(), 1);
    }

    #[test]
    fn nested_fields_are_checked_by_path() {
        let mut v1 = schema(&[]);
        v1.fields.push(Field {
            name: "client".into(),
            ty: FieldType {
                ty: Type::Struct(schema(&[("name", "string")]).fields),
                optional: false,
            },
        });
        let mut v2 = v1.clone();
        if let Type::Struct(inner) = &mut v2.fields[0].ty.ty {
            inner.push(Field {
                name: "version".into(),
                ty: FieldType::parse("string").expect("type"),
            });
        }
        assert_eq!(
            incompatibilities(&v1, &v2, false),
            vec![Incompatibility::RequiredAdded {
                path: "client.version".into()
            }]
        );
    }

    #[test]
    fn history_is_transitive_and_finds_a_reused_name() {
        let v1 = schema(&[("id", "int64"), ("tag", "string?")]);
        let v2 = schema(&[("id", "int64")]);
        let v3 = schema(&[("id", "int64"), ("tag", "int64?")]);
        // v3 against v2 alone is fine; against v1 it reuses `tag`.
        assert_eq!(incompatibilities(&v2, &v3, false), vec![]);
        assert_eq!(
            check_history(&[&v1, &v2, &v3]),
            vec![(
                2,
                Incompatibility::NameReused {
                    path: "tag".into(),
                    was: "string".into(),
                    now: "int64".into()
                }
            )]
        );
    }
}
