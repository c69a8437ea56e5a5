//! The Kafka producer: idempotent, `acks=all`; a write hands messages to
//! librdkafka and `flush` waits for their delivery reports, so the runtime
//! acknowledges only what the broker has.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dab_api::metrics::ConnectorMetrics;
use dab_api::{BuildError, ConnectorError, Event, Rejection, Sink, SinkError, Written};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tokio::sync::Notify;

use super::metrics::KafkaSinkMetrics;
use super::{Codec, KafkaSinkConfig};
use crate::codec::{json, proto};
use crate::settings::build_error;

/// One write's messages still waiting for a delivery report.
#[derive(Debug)]
struct Inflight {
    remaining: AtomicUsize,
    started: Instant,
}

/// A message whose delivery failed, kept to be sent again.
#[derive(Debug)]
struct Failed {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
}

/// State shared with librdkafka's delivery callback.
#[derive(Debug)]
struct Shared {
    metrics: Arc<KafkaSinkMetrics>,
    /// Messages handed to librdkafka without a delivery report yet.
    pending: AtomicUsize,
    /// Woken when `pending` reaches zero.
    idle: Notify,
    failed: Mutex<Vec<Failed>>,
    /// The first failure's reason since the last flush, for the error.
    reason: Mutex<Option<String>>,
}

impl Shared {
    fn settle(&self, inflight: &Inflight, n: usize) {
        if inflight.remaining.fetch_sub(n, Ordering::AcqRel) == n {
            self.metrics.latency(inflight.started.elapsed());
        }
        if self.pending.fetch_sub(n, Ordering::AcqRel) == n {
            self.idle.notify_one();
        }
    }

    fn fail(&self, key: Option<&[u8]>, payload: &[u8], reason: String) {
        self.metrics.delivery_error(reason.clone());
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Failed {
                key: key.map(<[u8]>::to_vec),
                payload: payload.to_vec(),
            });
        let mut r = self.reason.lock().unwrap_or_else(PoisonError::into_inner);
        if r.is_none() {
            *r = Some(reason);
        }
    }
}

struct Ctx(Arc<Shared>);

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(sink = %self.0.metrics.name, error = %error, reason, "kafka producer error");
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Arc<Inflight>;

    fn delivery(&self, result: &DeliveryResult<'_>, inflight: Arc<Inflight>) {
        match result {
            Ok(_) => self.0.metrics.delivered(1),
            Err((e, m)) if is_too_large(e) => {
                self.0.metrics.too_large(1);
                tracing::error!(sink = %self.0.metrics.name, bytes = m.payload_len(), error = %e, "message too large for the broker; dropped (counted in dab_kafka_too_large_total)");
            }
            Err((e, m)) => self
                .0
                .fail(m.key(), m.payload().unwrap_or_default(), e.to_string()),
        }
        self.0.settle(&inflight, 1);
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
            pending: AtomicUsize::new(0),
            idle: Notify::new(),
            failed: Mutex::new(Vec::new()),
            reason: Mutex::new(None),
        });
        let producer = config
            .client_config(name)
            .create_with_context(Ctx(shared.clone()))
            .map_err(|e| build_error(name, format!("kafka producer: {e}")))?;
        Ok(KafkaSink {
            name: name.to_owned(),
            topic_checked: config.partitions.is_none(),
            config,
            producer,
            shared,
            buf: BytesMut::new(),
            key_buf: String::new(),
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

    /// Hands one message to librdkafka, waiting while its queue is full.
    /// `Some(reason)` when the message is too large ever to be taken.
    async fn send(
        &self,
        key: Option<&[u8]>,
        payload: &[u8],
        inflight: &Arc<Inflight>,
    ) -> Option<String> {
        loop {
            let mut record = BaseRecord::<[u8], [u8], Arc<Inflight>>::with_opaque_to(
                &self.config.topic,
                inflight.clone(),
            )
            .payload(payload);
            if let Some(k) = key {
                record = record.key(k);
            }
            match self.producer.send(record) {
                Ok(()) => return None,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) if is_too_large(&e) => {
                    self.shared.metrics.too_large(1);
                    self.shared.settle(inflight, 1);
                    return Some(format!(
                        "kafka: message of {} bytes too large: {e}",
                        payload.len()
                    ));
                }
                Err((e, _)) => {
                    self.shared.fail(key, payload, e.to_string());
                    self.shared.settle(inflight, 1);
                    return None;
                }
            }
        }
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
    async fn write(&mut self, events: &[Event]) -> Result<Written, SinkError> {
        if events.is_empty() {
            return Ok(Written::all());
        }
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
        let inflight = Arc::new(Inflight {
            remaining: AtomicUsize::new(events.len()),
            started: Instant::now(),
        });
        self.shared
            .pending
            .fetch_add(events.len(), Ordering::AcqRel);
        let mut key_buf = std::mem::take(&mut self.key_buf);
        let mut buf = std::mem::take(&mut self.buf);
        let mut rejected = Vec::new();
        for (index, ev) in events.iter().enumerate() {
            let payload = encode(self.config.codec, ev, &mut buf);
            let key = match &self.config.key {
                Some(k) => key_of(ev, k, &mut key_buf).map(<[u8]>::to_vec),
                None => None,
            };
            if let Some(reason) = self.send(key.as_deref(), &payload, &inflight).await {
                rejected.push(Rejection { index, reason });
            }
        }
        self.key_buf = key_buf;
        self.buf = buf;
        Ok(Written { rejected })
    }

    /// Waits for every delivery report. Messages whose delivery failed are
    /// sent again and the flush reports an error, so the runtime backs off
    /// and flushes again (the batches stay unacknowledged meanwhile).
    async fn flush(&mut self) -> Result<(), SinkError> {
        self.idle().await;
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            // An idempotent producer can hit a fatal error (a broker that
            // lost its state answers "unknown producer id"): it never
            // recovers, so build a new one. Dropping the old one purges
            // what it still holds; those reports land in `failed` and are
            // sent again below.
            tracing::error!(sink = %self.name, error = %code, reason, "kafka producer hit a fatal error; starting a new producer");
            self.shared.metrics.producer_restarted();
            match self
                .config
                .client_config(&self.name)
                .create_with_context(Ctx(self.shared.clone()))
            {
                Ok(p) => drop(std::mem::replace(&mut self.producer, p)),
                Err(e) => {
                    return Err(SinkError::transient(ConnectorError::Other(format!(
                        "kafka producer for `{}` cannot be rebuilt: {e}",
                        self.config.topic
                    ))))
                }
            }
            self.idle().await;
        }
        let failed = std::mem::take(
            &mut *self
                .shared
                .failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let reason = self
            .shared
            .reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if failed.is_empty() {
            return Ok(());
        }
        let n = failed.len();
        self.shared.metrics.resent(n as u64);
        let inflight = Arc::new(Inflight {
            remaining: AtomicUsize::new(n),
            started: Instant::now(),
        });
        self.shared.pending.fetch_add(n, Ordering::AcqRel);
        for f in failed {
            // Too large was decided when it was first sent; it cannot
            // change on the way back.
            let _ = self.send(f.key.as_deref(), &f.payload, &inflight).await;
        }
        Err(SinkError::transient(ConnectorError::Other(format!(
            "{n} kafka deliveries to `{}` failed ({}); sending them again",
            self.config.topic,
            reason.unwrap_or_default()
        ))))
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
