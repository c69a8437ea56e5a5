//! Segment files: their names, the scan that finds where the good records
//! of a segment end, and the cursor a reader moves through a segment with.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::batch::{Batch, Meta};
use crate::frame::{Header, FRAME_HEADER};
use crate::{io_err, Result};

/// A segment as the queue keeps it in memory. Its records are the
/// sequence numbers from `first` up to the next segment's `first` (or the
/// queue's next sequence number for the active segment).
#[derive(Debug)]
pub(crate) struct Segment {
    pub first: u64,
    pub len: u64,
    pub path: PathBuf,
}

/// The file name of the segment whose first record is `first`.
pub(crate) fn file_name(first: u64) -> String {
    format!("seg-{first:020}.log")
}

/// The first sequence number named by a segment file name, if it is one.
pub(crate) fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// What a scan of a segment found.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Whole, checked records from the start, numbered `first`, `first + 1`, ...
    pub records: u64,
    /// Bytes those records take: where the first bad or partial frame begins.
    pub good_len: u64,
    pub file_len: u64,
}

/// Reads the frames of a segment from its start and stops at the first one
/// that is partial, fails its checksum or does not carry the next sequence
/// number.
pub(crate) fn scan(path: &Path, first: u64) -> Result<Scan> {
    let file = File::open(path).map_err(io_err(path))?;
    let file_len = file.metadata().map_err(io_err(path))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let (mut records, mut good_len) = (0u64, 0u64);
    let mut payload = Vec::new();
    loop {
        let mut hb = [0u8; FRAME_HEADER];
        if file_len - good_len < FRAME_HEADER as u64 {
            break;
        }
        r.read_exact(&mut hb).map_err(io_err(path))?;
        let h = Header::parse(&hb);
        if h.frame_len() > file_len - good_len || h.seq != first + records {
            break;
        }
        payload.resize(h.len as usize, 0);
        r.read_exact(&mut payload).map_err(io_err(path))?;
        if !h.matches(&payload) {
            break;
        }
        records += 1;
        good_len += h.frame_len();
    }
    Ok(Scan {
        records,
        good_len,
        file_len,
    })
}

/// Reads the header at `offset` without moving any cursor; `None` when the
/// file holds no whole header there.
pub(crate) fn header_at(file: &File, offset: u64) -> Option<Header> {
    let mut hb = [0u8; FRAME_HEADER];
    file.read_exact_at(&mut hb, offset).ok()?;
    Some(Header::parse(&hb))
}

/// A reader's place in one segment: the frame at `offset` carries the
/// reader's next record.
#[derive(Debug)]
pub(crate) struct Cursor {
    pub seg_first: u64,
    pub offset: u64,
    file: File,
}

/// Why [`Cursor::fill`] stopped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Took what it was asked for, or what the chunk held: call again.
    More,
    /// The next record would pass the byte budget.
    Budget,
    /// The frame at the cursor is not the expected record (damaged).
    Bad,
}

/// Most bytes read from a segment at once.
const CHUNK: usize = 256 * 1024;

impl Cursor {
    /// A cursor on the frame carrying `seq` in segment `seg`, found by
    /// walking the headers from the segment's start; `Ok(None)` when a
    /// damaged header stops the walk first.
    pub(crate) fn open(seg: &Segment, seq: u64) -> Result<Option<Cursor>> {
        let file = File::open(&seg.path).map_err(io_err(&seg.path))?;
        let mut offset = 0u64;
        let mut at = seg.first;
        while at < seq {
            match header_at(&file, offset) {
                Some(h) if h.seq == at && offset + h.frame_len() <= seg.len => {
                    offset += h.frame_len();
                    at += 1;
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(Cursor {
            seg_first: seg.first,
            offset,
            file,
        }))
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Reads checked frames at the cursor straight into `batch`: records
    /// `next`, `next + 1`, ... up to `last`, at most `max_records`, and no
    /// record that would take the batch's payload past `max_bytes` (unless
    /// the batch is empty). The segment's frames end at `seg_len`. Returns
    /// how many records it took and why it stopped.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fill(
        &mut self,
        batch: &mut Batch,
        next: u64,
        last: u64,
        max_records: usize,
        max_bytes: usize,
        seg_len: u64,
        path: &Path,
    ) -> Result<(u64, Stop)> {
        let avail = seg_len.saturating_sub(self.offset);
        if avail < FRAME_HEADER as u64 {
            return Ok((0, Stop::Bad));
        }
        let wanted = max_bytes
            .saturating_sub(batch.payload_bytes)
            .saturating_add(FRAME_HEADER * max_records)
            .clamp(4096, CHUNK);
        let want = usize::try_from(avail).unwrap_or(CHUNK).min(wanted);
        let base = batch.data.len();
        // read_to_end fills spare capacity: no zeroing of a buffer about to
        // be overwritten.
        batch.data.reserve(want);
        let mut file = &self.file;
        file.seek(SeekFrom::Start(self.offset))
            .map_err(io_err(path))?;
        file.take(want as u64)
            .read_to_end(&mut batch.data)
            .map_err(io_err(path))?;
        let mut chunk = batch.data.len() - base;
        if chunk < FRAME_HEADER {
            // The file is shorter than the queue wrote it.
            batch.data.truncate(base);
            return Ok((0, Stop::Bad));
        }
        let (mut at, mut taken, mut seq) = (0usize, 0u64, next);
        let stop = loop {
            if seq > last || taken as usize >= max_records || chunk - at < FRAME_HEADER {
                break Stop::More;
            }
            let mut hb = [0u8; FRAME_HEADER];
            hb.copy_from_slice(&batch.data[base + at..base + at + FRAME_HEADER]);
            let h = Header::parse(&hb);
            if h.seq != seq || h.frame_len() > avail - at as u64 {
                break Stop::Bad;
            }
            let frame = usize::try_from(h.frame_len()).unwrap_or(usize::MAX);
            if chunk - at < frame {
                if at > 0 {
                    break Stop::More;
                }
                // A frame larger than the chunk: read the rest of it.
                batch.data.resize(base + frame, 0);
                self.file
                    .read_exact_at(&mut batch.data[base + chunk..], self.offset + chunk as u64)
                    .map_err(io_err(path))?;
                chunk = frame;
            }
            let len = h.len as usize;
            let start = base + at + FRAME_HEADER;
            if !h.matches_frame(&batch.data[base + at..start + len]) {
                break Stop::Bad;
            }
            if !batch.records.is_empty() && batch.payload_bytes + len > max_bytes {
                break Stop::Budget;
            }
            batch.records.push(Meta {
                seq,
                nanos: h.nanos,
                start,
                len,
            });
            batch.payload_bytes += len;
            at += frame;
            taken += 1;
            seq += 1;
        };
        batch.data.truncate(base + at);
        self.offset += at as u64;
        Ok((taken, stop))
    }
}
