//! Reader position files: `readers/<name>.pos` holds the highest sequence
//! number the reader acknowledged. Written crash-safely: a temporary file,
//! fsync, rename over the old one, fsync of the directory.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::{io_err, Result};

const MAGIC: &[u8; 8] = b"DABQPOS1";
const LEN: usize = 20;

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

fn encode(acked: u64) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&acked.to_le_bytes());
    let crc = crc32fast::hash(&b[..16]);
    b[16..].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The position in a file's bytes, `None` when they are not a position
/// this crate wrote (damaged).
pub(crate) fn decode(b: &[u8]) -> Option<u64> {
    if b.len() != LEN || &b[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(b[16..20].try_into().ok()?);
    if crc32fast::hash(&b[..16]) != crc {
        return None;
    }
    Some(u64::from_le_bytes(b[8..16].try_into().ok()?))
}

/// Writes `acked` as the position of reader `name` in `dir` (the
/// `readers` directory) so that a crash leaves either the old or the new
/// position, never a mix.
pub(crate) fn write(dir: &Path, name: &str, acked: u64) -> Result<()> {
    let tmp = dir.join(format!("{name}.pos.tmp"));
    let dst = dir.join(format!("{name}.pos"));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(&encode(acked)).map_err(io_err(&tmp))?;
    f.sync_data().map_err(io_err(&tmp))?;
    fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    sync_dir(dir)
}

/// Makes a directory's entries (created, renamed or removed files) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}
