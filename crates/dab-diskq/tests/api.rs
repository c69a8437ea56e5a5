//! The disk queue's API on real files: numbering and durability under each
//! fsync policy, segments, readers and their positions, deletion of
//! acknowledged segments, `max_bytes`, recovery of a torn tail, damage in a
//! sealed segment, and the metrics.

#![allow(clippy::unwrap_used)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dab_diskq::{DiskQueue, Error, FsyncPolicy, Options, WhenFull, FRAME_HEADER};

const HOUR: FsyncPolicy = FsyncPolicy::Interval(Duration::from_secs(3600));

fn opts(fsync: FsyncPolicy, readers: &[&str]) -> Options {
    Options {
        max_bytes: 1 << 30,
        segment_bytes: 4096,
        fsync,
        when_full: WhenFull::Block,
        readers: readers.iter().map(|r| r.to_string()).collect(),
    }
}

fn rec(seq: u64) -> Vec<u8> {
    let mut v = format!("record {seq} ").into_bytes();
    v.resize(v.len() + (seq as usize * 13) % 90, b'a' + (seq % 26) as u8);
    v
}

fn batch(from: u64, n: u64) -> Vec<Vec<u8>> {
    (from..from + n).map(rec).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

fn disk_usage(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .map(|p| fs::metadata(p).unwrap().len())
        .sum()
}

/// Reads everything `reader` can get now and checks it is `from..` in order
/// with the right bytes; returns the last sequence number read.
fn drain(q: &mut DiskQueue, reader: &str, from: u64) -> u64 {
    let mut want = from;
    loop {
        let got = q.read(reader, 100, usize::MAX).unwrap();
        if got.is_empty() {
            return want - 1;
        }
        for r in got.iter() {
            assert_eq!(r.seq, want, "records come in order");
            assert_eq!(r.bytes, rec(want), "record {want} has its bytes");
            want += 1;
        }
    }
}

#[test]
fn always_appends_are_durable_and_numbered_from_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &["r"])).unwrap();
    assert_eq!((q.next_seq(), q.durable_seq()), (1, 0));
    let a = q.append(&batch(1, 10)).unwrap();
    assert_eq!((a.first, a.end, a.refused), (1, 11, 0));
    assert_eq!(q.durable_seq(), 10);
    let b = q.append(&batch(11, 5)).unwrap();
    assert_eq!((b.first, b.end), (11, 16));
    assert_eq!(drain(&mut q, "r", 1), 15);
    let empty: [&[u8]; 0] = [];
    let c = q.append(&empty).unwrap();
    assert_eq!((c.first, c.end), (16, 16));
}

#[test]
fn interval_records_are_durable_after_sync_and_only_then_readable() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = DiskQueue::open(dir.path(), opts(HOUR, &["r"])).unwrap();
    assert_eq!(q.sync_due_in(), None, "nothing to sync");
    q.append(&batch(1, 3)).unwrap();
    assert_eq!(q.durable_seq(), 0, "an hour has not passed");
    assert!(q.sync_due_in().unwrap() > Duration::from_secs(3000));
    assert!(
        q.read("r", 10, usize::MAX).unwrap().is_empty(),
        "not durable, not readable"
    );
    assert_eq!(q.sync_if_due().unwrap(), 0);
    assert_eq!(q.sync().unwrap(), 3);
    assert_eq!(drain(&mut q, "r", 1), 3);

    let dir = tempfile::tempdir().unwrap();
    let ms = FsyncPolicy::Interval(Duration::from_millis(30));
    let mut q = DiskQueue::open(dir.path(), opts(ms, &[])).unwrap();
    q.append(&batch(1, 2)).unwrap();
    assert_eq!(q.durable_seq(), 0);
    std::thread::sleep(Duration::from_millis(40));
    assert_eq!(q.sync_due_in(), Some(Duration::ZERO));
    q.sync_if_due().unwrap();
    assert_eq!(q.sync_due_in(), None, "the sync was started");
    await_durable(&q, 2);
    q.append(&batch(3, 1)).unwrap();
    std::thread::sleep(Duration::from_millis(40));
    q.append(&batch(4, 1)).unwrap();
    await_durable(&q, 4);
    q.add_reader("r").unwrap();
    assert_eq!(drain(&mut q, "r", 1), 4, "durable records are readable");
}

/// Waits (at most 10 s) for the fsync thread to make `seq` durable.
fn await_durable(q: &DiskQueue, seq: u64) {
    let t = std::time::Instant::now();
    while q.durable_seq() < seq {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "record {seq} never became durable"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(q.durable_seq(), seq, "no more than was written");
}

#[test]
fn segments_are_bounded_named_by_first_seq_and_records_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = DiskQueue::open(dir.path(), opts(HOUR, &["r"])).unwrap();
    for i in 0..20 {
        q.append(&batch(1 + i * 10, 10)).unwrap();
    }
    assert!(q.durable_seq() > 0, "sealing a segment fsyncs it");
    q.sync().unwrap();
    let files = segment_files(dir.path());
    assert!(
        files.len() > 3,
        "200 records of ~100 bytes fill several 4 KiB segments"
    );
    assert_eq!(
        files[0].file_name().unwrap().to_str().unwrap(),
        "seg-00000000000000000001.log"
    );
    for f in &files {
        assert!(
            fs::metadata(f).unwrap().len() <= 4096,
            "{f:?} is within segment_bytes"
        );
    }
    assert_eq!(q.metrics().segments, files.len() as u64);
    assert_eq!(drain(&mut q, "r", 1), 200);
    let big = vec![0u8; 4096 - FRAME_HEADER + 1];
    assert!(matches!(
        q.append(&[big]),
        Err(Error::RecordTooLarge { .. })
    ));
    let fits = vec![7u8; 4096 - FRAME_HEADER];
    q.append(std::slice::from_ref(&fits)).unwrap();
    q.sync().unwrap();
    assert_eq!(
        q.read("r", 1, 0).unwrap().get(0).unwrap().bytes,
        fits,
        "a record as large as a segment allows"
    );
}

#[test]
fn read_limits_records_and_bytes_but_hands_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &["r"])).unwrap();
    q.append(&batch(1, 10)).unwrap();
    assert_eq!(q.read("r", 3, usize::MAX).unwrap().len(), 3);
    let one = q.read("r", 10, 1).unwrap();
    assert_eq!(one.len(), 1, "one record even when larger than max_bytes");
    assert_eq!(one.get(0).unwrap().seq, 4);
    let budget = rec(5).len() + rec(6).len();
    let two = q.read("r", 10, budget).unwrap();
    assert_eq!(two.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![5, 6]);
    assert_eq!(
        q.read("r", 10, usize::MAX).unwrap().get(0).unwrap().seq,
        7,
        "nothing lost at the byte limit"
    );
}

#[test]
fn positions_persist_and_new_readers_start_at_the_oldest_retained() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = DiskQueue::open(dir.path(), opts(HOUR, &["a"])).unwrap();
    q.append(&batch(1, 50)).unwrap();
    q.sync().unwrap();
    assert_eq!(q.read("a", 20, usize::MAX).unwrap().len(), 20);
    q.ack("a", 12).unwrap();
    q.ack("a", 5).unwrap();
    assert_eq!(q.position("a"), Some(12), "acking less does nothing");
    assert!(matches!(
        q.ack("a", 21),
        Err(Error::AckBeyondRead { read: 20, .. })
    ));
    assert!(matches!(q.ack("nobody", 1), Err(Error::UnknownReader(_))));
    assert!(matches!(
        q.read("nobody", 1, 1),
        Err(Error::UnknownReader(_))
    ));
    assert!(matches!(q.add_reader("../x"), Err(Error::ReaderName(_))));
    q.close().unwrap();

    let mut q = DiskQueue::open(dir.path(), opts(HOUR, &["a", "b"])).unwrap();
    assert_eq!(q.position("a"), Some(12), "written at close");
    assert_eq!(q.position("b"), Some(0), "new: before the oldest retained");
    assert_eq!(
        q.read("a", 1, usize::MAX).unwrap().get(0).unwrap().seq,
        13,
        "resumes after its position"
    );
    assert_eq!(drain(&mut q, "b", 1), 50);
    // An ack not yet written is lost with the process: the record comes again.
    q.ack("b", 50).unwrap();
    drop(q);
    let mut q = DiskQueue::open(dir.path(), opts(HOUR, &[])).unwrap();
    assert_eq!(
        q.readers().collect::<Vec<_>>(),
        vec!["a", "b"],
        "readers stay"
    );
    assert_eq!(q.position("b"), Some(0));
    q.remove_reader("b").unwrap();
    assert!(!dir.path().join("readers/b.pos").exists());
    assert!(matches!(q.remove_reader("b"), Err(Error::UnknownReader(_))));
}

#[test]
fn always_writes_each_ack_and_a_stale_temp_or_damaged_position_is_handled() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &["a", "b"])).unwrap();
    q.append(&batch(1, 10)).unwrap();
    assert_eq!(drain(&mut q, "a", 1), 10);
    q.ack("a", 7).unwrap();
    drop(q);
    fs::write(dir.path().join("readers/a.pos.tmp"), b"half").unwrap();
    fs::write(dir.path().join("readers/b.pos"), b"garbage").unwrap();
    let q = DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &[])).unwrap();
    assert_eq!(q.position("a"), Some(7), "each ack is written under always");
    assert_eq!(q.position("b"), Some(0));
    assert_eq!(q.recovery().positions_reset, vec!["b".to_string()]);
    assert!(!dir.path().join("readers/a.pos.tmp").exists());
}

#[test]
fn segments_every_reader_acked_are_deleted_and_none_without_readers() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = DiskQueue::open(dir.path(), opts(HOUR, &["a", "b"])).unwrap();
    for i in 0..20 {
        q.append(&batch(1 + i * 10, 10)).unwrap();
    }
    q.sync().unwrap();
    let before = segment_files(dir.path()).len();
    assert_eq!(drain(&mut q, "a", 1), 200);
    q.ack("a", 200).unwrap();
    q.sync().unwrap();
    assert_eq!(segment_files(dir.path()).len(), before, "b holds them");
    assert_eq!(drain(&mut q, "b", 1), 200);
    q.ack("b", 100).unwrap();
    q.sync().unwrap();
    let mid = segment_files(dir.path()).len();
    assert!(mid < before, "segments below 100 are gone");
    assert!(q.oldest_seq() <= 101 && q.oldest_seq() > 1);
    q.ack("b", 200).unwrap();
    q.sync().unwrap();
    assert_eq!(
        segment_files(dir.path()).len(),
        1,
        "only the active segment stays"
    );
    let m = q.metrics();
    assert_eq!(m.bytes_on_disk, disk_usage(dir.path()));
    assert_eq!(m.records_acked, 400);
    assert_eq!(m.records_read, 400);
    q.close().unwrap();
    // A reader new to the queue starts at the oldest retained record.
    let mut q = DiskQueue::open(dir.path(), opts(HOUR, &["c"])).unwrap();
    let oldest = q.oldest_seq();
    assert!(oldest > 1);
    assert_eq!(
        q.read("c", 1, usize::MAX).unwrap().get(0).unwrap().seq,
        oldest
    );

    let dir = tempfile::tempdir().unwrap();
    let mut q = DiskQueue::open(dir.path(), opts(HOUR, &[])).unwrap();
    for i in 0..20 {
        q.append(&batch(1 + i * 10, 10)).unwrap();
    }
    q.close().unwrap();
    let q = DiskQueue::open(dir.path(), opts(HOUR, &[])).unwrap();
    assert_eq!(q.oldest_seq(), 1, "no reader: everything kept");
}

#[test]
fn full_queue_is_back_pressure_and_usage_stays_within_max_bytes_plus_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(FsyncPolicy::Always, &["r"]);
    o.max_bytes = 20_000;
    let mut q = DiskQueue::open(dir.path(), o.clone()).unwrap();
    let (mut next, mut fulls) = (1u64, 0u32);
    for round in 0..200u64 {
        match q.append(&batch(next, 7)) {
            Ok(a) => {
                assert_eq!(a.refused, 0);
                next = a.end;
            }
            Err(Error::Full { max, .. }) => {
                assert_eq!(max, 20_000);
                fulls += 1;
                // The reader catches up now and then, which frees segments.
                if round % 3 == 0 {
                    let from = q.position("r").unwrap() + 1;
                    let last = drain(&mut q, "r", from);
                    q.ack("r", last).unwrap();
                }
            }
            Err(e) => panic!("append: {e}"),
        }
        let usage = disk_usage(dir.path());
        assert!(
            usage <= 20_000 + 4096,
            "usage {usage} past max_bytes plus a segment"
        );
        assert_eq!(q.metrics().bytes_on_disk, usage);
    }
    assert!(fulls > 0, "the queue filled");
    assert_eq!(q.metrics().full_rejections, u64::from(fulls));
    assert!(next > 400, "acks made room again: {next}");
    drop(q);

    let dir = tempfile::tempdir().unwrap();
    o.when_full = WhenFull::DropNewest;
    o.readers.clear();
    let mut q = DiskQueue::open(dir.path(), o).unwrap();
    let mut refused = 0;
    let mut next = 1;
    for _ in 0..100 {
        let a = q.append(&batch(next, 10)).unwrap();
        assert_eq!(a.end - a.first + a.refused as u64, 10);
        refused += a.refused as u64;
        next = a.end;
        assert!(disk_usage(dir.path()) <= 20_000 + 4096);
    }
    assert!(refused > 0);
    assert_eq!(q.metrics().records_refused, refused);
    assert!(q.metrics().bytes_on_disk <= 20_000);
}

/// Appends `n` records and closes; returns the tail segment.
fn queue_with(dir: &Path, n: u64) -> PathBuf {
    let mut q = DiskQueue::open(dir, opts(FsyncPolicy::Always, &["r"])).unwrap();
    q.append(&batch(1, n)).unwrap();
    q.close().unwrap();
    segment_files(dir).pop().unwrap()
}

#[test]
fn a_tail_cut_mid_record_is_cut_off_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let tail = queue_with(dir.path(), 5);
    let len = fs::metadata(&tail).unwrap().len();
    let last = (FRAME_HEADER + rec(5).len()) as u64;
    let cut = len - last + 10;
    OpenOptions::new()
        .write(true)
        .open(&tail)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let mut q = DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &[])).unwrap();
    let rcv = q.recovery().clone();
    assert_eq!(
        (rcv.torn_records, rcv.torn_bytes, rcv.tail_records),
        (1, 10, 4)
    );
    assert_eq!(
        fs::metadata(&tail).unwrap().len(),
        len - last,
        "truncated to the last good record"
    );
    assert_eq!(q.next_seq(), 5);
    let m = q.metrics();
    assert_eq!((m.torn_records, m.torn_bytes), (1, 10));
    assert_eq!(drain(&mut q, "r", 1), 4);
    q.append(&batch(5, 1)).unwrap();
    q.close().unwrap();
    let q = DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &[])).unwrap();
    assert_eq!(q.recovery().torn_bytes, 0, "a clean reopen cuts nothing");
    assert_eq!(q.next_seq(), 6);
}

#[test]
fn garbage_after_the_tail_or_a_flipped_byte_in_it_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let tail = queue_with(dir.path(), 5);
    let len = fs::metadata(&tail).unwrap().len();
    OpenOptions::new()
        .append(true)
        .open(&tail)
        .unwrap()
        .write_all(&[0xAB; 100])
        .unwrap();
    let q = DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &[])).unwrap();
    assert_eq!(
        (q.recovery().torn_records, q.recovery().torn_bytes),
        (1, 100)
    );
    assert_eq!(fs::metadata(&tail).unwrap().len(), len);
    drop(q);

    // A flipped payload byte in record 4: records 4 and 5 are cut.
    let mut bytes = fs::read(&tail).unwrap();
    let at4: usize = (1..4).map(|s| FRAME_HEADER + rec(s).len()).sum();
    bytes[at4 + FRAME_HEADER + 2] ^= 0x01;
    fs::write(&tail, &bytes).unwrap();
    let mut q = DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &[])).unwrap();
    assert_eq!(q.recovery().torn_bytes, len - at4 as u64);
    assert_eq!(q.next_seq(), 4);
    assert_eq!(drain(&mut q, "r", 1), 3);
}

#[test]
fn damage_in_a_sealed_segment_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &["r"])).unwrap();
    for i in 0..20 {
        q.append(&batch(1 + i * 10, 10)).unwrap();
    }
    q.close().unwrap();
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    let second: u64 = files[1].file_name().unwrap().to_str().unwrap()[4..24]
        .parse()
        .unwrap();
    let mut bytes = fs::read(&files[0]).unwrap();
    let at3: usize = (1..3).map(|s| FRAME_HEADER + rec(s).len()).sum();
    bytes[at3 + FRAME_HEADER] ^= 0xFF;
    fs::write(&files[0], &bytes).unwrap();

    let mut q = DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &[])).unwrap();
    assert_eq!(q.recovery().torn_bytes, 0, "sealed segments are not cut");
    let got = q.read("r", 1000, usize::MAX).unwrap();
    let seqs: Vec<u64> = got.iter().map(|r| r.seq).collect();
    let mut want = vec![1, 2];
    want.extend(second..=200);
    assert_eq!(seqs, want, "the rest of the damaged segment is skipped");
    for r in &got {
        assert_eq!(r.bytes, rec(r.seq));
    }
    let m = q.metrics();
    assert_eq!(m.skipped_records, second - 3);
    assert_eq!(m.skipped_bytes, bytes.len() as u64 - at3 as u64);
    q.ack("r", 200).unwrap();
}

#[test]
fn damage_among_durable_records_of_the_active_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &["r"])).unwrap();
    q.append(&batch(1, 5)).unwrap();
    let tail = segment_files(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&tail).unwrap();
    bytes[FRAME_HEADER + 1] ^= 0x10;
    fs::write(&tail, &bytes).unwrap();
    match q.read("r", 10, usize::MAX) {
        Err(Error::Corrupt {
            offset: 0, seq: 1, ..
        }) => {}
        other => panic!("expected a corrupt record at 0, got {other:?}"),
    }
}

#[test]
fn metrics_report_the_age_of_the_oldest_unacknowledged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &["a", "b"])).unwrap();
    assert_eq!(q.metrics().oldest_unacked_age, None);
    q.append(&batch(1, 3)).unwrap();
    std::thread::sleep(Duration::from_millis(60));
    q.append(&batch(4, 3)).unwrap();
    let age = q.metrics().oldest_unacked_age.unwrap();
    assert!(age >= Duration::from_millis(60), "record 1 is {age:?} old");
    assert_eq!(drain(&mut q, "a", 1), 6);
    assert_eq!(drain(&mut q, "b", 1), 6);
    q.ack("a", 6).unwrap();
    q.ack("b", 3).unwrap();
    let age = q.metrics().oldest_unacked_age.unwrap();
    assert!(
        age < Duration::from_millis(55),
        "record 4 is newer: {age:?}"
    );
    q.ack("b", 6).unwrap();
    let m = q.metrics();
    assert_eq!(m.oldest_unacked_age, None, "all acknowledged");
    assert_eq!(
        (m.records_appended, m.records_read, m.records_acked),
        (6, 12, 12)
    );
    q.close().unwrap();
    // After reopen nothing is in flight: the age comes from the segment.
    let mut q = DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &["c"])).unwrap();
    let age = q.metrics().oldest_unacked_age.unwrap();
    assert!(
        age >= Duration::from_millis(60),
        "c has not read record 1: {age:?}"
    );
    q.remove_reader("c").unwrap();
    q.remove_reader("a").unwrap();
    q.remove_reader("b").unwrap();
    assert!(
        q.metrics().oldest_unacked_age.is_some(),
        "no reader: the oldest retained"
    );
}

#[test]
fn deletion_waits_for_written_positions_not_acks_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = DiskQueue::open(dir.path(), opts(HOUR, &["a", "b"])).unwrap();
    for i in 0..20 {
        q.append(&batch(1 + i * 10, 10)).unwrap();
    }
    q.sync().unwrap();
    let before = segment_files(dir.path()).len();
    assert_eq!(drain(&mut q, "a", 1), 200);
    q.ack("a", 200).unwrap();
    // b goes; a's ack is not written yet, so a crash would restart a at 1:
    // nothing may be deleted on the strength of that ack.
    q.remove_reader("b").unwrap();
    assert_eq!(segment_files(dir.path()).len(), before);
    drop(q);
    let mut q = DiskQueue::open(dir.path(), opts(HOUR, &[])).unwrap();
    assert_eq!(q.position("a"), Some(0));
    assert_eq!(drain(&mut q, "a", 1), 200, "every record is there again");
}

#[test]
fn a_torn_position_write_leaves_the_previous_position() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &["a"])).unwrap();
    q.append(&batch(1, 10)).unwrap();
    assert_eq!(drain(&mut q, "a", 1), 10);
    q.ack("a", 3).unwrap();
    q.ack("a", 7).unwrap();
    drop(q);
    // Writes go to the two 32-byte slots in turn: created (0) in slot 0,
    // 3 in slot 1, 7 in slot 0 again. Tear slot 0.
    let pos = dir.path().join("readers/a.pos");
    let mut bytes = fs::read(&pos).unwrap();
    assert_eq!(bytes.len(), 64);
    bytes[20] ^= 0x40;
    fs::write(&pos, &bytes).unwrap();
    let mut q = DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &[])).unwrap();
    assert_eq!(q.position("a"), Some(3), "the slot written before stands");
    assert!(q.recovery().positions_reset.is_empty());
    assert_eq!(q.read("a", 1, usize::MAX).unwrap().get(0).unwrap().seq, 4);
    q.ack("a", 4).unwrap();
    drop(q);
    let q = DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &[])).unwrap();
    assert_eq!(q.position("a"), Some(4), "written over the torn slot");
}

#[test]
fn records_larger_than_one_read_chunk_come_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(FsyncPolicy::Always, &["r"]);
    o.segment_bytes = 1 << 20;
    let mut q = DiskQueue::open(dir.path(), o).unwrap();
    let big: Vec<Vec<u8>> = (0..5u8)
        .map(|i| (0..300_000u32).map(|j| (j % 251) as u8 ^ i).collect())
        .collect();
    q.append(&big).unwrap();
    let mut seen = 0;
    for max_bytes in [0, 1, 500_000, usize::MAX] {
        let got = q.read("r", 2, max_bytes).unwrap();
        assert!(!got.is_empty() && got.len() <= 2);
        for r in got.iter() {
            assert_eq!(r.bytes, big[seen].as_slice(), "record {}", r.seq);
            assert_eq!(r.seq, seen as u64 + 1);
            seen += 1;
        }
        if max_bytes < 300_000 {
            assert_eq!(got.len(), 1, "one record past a small budget");
        }
    }
    assert_eq!(seen, 5);
}

#[test]
fn rewind_hands_out_the_unacknowledged_records_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut q = DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &["r"])).unwrap();
    q.append(&batch(1, 20)).unwrap();
    let first = q.read("r", 5, usize::MAX).unwrap();
    assert_eq!(first.last_seq(), Some(5));
    q.ack("r", 3).unwrap();
    let second = q.read("r", 5, usize::MAX).unwrap();
    assert_eq!(second.last_seq(), Some(10));
    q.rewind("r").unwrap();
    // Acknowledging what the rewound reader has not read again is refused.
    assert!(matches!(q.ack("r", 8), Err(Error::AckBeyondRead { .. })));
    let again = q.read("r", 100, usize::MAX).unwrap();
    let seqs: Vec<u64> = again.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (4..=20).collect::<Vec<_>>());
    for r in &again {
        assert_eq!(r.bytes, rec(r.seq).as_slice());
    }
    q.ack("r", 20).unwrap();
    assert_eq!(q.position("r"), Some(20));
    assert!(matches!(q.rewind("nobody"), Err(Error::UnknownReader(_))));
}

#[test]
fn a_directory_open_elsewhere_is_refused_and_free_again_once_closed() {
    let dir = tempfile::tempdir().unwrap();
    let q = DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &["r"])).unwrap();
    // flock is per open file: a second opening, even in this process,
    // stands for another process.
    match DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &["r"])) {
        Err(Error::Locked(p)) => assert_eq!(p, dir.path()),
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("a second opening of a locked queue succeeded"),
    }
    let text = DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &["r"]))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(text.contains("another process"), "{text}");
    drop(q);
    DiskQueue::open(dir.path(), opts(FsyncPolicy::Always, &["r"])).expect("free once closed");
}
