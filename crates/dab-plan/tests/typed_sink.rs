//! A sink typed by a schema (`kind: parquet`): the planner resolves its
//! `type` into the endpoint, so a changed schema is a changed binding and
//! a reload rebuilds the sink.

use dab_diag::SourceMap;
use dab_plan::bindings::load_bindings;
use dab_plan::model::Endpoint;
use dab_plan::{diff, parse_and_plan, Plan};

fn plan(fields: &str) -> Plan {
    let mut map = SourceMap::new();
    map.add("t.dab", "p.NewPipeline().In(Stdin).Out(W)\n".to_owned());
    let yaml = format!(
        "types:\n  A: {{ version: 1, fields: {fields} }}\nsinks:\n  W: {{ kind: parquet, path: out, type: A }}\n"
    );
    let (bindings, diags) =
        load_bindings(&mut map, "dab.yaml", yaml, &|_| None, &|p| std::fs::read(p));
    assert!(diags.is_empty(), "{diags:?}");
    let (plan, diags) = parse_and_plan(&map, &bindings, &dab_runtime::ops::plan_options());
    assert!(diags.is_empty(), "{diags:?}");
    plan
}

#[test]
fn the_endpoint_carries_the_schema_and_a_changed_schema_rebuilds() {
    let old = plan("{ a: int64 }");
    let Some(Endpoint::Bound {
        schema: Some(s), ..
    }) = old.endpoints.get("W")
    else {
        panic!("W has no schema: {:?}", old.endpoints.get("W"));
    };
    assert_eq!(s.fields.len(), 1);
    assert!(diff(&old, &plan("{ a: int64 }")).is_noop());
    let changed = diff(&old, &plan("{ a: int64, b: string? }"));
    assert_eq!(
        changed.rebuilt,
        vec![("p".to_owned(), vec!["binding `W` changed".to_owned()])]
    );
}
