//! The background fsync of the `Interval` policy: when a sync falls due,
//! the queue hands a duplicate of the active segment's file descriptor and
//! the sequence number written so far to one thread, which fdatasyncs it
//! and publishes that number as durable, while the writer goes on writing.
//! One sync is in flight at a time. Only the active segment is ever synced
//! here (sealing a segment syncs it in the caller's thread), so the rule
//! that only the active segment may hold undurable records stays true.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};

#[derive(Debug, Default, Clone)]
pub(crate) struct SyncState {
    /// Highest sequence number a background sync made durable.
    pub durable: u64,
    pub pending: bool,
    /// The first failed background fsync: the queue must stop writing.
    pub failed: Option<String>,
}

type Shared = Arc<(Mutex<SyncState>, Condvar)>;

#[derive(Debug)]
pub(crate) struct Background {
    tx: mpsc::Sender<(File, u64, PathBuf)>,
    shared: Shared,
}

fn lock(shared: &Shared) -> MutexGuard<'_, SyncState> {
    // The thread holding the lock never panics; a poisoned lock still
    // holds a consistent state.
    shared.0.lock().unwrap_or_else(|e| e.into_inner())
}

impl Background {
    pub(crate) fn start() -> std::io::Result<Background> {
        let (tx, rx) = mpsc::channel::<(File, u64, PathBuf)>();
        let shared: Shared = Arc::default();
        let theirs = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("dab-diskq-fsync".into())
            .spawn(move || {
                for (file, seq, path) in rx {
                    let result = file.sync_data();
                    let mut s = lock(&theirs);
                    match result {
                        Ok(()) => s.durable = s.durable.max(seq),
                        Err(e) => {
                            if s.failed.is_none() {
                                s.failed = Some(format!("fsync of {}: {e}", path.display()));
                            }
                        }
                    }
                    s.pending = false;
                    theirs.1.notify_all();
                }
            })?;
        Ok(Background { tx, shared })
    }

    /// Starts a sync of `file` up to `seq` unless one is in flight; returns
    /// whether it started.
    pub(crate) fn request(&self, file: File, seq: u64, path: PathBuf) -> bool {
        let mut s = lock(&self.shared);
        if s.pending {
            return false;
        }
        s.pending = true;
        if self.tx.send((file, seq, path)).is_err() {
            s.pending = false;
            s.failed
                .get_or_insert_with(|| "the fsync thread is gone".into());
            return false;
        }
        true
    }

    pub(crate) fn state(&self) -> SyncState {
        lock(&self.shared).clone()
    }

    /// Waits for the sync in flight, if any, and returns the state after it.
    pub(crate) fn wait(&self) -> SyncState {
        let mut s = lock(&self.shared);
        while s.pending {
            s = self.shared.1.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        s.clone()
    }
}
