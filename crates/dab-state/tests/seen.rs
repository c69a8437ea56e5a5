//! `SeenUids` against a model (the newest `capacity` distinct UIDs, oldest
//! first), across checkpoints and reloads that drop what was not committed.

use std::collections::VecDeque;

use dab_state::{SeenUids, StateStore};
use proptest::prelude::*;

const NS: &str = "dab.seen/in";
const PART: &str = "kafka:in:0";

#[derive(Debug, Clone)]
enum Op {
    Insert(u8),
    Commit,
    Reload,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..24u8).prop_map(Op::Insert),
        2 => Just(Op::Commit),
        1 => Just(Op::Reload),
    ]
}

fn check(seen: &SeenUids, model: &VecDeque<u8>) -> Result<(), TestCaseError> {
    prop_assert_eq!(seen.len(), model.len());
    for uid in 0..24u8 {
        prop_assert_eq!(seen.contains(&[uid]), model.contains(&uid), "uid {}", uid);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn seen_uids_keep_the_newest_committed(
        capacity in 1..8usize,
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let dir = tempfile::tempdir()?;
        let store = StateStore::open(dir.path())?;
        let mut seen = SeenUids::load(&store, NS, PART, capacity)?;
        let (mut model, mut committed) = (VecDeque::new(), VecDeque::new());
        for op in ops {
            match op {
                Op::Insert(uid) => {
                    let new = !model.contains(&uid);
                    prop_assert_eq!(seen.insert(&[uid]), new);
                    if new {
                        model.push_back(uid);
                        if model.len() > capacity {
                            model.pop_front();
                        }
                    }
                }
                Op::Commit => {
                    let mut cp = store.checkpoint();
                    seen.stage(&mut cp)?;
                    cp.commit(false)?;
                    committed = model.clone();
                    // The store holds exactly the UIDs kept, no evicted ones.
                    prop_assert_eq!(store.state_of(NS, PART)?.len(), committed.len());
                }
                Op::Reload => {
                    seen = SeenUids::load(&store, NS, PART, capacity)?;
                    model = committed.clone();
                }
            }
            check(&seen, &model)?;
        }
    }
}
