//! End-to-end tests of the `dab` binary as a user runs it: exit codes,
//! stdout and stderr, config discovery, multi-file sets, `--diff`, `graph`.

mod common;

use std::path::Path;

use common::{dab, root, run_in, stderr, stdout};

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(p, text).expect("write");
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn seed_blueprints_are_valid_with_the_dab_yaml_found_beside_them() {
    let out = run_in(&root(), &["validate", "blueprints/murron/murron.dab"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(stdout(&out), "ok: 2 pipelines in 1 file\n");
    // --deny-warnings: the seed has none.
    let out = run_in(
        &root(),
        &[
            "validate",
            "blueprints/murron/murron.dab",
            "--deny-warnings",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn without_bindings_the_seed_names_are_unknown() {
    let out = run_in(
        &root(),
        &[
            "validate",
            "blueprints/murron/murron.dab",
            "--no-config",
            "--format",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let codes: Vec<&str> = v["diagnostics"]
        .as_array()
        .expect("array")
        .iter()
        .map(|d| d["code"].as_str().expect("code"))
        .collect();
    assert_eq!(codes, ["E010", "E010"], "{v}");
    assert_eq!(v["errors"], 2);
    assert_eq!(v["warnings"], 0);
    // MurronGRPC on line 3, column 8, 10 characters.
    let d = &v["diagnostics"][0];
    assert_eq!(d["file"], "blueprints/murron/murron.dab");
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(3), Some(8))
    );
    assert_eq!(
        (d["end_line"].as_u64(), d["end_column"].as_u64()),
        (Some(3), Some(18))
    );
    assert_eq!(d["severity"], "error");
}

#[test]
fn warnings_pass_unless_denied() {
    let dir = tmp();
    write(
        dir.path(),
        "w.dab",
        "svc.NewPipeline().In(Stdin).WithSampleRate(1).Out(Stdout)\n",
    );
    let out = run_in(dir.path(), &["validate", "w.dab"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("warning[W002]"), "{}", stdout(&out));
    let out = run_in(dir.path(), &["validate", "w.dab", "--deny-warnings"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn every_error_of_every_file_in_one_run() {
    let dir = tmp();
    write(
        dir.path(),
        "set/a.dab",
        "a.NewPipeline().In(Stdin).Fliter(x).Out(Q)\nb.NewPipeline().In(Stdin.Out(Stdout)\n",
    );
    write(
        dir.path(),
        "set/nested/b.dab",
        "c.NewPipeline().In(Q).WithSampleRate(0).Out(Nowhere)\n",
    );
    let out = run_in(dir.path(), &["validate", "set", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let got: Vec<(String, String)> = v["diagnostics"]
        .as_array()
        .expect("array")
        .iter()
        .map(|d| {
            (
                d["file"].as_str().expect("f").to_owned(),
                d["code"].as_str().expect("c").to_owned(),
            )
        })
        .collect();
    let want = [
        ("set/a.dab", "E006"),
        ("set/a.dab", "E001"),
        ("set/nested/b.dab", "E009"),
        ("set/nested/b.dab", "E010"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(f, c)| ((*f).to_owned(), (*c).to_owned()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn queues_link_files_and_a_cycle_across_files_names_every_member() {
    let dir = tmp();
    write(
        dir.path(),
        "a.dab",
        "a.NewPipeline().In(Generator).Out(Q1)\nb.NewPipeline().In(Q1).Out(Q2)\n",
    );
    write(dir.path(), "b.dab", "c.NewPipeline().In(Q2).Out(Stdout)\n");
    let out = run_in(dir.path(), &["validate", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(stdout(&out), "ok: 3 pipelines in 2 files\n");

    write(dir.path(), "b.dab", "c.NewPipeline().In(Q2).Out(Q1)\n");
    let out = run_in(dir.path(), &["validate", ".", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let d = &v["diagnostics"][0];
    assert_eq!(d["code"], "E012");
    assert_eq!(
        d["message"],
        "cycle through queues: b -> Q2 -> c -> Q1 -> b"
    );
    let label_files: Vec<&str> = d["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|l| l["file"].as_str().expect("file"))
        .collect();
    assert_eq!(label_files, ["a.dab", "b.dab"]);
}

#[test]
fn env_interpolation_from_flags_and_files() {
    let dir = tmp();
    write(dir.path(), "p.dab", "svc.NewPipeline().In(T).Out(Stdout)\n");
    write(
        dir.path(),
        "dab.yaml",
        "sources:\n  T: { kind: tcp, listen: \"${DAB_E2E_LISTEN}\" }\n",
    );
    let out = run_in(dir.path(), &["validate", "p.dab"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("error[E015]: environment variable `DAB_E2E_LISTEN` is not set"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("--> dab.yaml:2:"), "{}", stdout(&out));

    let out = run_in(
        dir.path(),
        &[
            "validate",
            "p.dab",
            "--env",
            "DAB_E2E_LISTEN=127.0.0.1:7000",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    write(
        dir.path(),
        "host.env",
        "# host settings\nexport DAB_E2E_LISTEN=\"127.0.0.1:7001\"\n",
    );
    let out = run_in(dir.path(), &["validate", "p.dab", "--env-file", "host.env"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn usage_and_io_errors_exit_2_with_a_message() {
    let dir = tmp();
    let out = run_in(dir.path(), &["validate", "missing.dab"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read `missing.dab`"),
        "{}",
        stderr(&out)
    );

    std::fs::create_dir(dir.path().join("empty")).expect("mkdir");
    let out = run_in(dir.path(), &["validate", "empty"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no *.dab files found in empty"),
        "{}",
        stderr(&out)
    );

    let out = run_in(dir.path(), &["validate", "--format", "xml", "x.dab"]);
    assert_eq!(out.status.code(), Some(2));

    write(
        dir.path(),
        "ok.dab",
        "svc.NewPipeline().In(Stdin).Out(Stdout)\n",
    );
    let out = run_in(dir.path(), &["validate", "ok.dab", "--env", "NOEQUALS"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--env expects KEY=VALUE"),
        "{}",
        stderr(&out)
    );

    let out = run_in(dir.path(), &["validate", "ok.dab", "--config", "nope.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("nope.yaml"), "{}", stderr(&out));
}

#[test]
fn invalid_utf8_is_a_diagnostic_with_its_place() {
    let dir = tmp();
    let mut bytes = b"svc.NewPipeline().In(Stdin).Out(Stdout)\n// caf".to_vec();
    bytes.extend([0xff, 0xfe]);
    bytes.extend(b"\n");
    std::fs::write(dir.path().join("bad.dab"), bytes).expect("write");
    let out = run_in(dir.path(), &["validate", "bad.dab"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("error[E001]: invalid UTF-8"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("--> bad.dab:2:7"), "{}", stdout(&out));
}

#[test]
fn diff_prints_the_reload_plan() {
    let dir = tmp();
    write(dir.path(), "old/p.dab", "a.NewPipeline().In(Stdin).Out(Stdout)\nb.NewPipeline().In(Stdin).WithSampleRate(2).Out(Out)\nc.NewPipeline().In(Generator).Out(Blackhole)\n");
    write(
        dir.path(),
        "old/dab.yaml",
        "sinks:\n  Out: { kind: file, path: /tmp/a.ndjson }\n",
    );
    write(dir.path(), "new/p.dab", "a.NewPipeline().In(Stdin).Out(Stdout)\nb.NewPipeline().In(Stdin).WithSampleRate(2).Out(Out)\nd.NewPipeline().In(Generator).Out(Blackhole)\n");
    write(
        dir.path(),
        "new/dab.yaml",
        "sinks:\n  Out: { kind: file, path: /tmp/b.ndjson }\n",
    );
    let out = run_in(dir.path(), &["validate", "--diff", "old", "new"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(
        stdout(&out),
        "reload plan: 1 added, 1 rebuilt, 1 removed, 1 unchanged\n  + added      d\n  ~ rebuilt    b (binding `Out` changed)\n  - removed    c\n  = unchanged  a\n"
    );
    let out = run_in(
        dir.path(),
        &["validate", "--diff", "old", "new", "--format", "json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["rebuilt"][0]["id"], "b");
    assert_eq!(v["added"][0], "d");

    // An invalid side is reported and nothing is planned.
    write(dir.path(), "new/p.dab", "a.NewPipeline().In(Stdin)\n");
    let out = run_in(dir.path(), &["validate", "--diff", "old", "new"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("E004"), "{}", stdout(&out));
    assert!(!stdout(&out).contains("reload plan"));
}

#[test]
fn graph_renders_dot_and_mermaid() {
    let out = run_in(&root(), &["graph", "blueprints/murron/murron.dab"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let dot = stdout(&out);
    assert!(dot.starts_with("digraph dab {"), "{dot}");
    for needle in [
        "label=\"MurronGRPC\", shape=invhouse",
        "label=\"MyEventQueue\", shape=cylinder",
        "label=\"SidecarClient\", shape=house",
        "label=\"FilterType(MyEvent)\"",
        "label=\"WithSampleRate(5)\"",
    ] {
        assert!(dot.contains(needle), "missing {needle} in\n{dot}");
    }
    // 3 named nodes + 3 stages, 2 + 3 edges... every edge once.
    assert_eq!(dot.matches(" -> ").count(), 5, "{dot}");

    let out = run_in(
        &root(),
        &[
            "graph",
            "blueprints/murron/murron.dab",
            "--format",
            "mermaid",
        ],
    );
    let m = stdout(&out);
    assert!(m.starts_with("flowchart LR\n"), "{m}");
    assert!(m.contains("[(\"MyEventQueue\")]"), "{m}");

    let dir = tmp();
    write(dir.path(), "bad.dab", "svc.NewPipeline().In(Stdin)\n");
    let out = run_in(dir.path(), &["graph", "bad.dab"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).is_empty(),
        "graph output on an invalid set: {}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("E004"), "{}", stderr(&out));
}

#[test]
fn help_is_there_for_every_command() {
    let out = dab().arg("--help").output().expect("run");
    assert_eq!(out.status.code(), Some(0));
    let top = stdout(&out);
    // The subcommands as `dab --help` lists them, so a new one is covered
    // the day it is added.
    let commands: Vec<&str> = top
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert_eq!(
        commands,
        ["validate", "graph", "run", "inspect", "schema", "backfill"],
        "{top}"
    );
    for command in commands {
        for flag in ["--help", "-h"] {
            let out = dab().args([command, flag]).output().expect("run");
            assert_eq!(out.status.code(), Some(0), "{command} {flag}");
            let help = stdout(&out);
            assert!(
                help.contains(&format!("Usage: dab {command} ")),
                "{command} {flag}: {help}"
            );
            assert!(help.contains("  -h, --help"), "{command} {flag}: {help}");
            assert_eq!(stderr(&out), "", "{command} {flag}");
        }
        let out = dab().args(["help", command]).output().expect("run");
        assert_eq!(out.status.code(), Some(0), "help {command}");
        assert!(stdout(&out).contains(&format!("Usage: dab {command} ")));
    }
    // The one nested command.
    let out = dab()
        .args(["schema", "check", "--help"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("Usage: dab schema check "),
        "{}",
        stdout(&out)
    );
}

/// An NDJSON event line signed with `key`, or with a wrong signature.
fn signed_line(key: &[u8], offset: u64, good: bool) -> String {
    use base64::Engine as _;
    let event = dab_api::Event {
        timestamp: 1_732_320_000_000_000_000,
        host: "web-1".into(),
        ty: "Signed".into(),
        offset,
        pid: 7,
        message: b"GET /".to_vec().into(),
        ..dab_api::Event::default()
    };
    let mut sig = dab_api::signature::Signer::new(key).sign(&event);
    if !good {
        sig[0] ^= 1;
    }
    serde_json::json!({
        "timestamp": event.timestamp, "host": "web-1", "type": "Signed",
        "offset": offset, "pid": 7, "message": "GET /",
        "signature": base64::engine::general_purpose::STANDARD.encode(sig),
    })
    .to_string()
}

#[test]
fn keys_passed_with_env_validate_and_then_run() {
    let dir = tmp();
    write(
        dir.path(),
        "set.dab",
        "ingest.NewPipeline().In(Stdin).VerifySignature(key = Murron).Out(Stdout)\n",
    );
    write(
        dir.path(),
        "dab.yaml",
        "keys:\n  Murron: { env: DAB_TEST_HMAC }\n",
    );
    let env_args = ["--env", "DAB_TEST_HMAC=from the flag"];
    // Without the variable both refuse, with the same words.
    let out = run_in(dir.path(), &["validate", "set.dab"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains(
            "error[E015]: environment variable `DAB_TEST_HMAC` for key `Murron` is not set"
        ),
        "{}",
        stdout(&out)
    );
    let out = run_in(dir.path(), &["run", "set.dab"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("error[E015]: environment variable `DAB_TEST_HMAC`"));

    let out = run_in(
        dir.path(),
        &[&["validate", "set.dab"][..], &env_args].concat(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(stdout(&out), "ok: 1 pipeline in 1 file\n");

    // `dab run` takes the same flag, and the key it verifies with is the
    // one the flag gave: only the event signed with it comes out.
    let key = b"from the flag";
    let input = [
        signed_line(key, 1, true),
        signed_line(key, 2, false),
        signed_line(b"another key", 3, true),
        signed_line(key, 4, true),
    ]
    .join("\n")
        + "\n";
    let mut child = dab()
        .current_dir(dir.path())
        .args([&["run", "set.dab"][..], &env_args].concat())
        .env_remove("RUST_LOG")
        .env_remove("DAB_TEST_HMAC")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run dab");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("feed stdin");
    }
    let out = child
        .wait_with_output()
        .expect("dab run ends with its input");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let offsets: Vec<u64> = stdout(&out)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("an NDJSON line");
            v["offset"].as_u64().expect("offset")
        })
        .collect();
    assert_eq!(offsets, [1, 4], "{}", stdout(&out));
}

#[test]
fn an_unreadable_key_file_is_refused_by_validate_and_by_run() {
    let dir = tmp();
    write(
        dir.path(),
        "set.dab",
        "ingest.NewPipeline().In(Stdin).VerifySignature(key = Murron).Out(Stdout)\n",
    );
    // A directory cannot be read as a file, not even by root (CI runs as
    // root, which reads files of any mode).
    std::fs::create_dir(dir.path().join("murron.key")).expect("mkdir");
    write(
        dir.path(),
        "dab.yaml",
        "keys:\n  Murron: { file: murron.key }\n",
    );
    let out = run_in(dir.path(), &["validate", "set.dab", "--format", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let d = &v["diagnostics"][0];
    assert_eq!(v["errors"], 1, "{v}");
    assert_eq!(d["code"], "E018");
    assert_eq!(
        d["message"],
        "cannot read key file `murron.key` of key `Murron`: Is a directory (os error 21)"
    );
    assert_eq!(
        (&d["file"], &d["line"], &d["column"]),
        (&"dab.yaml".into(), &2.into(), &19.into())
    );
    let out = run_in(dir.path(), &["run", "set.dab"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("error[E018]: cannot read key file `murron.key` of key `Murron`"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "");
}

#[test]
fn run_help_lists_every_exit_status() {
    let out = dab().args(["run", "--help"]).output().expect("run");
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    let statuses: Vec<&str> = help
        .lines()
        .skip_while(|l| *l != "Exit status:")
        .filter_map(|l| l.trim_start().split_once("  ").map(|(code, _)| code))
        .collect();
    assert_eq!(statuses, ["0", "1", "2", "3", "141"], "{help}");
    assert!(
        help.contains("3  events were abandoned: a forced stop"),
        "{help}"
    );
}

#[test]
fn the_checked_in_picture_of_the_seed_is_current() {
    let out = run_in(&root(), &["graph", "blueprints/murron/murron.dab"]);
    let want = std::fs::read_to_string(root().join("docs/murron.dot")).expect("docs/murron.dot");
    assert_eq!(
        stdout(&out),
        want,
        "run ./scripts/render-graph.sh and commit docs/murron.*"
    );
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tmp();
    write(dir.path(), "big.dab", "g.NewPipeline().In(G).Out(Stdout)\n");
    write(
        dir.path(),
        "dab.yaml",
        "sources:\n  G: { kind: generator, count: 100000 }\n",
    );
    for args in [
        &["run", "big.dab"][..],
        &["validate", "big.dab", "--format", "json"],
        &["graph", "big.dab"],
    ] {
        // The reader is gone before dab writes a byte, as with `| head`
        // once head has what it wants.
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let mut child = dab()
            .current_dir(dir.path())
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run dab");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{args:?} did not end after its stdout closed");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
            .expect("read stderr");
        assert_eq!(status.code(), Some(141), "{args:?}: {err}");
        assert!(!err.contains("Broken pipe"), "{args:?}: {err}");
        assert!(
            !err.lines().any(|l| l.starts_with("dab: ")),
            "{args:?}: {err}"
        );
    }
}

/// `dab schema check` as a user runs it before committing a new version:
/// a compatible version passes, an incompatible one fails with its code
/// and the field, and `dab validate` refuses the same set.
#[test]
fn schema_check_accepts_compatible_versions_and_refuses_breaking_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let reg = dir.path().join("schemas/Order");
    std::fs::create_dir_all(&reg).expect("registry");
    std::fs::write(
        reg.join("v1.yaml"),
        "version: 1\nfields:\n  id: int32\n  note: string?\n",
    )
    .expect("v1");
    std::fs::write(
        dir.path().join("t.dab"),
        "a.NewPipeline().In(Stdin).FilterType(Order).Out(Stdout)\n",
    )
    .expect("t.dab");
    let bindings = |fields: &str| {
        std::fs::write(
            dir.path().join("dab.yaml"),
            format!("types:\n  Order:\n    version: 2\n    fields:\n{fields}"),
        )
        .expect("dab.yaml");
    };
    // Widening int32 to int64, dropping an optional field, adding one.
    bindings("      id: int64\n      extra: bool?\n");
    let out = common::run_in(dir.path(), &["schema", "check", "t.dab"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    // Registering it and checking again: still fine, now as history.
    std::fs::write(
        reg.join("v2.yaml"),
        "version: 2\nfields:\n  id: int64\n  extra: bool?\n",
    )
    .expect("v2");
    let out = common::run_in(dir.path(), &["schema", "check", "t.dab"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));

    // Version 3 adds a required field: E020 at the field, in both commands.
    std::fs::write(
        dir.path().join("dab.yaml"),
        "types:\n  Order:\n    version: 3\n    fields:\n      id: int64\n      customer: string\n",
    )
    .expect("dab.yaml");
    for cmd in [
        &["schema", "check", "t.dab"][..],
        &["validate", "t.dab"][..],
    ] {
        let out = common::run_in(dir.path(), cmd);
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {text}");
        assert!(
            text.contains("error[E020]: version 3 of `Order` adds the required field `customer`")
                && text.contains("dab.yaml:6:7"),
            "{cmd:?}: {text}"
        );
    }
    // A registered version edited in place is caught as history.
    std::fs::write(
        reg.join("v2.yaml"),
        "version: 2\nfields:\n  id: string\n  extra: bool?\n",
    )
    .expect("v2");
    let out = common::run_in(
        dir.path(),
        &["schema", "check", "t.dab", "--format", "json"],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("\"E022\""), "{text}");
    assert!(text.contains("schemas/Order/v2.yaml"), "{text}");
}

/// `dab backfill` refuses what it cannot run before it touches a broker,
/// each with exit 2 and a message that names the problem: an unknown
/// pipeline (listing the set's), a pipeline whose input is not Kafka, a
/// time that is not RFC 3339, and an empty range. An invalid set is
/// reported as `dab validate` reports it, with exit 1.
#[test]
fn backfill_refuses_what_it_cannot_run() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("t.dab"),
        "live.NewPipeline().In(KIn).Out(Stdout)\nlocal.NewPipeline().In(Stdin).Out(Stdout)\n",
    )
    .expect("t.dab");
    std::fs::write(
        dir.path().join("dab.yaml"),
        "sources:\n  KIn: { kind: kafka, brokers: \"127.0.0.1:1\", topic: t, group: g }\n",
    )
    .expect("dab.yaml");
    let range = [
        "--from",
        "2024-01-01T00:00:00Z",
        "--to",
        "2024-01-01T01:00:00Z",
    ];
    let cases: [(&[&str], &str); 4] = [
        (
            &["--pipeline", "nope"],
            "no pipeline `nope` in the set; its pipelines are: live, local",
        ),
        (
            &["--pipeline", "local"],
            "pipeline `local` reads `Stdin`, which is not a Kafka source or queue",
        ),
        (
            &[
                "--pipeline",
                "live",
                "--from",
                "yesterday",
                "--to",
                "2024-01-01T01:00:00Z",
            ],
            "--from `yesterday` is not an RFC 3339 time",
        ),
        (
            &[
                "--pipeline",
                "live",
                "--from",
                "2024-01-01T01:00:00Z",
                "--to",
                "2024-01-01T00:00:00Z",
            ],
            "--to 2024-01-01T00:00:00Z is not after --from 2024-01-01T01:00:00Z",
        ),
    ];
    for (args, want) in cases {
        let mut all = vec!["backfill", "t.dab"];
        all.extend_from_slice(args);
        if !args.contains(&"--from") {
            all.extend_from_slice(&range);
        }
        let out = run_in(dir.path(), &all);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{all:?}: {}", stderr(&out));
    }
    // An invalid set: the diagnostics, exit 1, nothing run.
    std::fs::write(
        dir.path().join("t.dab"),
        "live.NewPipeline().In(KIn).Out(Nowhere)\n",
    )
    .expect("t.dab");
    let mut all = vec!["backfill", "t.dab", "--pipeline", "live"];
    all.extend_from_slice(&range);
    let out = run_in(dir.path(), &all);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("E010"), "{}", stderr(&out));
}

/// A disk queue keeps its binding across a reload: switching it to or from
/// memory or Kafka, or changing its settings, is refused (E019, at the
/// binding); an unchanged disk queue is planned as unchanged.
#[test]
fn diff_refuses_switching_or_changing_a_disk_queue() {
    let dir = tmp();
    let set = "a.NewPipeline().In(Stdin).Out(Q)\nb.NewPipeline().In(Q).Out(Stdout)\n";
    let disk = "queues:\n  Q: { kind: disk, path: spool, max_bytes: 64MiB, fsync: 100ms }\n";
    let cases = [
        (disk, disk, None),
        (
            "queues:\n  Q: { kind: memory }\n",
            disk,
            Some("error[E019]: queue `Q` would switch from memory to disk in a running process"),
        ),
        (
            disk,
            "queues:\n  Q: { kind: kafka, brokers: \"127.0.0.1:9092\", topic: q }\n",
            Some("error[E019]: queue `Q` would switch from disk to Kafka in a running process"),
        ),
        (
            disk,
            "queues:\n  Q: { kind: disk, path: spool, max_bytes: 64MiB, fsync: always }\n",
            Some("error[E019]: disk queue `Q` would change its settings in a running process"),
        ),
    ];
    for (old, new, refusal) in cases {
        write(dir.path(), "old/p.dab", set);
        write(dir.path(), "old/dab.yaml", old);
        write(dir.path(), "new/p.dab", set);
        write(dir.path(), "new/dab.yaml", new);
        let out = run_in(dir.path(), &["validate", "--diff", "old", "new"]);
        let text = stdout(&out);
        match refusal {
            None => {
                assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
                assert!(
                    text.contains("= unchanged  a") && text.contains("= unchanged  b"),
                    "{text}"
                );
            }
            Some(first) => {
                assert_eq!(out.status.code(), Some(1), "{new}: {text}{}", stderr(&out));
                assert!(text.starts_with(first), "{new}: {text}");
                assert!(text.contains(" --> new/dab.yaml:2:3"), "{text}");
            }
        }
    }
}

/// A disk queue's directory has one owner process: `--service` warns
/// (W004) when a disk queue links the selected service with another.
#[test]
fn service_split_across_a_disk_queue_warns() {
    let dir = tmp();
    write(
        dir.path(),
        "p.dab",
        "ingest.NewPipeline().In(Stdin).Out(Spool)\ndrain.NewPipeline().In(Spool).Out(Stdout)\n",
    );
    write(
        dir.path(),
        "dab.yaml",
        "queues:\n  Spool: { kind: disk, path: spool }\n",
    );
    let out = run_in(dir.path(), &["validate", "--service", "ingest", "."]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with(
            "warning[W004]: disk queue `Spool` links service `ingest` with `drain`: one process at a time may open its directory"
        ),
        "{}",
        stdout(&out)
    );
    // One process running both: no warning.
    let out = run_in(dir.path(), &["validate", "."]);
    assert_eq!(stdout(&out), "ok: 2 pipelines in 1 file\n");
}
