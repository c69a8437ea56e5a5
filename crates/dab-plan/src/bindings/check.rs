//! Checking one binding (`Name: { kind: ..., ... }`) against the catalog of
//! connector kinds: its kind, unknown and missing fields, each field's type.

use std::collections::BTreeMap;

use dab_api::schema::{find_kind, kinds_of, KindSpec, Section};
use dab_diag::{did_you_mean, Span};
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::Node;

use super::coerce::field_value;
use super::scalar::{describe, text};
use super::{Binding, Ctx};

/// Checks a binding. The result is kept even when it is broken, with
/// whatever kind it names, so that the planner knows the name is bound.
pub(super) fn binding(
    ctx: &mut Ctx<'_>,
    section: Section,
    key: &MarkedScalarNode,
    value: &Node,
) -> Binding {
    let name = key.as_str().to_owned();
    let name_span = ctx.loc.scalar(key);
    if !is_identifier(&name) {
        ctx.error(name_span, format!("binding name `{name}` is not an identifier"))
            .help = Some(
            "blueprints can only refer to names of letters, digits and `_` that do not start with a digit"
                .to_owned(),
        );
    }
    let mut b = Binding {
        name,
        section,
        name_span,
        kind: String::new(),
        kind_span: name_span,
        fields: BTreeMap::new(),
        field_spans: BTreeMap::new(),
    };
    let Node::Mapping(entries) = value else {
        let example = kinds_of(section).next().map_or("...", |k| k.kind);
        let span = ctx.loc.value(name_span, value);
        ctx.error(
            span,
            format!(
                "binding `{}` must be a mapping with a `kind`, found {}",
                b.name,
                describe(value)
            ),
        )
        .help = Some(format!("for example `{}: {{ kind: {example} }}`", b.name));
        return b;
    };
    let Some((kind, kind_span)) = kind_of(ctx, &b, entries) else {
        return b;
    };
    b.kind = kind;
    b.kind_span = kind_span;
    let Some(spec) = find_kind(section, &b.kind) else {
        unknown_kind(ctx, &b);
        return b;
    };
    for (k, v) in entries.iter() {
        let field_name = k.as_str();
        if field_name == "kind" {
            continue;
        }
        let key_span = ctx.loc.scalar(k);
        let Some(field) = spec.field(field_name) else {
            unknown_field(ctx, spec, field_name, key_span);
            continue;
        };
        if let Some(value) = field_value(ctx, field, key_span, v) {
            b.fields.insert(field_name.to_owned(), value);
            b.field_spans
                .insert(field_name.to_owned(), ctx.loc.value(key_span, v));
        }
    }
    for field in spec.fields.iter().filter(|f| f.required) {
        if !entries.contains_key(field.name) {
            ctx.error(
                name_span,
                format!(
                    "{} {} `{}` is missing required field `{}`",
                    spec.kind,
                    section.singular(),
                    b.name,
                    field.name
                ),
            )
            .help = Some(format!("add `{}`: {}", field.name, field.doc));
        }
    }
    if section == Section::Sources && spec.kind == "kafka" {
        kafka_topics(ctx, &b, entries);
    }
    if spec.kind == "kafka" {
        kafka_guarantees(ctx, &b, entries);
    }
    if section == Section::Queues && spec.kind == "disk" {
        disk_sizes(ctx, &b);
    }
    super::runnable::check(ctx, spec, &b, entries);
    b
}

/// The kind string and its span; `None` when missing or not a string
/// (reported).
fn kind_of(ctx: &mut Ctx<'_>, b: &Binding, entries: &MarkedMappingNode) -> Option<(String, Span)> {
    let Some((key, value)) = entries.iter().find(|(k, _)| k.as_str() == "kind") else {
        let kinds: Vec<&str> = kinds_of(b.section).map(|k| k.kind).collect();
        ctx.error(b.name_span, format!("binding `{}` has no `kind`", b.name))
            .help = Some(format!(
            "add `kind:`, one of the {} kinds: {}",
            b.section.singular(),
            kinds.join(", ")
        ));
        return None;
    };
    let span = ctx.loc.value(ctx.loc.scalar(key), value);
    match text(ctx, value, span) {
        Ok(Some(kind)) => Some((kind, span)),
        Ok(None) => None,
        Err(found) => {
            ctx.error(span, format!("`kind` must be a string, found {found}"));
            None
        }
    }
}

fn unknown_kind(ctx: &mut Ctx<'_>, b: &Binding) {
    let section = b.section;
    let kinds: Vec<&str> = kinds_of(section).map(|k| k.kind).collect();
    let elsewhere = Section::ALL
        .into_iter()
        .find(|&s| s != section && find_kind(s, &b.kind).is_some());
    let first = match (did_you_mean(&b.kind, kinds.iter().copied()), elsewhere) {
        (Some(best), _) => format!("did you mean `{best}`? "),
        (None, Some(other)) => format!(
            "`{}` is a {} kind; to bind `{}` as a {}, move it under `{}:`. ",
            b.kind,
            other.singular(),
            b.name,
            other.singular(),
            other.key()
        ),
        (None, None) => String::new(),
    };
    let list = format!("{} kinds are {}", section.singular(), kinds.join(", "));
    ctx.error(
        b.kind_span,
        format!("unknown {} kind `{}`", section.singular(), b.kind),
    )
    .help = Some(if first.is_empty() {
        format!("the {list}")
    } else {
        format!("{first}The {list}")
    });
}

fn unknown_field(ctx: &mut Ctx<'_>, spec: &KindSpec, field: &str, span: Span) {
    let names = spec.fields.iter().map(|f| f.name);
    let help = match did_you_mean(field, names.clone()) {
        Some(best) => format!("did you mean `{best}`?"),
        None if spec.fields.is_empty() => format!(
            "a `{}` {} takes no fields besides `kind`",
            spec.kind,
            spec.section.singular()
        ),
        None => format!(
            "the fields of a `{}` {} are {}",
            spec.kind,
            spec.section.singular(),
            names.collect::<Vec<_>>().join(", ")
        ),
    };
    ctx.error(
        span,
        format!(
            "unknown field `{field}` for a `{}` {}",
            spec.kind,
            spec.section.singular()
        ),
    )
    .help = Some(help);
}

/// A Kafka source reads `topic` or `topics`: one is required, and both
/// would leave it unclear which wins.
fn kafka_topics(ctx: &mut Ctx<'_>, b: &Binding, entries: &MarkedMappingNode) {
    let topics = entries.iter().find(|(k, _)| k.as_str() == "topics");
    match (entries.contains_key("topic"), topics) {
        (false, None) => {
            ctx.error(
                b.name_span,
                format!("kafka source `{}` needs `topic` or `topics`", b.name),
            )
            .help = Some("add `topic: events` or `topics: [a, b]`".to_owned());
        }
        (true, Some((key, _))) => {
            let span = ctx.loc.scalar(key);
            ctx.error(
                span,
                format!("kafka source `{}` has both `topic` and `topics`", b.name),
            )
            .help = Some("keep one of them".to_owned());
        }
        _ => {}
    }
}

/// Why a Kafka `options:` entry would switch off a delivery guarantee
/// (E015), or `None` when it keeps them.
pub(super) fn guarantee_breach(name: &str, value: &str) -> Option<&'static str> {
    let value = value.trim().to_ascii_lowercase();
    match name {
        "enable.auto.offset.store" | "enable.auto.commit" => Some(
            "DAB stores offsets only after their events are acknowledged and commits them itself",
        ),
        "enable.idempotence" if value == "false" => {
            Some("without idempotence, librdkafka's retries can duplicate or reorder messages")
        }
        "acks" if !matches!(value.as_str(), "all" | "-1") => {
            Some("a message is acknowledged only once every in-sync replica has it (`acks: all`)")
        }
        _ => None,
    }
}

/// librdkafka `options:` that would switch off what DAB promises (an
/// acknowledged event is delivered): DAB stores and commits offsets itself,
/// only behind acknowledgements, and produces idempotently with `acks=all`.
fn kafka_guarantees(ctx: &mut Ctx<'_>, b: &Binding, entries: &MarkedMappingNode) {
    let Some((_, Node::Mapping(options))) = entries.iter().find(|(k, _)| k.as_str() == "options")
    else {
        return;
    };
    let values = match b.fields.get("options") {
        Some(dab_api::ConfigValue::Map(m)) => Some(m),
        _ => None,
    };
    for (k, _) in options.iter() {
        let name = k.as_str();
        let value = values
            .and_then(|m| m.get(name))
            .and_then(|v| match v {
                dab_api::ConfigValue::Str(s) => Some(s.as_str()),
                _ => None,
            })
            .unwrap_or_default();
        let Some(why) = guarantee_breach(name, value) else {
            continue;
        };
        let span = ctx.loc.scalar(k);
        ctx.error(
            span,
            format!(
                "kafka {} `{}`: `options.{name}` would switch off a delivery guarantee",
                b.section.singular(),
                b.name
            ),
        )
        .help = Some(format!("remove it: {why}"));
    }
}

/// The default `max_bytes` of a disk queue (1 GiB), as the runtime's.
pub const DISK_DEFAULT_MAX_BYTES: i64 = 1 << 30;

/// A disk queue's `segment_bytes` must leave room for at least four
/// segments under `max_bytes`: a segment is deleted only once every reader
/// is past it, so a queue of one or two segments would stall its writers
/// behind the segment a reader is still on.
fn disk_sizes(ctx: &mut Ctx<'_>, b: &Binding) {
    let int = |k: &str| match b.fields.get(k) {
        Some(dab_api::ConfigValue::Int(n)) => Some(*n),
        _ => None,
    };
    let (Some(segment), Some(span)) = (int("segment_bytes"), b.field_spans.get("segment_bytes"))
    else {
        return;
    };
    let max = int("max_bytes").unwrap_or(DISK_DEFAULT_MAX_BYTES);
    if segment > max / 4 {
        ctx.error(
            *span,
            format!(
                "disk queue `{}`: `segment_bytes` ({segment} bytes) must be at most a quarter of `max_bytes` ({max} bytes)",
                b.name
            ),
        )
        .help = Some("lower `segment_bytes` or raise `max_bytes`; leave `segment_bytes` out for max_bytes / 4, at most 64MiB".to_owned());
    }
}

/// The identifiers of SPEC section 1, the only names a blueprint can use.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
