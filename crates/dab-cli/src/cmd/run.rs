//! `dab run`: check the set exactly as `dab validate` does, then start it and
//! stop gracefully on SIGTERM or Ctrl-C (a second signal, or the drain
//! deadline, forces the stop). Exits 0 once every source is finite and
//! exhausted and everything is drained; 3 when a stop abandoned events
//! (`crate::args::RUN_EXIT_CODES` lists every status). SIGHUP, and file
//! changes with `--watch`, reload the set (`crate::reload`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dab_plan::{Options, ParseCache};
use dab_runtime::{Registry, RunOptions};

use crate::args::{Format, LogFormat, RunArgs};
use crate::cmd::validate::report_to;
use crate::input::load_and_check_cached;

/// A stop abandoned events (docs/runtime.md, "Exit status").
const EXIT_ABANDONED: u8 = 3;

pub(crate) fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr: stdout may be a data sink (`Stdout`).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

pub fn run(a: RunArgs) -> anyhow::Result<ExitCode> {
    init_logs(a.log_format);
    let options = Options {
        service: a.service.clone(),
        ops: dab_runtime::ops::plan_ops(),
    };
    // Kept for the reloads, which then parse only the files that changed.
    let mut cache = ParseCache::default();
    let set = load_and_check_cached(
        &a.paths,
        a.config.config.as_deref(),
        &a.config,
        &options,
        Some(&mut cache),
    )?;
    if set.has_errors() {
        // Same checks, same words as `dab validate`; nothing starts.
        report_to(&mut std::io::stderr().lock(), &set, Format::Human)?;
        return Ok(ExitCode::from(1));
    }
    for d in &set.diagnostics {
        tracing::warn!("{}", crate::render::render(&set.map, d).trim_end());
    }
    crate::admin::publish_schemas(&set.bindings);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(serve(Arc::new(a), set.plan, cache))
}

/// The state store, when a pipeline that runs here has a window.
fn open_state(
    a: &RunArgs,
    plan: &dab_plan::Plan,
) -> anyhow::Result<Option<dab_runtime::window::StateOptions>> {
    let windowed = plan.pipelines.iter().any(|p| {
        a.service.as_ref().is_none_or(|s| &p.service == s)
            && p.config
                .stages
                .iter()
                .any(|s| matches!(s, dab_plan::model::Stage::Aggregate(_)))
    });
    if !windowed {
        return Ok(None);
    }
    let dir = match &a.state_dir {
        Some(d) => d.clone(),
        None => default_state_dir()?,
    };
    let store = dab_state::StateStore::open(&dir).with_context(|| {
        format!(
            "cannot open the state directory {} (one dab process per directory: pass --state-dir to use another)",
            dir.display()
        )
    })?;
    tracing::info!(dir = %dir.display(), interval = ?a.checkpoint_interval, "window state");
    Ok(Some(dab_runtime::window::StateOptions {
        store,
        interval: a.checkpoint_interval,
        partitioned: a.partition_state,
    }))
}

fn default_state_dir() -> anyhow::Result<std::path::PathBuf> {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return Ok(std::path::PathBuf::from(x).join("dab"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .context("no --state-dir, and neither XDG_STATE_HOME nor HOME is set")?;
    Ok(std::path::PathBuf::from(home).join(".local/state/dab"))
}

async fn serve(
    a: Arc<RunArgs>,
    plan: dab_plan::Plan,
    cache: ParseCache,
) -> anyhow::Result<ExitCode> {
    // `dab run ... | head`: once the reader of stdout is gone, end as
    // SIGPIPE ends a Unix tool, quietly and at once. Nothing unacknowledged
    // is lost by it: sources were not told "delivered" for what is in
    // flight, as after a kill (docs/RELIABILITY.md).
    tokio::spawn(async {
        dab_connectors::stdio::stdout_closed().wait().await;
        tracing::debug!("stdout closed by its reader; exiting");
        std::process::exit(i32::from(crate::EXIT_STDOUT_CLOSED));
    });
    let registry = Registry::new(
        dab_connectors::builtin_sources(),
        dab_connectors::builtin_sinks(),
    )
    .with_tables(dab_connectors::builtin_tables())
    .with_changelogs(dab_connectors::builtin_changelogs());
    let opts = RunOptions {
        service: a.service.clone(),
        channel_batches: usize::from(a.channel_batches),
        max_rss_bytes: a
            .max_memory_mb
            .map_or_else(dab_runtime::default_max_rss, |mb| {
                mb.saturating_mul(1 << 20)
            }),
        reliability: a.reliability,
        state: open_state(&a, &plan)?,
        ..RunOptions::default()
    };
    match opts.max_rss_bytes {
        0 => tracing::info!("admission on memory is off (--max-memory-mb 0)"),
        max => tracing::info!(
            max_memory_mb = max >> 20,
            "sources refuse new work above this resident memory"
        ),
    }
    let running = Arc::new(dab_runtime::start(&plan, &registry, &opts)?);
    if let Some(addr) = &a.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        tracing::info!(%addr, "serving metrics");
        tokio::spawn(crate::admin::serve(listener, running.clone()));
    }
    tracing::info!(pipelines = running.metrics.pipelines.len(), "running");

    // Hot reload: SIGHUP always, file changes with --watch.
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
    crate::reload::hangup(reload_tx.clone());
    let _watcher = if a.watch {
        Some(
            crate::reload::watch(&a, reload_tx.clone())
                .context("cannot watch the blueprint set")?,
        )
    } else {
        None
    };
    drop(reload_tx);
    let reloads = tokio::spawn(crate::reload::serve(
        a.clone(),
        running.clone(),
        reload_rx,
        cache,
    ));

    let deadline = Duration::from_secs(a.shutdown_timeout);
    let signals = {
        let running = running.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("stopping: draining what was read (a second signal forces)");
            running.shutdown();
            tokio::select! {
                _ = wait_for_signal() => tracing::warn!("second signal: forcing stop"),
                _ = tokio::time::sleep(deadline) => tracing::warn!(?deadline, "drain deadline passed: forcing stop"),
            }
            running.force();
            // Whatever still hangs after a grace period is abandoned.
            tokio::time::sleep(Duration::from_secs(5)).await;
            tracing::error!(
                abandoned = running.abandoned(),
                "tasks did not end within 5 s of a forced stop; exiting, abandoning what they hold"
            );
            std::process::exit(i32::from(EXIT_ABANDONED));
        })
    };
    running.wait().await;
    signals.abort();
    reloads.abort();
    let failures = running.failures();
    for f in &failures {
        eprintln!("dab: {f}");
    }
    let abandoned = running.abandoned();
    if abandoned > 0 {
        // Their sources heard "failed" (those that can hear); the rest
        // is lost, and the exit status must say so.
        tracing::error!(
            abandoned,
            places = %running.abandoned_by_place(),
            "stopped with events abandoned; exiting with status 3"
        );
        eprintln!("dab: {abandoned} events abandoned by the stop");
        return Ok(ExitCode::from(EXIT_ABANDONED));
    }
    if failures.is_empty() {
        tracing::info!("all pipelines drained; exiting");
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::from(1))
    }
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
