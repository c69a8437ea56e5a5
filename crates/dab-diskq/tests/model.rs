//! Model-based test: random appends, syncs, reads, acks, clean reopens and
//! crashes against an in-memory model of what the queue promised.
//!
//! A crash drops the queue without syncing, then truncates the active
//! segment to a random length at or beyond the last durable byte (what a
//! lost page cache can leave) and may append random garbage. After every
//! reopen: every durable record is there, in order, with its bytes; each
//! reader resumes exactly after its last written position (so nothing
//! acknowledged and written is read again, and positions never go back);
//! the torn count is what the truncation implies; segments every reader's
//! written position covers are gone.

#![allow(clippy::unwrap_used)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use dab_diskq::{DiskQueue, FsyncPolicy, Options, WhenFull, FRAME_HEADER};
use proptest::prelude::*;

const READERS: [&str; 2] = ["a", "b"];
const SEGMENT: u64 = 512;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    Sync,
    Read(usize, usize),
    Ack(usize, usize),
    Reopen,
    Crash { cut: u16, garbage: Vec<u8> },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(0u8..200, 1..6).prop_map(Op::Append),
        2 => Just(Op::Sync),
        4 => (0..2usize, 1..12usize).prop_map(|(r, n)| Op::Read(r, n)),
        3 => (0..2usize, 0..100usize).prop_map(|(r, k)| Op::Ack(r, k)),
        1 => Just(Op::Reopen),
        2 => (0u16..=1000, prop::collection::vec(any::<u8>(), 0..40))
            .prop_map(|(cut, garbage)| Op::Crash { cut, garbage }),
    ]
}

#[derive(Debug, Default, Clone, Copy)]
struct MReader {
    written: u64,
    acked: u64,
    next: u64,
}

struct Model {
    /// The bytes of record `seq` at index `seq - 1`.
    records: Vec<Vec<u8>>,
    durable: u64,
    readers: [MReader; 2],
    policy: Policy,
    made: u64,
}

/// `Always`; `Interval` of an hour (syncs only when asked, so everything
/// is exact); `Interval` of a millisecond (fsyncs on the queue's thread at
/// nearly every append, so durability and written positions are known
/// only as lower bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Always,
    Hour,
    Fast,
}

fn options(policy: Policy) -> Options {
    Options {
        max_bytes: 1 << 30,
        segment_bytes: SEGMENT,
        fsync: match policy {
            Policy::Always => FsyncPolicy::Always,
            Policy::Hour => FsyncPolicy::Interval(Duration::from_secs(3600)),
            Policy::Fast => FsyncPolicy::Interval(Duration::from_millis(1)),
        },
        when_full: WhenFull::Block,
        readers: READERS.iter().map(|r| r.to_string()).collect(),
    }
}

fn segments(dir: &Path) -> Vec<(u64, std::path::PathBuf)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?;
            let first = name
                .strip_prefix("seg-")?
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((first, p))
        })
        .collect();
    v.sort();
    v
}

impl Model {
    fn frame(&self, seq: u64) -> u64 {
        (FRAME_HEADER + self.records[seq as usize - 1].len()) as u64
    }

    fn last(&self) -> u64 {
        self.records.len() as u64
    }

    /// Checks what holds after every step.
    fn check(&mut self, q: &mut DiskQueue, dir: &Path) {
        assert_eq!(q.next_seq(), self.last() + 1);
        let d = q.durable_seq();
        if self.policy == Policy::Fast {
            assert!(d >= self.durable && d <= self.last(), "durable {d}");
            self.durable = d;
        } else {
            assert_eq!(d, self.durable);
        }
        for (i, name) in READERS.iter().enumerate() {
            assert_eq!(
                q.position(name),
                Some(self.readers[i].acked),
                "reader {name}"
            );
        }
        let segs = segments(dir);
        let usage: u64 = segs.iter().map(|s| fs::metadata(&s.1).unwrap().len()).sum();
        assert_eq!(q.metrics().bytes_on_disk, usage);
        assert_eq!(q.metrics().segments, segs.len() as u64);
        let min_written = self.readers.iter().map(|r| r.written).min().unwrap();
        let min_needed = if self.policy == Policy::Fast {
            self.readers.iter().map(|r| r.acked).min().unwrap()
        } else {
            min_written
        };
        assert!(
            segs[0].0 <= min_needed + 1,
            "a segment a reader needs was deleted"
        );
        if segs.len() > 1 {
            assert!(
                segs[1].0 - 1 > min_written,
                "segment {} is acknowledged by every reader and still there",
                segs[0].0
            );
        }
    }

    /// After a reopen: the readers resume at their written positions, and
    /// a fresh reader finds every retained record with its bytes.
    fn reopened(&mut self, q: &mut DiskQueue) {
        for r in &mut self.readers {
            r.acked = r.written;
            r.next = r.written + 1;
        }
        q.add_reader("audit").unwrap();
        let mut want = q.oldest_seq();
        loop {
            let got = q.read("audit", 64, usize::MAX).unwrap();
            if got.is_empty() {
                break;
            }
            for r in got.iter() {
                assert_eq!(r.seq, want);
                assert_eq!(r.bytes, self.records[want as usize - 1], "record {want}");
                want += 1;
            }
        }
        assert_eq!(
            want,
            self.last() + 1,
            "every record is readable after reopen"
        );
        q.remove_reader("audit").unwrap();
    }
}

fn run(policy: Policy, ops: Vec<Op>) {
    let always = policy == Policy::Always;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let mut q = DiskQueue::open(path, options(policy)).unwrap();
    let mut m = Model {
        records: Vec::new(),
        durable: 0,
        readers: [MReader {
            next: 1,
            ..MReader::default()
        }; 2],
        policy,
        made: 0,
    };
    for op in ops {
        match op {
            Op::Append(lens) => {
                let batch: Vec<Vec<u8>> = lens
                    .iter()
                    .map(|&len| {
                        m.made += 1;
                        (0..len)
                            .map(|i| (m.made as u8).wrapping_mul(31) ^ i)
                            .collect()
                    })
                    .collect();
                let a = q.append(&batch).unwrap();
                assert_eq!(
                    (a.first, a.end, a.refused),
                    (m.last() + 1, m.last() + 1 + batch.len() as u64, 0)
                );
                m.records.extend(batch);
                let d = q.durable_seq();
                if always {
                    assert_eq!(d, m.last(), "always: durable on return");
                }
                assert!(d >= m.durable && d <= m.last());
                m.durable = d;
            }
            Op::Sync => {
                assert_eq!(q.sync().unwrap(), m.last());
                m.durable = m.last();
                for r in &mut m.readers {
                    r.written = r.acked;
                }
            }
            Op::Read(i, max) => {
                let r = &mut m.readers[i];
                let got = q.read(READERS[i], max, usize::MAX).unwrap();
                let at_least = (r.next + max as u64).min(m.durable + 1);
                let end = r.next + got.len() as u64;
                let want: Vec<u64> = (r.next..end).collect();
                assert_eq!(
                    got.iter().map(|x| x.seq).collect::<Vec<_>>(),
                    want,
                    "reader {i} reads in order"
                );
                assert!(end >= at_least, "reader {i} left durable records unread");
                assert!(
                    end - 1 <= q.durable_seq(),
                    "reader {i} read a record not durable"
                );
                assert!(got.len() <= max);
                for x in &got {
                    assert_eq!(x.bytes, m.records[x.seq as usize - 1]);
                }
                r.next = end;
            }
            Op::Ack(i, k) => {
                let r = &mut m.readers[i];
                let unacked = r.next - 1 - r.acked;
                if unacked > 0 {
                    let seq = r.acked + 1 + k as u64 % unacked;
                    q.ack(READERS[i], seq).unwrap();
                    r.acked = seq;
                    if always {
                        r.written = seq;
                    }
                }
            }
            Op::Reopen => {
                q.close().unwrap();
                m.durable = m.last();
                for r in &mut m.readers {
                    r.written = r.acked;
                }
                q = DiskQueue::open(path, options(policy)).unwrap();
                assert_eq!(q.recovery().torn_bytes, 0);
                m.reopened(&mut q);
            }
            Op::Crash { cut, garbage } => {
                m.durable = m.durable.max(q.durable_seq());
                drop(q);
                let (first, tail) = segments(path).pop().unwrap();
                let file_len = fs::metadata(&tail).unwrap().len();
                let frames: Vec<u64> = (first..=m.last()).map(|s| m.frame(s)).collect();
                assert_eq!(
                    file_len,
                    frames.iter().sum::<u64>(),
                    "only the tail's records are in the tail"
                );
                let durable_bytes: u64 = (first..=m.durable).map(|s| m.frame(s)).sum();
                let trunc = durable_bytes + (file_len - durable_bytes) * u64::from(cut) / 1000;
                let f = OpenOptions::new().append(true).open(&tail).unwrap();
                f.set_len(trunc).unwrap();
                (&f).write_all(&garbage).unwrap();
                drop(f);
                let (mut good, mut kept) = (0u64, 0u64);
                for len in &frames {
                    if good + len > trunc {
                        break;
                    }
                    good += len;
                    kept += 1;
                }
                q = DiskQueue::open(path, options(policy)).unwrap();
                for (i, r) in m.readers.iter_mut().enumerate() {
                    // Written at a sync the model did not see, or not.
                    let p = q.position(READERS[i]).unwrap();
                    let (lo, hi) = (r.written, r.acked);
                    assert!(
                        p >= lo && p <= hi,
                        "reader {i} resumes at {p}, not in {lo}..={hi}"
                    );
                    r.written = p;
                }
                let torn = trunc + garbage.len() as u64 - good;
                let rcv = q.recovery();
                assert_eq!(
                    (rcv.torn_bytes, rcv.torn_records),
                    (torn, u64::from(torn > 0)),
                    "torn count"
                );
                assert_eq!(rcv.tail_records, kept);
                assert!(first + kept > m.durable, "a durable record was lost");
                m.records.truncate((first - 1 + kept) as usize);
                m.durable = m.last();
                m.reopened(&mut q);
            }
        }
        m.check(&mut q, path);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_queue_keeps_what_it_promised(
        policy in prop_oneof![Just(Policy::Always), Just(Policy::Hour), Just(Policy::Fast)],
        ops in prop::collection::vec(op(), 1..60),
    ) {
        run(policy, ops);
    }
}
