//! The Kafka consumer: a group member whose offsets move only behind
//! acknowledgements (see `offsets`), that sends a failed batch again after
//! a back-off and gives up on it after `max_redeliveries` (its events go
//! to the pipeline's `OnError`, or are counted dropped), that pauses its
//! partitions while the pipeline is full, and that commits what is
//! acknowledged when it stops.
//!
//! The consumer is polled from a thread of its own, never from a tokio
//! worker: librdkafka runs the rebalance callbacks (`Ctx::pre_rebalance`,
//! which waits up to 2 s for revoked partitions' batches) and the final
//! synchronous commit on the polling thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use dab_api::connector::SourceStats;
use dab_api::event::ERROR_TAG;
use dab_api::metrics::ConnectorMetrics;
use dab_api::{
    AckStatus, AckToken, Batch, BuildError, ConnectorError, Event, Origin, Position, Source,
    SourceContext, Text,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::metrics::KafkaSourceMetrics;
use super::offsets::{Advance, Offsets, Tp};
use super::{Codec, KafkaSourceConfig};
use crate::codec::reserved::rename_reserved;
use crate::codec::{json, proto, Present};
use crate::settings::build_error;

/// How long a revoke waits for the revoked partitions' batches in flight
/// to be acknowledged before giving them up (not committed: read again by
/// the partition's next owner).
const REVOKE_DRAIN: Duration = Duration::from_secs(2);
/// How long a revoke waits for the stateful stages reading the revoked
/// partitions to checkpoint and let go of their state (well within
/// librdkafka's rebalance timeout, `max.poll.interval.ms`).
const REVOKE_STATE: Duration = Duration::from_secs(30);
/// How long a full pipeline may hold the consumer before the partitions
/// are paused. Short waits are ordinary back pressure: librdkafka stops
/// fetching by itself once its queue holds `queued.max.messages.kbytes`
/// (32 MiB here), which bounds memory. A pause throws the prefetched
/// messages away and fetches them again on resume, so it is kept for a
/// pipeline stuck for seconds (a dead sink). tansu 0.6 also skips the rest
/// of a record batch when a fetch starts in its middle, which a resume
/// does (docs/PERFORMANCE.md, "Kafka").
const PAUSE_AFTER: Duration = Duration::from_secs(5);
/// The longest `poll` waits for a message before the reader looks at
/// shutdown and at failed batches due to be sent again.
const POLL: Duration = Duration::from_millis(50);
/// The back-off before a failed batch is sent again the first time; it
/// doubles with each attempt, up to `REDELIVER_MAX`.
const REDELIVER_BASE: Duration = Duration::from_millis(250);
const REDELIVER_MAX: Duration = Duration::from_secs(5);
/// Failed batches waiting to be sent again beyond which nothing new is
/// read: a downstream that fails everything must not grow them without
/// bound.
const MAX_WAITING: usize = 16;

pub struct KafkaSource {
    name: String,
    config: KafkaSourceConfig,
    consumer: Arc<BaseConsumer<Ctx>>,
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
    /// Partitions revoked since the reader last looked: messages of theirs
    /// it polled before the revoke and has not handed on yet are stale
    /// (their next owner, maybe this member again, reads them from the
    /// committed offset), so the reader drops them instead of tracking
    /// ranges of partitions it no longer holds.
    revoked: Mutex<Vec<Tp>>,
    /// The source's stats, once it runs: assignments are published there.
    stats: std::sync::OnceLock<Arc<SourceStats>>,
}

impl ClientContext for Ctx {
    fn stats(&self, s: Statistics) {
        let mut lag = std::collections::BTreeMap::new();
        let mut behind = std::collections::HashMap::new();
        for (topic, t) in &s.topics {
            for (p, ps) in &t.partitions {
                if *p >= 0 && ps.fetch_state == "active" && ps.hi_offset >= 0 && ps.app_offset >= 0
                {
                    behind.insert((topic.clone(), *p), (ps.hi_offset - ps.app_offset).max(0));
                }
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
        if let Some(stats) = self.stats.get() {
            stats.set_behind(behind);
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
        // librdkafka calls this on the polling thread, which is the
        // reader's own, so waiting here holds no async worker.
        debug_assert!(
            tokio::runtime::Handle::try_current().is_err(),
            "the kafka rebalance callback ran on a tokio thread"
        );
        let revoked = tps(list);
        // Stateful stages that keep state per partition checkpoint it and
        // let go of it first: the next owner restores it from there.
        if let Some(stats) = self.stats.get() {
            let names = revoked.iter().map(|(t, p)| (t.to_string(), *p)).collect();
            if !stats.revoke_and_wait(names, REVOKE_STATE) {
                tracing::warn!(source = %self.metrics.name, "partitions revoked before their window state was checkpointed; their next owner restores the last checkpoint and reads the rest again");
            }
        }
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
        // Not under the offsets lock: acknowledgements (on tokio workers)
        // take it, and must not wait for a broker round trip.
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
            if !is_nothing_to_commit(&e) {
                KafkaSourceMetrics::inc(&self.metrics.commit_errors);
                tracing::warn!(source = %self.metrics.name, error = %e, "commit on revoke failed");
            }
        }
        let mut o = self.offsets.lock().unwrap_or_else(PoisonError::into_inner);
        for tp in &revoked {
            o.revoke(tp);
        }
        drop(o);
        self.revoked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(revoked.iter().cloned());
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
            if let Some(stats) = self.stats.get() {
                stats.set_partitions(
                    tps(list)
                        .into_iter()
                        .map(|(t, p)| (t.to_string(), p))
                        .collect(),
                );
            }
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
            revoked: Mutex::new(Vec::new()),
            stats: std::sync::OnceLock::new(),
        };
        let consumer: BaseConsumer<Ctx> = config
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

/// One message as the source keeps it until its batch is acknowledged, so
/// that a failed batch can be sent again without reading it again.
#[derive(Debug, Clone)]
struct Msg {
    /// Index into `Decoder::topics`.
    topic: usize,
    partition: i32,
    offset: i64,
    /// Milliseconds since the epoch, when the message has a timestamp.
    timestamp_ms: Option<i64>,
    payload: Option<Bytes>,
}

/// Turns messages into events, filling what the event left out from where
/// the message came from: `host` = topic, and, when `offset` is missing,
/// `offset` = the message's offset and `pid` = its partition, so the UID
/// of a message read twice is the same both times (Dedup can remove it).
struct Decoder {
    codec: Codec,
    /// `codec::reserved`: rename the `dab.*` names messages claim.
    rename_reserved: bool,
    topics: Vec<(Arc<str>, Text)>,
}

impl Decoder {
    fn topic(&mut self, name: &str) -> usize {
        if let Some(i) = self.topics.iter().position(|(n, _)| &**n == name) {
            return i;
        }
        self.topics.push((Arc::<str>::from(name), Text::from(name)));
        self.topics.len() - 1
    }

    fn keep(&mut self, m: &BorrowedMessage<'_>) -> Msg {
        Msg {
            topic: self.topic(m.topic()),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            payload: m.payload().map(Bytes::copy_from_slice),
        }
    }

    fn where_from(&self, m: &Msg) -> String {
        format!("{}[{}]@{}", self.topics[m.topic].0, m.partition, m.offset)
    }

    /// `stats` is `None` when a batch is sent again (its bytes and errors
    /// were counted the first time). The event carries the message's
    /// position as its `origin`.
    fn decode(&self, m: &Msg, stats: Option<&SourceStats>) -> Event {
        let mut ev = self.decode_event(m, stats);
        ev.origin = Origin(Some(Position {
            topic: self.topics[m.topic].1.clone(),
            partition: m.partition,
            offset: m.offset,
        }));
        ev
    }

    fn decode_event(&self, m: &Msg, stats: Option<&SourceStats>) -> Event {
        let topic = &self.topics[m.topic].1;
        let Some(bytes) = &m.payload else {
            if let Some(s) = stats {
                SourceStats::add(&s.decode_errors, 1);
            }
            return Event::undecodable(
                topic.clone(),
                Bytes::new(),
                format!("{}: empty message (no value)", self.where_from(m)),
            );
        };
        if let Some(s) = stats {
            SourceStats::add(&s.bytes, bytes.len() as u64);
        }
        let decoded = match self.codec {
            Codec::Json => json::decode(bytes.clone()),
            Codec::Protobuf => proto::decode(bytes.clone()),
        };
        match decoded {
            Ok((mut ev, present)) => {
                // Renamed on every decode, counted on the first.
                if self.rename_reserved && rename_reserved(&mut ev) {
                    if let Some(s) = stats {
                        SourceStats::add(&s.reserved_names, 1);
                    }
                }
                fill(&mut ev, present, m, topic);
                ev
            }
            Err(e) => {
                if let Some(s) = stats {
                    SourceStats::add(&s.decode_errors, 1);
                }
                Event::undecodable(
                    topic.clone(),
                    bytes.clone(),
                    format!("{}: {e}", self.where_from(m)),
                )
            }
        }
    }
}

fn fill(ev: &mut Event, present: Present, m: &Msg, topic: &Text) {
    if present.timestamp && present.host && present.offset {
        return;
    }
    ev.touch();
    if !present.timestamp {
        ev.timestamp = match m.timestamp_ms {
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
        ev.offset = u64::try_from(m.offset).unwrap_or(0);
        ev.pid = u32::try_from(m.partition).unwrap_or(0);
    }
}

/// A batch handed on, kept until its acknowledgement.
#[derive(Debug)]
struct Sent {
    msgs: Vec<Msg>,
    /// Per partition: its range's first offset and id in `Offsets`.
    spans: Vec<(Tp, i64, u64)>,
    /// Times this batch was sent again so far.
    redeliveries: u32,
    /// Sent for the last time, marked for `OnError`.
    exhausted: bool,
}

/// A failed batch and when to send it again.
#[derive(Debug)]
struct Retry {
    at: Instant,
    sent: Sent,
}

/// What the acknowledgements share with the reader thread.
struct Shared {
    offsets: Arc<Mutex<Offsets>>,
    consumer: Weak<BaseConsumer<Ctx>>,
    metrics: Arc<KafkaSourceMetrics>,
    retries: Mutex<Vec<Retry>>,
    max_redeliveries: u32,
    /// Set once the reader stops: failed batches are then left to the
    /// next reader of their partitions (not committed, read again).
    stopping: AtomicBool,
    /// When "sent again" and "giving up" were last logged.
    last_retry_log: Mutex<Option<Instant>>,
    last_give_up_log: Mutex<Option<Instant>>,
}

impl Shared {
    fn retries(&self) -> std::sync::MutexGuard<'_, Vec<Retry>> {
        self.retries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the ranges done and stores what became committable.
    fn store(&self, o: &mut Offsets, spans: &[(Tp, i64, u64)]) {
        for (tp, first, id) in spans {
            if let Advance::Store(next) = o.complete(tp, *first, *id) {
                let Some(c) = self.consumer.upgrade() else {
                    continue;
                };
                // librdkafka's rd_kafka_offset_store stores the offset of
                // the last message handled and commits that plus one, the
                // next to read.
                match c.store_offset(&tp.0, tp.1, next - 1) {
                    Ok(()) => KafkaSourceMetrics::inc(&self.metrics.stored),
                    // Revoked meanwhile: the next owner reads again.
                    Err(e) => tracing::debug!(error = %e, "offset not stored"),
                }
            }
        }
    }

    /// The acknowledgement of one batch sent.
    fn settle(&self, sent: Sent, status: AckStatus) {
        let mut o = self.offsets.lock().unwrap_or_else(PoisonError::into_inner);
        match status {
            AckStatus::Delivered => self.store(&mut o, &sent.spans),
            AckStatus::Failed if sent.exhausted => {
                // Not even `OnError` took them (it, or the pipeline, is
                // gone): counted, logged, and committed past, as promised.
                let n = sent.msgs.len() as u64;
                self.metrics.exhausted_lost.fetch_add(n, Ordering::Relaxed);
                for (tp, first, _) in &sent.spans {
                    tracing::error!(source = %self.metrics.name, topic = %tp.0, partition = tp.1, first_offset = first, "events given up on after max_redeliveries could not be handed to OnError; dropped (retries_exhausted)");
                }
                self.store(&mut o, &sent.spans);
            }
            AckStatus::Failed => {
                KafkaSourceMetrics::inc(&self.metrics.failed_batches);
                let Sent {
                    msgs,
                    mut spans,
                    redeliveries,
                    ..
                } = sent;
                // Partitions revoked meanwhile are the next owner's; their
                // messages are left out when the batch is sent again.
                spans.retain(|(tp, first, id)| o.fail(tp, *first, *id));
                drop(o);
                if spans.is_empty() || self.stopping.load(Ordering::Acquire) {
                    return;
                }
                let exhausted = redeliveries >= self.max_redeliveries;
                let (at, redeliveries) = if exhausted {
                    (Instant::now(), redeliveries)
                } else {
                    (
                        Instant::now() + back_off(redeliveries + 1),
                        redeliveries + 1,
                    )
                };
                if !exhausted {
                    log_rarely(&self.last_retry_log, |()| {
                        tracing::warn!(source = %self.metrics.name, events = msgs.len(), redeliveries, "a batch was not delivered; it will be sent again (logged at most every 5 s)");
                    });
                }
                self.retries().push(Retry {
                    at,
                    sent: Sent {
                        msgs,
                        spans,
                        redeliveries,
                        exhausted,
                    },
                });
            }
        }
    }
}

/// The wait before the `n`th redelivery (from 1).
fn back_off(n: u32) -> Duration {
    REDELIVER_BASE
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(REDELIVER_MAX)
}

fn ack_for(shared: &Arc<Shared>, sent: Sent) -> AckToken {
    let shared = shared.clone();
    AckToken::new(move |status| shared.settle(sent, status))
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
        let mut ends: Option<Vec<(Tp, i64)>> = None;
        match &config.bounds {
            None => {
                consumer.subscribe(&topics).map_err(|e| {
                    ConnectorError::Other(format!("kafka subscribe to {topics:?}: {e}"))
                })?;
                tracing::info!(source = %name, topics = ?topics, group = %config.group, "kafka consumer started");
            }
            Some(bounds) => {
                let mut list = TopicPartitionList::new();
                for b in bounds.iter().filter(|b| b.start < b.end) {
                    list.add_partition_offset(
                        &b.topic,
                        b.partition,
                        rdkafka::Offset::Offset(b.start),
                    )
                    .map_err(|e| ConnectorError::Other(format!("kafka assign: {e}")))?;
                }
                consumer
                    .assign(&list)
                    .map_err(|e| ConnectorError::Other(format!("kafka assign: {e}")))?;
                ends = Some(
                    bounds
                        .iter()
                        .filter(|b| b.start < b.end)
                        .map(|b| ((Arc::from(b.topic.as_str()), b.partition), b.end))
                        .collect(),
                );
                tracing::info!(source = %name, ranges = bounds.len(), "kafka backfill reader started");
            }
        }
        let SourceContext {
            out,
            shutdown,
            stats,
            ..
        } = ctx;
        let _ = consumer.context().stats.set(stats.clone());
        let shared = Arc::new(Shared {
            offsets,
            consumer: Arc::downgrade(&consumer),
            metrics,
            retries: Mutex::new(Vec::new()),
            max_redeliveries: config.max_redeliveries,
            stopping: AtomicBool::new(false),
            last_retry_log: Mutex::new(None),
            last_give_up_log: Mutex::new(None),
        });
        let reader = Reader {
            name: name.clone(),
            consumer,
            shared,
            out,
            shutdown,
            stats,
            decoder: Decoder {
                codec: config.codec,
                rename_reserved: config.rename_reserved,
                topics: Vec::new(),
            },
            batch_events: config.batch_events,
            runtime: tokio::runtime::Handle::current(),
            last_log: Mutex::new(None),
            ends,
        };
        let (done, finished) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("kafka-{name}"))
            .spawn(move || {
                reader.run();
                let _ = done.send(());
            })
            .map_err(|e| ConnectorError::Other(format!("kafka reader thread: {e}")))?;
        finished
            .await
            .map_err(|_| ConnectorError::Other("the kafka reader thread panicked".into()))?;
        tracing::info!(source = %name, "kafka consumer stopped");
        Ok(())
    }

    fn metrics(&self) -> Option<Arc<dyn ConnectorMetrics>> {
        Some(self.metrics.clone())
    }
}

/// The consumer's own thread: polls, decodes, hands batches on, sends
/// failed ones again, and commits at the end.
struct Reader {
    name: String,
    consumer: Arc<BaseConsumer<Ctx>>,
    shared: Arc<Shared>,
    out: mpsc::Sender<Batch>,
    shutdown: CancellationToken,
    stats: Arc<SourceStats>,
    decoder: Decoder,
    batch_events: usize,
    /// For waiting on the pipeline's channel from this thread.
    runtime: tokio::runtime::Handle,
    last_log: Mutex<Option<Instant>>,
    /// A backfill's partitions not yet read to their end offset
    /// (exclusive); `None` for a group member.
    ends: Option<Vec<(Tp, i64)>>,
}

impl Reader {
    fn run(mut self) {
        while !self.shutdown.is_cancelled() {
            if self.backfill_done() {
                tracing::info!(source = %self.name, "kafka backfill read to its end offsets");
                break;
            }
            let (due, waiting, next_at) = {
                let mut r = self.shared.retries();
                let now = Instant::now();
                let due = r.iter().position(|t| t.at <= now).map(|i| r.swap_remove(i));
                (due, r.len(), r.iter().map(|t| t.at).min())
            };
            if let Some(retry) = due {
                if self.resend(retry.sent).is_err() {
                    break;
                }
                continue;
            }
            let wait = next_at.map_or(POLL, |t| {
                t.saturating_duration_since(Instant::now()).min(POLL)
            });
            if waiting >= MAX_WAITING {
                std::thread::sleep(wait);
                continue;
            }
            if self.read(wait).is_err() {
                break;
            }
        }
        self.stop();
    }

    /// A backfill is done once every partition is read to its end and
    /// every batch is settled (failed ones sent again until then).
    fn backfill_done(&self) -> bool {
        self.ends.as_ref().is_some_and(Vec::is_empty)
            && self.shared.retries().is_empty()
            && self
                .shared
                .offsets
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .unsettled_total()
                == 0
    }

    /// For a backfill: whether `m` is before its partition's end offset;
    /// a partition read to its end is paused and forgotten.
    fn within_bounds(&mut self, m: &BorrowedMessage<'_>) -> bool {
        let Some(ends) = &mut self.ends else {
            return true;
        };
        let Some(i) = ends
            .iter()
            .position(|(tp, _)| tp.1 == m.partition() && &*tp.0 == m.topic())
        else {
            // Already read to its end.
            return false;
        };
        let end = ends[i].1;
        if m.offset() + 1 >= end {
            let (tp, _) = ends.swap_remove(i);
            let mut list = TopicPartitionList::new();
            list.add_partition(&tp.0, tp.1);
            let _ = self.consumer.pause(&list);
        }
        m.offset() < end
    }

    /// Reads up to a batch and hands it on. `Err` when the pipeline is gone.
    fn read(&mut self, wait: Duration) -> Result<(), ()> {
        let mut msgs: Vec<Msg> = Vec::new();
        let mut wait = wait;
        loop {
            // A rebalance runs inside `poll`; what it revoked is dropped
            // from the messages polled before it, never from the message
            // this poll returns (librdkafka drops stale ones itself).
            // A handle of its own: a message borrows the consumer while the
            // reader decides about it.
            let consumer = self.consumer.clone();
            let next = consumer.poll(wait);
            wait = Duration::ZERO;
            self.drop_revoked(&mut msgs);
            match next {
                None => break,
                Some(Ok(m)) => {
                    if !self.within_bounds(&m) {
                        continue;
                    }
                    msgs.push(self.decoder.keep(&m));
                    if msgs.len() >= self.batch_events {
                        break;
                    }
                }
                Some(Err(e)) => {
                    KafkaSourceMetrics::inc(&self.shared.metrics.errors);
                    log_rarely(&self.last_log, |()| {
                        tracing::warn!(source = %self.name, error = %e, "kafka consumer error (will keep retrying)");
                    });
                    if msgs.is_empty() {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    break;
                }
            }
        }
        if msgs.is_empty() {
            return Ok(());
        }
        let events: Vec<Event> = msgs
            .iter()
            .map(|m| self.decoder.decode(m, Some(&self.stats)))
            .collect();
        SourceStats::add(&self.stats.events, events.len() as u64);
        let spans = self.track(&msgs);
        let sent = Sent {
            msgs,
            spans,
            redeliveries: 0,
            exhausted: false,
        };
        self.hand_on(Batch::new(events, ack_for(&self.shared, sent)))
    }

    /// Drops the messages of partitions revoked since the last look: they
    /// were polled before the revoke and are not tracked, so nothing of
    /// theirs is committed, and the partitions' next owner reads them.
    fn drop_revoked(&self, msgs: &mut Vec<Msg>) {
        let revoked = std::mem::take(
            &mut *self
                .consumer
                .context()
                .revoked
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if revoked.is_empty() || msgs.is_empty() {
            return;
        }
        let before = msgs.len();
        let topics = &self.decoder.topics;
        msgs.retain(|m| {
            !revoked
                .iter()
                .any(|tp| tp.1 == m.partition && tp.0 == topics[m.topic].0)
        });
        tracing::debug!(source = %self.name, dropped = before - msgs.len(), "messages polled before a revoke dropped; their partitions' next owner reads them");
    }

    /// Records the batch's range in each partition it covers.
    fn track(&self, msgs: &[Msg]) -> Vec<(Tp, i64, u64)> {
        // (topic, partition, first, last)
        let mut ranges: Vec<(usize, i32, i64, i64)> = Vec::new();
        for m in msgs {
            match ranges
                .iter_mut()
                .find(|r| r.1 == m.partition && r.0 == m.topic)
            {
                Some(r) => r.3 = m.offset,
                None => ranges.push((m.topic, m.partition, m.offset, m.offset)),
            }
        }
        let mut o = self
            .shared
            .offsets
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        ranges
            .into_iter()
            .map(|(t, p, first, last)| {
                let tp = (self.decoder.topics[t].0.clone(), p);
                let id = o.track(&tp, first, last);
                (tp, first, id)
            })
            .collect()
    }

    /// Sends a failed batch again, or for the last time marked for
    /// `OnError`. `Err` when the pipeline is gone.
    fn resend(&mut self, mut sent: Sent) -> Result<(), ()> {
        {
            let mut o = self
                .shared
                .offsets
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            sent.spans
                .retain(|(tp, first, id)| o.resend(tp, *first, *id));
        }
        if sent.spans.is_empty() {
            // Every partition was revoked meanwhile.
            return Ok(());
        }
        let topics = &self.decoder.topics;
        sent.msgs.retain(|m| {
            sent.spans
                .iter()
                .any(|(tp, _, _)| tp.1 == m.partition && tp.0 == topics[m.topic].0)
        });
        let mut events: Vec<Event> = sent
            .msgs
            .iter()
            .map(|m| self.decoder.decode(m, None))
            .collect();
        let m = &self.shared.metrics;
        if sent.exhausted {
            m.exhausted_events
                .fetch_add(events.len() as u64, Ordering::Relaxed);
            let attempts = sent.redeliveries + 1;
            for (ev, msg) in events.iter_mut().zip(&sent.msgs) {
                if !ev.is_undecodable() {
                    let why = format!(
                        "{}: not delivered after {attempts} attempts (max_redeliveries {})",
                        self.decoder.where_from(msg),
                        self.shared.max_redeliveries
                    );
                    ev.set_tag(Text::from_static(ERROR_TAG), Text::from(why));
                }
            }
            log_rarely(&self.shared.last_give_up_log, |()| {
                tracing::warn!(source = %self.name, events = events.len(), attempts, "giving up on a batch: its events go to OnError, or are dropped (retries_exhausted); logged at most every 5 s, counted in dab_kafka_exhausted_events_total");
            });
        } else {
            KafkaSourceMetrics::inc(&m.redelivered_batches);
        }
        let exhausted = sent.exhausted;
        let mut batch = Batch::new(events, ack_for(&self.shared, sent));
        batch.retries_exhausted = exhausted;
        self.hand_on(batch)
    }

    /// Hands a batch to the pipeline. A full pipeline: wait a little, then
    /// pause the partitions so librdkafka stops fetching, until the
    /// pipeline takes the batch. `Err` when the pipeline is gone.
    fn hand_on(&self, batch: Batch) -> Result<(), ()> {
        let batch = match self.out.try_reserve() {
            Ok(p) => {
                p.send(batch);
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(())) => return self.gone(batch),
            Err(mpsc::error::TrySendError::Full(())) => batch,
        };
        let permit = self.runtime.block_on(async {
            match tokio::time::timeout(PAUSE_AFTER, self.out.reserve()).await {
                Ok(p) => p,
                Err(_) => {
                    let paused = self.consumer.assignment().ok();
                    if let Some(a) = &paused {
                        if self.consumer.pause(a).is_ok() {
                            KafkaSourceMetrics::inc(&self.shared.metrics.pauses);
                        }
                    }
                    let permit = self.out.reserve().await;
                    if let Some(a) = &paused {
                        // Partitions revoked meanwhile are not ours to resume.
                        let _ = self.consumer.resume(a);
                    }
                    permit
                }
            }
        });
        match permit {
            Ok(p) => {
                p.send(batch);
                Ok(())
            }
            Err(_) => self.gone(batch),
        }
    }

    /// The pipeline is gone (stopping): the batch is not delivered, and not
    /// sent again.
    fn gone(&self, batch: Batch) -> Result<(), ()> {
        self.shared.stopping.store(true, Ordering::Release);
        drop(batch);
        Err(())
    }

    /// Stops reading; lets what was read drain, then commits it and leaves
    /// the group.
    fn stop(self) {
        let Reader {
            name,
            consumer,
            shared,
            out,
            ends,
            ..
        } = self;
        shared.stopping.store(true, Ordering::Release);
        drop(out);
        // Failed batches waiting are not sent again: their ranges stay
        // uncommitted, so the partitions' next reader reads them again.
        shared.retries().clear();
        let mut waiting = Instant::now();
        loop {
            let left = shared
                .offsets
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
            std::thread::sleep(Duration::from_millis(20));
        }
        if ends.is_some() {
            // A backfill reads assigned ranges for its sinks only.
            drop(consumer);
            return;
        }
        match consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => KafkaSourceMetrics::inc(&shared.metrics.commits),
            Err(e) if is_nothing_to_commit(&e) => {}
            Err(e) => {
                KafkaSourceMetrics::inc(&shared.metrics.commit_errors);
                tracing::warn!(source = %name, error = %e, "final offset commit failed; uncommitted events will be read again");
            }
        }
        consumer.unsubscribe();
        drop(consumer);
    }
}
