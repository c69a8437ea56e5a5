//! `dab schema check`: the schema findings of a set, alone: every version
//! in the registry (`schemas/<Type>/v<N>.yaml` beside the bindings) against
//! every earlier one, and every type the bindings declare against the
//! registered versions (E020-E025), plus any problem inside a registry
//! file. `dab validate` reports the same among everything else.

use std::process::ExitCode;

use dab_diag::{counts, Code, Diagnostic};
use dab_plan::CheckedSet;

use crate::args::SchemaCheckArgs;
use crate::cmd::validate::report;
use crate::input::{load_and_check, REGISTRY_DIR};

const SCHEMA_CODES: [Code; 6] = [
    Code::E020,
    Code::E021,
    Code::E022,
    Code::E023,
    Code::E024,
    Code::E025,
];

pub fn check(a: SchemaCheckArgs) -> anyhow::Result<ExitCode> {
    let mut set = load_and_check(
        &a.paths,
        a.config.config.as_deref(),
        &a.config,
        &dab_runtime::ops::plan_options(),
    )?;
    let keep: Vec<Diagnostic> = set
        .diagnostics
        .iter()
        .filter(|d| is_schema_finding(&set, d))
        .cloned()
        .collect();
    set.diagnostics = keep;
    report(&set, a.format)?;
    let (errors, _) = counts(&set.diagnostics);
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn is_schema_finding(set: &CheckedSet, d: &Diagnostic) -> bool {
    if SCHEMA_CODES.contains(&d.code) {
        return true;
    }
    // Any problem inside a registry file (E015: a bad type, a bad file).
    set.map.get(d.span.file).is_some_and(|f| {
        std::path::Path::new(&f.name)
            .components()
            .any(|c| c.as_os_str() == REGISTRY_DIR)
    })
}
