//! The traits connectors implement, and how the runtime builds them.
//!
//! A source has one required method, `run`, which reads until its input
//! ends or shutdown is asked for, sending batches to `ctx.out`. A sink has
//! one required method, `write`; `flush` and `close` have defaults
//! (ripgrep's `Sink` habit). Retries, back-off, acknowledgement and metrics
//! are the runtime's job, not each connector's.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
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
}

impl SourceStats {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
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
}

#[async_trait::async_trait]
pub trait Sink: Send {
    /// Writes events. `Ok` means they are delivered as far as this sink can
    /// tell; the runtime then acknowledges them. An `Err` is retried.
    async fn write(&mut self, events: &[Event]) -> Result<(), ConnectorError>;

    /// Makes earlier writes durable (fsync, flush a socket). Called when the
    /// sink's input is idle and at shutdown.
    async fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
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
}
