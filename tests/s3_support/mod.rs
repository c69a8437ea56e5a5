//! A real S3-compatible server on loopback for the parquet sink's s3://
//! tests: moto's standalone server from the venv that
//! scripts/setup-python.sh makes, and boto3 (tests/interop/s3.py), a
//! client nobody here wrote, to make buckets and read the objects back. A
//! missing server fails the test; it never passes by skipping.
//!
//! [`Proxy`] stands between dab and the server to make an outage: while it
//! is down it closes every connection, old and new.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the tests give dab and boto3 through the environment.
pub const ACCESS_KEY: &str = "dab-test-access-key";
pub const SECRET_KEY: &str = "dab-test-secret-key";

fn venv() -> PathBuf {
    match std::env::var_os("DAB_VENV") {
        Some(p) => p.into(),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/dab/venv"),
    }
}

pub fn python() -> PathBuf {
    venv().join("bin/python")
}

fn helper() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/interop/s3.py")
        .canonicalize()
        .expect("tests/interop/s3.py")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// moto's S3 server on a free loopback port; stopped on drop.
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub endpoint: String,
}

impl S3Server {
    pub fn start() -> S3Server {
        let bin = venv().join("bin/moto_server");
        assert!(
            bin.is_file(),
            "moto's S3 server is not installed (looked for {}): run scripts/setup-python.sh",
            bin.display()
        );
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return server;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("moto_server exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        self.endpoint.trim_start_matches("http://")
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(python())
            .arg(helper())
            .args(args)
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .stdin(Stdio::null())
            .output()
            .expect("run tests/interop/s3.py");
        assert!(
            out.status.success(),
            "s3.py {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    }

    pub fn mkbucket(&self, bucket: &str) {
        self.run(&["mkbucket", &self.endpoint, bucket]);
    }

    /// Copies every object under `prefix` into `dir`; their keys, sorted.
    pub fn download(&self, bucket: &str, prefix: &str, dir: &Path) -> Vec<String> {
        let out = self.run(&[
            "download",
            &self.endpoint,
            bucket,
            prefix,
            dir.to_str().expect("utf-8 path"),
        ]);
        serde_json::from_str(&out).expect("a JSON list of keys")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy on loopback that can be taken down (every connection closed
/// at once, new ones closed as they come) and brought back.
pub struct Proxy {
    pub addr: String,
    up: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    pub fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let up = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let target = target.to_owned();
        let accept = {
            let (up, stop, conns) = (up.clone(), stop.clone(), conns.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let client = match listener.accept() {
                        Ok((c, _)) => c,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(5));
                            continue;
                        }
                    };
                    if !up.load(Ordering::SeqCst) {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let _ = client.set_nonblocking(false);
                    let Ok(server) = TcpStream::connect(&target) else {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    };
                    for s in [&client, &server] {
                        if let Ok(c) = s.try_clone() {
                            conns.lock().expect("conns").push(c);
                        }
                    }
                    pipe(
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    );
                    pipe(server, client);
                }
            })
        };
        Proxy {
            addr,
            up,
            stop,
            conns,
            accept: Some(accept),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Down: every open connection is closed, and new ones are closed as
    /// they are accepted. Up: connections pass again.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            for c in self.conns.lock().expect("conns").drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.set_up(false);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// The offsets of every row of the committed Parquet files under `dir`
/// (files under hidden, temporary names are not read), read with pyarrow;
/// each row's payload `n` must be its offset.
// Only the fault tests read rows back by offset.
#[allow(dead_code)]
pub fn parquet_offsets(dir: &Path) -> Vec<u64> {
    let script = r#"
import json, os, sys
import pyarrow.parquet as pq
out = []
for d, _, names in os.walk(sys.argv[1]):
    for name in names:
        if name.endswith(".parquet") and not name.startswith("."):
            t = pq.read_table(os.path.join(d, name), columns=["dab_offset", "n"])
            out.extend(zip(t.column("dab_offset").to_pylist(), t.column("n").to_pylist()))
print(json.dumps(out))
"#;
    let o = std::process::Command::new(python())
        .args(["-c", script])
        .arg(dir)
        .output()
        .expect("run pyarrow");
    assert!(
        o.status.success(),
        "pyarrow: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let pairs: Vec<(u64, u64)> = serde_json::from_slice(&o.stdout).expect("json");
    for (offset, n) in &pairs {
        assert_eq!(offset, n, "a row whose payload is another event's");
    }
    pairs.into_iter().map(|(o, _)| o).collect()
}

/// Downloads the objects under `warehouse/faults/` and returns their rows'
/// offsets ([`parquet_offsets`]); every key must be a final name.
#[allow(dead_code)]
pub fn committed_offsets(s3: &S3Server, into: &Path) -> Vec<u64> {
    let keys = s3.download("warehouse", "faults/", into);
    assert!(
        keys.iter()
            .all(|k| k.ends_with(".parquet") && !k.contains("/.")),
        "a key that is not a committed file: {keys:?}"
    );
    parquet_offsets(into)
}
