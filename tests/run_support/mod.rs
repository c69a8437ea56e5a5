//! Helpers of the `dab run` end-to-end tests (`tests/run.rs`): the process
//! under test, a raw HTTP/1.1 client and metrics scraper, a scriptable HTTP
//! server standing in for a sink's peer, a peer that never answers, a peer
//! that only counts lines, socket producers, and the sampler's documented
//! hash written out independently of the product.

pub mod client;
// Only the limit tests count lines they cannot keep.
#[allow(dead_code)]
pub mod counter;
pub mod process;
pub mod producer;
pub mod sample;
pub mod server;
pub mod silent;

use std::path::Path;
use std::time::{Duration, Instant};

/// Writes `t.dab` and `dab.yaml` into `dir`.
pub fn write_set(dir: &Path, blueprint: &str, bindings: &str) {
    std::fs::write(dir.join("t.dab"), blueprint).expect("write t.dab");
    std::fs::write(dir.join("dab.yaml"), bindings).expect("write dab.yaml");
}

/// Polls `f` every 10 ms until it returns `Some`, or panics after `timeout`
/// with `what` and the last state `describe` gives.
pub fn poll<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    describe: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; {}",
            describe()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The lines of a file (without their newlines); empty when it does not exist.
pub fn file_lines(path: &Path) -> Vec<String> {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes)
            .expect("sink file is UTF-8")
            .lines()
            .map(str::to_owned)
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}
