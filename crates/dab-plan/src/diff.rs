//! The reload plan: which pipelines a change adds, rebuilds, removes or keeps.
//! Shared by `dab validate --diff` and hot reload, so both always agree.
//! Pipelines are matched by id and compared as derived-`PartialEq` configs,
//! including the bindings of every name they read or write.

use std::collections::{HashMap, HashSet};

use dab_diag::{Code, Diagnostic};

use crate::model::{Endpoint, Pipeline};
use crate::{CheckedSet, Plan};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    pub added: Vec<String>,
    /// With the reasons, e.g. "stages changed", "binding `Out` changed".
    pub rebuilt: Vec<(String, Vec<String>)>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
}

impl ReloadPlan {
    pub fn is_noop(&self) -> bool {
        self.added.is_empty() && self.rebuilt.is_empty() && self.removed.is_empty()
    }
}

pub fn diff(old: &Plan, new: &Plan) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    // By id: a lookup per pipeline, not a scan (sets have thousands).
    let mut old_by_id: HashMap<&str, &Pipeline> = HashMap::new();
    for p in &old.pipelines {
        // The first of a repeated id, as `Plan::pipeline` finds it.
        old_by_id.entry(p.id.as_str()).or_insert(p);
    }
    let new_ids: HashSet<&str> = new.pipelines.iter().map(|p| p.id.as_str()).collect();
    for p in &new.pipelines {
        match old_by_id.get(p.id.as_str()).copied() {
            None => plan.added.push(p.id.clone()),
            Some(o) => {
                let reasons = why_changed(old, o, new, p);
                if reasons.is_empty() {
                    plan.unchanged.push(p.id.clone());
                } else {
                    plan.rebuilt.push((p.id.clone(), reasons));
                }
            }
        }
    }
    for o in &old.pipelines {
        if !new_ids.contains(o.id.as_str()) {
            plan.removed.push(o.id.clone());
        }
    }
    plan
}

fn why_changed(old: &Plan, o: &Pipeline, new: &Plan, n: &Pipeline) -> Vec<String> {
    let (oc, nc) = (&o.config, &n.config);
    let mut reasons = Vec::new();
    if oc.input != nc.input {
        reasons.push(format!("input `{}` -> `{}`", oc.input, nc.input));
    }
    if oc.stages != nc.stages {
        reasons.push("stages changed".to_owned());
    }
    if oc.outputs != nc.outputs || oc.when_full != nc.when_full {
        reasons.push("outputs changed".to_owned());
    }
    if oc.on_error != nc.on_error {
        // Failed events are routed by the pipeline task, which holds its
        // OnError sender: only a rebuild moves them to the new target.
        let name = |n: &Option<String>| n.as_ref().map_or("none".to_owned(), |n| format!("`{n}`"));
        reasons.push(format!(
            "OnError {} -> {}",
            name(&oc.on_error),
            name(&nc.on_error)
        ));
    }
    let mut names: Vec<&str> = nc.reads().chain(nc.writes()).collect();
    names.sort_unstable();
    names.dedup();
    // Every name the new config uses is compared, including one the old
    // set did not have or resolved to something else (a built-in, an
    // implicit memory queue): a missing old entry differs from any new one.
    for name in names {
        match (old.endpoints.get(name), new.endpoints.get(name)) {
            (Some(o), Some(n)) if o == n => {}
            (None, Some(_)) => reasons.push(format!("binding `{name}` added")),
            _ => reasons.push(format!("binding `{name}` changed")),
        }
    }
    reasons
}

/// What a reload from `old` to `new` cannot do safely, as E019: switching a
/// queue between memory, Kafka and disk, or changing a disk queue's
/// settings. The events a memory queue holds live in
/// this process and a Kafka queue's in the topic; neither can be moved into
/// the other without a second delivery path, so the switch is refused (the
/// running set stays) rather than wired half to each. Located at the
/// queue's binding in the new set, or, for a queue that is no longer
/// bound, at the first pipeline using it.
pub fn refusals(old: &Plan, new: &CheckedSet) -> Vec<Diagnostic> {
    let mut out = window_refusals(old, new);
    for (name, n) in &new.plan.endpoints {
        let Some(o) = old.endpoints.get(name) else {
            continue;
        };
        if o.role() != crate::model::Role::Queue || n.role() != crate::model::Role::Queue {
            continue;
        }
        let (from, to) = (storage(o), storage(n));
        // A disk queue's settings are its directory's owner's in this
        // process (one owner per directory): a change needs a restart.
        let disk_changed = from == "disk" && to == "disk" && o != n;
        if from == to && !disk_changed {
            continue;
        }
        let binding = new.bindings.all().find(|b| &b.name == name);
        let span = binding.map(|b| b.name_span).or_else(|| {
            new.plan
                .pipelines
                .iter()
                .find(|p| {
                    p.config.reads().any(|r| r == name) || p.config.writes().any(|w| w == name)
                })
                .map(|p| p.span)
        });
        let Some(span) = span else { continue };
        let d = if disk_changed {
            Diagnostic::new(
                Code::E019,
                span,
                format!("disk queue `{name}` would change its settings in a running process"),
            )
            .with_label_here("settings changed")
            .with_help(
                "the queue's directory is open with its old settings and stays so while it runs; restart `dab run` to apply them (what the queue holds stays on disk), or bind a new disk queue under a new name and path",
            )
        } else {
            let help = if from == "disk" {
                format!("a reload cannot move what the disk queue holds; its records stay on disk. Drain it first, or bind the {to} queue under a new name")
            } else {
                format!("a reload cannot move what the {from} queue holds; stop `dab run` (it drains the queue), then start it with the new bindings, or bind the {to} queue under a new name")
            };
            Diagnostic::new(
                Code::E019,
                span,
                format!("queue `{name}` would switch from {from} to {to} in a running process"),
            )
            .with_label_here(format!("now a {to} queue"))
            .with_help(help)
        };
        out.push(d);
    }
    out
}

/// E027: a pipeline with a window keeps its open windows in this process
/// (and in its checkpoints, under its id and configuration); a reload that
/// rebuilt or removed it would have to hand them over mid-stream, so it is
/// refused and the running set stays. A restart with the new set restores
/// the state when the window and aggregates are unchanged, and otherwise
/// starts it empty (docs/runtime.md, "Windows").
fn window_refusals(old: &Plan, new: &CheckedSet) -> Vec<Diagnostic> {
    let windowed = |p: &Pipeline| {
        p.config
            .stages
            .iter()
            .any(|s| matches!(s, crate::model::Stage::Aggregate(_)))
    };
    let d = diff(old, &new.plan);
    let mut out = Vec::new();
    for (id, reasons) in &d.rebuilt {
        let (Some(o), Some(n)) = (old.pipeline(id), new.plan.pipeline(id)) else {
            continue;
        };
        if windowed(o) || windowed(n) {
            out.push(
                Diagnostic::new(
                    Code::E027,
                    n.span,
                    format!("pipeline `{id}` has a window and would be rebuilt by a reload ({})", reasons.join(", ")),
                )
                .with_label_here("changed while it holds open windows")
                .with_help("its open windows live in the running process; restart `dab run` to apply the change: the state is checkpointed and restored, or starts empty when the window or aggregates changed"),
            );
        }
    }
    for id in &d.removed {
        let Some(o) = old.pipeline(id) else { continue };
        if !windowed(o) {
            continue;
        }
        // Located at the first pipeline of the new set, which is where the
        // change was made as far as a reload can say.
        let Some(span) = new.plan.pipelines.first().map(|p| p.span) else {
            continue;
        };
        out.push(
            Diagnostic::new(
                Code::E027,
                span,
                format!("pipeline `{id}` has a window and would be removed by a reload"),
            )
            .with_label_here("the set no longer has it")
            .with_help("its open windows live in the running process; stop `dab run` (it checkpoints them) before removing the pipeline"),
        );
    }
    out
}

fn storage(e: &Endpoint) -> &'static str {
    match e {
        _ if e.is_memory_queue() => "memory",
        Endpoint::Bound { kind, .. } if kind == "disk" => "disk",
        _ => "Kafka",
    }
}
