//! Acknowledgements: a source learns when every copy of every event of a
//! batch it read is delivered or deliberately dropped (SPEC section 5).
//!
//! An `AckToken` travels with each copy of a batch. Each holder settles its
//! copy: `complete()` (written, or dropped on purpose by a filter or sampler)
//! or `fail()`. A token dropped without being settled counts as a failure, so
//! a task that dies with a batch in hand can never acknowledge it. When the
//! last copy is settled the source's callback runs once with the outcome.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The outcome of a source batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStatus {
    /// Every copy was written or deliberately dropped.
    Delivered,
    /// At least one copy failed or was abandoned.
    Failed,
}

type Callback = Box<dyn FnOnce(AckStatus) + Send>;

struct Shared {
    failed: AtomicBool,
    on_done: Mutex<Option<Callback>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let status = if self.failed.load(Ordering::Acquire) {
            AckStatus::Failed
        } else {
            AckStatus::Delivered
        };
        let cb = match self.on_done.get_mut() {
            Ok(slot) => slot.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(cb) = cb {
            cb(status);
        }
    }
}

/// One copy's share of a source batch's acknowledgement.
pub struct AckToken {
    shared: Option<Arc<Shared>>,
    settled: bool,
}

impl std::fmt::Debug for AckToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckToken")
            .field("tracked", &self.shared.is_some())
            .field("settled", &self.settled)
            .finish()
    }
}

impl AckToken {
    /// A token whose last settlement calls `on_done` once.
    pub fn new(on_done: impl FnOnce(AckStatus) + Send + 'static) -> AckToken {
        AckToken {
            shared: Some(Arc::new(Shared {
                failed: AtomicBool::new(false),
                on_done: Mutex::new(Some(Box::new(on_done))),
            })),
            settled: false,
        }
    }

    /// A token and a receiver that resolves when the batch is settled.
    pub fn channel() -> (AckToken, tokio::sync::oneshot::Receiver<AckStatus>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let token = AckToken::new(move |status| {
            let _ = tx.send(status);
        });
        (token, rx)
    }

    /// A token nobody waits for (generated events, tests).
    pub fn untracked() -> AckToken {
        AckToken {
            shared: None,
            settled: true,
        }
    }

    /// Another copy's share: the batch is settled only when all are.
    pub fn share(&self) -> AckToken {
        AckToken {
            shared: self.shared.clone(),
            settled: self.shared.is_none(),
        }
    }

    /// This copy is delivered (or deliberately dropped).
    pub fn complete(mut self) {
        self.settled = true;
    }

    /// This copy failed: the whole batch will report `Failed`.
    pub fn fail(mut self) {
        if let Some(s) = &self.shared {
            s.failed.store(true, Ordering::Release);
        }
        self.settled = true;
    }

    pub fn is_tracked(&self) -> bool {
        self.shared.is_some()
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if !self.settled {
            if let Some(s) = &self.shared {
                s.failed.store(true, Ordering::Release);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn counting() -> (AckToken, Arc<Mutex<Vec<AckStatus>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let t = AckToken::new(move |st| s.lock().map(|mut v| v.push(st)).unwrap_or(()));
        (t, seen)
    }

    #[test]
    fn fires_once_after_every_copy_completes() {
        let (t, seen) = counting();
        let a = t.share();
        let b = t.share();
        t.complete();
        a.complete();
        assert!(seen.lock().map(|v| v.is_empty()).unwrap_or(false));
        b.complete();
        assert_eq!(*seen.lock().expect("lock"), vec![AckStatus::Delivered]);
    }

    #[test]
    fn one_failed_copy_fails_the_batch() {
        let (t, seen) = counting();
        let a = t.share();
        a.fail();
        t.complete();
        assert_eq!(*seen.lock().expect("lock"), vec![AckStatus::Failed]);
    }

    #[test]
    fn an_abandoned_copy_is_a_failure() {
        let (t, seen) = counting();
        let a = t.share();
        drop(a);
        t.complete();
        assert_eq!(*seen.lock().expect("lock"), vec![AckStatus::Failed]);
    }

    #[test]
    fn untracked_tokens_never_call_back() {
        let calls = Arc::new(AtomicUsize::new(0));
        let t = AckToken::untracked();
        let u = t.share();
        drop(t);
        drop(u);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }
}
