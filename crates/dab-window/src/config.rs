//! What the caller configures: the window kind and options, and the list
//! of aggregates. Checked once by [`WindowSpec::check`] so the engine never
//! meets a zero size or a percentile outside [0, 1].

/// The shape of the windows. Durations are nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// Back-to-back windows `[k * size, (k + 1) * size)`.
    Tumbling { size: i64 },
    /// Windows `[k * every, k * every + size)`: each event belongs to
    /// `size / every` windows (rounded down or up by position when `every`
    /// does not divide `size`). `every <= size`.
    Sliding { size: i64, every: i64 },
    /// Per group, a window that grows while events come less than `gap`
    /// apart: the session of events `t1 <= ... <= tn` is `[t1, tn + gap)`.
    Session { gap: i64 },
}

/// An aggregate function. The caller evaluates the argument expression and
/// hands the engine one [`crate::Value`] per aggregate per event.
#[derive(Debug, Clone, PartialEq)]
pub enum AggFn {
    /// Counts events (the value is ignored).
    Count,
    /// Counts events whose value is `Bool(true)`.
    CountIf,
    /// Sum of numbers. An `Int` while every input is an `Int` and the sum
    /// fits in i64; it widens to `Float` on the first float input or the
    /// first overflow (so it never panics and never wraps).
    Sum,
    /// Smallest number.
    Min,
    /// Largest number.
    Max,
    /// Mean of the numbers, a `Float`.
    Avg,
    /// The value of the earliest event (by time, ties by arrival order).
    First,
    /// The value of the latest event (by time, ties by arrival order).
    Last,
    /// Number of distinct values: exact up to [`crate::DISTINCT_EXACT_LIMIT`]
    /// per (window, group), then a HyperLogLog estimate.
    Distinct,
    /// Percentiles (each in `[0, 1]`) from a relative-error sketch.
    Percentile(Vec<f64>),
}

/// Everything the engine needs to know up front. Durations are nanoseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSpec {
    pub kind: WindowKind,
    /// How far behind the watermark a window stays open (>= 0).
    pub lateness: i64,
    /// A partition with no event for this long stops holding the watermark
    /// back (`None`: never).
    pub idle_after: Option<i64>,
    /// Emit partial results of changed open windows every this much arrival
    /// time (`None`: final results only).
    pub early: Option<i64>,
    /// Most (window, group) entries held at once.
    pub max_groups: usize,
    /// Record changed and deleted entries for [`crate::Engine::take_dirty`].
    /// Off, the engine keeps no record of deletions (the list would grow
    /// without a checkpoint to empty it).
    pub track_changes: bool,
    /// The aggregates, in result order.
    pub aggs: Vec<(String, AggFn)>,
}

/// A configuration the engine refuses.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("window {what} must be positive, got {value}")]
    NotPositive { what: &'static str, value: i64 },
    #[error("sliding window step {every} is larger than its size {size}")]
    StepLargerThanSize { size: i64, every: i64 },
    #[error("percentile {p} of aggregate `{name}` is not in [0, 1]")]
    BadPercentile { name: String, p: f64 },
    #[error("aggregate `{name}` has no percentile")]
    NoPercentile { name: String },
    #[error("a sliding window puts each event in {per} windows, more than {max}")]
    TooManyWindows { per: i64, max: i64 },
    #[error("max_groups must be at least 1")]
    NoGroups,
}

impl WindowSpec {
    /// A spec with no lateness, no idle timeout, no early results, a
    /// million entries and change tracking on.
    pub fn new(kind: WindowKind, aggs: Vec<(String, AggFn)>) -> Self {
        WindowSpec {
            kind,
            lateness: 0,
            idle_after: None,
            early: None,
            max_groups: 1_000_000,
            track_changes: true,
            aggs,
        }
    }

    /// Checks the sizes and the percentiles.
    pub fn check(&self) -> Result<(), ConfigError> {
        let positive = |what, value: i64| {
            if value > 0 {
                Ok(())
            } else {
                Err(ConfigError::NotPositive { what, value })
            }
        };
        match self.kind {
            WindowKind::Tumbling { size } => positive("size", size)?,
            WindowKind::Sliding { size, every } => {
                positive("size", size)?;
                positive("step", every)?;
                if every > size {
                    return Err(ConfigError::StepLargerThanSize { size, every });
                }
            }
            WindowKind::Session { gap } => positive("gap", gap)?,
        }
        if self.lateness < 0 {
            return Err(ConfigError::NotPositive {
                what: "lateness",
                value: self.lateness,
            });
        }
        if let Some(d) = self.idle_after {
            positive("idle_after", d)?;
        }
        if let Some(d) = self.early {
            positive("early", d)?;
        }
        if self.max_groups == 0 {
            return Err(ConfigError::NoGroups);
        }
        for (name, f) in &self.aggs {
            if let AggFn::Percentile(ps) = f {
                if ps.is_empty() {
                    return Err(ConfigError::NoPercentile { name: name.clone() });
                }
                if let Some(&p) = ps.iter().find(|p| !(0.0..=1.0).contains(*p)) {
                    return Err(ConfigError::BadPercentile {
                        name: name.clone(),
                        p,
                    });
                }
            }
        }
        Ok(())
    }
}
