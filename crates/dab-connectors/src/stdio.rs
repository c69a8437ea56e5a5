//! `Stdin` and `Stdout`: newline-delimited JSON on the process's standard
//! streams. Stdin is finite: at end of file the source ends, and `dab run`
//! exits once everything downstream is drained.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::BytesMut;
use dab_api::connector::SourceStats;
use dab_api::{
    AckToken, Batch, BuildError, ConfigValue, ConnectorError, Event, Sink, SinkError, SinkFactory,
    Source, SourceContext, SourceFactory, Written,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::codec::{json, Filler};
use crate::framing::LineFramer;

const MAX_LINE: usize = 1 << 20;

/// Standard output's reader went away for good (`dab run ... | head`), so
/// nothing more can be delivered there. `dab run` waits for it and ends the
/// way SIGPIPE ends a Unix tool, quietly (docs/runtime.md, "Exit status");
/// a connector does not end the process itself.
#[derive(Debug, Default)]
pub struct StdoutClosed {
    notify: tokio::sync::Notify,
    watched: std::sync::atomic::AtomicBool,
}

impl StdoutClosed {
    /// Returns once a write to stdout found its reader gone.
    pub async fn wait(&self) {
        self.watched
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notified().await;
    }
}

/// The process's one [`StdoutClosed`].
pub fn stdout_closed() -> &'static StdoutClosed {
    static CLOSED: std::sync::OnceLock<StdoutClosed> = std::sync::OnceLock::new();
    CLOSED.get_or_init(StdoutClosed::default)
}

/// A failed write or flush of stdout. With its reader gone and someone
/// waiting to end the process, it never returns: an error would only be
/// logged ("Broken pipe") in the moment before the exit.
async fn stdout_error(what: &str, e: std::io::Error) -> ConnectorError {
    let closed = stdout_closed();
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        // A permit is kept if nobody waits yet.
        closed.notify.notify_one();
        if closed.watched.load(std::sync::atomic::Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }
    ConnectorError::io(what, e)
}

#[derive(Debug, Default)]
pub struct Stdin;

#[async_trait]
impl Source for Stdin {
    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ConnectorError> {
        let mut input = tokio::io::stdin();
        read_ndjson(&mut input, &ctx).await
    }
}

/// Reads NDJSON from any reader until end of file or shutdown. Bad lines are
/// counted and logged; they never stop the stream.
pub async fn read_ndjson<R: tokio::io::AsyncRead + Unpin + Send>(
    input: &mut R,
    ctx: &SourceContext,
) -> Result<(), ConnectorError> {
    let mut framer = LineFramer::new(MAX_LINE);
    let mut filler = Filler::for_source(&ctx.name, ctx.stats.clone());
    let mut buf = vec![0u8; 64 * 1024];
    let mut frames = Vec::new();
    loop {
        let n = tokio::select! {
            r = input.read(&mut buf) => r.map_err(|e| ConnectorError::io(format!("{}: read", ctx.name), e))?,
            _ = ctx.shutdown.cancelled() => return Ok(()),
        };
        if n == 0 {
            framer.finish(&mut frames);
        } else {
            framer.push(&buf[..n], &mut frames);
        }
        let mut events = Vec::with_capacity(frames.len());
        for frame in frames.drain(..) {
            let decoded = frame
                .map_err(|e| e.to_string())
                .and_then(|line| json::decode(line).map_err(|e| e.reason()));
            match decoded {
                Ok((mut ev, present)) => {
                    filler.fill(&mut ev, present);
                    events.push(ev);
                }
                Err(reason) => {
                    SourceStats::add(&ctx.stats.decode_errors, 1);
                    tracing::warn!(source = %ctx.name, %reason, "skipped a bad input line");
                }
            }
        }
        if !events.is_empty() {
            let count = events.len() as u64;
            let bytes: usize = events.iter().map(Event::size_hint).sum();
            // Nobody upstream of stdin can hear an acknowledgement.
            if ctx
                .out
                .send(Batch::new(events, AckToken::untracked()))
                .await
                .is_err()
            {
                // Read and never handed on (a forced stop): counted.
                SourceStats::add(&ctx.stats.abandoned, count);
                return Ok(());
            }
            SourceStats::add(&ctx.stats.events, count);
            SourceStats::add(&ctx.stats.bytes, bytes as u64);
        }
        if n == 0 {
            return Ok(());
        }
    }
}

#[derive(Debug)]
pub struct StdinFactory;

impl SourceFactory for StdinFactory {
    fn kind(&self) -> &'static str {
        "stdin"
    }

    fn build(
        &self,
        _name: &str,
        _fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Source>, BuildError> {
        Ok(Box::new(Stdin))
    }
}

/// Encodes events as NDJSON lines into `out`.
pub fn encode_lines(events: &[Event], out: &mut BytesMut) {
    for e in events {
        json::encode(e, out);
        out.extend_from_slice(b"\n");
    }
}

#[derive(Debug)]
pub struct Stdout {
    out: tokio::io::Stdout,
    buf: BytesMut,
}

#[async_trait]
impl Sink for Stdout {
    /// A pipe cannot be cut back: after a failure the runtime writes the
    /// held events again, so a reader may see a line twice (at least once).
    async fn write(&mut self, events: &[Event]) -> Result<Written, SinkError> {
        self.buf.clear();
        encode_lines(events, &mut self.buf);
        if let Err(e) = self.out.write_all(&self.buf).await {
            return Err(stdout_error("stdout: write", e).await.into());
        }
        Ok(Written::all())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        match self.out.flush().await {
            Ok(()) => Ok(()),
            Err(e) => Err(SinkError::transient(stdout_error("stdout: flush", e).await)),
        }
    }
}

#[derive(Debug)]
pub struct StdoutFactory;

impl SinkFactory for StdoutFactory {
    fn kind(&self) -> &'static str {
        "stdout"
    }

    fn build(
        &self,
        _name: &str,
        _fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Sink>, BuildError> {
        Ok(Box::new(Stdout {
            out: tokio::io::stdout(),
            buf: BytesMut::with_capacity(64 * 1024),
        }))
    }
}
