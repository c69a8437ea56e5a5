//! What a connector's build (or its start) would refuse about a binding
//! whose fields each have the right type, checked here so that `dab
//! validate` refuses it first (SPEC section 3): fields that only make sense
//! together, endpoints the sinks can speak to, librdkafka's `options:`, and
//! the files a binding names (TLS certificates, keys and CAs, read and
//! parsed).
//!
//! `tests/validate_run.rs` walks every kind's fields and builds every
//! binding this module lets through.

use std::collections::BTreeMap;

use dab_api::schema::{FieldType, KindSpec, Section, GENERATOR_MAX_KEYS};
use dab_diag::{Code, Diagnostic, Span};
use marked_yaml::types::MarkedMappingNode;
use marked_yaml::Node;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::kafka_rules::{self, Clients};
use super::{kafka_options, Binding, ConfigValue, Ctx};

/// Runs the checks that apply to `b`, a binding of `spec`.
pub(super) fn check(ctx: &mut Ctx<'_>, spec: &KindSpec, b: &Binding, entries: &MarkedMappingNode) {
    for field in spec.fields {
        if field.ty == FieldType::Url {
            if let (Some(ConfigValue::Str(url)), Some(span)) =
                (b.fields.get(field.name), b.field_spans.get(field.name))
            {
                http_endpoint(ctx, b, field.name, url, *span);
            }
        }
    }
    match (spec.section, spec.kind) {
        (Section::Sinks, "file") => template_field(ctx, b, entries, "path"),
        (Section::Sinks, "kafka") => {
            template_field(ctx, b, entries, "topic");
            kafka_options_of(ctx, Section::Sinks, b, entries);
        }
        (Section::Queues, "kafka") => {
            queue_topic(ctx, b);
            kafka_options_of(ctx, Section::Queues, b, entries);
        }
        (Section::Sources, "murron_grpc") => tls(ctx, b),
        (Section::Sources, "generator") => generator_keys(ctx, b),
        (Section::Sources, "unix") => socket_path(ctx, b),
        (section, "kafka") => kafka_options_of(ctx, section, b, entries),
        (Section::Sinks, "parquet") => parquet_storage(ctx, b, entries),
        (Section::Queues, "disk") => disk_directory(ctx, b),
        (Section::Tables, "file") => table_file(ctx, b),
        _ => {}
    }
}

/// A sink field that may be a template (SPEC section 10: a file sink's
/// `path`, a Kafka sink's `topic`): an unknown placeholder, an unclosed or
/// unmatched brace and an empty name are E015 at their place in the value
/// (at the whole value when it is not in the file verbatim, as after
/// `${VAR}` interpolation). A templated topic's fixed text must be what
/// Kafka takes in a topic name. `{fields.x}` paths are checked against
/// the schemas of the types that reach the sink by `payload.rs`.
fn template_field(ctx: &mut Ctx<'_>, b: &Binding, entries: &MarkedMappingNode, field: &str) {
    use dab_api::template::Template;
    let Some((ConfigValue::Str(text), span)) = b.fields.get(field).zip(b.field_spans.get(field))
    else {
        return;
    };
    let node = entries
        .iter()
        .find(|(k, _)| k.as_str() == field)
        .and_then(|(_, v)| v.as_scalar());
    let start = node
        .filter(|n| n.as_str() == text)
        .and_then(|n| ctx.loc.verbatim(n));
    let at = |r: std::ops::Range<usize>| match start {
        Some(s) => Span::new(span.file, s + r.start, s + r.end),
        None => *span,
    };
    match Template::parse(text) {
        Err(errors) => {
            for e in errors {
                let d = Diagnostic::new(
                    Code::E015,
                    at(e.range.clone()),
                    format!(
                        "`{field}` of {} `{}`: {}",
                        b.section.singular(),
                        b.name,
                        e.message
                    ),
                )
                .with_help(e.help);
                ctx.diags.push(d);
            }
        }
        Ok(t) if field == "topic" && !t.is_static() => {
            let bad = text.char_indices().find(|(i, c)| {
                let inside = t.placeholders().any(|(_, r)| r.contains(i));
                !(inside || c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            });
            if let Some((i, c)) = bad {
                ctx.diags.push(
                    Diagnostic::new(
                        Code::E015,
                        at(i..i + c.len_utf8()),
                        format!("`topic` of sink `{}`: Kafka refuses `{c}` in a topic name", b.name),
                    )
                    .with_help("a topic name takes letters, digits, `.`, `_` and `-`; placeholder values are made to fit"),
                );
            }
        }
        Ok(_) => {}
    }
}

/// A Kafka queue is one topic, written and read: its `topic` cannot be a
/// template (only a sink's can).
fn queue_topic(ctx: &mut Ctx<'_>, b: &Binding) {
    let Some((ConfigValue::Str(text), span)) =
        b.fields.get("topic").zip(b.field_spans.get("topic"))
    else {
        return;
    };
    if dab_api::template::Template::parse(text).is_ok_and(|t| t.is_static()) {
        return;
    }
    ctx.error(
        *span,
        format!("the topic of queue `{}` cannot be a template: a queue is one topic, written and read", b.name),
    )
    .help = Some("name one topic; to write a topic per type, bind a kafka sink with `topic: \"events.{type}\"`".to_owned());
}

/// The `http` and `murron_grpc` sinks speak HTTP, or HTTPS trusting the
/// CA certificates of `tls_ca` (read and parsed here, as the sink will).
fn http_endpoint(ctx: &mut Ctx<'_>, b: &Binding, field: &str, url: &str, span: Span) {
    let ca = b.fields.get("tls_ca").zip(b.field_spans.get("tls_ca"));
    let (problem, help) = match url.parse::<http::Uri>() {
        Err(e) => (format!("`{field}` `{url}` is not a URL: {e}"), None),
        Ok(uri) if uri.host().is_none_or(str::is_empty) => {
            (format!("`{field}` `{url}` has no host"), None)
        }
        Ok(uri) => match (uri.scheme_str(), ca) {
            (Some("http"), None) => return,
            (Some("http"), Some((_, at))) => {
                ctx.error(*at, format!("`tls_ca` is for https:// endpoints, and `{url}` is http://"))
                    .help = Some("remove `tls_ca`, or write the endpoint as https://".to_owned());
                return;
            }
            (Some("https"), Some((ConfigValue::Str(path), at))) => {
                pem_file(ctx, "tls_ca", path, *at, certificates);
                return;
            }
            (Some("https"), _) => (
                format!("`{field}` `{url}` is https:// and needs `tls_ca`"),
                Some("add `tls_ca: /path/ca.pem`, the PEM CA certificates the server's certificate chains to".to_owned()),
            ),
            (Some(other), _) => (format!("`{field}` `{url}`: scheme `{other}` is not http or https"), None),
            (None, _) => (format!("`{field}` `{url}` must start with http:// or https://"), None),
        },
    };
    ctx.error(span, problem).help = Some(
        help.unwrap_or_else(|| "write http://host:port/path or https://host:port/path".to_owned()),
    );
}

/// PEM certificates, at least one.
fn certificates(bytes: &[u8]) -> Result<(), String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(bytes).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(()),
        Ok(_) => Err("holds no PEM certificate".to_owned()),
        Err(e) => Err(format!("is not a PEM certificate: {e}")),
    }
}

/// `tls_cert` and `tls_key` go together, and both files must hold what
/// the gRPC server will load: PEM certificates, and a PEM private key.
fn tls(ctx: &mut Ctx<'_>, b: &Binding) {
    let cert = b.fields.get("tls_cert").zip(b.field_spans.get("tls_cert"));
    let key = b.fields.get("tls_key").zip(b.field_spans.get("tls_key"));
    match (cert, key) {
        (None, None) => {}
        (Some((ConfigValue::Str(c), cs)), Some((ConfigValue::Str(k), ks))) => {
            pem_file(ctx, "tls_cert", c, *cs, certificates);
            pem_file(ctx, "tls_key", k, *ks, |bytes| {
                PrivateKeyDer::from_pem_slice(bytes)
                    .map(drop)
                    .map_err(|e| format!("is not a PEM private key: {e}"))
            });
        }
        (Some((_, at)), None) => {
            ctx.error(*at, format!("source `{}` has `tls_cert` but no `tls_key`", b.name))
                .help = Some("TLS needs both: add `tls_key` (the certificate's PEM private key), or remove `tls_cert`".to_owned());
        }
        (None, Some((_, at))) => {
            ctx.error(
                *at,
                format!("source `{}` has `tls_key` but no `tls_cert`", b.name),
            )
            .help = Some(
                "TLS needs both: add `tls_cert` (the PEM certificate chain), or remove `tls_key`"
                    .to_owned(),
            );
        }
        _ => {}
    }
}

/// Reads a file a binding names and holds it to `parse`; an E018 at the
/// field's value when either fails.
fn pem_file(
    ctx: &mut Ctx<'_>,
    field: &str,
    path: &str,
    span: Span,
    parse: impl Fn(&[u8]) -> Result<(), String>,
) {
    let problem = match (ctx.files)(path) {
        Ok(bytes) => match parse(&bytes) {
            Ok(()) => return,
            Err(why) => format!("`{field}` file `{path}` {why}"),
        },
        Err(e) => format!("cannot read `{field}` file `{path}`: {e}"),
    };
    ctx.diags.push(
        Diagnostic::new(Code::E018, span, problem)
            .with_label_here("read when the set is checked")
            .with_help("TLS files are read by dab validate as by dab run; point at the PEM file the connector will load"),
    );
}

/// A table file's format (from `format`, or the extension of `path`),
/// and its rows: read and parsed as `dab run` will at start, so that a
/// file it would refuse is an E018 at validate.
fn table_file(ctx: &mut Ctx<'_>, b: &Binding) {
    let Some((ConfigValue::Str(path), span)) = b.fields.get("path").zip(b.field_spans.get("path"))
    else {
        return;
    };
    let explicit = b.fields.contains_key("format");
    if !explicit && crate::table::TableFormat::from_path(path).is_none() {
        ctx.error(
                *span,
                format!("table `{}`: cannot tell the format of `{path}` from its extension", b.name),
            )
            .help = Some(
                "name the file `.jsonl`, `.ndjson`, `.json` (JSON lines) or `.csv`, or add `format: jsonl` or `format: csv`"
                    .to_owned(),
            );
        return;
    }
    // A missing `key` or a bad `format` is reported by the field checks.
    let Some(crate::model::TableSpec {
        source: crate::model::TableSource::File { key, format, .. },
        ..
    }) = super::table_spec(b)
    else {
        return;
    };
    let problem = match (ctx.files)(path) {
        Ok(bytes) => match crate::table::parse(&bytes, format, &key) {
            Ok(_) => return,
            Err(e) => format!(
                "table `{}`: `{path}` line {}: {}",
                b.name, e.line, e.message
            ),
        },
        Err(e) => format!("cannot read table file `{path}` of table `{}`: {e}", b.name),
    };
    ctx.diags.push(
        Diagnostic::new(Code::E018, *span, problem)
            .with_label_here("read when the set is checked")
            .with_help(format!(
                "table files are read by dab validate as by dab run at start; {}",
                match format {
                    crate::table::TableFormat::JsonLines =>
                        "a JSON-lines table holds one JSON object per line, each with its key column",
                    crate::table::TableFormat::Csv =>
                        "a CSV table starts with a header row naming its key column",
                }
            )),
    );
}

/// A disk queue's `path` is a directory `dab run` creates when missing; a
/// file there would fail the queue's open (E018).
fn disk_directory(ctx: &mut Ctx<'_>, b: &Binding) {
    let Some((ConfigValue::Str(path), span)) = b.fields.get("path").zip(b.field_spans.get("path"))
    else {
        return;
    };
    if (ctx.files)(path).is_ok() {
        ctx.diags.push(
            Diagnostic::new(
                Code::E018,
                *span,
                format!(
                    "disk queue `{}`: `path` `{path}` is a file, not a directory",
                    b.name
                ),
            )
            .with_label_here("looked up when the set is checked")
            .with_help(
                "point `path` at a directory (created when missing) that only this queue uses",
            ),
        );
    }
}

/// The longest Unix socket path Linux binds: `sun_path` holds 108 bytes,
/// the last a NUL.
const MAX_SOCKET_PATH: usize = 107;

/// A socket path too long to bind fails only when the source starts.
fn socket_path(ctx: &mut Ctx<'_>, b: &Binding) {
    if let (Some(ConfigValue::Str(path)), Some(span)) =
        (b.fields.get("path"), b.field_spans.get("path"))
    {
        if path.len() > MAX_SOCKET_PATH {
            ctx.error(
                *span,
                format!(
                    "socket path is {} bytes, longer than the {MAX_SOCKET_PATH} a Unix socket can bind",
                    path.len()
                ),
            )
            .help = Some("use a shorter path, e.g. under /run or /tmp".to_owned());
        }
    }
}

/// The `parquet` sink's storage: a local directory, or `s3://bucket/prefix`
/// with keys that come from the environment (written as `${VAR}`, never
/// as the secret itself) and an `http(s)://` endpoint when one is set.
fn parquet_storage(ctx: &mut Ctx<'_>, b: &Binding, entries: &MarkedMappingNode) {
    const S3_ONLY: [&str; 5] = [
        "s3_endpoint",
        "s3_region",
        "access_key",
        "secret_key",
        "spool",
    ];
    let Some((ConfigValue::Str(path), path_span)) =
        b.fields.get("path").zip(b.field_spans.get("path"))
    else {
        return;
    };
    let Some(rest) = path.strip_prefix("s3://") else {
        for field in S3_ONLY {
            if let Some(at) = b.field_spans.get(field) {
                ctx.error(*at, format!("`{field}` is only for an s3:// path, and `path` is the local directory `{path}`"))
                    .help = Some(format!("remove `{field}`, or set `path: \"s3://bucket/prefix\"`"));
            }
        }
        return;
    };
    if rest.split('/').next().is_none_or(str::is_empty) {
        ctx.error(*path_span, format!("`{path}` names no bucket"))
            .help = Some("write `s3://bucket/prefix`".to_owned());
    }
    for field in ["access_key", "secret_key"] {
        let raw = entries
            .iter()
            .find(|(k, _)| k.as_str() == field)
            .map(|(_, v)| v);
        match raw {
            None => {
                ctx.error(*path_span, format!("an s3:// path needs `{field}`"))
                    .help = Some(format!(
                    "add `{field}: \"${{{}}}\"`: S3 keys come from the environment",
                    if field == "access_key" {
                        "AWS_ACCESS_KEY_ID"
                    } else {
                        "AWS_SECRET_ACCESS_KEY"
                    }
                ));
            }
            Some(Node::Scalar(v)) if !v.as_str().contains("${") => {
                let at = b.field_spans.get(field).copied().unwrap_or(*path_span);
                ctx.error(at, format!("`{field}` is written into the bindings file"))
                    .help = Some(format!(
                    "S3 keys come from the environment only: write `{field}: \"${{{}}}\"` and set the variable",
                    if field == "access_key" { "AWS_ACCESS_KEY_ID" } else { "AWS_SECRET_ACCESS_KEY" }
                ));
            }
            Some(_) => {}
        }
    }
    if let Some((ConfigValue::Str(url), at)) = b
        .fields
        .get("s3_endpoint")
        .zip(b.field_spans.get("s3_endpoint"))
    {
        let ok = url.parse::<http::Uri>().ok().is_some_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https"))
                && u.host().is_some_and(|h| !h.is_empty())
        });
        if !ok {
            ctx.error(
                *at,
                format!("`s3_endpoint` `{url}` is not an http:// or https:// URL"),
            )
            .help = Some("write the server's address, e.g. `http://127.0.0.1:9000`".to_owned());
        }
    }
}

/// A generator keeps one offset counter per host × pid × type.
fn generator_keys(ctx: &mut Ctx<'_>, b: &Binding) {
    let count = |field: &str, default: i64| match b.fields.get(field) {
        Some(ConfigValue::List(items)) => i64::try_from(items.len()).unwrap_or(i64::MAX),
        Some(ConfigValue::Int(n)) => *n,
        _ => default,
    };
    let keys = count("hosts", 1)
        .saturating_mul(count("pids", 1))
        .saturating_mul(count("types", 2));
    if keys > GENERATOR_MAX_KEYS {
        ctx.error(
            b.name_span,
            format!(
                "generator `{}` makes {keys} (host, pid, type) combinations, more than {GENERATOR_MAX_KEYS}",
                b.name
            ),
        )
        .help = Some(
            "it keeps an offset counter for each; use fewer hosts, pids or types".to_owned(),
        );
    }
}

/// Each `options:` entry against librdkafka's properties.
fn kafka_options_of(ctx: &mut Ctx<'_>, section: Section, b: &Binding, entries: &MarkedMappingNode) {
    let Some(ConfigValue::Map(options)) = b.fields.get("options") else {
        return;
    };
    let Some((key, Node::Mapping(node))) = entries.iter().find(|(k, _)| k.as_str() == "options")
    else {
        return;
    };
    let options_span = ctx.loc.scalar(key);
    let spans: BTreeMap<&str, (Span, Span)> = node
        .iter()
        .map(|(k, v)| {
            let ks = ctx.loc.scalar(k);
            (k.as_str(), (ks, ctx.loc.value(ks, v)))
        })
        .collect();
    let mut fine = BTreeMap::new();
    for (name, value) in options {
        let ConfigValue::Str(value) = value else {
            continue;
        };
        if super::check::guarantee_breach(name, value).is_some() {
            // Already an E015 of its own (`check::kafka_guarantees`); it
            // takes no part in the clashes below either.
            continue;
        }
        if let Err(problem) = kafka_options::check(name, value) {
            let (key_span, value_span) = spans
                .get(name.as_str())
                .copied()
                .unwrap_or((options_span, options_span));
            let at = match problem {
                kafka_options::Problem::Value(_) => value_span,
                _ => key_span,
            };
            let (message, help) = problem.describe(name, value);
            ctx.error(at, message).help = Some(help);
        } else {
            fine.insert(name.clone(), value.clone());
        }
    }
    let clients = match section {
        Section::Sources => Clients::Consumer,
        Section::Sinks => Clients::Producer,
        Section::Tables => Clients::Consumer,
        Section::Queues => Clients::Both,
    };
    // Only options that passed alone take part, so that one bad value is
    // reported once.
    if fine.len() == options.len() {
        for (at, message, help) in kafka_rules::clashes(&fine, clients) {
            let span = at
                .and_then(|name| spans.get(name.as_str()).map(|s| s.1))
                .unwrap_or(options_span);
            ctx.error(span, message).help = Some(help);
        }
    }
}
