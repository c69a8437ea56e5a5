//! Window state per Kafka partition, mirrored to a changelog (SPEC
//! section 9, "scale-out").
//!
//! A window reading a Kafka source keeps one engine per assigned topic
//! partition. Each checkpoint first appends every changed partition's
//! entries to the changelog (a compacted topic, one changelog partition per
//! input partition number), then a commit record holding the partition's
//! bookkeeping and input position, all tagged with the checkpoint's id;
//! only then does the local store commit the same, and the held
//! acknowledgements complete. The local store is a cache of the
//! changelog: a partition is restored from the local store and then from
//! the changelog records after the offset the local store has read, so a
//! partition that moved to another process and back, or a local commit
//! lost after the changelog took it, comes back as the changelog has it.
//!
//! A reader applies a checkpoint's entries only at that checkpoint's commit
//! record. Entries of a checkpoint cut short are dropped, and their keys
//! are written again (current value or tombstone) by the next checkpoint,
//! so compaction cannot leave one of them as a key's last value.
//!
//! On revoke, the source waits (`SourceStats::revoke_and_wait`) until the
//! pipeline has checkpointed and let go of the revoked partitions; on
//! assignment, each new partition is restored before its first event is
//! absorbed. Events of a partition this process does not hold are not
//! absorbed (their next owner reads them: their offsets are not committed).
//!
//! Results of a partition's engine carry the partition in their identity:
//! a group aggregates per input partition, so the input must be keyed by
//! the group key for one result per group (docs/runtime.md).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use dab_api::changelog::{ChangeRecord, Changelog};
use dab_api::connector::SourceStats;
use dab_api::Text;
use dab_state::StateStore;
use dab_window::{DecodeError, Engine, RestoreError, WindowSpec};

/// Record tags: a state entry, a commit record.
const ENTRY: u8 = 0;
const COMMIT: u8 = 1;

/// A Kafka topic partition.
pub(super) type Tp = (Text, i32);

/// One input partition's state.
#[derive(Debug)]
pub(super) struct Part {
    pub engine: Engine,
    /// Offset after the last absorbed event.
    pub next: i64,
    /// Changelog offset after the last record this state includes.
    pub cl_next: i64,
    pub changed: bool,
    /// When the partition last delivered (arrival ns), for idleness.
    pub last_arrival: i64,
}

/// The partitions of one window stage and their changelog.
#[derive(Debug)]
pub(super) struct Partitioned {
    pub changelog: Arc<dyn Changelog>,
    pub stats: Arc<SourceStats>,
    slot: usize,
    /// The assignment generation last synced.
    pub gen: u64,
    /// The partitions assigned to this process now.
    pub assigned: HashSet<Tp>,
    pub parts: HashMap<Tp, Part>,
    /// Keys a checkpoint cut short (or an older configuration) wrote to
    /// the changelog: the next checkpoint of the partition writes its
    /// whole state and a tombstone for each of these it does not hold.
    pub rewrite: HashMap<Tp, Vec<Vec<u8>>>,
}

impl Drop for Partitioned {
    fn drop(&mut self) {
        self.stats.unfollow(self.slot);
    }
}

impl Partitioned {
    pub fn new(changelog: Arc<dyn Changelog>, stats: Arc<SourceStats>) -> Partitioned {
        let slot = stats.follow_revokes();
        Partitioned {
            changelog,
            stats,
            slot,
            gen: 0,
            assigned: HashSet::new(),
            parts: HashMap::new(),
            rewrite: HashMap::new(),
        }
    }

    /// A revocation the source waits for.
    pub fn revoking(&self) -> Option<(u64, Vec<(String, i32)>)> {
        self.stats.revoking(self.slot)
    }

    /// Lets go of `list` (after a checkpoint) and tells the source.
    pub fn release(&mut self, gen: u64, list: &[(String, i32)]) {
        for (t, p) in list {
            let tp = (Text::from(t.clone()), *p);
            self.parts.remove(&tp);
            self.assigned.remove(&tp);
            self.rewrite.remove(&tp);
        }
        self.stats.revoked(self.slot, gen);
    }
}

/// The store label of a topic partition's state.
pub(super) fn label(topic: &str, p: i32) -> String {
    let l = format!("kafka:{topic}:{p}");
    if l.len() <= 100 {
        l
    } else {
        format!("kafka:#{:016x}:{p}", dab_window::hash64(topic.as_bytes()))
    }
}

pub(super) fn input_source(ns: &str) -> String {
    format!("{ns}@in")
}

pub(super) fn changelog_source(ns: &str) -> String {
    format!("{ns}@changelog")
}

fn topic_prefix(tag: u8, topic: &str) -> Vec<u8> {
    let t = topic.as_bytes();
    let len = u16::try_from(t.len()).unwrap_or(u16::MAX);
    let mut k = Vec::with_capacity(3 + t.len());
    k.push(tag);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(&t[..usize::from(len)]);
    k
}

pub(super) fn entry_record(
    topic: &str,
    key: &[u8],
    value: Option<Vec<u8>>,
    cp: u64,
) -> ChangeRecord {
    let mut k = topic_prefix(ENTRY, topic);
    k.extend_from_slice(key);
    ChangeRecord {
        key: k,
        value,
        checkpoint: cp,
    }
}

pub(super) fn commit_record(topic: &str, next: i64, book: &[u8], cp: u64) -> ChangeRecord {
    let mut v = Vec::with_capacity(8 + book.len());
    v.extend_from_slice(&next.to_be_bytes());
    v.extend_from_slice(book);
    ChangeRecord {
        key: topic_prefix(COMMIT, topic),
        value: Some(v),
        checkpoint: cp,
    }
}

/// What a restore found.
#[derive(Debug)]
pub(super) struct Restored {
    pub part: Part,
    /// Changelog records read.
    pub records: u64,
    /// Keys to write again at the next checkpoint.
    pub rewrite: Vec<Vec<u8>>,
    pub groups: usize,
}

/// Restores `(topic, p)`: the local store's state, then the changelog's
/// committed checkpoints after it; writes what the changelog added to the
/// local store. Blocking.
pub(super) fn restore(
    store: &StateStore,
    ns: &str,
    spec: &WindowSpec,
    changelog: &dyn Changelog,
    (topic, p): (&str, i32),
    now: i64,
    pipeline: &str,
) -> Result<Restored, String> {
    let lbl = label(topic, p);
    let dir = store.dir().display().to_string();
    let local_err = |e: dab_state::Error| format!("reading window state {lbl} from {dir}: {e}");
    let local: BTreeMap<Vec<u8>, Vec<u8>> = store
        .state_of(ns, &lbl)
        .map_err(local_err)?
        .into_iter()
        .collect();
    let mut book = store.bookkeeping(ns, &lbl).map_err(local_err)?;
    let offset = |src: &str| -> Result<Option<i64>, String> {
        Ok(store
            .offset(&lbl, src)
            .map_err(local_err)?
            .map(|v| i64::try_from(v).unwrap_or(i64::MAX)))
    };
    let mut next = offset(&input_source(ns))?.unwrap_or(0);
    let local_cl = offset(&changelog_source(ns))?.unwrap_or(0);
    let (records, cl_end) = changelog.read(p, local_cl)?;
    let n_records = records.len() as u64;

    let entry_prefix = topic_prefix(ENTRY, topic);
    let commit_key = topic_prefix(COMMIT, topic);
    let mut image = local.clone();
    let mut pending: Vec<ChangeRecord> = Vec::new();
    let mut rewrite: Vec<Vec<u8>> = Vec::new();
    let mut applied = false;
    for r in records {
        if r.key == commit_key {
            let Some(v) = r.value.as_deref().filter(|v| v.len() >= 8) else {
                return Err(format!(
                    "changelog `{}` partition {p}: a commit record of topic {topic} without its position",
                    changelog.name()
                ));
            };
            let mut pos = [0u8; 8];
            pos.copy_from_slice(&v[..8]);
            next = i64::from_be_bytes(pos);
            book = Some(v[8..].to_vec());
            for e in pending.drain(..) {
                let key = e.key[entry_prefix.len()..].to_vec();
                if e.checkpoint == r.checkpoint {
                    match e.value {
                        Some(v) => image.insert(key, v),
                        None => image.remove(&key),
                    };
                } else {
                    rewrite.push(key);
                }
            }
            applied = true;
        } else if r.key.starts_with(&entry_prefix) {
            pending.push(r);
        }
    }
    // A checkpoint cut short: its entries are not state.
    rewrite.extend(
        pending
            .into_iter()
            .map(|e| e.key[entry_prefix.len()..].to_vec()),
    );

    let mut engine = match &book {
        None => Engine::new(spec.clone()).map_err(|e| format!("window: {e}"))?,
        Some(b) => match Engine::restore(spec.clone(), image.iter(), b) {
            Ok(e) => e,
            Err(RestoreError::Bookkeeping(DecodeError::Invalid { what, .. }))
                if what.starts_with("spec fingerprint") =>
            {
                tracing::warn!(
                    pipeline,
                    partition = %lbl,
                    groups = image.len(),
                    "the window or aggregates changed since the last checkpoint: \
                     this partition's window state restarts empty"
                );
                rewrite.extend(image.keys().cloned());
                image.clear();
                Engine::new(spec.clone()).map_err(|e| format!("window: {e}"))?
            }
            Err(e) => {
                return Err(format!(
                    "the window state of {lbl} (local store {dir}, changelog `{}`) cannot be read ({e})",
                    changelog.name()
                ))
            }
        },
    };
    engine.register_partition(super::part_id(topic.as_bytes(), p), now);
    engine.resume_partitions(now);
    let groups = engine.stats().open_entries;

    // The local store catches up with the changelog.
    if applied || !rewrite.is_empty() || cl_end != local_cl {
        let mut cp = store.checkpoint();
        let w = |e: dab_state::Error| format!("writing window state {lbl} to {dir}: {e}");
        for k in local.keys() {
            if !image.contains_key(k) {
                cp.delete(ns, &lbl, k).map_err(w)?;
            }
        }
        for (k, v) in &image {
            if local.get(k) != Some(v) {
                cp.put(ns, &lbl, k, v).map_err(w)?;
            }
        }
        if let Some(b) = &book {
            cp.set_bookkeeping(ns, &lbl, b).map_err(w)?;
        }
        cp.set_offset(&lbl, &input_source(ns), u64::try_from(next).unwrap_or(0))
            .map_err(w)?;
        cp.set_offset(
            &lbl,
            &changelog_source(ns),
            u64::try_from(cl_end).unwrap_or(0),
        )
        .map_err(w)?;
        cp.commit(true).map_err(w)?;
    }
    Ok(Restored {
        part: Part {
            engine,
            next,
            cl_next: cl_end,
            changed: !rewrite.is_empty(),
            last_arrival: now,
        },
        records: n_records,
        rewrite,
        groups,
    })
}
