//! Resolves every source, sink and queue name of a blueprint set: bindings,
//! built-ins, implicit memory queues (E010, E011, E016, W001, W003).

use std::collections::{BTreeMap, HashMap, HashSet};

use dab_diag::{Code, Diagnostic, Span};

use crate::bindings::{Bindings, Section};
use crate::model::{builtin_role, Endpoint, Role, BUILTIN_NAMES};
use crate::pipeline::NameUse;

/// Where one name is read and written, by pipeline index.
#[derive(Debug, Default)]
pub(crate) struct Uses {
    pub reads: Vec<(usize, Span)>,
    pub writes: Vec<(usize, Span)>,
}

/// Names in order of first use, with their uses.
pub(crate) fn collect_uses(per_pipeline: &[&[NameUse]]) -> Vec<(String, Uses)> {
    let mut order: Vec<(String, Uses)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (p, uses) in per_pipeline.iter().enumerate() {
        for u in *uses {
            let i = *index.entry(u.name.as_str()).or_insert_with(|| {
                order.push((u.name.clone(), Uses::default()));
                order.len() - 1
            });
            let entry = &mut order[i].1;
            if u.write {
                entry.writes.push((p, u.span));
            } else {
                entry.reads.push((p, u.span));
            }
        }
    }
    order
}

fn role_of(section: Section) -> Role {
    match section {
        Section::Sources => Role::Source,
        Section::Sinks => Role::Sink,
        Section::Queues => Role::Queue,
        // `all()` holds no tables.
        Section::Tables => Role::Source,
    }
}

/// Resolves each used name to an endpoint; reports what cannot be resolved.
pub(crate) fn resolve(
    uses: &[(String, Uses)],
    bindings: &Bindings,
    diags: &mut Vec<Diagnostic>,
) -> BTreeMap<String, Endpoint> {
    let mut endpoints = BTreeMap::new();
    // One lookup table, not a scan of every binding per name: the scan made
    // validation grow as names x bindings on large sets.
    let mut by_name: HashMap<&str, &crate::bindings::Binding> = HashMap::new();
    for b in bindings.all() {
        by_name.entry(b.name.as_str()).or_insert(b);
    }
    let known: Vec<&str> = bindings
        .all()
        .map(|b| b.name.as_str())
        .chain(BUILTIN_NAMES.iter().map(|(n, _)| *n))
        .chain(uses.iter().map(|(n, _)| n.as_str()))
        .collect();
    for (name, u) in uses {
        let endpoint = if let Some(b) = by_name.get(name.as_str()).copied() {
            Endpoint::Bound {
                role: role_of(b.section),
                kind: b.kind.clone(),
                fields: b.fields.clone(),
                schema: crate::bindings::type_schema(bindings, b).cloned(),
            }
        } else if let Some(role) = builtin_role(name) {
            Endpoint::Builtin { role }
        } else if !u.reads.is_empty() && !u.writes.is_empty() {
            Endpoint::ImplicitQueue
        } else {
            if let Some(t) = bindings.table(name) {
                diags.push(table_as_stream(name, u, t.name_span));
            } else if !bindings.unreadable {
                diags.push(unknown_name(name, u, &known));
            }
            continue;
        };
        let role = endpoint.role();
        if role == Role::Sink {
            for &(_, span) in &u.reads {
                diags.push(
                    Diagnostic::new(
                        Code::E016,
                        span,
                        format!("`{name}` is a sink, but it is read from"),
                    )
                    .with_label_here("a sink cannot be read")
                    .with_help("`In` and `Join` take a source or a queue; bind a source, or write to a queue and read that"),
                );
            }
        }
        if role == Role::Source {
            for &(_, span) in &u.writes {
                diags.push(
                    Diagnostic::new(
                        Code::E016,
                        span,
                        format!("`{name}` is a source, but it is written to"),
                    )
                    .with_label_here("a source cannot be written")
                    .with_help("`Out` and `overflow` take sinks and queues"),
                );
            }
        }
        if let Some(b) = by_name
            .get(name.as_str())
            .copied()
            .filter(|b| b.section == Section::Queues)
        {
            if let (Some(&(_, read)), true) = (u.reads.first(), u.writes.is_empty()) {
                diags.push(
                    Diagnostic::new(
                        Code::E011,
                        read,
                        format!("queue `{name}` is read but never written"),
                    )
                    .with_label_here("nothing writes this queue")
                    .with_label(b.name_span, "bound here")
                    .with_help(format!("write to it with `.Out({name})` in another pipeline, or read a source instead")),
                );
            }
            if let (Some(&(_, write)), true) = (u.writes.first(), u.reads.is_empty()) {
                diags.push(
                    Diagnostic::new(
                        Code::W001,
                        write,
                        format!("queue `{name}` is written but never read"),
                    )
                    .with_label_here("nothing reads this queue")
                    .with_label(b.name_span, "bound here")
                    .with_help(format!(
                        "read it with `.In({name})`, or write to a sink instead"
                    )),
                );
            }
        }
        endpoints.insert(name.clone(), endpoint);
    }
    let used: HashSet<&str> = uses.iter().map(|(n, _)| n.as_str()).collect();
    for b in bindings.all() {
        if !used.contains(b.name.as_str()) {
            diags.push(
                Diagnostic::new(
                    Code::W003,
                    b.name_span,
                    format!(
                        "{} `{}` is bound but never used",
                        b.section.singular(),
                        b.name
                    ),
                )
                .with_label_here("unused binding")
                .with_help("use it in a pipeline, or remove it from the bindings file"),
            );
        }
    }
    endpoints
}

/// E016: a table named where a source, sink or queue belongs.
fn table_as_stream(name: &str, u: &Uses, bound: Span) -> Diagnostic {
    let span = u
        .reads
        .first()
        .or(u.writes.first())
        .map_or(Span::default(), |&(_, s)| s);
    Diagnostic::new(
        Code::E016,
        span,
        format!("`{name}` is a table, which is not read or written as a stream"),
    )
    .with_label_here("a table")
    .with_label(bound, "bound under `tables:` here")
    .with_help(format!(
        "look rows up with `.Enrich({name}, on = ..., into = \"...\")`; `In` and `Out` take sources, sinks and queues"
    ))
}

fn unknown_name(name: &str, u: &Uses, known: &[&str]) -> Diagnostic {
    let (span, help) = match (u.reads.first(), u.writes.first()) {
        (Some(&(_, span)), _) => (
            span,
            format!("bind it under `sources:` in the bindings file, or write it with `.Out({name})` in another pipeline to make it a queue"),
        ),
        (None, Some(&(_, span))) => (
            span,
            format!("bind it under `sinks:` or `queues:` in the bindings file, or read it with `.In({name})` in another pipeline to make it a queue"),
        ),
        (None, None) => (Span::default(), String::new()),
    };
    let d = Diagnostic::new(Code::E010, span, format!("unknown name `{name}`"))
        .with_label_here("not a built-in, a binding or a queue")
        .with_suggestion(name, known.iter().copied());
    match &d.help {
        Some(h) => {
            let h = format!("{h} If not, {help}");
            Diagnostic { help: Some(h), ..d }
        }
        None => d.with_help(help),
    }
}
