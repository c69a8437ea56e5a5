//! One pipeline as one task: receive a batch, run the stages in order, hand
//! a copy to each output with that output's own modifiers and buffer
//! policy. Batches, not events, cross channels.

use std::sync::Arc;
use std::time::Instant;

use dab_api::Batch;
use dab_plan::model::WhenFull;
use tokio::sync::mpsc;

use crate::metrics::{DropReason, PipelineMetrics};
use crate::output::{OutputTx, QueueReader};
use crate::stages::Compiled;

#[derive(Debug)]
pub struct Output {
    pub tx: OutputTx,
    pub modifiers: Vec<Compiled>,
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
}

#[derive(Debug)]
pub struct PipelineTask {
    pub input: Inlet,
    pub stages: Vec<Compiled>,
    pub outputs: Vec<Output>,
    pub when_full: WhenFull,
    pub metrics: Arc<PipelineMetrics>,
}

impl PipelineTask {
    /// Runs until the input closes, then drops the outputs so that
    /// downstream drains in turn.
    pub async fn run(mut self) {
        while let Some(mut batch) = self.input.recv().await {
            let t0 = Instant::now();
            let m = &*self.metrics;
            m.events_in.add(batch.len() as u64);
            m.bytes_in.add(batch.bytes() as u64);
            for (i, s) in self.stages.iter_mut().enumerate() {
                let n = batch.len() as u64;
                if let Some(sm) = m.stages.get(i) {
                    sm.events_in.add(n);
                }
                s.apply(&mut batch, m).await;
                if let Some(sm) = m.stages.get(i) {
                    sm.events_out.add(batch.len() as u64);
                }
                if batch.is_empty() {
                    break;
                }
            }
            if batch.is_empty() {
                // Everything was dropped on purpose: that is delivery.
                batch.ack.complete();
                m.latency.observe(t0.elapsed());
                continue;
            }
            let mut stage_index = self.stages.len();
            let last = self.outputs.len().saturating_sub(1);
            let mut original = Some(batch);
            for (i, out) in self.outputs.iter_mut().enumerate() {
                let mut copy = if i == last {
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
                        s.apply(&mut copy, m).await;
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
                let n = copy.len() as u64;
                let om = m.outputs.get(i);
                let sent = match self.when_full {
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
                    // The reader is gone (forced shutdown): not delivered.
                    Err(b) => b.ack.fail(),
                }
            }
            m.latency.observe(t0.elapsed());
        }
    }
}

/// Gives every reader every batch (a source or queue read by several
/// pipelines); the original's share settles once all copies are handed on.
pub async fn fan_out(mut inlet: Inlet, readers: Vec<mpsc::Sender<Batch>>) {
    while let Some(batch) = inlet.recv().await {
        let mut delivered = true;
        for r in &readers {
            if let Err(e) = r.send(batch.share()).await {
                e.0.ack.fail();
                delivered = false;
            }
        }
        if delivered {
            batch.ack.complete();
        } else {
            batch.ack.fail();
        }
    }
}
