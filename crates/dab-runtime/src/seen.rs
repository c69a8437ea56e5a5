//! The UIDs a window stage absorbed from sources that cannot replay (an
//! HTTP or gRPC client that retries a batch it got no answer for), kept in
//! the state store so that a retry after a crash is recognised (SPEC
//! section 9).
//!
//! Each checkpoint writes the UIDs absorbed since the one before as ONE
//! record (16 bytes a UID, under the checkpoint's own number), and deletes
//! whole old records once the newer ones hold `capacity` UIDs: two store
//! writes per checkpoint, whatever the rate, instead of one per event.
//! In memory a UID is a `u128` in a set whose hasher takes the bits as
//! they are (they are a hash already).

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use dab_state::{Checkpoint, StateStore, GLOBAL};

/// A hasher for keys that are hashes already: it folds the bits.
#[derive(Debug, Default)]
struct Fold(u64);

impl Hasher for Fold {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(b);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 = (v as u64) ^ ((v >> 64) as u64);
    }
}

/// The newest (at least) `capacity` UIDs a window stage absorbed.
#[derive(Debug)]
pub struct SeenLog {
    ns: String,
    capacity: usize,
    set: HashSet<u128, BuildHasherDefault<Fold>>,
    /// Records written, oldest first: number and UIDs.
    records: VecDeque<(u64, Vec<u128>)>,
    /// Absorbed since the last checkpoint.
    current: Vec<u128>,
    next: u64,
    len: usize,
}

impl SeenLog {
    /// What the last checkpoint holds for owner `ns`.
    pub fn load(store: &StateStore, ns: &str, capacity: usize) -> Result<SeenLog, String> {
        let mut log = SeenLog {
            ns: ns.to_owned(),
            capacity,
            set: HashSet::default(),
            records: VecDeque::new(),
            current: Vec::new(),
            next: 0,
            len: 0,
        };
        let entries = store
            .scan_prefix(ns, GLOBAL, b"")
            .map_err(|e| e.to_string())?;
        for entry in entries {
            let (key, value) = entry.map_err(|e| e.to_string())?;
            let number = <[u8; 8]>::try_from(key.as_slice())
                .map(u64::from_be_bytes)
                .map_err(|_| format!("a seen-UID record key of {} bytes", key.len()))?;
            if value.len() % 16 != 0 {
                return Err(format!("a seen-UID record of {} bytes", value.len()));
            }
            let uids: Vec<u128> = value
                .chunks_exact(16)
                .map(|c| {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(c);
                    u128::from_le_bytes(b)
                })
                .collect();
            log.set.extend(uids.iter().copied());
            log.len += uids.len();
            log.next = log.next.max(number + 1);
            log.records.push_back((number, uids));
        }
        Ok(log)
    }

    pub fn contains(&self, uid: u128) -> bool {
        self.set.contains(&uid)
    }

    /// Records `uid`; false when it was there already.
    pub fn insert(&mut self, uid: u128) -> bool {
        if !self.set.insert(uid) {
            return false;
        }
        self.current.push(uid);
        self.len += 1;
        true
    }

    /// UIDs kept.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Writes the UIDs absorbed since the last call as one record and
    /// deletes the oldest records the newer ones make unneeded. If the
    /// checkpoint is not committed, load the log again.
    pub fn stage(&mut self, cp: &mut Checkpoint) -> Result<(), dab_state::Error> {
        if !self.current.is_empty() {
            let number = self.next;
            self.next += 1;
            let uids = std::mem::take(&mut self.current);
            let mut bytes = Vec::with_capacity(uids.len() * 16);
            for u in &uids {
                bytes.extend_from_slice(&u.to_le_bytes());
            }
            cp.put(&self.ns, GLOBAL, &number.to_be_bytes(), &bytes)?;
            self.records.push_back((number, uids));
        }
        while let Some((number, oldest)) = self.records.front() {
            if self.len - oldest.len() < self.capacity {
                break;
            }
            cp.delete(&self.ns, GLOBAL, &number.to_be_bytes())?;
            for u in oldest {
                self.set.remove(u);
            }
            self.len -= oldest.len();
            self.records.pop_front();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(store: &StateStore, log: &mut SeenLog) {
        let mut cp = store.checkpoint();
        log.stage(&mut cp).expect("stage");
        cp.commit(false).expect("commit");
    }

    #[test]
    fn keeps_at_least_capacity_newest_uids_across_reloads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = StateStore::open(dir.path()).expect("open");
        let mut log = SeenLog::load(&store, "u/p/0", 10).expect("load");
        for round in 0..5u128 {
            for i in 0..4u128 {
                assert!(log.insert(round * 100 + i));
                assert!(!log.insert(round * 100 + i), "a second insert is a repeat");
            }
            commit(&store, &mut log);
        }
        // 20 inserted in records of 4: the newest 12 are kept (at least
        // 10, whole records).
        assert_eq!(log.len(), 12);
        assert!(!log.contains(0) && !log.contains(103));
        assert!(log.contains(200) && log.contains(403));
        let again = SeenLog::load(&store, "u/p/0", 10).expect("reload");
        assert_eq!(again.len(), 12);
        for u in [200u128, 203, 300, 403] {
            assert!(again.contains(u), "{u} after a reload");
        }
        assert!(!again.contains(103));
        // Absorbed but not checkpointed: gone after a reload.
        log.insert(999);
        let reloaded = SeenLog::load(&store, "u/p/0", 10).expect("reload");
        assert!(!reloaded.contains(999));
    }
}
