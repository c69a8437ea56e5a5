//! `VerifySignature`, `OnError` and `Dedup` as they run (issue 4): good
//! signatures pass, bad ones go to the `OnError` target or are dropped and
//! counted, and redelivered UIDs are dropped within the window.

mod support;

use bytes::Bytes;
use dab_api::signature::Signer;
use dab_api::{AckStatus, Event};
use dab_runtime::metrics::DropReason;
use support::*;

fn key_file(dir: &tempfile::TempDir, key: &[u8]) -> String {
    let path = dir.path().join("murron.key");
    // A trailing newline, as editors write it, is not part of the key.
    std::fs::write(&path, [key, b"\n"].concat()).expect("write key");
    path.display().to_string()
}

fn signed(events: Vec<Event>, key: &[u8], bad_every: u64) -> Vec<Event> {
    let mut s = Signer::new(key);
    events
        .into_iter()
        .map(|mut e| {
            let sig = s.sign(&e);
            e.signature = Bytes::copy_from_slice(&sig);
            if bad_every > 0 && e.offset % bad_every == 0 {
                // Tampered after signing.
                e.pid += 1;
            }
            e
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_go_to_on_error_and_good_ones_pass() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(&dir, b"s3cret");
    let h = Harness::new();
    let events = signed(alternating(0, 100), b"s3cret", 10);
    let (_, mut rxs) = h.vec_source("Src", batches(events, 25));
    let ok = h.sink("Ok");
    let dlq = h.sink("Dlq");
    let plan = plan(
        "p.NewPipeline().In(Src).VerifySignature(key = Murron).Out(Ok).OnError(Dlq)",
        &bindings(
            &["Src"],
            &["Ok", "Dlq"],
            &format!("keys:\n  Murron: {{ file: \"{key}\" }}\n"),
        ),
    );
    let running = h.start(&plan, 8);
    assert_eq!(acks(&mut rxs).await, vec![AckStatus::Delivered; 4]);
    finish(&running).await;
    let bad: Vec<u64> = (0..100).filter(|o| o % 10 == 0).collect();
    let good: Vec<u64> = (0..100).filter(|o| o % 10 != 0).collect();
    assert_eq!(ok.offsets(), good);
    assert_eq!(dlq.offsets(), bad);
    assert_eq!(pipeline(&running, "p").failed_events.get(), 10);
    assert_eq!(
        pipeline(&running, "p").dropped_count(DropReason::BadSignature),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_on_error_bad_signatures_are_dropped_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = key_file(&dir, b"s3cret");
    let h = Harness::new();
    // Signed with another key: every event fails.
    let events = signed(alternating(0, 40), b"wrong", 0);
    let (_, mut rxs) = h.vec_source("Src", batches(events, 40));
    let ok = h.sink("Ok");
    let plan = plan(
        "p.NewPipeline().In(Src).VerifySignature(key = Murron).Out(Ok)",
        &bindings(
            &["Src"],
            &["Ok"],
            &format!("keys:\n  Murron: {{ file: \"{key}\" }}\n"),
        ),
    );
    let running = h.start(&plan, 8);
    assert_eq!(acks(&mut rxs).await, vec![AckStatus::Delivered]);
    finish(&running).await;
    assert_eq!(ok.len(), 0);
    assert_eq!(
        pipeline(&running, "p").dropped_count(DropReason::BadSignature),
        40
    );
}

#[test]
fn an_unreadable_key_is_refused_when_the_set_is_checked_and_never_planned() {
    // Since issue 11 the key is read by the check (validate and run alike),
    // not at start: the set has an E018 and no pipeline to start.
    let (plan, errors) = check(
        "p.NewPipeline().In(Src).VerifySignature(key = Murron).Out(Ok)",
        &bindings(
            &["Src"],
            &["Ok"],
            "keys:\n  Murron: { file: \"/nonexistent/dab.key\" }\n",
        ),
    );
    assert_eq!(
        errors,
        ["E018: cannot read key file `/nonexistent/dab.key` of key `Murron`: No such file or directory (os error 2)"]
    );
    assert!(plan.pipelines.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_drops_redelivered_uids_and_counts_them() {
    let h = Harness::new();
    let first = alternating(0, 50);
    // A retry redelivers offsets 20..50, then new ones follow.
    let again: Vec<Event> = first[20..].to_vec();
    let more = alternating(50, 10);
    let (_, mut rxs) = h.vec_source("Src", vec![first, again, more]);
    let s = h.sink("S");
    let plan = plan(
        "p.NewPipeline().In(Src).Dedup(within = 10m).Out(S)",
        &bindings(&["Src"], &["S"], ""),
    );
    let running = h.start(&plan, 8);
    assert_eq!(acks(&mut rxs).await, vec![AckStatus::Delivered; 3]);
    finish(&running).await;
    assert_eq!(s.offsets(), (0..60).collect::<Vec<u64>>());
    assert_eq!(
        pipeline(&running, "p").dropped_count(DropReason::Duplicate),
        30
    );
}
