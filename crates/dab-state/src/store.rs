//! The store: opening, reads of committed state, input partitions.

use std::collections::HashMap;
use std::fmt;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use fjall::{Config, Keyspace, PartitionCreateOptions, PartitionHandle};

use crate::layout::{self, META, META_SEQ, TAG_BOOK, TAG_POS};
use crate::{Checkpoint, Error, Result};

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// An owner, one of its keys and the value.
pub type OwnedEntry = (String, Vec<u8>, Vec<u8>);

/// An embedded state store in one directory. Cloning is cheap and gives
/// another handle on the same store.
#[derive(Clone)]
pub struct StateStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    keyspace: Keyspace,
    meta: PartitionHandle,
    /// Input partition label -> its fjall partition, once opened.
    parts: Mutex<HashMap<String, PartitionHandle>>,
    /// The number of the last committed checkpoint (0: none yet); held
    /// while a checkpoint commits, so numbers follow commit order.
    last: Mutex<u64>,
}

impl fmt::Debug for StateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateStore")
            .field("dir", &self.inner.dir)
            .field("last_checkpoint", &self.last_checkpoint())
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// Opens the store in `dir`, creating it if absent, and recovers from
    /// the journal what the last run committed.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let keyspace = Config::new(&dir).open()?;
        let meta = keyspace.open_partition(META, PartitionCreateOptions::default())?;
        let last = match meta.get(META_SEQ)? {
            None => 0,
            Some(bytes) => {
                u64::from_be_bytes(bytes.as_ref().try_into().map_err(|_| Error::Malformed {
                    what: "checkpoint number",
                })?)
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                dir,
                keyspace,
                meta,
                parts: Mutex::new(HashMap::new()),
                last: Mutex::new(last),
            }),
        })
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The number of the last committed checkpoint, `None` before the first.
    /// Numbers start at 1 and grow by one with each commit.
    pub fn last_checkpoint(&self) -> Option<u64> {
        let last = *lock(&self.inner.last);
        (last > 0).then_some(last)
    }

    /// Starts a checkpoint: changes staged in it are invisible to reads
    /// until it commits.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint::new(self.clone())
    }

    /// The value of `key` in owner `ns`'s state for input partition `part`.
    pub fn get(&self, ns: &str, part: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.read(part, &layout::state_key(ns, key)?)
    }

    /// Owner `ns`'s entries in `part` whose key starts with `prefix`, in key
    /// order, keys without the owner.
    pub fn scan_prefix(
        &self,
        ns: &str,
        part: &str,
        prefix: &[u8],
    ) -> Result<impl Iterator<Item = Result<Entry>> + 'static> {
        let raw = layout::state_key(ns, prefix)?;
        let end = match layout::prefix_end(&raw) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        self.scan_raw(ns, part, Bound::Included(raw), end)
    }

    /// Owner `ns`'s entries in `part` with keys between `start` and `end`,
    /// in key order, keys without the owner.
    pub fn scan_range(
        &self,
        ns: &str,
        part: &str,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
    ) -> Result<impl Iterator<Item = Result<Entry>> + 'static> {
        let prefix = layout::state_prefix(ns)?;
        let with_prefix = |key: &[u8]| [prefix.as_slice(), key].concat();
        let start = match start {
            Bound::Included(k) => Bound::Included(with_prefix(k)),
            Bound::Excluded(k) => Bound::Excluded(with_prefix(k)),
            Bound::Unbounded => Bound::Included(prefix.clone()),
        };
        let end = match end {
            Bound::Included(k) => Bound::Included(with_prefix(k)),
            Bound::Excluded(k) => Bound::Excluded(with_prefix(k)),
            // The tag byte is 0, so the owner's prefix always has an end.
            Bound::Unbounded => {
                Bound::Excluded(layout::prefix_end(&prefix).ok_or(Error::Malformed {
                    what: "state prefix",
                })?)
            }
        };
        self.scan_raw(ns, part, start, end)
    }

    fn scan_raw(
        &self,
        ns: &str,
        part: &str,
        start: Bound<Vec<u8>>,
        end: Bound<Vec<u8>>,
    ) -> Result<impl Iterator<Item = Result<Entry>> + 'static> {
        let handle = self.existing(part)?;
        let skip = 2 + ns.len();
        Ok(handle.into_iter().flat_map(move |h| {
            h.range((start.clone(), end.clone())).map(move |kv| {
                let (k, v) = kv?;
                Ok((k[skip..].to_vec(), v.to_vec()))
            })
        }))
    }

    /// The bookkeeping owner `ns` last committed for `part`.
    pub fn bookkeeping(&self, ns: &str, part: &str) -> Result<Option<Vec<u8>>> {
        self.read(part, &layout::tagged(TAG_BOOK, ns))
    }

    /// The position of `source` in `part` as of the last checkpoint.
    pub fn position(&self, part: &str, source: &str) -> Result<Option<Vec<u8>>> {
        self.read(part, &layout::tagged(TAG_POS, source))
    }

    /// The next offset of `source` in `part` that
    /// [`Checkpoint::set_offset`] recorded.
    pub fn offset(&self, part: &str, source: &str) -> Result<Option<u64>> {
        self.position(part, source)?
            .map(|bytes| {
                bytes
                    .as_slice()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| Error::Malformed { what: "offset" })
            })
            .transpose()
    }

    /// Every source position in `part`, by source name.
    pub fn positions(&self, part: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let Some(handle) = self.existing(part)? else {
            return Ok(Vec::new());
        };
        handle
            .prefix([TAG_POS])
            .map(|kv| {
                let (k, v) = kv?;
                let source = std::str::from_utf8(&k[1..]).map_err(|_| Error::Malformed {
                    what: "position key",
                })?;
                Ok((source.to_owned(), v.to_vec()))
            })
            .collect()
    }

    /// The input partitions that hold anything (state, positions or
    /// bookkeeping), sorted.
    pub fn partitions(&self) -> Result<Vec<String>> {
        let mut labels = Vec::new();
        for name in self.inner.keyspace.list_partitions() {
            let Some(label) = layout::label_of(&name) else {
                continue;
            };
            let label = label?;
            let handle = self.handle(&label)?;
            if !handle.is_empty()? {
                labels.push(label);
            }
        }
        labels.sort();
        Ok(labels)
    }

    /// Everything `part` holds, to move it to another store with
    /// [`Checkpoint::import_partition`].
    pub fn export_partition(&self, part: &str) -> Result<PartitionImage> {
        let entries = match self.existing(part)? {
            None => Vec::new(),
            Some(handle) => handle
                .iter()
                .map(|kv| {
                    let (k, v) = kv?;
                    Ok((k.to_vec(), v.to_vec()))
                })
                .collect::<Result<_>>()?,
        };
        Ok(PartitionImage { entries })
    }

    /// Owner `ns`'s whole state in `part`; what a stateful op reads back on
    /// restore.
    pub fn state_of(&self, ns: &str, part: &str) -> Result<Vec<Entry>> {
        self.scan_prefix(ns, part, b"")?.collect()
    }

    /// Every state entry of `part` as (owner, key, value), in layout order.
    pub fn state_entries(&self, part: &str) -> Result<Vec<OwnedEntry>> {
        let Some(handle) = self.existing(part)? else {
            return Ok(Vec::new());
        };
        handle
            .prefix([layout::TAG_STATE])
            .map(|kv| {
                let (k, v) = kv?;
                let (ns, key) = layout::split_state_key(&k)?;
                Ok((ns.to_owned(), key.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn read(&self, part: &str, raw: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.existing(part)? {
            None => Ok(None),
            Some(handle) => Ok(handle.get(raw)?.map(|v| v.to_vec())),
        }
    }

    /// `part`'s fjall partition if it exists; reads never create one.
    pub(crate) fn existing(&self, part: &str) -> Result<Option<PartitionHandle>> {
        if let Some(h) = lock(&self.inner.parts).get(part) {
            return Ok(Some(h.clone()));
        }
        let name = layout::partition_name(part)?;
        if !self.inner.keyspace.partition_exists(&name) {
            return Ok(None);
        }
        self.handle(part).map(Some)
    }

    /// `part`'s fjall partition, created if absent.
    pub(crate) fn handle(&self, part: &str) -> Result<PartitionHandle> {
        let mut parts = lock(&self.inner.parts);
        if let Some(h) = parts.get(part) {
            return Ok(h.clone());
        }
        let name = layout::partition_name(part)?;
        let created = !self.inner.keyspace.partition_exists(&name);
        let h = self
            .inner
            .keyspace
            .open_partition(&name, PartitionCreateOptions::default())?;
        if created {
            // fjall syncs a new partition's config file but not the folder
            // entries that name it; a power loss could then drop the
            // partition while the journal keeps a checkpoint that wrote to
            // it, and recovery would apply that checkpoint in part.
            sync_dir(h.path())?;
            sync_dir(h.path().parent().unwrap_or(&self.inner.dir))?;
        }
        parts.insert(part.to_owned(), h.clone());
        Ok(h)
    }

    pub(crate) fn keyspace(&self) -> &Keyspace {
        &self.inner.keyspace
    }

    pub(crate) fn meta(&self) -> &PartitionHandle {
        &self.inner.meta
    }

    pub(crate) fn last_lock(&self) -> MutexGuard<'_, u64> {
        lock(&self.inner.last)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::Store(e.into()))
}

/// A mutex whose holder panicked still guards consistent data here: every
/// critical section either completes or changes nothing.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Everything one input partition holds (state of every owner, positions,
/// bookkeeping) in the store's own layout: opaque, for
/// [`Checkpoint::import_partition`] into this or another store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionImage {
    pub(crate) entries: Vec<Entry>,
}

impl PartitionImage {
    /// The raw entries, in key order (for mirroring to a changelog).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// An image from raw entries that an export gave.
    pub fn from_entries(entries: Vec<Entry>) -> Self {
        Self { entries }
    }

    /// How many raw entries the image holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the partition held nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
