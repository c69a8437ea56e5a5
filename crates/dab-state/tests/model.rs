//! Random sequences of puts, deletes, positions, bookkeeping, clears,
//! commits, abandoned checkpoints and reopens against an in-memory model:
//! after every commit and every reopen the store equals the model at its
//! last committed checkpoint.

use std::collections::{BTreeMap, BTreeSet};

use dab_state::StateStore;
use proptest::prelude::*;

const PARTS: [&str; 3] = ["", "kafka:orders:0", "é/ü 7"];
// The second owner's name extends the first's: scans must keep them apart.
const OWNERS: [&str; 2] = ["op/a", "op/ab"];
const SOURCES: [&str; 2] = ["orders", "clicks"];
const KEYS: [&[u8]; 6] = [b"", b"\x00", b"\xff", b"a", b"ab", b"\x01\x02"];

#[derive(Debug, Clone)]
enum Op {
    Put(usize, usize, usize, u8),
    Delete(usize, usize, usize),
    Position(usize, usize, u8),
    Bookkeeping(usize, usize, u8),
    Clear(usize),
    Commit(bool),
    Abandon,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize, 0..3usize, 0..6usize, any::<u8>()).prop_map(|(o, p, k, v)| Op::Put(o, p, k, v)),
        3 => (0..2usize, 0..3usize, 0..6usize).prop_map(|(o, p, k)| Op::Delete(o, p, k)),
        2 => (0..3usize, 0..2usize, any::<u8>()).prop_map(|(p, s, v)| Op::Position(p, s, v)),
        2 => (0..2usize, 0..3usize, any::<u8>()).prop_map(|(o, p, v)| Op::Bookkeeping(o, p, v)),
        1 => (0..3usize).prop_map(Op::Clear),
        3 => any::<bool>().prop_map(Op::Commit),
        1 => Just(Op::Abandon),
        1 => Just(Op::Reopen),
    ]
}

/// What a store holds, keyed by input partition first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    state: BTreeMap<(String, String, Vec<u8>), Vec<u8>>,
    positions: BTreeMap<(String, String), Vec<u8>>,
    bookkeeping: BTreeMap<(String, String), Vec<u8>>,
    last: Option<u64>,
}

impl Model {
    fn clear(&mut self, part: &str) {
        self.state.retain(|(p, _, _), _| p != part);
        self.positions.retain(|(p, _), _| p != part);
        self.bookkeeping.retain(|(p, _), _| p != part);
    }

    fn parts(&self) -> BTreeSet<String> {
        let state = self.state.keys().map(|(p, _, _)| p);
        let other = self.positions.keys().chain(self.bookkeeping.keys());
        state.chain(other.map(|(p, _)| p)).cloned().collect()
    }
}

fn read(store: &StateStore) -> Result<Model, TestCaseError> {
    let mut m = Model {
        last: store.last_checkpoint(),
        ..Model::default()
    };
    for part in PARTS {
        for (owner, key, v) in store.state_entries(part)? {
            m.state.insert((part.into(), owner, key), v);
        }
        for owner in OWNERS {
            // Scans by owner give what the layout-wide listing gave.
            let scanned: Vec<_> = store
                .scan_prefix(owner, part, b"")?
                .collect::<Result<_, _>>()?;
            let listed: Vec<_> = m
                .state
                .iter()
                .filter(|((p, o, _), _)| p == part && o == owner)
                .map(|((_, _, k), v)| (k.clone(), v.clone()))
                .collect();
            prop_assert_eq!(scanned, listed);
            for key in KEYS {
                let want = m.state.get(&(part.into(), owner.into(), key.to_vec()));
                let got = store.get(owner, part, key)?;
                prop_assert_eq!(got.as_ref(), want);
            }
            if let Some(b) = store.bookkeeping(owner, part)? {
                m.bookkeeping.insert((part.into(), owner.into()), b);
            }
        }
        for (source, p) in store.positions(part)? {
            m.positions.insert((part.into(), source), p);
        }
    }
    let listed: BTreeSet<String> = store.partitions()?.into_iter().collect();
    prop_assert_eq!(&listed, &m.parts());
    Ok(m)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn store_equals_model_at_last_commit(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir()?;
        let mut store = Some(StateStore::open(dir.path())?);
        let mut committed = Model::default();
        let mut staged = committed.clone();
        let mut cp = store.as_ref().map(StateStore::checkpoint);
        for op in ops {
            let (s, c) = (store.as_ref().expect("open"), cp.as_mut().expect("started"));
            match op {
                Op::Put(o, p, k, v) => {
                    c.put(OWNERS[o], PARTS[p], KEYS[k], &[v])?;
                    staged.state.insert((PARTS[p].into(), OWNERS[o].into(), KEYS[k].to_vec()), vec![v]);
                }
                Op::Delete(o, p, k) => {
                    c.delete(OWNERS[o], PARTS[p], KEYS[k])?;
                    staged.state.remove(&(PARTS[p].into(), OWNERS[o].into(), KEYS[k].to_vec()));
                }
                Op::Position(p, src, v) => {
                    c.set_position(PARTS[p], SOURCES[src], &[v])?;
                    staged.positions.insert((PARTS[p].into(), SOURCES[src].into()), vec![v]);
                }
                Op::Bookkeeping(o, p, v) => {
                    c.set_bookkeeping(OWNERS[o], PARTS[p], &[v])?;
                    staged.bookkeeping.insert((PARTS[p].into(), OWNERS[o].into()), vec![v]);
                }
                Op::Clear(p) => {
                    c.clear_partition(PARTS[p])?;
                    staged.clear(PARTS[p]);
                }
                Op::Commit(durable) => {
                    let number = cp.take().expect("started").commit(durable)?;
                    staged.last = Some(committed.last.unwrap_or(0) + 1);
                    prop_assert_eq!(Some(number), staged.last);
                    committed = staged.clone();
                    prop_assert_eq!(read(s)?, committed.clone());
                    cp = Some(s.checkpoint());
                }
                Op::Abandon => {
                    cp = Some(s.checkpoint());
                    staged = committed.clone();
                }
                Op::Reopen => {
                    // Close the store first: one process, one open store.
                    drop(cp.take());
                    drop(store.take());
                    let s = StateStore::open(dir.path())?;
                    prop_assert_eq!(read(&s)?, committed.clone());
                    cp = Some(s.checkpoint());
                    store = Some(s);
                    staged = committed.clone();
                }
            }
        }
        drop(cp);
        drop(store);
        prop_assert_eq!(read(&StateStore::open(dir.path())?)?, committed);
    }
}
