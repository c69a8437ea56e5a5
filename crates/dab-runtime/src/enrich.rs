//! `Enrich(Table, on = field, into = "key", miss = ...)` at run time (SPEC
//! section 9): the table's rows, loaded at start and kept current, and the
//! stage that merges the row an event's key finds into its JSON payload.
//!
//! A table is held whole in memory. A `kind: file` table is read and
//! parsed by `dab_plan::table` (the parser `dab validate` holds the file
//! to); a thread per table (`table-<name>`) looks at the file's
//! modification time, size and inode every 500 ms and, on a change, reads
//! and parses it again and swaps the rows in, so an editor's save and an
//! atomic rename are both seen. A reload that fails keeps the rows loaded
//! before, logs the file and line, and is counted. Any other kind (a
//! compacted Kafka topic) comes from a connector's feed
//! (`dab_api::table`): read to its end before the stage starts, then kept
//! current change by change. Threads hold the table weakly and end once no
//! stage uses it. Each `Enrich` stage has a table of its own; a reload that
//! leaves the stage unchanged hands its table to the new pipeline
//! (`StageState`).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use dab_api::metrics::{ConnectorMetrics, Sample};
use dab_api::table::{Change, TableFactory, TableRows};
use dab_api::{Batch, Event, Text};
use dab_plan::model::{Miss, Operand, TableSource, TableSpec};

use crate::ops::enrich::Config as Enrich;
use dab_plan::table::{Rows, TableFormat};
use serde_json::value::RawValue;

use crate::metrics::{Counter, DropReason, PipelineMetrics, Undelivered};
use crate::output::OutputTx;
use crate::predicate::key_text;
use crate::reliability::Tracker;

/// How often a table's file is looked at for a change.
pub const POLL: Duration = Duration::from_millis(500);

/// A table's rows, current as of its last good load or change.
#[derive(Debug)]
pub struct Table {
    name: String,
    rows: RwLock<Rows>,
    /// Whole reloads of a file.
    reloads: Counter,
    /// Failed reloads of a file, input a feed could not apply.
    reload_errors: Counter,
    /// Rows a feed put or deleted.
    changes: Counter,
    row_count: AtomicU64,
}

/// A `kind: file` table's file.
#[derive(Debug, Clone)]
struct TableFile {
    path: String,
    key: String,
    format: TableFormat,
}

/// What identifies one version of a file: a write changes the time or the
/// size, an atomic rename the inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &str) -> io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode,
    })
}

impl TableFile {
    /// Reads and parses the file; the error names the file and line.
    fn read(&self) -> Result<Rows, String> {
        let bytes = std::fs::read(&self.path)
            .map_err(|e| format!("cannot read table file `{}`: {e}", self.path))?;
        dab_plan::table::parse(&bytes, self.format, &self.key)
            .map_err(|e| format!("`{}` line {}: {}", self.path, e.line, e.message))
    }
}

impl Table {
    fn new(name: &str, rows: Rows) -> Arc<Table> {
        Arc::new(Table {
            name: name.to_owned(),
            row_count: AtomicU64::new(rows.len() as u64),
            rows: RwLock::new(rows),
            reloads: Counter::default(),
            reload_errors: Counter::default(),
            changes: Counter::default(),
        })
    }

    /// Loads the table and starts keeping it current: a file through a
    /// watcher thread, any other kind through the feed of its factory in
    /// `feeds`. Fails when the file cannot be read or parsed (naming the
    /// file and line), or the feed cannot read its source to the end.
    pub fn open(spec: &TableSpec, feeds: &[Box<dyn TableFactory>]) -> Result<Arc<Table>, String> {
        let name = &spec.name;
        let table = match &spec.source {
            TableSource::File { path, key, format } => {
                let file = TableFile {
                    path: path.clone(),
                    key: key.clone(),
                    format: *format,
                };
                let before = stamp(path).ok();
                let rows = file.read().map_err(|e| format!("table `{name}`: {e}"))?;
                let table = Table::new(name, rows);
                let weak = Arc::downgrade(&table);
                std::thread::Builder::new()
                    .name(format!("table-{name}"))
                    .spawn(move || watch(&weak, &file, before))
                    .map_err(|e| format!("table `{name}`: cannot start its file watcher: {e}"))?;
                table
            }
            TableSource::Feed { kind, fields } => {
                let factory = feeds.iter().find(|f| f.kind() == kind).ok_or_else(|| {
                    format!("table `{name}`: this build of dab cannot read `kind: {kind}` tables")
                })?;
                let feed = factory
                    .build(name, fields)
                    .map_err(|e| format!("table `{name}`: {}", e.reason))?;
                let table = Table::new(name, Rows::default());
                let rows: Arc<dyn TableRows> = table.clone();
                feed.start(Arc::downgrade(&rows))
                    .map_err(|e| format!("table `{name}`: {e}"))?;
                table
            }
        };
        tracing::info!(table = %name, rows = table.len(), "table loaded");
        Ok(table)
    }

    /// The rows as they are now; held for one batch, never across an await.
    fn rows(&self) -> RwLockReadGuard<'_, Rows> {
        self.rows
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn len(&self) -> u64 {
        self.row_count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads the file again: the new rows on success, else the old kept
    /// and the failure logged and counted.
    fn reload(&self, file: &TableFile) {
        match file.read() {
            Ok(rows) => {
                let n = rows.len() as u64;
                *self
                    .rows
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = rows;
                self.row_count.store(n, Ordering::Relaxed);
                self.reloads.add(1);
                tracing::info!(table = %self.name, path = %file.path, rows = n, "table reloaded");
            }
            Err(e) => {
                self.reload_errors.add(1);
                tracing::error!(
                    table = %self.name,
                    error = %e,
                    kept_rows = self.len(),
                    "table reload failed; keeping the rows loaded before"
                );
            }
        }
    }
}

impl TableRows for Table {
    fn apply(&self, changes: Vec<Change>) {
        let n = changes.len() as u64;
        let mut rows = self
            .rows
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (key, row) in changes {
            match row {
                Some(row) => rows.put(key, row),
                None => rows.remove(&key),
            }
        }
        self.row_count.store(rows.len() as u64, Ordering::Relaxed);
        self.changes.add(n);
    }

    fn failed(&self, reason: String) {
        self.reload_errors.add(1);
        tracing::error!(table = %self.name, error = %reason, "table input skipped; keeping the rows");
    }
}

/// The watcher thread: a reload for each new version of the file, until
/// the table is no longer used.
fn watch(table: &Weak<Table>, file: &TableFile, mut seen: Option<Stamp>) {
    loop {
        std::thread::sleep(POLL);
        let Some(t) = table.upgrade() else { return };
        // Stamped before reading: a change during the read is seen again.
        let now = stamp(&file.path).ok();
        if now != seen {
            seen = now;
            t.reload(file);
        }
    }
}

/// Hits and misses of one `Enrich` stage.
#[derive(Debug, Default)]
pub struct EnrichCounts {
    hits: Counter,
    misses: Counter,
}

/// A compiled `Enrich`.
#[derive(Debug)]
pub struct EnrichOp {
    table: Arc<Table>,
    on: Operand,
    into: String,
    miss: Miss,
    on_error: Option<OutputTx>,
    counts: Arc<EnrichCounts>,
    /// `dab.error` of an event sent to `OnError` with `miss = error`.
    reason: Text,
}

impl EnrichOp {
    /// Compiles the stage over `table`: the table of the same stage in the
    /// pipeline a reload replaced, or the one its build opened
    /// (`crate::ops::enrich`).
    pub fn new(e: &Enrich, on_error: Option<OutputTx>, table: Arc<Table>) -> EnrichOp {
        EnrichOp {
            reason: Text::from(format!(
                "Enrich: no row of table `{}` for {}",
                e.table.name, e.on
            )),
            table,
            on: e.on.clone(),
            into: e.into.clone(),
            miss: e.miss,
            on_error,
            counts: Arc::default(),
        }
    }

    pub fn table(&self) -> &Arc<Table> {
        &self.table
    }

    /// The stage's samples, labelled with its pipeline and position.
    pub fn metrics(&self, pipeline: &str, stage: usize) -> Arc<dyn ConnectorMetrics> {
        Arc::new(EnrichMetrics {
            pipeline: pipeline.to_owned(),
            stage: stage.to_string(),
            table: Arc::clone(&self.table),
            counts: Arc::clone(&self.counts),
        })
    }

    /// Enriches every event of the batch; misses are kept, dropped or
    /// failed as `miss` says.
    pub async fn apply(&self, batch: &mut Batch, m: &PipelineMetrics, tracker: Option<&Tracker>) {
        let mut missed = Vec::new();
        let mut kept = Vec::with_capacity(batch.events.len());
        let (mut hits, mut misses) = (0, 0);
        {
            let rows = self.table.rows();
            for mut e in batch.events.drain(..) {
                let hit = key_text(&e, &self.on)
                    .and_then(|k| rows.get(&k))
                    .is_some_and(|row| merge(&mut e, &self.into, row));
                if hit {
                    hits += 1;
                    kept.push(e);
                } else {
                    misses += 1;
                    if self.miss == Miss::Keep {
                        kept.push(e);
                    } else {
                        missed.push(e);
                    }
                }
            }
        }
        self.counts.hits.add(hits);
        self.counts.misses.add(misses);
        batch.events = kept;
        if missed.is_empty() {
            return;
        }
        let n = missed.len() as u64;
        match (self.miss, &self.on_error) {
            (Miss::Error, Some(target)) => {
                m.failed(n);
                for e in &mut missed {
                    e.set_tag(
                        Text::from_static(dab_api::event::ERROR_TAG),
                        self.reason.clone(),
                    );
                }
                if let Err(b) = target.send(Batch::new(missed, batch.ack.share())).await {
                    m.undelivered.add(Undelivered::ReaderGone, n);
                    b.ack.fail();
                }
            }
            (Miss::Error, None) => {
                m.failed(n);
                m.dropped(DropReason::EnrichError, n);
                if let Some(t) = tracker {
                    t.dropped(&missed);
                }
            }
            _ => {
                m.dropped(DropReason::EnrichMiss, n);
                if let Some(t) = tracker {
                    t.dropped(&missed);
                }
            }
        }
    }
}

/// Puts `row` (the JSON text of an object) into `e`'s payload under
/// `into`, replacing what was there; the other members keep their order
/// and their values' text. False when the payload is not a JSON object.
pub(crate) fn merge(e: &mut Event, into: &str, row: &str) -> bool {
    let Ok(text) = std::str::from_utf8(&e.message) else {
        return false;
    };
    let Ok(Members(members)) = serde_json::from_str::<Members<'_>>(text) else {
        return false;
    };
    let mut out = String::with_capacity(text.len() + into.len() + row.len() + 8);
    out.push('{');
    let mut put = false;
    for (k, v) in &members {
        let value = if k == into {
            if put {
                // A key given twice: the row replaces both.
                continue;
            }
            put = true;
            row
        } else {
            v.get()
        };
        if out.len() > 1 {
            out.push(',');
        }
        push_member(&mut out, k, value);
    }
    if !put {
        if out.len() > 1 {
            out.push(',');
        }
        push_member(&mut out, into, row);
    }
    out.push('}');
    e.message = Bytes::from(out);
    // The arrival bytes hold the old payload.
    e.touch();
    true
}

fn push_member(out: &mut String, key: &str, value: &str) {
    // Serialising a string cannot fail.
    out.push_str(&serde_json::Value::from(key).to_string());
    out.push(':');
    out.push_str(value);
}

/// A JSON object's members in order, each value as its text.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<'de>(std::marker::PhantomData<&'de ()>);
        impl<'de> serde::de::Visitor<'de> for Visit<'de> {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Members<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some(member) = a.next_entry::<String, &'de RawValue>()? {
                    out.push(member);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
    }
}

/// One `Enrich` stage's samples: hits and misses, and its table's rows,
/// reloads and failed reloads.
#[derive(Debug)]
struct EnrichMetrics {
    pipeline: String,
    stage: String,
    table: Arc<Table>,
    counts: Arc<EnrichCounts>,
}

impl ConnectorMetrics for EnrichMetrics {
    fn samples(&self, out: &mut Vec<Sample>) {
        let labels = |s: Sample| {
            s.label("pipeline", self.pipeline.clone())
                .label("stage", self.stage.clone())
                .label("table", self.table.name.clone())
        };
        for (result, n) in [
            ("hit", self.counts.hits.get()),
            ("miss", self.counts.misses.get()),
        ] {
            out.push(
                labels(Sample::counter(
                    "dab_enrich_total",
                    "Events an Enrich stage looked up, by result: hit (a row was merged) or miss",
                    n,
                ))
                .label("result", result),
            );
        }
        out.push(labels(Sample::gauge(
            "dab_table_rows",
            "Rows (distinct keys) of the table an Enrich stage reads, as of its last good load",
            self.table.len() as f64,
        )));
        out.push(labels(Sample::counter(
            "dab_table_reloads_total",
            "Reloads of a table after its file changed",
            self.table.reloads.get(),
        )));
        out.push(labels(Sample::counter(
            "dab_table_changes_total",
            "Rows a table's feed (a Kafka topic) put or deleted",
            self.table.changes.get(),
        )));
        out.push(labels(Sample::counter(
            "dab_table_reload_errors_total",
            "Reloads of a table file that failed (unreadable, a bad line), or feed messages a table could not take; the rows are kept",
            self.table.reload_errors.get(),
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(payload: &str, into: &str, row: &str) -> Option<String> {
        let mut e = Event {
            message: Bytes::from(payload.to_owned()),
            ..Event::default()
        }
        .with_raw(dab_api::event::RawCodec::Json, Bytes::from_static(b"{}"));
        merge(&mut e, into, row).then(|| {
            assert!(
                e.raw(dab_api::event::RawCodec::Json).is_none(),
                "a changed event forgets its arrival bytes"
            );
            String::from_utf8(e.message.to_vec()).expect("utf-8")
        })
    }

    #[test]
    fn merge_adds_replaces_and_keeps_order() {
        assert_eq!(
            merged(r#"{"b": 1, "a": [1, 2]}"#, "t", r#"{"n":"x"}"#).as_deref(),
            Some(r#"{"b":1,"a":[1, 2],"t":{"n":"x"}}"#)
        );
        assert_eq!(
            merged(r#"{"t": 0, "a": 1, "t": 2}"#, "t", "{}").as_deref(),
            Some(r#"{"t":{},"a":1}"#)
        );
        assert_eq!(merged("{}", "t", "{}").as_deref(), Some(r#"{"t":{}}"#));
        assert_eq!(
            merged(r#"{"k\"q": 1}"#, "a\"b", "{}").as_deref(),
            Some(r#"{"k\"q":1,"a\"b":{}}"#)
        );
    }

    #[test]
    fn merge_refuses_what_is_not_an_object() {
        for payload in [
            "[1]",
            "3",
            "\"s\"",
            "",
            "{",
            "not json",
            "{\"a\": 1} trailing",
        ] {
            assert_eq!(merged(payload, "t", "{}"), None, "{payload}");
        }
    }
}
