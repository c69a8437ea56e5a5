//! `file` sink: NDJSON appended to a file. `flush` fsyncs, and the runtime
//! acknowledges a batch only after the flush that follows its write, so an
//! acknowledged event is on disk.
//!
//! The sink remembers each file's length after its last good flush. A
//! failed write or flush (a full disk, an I/O error) leaves the file in an
//! unknown state, perhaps with a torn line at its end; `rewind` cuts the
//! file back to that length, and the runtime writes everything since
//! again. So a reader never finds a torn line, and once space returns
//! every acknowledged event is in the file exactly as a whole line.
//!
//! `path` may be a template (`out/{type}/{host}.ndjson`,
//! `dab_api::template`): each event is appended to the file it renders,
//! whose directories are created. At most `max_targets` files are open at
//! once; when another one is needed, the least recently used is flushed
//! (fsynced), closed, and remembered with its length at the last good
//! flush of the sink until the next one: a rewind cuts every file written
//! since that flush back, open or closed, so the runtime's rewrite of
//! what it holds adds no duplicates. A torn last line is cut when a file is
//! opened with no such length remembered (first open by this process, or
//! a reopen after a good flush). An event whose template value is missing
//! is refused on its own (`Written::rejected`, the placeholder in the
//! reason): the runtime sends it to `OnError` or counts it dropped.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::BytesMut;
use dab_api::config::Fields;
use dab_api::template::Template;
use dab_api::{
    BuildError, ConfigValue, ConnectorError, Event, Rejection, Sink, SinkError, SinkFactory,
    Written,
};
use tokio::io::AsyncWriteExt;

use crate::stdio::encode_lines;

/// One open file.
#[derive(Debug)]
struct Target {
    file: tokio::fs::File,
    /// The file's length after the sink's last good flush (or when first
    /// opened).
    good_len: u64,
    /// Written since the sink's last good flush.
    dirty: bool,
    /// When last written, for LRU closing.
    used: u64,
}

/// Where events go: one file, or the file a template renders for each.
#[derive(Debug)]
enum Paths {
    Fixed(PathBuf),
    Template(Template),
}

#[derive(Debug)]
pub struct FileSink {
    paths: Paths,
    fsync: bool,
    max_targets: usize,
    open: HashMap<PathBuf, Target>,
    /// Files closed (LRU) since the sink's last good flush, with their
    /// length at that flush: a rewind cuts them back too.
    closed: HashMap<PathBuf, u64>,
    tick: u64,
    buf: BytesMut,
    scratch: String,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> SinkError {
    SinkError::transient(ConnectorError::io(
        format!("{what} `{}`", path.display()),
        e,
    ))
}

/// Opens `path` for appending, creating its directory. With no `good_len`
/// known, a torn last line (never acknowledged: a process killed
/// mid-write) is cut first and the length after that is returned.
async fn open_file(
    path: &Path,
    good_len: Option<u64>,
) -> Result<(tokio::fs::File, u64), SinkError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io("cannot create the directory of", path, e))?;
    }
    if good_len.is_none() {
        let p = path.to_owned();
        let cut = tokio::task::spawn_blocking(move || cut_torn_tail(&p))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
            .map_err(|e| io("cannot check the end of", path, e))?;
        if cut > 0 {
            tracing::warn!(path = %path.display(), bytes = cut, "cut a torn last line left by a process that stopped mid-write (it was never acknowledged)");
        }
    }
    let f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .await
        .map_err(|e| io("cannot open", path, e))?;
    let len = match good_len {
        Some(len) => len,
        None => f
            .metadata()
            .await
            .map_err(|e| io("cannot stat", path, e))?
            .len(),
    };
    Ok((f, len))
}

/// An error opening a rendered path that trying again cannot cure: a
/// component that is a file (`create_dir_all` says it exists), a file
/// that is a directory, a name the filesystem refuses, no permission.
fn unopenable(e: &SinkError) -> bool {
    use std::io::ErrorKind as K;
    let ConnectorError::Io { context, source } = &e.error else {
        return false;
    };
    let creating = context.starts_with("cannot create the directory");
    (creating || context.starts_with("cannot open"))
        && (matches!(
            source.kind(),
            K::NotADirectory | K::IsADirectory | K::InvalidFilename | K::PermissionDenied
        ) || (creating && source.kind() == K::AlreadyExists))
}

/// Flushes (and fsyncs) `f`; its length after that.
async fn flush_file(f: &mut tokio::fs::File, fsync: bool, path: &Path) -> Result<u64, SinkError> {
    f.flush().await.map_err(|e| io("flush", path, e))?;
    if fsync {
        f.sync_data().await.map_err(|e| io("fsync", path, e))?;
    }
    Ok(f.metadata().await.map_err(|e| io("stat", path, e))?.len())
}

/// Cuts the file at `path` back to `good` when it is longer. Returns its
/// length now: when someone else made it shorter (rotated, truncated),
/// that is the new start.
async fn cut_back(f: &tokio::fs::File, good: u64, path: &Path) -> Result<u64, SinkError> {
    let len = f.metadata().await.map_err(|e| io("stat", path, e))?.len();
    if len > good {
        f.set_len(good).await.map_err(|e| io("truncate", path, e))?;
        return Ok(good);
    }
    Ok(len)
}

impl FileSink {
    /// A sink appending to the one file at `path` (no template).
    pub fn new(path: impl Into<PathBuf>, fsync: bool) -> FileSink {
        FileSink {
            paths: Paths::Fixed(path.into()),
            fsync,
            max_targets: 1,
            open: HashMap::new(),
            closed: HashMap::new(),
            tick: 0,
            buf: BytesMut::with_capacity(64 * 1024),
            scratch: String::new(),
        }
    }

    /// A sink appending each event to the file `template` renders.
    pub fn templated(template: Template, fsync: bool, max_targets: usize) -> FileSink {
        let paths = match template.literal() {
            Some(path) => Paths::Fixed(PathBuf::from(path)),
            None => Paths::Template(template),
        };
        FileSink {
            paths,
            max_targets: max_targets.max(1),
            ..FileSink::new(PathBuf::new(), fsync)
        }
    }

    /// The open target for `path`, opening it (and closing the least
    /// recently used one first when `max_targets` are open).
    async fn target(&mut self, path: &Path) -> Result<&mut Target, SinkError> {
        self.tick += 1;
        if !self.open.contains_key(path) {
            if self.open.len() >= self.max_targets {
                self.close_lru().await?;
            }
            let remembered = self.closed.get(path).copied();
            let (file, good_len) = open_file(path, remembered).await?;
            self.closed.remove(path);
            self.open.insert(
                path.to_owned(),
                Target {
                    file,
                    good_len,
                    dirty: false,
                    used: 0,
                },
            );
        }
        let t = self
            .open
            .get_mut(path)
            .ok_or_else(|| SinkError::transient(ConnectorError::Other("target vanished".into())))?;
        t.used = self.tick;
        Ok(t)
    }

    /// Flushes and closes the least recently used open file, remembering
    /// its length at the last good flush for a rewind.
    async fn close_lru(&mut self) -> Result<(), SinkError> {
        let Some(path) = self
            .open
            .iter()
            .min_by_key(|(_, t)| t.used)
            .map(|(p, _)| p.clone())
        else {
            return Ok(());
        };
        if let Some(t) = self.open.get_mut(&path) {
            if t.dirty {
                flush_file(&mut t.file, self.fsync, &path).await?;
            }
        }
        if let Some(t) = self.open.remove(&path) {
            if t.dirty {
                self.closed.insert(path, t.good_len);
            }
        }
        Ok(())
    }

    /// Encodes the events at `indices` and appends them to `path`.
    async fn append(
        &mut self,
        path: &Path,
        events: &[Event],
        indices: &[usize],
    ) -> Result<(), SinkError> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        for &i in indices {
            encode_lines(std::slice::from_ref(&events[i]), &mut buf);
        }
        let result = match self.target(path).await {
            Ok(t) => {
                t.dirty = true;
                t.file
                    .write_all(&buf)
                    .await
                    .map_err(|e| io("write", path, e))
            }
            Err(e) => Err(e),
        };
        self.buf = buf;
        result
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&mut self, events: &[Event]) -> Result<Written, SinkError> {
        let template = match &self.paths {
            Paths::Template(t) => t,
            Paths::Fixed(path) => {
                let path = path.clone();
                let mut buf = std::mem::take(&mut self.buf);
                buf.clear();
                encode_lines(events, &mut buf);
                let result = match self.target(&path).await {
                    Ok(t) => {
                        t.dirty = true;
                        t.file
                            .write_all(&buf)
                            .await
                            .map_err(|e| io("write", &path, e))
                    }
                    Err(e) => Err(e),
                };
                self.buf = buf;
                result?;
                return Ok(Written::all());
            }
        };
        // Events by the file they render, in order of first appearance.
        let mut order: Vec<PathBuf> = Vec::new();
        let mut groups: HashMap<PathBuf, Vec<usize>> = HashMap::new();
        let mut rejected = Vec::new();
        let mut scratch = std::mem::take(&mut self.scratch);
        for (index, ev) in events.iter().enumerate() {
            match template.render_path(ev, &mut scratch) {
                Ok(()) => {
                    let path = PathBuf::from(scratch.as_str());
                    match groups.get_mut(&path) {
                        Some(g) => g.push(index),
                        None => {
                            order.push(path.clone());
                            groups.insert(path, vec![index]);
                        }
                    }
                }
                Err(m) => rejected.push(Rejection {
                    index,
                    reason: format!("file sink `path`: {m}"),
                }),
            }
        }
        self.scratch = scratch;
        for path in order {
            let indices = groups.remove(&path).unwrap_or_default();
            // Room first: closing another file fails as a transient error.
            if !self.open.contains_key(&path) && self.open.len() >= self.max_targets {
                self.close_lru().await?;
            }
            match self.append(&path, events, &indices).await {
                Ok(()) => {}
                Err(e) if unopenable(&e) => {
                    // The rendered path can never be opened (a value made
                    // a directory out of a file, or named a place we may
                    // not write): those events are refused, not the sink
                    // held.
                    rejected.extend(indices.iter().map(|&index| Rejection {
                        index,
                        reason: format!("file sink `path`: {e}"),
                    }));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Written { rejected })
    }

    /// Flushes (fsyncs) every file written since the last good flush; only
    /// when all of them are good does each remember its new length.
    async fn flush(&mut self) -> Result<(), SinkError> {
        let mut lens = Vec::new();
        for (path, t) in &mut self.open {
            if t.dirty {
                lens.push((
                    path.clone(),
                    flush_file(&mut t.file, self.fsync, path).await?,
                ));
            }
        }
        for (path, len) in lens {
            if let Some(t) = self.open.get_mut(&path) {
                t.good_len = len;
                t.dirty = false;
            }
        }
        // Closed files were flushed when they were closed.
        self.closed.clear();
        Ok(())
    }

    /// Reopens every file written since the last good flush (a moved file
    /// or freed disk is picked up) and cuts it back to its length after
    /// that flush; files closed since are cut back too.
    async fn rewind(&mut self) -> Result<(), SinkError> {
        let paths: Vec<PathBuf> = self.open.keys().cloned().collect();
        for path in paths {
            let Some(t) = self.open.remove(&path) else {
                continue;
            };
            // The old handle may still hold bytes it failed to write.
            let (good, dirty) = (t.good_len, t.dirty);
            drop(t);
            if !dirty {
                // Nothing written since the last good flush: closed, and
                // opened again when next needed.
                continue;
            }
            // Remembered as closed until it is cut, so that a failure here
            // leaves it to the next rewind.
            self.closed.insert(path, good);
        }
        let closed: Vec<(PathBuf, u64)> =
            self.closed.iter().map(|(p, l)| (p.clone(), *l)).collect();
        for (path, good) in closed {
            let f = match tokio::fs::OpenOptions::new().write(true).open(&path).await {
                Ok(f) => f,
                // Gone (moved away): nothing of ours left to cut.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.closed.insert(path, 0);
                    continue;
                }
                Err(e) => return Err(io("cannot open", &path, e)),
            };
            let now = cut_back(&f, good, &path).await?;
            self.closed.insert(path, now);
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
        let template = Template::parse_field("path", path).map_err(|reason| BuildError {
            name: name.to_owned(),
            reason,
        })?;
        let max_targets = f
            .int("max_targets")
            .unwrap_or(dab_api::schema::DEFAULT_MAX_TARGETS);
        Ok(Box::new(FileSink::templated(
            template,
            f.bool("fsync").unwrap_or(true),
            usize::try_from(max_targets).unwrap_or(1),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ty: &str, host: &str, n: u64) -> Event {
        Event {
            ty: ty.into(),
            host: host.into(),
            offset: n,
            message: bytes::Bytes::from_static(b"{}"),
            ..Event::default()
        }
    }

    fn lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("a whole JSON line");
                format!(
                    "{}/{}/{}",
                    v["type"].as_str().unwrap_or(""),
                    v["host"].as_str().unwrap_or(""),
                    v["offset"]
                )
            })
            .collect()
    }

    fn templated(dir: &Path, max: usize) -> FileSink {
        let t = format!("{}/out/{{type}}/{{host}}.ndjson", dir.display());
        FileSink::templated(Template::parse(&t).expect("template"), false, max)
    }

    #[tokio::test]
    async fn each_event_goes_to_its_file_and_lru_closing_keeps_them_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = templated(dir.path(), 2);
        let events: Vec<Event> = (0..30)
            .map(|i| ev(["A", "B", "C"][i % 3], ["h1", "h2"][i % 2], i as u64))
            .collect();
        for chunk in events.chunks(7) {
            let w = sink.write(chunk).await.expect("write");
            assert!(w.rejected.is_empty());
            assert!(sink.open.len() <= 2, "{} open", sink.open.len());
        }
        sink.flush().await.expect("flush");
        let mut total = 0;
        for ty in ["A", "B", "C"] {
            for host in ["h1", "h2"] {
                let got = lines(&dir.path().join(format!("out/{ty}/{host}.ndjson")));
                let want: Vec<String> = events
                    .iter()
                    .filter(|e| e.ty.as_str() == ty && e.host.as_str() == host)
                    .map(|e| format!("{ty}/{host}/{}", e.offset))
                    .collect();
                assert_eq!(got, want, "{ty}/{host}");
                total += got.len();
            }
        }
        assert_eq!(total, 30);
    }

    #[tokio::test]
    async fn a_rewind_cuts_back_every_file_written_since_the_last_good_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = templated(dir.path(), 2);
        let first = [ev("A", "h", 0), ev("B", "h", 1), ev("C", "h", 2)];
        sink.write(&first).await.expect("write");
        sink.flush().await.expect("flush");
        // Taken since the flush: A is closed (LRU) before C and D open.
        let second = [
            ev("A", "h", 3),
            ev("B", "h", 4),
            ev("C", "h", 5),
            ev("D", "h", 6),
        ];
        sink.write(&second).await.expect("write");
        assert!(!sink.closed.is_empty(), "a file was closed since the flush");
        // As after a failed flush: back to the last good flush, then the
        // runtime writes the held events again.
        sink.rewind().await.expect("rewind");
        for (ty, n) in [("A", 0), ("B", 1), ("C", 2)] {
            assert_eq!(
                lines(&dir.path().join(format!("out/{ty}/h.ndjson"))),
                vec![format!("{ty}/h/{n}")]
            );
        }
        assert!(lines(&dir.path().join("out/D/h.ndjson")).is_empty());
        sink.write(&second).await.expect("write again");
        sink.flush().await.expect("flush");
        for (ty, a, b) in [("A", 0, 3), ("B", 1, 4), ("C", 2, 5)] {
            assert_eq!(
                lines(&dir.path().join(format!("out/{ty}/h.ndjson"))),
                vec![format!("{ty}/h/{a}"), format!("{ty}/h/{b}")]
            );
        }
        assert_eq!(
            lines(&dir.path().join("out/D/h.ndjson")),
            vec!["D/h/6".to_owned()]
        );
    }

    #[tokio::test]
    async fn each_target_has_its_torn_tail_cut_on_first_open_and_missing_values_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = format!("{}/out/{{tags.team}}.ndjson", dir.path().display());
        let mut sink = FileSink::templated(Template::parse(&t).expect("template"), true, 4);
        std::fs::create_dir_all(dir.path().join("out")).expect("mkdir");
        std::fs::write(
            dir.path().join("out/x.ndjson"),
            b"{\"type\":\"Old\",\"host\":\"o\",\"offset\":9}\n{\"torn",
        )
        .expect("seed");
        let mut tagged = ev("A", "h", 1);
        tagged.set_tag("team".into(), "x".into());
        let untagged = ev("A", "h", 2);
        let w = sink.write(&[untagged, tagged]).await.expect("write");
        assert_eq!(w.rejected.len(), 1);
        assert_eq!(w.rejected[0].index, 0);
        assert!(
            w.rejected[0].reason.contains("{tags.team}"),
            "{}",
            w.rejected[0].reason
        );
        sink.flush().await.expect("flush");
        assert_eq!(
            lines(&dir.path().join("out/x.ndjson")),
            vec!["Old/o/9".to_owned(), "A/h/1".to_owned()]
        );
    }

    #[tokio::test]
    async fn a_rendered_path_that_can_never_be_opened_refuses_its_events_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sink = templated(dir.path(), 4);
        // `out/F` is a file, so `out/F/h.ndjson` cannot be created.
        std::fs::create_dir_all(dir.path().join("out")).expect("mkdir");
        std::fs::write(dir.path().join("out/F"), b"").expect("a file");
        let w = sink
            .write(&[ev("A", "h", 0), ev("F", "h", 1), ev("A", "h", 2)])
            .await
            .expect("write");
        assert_eq!(w.rejected.len(), 1, "{:?}", w.rejected);
        assert_eq!(w.rejected[0].index, 1);
        assert!(
            w.rejected[0].reason.contains("out/F/h.ndjson"),
            "{}",
            w.rejected[0].reason
        );
        sink.flush().await.expect("flush");
        assert_eq!(
            lines(&dir.path().join("out/A/h.ndjson")),
            vec!["A/h/0".to_owned(), "A/h/2".to_owned()]
        );
    }

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
