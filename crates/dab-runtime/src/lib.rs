//! A checked plan as running tokio tasks joined by bounded channels: the
//! stages, fan-out with per-output buffer policies, memory queues,
//! acknowledgements, sink retries, shutdown and metrics (SPEC section 5).
//! Connectors come in through `Registry`; this crate knows only `dab-api`.

pub mod admission;
pub mod breaker;
pub mod enrich;
mod health;
pub mod join;
pub mod metrics;
pub mod ops;
pub mod output;
pub mod pipeline;
mod predicate;
pub mod reliability;
pub mod rendezvous;
pub mod sample;
mod seen;
mod sink;
pub mod stages;
mod topology;
pub mod window;

pub use admission::default_max_rss;
pub use health::Readiness;
pub use topology::{start, Registry, ReloadReport, RunOptions, Running, StartError};
