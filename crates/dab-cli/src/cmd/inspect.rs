//! `dab inspect`: the reliability score table; being built (issue 4).

use std::process::ExitCode;

use crate::args::InspectArgs;

pub fn run(_a: InspectArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("dab inspect is not built yet")
}
