//! Hot reload for `dab run` (SPEC section 5): `--watch` on the blueprint
//! files and the bindings file, and SIGHUP. Each trigger reads the set
//! again and runs exactly the checks of `dab validate`. An invalid set
//! leaves the running topology untouched: its diagnostics are logged as
//! `dab validate` renders them and `dab_reload_failures_total` goes up. A
//! valid one is applied by `Running::reload`, which rebuilds only the
//! pipelines `dab_plan::diff` says changed.
//!
//! The schema registry beside the bindings (`schemas/`, when it exists at
//! start) is watched too: a registered version edited in place is checked
//! again. Watching is on the directories, not the files: editors that save by
//! writing a new file and renaming it over the old one replace the inode,
//! which a watch on the file itself would lose. Events are debounced: a
//! reload starts once the files have been quiet for `QUIET` (an editor's
//! save in place is several writes), and at most `MAX_WAIT` after the
//! first. A burst made only of files renamed into place (an atomic save:
//! the file is whole the moment it appears) needs only `QUIET_RENAMED`,
//! long enough to take several files renamed one after another as one
//! change.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dab_plan::{Options, ParseCache};
use dab_runtime::Running;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::args::RunArgs;
use crate::input::{bindings_path, blueprint_files, load_and_check_cached};

/// Quiet time that ends a burst of file events.
const QUIET: Duration = Duration::from_millis(15);
/// Quiet time that ends a burst of renames into place only.
const QUIET_RENAMED: Duration = Duration::from_millis(3);
/// A steady stream of events still reloads this often.
const MAX_WAIT: Duration = Duration::from_millis(200);

/// Why a reload was asked for.
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    Watch,
    Hangup,
}

/// The files of the set: blueprints and the bindings file, absolute; the
/// directories to watch; and the schema registry beside the bindings, when
/// it exists (its `*.yaml` files are part of the set too).
fn watched(a: &RunArgs) -> (BTreeSet<PathBuf>, BTreeSet<PathBuf>, Option<PathBuf>) {
    let mut files = BTreeSet::new();
    let mut dirs = BTreeSet::new();
    for p in &a.paths {
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.clone());
        if abs.is_dir() {
            dirs.insert(abs);
        } else {
            if let Some(parent) = abs.parent() {
                dirs.insert(parent.to_path_buf());
            }
            files.insert(abs);
        }
    }
    if let Ok(found) = blueprint_files(&a.paths) {
        for f in found {
            files.insert(std::path::absolute(&f).unwrap_or(f));
        }
    }
    let first = a.paths.first().map_or(Path::new("."), PathBuf::as_path);
    if let Some(b) = bindings_path(first, a.config.config.as_deref(), a.config.no_config) {
        let abs = std::path::absolute(&b).unwrap_or(b);
        let mut registry = None;
        if let Some(parent) = abs.parent() {
            dirs.insert(parent.to_path_buf());
            let reg = parent.join(crate::input::REGISTRY_DIR);
            if reg.is_dir() {
                dirs.insert(reg.clone());
                registry = Some(reg);
            }
        }
        files.insert(abs);
        return (files, dirs, registry);
    }
    (files, dirs, None)
}

/// Whether an event path concerns the set: one of its files, a `.dab`
/// file in a directory given on the command line, or a `.yaml` file of
/// the schema registry.
fn concerns(
    path: &Path,
    files: &BTreeSet<PathBuf>,
    dirs_given: &BTreeSet<PathBuf>,
    registry: Option<&Path>,
) -> bool {
    files.contains(path)
        || (path.extension().is_some_and(|e| e == "dab")
            && dirs_given.iter().any(|d| path.starts_with(d)))
        || (path.extension().is_some_and(|e| e == "yaml")
            && registry.is_some_and(|r| path.starts_with(r)))
}

/// Starts watching; events that concern the set go to `tx` as triggers,
/// debounced. The watcher lives as long as the returned value.
pub fn watch(a: &RunArgs, tx: mpsc::Sender<Trigger>) -> anyhow::Result<notify::RecommendedWatcher> {
    let (files, dirs, registry) = watched(a);
    let given: BTreeSet<PathBuf> = a
        .paths
        .iter()
        .filter(|p| p.is_dir())
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let mut recursive = given.clone();
    recursive.extend(registry.clone());
    // Each event that concerns the set, and whether it is a rename into
    // place (the file complete as it appears).
    let (raw_tx, raw_rx) = std::sync::mpsc::channel::<bool>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        let Ok(ev) = ev else { return };
        if ev.kind.is_access() {
            return;
        }
        if ev
            .paths
            .iter()
            .any(|p| concerns(p, &files, &given, registry.as_deref()))
        {
            let _ = raw_tx.send(renamed_into_place(&ev.kind));
        }
    })?;
    for d in &dirs {
        let mode = if recursive.contains(d) {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        watcher.watch(d, mode)?;
    }
    // Debounce on a plain thread: the watcher's callback must not block.
    std::thread::Builder::new()
        .name("dab-watch".into())
        .spawn(move || {
            while let Ok(renamed) = raw_rx.recv() {
                let first = Instant::now();
                // Only renames so far: every file of the burst is whole.
                let mut only_renames = renamed;
                loop {
                    let quiet = if only_renames { QUIET_RENAMED } else { QUIET };
                    let left = MAX_WAIT.saturating_sub(first.elapsed());
                    match raw_rx.recv_timeout(quiet.min(left)) {
                        Ok(renamed) if !left.is_zero() => only_renames &= renamed,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                        _ => break,
                    }
                }
                if tx.blocking_send(Trigger::Watch).is_err() {
                    return;
                }
            }
        })?;
    tracing::info!(dirs = ?dirs, "watching the blueprint set for changes");
    Ok(watcher)
}

/// Whether an event is a file renamed into place: written elsewhere and
/// then moved over its name, so it is whole as soon as it appears.
fn renamed_into_place(kind: &notify::EventKind) -> bool {
    use notify::event::{ModifyKind, RenameMode};
    matches!(
        kind,
        notify::EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
    )
}

/// Forwards SIGHUP as a trigger.
#[cfg(unix)]
pub fn hangup(tx: mpsc::Sender<Trigger>) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload with --watch instead");
            return;
        };
        while hup.recv().await.is_some() {
            if tx.send(Trigger::Hangup).await.is_err() {
                return;
            }
        }
    });
}

#[cfg(not(unix))]
pub fn hangup(_tx: mpsc::Sender<Trigger>) {}

/// Applies triggers one at a time; triggers that arrive during a reload
/// are folded into the next one.
/// `cache` holds the parse of each file as last checked (by `dab run`'s
/// first check, then by each reload), so a reload parses only the files
/// that changed; everything after parsing still sees the whole set.
pub async fn serve(
    a: Arc<RunArgs>,
    running: Arc<Running>,
    mut rx: mpsc::Receiver<Trigger>,
    mut cache: ParseCache,
) {
    while let Some(trigger) = rx.recv().await {
        while rx.try_recv().is_ok() {}
        // Reading and checking the set is synchronous work (milliseconds
        // per hundred pipelines); keep it off the async workers.
        let (a, running) = (a.clone(), running.clone());
        cache = tokio::task::spawn_blocking(move || {
            reload_once(&a, &running, trigger, &mut cache);
            cache
        })
        .await
        // A reload that panicked takes its cache along: start afresh.
        .unwrap_or_default();
    }
}

fn reload_once(a: &RunArgs, running: &Running, trigger: Trigger, cache: &mut ParseCache) {
    let started = Instant::now();
    let options = Options {
        service: a.service.clone(),
        ops: dab_runtime::ops::plan_ops(),
    };
    let loaded = load_and_check_cached(
        &a.paths,
        a.config.config.as_deref(),
        &a.config,
        &options,
        Some(cache),
    );
    let mut set = match loaded {
        Ok(set) => set,
        Err(e) => {
            tracing::error!(?trigger, error = %format!("{e:#}"), "reload failed: cannot read the set; the running pipelines are unchanged");
            running.metrics.reload.failed.add(1);
            return;
        }
    };
    if !set.has_errors() {
        // What no valid set may do to a running one (E019): refused the
        // same way, and `dab validate --diff` says so too.
        let refused = running.with_plan(|old| {
            old.map(|o| dab_plan::diff::refusals(o, &set))
                .unwrap_or_default()
        });
        set.diagnostics.extend(refused);
    }
    if set.has_errors() {
        for d in &set.diagnostics {
            let text = crate::render::render(&set.map, d);
            if d.is_error() {
                tracing::error!("{}", text.trim_end());
            } else {
                tracing::warn!("{}", text.trim_end());
            }
        }
        tracing::error!(
            ?trigger,
            errors = set.diagnostics.iter().filter(|d| d.is_error()).count(),
            "reload refused: the set is invalid; the running pipelines are unchanged"
        );
        // Counted once the log says why, so a scrape never runs ahead of it.
        running.metrics.reload.failed.add(1);
        return;
    }
    match running.reload_owned(set.plan) {
        Ok(r) => {
            crate::admin::publish_schemas(&set.bindings);
            // The whole reload, reading and checking the files included.
            running.metrics.reload.last_duration_us.store(
                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
            let rebuilt: Vec<String> = r
                .rebuilt
                .iter()
                .map(|(id, why)| format!("{id} ({})", why.join("; ")))
                .collect();
            tracing::info!(
                ?trigger,
                added = ?r.added,
                rebuilt = ?rebuilt,
                removed = ?r.removed,
                kept = r.kept.len(),
                ms = started.elapsed().as_secs_f64() * 1e3,
                "reloaded"
            );
        }
        Err(e) => {
            tracing::error!(?trigger, error = %e, "reload rolled back: a new piece could not be built; the running pipelines are unchanged");
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, ModifyKind, RenameMode};
    use notify::EventKind;

    use super::renamed_into_place;

    #[test]
    fn only_a_rename_onto_the_name_counts_as_whole() {
        for (kind, whole) in [
            (EventKind::Modify(ModifyKind::Name(RenameMode::To)), true),
            (EventKind::Modify(ModifyKind::Name(RenameMode::Both)), true),
            (EventKind::Modify(ModifyKind::Name(RenameMode::From)), false),
            (
                EventKind::Modify(ModifyKind::Data(DataChange::Content)),
                false,
            ),
            (EventKind::Create(CreateKind::File), false),
            (EventKind::Modify(ModifyKind::Any), false),
        ] {
            assert_eq!(renamed_into_place(&kind), whole, "{kind:?}");
        }
    }
}
