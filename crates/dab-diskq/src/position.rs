//! Reader position files: `readers/<name>.pos` holds the highest sequence
//! number the reader acknowledged, in two checksummed slots written in
//! turn (a double-buffered record, as file systems keep superblocks).
//!
//! Slot layout (32 bytes, little endian): magic `DABQPOS2` (8), write
//! counter u64, position u64, crc32 of the 24 bytes before it (4), zero
//! padding (4). Slot `counter % 2` is overwritten in place and fdatasync'ed;
//! a write torn by a crash spoils at most the slot being written, and the
//! reader of the file takes the valid slot with the higher counter. The
//! file is created whole (temporary file, fsync, rename, directory fsync),
//! and never changes size after, so each later write costs one fdatasync of
//! one block and no metadata.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::{io_err, Result};

const MAGIC: &[u8; 8] = b"DABQPOS2";
const SLOT: usize = 32;

/// Whether `name` can name a reader (and so a file): 1 to 128 characters of
/// `A-Z a-z 0-9 _ - .`, not starting with a dot.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The reader named by a position file name, if it is one.
pub(crate) fn parse_name(file: &str) -> Option<&str> {
    file.strip_suffix(".pos").filter(|n| valid_name(n))
}

pub(crate) fn path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.pos"))
}

fn encode(counter: u64, acked: u64) -> [u8; SLOT] {
    let mut b = [0u8; SLOT];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&counter.to_le_bytes());
    b[16..24].copy_from_slice(&acked.to_le_bytes());
    let crc = crc32fast::hash(&b[..24]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    b
}

/// (counter, position) of a slot, `None` when it is not one this crate
/// wrote whole.
fn decode(b: &[u8]) -> Option<(u64, u64)> {
    if b.len() < 28 || &b[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(b[24..28].try_into().ok()?);
    if crc32fast::hash(&b[..24]) != crc {
        return None;
    }
    let counter = u64::from_le_bytes(b[8..16].try_into().ok()?);
    Some((counter, u64::from_le_bytes(b[16..24].try_into().ok()?)))
}

/// An open position file.
#[derive(Debug)]
pub(crate) struct PositionFile {
    file: File,
    counter: u64,
    path: PathBuf,
}

impl PositionFile {
    /// Creates the position file of reader `name` in `dir` (the `readers`
    /// directory) holding `acked`, replacing any file of that name.
    pub(crate) fn create(dir: &Path, name: &str, acked: u64) -> Result<PositionFile> {
        let tmp = dir.join(format!("{name}.pos.tmp"));
        let dst = path(dir, name);
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        let mut both = [0u8; 2 * SLOT];
        both[..SLOT].copy_from_slice(&encode(0, acked));
        f.write_all(&both).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
        sync_dir(dir)?;
        Ok(PositionFile {
            file: f,
            counter: 0,
            path: dst,
        })
    }

    /// Opens a position file; the position is `None` when neither slot is
    /// whole (the file is damaged).
    pub(crate) fn open(path: &Path) -> Result<(PositionFile, Option<u64>)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err(path))?;
        let mut b = [0u8; 2 * SLOT];
        let n = file.read_at(&mut b, 0).map_err(io_err(path))?;
        let best = [0, SLOT]
            .iter()
            .filter(|&&at| at + SLOT <= n)
            .filter_map(|&at| decode(&b[at..at + SLOT]))
            .max_by_key(|&(counter, _)| counter);
        let pf = PositionFile {
            file,
            counter: best.map_or(0, |b| b.0),
            path: path.to_path_buf(),
        };
        Ok((pf, best.map(|b| b.1)))
    }

    /// Writes `acked` durably over the older slot.
    pub(crate) fn write(&mut self, acked: u64) -> Result<()> {
        let counter = self.counter + 1;
        let at = (counter % 2) * SLOT as u64;
        self.file
            .write_all_at(&encode(counter, acked), at)
            .map_err(io_err(&self.path))?;
        self.file.sync_data().map_err(io_err(&self.path))?;
        self.counter = counter;
        Ok(())
    }

    /// Deletes the file.
    pub(crate) fn remove(self, dir: &Path) -> Result<()> {
        fs::remove_file(&self.path).map_err(io_err(&self.path))?;
        sync_dir(dir)
    }
}

/// Makes a directory's entries (created, renamed or removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}
