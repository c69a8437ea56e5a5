//! Drives one sink under the contract of `dab_api::Sink` ("acknowledged
//! means delivered", SPEC section 11): writes batches in order, holds what
//! it wrote until a flush succeeds, and only then acknowledges it. It
//! flushes as the sink's `FlushPolicy` says (by default when the input is
//! idle, and every 64 writes or 16 MiB held). A failed
//! write or flush acknowledges nothing: the driver backs off (exponential,
//! full jitter), calls `rewind` and writes everything held since the last
//! good flush again. Behind the back-off sits the sink's circuit breaker
//! (`breaker.rs`): after `breaker_after` failures in a row it opens and the
//! driver leaves the peer alone for `breaker_cooldown`, holding what it
//! has and taking nothing new; then one probe (rewind, write again, flush)
//! closes it or opens it again. A
//! write the peer refuses for good is split until only the events it
//! refuses on their own are left; those go to the sending pipeline's
//! `OnError` target with the reason in `dab.error`, or are counted dropped
//! (`rejected`) and logged with their UIDs. Nothing is given up on unless
//! shutdown is forced; then the sources hear "failed".
//!
//! A sink that confirms each write on its own (`Sink::confirms_writes`,
//! Kafka's delivery reports) is driven without flushes: up to `WINDOW`
//! writes (and `WINDOW_BYTES`) are in flight at once, and each write is
//! acknowledged, in write order, when its confirmation says delivered.
//! A write confirmed failed is written again on its own, after back-off
//! and `rewind` (its events that did arrive arrive twice, counted as
//! rewritten); events it refused for good take the same way to `OnError`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use dab_api::batch::Reroute;
use dab_api::event::ERROR_TAG;
use dab_api::{AckToken, Batch, Confirm, Confirmed, Event, Rejection, Sink, SinkError, Text};
use rand::Rng;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::breaker::{Breaker, BreakerConfig, BreakerState, Wait};
use crate::metrics::SinkMetrics;
use crate::reliability::Tracker;

/// Back-off bounds.
const BASE: Duration = Duration::from_millis(50);
const MAX: Duration = Duration::from_secs(5);
/// For a sink that confirms writes: writes (and their bytes) awaiting
/// confirmation at once, the bounds of the default `FlushPolicy`. Past
/// this, the driver takes no more input (back pressure), as it would wait
/// for a flush.
const WINDOW: usize = 64;
const WINDOW_BYTES: usize = 16 << 20;

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
    /// The circuit breaker's thresholds (`breaker_after`, `breaker_cooldown`).
    pub breaker: BreakerConfig,
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

/// A write of a confirming sink, awaiting its confirmations.
struct Flight {
    w: Write,
    /// The write's bytes when it was taken (what it holds of the window).
    bytes: usize,
    /// Events refused for good so far (indices into `w.events`); they are
    /// taken out only when the write is done, so that the indices of later
    /// confirmations still hold.
    rejected: Vec<Rejection>,
    /// Confirmations still awaited, each with the index of its first event
    /// (more than one when a refused write was split).
    waiting: VecDeque<(usize, Confirm)>,
}

/// The driver's state: the sink, and what it took since the last good flush.
struct Driver {
    sink: Box<dyn Sink>,
    metrics: Arc<SinkMetrics>,
    force: CancellationToken,
    reliability: Option<Arc<Tracker>>,
    held: Vec<Write>,
    held_bytes: usize,
    /// When the oldest write held was taken.
    held_since: Option<tokio::time::Instant>,
    /// A confirming sink's writes in flight, oldest first.
    window: VecDeque<Flight>,
    window_bytes: usize,
    /// Failures in a row since the last delivery, and the breaker's state.
    breaker: Breaker,
}

/// Sleeps until `deadline`; never returns without one.
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Waits for the next batch, or `None` at the end of input or a forced stop.
async fn next_batch(input: &mut mpsc::Receiver<Batch>, force: &CancellationToken) -> Option<Batch> {
    tokio::select! {
        b = input.recv() => b,
        _ = force.cancelled() => None,
    }
}

/// Adds more waiting batches to `w` until the size is reached or the
/// time is up.
async fn gather(
    w: &mut Write,
    input: &mut mpsc::Receiver<Batch>,
    coalesce: Option<Coalesce>,
    force: &CancellationToken,
) {
    let Some(c) = coalesce else { return };
    let deadline = tokio::time::Instant::now() + c.max_wait;
    while w.events.len() < c.max_events {
        let next = tokio::select! {
            b = input.recv() => b,
            _ = tokio::time::sleep_until(deadline) => None,
            _ = force.cancelled() => None,
        };
        let Some(more) = next else { break };
        w.add(more);
    }
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
            held_since: None,
            window: VecDeque::new(),
            window_bytes: 0,
            breaker: Breaker::new(self.breaker),
        };
        if d.sink.confirms_writes() {
            d.run_confirmed(&mut self.input, self.coalesce).await;
        } else {
            d.run_flushed(&mut self.input, self.coalesce).await;
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
    /// Writes, and flushes as the sink's `FlushPolicy` says: when the
    /// input is idle, enough is held, or the oldest write held is old
    /// enough.
    async fn run_flushed(&mut self, input: &mut mpsc::Receiver<Batch>, coalesce: Option<Coalesce>) {
        let policy = self.sink.flush_policy();
        let mut last_input = tokio::time::Instant::now();
        loop {
            // The oldest held write's age bound and the quiet input's
            // bound, when the policy has them and writes are held.
            let by_age = policy
                .max_age
                .zip(self.held_since)
                .map(|(age, since)| since + age);
            let by_idle = policy
                .idle_after
                .filter(|_| self.held_since.is_some())
                .map(|idle| last_input + idle);
            let deadline = match (by_age, by_idle) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let next = tokio::select! {
                b = next_batch(input, &self.force) => b,
                _ = sleep_until_some(deadline) => {
                    if self.flush().await.is_err() {
                        break;
                    }
                    continue;
                }
            };
            let Some(batch) = next else { break };
            last_input = tokio::time::Instant::now();
            let mut w = Write::from_batch(batch);
            gather(&mut w, input, coalesce, &self.force).await;
            if self.take(w).await.is_err() {
                break;
            }
            // A half-open breaker's probe ends with a flush: only a
            // delivery closes it.
            let due = (policy.when_idle && input.is_empty())
                || self.held.len() >= policy.max_writes
                || self.held_bytes >= policy.max_bytes
                || by_age.is_some_and(|d| tokio::time::Instant::now() >= d)
                || self.breaker.state() != BreakerState::Closed;
            if due && self.flush().await.is_err() {
                break;
            }
        }
        if self.flush().await.is_err() {
            self.give_up();
        }
    }

    /// Writes while the window has room and settles confirmations as they
    /// come, oldest write first; at the end of input, waits for the rest.
    async fn run_confirmed(
        &mut self,
        input: &mut mpsc::Receiver<Batch>,
        coalesce: Option<Coalesce>,
    ) {
        let mut open = true;
        loop {
            // While the breaker is not closed, one write at a time is in
            // flight: the probe, whose confirmation closes it.
            let probing = self.breaker.state() != BreakerState::Closed && !self.window.is_empty();
            let room =
                open && !probing && self.window.len() < WINDOW && self.window_bytes < WINDOW_BYTES;
            if !room && self.window.is_empty() {
                return;
            }
            // Both branches are cancel safe: a confirmation or a batch that
            // loses the race is still there on the next turn.
            let front = self.window.front_mut().and_then(|f| f.waiting.front_mut());
            let waiting = front.is_some();
            let next = tokio::select! {
                biased;
                _ = self.force.cancelled() => break,
                c = async move {
                    match front {
                        Some((_, c)) => c.recv().await,
                        None => std::future::pending().await,
                    }
                }, if waiting => Ok(c),
                b = input.recv(), if room => Err(b),
            };
            match next {
                Ok(Confirmed::Delivered { rejected }) => {
                    self.succeeded();
                    if let Some(f) = self.window.front_mut() {
                        if let Some((base, _)) = f.waiting.pop_front() {
                            f.rejected.extend(rejected.into_iter().map(|r| Rejection {
                                index: r.index + base,
                                reason: r.reason,
                            }));
                        }
                    }
                    self.settle().await;
                }
                Ok(Confirmed::Failed(e)) => {
                    if self.resend_front(SinkError::transient(e)).await.is_err() {
                        break;
                    }
                }
                Err(Some(batch)) => {
                    let mut w = Write::from_batch(batch);
                    gather(&mut w, input, coalesce, &self.force).await;
                    if self.send(w).await.is_err() {
                        break;
                    }
                }
                Err(None) => open = false,
            }
        }
        self.give_up();
    }

    /// Sends `w` into the window; on failure: back off, rewind, send again.
    async fn send(&mut self, w: Write) -> Result<(), GaveUp> {
        loop {
            let sent = tokio::select! {
                biased;
                _ = self.force.cancelled() => Err(None),
                r = send_narrowing(self.sink.as_mut(), &w.events, 0) => r.map_err(Some),
            };
            match sent {
                Ok((rejected, waiting)) => {
                    self.window_bytes += w.bytes;
                    self.window.push_back(Flight {
                        bytes: w.bytes,
                        w,
                        rejected,
                        waiting,
                    });
                    self.settle().await;
                    return Ok(());
                }
                Err(e) => {
                    let again = match self.failed(e.as_ref()).await {
                        Ok(()) => self.rewind().await,
                        Err(g) => Err(g),
                    };
                    if let Err(g) = again {
                        self.count_failed(&w);
                        w.fail();
                        return Err(g);
                    }
                }
            }
        }
    }

    /// The oldest write in flight was confirmed failed: back off, rewind
    /// and send it again, until the sink takes it.
    async fn resend_front(&mut self, mut e: SinkError) -> Result<(), GaveUp> {
        loop {
            self.failed(Some(&e)).await?;
            self.rewind().await?;
            let Some(f) = self.window.front_mut() else {
                return Ok(());
            };
            let sent = tokio::select! {
                biased;
                _ = self.force.cancelled() => return Err(GaveUp),
                r = send_narrowing(self.sink.as_mut(), &f.w.events, 0) => r,
            };
            match sent {
                Ok((rejected, waiting)) => {
                    self.metrics.rewritten_events.add(f.w.events.len() as u64);
                    f.rejected = rejected;
                    f.waiting = waiting;
                    self.settle().await;
                    return Ok(());
                }
                Err(next) => e = next,
            }
        }
    }

    /// Rewinds until the sink says it is ready to be written again.
    async fn rewind(&mut self) -> Result<(), GaveUp> {
        loop {
            let rewound = tokio::select! {
                biased;
                _ = self.force.cancelled() => return Err(GaveUp),
                r = self.sink.rewind() => r,
            };
            match rewound {
                Ok(()) => return Ok(()),
                Err(e) => self.failed(Some(&e)).await?,
            }
        }
    }

    /// Acknowledges the confirmed writes at the front of the window, in
    /// order: their refused events go their way, the rest is delivered.
    async fn settle(&mut self) {
        while self.window.front().is_some_and(|f| f.waiting.is_empty()) {
            let Some(mut f) = self.window.pop_front() else {
                return;
            };
            self.window_bytes -= f.bytes;
            reject(&self.metrics, &mut f.w, std::mem::take(&mut f.rejected)).await;
            self.delivered(f.w);
        }
    }

    /// Counts a write delivered and acknowledges its batches.
    fn delivered(&self, w: Write) {
        if let Some(t) = &self.reliability {
            t.delivered(&w.events);
        }
        self.metrics.events.add(w.events.len() as u64);
        self.metrics.bytes.add(w.bytes as u64);
        self.metrics.batches.add(w.parts.len() as u64);
        w.parts.into_iter().for_each(|p| p.ack.complete());
    }

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
                    reject(&self.metrics, &mut w, rejected).await;
                    self.held_bytes += w.bytes;
                    self.held_since
                        .get_or_insert_with(tokio::time::Instant::now);
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
                    self.held_since = None;
                    for w in std::mem::take(&mut self.held) {
                        self.delivered(w);
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

    /// The sink delivered (a good flush, a write confirmed delivered):
    /// failures are forgotten and the breaker closes. A write that was
    /// only taken proves nothing (a socket buffer, a client library's
    /// queue), so it does not count.
    fn succeeded(&mut self) {
        if self.breaker.delivered(&self.metrics.breaker) {
            tracing::info!(sink = %self.metrics.name, "sink delivered again; circuit closed");
        }
    }

    /// Counts a failure and waits: the back-off while the breaker is
    /// closed, the cool-down once it is open (nothing is tried meanwhile:
    /// held writes stay held, nothing new is taken, nothing is
    /// acknowledged). After a cool-down the breaker is half-open and the
    /// caller's next attempt is the probe. `None` is a forced stop.
    async fn failed(&mut self, e: Option<&SinkError>) -> Result<(), GaveUp> {
        let Some(e) = e else { return Err(GaveUp) };
        self.metrics.errors.add(1);
        let before = self.breaker.state();
        let held = self.held.len() + self.window.len();
        let wait = match self.breaker.failed(&self.metrics.breaker) {
            Wait::BackOff(f) => {
                tracing::warn!(sink = %self.metrics.name, error = %e, attempt = f, held, "sink failed; will rewind and write again");
                let ceiling = BASE.saturating_mul(1u32 << f.min(16)).min(MAX);
                rand::rng().random_range(Duration::ZERO..=ceiling)
            }
            Wait::Cooldown(c) => {
                if before == BreakerState::Closed {
                    tracing::error!(sink = %self.metrics.name, error = %e, held, cooldown = ?c, "sink keeps failing; circuit open: leaving the peer alone, then probing");
                } else {
                    tracing::warn!(sink = %self.metrics.name, error = %e, held, cooldown = ?c, "probe failed; circuit open again");
                }
                c
            }
        };
        if self.force.is_cancelled() {
            return Err(GaveUp);
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.force.cancelled() => return Err(GaveUp),
        }
        if self.breaker.state() == BreakerState::Open {
            self.breaker.cooled(&self.metrics.breaker);
            tracing::info!(sink = %self.metrics.name, "circuit half-open: probing the peer");
        }
        Ok(())
    }

    fn count_failed(&self, w: &Write) {
        self.metrics
            .gave_up(w.parts.len() as u64, w.events.len() as u64);
    }

    /// Forced stop: everything held or in flight fails.
    fn give_up(&mut self) {
        self.held_bytes = 0;
        self.window_bytes = 0;
        let flying = std::mem::take(&mut self.window).into_iter().map(|f| f.w);
        for w in std::mem::take(&mut self.held).into_iter().chain(flying) {
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

/// What `send_narrowing` found: events refused right away, and the
/// confirmations to wait for, each with the index of its first event.
type Sent = (Vec<Rejection>, VecDeque<(usize, Confirm)>);

/// `write_narrowing` for a sink that confirms writes later.
fn send_narrowing<'a>(
    sink: &'a mut dyn Sink,
    events: &'a [Event],
    base: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Sent, SinkError>> + Send + 'a>> {
    Box::pin(async move {
        if events.is_empty() {
            return Ok((Vec::new(), VecDeque::new()));
        }
        match sink.write_confirmed(events).await {
            Ok(p) => {
                let rejected = p
                    .rejected
                    .into_iter()
                    .map(|r| Rejection {
                        index: r.index + base,
                        reason: r.reason,
                    })
                    .collect();
                Ok((rejected, VecDeque::from([(base, p.confirm)])))
            }
            Err(e) if e.is_permanent() && events.len() == 1 => Ok((
                vec![Rejection {
                    index: base,
                    reason: e.error.to_string(),
                }],
                VecDeque::new(),
            )),
            Err(e) if e.is_permanent() => {
                let mid = events.len() / 2;
                let (mut rejected, mut waiting) =
                    send_narrowing(sink, &events[..mid], base).await?;
                let (r, w) = send_narrowing(sink, &events[mid..], base + mid).await?;
                rejected.extend(r);
                waiting.extend(w);
                Ok((rejected, waiting))
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
            breaker: BreakerConfig::default(),
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

    /// Counts flushes; flushes as `policy` says.
    struct Slow {
        flushes: Arc<Mutex<usize>>,
        policy: dab_api::FlushPolicy,
    }

    #[async_trait::async_trait]
    impl Sink for Slow {
        async fn write(&mut self, _: &[Event]) -> Result<dab_api::Written, SinkError> {
            Ok(dab_api::Written::all())
        }
        async fn flush(&mut self) -> Result<(), SinkError> {
            self.flushes.lock().map(|mut n| *n += 1).ok();
            Ok(())
        }
        fn flush_policy(&self) -> dab_api::FlushPolicy {
            self.policy
        }
    }

    /// A policy that never flushes on an idle input or a count of writes.
    fn held(
        max_bytes: usize,
        max_age: Option<Duration>,
        idle_after: Option<Duration>,
    ) -> dab_api::FlushPolicy {
        dab_api::FlushPolicy {
            when_idle: false,
            max_writes: usize::MAX,
            max_bytes,
            max_age,
            idle_after,
        }
    }

    fn slow_task(
        policy: dab_api::FlushPolicy,
    ) -> (SinkTask, mpsc::Sender<Batch>, Arc<Mutex<usize>>) {
        let flushes = Arc::new(Mutex::new(0));
        let (tx, rx) = mpsc::channel(64);
        let task = SinkTask {
            sink: Box::new(Slow {
                flushes: flushes.clone(),
                policy,
            }),
            input: rx,
            metrics: Arc::new(SinkMetrics::default()),
            force: CancellationToken::new(),
            reliability: None,
            breaker: BreakerConfig::default(),
            coalesce: None,
        };
        (task, tx, flushes)
    }

    /// A sink that does not flush when idle holds its writes, unacknowledged,
    /// until the oldest is `max_age` old, then acknowledges them all at one
    /// flush; the input staying open changes nothing.
    #[tokio::test]
    async fn a_sink_that_flushes_by_age_acknowledges_nothing_before_the_age() {
        let (task, tx, flushes) =
            slow_task(held(usize::MAX, Some(Duration::from_millis(400)), None));
        let handle = tokio::spawn(task.run());
        let mut acks = Vec::new();
        for _ in 0..3 {
            let (b, a) = batch(10);
            acks.push(a);
            tx.send(b).await.map_err(|_| ()).ok();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for a in &mut acks {
            assert!(a.try_recv().is_err(), "acknowledged before the age");
        }
        assert_eq!(*flushes.lock().expect("flushes"), 0);
        tokio::time::sleep(Duration::from_millis(600)).await;
        for a in acks {
            assert_eq!(a.await.ok(), Some(dab_api::AckStatus::Delivered));
        }
        assert_eq!(*flushes.lock().expect("flushes"), 1);
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
    }

    /// The bytes bound flushes at once, without waiting for the age.
    #[tokio::test]
    async fn a_sink_that_flushes_by_bytes_flushes_when_they_are_reached() {
        let size = batch(10).0.bytes();
        let (task, tx, flushes) = slow_task(held(3 * size, Some(Duration::from_secs(3600)), None));
        let handle = tokio::spawn(task.run());
        let mut acks = Vec::new();
        for _ in 0..2 {
            let (b, a) = batch(10);
            acks.push(a);
            tx.send(b).await.map_err(|_| ()).ok();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(acks.iter_mut().all(|a| a.try_recv().is_err()));
        let (b, a) = batch(10);
        acks.push(a);
        tx.send(b).await.map_err(|_| ()).ok();
        for a in acks {
            let got = tokio::time::timeout(Duration::from_secs(5), a).await;
            assert_eq!(
                got.ok().and_then(Result::ok),
                Some(dab_api::AckStatus::Delivered)
            );
        }
        assert_eq!(*flushes.lock().expect("flushes"), 1);
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
    }

    /// A quiet input flushes after `idle_after`, long before the age: a
    /// source that waits for its acknowledgements before it ends (a
    /// backfill) is not held for `max_age`.
    #[tokio::test]
    async fn a_quiet_input_flushes_after_idle_after() {
        let (task, tx, flushes) = slow_task(held(
            usize::MAX,
            Some(Duration::from_secs(3600)),
            Some(Duration::from_millis(300)),
        ));
        let handle = tokio::spawn(task.run());
        let mut acks = Vec::new();
        // Writes 100 ms apart: never 300 ms quiet, so nothing flushes.
        for _ in 0..5 {
            let (b, a) = batch(10);
            acks.push(a);
            tx.send(b).await.map_err(|_| ()).ok();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(*flushes.lock().expect("flushes"), 0);
        assert!(acks.iter_mut().all(|a| a.try_recv().is_err()));
        for a in acks {
            let got = tokio::time::timeout(Duration::from_secs(5), a).await;
            assert_eq!(
                got.ok().and_then(Result::ok),
                Some(dab_api::AckStatus::Delivered)
            );
        }
        assert_eq!(*flushes.lock().expect("flushes"), 1);
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
    }
}
