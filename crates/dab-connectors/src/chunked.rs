//! One request, many runtime batches: how the `http` and `murron_grpc`
//! sources take a body or a gRPC batch of any number of events in bounded
//! memory (issue 11 item 5).
//!
//! A request is decoded [`MAX_BATCH`] events at a time and each chunk is
//! handed on as its own runtime batch as soon as the channel has room, so
//! the events of a 10 MiB body of `{}` (3.5 million of them) never exist at
//! once: memory follows the channel, not the request. Every chunk carries a
//! share of one acknowledgement, so the request is answered OK only once
//! every chunk is delivered, and fails as a whole if any is not
//! ("acknowledged means delivered", SPEC section 5).
//!
//! A request of more than one chunk is first decoded through once without
//! keeping anything, so that bad input anywhere refuses it whole before any
//! of its events goes downstream, as when a request was one batch. The
//! cost is a second decode for large requests only; a request of one chunk
//! (up to [`MAX_BATCH`] events) is decoded once.

use std::future::Future;
use std::sync::{Arc, Mutex};

use dab_api::{AckStatus, AckToken, Batch, Event};
use tokio::sync::{mpsc, oneshot};

use crate::codec::json::ArrayReader;
use crate::codec::{with_budget, DecodeError, Filler, InternBudget, Present};
use crate::murron::wire::BatchReader;
use crate::settings::MAX_BATCH;

/// A decoder that yields events a chunk at a time.
pub(crate) trait Chunks: Clone {
    /// Appends up to `max` more events to `out`; done after an error.
    fn next_chunk(
        &mut self,
        max: usize,
        out: &mut Vec<(Event, Present)>,
    ) -> Result<(), DecodeError>;
    fn is_done(&self) -> bool;
}

impl Chunks for ArrayReader {
    fn next_chunk(
        &mut self,
        max: usize,
        out: &mut Vec<(Event, Present)>,
    ) -> Result<(), DecodeError> {
        ArrayReader::next_chunk(self, max, out)
    }

    fn is_done(&self) -> bool {
        ArrayReader::is_done(self)
    }
}

impl Chunks for BatchReader {
    fn next_chunk(
        &mut self,
        max: usize,
        out: &mut Vec<(Event, Present)>,
    ) -> Result<(), DecodeError> {
        BatchReader::next_chunk(self, max, out)
    }

    fn is_done(&self) -> bool {
        BatchReader::is_done(self)
    }
}

/// Why a request was not handed on whole.
#[derive(Debug)]
pub(crate) enum Refused {
    /// Bad input; nothing of the request went downstream.
    Decode(DecodeError),
    /// The output closed or `cancel` fired. Chunks already handed on may
    /// still be delivered, but the request is not acknowledged: the client
    /// sends it again (at least once).
    Stopped,
}

/// A request handed on: its events, and the outcome of all its chunks.
/// `outcome` is `None` for a request of no events (acknowledged at once).
#[derive(Debug)]
pub(crate) struct Sent {
    pub events: u64,
    pub outcome: Option<oneshot::Receiver<AckStatus>>,
}

/// Decodes `reader`, fills each event and hands the events on in batches
/// of at most [`MAX_BATCH`], each waiting for room in `out` (the back
/// pressure) unless `cancel` fires first.
pub(crate) async fn send<C: Chunks>(
    mut reader: C,
    intern: &Arc<InternBudget>,
    filler: &Mutex<Filler>,
    out: &mpsc::Sender<Batch>,
    cancel: impl Future<Output = ()>,
) -> Result<Sent, Refused> {
    let mut chunk = Vec::new();
    with_budget(intern, || reader.next_chunk(MAX_BATCH, &mut chunk)).map_err(Refused::Decode)?;
    if chunk.is_empty() && reader.is_done() {
        return Ok(Sent {
            events: 0,
            outcome: None,
        });
    }
    if !reader.is_done() {
        check_rest(reader.clone(), intern)
            .await
            .map_err(Refused::Decode)?;
    }

    tokio::pin!(cancel);
    let (root, outcome) = AckToken::channel();
    let mut events = 0u64;
    loop {
        let n = chunk.len();
        if n > 0 {
            let batch = Batch::new(fill(filler, &mut chunk), root.share());
            // `reserve` then `send`: the wait may be cut short.
            let permit = tokio::select! {
                biased;
                () = &mut cancel => return Err(Refused::Stopped),
                permit = out.reserve() => permit.map_err(|_| Refused::Stopped)?,
            };
            permit.send(batch);
            events += n as u64;
        }
        if reader.is_done() {
            break;
        }
        // Checked already, so an error here cannot happen; if it did, the
        // request fails whole rather than being acknowledged in part.
        with_budget(intern, || reader.next_chunk(MAX_BATCH, &mut chunk))
            .map_err(Refused::Decode)?;
    }
    root.complete();
    Ok(Sent {
        events,
        outcome: Some(outcome),
    })
}

/// Decodes the rest of a request without keeping it, yielding between
/// chunks so that a large body does not hold a runtime thread.
async fn check_rest<C: Chunks>(
    mut reader: C,
    intern: &Arc<InternBudget>,
) -> Result<(), DecodeError> {
    let mut scratch = Vec::with_capacity(MAX_BATCH);
    while !reader.is_done() {
        with_budget(intern, || reader.next_chunk(MAX_BATCH, &mut scratch))?;
        scratch.clear();
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// Fills the events of `chunk` and takes them, leaving it empty.
fn fill(filler: &Mutex<Filler>, chunk: &mut Vec<(Event, Present)>) -> Vec<Event> {
    let mut filler = match filler.lock() {
        Ok(f) => f,
        // A panic elsewhere cannot leave a sequence half-updated in a way
        // that matters more than refusing every request would.
        Err(poisoned) => poisoned.into_inner(),
    };
    chunk
        .drain(..)
        .map(|(mut event, present)| {
            filler.fill(&mut event, present);
            event
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn body(n: usize) -> Bytes {
        let items: Vec<String> = (0..n).map(|i| format!("{{\"offset\":{i}}}")).collect();
        Bytes::from(format!("[{}]", items.join(",")))
    }

    fn run<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    /// Sends `body` through a channel of `room` batches to a task that
    /// settles each batch with `settle(index)`; the batch sizes and the
    /// request's outcome.
    fn send_and_settle(
        body: Bytes,
        room: usize,
        settle: impl Fn(usize) -> bool + Send + 'static,
    ) -> (Result<u64, String>, Vec<usize>, Option<AckStatus>) {
        run(async move {
            let (tx, mut rx) = mpsc::channel::<Batch>(room);
            let settler = tokio::spawn(async move {
                let mut sizes = Vec::new();
                while let Some(batch) = rx.recv().await {
                    let ok = settle(sizes.len());
                    sizes.push(batch.len());
                    if ok {
                        batch.ack.complete();
                    } else {
                        batch.ack.fail();
                    }
                }
                sizes
            });
            let filler = Mutex::new(Filler::new("src"));
            let reader = ArrayReader::new(body).expect("opens");
            let sent = send(
                reader,
                &InternBudget::per_source(),
                &filler,
                &tx,
                std::future::pending(),
            )
            .await;
            drop(tx);
            let sizes = settler.await.expect("settler");
            match sent {
                Ok(Sent { events, outcome }) => {
                    let status = match outcome {
                        Some(o) => Some(o.await.expect("outcome")),
                        None => None,
                    };
                    (Ok(events), sizes, status)
                }
                Err(Refused::Decode(e)) => (Err(e.to_string()), sizes, None),
                Err(Refused::Stopped) => (Err("stopped".to_owned()), sizes, None),
            }
        })
    }

    #[test]
    fn a_large_request_becomes_bounded_batches_acknowledged_together() {
        let (sent, sizes, status) = send_and_settle(body(2 * MAX_BATCH + 5), 1, |_| true);
        assert_eq!(sent, Ok(2 * MAX_BATCH as u64 + 5));
        assert_eq!(sizes, vec![MAX_BATCH, MAX_BATCH, 5]);
        assert_eq!(status, Some(AckStatus::Delivered));
    }

    #[test]
    fn one_failed_chunk_fails_the_whole_request() {
        let (sent, sizes, status) = send_and_settle(body(3 * MAX_BATCH), 1, |i| i != 1);
        assert_eq!(sent, Ok(3 * MAX_BATCH as u64));
        assert_eq!(sizes.len(), 3);
        assert_eq!(status, Some(AckStatus::Failed));
    }

    #[test]
    fn bad_input_past_the_first_chunk_sends_nothing() {
        let mut items: Vec<String> = (0..2 * MAX_BATCH)
            .map(|i| format!("{{\"offset\":{i}}}"))
            .collect();
        items.push("{\"offset\":\"x\"}".to_owned());
        let text = format!("[{}]", items.join(","));
        let column = text.find("\"x\"").expect("bad value") + 1;
        let bad = Bytes::from(text);
        let (sent, sizes, _) = send_and_settle(bad, 4, |_| true);
        let err = sent.expect_err("refused");
        assert!(
            err.starts_with(&format!("invalid JSON event at column {column}: ")),
            "{err}"
        );
        assert_eq!(sizes, Vec::<usize>::new());
    }

    #[test]
    fn an_empty_array_is_acknowledged_at_once() {
        let (sent, sizes, status) = send_and_settle(Bytes::from_static(b" [ ] "), 1, |_| true);
        assert_eq!((sent, sizes, status), (Ok(0), vec![], None));
    }
}
