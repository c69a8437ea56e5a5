//! The schema registry (SPEC section 7, "schema as a service"): every
//! version of every type, one file each, `schemas/<Type>/v<N>.yaml` beside
//! the bindings file, each the body of a `types:` entry (`version: N` and
//! `fields`). Checked full-transitively: each version against every
//! earlier one, and each type the bindings declare against the registered
//! versions (E020-E025). The caller reads the files; nothing here does I/O.

use std::collections::BTreeMap;

use dab_diag::{Code, Diagnostic, Span};
use dab_schema::compat::{check_history, Incompatibility};
use dab_schema::Schema;

use crate::bindings::{load_type_file, TypeDecl};
use crate::CheckedSet;

/// Adds the registry's files to `set` and its findings to
/// `set.diagnostics`. `files` are (path as shown, text).
pub fn check_registry(set: &mut CheckedSet, files: Vec<(String, String)>) {
    let mut diags = Vec::new();
    // type -> version -> its declaration in the registry
    let mut registry: BTreeMap<String, BTreeMap<u32, TypeDecl>> = BTreeMap::new();
    for (path, text) in files {
        let Some((ty, version)) = name_of(&path) else {
            let file = set.map.add(&path, text);
            diags.push(
                Diagnostic::new(
                    Code::E025,
                    Span::new(file, 0, 0),
                    format!("`{path}` is not named like a registry file"),
                )
                .with_help("registry files are schemas/<Type>/v<N>.yaml, N from 1"),
            );
            continue;
        };
        let (decl, d) = load_type_file(&mut set.map, &path, text, &ty);
        diags.extend(d);
        let Some(decl) = decl else { continue };
        let Some(schema) = &decl.schema else { continue };
        if schema.version != Some(version) {
            diags.push(
                Diagnostic::new(
                    Code::E025,
                    decl.version_span.unwrap_or(decl.span),
                    format!(
                        "`{path}` holds version {} of `{ty}`, not {version}",
                        schema
                            .version
                            .map_or_else(|| "none".to_owned(), |v| v.to_string())
                    ),
                )
                .with_help(format!("write `version: {version}` in it")),
            );
            continue;
        }
        registry.entry(ty).or_default().insert(version, decl);
    }

    // The registry's own history.
    for versions in registry.values() {
        let decls: Vec<&TypeDecl> = versions.values().collect();
        let schemas: Vec<&Schema> = decls.iter().filter_map(|d| d.schema.as_ref()).collect();
        for (i, inc) in check_history(&schemas) {
            diags.push(report(decls[i], &inc, None));
        }
    }

    // The bindings' types against the registry.
    for decl in set.bindings.types.iter().flatten() {
        let (Some(schema), Some(versions)) = (&decl.schema, registry.get(&decl.name)) else {
            continue;
        };
        let latest = versions.keys().next_back().copied().unwrap_or(0);
        let at = decl.version_span.unwrap_or(decl.span);
        match schema.version {
            None => diags.push(
                Diagnostic::new(
                    Code::E025,
                    decl.span,
                    format!(
                        "type `{}` has registered versions (the latest is {latest}) but declares none",
                        decl.name
                    ),
                )
                .with_help(format!("write `version: {latest}`, or a newer one for a change")),
            ),
            Some(v) => match versions.get(&v) {
                Some(registered) if registered.schema.as_ref().map(|s| &s.fields) == Some(&schema.fields) => {}
                Some(_) => diags.push(
                    Diagnostic::new(
                        Code::E025,
                        at,
                        format!(
                            "type `{}` version {v} is not the registered version {v}",
                            decl.name
                        ),
                    )
                    .with_label_here("its fields differ from the registry's file")
                    .with_help(format!(
                        "a change needs a new version: `version: {}`, and its file schemas/{}/v{}.yaml",
                        latest + 1,
                        decl.name,
                        latest + 1
                    )),
                ),
                None if v < latest => diags.push(
                    Diagnostic::new(
                        Code::E025,
                        at,
                        format!(
                            "type `{}` version {v} is not registered, and older than the latest, {latest}",
                            decl.name
                        ),
                    ),
                ),
                None => {
                    let mut chain: Vec<&Schema> =
                        versions.values().filter_map(|d| d.schema.as_ref()).collect();
                    chain.push(schema);
                    let last = chain.len() - 1;
                    for (i, inc) in check_history(&chain) {
                        if i == last {
                            diags.push(report(decl, &inc, Some(latest)));
                        }
                    }
                }
            },
        }
    }
    set.diagnostics.extend(diags);
    dab_diag::sort(&mut set.diagnostics);
}

/// `.../schemas/ApiCall/v3.yaml` -> ("ApiCall", 3).
fn name_of(path: &str) -> Option<(String, u32)> {
    let p = std::path::Path::new(path);
    let stem = p.file_name()?.to_str()?.strip_suffix(".yaml")?;
    let version: u32 = stem.strip_prefix('v')?.parse().ok().filter(|v| *v >= 1)?;
    let ty = p.parent()?.file_name()?.to_str()?.to_owned();
    Some((ty, version))
}

fn report(decl: &TypeDecl, inc: &Incompatibility, against: Option<u32>) -> Diagnostic {
    let path = inc.path();
    let field_span = decl
        .field_spans
        .iter()
        .find(|(p, _)| p == path)
        .map(|(_, s)| *s);
    let at = field_span.or(decl.version_span).unwrap_or(decl.span);
    let version = decl
        .schema
        .as_ref()
        .and_then(|s| s.version)
        .map_or_else(|| "?".to_owned(), |v| v.to_string());
    let ty = &decl.name;
    let earlier = match against {
        Some(v) => format!("the registered versions (up to {v})"),
        None => "an earlier version".to_owned(),
    };
    let (code, message, help) = match inc {
        Incompatibility::RequiredAdded { path } => (
            Code::E020,
            format!("version {version} of `{ty}` adds the required field `{path}`"),
            format!("readers of {earlier} cannot fill it: make it optional, `{path}: T?`"),
        ),
        Incompatibility::RequiredRemoved { path } => (
            Code::E021,
            format!("version {version} of `{ty}` removes the required field `{path}`"),
            format!("readers of {earlier} need it: keep it (only optional fields may be removed)"),
        ),
        Incompatibility::TypeChanged { path, was, now } => (
            Code::E022,
            format!("version {version} of `{ty}` changes `{path}` from {was} to {now}"),
            "only int32 may widen to int64; add a field with a new name instead".to_owned(),
        ),
        Incompatibility::NameReused { path, was, now } => (
            Code::E023,
            format!("version {version} of `{ty}` reuses the name `{path}`, {was} in an earlier version, as {now}"),
            "old files hold the old type under that name: pick a new name".to_owned(),
        ),
        Incompatibility::OptionalityChanged { path, now_optional } => (
            Code::E024,
            if *now_optional {
                format!("version {version} of `{ty}` makes the required field `{path}` optional")
            } else {
                format!("version {version} of `{ty}` makes the optional field `{path}` required")
            },
            format!("readers of {earlier} disagree on whether `{path}` may be null"),
        ),
    };
    Diagnostic::new(code, at, message)
        .with_label_here("incompatible")
        .with_help(help)
}
