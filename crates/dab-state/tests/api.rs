//! The store's API on real files: reads, scans, positions, bookkeeping,
//! partitions moved between stores, the seen-UID set.

use std::ops::Bound;

use dab_state::{Error, StateStore, GLOBAL};

const OP: &str = "api_stats/2";
const P0: &str = "kafka:orders:0";
const P1: &str = "kafka:orders:1";

fn open(dir: &tempfile::TempDir) -> StateStore {
    StateStore::open(dir.path()).expect("open store")
}

fn keys(it: impl Iterator<Item = dab_state::Result<dab_state::Entry>>) -> Vec<(String, String)> {
    it.map(|e| {
        let (k, v) = e.expect("scan");
        (
            String::from_utf8(k).expect("utf8 key"),
            String::from_utf8(v).expect("utf8 value"),
        )
    })
    .collect()
}

#[test]
fn staged_changes_are_invisible_until_commit_and_numbered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    assert_eq!(store.last_checkpoint(), None);
    let mut cp = store.checkpoint();
    cp.put(OP, P0, b"team-a", b"3").expect("put");
    cp.set_offset(P0, "orders", 17).expect("pos");
    cp.set_position(P0, "http", b"opaque").expect("pos");
    assert_eq!(store.get(OP, P0, b"team-a").expect("get"), None);
    assert_eq!(store.position(P0, "orders").expect("pos"), None);
    assert_eq!(cp.len(), 3);
    assert_eq!(cp.commit(true).expect("commit"), 1);
    assert_eq!(
        store.get(OP, P0, b"team-a").expect("get"),
        Some(b"3".to_vec())
    );
    assert_eq!(store.offset(P0, "orders").expect("offset"), Some(17));
    assert_eq!(
        store.position(P0, "orders").expect("pos"),
        Some(17u64.to_be_bytes().to_vec())
    );
    assert!(matches!(
        store.offset(P0, "http"),
        Err(Error::Malformed { what: "offset" })
    ));
    assert_eq!(store.offset(P1, "orders").expect("offset"), None);
    // A dropped checkpoint writes nothing and takes no number.
    let mut dropped = store.checkpoint();
    dropped.put(OP, P0, b"team-a", b"99").expect("put");
    drop(dropped);
    assert_eq!(store.checkpoint().commit(false).expect("commit"), 2);
    assert_eq!(
        store.get(OP, P0, b"team-a").expect("get"),
        Some(b"3".to_vec())
    );
    assert_eq!(store.last_checkpoint(), Some(2));
}

#[test]
fn last_change_in_a_checkpoint_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let mut cp = store.checkpoint();
    cp.put(OP, P0, b"k", b"1").expect("put");
    cp.delete(OP, P0, b"k").expect("delete");
    cp.put(OP, P0, b"j", b"1").expect("put");
    cp.put(OP, P0, b"j", b"2").expect("put");
    // A delete first, then a put, in a partition that does not exist yet.
    cp.delete(OP, P1, b"a").expect("delete");
    cp.put(OP, P1, b"b", b"x").expect("put");
    cp.commit(false).expect("commit");
    assert_eq!(store.get(OP, P0, b"k").expect("get"), None);
    assert_eq!(store.get(OP, P0, b"j").expect("get"), Some(b"2".to_vec()));
    assert_eq!(store.get(OP, P1, b"b").expect("get"), Some(b"x".to_vec()));
}

#[test]
fn owners_and_partitions_do_not_see_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let mut cp = store.checkpoint();
    cp.put(OP, P0, b"k", b"op-p0").expect("put");
    cp.put(OP, P1, b"k", b"op-p1").expect("put");
    // An owner whose name extends the other's must not leak into its scans.
    cp.put("api_stats/20", P0, b"k", b"other").expect("put");
    cp.put(OP, GLOBAL, b"k", b"global").expect("put");
    cp.commit(true).expect("commit");
    assert_eq!(
        store.get(OP, P0, b"k").expect("get"),
        Some(b"op-p0".to_vec())
    );
    assert_eq!(
        store.get(OP, P1, b"k").expect("get"),
        Some(b"op-p1".to_vec())
    );
    assert_eq!(
        store.get(OP, GLOBAL, b"k").expect("get"),
        Some(b"global".to_vec())
    );
    assert_eq!(
        keys(store.scan_prefix(OP, P0, b"").expect("scan")),
        vec![("k".into(), "op-p0".into())]
    );
    assert_eq!(store.get(OP, "kafka:orders:9", b"k").expect("get"), None);
    assert_eq!(
        store.partitions().expect("partitions"),
        vec![GLOBAL.to_owned(), P0.to_owned(), P1.to_owned()]
    );
}

#[test]
fn prefix_and_range_scans_stay_in_their_owner() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let mut cp = store.checkpoint();
    for k in ["a1", "a2", "b1", "b2", "c"] {
        cp.put(OP, P0, k.as_bytes(), k.to_uppercase().as_bytes())
            .expect("put");
    }
    cp.put("api_stats/1", P0, b"a3", b"other owner")
        .expect("put");
    cp.put(OP, P0, b"\xff\xff", b"last").expect("put");
    cp.commit(false).expect("commit");
    let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    assert_eq!(
        keys(store.scan_prefix(OP, P0, b"a").expect("scan")),
        vec![pair("a1", "A1"), pair("a2", "A2")]
    );
    assert_eq!(
        keys(
            store
                .scan_range(OP, P0, Bound::Excluded(b"a1"), Bound::Included(b"b2"))
                .expect("scan")
        ),
        vec![pair("a2", "A2"), pair("b1", "B1"), pair("b2", "B2")]
    );
    let tail: Vec<_> = store
        .scan_range(OP, P0, Bound::Included(b"c"), Bound::Unbounded)
        .expect("scan")
        .map(|e| e.expect("scan").0)
        .collect();
    assert_eq!(tail, vec![b"c".to_vec(), b"\xff\xff".to_vec()]);
    let all = store
        .scan_range(OP, P0, Bound::Unbounded, Bound::Excluded(b"b"))
        .expect("scan")
        .count();
    assert_eq!(all, 2);
    assert_eq!(store.state_of(OP, P0).expect("state").len(), 6);
    assert_eq!(store.scan_prefix(OP, P1, b"").expect("scan").count(), 0);
}

#[test]
fn positions_and_bookkeeping_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open(&dir);
        let mut cp = store.checkpoint();
        cp.put(OP, P0, b"g", b"1").expect("put");
        cp.set_position(P0, "orders", b"offset 41").expect("pos");
        cp.set_position(P0, "clicks", b"offset 7").expect("pos");
        cp.set_bookkeeping(OP, P0, b"watermark 1000").expect("book");
        cp.commit(false).expect("commit");
        let mut cp = store.checkpoint();
        cp.set_position(P0, "orders", b"offset 42").expect("pos");
        cp.commit(false).expect("commit");
    }
    let store = open(&dir);
    assert_eq!(store.last_checkpoint(), Some(2));
    assert_eq!(
        store.positions(P0).expect("positions"),
        vec![
            ("clicks".to_owned(), b"offset 7".to_vec()),
            ("orders".to_owned(), b"offset 42".to_vec())
        ]
    );
    assert_eq!(
        store.bookkeeping(OP, P0).expect("book"),
        Some(b"watermark 1000".to_vec())
    );
    assert_eq!(store.bookkeeping(OP, P1).expect("book"), None);
    assert_eq!(store.get(OP, P0, b"g").expect("get"), Some(b"1".to_vec()));
    // The numbering goes on where it stopped.
    assert_eq!(store.checkpoint().commit(false).expect("commit"), 3);
}

#[test]
fn a_partition_moves_to_another_store_and_is_cleared_here() {
    let (a_dir, b_dir) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let (a, b) = (open(&a_dir), open(&b_dir));
    let mut cp = a.checkpoint();
    cp.put(OP, P0, b"k", b"moved").expect("put");
    cp.put(OP, P1, b"k", b"stays").expect("put");
    cp.set_position(P0, "orders", b"9").expect("pos");
    cp.set_bookkeeping(OP, P0, b"wm").expect("book");
    cp.commit(true).expect("commit");

    let image = a.export_partition(P0).expect("export");
    assert_eq!(image.len(), 3);
    let mut cp = b.checkpoint();
    cp.put(OP, P0, b"stale", b"from before").expect("put");
    cp.commit(false).expect("commit");
    let mut cp = b.checkpoint();
    cp.import_partition(P0, &image).expect("import");
    cp.commit(true).expect("commit");
    assert_eq!(b.export_partition(P0).expect("export"), image);
    assert_eq!(b.get(OP, P0, b"stale").expect("get"), None);
    assert_eq!(b.position(P0, "orders").expect("pos"), Some(b"9".to_vec()));

    let mut cp = a.checkpoint();
    cp.put(OP, P0, b"staged", b"then cleared").expect("put");
    cp.clear_partition(P0).expect("clear");
    cp.commit(true).expect("commit");
    assert!(a.export_partition(P0).expect("export").is_empty());
    assert_eq!(a.partitions().expect("partitions"), vec![P1.to_owned()]);
    assert_eq!(a.get(OP, P1, b"k").expect("get"), Some(b"stays".to_vec()));
}

#[test]
fn labels_and_owners_too_long_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let mut cp = store.checkpoint();
    let long = "p".repeat(200);
    assert!(matches!(
        cp.put(OP, &long, b"k", b"v"),
        Err(Error::PartitionLabel { len: 200, max: 127 })
    ));
    assert!(matches!(
        cp.put(&"o".repeat(300), P0, b"k", b"v"),
        Err(Error::Namespace { len: 300, max: 255 })
    ));
    assert!(cp.is_empty());
}
