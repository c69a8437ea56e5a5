//! The `kind: disk` queue (SPEC section 10, issue 14 item 6): the runtime
//! side of `dab-diskq`.
//!
//! A queue bound with `kind: disk` becomes, like a Kafka queue, a `disk`
//! sink for its writers and one `disk` source per reading pipeline (the
//! reader named after the pipeline id). Both reach the queue through one
//! [`owner::Owner`] per directory and process: a thread that owns the
//! synchronous, single-owner `DiskQueue` and serves appends, reads and
//! acknowledgements sent to it over a channel.
//!
//! - Records are events in DAB's protobuf codec (`codec::proto::encode` /
//!   `decode`: timestamp, host, type, offset, pid, message, signature and
//!   tags, so the UID and every tag survive), one event per record.
//! - The sink confirms its writes later (`Sink::confirms_writes`): a write
//!   is taken once appended, and confirmed delivered once the queue's
//!   `durable_seq()` covers its last record under the `fsync` policy. A
//!   full queue holds the append (and so the sink, its pipelines and their
//!   sources) until readers make room, or under `when_full: drop_newest`
//!   refuses the newest events, which go to `OnError` or are counted.
//! - A reader hands durable records on as batches and acknowledges a batch
//!   to the queue when its `AckToken` settles delivered and every batch
//!   before it has; a failed batch is sent again after a back-off, with
//!   no limit by default (the queue is there to ride out an outage), or
//!   up to `max_redeliveries` times: then once more, marked
//!   `retries_exhausted`, so that the pipeline hands it to `OnError` (or
//!   counts it dropped) and one batch that always fails does not hold
//!   the queue.

mod metrics;
mod owner;
mod sink;
mod source;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use dab_api::connector::{BuildError, Sink, SinkFactory, Source, SourceFactory};
use dab_api::ConfigValue;
use dab_diskq::{FsyncPolicy, Options, WhenFull};

pub use metrics::{DiskQueueMetrics, DiskReaderMetrics};

/// `max_bytes` when the binding has none.
pub const DEFAULT_MAX_BYTES: u64 = 1 << 30;
/// The largest `segment_bytes` taken by default (`max_bytes / 4` below).
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// `fsync` when the binding has none.
pub const DEFAULT_FSYNC: Duration = Duration::from_millis(100);

/// A disk queue's binding, read from its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    pub when_full: WhenFull,
    /// Times a reader sends a failed batch again before giving up on it
    /// (`OnError`); `None`: no limit.
    pub max_redeliveries: Option<u32>,
}

impl DiskConfig {
    /// Reads the fields `dab validate` checked (`dab_api::schema`'s `disk`
    /// queue); errors name the queue and field.
    pub fn from_fields(
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<DiskConfig, BuildError> {
        let bad = |reason: String| BuildError {
            name: name.to_owned(),
            reason,
        };
        let path = match fields.get("path") {
            Some(ConfigValue::Str(p)) if !p.is_empty() => PathBuf::from(p),
            _ => return Err(bad("disk queue needs `path`".into())),
        };
        let size = |key: &str| -> Result<Option<u64>, BuildError> {
            match fields.get(key) {
                None => Ok(None),
                Some(ConfigValue::Int(n)) if *n > 0 => Ok(Some(n.unsigned_abs())),
                Some(v) => Err(bad(format!("`{key}` must be a positive size, found {v:?}"))),
            }
        };
        let max_bytes = size("max_bytes")?.unwrap_or(DEFAULT_MAX_BYTES);
        let segment_bytes = size("segment_bytes")?
            .unwrap_or_else(|| (max_bytes / 4).clamp(64 << 10, DEFAULT_SEGMENT_BYTES));
        if segment_bytes > max_bytes / 4 {
            return Err(bad(format!(
                "`segment_bytes` ({segment_bytes}) must be at most a quarter of `max_bytes` ({max_bytes})"
            )));
        }
        let fsync = match fields.get("fsync") {
            None => FsyncPolicy::Interval(DEFAULT_FSYNC),
            Some(ConfigValue::Str(s)) if s == "always" => FsyncPolicy::Always,
            Some(ConfigValue::Int(ms)) if *ms > 0 => {
                FsyncPolicy::Interval(Duration::from_millis(ms.unsigned_abs()))
            }
            Some(v) => {
                return Err(bad(format!(
                    "`fsync` must be `always` or a positive duration, found {v:?}"
                )))
            }
        };
        let when_full = match fields.get("when_full") {
            None => WhenFull::Block,
            Some(ConfigValue::Str(s)) if s == "block" => WhenFull::Block,
            Some(ConfigValue::Str(s)) if s == "drop_newest" => WhenFull::DropNewest,
            Some(v) => {
                return Err(bad(format!(
                    "`when_full` must be `block` or `drop_newest`, found {v:?}"
                )))
            }
        };
        let max_redeliveries = match fields.get("max_redeliveries") {
            None => None,
            Some(ConfigValue::Int(n)) => Some(u32::try_from(*n).map_err(|_| {
                bad(format!(
                    "`max_redeliveries` must be between 0 and 1000000, found {n}"
                ))
            })?),
            Some(v) => {
                return Err(bad(format!(
                    "`max_redeliveries` must be a whole number, found {v:?}"
                )))
            }
        };
        Ok(DiskConfig {
            path,
            max_bytes,
            segment_bytes,
            fsync,
            when_full,
            max_redeliveries,
        })
    }

    fn options(&self) -> Options {
        Options {
            max_bytes: self.max_bytes,
            segment_bytes: self.segment_bytes,
            fsync: self.fsync,
            when_full: self.when_full,
            readers: Vec::new(),
        }
    }
}

/// The queue's name for the reader of pipeline `id` (`service` or
/// `service/name`): `/` becomes `.`, which no identifier holds, so
/// distinct ids stay distinct reader names.
pub fn reader_name(id: &str) -> String {
    id.replace('/', ".")
}

/// The reader names of `readers` (the ids of the set's pipelines reading
/// the queue, as the runtime passes them); `None` when not given.
fn declared_readers(fields: &BTreeMap<String, ConfigValue>) -> Option<Vec<String>> {
    match fields.get("readers") {
        Some(ConfigValue::List(items)) => Some(
            items
                .iter()
                .filter_map(|i| match i {
                    ConfigValue::Str(s) => Some(reader_name(s)),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

fn failed(name: &str) -> impl FnOnce(String) -> BuildError + '_ {
    move |reason| BuildError {
        name: name.to_owned(),
        reason,
    }
}

/// The writers' side of a disk queue: a sink named after the queue.
#[derive(Debug)]
pub struct DiskSinkFactory;

impl SinkFactory for DiskSinkFactory {
    fn kind(&self) -> &'static str {
        "disk"
    }

    fn build(
        &self,
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Sink>, BuildError> {
        let cfg = DiskConfig::from_fields(name, fields)?;
        let readers = declared_readers(fields);
        let owner = owner::Owner::get(name, &cfg, readers.as_deref()).map_err(failed(name))?;
        Ok(Box::new(sink::DiskSink::new(owner, &cfg)))
    }
}

/// A reading pipeline's side of a disk queue. The runtime builds one per
/// reading pipeline, named `<queue>:<pipeline id>`, with the fields of the
/// queue's binding plus `queue` (its name) and `reader` (the pipeline id).
#[derive(Debug)]
pub struct DiskSourceFactory;

impl SourceFactory for DiskSourceFactory {
    fn kind(&self) -> &'static str {
        "disk"
    }

    fn build(
        &self,
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Source>, BuildError> {
        let text = |key: &str| match fields.get(key) {
            Some(ConfigValue::Str(s)) if !s.is_empty() => Ok(s.clone()),
            _ => Err(BuildError {
                name: name.to_owned(),
                reason: format!("a disk queue reader needs `{key}`"),
            }),
        };
        let queue = text("queue")?;
        let reader = reader_name(&text("reader")?);
        let cfg = DiskConfig::from_fields(&queue, fields)?;
        let readers = declared_readers(fields);
        let owner = owner::Owner::get(&queue, &cfg, readers.as_deref()).map_err(failed(name))?;
        owner.add_reader(&reader).map_err(failed(name))?;
        Ok(Box::new(source::DiskSource::new(
            owner,
            &reader,
            cfg.max_redeliveries,
        )))
    }
}

#[cfg(test)]
mod tests;
