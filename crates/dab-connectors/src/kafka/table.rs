//! `tables: { T: { kind: kafka, brokers, topic } }`: a compacted topic as
//! an `Enrich` table (SPEC section 9). Each message's key (UTF-8 text) is a
//! row's key, its value the row, a JSON object; a message without a value
//! (a tombstone) deletes the row. Later messages of a key replace earlier
//! ones, as compaction keeps them.
//!
//! The consumer is assigned every partition of the topic from its start
//! (no group membership, nothing committed: every process reads the whole
//! table). `start` reads up to the end offsets the broker reports when it
//! starts, so the first event already sees the table; then a thread of its
//! own (`table-<name>`) polls for changes until the table is dropped.
//! Messages it cannot take (no text key, a value that is not a JSON
//! object) are reported to the table, which counts them and keeps its rows.

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use dab_api::config::Fields;
use dab_api::table::{Change, TableFactory, TableFeed, TableRows};
use dab_api::{BuildError, ConfigValue};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::settings::build_error;

/// Longest wait for the topic's metadata, its end offsets and the read up
/// to them when the table opens.
const CATCH_UP: Duration = Duration::from_secs(30);
/// Messages applied to the table at once at most.
const BATCH: usize = 1024;
/// How long one poll waits for a message.
const POLL: Duration = Duration::from_millis(100);

/// Builds `kind: kafka` table feeds.
#[derive(Debug, Clone, Copy, Default)]
pub struct KafkaTableFactory;

impl TableFactory for KafkaTableFactory {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn build(
        &self,
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn TableFeed>, BuildError> {
        let f = Fields(fields);
        let topic = match f.str("topic") {
            Some(t) if !t.trim().is_empty() => t.to_owned(),
            _ => return Err(build_error(name, "`topic` is required")),
        };
        let config = super::client_config(
            &[
                ("bootstrap.servers", super::brokers(name, f)?.to_owned()),
                // librdkafka wants a group for a consumer; assigned
                // partitions join none, and nothing is committed.
                ("group.id", format!("dab.table.{name}")),
                ("client.id", format!("dab-table-{name}")),
                ("enable.auto.commit", "false".into()),
                ("enable.auto.offset.store", "false".into()),
                ("queued.max.messages.kbytes", "32768".into()),
            ],
            &super::options(name, fields)?,
        );
        let consumer: BaseConsumer = config
            .create()
            .map_err(|e| build_error(name, format!("kafka consumer: {e}")))?;
        Ok(Box::new(KafkaTableFeed {
            name: name.to_owned(),
            topic,
            consumer,
        }))
    }
}

struct KafkaTableFeed {
    name: String,
    topic: String,
    consumer: BaseConsumer,
}

impl TableFeed for KafkaTableFeed {
    fn start(self: Box<Self>, rows: Weak<dyn TableRows>) -> Result<(), String> {
        let KafkaTableFeed {
            name,
            topic,
            consumer,
        } = *self;
        let deadline = Instant::now() + CATCH_UP;
        let metadata = consumer
            .fetch_metadata(Some(&topic), CATCH_UP)
            .map_err(|e| format!("kafka topic `{topic}`: metadata: {e}"))?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        if partitions.is_empty() {
            return Err(format!(
                "kafka topic `{topic}` has no partitions (does it exist?)"
            ));
        }
        // Where each partition ends now: the table is read up to there
        // before the first event is enriched.
        let mut behind: BTreeMap<i32, i64> = BTreeMap::new();
        let mut assignment = TopicPartitionList::new();
        for &p in &partitions {
            let left = deadline.saturating_duration_since(Instant::now());
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, left)
                .map_err(|e| format!("kafka topic `{topic}` partition {p}: end offset: {e}"))?;
            if high > low {
                behind.insert(p, high);
            }
            assignment
                .add_partition_offset(&topic, p, Offset::Beginning)
                .map_err(|e| format!("kafka topic `{topic}` partition {p}: {e}"))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| format!("kafka topic `{topic}`: assign: {e}"))?;
        let mut reader = Reader {
            consumer,
            rows,
            behind,
        };
        while !reader.behind.is_empty() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "kafka topic `{topic}`: not read to its end within {}s (partitions still behind: {:?})",
                    CATCH_UP.as_secs(),
                    reader.behind.keys().collect::<Vec<_>>()
                ));
            }
            if !reader.poll_batch() {
                return Ok(());
            }
            // Past the end by position too: the last offsets may hold no
            // message (compacted away, a transaction marker).
            if let Ok(positions) = reader.consumer.position() {
                for e in positions.elements() {
                    if let (Offset::Offset(at), Some(end)) =
                        (e.offset(), reader.behind.get(&e.partition()))
                    {
                        if at >= *end {
                            reader.behind.remove(&e.partition());
                        }
                    }
                }
            }
        }
        std::thread::Builder::new()
            .name(format!("table-{name}"))
            .spawn(move || while reader.poll_batch() {})
            .map_err(|e| format!("cannot start its reader thread: {e}"))?;
        Ok(())
    }
}

struct Reader {
    consumer: BaseConsumer,
    rows: Weak<dyn TableRows>,
    /// Partitions not yet read up to the end they had at start.
    behind: BTreeMap<i32, i64>,
}

impl Reader {
    /// Polls up to a batch of messages and applies them; false once the
    /// table is gone.
    fn poll_batch(&mut self) -> bool {
        let mut changes: Vec<Change> = Vec::new();
        let mut failures = Vec::new();
        let mut wait = POLL;
        while changes.len() + failures.len() < BATCH {
            let Some(next) = self.consumer.poll(wait) else {
                break;
            };
            // After the first message, take what is already there.
            wait = Duration::ZERO;
            let m = match next {
                Ok(m) => m,
                Err(e) => {
                    failures.push(format!("kafka: {e}"));
                    continue;
                }
            };
            if let Some(end) = self.behind.get(&m.partition()) {
                if m.offset() + 1 >= *end {
                    self.behind.remove(&m.partition());
                }
            }
            let at = || format!("partition {} offset {}", m.partition(), m.offset());
            let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) else {
                failures.push(format!("message at {} has no UTF-8 key", at()));
                continue;
            };
            let row = match m.payload() {
                None => None,
                Some(value) => match row_text(value) {
                    Some(text) => Some(Arc::from(text)),
                    None => {
                        failures.push(format!(
                            "message `{key}` at {}: the value is not a JSON object",
                            at()
                        ));
                        continue;
                    }
                },
            };
            changes.push((key.to_owned(), row));
        }
        let Some(rows) = self.rows.upgrade() else {
            return false;
        };
        if !changes.is_empty() {
            rows.apply(changes);
        }
        for f in failures {
            rows.failed(f);
        }
        true
    }
}

/// The value as a row: the text of a JSON object, trimmed.
fn row_text(value: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(value).ok()?.trim();
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(_)) => Some(text),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_json_objects() {
        assert_eq!(row_text(b" {\"a\": 1} \n"), Some("{\"a\": 1}"));
        for bad in [&b"[1]"[..], b"3", b"", b"{", b"\xff"] {
            assert_eq!(row_text(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_binding_without_a_topic_does_not_build() {
        let fields =
            BTreeMap::from([("brokers".to_owned(), ConfigValue::Str("127.0.0.1:1".into()))]);
        let e = KafkaTableFactory
            .build("T", &fields)
            .err()
            .expect("refused");
        assert!(e.reason.contains("`topic` is required"), "{}", e.reason);
    }
}
