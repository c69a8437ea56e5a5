//! A window's changelog on Kafka (`dab_api::changelog`): a compacted topic
//! on the cluster of the source it reads, one partition per input
//! partition number. Records are written by an idempotent producer
//! (`acks=all`, in order per partition) and read back by an assigned
//! consumer that joins no group. The checkpoint id travels in the header
//! `dab.cp` (8 bytes, big-endian), so a tombstone carries one too.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dab_api::changelog::{ChangeRecord, Changelog, ChangelogFactory};
use dab_api::config::Fields;
use dab_api::{BuildError, ConfigValue};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::settings::build_error;

/// The header that carries a record's checkpoint id.
const HEADER: &str = "dab.cp";
/// Longest wait for the broker: creating the topic, a flush, reading a
/// partition to its end.
const WAIT: Duration = Duration::from_secs(60);
/// Compaction must not remove a committed value in favour of one a
/// checkpoint cut short wrote, before the next owner has read the
/// partition and written the committed values again.
const MIN_COMPACTION_LAG_MS: &str = "3600000";

/// Opens changelogs on the cluster of a `kind: kafka` source binding.
#[derive(Debug, Clone, Copy, Default)]
pub struct KafkaChangelogFactory;

impl ChangelogFactory for KafkaChangelogFactory {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn open(
        &self,
        fields: &BTreeMap<String, ConfigValue>,
        name: &str,
    ) -> Result<Arc<dyn Changelog>, BuildError> {
        let f = Fields(fields);
        let input = super::KafkaSourceConfig::from_fields(name, fields)?;
        let brokers = super::brokers(name, f)?.to_owned();
        let options = super::options(name, fields)?;
        let err = |what: &str, e: &dyn std::fmt::Display| {
            build_error(name, format!("changelog topic `{name}`: {what}: {e}"))
        };
        let base = [("bootstrap.servers", brokers)];
        let producer: BaseProducer<Deliveries> = super::client_config(
            &[
                base[0].clone(),
                ("client.id", format!("dab-changelog-{name}")),
                ("enable.idempotence", "true".into()),
                ("acks", "all".into()),
                ("linger.ms", "2".into()),
                ("message.timeout.ms", "30000".into()),
            ],
            &options,
        )
        .create_with_context(Deliveries::default())
        .map_err(|e| err("producer", &e))?;
        let consumer: BaseConsumer = super::client_config(
            &[
                base[0].clone(),
                // librdkafka wants a group; an assigned consumer joins none.
                ("group.id", format!("dab.changelog.{name}")),
                ("client.id", format!("dab-changelog-{name}")),
                ("enable.auto.commit", "false".into()),
                ("enable.auto.offset.store", "false".into()),
                ("enable.partition.eof", "true".into()),
                ("auto.offset.reset", "earliest".into()),
            ],
            &options,
        )
        .create()
        .map_err(|e| err("consumer", &e))?;
        let admin: AdminClient<DefaultClientContext> = super::client_config(&base, &options)
            .create()
            .map_err(|e| err("admin client", &e))?;
        // As many partitions as the widest input topic (or a queue's
        // `partitions`, for a topic not created yet).
        let mut partitions = input.partitions.unwrap_or(1);
        for t in &input.topics {
            if let Ok(n) = partition_count(&consumer, t, Duration::ZERO) {
                partitions = partitions.max(n);
            }
        }
        create_topic(&admin, name, partitions).map_err(|e| err("create", &e))?;
        // The topic may be older and smaller than the input now.
        let have = partition_count(&consumer, name, WAIT).map_err(|e| err("metadata", &e))?;
        if have < partitions {
            return Err(build_error(
                name,
                format!(
                    "changelog topic `{name}` has {have} partitions, fewer than the {partitions} of its input; \
                     add partitions to it (kafka-topics --alter) or delete it"
                ),
            ));
        }
        Ok(Arc::new(KafkaChangelog {
            topic: name.to_owned(),
            producer,
            consumer: Mutex::new(consumer),
            append: Mutex::new(()),
        }))
    }
}

fn create_topic(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    partitions: i32,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for replication in [-1, 1] {
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
            .set("cleanup.policy", "compact")
            .set("min.compaction.lag.ms", MIN_COMPACTION_LAG_MS);
        let results = rt
            .block_on(admin.create_topics([&new], &opts))
            .map_err(|e| e.to_string())?;
        match results.into_iter().next() {
            Some(Ok(_)) => {
                tracing::info!(topic, partitions, "changelog topic created");
                return Ok(());
            }
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => return Ok(()),
            Some(Err((_, RDKafkaErrorCode::InvalidReplicationFactor))) if replication < 0 => {}
            Some(Err((_, code))) => return Err(code.to_string()),
        }
    }
    Ok(())
}

/// The partitions of `topic`, waiting up to `patience` for a topic just
/// created to show them.
fn partition_count(
    consumer: &BaseConsumer,
    topic: &str,
    patience: Duration,
) -> Result<i32, KafkaError> {
    let deadline = Instant::now() + patience;
    loop {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let n = md
            .topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .sum::<usize>();
        // A topic just created may take a moment to show its partitions.
        if n > 0 || Instant::now() >= deadline {
            return Ok(i32::try_from(n).unwrap_or(i32::MAX));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Delivery reports of the producer: per partition the highest offset
/// stored, and the first failure.
#[derive(Default)]
struct Deliveries {
    state: Mutex<(BTreeMap<i32, i64>, Option<String>)>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match result {
            Ok(m) => {
                let high = s.0.entry(m.partition()).or_insert(-1);
                *high = (*high).max(m.offset());
            }
            Err((e, _)) => {
                s.1.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

struct KafkaChangelog {
    topic: String,
    producer: BaseProducer<Deliveries>,
    consumer: Mutex<BaseConsumer>,
    /// One append at a time: the delivery reports are per append.
    append: Mutex<()>,
}

impl std::fmt::Debug for KafkaChangelog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaChangelog")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Changelog for KafkaChangelog {
    fn name(&self) -> &str {
        &self.topic
    }

    fn append(&self, batches: &[(i32, Vec<ChangeRecord>)]) -> Result<Vec<(i32, i64)>, String> {
        let _one = self.append.lock().unwrap_or_else(PoisonError::into_inner);
        *self
            .producer
            .context()
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Default::default();
        let deadline = Instant::now() + WAIT;
        for (partition, records) in batches {
            for r in records {
                let id = r.checkpoint.to_be_bytes();
                let headers = OwnedHeaders::new().insert(Header {
                    key: HEADER,
                    value: Some(&id[..]),
                });
                let mut record: BaseRecord<'_, [u8], [u8], ()> = BaseRecord::to(&self.topic)
                    .partition(*partition)
                    .key(&r.key[..])
                    .headers(headers);
                if let Some(v) = &r.value {
                    record = record.payload(&v[..]);
                }
                let mut record = Some(record);
                while let Some(rec) = record.take() {
                    match self.producer.send(rec) {
                        Ok(()) => {}
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), rec)) => {
                            if Instant::now() >= deadline {
                                return Err(format!(
                                    "changelog `{}`: the producer queue stayed full",
                                    self.topic
                                ));
                            }
                            self.producer.poll(Duration::from_millis(10));
                            record = Some(rec);
                        }
                        Err((e, _)) => {
                            return Err(format!("changelog `{}`: send: {e}", self.topic))
                        }
                    }
                }
            }
        }
        self.producer
            .flush(deadline.saturating_duration_since(Instant::now()))
            .map_err(|e| format!("changelog `{}`: flush: {e}", self.topic))?;
        let s = self
            .producer
            .context()
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = &s.1 {
            return Err(format!("changelog `{}`: delivery: {e}", self.topic));
        }
        let mut ends = Vec::new();
        for (partition, records) in batches {
            if records.is_empty() {
                continue;
            }
            match s.0.get(partition) {
                Some(high) if *high >= 0 => ends.push((*partition, high + 1)),
                _ => {
                    return Err(format!(
                        "changelog `{}`: no delivery report for partition {partition}",
                        self.topic
                    ))
                }
            }
        }
        Ok(ends)
    }

    fn read(&self, partition: i32, from: i64) -> Result<(Vec<ChangeRecord>, i64), String> {
        let consumer = self.consumer.lock().unwrap_or_else(PoisonError::into_inner);
        let topic = &self.topic;
        let at =
            |e: &dyn std::fmt::Display| format!("changelog `{topic}` partition {partition}: {e}");
        // Usually the local store is current (a restart, a partition given
        // back by a rebalance): one ListOffsets answers that, where an
        // assignment and a fetch cost seconds on some brokers (tansu).
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, WAIT)
            .map_err(|e| at(&format!("end offset: {e}")))?;
        if from >= high {
            return Ok((Vec::new(), from.max(high)));
        }
        // From `from` to the end the fetch reports (partition EOF).
        let mut list = TopicPartitionList::new();
        let start = if from > 0 {
            Offset::Offset(from)
        } else {
            Offset::Beginning
        };
        list.add_partition_offset(topic, partition, start)
            .map_err(|e| at(&e))?;
        consumer.assign(&list).map_err(|e| at(&e))?;
        let deadline = Instant::now() + WAIT;
        let mut out = Vec::new();
        let mut next = from.max(0);
        let result = loop {
            if Instant::now() >= deadline {
                break Err(at(&format!(
                    "not read to its end within {}s (at offset {next})",
                    WAIT.as_secs()
                )));
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    // The position is the end (the last offsets may hold
                    // no message: compacted away).
                    if let Ok(pos) = consumer.position() {
                        if let Some(Offset::Offset(p)) =
                            pos.find_partition(topic, partition).map(|e| e.offset())
                        {
                            next = next.max(p);
                        }
                    }
                    break Ok(());
                }
                // A start offset compaction or retention removed: read
                // from the earliest kept.
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::OffsetOutOfRange))) => {
                    let mut list = TopicPartitionList::new();
                    list.add_partition_offset(topic, partition, Offset::Beginning)
                        .map_err(|e| at(&e))?;
                    consumer.assign(&list).map_err(|e| at(&e))?;
                }
                Some(Err(e)) => break Err(at(&format!("read: {e}"))),
                Some(Ok(m)) => {
                    next = m.offset() + 1;
                    out.push(record_of(&m)?);
                }
            }
        };
        let _ = consumer.unassign();
        result.map(|()| (out, next))
    }
}

fn record_of(m: &BorrowedMessage<'_>) -> Result<ChangeRecord, String> {
    let checkpoint = m
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == HEADER))
        .and_then(|h| h.value)
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| {
            format!(
                "changelog `{}` partition {} offset {}: a record without its `{HEADER}` header: \
                 is something else writing this topic?",
                m.topic(),
                m.partition(),
                m.offset()
            )
        })?;
    Ok(ChangeRecord {
        key: m.key().unwrap_or_default().to_vec(),
        value: m.payload().map(<[u8]>::to_vec),
        checkpoint,
    })
}
