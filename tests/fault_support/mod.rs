//! Helpers of the fault matrix (`tests/faults.rs`, `scripts/faults.sh`):
//! the two sizes the rows run at, one row of the table and its tally
//! (acknowledged against delivered), starting and signalling `dab`, and a
//! small tmpfs that is unmounted whatever happens.

pub mod kafka;
pub mod load;
pub mod peer;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::run_support::client::{free_addr, wait_http_ok};
use crate::run_support::process::Dab;
use load::Outcome;

/// Longest wait for dab to start serving.
pub const START: Duration = Duration::from_secs(15);
/// Longest wait for dab to drain and exit after SIGTERM.
pub const EXIT: Duration = Duration::from_secs(30);

/// The size the rows run at: `test` in `cargo test`, `full` when
/// `DAB_FAULTS_SIZE=full` (what `scripts/faults.sh` sets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Test,
    Full,
}

impl Size {
    pub fn from_env() -> Size {
        match std::env::var("DAB_FAULTS_SIZE").as_deref() {
            Ok("full") => Size::Full,
            Ok("test") | Err(_) => Size::Test,
            Ok(other) => panic!("DAB_FAULTS_SIZE must be `test` or `full`, not {other:?}"),
        }
    }

    /// `test` at test size, `full` at full size.
    pub fn pick<T>(self, test: T, full: T) -> T {
        match self {
            Size::Test => test,
            Size::Full => full,
        }
    }
}

/// One row of the fault matrix.
#[derive(Debug)]
pub struct Row {
    pub fault: String,
    pub offered: u64,
    pub acked: u64,
    pub delivered: u64,
    /// Acknowledged events that were not delivered: must be 0.
    pub missing: u64,
    /// Deliveries beyond the first of an event.
    pub duplicates: u64,
    /// From the end of the fault to the first acknowledgement after it.
    pub recovered: Option<Duration>,
    pub note: String,
}

impl Row {
    /// Counts `delivered` (offsets as the peer or file has them, repeats
    /// included) against `acked`.
    pub fn tally(fault: &str, offered: u64, acked: &BTreeSet<u64>, delivered: &[u64]) -> Row {
        let mut seen = BTreeSet::new();
        let mut duplicates = 0;
        for o in delivered {
            if !seen.insert(*o) {
                duplicates += 1;
            }
        }
        let missing: Vec<u64> = acked.difference(&seen).copied().collect();
        if !missing.is_empty() {
            let _ = writeln!(
                std::io::stderr(),
                "{fault}: {} acknowledged events missing, the first: {:?}",
                missing.len(),
                &missing[..missing.len().min(20)]
            );
        }
        Row {
            fault: fault.to_owned(),
            offered,
            acked: acked.len() as u64,
            delivered: seen.len() as u64,
            missing: missing.len() as u64,
            duplicates,
            recovered: None,
            note: String::new(),
        }
    }

    /// Counts what `out`'s load offered and got acknowledged against
    /// `delivered`.
    pub fn of_load(fault: &str, out: &Outcome, delivered: &[u64]) -> Row {
        Row::tally(fault, out.offered, &out.acked, delivered)
    }

    /// Prints the row (past the harness's capture, so `cargo test` shows
    /// it too), appends it to `DAB_FAULTS_ROWS` when that names a file,
    /// and asserts the one thing every row must show: nothing
    /// acknowledged is missing.
    pub fn report(&self) {
        let recovered = self
            .recovered
            .map_or_else(|| "-".to_owned(), |d| format!("{:.2} s", d.as_secs_f64()));
        let line = format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            self.fault,
            self.offered,
            self.acked,
            self.delivered,
            self.missing,
            self.duplicates,
            recovered,
            self.note
        );
        let _ = writeln!(std::io::stderr(), "FAULT ROW {line}");
        if let Some(path) = std::env::var_os("DAB_FAULTS_ROWS") {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .expect("open DAB_FAULTS_ROWS");
            writeln!(f, "{line}").expect("append a row");
        }
        assert_eq!(self.missing, 0, "acknowledged events missing: {self:?}");
        assert!(self.acked > 0, "nothing was acknowledged: {self:?}");
    }
}

/// The offsets of the events of an NDJSON file, in file order. Every line
/// must be a whole event: a torn line fails the test.
pub fn file_offsets(path: &Path) -> Vec<u64> {
    file_events(path)
        .iter()
        .map(|e| e["offset"].as_u64().expect("offset"))
        .collect()
}

/// The events of an NDJSON file; panics on a line that is not one whole
/// event (torn, or with the newline missing at the end of the file).
pub fn file_events(path: &Path) -> Vec<serde_json::Value> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    };
    assert!(
        bytes.is_empty() || bytes.ends_with(b"\n"),
        "{} ends inside a line: {:?}",
        path.display(),
        String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(200)..])
    );
    let text = String::from_utf8(bytes).expect("sink file is UTF-8");
    text.lines()
        .enumerate()
        .map(|(n, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!(
                    "{} line {} is not a whole event ({e}): {l}",
                    path.display(),
                    n + 1
                )
            })
        })
        .collect()
}

/// A path as a double-quoted YAML string.
pub fn yaml_path(p: &Path) -> String {
    serde_json::to_string(&p.display().to_string()).expect("path as a JSON string")
}

/// Starts `dab run t.dab --metrics ADDR --log-format json` in `dir` and
/// waits for `/healthz`.
pub fn start_dab(dir: &Path) -> (Dab, String) {
    start_dab_with(dir, &[])
}

/// [`start_dab`] with `extra` arguments (`--env K=V`, say).
pub fn start_dab_with(dir: &Path, extra: &[&str]) -> (Dab, String) {
    let metrics = free_addr();
    let mut args = vec![
        "run",
        "t.dab",
        "--metrics",
        &metrics,
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    let dab = Dab::start(dir, &args);
    wait_http_ok(&metrics, "/healthz", START, || dab.stderr());
    (dab, metrics)
}

/// Sends `sig` (`KILL`, `TERM`, `HUP`) to `pid`.
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// Drains and exits 0 after SIGTERM, or fails the test.
pub fn terminate_ok(dab: &mut Dab) -> Duration {
    let t = std::time::Instant::now();
    dab.terminate();
    let status = dab.wait(EXIT);
    assert!(
        status.success(),
        "dab exited with {status} after SIGTERM; stderr:\n{}",
        dab.stderr()
    );
    t.elapsed()
}

/// The errors dab logged (level ERROR or WARN), counted by message, for a
/// row's note and a failure's story.
pub fn warnings(stderr: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for l in stderr.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(l) else {
            continue;
        };
        if matches!(v["level"].as_str(), Some("ERROR" | "WARN")) {
            let m = v["fields"]["message"].as_str().unwrap_or("?").to_owned();
            *out.entry(m).or_default() += 1;
        }
    }
    out
}

/// A tmpfs mounted on a directory, unmounted on drop (also when the test
/// failed). Needs root, as CI has: without it, the test fails.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mkdir mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs -o size={size} tmpfs {} failed (the full-disk test needs root, as CI runs it): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            dir: dir.to_owned(),
        }
    }

    /// Grows (or shrinks) the filesystem in place.
    pub fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -o remount,size={size} {} failed: {}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so a file dab still holds open cannot keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
