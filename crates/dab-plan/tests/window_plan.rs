//! `Window(...).Aggregate(...)` as the planner hands it to the runtime:
//! one `Stage::Aggregate` holding exactly what was written (SPEC section 9).

use std::time::Duration;

use dab_diag::SourceMap;
use dab_plan::bindings::load_bindings;
use dab_plan::model::{
    AggFn, CmpOp, Field, Operand, Predicate, Stage, TimeBase, Value, WindowKind, DEFAULT_IDLE,
    DEFAULT_MAX_GROUPS,
};
use dab_plan::{parse_and_plan, Plan};

fn plan(blueprint: &str) -> Plan {
    let mut map = SourceMap::new();
    map.add("t.dab", blueprint.to_owned());
    let yaml = "queues:\n  Late: { kind: memory }\ntypes:\n  ApiCall: { version: 1, fields: { method: string, ok: bool, ms: float64 } }\n";
    let (bindings, diags) = load_bindings(&mut map, "dab.yaml", yaml.to_owned(), &|_| None, &|p| {
        std::fs::read(p)
    });
    assert!(diags.is_empty(), "{diags:?}");
    let (plan, diags) = parse_and_plan(&map, &bindings, &dab_runtime::ops::plan_options());
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
    plan
}

fn windowed(plan: &Plan, id: &str) -> dab_plan::model::Windowed {
    let p = plan.pipeline(id).expect("pipeline");
    match p.config.stages.last() {
        Some(Stage::Aggregate(w)) => (**w).clone(),
        other => panic!("not an aggregate stage: {other:?}"),
    }
}

#[test]
fn the_spec_example_becomes_one_stage_with_every_setting() {
    let plan = plan(
        "s.NewPipeline().In(Stdin).FilterType(ApiCall).\
         Window(tumbling = 1m, lateness = 10s, late = Late, early = 5s, max_groups = 7).\
         Aggregate(by = [tags.team, fields.method], as = \"ApiStats\", calls = Count(), \
         errors = Count(!fields.ok), p = Percentile(fields.ms, 0.5, 0.99), hosts = Distinct(host)).\
         Out(Stdout)\n\
         l.NewPipeline().In(Late).Out(Blackhole)\n",
    );
    let w = windowed(&plan, "s");
    assert_eq!(
        w.window.kind,
        WindowKind::Tumbling {
            size: Duration::from_secs(60)
        }
    );
    assert_eq!(w.window.time, TimeBase::Event);
    assert_eq!(w.window.lateness, Duration::from_secs(10));
    assert_eq!(w.window.late.as_deref(), Some("Late"));
    assert_eq!(w.window.early, Some(Duration::from_secs(5)));
    assert_eq!(w.window.max_groups, 7);
    assert_eq!(w.window.idle, DEFAULT_IDLE);
    assert_eq!(w.aggregate.result_type, "ApiStats");
    assert_eq!(
        w.aggregate.by,
        vec![
            ("team".to_owned(), Operand::Tag("team".into())),
            ("method".to_owned(), Operand::Payload(vec!["method".into()])),
        ]
    );
    let not_ok = Predicate::Not(Box::new(Predicate::Compare {
        lhs: Operand::Payload(vec!["ok".into()]),
        op: CmpOp::Eq,
        rhs: Operand::Value(Value::Bool(true)),
    }));
    assert_eq!(
        w.aggregate.aggregates,
        vec![
            ("calls".to_owned(), AggFn::Count(None)),
            ("errors".to_owned(), AggFn::Count(Some(not_ok))),
            (
                "p".to_owned(),
                AggFn::Percentile(Operand::Payload(vec!["ms".into()]), vec![0.5, 0.99])
            ),
            (
                "hosts".to_owned(),
                AggFn::Distinct(Operand::Field(Field::Host))
            ),
        ]
    );
    // `late` is written: the graph has the edge, like an output's.
    assert!(plan.endpoints.contains_key("Late"));
}

#[test]
fn sliding_and_session_windows_and_the_defaults() {
    let plan = plan(
        "a.NewPipeline().In(Generator).Window(sliding = 10m, every = 1m, time = arrival).\
         Aggregate(by = host, as = A, n = Count()).Out(Blackhole)\n\
         b.NewPipeline().In(Generator).Window(session = 30s, idle = 2s).\
         Aggregate(as = B, s = Sum(offset), lo = Min(pid), f = First(message)).Out(Blackhole)\n",
    );
    let a = windowed(&plan, "a");
    assert_eq!(
        a.window.kind,
        WindowKind::Sliding {
            size: Duration::from_secs(600),
            every: Duration::from_secs(60)
        }
    );
    assert_eq!(a.window.time, TimeBase::Arrival);
    assert_eq!(a.window.lateness, Duration::ZERO);
    assert_eq!(a.window.late, None);
    assert_eq!(a.window.max_groups, DEFAULT_MAX_GROUPS);
    assert_eq!(
        a.aggregate.by,
        vec![("host".to_owned(), Operand::Field(Field::Host))]
    );
    let b = windowed(&plan, "b");
    assert_eq!(
        b.window.kind,
        WindowKind::Session {
            gap: Duration::from_secs(30)
        }
    );
    assert_eq!(b.window.idle, Duration::from_secs(2));
    assert!(b.aggregate.by.is_empty());
    assert_eq!(
        b.aggregate.aggregates,
        vec![
            ("s".to_owned(), AggFn::Sum(Operand::Field(Field::Offset))),
            ("lo".to_owned(), AggFn::Min(Operand::Field(Field::Pid))),
            ("f".to_owned(), AggFn::First(Operand::Field(Field::Message))),
        ]
    );
}
