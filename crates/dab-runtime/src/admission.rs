//! Admission control (SPEC section 5): above a memory mark, or when any
//! memory queue is nearly full, sources refuse new work with a retriable
//! answer (HTTP 429, gRPC RESOURCE_EXHAUSTED, a paused socket) instead of
//! growing.
//!
//! A full source channel is not a reason to refuse: that is ordinary back
//! pressure, which the source's send already waits out. Refusing there made
//! every socket pause 50 ms whenever the pipeline was busy, which capped a
//! TCP relay at 40k events/s (docs/PERFORMANCE.md, "Runtime").

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dab_api::connector::Admission;
use dab_api::Batch;
use tokio::sync::mpsc::WeakSender;

use crate::output::FillGauge;

#[derive(Debug)]
pub struct RuntimeAdmission {
    /// Updated in the background; reading /proc on every call would cost more than the work.
    pub rss: Arc<AtomicU64>,
    pub max_rss: u64,
    /// The source's channel, for a depth gauge; not consulted by `admit`.
    pub out: WeakSender<Batch>,
    pub queues: Vec<FillGauge>,
    pub high_water: f64,
}

impl Admission for RuntimeAdmission {
    fn admit(&self) -> bool {
        if self.max_rss > 0 && self.rss.load(Ordering::Relaxed) > self.max_rss {
            return false;
        }
        self.queues.iter().all(|q| q.fill() < self.high_water)
    }
}

/// Admits everything (tests, benches).
#[derive(Debug, Default)]
pub struct AlwaysAdmit;

impl Admission for AlwaysAdmit {
    fn admit(&self) -> bool {
        true
    }
}
