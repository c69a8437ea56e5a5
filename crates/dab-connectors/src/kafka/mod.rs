//! Kafka sources, sinks and queues on librdkafka (SPEC sections 2, 4, 5).
//!
//! - The source is a consumer-group member, polled from a thread of its
//!   own. Offsets are stored only when the events they cover are
//!   acknowledged end to end ([`offsets`]) and librdkafka commits the
//!   stored ones every second and on revoke; the source commits once more,
//!   synchronously, when it stops. A batch that failed downstream is sent
//!   again after a back-off, up to `max_redeliveries` times, then marked
//!   for the pipeline's `OnError` (or its `retries_exhausted` drop count)
//!   and committed past. Under back pressure the assigned partitions are
//!   paused until the pipeline takes the next batch.
//! - The sink is an idempotent producer (`acks=all`). A write hands the
//!   messages to librdkafka; `flush` waits for every delivery report, so the
//!   runtime acknowledges a batch only once Kafka has it. Failed deliveries
//!   are sent again on the next flush and reported as errors meanwhile, so
//!   the runtime backs off; a message too large for the broker is counted
//!   and dropped, since sending it again cannot succeed.
//! - A queue bound to a topic is both: pipelines writing the queue share
//!   one producer; each pipeline reading it is its own consumer group,
//!   `dab.<queue>.<pipeline id>` (built by the runtime).
//!
//! One event per message: the value is the JSON object or the protobuf
//! event (`codec`), the key the field named by `key`, or none.

mod changelog;
pub mod metrics;
pub mod offsets;
mod sink;
mod source;
mod table;

use std::collections::BTreeMap;

use dab_api::config::Fields;
use dab_api::{BuildError, ConfigValue, Sink, SinkFactory, Source, SourceFactory};
use rdkafka::ClientConfig;

use crate::settings::build_error;

pub use changelog::KafkaChangelogFactory;
pub use sink::KafkaSink;
pub use source::KafkaSource;
pub use table::KafkaTableFactory;

/// The payload encoding of messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Json,
    Protobuf,
}

impl Codec {
    fn from_fields(name: &str, f: Fields<'_>) -> Result<Codec, BuildError> {
        match f.str("codec") {
            None | Some("json") => Ok(Codec::Json),
            Some("protobuf") => Ok(Codec::Protobuf),
            Some(other) => Err(build_error(
                name,
                format!("`codec` must be json or protobuf, not `{other}`"),
            )),
        }
    }
}

/// `options:` of a binding, as librdkafka settings (strings).
fn options(
    name: &str,
    fields: &BTreeMap<String, ConfigValue>,
) -> Result<Vec<(String, String)>, BuildError> {
    let Some(v) = fields.get("options") else {
        return Ok(Vec::new());
    };
    let ConfigValue::Map(m) = v else {
        return Err(build_error(
            name,
            "`options` must be a map of librdkafka settings",
        ));
    };
    m.iter()
        .map(|(k, v)| {
            let s = match v {
                ConfigValue::Str(s) => s.clone(),
                ConfigValue::Int(i) => i.to_string(),
                ConfigValue::Float(x) => x.to_string(),
                ConfigValue::Bool(b) => b.to_string(),
                _ => {
                    return Err(build_error(
                        name,
                        format!("`options.{k}` must be a string, number or boolean"),
                    ))
                }
            };
            Ok((k.clone(), s))
        })
        .collect()
}

fn brokers<'a>(name: &str, f: Fields<'a>) -> Result<&'a str, BuildError> {
    match f.str("brokers") {
        Some(b) if !b.trim().is_empty() => Ok(b),
        _ => Err(build_error(
            name,
            "`brokers` is required (host:port, comma-separated)",
        )),
    }
}

fn partitions(name: &str, f: Fields<'_>) -> Result<Option<i32>, BuildError> {
    match f.int("partitions") {
        None => Ok(None),
        Some(n) if (1..=100_000).contains(&n) => Ok(i32::try_from(n).ok()),
        Some(n) => Err(build_error(
            name,
            format!("`partitions` must be between 1 and 100000, not {n}"),
        )),
    }
}

/// Creates a queue's topic when it does not exist yet. Failures are logged,
/// not fatal: the topic may exist already, or the broker may create topics
/// itself.
async fn ensure_topic(
    name: &str,
    brokers: &str,
    options: &[(String, String)],
    topic: &str,
    partitions: i32,
) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> =
        match client_config(&[("bootstrap.servers", brokers.to_owned())], options).create() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(queue = name, error = %e, "cannot create a kafka admin client");
                return;
            }
        };
    let opts = AdminOptions::new().operation_timeout(Some(std::time::Duration::from_secs(10)));
    // The broker's default replication first; a broker that wants a number
    // gets 1.
    for replication in [-1, 1] {
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
        match admin.create_topics([&new], &opts).await {
            Ok(results) => match results.into_iter().next() {
                Some(Ok(_)) => {
                    tracing::info!(queue = name, topic, partitions, "kafka topic created");
                    return;
                }
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) | None => return,
                Some(Err((_, RDKafkaErrorCode::InvalidReplicationFactor))) if replication < 0 => {
                    continue
                }
                Some(Err((_, code))) => {
                    tracing::warn!(queue = name, topic, error = %code, "cannot create kafka topic");
                    return;
                }
            },
            Err(e) => {
                tracing::warn!(queue = name, topic, error = %e, "cannot create kafka topic");
                return;
            }
        }
    }
}

/// Our defaults, then the binding's `options` over them.
fn client_config(defaults: &[(&str, String)], options: &[(String, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in defaults {
        c.set(*k, v.as_str());
    }
    for (k, v) in options {
        c.set(k.as_str(), v.as_str());
    }
    c.set_log_level(rdkafka::config::RDKafkaLogLevel::Warning);
    c
}

/// Settings of `kind: kafka` sources (and of queues read by a pipeline).
#[derive(Debug, Clone)]
pub struct KafkaSourceConfig {
    pub brokers: String,
    pub topics: Vec<String>,
    pub group: String,
    pub codec: Codec,
    /// `earliest` (the default: a new group misses nothing) or `latest`.
    pub start_offset: String,
    pub options: Vec<(String, String)>,
    /// Events per batch handed to the pipeline, at most.
    pub batch_events: usize,
    /// Create the topics with this many partitions when they do not exist
    /// (queues).
    pub partitions: Option<i32>,
    /// Times a batch that failed downstream is sent again before its events
    /// go to `OnError` (or are counted dropped, `retries_exhausted`).
    pub max_redeliveries: u32,
    /// Rename the `dab.*` types and tag keys messages claim to
    /// `dab.untrusted.*` (`reserved_names: rename`, the default for a
    /// source), or keep them (`keep`: a topic only DAB writes; queues
    /// bound to Kafka are read so).
    pub rename_reserved: bool,
    /// `dab backfill`: read exactly these ranges, each partition assigned
    /// (no group membership, nothing committed), and end once all of them
    /// are read and settled. `None`: a group member reading for ever.
    pub bounds: Option<Vec<BoundRange>>,
}

/// One partition's offsets `start..end` (end exclusive) to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundRange {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

/// The field `dab backfill` sets on the Kafka source it runs: the ranges
/// as `topic:partition:start:end`, separated by `;`. Not a binding field.
pub const BACKFILL_FIELD: &str = "dab.backfill";

impl BoundRange {
    pub fn encode(ranges: &[BoundRange]) -> String {
        ranges
            .iter()
            .map(|r| format!("{}:{}:{}:{}", r.topic, r.partition, r.start, r.end))
            .collect::<Vec<_>>()
            .join(";")
    }

    pub fn decode(text: &str) -> Option<Vec<BoundRange>> {
        text.split(';')
            .filter(|s| !s.is_empty())
            .map(|r| {
                let mut it = r.rsplitn(4, ':');
                let end = it.next()?.parse().ok()?;
                let start = it.next()?.parse().ok()?;
                let partition = it.next()?.parse().ok()?;
                let topic = it.next()?.to_owned();
                Some(BoundRange {
                    topic,
                    partition,
                    start,
                    end,
                })
            })
            .collect()
    }
}

/// `max_redeliveries` when the binding does not say.
pub const DEFAULT_MAX_REDELIVERIES: u32 = 5;

impl KafkaSourceConfig {
    pub fn from_fields(
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<KafkaSourceConfig, BuildError> {
        let f = Fields(fields);
        let mut topics: Vec<String> = f
            .str_list("topics")
            .unwrap_or_default()
            .into_iter()
            .map(str::to_owned)
            .collect();
        if let Some(t) = f.str("topic") {
            topics.insert(0, t.to_owned());
        }
        topics.retain(|t| !t.is_empty());
        if topics.is_empty() {
            return Err(build_error(name, "`topic` or `topics` is required"));
        }
        let start_offset = match f.str("start_offset") {
            None => "earliest".to_owned(),
            Some(s @ ("earliest" | "latest")) => s.to_owned(),
            Some(other) => {
                return Err(build_error(
                    name,
                    format!("`start_offset` must be earliest or latest, not `{other}`"),
                ))
            }
        };
        let rename_reserved = match f.str("reserved_names") {
            None | Some("rename") => true,
            Some("keep") => false,
            Some(other) => {
                return Err(build_error(
                    name,
                    format!("`reserved_names` must be rename or keep, not `{other}`"),
                ))
            }
        };
        Ok(KafkaSourceConfig {
            brokers: brokers(name, f)?.to_owned(),
            topics,
            group: f
                .str("group")
                .map_or_else(|| format!("dab.{name}"), str::to_owned),
            codec: Codec::from_fields(name, f)?,
            start_offset,
            options: options(name, fields)?,
            batch_events: 1024,
            partitions: partitions(name, f)?,
            max_redeliveries: match f.int("max_redeliveries") {
                None => DEFAULT_MAX_REDELIVERIES,
                Some(n) => u32::try_from(n)
                    .ok()
                    .filter(|n| *n <= 1000)
                    .ok_or_else(|| {
                        build_error(
                            name,
                            format!("`max_redeliveries` must be between 0 and 1000, not {n}"),
                        )
                    })?,
            },
            rename_reserved,
            bounds: match f.str(BACKFILL_FIELD) {
                None => None,
                Some(text) => Some(BoundRange::decode(text).ok_or_else(|| {
                    build_error(
                        name,
                        format!("`{BACKFILL_FIELD}` is not a list of ranges: {text}"),
                    )
                })?),
            },
        })
    }

    /// librdkafka's settings for the consumer.
    pub fn client_config(&self, name: &str) -> ClientConfig {
        client_config(
            &[
                ("bootstrap.servers", self.brokers.clone()),
                ("group.id", self.group.clone()),
                ("client.id", format!("dab-{name}")),
                // At least once: we store offsets as acknowledgements come
                // back; librdkafka commits what is stored every second and
                // on revoke.
                // A backfill commits nothing: it is not the group's reader.
                (
                    "enable.auto.commit",
                    if self.bounds.is_some() {
                        "false"
                    } else {
                        "true"
                    }
                    .into(),
                ),
                ("enable.auto.offset.store", "false".into()),
                ("auto.commit.interval.ms", "1000".into()),
                ("auto.offset.reset", self.start_offset.clone()),
                // Groups join in seconds, and a dead member's partitions
                // move on in seconds (librdkafka's default is 45 s).
                ("session.timeout.ms", "6000".into()),
                ("heartbeat.interval.ms", "1000".into()),
                // Bounds what librdkafka prefetches (default 64 MiB).
                ("queued.max.messages.kbytes", "32768".into()),
                // Consumer lag per partition comes from the statistics.
                ("statistics.interval.ms", "1000".into()),
            ],
            &self.options,
        )
    }
}

/// Settings of `kind: kafka` sinks (and of queues written by a pipeline).
#[derive(Debug, Clone)]
pub struct KafkaSinkConfig {
    pub brokers: String,
    /// The topic, or the template text when `template` is set.
    pub topic: String,
    /// `topic` as a template with placeholders (`events.{type}`): each
    /// event goes to the topic it renders. `None` for a plain topic.
    pub template: Option<dab_api::template::Template>,
    /// Templated topics the sink remembers at once (each new one is
    /// logged): the least recently used is forgotten first.
    pub max_targets: usize,
    /// Event field used as message key: host, type, pid, offset, or a tag.
    pub key: Option<String>,
    pub codec: Codec,
    pub compression: String,
    pub options: Vec<(String, String)>,
    /// Create the topic with this many partitions when it does not exist.
    pub partitions: Option<i32>,
}

impl KafkaSinkConfig {
    pub fn from_fields(
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<KafkaSinkConfig, BuildError> {
        let f = Fields(fields);
        let (topic, template) = match f.str("topic") {
            Some(t) if !t.is_empty() => {
                let template = dab_api::template::Template::parse_field("topic", t)
                    .map_err(|reason| build_error(name, reason))?;
                match template.literal() {
                    Some(plain) => (plain, None),
                    None => (t.to_owned(), Some(template)),
                }
            }
            _ => return Err(build_error(name, "`topic` is required")),
        };
        let compression = match f.str("compression") {
            None => "none".to_owned(),
            Some(c @ ("none" | "gzip" | "snappy" | "lz4" | "zstd")) => c.to_owned(),
            Some(other) => {
                return Err(build_error(
                    name,
                    format!("`compression` must be none, gzip, snappy, lz4 or zstd, not `{other}`"),
                ))
            }
        };
        Ok(KafkaSinkConfig {
            brokers: brokers(name, f)?.to_owned(),
            topic,
            template,
            max_targets: usize::try_from(
                f.int("max_targets")
                    .unwrap_or(dab_api::schema::DEFAULT_MAX_TARGETS),
            )
            .unwrap_or(1)
            .max(1),
            key: f.str("key").map(str::to_owned),
            codec: Codec::from_fields(name, f)?,
            compression,
            options: options(name, fields)?,
            partitions: partitions(name, f)?,
        })
    }

    /// librdkafka's settings for the producer.
    pub fn client_config(&self, name: &str) -> ClientConfig {
        client_config(
            &[
                ("bootstrap.servers", self.brokers.clone()),
                ("client.id", format!("dab-{name}")),
                // Idempotent: retries inside librdkafka never duplicate or
                // reorder; implies acks=all.
                ("enable.idempotence", "true".into()),
                ("acks", "all".into()),
                // Keyed messages go where a Java producer would put them:
                // murmur2 of the key, positive, modulo the partitions
                // (librdkafka's default, CRC32, is not Java's).
                ("partitioner", "murmur2_random".into()),
                ("compression.codec", self.compression.clone()),
                ("linger.ms", "5".into()),
                ("batch.num.messages", "10000".into()),
                // A delivery that has not succeeded in 30 s is reported
                // failed to us (and sent again), not held for 5 minutes.
                ("message.timeout.ms", "30000".into()),
                ("statistics.interval.ms", "0".into()),
            ],
            &self.options,
        )
    }
}

/// Builds `kind: kafka` sources.
#[derive(Debug, Clone, Copy, Default)]
pub struct KafkaSourceFactory;

impl SourceFactory for KafkaSourceFactory {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn build(
        &self,
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Source>, BuildError> {
        let config = KafkaSourceConfig::from_fields(name, fields)?;
        Ok(Box::new(KafkaSource::new(name, config)?))
    }
}

/// Builds `kind: kafka` sinks.
#[derive(Debug, Clone, Copy, Default)]
pub struct KafkaSinkFactory;

impl SinkFactory for KafkaSinkFactory {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn build(
        &self,
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Sink>, BuildError> {
        let config = KafkaSinkConfig::from_fields(name, fields)?;
        Ok(Box::new(KafkaSink::new(name, config)?))
    }
}
