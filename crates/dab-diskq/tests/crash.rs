//! Kill -9 while a writer appends with `fsync: always` and a reader reads
//! and acknowledges, then reopen: every sequence number the child reported
//! durable must be there with its bytes (or acknowledged by the reader
//! before), in order, and the reader's position must never go back.
//!
//! The test binary is its own child: with `DAB_DISKQ_CRASH_CHILD` set to a
//! directory it appends batches into the queue there until killed, printing
//! `ready` once the queue is open and `durable N` after each append
//! returns. The bytes of record `n` are computed from `n` alone, so the
//! parent can check any record it finds.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dab_diskq::{DiskQueue, FsyncPolicy, Options, WhenFull};

const CHILD_ENV: &str = "DAB_DISKQ_CRASH_CHILD";
const KILLS: u32 = 12;
const READER: &str = "r";

fn main() {
    match std::env::var(CHILD_ENV) {
        Ok(dir) => child(&dir),
        Err(_) => parent(),
    }
}

fn options() -> Options {
    Options {
        max_bytes: 1 << 30,
        segment_bytes: 64 * 1024,
        fsync: FsyncPolicy::Always,
        when_full: WhenFull::Block,
        readers: vec![READER.to_string()],
    }
}

fn payload(seq: u64) -> Vec<u8> {
    let mut v = format!("{seq}:").into_bytes();
    let pad = usize::try_from(seq * 37 % 500).expect("small");
    v.resize(v.len() + pad, u8::try_from(seq % 251).expect("below 251"));
    v
}

fn child(dir: &str) {
    let mut q = DiskQueue::open(dir, options()).expect("child: open");
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").expect("child: stdout");
    out.flush().expect("child: stdout");
    let mut rng = Rng(q.next_seq() | 1);
    loop {
        let first = q.next_seq();
        let n = 1 + rng.below(60);
        let batch: Vec<Vec<u8>> = (first..first + n).map(payload).collect();
        let a = q.append(&batch).expect("child: append");
        assert_eq!(a.end, first + n, "child: the whole batch is taken");
        writeln!(out, "durable {}", a.end - 1).expect("child: stdout");
        out.flush().expect("child: stdout");
        // The reader lags behind by a random amount, so kills land with
        // records read and not acknowledged, and segments get deleted.
        let got = q
            .read(
                READER,
                usize::try_from(rng.below(80)).expect("small"),
                usize::MAX,
            )
            .expect("child: read");
        if let Some(last) = got.last_seq() {
            let back = rng.below(10).min(last);
            q.ack(READER, last - back).expect("child: ack");
        }
    }
}

/// A small xorshift: kill moments vary per run, and the seed is printed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn parent() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
        | 1;
    eprintln!("crash test: seed {seed}, dir {}", dir.path().display());
    let mut rng = Rng(seed);
    let exe = std::env::current_exe().expect("own executable");
    let (mut durable_seen, mut position_seen, mut reported) = (0u64, 0u64, 0usize);
    let mut torn_total = 0u64;
    for round in 1..=KILLS {
        let mut child = Command::new(&exe)
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let line = line.expect("child line");
                let msg = match line.strip_prefix("durable ") {
                    Some(n) => Some(n.parse::<u64>().expect("number")),
                    None if line == "ready" => None,
                    None => panic!("unexpected child line {line:?}"),
                };
                if tx.send(msg).is_err() {
                    break;
                }
            }
        });
        // Most kills land while the child appends; every fourth may land
        // while it opens (recovers) the queue.
        let during_open = round % 4 == 0;
        if !during_open {
            let ready = rx.recv_timeout(Duration::from_secs(30));
            assert_eq!(
                ready,
                Ok(None),
                "round {round}: the child did not open the queue"
            );
        }
        let wait = if during_open {
            rng.below(30)
        } else {
            30 + rng.below(200)
        };
        std::thread::sleep(Duration::from_millis(wait));
        let running = child.try_wait().expect("child status").is_none();
        assert!(
            running,
            "round {round}: the child stopped before it was killed"
        );
        child.kill().expect("SIGKILL child");
        child.wait().expect("reap child");
        reader.join().expect("reader thread");
        let durable: Vec<u64> = rx.try_iter().flatten().collect();
        reported += durable.len();
        durable_seen = durable_seen.max(durable.last().copied().unwrap_or(0));

        let mut q = DiskQueue::open(dir.path(), options()).expect("reopen after kill");
        let torn = q.recovery().torn_bytes;
        torn_total += torn;
        let pos = q.position(READER).expect("the reader is kept");
        assert!(
            pos >= position_seen,
            "round {round}: the reader's position went back from {position_seen} to {pos}"
        );
        assert!(
            pos <= durable_seen.max(q.durable_seq()),
            "round {round}: position {pos} is past every durable record"
        );
        // Everything after the position, up to the last record on disk,
        // is read back in order with its bytes.
        let mut want = pos + 1;
        loop {
            let got = q.read(READER, 4096, usize::MAX).expect("read after kill");
            if got.is_empty() {
                break;
            }
            for r in got.iter() {
                assert_eq!(r.seq, want, "round {round}: records in order");
                assert!(
                    r.bytes == payload(r.seq),
                    "round {round}: record {} has other bytes",
                    r.seq
                );
                want += 1;
            }
        }
        let last = want - 1;
        eprintln!(
            "round {round}: killed {wait} ms after {}; {} durable reported, last {durable_seen}; on disk up to {last}, reader at {pos}, {torn} bytes torn",
            if during_open { "start" } else { "open" },
            durable.len()
        );
        assert!(
            last >= durable_seen,
            "round {round}: record {durable_seen} was reported durable, the queue ends at {last}"
        );
        position_seen = pos;
        drop(q);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the crash test took too long"
        );
    }
    assert!(
        durable_seen >= 100 && reported > 0 && position_seen > 0,
        "the children did too little to test anything: last durable {durable_seen}, {reported} reports, reader at {position_seen}"
    );
    eprintln!(
        "crash test: ok, {KILLS} kills, last durable {durable_seen}, {reported} durable appends reported, reader at {position_seen}, {torn_total} bytes torn in all"
    );
}
