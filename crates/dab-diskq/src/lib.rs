//! DAB's disk queue storage engine: the `kind: disk` queue of SPEC section
//! 10 (issue 14 item 6). Synchronous and single-owner: `dab run` calls it
//! from one thread per queue directory (`dab-connectors`' `disk` module).
//! Records are opaque byte strings.
//!
//! # On-disk layout
//!
//! ```text
//! DIR/seg-00000000000000000001.log   segment files, named by their first
//! DIR/seg-00000000000000004097.log   sequence number (20 digits)
//! DIR/readers/<name>.pos             one position file per reader
//! ```
//!
//! Sequence numbers start at 1 and increase by one per record; `0` means
//! "none". A segment holds the records from its first sequence number up to
//! the next segment's first. Only the last segment (the *active* one) is
//! appended to; a new one is started when the next record would take the
//! active segment past [`Options::segment_bytes`] (a record is never split
//! across segments, so a record may be at most `segment_bytes` minus the
//! frame header). Starting a segment first fsyncs the one it seals, so
//! only the active segment can hold records that are not yet durable.
//!
//! # Record frame
//!
//! Each record is one frame ([`FRAME_HEADER`] = 24 bytes, then the payload):
//!
//! ```text
//! crc32 u32 | len u32 | seq u64 | append time u64 (unix ns) | payload (len bytes)
//! ```
//!
//! little endian; the CRC-32 (IEEE, the `crc32fast` crate) covers length,
//! sequence number, time and payload. The sequence number in each frame must
//! be the one its place implies, so a frame from elsewhere is caught too.
//!
//! # Durability
//!
//! [`FsyncPolicy::Always`]: [`DiskQueue::append`] returns after the batch was
//! written and fdatasync'ed. [`FsyncPolicy::Interval`]: append writes the
//! batch to the file (so it survives a killed process, not a power loss)
//! and, once the interval since the last sync has passed, starts an
//! fdatasync of the active segment on the queue's own fsync thread (one in
//! flight at a time) without waiting for it; the caller also calls
//! [`DiskQueue::sync_if_due`] on a timer (see [`DiskQueue::sync_due_in`]) so
//! an idle writer's last records get synced, and [`DiskQueue::sync`] (which
//! waits) when it must. Either way [`DiskQueue::durable_seq`] is the highest
//! sequence number known fsynced: a writer's records `first..end` (from
//! [`Appended`]) may be acknowledged to its source exactly when
//! `durable_seq() >= end - 1`. A failed fsync poisons the queue (every
//! later write returns [`Error::Poisoned`]): after one, what reached the
//! disk is unknown until the queue is reopened and recovered. A failed
//! write is cut back off the segment and only fails its append; so does a
//! new segment that cannot be created (the sealed one stays active): the
//! queue rides out a full disk and goes on once there is room again.
//!
//! # Readers and acknowledgements
//!
//! Each named reader has its own position: the highest sequence number it
//! acknowledged. [`DiskQueue::read`] hands out **durable records only**
//! (`seq <= durable_seq()`) as a [`Batch`] (the frames in one buffer, the
//! records slices of it), in order, from the reader's read point, which
//! starts after its position on open; [`DiskQueue::ack`] moves the position
//! (acknowledging `seq` acknowledges everything up to it, and only records
//! read may be acknowledged). Positions are written to disk crash-safely
//! (two checksummed slots overwritten in turn and fdatasync'ed; see
//! `position.rs`) at each ack under `Always`, and at each sync under
//! `Interval`;
//! after a crash a reader resumes after its last *written* position, so it
//! gets every record at least once and may get records it had acknowledged
//! since that write again. A reader named on open ([`Options::readers`]) or
//! added ([`DiskQueue::add_reader`]) that the queue has not seen starts at
//! the oldest retained record. Readers stay until
//! [`DiskQueue::remove_reader`].
//!
//! # Retention and `max_bytes`
//!
//! After positions are written, sealed segments whose records every reader
//! acknowledged are deleted. A queue with no reader deletes nothing: it
//! keeps everything until `max_bytes`. Disk usage is the sum of segment file
//! sizes; an append that would take it past [`Options::max_bytes`] fails
//! whole with [`Error::Full`] (back pressure), or under
//! [`WhenFull::DropNewest`] keeps the records that fit and refuses (and
//! counts) the rest. So usage never exceeds `max_bytes`.
//!
//! # Recovery
//!
//! Opening scans the active (last) segment from its start and cuts it
//! (truncates the file) at the first frame that is partial, fails its
//! checksum or carries the wrong sequence number: a torn tail. What was cut
//! is reported in [`Recovery`] and in [`Metrics`]. Sealed segments are not
//! scanned on open (they were fsynced before they were sealed); if a reader
//! meets a damaged frame in one, it skips the rest of that segment, counts
//! the records and bytes it skipped ([`Metrics::skipped_records`]), and goes
//! on with the next segment. A damaged frame among the durable records of
//! the active segment is an [`Error::Corrupt`].
//!
//! # Metrics
//!
//! [`DiskQueue::metrics`] returns plain figures. The age of the oldest
//! unacknowledged record comes from the reader's records in flight (the
//! append time of each record read and not yet acknowledged is kept in
//! memory, 16 bytes a record) or, when none is, from the header of the
//! reader's next record on disk.
//!
//! One process may open a directory at a time: [`DiskQueue::open`] takes
//! an exclusive lock on `DIR/lock` (`flock`), held until the queue is
//! dropped; a second process gets [`Error::Locked`]. The lock goes with
//! the process, so a killed one leaves nothing to clean up.
//!
//! Architecture invariant: this crate depends on no other DAB crate and
//! knows nothing of events, tokio or the runtime; it stores bytes.

mod background;
mod batch;
mod frame;
mod position;
mod queue;
mod segment;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use batch::{Batch, RecordRef};
pub use frame::FRAME_HEADER;
pub use queue::DiskQueue;

/// When appended records are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every append returns after fdatasync.
    Always,
    /// An fsync is started on the queue's fsync thread by the first
    /// append or [`DiskQueue::sync_if_due`] at least this long after the
    /// last one; [`DiskQueue::durable_seq`] moves when it completes.
    Interval(Duration),
}

/// What an append does when the queue has no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Refuse the whole batch with [`Error::Full`]: back pressure.
    Block,
    /// Keep the records that fit, refuse and count the rest.
    DropNewest,
}

/// How a queue is opened.
#[derive(Debug, Clone)]
pub struct Options {
    /// Most bytes the segment files may take together.
    pub max_bytes: u64,
    /// Size at which a new segment is started.
    pub segment_bytes: u64,
    pub fsync: FsyncPolicy,
    pub when_full: WhenFull,
    /// Readers to have; new ones start at the oldest retained record.
    pub readers: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_bytes: 1 << 30,
            segment_bytes: 64 << 20,
            fsync: FsyncPolicy::Interval(Duration::from_millis(100)),
            when_full: WhenFull::Block,
            readers: Vec::new(),
        }
    }
}

/// The records an append took: sequence numbers `first..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub first: u64,
    /// One past the last record taken (`first` when none was).
    pub end: u64,
    /// Records refused for lack of room (under [`WhenFull::DropNewest`]):
    /// the last `refused` of the batch.
    pub refused: usize,
}

/// What opening found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// 1 when the active segment ended in a torn or damaged frame, else 0
    /// (what follows the first bad frame cannot be told apart into records).
    pub torn_records: u64,
    /// Bytes cut off the active segment.
    pub torn_bytes: u64,
    /// Whole records found in the active segment.
    pub tail_records: u64,
    /// Readers whose position file was damaged: they restart at the oldest
    /// retained record.
    pub positions_reset: Vec<String>,
    /// Readers whose position was past the last record on disk (records
    /// lost beyond what fsync promised): moved back to it.
    pub positions_clamped: Vec<String>,
}

/// Figures of a queue, read with [`DiskQueue::metrics`]. Counters count
/// since open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metrics {
    pub bytes_on_disk: u64,
    pub segments: u64,
    /// Oldest retained sequence number (`next_seq` when none is).
    pub oldest_seq: u64,
    pub next_seq: u64,
    pub durable_seq: u64,
    pub readers: u64,
    pub records_appended: u64,
    pub bytes_appended: u64,
    pub records_read: u64,
    /// Records acknowledged, summed over readers.
    pub records_acked: u64,
    /// Records refused under [`WhenFull::DropNewest`].
    pub records_refused: u64,
    /// Appends that failed with [`Error::Full`].
    pub full_rejections: u64,
    pub torn_records: u64,
    pub torn_bytes: u64,
    /// Records and bytes readers skipped past damaged frames in sealed segments.
    pub skipped_records: u64,
    pub skipped_bytes: u64,
    /// Age of the oldest record some reader has not acknowledged (of the
    /// oldest retained record when there is no reader); `None` when there
    /// is none.
    pub oldest_unacked_age: Option<Duration>,
}

/// Errors of the disk queue.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("disk queue: {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Back pressure: nothing of the batch was written.
    #[error("disk queue is full: {needed} bytes needed, {free} of max_bytes {max} free")]
    Full { needed: u64, free: u64, max: u64 },
    #[error("disk queue: a record of {len} bytes does not fit a segment of {segment_bytes} bytes")]
    RecordTooLarge { len: usize, segment_bytes: u64 },
    #[error("disk queue: no reader named {0:?}")]
    UnknownReader(String),
    #[error("disk queue: {0:?} cannot name a reader (1 to 128 of A-Z a-z 0-9 _ - ., not starting with a dot)")]
    ReaderName(String),
    #[error(
        "disk queue: reader {reader:?} acknowledged {seq}, beyond the last record it read ({read})"
    )]
    AckBeyondRead { reader: String, seq: u64, read: u64 },
    #[error("disk queue: damaged record {seq} in the active segment {path} at byte {offset}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        seq: u64,
    },
    /// Another process has the directory open.
    #[error("disk queue: {0} is open in another process (its `lock` file is locked); one process per queue directory")]
    Locked(PathBuf),
    #[error("disk queue: invalid option: {0}")]
    Options(&'static str),
    /// A write or fsync failed earlier; the queue refuses further writes
    /// (what reached the disk is unknown until it is reopened).
    #[error("disk queue is unusable after an earlier failure: {0}")]
    Poisoned(String),
}

/// Result of the disk queue.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
