//! The `Murron` service behind the `murron_grpc` source: each batch becomes
//! runtime batches of at most 1,024 events sharing one acknowledgement
//! (`chunked`), and its answer waits for that outcome.
//!
//! Two tokens end the source's work. `stopping` (the source's shutdown):
//! take no new batch, answer the ones in flight. `abort` (the grace is
//! over): stop waiting, answer `UNAVAILABLE`. Connection tasks belong to
//! hyper and may outlive the source, so the pipeline sender sits behind a
//! lock the source empties when it returns, and a handler holds a clone of
//! it only while waiting for channel room, and gives it up on `abort`: the
//! pipeline downstream sees its input end and drains.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use dab_api::connector::{Admission, SourceStats};
use dab_api::{AckStatus, Batch};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Code, Request, Response, Status, Streaming};

use super::rpc::murron_server::Murron;
use super::rpc::Ack;
use super::{wire, STREAM_WINDOW};
use crate::chunked::{self, Refused};
use crate::codec::{Filler, InternBudget};

/// What every call of one source shares.
#[derive(Debug)]
pub(super) struct Shared {
    /// Emptied when the source returns; see the module comment.
    out: Mutex<Option<mpsc::Sender<Batch>>>,
    /// One sequence per (host, pid, type) for the whole source, so offsets
    /// it fills in stay unique across connections.
    filler: Mutex<Filler>,
    /// New strings this source's input may intern.
    intern: Arc<InternBudget>,
    pub(super) stats: Arc<SourceStats>,
    admission: Arc<dyn Admission>,
    stopping: CancellationToken,
    abort: CancellationToken,
}

/// A batch sent on, waiting for its outcome. `None`: an empty batch,
/// acknowledged at once.
struct Pending {
    outcome: Option<oneshot::Receiver<AckStatus>>,
    events: u64,
}

impl Shared {
    pub(super) fn new(
        name: &str,
        out: mpsc::Sender<Batch>,
        stats: Arc<SourceStats>,
        admission: Arc<dyn Admission>,
        stopping: CancellationToken,
        abort: CancellationToken,
    ) -> Shared {
        Shared {
            out: Mutex::new(Some(out)),
            filler: Mutex::new(Filler::for_source(name, stats.clone())),
            intern: InternBudget::per_source(),
            stats,
            admission,
            stopping,
            abort,
        }
    }

    /// Drops the source's sender (when it returns).
    pub(super) fn close(&self) {
        match self.out.lock() {
            Ok(mut out) => *out = None,
            Err(poisoned) => *poisoned.into_inner() = None,
        }
    }

    fn sender(&self) -> Option<mpsc::Sender<Batch>> {
        match self.out.lock() {
            Ok(out) => out.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Checks, decodes and sends one batch on; the answer comes from
    /// [`Shared::outcome`].
    async fn accept(&self, batch: wire::Batch) -> Result<Pending, Status> {
        if self.stopping.is_cancelled() {
            return Err(stopping());
        }
        if !self.admission.admit() {
            SourceStats::add(&self.stats.refused, 1);
            return Err(Status::resource_exhausted("overloaded, retry later"));
        }
        let bytes = batch.len() as u64;
        let Some(out) = self.sender() else {
            return Err(stopping());
        };
        // Cut into runtime batches; waiting for room is the back pressure,
        // cut short by `abort`.
        let sent = chunked::send(
            batch.reader(),
            &self.intern,
            &self.filler,
            &out,
            self.abort.cancelled(),
        )
        .await
        .map_err(|refused| match refused {
            Refused::Decode(e) => {
                SourceStats::add(&self.stats.decode_errors, 1);
                Status::invalid_argument(e.to_string())
            }
            Refused::Stopped => stopping(),
        })?;
        SourceStats::add(&self.stats.events, sent.events);
        SourceStats::add(&self.stats.bytes, bytes);
        Ok(Pending {
            outcome: sent.outcome,
            events: sent.events,
        })
    }

    /// The answer to an accepted batch, once the runtime settled it.
    async fn outcome(&self, pending: &mut Pending) -> Result<Ack, Status> {
        let accepted = pending.events;
        let Some(outcome) = pending.outcome.as_mut() else {
            return Ok(Ack { accepted });
        };
        tokio::select! {
            biased;
            status = outcome => match status {
                Ok(AckStatus::Delivered) => Ok(Ack { accepted }),
                Ok(AckStatus::Failed) => Err(Status::unavailable(
                    "the events were not delivered; send them again",
                )),
                Err(_) => Err(Status::unavailable(
                    "the pipeline stopped before delivering the events; send them again",
                )),
            },
            () = self.abort.cancelled() => Err(Status::unavailable(
                "the source stopped before the events were delivered; send them again",
            )),
        }
    }
}

fn stopping() -> Status {
    Status::unavailable("the source is stopping; send the events again elsewhere or later")
}

/// The `Murron` service of one source.
#[derive(Debug, Clone)]
pub(super) struct MurronService {
    pub(super) shared: Arc<Shared>,
}

#[tonic::async_trait]
impl Murron for MurronService {
    async fn send(&self, request: Request<wire::Batch>) -> Result<Response<Ack>, Status> {
        let mut pending = self.shared.accept(request.into_inner()).await?;
        self.shared.outcome(&mut pending).await.map(Response::new)
    }

    type StreamStream = ReceiverStream<Result<Ack, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<wire::Batch>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_WINDOW);
        tokio::spawn(drive_stream(self.shared.clone(), request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One `Stream` call: reads batches while fewer than [`STREAM_WINDOW`] wait
/// for their outcome, and answers them in order. An error ends the stream,
/// after the answers of the batches before it.
async fn drive_stream(
    shared: Arc<Shared>,
    mut inbound: Streaming<wire::Batch>,
    tx: mpsc::Sender<Result<Ack, Status>>,
) {
    let mut in_flight: VecDeque<Pending> = VecDeque::with_capacity(STREAM_WINDOW);
    let mut reading = true;
    // What ends the stream once `in_flight` is answered; `None` is OK.
    let mut end: Option<Status> = None;
    loop {
        if !reading && in_flight.is_empty() {
            if let Some(status) = end {
                answer(&shared, &tx, Err(status)).await;
            }
            return;
        }
        tokio::select! {
            biased;
            () = shared.abort.cancelled() => {
                let _ = tx.try_send(Err(stopping()));
                return;
            }
            // The client went away; the outcomes no longer have a reader.
            () = tx.closed() => return,
            outcome = front_outcome(&shared, &mut in_flight), if !in_flight.is_empty() => {
                in_flight.pop_front();
                let failed = outcome.is_err();
                if !answer(&shared, &tx, outcome).await || failed {
                    return;
                }
            }
            () = shared.stopping.cancelled(), if reading => {
                reading = false;
                end = Some(stopping());
            }
            message = inbound.message(), if reading && in_flight.len() < STREAM_WINDOW => {
                match message {
                    Ok(Some(batch)) => match shared.accept(batch).await {
                        Ok(pending) => in_flight.push_back(pending),
                        Err(status) => {
                            reading = false;
                            end = Some(status);
                        }
                    },
                    // The client is done sending: answer the rest, end OK.
                    Ok(None) => reading = false,
                    Err(status) => {
                        if is_bad_input(status.code()) {
                            SourceStats::add(&shared.stats.decode_errors, 1);
                        }
                        reading = false;
                        end = Some(status);
                    }
                }
            }
        }
    }
}

/// Sends one answer unless the client is gone or the source gave up
/// (a client that reads no answers must not hold the task forever).
async fn answer(
    shared: &Shared,
    tx: &mpsc::Sender<Result<Ack, Status>>,
    item: Result<Ack, Status>,
) -> bool {
    tokio::select! {
        biased;
        () = shared.abort.cancelled() => false,
        sent = tx.send(item) => sent.is_ok(),
    }
}

async fn front_outcome(shared: &Shared, in_flight: &mut VecDeque<Pending>) -> Result<Ack, Status> {
    match in_flight.front_mut() {
        Some(pending) => shared.outcome(pending).await,
        None => std::future::pending().await,
    }
}

/// Statuses tonic answers by itself for input it could not read: a message
/// over the size limit, a bad frame or compression.
fn is_bad_input(code: Code) -> bool {
    matches!(code, Code::OutOfRange | Code::Internal)
}

/// Counts, as decode errors, the unary calls tonic refused before our
/// handler saw them (a message over `max_message_bytes`); our own handler
/// never answers these codes.
#[derive(Debug, Clone)]
pub(super) struct Counted<S> {
    pub(super) inner: S,
    pub(super) stats: Arc<SourceStats>,
}

impl<S: NamedService> NamedService for Counted<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<http::Request<B>> for Counted<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let unary = req.uri().path().ends_with("/Send");
        let answer = self.inner.call(req);
        let stats = self.stats.clone();
        Box::pin(async move {
            let response = answer.await?;
            // A refused unary call is "trailers only": the status is in the
            // headers. Streams carry theirs in trailers, counted above.
            if unary {
                let refused = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(Code::from_i32);
                if refused.is_some_and(is_bad_input) {
                    SourceStats::add(&stats.decode_errors, 1);
                }
            }
            Ok(response)
        })
    }
}
