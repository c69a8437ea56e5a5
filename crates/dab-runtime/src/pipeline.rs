//! One pipeline as one task: receive a batch, run the stages in order, hand
//! a copy to each output with that output's own modifiers and buffer
//! policy. Batches, not events, cross channels.

use std::sync::Arc;
use std::time::Instant;

use dab_api::batch::Reroute;
use dab_api::Batch;
use dab_plan::model::WhenFull;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::{DropReason, PipelineMetrics, Undelivered};
use crate::output::{OutputTx, QueueReader};
use crate::predicate::key_bytes;
use crate::reliability::Tracker;
use crate::rendezvous::Rendezvous;
use crate::stages::Compiled;

#[derive(Debug)]
pub struct Output {
    pub tx: OutputTx,
    pub modifiers: Vec<Compiled>,
    /// Whether events this output's sink refuses for good may go to the
    /// pipeline's `OnError`: not when `OnError` is this very output, which
    /// would hand the sink its own poison again.
    pub reroute: bool,
}

/// Where batches come from: a bounded channel (a source, or a fan-out) or a
/// memory queue read by this pipeline alone.
#[derive(Debug)]
pub enum Inlet {
    Channel(mpsc::Receiver<Batch>),
    Queue(QueueReader),
}

impl Inlet {
    pub async fn recv(&mut self) -> Option<Batch> {
        match self {
            Inlet::Channel(rx) => rx.recv().await,
            Inlet::Queue(q) => q.recv().await,
        }
    }

    /// Forced stop: closes the inlet to its senders and takes out what is
    /// still queued, so that it can be failed and counted, not dropped
    /// unseen.
    pub fn close_and_drain(self) -> Vec<Batch> {
        match self {
            Inlet::Channel(mut rx) => {
                rx.close();
                let mut out = Vec::new();
                while let Ok(b) = rx.try_recv() {
                    out.push(b);
                }
                out
            }
            Inlet::Queue(q) => q.close_and_drain(),
        }
    }
}

/// `Out(..., by = key)`: the key's fields and the outputs' hash.
#[derive(Debug)]
pub struct By {
    pub keys: Vec<dab_plan::model::Operand>,
    /// Over the outputs, in the order of `PipelineTask::outputs`.
    pub hash: Rendezvous,
}

impl By {
    /// Moves each event of `batch` to the part of the output its key
    /// picks; `n` parts.
    fn split(&self, batch: &mut Batch, n: usize) -> Vec<Vec<dab_api::Event>> {
        let mut parts: Vec<Vec<dab_api::Event>> = (0..n).map(|_| Vec::new()).collect();
        let mut key = Vec::with_capacity(64);
        for e in batch.events.drain(..) {
            key.clear();
            key_bytes(&e, &self.keys, &mut key);
            let i = self.hash.pick(&key).min(n.saturating_sub(1));
            parts[i].push(e);
        }
        parts
    }
}

/// Input a source could not decode, sent to the pipeline's `OnError`
/// output (or counted and dropped) before any stage sees it.
#[derive(Debug)]
pub struct Screen {
    pub on_error: Option<OutputTx>,
}

#[derive(Debug)]
pub struct PipelineTask {
    pub input: Inlet,
    /// Set for inputs that can carry undecodable input (Kafka).
    pub screen: Option<Screen>,
    pub stages: Vec<Compiled>,
    pub outputs: Vec<Output>,
    pub when_full: WhenFull,
    /// `Out(..., by = key)`: each event to one output.
    pub by: Option<By>,
    pub metrics: Arc<PipelineMetrics>,
    /// Cancelled when shutdown is forced: stop waiting (on a rate limit or a
    /// full output) and abandon the batch in hand, whose source then hears
    /// "failed".
    pub force: CancellationToken,
    /// Reliability tracking, when on: deliberate drops are reported here.
    pub reliability: Option<Arc<Tracker>>,
    /// The `OnError` target, handed to sinks with every batch so that
    /// events a peer refuses for good go there (SPEC section 11).
    pub on_error: Option<Arc<dyn Reroute>>,
}

impl PipelineTask {
    /// Runs until the input closes, then drops the outputs so that
    /// downstream drains in turn. A forced stop fails the batch in hand and
    /// those still queued, and counts them (`Undelivered::Abandoned`).
    pub async fn run(mut self) {
        loop {
            let batch = tokio::select! {
                b = self.input.recv() => b,
                _ = self.force.cancelled() => None,
            };
            let Some(batch) = batch else {
                if self.force.is_cancelled() {
                    self.abandon_rest();
                }
                return;
            };
            let n = batch.len() as u64;
            let ctx = Ctx {
                screen: self.screen.as_ref(),
                by: self.by.as_ref(),
                when_full: self.when_full,
                metrics: &self.metrics,
                tracker: self.reliability.as_deref(),
                on_error: self.on_error.as_ref(),
                force: &self.force,
            };
            let work = process(&ctx, &mut self.stages, &mut self.outputs, batch);
            tokio::select! {
                biased;
                // Dropping the unfinished work drops its ack shares
                // unsettled, which fails them; count what was in hand.
                _ = self.force.cancelled() => {
                    self.metrics.undelivered.add(Undelivered::Abandoned, n);
                    self.abandon_rest();
                    return;
                }
                _ = work => {}
            }
        }
    }

    fn abandon_rest(self) {
        for b in self.input.close_and_drain() {
            self.metrics
                .undelivered
                .add(Undelivered::Abandoned, b.len() as u64);
            b.ack.fail();
        }
    }
}

/// What `process` reads of its pipeline besides the stages and outputs.
struct Ctx<'a> {
    screen: Option<&'a Screen>,
    by: Option<&'a By>,
    when_full: WhenFull,
    metrics: &'a PipelineMetrics,
    tracker: Option<&'a Tracker>,
    on_error: Option<&'a Arc<dyn Reroute>>,
    /// To tell a copy abandoned by a forced stop from one whose reader
    /// ended.
    force: &'a CancellationToken,
}

async fn process(ctx: &Ctx<'_>, stages: &mut [Compiled], outputs: &mut [Output], mut batch: Batch) {
    let Ctx {
        screen,
        by,
        when_full,
        metrics: m,
        tracker,
        on_error,
        force,
    } = *ctx;
    let t0 = Instant::now();
    m.events_in.add(batch.len() as u64);
    m.bytes_in.add(batch.bytes() as u64);
    if batch.retries_exhausted {
        give_up(screen, batch, m).await;
        m.latency.observe(t0.elapsed());
        return;
    }
    if let Some(screen) = screen {
        screen_out(screen, &mut batch, m, force).await;
    }
    for (i, s) in stages.iter_mut().enumerate() {
        let n = batch.len() as u64;
        if let Some(sm) = m.stages.get(i) {
            sm.events_in.add(n);
        }
        s.apply_tracked(&mut batch, m, tracker).await;
        if let Some(sm) = m.stages.get(i) {
            sm.events_out.add(batch.len() as u64);
            if s.routes() {
                sm.routed.add(n - batch.len() as u64);
            }
        }
        if batch.is_empty() {
            break;
        }
    }
    if batch.is_empty() {
        // Everything was dropped on purpose: that is delivery.
        batch.ack.complete();
        m.latency.observe(t0.elapsed());
        return;
    }
    let mut stage_index = stages.len();
    let last = outputs.len().saturating_sub(1);
    // With `by`, each output gets its own part, with a share of the
    // acknowledgement; the batch's own token is settled once all are.
    let mut parts = by.map(|b| b.split(&mut batch, outputs.len()));
    let mut original = Some(batch);
    for (i, out) in outputs.iter_mut().enumerate() {
        let mut copy = if let Some(parts) = parts.as_mut() {
            let events = std::mem::take(&mut parts[i]);
            match &original {
                Some(b) if !events.is_empty() => Batch::new(events, b.ack.share()),
                _ => continue,
            }
        } else if i == last {
            match original.take() {
                Some(b) => b,
                None => break,
            }
        } else {
            match &original {
                Some(b) => b.share(),
                None => break,
            }
        };
        for s in &mut out.modifiers {
            let n = copy.len() as u64;
            if let Some(sm) = m.stages.get(stage_index) {
                sm.events_in.add(n);
            }
            if !copy.is_empty() {
                s.apply_tracked(&mut copy, m, tracker).await;
            }
            if let Some(sm) = m.stages.get(stage_index) {
                sm.events_out.add(copy.len() as u64);
            }
            stage_index += 1;
        }
        if copy.is_empty() {
            copy.ack.complete();
            continue;
        }
        copy.on_error = on_error.filter(|_| out.reroute).cloned();
        let n = copy.len() as u64;
        let om = m.outputs.get(i);
        let sent = match when_full {
            WhenFull::Block => {
                let waited = Instant::now();
                let r = out.tx.send(copy).await;
                if let Some(om) = om {
                    om.blocked_ns.add(waited.elapsed().as_nanos() as u64);
                }
                r
            }
            WhenFull::DropNewest => match out.tx.try_send(copy) {
                Ok(()) => Ok(()),
                Err(b) => {
                    // The user chose to keep siblings flowing: a
                    // deliberate, counted drop.
                    if let Some(om) = om {
                        om.dropped_full.add(n);
                    }
                    m.dropped(DropReason::OutputFull, n);
                    b.ack.complete();
                    continue;
                }
            },
        };
        match sent {
            Ok(()) => {
                m.events_out.add(n);
                if let Some(om) = om {
                    om.events.add(n);
                }
            }
            // The reader is gone (a forced stop, or it died): not delivered.
            Err(b) => {
                m.undelivered
                    .add(Undelivered::reader_closed(force.is_cancelled()), n);
                b.ack.fail();
            }
        }
    }
    if parts.is_some() {
        if let Some(b) = original {
            b.ack.complete();
        }
    }
    m.latency.observe(t0.elapsed());
}

async fn screen_out(
    screen: &Screen,
    batch: &mut Batch,
    m: &PipelineMetrics,
    force: &CancellationToken,
) {
    if !batch.events.iter().any(dab_api::Event::is_undecodable) {
        return;
    }
    let (bad, good): (Vec<_>, Vec<_>) = batch
        .events
        .drain(..)
        .partition(dab_api::Event::is_undecodable);
    batch.events = good;
    let n = bad.len() as u64;
    m.failed(n);
    match &screen.on_error {
        Some(target) => {
            if let Err(b) = target.send(Batch::new(bad, batch.ack.share())).await {
                m.undelivered
                    .add(Undelivered::reader_closed(force.is_cancelled()), n);
                b.ack.fail();
            }
        }
        None => m.dropped(DropReason::Undecodable, n),
    }
}

/// A batch its source gave up sending again: all of it goes to `OnError`,
/// or is counted dropped, and its source hears "delivered" either way
/// unless the `OnError` target is gone.
async fn give_up(screen: Option<&Screen>, mut batch: Batch, m: &PipelineMetrics) {
    // Settled here: whoever reads the `OnError` output (a memory queue's
    // pipeline) treats the events as ordinary ones.
    batch.retries_exhausted = false;
    let n = batch.len() as u64;
    m.failed(n);
    match screen.and_then(|s| s.on_error.as_ref()) {
        Some(target) => {
            if let Err(b) = target.send(batch).await {
                b.ack.fail();
            }
        }
        None => {
            m.dropped(DropReason::RetriesExhausted, n);
            batch.ack.complete();
        }
    }
}
