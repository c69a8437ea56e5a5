//! The router of an input: hands each batch to the pipelines reading it
//! now, and counts what it cannot hand on.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{InputMetrics, Undelivered, UndeliveredCounts};
use crate::pipeline::Inlet;

use super::state::Readers;

/// Hands each batch of an input (a source or a memory queue) to the
/// pipelines reading it now; a reload changes the list between batches.
/// One reader gets the batch itself, several get shares (fan-out). When
/// the list is replaced, the senders of pipelines no longer listed are
/// dropped at once, so those pipelines drain and end. Every batch it
/// cannot hand on fails, counted by reason (`Undelivered`); a forced stop
/// fails and counts the batch in hand and everything still queued.
pub(super) async fn route(
    mut input: Inlet,
    mut readers: watch::Receiver<Readers>,
    m: Arc<InputMetrics>,
    force: CancellationToken,
) {
    let mut current: Readers = readers.borrow_and_update().clone();
    let mut warned = false;
    loop {
        let batch = tokio::select! {
            b = input.recv() => b,
            Ok(()) = readers.changed() => {
                current = readers.borrow_and_update().clone();
                continue;
            }
            _ = force.cancelled() => {
                abandon_rest(input, &m.undelivered);
                return;
            }
        };
        let Some(batch) = batch else { return };
        if readers.has_changed().unwrap_or(false) {
            current = readers.borrow_and_update().clone();
        }
        let n = batch.len() as u64;
        match current.len() {
            0 => {
                if !warned {
                    warned = true;
                    tracing::warn!(input = %m.name, "no pipeline in this process reads this input; its events are reported failed (counted as no_reader)");
                }
                m.undelivered.add(Undelivered::NoReader, n);
                batch.ack.fail();
            }
            1 => {
                let send = current[0].1.send(batch);
                let r = tokio::select! {
                    biased;
                    _ = force.cancelled() => {
                        // The batch in hand is dropped with the send.
                        m.undelivered.add(Undelivered::Abandoned, n);
                        abandon_rest(input, &m.undelivered);
                        return;
                    }
                    r = send => r,
                };
                if let Err(e) = r {
                    m.undelivered
                        .add(Undelivered::reader_closed(force.is_cancelled()), n);
                    e.0.ack.fail();
                }
            }
            _ => {
                let hand_on = async {
                    let mut delivered = true;
                    for (_, r) in &current {
                        if let Err(e) = r.send(batch.share()).await {
                            e.0.ack.fail();
                            delivered = false;
                        }
                    }
                    delivered
                };
                let delivered = tokio::select! {
                    biased;
                    _ = force.cancelled() => false,
                    d = hand_on => d,
                };
                if delivered {
                    batch.ack.complete();
                } else {
                    m.undelivered
                        .add(Undelivered::reader_closed(force.is_cancelled()), n);
                    batch.ack.fail();
                }
            }
        }
    }
}

/// Forced stop: fails and counts every batch still queued at `input`.
fn abandon_rest(input: Inlet, counts: &UndeliveredCounts) {
    for b in input.close_and_drain() {
        counts.add(Undelivered::Abandoned, b.len() as u64);
        b.ack.fail();
    }
}
