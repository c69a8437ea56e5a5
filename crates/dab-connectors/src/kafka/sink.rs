//! The Kafka producer: idempotent, `acks=all`. It confirms each write on
//! its own (`Sink::confirms_writes`): a write hands its messages to
//! librdkafka and returns; when the last of them has its delivery report,
//! the write's confirmation says delivered (with the messages the broker
//! refused as too large, which go to `OnError`), or failed (the runtime
//! then writes it again). So the runtime acknowledges each write as its
//! reports come, with no flush that waits for everything. A producer that
//! hit a fatal error is rebuilt before the next write; what it still held
//! is purged, reported failed and written again.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dab_api::metrics::ConnectorMetrics;
use dab_api::{
    BuildError, Confirm, Confirmed, Confirmer, ConnectorError, Event, Pending, Rejection, Sink,
    SinkError, Written,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message as _};
use tokio::sync::Notify;

use super::metrics::KafkaSinkMetrics;
use super::{Codec, KafkaSinkConfig};
use crate::codec::{json, proto};
use crate::settings::build_error;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One write's messages still waiting for a delivery report.
#[derive(Debug)]
struct Inflight {
    remaining: AtomicUsize,
    started: Instant,
    /// Messages the broker refused as too large, by index in the write.
    rejected: Mutex<Vec<Rejection>>,
    /// Messages whose delivery failed, and the first reason.
    failed: Mutex<(usize, Option<String>)>,
    /// Told when the last report is in; `None` for a plain `write`.
    confirmer: Mutex<Option<Confirmer>>,
}

/// The delivery opaque of one message: its write and its place in it.
#[derive(Debug)]
struct Msg {
    inflight: Arc<Inflight>,
    index: usize,
}

/// State shared with librdkafka's delivery callback.
#[derive(Debug)]
struct Shared {
    metrics: Arc<KafkaSinkMetrics>,
    topic: String,
    /// Messages handed to librdkafka without a delivery report yet.
    pending: AtomicUsize,
    /// Woken when `pending` reaches zero.
    idle: Notify,
    /// Failed deliveries since the last `flush` (plain writes only: a
    /// confirmed write reports its own), and the first reason.
    failures: AtomicU64,
    reason: Mutex<Option<String>>,
    /// The topic is a template: a topic it renders that the broker does
    /// not have refuses that message on its own (to `OnError`), rather
    /// than holding the sink.
    templated: bool,
}

impl Shared {
    /// `n` messages of `inflight` have their outcome; the last one
    /// confirms the write.
    fn settle(&self, inflight: &Inflight, n: usize) {
        if inflight.remaining.fetch_sub(n, Ordering::AcqRel) == n {
            self.metrics.latency(inflight.started.elapsed());
            let confirmer = lock(&inflight.confirmer).take();
            let (failed, reason) = std::mem::take(&mut *lock(&inflight.failed));
            if let Some(c) = confirmer {
                if failed > 0 {
                    // The runtime writes the whole write again.
                    self.metrics.resent(failed as u64);
                    c.send(Confirmed::Failed(ConnectorError::Other(format!(
                        "{failed} kafka deliveries to `{}` failed ({}); writing them again",
                        self.topic,
                        reason.unwrap_or_default()
                    ))));
                } else {
                    let rejected = std::mem::take(&mut *lock(&inflight.rejected));
                    c.send(Confirmed::Delivered { rejected });
                }
            } else if failed > 0 {
                self.failures.fetch_add(failed as u64, Ordering::AcqRel);
                lock(&self.reason).get_or_insert_with(|| reason.unwrap_or_default());
            }
        }
        if self.pending.fetch_sub(n, Ordering::AcqRel) == n {
            self.idle.notify_one();
        }
    }

    fn fail(&self, inflight: &Inflight, reason: String) {
        self.metrics.delivery_error(reason.clone());
        let mut f = lock(&inflight.failed);
        f.0 += 1;
        f.1.get_or_insert(reason);
    }

    fn too_large(&self, msg: &Msg, bytes: usize, e: &KafkaError) {
        self.metrics.too_large(1);
        let reason = format!("kafka: message of {bytes} bytes too large for the broker: {e}");
        if lock(&msg.inflight.confirmer).is_none() {
            tracing::error!(sink = %self.metrics.name, bytes, error = %e, "message too large for the broker; dropped (counted in dab_kafka_too_large_total)");
        }
        lock(&msg.inflight.rejected).push(Rejection {
            index: msg.index,
            reason,
        });
    }

    /// A templated topic the broker does not have.
    fn unknown_topic(&self, msg: &Msg, topic: &str, e: &KafkaError) {
        lock(&msg.inflight.rejected).push(Rejection {
            index: msg.index,
            reason: unknown_topic_reason(topic, e),
        });
    }
}

fn unknown_topic_reason(topic: &str, e: &KafkaError) -> String {
    format!("kafka sink `topic`: the broker has no topic `{topic}` (rendered by the template): {e}")
}

fn is_unknown_topic(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition)
    )
}

struct Ctx(Arc<Shared>);

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(sink = %self.0.metrics.name, error = %error, reason, "kafka producer error");
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<Msg>;

    fn delivery(&self, result: &DeliveryResult<'_>, msg: Box<Msg>) {
        match result {
            Ok(_) => self.0.metrics.delivered(1),
            // Refused by the broker in the report, not only at send time:
            // sending it again cannot succeed.
            Err((e, m)) if is_too_large(e) => self.0.too_large(&msg, m.payload_len(), e),
            Err((e, m)) if self.0.templated && is_unknown_topic(e) => {
                self.0.unknown_topic(&msg, m.topic(), e);
            }
            Err((e, _)) => self.0.fail(&msg.inflight, e.to_string()),
        }
        self.0.settle(&msg.inflight, 1);
    }
}

fn is_too_large(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
    )
}

pub struct KafkaSink {
    name: String,
    config: KafkaSinkConfig,
    producer: ThreadedProducer<Ctx>,
    shared: Arc<Shared>,
    buf: BytesMut,
    key_buf: String,
    topic_checked: bool,
    /// Templated topics in use, by when each was last written (LRU, at
    /// most `max_targets`).
    topics: std::collections::HashMap<String, u64>,
    tick: u64,
    topic_buf: String,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    pub fn new(name: &str, config: KafkaSinkConfig) -> Result<KafkaSink, BuildError> {
        let shared = Arc::new(Shared {
            metrics: Arc::new(KafkaSinkMetrics::new(name)),
            topic: config.topic.clone(),
            pending: AtomicUsize::new(0),
            idle: Notify::new(),
            failures: AtomicU64::new(0),
            reason: Mutex::new(None),
            templated: config.template.is_some(),
        });
        let producer = config
            .client_config(name)
            .create_with_context(Ctx(shared.clone()))
            .map_err(|e| build_error(name, format!("kafka producer: {e}")))?;
        Ok(KafkaSink {
            name: name.to_owned(),
            // A templated topic is checked per topic (`use_topic`).
            topic_checked: config.partitions.is_none() || config.template.is_some(),
            config,
            producer,
            shared,
            buf: BytesMut::new(),
            key_buf: String::new(),
            topics: std::collections::HashMap::new(),
            tick: 0,
            topic_buf: String::new(),
        })
    }

    /// Waits until every message handed to librdkafka has its report.
    async fn idle(&self) {
        loop {
            let idle = self.shared.idle.notified();
            if self.shared.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// An idempotent producer can hit a fatal error (a broker that lost
    /// its state answers "unknown producer id"); it never recovers, so a
    /// new one is built. Dropping the old one purges what it still holds:
    /// those reports say failed, and their writes are written again.
    fn renew_if_fatal(&mut self) -> Result<(), SinkError> {
        let Some((code, reason)) = self.producer.client().fatal_error() else {
            return Ok(());
        };
        tracing::error!(sink = %self.name, error = %code, reason, "kafka producer hit a fatal error; starting a new producer");
        self.shared.metrics.producer_restarted();
        match self
            .config
            .client_config(&self.name)
            .create_with_context(Ctx(self.shared.clone()))
        {
            Ok(p) => {
                drop(std::mem::replace(&mut self.producer, p));
                Ok(())
            }
            Err(e) => Err(SinkError::transient(ConnectorError::Other(format!(
                "kafka producer for `{}` cannot be rebuilt: {e}",
                self.config.topic
            )))),
        }
    }

    /// Hands one message to librdkafka, waiting while its queue is full.
    /// `Some(reason)` when the message is too large ever to be taken.
    async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        msg: Box<Msg>,
    ) -> Option<String> {
        let mut record =
            BaseRecord::<[u8], [u8], Box<Msg>>::with_opaque_to(topic, msg).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return None,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, r)) if is_too_large(&e) => {
                    self.shared.metrics.too_large(1);
                    self.shared.settle(&r.delivery_opaque.inflight, 1);
                    return Some(format!(
                        "kafka: message of {} bytes too large: {e}",
                        payload.len()
                    ));
                }
                Err((e, r)) if self.shared.templated && is_unknown_topic(&e) => {
                    self.shared.settle(&r.delivery_opaque.inflight, 1);
                    return Some(unknown_topic_reason(topic, &e));
                }
                Err((e, r)) => {
                    let inflight = &r.delivery_opaque.inflight;
                    self.shared.fail(inflight, e.to_string());
                    self.shared.settle(inflight, 1);
                    return None;
                }
            }
        }
    }

    /// Marks a templated topic used: one new to the sink (or forgotten
    /// since) is logged, and the least recently used is forgotten when
    /// `max_targets` are known. One producer writes every topic, so there
    /// is no handle to close; librdkafka keeps each topic's metadata for
    /// the producer's life.
    fn use_topic(&mut self, topic: &str) {
        self.tick += 1;
        if let Some(used) = self.topics.get_mut(topic) {
            *used = self.tick;
            return;
        }
        if self.topics.len() >= self.config.max_targets {
            if let Some(oldest) = self
                .topics
                .iter()
                .min_by_key(|(_, used)| **used)
                .map(|(t, _)| t.clone())
            {
                self.topics.remove(&oldest);
            }
        }
        tracing::info!(sink = %self.name, topic, "kafka sink writes to a topic new to it");
        self.topics.insert(topic.to_owned(), self.tick);
    }

    /// Hands `events` to librdkafka as one write; `confirmer` is told when
    /// the last delivery report is in. Returns the messages refused at
    /// once as too large.
    async fn produce(
        &mut self,
        events: &[Event],
        confirmer: Option<Confirmer>,
    ) -> Result<Vec<Rejection>, SinkError> {
        if !self.topic_checked {
            if let Some(p) = self.config.partitions {
                super::ensure_topic(
                    &self.name,
                    &self.config.brokers,
                    &self.config.options,
                    &self.config.topic,
                    p,
                )
                .await;
            }
            self.topic_checked = true;
        }
        self.renew_if_fatal()?;
        let inflight = Arc::new(Inflight {
            remaining: AtomicUsize::new(events.len()),
            started: Instant::now(),
            rejected: Mutex::new(Vec::new()),
            failed: Mutex::new((0, None)),
            confirmer: Mutex::new(confirmer),
        });
        self.shared
            .pending
            .fetch_add(events.len(), Ordering::AcqRel);
        let mut key_buf = std::mem::take(&mut self.key_buf);
        let mut buf = std::mem::take(&mut self.buf);
        let mut topic_buf = std::mem::take(&mut self.topic_buf);
        let mut rejected = Vec::new();
        for (index, ev) in events.iter().enumerate() {
            if self.config.template.is_some() {
                let rendered = match &self.config.template {
                    Some(t) => t.render_topic(ev, &mut topic_buf),
                    None => Ok(()),
                };
                if let Err(m) = rendered {
                    // Refused on its own; the runtime sends it to OnError.
                    rejected.push(Rejection {
                        index,
                        reason: format!("kafka sink `topic`: {m}"),
                    });
                    self.shared.settle(&inflight, 1);
                    continue;
                }
                self.use_topic(&topic_buf);
            }
            let topic = match &self.config.template {
                Some(_) => topic_buf.as_str(),
                None => self.config.topic.as_str(),
            };
            let payload = encode(self.config.codec, ev, &mut buf);
            let key = match &self.config.key {
                Some(k) => key_of(ev, k, &mut key_buf).map(<[u8]>::to_vec),
                None => None,
            };
            let msg = Box::new(Msg {
                inflight: inflight.clone(),
                index,
            });
            if let Some(reason) = self.send(topic, key.as_deref(), &payload, msg).await {
                rejected.push(Rejection { index, reason });
            }
        }
        self.key_buf = key_buf;
        self.buf = buf;
        self.topic_buf = topic_buf;
        Ok(rejected)
    }
}

/// The bytes of the event field a binding's `key` names: host, type, pid,
/// offset, or else a tag of that name. `None` when the event has no such
/// tag (the message then has no key).
fn key_of<'a>(ev: &'a Event, key: &str, scratch: &'a mut String) -> Option<&'a [u8]> {
    use std::fmt::Write as _;
    match key {
        "host" => Some(ev.host.as_bytes()),
        "type" => Some(ev.ty.as_bytes()),
        "pid" | "offset" => {
            scratch.clear();
            let n = if key == "pid" {
                u64::from(ev.pid)
            } else {
                ev.offset
            };
            let _ = write!(scratch, "{n}");
            Some(scratch.as_bytes())
        }
        tag => ev.tag(tag).map(|t| t.as_bytes()),
    }
}

fn encode(codec: Codec, ev: &Event, buf: &mut BytesMut) -> Bytes {
    let raw = match codec {
        Codec::Json => ev.raw(dab_api::event::RawCodec::Json),
        Codec::Protobuf => ev.raw(dab_api::event::RawCodec::Protobuf),
    };
    if let Some(raw) = raw {
        return raw.clone();
    }
    match codec {
        Codec::Json => json::encode(ev, buf),
        Codec::Protobuf => proto::encode(ev, buf),
    }
    buf.split().freeze()
}

#[async_trait::async_trait]
impl Sink for KafkaSink {
    fn confirms_writes(&self) -> bool {
        true
    }

    async fn write_confirmed(&mut self, events: &[Event]) -> Result<Pending, SinkError> {
        let (tx, rx) = Confirm::channel();
        let rejected = if events.is_empty() {
            tx.send(Confirmed::Delivered {
                rejected: Vec::new(),
            });
            Vec::new()
        } else {
            self.produce(events, Some(tx)).await?
        };
        Ok(Pending {
            rejected,
            confirm: rx,
        })
    }

    /// A write without a confirmation, for callers that `flush` (the
    /// runtime uses `write_confirmed`).
    async fn write(&mut self, events: &[Event]) -> Result<Written, SinkError> {
        if events.is_empty() {
            return Ok(Written::all());
        }
        let rejected = self.produce(events, None).await?;
        Ok(Written { rejected })
    }

    /// Waits for every delivery report. When deliveries of plain writes
    /// failed since the last flush, says so: the caller writes them again.
    async fn flush(&mut self) -> Result<(), SinkError> {
        self.idle().await;
        self.renew_if_fatal()?;
        let failed = self.shared.failures.swap(0, Ordering::AcqRel);
        let reason = lock(&self.shared.reason).take();
        if failed == 0 {
            return Ok(());
        }
        Err(SinkError::transient(ConnectorError::Other(format!(
            "{failed} kafka deliveries to `{}` failed ({})",
            self.config.topic,
            reason.unwrap_or_default()
        ))))
    }

    /// After a failed write or confirmation: a producer with a fatal error
    /// is replaced. Writes still in flight are left alone; each confirms
    /// on its own.
    async fn rewind(&mut self) -> Result<(), SinkError> {
        self.renew_if_fatal()
    }

    fn metrics(&self) -> Option<Arc<dyn ConnectorMetrics>> {
        Some(self.shared.metrics.clone())
    }
}

impl Drop for KafkaSink {
    fn drop(&mut self) {
        // Whatever is still queued was never acknowledged upstream; do not
        // hold the process for it.
        let _ = self.producer.flush(Duration::from_millis(100));
    }
}
