//! The interface between the engine and connectors: the event, batches and
//! their acknowledgements, the `Source` and `Sink` traits, and the catalog
//! of connector kinds. Small on purpose (ripgrep's `grep-matcher` habit):
//! connectors depend on this crate only.

pub mod ack;
pub mod batch;
pub mod changelog;
pub mod config;
pub mod connector;
pub mod event;
pub mod metrics;
pub mod payload;
pub mod schema;
pub mod signature;
pub mod table;
pub mod template;

pub use ack::{AckStatus, AckToken};
pub use batch::Batch;
pub use config::ConfigValue;
pub use connector::{
    BuildError, Confirm, Confirmed, Confirmer, ConnectorError, ErrorClass, FlushPolicy, Pending,
    Rejection, Sink, SinkError, SinkFactory, Source, SourceContext, SourceFactory, Written,
};
/// The payload schema of a declared type (SPEC section 7), as typed sinks get it.
pub use dab_schema::Schema as PayloadSchema;
pub use event::{Event, Origin, Position, Text};
