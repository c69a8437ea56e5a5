//! A checkpoint: state changes, source positions and bookkeeping, committed
//! as one atomic batch.

use std::collections::BTreeMap;

use fjall::PersistMode;

use crate::layout::{self, META_SEQ, TAG_BOOK, TAG_POS};
use crate::{PartitionImage, Result, StateStore};

/// Changes gathered for one atomic commit. Nothing is written before
/// [`commit`](Self::commit); dropping a checkpoint discards it. Within a
/// checkpoint the last change to a key wins.
#[derive(Debug)]
pub struct Checkpoint {
    store: StateStore,
    /// (input partition, raw key) -> new value, `None` to delete.
    writes: BTreeMap<(String, Vec<u8>), Option<Vec<u8>>>,
}

impl Checkpoint {
    pub(crate) fn new(store: StateStore) -> Self {
        Self {
            store,
            writes: BTreeMap::new(),
        }
    }

    /// Sets `key` in owner `ns`'s state for input partition `part`.
    pub fn put(&mut self, ns: &str, part: &str, key: &[u8], value: &[u8]) -> Result<()> {
        self.stage(part, layout::state_key(ns, key)?, Some(value.to_vec()))
    }

    /// Removes `key` from owner `ns`'s state for `part`.
    pub fn delete(&mut self, ns: &str, part: &str, key: &[u8]) -> Result<()> {
        self.stage(part, layout::state_key(ns, key)?, None)
    }

    /// Sets owner `ns`'s bookkeeping for `part` (window watermarks, open
    /// window bounds: whatever the owner needs to resume).
    pub fn set_bookkeeping(&mut self, ns: &str, part: &str, bytes: &[u8]) -> Result<()> {
        self.stage(part, layout::tagged(TAG_BOOK, ns), Some(bytes.to_vec()))
    }

    /// Records where `source` resumes in `part` (a Kafka next offset, or
    /// any position a source can resume from), in the same batch as the
    /// state that absorbed everything before it.
    pub fn set_position(&mut self, part: &str, source: &str, position: &[u8]) -> Result<()> {
        self.stage(
            part,
            layout::tagged(TAG_POS, source),
            Some(position.to_vec()),
        )
    }

    /// Records the next offset to read of a source with numbered records
    /// (a Kafka topic partition); [`StateStore::offset`] reads it back.
    pub fn set_offset(&mut self, part: &str, source: &str, next: u64) -> Result<()> {
        self.set_position(part, source, &next.to_be_bytes())
    }

    /// Empties `part`: every owner's state, its positions and bookkeeping,
    /// the committed ones and those staged so far in this checkpoint.
    pub fn clear_partition(&mut self, part: &str) -> Result<()> {
        layout::check_label(part)?;
        let staged: Vec<_> = self
            .writes
            .range((part.to_owned(), Vec::new())..)
            .take_while(|((p, _), _)| p == part)
            .map(|(k, _)| k.clone())
            .collect();
        for k in staged {
            self.writes.remove(&k);
        }
        if let Some(handle) = self.store.existing(part)? {
            for key in handle.keys() {
                self.writes.insert((part.to_owned(), key?.to_vec()), None);
            }
        }
        Ok(())
    }

    /// Replaces everything `part` holds with an image that
    /// [`StateStore::export_partition`] gave.
    pub fn import_partition(&mut self, part: &str, image: &PartitionImage) -> Result<()> {
        self.clear_partition(part)?;
        for (k, v) in &image.entries {
            self.writes
                .insert((part.to_owned(), k.clone()), Some(v.clone()));
        }
        Ok(())
    }

    /// How many keys the checkpoint changes.
    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Whether the checkpoint changes nothing (it still gets a number when
    /// committed).
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Writes the checkpoint as one atomic batch and returns its number.
    /// Before this returns the batch is written to the operating system,
    /// so it survives the process being killed; with `durable` the journal
    /// is also fsynced, so it survives a power loss too. Without `durable`,
    /// a machine crash may lose the checkpoint, whole, with later ones.
    pub fn commit(self, durable: bool) -> Result<u64> {
        let store = self.store;
        let mut last = store.last_lock();
        let number = *last + 1;
        // fjall ignores a failed journal write when it is not asked to
        // persist; flushing its buffer surfaces the failure (and poisons
        // the store, so nothing commits after a lost checkpoint).
        let mode = if durable {
            PersistMode::SyncAll
        } else {
            PersistMode::Buffer
        };
        let mut batch = store.keyspace().batch().durability(Some(mode));
        let mut current: Option<(String, Option<fjall::PartitionHandle>)> = None;
        for ((label, key), value) in self.writes {
            if current.as_ref().is_none_or(|(l, _)| *l != label) {
                let handle = store.existing(&label)?;
                current = Some((label, handle));
            }
            let Some((label, handle)) = current.as_mut() else {
                continue;
            };
            match (handle.as_ref(), value) {
                (Some(h), Some(v)) => batch.insert(h, key, v),
                (Some(h), None) => batch.remove(h, key),
                // A partition is created only for something to put in it.
                (None, Some(v)) => {
                    let h = store.handle(label)?;
                    batch.insert(&h, key, v);
                    *handle = Some(h);
                }
                // A delete in a partition that does not exist: nothing to do.
                (None, None) => {}
            }
        }
        batch.insert(store.meta(), META_SEQ, number.to_be_bytes());
        batch.commit()?;
        *last = number;
        Ok(number)
    }

    fn stage(&mut self, part: &str, raw: Vec<u8>, value: Option<Vec<u8>>) -> Result<()> {
        layout::check_label(part)?;
        self.writes.insert((part.to_owned(), raw), value);
        Ok(())
    }
}
