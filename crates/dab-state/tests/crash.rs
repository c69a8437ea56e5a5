//! Kill -9 while checkpoints commit, then reopen: the store must show
//! exactly the state of the last checkpoint it records (never part of one),
//! and never less than the last checkpoint the child reported committed.
//! (A kill -9 leaves the journal's writes with the operating system, so
//! non-durable commits must survive it too; what only `durable` adds, an
//! fsync against power loss, cannot be tested by killing a process.)
//!
//! The test binary is its own child: with `DAB_STATE_CRASH_CHILD` set to a
//! directory it commits numbered checkpoints into it until killed, printing
//! `ready` once the store is open and `durable N` or `committed N` after
//! each commit returns. Checkpoint `n` rewrites
//! 128 keys of each of two owners in two partitions with values that name
//! `n`, puts and deletes further keys of the second owner, now and then writes a 64 KiB value (so a
//! batch spans journal buffer flushes), and records `n` as the position of
//! both partitions and as bookkeeping, so the expected state of any number
//! is computed here from the number alone.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dab_state::StateStore;

const CHILD_ENV: &str = "DAB_STATE_CRASH_CHILD";
const P0: &str = "kafka:t:0";
const P1: &str = "kafka:t:1";
const OWNER_A: &str = "op/a";
const OWNER_B: &str = "op/b";
const SOURCE: &str = "t";
const KEYS: u64 = 128;
const KILLS: u32 = 10;

/// (partition, owner, key) -> value.
type State = BTreeMap<(String, String, Vec<u8>), Vec<u8>>;

fn main() {
    match std::env::var(CHILD_ENV) {
        Ok(dir) => child(&dir),
        Err(_) => parent(),
    }
}

fn value(n: u64, i: u64) -> Vec<u8> {
    let mut v = format!("{n}:{i}:").into_bytes();
    v.resize(
        v.len() + 64 + usize::try_from((n * 31 + i * 7) % 200).expect("small"),
        b'.',
    );
    v
}

fn big(n: u64) -> Vec<u8> {
    vec![u8::try_from(n % 251).expect("below 251"); 64 * 1024]
}

fn child(dir: &str) {
    let store = StateStore::open(dir).expect("child: open");
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").expect("child: stdout");
    out.flush().expect("child: stdout");
    let mut n = store.last_checkpoint().unwrap_or(0);
    loop {
        n += 1;
        let mut cp = store.checkpoint();
        for i in 0..KEYS {
            cp.put(OWNER_A, P0, format!("k{i:02}").as_bytes(), &value(n, i))
                .expect("child: put");
        }
        if n % 10 == 0 {
            cp.put(OWNER_A, P0, b"big", &big(n)).expect("child: put");
        }
        for i in 0..KEYS {
            cp.put(OWNER_B, P1, format!("k{i:03}").as_bytes(), &value(n, i))
                .expect("child: put");
        }
        cp.put(
            OWNER_B,
            P1,
            format!("m{}", n % 7).as_bytes(),
            n.to_string().as_bytes(),
        )
        .expect("child: put");
        cp.delete(OWNER_B, P1, format!("m{}", (n + 3) % 7).as_bytes())
            .expect("child: delete");
        cp.set_offset(P0, SOURCE, n).expect("child: offset");
        cp.set_offset(P1, SOURCE, n).expect("child: offset");
        cp.set_bookkeeping(OWNER_A, P0, &n.to_be_bytes())
            .expect("child: book");
        let durable = n % 3 == 0;
        let number = cp.commit(durable).expect("child: commit");
        assert_eq!(number, n, "child: checkpoint numbers follow commits");
        let word = if durable { "durable" } else { "committed" };
        writeln!(out, "{word} {n}").expect("child: stdout");
        out.flush().expect("child: stdout");
    }
}

/// The state after checkpoints 1..=s.
fn expected(s: u64) -> State {
    let mut state = State::new();
    let mut put = |part: &str, owner: &str, key: &[u8], v: Vec<u8>| {
        state.insert((part.into(), owner.into(), key.to_vec()), v);
    };
    if s > 0 {
        for i in 0..KEYS {
            put(P0, OWNER_A, format!("k{i:02}").as_bytes(), value(s, i));
            put(P1, OWNER_B, format!("k{i:03}").as_bytes(), value(s, i));
        }
    }
    if s >= 10 {
        put(P0, OWNER_A, b"big", big(s - s % 10));
    }
    let mut m: BTreeMap<u64, Option<u64>> = BTreeMap::new();
    for n in 1..=s {
        m.insert(n % 7, Some(n));
        m.insert((n + 3) % 7, None);
    }
    for (j, n) in m {
        if let Some(n) = n {
            put(
                P1,
                OWNER_B,
                format!("m{j}").as_bytes(),
                n.to_string().into_bytes(),
            );
        }
    }
    state
}

fn actual(store: &StateStore) -> State {
    let mut state = State::new();
    for part in [P0, P1] {
        for (owner, key, v) in store.state_entries(part).expect("state entries") {
            state.insert((part.into(), owner, key), v);
        }
    }
    state
}

fn number(bytes: Option<Vec<u8>>) -> Option<u64> {
    bytes.map(|b| u64::from_be_bytes(b.as_slice().try_into().expect("8 bytes")))
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
    let dir = tempfile::tempdir().expect("tempdir");
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64
        | 1;
    eprintln!("crash test: seed {seed}, dir {}", dir.path().display());
    let mut rng = Rng(seed);
    let exe = std::env::current_exe().expect("own executable");
    let (mut durable_seen, mut committed_seen) = (0u64, 0u64);
    let (mut last_state, mut reported) = (0u64, 0usize);
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
                let msg = match line.split_once(' ') {
                    Some((word @ ("durable" | "committed"), n)) => {
                        Some((word == "durable", n.parse::<u64>().expect("number")))
                    }
                    _ if line == "ready" => None,
                    _ => panic!("unexpected child line {line:?}"),
                };
                if tx.send(msg).is_err() {
                    break;
                }
            }
        });
        // Most kills land while checkpoints commit (a while after the
        // child has recovered the store, which takes longer as the journal
        // grows); every fourth may land during recovery itself.
        let during_recovery = round % 4 == 0;
        if !during_recovery {
            let ready = rx.recv_timeout(Duration::from_secs(60));
            assert_eq!(
                ready,
                Ok(None),
                "round {round}: the child did not open the store"
            );
        }
        let wait = if during_recovery {
            5 + rng.below(96)
        } else {
            50 + rng.below(251)
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
        let commits: Vec<(bool, u64)> = rx.try_iter().flatten().collect();
        let durable: Vec<u64> = commits.iter().filter(|c| c.0).map(|c| c.1).collect();
        reported += durable.len();
        durable_seen = durable_seen.max(durable.last().copied().unwrap_or(0));
        committed_seen = committed_seen.max(commits.last().map_or(0, |c| c.1));

        let store = StateStore::open(dir.path()).expect("reopen after kill");
        let s = store.offset(P0, SOURCE).expect("offset").unwrap_or(0);
        eprintln!(
            "round {round}: killed {wait} ms after {}; {} durable reported, last {durable_seen}, last commit {committed_seen}; store at {s}",
            if during_recovery { "start" } else { "recovery" },
            durable.len()
        );
        assert_eq!(
            store.last_checkpoint().unwrap_or(0),
            s,
            "round {round}: numbering"
        );
        assert_eq!(
            store.offset(P1, SOURCE).expect("offset").unwrap_or(0),
            s,
            "round {round}: the two partitions' positions come from one checkpoint"
        );
        assert_eq!(
            number(store.bookkeeping(OWNER_A, P0).expect("book")).unwrap_or(0),
            s,
            "round {round}: bookkeeping comes from the same checkpoint"
        );
        assert!(
            s >= durable_seen,
            "round {round}: checkpoint {durable_seen} was reported durable, the store is at {s}"
        );
        // Killing a process leaves what it wrote with the operating system:
        // every commit that returned survives, durable or not.
        assert!(
            s >= committed_seen,
            "round {round}: checkpoint {committed_seen} was reported committed, the store is at {s}"
        );
        assert!(
            s >= last_state,
            "round {round}: went back from {last_state} to {s}"
        );
        let (want, got) = (expected(s), actual(&store));
        if want != got {
            let diff: Vec<_> = want
                .keys()
                .chain(got.keys())
                .filter(|k| want.get(*k) != got.get(*k))
                .take(5)
                .map(|(p, o, k)| format!("{p} {o} {}", String::from_utf8_lossy(k)))
                .collect();
            panic!("round {round}: state is not checkpoint {s}'s; differs at {diff:?}");
        }
        last_state = s;
    }
    assert!(
        last_state >= 10 && reported > 0,
        "the children committed too little to test anything: store at {last_state}, {reported} durable reports"
    );
    eprintln!("crash test: ok, {KILLS} kills, store at checkpoint {last_state}, {reported} durable commits reported");
}
