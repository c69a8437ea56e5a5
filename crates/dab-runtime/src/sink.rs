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
            let Some(mut batch) = batch else { break };
            let mut extra_acks = Vec::new();
            if let Some(c) = self.coalesce {
                // Gather more until the size is reached or the time is up.
                let deadline = tokio::time::Instant::now() + c.max_wait;
                while batch.len() < c.max_events {
                    let next = tokio::select! {
                        b = self.input.recv() => b,
                        _ = tokio::time::sleep_until(deadline) => None,
                        _ = self.force.cancelled() => None,
                    };
                    let Some(more) = next else { break };
                    batch.events.extend(more.events);
                    extra_acks.push(more.ack);
                }
            }
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
                    pending.extend(extra_acks);
                }
                Outcome::GaveUp => {
                    self.metrics.failed_batches.add(1);
                    self.metrics.failed_events.add(n);
                    ack.fail();
                    extra_acks.into_iter().for_each(AckToken::fail);
                }
            }
            if self.input.is_empty() || pending.len() >= FLUSH_EVERY {
                self.flush(&mut pending).await;
            }
        }
        self.flush(&mut pending).await;
        // A forced stop leaves batches in the channel: they were not
        // written, so they are failed and counted like any given up on.
        self.input.close();
        while let Ok(b) = self.input.try_recv() {
            self.metrics.failed_batches.add(1);
            self.metrics.failed_events.add(b.len() as u64);
            b.ack.fail();
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use dab_api::Event;
    use std::sync::Mutex;

    /// Records the size of every write.
    struct Sizes(Arc<Mutex<Vec<usize>>>);

    #[async_trait::async_trait]
    impl Sink for Sizes {
        async fn write(&mut self, events: &[Event]) -> Result<(), ConnectorError> {
            self.0.lock().map(|mut v| v.push(events.len())).ok();
            Ok(())
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
