//! Blueprint text: the pest parser and every check after it (names, ops,
//! expressions, cycles, the plan), against a fixed bindings file that binds
//! a source, a sink, a queue and two types, so that planning goes deep.
#![no_main]

use dab_plan::{check_set, SourceSet};
use libfuzzer_sys::fuzz_target;

const BINDINGS: &str = "\
sources:\n  In: { kind: tcp, listen: \"127.0.0.1:9000\" }\n\
sinks:\n  Out: { kind: blackhole }\n\
queues:\n  Q: { kind: memory }\n\
types:\n  A: {}\n  B: {}\n";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let set = SourceSet {
        blueprints: vec![("f.dab".to_owned(), text)],
        bindings: Some(("dab.yaml".to_owned(), BINDINGS.to_owned())),
    };
    let _ = check_set(
        set,
        &|_| None,
        &|_| Err(std::io::Error::other("the fuzz target reads no files")),
        &dab_runtime::ops::plan_options(),
    );
});
