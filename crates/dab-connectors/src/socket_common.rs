//! The read loop shared by the `tcp` and `unix` sources: accept connections,
//! frame and decode what each one sends, and hand batches on with back
//! pressure, admission control, per-connection error isolation and at most
//! `max_connections` connections at once.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dab_api::config::{ConfigValue, Fields};
use dab_api::connector::SourceStats;
use dab_api::metrics::{ConnectorMetrics, Sample};
use dab_api::{AckStatus, AckToken, Batch, BuildError, Event, SourceContext};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::{self, with_budget, DecodeError, Filler, InternBudget, Present};
use crate::framing::{DelimitedFramer, FrameError, LineFramer};
use crate::limits::{self, ConnectionLimit};
use crate::settings::MAX_BATCH;

/// Bytes asked of the socket per read; one read becomes one or a few batches.
const READ_BUF: usize = 64 * 1024;
/// How long a refused connection waits before asking admission again.
const ADMISSION_PAUSE: Duration = Duration::from_millis(50);
/// After shutdown, how long decoded events may still wait for room
/// downstream before they are given up (and their acks fail). A graceful
/// stop drains downstream, so this only bites when a sink is dead; it
/// matches `dab run`'s default drain deadline, after which the stop is
/// forced anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Warnings about one connection's bad input, at most one per this period.
const WARN_EVERY: Duration = Duration::from_secs(1);
/// Pause after a failed accept (out of file descriptors and the like), so
/// the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub(crate) const DEFAULT_MAX_FRAME: usize = 1024 * 1024;

/// How a byte stream is cut into events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One JSON object per line.
    Ndjson,
    /// Varint-length-delimited protobuf `Event` messages.
    Protobuf,
}

impl Framing {
    /// Reads the optional `framing` field; `ndjson` when absent.
    pub(crate) fn from_fields(
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Framing, BuildError> {
        match Fields(fields).str("framing") {
            None | Some("ndjson") => Ok(Framing::Ndjson),
            Some("protobuf") => Ok(Framing::Protobuf),
            Some(other) => Err(BuildError {
                name: name.to_owned(),
                reason: format!("unknown framing `{other}`: expected `ndjson` or `protobuf`"),
            }),
        }
    }
}

/// What a socket source reads and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketSettings {
    pub framing: Framing,
    /// The largest line or frame accepted; larger ones are skipped and
    /// counted as decode errors.
    pub max_frame_bytes: usize,
    /// Connections open at once; more are closed at once and counted.
    pub max_connections: usize,
}

impl Default for SocketSettings {
    fn default() -> SocketSettings {
        SocketSettings {
            framing: Framing::Ndjson,
            max_frame_bytes: DEFAULT_MAX_FRAME,
            max_connections: limits::DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl SocketSettings {
    pub(crate) fn from_fields(
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<SocketSettings, BuildError> {
        let framing = Framing::from_fields(name, fields)?;
        let max_frame_bytes = match fields.get("max_frame_bytes") {
            None => DEFAULT_MAX_FRAME,
            Some(ConfigValue::Int(v)) if *v > 0 => usize::try_from(*v).map_err(|_| BuildError {
                name: name.to_owned(),
                reason: format!("`max_frame_bytes` {v} is too large"),
            })?,
            Some(other) => {
                return Err(BuildError {
                    name: name.to_owned(),
                    reason: format!("`max_frame_bytes` must be a positive integer, not {other:?}"),
                })
            }
        };
        Ok(SocketSettings {
            framing,
            max_frame_bytes,
            max_connections: limits::max_connections(name, fields)?,
        })
    }
}

/// Required string field, or a build error naming it.
pub(crate) fn required_str<'a>(
    name: &str,
    fields: &'a BTreeMap<String, ConfigValue>,
    key: &str,
) -> Result<&'a str, BuildError> {
    Fields(fields).str(key).ok_or_else(|| BuildError {
        name: name.to_owned(),
        reason: format!("missing field `{key}`"),
    })
}

/// Checks a `host:port` value well enough to fail at build time rather
/// than at bind or connect time.
pub(crate) fn check_address(name: &str, key: &str, addr: &str) -> Result<(), BuildError> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(BuildError {
            name: name.to_owned(),
            reason: format!("`{key}` must be host:port, not `{addr}`"),
        })
    }
}

/// How a source's batches ended, counted in events. Sockets cannot tell
/// their clients, so these are for operators: exported on `/metrics` as
/// `dab_source_acked_events_total{source, outcome}` (the source's
/// `metrics()`), logged when it stops, and read by tests.
#[derive(Debug, Default)]
pub struct AckCounts {
    /// The binding's name, the `source` label.
    name: String,
    delivered: AtomicU64,
    failed: AtomicU64,
}

impl ConnectorMetrics for AckCounts {
    fn samples(&self, out: &mut Vec<Sample>) {
        const HELP: &str = "Events of a tcp or unix source's batches by acknowledgement outcome \
             (delivered, or failed: not delivered, and the peer cannot be told)";
        for (outcome, v) in [("delivered", self.delivered()), ("failed", self.failed())] {
            out.push(
                Sample::counter("dab_source_acked_events_total", HELP, v)
                    .label("source", self.name.clone())
                    .label("outcome", outcome),
            );
        }
    }
}

impl AckCounts {
    /// Counts for the source bound as `name`.
    pub fn named(name: &str) -> AckCounts {
        AckCounts {
            name: name.to_owned(),
            ..AckCounts::default()
        }
    }

    /// Events whose batch was delivered (or deliberately dropped).
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Events whose batch failed or was abandoned.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    fn token(self: &Arc<Self>, events: usize) -> AckToken {
        let counts = Arc::clone(self);
        let n = events as u64;
        AckToken::new(move |status| match status {
            AckStatus::Delivered => {
                counts.delivered.fetch_add(n, Ordering::Relaxed);
            }
            AckStatus::Failed => {
                counts.failed.fetch_add(n, Ordering::Relaxed);
            }
        })
    }
}

/// A listening socket the accept loop can take connections from.
pub(crate) trait Listener: Send {
    type Stream: AsyncRead + Unpin + Send + 'static;

    /// The next connection and a label for its peer, for logs.
    fn accept(&mut self) -> impl Future<Output = io::Result<(Self::Stream, String)>> + Send;
}

/// What every connection task of one source shares.
struct Shared {
    kind: &'static str,
    ctx: SourceContext,
    settings: SocketSettings,
    /// One filler for the whole source, so that connections without
    /// offsets still get distinct (host, pid, type, offset) UIDs.
    filler: Mutex<Filler>,
    /// New strings this source's input may intern.
    intern: Arc<InternBudget>,
    acks: Arc<AckCounts>,
    /// Ends the connections: the source's shutdown, or, for a socket a
    /// reload hands from source to source (`handover`), the stop of the
    /// whole line, so that a client stays connected across the reload.
    stop: CancellationToken,
}

/// Accepts connections until shutdown (or until nobody reads the output),
/// gives the listener to `leave` (which closes it or hands it to the
/// source replacing this one), then waits for every connection task to
/// end, which they do when `stop` is cancelled or their peer closes.
pub(crate) async fn serve<L: Listener>(
    kind: &'static str,
    mut listener: L,
    ctx: SourceContext,
    settings: SocketSettings,
    acks: Arc<AckCounts>,
    (stop, leave): (CancellationToken, impl FnOnce(L)),
) {
    let shared = Arc::new(Shared {
        kind,
        filler: Mutex::new(Filler::for_source(&ctx.name, ctx.stats.clone())),
        intern: InternBudget::per_source(),
        ctx,
        settings,
        acks,
        stop,
    });
    let tracker = TaskTracker::new();
    let limit = ConnectionLimit::new(settings.max_connections, shared.ctx.stats.clone());
    let mut accept_warn = WarnLimiter::default();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shared.ctx.shutdown.cancelled() => break,
            _ = shared.ctx.out.closed() => {
                tracing::debug!(source = %shared.ctx.name, "{kind} source: output closed; no longer accepting");
                break;
            }
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Some(slot) = limit.admit() else {
                    tracing::debug!(source = %shared.ctx.name, %peer, "{kind} connection refused: max_connections open");
                    continue;
                };
                tracing::debug!(source = %shared.ctx.name, %peer, "{kind} connection accepted");
                let shared = Arc::clone(&shared);
                tracker.spawn(async move {
                    connection(stream, peer, shared).await;
                    drop(slot);
                });
            }
            Err(e) => {
                if let Some(suppressed) = accept_warn.allow() {
                    tracing::warn!(source = %shared.ctx.name, error = %e, suppressed, "{kind} accept failed");
                }
                tokio::select! {
                    _ = shared.ctx.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
    // Stop accepting now: the listener closes (or goes to the successor)
    // while connections drain.
    leave(listener);
    tracker.close();
    tracker.wait().await;
    tracing::info!(
        source = %shared.ctx.name,
        delivered = shared.acks.delivered(),
        failed = shared.acks.failed(),
        abandoned = shared.ctx.stats.abandoned.load(Ordering::Relaxed),
        decode_errors = shared.ctx.stats.decode_errors.load(Ordering::Relaxed),
        "{kind} source stopped"
    );
}

/// One connection's framer.
enum Framer {
    Lines(LineFramer),
    Delimited(DelimitedFramer),
}

impl Framer {
    fn new(settings: &SocketSettings) -> Framer {
        match settings.framing {
            Framing::Ndjson => Framer::Lines(LineFramer::new(settings.max_frame_bytes)),
            Framing::Protobuf => Framer::Delimited(DelimitedFramer::new(settings.max_frame_bytes)),
        }
    }

    fn push(&mut self, data: &[u8], out: &mut Vec<Result<Bytes, FrameError>>) {
        match self {
            Framer::Lines(f) => f.push(data, out),
            Framer::Delimited(f) => f.push(data, out),
        }
    }

    fn finish(&mut self, out: &mut Vec<Result<Bytes, FrameError>>) {
        match self {
            Framer::Lines(f) => f.finish(out),
            Framer::Delimited(f) => f.finish(out),
        }
    }
}

/// At most one warning per period; counts what it held back.
#[derive(Debug, Default)]
struct WarnLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    /// `Some(suppressed since the last warning)` when a warning may be logged.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < WARN_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// Whether the connection goes on after a chunk of input.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Continue,
    Close,
}

struct Connection {
    peer: String,
    shared: Arc<Shared>,
    framer: Framer,
    frames: Vec<Result<Bytes, FrameError>>,
    warn: WarnLimiter,
}

async fn connection<S: AsyncRead + Unpin>(mut stream: S, peer: String, shared: Arc<Shared>) {
    let mut conn = Connection {
        framer: Framer::new(&shared.settings),
        frames: Vec::new(),
        warn: WarnLimiter::default(),
        peer,
        shared,
    };
    let mut buf = vec![0u8; READ_BUF];
    loop {
        if !conn.wait_for_admission().await {
            break;
        }
        let shared = Arc::clone(&conn.shared);
        let read = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => break,
            // Nobody will ever receive: an idle peer must not hold the
            // source open.
            _ = shared.ctx.out.closed() => break,
            r = stream.read(&mut buf) => r,
        };
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(source = %shared.ctx.name, peer = %conn.peer, error = %e, "{} read failed; closing", shared.kind);
                break;
            }
        };
        if n == 0 {
            conn.framer.finish(&mut conn.frames);
            conn.deliver().await;
            break;
        }
        SourceStats::add(&shared.ctx.stats.bytes, n as u64);
        let chunk = buf.get(..n).unwrap_or_default();
        conn.framer.push(chunk, &mut conn.frames);
        // Back pressure: nothing more is read from this socket until the
        // events of this read are handed on.
        if conn.deliver().await == Next::Close {
            break;
        }
    }
    tracing::debug!(source = %conn.shared.ctx.name, peer = %conn.peer, "{} connection closed", conn.shared.kind);
}

impl Connection {
    /// Pauses reads while admission refuses; false on shutdown.
    async fn wait_for_admission(&mut self) -> bool {
        let ctx = &self.shared.ctx;
        if ctx.admission.admit() {
            return true;
        }
        SourceStats::add(&ctx.stats.refused, 1);
        tracing::debug!(source = %ctx.name, peer = %self.peer, "admission refused; pausing reads");
        loop {
            tokio::select! {
                _ = self.shared.stop.cancelled() => return false,
                _ = tokio::time::sleep(ADMISSION_PAUSE) => {}
            }
            if ctx.admission.admit() {
                return true;
            }
        }
    }

    /// Decodes the pending frames and sends them on in batches.
    async fn deliver(&mut self) -> Next {
        let mut decoded: Vec<(Event, Present)> = Vec::with_capacity(self.frames.len());
        let frames = std::mem::take(&mut self.frames);
        let budget = Arc::clone(&self.shared.intern);
        let next = with_budget(&budget, || self.decode_frames(frames, &mut decoded));
        if decoded.is_empty() {
            return next;
        }
        let events = self.fill(decoded);
        let mut events = events.into_iter();
        loop {
            let chunk: Vec<Event> = events.by_ref().take(MAX_BATCH).collect();
            if chunk.is_empty() {
                break;
            }
            if !self.send(chunk).await {
                return Next::Close;
            }
        }
        next
    }

    /// Decodes frames into `decoded`; `Close` after a bad length prefix,
    /// past which the stream cannot be read.
    fn decode_frames(
        &mut self,
        frames: Vec<Result<Bytes, FrameError>>,
        decoded: &mut Vec<(Event, Present)>,
    ) -> Next {
        for frame in frames {
            match frame {
                Ok(bytes) => match self.decode(bytes) {
                    Ok(Some(ev)) => decoded.push(ev),
                    Ok(None) => {}
                    Err(e) => self.bad_input(&e.to_string()),
                },
                Err(e) => {
                    let poisoned = matches!(e, FrameError::BadLength);
                    self.bad_input(&e.to_string());
                    if poisoned {
                        let ctx = &self.shared.ctx;
                        tracing::warn!(source = %ctx.name, peer = %self.peer, "{} stream is unreadable after a bad length prefix; closing the connection", self.shared.kind);
                        return Next::Close;
                    }
                }
            }
        }
        Next::Continue
    }

    /// `Ok(None)` for a blank NDJSON line, which is not an event.
    fn decode(&self, frame: Bytes) -> Result<Option<(Event, Present)>, DecodeError> {
        match self.shared.settings.framing {
            Framing::Ndjson => {
                if frame.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                codec::json::decode(frame).map(Some)
            }
            Framing::Protobuf => codec::proto::decode(frame).map(Some),
        }
    }

    fn fill(&self, decoded: Vec<(Event, Present)>) -> Vec<Event> {
        let mut filler = match self.shared.filler.lock() {
            Ok(f) => f,
            // A panic elsewhere left the filler mid-update; its sequence
            // numbers are still usable.
            Err(poisoned) => poisoned.into_inner(),
        };
        decoded
            .into_iter()
            .map(|(mut ev, present)| {
                filler.fill(&mut ev, present);
                ev
            })
            .collect()
    }

    fn bad_input(&mut self, reason: &str) {
        let ctx = &self.shared.ctx;
        SourceStats::add(&ctx.stats.decode_errors, 1);
        if let Some(suppressed) = self.warn.allow() {
            tracing::warn!(source = %ctx.name, peer = %self.peer, suppressed, "{} skipped bad input: {reason}", self.shared.kind);
        }
    }

    /// Hands a batch on, waiting for room. After shutdown the wait is
    /// bounded, so a stalled pipeline cannot hold the source open; false
    /// when the batch could not be handed on.
    async fn send(&self, events: Vec<Event>) -> bool {
        let ctx = &self.shared.ctx;
        let n = events.len();
        let deadline = async {
            self.shared.stop.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let permit = tokio::select! {
            biased;
            p = ctx.out.reserve() => p,
            _ = deadline => {
                tracing::warn!(source = %ctx.name, peer = %self.peer, events = n, "{} shutdown: no room downstream; giving up events already read (counted as abandoned)", self.shared.kind);
                SourceStats::add(&ctx.stats.abandoned, n as u64);
                return false;
            }
        };
        match permit {
            Ok(permit) => {
                let ack = self.shared.acks.token(n);
                permit.send(Batch::new(events, ack));
                SourceStats::add(&ctx.stats.events, n as u64);
                true
            }
            Err(_) => {
                // Read from the socket and never handed on: lost, so counted.
                tracing::warn!(source = %ctx.name, peer = %self.peer, events = n, "{} output closed (a forced stop); giving up events already read (counted as abandoned)", self.shared.kind);
                SourceStats::add(&ctx.stats.abandoned, n as u64);
                false
            }
        }
    }
}
