//! `Dedup(within = D)`: drops events whose UID was seen within the window
//! (redeliveries after retries). The window is the op's state: a reload
//! that keeps the op does not forget the UIDs seen.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dab_api::Batch;
use dab_plan::ops::{ArgValue, CheckCx, Code, Diagnostic, Op as Call, OpClass};
use dab_plan::ops::{OpConfig, OpSpec, Param, ParamType};

use super::{ApplyCx, BuildCx, OpModule, RunStage};
use crate::metrics::DropReason;
use crate::sample::uid_hash;

#[derive(Debug)]
pub struct Dedup;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub within: Duration,
}

static SPEC: OpSpec = OpSpec {
    name: "Dedup",
    class: OpClass::Stage,
    positional: &[],
    variadic: false,
    named: &[Param {
        name: "within",
        ty: ParamType::Duration,
        doc: "how long a UID is remembered (default 10m)",
    }],
    other_named: None,
    doc: "Drop events whose UID was seen within the window (redeliveries after retries)",
};

impl OpModule for Dedup {
    type Config = Config;

    fn spec(&self) -> &'static OpSpec {
        &SPEC
    }

    fn check(&self, cx: &mut CheckCx<'_>, _op: &Call, args: Vec<ArgValue>) -> Option<Config> {
        let within = match args.into_iter().next() {
            Some(ArgValue::Duration(d, span)) => {
                if d.is_zero() {
                    cx.diags.push(
                        Diagnostic::new(Code::E009, span, "`within` must be longer than 0")
                            .with_label_here("out of range")
                            .with_help("for example `Dedup(within = 10m)`"),
                    );
                    return None;
                }
                d
            }
            _ => Duration::from_secs(600),
        };
        Some(Config { within })
    }

    fn build(&self, c: &Config, cx: &mut BuildCx<'_>) -> Result<Box<dyn RunStage>, String> {
        let within = c.within;
        // Shared with the same op of the pipeline a reload replaced.
        Ok(Box::new(Run(cx.state(|| {
            Mutex::new(Window::new(within, DEDUP_MAX_PER_GENERATION))
        }))))
    }
}

impl OpConfig for Config {
    fn label(&self) -> String {
        format!("Dedup(within = {}s)", self.within.as_secs())
    }
}

/// Events a dedup generation holds at most.
pub const DEDUP_MAX_PER_GENERATION: usize = 1_000_000;

struct Run(Arc<Mutex<Window>>);

#[async_trait]
impl RunStage for Run {
    async fn apply(&mut self, batch: &mut Batch, cx: &ApplyCx<'_>) {
        let before = batch.events.len();
        let now = Instant::now();
        // Held for one batch, never across an await; a panic while held
        // leaves a window that is still usable.
        let mut d = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        batch.events.retain(|e| !d.seen(e, now));
        cx.metrics
            .dropped(DropReason::Duplicate, (before - batch.events.len()) as u64);
    }
}

/// Remembers UIDs for at least `within` and at most twice that: two
/// generations of 64-bit UID hashes, the older dropped when the newer is
/// `within` old (or holds `max` entries, which also starts a new one and
/// is counted). About 20 to 40 bytes per remembered UID across both
/// generations (a `HashSet<u64>` entry plus table slack), so at most about
/// 80 MB with the default 1,000,000 per generation. A 64-bit hash makes a
/// false "duplicate" a 1 in 10^13 event at a million UIDs.
#[derive(Debug)]
pub struct Window {
    within: Duration,
    max: usize,
    current: HashSet<u64>,
    previous: HashSet<u64>,
    started: Instant,
    pub early_rotations: u64,
}

/// The salt of the dedup hash, apart from every sampler's op position.
const DEDUP_SALT: u64 = u64::MAX;

impl Window {
    pub fn new(within: Duration, max: usize) -> Window {
        Window {
            within,
            max: max.max(1),
            current: HashSet::new(),
            previous: HashSet::new(),
            started: Instant::now(),
            early_rotations: 0,
        }
    }

    /// True when the UID was seen within the window; remembers it otherwise.
    pub fn seen(&mut self, e: &dab_api::Event, now: Instant) -> bool {
        if now.duration_since(self.started) >= self.within {
            self.rotate(now);
        } else if self.current.len() >= self.max {
            self.early_rotations += 1;
            self.rotate(now);
        }
        let h = uid_hash(e, DEDUP_SALT);
        if self.current.contains(&h) || self.previous.contains(&h) {
            return true;
        }
        self.current.insert(h);
        false
    }

    fn rotate(&mut self, now: Instant) {
        self.previous = std::mem::take(&mut self.current);
        self.started = now;
    }
}
