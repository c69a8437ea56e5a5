//! `keys:`: signing keys by name, for `VerifySignature(key = Name)`. A key's
//! value never appears in a blueprint or in the bindings file: it is read
//! from an environment variable or a file on the host.
//!
//! ```yaml
//! keys:
//!   Murron: { env: MURRON_HMAC_KEY }      # the variable's bytes
//!   Legacy: { file: /etc/dab/legacy.key } # the file's bytes, trailing newline dropped
//! ```
//!
//! The variable must be set when the set is checked, like any `${VAR}`
//! (pass `--env MURRON_HMAC_KEY=x` to `dab validate` in CI); a file is only
//! read when the set runs, since CI machines seldom hold production secrets.

use dab_diag::Span;
use marked_yaml::Node;

use super::scalar::{describe, is_null, text};
use super::Ctx;

#[derive(Debug, Clone)]
pub struct KeyDecl {
    pub name: String,
    pub span: Span,
    pub source: KeySource,
}

/// Where a key's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Env(String),
    File(String),
}

pub(super) fn keys(ctx: &mut Ctx<'_>, key: Span, value: &Node) -> Vec<KeyDecl> {
    let entries = match value {
        Node::Mapping(entries) => entries,
        Node::Scalar(s) if is_null(s) => return Vec::new(),
        _ => {
            let span = ctx.loc.value(key, value);
            ctx.error(
                span,
                format!(
                    "`keys` must be a mapping of key names, found {}",
                    describe(value)
                ),
            )
            .help = Some("for example `keys: { Murron: { env: MURRON_HMAC_KEY } }`".to_owned());
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (name, decl) in entries.iter() {
        let span = ctx.loc.scalar(name);
        let help = format!(
            "write `{}: {{ env: VARIABLE }}` or `{}: {{ file: /path/to/key }}`",
            name.as_str(),
            name.as_str()
        );
        let Node::Mapping(fields) = decl else {
            let at = ctx.loc.value(span, decl);
            ctx.error(
                at,
                format!(
                    "key `{}` must be a mapping, found {}",
                    name.as_str(),
                    describe(decl)
                ),
            )
            .help = Some(help);
            continue;
        };
        let mut source = None;
        for (field, v) in fields.iter() {
            let fspan = ctx.loc.scalar(field);
            let vspan = ctx.loc.value(fspan, v);
            let value = match text(ctx, v, vspan) {
                Ok(Some(t)) => t,
                Ok(None) => continue,
                Err(found) => {
                    ctx.error(
                        vspan,
                        format!("`{}` must be a string, found {found}", field.as_str()),
                    );
                    continue;
                }
            };
            let this = match field.as_str() {
                "env" => KeySource::Env(value),
                "file" => KeySource::File(value),
                other => {
                    ctx.error(
                        fspan,
                        format!("unknown field `{other}` for key `{}`", name.as_str()),
                    )
                    .help = Some(help.clone());
                    continue;
                }
            };
            if source.is_some() {
                ctx.error(
                    fspan,
                    format!("key `{}` has both `env` and `file`", name.as_str()),
                )
                .help = Some("a key comes from one place".to_owned());
                continue;
            }
            if let KeySource::Env(var) = &this {
                if (ctx.env)(var).is_none() {
                    ctx.error(
                        vspan,
                        format!(
                            "environment variable `{var}` for key `{}` is not set",
                            name.as_str()
                        ),
                    )
                    .help = Some(format!(
                        "set it on the host, or pass --env {var}=... to dab validate"
                    ));
                }
            }
            source = Some(this);
        }
        match source {
            Some(source) => out.push(KeyDecl {
                name: name.as_str().to_owned(),
                span,
                source,
            }),
            None => {
                ctx.error(
                    span,
                    format!("key `{}` says neither `env` nor `file`", name.as_str()),
                )
                .help = Some(help);
            }
        }
    }
    out
}
