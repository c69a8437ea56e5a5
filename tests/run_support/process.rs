//! The `dab` process under test: started with piped output that threads
//! collect as it comes, signalled with `kill -TERM`, waited for with a
//! deadline, and killed by `Drop` whenever a test ends without reaping it
//! (a failed assertion must not leave a server running).

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Dab {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Dab {
    /// Starts `dab ARGS` in `dir` with `RUST_LOG` unset (logs at info).
    pub fn start(dir: &Path, args: &[&str]) -> Dab {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dab"))
            .current_dir(dir)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn dab");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        if let Some(mut out) = child.stdout.take() {
            let sink = Arc::clone(&stdout);
            readers.push(std::thread::spawn(move || {
                let mut buf = [0u8; 64 * 1024];
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .expect("stdout lock")
                        .extend_from_slice(&buf[..n]);
                }
            }));
        }
        if let Some(err) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            readers.push(std::thread::spawn(move || {
                let mut lines = BufReader::new(err);
                let mut line = Vec::new();
                while let Ok(n) = lines.read_until(b'\n', &mut line) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .expect("stderr lock")
                        .push_str(&String::from_utf8_lossy(&line));
                    line.clear();
                }
            }));
        }
        Dab {
            child,
            stdout,
            stderr,
            readers,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    /// Everything the process wrote on stdout so far (all of it after `wait`).
    pub fn stdout(&self) -> Vec<u8> {
        self.stdout.lock().expect("stdout lock").clone()
    }

    /// Sends SIGTERM, as an init system or `kill` would.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Whether the process is still running (reaps it if it is not).
    pub fn running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait().expect("try_wait") {
            Some(s) => {
                self.status = Some(s);
                false
            }
            None => true,
        }
    }

    /// Waits for the process to exit, at most `timeout` (then panics, and
    /// `Drop` kills it), and for its output to be collected.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        while self.running() {
            assert!(
                Instant::now() < deadline,
                "dab did not exit within {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // The pipes close with the process, so the readers end promptly.
        for r in self.readers.drain(..) {
            r.join().expect("output reader");
        }
        self.status.expect("exit status")
    }

    /// Waits until a stderr line satisfies `pred` and returns it.
    pub fn wait_for_log(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.stderr().lines().find(|l| pred(l)) {
                return line.to_owned();
            }
            assert!(
                self.running(),
                "dab exited ({:?}) before logging {what}; stderr:\n{}",
                self.status,
                self.stderr()
            );
            assert!(
                Instant::now() < deadline,
                "dab did not log {what} within {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Resident set size from `/proc/<pid>/status`, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

impl Drop for Dab {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The fields of a `--log-format json` line whose message is `message`.
pub fn log_fields(line: &str, message: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    (v["fields"]["message"].as_str() == Some(message)).then(|| v["fields"].clone())
}

/// Whether process `pid` has a SIGHUP handler installed yet (`SigCgt` in
/// `/proc/PID/status`): a reload signal sent before that would end it.
// Only the binaries that send SIGHUP (reload, join, faults) use it.
#[allow(dead_code)]
pub fn catches_sighup(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        })
        // SIGHUP is signal 1: bit 0.
        .is_some_and(|mask| mask & 1 == 1)
}
