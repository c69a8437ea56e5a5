//! DAB's window and aggregate engine (SPEC section 9, issue 13 item 1).
//!
//! Architecture invariant: this crate knows nothing of DAB events, tokio or
//! I/O. The caller hands it, per event, a partition id, a time in ns, the
//! current arrival time, a group key as bytes and one [`Value`] per
//! aggregate; it hands back [`WindowResult`]s and state as bytes.
#![doc = include_str!("../README.md")]

mod agg;
mod codec;
mod config;
mod engine;
mod hash;
mod hll;
mod sketch;
mod value;

pub use agg::DISTINCT_EXACT_LIMIT;
pub use config::{AggFn, ConfigError, WindowKind, WindowSpec};
pub use engine::{
    entry_key, Absorb, Dirty, Engine, Event, RestoreError, Stats, WindowResult,
    MAX_WINDOWS_PER_EVENT,
};
pub use hash::hash64;
pub use hll::HLL_STANDARD_ERROR;
pub use sketch::{MAX_BUCKETS, MIN_MAGNITUDE, PERCENTILE_RELATIVE_ERROR};
pub use value::{AggValue, Scalar, Value};

/// Why bytes of saved state could not be read; `at` is a byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{what} cut short at byte {at}")]
    Truncated { what: &'static str, at: usize },
    #[error("invalid {what} at byte {at}")]
    Invalid { what: &'static str, at: usize },
    #[error("bytes left over after the {what} at byte {at}")]
    Trailing { what: &'static str, at: usize },
}
