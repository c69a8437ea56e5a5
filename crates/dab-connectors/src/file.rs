//! `file` sink: NDJSON appended to a file. `flush` fsyncs, and the runtime
//! acknowledges a batch only after the flush that follows its write, so an
//! acknowledged event is on disk.
//!
//! The sink remembers the file's length after its last good flush. A failed
//! write or flush (a full disk, an I/O error) leaves the file in an unknown
//! state, perhaps with a torn line at its end; `rewind` cuts the file back
//! to that length, and the runtime writes everything since again. So a
//! reader never finds a torn line, and once space returns every
//! acknowledged event is in the file exactly as a whole line.

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use bytes::BytesMut;
use dab_api::config::Fields;
use dab_api::{
    BuildError, ConfigValue, ConnectorError, Event, Sink, SinkError, SinkFactory, Written,
};
use tokio::io::AsyncWriteExt;

use crate::stdio::encode_lines;

#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    fsync: bool,
    file: Option<tokio::fs::File>,
    /// The file's length after the last good flush (or when first opened).
    good_len: Option<u64>,
    buf: BytesMut,
}

impl FileSink {
    pub fn new(path: impl Into<PathBuf>, fsync: bool) -> FileSink {
        FileSink {
            path: path.into(),
            fsync,
            file: None,
            good_len: None,
            buf: BytesMut::with_capacity(64 * 1024),
        }
    }

    fn io(&self, what: &str, e: std::io::Error) -> SinkError {
        SinkError::transient(ConnectorError::io(
            format!("{what} `{}`", self.path.display()),
            e,
        ))
    }

    async fn open(&mut self) -> Result<(), SinkError> {
        if self.file.is_some() {
            return Ok(());
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| self.io("cannot create the directory of", e))?;
        }
        if self.good_len.is_none() {
            // First open by this process: a process killed mid-write may
            // have left a torn last line, never acknowledged; cut it.
            let path = self.path.clone();
            let cut = tokio::task::spawn_blocking(move || cut_torn_tail(&path))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
                .map_err(|e| self.io("cannot check the end of", e))?;
            if cut > 0 {
                tracing::warn!(path = %self.path.display(), bytes = cut, "cut a torn last line left by a process that stopped mid-write (it was never acknowledged)");
            }
        }
        let f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .await
            .map_err(|e| self.io("cannot open", e))?;
        if self.good_len.is_none() {
            let len = f
                .metadata()
                .await
                .map_err(|e| self.io("cannot stat", e))?
                .len();
            self.good_len = Some(len);
        }
        self.file = Some(f);
        Ok(())
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&mut self, events: &[Event]) -> Result<Written, SinkError> {
        self.open().await?;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        encode_lines(events, &mut buf);
        let result = match self.file.as_mut() {
            Some(f) => f.write_all(&buf).await,
            None => Ok(()),
        };
        self.buf = buf;
        result.map_err(|e| self.io("write", e))?;
        Ok(Written::all())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        let mut r = f.flush().await.map_err(|e| ("flush", e));
        if r.is_ok() && self.fsync {
            r = f.sync_data().await.map_err(|e| ("fsync", e));
        }
        let len = match r {
            Ok(()) => f.metadata().await.map(|m| m.len()).map_err(|e| ("stat", e)),
            Err(e) => Err(e),
        };
        match len {
            Ok(len) => {
                self.good_len = Some(len);
                Ok(())
            }
            Err((what, e)) => Err(self.io(what, e)),
        }
    }

    /// Reopens the file (a moved file or freed disk is picked up) and cuts
    /// it back to its length after the last good flush.
    async fn rewind(&mut self) -> Result<(), SinkError> {
        // The old handle may still hold bytes it failed to write.
        self.file = None;
        self.open().await?;
        let Some(f) = self.file.as_mut() else {
            return Ok(());
        };
        let len = f.metadata().await.map(|m| m.len()).map_err(|e| ("stat", e));
        let cut = match (len, self.good_len) {
            (Ok(len), Some(good)) if len > good => {
                f.set_len(good).await.map_err(|e| ("truncate", e))
            }
            // Shorter than we left it: rotated or truncated by someone
            // else; this is the new start.
            (Ok(len), _) => {
                self.good_len = Some(len);
                Ok(())
            }
            (Err(e), _) => Err(e),
        };
        if let Err((what, e)) = cut {
            self.file = None;
            return Err(self.io(what, e));
        }
        Ok(())
    }
}

/// Cuts `path` back to just after its last newline when it does not end
/// with one; returns the bytes cut (0 for a missing or whole file).
fn cut_torn_tail(path: &std::path::Path) -> std::io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut chunk[..n])?;
        if let Some(i) = chunk[..n].iter().rposition(|b| *b == b'\n') {
            let keep = start + i as u64 + 1;
            if keep < len {
                f.set_len(keep)?;
                f.sync_data()?;
            }
            return Ok(len - keep);
        }
        end = start;
    }
    // No newline at all: the whole file is one torn line.
    if len > 0 {
        f.set_len(0)?;
        f.sync_data()?;
    }
    Ok(len)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_last_line_is_cut_and_whole_lines_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("out.ndjson");
        assert_eq!(cut_torn_tail(&p).expect("missing file"), 0);
        std::fs::write(&p, b"{\"a\":1}\n{\"a\":2}\n{\"a\":").expect("write");
        assert_eq!(cut_torn_tail(&p).expect("cut"), 5);
        assert_eq!(std::fs::read(&p).expect("read"), b"{\"a\":1}\n{\"a\":2}\n");
        assert_eq!(cut_torn_tail(&p).expect("whole"), 0);
        // A torn line longer than one read chunk, after a whole one.
        let mut long = b"{\"a\":0}\n".to_vec();
        long.extend(std::iter::repeat_n(b'x', 200_000));
        std::fs::write(&p, &long).expect("write");
        assert_eq!(cut_torn_tail(&p).expect("cut long"), 200_000);
        assert_eq!(std::fs::read(&p).expect("read"), b"{\"a\":0}\n");
        std::fs::write(&p, b"no newline at all").expect("write");
        assert_eq!(cut_torn_tail(&p).expect("cut all"), 17);
        assert!(std::fs::read(&p).expect("read").is_empty());
    }
}
