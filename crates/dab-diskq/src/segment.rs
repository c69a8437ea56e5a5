//! Segment files: their names, the scan that finds where the good records
//! of a segment end, and the cursor a reader moves through a segment with.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

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

/// A reader's place in one segment: the frame at `offset` carries `seq`.
#[derive(Debug)]
pub(crate) struct Cursor {
    pub seg_first: u64,
    pub offset: u64,
    file: BufReader<File>,
}

/// What [`Cursor::next`] found.
pub(crate) enum Step {
    Record(Header, Vec<u8>),
    /// The frame at the cursor is not the record `expected` (damaged).
    Bad,
}

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
        let mut file = BufReader::with_capacity(256 * 1024, file);
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))
            .map_err(io_err(&seg.path))?;
        Ok(Some(Cursor {
            seg_first: seg.first,
            offset,
            file,
        }))
    }

    pub(crate) fn file(&self) -> &File {
        self.file.get_ref()
    }

    /// Reads and checks the frame at the cursor, which must be record
    /// `expected` and end within `seg_len` bytes. Moves past it only when it
    /// is good.
    pub(crate) fn next(&mut self, expected: u64, seg_len: u64, path: &Path) -> Result<Step> {
        if seg_len.saturating_sub(self.offset) < FRAME_HEADER as u64 {
            return Ok(Step::Bad);
        }
        let mut hb = [0u8; FRAME_HEADER];
        self.file.read_exact(&mut hb).map_err(io_err(path))?;
        let h = Header::parse(&hb);
        if h.seq != expected || h.frame_len() > seg_len - self.offset {
            self.rewind(FRAME_HEADER, path)?;
            return Ok(Step::Bad);
        }
        // Read into spare capacity: no zeroing of a buffer about to be
        // overwritten (a visible share of the read path in the bench).
        let mut payload = Vec::with_capacity(h.len as usize);
        (&mut self.file)
            .take(u64::from(h.len))
            .read_to_end(&mut payload)
            .map_err(io_err(path))?;
        if payload.len() != h.len as usize {
            self.rewind(FRAME_HEADER + payload.len(), path)?;
            return Ok(Step::Bad);
        }
        if !h.matches(&payload) {
            self.rewind(FRAME_HEADER + payload.len(), path)?;
            return Ok(Step::Bad);
        }
        self.offset += h.frame_len();
        Ok(Step::Record(h, payload))
    }

    /// Steps back over `n` bytes just read (a frame the caller will not take).
    pub(crate) fn rewind(&mut self, n: usize, path: &Path) -> Result<()> {
        let back = i64::try_from(n).map_err(|_| io_err(path)(ErrorKind::InvalidInput.into()))?;
        self.file.seek_relative(-back).map_err(io_err(path))
    }
}
