//! The queue: opening and recovery, appends under the fsync policy, named
//! readers, acknowledgements and the deletion of acknowledged segments.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::background::Background;
use crate::frame::{self, FRAME_HEADER};
use crate::position::{self, PositionFile};
use crate::segment::{self, Cursor, Segment, Stop};
use crate::{
    io_err, Appended, Batch, Error, FsyncPolicy, Metrics, Options, Recovery, Result, WhenFull,
};

/// A disk queue opened on a directory. See the crate documentation.
#[derive(Debug)]
pub struct DiskQueue {
    /// Held locked while the queue is open (one process per directory).
    _lock: File,
    dir: PathBuf,
    readers_dir: PathBuf,
    opts: Options,
    /// Oldest first; the last one is the active segment.
    segments: VecDeque<Segment>,
    active: File,
    next_seq: u64,
    durable_seq: u64,
    /// The active segment holds bytes not yet fsynced.
    unsynced: bool,
    /// Some reader's position moved since it was last written.
    positions_dirty: bool,
    last_sync: Instant,
    readers: BTreeMap<String, Reader>,
    bytes_on_disk: u64,
    counters: Metrics,
    recovery: Recovery,
    poisoned: Option<String>,
    buf: Vec<u8>,
    /// The fsync thread of the `Interval` policy, started at its first use.
    background: Option<Background>,
}

#[derive(Debug)]
struct Reader {
    acked: u64,
    /// The position last written to its file.
    written: u64,
    file: PositionFile,
    /// The next record to hand out.
    next: u64,
    cursor: Option<Cursor>,
    /// (seq, append nanos) of records handed out and not yet acknowledged.
    in_flight: VecDeque<(u64, u64)>,
}

impl Reader {
    fn at(acked: u64, written: u64, file: PositionFile) -> Reader {
        Reader {
            acked,
            written,
            file,
            next: acked + 1,
            cursor: None,
            in_flight: VecDeque::new(),
        }
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Where segment `i` ends: the next segment's first sequence number, or
/// `next_seq` for the active one.
fn seg_end(segments: &VecDeque<Segment>, i: usize, next_seq: u64) -> u64 {
    segments.get(i + 1).map_or(next_seq, |s| s.first)
}

/// The index of the segment holding `seq` (the first one when `seq` is
/// older than every retained record).
fn seg_index(segments: &VecDeque<Segment>, seq: u64) -> usize {
    segments
        .partition_point(|s| s.first <= seq)
        .saturating_sub(1)
}

impl DiskQueue {
    /// Opens (creating if needed) the queue in `dir`, cutting a torn tail
    /// off the active segment and adding the readers of `opts` it lacks.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<DiskQueue> {
        if opts.segment_bytes <= FRAME_HEADER as u64 {
            return Err(Error::Options("segment_bytes must exceed the frame header"));
        }
        if opts.max_bytes == 0 {
            return Err(Error::Options("max_bytes must be positive"));
        }
        if let Some(bad) = opts.readers.iter().find(|r| !position::valid_name(r)) {
            return Err(Error::ReaderName(bad.clone()));
        }
        let dir = dir.as_ref().to_path_buf();
        let readers_dir = dir.join("readers");
        fs::create_dir_all(&readers_dir).map_err(io_err(&readers_dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(Error::Locked(dir)),
            Err(fs::TryLockError::Error(e)) => {
                return Err(Error::Io {
                    path: lock_path,
                    source: e,
                })
            }
        }

        let mut firsts = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            if let Some(first) = entry.file_name().to_str().and_then(segment::parse_name) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut segments = VecDeque::new();
        for first in firsts {
            let path = dir.join(segment::file_name(first));
            let len = fs::metadata(&path).map_err(io_err(&path))?.len();
            segments.push_back(Segment { first, len, path });
        }
        let mut recovery = Recovery::default();
        let next_seq;
        let active;
        if let Some(tail) = segments.back_mut() {
            let scan = segment::scan(&tail.path, tail.first)?;
            active = OpenOptions::new()
                .append(true)
                .open(&tail.path)
                .map_err(io_err(&tail.path))?;
            if scan.good_len < scan.file_len {
                active.set_len(scan.good_len).map_err(io_err(&tail.path))?;
                recovery.torn_records = 1;
                recovery.torn_bytes = scan.file_len - scan.good_len;
            }
            // What is on disk now is what every later read will see: make
            // it durable before calling it so.
            active.sync_data().map_err(io_err(&tail.path))?;
            tail.len = scan.good_len;
            recovery.tail_records = scan.records;
            next_seq = tail.first + scan.records;
        } else {
            let path = dir.join(segment::file_name(1));
            active = create_segment(&path, &dir)?;
            segments.push_back(Segment {
                first: 1,
                len: 0,
                path,
            });
            next_seq = 1;
        }
        let oldest = segments.front().map_or(next_seq, |s| s.first);

        let mut readers = BTreeMap::new();
        for entry in fs::read_dir(&readers_dir).map_err(io_err(&readers_dir))? {
            let entry = entry.map_err(io_err(&readers_dir))?;
            let file = entry.file_name();
            let Some(file) = file.to_str() else { continue };
            if file.ends_with(".pos.tmp") {
                // The creation of a position file a crash interrupted.
                let path = entry.path();
                fs::remove_file(&path).map_err(io_err(&path))?;
                continue;
            }
            let Some(name) = position::parse_name(file) else {
                continue;
            };
            let (file, on_disk) = PositionFile::open(&entry.path())?;
            let floor = oldest - 1;
            let acked = match on_disk {
                Some(p) if p >= next_seq => {
                    recovery.positions_clamped.push(name.to_string());
                    next_seq - 1
                }
                Some(p) => p.max(floor),
                None => {
                    recovery.positions_reset.push(name.to_string());
                    floor
                }
            };
            // A position that had to be repaired is written again below.
            let written = on_disk.filter(|&p| p == acked).unwrap_or(u64::MAX);
            readers.insert(name.to_string(), Reader::at(acked, written, file));
        }
        let counters = Metrics {
            torn_records: recovery.torn_records,
            torn_bytes: recovery.torn_bytes,
            ..Metrics::default()
        };
        let bytes_on_disk = segments.iter().map(|s| s.len).sum();
        let mut q = DiskQueue {
            _lock: lock,
            dir,
            readers_dir,
            opts,
            segments,
            active,
            next_seq,
            durable_seq: next_seq - 1,
            unsynced: false,
            positions_dirty: false,
            last_sync: Instant::now(),
            readers,
            bytes_on_disk,
            counters,
            recovery,
            poisoned: None,
            buf: Vec::new(),
            background: None,
        };
        // Positions that were repaired (and readers new to the queue) are
        // written before anything is deleted on their account.
        let names: Vec<String> = q.opts.readers.clone();
        for name in &names {
            q.add_reader(name)?;
        }
        q.positions_dirty = true;
        q.write_positions()?;
        Ok(q)
    }

    /// What opening found and repaired.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The directory the queue lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The sequence number the next appended record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The highest sequence number known fsynced (0 when none is). Records
    /// up to it survive a crash of the machine; readers see only them.
    pub fn durable_seq(&self) -> u64 {
        let background = self.background.as_ref().map_or(0, |b| b.state().durable);
        self.durable_seq.max(background)
    }

    /// Takes in what the fsync thread made durable, or its failure.
    fn absorb(&mut self) -> Result<()> {
        if let Some(bg) = &self.background {
            let s = bg.state();
            if let Some(why) = s.failed {
                return self.poison(Error::Poisoned(why));
            }
            self.durable_seq = self.durable_seq.max(s.durable);
        }
        Ok(())
    }

    /// The oldest retained sequence number (`next_seq` when none is).
    pub fn oldest_seq(&self) -> u64 {
        self.segments.front().map_or(self.next_seq, |s| s.first)
    }

    fn check_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn poison<T>(&mut self, e: Error) -> Result<T> {
        self.poisoned = Some(e.to_string());
        Err(e)
    }

    /// Appends `records` as one batch. Returns the sequence numbers taken;
    /// under [`FsyncPolicy::Always`] they are durable when this returns,
    /// under `Interval` when [`DiskQueue::durable_seq`] reaches them.
    pub fn append<R: AsRef<[u8]>>(&mut self, records: &[R]) -> Result<Appended> {
        self.check_poisoned()?;
        self.absorb()?;
        let limit = self.opts.segment_bytes - FRAME_HEADER as u64;
        let (mut need, mut fit, mut stopped) = (0u64, 0usize, false);
        for r in records {
            let len = r.as_ref().len();
            if len as u64 > limit || u32::try_from(len).is_err() {
                return Err(Error::RecordTooLarge {
                    len,
                    segment_bytes: self.opts.segment_bytes,
                });
            }
            let frame = FRAME_HEADER as u64 + len as u64;
            // The records that fit are a prefix: none after the first
            // that does not.
            stopped |= self.bytes_on_disk + need + frame > self.opts.max_bytes;
            if !stopped {
                need += frame;
                fit += 1;
            }
        }
        let refused = records.len() - fit;
        if refused > 0 && self.opts.when_full == WhenFull::Block {
            self.counters.full_rejections += 1;
            let all: u64 = records
                .iter()
                .map(|r| FRAME_HEADER as u64 + r.as_ref().len() as u64)
                .sum();
            return Err(Error::Full {
                needed: all,
                free: self.opts.max_bytes.saturating_sub(self.bytes_on_disk),
                max: self.opts.max_bytes,
            });
        }
        self.counters.records_refused += refused as u64;
        let first = self.next_seq;
        let nanos = now_nanos();
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let mut seq = first;
        let mut result = Ok(());
        for r in &records[..fit] {
            let payload = r.as_ref();
            let frame_len = FRAME_HEADER as u64 + payload.len() as u64;
            let active_len = self.segments.back().map_or(0, |s| s.len);
            if active_len + buf.len() as u64 + frame_len > self.opts.segment_bytes
                && active_len + buf.len() as u64 > 0
            {
                result = self.write_buf(&buf, seq).and_then(|()| self.roll());
                buf.clear();
                if result.is_err() {
                    break;
                }
            }
            // Checked above: the length fits a u32.
            let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
            frame::encode(&mut buf, len, seq, nanos, payload);
            seq += 1;
        }
        if result.is_ok() {
            result = self.write_buf(&buf, seq);
        }
        self.buf = buf;
        result?;
        self.counters.records_appended += seq - first;
        self.counters.bytes_appended += need;
        match self.opts.fsync {
            FsyncPolicy::Always => {
                self.sync_data()?;
            }
            FsyncPolicy::Interval(_) => {
                self.sync_if_due()?;
            }
        }
        Ok(Appended {
            first,
            end: seq,
            refused,
        })
    }

    /// Writes encoded frames (ending before `end`) to the active segment.
    /// On failure the segment is cut back to where it was, or the queue is
    /// poisoned when even that fails.
    fn write_buf(&mut self, buf: &[u8], end: u64) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let Some(seg) = self.segments.back_mut() else {
            return Ok(());
        };
        if let Err(e) = self.active.write_all(buf) {
            let path = seg.path.clone();
            if let Err(e2) = self.active.set_len(seg.len) {
                return self.poison(io_err(&path)(e2));
            }
            return Err(io_err(&path)(e));
        }
        seg.len += buf.len() as u64;
        self.bytes_on_disk += buf.len() as u64;
        self.next_seq = end;
        self.unsynced = true;
        Ok(())
    }

    /// Seals the active segment (fsynced) and starts a new one. When the
    /// new segment cannot be created (a full disk, no inodes left), the
    /// sealed one stays active, whole and synced: the append fails, and the
    /// next one tries again. Only a file the failed attempt left that
    /// cannot be removed poisons the queue.
    fn roll(&mut self) -> Result<()> {
        self.sync_data()?;
        let path = self.dir.join(segment::file_name(self.next_seq));
        match create_segment(&path, &self.dir) {
            Ok(f) => self.active = f,
            Err(e) => {
                // No other file has this name: the segments are named by
                // their first record, and this one's is past them all.
                return match fs::remove_file(&path) {
                    Ok(()) => Err(e),
                    Err(r) if r.kind() == std::io::ErrorKind::NotFound => Err(e),
                    Err(r) => self.poison(io_err(&path)(r)),
                };
            }
        }
        self.segments.push_back(Segment {
            first: self.next_seq,
            len: 0,
            path,
        });
        Ok(())
    }

    /// fdatasyncs the active segment if it holds unsynced bytes.
    fn sync_data(&mut self) -> Result<()> {
        if let Some(bg) = &self.background {
            // A background fsync in flight may be the one to see a write
            // error (the descriptor is shared): wait for its word.
            let s = bg.wait();
            if let Some(why) = s.failed {
                return self.poison(Error::Poisoned(why));
            }
            self.durable_seq = self.durable_seq.max(s.durable);
        }
        if self.durable_seq + 1 < self.next_seq {
            if let Err(e) = self.active.sync_data() {
                let path = self
                    .segments
                    .back()
                    .map_or_else(|| self.dir.clone(), |s| s.path.clone());
                // After a failed fsync the kernel may have dropped the dirty
                // pages: nothing written since the last good sync is known.
                return self.poison(io_err(&path)(e));
            }
        }
        self.unsynced = false;
        self.durable_seq = self.next_seq - 1;
        Ok(())
    }

    /// Makes every appended record durable, writes the readers' moved
    /// positions and deletes the segments all readers acknowledged. Returns
    /// the durable sequence number.
    pub fn sync(&mut self) -> Result<u64> {
        self.check_poisoned()?;
        self.sync_data()?;
        self.write_positions()?;
        self.last_sync = Instant::now();
        Ok(self.durable_seq)
    }

    /// When the fsync interval since the last sync has passed and there is
    /// something to sync: starts an fsync of the active segment on the
    /// queue's fsync thread (it does not wait for it: see
    /// [`DiskQueue::durable_seq`]) and writes the readers' moved positions.
    /// Returns the durable sequence number.
    pub fn sync_if_due(&mut self) -> Result<u64> {
        self.check_poisoned()?;
        self.absorb()?;
        if self.sync_due_in() != Some(Duration::ZERO) {
            return Ok(self.durable_seq);
        }
        if self.opts.fsync == FsyncPolicy::Always {
            return self.sync();
        }
        let mut started = true;
        if self.unsynced && self.durable_seq + 1 < self.next_seq {
            if self.background.is_none() {
                let bg = Background::start().map_err(io_err(&self.dir))?;
                self.background = Some(bg);
            }
            let path = self
                .segments
                .back()
                .map_or_else(|| self.dir.clone(), |s| s.path.clone());
            let file = self.active.try_clone().map_err(io_err(&path))?;
            if let Some(bg) = &self.background {
                // One fsync in flight at a time; if one is, try again at
                // the next call.
                started = bg.request(file, self.next_seq - 1, path);
            }
        }
        if started {
            self.unsynced = false;
            self.last_sync = Instant::now();
        }
        self.write_positions()?;
        Ok(self.durable_seq)
    }

    /// How long until a sync is due: `None` when there is nothing to sync.
    pub fn sync_due_in(&self) -> Option<Duration> {
        if !self.unsynced && !self.positions_dirty {
            return None;
        }
        match self.opts.fsync {
            FsyncPolicy::Always => Some(Duration::ZERO),
            FsyncPolicy::Interval(d) => Some(d.saturating_sub(self.last_sync.elapsed())),
        }
    }

    fn write_positions(&mut self) -> Result<()> {
        if !self.positions_dirty {
            return Ok(());
        }
        for r in self.readers.values_mut() {
            if r.written != r.acked {
                r.file.write(r.acked)?;
                r.written = r.acked;
            }
        }
        self.positions_dirty = false;
        self.delete_acked_segments()
    }

    /// Deletes sealed segments whose records every reader's written
    /// position covers. Never the active segment; nothing without readers.
    fn delete_acked_segments(&mut self) -> Result<()> {
        let Some(min) = self.readers.values().map(|r| r.written.min(r.acked)).min() else {
            return Ok(());
        };
        while self.segments.len() > 1 && seg_end(&self.segments, 0, self.next_seq) - 1 <= min {
            if let Some(seg) = self.segments.pop_front() {
                fs::remove_file(&seg.path).map_err(io_err(&seg.path))?;
                self.bytes_on_disk -= seg.len;
            }
        }
        Ok(())
    }

    /// Adds a reader; one the queue has not seen starts at the oldest
    /// retained record. Adding a present reader does nothing.
    pub fn add_reader(&mut self, name: &str) -> Result<()> {
        if !position::valid_name(name) {
            return Err(Error::ReaderName(name.to_string()));
        }
        if !self.readers.contains_key(name) {
            let acked = self.oldest_seq() - 1;
            let file = PositionFile::create(&self.readers_dir, name, acked)?;
            self.readers
                .insert(name.to_string(), Reader::at(acked, acked, file));
        }
        Ok(())
    }

    /// Removes a reader and its position; it no longer holds segments back.
    pub fn remove_reader(&mut self, name: &str) -> Result<()> {
        let Some(r) = self.readers.remove(name) else {
            return Err(Error::UnknownReader(name.to_string()));
        };
        r.file.remove(&self.readers_dir)?;
        self.delete_acked_segments()
    }

    /// The readers' names.
    pub fn readers(&self) -> impl Iterator<Item = &str> {
        self.readers.keys().map(String::as_str)
    }

    /// The highest sequence number `reader` acknowledged (0 when none).
    pub fn position(&self, reader: &str) -> Option<u64> {
        self.readers.get(reader).map(|r| r.acked)
    }

    /// Hands `reader` its next durable records in order: at most
    /// `max_records`, and no more than `max_bytes` of payload unless the
    /// first record alone is larger (one record is always handed when one
    /// is there).
    pub fn read(&mut self, reader: &str, max_records: usize, max_bytes: usize) -> Result<Batch> {
        self.absorb()?;
        let Some(r) = self.readers.get_mut(reader) else {
            return Err(Error::UnknownReader(reader.to_string()));
        };
        let mut batch = Batch::default();
        while batch.len() < max_records && r.next <= self.durable_seq {
            let i = seg_index(&self.segments, r.next);
            let seg = &self.segments[i];
            let end = seg_end(&self.segments, i, self.next_seq);
            if r.next < seg.first {
                // Only a damaged position file can point before the oldest
                // retained record; go on from there.
                r.next = seg.first;
                r.cursor = None;
                continue;
            }
            if r.cursor.as_ref().is_none_or(|c| c.seg_first != seg.first) {
                r.cursor = Cursor::open(seg, r.next)?;
            }
            let last = self.durable_seq.min(end - 1);
            let left = max_records - batch.len();
            let (taken, stop) = match r.cursor.as_mut() {
                Some(c) => c.fill(
                    &mut batch, r.next, last, left, max_bytes, seg.len, &seg.path,
                )?,
                None => (0, Stop::Bad),
            };
            let from = batch.records.len() - taken as usize;
            r.in_flight
                .extend(batch.records[from..].iter().map(|m| (m.seq, m.nanos)));
            r.next += taken;
            match stop {
                Stop::More => {}
                Stop::Budget => break,
                Stop::Bad if i + 1 < self.segments.len() => {
                    let offset = r.cursor.as_ref().map_or(0, |c| c.offset);
                    self.counters.skipped_records += end - r.next;
                    self.counters.skipped_bytes += seg.len.saturating_sub(offset);
                    r.next = end;
                    r.cursor = None;
                }
                Stop::Bad => {
                    return Err(Error::Corrupt {
                        path: seg.path.clone(),
                        offset: r.cursor.as_ref().map_or(0, |c| c.offset),
                        seq: r.next,
                    });
                }
            }
        }
        self.counters.records_read += batch.len() as u64;
        Ok(batch)
    }

    /// Hands `reader`'s unacknowledged records out again: its next read
    /// starts right after its position, as after a reopen. For a new owner
    /// of a reader name (a reader rebuilt in a running process) whose
    /// predecessor may have read records it never acknowledged.
    pub fn rewind(&mut self, reader: &str) -> Result<()> {
        let Some(r) = self.readers.get_mut(reader) else {
            return Err(Error::UnknownReader(reader.to_string()));
        };
        r.next = r.acked + 1;
        r.cursor = None;
        r.in_flight.clear();
        Ok(())
    }

    /// Acknowledges every record up to `seq` for `reader`. The position is
    /// written at once under [`FsyncPolicy::Always`], at the next sync
    /// under `Interval`. Acknowledging less than before does nothing.
    pub fn ack(&mut self, reader: &str, seq: u64) -> Result<()> {
        let Some(r) = self.readers.get_mut(reader) else {
            return Err(Error::UnknownReader(reader.to_string()));
        };
        if seq <= r.acked {
            return Ok(());
        }
        if seq >= r.next {
            return Err(Error::AckBeyondRead {
                reader: reader.to_string(),
                seq,
                read: r.next - 1,
            });
        }
        self.counters.records_acked += seq - r.acked;
        r.acked = seq;
        while r.in_flight.front().is_some_and(|f| f.0 <= seq) {
            r.in_flight.pop_front();
        }
        self.positions_dirty = true;
        if self.opts.fsync == FsyncPolicy::Always {
            self.write_positions()?;
        }
        Ok(())
    }

    /// Syncs everything and closes the queue.
    pub fn close(mut self) -> Result<()> {
        self.sync().map(|_| ())
    }

    /// The queue's figures now.
    pub fn metrics(&mut self) -> Metrics {
        let oldest_unacked = if self.readers.is_empty() {
            self.nanos_of(self.oldest_seq())
        } else {
            let names: Vec<String> = self.readers.keys().cloned().collect();
            names
                .iter()
                .filter_map(|n| self.oldest_unacked_nanos(n))
                .min()
        };
        let now = now_nanos();
        Metrics {
            bytes_on_disk: self.bytes_on_disk,
            segments: self.segments.len() as u64,
            oldest_seq: self.oldest_seq(),
            next_seq: self.next_seq,
            durable_seq: self.durable_seq(),
            readers: self.readers.len() as u64,
            oldest_unacked_age: oldest_unacked.map(|t| Duration::from_nanos(now.saturating_sub(t))),
            ..self.counters.clone()
        }
    }

    fn oldest_unacked_nanos(&mut self, name: &str) -> Option<u64> {
        let r = self.readers.get_mut(name)?;
        if let Some(&(seq, nanos)) = r.in_flight.front() {
            if seq == r.acked + 1 {
                return Some(nanos);
            }
        }
        let seq = r.acked + 1;
        if seq >= self.next_seq {
            return None;
        }
        if r.in_flight.is_empty() && r.next == seq {
            // Nothing handed out: the oldest unacknowledged record is the
            // next to read, so place the reader's cursor on it (the next
            // read starts there anyway) and read its header.
            let seg = &self.segments[seg_index(&self.segments, seq)];
            if r.cursor.as_ref().is_none_or(|c| c.seg_first != seg.first) {
                r.cursor = Cursor::open(seg, seq).ok().flatten();
            }
            if let Some(c) = &r.cursor {
                if let Some(h) = segment::header_at(c.file(), c.offset).filter(|h| h.seq == seq) {
                    return Some(h.nanos);
                }
            }
        }
        self.nanos_of(seq)
    }

    /// The append time of record `seq`, read from its segment.
    fn nanos_of(&self, seq: u64) -> Option<u64> {
        if seq >= self.next_seq {
            return None;
        }
        let seg = &self.segments[seg_index(&self.segments, seq)];
        let c = Cursor::open(seg, seq).ok()??;
        segment::header_at(c.file(), c.offset)
            .filter(|h| h.seq == seq)
            .map(|h| h.nanos)
    }
}

fn create_segment(path: &Path, dir: &Path) -> Result<File> {
    let f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    position::sync_dir(dir)?;
    Ok(f)
}
