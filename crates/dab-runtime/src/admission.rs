//! Admission control (SPEC section 5): above a memory mark (on by default,
//! [`default_max_rss`]), or when any
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

/// The least default mark: below it a small machine would refuse work
/// before the process has warmed up.
const MIN_DEFAULT_MAX_RSS: u64 = 512 << 20;

/// The default memory mark of `dab run` (docs/runtime.md, "Admission
/// control"): half of the memory the process may use, that is the
/// machine's (`MemTotal`) or its cgroup's limit (`memory.max`, cgroup v2)
/// when lower, and at least 512 MiB. 0 (no mark) when neither can be read.
pub fn default_max_rss() -> u64 {
    let total = read_first_number("/proc/meminfo", "MemTotal:").map(|kib| kib * 1024);
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let usable = match (total, cgroup) {
        (Some(t), Some(c)) => t.min(c),
        (Some(t), None) => t,
        (None, Some(c)) => c,
        (None, None) => return 0,
    };
    (usable / 2).max(MIN_DEFAULT_MAX_RSS)
}

/// The number after `key` on its line of `path` (`MemTotal:   24 kB`).
fn read_first_number(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Admits everything (tests, benches).
#[derive(Debug, Default)]
pub struct AlwaysAdmit;

impl Admission for AlwaysAdmit {
    fn admit(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_mark_is_half_of_memory_at_least_512_mib() {
        let mark = default_max_rss();
        let total = read_first_number("/proc/meminfo", "MemTotal:").expect("MemTotal") * 1024;
        assert!(mark >= MIN_DEFAULT_MAX_RSS, "{mark}");
        assert!(
            mark == MIN_DEFAULT_MAX_RSS || mark <= total / 2,
            "{mark} of {total}"
        );
    }
}
