//! The plan as a petgraph DAG (sources, stages, sinks, queues) and its
//! renderings for `dab graph`: Graphviz dot and Mermaid.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::model::{Endpoint, Pipeline, Role};

#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Source(String),
    Sink(String),
    Queue(String),
    /// A table `Enrich` looks rows up in (`tables:`).
    Table(String),
    /// A stage of a pipeline; `pass` when the pipeline has none.
    Stage {
        pipeline: String,
        label: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edge {
    Flow,
    /// Excess events of a rate limit with `on_limit = overflow`.
    Overflow,
    /// Events that came after their window closed (`Window(late = Name)`).
    Late,
    /// Events a `Route` takes; labelled with its condition.
    Route(String),
    /// Rows of a table into the `Enrich` stage that reads it.
    Table,
    /// The second input of a `Join` into its stage.
    Join,
}

/// The side edge of a stage that sends some events elsewhere.
fn side_edge(s: &crate::model::Stage) -> Edge {
    match s {
        crate::model::Stage::Aggregate(_) => Edge::Late,
        crate::model::Stage::Op(o) => match o.config().side_output().and_then(|s| s.condition) {
            Some(condition) => Edge::Route(condition),
            None => Edge::Overflow,
        },
        _ => Edge::Overflow,
    }
}

pub type Dag = DiGraph<Node, Edge>;

pub(crate) fn build(pipelines: &[Pipeline], endpoints: &BTreeMap<String, Endpoint>) -> Dag {
    let mut g = Dag::new();
    let mut named: BTreeMap<String, NodeIndex> = BTreeMap::new();
    let mut name_node = |g: &mut Dag, name: &str| -> NodeIndex {
        *named.entry(name.to_owned()).or_insert_with(|| {
            let node = match endpoints.get(name).map(Endpoint::role) {
                Some(Role::Source) => Node::Source(name.to_owned()),
                Some(Role::Sink) => Node::Sink(name.to_owned()),
                _ => Node::Queue(name.to_owned()),
            };
            g.add_node(node)
        })
    };
    let mut tables: BTreeMap<String, NodeIndex> = BTreeMap::new();
    for p in pipelines {
        let c = &p.config;
        let mut prev = name_node(&mut g, &c.input);
        let stage_node = |g: &mut Dag, label: String| {
            g.add_node(Node::Stage {
                pipeline: p.id.clone(),
                label,
            })
        };
        let has_modifiers = c.outputs.iter().any(|o| !o.modifiers.is_empty());
        if c.stages.is_empty() && !has_modifiers {
            let n = stage_node(&mut g, "pass".to_owned());
            g.add_edge(prev, n, Edge::Flow);
            prev = n;
        }
        for s in &c.stages {
            let n = stage_node(&mut g, s.label());
            g.add_edge(prev, n, Edge::Flow);
            if let Some(table) = s.table() {
                let t = *tables
                    .entry(table.to_owned())
                    .or_insert_with(|| g.add_node(Node::Table(table.to_owned())));
                g.add_edge(t, n, Edge::Table);
            }
            if let Some(stream) = s.join_stream() {
                let from = name_node(&mut g, stream);
                g.add_edge(from, n, Edge::Join);
            }
            if let Some(t) = s.overflow_target() {
                let t = name_node(&mut g, t);
                g.add_edge(n, t, side_edge(s));
            }
            prev = n;
        }
        for o in &c.outputs {
            let mut last = prev;
            for m in &o.modifiers {
                let n = stage_node(&mut g, m.label());
                g.add_edge(last, n, Edge::Flow);
                if let Some(t) = m.overflow_target() {
                    let t = name_node(&mut g, t);
                    g.add_edge(n, t, Edge::Overflow);
                }
                last = n;
            }
            let t = name_node(&mut g, &o.target);
            g.add_edge(last, t, Edge::Flow);
        }
    }
    g
}

fn node_id(i: NodeIndex) -> String {
    format!("n{}", i.index())
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Graphviz: sources, queues and sinks as shapes, one cluster per pipeline.
pub fn to_dot(g: &Dag) -> String {
    let mut out = String::from(
        "digraph dab {\n  rankdir=LR;\n  graph [fontname=\"Helvetica\", fontsize=12];\n  node [fontname=\"Helvetica\", fontsize=11];\n  edge [color=\"#555555\"];\n",
    );
    let mut clusters: BTreeMap<&str, Vec<NodeIndex>> = BTreeMap::new();
    for i in g.node_indices() {
        match &g[i] {
            Node::Source(n) => {
                let _ = writeln!(
                    out,
                    "  {} [label=\"{}\", shape=invhouse, style=filled, fillcolor=\"#d8f0d8\"];",
                    node_id(i),
                    escape(n)
                );
            }
            Node::Sink(n) => {
                let _ = writeln!(
                    out,
                    "  {} [label=\"{}\", shape=house, style=filled, fillcolor=\"#f0d8d8\"];",
                    node_id(i),
                    escape(n)
                );
            }
            Node::Queue(n) => {
                let _ = writeln!(
                    out,
                    "  {} [label=\"{}\", shape=cylinder, style=filled, fillcolor=\"#d8e4f0\"];",
                    node_id(i),
                    escape(n)
                );
            }
            Node::Table(n) => {
                let _ = writeln!(
                    out,
                    "  {} [label=\"{}\", shape=note, style=filled, fillcolor=\"#f0ecd8\"];",
                    node_id(i),
                    escape(n)
                );
            }
            Node::Stage { pipeline, .. } => clusters.entry(pipeline).or_default().push(i),
        }
    }
    for (ci, (pipeline, nodes)) in clusters.iter().enumerate() {
        let _ = writeln!(
            out,
            "  subgraph cluster_{ci} {{\n    label=\"{}\";\n    style=rounded;",
            escape(pipeline)
        );
        for &i in nodes {
            if let Node::Stage { label, .. } = &g[i] {
                let _ = writeln!(
                    out,
                    "    {} [label=\"{}\", shape=box];",
                    node_id(i),
                    escape(label)
                );
            }
        }
        out.push_str("  }\n");
    }
    for e in g.edge_references() {
        let style = match e.weight() {
            Edge::Flow => String::new(),
            Edge::Overflow => " [style=dashed, label=\"overflow\"]".to_owned(),
            Edge::Late => " [style=dashed, label=\"late\"]".to_owned(),
            Edge::Route(cond) => format!(" [label=\"{}\"]", escape(cond)),
            Edge::Table => " [style=dotted, label=\"table\"]".to_owned(),
            Edge::Join => " [style=bold, label=\"join\"]".to_owned(),
        };
        let _ = writeln!(
            out,
            "  {} -> {}{};",
            node_id(e.source()),
            node_id(e.target()),
            style
        );
    }
    out.push_str("}\n");
    out
}

/// Mermaid flowchart, for Markdown renderers.
pub fn to_mermaid(g: &Dag) -> String {
    let mut out = String::from("flowchart LR\n");
    let mut clusters: BTreeMap<&str, Vec<NodeIndex>> = BTreeMap::new();
    let m = |s: &str| s.replace('"', "#quot;");
    for i in g.node_indices() {
        match &g[i] {
            Node::Source(n) => {
                let _ = writeln!(out, "  {}[/\"{}\"/]", node_id(i), m(n));
            }
            Node::Sink(n) => {
                let _ = writeln!(out, "  {}[\\\"{}\"\\]", node_id(i), m(n));
            }
            Node::Queue(n) => {
                let _ = writeln!(out, "  {}[(\"{}\")]", node_id(i), m(n));
            }
            Node::Table(n) => {
                let _ = writeln!(out, "  {}[[\"{}\"]]", node_id(i), m(n));
            }
            Node::Stage { pipeline, .. } => clusters.entry(pipeline).or_default().push(i),
        }
    }
    for (ci, (pipeline, nodes)) in clusters.iter().enumerate() {
        let _ = writeln!(out, "  subgraph p{ci}[\"{}\"]", m(pipeline));
        for &i in nodes {
            if let Node::Stage { label, .. } = &g[i] {
                let _ = writeln!(out, "    {}[\"{}\"]", node_id(i), m(label));
            }
        }
        out.push_str("  end\n");
    }
    for e in g.edge_references() {
        let arrow = match e.weight() {
            Edge::Flow => "-->".to_owned(),
            Edge::Overflow => "-. overflow .->".to_owned(),
            Edge::Late => "-. late .->".to_owned(),
            Edge::Route(cond) => format!("-- \"{}\" -->", m(cond)),
            Edge::Table => "-. table .->".to_owned(),
            Edge::Join => "== join ==>".to_owned(),
        };
        let _ = writeln!(
            out,
            "  {} {} {}",
            node_id(e.source()),
            arrow,
            node_id(e.target())
        );
    }
    out
}
