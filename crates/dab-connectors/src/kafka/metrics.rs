//! Kafka source and sink metrics (issue 5): consumer lag per partition,
//! commits, rebalances and pauses; deliveries, delivery errors by reason,
//! messages too large, and produce latency.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use dab_api::metrics::{ConnectorMetrics, Sample};

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// What a Kafka consumer did.
#[derive(Debug, Default)]
pub struct KafkaSourceMetrics {
    pub name: String,
    /// (topic, partition) -> high watermark minus committed offset, from
    /// librdkafka's statistics (every second).
    pub lag: Mutex<BTreeMap<(String, i32), i64>>,
    /// Offsets stored for commit (after acknowledgement).
    pub stored: AtomicU64,
    pub commits: AtomicU64,
    pub commit_errors: AtomicU64,
    pub assigned: AtomicU64,
    pub revoked: AtomicU64,
    /// Times the partitions were paused because the pipeline was full.
    pub pauses: AtomicU64,
    /// Batches whose acknowledgement said "failed" (each is sent again
    /// after a back-off, up to `max_redeliveries` times).
    pub failed_batches: AtomicU64,
    /// Batches sent again after a failure.
    pub redelivered_batches: AtomicU64,
    /// Events given up on after `max_redeliveries`: sent once more, marked,
    /// for the pipeline's `OnError` (or its `retries_exhausted` drop count).
    pub exhausted_events: AtomicU64,
    /// Exhausted events whose last hand-off failed too (the `OnError`
    /// target or the pipeline was gone): dropped, logged, committed past.
    pub exhausted_lost: AtomicU64,
    /// Errors the consumer reported (broker down, ...), by kind.
    pub errors: AtomicU64,
}

impl KafkaSourceMetrics {
    pub fn new(name: &str) -> KafkaSourceMetrics {
        KafkaSourceMetrics {
            name: name.to_owned(),
            ..KafkaSourceMetrics::default()
        }
    }

    pub fn inc(c: &AtomicU64) {
        add(c, 1);
    }

    /// Total lag over the partitions this consumer reported.
    pub fn total_lag(&self) -> i64 {
        self.lag
            .lock()
            .map(|l| l.values().filter(|v| **v > 0).sum())
            .unwrap_or(0)
    }
}

impl ConnectorMetrics for KafkaSourceMetrics {
    fn samples(&self, out: &mut Vec<Sample>) {
        let src = || self.name.clone();
        if let Ok(lag) = self.lag.lock() {
            for ((topic, partition), v) in lag.iter() {
                out.push(
                    Sample::gauge(
                        "dab_kafka_consumer_lag",
                        "High watermark minus committed offset, per partition",
                        *v as f64,
                    )
                    .label("source", src())
                    .label("topic", topic.clone())
                    .label("partition", partition.to_string()),
                );
            }
        }
        let counters: [(&'static str, &'static str, &AtomicU64); 10] = [
            (
                "dab_kafka_offsets_stored_total",
                "Offsets stored for commit after their events were acknowledged",
                &self.stored,
            ),
            (
                "dab_kafka_commits_total",
                "Offset commits the broker accepted",
                &self.commits,
            ),
            (
                "dab_kafka_commit_errors_total",
                "Offset commits that failed",
                &self.commit_errors,
            ),
            (
                "dab_kafka_partitions_assigned_total",
                "Partitions assigned to this consumer",
                &self.assigned,
            ),
            (
                "dab_kafka_partitions_revoked_total",
                "Partitions revoked from this consumer",
                &self.revoked,
            ),
            (
                "dab_kafka_pauses_total",
                "Times the partitions were paused under back pressure",
                &self.pauses,
            ),
            (
                "dab_kafka_failed_batches_total",
                "Batches not delivered; sent again after a back-off",
                &self.failed_batches,
            ),
            (
                "dab_kafka_redelivered_batches_total",
                "Batches sent again after a failure",
                &self.redelivered_batches,
            ),
            (
                "dab_kafka_exhausted_events_total",
                "Events given up on after max_redeliveries, sent to OnError or dropped",
                &self.exhausted_events,
            ),
            (
                "dab_kafka_consumer_errors_total",
                "Errors the consumer reported",
                &self.errors,
            ),
        ];
        for (name, help, c) in counters {
            out.push(Sample::counter(name, help, get(c)).label("source", src()));
        }
        out.push(
            Sample::counter(
                "dab_kafka_source_dropped_events_total",
                "Events given up on whose hand-off to OnError failed too, by reason",
                get(&self.exhausted_lost),
            )
            .label("source", src())
            .label("reason", "retries_exhausted".to_owned()),
        );
    }
}

/// Upper bounds of the produce-latency histogram, in seconds.
pub const LATENCY_BOUNDS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// What a Kafka producer did.
#[derive(Debug, Default)]
pub struct KafkaSinkMetrics {
    pub name: String,
    pub delivered: AtomicU64,
    /// Delivery failures by librdkafka error; the messages are sent again.
    pub delivery_errors: Mutex<BTreeMap<String, u64>>,
    /// Messages the broker or client refused as too large; dropped, since
    /// sending them again cannot succeed.
    pub too_large: AtomicU64,
    /// Messages sent again after a failed delivery.
    pub resent: AtomicU64,
    /// Producers rebuilt after a fatal error.
    pub restarts: AtomicU64,
    latency: Mutex<([u64; LATENCY_BOUNDS.len() + 1], f64)>,
}

impl KafkaSinkMetrics {
    pub fn new(name: &str) -> KafkaSinkMetrics {
        KafkaSinkMetrics {
            name: name.to_owned(),
            ..KafkaSinkMetrics::default()
        }
    }

    pub fn delivered(&self, n: u64) {
        add(&self.delivered, n);
    }

    pub fn too_large(&self, n: u64) {
        add(&self.too_large, n);
    }

    pub fn producer_restarted(&self) {
        add(&self.restarts, 1);
    }

    pub fn resent(&self, n: u64) {
        add(&self.resent, n);
    }

    pub fn delivery_error(&self, reason: String) {
        if let Ok(mut m) = self.delivery_errors.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    pub fn delivery_errors_total(&self) -> u64 {
        self.delivery_errors
            .lock()
            .map(|m| m.values().sum())
            .unwrap_or(0)
    }

    /// Time from handing a write to librdkafka to its last delivery report.
    pub fn latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BOUNDS.partition_point(|b| *b < s);
        if let Ok(mut l) = self.latency.lock() {
            l.0[i] += 1;
            l.1 += s;
        }
    }
}

impl ConnectorMetrics for KafkaSinkMetrics {
    fn samples(&self, out: &mut Vec<Sample>) {
        let sink = || self.name.clone();
        out.push(
            Sample::counter(
                "dab_kafka_delivered_total",
                "Messages the broker acknowledged",
                get(&self.delivered),
            )
            .label("sink", sink()),
        );
        out.push(
            Sample::counter(
                "dab_kafka_too_large_total",
                "Messages refused as too large and dropped",
                get(&self.too_large),
            )
            .label("sink", sink()),
        );
        out.push(
            Sample::counter(
                "dab_kafka_resent_total",
                "Messages sent again after a failed delivery",
                get(&self.resent),
            )
            .label("sink", sink()),
        );
        out.push(
            Sample::counter(
                "dab_kafka_producer_restarts_total",
                "Producers rebuilt after a fatal error",
                get(&self.restarts),
            )
            .label("sink", sink()),
        );
        if let Ok(m) = self.delivery_errors.lock() {
            for (reason, n) in m.iter() {
                out.push(
                    Sample::counter(
                        "dab_kafka_delivery_errors_total",
                        "Failed deliveries by reason (sent again)",
                        *n,
                    )
                    .label("sink", sink())
                    .label("reason", reason.clone()),
                );
            }
        }
        if let Ok(l) = self.latency.lock() {
            out.extend(Sample::histogram(
                "dab_kafka_produce_latency_seconds",
                [
                    "dab_kafka_produce_latency_seconds_bucket",
                    "dab_kafka_produce_latency_seconds_sum",
                    "dab_kafka_produce_latency_seconds_count",
                ],
                "From handing a write to librdkafka to its last delivery report",
                &LATENCY_BOUNDS,
                &l.0,
                l.1,
                &[("sink", sink())],
            ));
        }
    }
}
