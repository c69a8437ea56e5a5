//! One owner per queue directory and process: a thread that owns the
//! `DiskQueue` (synchronous, single owner) and serves the sink's appends
//! and the readers' reads and acknowledgements, sent over a channel.
//!
//! Sinks and readers of the same queue share the owner through an `Arc`;
//! a process-wide registry, keyed by the directory's canonical path, hands
//! a piece built while another holds the owner (a reload, a second reading
//! pipeline) the same one. When the last holder drops it, the thread syncs
//! and closes the queue.
//!
//! The thread waits for a request at most until the next thing falls due:
//! an fsync under the interval policy, a check for a background fsync that
//! completed (writes and reads wait on `durable_seq`), a retry of an append
//! the full queue held back.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dab_api::connector::{Confirmed, Confirmer, ConnectorError};
use dab_diskq::{DiskQueue, Error, FRAME_HEADER};
use tokio::sync::oneshot;

use super::metrics::Shared;
use super::DiskConfig;

/// Records handed to a reader at most per read.
pub(super) const READ_RECORDS: usize = 1024;
/// Payload bytes handed to a reader at most per read.
const READ_BYTES: usize = 4 << 20;
/// How often a held-back append is tried again.
const FULL_RETRY: Duration = Duration::from_millis(5);
/// How often the thread looks whether a background fsync completed while
/// someone waits on it.
const DURABLE_POLL: Duration = Duration::from_millis(1);
/// How often the metrics snapshot is refreshed.
const METRICS_EVERY: Duration = Duration::from_millis(250);

/// What a read hands a reader: `(sequence number, record)` in order.
pub(super) type Records = Vec<(u64, Bytes)>;

pub(super) struct Append {
    pub records: Vec<Bytes>,
    /// Answered once every record is appended (or refused): the indices
    /// into `records` refused under `when_full: drop_newest`.
    pub taken: oneshot::Sender<Result<Vec<usize>, String>>,
    /// Answered once every appended record is durable.
    pub confirm: Confirmer,
}

enum Req {
    Append(Append),
    Read {
        reader: String,
        reply: oneshot::Sender<Result<Records, String>>,
    },
    Ack {
        reader: String,
        seq: u64,
    },
    AddReader {
        reader: String,
        reply: mpsc::Sender<Result<(), String>>,
    },
    Rewind {
        reader: String,
    },
}

/// The handle sinks and readers share.
pub(super) struct Owner {
    pub queue: String,
    pub config: DiskConfig,
    dir: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Req>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    pub metrics: Arc<Shared>,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owner")
            .field("queue", &self.queue)
            .field("dir", &self.dir)
            .finish()
    }
}

/// Set by an owner's thread once it has closed its queue.
#[derive(Default)]
struct Closed {
    done: Mutex<bool>,
    cv: Condvar,
}

impl Closed {
    fn set(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cv.notify_all();
    }

    /// Waits until set, at most `limit`; returns whether it was.
    fn wait(&self, limit: Duration) -> bool {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        let (done, _) = self
            .cv
            .wait_timeout_while(done, limit, |d| !*d)
            .unwrap_or_else(|e| e.into_inner());
        *done
    }
}

type Registry = HashMap<PathBuf, (Weak<Owner>, Arc<Closed>)>;

fn registry() -> &'static Mutex<Registry> {
    static OWNERS: OnceLock<Mutex<Registry>> = OnceLock::new();
    OWNERS.get_or_init(Mutex::default)
}

/// How long a new owner waits for the previous owner of its directory to
/// close the queue.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

impl Owner {
    /// The owner of `cfg.path` in this process, opened (recovering the
    /// queue) when there is none. `readers`, when given, are all the
    /// readers the queue has: opening adds them, and drops the position of
    /// any other (a pipeline removed or renamed since the last run), which
    /// would hold the queue's segments forever.
    pub(super) fn get(
        queue: &str,
        cfg: &DiskConfig,
        readers: Option<&[String]>,
    ) -> Result<Arc<Owner>, String> {
        std::fs::create_dir_all(&cfg.path)
            .map_err(|e| format!("disk queue directory {}: {e}", cfg.path.display()))?;
        let dir = cfg
            .path
            .canonicalize()
            .map_err(|e| format!("disk queue directory {}: {e}", cfg.path.display()))?;
        let mut owners = registry().lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, closed)) = owners.get(&dir).filter(|(w, _)| w.strong_count() == 0) {
            // The last holder of the previous owner is dropping it: its
            // thread is closing the queue. One process, one owner.
            if !closed.wait(CLOSE_WAIT) {
                return Err(format!(
                    "disk queue `{queue}`: the previous owner of {} did not close it within {CLOSE_WAIT:?}",
                    dir.display()
                ));
            }
        }
        owners.retain(|_, (w, _)| w.strong_count() > 0);
        if let Some(owner) = owners.get(&dir).and_then(|(w, _)| w.upgrade()) {
            if owner.queue != queue {
                return Err(format!(
                    "directory {} is already the disk queue `{}`'s; two queues cannot share a directory",
                    dir.display(),
                    owner.queue
                ));
            }
            if owner.config != *cfg {
                return Err(format!(
                    "disk queue `{queue}` is open with other settings in this process; restart dab to change them"
                ));
            }
            return Ok(owner);
        }
        let mut opts = cfg.options();
        opts.readers = readers.map(<[String]>::to_vec).unwrap_or_default();
        let mut q = DiskQueue::open(&dir, opts).map_err(|e| e.to_string())?;
        if let Some(keep) = readers {
            let gone: Vec<String> = q
                .readers()
                .filter(|r| !keep.iter().any(|k| k == r))
                .map(str::to_owned)
                .collect();
            for r in gone {
                tracing::warn!(
                    queue,
                    reader = r,
                    position = q.position(&r),
                    "disk queue: no pipeline reads as this reader any more; its position is dropped"
                );
                q.remove_reader(&r).map_err(|e| e.to_string())?;
            }
        }
        let rec = q.recovery();
        if rec.torn_records > 0 || !rec.positions_reset.is_empty() {
            tracing::warn!(
                queue,
                dir = %dir.display(),
                torn_bytes = rec.torn_bytes,
                positions_reset = ?rec.positions_reset,
                positions_clamped = ?rec.positions_clamped,
                "disk queue recovered: a torn tail was cut off"
            );
        }
        let metrics = Arc::new(Shared::new(queue));
        let (tx, rx) = mpsc::channel();
        let work = Work {
            q,
            chunk_bytes: (cfg.max_bytes / 8).clamp(64 << 10, 4 << 20),
            held: VecDeque::new(),
            waiting: VecDeque::new(),
            reads: Vec::new(),
            metrics: Arc::clone(&metrics),
            metrics_at: None,
            sync_failed: None,
        };
        let closed = Arc::new(Closed::default());
        let theirs = Arc::clone(&closed);
        let thread = std::thread::Builder::new()
            .name(format!("diskq-{queue}"))
            .spawn(move || {
                work.run(rx);
                theirs.set();
            })
            .map_err(|e| format!("disk queue `{queue}`: cannot start its thread: {e}"))?;
        let owner = Arc::new(Owner {
            queue: queue.to_owned(),
            config: cfg.clone(),
            dir: dir.clone(),
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            metrics,
        });
        owners.insert(dir, (Arc::downgrade(&owner), closed));
        Ok(owner)
    }

    fn send(&self, req: Req) -> bool {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        tx.as_ref().is_some_and(|tx| tx.send(req).is_ok())
    }

    fn gone(&self) -> String {
        format!("disk queue `{}`: its thread has stopped", self.queue)
    }

    /// Adds a reader (a new one starts at the oldest retained record).
    pub(super) fn add_reader(&self, reader: &str) -> Result<(), String> {
        let (reply, rx) = mpsc::channel();
        if !self.send(Req::AddReader {
            reader: reader.to_owned(),
            reply,
        }) {
            return Err(self.gone());
        }
        rx.recv().unwrap_or_else(|_| Err(self.gone()))
    }

    pub(super) fn append(&self, append: Append) {
        // A send that fails drops `taken` and `confirm`: the write fails.
        self.send(Req::Append(append));
    }

    /// The reader's next durable records; the answer waits until there are
    /// some. Dropping the receiver gives the request up (it is answered
    /// with nothing read when the thread gets to it).
    pub(super) fn read(&self, reader: &str) -> oneshot::Receiver<Result<Records, String>> {
        let (reply, rx) = oneshot::channel();
        self.send(Req::Read {
            reader: reader.to_owned(),
            reply,
        });
        rx
    }

    pub(super) fn ack(&self, reader: &str, seq: u64) {
        self.send(Req::Ack {
            reader: reader.to_owned(),
            seq,
        });
    }

    pub(super) fn rewind(&self, reader: &str) {
        self.send(Req::Rewind {
            reader: reader.to_owned(),
        });
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        // Closing the channel ends the thread, which syncs and closes the
        // queue; waiting for it lets the next owner of the directory (a
        // rebuild, a restart in a test) open it only after.
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// An append in progress: `next` is the first record not yet appended.
struct Pending {
    req: Append,
    next: usize,
    refused: Vec<usize>,
    /// The last sequence number appended so far (0: none).
    last: u64,
}

struct Work {
    q: DiskQueue,
    /// Records per `DiskQueue::append` are cut to about this many bytes,
    /// so that an append fits once readers free some room.
    chunk_bytes: u64,
    /// Appends the full queue holds back, oldest first.
    held: VecDeque<Pending>,
    /// Appended writes waiting to be durable: (last seq, confirmer), in
    /// sequence order.
    waiting: VecDeque<(u64, Confirmer)>,
    /// Reads waiting for durable records.
    reads: Vec<(String, oneshot::Sender<Result<Records, String>>)>,
    metrics: Arc<Shared>,
    metrics_at: Option<Instant>,
    /// The last sync failure logged, until a sync succeeds.
    sync_failed: Option<String>,
}

enum Step {
    Done,
    Full,
}

impl Work {
    fn run(mut self, rx: mpsc::Receiver<Req>) {
        self.refresh_metrics(true);
        loop {
            let timeout = self.timeout();
            match rx.recv_timeout(timeout) {
                Ok(req) => {
                    self.handle(req);
                    // Take in whatever else is queued before the due work.
                    while let Ok(req) = rx.try_recv() {
                        self.handle(req);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.progress();
        }
        self.refresh_metrics(true);
        let queue = self.metrics.queue.clone();
        // Whatever still waits is failed by dropping its answer.
        if let Err(e) = self.q.close() {
            tracing::error!(queue, error = %e, "disk queue: closing failed");
        }
    }

    fn timeout(&self) -> Duration {
        let mut t = self.q.sync_due_in().unwrap_or(METRICS_EVERY);
        t = t.min(METRICS_EVERY);
        if !self.held.is_empty() {
            t = t.min(FULL_RETRY);
        }
        let behind = self.q.durable_seq() + 1 < self.q.next_seq();
        if behind && (!self.waiting.is_empty() || !self.reads.is_empty()) {
            t = t.min(DURABLE_POLL);
        }
        t
    }

    fn handle(&mut self, req: Req) {
        match req {
            Req::Append(req) => {
                let pending = Pending {
                    req,
                    next: 0,
                    refused: Vec::new(),
                    last: 0,
                };
                if self.held.is_empty() {
                    if let Some(p) = self.try_append(pending) {
                        self.held.push_back(p);
                    }
                } else {
                    self.held.push_back(pending);
                }
            }
            Req::Read { reader, reply } => {
                self.serve(&reader, reply);
            }
            Req::Ack { reader, seq } => {
                // An ack beyond what this reader read is a predecessor's
                // (a reader rebuilt since): the records come again.
                if let Err(e) = self.q.ack(&reader, seq) {
                    tracing::debug!(reader, seq, error = %e, "disk queue: ack not taken");
                }
            }
            Req::AddReader { reader, reply } => {
                let _ = reply.send(self.q.add_reader(&reader).map_err(|e| e.to_string()));
            }
            Req::Rewind { reader } => {
                if let Err(e) = self.q.rewind(&reader) {
                    tracing::warn!(reader, error = %e, "disk queue: rewind failed");
                }
            }
        }
    }

    /// Appends what it can of `p`; returns it when the full queue holds
    /// the rest back.
    fn try_append(&mut self, mut p: Pending) -> Option<Pending> {
        match self.append_chunks(&mut p) {
            Ok(Step::Full) => return Some(p),
            Ok(Step::Done) => {
                let _ = p.req.taken.send(Ok(p.refused));
                if p.last == 0 {
                    p.req.confirm.send(Confirmed::Delivered {
                        rejected: Vec::new(),
                    });
                } else {
                    self.waiting.push_back((p.last, p.req.confirm));
                }
            }
            Err(e) => {
                let why = format!("disk queue `{}`: {e}", self.metrics.queue);
                let _ = p.req.taken.send(Err(why.clone()));
                p.req
                    .confirm
                    .send(Confirmed::Failed(ConnectorError::Other(why)));
            }
        }
        None
    }

    fn append_chunks(&mut self, p: &mut Pending) -> Result<Step, Error> {
        let records = &p.req.records;
        while p.next < records.len() {
            let mut end = p.next;
            let mut bytes = 0u64;
            while end < records.len()
                && (end == p.next
                    || bytes + (records[end].len() + FRAME_HEADER) as u64 <= self.chunk_bytes)
            {
                bytes += (records[end].len() + FRAME_HEADER) as u64;
                end += 1;
            }
            match self.q.append(&records[p.next..end]) {
                Ok(a) => {
                    if a.end > a.first {
                        p.last = a.end - 1;
                    }
                    if a.refused > 0 {
                        // Full under drop_newest: the rest of the write is
                        // the newest, refused whole (a later, smaller
                        // record must not slip in behind a refused one).
                        self.metrics.add_refused((records.len() - end) as u64);
                        p.refused.extend(end - a.refused..records.len());
                        p.next = records.len();
                        break;
                    }
                    p.next = end;
                }
                Err(Error::Full { .. }) => return Ok(Step::Full),
                Err(e) => return Err(e),
            }
        }
        Ok(Step::Done)
    }

    /// Answers a read at once when the reader has durable records, else
    /// parks it. Returns whether it was answered.
    fn serve(&mut self, reader: &str, reply: oneshot::Sender<Result<Records, String>>) -> bool {
        if reply.is_closed() {
            return true;
        }
        match self.q.read(reader, READ_RECORDS, READ_BYTES) {
            Ok(batch) if batch.is_empty() => {
                self.reads.push((reader.to_owned(), reply));
                false
            }
            Ok(batch) => {
                let mut all = Vec::with_capacity(batch.payload_bytes());
                for r in &batch {
                    all.extend_from_slice(r.bytes);
                }
                let all = Bytes::from(all);
                let mut at = 0;
                let records = batch
                    .iter()
                    .map(|r| {
                        let b = all.slice(at..at + r.bytes.len());
                        at += r.bytes.len();
                        (r.seq, b)
                    })
                    .collect();
                let _ = reply.send(Ok(records));
                true
            }
            Err(e) => {
                let _ = reply.send(Err(format!("disk queue `{}`: {e}", self.metrics.queue)));
                true
            }
        }
    }

    fn progress(&mut self) {
        match self.q.sync_if_due() {
            Ok(_) => self.sync_failed = None,
            Err(e) => {
                // A poisoned queue fails every sync: logged once, not at
                // every tick.
                let e = e.to_string();
                if self.sync_failed.as_deref() != Some(e.as_str()) {
                    tracing::error!(queue = %self.metrics.queue, error = %e, "disk queue: sync failed");
                    self.sync_failed = Some(e);
                }
            }
        }
        while let Some(p) = self.held.pop_front() {
            if p.req.taken.is_closed() {
                // The writer gave up (a forced stop): drop what is left.
                continue;
            }
            if let Some(p) = self.try_append(p) {
                self.held.push_front(p);
                break;
            }
        }
        let durable = self.q.durable_seq();
        while self
            .waiting
            .front()
            .is_some_and(|(last, _)| *last <= durable)
        {
            if let Some((_, c)) = self.waiting.pop_front() {
                c.send(Confirmed::Delivered {
                    rejected: Vec::new(),
                });
            }
        }
        if !self.reads.is_empty() {
            for (reader, reply) in std::mem::take(&mut self.reads) {
                self.serve(&reader, reply);
            }
        }
        self.metrics
            .set_held(self.held.iter().map(|p| p.req.records.len() - p.next).sum());
        self.refresh_metrics(false);
    }

    fn refresh_metrics(&mut self, now: bool) {
        if !now && self.metrics_at.is_some_and(|t| t.elapsed() < METRICS_EVERY) {
            return;
        }
        self.metrics_at = Some(Instant::now());
        let m = self.q.metrics();
        self.metrics.set(m);
    }
}
