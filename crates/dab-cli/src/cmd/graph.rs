//! `dab graph`: the checked DAG as Graphviz dot or Mermaid on stdout.

use std::io::Write as _;
use std::process::ExitCode;

use dab_plan::graph::{to_dot, to_mermaid};

use crate::args::{Format, GraphArgs, GraphFormat};
use crate::cmd::validate::report_to;
use crate::input::load_and_check;

pub fn run(a: GraphArgs) -> anyhow::Result<ExitCode> {
    let set = load_and_check(
        &a.paths,
        a.config.config.as_deref(),
        &a.config,
        &dab_runtime::ops::plan_options(),
    )?;
    if set.has_errors() {
        // The graph of an invalid set would be a guess: show why instead.
        report_to(&mut std::io::stderr().lock(), &set, Format::Human)?;
        return Ok(ExitCode::from(1));
    }
    let text = match a.format {
        GraphFormat::Dot => to_dot(&set.plan.graph),
        GraphFormat::Mermaid => to_mermaid(&set.plan.graph),
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}
