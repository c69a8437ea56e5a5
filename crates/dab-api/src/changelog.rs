//! Changelogs: where a stateful stage that reads a partitioned source
//! mirrors its state, one changelog partition per input partition, so that
//! the state moves with the partition to whichever process reads it next
//! (SPEC section 9, "scale-out"). A Kafka source's changelog is a
//! compacted topic on the same cluster.
//!
//! A checkpoint appends the changed entries of each input partition, then
//! one commit record, all carrying the checkpoint's id; a reader applies
//! the entries of a checkpoint only when it meets that checkpoint's commit
//! record, so a checkpoint cut short by a crash (or a failed append) is
//! never half applied. The runtime owns the record layout; a changelog
//! stores and returns records in order.
//!
//! The calls block: the runtime makes them from blocking threads.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::{BuildError, ConfigValue};

/// One record. `value: None` deletes the key (a Kafka tombstone, which
/// compaction removes in time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
    /// The checkpoint that wrote it (carried beside the value, so a
    /// tombstone has one too).
    pub checkpoint: u64,
}

/// A changelog opened for one stateful stage.
pub trait Changelog: Send + Sync + std::fmt::Debug {
    /// Where it lives (a topic name), for messages.
    fn name(&self) -> &str;
    /// Appends each partition's records in order and returns once the
    /// store holds all of them, with the offset after the last record of
    /// each partition. An error means some may be stored and some not.
    fn append(&self, batches: &[(i32, Vec<ChangeRecord>)]) -> Result<Vec<(i32, i64)>, String>;
    /// Every record of `partition` from offset `from` up to its end as of
    /// the call, in order, and the offset after the last one.
    fn read(&self, partition: i32, from: i64) -> Result<(Vec<ChangeRecord>, i64), String>;
}

/// Opens changelogs beside the sources of one kind.
pub trait ChangelogFactory: Send + Sync {
    /// The source kind whose bindings it reads (`kafka`).
    fn kind(&self) -> &'static str;
    /// Opens (creating it when missing) the changelog `name` on the
    /// cluster of the source binding `fields`, with at least as many
    /// partitions as the source's input has. May block for the broker's
    /// answers.
    fn open(
        &self,
        fields: &BTreeMap<String, ConfigValue>,
        name: &str,
    ) -> Result<Arc<dyn Changelog>, BuildError>;
}
