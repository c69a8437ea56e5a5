//! `Join(Stream, ...)` as the planner hands it to the runtime (SPEC
//! section 9): one `Stage::Join` with what was written and the defaults,
//! the stream among the pipeline's reads, a `join` edge in the graph, and
//! `on` checked against the left side's schema like `Enrich`'s.

use std::time::Duration;

use dab_diag::{Code, Diagnostic, SourceMap};
use dab_plan::bindings::load_bindings;
use dab_plan::graph::{Edge, Node};
use dab_plan::model::{Join, Miss, Operand, Stage, DEFAULT_IDLE, DEFAULT_JOIN_MAX_BUFFERED};
use dab_plan::{parse_and_plan, Plan};

fn plan(blueprint: &str) -> (Plan, Vec<Diagnostic>) {
    let mut map = SourceMap::new();
    map.add("t.dab", blueprint.to_owned());
    let yaml = "types:\n  View: { version: 1, fields: { rid: string, ok: bool } }\n";
    let (bindings, diags) = load_bindings(&mut map, "dab.yaml", yaml.to_owned(), &|_| None, &|p| {
        std::fs::read(p)
    });
    assert!(diags.is_empty(), "{diags:?}");
    parse_and_plan(&map, &bindings, &dab_runtime::ops::plan_options())
}

fn join_of(plan: &Plan, id: &str) -> Join {
    let p = plan.pipeline(id).expect("pipeline");
    p.config.join().cloned().expect("a join stage")
}

#[test]
fn a_join_is_one_stage_with_its_settings_and_defaults() {
    let (plan, diags) = plan(
        "v.NewPipeline().In(Stdin).Join(Clicks, on = tags.rid, within = 30s, into = \"click\").Out(Stdout)\n\
         w.NewPipeline().In(Stdin).Join(Clicks, on = host, within = 2s, into = \"c\", miss = drop, \
           lateness = 0s, max_buffered = 5, idle = 1m).Out(Stdout)\n\
         c.NewPipeline().In(Generator).Out(Clicks)\n",
    );
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
    assert_eq!(
        join_of(&plan, "v"),
        Join {
            stream: "Clicks".into(),
            on: Operand::Tag("rid".into()),
            within: Duration::from_secs(30),
            into: "click".into(),
            miss: Miss::Keep,
            lateness: Duration::from_secs(30),
            max_buffered: DEFAULT_JOIN_MAX_BUFFERED,
            idle: DEFAULT_IDLE,
        }
    );
    let w = join_of(&plan, "w");
    assert_eq!(
        (w.miss, w.lateness, w.max_buffered, w.idle),
        (Miss::Drop, Duration::ZERO, 5, Duration::from_secs(60))
    );
    let reads: Vec<&str> = plan.pipeline("v").expect("v").config.reads().collect();
    assert_eq!(reads, ["Stdin", "Clicks"]);
}

#[test]
fn the_graph_draws_the_stream_into_the_join_stage() {
    let (plan, _) = plan(
        "v.NewPipeline().In(Stdin).Join(Clicks, on = host, within = 1s, into = \"c\").Out(Stdout)\n\
         c.NewPipeline().In(Generator).Out(Clicks)\n",
    );
    let g = &plan.graph;
    let joins: Vec<_> = g
        .edge_indices()
        .filter(|e| g[*e] == Edge::Join)
        .filter_map(|e| g.edge_endpoints(e))
        .collect();
    assert_eq!(joins.len(), 1);
    let (from, to) = joins[0];
    assert_eq!(g[from], Node::Queue("Clicks".into()));
    assert!(
        matches!(&g[to], Node::Stage { pipeline, label } if pipeline == "v" && label.starts_with("Join(Clicks"))
    );
    let dot = dab_plan::graph::to_dot(g);
    assert!(dot.contains("label=\"join\""), "{dot}");
}

#[test]
fn on_is_checked_against_the_left_schema() {
    let (_, diags) = plan(
        "v.NewPipeline().In(Stdin).FilterType(View).Join(Clicks, on = fields.rdi, within = 1s, into = \"c\").\
           Filter(fields.c.anything == 1).Out(Stdout)\n\
         w.NewPipeline().In(Stdin).FilterType(View).Join(Clicks, on = fields.ok, within = 1s, into = \"c\").Out(Stdout)\n\
         c.NewPipeline().In(Generator).Out(Clicks)\n",
    );
    let e008: Vec<&Diagnostic> = diags.iter().filter(|d| d.code == Code::E008).collect();
    assert_eq!(e008.len(), 2, "{diags:?}");
    assert!(e008[0].message.contains("rdi"), "{}", e008[0].message);
    assert!(e008[0].help.as_deref().unwrap_or("").contains("rid"));
    assert!(
        e008[1].message.contains("string or a number"),
        "{}",
        e008[1].message
    );
    // What the match added under `into` is in no schema: not checked.
    assert!(!diags.iter().any(|d| d.message.contains("anything")));
}

#[test]
fn a_stage_after_the_join_is_a_stage_of_the_pipeline() {
    let (plan, diags) = plan(
        "v.NewPipeline().In(Stdin).FilterType(View).Join(Clicks, on = fields.rid, within = 1s, into = \"c\").\
           SetTag(joined = \"yes\").Out(Stdout)\n\
         c.NewPipeline().In(Generator).Out(Clicks)\n",
    );
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
    let stages = &plan.pipeline("v").expect("v").config.stages;
    assert!(matches!(stages[1], Stage::Join(_)));
    assert!(stages[2]
        .op_config::<dab_runtime::ops::set_tag::Config>()
        .is_some());
}
