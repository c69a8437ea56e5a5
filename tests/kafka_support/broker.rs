//! A real Kafka-protocol broker for the Kafka tests: tansu 0.6.0 (built by
//! `scripts/setup-kafka.sh`) on a free 127.0.0.1 port, with its log in a
//! temporary directory, plus the outside Python client
//! `tests/kafka_support/client.py` (confluent-kafka, installed by
//! `scripts/setup-python.sh`) run as a child process with a deadline.
//!
//! Include it with `#[path = "kafka_support/broker.rs"] mod broker;`.
//!
//! Storage: `sqlite://FILE` ([`SQLITE`], the default here; the `libsql`
//! feature that `scripts/setup-kafka.sh` builds in), a file relative to the
//! broker's working directory (a temporary directory per broker) that keeps
//! topics, messages and committed offsets across [`Broker::stop`] and
//! [`Broker::start_again`], whether the broker was stopped with SIGTERM or
//! SIGKILL. Not `memory://`: tansu 0.6's object-store engine answers a
//! fetch that starts inside a record batch with the next batch, so a
//! consumer group hand-over at a committed offset mid-batch skips messages
//! (docs/decisions.md, "Kafka tests run tansu on SQLite"); its SQL engine
//! fetches record by record.
//!
//! Every wait is bounded, and `Drop` kills every child process, so a failed
//! assertion leaves no broker or client running.

#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a broker may take to answer its first metadata request.
pub const START_LIMIT: Duration = Duration::from_secs(30);

/// The deadline of [`produce`] and [`consume`]: longer than any of
/// `client.py`'s own bounded waits (60 s consume timeout, 30 s message
/// timeout plus flush), so it only fires when the client hangs.
pub const CLIENT_LIMIT: Duration = Duration::from_secs(180);

/// Storage that survives a restart: a SQLite file in the broker's working
/// directory (a temporary directory per broker).
pub const SQLITE: &str = "sqlite://tansu.db";

/// Environment variables tansu reads that must not leak in from the
/// caller's environment (they would switch on schema registries, data
/// lakes, or other listeners).
const TANSU_ENV: &[&str] = &[
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "DATA_LAKE",
    "ICEBERG_CATALOG",
    "ICEBERG_NAMESPACE",
    "ICEBERG_WAREHOUSE",
    "DELTA_DATABASE",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The tansu binary, looked for as `scripts/setup-kafka.sh` does:
/// `DAB_TANSU`, then `~/.cache/dab/tansu-libsql/bin/tansu` (built with the
/// `libsql` feature, for `sqlite://` storage). A missing broker fails the
/// test: the suite installs what it needs (`scripts/setup.sh`), and a test
/// that passes without running proves nothing.
pub fn tansu() -> PathBuf {
    let p = match std::env::var_os("DAB_TANSU") {
        Some(p) => PathBuf::from(p),
        None => home().join(".cache/dab/tansu-libsql/bin/tansu"),
    };
    assert!(
        p.is_file(),
        "no tansu broker at {}: build it with scripts/setup-kafka.sh (about 15 \
         minutes cold), or point DAB_TANSU at one",
        p.display()
    );
    p
}

/// A Python that imports `confluent_kafka`: `DAB_PYTHON`, or the venv
/// `scripts/setup-python.sh` makes. A missing one fails the test.
pub fn python_kafka() -> PathBuf {
    let python: PathBuf = match std::env::var_os("DAB_PYTHON") {
        Some(p) => p.into(),
        None => home().join(".cache/dab/venv/bin/python"),
    };
    let ok = Command::new(&python)
        .args(["-c", "import confluent_kafka"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "Python confluent-kafka is not installed (looked for {}): install it with \
         scripts/setup-python.sh, or point DAB_PYTHON at a python that imports \
         confluent_kafka",
        python.display()
    );
    python
}

/// `tests/kafka_support/client.py`.
pub fn client_py() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/kafka_support/client.py")
        .canonicalize()
        .expect("tests/kafka_support/client.py exists")
}

/// What a finished child printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A child process with its output collected by threads (a chatty child
/// never blocks on a full pipe), killed and reaped on drop.
#[derive(Debug)]
pub struct Kid {
    child: Child,
    what: String,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<String>>,
}

fn collect(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

impl Kid {
    /// Starts `cmd` with piped stdout and stderr and no stdin.
    pub fn spawn(what: &str, cmd: &mut Command) -> Kid {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
        let out = Some(collect(child.stdout.take()));
        let err = Some(collect(child.stderr.take()));
        Kid {
            child,
            what: what.to_owned(),
            out,
            err,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits at most `limit` for the child to exit; `None` when it did not
    /// (it is then killed, and what it printed is lost).
    pub fn wait_for(mut self, limit: Duration) -> Option<Output> {
        let deadline = Instant::now() + limit;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) => return None,
                Err(e) => panic!("wait for {}: {e}", self.what),
            }
        };
        let join = |h: Option<JoinHandle<String>>| {
            h.map(|h| h.join().expect("output reader"))
                .unwrap_or_default()
        };
        Some(Output {
            status,
            stdout: join(self.out.take()),
            stderr: join(self.err.take()),
        })
    }

    /// Like [`Kid::wait_for`], but a child still running at the deadline
    /// fails the test.
    pub fn finish(self, limit: Duration) -> Output {
        let what = self.what.clone();
        self.wait_for(limit)
            .unwrap_or_else(|| panic!("{what} did not finish within {limit:?}"))
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

/// Runs `cmd` to its end, or kills it after `limit` (`None`).
pub fn run_bounded(what: &str, cmd: &mut Command, limit: Duration) -> Option<Output> {
    Kid::spawn(what, cmd).wait_for(limit)
}

/// Sends `signal` (`STOP`, `CONT`, `TERM`, `KILL`...) with `kill(1)`: the
/// workspace forbids the `unsafe` a direct `libc::kill` would need.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

/// A free loopback port: bound, read, released. Another process could take
/// it before tansu binds it; [`Broker::start`] then tries another.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free loopback port")
}

/// A tansu broker on `127.0.0.1:port`.
#[derive(Debug)]
pub struct Broker {
    bin: PathBuf,
    port: u16,
    storage: String,
    env: Vec<(String, String)>,
    /// The broker's working directory (tansu reads a `.env` from there)
    /// and its log, `tansu.log`, appended to across restarts.
    dir: tempfile::TempDir,
    child: Option<Child>,
    ready_after: Duration,
}

impl Broker {
    /// Starts tansu with SQLite storage on a free port and waits until it
    /// answers a metadata request.
    pub fn start(bin: &Path) -> Broker {
        Broker::start_with_storage(bin, SQLITE)
    }

    /// Like [`Broker::start`] with another `--storage-engine` URL.
    pub fn start_with_storage(bin: &Path, storage: &str) -> Broker {
        Broker::start_with(bin, storage, &[])
    }

    /// Like [`Broker::start`] with another `--storage-engine` URL and extra
    /// environment variables (kept for [`Broker::restart`]).
    pub fn start_with(bin: &Path, storage: &str, env: &[(&str, &str)]) -> Broker {
        let dir = tempfile::Builder::new()
            .prefix("dab-tansu-")
            .tempdir()
            .expect("temp dir for the broker");
        let mut broker = Broker {
            bin: bin.to_owned(),
            port: 0,
            storage: storage.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            dir,
            child: None,
            ready_after: Duration::ZERO,
        };
        // A port freed by `free_port` can be taken again before tansu binds
        // it: try a few.
        for attempt in 1..=3 {
            broker.port = free_port();
            match broker.spawn_and_wait() {
                Ok(()) => return broker,
                Err(e) if attempt < 3 => {
                    let _ = writeln!(std::io::stderr(), "tansu start {attempt} failed: {e}");
                    broker.kill();
                }
                Err(e) => panic!("tansu did not start: {e}\n--- log ---\n{}", broker.log()),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the broker log");
        let log2 = log.try_clone().expect("clone the broker log handle");
        let url = format!("tcp://{}", self.addr());
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(self.dir.path())
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", &self.storage])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        for var in TANSU_ENV {
            cmd.env_remove(var);
        }
        cmd.env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        let started = Instant::now();
        self.child = Some(cmd.spawn().map_err(|e| format!("spawn tansu: {e}"))?);
        self.wait_ready(started + START_LIMIT)?;
        self.ready_after = started.elapsed();
        Ok(())
    }

    /// Waits until the port takes a connection and `tansu topic list`
    /// (a metadata request) succeeds.
    fn wait_ready(&mut self, deadline: Instant) -> Result<(), String> {
        let addr: SocketAddr = self.addr().parse().expect("a socket address");
        let mut last = String::from("no connection yet");
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!("tansu exited during start ({status})"));
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                match self.tansu(&["topic", "list"], Duration::from_secs(5)) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e,
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no metadata answer on {} within {START_LIMIT:?}: {last}",
                    self.addr()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `tansu ARGS --broker tcp://ADDR` with a deadline; its output,
    /// or why it failed.
    fn tansu(&self, args: &[&str], limit: Duration) -> Result<Output, String> {
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(self.dir.path())
            .args(args)
            .args(["--broker", &format!("tcp://{}", self.addr())]);
        for var in TANSU_ENV {
            cmd.env_remove(var);
        }
        cmd.env("NO_COLOR", "1");
        let what = format!("tansu {}", args.join(" "));
        match run_bounded(&what, &mut cmd, limit) {
            None => Err(format!("{what}: no answer within {limit:?}")),
            Some(o) if o.status.success() => Ok(o),
            Some(o) => Err(format!(
                "{what}: {}: {}{}",
                o.status,
                o.stdout.trim(),
                o.stderr.trim()
            )),
        }
    }

    /// `127.0.0.1:PORT`, for `bootstrap.servers`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// How long the last (re)start took, from spawn to the first metadata
    /// answer.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// The broker's pid; panics when it is not running.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the broker runs").id()
    }

    /// Creates a topic with `tansu topic create`; an existing topic is
    /// fine. Retries for 15 s, then fails the test.
    pub fn create_topic(&self, name: &str, partitions: u32) {
        let parts = partitions.to_string();
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut pause = Duration::from_millis(100);
        loop {
            let err = match self.tansu(
                &["topic", "create", "--partitions", &parts, name],
                Duration::from_secs(10),
            ) {
                Ok(_) => return,
                Err(e) if e.contains("already exists") => return,
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "create topic {name} on {}: {err}\n--- log ---\n{}",
                self.addr(),
                self.log()
            );
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    /// The topics the broker lists (`tansu topic list`).
    pub fn topics(&self) -> String {
        self.tansu(&["topic", "list"], Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("list topics: {e}"))
            .stdout
    }

    /// `SIGSTOP`: the broker keeps its sockets (connections still open,
    /// the kernel still accepts new ones) but answers nothing.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// `SIGCONT` after [`Broker::pause`].
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    /// `SIGKILL` (which also ends a paused broker) and reap; a no-op when
    /// it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the broker and starts it again on the same port and with the
    /// same storage URL. With memory storage every topic and message is
    /// gone: create the topics again.
    pub fn restart(&mut self) {
        self.kill();
        let _ = writeln!(
            File::options()
                .append(true)
                .open(self.log_path())
                .expect("open the broker log"),
            "--- restart ---"
        );
        if let Err(e) = self.spawn_and_wait() {
            panic!("tansu did not restart: {e}\n--- log ---\n{}", self.log());
        }
    }

    /// Stops the broker with `signal` (`TERM` or `KILL`) and waits, at most
    /// `limit`, for it to exit; its exit status. The port stays this
    /// broker's: [`Broker::start_again`] binds it again.
    pub fn stop(&mut self, signal_name: &str, limit: Duration) -> ExitStatus {
        let mut child = self.child.take().expect("the broker runs");
        signal(child.id(), signal_name);
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let _ = writeln!(
                    File::options()
                        .append(true)
                        .open(self.log_path())
                        .expect("open the broker log"),
                    "--- stopped with SIG{signal_name}: {status} ---"
                );
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "tansu did not exit within {limit:?} of SIG{signal_name}\n--- log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the broker again after [`Broker::stop`], on the same port,
    /// with the same storage, and waits until it answers.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the broker still runs");
        if let Err(e) = self.spawn_and_wait() {
            panic!(
                "tansu did not start again: {e}\n--- log ---\n{}",
                self.log()
            );
        }
    }

    /// Everything the broker wrote, across restarts.
    pub fn log(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `client.py`, killed on drop.
#[derive(Debug)]
pub struct ClientRun {
    kid: Kid,
    what: String,
}

/// Starts `client.py COMMAND --brokers BROKERS --topic TOPIC ARGS` in the
/// background; [`ClientRun::finish`] collects its summary.
pub fn spawn_client(
    python: &Path,
    command: &str,
    brokers: &str,
    topic: &str,
    args: &[&str],
) -> ClientRun {
    let what = format!("client.py {command} --topic {topic} {}", args.join(" "));
    let mut cmd = Command::new(python);
    cmd.arg(client_py())
        .arg(command)
        .args(["--brokers", brokers, "--topic", topic])
        .args(args)
        .env("PYTHONUNBUFFERED", "1");
    ClientRun {
        kid: Kid::spawn(&what, &mut cmd),
        what,
    }
}

impl ClientRun {
    pub fn pid(&self) -> u32 {
        self.kid.pid()
    }

    /// Waits at most `limit` and returns the summary line, with the exit
    /// code added as `"exit_code"` (0: complete, 3: fell short; see
    /// client.py). Fails the test when the client hangs or prints no
    /// summary.
    pub fn finish(self, limit: Duration) -> Value {
        let what = self.what;
        let out = self.kid.finish(limit);
        let last = out.stdout.lines().rev().find(|l| !l.trim().is_empty());
        let mut v: Value = last
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| {
                panic!(
                    "{what}: no JSON summary ({})\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    out.status, out.stdout, out.stderr
                )
            });
        if let Value::Object(map) = &mut v {
            map.insert("exit_code".into(), out.status.code().into());
        }
        v
    }
}

/// `client.py produce` (see its docstring for `args`), its summary.
pub fn produce(python: &Path, brokers: &str, topic: &str, args: &[&str]) -> Value {
    spawn_client(python, "produce", brokers, topic, args).finish(CLIENT_LIMIT)
}

/// `client.py consume` (see its docstring for `args`), its summary.
pub fn consume(python: &Path, brokers: &str, topic: &str, args: &[&str]) -> Value {
    spawn_client(python, "consume", brokers, topic, args).finish(CLIENT_LIMIT)
}
