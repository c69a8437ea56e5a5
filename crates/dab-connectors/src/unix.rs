//! The `unix` source: a unix socket listener reading NDJSON or
//! length-delimited protobuf events, which owns its socket file (removes a
//! stale one at start, its own at shutdown).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use dab_api::metrics::ConnectorMetrics;
use dab_api::{BuildError, ConfigValue, ConnectorError, Source, SourceContext, SourceFactory};
use tokio::net::{UnixListener, UnixStream};

use crate::socket_common::{self, required_str, Listener};

pub use crate::socket_common::{AckCounts, Framing, SocketSettings};

/// Reads events from unix socket connections until shutdown.
#[derive(Debug)]
pub struct UnixSource {
    path: PathBuf,
    settings: SocketSettings,
    acks: Arc<AckCounts>,
}

impl UnixSource {
    /// A source that creates its socket at `path` when it starts running.
    pub fn new(path: impl Into<PathBuf>, settings: SocketSettings) -> UnixSource {
        UnixSource {
            path: path.into(),
            settings,
            acks: Arc::default(),
        }
    }

    /// Delivered and failed event counts of this source's batches.
    pub fn acks(&self) -> Arc<AckCounts> {
        Arc::clone(&self.acks)
    }

    /// Names the source (the `source` label of its acknowledgement
    /// counts on `/metrics`).
    #[must_use]
    pub fn named(mut self, name: &str) -> UnixSource {
        self.acks = Arc::new(AckCounts::named(name));
        self
    }
}

struct Unix {
    listener: UnixListener,
    label: String,
    accepted: u64,
}

impl Listener for Unix {
    type Stream = UnixStream;

    async fn accept(&mut self) -> io::Result<(UnixStream, String)> {
        let (stream, _) = self.listener.accept().await?;
        // Unix peers are usually unnamed; a sequence number tells the
        // connections apart in logs.
        self.accepted += 1;
        Ok((stream, format!("{}#{}", self.label, self.accepted)))
    }
}

/// Removes a socket file left behind by an earlier run. Refuses to touch
/// anything that is not a socket, or a socket someone is listening on.
async fn remove_stale(path: &Path) -> Result<(), ConnectorError> {
    let shown = path.display();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ConnectorError::io(format!("cannot inspect {shown}"), e)),
    };
    if !meta.file_type().is_socket() {
        return Err(ConnectorError::Other(format!(
            "cannot listen on unix {shown}: the path exists and is not a socket"
        )));
    }
    if UnixStream::connect(path).await.is_ok() {
        return Err(ConnectorError::Other(format!(
            "cannot listen on unix {shown}: another process is listening on it"
        )));
    }
    tracing::info!(path = %shown, "removing stale unix socket");
    std::fs::remove_file(path)
        .map_err(|e| ConnectorError::io(format!("cannot remove stale socket {shown}"), e))
}

/// The file's identity, so that shutdown removes our socket and not one
/// a successor created at the same path.
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

#[async_trait]
impl Source for UnixSource {
    fn metrics(&self) -> Option<Arc<dyn ConnectorMetrics>> {
        Some(Arc::clone(&self.acks) as Arc<dyn ConnectorMetrics>)
    }

    fn announces_serving(&self) -> bool {
        true
    }

    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ConnectorError> {
        let this = *self;
        let path = this.path;
        remove_stale(&path).await?;
        let listener = UnixListener::bind(&path).map_err(|e| {
            ConnectorError::io(format!("cannot listen on unix {}", path.display()), e)
        })?;
        let ours = identity(&path);
        tracing::info!(source = %ctx.name, path = %path.display(), framing = ?this.settings.framing, "unix source listening");
        ctx.stats.set_serving();
        let listener = Unix {
            listener,
            label: format!("unix:{}", path.display()),
            accepted: 0,
        };
        // A unix socket is not handed over: its connections end with it.
        let stop = (ctx.shutdown.clone(), drop);
        socket_common::serve("unix", listener, ctx, this.settings, this.acks, stop).await;
        if ours.is_some() && identity(&path) == ours {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove unix socket");
            }
        }
        Ok(())
    }
}

/// Builds `unix` sources: `path`, `framing`, `max_frame_bytes`.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnixSourceFactory;

impl SourceFactory for UnixSourceFactory {
    fn kind(&self) -> &'static str {
        "unix"
    }

    fn build(
        &self,
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Source>, BuildError> {
        let path = required_str(name, fields, "path")?;
        if path.is_empty() {
            return Err(BuildError {
                name: name.to_owned(),
                reason: "`path` is empty".to_owned(),
            });
        }
        let settings = SocketSettings::from_fields(name, fields)?;
        Ok(Box::new(UnixSource::new(path, settings).named(name)))
    }
}
