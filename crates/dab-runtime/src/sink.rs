//! Drives one sink: writes batches in order, retries failed writes with
//! exponential back-off and full jitter, opens a circuit breaker (longest
//! back-off, logged once) while the sink keeps failing, and acknowledges a
//! batch only after a flush that follows its write succeeded. Nothing is
//! given up on unless shutdown is forced; then the sources hear "failed".

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use dab_api::{AckToken, Batch, ConnectorError, Sink};
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
/// Acknowledge at least every this many batches even under constant load.
const FLUSH_EVERY: usize = 64;

pub struct SinkTask {
    pub sink: Box<dyn Sink>,
    pub input: mpsc::Receiver<Batch>,
    pub metrics: Arc<SinkMetrics>,
    /// Cancelled when shutdown is forced: stop retrying.
    pub force: CancellationToken,
    /// Reliability tracking, when on: what this sink wrote is "delivered".
    pub reliability: Option<Arc<Tracker>>,
}

enum Outcome {
    Done,
    GaveUp,
}

impl SinkTask {
    pub async fn run(mut self) {
        let mut pending: Vec<AckToken> = Vec::new();
        loop {
            let batch = tokio::select! {
                b = self.input.recv() => b,
                _ = self.force.cancelled() => None,
            };
            let Some(batch) = batch else { break };
            let n = batch.len() as u64;
            let bytes = batch.bytes() as u64;
            let Batch { events, ack } = batch;
            match retry(
                self.sink.as_mut(),
                Op::Write(&events),
                &self.metrics,
                &self.force,
            )
            .await
            {
                Outcome::Done => {
                    if let Some(t) = &self.reliability {
                        t.delivered(&events);
                    }
                    self.metrics.events.add(n);
                    self.metrics.bytes.add(bytes);
                    self.metrics.batches.add(1);
                    pending.push(ack);
                }
                Outcome::GaveUp => {
                    self.metrics.failed_batches.add(1);
                    self.metrics.failed_events.add(n);
                    ack.fail();
                }
            }
            if self.input.is_empty() || pending.len() >= FLUSH_EVERY {
                self.flush(&mut pending).await;
            }
        }
        self.flush(&mut pending).await;
    }

    async fn flush(&mut self, pending: &mut Vec<AckToken>) {
        if pending.is_empty() {
            return;
        }
        match retry(self.sink.as_mut(), Op::Flush, &self.metrics, &self.force).await {
            Outcome::Done => pending.drain(..).for_each(AckToken::complete),
            Outcome::GaveUp => pending.drain(..).for_each(AckToken::fail),
        }
    }
}

#[derive(Clone, Copy)]
enum Op<'a> {
    Write(&'a [dab_api::Event]),
    Flush,
}

async fn retry(
    sink: &mut dyn Sink,
    op: Op<'_>,
    m: &SinkMetrics,
    force: &CancellationToken,
) -> Outcome {
    let mut failures: u32 = 0;
    loop {
        let attempt = async {
            match op {
                Op::Write(events) => sink.write(events).await,
                Op::Flush => sink.flush().await,
            }
        };
        // A forced stop must reach a write that never returns, too.
        let result: Result<(), ConnectorError> = tokio::select! {
            biased;
            _ = force.cancelled() => return Outcome::GaveUp,
            r = attempt => r,
        };
        match result {
            Ok(()) => {
                if m.breaker_open.swap(false, Ordering::Relaxed) {
                    tracing::info!(sink = %m.name, "sink recovered; circuit closed");
                }
                return Outcome::Done;
            }
            Err(e) => {
                m.errors.add(1);
                failures += 1;
                if failures == BREAKER_AFTER && !m.breaker_open.swap(true, Ordering::Relaxed) {
                    tracing::error!(sink = %m.name, error = %e, "sink keeps failing; circuit open, retrying every {:?}", MAX);
                } else if failures < BREAKER_AFTER {
                    tracing::warn!(sink = %m.name, error = %e, attempt = failures, "sink write failed; will retry");
                }
                if force.is_cancelled() {
                    return Outcome::GaveUp;
                }
                let ceiling = BASE.saturating_mul(1u32 << failures.min(16)).min(MAX);
                let wait = rand::rng().random_range(Duration::ZERO..=ceiling);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = force.cancelled() => return Outcome::GaveUp,
                }
            }
        }
    }
}
