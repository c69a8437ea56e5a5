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
use crate::window::WindowStage;
use std::time::Duration;

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
        // The picks first, then each event moved once into a part of
        // exactly its size (growing parts copied events again and again).
        let mut key = Vec::with_capacity(64);
        let mut sizes = vec![0usize; n.max(1)];
        let picks: Vec<usize> = batch
            .events
            .iter()
            .map(|e| {
                key.clear();
                key_bytes(e, &self.keys, &mut key);
                let i = self.hash.pick(&key).min(n.saturating_sub(1));
                sizes[i] += 1;
                i
            })
            .collect();
        // All to one output (a batch of one host, one team): the batch's
        // events move as they are.
        if let Some(only) = sizes.iter().position(|&s| s == batch.events.len()) {
            let mut parts: Vec<Vec<dab_api::Event>> = (0..n).map(|_| Vec::new()).collect();
            if let Some(p) = parts.get_mut(only) {
                *p = std::mem::take(&mut batch.events);
            }
            return parts;
        }
        let mut parts: Vec<Vec<dab_api::Event>> =
            sizes.iter().map(|&s| Vec::with_capacity(s)).collect();
        for (e, i) in batch.events.drain(..).zip(picks) {
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
    /// `Window(...).Aggregate(...)`: `stages` are then the ops before it.
    pub window: Option<Box<WindowPart>>,
    /// `Join(...)` (`crate::join`): `stages` are then the ops before it.
    pub join: Option<Box<crate::join::JoinPart>>,
}

/// The window stage of a pipeline and the ops after it, which see its
/// results.
#[derive(Debug)]
pub struct WindowPart {
    pub stage: WindowStage,
    /// Its place among the pipeline's ops (for stage metrics).
    pub index: usize,
    pub post: Vec<Compiled>,
    /// What it was built from, to rebuild it after a failed checkpoint.
    pub spec: dab_plan::model::Windowed,
    pub pipeline: String,
    /// A graceful stop: open windows stay open in the checkpoint for the
    /// next run instead of being emitted as final.
    pub shutdown: CancellationToken,
}

impl PipelineTask {
    /// Runs until the input closes, then drops the outputs so that
    /// downstream drains in turn. A forced stop fails the batch in hand and
    /// those still queued, and counts them (`Undelivered::Abandoned`).
    pub async fn run(mut self) {
        if let Some(w) = self.window.take() {
            return self.run_windowed(*w).await;
        }
        if let Some(j) = self.join.take() {
            return self.run_joined(*j).await;
        }
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
            let ctx = ctx!(self);
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

    /// The loop of a pipeline with a window: input batches are absorbed,
    /// a timer polls for results and writes checkpoints.
    async fn run_windowed(mut self, mut w: WindowPart) {
        let mut tick = tokio::time::interval(w.stage.tick_every());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = self.force.cancelled() => break,
                // Before the input: an input that is never empty must not
                // hold results and checkpoints (and so every held
                // acknowledgement) back.
                _ = tick.tick() => {
                    if !self.window_partitions(&mut w).await {
                        break;
                    }
                    let results = w.stage.poll(&self.metrics);
                    self.emit(&mut w, results).await;
                    if w.stage.checkpoint_due() && !self.window_checkpoint(&mut w).await {
                        break;
                    }
                }
                b = self.input.recv() => match b {
                    Some(batch) => {
                        let n = batch.len() as u64;
                        let ctx = ctx!(self);
                        // A partition assigned since the last look is
                        // restored before its first event.
                        if let Err(e) = w.stage.sync_assignment(&self.metrics).await {
                            tracing::error!(pipeline = %w.pipeline, error = %e, "window partition state cannot be restored; the batch is reported failed and read again");
                            batch.ack.fail();
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                        let work = async {
                            if let Some(batch) = prepare(&ctx, &mut self.stages, batch).await {
                                if let Some(sm) = ctx.metrics.stages.get(w.index) {
                                    sm.events_in.add(batch.len() as u64);
                                }
                                w.stage.absorb(batch, ctx.metrics, ctx.tracker).await;
                            }
                        };
                        tokio::select! {
                            biased;
                            _ = self.force.cancelled() => {
                                self.metrics.undelivered.add(Undelivered::Abandoned, n);
                                break;
                            }
                            _ = work => {}
                        }
                    }
                    None => {
                        if !w.shutdown.is_cancelled() && !self.force.is_cancelled() {
                            // The input is exhausted: every window is final.
                            let results = w.stage.flush(&self.metrics);
                            self.emit(&mut w, results).await;
                        }
                        if !self.force.is_cancelled() && self.window_checkpoint(&mut w).await {
                            return;
                        }
                        break;
                    }
                },
            }
        }
        // A forced stop: nothing absorbed since the last checkpoint is
        // durable, so its sources hear "failed".
        let held = w.stage.abandon();
        if held > 0 {
            tracing::warn!(pipeline = %w.pipeline, batches = held, "forced stop: input absorbed since the last checkpoint is reported failed");
        }
        self.abandon_rest();
    }

    /// State per Kafka partition: the state of partitions the source is
    /// giving up is let go of (the last checkpoint moves on); newly
    /// assigned partitions are restored. False when the pipeline cannot
    /// go on.
    async fn window_partitions(&mut self, w: &mut WindowPart) -> bool {
        if let Some((gen, list)) = w.stage.revoke_request() {
            w.stage.release(gen, &list, &self.metrics);
        }
        if let Err(e) = w.stage.sync_assignment(&self.metrics).await {
            tracing::error!(pipeline = %w.pipeline, error = %e, "window partition state cannot be restored (tried again)");
        }
        true
    }

    /// Hands window results through the ops after the window to the
    /// outputs; with a store, the next checkpoint waits for them.
    async fn emit(&mut self, w: &mut WindowPart, results: Vec<dab_api::Event>) {
        if results.is_empty() {
            return;
        }
        let (ack, rx) = if w.stage.is_durable() {
            let (a, rx) = dab_api::AckToken::channel();
            (a, Some(rx))
        } else {
            (dab_api::AckToken::untracked(), None)
        };
        let copy = rx.as_ref().map(|_| results.clone());
        let mut ctx = ctx!(self);
        ctx.first_stage = w.index + 1;
        let mut batch = Batch::new(results, ack);
        run_stages(&ctx, &mut w.post, &mut batch).await;
        if let Some(sm) = ctx.metrics.stages.get(w.index) {
            sm.events_out.add(batch.len() as u64);
        }
        if batch.is_empty() {
            batch.ack.complete();
        } else {
            let first = ctx.first_stage + w.post.len();
            tokio::select! {
                biased;
                _ = self.force.cancelled() => {}
                _ = deliver(&ctx, first, &mut self.outputs, batch) => {}
            }
        }
        if let (Some(events), Some(rx)) = (copy, rx) {
            w.stage.sent(events, rx);
        }
    }

    /// Waits until every result and late copy is delivered (sending again
    /// what failed), then commits a checkpoint; a failed commit takes the
    /// stage back to the last durable one. False when the pipeline cannot
    /// go on (a forced stop, or a state store it cannot read back).
    async fn window_checkpoint(&mut self, w: &mut WindowPart) -> bool {
        if !w.stage.has_changes() {
            return true;
        }
        let mut backoff = Duration::from_millis(100);
        tracing::debug!(pipeline = %w.pipeline, "checkpoint: waiting for results and late copies");
        loop {
            let again = tokio::select! {
                biased;
                _ = self.force.cancelled() => return false,
                a = w.stage.settle() => a,
            };
            if again.is_empty() {
                break;
            }
            tracing::warn!(pipeline = %w.pipeline, batches = again.len(), "window results or late events were not delivered; sending them again before the checkpoint");
            tokio::select! {
                _ = self.force.cancelled() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            for (late, events) in again {
                if late {
                    w.stage.resend_late(events).await;
                } else {
                    self.emit(w, events).await;
                }
            }
        }
        tracing::debug!(pipeline = %w.pipeline, "checkpoint: committing");
        if let Err(e) = w.stage.checkpoint(&self.metrics).await {
            tracing::error!(pipeline = %w.pipeline, error = %e, "checkpoint failed: the input absorbed since the last checkpoint is reported failed (its sources send it again)");
            if let Err(e) = w.stage.rollback(&w.pipeline, w.index, &w.spec) {
                tracing::error!(pipeline = %w.pipeline, error = %e, "the window state cannot be reloaded after a failed checkpoint; the pipeline stops");
                return false;
            }
        }
        true
    }

    pub(crate) fn abandon_rest(self) {
        for b in self.input.close_and_drain() {
            self.metrics
                .undelivered
                .add(Undelivered::Abandoned, b.len() as u64);
            b.ack.fail();
        }
    }
}

/// The `Ctx` of a `PipelineTask`, borrowing its fields one by one so that
/// its stages and outputs can be borrowed mutably beside it.
macro_rules! ctx {
    ($t:expr) => {
        $crate::pipeline::Ctx {
            screen: $t.screen.as_ref(),
            by: $t.by.as_ref(),
            when_full: $t.when_full,
            metrics: &$t.metrics,
            tracker: $t.reliability.as_deref(),
            on_error: $t.on_error.as_ref(),
            force: &$t.force,
            first_stage: 0,
        }
    };
}
pub(crate) use ctx;

/// What `process` reads of its pipeline besides the stages and outputs.
pub(crate) struct Ctx<'a> {
    pub(crate) screen: Option<&'a Screen>,
    pub(crate) by: Option<&'a By>,
    pub(crate) when_full: WhenFull,
    pub(crate) metrics: &'a PipelineMetrics,
    pub(crate) tracker: Option<&'a Tracker>,
    pub(crate) on_error: Option<&'a Arc<dyn Reroute>>,
    /// To tell a copy abandoned by a forced stop from one whose reader
    /// ended.
    pub(crate) force: &'a CancellationToken,
    /// The place of the first of the ops being run among the pipeline's
    /// ops (for stage metrics): not 0 for the ops after a window.
    pub(crate) first_stage: usize,
}

async fn process(ctx: &Ctx<'_>, stages: &mut [Compiled], outputs: &mut [Output], batch: Batch) {
    let t0 = Instant::now();
    if let Some(batch) = prepare(ctx, stages, batch).await {
        deliver(ctx, stages.len(), outputs, batch).await;
    }
    ctx.metrics.latency.observe(t0.elapsed());
}

/// Counts a batch in, screens out what its source could not decode and
/// runs `stages`; `None` when nothing is left to hand on (settled here).
pub(crate) async fn prepare(ctx: &Ctx<'_>, stages: &mut [Compiled], batch: Batch) -> Option<Batch> {
    let m = ctx.metrics;
    m.events_in.add(batch.len() as u64);
    m.bytes_in.add(batch.bytes() as u64);
    let mut batch = screen(ctx.screen, batch, m, ctx.force).await?;
    run_stages(ctx, stages, &mut batch).await;
    if batch.is_empty() {
        // Everything was dropped on purpose: that is delivery.
        batch.ack.complete();
        return None;
    }
    Some(batch)
}

/// Runs `stages` in order, counting each at its place.
pub(crate) async fn run_stages(ctx: &Ctx<'_>, stages: &mut [Compiled], batch: &mut Batch) {
    let m = ctx.metrics;
    for (i, s) in stages.iter_mut().enumerate() {
        let n = batch.len() as u64;
        let sm = m.stages.get(ctx.first_stage + i);
        if let Some(sm) = sm {
            sm.events_in.add(n);
        }
        s.apply_tracked(batch, m, ctx.tracker).await;
        if let Some(sm) = sm {
            sm.events_out.add(batch.len() as u64);
            if s.routes() {
                sm.routed.add(n - batch.len() as u64);
            }
        }
        if batch.is_empty() {
            break;
        }
    }
}

/// Hands a copy of `batch` to each output, through its modifiers (counted
/// from place `first_modifier` on), each with its own buffer policy.
pub(crate) async fn deliver(
    ctx: &Ctx<'_>,
    first_modifier: usize,
    outputs: &mut [Output],
    mut batch: Batch,
) {
    let Ctx {
        by,
        when_full,
        metrics: m,
        tracker,
        on_error,
        force,
        ..
    } = *ctx;
    let mut stage_index = first_modifier;
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
}

/// Takes out of a batch what no op may see: the whole batch when its
/// source gave up sending it again, and undecodable input. They go to
/// `OnError`, or are counted dropped. `None` when nothing is left (the
/// batch is then settled).
pub(crate) async fn screen(
    screen: Option<&Screen>,
    mut batch: Batch,
    m: &PipelineMetrics,
    force: &CancellationToken,
) -> Option<Batch> {
    if batch.retries_exhausted {
        give_up(screen, batch, m).await;
        return None;
    }
    if let Some(screen) = screen {
        screen_out(screen, &mut batch, m, force).await;
        if batch.is_empty() {
            batch.ack.complete();
            return None;
        }
    }
    Some(batch)
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
