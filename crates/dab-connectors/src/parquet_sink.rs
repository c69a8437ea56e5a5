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
//! file holding it is committed. The sink's `FlushPolicy` asks for a flush
//! when the oldest event held is `max_file_age` old or `max_unacked_bytes`
//! are held, not when the input pauses, so files grow to `max_file_bytes`
//! under load. Between flushes a file rolls when it reaches
//! `max_file_bytes` or `max_file_age`, and at most `max_open_writers`
//! files are open at once (a late event reopening an old hour closes the
//! least recently used file first).
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

use arrow_array::builder::StringBuilder;
use arrow_array::{
    ArrayRef, Int64Array, MapArray, RecordBatch, StringArray, StructArray, TimestampNanosecondArray,
};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field as ArrowField, Fields as ArrowFields, Schema as ArrowSchema};
use arrow_schema::{SchemaRef, TimeUnit};
use async_trait::async_trait;
use dab_api::config::Fields;
use dab_api::metrics::{ConnectorMetrics, Sample};
use dab_api::{
    BuildError, ConfigValue, ConnectorError, Event, FlushPolicy, Rejection, Sink, SinkError,
    SinkFactory, Text, Written,
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
use tokio_stream::StreamExt;

mod columns;
mod decode;
mod positions;
mod storage;

#[cfg(test)]
use columns::ENVELOPE_FIRST_ID;
pub use columns::{arrow_schema, colliding_ids, field_id, ENVELOPE};
use columns::{check_timestamps, record_batch};
use decode::Columns;
use storage::{blocking, clear_stale_spool, create_dirs, io, list_hour, pq, Committer};
pub use storage::{S3Location, Storage, DEFAULT_S3_REGION};

const HOUR_NS: i64 = 3_600_000_000_000;
/// Default bound on files open at once.
pub const DEFAULT_MAX_OPEN_WRITERS: usize = 16;
const DEFAULT_MAX_FILE_BYTES: u64 = 128 * 1024 * 1024;
const DEFAULT_MAX_FILE_AGE: Duration = Duration::from_secs(300);
/// Files are committed once no event came for this long (or
/// `max_file_age`, if shorter): a quiet stream, or a backfill that has read
/// its range and waits for its acknowledgements, is not held for the age.
const IDLE_COMMIT: Duration = Duration::from_secs(5);
/// Default bound on the events held unacknowledged until their files commit.
pub const DEFAULT_MAX_UNACKED_BYTES: usize = 64 * 1024 * 1024;
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
    /// Every open file is committed when the events held unacknowledged
    /// reach this many bytes.
    pub max_unacked_bytes: usize,
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
    /// Events not written because a committed file of their topic
    /// partition already holds their offset (a replay).
    pub replayed: AtomicU64,
}

/// What one file holds: the rows of one hour, of one topic partition
/// when the events carry their source position (`positions`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FileKey {
    /// Hours since the epoch.
    hour: i64,
    part: Option<(Text, i32)>,
}

impl FileKey {
    fn positions(&self) -> Option<positions::Key> {
        self.part.as_ref().map(|(t, p)| (self.hour, t.clone(), *p))
    }
}

struct OpenFile {
    key: FileKey,
    /// The partition directory, relative: `year=…/month=…/day=…/hour=…`.
    rel: String,
    /// The final name of a file without positions: `part-RUN-SEQ.parquet`.
    plain_name: String,
    tmp: PathBuf,
    writer: ArrowWriter<File>,
    opened: Instant,
    rows: u64,
    /// The first and last offset written, for a file of a topic partition.
    range: Option<(i64, i64)>,
    /// The file must be closed before this offset: a committed file of the
    /// same partition starts there.
    limit: Option<i64>,
}

impl OpenFile {
    fn final_name(&self) -> String {
        match (&self.key.part, self.range) {
            (Some((topic, partition)), Some((first, last))) => {
                positions::name(topic.as_str(), *partition, first, last)
            }
            _ => self.plain_name.clone(),
        }
    }
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
            (
                "dab_parquet_replayed_total",
                "Events not written again because a committed file of their Kafka \
                 topic partition already holds their offset",
                &self.replayed,
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
            .field("key", &self.key)
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
    /// What the committed files of each topic partition hold.
    committed: positions::Committed,
    /// Hours whose local directory was swept of dead processes'
    /// temporary files.
    swept: std::collections::HashSet<i64>,
}

/// The writer's settings: the compression, the type's metadata, and a
/// dictionary only for text and byte columns. Numbers and timestamps
/// (event times, offsets, latencies, ids) are mostly distinct values, so
/// a dictionary there costs a hash insert per value and is dropped for
/// plain encoding once it outgrows its page anyway; text columns (levels,
/// services, paths, hosts, tag keys) are where it pays.
/// docs/decisions.md, "Dictionaries only for text columns".
fn writer_properties(
    arrow: &ArrowSchema,
    compression: Compression,
    meta: Vec<KeyValue>,
) -> Result<WriterProperties, String> {
    let leaves = parquet::arrow::ArrowSchemaConverter::new()
        .convert(arrow)
        .map_err(|e| format!("the schema has no Parquet form: {e}"))?;
    let mut b = WriterProperties::builder()
        .set_compression(compression)
        .set_key_value_metadata(Some(meta));
    for col in leaves.columns() {
        let text = col.physical_type() == parquet::basic::Type::BYTE_ARRAY;
        b = b.set_column_dictionary_enabled(col.path().clone(), text);
    }
    Ok(b.build())
}

/// Runs of rows for one file each, encoded.
type Encoded = Vec<(Group, RecordBatch)>;

/// A run of rows for one file, in the order they came.
struct Group {
    key: FileKey,
    /// The rows' places among the batch's encoded rows, increasing.
    rows: Vec<usize>,
    /// Offsets of the first and last row, for a topic partition's rows.
    range: Option<(i64, i64)>,
    /// The offset the file must close before.
    limit: Option<i64>,
    /// The file is closed after these rows (the next row of the partition
    /// reached `limit`).
    close_after: bool,
}

impl ParquetSink {
    /// Fails when the S3 client cannot be made from the settings.
    pub fn new(name: &str, cfg: ParquetConfig) -> Result<ParquetSink, String> {
        let arrow = Arc::new(arrow_schema(&cfg.schema));
        let mut meta = vec![KeyValue::new("dab.type".into(), cfg.type_name.clone())];
        if let Some(v) = cfg.schema.version {
            meta.push(KeyValue::new("dab.schema_version".into(), v.to_string()));
        }
        let props = writer_properties(&arrow, cfg.compression, meta)?;
        let store = match &cfg.storage {
            Storage::Local(_) => None,
            Storage::S3(loc) => Some(loc.store()?),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let run = format!("{now:x}-{:x}", std::process::id());
        if let Storage::S3(loc) = &cfg.storage {
            let n = clear_stale_spool(&loc.spool, &run);
            if n > 0 {
                tracing::info!(sink = name, spool = %loc.spool.display(), files = n, "removed spool files of processes that ended without uploading them");
            }
        }
        Ok(ParquetSink {
            cfg,
            arrow,
            props,
            store,
            open: Vec::new(),
            closing: Vec::new(),
            run,
            seq: 0,
            stats: Arc::new(ParquetStats {
                name: name.to_owned(),
                ..ParquetStats::default()
            }),
            committed: positions::Committed::default(),
            swept: std::collections::HashSet::new(),
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

    /// The open file of `key`, opening one (after closing the least
    /// recently used if `max_open_writers` are open) if there is none.
    fn writer_for(
        &mut self,
        key: &FileKey,
        limit: Option<i64>,
    ) -> Result<&mut OpenFile, SinkError> {
        if let Some(i) = self.open.iter().position(|f| f.key == *key) {
            let f = self.open.remove(i);
            self.open.push(f);
        } else {
            while self.open.len() >= self.cfg.max_open_writers.max(1) {
                let lru = self.open.remove(0);
                self.closing.push(lru);
            }
            self.seq += 1;
            let plain_name = format!("part-{}-{:06}.parquet", self.run, self.seq);
            let rel = Self::partition(key.hour);
            let tmp = match &self.cfg.storage {
                Storage::Local(root) => {
                    let dir = root.join(&rel);
                    create_dirs(&dir, root)?;
                    // Once per hour and process: temporary files a killed
                    // process left in this partition (hidden, never
                    // committed) would otherwise stay for ever.
                    if self.swept.insert(key.hour) {
                        let n = clear_stale_spool(&dir, &self.run);
                        if n > 0 {
                            tracing::info!(sink = %self.stats.name, dir = %dir.display(), files = n, "removed temporary files of processes that ended before committing them");
                        }
                    }
                    dir.join(format!(".{plain_name}.tmp"))
                }
                Storage::S3(loc) => {
                    create_dirs(&loc.spool, &loc.spool)?;
                    loc.spool.join(format!(".{plain_name}.tmp"))
                }
            };
            let file = File::create(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
            let writer = ArrowWriter::try_new(file, self.arrow.clone(), Some(self.props.clone()))
                .map_err(|e| pq("cannot start", &tmp, e))?;
            self.open.push(OpenFile {
                key: key.clone(),
                rel,
                plain_name,
                tmp,
                writer,
                opened: Instant::now(),
                rows: 0,
                range: None,
                limit,
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
            storage: self.cfg.storage.clone(),
            stats: self.stats.clone(),
        };
        while !self.closing.is_empty() {
            let f = self.closing.remove(0);
            if let Some((key, first, last)) = to.commit(f).await? {
                self.committed.add(key, first, last);
            }
        }
        Ok(())
    }

    /// Lists the committed files of every topic partition and hour of
    /// `events` that is not known yet, or that an event goes back in.
    async fn learn_positions(&mut self, events: &[Event]) -> Result<(), SinkError> {
        let mut wanted: Vec<positions::Key> = Vec::new();
        for e in events {
            if let Some(p) = &e.origin.0 {
                let key = (
                    e.timestamp.div_euclid(HOUR_NS),
                    p.topic.clone(),
                    p.partition,
                );
                if self.committed.needs_listing(&key, p.offset) && !wanted.contains(&key) {
                    wanted.push(key);
                }
            }
        }
        let mut hours: Vec<i64> = wanted.iter().map(|k| k.0).collect();
        hours.sort_unstable();
        hours.dedup();
        // Listing awaits; the sink's writers may not be shared across
        // threads, so nothing of `self` is held meanwhile.
        let (storage, store) = (self.cfg.storage.clone(), self.store.clone());
        for hour in hours {
            let names = list_hour(&storage, store.as_ref(), hour).await?;
            for key in wanted.iter().filter(|k| k.0 == hour) {
                let found = names
                    .iter()
                    .filter_map(|n| positions::parse(n))
                    .filter(|(t, p, _, _)| *t == key.1.as_str() && *p == key.2)
                    .map(|(_, _, f, l)| (f, l))
                    .collect();
                self.committed.listed(key.clone(), found);
            }
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

    /// The file key of a conforming event, and its offset when it has a
    /// position; `None` when a committed file already holds it.
    fn place(&mut self, e: &Event) -> Option<(FileKey, Option<i64>)> {
        let hour = e.timestamp.div_euclid(HOUR_NS);
        let Some(p) = &e.origin.0 else {
            return Some((FileKey { hour, part: None }, None));
        };
        let pos = (hour, p.topic.clone(), p.partition);
        self.committed.saw(&pos, p.offset);
        if self.committed.holds(&pos, p.offset) {
            self.stats.replayed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some((
            FileKey {
                hour,
                part: Some((p.topic.clone(), p.partition)),
            },
            Some(p.offset),
        ))
    }

    /// The conforming payloads of `events` as record batches, one per run
    /// of rows of one file (files in order of first appearance), and the
    /// refused ones.
    fn encode(&mut self, events: &[Event]) -> Result<(Encoded, Vec<Rejection>), SinkError> {
        let mut rejected = Vec::new();
        let mut payloads = Columns::new(&self.cfg.schema.fields);
        // The events of the encoded rows, row for row.
        let mut rows: Vec<&Event> = Vec::with_capacity(events.len());
        // Rows by file, files in order of first appearance.
        let mut groups: Vec<Group> = Vec::new();
        for (index, e) in events.iter().enumerate() {
            if let Err(reason) = self.decode(&mut payloads, e) {
                rejected.push(Rejection { index, reason });
                continue;
            }
            let Some((key, offset)) = self.place(e) else {
                payloads.truncate(rows.len());
                continue;
            };
            self.group(&mut groups, key, offset, rows.len());
            rows.push(e);
        }
        let batch = record_batch(&self.arrow, &self.cfg.schema.fields, &mut payloads, &rows)
            .map_err(|e| SinkError::permanent(ConnectorError::Other(e)))?;
        let mut out = Vec::with_capacity(groups.len());
        for g in groups {
            let part = rows_of(&batch, &g.rows)
                .map_err(|e| SinkError::permanent(ConnectorError::Other(e)))?;
            out.push((g, part));
        }
        Ok((out, rejected))
    }

    /// Appends `e`'s payload to `payloads` if it conforms; otherwise the
    /// reason it does not, in the `Value` path's words.
    fn decode(&self, payloads: &mut Columns, e: &Event) -> Result<(), String> {
        let fields = &self.cfg.schema.fields;
        if payloads.append(fields, &e.message) {
            return Ok(());
        }
        // The decoder gave up: the payload's `Value` decides. Shared with
        // the event's parse when a stage made one; otherwise parsed here
        // and freed at once, not kept with the event.
        let value = e.payload.value_once(&e.message);
        let p = value.as_deref();
        self.cfg
            .schema
            .conforms(p)
            .and_then(|()| check_timestamps(fields, p))
            .map_err(|reason| {
                format!(
                    "payload does not conform to type `{}`: {reason}",
                    self.cfg.type_name
                )
            })?;
        // It conforms in a way the decoder does not take directly (a
        // field given twice, map keys out of order): as its `Value` has it.
        let json = serde_json::to_vec(&p).map_err(|e| e.to_string())?;
        if payloads.append(fields, &json) {
            Ok(())
        } else {
            Err(format!(
                "payload of type `{}` conforms but could not be encoded",
                self.cfg.type_name
            ))
        }
    }

    /// What `write` does to each of `batches` short of files and
    /// partitions: the schema check and the encoding, into one Parquet
    /// file (every batch's rows, the sink's compression and metadata)
    /// written to `out`, footer included; the rejections of each batch.
    /// For the encoding bench (benches/parquet.rs).
    pub fn encode_into<'e, W: std::io::Write + Send>(
        &mut self,
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
        for (g, batch) in batches {
            let max_bytes = self.cfg.max_file_bytes;
            let f = self.writer_for(&g.key, g.limit)?;
            f.writer
                .write(&batch)
                .map_err(|e| pq("cannot write", &f.tmp, e))?;
            f.rows += batch.num_rows() as u64;
            if let Some((first, last)) = g.range {
                f.range = Some(
                    f.range
                        .map_or((first, last), |(a, b)| (a.min(first), b.max(last))),
                );
            }
            let size = (f.writer.bytes_written() + f.writer.in_progress_size()) as u64;
            if g.close_after || size >= max_bytes {
                if let Some(f) = self.open.pop() {
                    self.closing.push(f);
                }
            }
        }
        Ok(Written { rejected })
    }

    /// Adds a row to the current group of its file, starting a new group
    /// (and closing the file after the current one) when the row's offset
    /// reaches the first offset of a committed file.
    fn group(&self, groups: &mut Vec<Group>, key: FileKey, offset: Option<i64>, row: usize) {
        let current = groups.iter().rposition(|g| g.key == key);
        if let Some(i) = current {
            let g = &mut groups[i];
            let reached = matches!((offset, g.limit), (Some(o), Some(l)) if o >= l);
            if !reached {
                g.rows.push(row);
                if let (Some(o), Some((a, b))) = (offset, g.range) {
                    g.range = Some((a.min(o), b.max(o)));
                }
                return;
            }
            g.close_after = true;
        }
        // The first rows for this file in the batch: an open file keeps
        // its limit unless the previous group closes it.
        let open = self.open.iter().find(|f| f.key == key);
        let limit = match (current, open, &offset) {
            (None, Some(f), Some(o)) if f.limit.is_none_or(|l| *o < l) => f.limit,
            (None, Some(f), None) => f.limit,
            _ => key
                .positions()
                .zip(offset)
                .and_then(|(k, o)| self.committed.next_start(&k, o)),
        };
        // A row that reaches the open file's limit closes that file first.
        let close_open = current.is_none()
            && open.is_some_and(|f| matches!((offset, f.limit), (Some(o), Some(l)) if o >= l));
        if close_open {
            groups.push(Group {
                key: key.clone(),
                rows: Vec::new(),
                range: None,
                limit: None,
                close_after: true,
            });
        }
        groups.push(Group {
            key,
            rows: vec![row],
            range: offset.map(|o| (o, o)),
            limit,
            close_after: false,
        });
    }

    /// Drops every file not committed, and its temporary file.
    fn drop_uncommitted(&mut self) {
        for f in self.open.drain(..).chain(self.closing.drain(..)) {
            drop(f.writer);
            let _ = std::fs::remove_file(&f.tmp);
        }
    }
}

/// The rows at `rows` (increasing) of `batch`: a slice when they follow
/// one another, as they mostly do (one hour, one partition), else a copy.
fn rows_of(batch: &RecordBatch, rows: &[usize]) -> Result<RecordBatch, String> {
    match (rows.first(), rows.last()) {
        (Some(&first), Some(&last)) if last - first + 1 == rows.len() => {
            Ok(batch.slice(first, rows.len()))
        }
        _ => {
            let at = rows
                .iter()
                .map(|&r| u32::try_from(r).map_err(|e| e.to_string()))
                .collect::<Result<arrow_array::UInt32Array, _>>()?;
            arrow_select::take::take_record_batch(batch, &at).map_err(|e| e.to_string())
        }
    }
}

#[async_trait]
impl Sink for ParquetSink {
    async fn write(&mut self, events: &[Event]) -> Result<Written, SinkError> {
        self.learn_positions(events).await?;
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

    /// Not at every pause of the input, which would make a small file per
    /// pause: when the oldest event held is `max_file_age` old, the events
    /// held reach `max_unacked_bytes`, or nothing came for 5 s. Files still roll by size and
    /// age in between, so a file holds at most `max_file_bytes`.
    fn flush_policy(&self) -> FlushPolicy {
        FlushPolicy {
            when_idle: false,
            max_writes: usize::MAX,
            max_bytes: self.cfg.max_unacked_bytes,
            max_age: Some(self.cfg.max_file_age),
            idle_after: Some(self.cfg.max_file_age.min(IDLE_COMMIT)),
        }
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
        if let Some((a, b)) = colliding_ids(schema) {
            return Err(fail(format!(
                "fields `{a}` and `{b}` of type `{type_name}` would have the same Parquet field id; rename one"
            )));
        }
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
            max_unacked_bytes: f
                .int("max_unacked_bytes")
                .and_then(|v| usize::try_from(v).ok())
                .unwrap_or(DEFAULT_MAX_UNACKED_BYTES),
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
