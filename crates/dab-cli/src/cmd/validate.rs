//! `dab validate`: report every problem of a blueprint set, or the reload
//! plan between two sets with `--diff`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use dab_diag::{counts, to_json};
use dab_plan::{diff, CheckedSet, Options};

use crate::args::{Format, ValidateArgs};
use crate::input::load_and_check;
use crate::render::{render, summary};

pub fn run(a: ValidateArgs) -> anyhow::Result<ExitCode> {
    let options = Options {
        service: a.service.clone(),
        ops: dab_runtime::ops::plan_ops(),
    };
    if let Some(pair) = &a.diff {
        return run_diff(&a, pair, &options);
    }
    let set = load_and_check(&a.paths, a.config.config.as_deref(), &a.config, &options)?;
    if let Some(s) = &a.service {
        if !set.plan.services().contains(&s.as_str()) && !set.has_errors() {
            anyhow::bail!("no pipeline of service `{s}` in this blueprint set");
        }
    }
    report(&set, a.format)?;
    let (errors, warnings) = counts(&set.diagnostics);
    Ok(if errors > 0 || (a.deny_warnings && warnings > 0) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints the diagnostics (human or JSON) and the summary on stdout.
pub fn report(set: &CheckedSet, format: Format) -> anyhow::Result<()> {
    report_to(&mut std::io::stdout().lock(), set, format)
}

pub fn report_to(
    out: &mut dyn std::io::Write,
    set: &CheckedSet,
    format: Format,
) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            let json = serde_json::to_string_pretty(&to_json(&set.map, &set.diagnostics))
                .context("cannot encode the report as JSON")?;
            writeln!(out, "{json}")?;
        }
        Format::Human => {
            for d in &set.diagnostics {
                writeln!(out, "{}", render(&set.map, d))?;
            }
            let (errors, warnings) = counts(&set.diagnostics);
            let files = set
                .map
                .files()
                .filter(|(id, _)| Some(*id) != set.bindings.file)
                .count();
            writeln!(
                out,
                "{}",
                summary(errors, warnings, set.plan.pipelines.len(), files)
            )?;
        }
    }
    Ok(())
}

fn run_diff(a: &ValidateArgs, pair: &[PathBuf], options: &Options) -> anyhow::Result<ExitCode> {
    let [old_path, new_path] = pair else {
        anyhow::bail!("--diff takes two paths: OLD NEW");
    };
    let old = load_and_check(
        std::slice::from_ref(old_path),
        a.old_config.as_deref(),
        &a.config,
        options,
    )?;
    let new = load_and_check(
        std::slice::from_ref(new_path),
        a.new_config.as_deref(),
        &a.config,
        options,
    )?;
    let mut failed = false;
    for set in [&old, &new] {
        if set.has_errors() {
            failed = true;
            report(set, a.format)?;
        }
    }
    if failed {
        return Ok(ExitCode::from(1));
    }
    let refused = dab_plan::diff::refusals(&old.plan, &new);
    if !refused.is_empty() {
        let mut new = new;
        new.diagnostics = refused;
        report(&new, a.format)?;
        return Ok(ExitCode::from(1));
    }
    let plan = diff(&old.plan, &new.plan);
    let mut out = std::io::stdout().lock();
    match a.format {
        Format::Json => {
            let rebuilt: Vec<_> = plan
                .rebuilt
                .iter()
                .map(|(id, reasons)| serde_json::json!({"id": id, "reasons": reasons}))
                .collect();
            let json = serde_json::json!({
                "added": plan.added,
                "rebuilt": rebuilt,
                "removed": plan.removed,
                "unchanged": plan.unchanged,
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
        }
        Format::Human => {
            writeln!(
                out,
                "reload plan: {} added, {} rebuilt, {} removed, {} unchanged",
                plan.added.len(),
                plan.rebuilt.len(),
                plan.removed.len(),
                plan.unchanged.len()
            )?;
            for id in &plan.added {
                writeln!(out, "  + added      {id}")?;
            }
            for (id, reasons) in &plan.rebuilt {
                writeln!(out, "  ~ rebuilt    {id} ({})", reasons.join("; "))?;
            }
            for id in &plan.removed {
                writeln!(out, "  - removed    {id}")?;
            }
            for id in &plan.unchanged {
                writeln!(out, "  = unchanged  {id}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
