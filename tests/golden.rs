//! Golden tests: one bad blueprint per diagnostic code, with the exact human
//! rendering (no colour) and JSON that `dab validate` prints. Each case is a
//! folder `tests/golden/<CODE>_<what>/` holding `case.dab`, maybe a
//! `dab.yaml` (found beside the blueprint, as users rely on), maybe an `args`
//! file with extra arguments, and `expected.txt` / `expected.json`.
//!
//! After a deliberate change of wording, `DAB_BLESS=1 cargo test --test
//! golden` rewrites the expected files; review the diff before committing.

mod common;

use std::path::Path;

use common::{root, run_in, stdout};

fn extra_args(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("args"))
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn check(dir: &Path, format: &str, expected_file: &str, failures: &mut Vec<String>) {
    let mut args: Vec<String> = vec!["validate".into(), "case.dab".into()];
    if format == "json" {
        args.extend(["--format".into(), "json".into()]);
    }
    args.extend(extra_args(dir));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_in(dir, &argv);
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("?");
    let code = &name[..4];
    let want_exit = if code.starts_with('E') { 1 } else { 0 };
    if out.status.code() != Some(want_exit) {
        failures.push(format!(
            "{name} ({format}): exit {:?}, expected {want_exit}",
            out.status.code()
        ));
    }
    let got = stdout(&out);
    if !got.contains(code) {
        failures.push(format!(
            "{name} ({format}): output does not mention {code}:\n{got}"
        ));
    }
    let path = dir.join(expected_file);
    if std::env::var_os("DAB_BLESS").is_some() {
        std::fs::write(&path, &got).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    if got != want {
        failures.push(format!(
            "{name} ({format}) differs from {}:\n--- expected\n{want}\n--- got\n{got}",
            path.display()
        ));
    }
}

#[test]
fn every_code_has_a_golden_case_and_it_matches() {
    let dir = root().join("tests/golden");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/golden")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    let mut failures = Vec::new();
    for case in &cases {
        check(case, "human", "expected.txt", &mut failures);
        check(case, "json", "expected.json", &mut failures);
    }
    // One case per code of the SPEC's table, no code left out.
    for code in dab_codes() {
        if !cases.iter().any(|c| {
            c.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(code))
        }) {
            failures.push(format!("no golden case for {code}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn dab_codes() -> Vec<&'static str> {
    vec![
        "E001", "E002", "E003", "E004", "E005", "E006", "E007", "E008", "E009", "E010", "E011",
        "E012", "E013", "E014", "E015", "E016", "E017", "E018", "W001", "W002", "W003", "W004",
    ]
}
