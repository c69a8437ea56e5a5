//! What `/readyz` answers (SPEC sections 5 and 11): ready only while
//! every source serves, no pipeline, sink or router task has died, every
//! sink's circuit breaker is closed and the process is not draining.
//! `Health` keeps the two facts the metrics do not: sources that ended
//! with an error and tasks that panicked; `Running::readiness` adds the
//! breakers and the drain.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use dab_api::connector::SourceStats;
use tokio_util::task::TaskTracker;

/// Why the process is not ready, one line per reason; empty when ready.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readiness {
    pub reasons: Vec<String>,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.reasons.is_empty()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Sources (by input key) that ended with an error, with it.
    not_serving: Mutex<BTreeMap<String, String>>,
    /// Running sources that announce when they serve
    /// (`Source::announces_serving`), with their stats, where they do.
    announcing: Mutex<BTreeMap<String, Arc<SourceStats>>>,
    /// Tasks that panicked, as "pipeline `p`", "sink `S`", "router of `X`".
    died: Mutex<Vec<String>>,
}

impl Health {
    pub(crate) fn source_failed(&self, key: &str, error: String) {
        if let Ok(mut m) = self.not_serving.lock() {
            m.insert(key.to_owned(), error);
        }
    }

    /// A source (re)started under `key`, or was retired by a reload: an
    /// old failure of that key no longer says anything.
    pub(crate) fn source_cleared(&self, key: &str) {
        if let Ok(mut m) = self.not_serving.lock() {
            m.remove(key);
        }
        if let Ok(mut m) = self.announcing.lock() {
            m.remove(key);
        }
    }

    /// A source starts that will say when it serves.
    pub(crate) fn source_announcing(&self, key: &str, stats: Arc<SourceStats>) {
        if let Ok(mut m) = self.announcing.lock() {
            m.insert(key.to_owned(), stats);
        }
    }

    /// A source's task ended: whether it serves is no longer asked (unless
    /// a newer source runs under the same key).
    pub(crate) fn source_ended(&self, key: &str, stats: &Arc<SourceStats>) {
        if let Ok(mut m) = self.announcing.lock() {
            if m.get(key).is_some_and(|s| Arc::ptr_eq(s, stats)) {
                m.remove(key);
            }
        }
    }

    /// Runs `task` on the tracker and records `what` as died if it
    /// panics. The task runs in a task of its own so that its panic is
    /// caught there (tokio drops a panicked future after unwinding, so a
    /// guard inside it would not see the panic).
    pub(crate) fn spawn<F>(self: &Arc<Self>, tracker: &TaskTracker, what: String, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let inner = tokio::spawn(task);
        let health = self.clone();
        tracker.spawn(async move {
            if let Err(e) = inner.await {
                if e.is_panic() {
                    tracing::error!(task = %what, "task died (panicked)");
                    if let Ok(mut d) = health.died.lock() {
                        d.push(what);
                    }
                }
            }
        });
    }

    /// The reasons this module knows, in a stable order: sources first.
    pub(crate) fn reasons(&self, out: &mut Vec<String>) {
        if let Ok(m) = self.announcing.lock() {
            out.extend(
                m.iter()
                    .filter(|(_, s)| !s.is_serving())
                    .map(|(k, _)| format!("source `{k}` is not serving yet: starting")),
            );
        }
        if let Ok(m) = self.not_serving.lock() {
            out.extend(
                m.iter()
                    .map(|(k, e)| format!("source `{k}` is not serving: {e}")),
            );
        }
        if let Ok(d) = self.died.lock() {
            out.extend(d.iter().map(|w| format!("{w} task died")));
        }
    }
}
