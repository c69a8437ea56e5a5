//! `parquet` sink (SPEC section 8): the payloads of one declared type as
//! Parquet files under `<path>/year=YYYY/month=MM/day=DD/hour=HH/`, the
//! hour of each event's timestamp in UTC. `path` is a local directory or
//! `s3://bucket/prefix` on S3-compatible storage (through `object_store`).
//!
//! Columns are the schema's fields, by name, in declaration order, each
//! with a Parquet field id; optional fields that are absent are nulls;
//! structs, lists and maps are Parquet's nested types. The file's key-value
//! metadata holds `dab.type` and `dab.schema_version`.
//!
//! Nothing half-written ever has a final name:
//! - locally, a file is written as `.part-….parquet.tmp` beside its final
//!   name and renamed only once it is complete and fsynced (then the
//!   directory is fsynced too);
//! - on S3, a file is written to a local spool directory and uploaded
//!   under its final key once complete: one PUT, or a multipart upload
//!   that S3 shows only when it is completed (a failed one is aborted).
//!
//! `flush` commits every open file, which makes the acknowledgement rule
//! simple: a batch is acknowledged after a good flush, and by then the
//! file holding it is committed. Between flushes a file rolls when it
//! reaches `max_file_bytes` or `max_file_age`, and at most
//! `max_open_writers` files are open at once (a late event reopening an
//! old hour closes the least recently used file first).
//!
//! A payload that does not conform to the schema is never written: it is
//! returned as rejected with the reason, and the runtime sends it to the
//! pipeline's `OnError` with `dab.error`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::builder::{BinaryBuilder, StringBuilder};
use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, ListArray, MapArray, RecordBatch,
    StringArray, StructArray, TimestampNanosecondArray,
};
use arrow_buffer::{NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field as ArrowField, Fields as ArrowFields, Schema as ArrowSchema};
use arrow_schema::{SchemaRef, TimeUnit};
use async_trait::async_trait;
use dab_api::config::Fields;
use dab_api::metrics::{ConnectorMetrics, Sample};
use dab_api::{
    BuildError, ConfigValue, ConnectorError, Event, Rejection, Sink, SinkError, SinkFactory,
    Written,
};
use dab_schema::{Field, FieldType, Schema, Type};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};
use parquet::arrow::{ArrowWriter, PARQUET_FIELD_ID_META_KEY};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde_json::Value;

const HOUR_NS: i64 = 3_600_000_000_000;
/// Default bound on files open at once.
pub const DEFAULT_MAX_OPEN_WRITERS: usize = 16;
const DEFAULT_MAX_FILE_BYTES: u64 = 128 * 1024 * 1024;
const DEFAULT_MAX_FILE_AGE: Duration = Duration::from_secs(300);
/// Files up to this size are uploaded in one PUT; larger ones in parts of
/// this size (S3 wants at least 5 MiB for every part but the last).
const UPLOAD_PART: u64 = 8 * 1024 * 1024;
/// The region an S3-compatible server is asked for when none is set.
pub const DEFAULT_S3_REGION: &str = "us-east-1";

/// Where committed files go.
#[derive(Debug, Clone)]
pub enum Storage {
    /// A local directory.
    Local(PathBuf),
    /// S3-compatible object storage.
    S3(S3Location),
}

/// An `s3://bucket/prefix` path and how to reach it.
#[derive(Clone)]
pub struct S3Location {
    pub bucket: String,
    /// Key prefix without a leading or trailing `/`; may be empty.
    pub prefix: String,
    /// `http(s)://host:port` of an S3-compatible server; AWS when `None`.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// Local directory where files are written before their upload.
    pub spool: PathBuf,
}

impl std::fmt::Debug for S3Location {
    /// Never prints the keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Location")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("spool", &self.spool)
            .finish_non_exhaustive()
    }
}

impl S3Location {
    /// `s3://bucket/prefix` -> (bucket, prefix); `None` unless the path
    /// starts with `s3://` and names a bucket.
    pub fn parse_path(path: &str) -> Option<(String, String)> {
        let rest = path.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        (!bucket.is_empty()).then(|| (bucket.to_owned(), prefix.trim_matches('/').to_owned()))
    }

    fn store(&self) -> Result<Arc<dyn ObjectStore>, String> {
        // The runtime retries and opens the breaker itself: the client
        // tries a request at most three times, and gives up on a peer
        // that does not answer, rather than stalling the sink for minutes.
        let retry = RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
            ..RetryConfig::default()
        };
        let options = ClientOptions::new()
            .with_timeout(Duration::from_secs(30))
            .with_connect_timeout(Duration::from_secs(5));
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_region(&self.region)
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .with_retry(retry)
            .with_client_options(options);
        if let Some(endpoint) = &self.endpoint {
            b = b
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"));
        }
        let store = b.build().map_err(|e| e.to_string())?;
        Ok(Arc::new(store))
    }
}

/// The sink's settings, once read.
#[derive(Debug, Clone)]
pub struct ParquetConfig {
    pub storage: Storage,
    /// The declared type whose schema gives the columns.
    pub type_name: String,
    pub schema: Schema,
    pub compression: Compression,
    pub max_file_bytes: u64,
    pub max_file_age: Duration,
    pub max_open_writers: usize,
}

/// The sink's counters, exported as `dab_parquet_*{sink}` metrics.
#[derive(Debug, Default)]
pub struct ParquetStats {
    /// The binding's name, the `sink` label.
    pub name: String,
    pub files_committed: AtomicU64,
    pub rows_committed: AtomicU64,
    /// Payloads refused because they do not conform to the schema.
    pub schema_mismatch: AtomicU64,
    /// Commits that failed (a write, fsync, rename or upload); their
    /// events are written again.
    pub commit_failures: AtomicU64,
}

/// Where a file goes when it is committed.
#[derive(Debug, Clone)]
enum Dest {
    File(PathBuf),
    Object(ObjectPath),
}

struct OpenFile {
    /// Hours since the epoch.
    hour: i64,
    tmp: PathBuf,
    dest: Dest,
    writer: ArrowWriter<File>,
    opened: Instant,
    rows: u64,
}

impl ConnectorMetrics for ParquetStats {
    fn samples(&self, out: &mut Vec<Sample>) {
        for (name, help, v) in [
            (
                "dab_parquet_files_committed_total",
                "Parquet files committed under their final name",
                &self.files_committed,
            ),
            (
                "dab_parquet_rows_committed_total",
                "Rows in the Parquet files committed",
                &self.rows_committed,
            ),
            (
                "dab_parquet_schema_mismatch_total",
                "Payloads refused because they do not conform to the sink's type \
                 (sent to OnError, or dropped and counted as rejected)",
                &self.schema_mismatch,
            ),
            (
                "dab_parquet_commit_failures_total",
                "Parquet files whose commit (write, fsync, rename or upload) failed; \
                 their events are written again",
                &self.commit_failures,
            ),
        ] {
            out.push(
                Sample::counter(name, help, v.load(Ordering::Relaxed))
                    .label("sink", self.name.clone()),
            );
        }
    }
}

impl std::fmt::Debug for OpenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenFile")
            .field("hour", &self.hour)
            .field("tmp", &self.tmp)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct ParquetSink {
    cfg: ParquetConfig,
    arrow: SchemaRef,
    props: WriterProperties,
    /// The S3 client, when `storage` is S3.
    store: Option<Arc<dyn ObjectStore>>,
    /// Least recently used first.
    open: Vec<OpenFile>,
    /// Files closed by a roll (size, age or the open-writer bound) and not
    /// committed yet; `write` commits them before it returns.
    closing: Vec<OpenFile>,
    /// Makes file names unique across runs: start time and process id.
    run: String,
    seq: u64,
    stats: Arc<ParquetStats>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> SinkError {
    SinkError::transient(ConnectorError::io(
        format!("{what} `{}`", path.display()),
        e,
    ))
}

/// Encoding and file I/O (fsync included) block: on a multi-thread
/// runtime (`dab run`) the worker hands its other tasks to another thread
/// meanwhile; elsewhere (a current-thread runtime in tests) it runs inline.
fn blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn sync_dir(dir: &Path) -> Result<(), SinkError> {
    // `path: out` has the empty parent ``: that is the working directory.
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot fsync", dir, e))
}

fn pq(what: &str, path: &Path, e: parquet::errors::ParquetError) -> SinkError {
    SinkError::transient(ConnectorError::Other(format!(
        "{what} `{}`: {e}",
        path.display()
    )))
}

/// `mkdir -p`, then fsync every directory it may have made (each is an
/// entry of its parent), up to `root`: or a crash could lose a committed
/// file's whole partition.
fn create_dirs(dir: &Path, root: &Path) -> Result<(), SinkError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| io("cannot create", dir, e))?;
    for parent in dir.ancestors().skip(1) {
        sync_dir(parent)?;
        if parent == root || parent.as_os_str().is_empty() {
            break;
        }
    }
    Ok(())
}

/// Uploads the local file `tmp` as `key`: one PUT when it is small, else a
/// multipart upload, aborted if any part fails. Either way S3 shows the
/// object only once all of it is there.
async fn upload(
    store: &dyn ObjectStore,
    bucket: &str,
    tmp: &Path,
    key: &ObjectPath,
) -> Result<(), SinkError> {
    let failed = |e: object_store::Error| {
        SinkError::transient(ConnectorError::Other(format!(
            "cannot upload `s3://{bucket}/{key}`: {e}"
        )))
    };
    let len = std::fs::metadata(tmp)
        .map_err(|e| io("cannot read", tmp, e))?
        .len();
    if len <= UPLOAD_PART {
        let bytes = blocking(|| std::fs::read(tmp)).map_err(|e| io("cannot read", tmp, e))?;
        store
            .put(key, PutPayload::from(bytes))
            .await
            .map_err(failed)?;
        return Ok(());
    }
    let mut file = File::open(tmp).map_err(|e| io("cannot read", tmp, e))?;
    let mut up = store.put_multipart(key).await.map_err(failed)?;
    let parts = async {
        loop {
            let mut part = Vec::with_capacity(UPLOAD_PART as usize);
            blocking(|| (&mut file).take(UPLOAD_PART).read_to_end(&mut part))
                .map_err(|e| io("cannot read", tmp, e))?;
            if part.is_empty() {
                break;
            }
            up.put_part(PutPayload::from(part)).await.map_err(failed)?;
        }
        up.complete().await.map_err(failed).map(drop)
    }
    .await;
    if parts.is_err() {
        // An aborted upload is never visible; one left open would only
        // cost storage until the bucket's lifecycle rule removes it.
        let _ = up.abort().await;
    }
    parts
}

/// What a commit needs of the sink, apart from it: the sink holds the
/// open writers, which may not be shared across threads, and a commit
/// awaits an upload.
struct Committer {
    store: Option<Arc<dyn ObjectStore>>,
    bucket: String,
    stats: Arc<ParquetStats>,
}

impl Committer {
    /// Writes the footer and puts the file under its final name: fsync,
    /// rename and directory fsync, or an upload. On error the temporary
    /// file is removed.
    async fn commit(&self, f: OpenFile) -> Result<(), SinkError> {
        let OpenFile {
            tmp,
            dest,
            writer,
            rows,
            ..
        } = f;
        let done = match (&dest, &self.store) {
            (Dest::File(dest), _) => blocking(|| {
                writer
                    .into_inner()
                    .map_err(|e| pq("cannot finish", &tmp, e))
                    .and_then(|file| file.sync_all().map_err(|e| io("cannot fsync", &tmp, e)))
                    .and_then(|()| {
                        std::fs::rename(&tmp, dest).map_err(|e| io("cannot rename", &tmp, e))
                    })
                    .and_then(|()| dest.parent().map_or(Ok(()), sync_dir))
            }),
            (Dest::Object(key), Some(store)) => {
                match blocking(|| {
                    writer
                        .into_inner()
                        .map_err(|e| pq("cannot finish", &tmp, e))
                }) {
                    Ok(file) => {
                        drop(file);
                        upload(store.as_ref(), &self.bucket, &tmp, key).await
                    }
                    Err(e) => Err(e),
                }
            }
            (Dest::Object(key), None) => Err(SinkError::permanent(ConnectorError::Other(format!(
                "no object store for `{key}`"
            )))),
        };
        // The spool file is not needed once uploaded; the local file was
        // renamed away (removing its old name is then a no-op).
        if matches!(dest, Dest::Object(_)) || done.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        if let Err(e) = done {
            self.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        self.stats.files_committed.fetch_add(1, Ordering::Relaxed);
        self.stats.rows_committed.fetch_add(rows, Ordering::Relaxed);
        Ok(())
    }
}

impl ParquetSink {
    /// Fails when the S3 client cannot be made from the settings.
    pub fn new(name: &str, cfg: ParquetConfig) -> Result<ParquetSink, String> {
        let arrow = Arc::new(arrow_schema(&cfg.schema));
        let mut meta = vec![KeyValue::new("dab.type".into(), cfg.type_name.clone())];
        if let Some(v) = cfg.schema.version {
            meta.push(KeyValue::new("dab.schema_version".into(), v.to_string()));
        }
        let props = WriterProperties::builder()
            .set_compression(cfg.compression)
            .set_key_value_metadata(Some(meta))
            .build();
        let store = match &cfg.storage {
            Storage::Local(_) => None,
            Storage::S3(loc) => Some(loc.store()?),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Ok(ParquetSink {
            cfg,
            arrow,
            props,
            store,
            open: Vec::new(),
            closing: Vec::new(),
            run: format!("{now:x}-{:x}", std::process::id()),
            seq: 0,
            stats: Arc::new(ParquetStats {
                name: name.to_owned(),
                ..ParquetStats::default()
            }),
        })
    }

    pub fn stats(&self) -> Arc<ParquetStats> {
        self.stats.clone()
    }

    /// The partition of an hour since the epoch, as a relative path.
    fn partition(hour: i64) -> String {
        let t = chrono::DateTime::from_timestamp(hour.saturating_mul(3600), 0).unwrap_or_default();
        t.format("year=%Y/month=%m/day=%d/hour=%H").to_string()
    }

    /// The open file of `hour`, opening one (after closing the least
    /// recently used if `max_open_writers` are open) if there is none.
    fn writer_for(&mut self, hour: i64) -> Result<&mut OpenFile, SinkError> {
        if let Some(i) = self.open.iter().position(|f| f.hour == hour) {
            let f = self.open.remove(i);
            self.open.push(f);
        } else {
            while self.open.len() >= self.cfg.max_open_writers.max(1) {
                let lru = self.open.remove(0);
                self.closing.push(lru);
            }
            self.seq += 1;
            let name = format!("part-{}-{:06}.parquet", self.run, self.seq);
            let partition = Self::partition(hour);
            let (tmp, dest) = match &self.cfg.storage {
                Storage::Local(root) => {
                    let dir = root.join(&partition);
                    create_dirs(&dir, root)?;
                    (
                        dir.join(format!(".{name}.tmp")),
                        Dest::File(dir.join(&name)),
                    )
                }
                Storage::S3(loc) => {
                    create_dirs(&loc.spool, &loc.spool)?;
                    let key = [loc.prefix.as_str(), &partition, &name]
                        .iter()
                        .filter(|p| !p.is_empty())
                        .copied()
                        .collect::<Vec<_>>()
                        .join("/");
                    (
                        loc.spool.join(format!(".{name}.tmp")),
                        Dest::Object(ObjectPath::from(key)),
                    )
                }
            };
            let file = File::create(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
            let writer = ArrowWriter::try_new(file, self.arrow.clone(), Some(self.props.clone()))
                .map_err(|e| pq("cannot start", &tmp, e))?;
            self.open.push(OpenFile {
                hour,
                tmp,
                dest,
                writer,
                opened: Instant::now(),
                rows: 0,
            });
        }
        let last = self.open.len() - 1;
        Ok(&mut self.open[last])
    }

    /// Commits the files closed so far, oldest first. On error the rest
    /// stay in `closing` for `rewind` to drop.
    async fn commit_closing(&mut self) -> Result<(), SinkError> {
        let to = Committer {
            store: self.store.clone(),
            bucket: match &self.cfg.storage {
                Storage::S3(loc) => loc.bucket.clone(),
                Storage::Local(_) => String::new(),
            },
            stats: self.stats.clone(),
        };
        while !self.closing.is_empty() {
            let f = self.closing.remove(0);
            to.commit(f).await?;
        }
        Ok(())
    }

    /// Closes the files that reached their age.
    fn roll_by_age(&mut self) {
        while let Some(i) = self
            .open
            .iter()
            .position(|f| f.opened.elapsed() >= self.cfg.max_file_age)
        {
            let f = self.open.remove(i);
            self.closing.push(f);
        }
    }

    /// The conforming payloads of `events` as record batches, one per hour
    /// (hours in order of first appearance), and the refused ones.
    fn encode(&self, events: &[Event]) -> Result<(HourBatches, Vec<Rejection>), SinkError> {
        let mut rejected = Vec::new();
        // Conforming payloads by hour, hours in order of first appearance.
        let mut hours: Vec<(i64, Vec<Row<'_>>)> = Vec::new();
        for (index, e) in events.iter().enumerate() {
            // Shared with the event's parse when a stage made one;
            // otherwise parsed here and freed once encoded, not kept with
            // the event until its acknowledgement.
            let value = e.payload.value_once(&e.message);
            let p = value.as_deref();
            let payload = match self.cfg.schema.conforms(p) {
                Ok(()) => check_timestamps(&self.cfg.schema.fields, p).map(|()| value.clone()),
                Err(reason) => Err(reason),
            };
            match payload {
                Ok(Some(v)) => {
                    let hour = e.timestamp.div_euclid(HOUR_NS);
                    match hours.iter_mut().find(|(h, _)| *h == hour) {
                        Some((_, rows)) => rows.push((v, e)),
                        None => hours.push((hour, vec![(v, e)])),
                    }
                }
                Ok(None) => rejected.push(Rejection {
                    index,
                    reason: "the payload is not a JSON object".into(),
                }),
                Err(reason) => rejected.push(Rejection {
                    index,
                    reason: format!(
                        "payload does not conform to type `{}`: {reason}",
                        self.cfg.type_name
                    ),
                }),
            }
        }
        let mut batches = Vec::with_capacity(hours.len());
        for (hour, rows) in &hours {
            let batch = record_batch(&self.arrow, &self.cfg.schema.fields, rows)
                .map_err(|e| SinkError::permanent(ConnectorError::Other(e)))?;
            batches.push((*hour, batch));
        }
        Ok((batches, rejected))
    }

    /// What `write` does to each of `batches` short of files and
    /// partitions: the schema check and the encoding, into one Parquet
    /// file (every hour's rows, the sink's compression and metadata)
    /// written to `out`, footer included; the rejections of each batch.
    /// For the encoding bench (benches/parquet.rs).
    pub fn encode_into<'e, W: std::io::Write + Send>(
        &self,
        batches: impl IntoIterator<Item = &'e [Event]>,
        out: W,
    ) -> Result<(W, Vec<Written>), SinkError> {
        let path = Path::new("(memory)");
        let mut w = ArrowWriter::try_new(out, self.arrow.clone(), Some(self.props.clone()))
            .map_err(|e| pq("cannot start", path, e))?;
        let mut written = Vec::new();
        for events in batches {
            let (encoded, rejected) = self.encode(events)?;
            for (_, batch) in &encoded {
                w.write(batch).map_err(|e| pq("cannot write", path, e))?;
            }
            written.push(Written { rejected });
        }
        let out = w.into_inner().map_err(|e| pq("cannot finish", path, e))?;
        Ok((out, written))
    }

    /// Synchronous body of `write`: encodes and writes; files that roll
    /// are left in `closing`.
    fn write_now(&mut self, events: &[Event]) -> Result<Written, SinkError> {
        self.roll_by_age();
        // Encode everything before writing anything: an encoding failure
        // then leaves no file touched.
        let (batches, rejected) = self.encode(events)?;
        self.stats
            .schema_mismatch
            .fetch_add(rejected.len() as u64, Ordering::Relaxed);
        for (hour, batch) in batches {
            let max_bytes = self.cfg.max_file_bytes;
            let f = self.writer_for(hour)?;
            f.writer
                .write(&batch)
                .map_err(|e| pq("cannot write", &f.tmp, e))?;
            f.rows += batch.num_rows() as u64;
            let size = (f.writer.bytes_written() + f.writer.in_progress_size()) as u64;
            if size >= max_bytes {
                if let Some(f) = self.open.pop() {
                    self.closing.push(f);
                }
            }
        }
        Ok(Written { rejected })
    }

    /// Drops every file not committed, and its temporary file.
    fn drop_uncommitted(&mut self) {
        for f in self.open.drain(..).chain(self.closing.drain(..)) {
            drop(f.writer);
            let _ = std::fs::remove_file(&f.tmp);
        }
    }
}

#[async_trait]
impl Sink for ParquetSink {
    async fn write(&mut self, events: &[Event]) -> Result<Written, SinkError> {
        let written = blocking(|| self.write_now(events))?;
        self.commit_closing().await?;
        Ok(written)
    }

    /// Commits every open file: a batch is acknowledged only after this.
    async fn flush(&mut self) -> Result<(), SinkError> {
        let open: Vec<OpenFile> = self.open.drain(..).collect();
        self.closing.extend(open);
        self.commit_closing().await
    }

    fn metrics(&self) -> Option<Arc<dyn ConnectorMetrics>> {
        Some(self.stats.clone())
    }

    /// Drops the open files, which were never committed: the runtime
    /// writes their events again. Committed files stay (at least once).
    async fn rewind(&mut self) -> Result<(), SinkError> {
        self.drop_uncommitted();
        Ok(())
    }
}

impl Drop for ParquetSink {
    /// Uncommitted files are not kept: their events were never acknowledged.
    fn drop(&mut self) {
        self.drop_uncommitted();
    }
}

/// Timestamps given as text must be readable as RFC 3339 by the encoder
/// too; `conforms` checks their shape, this their value.
fn check_timestamps(fields: &[Field], payload: Option<&Value>) -> Result<(), String> {
    let Some(Value::Object(obj)) = payload else {
        return Ok(());
    };
    for f in fields {
        check_value(&f.ty, obj.get(&f.name), &f.name)?;
    }
    Ok(())
}

fn check_value(t: &FieldType, v: Option<&Value>, path: &str) -> Result<(), String> {
    match (&t.ty, v) {
        (Type::Timestamp, Some(Value::String(s))) => parse_rfc3339(s)
            .map(drop)
            .ok_or_else(|| format!("`{path}` is not a timestamp in range: {s:?}")),
        (Type::List(item), Some(Value::Array(xs))) => {
            xs.iter().try_for_each(|x| check_value(item, Some(x), path))
        }
        (Type::Map(value), Some(Value::Object(m))) => m
            .values()
            .try_for_each(|x| check_value(value, Some(x), path)),
        (Type::Struct(fields), Some(v @ Value::Object(_))) => check_timestamps(fields, Some(v)),
        _ => Ok(()),
    }
}

fn parse_rfc3339(s: &str) -> Option<i64> {
    // The first ` ` or `t` becomes `T`; most texts have none (no copy).
    let s = if s.contains([' ', 't']) {
        std::borrow::Cow::Owned(s.replacen([' ', 't'], "T", 1))
    } else {
        std::borrow::Cow::Borrowed(s)
    };
    chrono::DateTime::parse_from_rfc3339(&s)
        .ok()?
        .timestamp_nanos_opt()
}

/// The Arrow schema of a payload schema: top-level fields get Parquet
/// field ids 1..=n in declaration order, nested struct fields the ids
/// after those, depth first.
pub fn arrow_schema(schema: &Schema) -> ArrowSchema {
    let mut next = schema.fields.len() as i32 + 1;
    let mut fields: Vec<ArrowField> = schema
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| with_id(arrow_field(&f.name, &f.ty, &mut next), i as i32 + 1))
        .collect();
    fields.extend(envelope_fields());
    ArrowSchema::new(fields)
}

fn with_id(f: ArrowField, id: i32) -> ArrowField {
    f.with_metadata(std::collections::HashMap::from([(
        PARQUET_FIELD_ID_META_KEY.to_owned(),
        id.to_string(),
    )]))
}

fn arrow_field(name: &str, t: &FieldType, next: &mut i32) -> ArrowField {
    ArrowField::new(name, data_type(&t.ty, next), t.optional)
}

fn data_type(t: &Type, next: &mut i32) -> DataType {
    match t {
        Type::Bool => DataType::Boolean,
        Type::Int32 => DataType::Int32,
        Type::Int64 => DataType::Int64,
        Type::Float64 => DataType::Float64,
        Type::String => DataType::Utf8,
        Type::Bytes => DataType::Binary,
        Type::Timestamp => DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        Type::List(item) => DataType::List(Arc::new(arrow_field("element", item, next))),
        Type::Map(value) => DataType::Map(Arc::new(map_entries(value, next)), false),
        Type::Struct(fields) => DataType::Struct(struct_fields(fields, next)),
    }
}

fn map_entries(value: &FieldType, next: &mut i32) -> ArrowField {
    ArrowField::new(
        "key_value",
        DataType::Struct(ArrowFields::from(vec![
            ArrowField::new("key", DataType::Utf8, false),
            arrow_field("value", value, next),
        ])),
        false,
    )
}

fn struct_fields(fields: &[Field], next: &mut i32) -> ArrowFields {
    fields
        .iter()
        .map(|f| {
            let id = *next;
            *next += 1;
            with_id(arrow_field(&f.name, &f.ty, next), id)
        })
        .collect()
}

/// Record batches, one per hour since the epoch.
type HourBatches = Vec<(i64, RecordBatch)>;

/// One record batch of conforming payloads and their envelopes.
/// A conforming payload, shared with its event's parse, and its event.
type Row<'e> = (Arc<Value>, &'e Event);

fn record_batch(
    arrow: &SchemaRef,
    fields: &[Field],
    rows: &[Row<'_>],
) -> Result<RecordBatch, String> {
    let objs: Vec<Option<&Value>> = rows.iter().map(|(v, _)| Some(&**v)).collect();
    let mut columns = struct_columns(arrow.fields(), fields, &objs)?;
    let Some(tags_field) = arrow.fields().last() else {
        return Err("no envelope columns".into());
    };
    columns.extend(envelope_columns(tags_field.data_type(), rows)?);
    RecordBatch::try_new(arrow.clone(), columns).map_err(|e| e.to_string())
}

/// The envelope's columns, after the payload's (SPEC section 8), prefixed
/// `dab_` so that no payload field can take their names.
pub const ENVELOPE: [&str; 6] = [
    "dab_timestamp",
    "dab_host",
    "dab_type",
    "dab_offset",
    "dab_pid",
    "dab_tags",
];
/// The envelope's field ids: fixed, so no payload version moves them.
const ENVELOPE_FIRST_ID: i32 = 2_000_000_001;

fn envelope_fields() -> Vec<ArrowField> {
    let tags = map_entries(
        &FieldType {
            ty: Type::String,
            optional: false,
        },
        &mut 0,
    );
    let types = [
        DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        DataType::Utf8,
        DataType::Utf8,
        DataType::Int64,
        DataType::Int64,
        DataType::Map(Arc::new(tags), false),
    ];
    ENVELOPE
        .iter()
        .zip(types)
        .enumerate()
        .map(|(i, (name, t))| {
            with_id(
                ArrowField::new(*name, t, false),
                ENVELOPE_FIRST_ID + i as i32,
            )
        })
        .collect()
}

fn envelope_columns(
    tags: &DataType,
    rows: &[(Arc<Value>, &Event)],
) -> Result<Vec<ArrayRef>, String> {
    let DataType::Map(entries_field, _) = tags else {
        return Err(format!("tags column has Arrow type {tags}"));
    };
    let DataType::Struct(kv) = entries_field.data_type() else {
        return Err("tag entries are not a struct".into());
    };
    let mut offsets = vec![0i32];
    let (mut keys, mut values) = (StringBuilder::new(), StringBuilder::new());
    let mut n = 0usize;
    for (_, e) in rows {
        for (k, v) in &e.tags {
            keys.append_value(k.as_str());
            values.append_value(v.as_str());
        }
        n += e.tags.len();
        offsets.push(i32::try_from(n).map_err(|e| e.to_string())?);
    }
    let entries = StructArray::try_new(
        kv.clone(),
        vec![
            Arc::new(keys.finish()) as ArrayRef,
            Arc::new(values.finish()) as ArrayRef,
        ],
        None,
    )
    .map_err(|e| e.to_string())?;
    let tags = MapArray::try_new(
        entries_field.clone(),
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        entries,
        None,
        false,
    )
    .map_err(|e| e.to_string())?;
    Ok(vec![
        Arc::new(
            rows.iter()
                .map(|(_, e)| Some(e.timestamp))
                .collect::<TimestampNanosecondArray>()
                .with_timezone("UTC"),
        ),
        Arc::new(
            rows.iter()
                .map(|(_, e)| Some(e.host.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            rows.iter()
                .map(|(_, e)| Some(e.ty.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            rows.iter()
                .map(|(_, e)| Some(i64::try_from(e.offset).unwrap_or(i64::MAX)))
                .collect::<Int64Array>(),
        ),
        Arc::new(
            rows.iter()
                .map(|(_, e)| Some(i64::from(e.pid)))
                .collect::<Int64Array>(),
        ),
        Arc::new(tags),
    ])
}

fn struct_columns(
    arrow: &ArrowFields,
    fields: &[Field],
    objs: &[Option<&Value>],
) -> Result<Vec<ArrayRef>, String> {
    fields
        .iter()
        .zip(arrow.iter())
        .map(|(f, af)| {
            let vals: Vec<Option<&Value>> = objs
                .iter()
                .map(|o| o.and_then(|o| o.get(&f.name)).filter(|v| !v.is_null()))
                .collect();
            column(&f.ty.ty, af.data_type(), &vals)
        })
        .collect()
}

fn nulls(vals: &[Option<&Value>]) -> Option<NullBuffer> {
    let nb = NullBuffer::from(vals.iter().map(Option::is_some).collect::<Vec<bool>>());
    (nb.null_count() > 0).then_some(nb)
}

/// One column; `vals` holds `None` for null or absent.
fn column(t: &Type, dt: &DataType, vals: &[Option<&Value>]) -> Result<ArrayRef, String> {
    let arr: ArrayRef = match t {
        Type::Bool => Arc::new(
            vals.iter()
                .map(|v| v.and_then(Value::as_bool))
                .collect::<BooleanArray>(),
        ),
        Type::Int32 => Arc::new(
            vals.iter()
                .map(|v| {
                    v.and_then(Value::as_i64)
                        .and_then(|i| i32::try_from(i).ok())
                })
                .collect::<Int32Array>(),
        ),
        Type::Int64 => Arc::new(
            vals.iter()
                .map(|v| v.and_then(Value::as_i64))
                .collect::<Int64Array>(),
        ),
        Type::Float64 => Arc::new(
            vals.iter()
                .map(|v| v.and_then(Value::as_f64))
                .collect::<Float64Array>(),
        ),
        Type::String => Arc::new(
            vals.iter()
                .map(|v| v.and_then(Value::as_str))
                .collect::<StringArray>(),
        ),
        Type::Bytes => {
            let mut b = BinaryBuilder::new();
            for v in vals {
                match v.and_then(Value::as_str) {
                    Some(s) => b.append_value(s.as_bytes()),
                    None => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        Type::Timestamp => Arc::new(
            vals.iter()
                .map(|v| match v {
                    Some(Value::String(s)) => parse_rfc3339(s),
                    Some(v) => v.as_i64(),
                    None => None,
                })
                .collect::<TimestampNanosecondArray>()
                .with_timezone("UTC"),
        ),
        Type::List(item) => {
            let DataType::List(item_field) = dt else {
                return Err(format!("list column has Arrow type {dt}"));
            };
            let mut offsets = vec![0i32];
            let mut items: Vec<Option<&Value>> = Vec::new();
            for v in vals {
                if let Some(Value::Array(xs)) = v {
                    items.extend(xs.iter().map(|x| Some(x).filter(|x| !x.is_null())));
                }
                offsets.push(i32::try_from(items.len()).map_err(|e| e.to_string())?);
            }
            let child = column(&item.ty, item_field.data_type(), &items)?;
            Arc::new(
                ListArray::try_new(
                    item_field.clone(),
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    child,
                    nulls(vals),
                )
                .map_err(|e| e.to_string())?,
            )
        }
        Type::Map(value) => {
            let DataType::Map(entries_field, _) = dt else {
                return Err(format!("map column has Arrow type {dt}"));
            };
            let DataType::Struct(kv) = entries_field.data_type() else {
                return Err("map entries are not a struct".into());
            };
            let mut offsets = vec![0i32];
            let mut keys = StringBuilder::new();
            let mut values: Vec<Option<&Value>> = Vec::new();
            for v in vals {
                if let Some(Value::Object(m)) = v {
                    for (k, x) in m {
                        keys.append_value(k);
                        values.push(Some(x).filter(|x| !x.is_null()));
                    }
                }
                offsets.push(i32::try_from(values.len()).map_err(|e| e.to_string())?);
            }
            let value_col = column(&value.ty, kv[1].data_type(), &values)?;
            let entries = StructArray::try_new(
                kv.clone(),
                vec![Arc::new(keys.finish()) as ArrayRef, value_col],
                None,
            )
            .map_err(|e| e.to_string())?;
            Arc::new(
                MapArray::try_new(
                    entries_field.clone(),
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    entries,
                    nulls(vals),
                    false,
                )
                .map_err(|e| e.to_string())?,
            )
        }
        Type::Struct(fields) => {
            let DataType::Struct(afields) = dt else {
                return Err(format!("struct column has Arrow type {dt}"));
            };
            let children = struct_columns(afields, fields, vals)?;
            Arc::new(
                StructArray::try_new(afields.clone(), children, nulls(vals))
                    .map_err(|e| e.to_string())?,
            )
        }
    };
    Ok(arr)
}

#[derive(Debug)]
pub struct ParquetSinkFactory;

impl ParquetSinkFactory {
    fn config(
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
        schema: Option<&Schema>,
    ) -> Result<ParquetConfig, BuildError> {
        let fail = |reason: String| BuildError {
            name: name.to_owned(),
            reason,
        };
        let f = Fields(fields);
        let path = f
            .str("path")
            .ok_or_else(|| fail("`path` is required".into()))?;
        let storage = match S3Location::parse_path(path) {
            None if path.starts_with("s3://") => {
                return Err(fail(format!(
                    "`{path}` names no bucket: write s3://bucket/prefix"
                )))
            }
            None => Storage::Local(PathBuf::from(path)),
            Some((bucket, prefix)) => {
                let key = |k: &str| {
                    f.str(k)
                        .map(str::to_owned)
                        .ok_or_else(|| fail(format!("`{k}` is required with an s3:// path")))
                };
                Storage::S3(S3Location {
                    bucket,
                    prefix,
                    endpoint: f.str("s3_endpoint").map(str::to_owned),
                    region: f.str("s3_region").unwrap_or(DEFAULT_S3_REGION).to_owned(),
                    access_key: key("access_key")?,
                    secret_key: key("secret_key")?,
                    spool: f.str("spool").map_or_else(
                        || std::env::temp_dir().join("dab-parquet-spool").join(name),
                        PathBuf::from,
                    ),
                })
            }
        };
        let type_name = f
            .str("type")
            .ok_or_else(|| fail("`type` is required".into()))?;
        let schema = schema.ok_or_else(|| {
            fail(format!(
                "type `{type_name}` is not declared with `fields` under `types:`"
            ))
        })?;
        if let Some(f) = schema
            .fields
            .iter()
            .find(|f| ENVELOPE.contains(&f.name.as_str()))
        {
            return Err(fail(format!(
                "type `{type_name}` declares `{}`, the name of an envelope column",
                f.name
            )));
        }
        let compression = match f.str("compression").unwrap_or("zstd") {
            "snappy" => Compression::SNAPPY,
            "none" => Compression::UNCOMPRESSED,
            _ => Compression::ZSTD(ZstdLevel::default()),
        };
        Ok(ParquetConfig {
            storage,
            type_name: type_name.to_owned(),
            schema: schema.clone(),
            compression,
            max_file_bytes: f
                .int("max_file_bytes")
                .and_then(|v| u64::try_from(v).ok())
                .unwrap_or(DEFAULT_MAX_FILE_BYTES),
            max_file_age: f
                .millis("max_file_age")
                .map_or(DEFAULT_MAX_FILE_AGE, Duration::from_millis),
            max_open_writers: f
                .int("max_open_writers")
                .and_then(|v| usize::try_from(v).ok())
                .unwrap_or(DEFAULT_MAX_OPEN_WRITERS),
        })
    }
}

impl SinkFactory for ParquetSinkFactory {
    fn kind(&self) -> &'static str {
        "parquet"
    }

    /// Without the schema of its `type` the sink cannot be built; the
    /// runtime calls `build_typed`.
    fn build(
        &self,
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Sink>, BuildError> {
        self.build_typed(name, fields, None)
    }

    fn build_typed(
        &self,
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
        schema: Option<&Schema>,
    ) -> Result<Box<dyn Sink>, BuildError> {
        let sink =
            ParquetSink::new(name, Self::config(name, fields, schema)?).map_err(|reason| {
                BuildError {
                    name: name.to_owned(),
                    reason: format!("cannot make the S3 client: {reason}"),
                }
            })?;
        Ok(Box::new(sink))
    }
}

#[cfg(test)]
mod tests;
