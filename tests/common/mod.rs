//! Helpers shared by the end-to-end tests: run the real `dab` binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn dab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dab"))
}

/// The workspace root (the checkout).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    dab()
        .current_dir(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run dab")
}

/// Runs `dab ARGS` in `dir` with `input` on its stdin (written from
/// another thread, so a full pipe cannot deadlock) and waits for it.
pub fn run_with_stdin(dir: &Path, args: &[&str], input: String) -> Output {
    run_with_stdin_env(dir, args, input, &[])
}

/// [`run_with_stdin`] with `env` added to dab's environment.
pub fn run_with_stdin_env(
    dir: &Path,
    args: &[&str],
    input: String,
    env: &[(&str, &str)],
) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = dab()
        .current_dir(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dab");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("dab ends");
    writer.join().expect("writer").expect("write stdin");
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Codes reported by `dab validate --format json`.
pub fn json_codes(o: &Output) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)));
    v["diagnostics"]
        .as_array()
        .expect("diagnostics array")
        .iter()
        .map(|d| d["code"].as_str().expect("code").to_owned())
        .collect()
}
