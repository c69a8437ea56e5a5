//! Helpers of `tests/grpc.rs`: the Python grpcio interpreter (a failure
//! when missing), child processes killed on drop, tonic clients of the Murron
//! service with deadlines, events, sink files, `SIGKILL`, and an RSS
//! sampler.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dab_api::{Event, Text};
use dab_connectors::murron::rpc::murron_client::MurronClient;
use dab_connectors::murron::rpc::Ack;
use dab_connectors::murron::wire;
use serde_json::Value;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::run_support::process::Dab;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// A Python that imports `grpc` and `grpc_tools`: `DAB_PYTHON`, or the venv
/// `scripts/setup-python.sh` makes. Without one the test fails, saying how
/// to install it: a missing dependency is never a pass.
pub fn python_with_grpc(test: &str) -> PathBuf {
    let python: PathBuf = match std::env::var_os("DAB_PYTHON") {
        Some(p) => p.into(),
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default()
            .join(".cache/dab/venv/bin/python"),
    };
    let ok = Command::new(&python)
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{test}: Python grpcio is not installed (looked for {}). Install it with \
         scripts/setup-python.sh (scripts/test.sh runs it), or point DAB_PYTHON at a \
         python that imports grpc and grpc_tools.",
        python.display()
    );
    python
}

/// A child process that is killed if the test ends without reaping it.
#[derive(Debug)]
pub struct Kid {
    child: Child,
    what: String,
}

/// What a finished child printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Kid {
    /// Starts `cmd` with piped stdout and stderr.
    pub fn spawn(what: &str, cmd: &mut Command) -> Kid {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        Kid {
            child,
            what: what.to_owned(),
        }
    }

    /// Waits at most `timeout` for the child to exit (then panics; `Drop`
    /// kills it) and collects its output. Output readers run on threads
    /// so that a chatty child cannot block on a full pipe.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let read = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut s = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut s);
                }
                String::from_utf8_lossy(&s).into_owned()
            })
        };
        let out = read(self.child.stdout.take().map(|p| Box::new(p) as _));
        let err = read(self.child.stderr.take().map(|p| Box::new(p) as _));
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not finish within {timeout:?}",
                self.what
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        Finished {
            status,
            stdout: out.join().expect("stdout reader"),
            stderr: err.join().expect("stderr reader"),
        }
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `kill -KILL`: no drain, no flush, no goodbye.
pub fn kill9(dab: &mut Dab) -> ExitStatus {
    let status = Command::new("kill")
        .args(["-KILL", &dab.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -KILL {} failed", dab.pid());
    dab.wait(Duration::from_secs(5))
}

/// A multi-threaded tokio runtime for the test's gRPC clients; the test
/// thread itself stays free for blocking process work.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A client on its own HTTP/2 connection to `addr` (`host:port`).
pub async fn connect(addr: &str) -> Result<MurronClient<Channel>, tonic::transport::Error> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(MurronClient::new(channel))
}

/// Like [`connect`], but the server must be there.
pub async fn must_connect(addr: &str) -> MurronClient<Channel> {
    tokio::time::timeout(Duration::from_secs(10), connect(addr))
        .await
        .unwrap_or_else(|_| panic!("connect to {addr} in time"))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// One unary `Send`; `Err` also when no answer came within `limit`.
pub async fn send(
    client: &mut MurronClient<Channel>,
    batch: wire::Batch,
    limit: Duration,
) -> Result<Ack, Status> {
    match tokio::time::timeout(limit, client.send(batch)).await {
        Ok(answer) => answer.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "no answer within {limit:?} (test's limit)"
        ))),
    }
}

/// A complete event; `message` is about 100 bytes.
pub fn event(host: &str, pid: u32, ty: &str, offset: u64) -> Event {
    let mut e = Event::default();
    e.timestamp = 1_732_320_000_000_000_000 + offset as i64;
    e.host = Text::from(host);
    e.ty = Text::from(ty);
    e.offset = offset;
    e.pid = pid;
    e.message = format!("{offset:>8} {}", "m".repeat(90))
        .into_bytes()
        .into();
    e.tags = vec![(Text::from("env"), Text::from("test"))];
    e
}

/// (host, pid, type, offset).
pub type Uid = (String, u32, String, u64);

pub fn uid_of(e: &Event) -> Uid {
    (
        e.host.as_str().to_owned(),
        e.pid,
        e.ty.as_str().to_owned(),
        e.offset,
    )
}

/// The UID of a line as the file sink writes it.
pub fn uid_of_json(v: &Value) -> Uid {
    let field = |k: &str| v.get(k).unwrap_or_else(|| panic!("no `{k}` in {v}"));
    (
        field("host").as_str().expect("host").to_owned(),
        u32::try_from(field("pid").as_u64().expect("pid")).expect("pid fits u32"),
        field("type").as_str().expect("type").to_owned(),
        field("offset").as_u64().expect("offset"),
    )
}

/// Every line of an NDJSON sink file, parsed; a line that is not JSON
/// (a torn write, say) fails the test, naming its number.
pub fn read_events(path: &Path) -> Vec<Value> {
    let text = match std::fs::read(path) {
        Ok(b) => String::from_utf8(b).expect("sink file is UTF-8"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    };
    if !text.is_empty() {
        assert!(
            text.ends_with('\n'),
            "{} does not end with a newline",
            path.display()
        );
    }
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("{}:{}: not a JSON line ({e}): {l}", path.display(), i + 1)
            })
        })
        .collect()
}

/// How many times each UID occurs in `events`.
pub fn uid_counts(events: &[Value]) -> BTreeMap<Uid, u64> {
    let mut counts = BTreeMap::new();
    for e in events {
        *counts.entry(uid_of_json(e)).or_insert(0) += 1;
    }
    counts
}

/// Samples `VmRSS` of a process every 10 ms until stopped; the highest
/// value seen, in KiB.
#[derive(Debug)]
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    max_kib: Arc<AtomicU64>,
    handle: Option<JoinHandle<u64>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let max_kib = Arc::new(AtomicU64::new(0));
        let handle = {
            let (stop, max_kib) = (Arc::clone(&stop), Arc::clone(&max_kib));
            std::thread::spawn(move || {
                let mut samples = 0u64;
                // Bounded: 10 minutes of samples at most.
                while !stop.load(Ordering::SeqCst) && samples < 60_000 {
                    if let Some(kib) = rss_kib(pid) {
                        max_kib.fetch_max(kib, Ordering::SeqCst);
                        samples += 1;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                samples
            })
        };
        RssSampler {
            stop,
            max_kib,
            handle: Some(handle),
        }
    }

    /// Stops sampling; (max RSS in KiB, samples taken).
    pub fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::SeqCst);
        let samples = self
            .handle
            .take()
            .map_or(0, |h| h.join().expect("rss sampler"));
        (self.max_kib.load(Ordering::SeqCst), samples)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A small deterministic generator for back-off jitter (xorshift64*).
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// Uniform in `[d/2, d]`.
    pub fn scale(&mut self, d: Duration) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        let f = 0.5 + 0.5 * (r as f64 / (1u64 << 53) as f64);
        d.mul_f64(f)
    }
}
