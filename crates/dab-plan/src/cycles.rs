//! E012: cycles through queues. Pipelines are nodes; a queue written by one
//! pipeline and read by another is an edge. Each strongly connected component
//! with a loop is reported once, with the whole cycle spelled out.

use std::collections::HashMap;

use dab_diag::{Code, Diagnostic, Span};
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::names::Uses;

/// A pipeline as the cycle check sees it.
pub(crate) struct Member<'a> {
    pub id: &'a str,
    pub head: Span,
}

pub(crate) fn check_cycles(
    members: &[Member<'_>],
    uses: &[(String, Uses)],
    is_queue: impl Fn(&str) -> bool,
    diags: &mut Vec<Diagnostic>,
) {
    let mut g: DiGraph<usize, (usize, Span)> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..members.len()).map(|i| g.add_node(i)).collect();
    for (qi, (name, u)) in uses.iter().enumerate() {
        if !is_queue(name) {
            continue;
        }
        for &(w, span) in &u.writes {
            for &(r, _) in &u.reads {
                g.add_edge(nodes[w], nodes[r], (qi, span));
            }
        }
    }
    for scc in tarjan_scc(&g) {
        let looped = scc.len() > 1 || g.edges_connecting(scc[0], scc[0]).next().is_some();
        if !looped {
            continue;
        }
        let Some(&start) = scc.iter().min_by_key(|n| g[**n]) else {
            continue;
        };
        let path = find_cycle(&g, start, &scc);
        let mut text = members[g[start]].id.to_owned();
        let mut d_labels = Vec::new();
        for &(from, to, q, span) in &path {
            text.push_str(&format!(" -> {} -> {}", uses[q].0, members[g[to]].id));
            d_labels.push((
                span,
                format!(
                    "`{}` writes `{}`, read by `{}`",
                    members[g[from]].id, uses[q].0, members[g[to]].id
                ),
            ));
        }
        let mut d = Diagnostic::new(
            Code::E012,
            members[g[start]].head,
            format!("cycle through queues: {text}"),
        )
        .with_label_here("this pipeline's events come back to it");
        for (span, msg) in d_labels {
            d = d.with_label(span, msg);
        }
        diags.push(d.with_help(
            "events would loop forever; break the cycle by writing one of these to a sink or another queue",
        ));
    }
}

/// A shortest cycle from `start` back to it inside its component, as
/// (from, to, queue, span of the write) steps.
fn find_cycle(
    g: &DiGraph<usize, (usize, Span)>,
    start: NodeIndex,
    scc: &[NodeIndex],
) -> Vec<(NodeIndex, NodeIndex, usize, Span)> {
    // Breadth-first, so the spelled-out cycle is as short as it can be.
    let mut prev: HashMap<NodeIndex, (NodeIndex, usize, Span)> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        let mut edges: Vec<_> = g.edges(n).collect();
        edges.sort_by_key(|e| (g[e.target()], e.weight().0));
        for e in edges {
            let t = e.target();
            if !scc.contains(&t) {
                continue;
            }
            let (q, span) = *e.weight();
            if t == start {
                let mut path = vec![(n, t, q, span)];
                let mut cur = n;
                while cur != start {
                    let Some(&(p, pq, ps)) = prev.get(&cur) else {
                        break;
                    };
                    path.push((p, cur, pq, ps));
                    cur = p;
                }
                path.reverse();
                return path;
            }
            if let std::collections::hash_map::Entry::Vacant(v) = prev.entry(t) {
                v.insert((n, q, span));
                queue.push_back(t);
            }
        }
    }
    Vec::new()
}
