//! The router of an input: hands each batch to the pipelines reading it
//! now, and counts what it cannot hand on.

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use dab_plan::model::WhenFull;
use tokio::sync::mpsc::error::TrySendError;

use crate::metrics::{DropReason, InputMetrics, Undelivered, UndeliveredCounts};
use crate::pipeline::Inlet;

use super::state::Readers;

/// Hands each batch of an input (a source or a memory queue) to the
/// pipelines reading it now; a reload changes the list between batches.
/// One reader gets the batch itself, several get shares (fan-out). Each
/// reader has its own bounded buffer: readers with room get their copy at
/// once, a full reader with `In(..., when_full = drop_newest)` loses its
/// copy (counted `input_full` in its pipeline), and only full `block`
/// readers are waited for, so a slow dropping reader never holds the
/// others back. When
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
            1 if current[0].1.when_full == WhenFull::Block => {
                let send = current[0].1.tx.send(batch);
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
                // Every reader with room gets its copy at once; a full
                // `drop_newest` reader loses its copy (counted); only the
                // full `block` readers are waited for.
                let mut delivered = true;
                let mut waiting = Vec::new();
                for (_, r) in &current {
                    match r.tx.try_send(batch.share()) {
                        Ok(()) => {}
                        Err(TrySendError::Full(copy)) if r.when_full == WhenFull::DropNewest => {
                            r.metrics.dropped(DropReason::InputFull, copy.len() as u64);
                            copy.ack.complete();
                        }
                        Err(TrySendError::Full(copy)) => waiting.push((r, copy)),
                        Err(TrySendError::Closed(copy)) => {
                            copy.ack.fail();
                            delivered = false;
                        }
                    }
                }
                let hand_on = async {
                    let mut ok = true;
                    for (r, copy) in waiting {
                        if let Err(e) = r.tx.send(copy).await {
                            e.0.ack.fail();
                            ok = false;
                        }
                    }
                    ok
                };
                let waited = tokio::select! {
                    biased;
                    _ = force.cancelled() => false,
                    d = hand_on => d,
                };
                if delivered && waited {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{AbandonedTotal, PipelineMetrics};
    use crate::topology::state::Reader;
    use dab_api::{AckStatus, AckToken, Batch, Event};
    use tokio::sync::mpsc;

    /// A reader that never takes anything, with `when_full = drop_newest`,
    /// does not hold back a reader beside it: the other gets every batch,
    /// the stuck one keeps what fit in its buffer and counts the rest as
    /// `input_full`, and every source batch is acknowledged.
    #[tokio::test]
    async fn a_full_dropping_reader_does_not_hold_the_others_back() {
        const BATCHES: usize = 50;
        let (src_tx, src_rx) = mpsc::channel(BATCHES);
        let (stuck_tx, stuck_rx) = mpsc::channel(1);
        let (fast_tx, mut fast_rx) = mpsc::channel(4);
        let stuck_m = Arc::new(PipelineMetrics::new("stuck", vec![], vec![]));
        let fast_m = Arc::new(PipelineMetrics::new("fast", vec![], vec![]));
        let readers = vec![
            (
                "stuck".to_owned(),
                Reader {
                    tx: stuck_tx,
                    when_full: WhenFull::DropNewest,
                    metrics: stuck_m.clone(),
                },
            ),
            (
                "fast".to_owned(),
                Reader {
                    tx: fast_tx,
                    when_full: WhenFull::Block,
                    metrics: fast_m.clone(),
                },
            ),
        ];
        let (_wtx, wrx) = watch::channel(readers);
        let im = Arc::new(InputMetrics {
            name: "in".to_owned(),
            undelivered: UndeliveredCounts::new(AbandonedTotal::default()),
        });
        let router = tokio::spawn(route(
            Inlet::Channel(src_rx),
            wrx,
            im,
            CancellationToken::new(),
        ));
        let mut acks = Vec::new();
        for _ in 0..BATCHES {
            let (ack, rx) = AckToken::channel();
            acks.push(rx);
            src_tx
                .send(Batch::new(vec![Event::default(); 3], ack))
                .await
                .map_err(|_| ())
                .expect("send");
        }
        drop(src_tx);
        let mut got = 0;
        let recv = async {
            while got < BATCHES {
                let Some(b) = fast_rx.recv().await else { break };
                got += 1;
                b.ack.complete();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), recv)
            .await
            .expect("the fast reader was held back");
        assert_eq!(got, BATCHES);
        // One batch fit in the stuck reader's buffer; the rest were dropped.
        assert_eq!(
            stuck_m.dropped_count(DropReason::InputFull),
            3 * (BATCHES as u64 - 1)
        );
        assert_eq!(fast_m.dropped_count(DropReason::InputFull), 0);
        let mut stuck_rx = stuck_rx;
        let kept = stuck_rx.recv().await.expect("the batch that fit");
        kept.ack.complete();
        for a in acks {
            assert_eq!(a.await.ok(), Some(AckStatus::Delivered));
        }
        drop(_wtx);
        let _ = router.await;
    }
}
