//! A disk queue's figures on `/metrics` (the `dab_diskq_*` families).
//!
//! The owner thread refreshes a snapshot of `DiskQueue::metrics()` (every
//! 250 ms and when it closes). Every piece of the queue (its sink, each
//! reader) hands the runtime a view of it; only one view reports the
//! queue-wide families at a time (the oldest still alive), so a queue with
//! several readers appears once. Each reader's view adds its own counters.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dab_api::metrics::{ConnectorMetrics, Sample};
use dab_diskq::Metrics;

/// What the owner thread publishes.
#[derive(Debug)]
pub(crate) struct Shared {
    pub queue: String,
    snapshot: Mutex<Metrics>,
    /// Records of appends the full queue holds back now.
    held: AtomicU64,
    /// Records refused under drop_newest without being offered to the
    /// queue (the rest of a write after a refusal).
    refused: AtomicU64,
    views: Mutex<BTreeSet<u64>>,
    next_view: AtomicU64,
}

impl Shared {
    pub(crate) fn new(queue: &str) -> Shared {
        Shared {
            queue: queue.to_owned(),
            snapshot: Mutex::default(),
            held: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            views: Mutex::default(),
            next_view: AtomicU64::new(0),
        }
    }

    pub(crate) fn set(&self, m: Metrics) {
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = m;
    }

    pub(crate) fn set_held(&self, n: usize) {
        self.held.store(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn add_refused(&self, n: u64) {
        self.refused.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Metrics {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn views(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.views.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The queue-wide figures, as one piece of the queue reports them.
#[derive(Debug)]
pub struct DiskQueueMetrics {
    shared: Arc<Shared>,
    id: u64,
}

impl DiskQueueMetrics {
    pub(crate) fn new(shared: Arc<Shared>) -> DiskQueueMetrics {
        let id = shared.next_view.fetch_add(1, Ordering::Relaxed);
        shared.views().insert(id);
        DiskQueueMetrics { shared, id }
    }

    fn reports(&self) -> bool {
        self.shared.views().first() == Some(&self.id)
    }
}

impl Drop for DiskQueueMetrics {
    fn drop(&mut self) {
        self.shared.views().remove(&self.id);
    }
}

impl ConnectorMetrics for DiskQueueMetrics {
    fn samples(&self, out: &mut Vec<Sample>) {
        if !self.reports() {
            return;
        }
        let m = self.shared.snapshot();
        let q = || self.shared.queue.clone();
        let gauge = |name, help, v: f64| Sample::gauge(name, help, v).label("queue", q());
        let counter = |name, help, v: u64| Sample::counter(name, help, v).label("queue", q());
        out.push(gauge(
            "dab_diskq_bytes",
            "Bytes the disk queue's segment files take",
            m.bytes_on_disk as f64,
        ));
        out.push(gauge(
            "dab_diskq_segments",
            "Segment files of the disk queue",
            m.segments as f64,
        ));
        out.push(gauge(
            "dab_diskq_oldest_unacked_age_seconds",
            "Age of the oldest record some reader has not acknowledged (0: none)",
            m.oldest_unacked_age.map_or(0.0, |d| d.as_secs_f64()),
        ));
        out.push(gauge(
            "dab_diskq_retained_records",
            "Records kept on disk (a segment is deleted once every reader acknowledged it)",
            m.next_seq.saturating_sub(m.oldest_seq) as f64,
        ));
        out.push(gauge(
            "dab_diskq_durable_seq",
            "Highest sequence number known fsynced",
            m.durable_seq as f64,
        ));
        out.push(gauge(
            "dab_diskq_held_records",
            "Records of writes the full queue holds back now (back pressure)",
            self.shared.held.load(Ordering::Relaxed) as f64,
        ));
        out.push(counter(
            "dab_diskq_appended_records_total",
            "Records appended since the queue was opened",
            m.records_appended,
        ));
        out.push(counter(
            "dab_diskq_appended_bytes_total",
            "Record bytes appended since the queue was opened",
            m.bytes_appended,
        ));
        out.push(counter(
            "dab_diskq_acked_records_total",
            "Records acknowledged, summed over readers",
            m.records_acked,
        ));
        out.push(counter(
            "dab_diskq_full_total",
            "Appends the full queue held back (when_full: block)",
            m.full_rejections,
        ));
        out.push(counter(
            "dab_diskq_dropped_records_total",
            "Records refused at max_bytes under when_full: drop_newest",
            m.records_refused + self.shared.refused.load(Ordering::Relaxed),
        ));
        out.push(counter(
            "dab_diskq_torn_records_total",
            "Torn tails cut off the active segment on recovery",
            m.torn_records,
        ));
        out.push(counter(
            "dab_diskq_torn_bytes_total",
            "Bytes cut off the active segment on recovery",
            m.torn_bytes,
        ));
        out.push(counter(
            "dab_diskq_skipped_records_total",
            "Records readers skipped past damaged frames in sealed segments",
            m.skipped_records,
        ));
    }
}

/// One reader's figures, plus the queue-wide ones when it is the reporting
/// view.
#[derive(Debug)]
pub struct DiskReaderMetrics {
    pub(crate) queue: DiskQueueMetrics,
    pub(crate) reader: String,
    pub(crate) batches: AtomicU64,
    pub(crate) events: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) failed_batches: AtomicU64,
    pub(crate) undecodable: AtomicU64,
    /// Events given up on after `max_redeliveries`: sent once more,
    /// marked for `OnError`.
    pub(crate) exhausted: AtomicU64,
    /// Of those, events not even `OnError` took: acknowledged past.
    pub(crate) exhausted_lost: AtomicU64,
}

impl DiskReaderMetrics {
    pub(crate) fn new(shared: Arc<Shared>, reader: &str) -> DiskReaderMetrics {
        DiskReaderMetrics {
            queue: DiskQueueMetrics::new(shared),
            reader: reader.to_owned(),
            batches: AtomicU64::new(0),
            events: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            failed_batches: AtomicU64::new(0),
            undecodable: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
            exhausted_lost: AtomicU64::new(0),
        }
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

impl ConnectorMetrics for DiskReaderMetrics {
    fn samples(&self, out: &mut Vec<Sample>) {
        self.queue.samples(out);
        let labels = || {
            [
                ("queue", self.queue.shared.queue.clone()),
                ("reader", self.reader.clone()),
            ]
        };
        let counter = |name, help, c: &AtomicU64| {
            let [a, b] = labels();
            Sample::counter(name, help, c.load(Ordering::Relaxed))
                .label(a.0, a.1)
                .label(b.0, b.1)
        };
        out.push(counter(
            "dab_diskq_reader_events_total",
            "Events a disk queue reader handed on (sent again after a failure included)",
            &self.events,
        ));
        out.push(counter(
            "dab_diskq_reader_acked_records_total",
            "Records a disk queue reader acknowledged to the queue",
            &self.acked,
        ));
        out.push(counter(
            "dab_diskq_reader_failed_batches_total",
            "Batches whose delivery failed; each is sent again after a back-off, up to max_redeliveries times",
            &self.failed_batches,
        ));
        out.push(counter(
            "dab_diskq_reader_exhausted_total",
            "Events given up on after max_redeliveries, sent to OnError or dropped",
            &self.exhausted,
        ));
        out.push(counter(
            "dab_diskq_reader_exhausted_lost_total",
            "Events given up on that not even OnError took (its pipeline was gone); acknowledged past",
            &self.exhausted_lost,
        ));
        out.push(counter(
            "dab_diskq_reader_undecodable_total",
            "Records that did not decode as events (sent on as dab.undecodable)",
            &self.undecodable,
        ));
    }
}
