//! Drives one sink under the contract of `dab_api::Sink` ("acknowledged
//! means delivered", SPEC section 11): writes batches in order, holds what
//! it wrote until a flush succeeds, and only then acknowledges it. A failed
//! write or flush acknowledges nothing: the driver backs off (exponential,
//! full jitter; a breaker logs once while the sink keeps failing), calls
//! `rewind` and writes everything held since the last good flush again. A
//! write the peer refuses for good is split until only the events it
//! refuses on their own are left; those go to the sending pipeline's
//! `OnError` target with the reason in `dab.error`, or are counted dropped
//! (`rejected`) and logged with their UIDs. Nothing is given up on unless
//! shutdown is forced; then the sources hear "failed".

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dab_api::batch::Reroute;
use dab_api::event::ERROR_TAG;
use dab_api::{AckToken, Batch, Event, Rejection, Sink, SinkError, Text};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::SinkMetrics;
use crate::reliability::Tracker;

/// Back-off bounds.
const BASE: Duration = Duration::from_millis(50);
const MAX: Duration = Duration::from_secs(5);
/// Consecutive failures that open the breaker.
const BREAKER_AFTER: u32 = 5;
/// Flush (and so acknowledge) at least every this many writes, and when
/// the held events pass this many bytes, even under constant load.
const FLUSH_EVERY: usize = 64;
const FLUSH_BYTES: usize = 16 << 20;

pub struct SinkTask {
    pub sink: Box<dyn Sink>,
    pub input: mpsc::Receiver<Batch>,
    pub metrics: Arc<SinkMetrics>,
    /// Cancelled when shutdown is forced: stop retrying.
    pub force: CancellationToken,
    /// Reliability tracking, when on: what this sink flushed is "delivered".
    pub reliability: Option<Arc<Tracker>>,
    /// Batching by count and time (`batch_size`, `batch_timeout` in the
    /// binding): small batches arriving within the timeout are written
    /// together, up to the size. `None` writes each batch as it comes.
    pub coalesce: Option<Coalesce>,
}

#[derive(Debug, Clone, Copy)]
pub struct Coalesce {
    pub max_events: usize,
    pub max_wait: Duration,
}

/// Shutdown was forced while the sink was failing.
struct GaveUp;

/// The source batch a run of a write's events came from.
struct Part {
    len: usize,
    ack: AckToken,
    on_error: Option<Arc<dyn Reroute>>,
}

/// One write: events taken from one or more source batches (coalescing).
struct Write {
    events: Vec<Event>,
    parts: Vec<Part>,
    bytes: usize,
}

impl Write {
    fn from_batch(b: Batch) -> Write {
        let bytes = b.bytes();
        Write {
            parts: vec![Part {
                len: b.events.len(),
                ack: b.ack,
                on_error: b.on_error,
            }],
            events: b.events,
            bytes,
        }
    }

    fn add(&mut self, b: Batch) {
        self.bytes += b.bytes();
        self.parts.push(Part {
            len: b.events.len(),
            ack: b.ack,
            on_error: b.on_error,
        });
        self.events.extend(b.events);
    }

    fn fail(self) {
        self.parts.into_iter().for_each(|p| p.ack.fail());
    }
}

/// The driver's state: the sink, and what it took since the last good flush.
struct Driver {
    sink: Box<dyn Sink>,
    metrics: Arc<SinkMetrics>,
    force: CancellationToken,
    reliability: Option<Arc<Tracker>>,
    held: Vec<Write>,
    held_bytes: usize,
    /// Failures in a row, for back-off and the breaker.
    failures: u32,
}

impl SinkTask {
    pub async fn run(mut self) {
        let mut d = Driver {
            sink: self.sink,
            metrics: self.metrics,
            force: self.force,
            reliability: self.reliability,
            held: Vec::new(),
            held_bytes: 0,
            failures: 0,
        };
        loop {
            let batch = tokio::select! {
                b = self.input.recv() => b,
                _ = d.force.cancelled() => None,
            };
            let Some(batch) = batch else { break };
            let mut w = Write::from_batch(batch);
            if let Some(c) = self.coalesce {
                // Gather more until the size is reached or the time is up.
                let deadline = tokio::time::Instant::now() + c.max_wait;
                while w.events.len() < c.max_events {
                    let next = tokio::select! {
                        b = self.input.recv() => b,
                        _ = tokio::time::sleep_until(deadline) => None,
                        _ = d.force.cancelled() => None,
                    };
                    let Some(more) = next else { break };
                    w.add(more);
                }
            }
            if d.take(w).await.is_err() {
                break;
            }
            let due =
                self.input.is_empty() || d.held.len() >= FLUSH_EVERY || d.held_bytes >= FLUSH_BYTES;
            if due && d.flush().await.is_err() {
                break;
            }
        }
        if d.flush().await.is_err() {
            d.give_up();
        }
        // A forced stop leaves batches in the channel: they were not
        // written, so they are failed and counted like any given up on.
        self.input.close();
        while let Ok(b) = self.input.try_recv() {
            d.metrics.gave_up(1, b.len() as u64);
            b.ack.fail();
        }
    }
}

impl Driver {
    /// Writes `w` and holds it until the next good flush. On failure:
    /// back off, rewind, write the held writes again, then `w`.
    async fn take(&mut self, mut w: Write) -> Result<(), GaveUp> {
        loop {
            let written = tokio::select! {
                biased;
                _ = self.force.cancelled() => Err(None),
                r = write_narrowing(self.sink.as_mut(), &w.events, 0) => r.map_err(Some),
            };
            match written {
                Ok(rejected) => {
                    self.succeeded();
                    reject(&self.metrics, &mut w, rejected).await;
                    self.held_bytes += w.bytes;
                    self.held.push(w);
                    return Ok(());
                }
                Err(e) => {
                    self.cut_back().await;
                    if let Err(g) = self.failed(e.as_ref()).await {
                        self.count_failed(&w);
                        w.fail();
                        self.give_up();
                        return Err(g);
                    }
                    if let Err(g) = self.recover().await {
                        self.count_failed(&w);
                        w.fail();
                        self.give_up();
                        return Err(g);
                    }
                }
            }
        }
    }

    /// Flushes; on success acknowledges every held write. On failure: back
    /// off, rewind, write the held writes again, flush again.
    async fn flush(&mut self) -> Result<(), GaveUp> {
        if self.held.is_empty() {
            return Ok(());
        }
        loop {
            let flushed = tokio::select! {
                biased;
                _ = self.force.cancelled() => Err(None),
                r = self.sink.flush() => r.map_err(Some),
            };
            match flushed {
                Ok(()) => {
                    self.succeeded();
                    self.held_bytes = 0;
                    for w in self.held.drain(..) {
                        if let Some(t) = &self.reliability {
                            t.delivered(&w.events);
                        }
                        self.metrics.events.add(w.events.len() as u64);
                        self.metrics.bytes.add(w.bytes as u64);
                        self.metrics.batches.add(w.parts.len() as u64);
                        w.parts.into_iter().for_each(|p| p.ack.complete());
                    }
                    return Ok(());
                }
                Err(e) => {
                    self.cut_back().await;
                    self.failed(e.as_ref()).await?;
                    self.recover().await?;
                }
            }
        }
    }

    /// Puts the sink back where its last good flush left it and writes
    /// everything held since then again, until that works.
    async fn recover(&mut self) -> Result<(), GaveUp> {
        'again: loop {
            let rewound = tokio::select! {
                biased;
                _ = self.force.cancelled() => return Err(GaveUp),
                r = self.sink.rewind() => r,
            };
            if let Err(e) = rewound {
                self.failed(Some(&e)).await?;
                continue 'again;
            }
            let mut held = std::mem::take(&mut self.held);
            for i in 0..held.len() {
                let written = tokio::select! {
                    biased;
                    _ = self.force.cancelled() => Err(None),
                    r = write_narrowing(self.sink.as_mut(), &held[i].events, 0) => r.map_err(Some),
                };
                match written {
                    Ok(rejected) => {
                        self.metrics
                            .rewritten_events
                            .add(held[i].events.len() as u64);
                        let before = held[i].bytes;
                        reject(&self.metrics, &mut held[i], rejected).await;
                        self.held_bytes -= before - held[i].bytes;
                    }
                    Err(e) => {
                        self.held = held;
                        self.cut_back().await;
                        self.failed(e.as_ref()).await?;
                        continue 'again;
                    }
                }
            }
            self.held = held;
            return Ok(());
        }
    }

    /// Rewinds at once after a failure, before the back-off, so that a
    /// torn record does not stay visible to readers while we wait. Best
    /// effort: `recover` rewinds again (and retries) before writing.
    async fn cut_back(&mut self) {
        tokio::select! {
            biased;
            _ = self.force.cancelled() => {}
            _ = self.sink.rewind() => {}
        }
    }

    fn succeeded(&mut self) {
        self.failures = 0;
        if self.metrics.breaker_open.swap(false, Ordering::Relaxed) {
            tracing::info!(sink = %self.metrics.name, "sink recovered; circuit closed");
        }
    }

    /// Counts a failure and waits the back-off. `None` is a forced stop.
    async fn failed(&mut self, e: Option<&SinkError>) -> Result<(), GaveUp> {
        let Some(e) = e else { return Err(GaveUp) };
        self.metrics.errors.add(1);
        self.failures += 1;
        let f = self.failures;
        if f == BREAKER_AFTER && !self.metrics.breaker_open.swap(true, Ordering::Relaxed) {
            tracing::error!(sink = %self.metrics.name, error = %e, "sink keeps failing; circuit open, retrying every {:?}", MAX);
        } else if f < BREAKER_AFTER {
            tracing::warn!(sink = %self.metrics.name, error = %e, attempt = f, held = self.held.len(), "sink failed; will rewind and write again");
        }
        if self.force.is_cancelled() {
            return Err(GaveUp);
        }
        let ceiling = BASE.saturating_mul(1u32 << f.min(16)).min(MAX);
        let wait = rand::rng().random_range(Duration::ZERO..=ceiling);
        tokio::select! {
            _ = tokio::time::sleep(wait) => Ok(()),
            _ = self.force.cancelled() => Err(GaveUp),
        }
    }

    fn count_failed(&self, w: &Write) {
        self.metrics
            .gave_up(w.parts.len() as u64, w.events.len() as u64);
    }

    /// Forced stop: everything held fails.
    fn give_up(&mut self) {
        self.held_bytes = 0;
        for w in std::mem::take(&mut self.held) {
            self.count_failed(&w);
            w.fail();
        }
    }
}

/// Takes the rejected events out of `w` and sends each source batch's
/// share to its `OnError` target, or counts them dropped.
async fn reject(metrics: &SinkMetrics, w: &mut Write, mut rejected: Vec<Rejection>) {
    if rejected.is_empty() {
        return;
    }
    rejected.sort_by_key(|r| r.index);
    rejected.dedup_by_key(|r| r.index);
    let mut reasons = rejected.into_iter().peekable();
    let events = std::mem::take(&mut w.events);
    let mut kept = Vec::with_capacity(events.len());
    let mut events = events.into_iter().enumerate();
    for part in &mut w.parts {
        let mut out = Vec::new();
        for _ in 0..part.len {
            let Some((i, mut ev)) = events.next() else {
                break;
            };
            match reasons.next_if(|r| r.index == i) {
                Some(r) => {
                    w.bytes = w.bytes.saturating_sub(ev.size_hint());
                    ev.set_tag(Text::from_static(ERROR_TAG), Text::from(r.reason));
                    out.push(ev);
                }
                None => kept.push(ev),
            }
        }
        part.len -= out.len();
        if out.is_empty() {
            continue;
        }
        let n = out.len() as u64;
        metrics.rejected_events.add(n);
        match &part.on_error {
            Some(target) => {
                match target.send(Batch::new(out, part.ack.share())).await {
                    Ok(()) => metrics.rejected_rerouted.add(n),
                    // The OnError target is gone (a forced stop): failed,
                    // and counted as such.
                    Err(b) => {
                        metrics.gave_up(0, n);
                        b.ack.fail();
                    }
                }
            }
            None => {
                metrics.dropped_rejected.add(n);
                for ev in &out {
                    tracing::error!(
                        sink = %metrics.name,
                        host = ev.host.as_str(), pid = ev.pid, r#type = ev.ty.as_str(), offset = ev.offset,
                        reason = ev.tag(ERROR_TAG).map(Text::as_str).unwrap_or_default(),
                        "event refused by the peer for good and the pipeline has no OnError; dropped (counted as rejected)"
                    );
                }
            }
        }
    }
    w.events = kept;
}

/// Writes `events`; when the peer refuses the write for good, splits it in
/// halves until the events it refuses on their own are found. Returns
/// those (indices offset by `base`); a transient error ends the search.
fn write_narrowing<'a>(
    sink: &'a mut dyn Sink,
    events: &'a [Event],
    base: usize,
) -> std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Vec<Rejection>, SinkError>> + Send + 'a>,
> {
    Box::pin(async move {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        match sink.write(events).await {
            Ok(w) => Ok(w
                .rejected
                .into_iter()
                .map(|r| Rejection {
                    index: r.index + base,
                    reason: r.reason,
                })
                .collect()),
            Err(e) if e.is_permanent() && events.len() == 1 => Ok(vec![Rejection {
                index: base,
                reason: e.error.to_string(),
            }]),
            Err(e) if e.is_permanent() => {
                let mid = events.len() / 2;
                let mut left = write_narrowing(sink, &events[..mid], base).await?;
                let right = write_narrowing(sink, &events[mid..], base + mid).await?;
                left.extend(right);
                Ok(left)
            }
            Err(e) => Err(e),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dab_api::Event;
    use std::sync::Mutex;

    /// Records the size of every write.
    struct Sizes(Arc<Mutex<Vec<usize>>>);

    #[async_trait::async_trait]
    impl Sink for Sizes {
        async fn write(&mut self, events: &[Event]) -> Result<dab_api::Written, SinkError> {
            self.0.lock().map(|mut v| v.push(events.len())).ok();
            Ok(dab_api::Written::all())
        }
    }

    fn batch(n: usize) -> (Batch, tokio::sync::oneshot::Receiver<dab_api::AckStatus>) {
        let (ack, rx) = AckToken::channel();
        (Batch::new(vec![Event::default(); n], ack), rx)
    }

    #[tokio::test]
    async fn coalesces_small_batches_by_count_and_time_and_acks_them_all() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel(64);
        let task = SinkTask {
            sink: Box::new(Sizes(sizes.clone())),
            input: rx,
            metrics: Arc::new(SinkMetrics::default()),
            force: CancellationToken::new(),
            reliability: None,
            coalesce: Some(Coalesce {
                max_events: 25,
                max_wait: Duration::from_millis(200),
            }),
        };
        let mut acks = Vec::new();
        // Six batches of 10 wait in the channel: batches are added until 25
        // or more are gathered, so two writes of 10 + 10 + 10.
        for _ in 0..6 {
            let (b, a) = batch(10);
            acks.push(a);
            tx.send(b).await.map_err(|_| ()).ok();
        }
        let handle = tokio::spawn(task.run());
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A late batch waits for the timeout, then goes alone.
        let (b, a) = batch(5);
        acks.push(a);
        tx.send(b).await.map_err(|_| ()).ok();
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
        for a in acks {
            assert_eq!(a.await.ok(), Some(dab_api::AckStatus::Delivered));
        }
        assert_eq!(*sizes.lock().expect("sizes"), vec![30, 30, 5]);
    }
}
