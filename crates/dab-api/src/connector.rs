//! The traits connectors implement, and how the runtime builds them.
//!
//! A source has one required method, `run`, which reads until its input
//! ends or shutdown is asked for, sending batches to `ctx.out`. A sink has
//! one required method, `write`; `flush` and `close` have defaults
//! (ripgrep's `Sink` habit). Retries, back-off, acknowledgement and metrics
//! are the runtime's job, not each connector's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::batch::Batch;
use crate::config::ConfigValue;
use crate::event::Event;
use crate::metrics::ConnectorMetrics;

/// A source or sink that failed at run time.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl ConnectorError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> ConnectorError {
        ConnectorError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A connector that could not be built from its settings.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct BuildError {
    pub name: String,
    pub reason: String,
}

/// Counters a source keeps about its input (the runtime exports them).
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Events decoded and sent on.
    pub events: AtomicU64,
    pub bytes: AtomicU64,
    /// Input that could not be decoded (bad JSON, bad frame, bad UTF-8).
    pub decode_errors: AtomicU64,
    /// Work refused under admission control.
    pub refused: AtomicU64,
    /// Events read and decoded but never handed on, so never acknowledged
    /// either way: downstream had no room or was gone when the source
    /// stopped (a forced stop, or a stop whose drain outlasted the
    /// source's grace). Counted so that no loss is silent.
    pub abandoned: AtomicU64,
    /// Connections closed at once because the listener had
    /// `max_connections` open already.
    pub connections_refused: AtomicU64,
    /// Connections or requests closed because the client was too slow
    /// (an HTTP header or body not read in time).
    pub timeouts: AtomicU64,
    /// Events that claimed a name reserved to DAB (a type or tag key
    /// starting with `dab.`) and had it renamed at ingest.
    pub reserved_names: AtomicU64,
    /// Set by a source that announces when it serves
    /// (`Source::announces_serving`), once it does: a listener once bound.
    pub serving: AtomicBool,
    /// The input partitions a partitioned source was last assigned (a
    /// Kafka consumer's topic partitions), with a generation that grows at
    /// each assignment: a window holds its watermark for every one of them
    /// from the start, not only for those it has seen an event from.
    pub partitions: std::sync::Mutex<(u64, Vec<(String, i32)>)>,
    /// The revoke handshake between a partitioned source and the stateful
    /// stages that keep state per input partition (`follow_revokes`).
    pub revokes: std::sync::Mutex<Revokes>,
    pub revoke_cv: std::sync::Condvar,
    /// Per input partition, how many records the source has not yet
    /// handed on (its end minus its position), as last measured: a window
    /// treats a quiet partition as idle only when it has nothing left to
    /// read, so that a partition starved by the fetcher does not see its
    /// windows closed early.
    pub behind: std::sync::Mutex<std::collections::HashMap<(String, i32), i64>>,
}

/// Revocations a source announced and how far its followers got.
#[derive(Debug, Default)]
pub struct Revokes {
    /// Stateful stages that must let go of a partition before it moves.
    pub followers: usize,
    /// Grows with each announced revocation.
    pub announced: u64,
    /// The partitions of the last announced revocation.
    pub list: Vec<(String, i32)>,
    /// Per follower slot, the last revocation it has let go of.
    pub done: Vec<u64>,
}

impl SourceStats {
    /// Records a new assignment of input partitions.
    pub fn set_partitions(&self, list: Vec<(String, i32)>) {
        let mut p = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        p.0 += 1;
        p.1 = list;
    }

    /// The assignment, when its generation is not `seen`.
    pub fn partitions_since(&self, seen: u64) -> Option<(u64, Vec<(String, i32)>)> {
        let p = self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (p.0 != seen).then(|| (p.0, p.1.clone()))
    }

    /// Records how far behind each partition's end the source is.
    pub fn set_behind(&self, behind: std::collections::HashMap<(String, i32), i64>) {
        *self
            .behind
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = behind;
    }

    /// Whether the source has read `partition` to its end, as last
    /// measured (unknown: no).
    pub fn caught_up(&self, topic: &str, partition: i32) -> bool {
        self.behind
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&(topic.to_owned(), partition))
            .is_some_and(|n| *n <= 0)
    }

    /// A stateful stage keeps state per partition of this source: from
    /// now on a revocation waits for it ([`SourceStats::revoke_and_wait`]).
    /// Returns its slot.
    pub fn follow_revokes(&self) -> usize {
        let mut r = self.revokes();
        r.followers += 1;
        let at = r.announced;
        r.done.push(at);
        r.done.len() - 1
    }

    /// The revocation follower `slot` has not let go of yet.
    pub fn revoking(&self, slot: usize) -> Option<(u64, Vec<(String, i32)>)> {
        let r = self.revokes();
        let done = r.done.get(slot).copied().unwrap_or(u64::MAX);
        (done < r.announced).then(|| (r.announced, r.list.clone()))
    }

    /// Follower `slot` has checkpointed and let go of revocation `gen`'s
    /// partitions.
    pub fn revoked(&self, slot: usize, gen: u64) {
        let mut r = self.revokes();
        if let Some(d) = r.done.get_mut(slot) {
            *d = (*d).max(gen);
        }
        drop(r);
        self.revoke_cv.notify_all();
    }

    /// A follower that ends stops holding revocations.
    pub fn unfollow(&self, slot: usize) {
        let mut r = self.revokes();
        if let Some(d) = r.done.get_mut(slot) {
            *d = u64::MAX;
        }
        drop(r);
        self.revoke_cv.notify_all();
    }

    /// The source is about to give `list` up: waits (blocking) until every
    /// follower has let go of them, at most `limit`. True when they all
    /// did (or there are none).
    pub fn revoke_and_wait(&self, list: Vec<(String, i32)>, limit: std::time::Duration) -> bool {
        let mut r = self.revokes();
        if r.followers == 0 {
            return true;
        }
        r.announced += 1;
        r.list = list;
        let gen = r.announced;
        let deadline = std::time::Instant::now() + limit;
        loop {
            if r.done.iter().all(|d| *d >= gen) {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            r = self
                .revoke_cv
                .wait_timeout(r, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    fn revokes(&self) -> std::sync::MutexGuard<'_, Revokes> {
        self.revokes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Says the source serves its input now (a listener is bound).
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::Release);
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }
}

/// Admission control (SPEC section 5): sources ask before taking new work.
pub trait Admission: Send + Sync + std::fmt::Debug {
    /// False above the memory or queue-depth mark: refuse with a retriable
    /// answer instead of growing.
    fn admit(&self) -> bool;
}

/// Everything a running source needs from the runtime.
#[derive(Debug)]
pub struct SourceContext {
    /// The binding's name, for logs and default `host`.
    pub name: String,
    /// Bounded: a full channel is back pressure; stop reading until it frees.
    pub out: mpsc::Sender<Batch>,
    /// Cancelled when the source should stop reading (shutdown, reload).
    pub shutdown: CancellationToken,
    pub stats: Arc<SourceStats>,
    pub admission: Arc<dyn Admission>,
}

#[async_trait::async_trait]
pub trait Source: Send {
    /// Reads until the input ends (a finite source) or `ctx.shutdown` fires.
    /// Returning drops `ctx.out`, which lets the pipelines downstream drain.
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ConnectorError>;

    /// Metrics of this connector beyond `SourceStats`, exported by the
    /// runtime on every scrape. Asked once, before `run`.
    fn metrics(&self) -> Option<Arc<dyn ConnectorMetrics>> {
        None
    }

    /// True for a source that calls `ctx.stats.set_serving()` once it
    /// serves (a listener, once bound): until then `/readyz` says it is
    /// not serving yet. Asked once, before `run`. Other sources serve from
    /// the start.
    fn announces_serving(&self) -> bool {
        false
    }
}

/// Whether retrying can help, decided where the peer's answer is
/// understood (the sink), read by the runtime's driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Peer down, timeout, 5xx, 408, 429, disk full: retry with back-off.
    Transient,
    /// The peer refused what it was given for good (HTTP 4xx other than
    /// 408/429, gRPC `INVALID_ARGUMENT`, a message too large, a value the
    /// sink cannot encode). Sending the same events again cannot succeed;
    /// the runtime narrows a refused batch down to the events refused on
    /// their own and sends only those to `OnError` (SPEC section 11).
    Permanent,
}

/// A sink failure with its class.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct SinkError {
    pub class: ErrorClass,
    #[source]
    pub error: ConnectorError,
}

impl SinkError {
    pub fn transient(error: impl Into<ConnectorError>) -> SinkError {
        SinkError {
            class: ErrorClass::Transient,
            error: error.into(),
        }
    }

    pub fn permanent(error: impl Into<ConnectorError>) -> SinkError {
        SinkError {
            class: ErrorClass::Permanent,
            error: error.into(),
        }
    }

    pub fn is_permanent(&self) -> bool {
        self.class == ErrorClass::Permanent
    }
}

/// Errors without a class are transient: retrying is the safe default.
impl From<ConnectorError> for SinkError {
    fn from(error: ConnectorError) -> SinkError {
        SinkError::transient(error)
    }
}

impl From<String> for ConnectorError {
    fn from(s: String) -> ConnectorError {
        ConnectorError::Other(s)
    }
}

/// One event of a write that the peer refused for good, by its index in
/// the slice given to `write`, with the peer's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub index: usize,
    pub reason: String,
}

/// What a successful write says beyond "taken".
#[derive(Debug, Default)]
pub struct Written {
    /// Events refused one by one (a Kafka message too large, a value that
    /// cannot be encoded). The rest of the write was taken.
    pub rejected: Vec<Rejection>,
}

impl Written {
    pub fn all() -> Written {
        Written::default()
    }
}

/// What became of one write of a sink that confirms its writes later
/// ([`Sink::confirms_writes`]).
#[derive(Debug)]
pub enum Confirmed {
    /// The peer has every event of the write but `rejected`, which it
    /// refused one by one for good (indices into the write's slice).
    Delivered { rejected: Vec<Rejection> },
    /// Some events of the write were not delivered, for a reason that may
    /// pass (a broker down past the message timeout, a producer rebuilt).
    /// The runtime writes the whole write again after back-off: events
    /// that did arrive arrive twice (at least once, counted as rewritten).
    Failed(ConnectorError),
}

/// The receiving half of a write's confirmation: resolves once, when the
/// sink knows what became of the write. A sink that drops its
/// [`Confirmer`] unsent has failed the write.
#[derive(Debug)]
pub struct Confirm(tokio::sync::oneshot::Receiver<Confirmed>);

/// The sending half of a write's confirmation, kept by the sink.
#[derive(Debug)]
pub struct Confirmer(tokio::sync::oneshot::Sender<Confirmed>);

impl Confirm {
    pub fn channel() -> (Confirmer, Confirm) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Confirmer(tx), Confirm(rx))
    }

    /// A write that is already confirmed.
    pub fn ready(c: Confirmed) -> Confirm {
        let (tx, rx) = Confirm::channel();
        tx.send(c);
        rx
    }

    /// Waits for the confirmation. Cancel safe: dropping the future and
    /// calling again loses nothing (it sits in a `select!` beside the
    /// sink's input).
    pub async fn recv(&mut self) -> Confirmed {
        match (&mut self.0).await {
            Ok(c) => c,
            Err(_) => Confirmed::Failed(ConnectorError::Other(
                "the sink dropped the write's confirmation".into(),
            )),
        }
    }
}

impl Confirmer {
    pub fn send(self, c: Confirmed) {
        // The driver may have given up on the write (a forced stop).
        let _ = self.0.send(c);
    }
}

/// A write a sink took and will confirm later.
#[derive(Debug)]
pub struct Pending {
    /// Events refused for good right away, as in [`Written`].
    pub rejected: Vec<Rejection>,
    pub confirm: Confirm,
}

/// When the runtime flushes a sink that does not confirm its writes: at the
/// first of these that holds. Until a flush, the runtime holds the events
/// it wrote (to write them again after a failure) and acknowledges none of
/// them, so the bounds are also the memory and the wait of a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushPolicy {
    /// The input has nothing waiting.
    pub when_idle: bool,
    /// This many writes are held.
    pub max_writes: usize,
    /// The events held reach this many bytes.
    pub max_bytes: usize,
    /// The oldest write held is this old.
    pub max_age: Option<std::time::Duration>,
    /// Nothing came for this long (a quiet input, or one that has ended
    /// reading but waits for its acknowledgements, as a backfill does).
    pub idle_after: Option<std::time::Duration>,
}

impl Default for FlushPolicy {
    /// At every pause of the input, and at least every 64 writes or
    /// 16 MiB under constant load: a prompt acknowledgement.
    fn default() -> FlushPolicy {
        FlushPolicy {
            when_idle: true,
            max_writes: 64,
            max_bytes: 16 << 20,
            max_age: None,
            idle_after: None,
        }
    }
}

/// A sink: where events leave DAB.
///
/// The contract every implementation keeps (SPEC section 11, "acknowledged
/// means delivered"):
///
/// - `Ok` from `write` means the events were *taken* (buffered, sent on a
///   socket, handed to a client library); `Ok` from `flush` means everything
///   taken since the last good flush is durably handed on (fsynced, answered
///   by the peer, confirmed by the broker). The runtime acknowledges a batch
///   to its source only after a good flush that follows its write.
/// - An `Err` from `write` or `flush` acknowledges nothing. The runtime
///   then calls `rewind`, which puts the sink back where its last good flush
///   left it (drops buffered bytes, cuts a file back to its last good length
///   so no torn record stays, drops a connection), and writes everything
///   taken since that flush again. Duplicates are possible (at least once);
///   losses are not.
/// - An error's class says whether retrying can help. A `Permanent` error of
///   a write means the peer refused the write as a whole; the runtime
///   splits it to find the events refused on their own.
///
/// A sink whose peer confirms each write on its own, later (Kafka's
/// delivery reports), says so with `confirms_writes` and is driven through
/// `write_confirmed` instead: the runtime keeps a bounded window of writes
/// in flight, never calls `flush`, and acknowledges each write, in write
/// order, when its [`Confirm`] says `Delivered`. A write confirmed
/// `Failed` is written again (after back-off and `rewind`, which then
/// must not drop the other writes in flight: they are confirmed on their
/// own). Nothing is acknowledged before its confirmation.
#[async_trait::async_trait]
pub trait Sink: Send {
    /// Takes events (see the trait's contract).
    async fn write(&mut self, events: &[Event]) -> Result<Written, SinkError>;

    /// Makes every write taken since the last good flush durable. Called
    /// as the sink's [`FlushPolicy`] says, and at shutdown.
    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// When the runtime flushes this sink (and so acknowledges what it
    /// holds). Read once, when the sink starts.
    fn flush_policy(&self) -> FlushPolicy {
        FlushPolicy::default()
    }

    /// After a failed `write` or `flush`: return to the state of the last
    /// good flush, so that writing the same events again leaves no torn or
    /// half-written record behind. The default does nothing, which is right
    /// for sinks whose writes are all-or-nothing (one request per write).
    async fn rewind(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    /// True for a sink that confirms each write later (see the trait's
    /// contract); the runtime then uses `write_confirmed`, not `write` and
    /// `flush`.
    fn confirms_writes(&self) -> bool {
        false
    }

    /// Takes events and returns at once with what was refused right away
    /// and a [`Confirm`] for the rest. Only called when `confirms_writes`
    /// is true. The default writes and confirms at once, which is right
    /// only for a sink whose `write` alone makes events durable.
    async fn write_confirmed(&mut self, events: &[Event]) -> Result<Pending, SinkError> {
        let w = self.write(events).await?;
        Ok(Pending {
            rejected: w.rejected,
            confirm: Confirm::ready(Confirmed::Delivered {
                rejected: Vec::new(),
            }),
        })
    }

    /// Metrics of this connector beyond the runtime's sink counters.
    fn metrics(&self) -> Option<Arc<dyn ConnectorMetrics>> {
        None
    }
}

/// Builds sources of one kind from their settings.
pub trait SourceFactory: Send + Sync {
    fn kind(&self) -> &'static str;
    fn build(
        &self,
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Source>, BuildError>;
}

/// Builds sinks of one kind from their settings.
pub trait SinkFactory: Send + Sync {
    fn kind(&self) -> &'static str;
    fn build(
        &self,
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Sink>, BuildError>;

    /// Builds a sink whose `type` field names a declared type: `schema` is
    /// that type's payload schema (`None` when the binding has no `type`
    /// or the type declares no fields). The runtime always builds sinks
    /// through this; kinds that need no schema keep the default.
    fn build_typed(
        &self,
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
        schema: Option<&dab_schema::Schema>,
    ) -> Result<Box<dyn Sink>, BuildError> {
        let _ = schema;
        self.build(name, fields)
    }
}
