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
//! Both are read when the set is checked, by `dab validate` as by `dab run`
//! and every reload (SPEC section 3: whatever `run` would refuse, `validate`
//! refuses first): an unset or empty variable is an E015, a file that cannot
//! be read or is empty an E018. In CI, pass `--env MURRON_HMAC_KEY=x`, or
//! point the file at a stand-in key. The bytes travel in the plan
//! ([`Secret`]), so `run` uses exactly what was checked, `--env` included.

use dab_diag::{Code, Diagnostic, Span};
use marked_yaml::Node;

use super::scalar::{describe, is_null, text};
use super::Ctx;
use crate::model::Secret;

#[derive(Debug, Clone)]
pub struct KeyDecl {
    pub name: String,
    pub span: Span,
    pub source: KeySource,
    /// The key's bytes; `None` when they could not be read (reported).
    pub secret: Option<Secret>,
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
        let mut secret = None;
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
            secret = read(ctx, &this, name.as_str(), vspan);
            source = Some(this);
        }
        match source {
            Some(source) => out.push(KeyDecl {
                name: name.as_str().to_owned(),
                span,
                source,
                secret,
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

/// The key's bytes, or a diagnostic at `span` saying why there are none.
fn read(ctx: &mut Ctx<'_>, source: &KeySource, name: &str, span: Span) -> Option<Secret> {
    match source {
        KeySource::Env(var) => match (ctx.env)(var) {
            None => {
                ctx.error(
                    span,
                    format!("environment variable `{var}` for key `{name}` is not set"),
                )
                .help = Some(format!(
                    "set it on the host, or pass --env {var}=... to dab validate and dab run"
                ));
                None
            }
            Some(v) if v.is_empty() => {
                ctx.error(
                    span,
                    format!("environment variable `{var}` for key `{name}` is empty"),
                )
                .help = Some("an empty HMAC key proves nothing; set the real key".to_owned());
                None
            }
            Some(v) => Some(Secret::new(v.into_bytes())),
        },
        KeySource::File(path) => {
            let problem = match (ctx.files)(path) {
                Ok(mut bytes) => {
                    // Editors and `echo` end files with a newline that is
                    // not part of the key.
                    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        bytes.pop();
                    }
                    if !bytes.is_empty() {
                        return Some(Secret::new(bytes));
                    }
                    format!("key file `{path}` of key `{name}` is empty")
                }
                Err(e) => format!("cannot read key file `{path}` of key `{name}`: {e}"),
            };
            ctx.diags.push(
                Diagnostic::new(Code::E018, span, problem)
                    .with_label_here("read when the set is checked")
                    .with_help(
                        "key files are read by dab validate, dab run and every reload; \
                         make it readable by the user running dab, or use `env:`",
                    ),
            );
            None
        }
    }
}
