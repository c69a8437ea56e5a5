//! A bounded set of recently seen event UIDs, kept in the store.
//!
//! A source that cannot replay (an HTTP or gRPC client that retries an
//! unacknowledged batch) may deliver an event again after a crash; the UIDs
//! absorbed by the last checkpoint recognise it (SPEC section 9). The set
//! keeps the newest `capacity` UIDs of one owner and input partition; each
//! is stored under its arrival number, so a checkpoint writes only the UIDs
//! added and removed since the last one.

use std::collections::{BTreeMap, HashSet, VecDeque};

use crate::{Checkpoint, Error, Result, StateStore};

/// The newest `capacity` UIDs seen in one input partition.
#[derive(Debug)]
pub struct SeenUids {
    ns: String,
    part: String,
    capacity: usize,
    /// Arrival number and UID, oldest first.
    order: VecDeque<(u64, Vec<u8>)>,
    set: HashSet<Vec<u8>>,
    next: u64,
    /// Changes not yet staged in a checkpoint: arrival number -> UID, or
    /// `None` for one evicted.
    pending: BTreeMap<u64, Option<Vec<u8>>>,
}

impl SeenUids {
    /// Loads the UIDs that owner `ns` committed for `part`, keeping at most
    /// `capacity` (the oldest go if the capacity shrank since).
    pub fn load(store: &StateStore, ns: &str, part: &str, capacity: usize) -> Result<Self> {
        let mut seen = Self {
            ns: ns.to_owned(),
            part: part.to_owned(),
            capacity,
            order: VecDeque::new(),
            set: HashSet::new(),
            next: 0,
            pending: BTreeMap::new(),
        };
        for entry in store.scan_prefix(ns, part, b"")? {
            let (key, uid) = entry?;
            let number =
                u64::from_be_bytes(key.as_slice().try_into().map_err(|_| Error::Malformed {
                    what: "seen UID number",
                })?);
            seen.next = number + 1;
            seen.set.insert(uid.clone());
            seen.order.push_back((number, uid));
        }
        seen.evict();
        Ok(seen)
    }

    /// Whether `uid` is among the UIDs kept.
    pub fn contains(&self, uid: &[u8]) -> bool {
        self.set.contains(uid)
    }

    /// Records `uid`; `false` when it was already there (a redelivery).
    pub fn insert(&mut self, uid: &[u8]) -> bool {
        if self.set.contains(uid) {
            return false;
        }
        let number = self.next;
        self.next += 1;
        self.set.insert(uid.to_vec());
        self.order.push_back((number, uid.to_vec()));
        self.pending.insert(number, Some(uid.to_vec()));
        self.evict();
        true
    }

    /// How many UIDs are kept.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether no UID is kept.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Stages the changes since the last call into `checkpoint`. If that
    /// checkpoint is not committed, reload the set with [`load`](Self::load):
    /// it is then ahead of the store.
    pub fn stage(&mut self, checkpoint: &mut Checkpoint) -> Result<()> {
        for (number, uid) in std::mem::take(&mut self.pending) {
            let key = number.to_be_bytes();
            match uid {
                Some(uid) => checkpoint.put(&self.ns, &self.part, &key, &uid)?,
                None => checkpoint.delete(&self.ns, &self.part, &key)?,
            }
        }
        Ok(())
    }

    fn evict(&mut self) {
        while self.order.len() > self.capacity {
            let Some((number, uid)) = self.order.pop_front() else {
                break;
            };
            self.set.remove(&uid);
            // Added and evicted between two checkpoints: never written.
            if self.pending.remove(&number).is_none() {
                self.pending.insert(number, None);
            }
        }
    }
}
