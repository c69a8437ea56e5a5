//! The conformance corpus: every `*.dab` case in `../shared/conformance/`
//! (beside the checkout; required: the test fails without it) and in the project's own
//! `tests/corpus/`, judged by the real `dab validate` as its first line says.

mod common;

use std::path::{Path, PathBuf};

use common::{json_codes, root, run_in, stdout};

/// `// expect: ok W001` or `// expect: E012 E006`.
struct Expect {
    ok: bool,
    codes: Vec<String>,
}

fn expectation(path: &Path) -> Expect {
    let text = std::fs::read_to_string(path).expect("read case");
    let first = text.lines().next().unwrap_or("");
    let spec = first
        .trim()
        .strip_prefix("// expect:")
        .unwrap_or_else(|| panic!("{}: first line must be `// expect: ...`", path.display()));
    let words: Vec<String> = spec.split_whitespace().map(str::to_owned).collect();
    let ok = words.first().is_some_and(|w| w == "ok");
    let codes = words.into_iter().filter(|w| w != "ok").collect();
    Expect { ok, codes }
}

fn cases(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read corpus dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "dab") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Runs every case in `dir`; returns the failures, one line each.
fn check_corpus(dir: &Path) -> (usize, Vec<String>) {
    let cases = cases(dir);
    let mut failures = Vec::new();
    for case in &cases {
        let exp = expectation(case);
        let case_dir = case.parent().expect("parent");
        let file = case.file_name().and_then(|f| f.to_str()).expect("name");
        let yaml = case.with_extension("yaml");
        let mut args = vec!["validate", file, "--format", "json"];
        let yaml_name;
        if yaml.exists() {
            yaml_name = yaml
                .file_name()
                .and_then(|f| f.to_str())
                .expect("yaml")
                .to_owned();
            args.extend(["--config", &yaml_name]);
        } else {
            args.push("--no-config");
        }
        let out = run_in(case_dir, &args);
        let status = out.status.code();
        let want_status = if exp.ok { Some(0) } else { Some(1) };
        let codes = if out.stdout.is_empty() {
            Vec::new()
        } else {
            json_codes(&out)
        };
        let missing: Vec<&String> = exp.codes.iter().filter(|c| !codes.contains(c)).collect();
        let errors: Vec<&String> = codes.iter().filter(|c| c.starts_with('E')).collect();
        let bad = status != want_status || !missing.is_empty() || (exp.ok && !errors.is_empty());
        if bad {
            failures.push(format!(
                "{}: expected {} {:?}, got exit {:?} with {:?}\n{}",
                case.display(),
                if exp.ok { "ok" } else { "invalid" },
                exp.codes,
                status,
                codes,
                stdout(&out)
            ));
        }
    }
    (cases.len(), failures)
}

#[test]
fn shared_conformance_corpus() {
    let dir = root().join("../shared/conformance");
    assert!(
        dir.is_dir(),
        "{} not found: the shared conformance corpus must sit beside the checkout \
         (../shared/conformance, from the project's shared directory); it is a \
         required part of the suite, not an optional one",
        dir.display()
    );
    let (n, failures) = check_corpus(&dir);
    assert!(
        n >= 20,
        "expected the shared corpus to hold cases, found {n}"
    );
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn project_corpus() {
    let (n, failures) = check_corpus(&root().join("tests/corpus"));
    assert!(
        n >= 20,
        "expected the project corpus to hold cases, found {n}"
    );
    assert!(
        failures.is_empty(),
        "{} of {n} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
