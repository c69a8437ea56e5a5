//! Tables a connector keeps current (`tables:` of a kind other than
//! `file`, SPEC section 9: a compacted Kafka topic), for `Enrich`.
//!
//! The runtime owns the rows; a connector's [`TableFeed`] reads its
//! source to the current end, then keeps sending changes as they come.
//! A row is the JSON text of an object, found by its key's text.

use std::sync::{Arc, Weak};

use crate::BuildError;

/// One change: `Some(row)` puts the row under the key, `None` deletes it
/// (a Kafka tombstone).
pub type Change = (String, Option<Arc<str>>);

/// Where a feed sends its changes: the runtime's table.
pub trait TableRows: Send + Sync {
    /// Applies changes in order.
    fn apply(&self, changes: Vec<Change>);
    /// Input that could not be applied (a message without a text key, a
    /// value that is not a JSON object): logged and counted, the rows kept.
    fn failed(&self, reason: String);
}

/// A feed, built without touching the network.
pub trait TableFeed: Send {
    /// Reads the source to its end as of now into `rows` and returns once
    /// it has (an error after a bound: the broker is unreachable), then
    /// keeps `rows` current from a thread of its own until `rows` is
    /// dropped.
    fn start(self: Box<Self>, rows: Weak<dyn TableRows>) -> Result<(), String>;
}

/// Makes the feed of one table binding kind.
pub trait TableFactory: Send + Sync {
    fn kind(&self) -> &'static str;
    /// Checks the binding's fields and makes its feed; no network.
    fn build(
        &self,
        name: &str,
        fields: &std::collections::BTreeMap<String, crate::ConfigValue>,
    ) -> Result<Box<dyn TableFeed>, BuildError>;
}
