//! AST + bindings -> a checked plan: the pipelines as span-free configs, what
//! every name stands for, and the petgraph DAG. Every check of SPEC section 3
//! runs here, in one pass, so `dab validate` and `dab run` reject exactly the
//! same things.

pub mod bindings;
mod cycles;
pub mod diff;
mod enrich;
mod expr;
pub mod graph;
mod join;
pub mod model;
mod names;
pub mod ops;
mod payload;
mod pipeline;
pub mod registry;
mod set;
pub mod table;
pub mod window;

use std::collections::{BTreeMap, HashMap};

use dab_diag::{Code, Diagnostic, SourceMap};
use dab_syntax::ast::Blueprint;

use crate::bindings::Bindings;
use crate::model::{Endpoint, Pipeline, Role};

pub use diff::{diff, ReloadPlan};
pub use set::{check_set, check_set_cached, CheckedSet, ParseCache, SourceSet};

/// Choices that change what is checked.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--service NAME`: the service this process will run (W004).
    pub service: Option<String>,
    /// The pluggable ops the blueprints may use (`dab_runtime::ops`
    /// lists the built-in ones); an op neither here nor in
    /// `ops::builtin_operators()` is unknown (E006).
    pub ops: ops::Ops,
}

/// A checked blueprint set.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// In source order; only pipelines without errors.
    pub pipelines: Vec<Pipeline>,
    /// Every name used by a pipeline, resolved.
    pub endpoints: BTreeMap<String, Endpoint>,
    pub graph: graph::Dag,
}

impl Plan {
    pub fn pipeline(&self, id: &str) -> Option<&Pipeline> {
        self.pipelines.iter().find(|p| p.id == id)
    }

    /// The services of the set, in order of first appearance.
    pub fn services(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in &self.pipelines {
            if !out.contains(&p.service.as_str()) {
                out.push(&p.service);
            }
        }
        out
    }
}

/// Checks parsed blueprints against bindings; returns the plan and every
/// diagnostic found (the plan is only meant to run when there are no errors).
pub fn plan(
    blueprints: &[Blueprint],
    bindings: &Bindings,
    options: &Options,
) -> (Plan, Vec<Diagnostic>) {
    let refs: Vec<&Blueprint> = blueprints.iter().collect();
    let checks = blueprints
        .iter()
        .flat_map(|b| check_blueprint(b, bindings, &options.ops))
        .collect();
    plan_refs(&refs, checks, bindings, options)
}

/// What checking one statement on its own gives. It depends only on the
/// statement and the bindings, so a reload whose bindings are unchanged
/// reuses it for every file that did not change.
#[derive(Debug, Clone)]
pub(crate) struct StatementCheck {
    checked: pipeline::CheckedStatement,
    /// Op order, arguments and signatures (E002-E009, W002).
    diags: Vec<Diagnostic>,
    /// `fields.` paths against the declared schemas (E008).
    payload: Vec<Diagnostic>,
}

/// [`StatementCheck`]s of every statement of `blueprint`, in order.
pub(crate) fn check_blueprint(
    blueprint: &Blueprint,
    bindings: &Bindings,
    ops: &ops::Ops,
) -> Vec<StatementCheck> {
    blueprint
        .statements
        .iter()
        .map(|st| {
            let mut diags = Vec::new();
            let checked = pipeline::check_statement(st, bindings, ops, &mut diags);
            let mut payload = Vec::new();
            if let Some(declared) = &bindings.types {
                payload::check_statement(st, declared, &bindings.sinks, &mut payload);
            }
            StatementCheck {
                checked,
                diags,
                payload,
            }
        })
        .collect()
}

/// [`plan`] over blueprints held elsewhere (a reload's parse cache), with
/// each statement's own check already made: `checks` has one entry per
/// statement, in order.
pub(crate) fn plan_refs(
    blueprints: &[&Blueprint],
    checks: Vec<StatementCheck>,
    bindings: &Bindings,
    options: &Options,
) -> (Plan, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let statements: Vec<_> = blueprints
        .iter()
        .flat_map(|b| b.statements.iter())
        .collect();
    assert_eq!(
        statements.len(),
        checks.len(),
        "one check per statement, in order"
    );
    let mut payload_diags = Vec::new();

    // Each statement's id, made once (an allocation each).
    let ids: Vec<String> = statements.iter().map(|st| st.id()).collect();
    let mut first_by_id: HashMap<&str, dab_diag::Span> = HashMap::new();
    let mut checked = Vec::with_capacity(statements.len());
    for ((st, id), check) in statements.iter().zip(&ids).zip(checks) {
        if let Some(first) = first_by_id.get(id.as_str()) {
            diags.push(
                Diagnostic::new(Code::E013, st.head_span, format!("duplicate pipeline id `{id}`"))
                    .with_label_here("defined again here")
                    .with_label(*first, "first defined here")
                    .with_help(format!(
                        "give one a name: `{}.NewPipeline(\"other\")`; ids are `service` or `service/name`",
                        st.service.name
                    )),
            );
        } else {
            first_by_id.insert(id, st.head_span);
        }
        if let Some(name) = &st.name {
            if name.value.is_empty()
                || !name
                    .value
                    .chars()
                    .all(|c| c.is_alphanumeric() || "_-.".contains(c))
            {
                diags.push(
                    Diagnostic::new(
                        Code::E009,
                        name.span,
                        format!("pipeline name {:?} is not allowed", name.value),
                    )
                    .with_label_here("letters, digits, `_`, `-` and `.` only")
                    .with_help("the id is `service/name`, so a name is one non-empty word"),
                );
            }
        }
        diags.extend(check.diags);
        payload_diags.extend(check.payload);
        checked.push(check.checked);
    }

    if let Some(declared) = &bindings.types {
        let names: Vec<&str> = declared.iter().map(|t| t.name.as_str()).collect();
        for (t, span) in checked.iter().flat_map(|c| c.types.iter()) {
            if !names.contains(&t.as_str()) {
                diags.push(
                    Diagnostic::new(Code::E014, *span, format!("unknown event type `{t}`"))
                        .with_label_here("not declared under `types:`")
                        .with_suggestion(t, names.iter().copied())
                        .with_help_or(format!(
                            "declare it under `types:` in the bindings file: `{t}: {{}}`"
                        )),
                );
            }
        }
    }

    diags.extend(payload_diags);

    let per_pipeline: Vec<&[_]> = checked.iter().map(|c| c.uses.as_slice()).collect();
    let uses = names::collect_uses(&per_pipeline);
    let endpoints = names::resolve(&uses, bindings, &mut diags);
    enrich::unused_tables(
        bindings,
        checked
            .iter()
            .flat_map(|c| c.tables.iter().map(String::as_str)),
        &mut diags,
    );

    let members: Vec<cycles::Member<'_>> = statements
        .iter()
        .map(|st| cycles::Member {
            id: "",
            head: st.head_span,
        })
        .collect();
    let members: Vec<cycles::Member<'_>> = members
        .into_iter()
        .zip(&ids)
        .map(|(m, id)| cycles::Member { id, ..m })
        .collect();
    cycles::check_cycles(
        &members,
        &uses,
        |n| endpoints.get(n).is_some_and(|e| e.role() == Role::Queue),
        &mut diags,
    );

    if let Some(service) = &options.service {
        service_links(service, &statements, &uses, &endpoints, &mut diags);
    }

    let pipelines: Vec<Pipeline> = statements
        .iter()
        .zip(&ids)
        .zip(checked)
        .filter_map(|((st, id), c)| {
            let config = c.config?;
            let resolved = config
                .reads()
                .chain(config.writes())
                .all(|n| endpoints.contains_key(n));
            resolved.then(|| Pipeline {
                id: id.clone(),
                service: st.service.name.clone(),
                span: st.head_span,
                config,
            })
        })
        .collect();
    let graph = graph::build(&pipelines, &endpoints);
    (
        Plan {
            pipelines,
            endpoints,
            graph,
        },
        diags,
    )
}

/// W004: a memory or disk queue that links the selected service with
/// another one (a disk queue's directory has one owner process).
fn service_links(
    service: &str,
    statements: &[&dab_syntax::ast::Statement],
    uses: &[(String, names::Uses)],
    endpoints: &BTreeMap<String, Endpoint>,
    diags: &mut Vec<Diagnostic>,
) {
    for (name, u) in uses {
        let disk = matches!(
            endpoints.get(name),
            Some(Endpoint::Bound { role: Role::Queue, kind, .. }) if kind == "disk"
        );
        if !disk && !endpoints.get(name).is_some_and(Endpoint::is_memory_queue) {
            continue;
        }
        let svc = |p: usize| statements[p].service.name.as_str();
        let all = u.reads.iter().chain(&u.writes);
        let Some(&(_, here)) = all.clone().find(|(p, _)| svc(*p) == service) else {
            continue;
        };
        if let Some(&(other_p, other_span)) = all.clone().find(|(p, _)| svc(*p) != service) {
            diags.push(
                Diagnostic::new(
                    Code::W004,
                    here,
                    if disk {
                        format!(
                            "disk queue `{name}` links service `{service}` with `{}`: one process at a time may open its directory",
                            svc(other_p)
                        )
                    } else {
                        format!(
                            "memory queue `{name}` links service `{service}` with `{}`, which a separate process cannot reach",
                            svc(other_p)
                        )
                    },
                )
                .with_label_here(format!("used by `{service}`"))
                .with_label(other_span, format!("used by `{}`", svc(other_p)))
                .with_help(if disk {
                    format!("run both services in one process, or bind `{name}` as a Kafka queue: `queues: {{ {name}: {{ kind: kafka, ... }} }}`")
                } else {
                    format!("bind `{name}` as a Kafka queue: `queues: {{ {name}: {{ kind: kafka, ... }} }}`")
                }),
            );
        }
    }
}

/// A help text unless the diagnostic has one (a "did you mean").
pub trait HelpOr {
    fn with_help_or(self, help: String) -> Self;
}

impl HelpOr for Diagnostic {
    fn with_help_or(self, help: String) -> Self {
        match self.help {
            Some(_) => self,
            None => self.with_help(help),
        }
    }
}

/// Parses and plans in one call, with the bindings already loaded.
pub fn parse_and_plan(
    map: &SourceMap,
    bindings: &Bindings,
    options: &Options,
) -> (Plan, Vec<Diagnostic>) {
    let mut diags = Vec::new();
    let mut blueprints = Vec::new();
    for (id, file) in map.files() {
        if Some(id) == bindings.file {
            continue;
        }
        let (bp, d) = dab_syntax::parse(id, &file.text);
        blueprints.push(bp);
        diags.extend(d);
    }
    let (plan, d) = plan(&blueprints, bindings, options);
    diags.extend(d);
    (plan, diags)
}
