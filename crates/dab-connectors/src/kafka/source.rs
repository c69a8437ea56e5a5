//! The Kafka consumer: a group member whose offsets move only behind
//! acknowledgements (see `offsets`), that pauses its partitions while the
//! pipeline is full, and that commits what is acknowledged when it stops.

use std::future::Future as _;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dab_api::connector::SourceStats;
use dab_api::metrics::ConnectorMetrics;
use dab_api::{
    AckStatus, AckToken, Batch, BuildError, ConnectorError, Event, Source, SourceContext, Text,
};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};

use super::metrics::KafkaSourceMetrics;
use super::offsets::{Advance, Offsets, Tp};
use super::{Codec, KafkaSourceConfig};
use crate::codec::{json, proto, Present};
use crate::settings::build_error;

/// How long a revoke waits for the revoked partitions' batches in flight
/// to be acknowledged before giving them up (not committed: read again by
/// the partition's next owner).
const REVOKE_DRAIN: Duration = Duration::from_secs(2);
/// How long a full pipeline may hold the consumer before the partitions
/// are paused. Short waits are ordinary back pressure: librdkafka stops
/// fetching by itself once its queue holds `queued.max.messages.kbytes`
/// (32 MiB here), which bounds memory. A pause throws the prefetched
/// messages away and fetches them again on resume, so it is kept for a
/// pipeline stuck for seconds (a dead sink). tansu 0.6 also skips the rest
/// of a record batch when a fetch starts in its middle, which a resume
/// does (docs/PERFORMANCE.md, "Kafka").
const PAUSE_AFTER: Duration = Duration::from_secs(5);

pub struct KafkaSource {
    name: String,
    config: KafkaSourceConfig,
    consumer: Arc<StreamConsumer<Ctx>>,
    metrics: Arc<KafkaSourceMetrics>,
    offsets: Arc<Mutex<Offsets>>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Callbacks librdkafka makes on the consumer's behalf.
struct Ctx {
    metrics: Arc<KafkaSourceMetrics>,
    offsets: Arc<Mutex<Offsets>>,
    last_error_log: Mutex<Option<Instant>>,
}

impl ClientContext for Ctx {
    fn stats(&self, s: Statistics) {
        let mut lag = std::collections::BTreeMap::new();
        for (topic, t) in &s.topics {
            for (p, ps) in &t.partitions {
                if *p >= 0 && ps.fetch_state != "none" && ps.hi_offset >= 0 {
                    // Before the first commit, lag counts from the start.
                    let from = if ps.committed_offset >= 0 {
                        ps.committed_offset
                    } else {
                        ps.lo_offset.max(0)
                    };
                    lag.insert((topic.clone(), *p), (ps.hi_offset - from).max(0));
                }
            }
        }
        if let Ok(mut l) = self.metrics.lag.lock() {
            *l = lag;
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        KafkaSourceMetrics::inc(&self.metrics.errors);
        log_rarely(&self.last_error_log, |()| {
            tracing::warn!(source = %self.metrics.name, error = %error, reason, "kafka consumer error (will keep retrying)");
        });
    }
}

/// Runs `log` at most every 5 seconds.
fn log_rarely(last: &Mutex<Option<Instant>>, log: impl FnOnce(())) {
    let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
    if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
        *last = Some(Instant::now());
        log(());
    }
}

fn tps(list: &TopicPartitionList) -> Vec<Tp> {
    list.elements()
        .iter()
        .map(|e| (Arc::from(e.topic()), e.partition()))
        .collect()
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let revoked = tps(list);
        // Give the batches in flight a moment to be acknowledged, so their
        // offsets are committed before another member takes over.
        let deadline = Instant::now() + REVOKE_DRAIN;
        loop {
            let unsettled: usize = {
                let o = self.offsets.lock().unwrap_or_else(PoisonError::into_inner);
                revoked.iter().map(|tp| o.unsettled(tp)).sum()
            };
            if unsettled == 0 {
                break;
            }
            if Instant::now() >= deadline {
                tracing::info!(source = %self.metrics.name, batches = unsettled, "partitions revoked with batches in flight; they will be read again by the next owner");
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut o = self.offsets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            if !is_nothing_to_commit(&e) {
                KafkaSourceMetrics::inc(&self.metrics.commit_errors);
                tracing::warn!(source = %self.metrics.name, error = %e, "commit on revoke failed");
            }
        }
        for tp in &revoked {
            o.revoke(tp);
        }
        self.metrics
            .revoked
            .fetch_add(revoked.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            self.metrics
                .assigned
                .fetch_add(list.count() as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(source = %self.metrics.name, partitions = ?tps(list).iter().map(|(t, p)| format!("{t}[{p}]")).collect::<Vec<_>>(), "kafka partitions assigned");
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) => KafkaSourceMetrics::inc(&self.metrics.commits),
            Err(e) if is_nothing_to_commit(&e) => {}
            Err(e) => {
                KafkaSourceMetrics::inc(&self.metrics.commit_errors);
                log_rarely(&self.last_error_log, |()| {
                    tracing::warn!(source = %self.metrics.name, error = %e, "offset commit failed (retried with the next one)");
                });
            }
        }
    }
}

fn is_nothing_to_commit(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)
            | KafkaError::ConsumerCommit(RDKafkaErrorCode::UnknownGroup)
    ) || e.rdkafka_error_code() == Some(RDKafkaErrorCode::NoOffset)
}

impl KafkaSource {
    pub fn new(name: &str, config: KafkaSourceConfig) -> Result<KafkaSource, BuildError> {
        let metrics = Arc::new(KafkaSourceMetrics::new(name));
        let offsets = Arc::new(Mutex::new(Offsets::default()));
        let ctx = Ctx {
            metrics: metrics.clone(),
            offsets: offsets.clone(),
            last_error_log: Mutex::new(None),
        };
        let consumer: StreamConsumer<Ctx> = config
            .client_config(name)
            .create_with_context(ctx)
            .map_err(|e| build_error(name, format!("kafka consumer: {e}")))?;
        Ok(KafkaSource {
            name: name.to_owned(),
            config,
            consumer: Arc::new(consumer),
            metrics,
            offsets,
        })
    }
}

/// The part of a batch read from one partition.
struct Span {
    tp: Tp,
    first: i64,
    last: i64,
}

/// Turns messages into events, filling what the event left out from where
/// the message came from: `host` = topic, and, when `offset` is missing,
/// `offset` = the message's offset and `pid` = its partition, so the UID
/// of a message read twice is the same both times (Dedup can remove it).
struct Decoder {
    codec: Codec,
    topics: Vec<(Arc<str>, Text)>,
}

impl Decoder {
    fn topic(&mut self, name: &str) -> (Arc<str>, Text) {
        if let Some(t) = self.topics.iter().find(|(n, _)| &**n == name) {
            return t.clone();
        }
        let t = (Arc::<str>::from(name), Text::from(name));
        self.topics.push(t.clone());
        t
    }

    fn decode(&mut self, m: &BorrowedMessage<'_>, stats: &SourceStats) -> Event {
        let (_, topic) = self.topic(m.topic());
        let Some(payload) = m.payload() else {
            SourceStats::add(&stats.decode_errors, 1);
            return Event::undecodable(
                topic,
                Bytes::new(),
                format!(
                    "{}[{}]@{}: empty message (no value)",
                    m.topic(),
                    m.partition(),
                    m.offset()
                ),
            );
        };
        let bytes = Bytes::copy_from_slice(payload);
        SourceStats::add(&stats.bytes, bytes.len() as u64);
        let decoded = match self.codec {
            Codec::Json => json::decode(bytes.clone()),
            Codec::Protobuf => proto::decode(bytes.clone()),
        };
        match decoded {
            Ok((mut ev, present)) => {
                fill(&mut ev, present, m, &topic);
                ev
            }
            Err(e) => {
                SourceStats::add(&stats.decode_errors, 1);
                Event::undecodable(
                    topic,
                    bytes,
                    format!("{}[{}]@{}: {e}", m.topic(), m.partition(), m.offset()),
                )
            }
        }
    }
}

fn fill(ev: &mut Event, present: Present, m: &BorrowedMessage<'_>, topic: &Text) {
    if present.timestamp && present.host && present.offset {
        return;
    }
    ev.touch();
    if !present.timestamp {
        ev.timestamp = match m.timestamp().to_millis() {
            Some(ms) if ms > 0 => ms.saturating_mul(1_000_000),
            _ => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        };
    }
    if !present.host {
        ev.host = topic.clone();
    }
    if !present.offset {
        ev.offset = u64::try_from(m.offset()).unwrap_or(0);
        ev.pid = u32::try_from(m.partition()).unwrap_or(0);
    }
}

/// The acknowledgement of one batch: store the offsets it covers once
/// every copy is delivered; freeze the partitions if any copy failed.
fn ack_for(
    spans: Vec<(Tp, i64, u64)>,
    offsets: Arc<Mutex<Offsets>>,
    consumer: Weak<StreamConsumer<Ctx>>,
    metrics: Arc<KafkaSourceMetrics>,
) -> AckToken {
    AckToken::new(move |status| {
        let mut o = offsets.lock().unwrap_or_else(PoisonError::into_inner);
        match status {
            AckStatus::Delivered => {
                for (tp, first, id) in &spans {
                    if let Advance::Store(next) = o.complete(tp, *first, *id) {
                        let Some(c) = consumer.upgrade() else {
                            continue;
                        };
                        // librdkafka's rd_kafka_offset_store stores the
                        // offset of the last message handled and commits
                        // that plus one, the next to read.
                        match c.store_offset(&tp.0, tp.1, next - 1) {
                            Ok(()) => KafkaSourceMetrics::inc(&metrics.stored),
                            // Revoked meanwhile: the next owner reads again.
                            Err(e) => tracing::debug!(error = %e, "offset not stored"),
                        }
                    }
                }
            }
            AckStatus::Failed => {
                KafkaSourceMetrics::inc(&metrics.failed_batches);
                for (tp, first, id) in &spans {
                    o.fail(tp, *first, *id);
                }
                tracing::warn!(source = %metrics.name, "a batch was not delivered; its partitions' offsets are held so it is read again");
            }
        }
    })
}

/// Polls `recv` once: a message if one is ready now.
async fn ready(consumer: &StreamConsumer<Ctx>) -> Option<KafkaResult<BorrowedMessage<'_>>> {
    let mut fut = pin!(consumer.recv());
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(m) => Poll::Ready(Some(m)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

#[async_trait::async_trait]
impl Source for KafkaSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ConnectorError> {
        let KafkaSource {
            name,
            config,
            consumer,
            metrics,
            offsets,
        } = *self;
        if let Some(partitions) = config.partitions {
            for t in &config.topics {
                super::ensure_topic(&name, &config.brokers, &config.options, t, partitions).await;
            }
        }
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| ConnectorError::Other(format!("kafka subscribe to {topics:?}: {e}")))?;
        tracing::info!(source = %name, topics = ?topics, group = %config.group, "kafka consumer started");
        let SourceContext {
            out,
            shutdown,
            stats,
            ..
        } = ctx;
        let mut decoder = Decoder {
            codec: config.codec,
            topics: Vec::new(),
        };
        let last_log = Mutex::new(None);
        let weak = Arc::downgrade(&consumer);
        'read: loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                m = consumer.recv() => m,
            };
            let mut events = Vec::with_capacity(64);
            let mut spans: Vec<Span> = Vec::new();
            let mut next = Some(first);
            while let Some(m) = next.take() {
                match m {
                    Ok(m) => {
                        events.push(decoder.decode(&m, &stats));
                        let (topic, _) = decoder.topic(m.topic());
                        let (p, off) = (m.partition(), m.offset());
                        match spans.iter_mut().find(|s| s.tp.1 == p && s.tp.0 == topic) {
                            Some(s) => s.last = off,
                            None => spans.push(Span {
                                tp: (topic, p),
                                first: off,
                                last: off,
                            }),
                        }
                    }
                    Err(e) => {
                        KafkaSourceMetrics::inc(&metrics.errors);
                        log_rarely(&last_log, |()| {
                            tracing::warn!(source = %name, error = %e, "kafka consumer error (will keep retrying)");
                        });
                        if events.is_empty() {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue 'read;
                        }
                        break;
                    }
                }
                if events.len() >= config.batch_events {
                    break;
                }
                next = ready(&consumer).await;
            }
            if events.is_empty() {
                continue;
            }
            SourceStats::add(&stats.events, events.len() as u64);
            let ids = {
                let mut o = offsets.lock().unwrap_or_else(PoisonError::into_inner);
                spans
                    .into_iter()
                    .map(|s| {
                        let id = o.track(&s.tp, s.first, s.last);
                        (s.tp, s.first, id)
                    })
                    .collect()
            };
            let ack = ack_for(ids, offsets.clone(), weak.clone(), metrics.clone());
            let batch = Batch::new(events, ack);
            // A full pipeline: wait a little, then pause the partitions so
            // librdkafka stops fetching, until the pipeline takes the batch.
            let permit = match tokio::time::timeout(PAUSE_AFTER, out.reserve()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => break,
                Err(_) => {
                    let paused = consumer.assignment().ok();
                    if let Some(a) = &paused {
                        if consumer.pause(a).is_ok() {
                            KafkaSourceMetrics::inc(&metrics.pauses);
                        }
                    }
                    let permit = out.reserve().await;
                    if let Some(a) = &paused {
                        // Partitions revoked meanwhile are not ours to resume.
                        let _ = consumer.resume(a);
                    }
                    match permit {
                        Ok(p) => p,
                        Err(_) => break,
                    }
                }
            };
            permit.send(batch);
        }
        // Stop reading; let what was read drain, then commit it.
        drop(out);
        let mut waiting = Instant::now();
        loop {
            let left = offsets
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .unsettled_total();
            if left == 0 {
                break;
            }
            if waiting.elapsed() > Duration::from_secs(5) {
                waiting = Instant::now();
                tracing::info!(source = %name, batches = left, "waiting for batches in flight before the final commit");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let c = consumer;
        let m = metrics.clone();
        let name2 = name.clone();
        // The final commit and leaving the group block; keep them off the
        // async workers.
        let _ = tokio::task::spawn_blocking(move || {
            match c.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => KafkaSourceMetrics::inc(&m.commits),
                Err(e) if is_nothing_to_commit(&e) => {}
                Err(e) => {
                    KafkaSourceMetrics::inc(&m.commit_errors);
                    tracing::warn!(source = %name2, error = %e, "final offset commit failed; uncommitted events will be read again");
                }
            }
            c.unsubscribe();
            drop(c);
        })
        .await;
        tracing::info!(source = %name, "kafka consumer stopped");
        Ok(())
    }

    fn metrics(&self) -> Option<Arc<dyn ConnectorMetrics>> {
        Some(self.metrics.clone())
    }
}
