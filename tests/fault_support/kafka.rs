//! The Kafka side of the fault matrix: the tansu broker built with its
//! `libsql` feature (storage in `sqlite://tansu.db` under the broker's
//! working directory, so topics, messages and group offsets survive a
//! restart) and the outside Python client, both required: a missing one
//! fails the row, it never skips. The broker itself is
//! `tests/kafka_support/broker.rs`.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Storage that survives a restart (relative to the broker's directory).
pub const SQLITE: &str = "sqlite://tansu.db";

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The tansu with `libsql`: `DAB_TANSU`, or where `scripts/setup-kafka.sh`
/// installs it (`~/.cache/dab/tansu-libsql/bin/tansu`). Fails the test when
/// there is none.
pub fn tansu() -> PathBuf {
    let p = std::env::var_os("DAB_TANSU").map_or_else(
        || home().join(".cache/dab/tansu-libsql/bin/tansu"),
        PathBuf::from,
    );
    assert!(
        p.is_file(),
        "no tansu broker at {} (DAB_TANSU, or ~/.cache/dab/tansu-libsql/bin/tansu): \
         build it with scripts/setup-kafka.sh",
        p.display()
    );
    p
}

/// A Python that imports `confluent_kafka`: `DAB_PYTHON`, or the venv of
/// `scripts/setup-python.sh`. Fails the test when there is none.
pub fn python() -> PathBuf {
    let p = std::env::var_os("DAB_PYTHON")
        .map_or_else(|| home().join(".cache/dab/venv/bin/python"), PathBuf::from);
    let ok = Command::new(&p)
        .args(["-c", "import confluent_kafka"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} does not import confluent_kafka: run scripts/setup-python.sh or set DAB_PYTHON",
        p.display()
    );
    p
}

/// A number of a client summary.
pub fn num(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number `{key}` in {v}"))
}
