//! A reading pipeline's side of a disk queue: reads durable records
//! through the owner, decodes them into events and hands them on as
//! batches. The queue learns a batch is done only when its `AckToken`
//! settles delivered and every batch read before it has (positions are a
//! prefix); a batch that fails is sent again after a back-off, from memory,
//! so the ones after it do not wait to be read.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use dab_api::ack::AckStatus;
use dab_api::connector::{ConnectorError, Source, SourceContext, SourceStats};
use dab_api::metrics::ConnectorMetrics;
use dab_api::{AckToken, Batch, Event, Text};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::metrics::DiskReaderMetrics;
use super::owner::{Owner, Records};
use crate::codec::proto;

/// Batches handed on and not yet settled, at most.
const WINDOW: usize = 8;
/// Back-off before a failed batch is sent again: doubles from the first to
/// the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(5));
/// After a stop, how long the reader still waits for the batches in flight
/// to settle, so that their acknowledgements reach the queue.
const SETTLE_GRACE: Duration = Duration::from_secs(10);

pub(super) struct DiskSource {
    owner: Arc<Owner>,
    reader: String,
    metrics: Arc<DiskReaderMetrics>,
    /// Times a failed batch is sent again before it is given up on;
    /// `None`: no limit.
    max_redeliveries: Option<u32>,
}

impl DiskSource {
    pub(super) fn new(
        owner: Arc<Owner>,
        reader: &str,
        max_redeliveries: Option<u32>,
    ) -> DiskSource {
        let metrics = Arc::new(DiskReaderMetrics::new(Arc::clone(&owner.metrics), reader));
        DiskSource {
            owner,
            reader: reader.to_owned(),
            metrics,
            max_redeliveries,
        }
    }
}

enum State {
    InFlight,
    Done,
    Failed { at: Instant },
}

struct Slot {
    /// The sequence number of the batch's last record: its id, and what
    /// the queue is acknowledged up to when it is done.
    last: u64,
    events: Vec<Event>,
    state: State,
    attempts: u32,
    /// Given up on: sent once more, marked for `OnError`.
    exhausted: bool,
}

fn backoff(attempts: u32) -> Duration {
    let d = BACKOFF.0.saturating_mul(1u32 << attempts.min(5));
    d.min(BACKOFF.1)
}

/// Decodes a read's records; a record that is not an event (it cannot be,
/// short of a bug: each carries a checksum) goes on as `dab.undecodable`.
fn decode(records: Records, origin: &Text, metrics: &DiskReaderMetrics) -> (u64, Vec<Event>) {
    let last = records.last().map_or(0, |r| r.0);
    let events = records
        .into_iter()
        .map(|(seq, bytes)| match proto::decode(bytes.clone()) {
            Ok((ev, _)) => ev,
            Err(e) => {
                DiskReaderMetrics::add(&metrics.undecodable, 1);
                Event::undecodable(
                    origin.clone(),
                    bytes,
                    format!("disk queue record {seq}: {e}"),
                )
            }
        })
        .collect();
    (last, events)
}

impl DiskSource {
    fn batch(&self, slot: &Slot, acks: &mpsc::UnboundedSender<(u64, AckStatus)>) -> Batch {
        let acks = acks.clone();
        let id = slot.last;
        let token = AckToken::new(move |status| {
            let _ = acks.send((id, status));
        });
        DiskReaderMetrics::add(&self.metrics.batches, 1);
        DiskReaderMetrics::add(&self.metrics.events, slot.events.len() as u64);
        let mut batch = Batch::new(slot.events.clone(), token);
        batch.retries_exhausted = slot.exhausted;
        batch
    }

    /// Settles slot `id`; acknowledges the done prefix to the queue.
    fn settle(&self, slots: &mut VecDeque<Slot>, id: u64, status: AckStatus) {
        let Some(slot) = slots.iter_mut().find(|s| s.last == id) else {
            return;
        };
        match status {
            AckStatus::Delivered => slot.state = State::Done,
            AckStatus::Failed if slot.exhausted => {
                // Not even `OnError` took them (it, or the pipeline, is
                // gone): counted, logged, and acknowledged past, as the
                // limit promised.
                let n = slot.events.len() as u64;
                DiskReaderMetrics::add(&self.metrics.exhausted_lost, n);
                tracing::error!(queue = %self.owner.queue, reader = %self.reader, events = n, "events given up on after max_redeliveries could not be handed to OnError; dropped (retries_exhausted)");
                slot.state = State::Done;
            }
            AckStatus::Failed => {
                DiskReaderMetrics::add(&self.metrics.failed_batches, 1);
                if self.max_redeliveries.is_some_and(|m| slot.attempts >= m) {
                    // Given up on: sent at once, one last time, marked.
                    DiskReaderMetrics::add(&self.metrics.exhausted, slot.events.len() as u64);
                    slot.exhausted = true;
                    slot.state = State::Failed { at: Instant::now() };
                } else {
                    slot.state = State::Failed {
                        at: Instant::now() + backoff(slot.attempts),
                    };
                }
            }
        }
        let mut acked = None;
        let mut records = 0u64;
        while slots
            .front()
            .is_some_and(|s| matches!(s.state, State::Done))
        {
            if let Some(s) = slots.pop_front() {
                acked = Some(s.last);
                records += s.events.len() as u64;
            }
        }
        if let Some(seq) = acked {
            DiskReaderMetrics::add(&self.metrics.acked, records);
            self.owner.ack(&self.reader, seq);
        }
    }
}

#[async_trait::async_trait]
impl Source for DiskSource {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ConnectorError> {
        let SourceContext {
            name,
            out,
            shutdown,
            stats,
            ..
        } = ctx;
        let origin = Text::from(name.clone());
        // A reader rebuilt in this process starts after its position, not
        // after what its predecessor read.
        self.owner.rewind(&self.reader);
        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel::<(u64, AckStatus)>();
        let mut slots: VecDeque<Slot> = VecDeque::new();
        let mut read = None;
        loop {
            if read.is_none() && slots.len() < WINDOW {
                read = Some(self.owner.read(&self.reader));
            }
            let retry_at = slots
                .iter()
                .filter_map(|s| match s.state {
                    State::Failed { at } => Some(at),
                    _ => None,
                })
                .min();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some((id, status)) = ack_rx.recv() => self.settle(&mut slots, id, status),
                got = async {
                    match read.as_mut() {
                        Some(r) => r.await,
                        None => std::future::pending().await,
                    }
                }, if read.is_some() => {
                    read = None;
                    let records = match got {
                        Ok(Ok(records)) => records,
                        Ok(Err(e)) => return Err(ConnectorError::Other(e)),
                        Err(_) => {
                            return Err(ConnectorError::Other(format!(
                                "disk queue `{}`: its thread has stopped",
                                self.owner.queue
                            )))
                        }
                    };
                    let bytes: usize = records.iter().map(|r| r.1.len()).sum();
                    let (last, events) = decode(records, &origin, &self.metrics);
                    let slot = Slot { last, events, state: State::InFlight, attempts: 0, exhausted: false };
                    let batch = self.batch(&slot, &ack_tx);
                    let n = slot.events.len() as u64;
                    slots.push_back(slot);
                    // A batch not handed on (a stop) is not abandoned: its
                    // records stay in the queue, unacknowledged, and come
                    // again at the next start.
                    tokio::select! {
                        biased;
                        () = shutdown.cancelled() => break,
                        sent = out.send(batch) => {
                            if sent.is_err() {
                                break;
                            }
                            SourceStats::add(&stats.events, n);
                            SourceStats::add(&stats.bytes, bytes as u64);
                        }
                    }
                }
                () = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    let now = Instant::now();
                    let mut again = Vec::new();
                    for s in slots.iter_mut() {
                        if let State::Failed { at } = s.state {
                            if at <= now {
                                s.state = State::InFlight;
                                s.attempts += 1;
                                again.push(s.last);
                            }
                        }
                    }
                    for id in again {
                        let Some(slot) = slots.iter().find(|s| s.last == id) else { continue };
                        let batch = self.batch(slot, &ack_tx);
                        tokio::select! {
                            biased;
                            () = shutdown.cancelled() => break,
                            sent = out.send(batch) => {
                                if sent.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                }
            }
        }
        // Stopped: nothing more is read or sent again. The pipelines drain
        // once `out` is gone; the batches they still hold settle, and their
        // acknowledgements reach the queue, for a while.
        drop(read);
        drop(out);
        drop(ack_tx);
        let deadline = Instant::now() + SETTLE_GRACE;
        while slots.iter().any(|s| matches!(s.state, State::InFlight)) {
            match tokio::time::timeout_at(deadline, ack_rx.recv()).await {
                Ok(Some((id, status))) => {
                    // A failure is not sent again: the next start reads it.
                    self.settle(&mut slots, id, status);
                }
                Ok(None) | Err(_) => break,
            }
        }
        Ok(())
    }

    fn metrics(&self) -> Option<Arc<dyn ConnectorMetrics>> {
        Some(self.metrics.clone())
    }
}
