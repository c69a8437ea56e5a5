//! `file` sink: NDJSON appended to a file. `flush` fsyncs, and the runtime
//! acknowledges a batch only after the flush that follows its write, so an
//! acknowledged event is on disk.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::BytesMut;
use dab_api::config::Fields;
use dab_api::{BuildError, ConfigValue, ConnectorError, Event, Sink, SinkFactory};
use tokio::io::AsyncWriteExt;

use crate::stdio::encode_lines;

#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    fsync: bool,
    file: Option<tokio::fs::File>,
    buf: BytesMut,
}

impl FileSink {
    pub fn new(path: impl Into<PathBuf>, fsync: bool) -> FileSink {
        FileSink {
            path: path.into(),
            fsync,
            file: None,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    async fn file(&mut self) -> Result<&mut tokio::fs::File, ConnectorError> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                tokio::fs::create_dir_all(dir).await.map_err(|e| {
                    ConnectorError::io(format!("cannot create `{}`", dir.display()), e)
                })?;
            }
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await
                .map_err(|e| {
                    ConnectorError::io(format!("cannot open `{}`", self.path.display()), e)
                })?;
            self.file = Some(f);
        }
        self.file
            .as_mut()
            .ok_or_else(|| ConnectorError::Other("file not open".into()))
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&mut self, events: &[Event]) -> Result<(), ConnectorError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        encode_lines(events, &mut buf);
        let path = self.path.display().to_string();
        let result = match self.file().await {
            Ok(f) => f
                .write_all(&buf)
                .await
                .map_err(|e| ConnectorError::io(format!("write `{path}`"), e)),
            Err(e) => Err(e),
        };
        self.buf = buf;
        if result.is_err() {
            // Reopen on the next try: the file may have been moved or the disk freed.
            self.file = None;
        }
        result
    }

    async fn flush(&mut self) -> Result<(), ConnectorError> {
        let fsync = self.fsync;
        let path = self.path.display().to_string();
        if let Some(f) = self.file.as_mut() {
            f.flush()
                .await
                .map_err(|e| ConnectorError::io(format!("flush `{path}`"), e))?;
            if fsync {
                f.sync_data()
                    .await
                    .map_err(|e| ConnectorError::io(format!("fsync `{path}`"), e))?;
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
pub struct FileSinkFactory;

impl SinkFactory for FileSinkFactory {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn build(
        &self,
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Sink>, BuildError> {
        let f = Fields(fields);
        let path = f.str("path").ok_or_else(|| BuildError {
            name: name.to_owned(),
            reason: "`path` is required".into(),
        })?;
        Ok(Box::new(FileSink::new(
            path,
            f.bool("fsync").unwrap_or(true),
        )))
    }
}
