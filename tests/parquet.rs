//! The parquet sink as a user checks it (SPEC section 8): `dab run` reads
//! NDJSON events from stdin and writes Parquet; pyarrow and DuckDB, readers
//! nobody here wrote, read the files back (tests/interop/parquet_read.py,
//! installed by scripts/setup-python.sh; a missing reader fails the test).
//! The same files on S3-compatible storage are read from moto's S3 server
//! on loopback (tests/s3_support), downloaded with boto3.

mod common;
#[path = "s3_support/mod.rs"]
mod s3_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

/// Enough lines that stdin hands them over in several batches, so hours
/// come back after their files were committed (late events).
const N: u64 = 2000;
/// 2024-01-01T00:00:00Z in seconds.
const BASE_S: i64 = 1_704_067_200;
const HOUR_NS: i64 = 3_600_000_000_000;
/// Hours after BASE of event `i`: out of order, so hours 0 and 1 come back
/// after later ones (late events) while at most two files are open.
const HOURS: [i64; 7] = [0, 1, 2, 3, 1, 0, 5];

fn python() -> PathBuf {
    let python: PathBuf = match std::env::var_os("DAB_PYTHON") {
        Some(p) => p.into(),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME"))
            .join(".cache/dab/venv/bin/python"),
    };
    let ok = Command::new(&python)
        .args(["-c", "import pyarrow, duckdb"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "pyarrow and duckdb are not installed (looked for {}): run scripts/setup-python.sh, \
         or point DAB_PYTHON at a python that imports them",
        python.display()
    );
    python
}

fn is_bad(i: u64) -> bool {
    i % 37 == 5 || i == 100
}

fn hour_of(i: u64) -> i64 {
    HOURS[i as usize % HOURS.len()]
}

/// The payload of event `i`, and the row a reader must see for it.
fn payload(i: u64) -> (String, Value) {
    if i == 100 {
        return ("not json".into(), Value::Null);
    }
    let mut p = serde_json::Map::new();
    let mut row = serde_json::Map::new();
    let team: Value = if i % 37 == 5 { json!("x") } else { json!(i) };
    p.insert("team_id".into(), team);
    row.insert("team_id".into(), json!(i));
    p.insert("retries".into(), json!(i % 100));
    row.insert("retries".into(), json!(i % 100));
    match i % 3 {
        0 => {}
        1 => {
            p.insert("visitor_id".into(), Value::Null);
        }
        _ => {
            p.insert("visitor_id".into(), json!(format!("v{i}")));
        }
    }
    row.insert(
        "visitor_id".into(),
        if i % 3 == 2 {
            json!(format!("v{i}"))
        } else {
            Value::Null
        },
    );
    p.insert("latency_ms".into(), json!(i as f64 + 0.5));
    row.insert("latency_ms".into(), json!(i as f64 + 0.5));
    p.insert("ok".into(), json!(i % 2 == 0));
    row.insert("ok".into(), json!(i % 2 == 0));
    let tags = match i % 4 {
        0 => Value::Null,
        1 => json!([]),
        _ => json!([format!("a{i}"), "b"]),
    };
    if !tags.is_null() {
        p.insert("tags_seen".into(), tags.clone());
    }
    row.insert("tags_seen".into(), tags);
    if i % 5 == 0 {
        row.insert("user_agent".into(), Value::Null);
    } else {
        p.insert(
            "user_agent".into(),
            json!({"os": "linux", "n": i.to_string()}),
        );
        // Map entries in key order, as pyarrow lists them.
        row.insert(
            "user_agent".into(),
            json!([["n", i.to_string()], ["os", "linux"]]),
        );
    }
    let version = (i % 2 == 0).then(|| format!("1.{i}"));
    let mut client = json!({"name": format!("c{i}")});
    if let Some(v) = &version {
        client["version"] = json!(v);
    }
    p.insert("client".into(), client);
    row.insert(
        "client".into(),
        json!({"name": format!("c{i}"), "version": version}),
    );
    if i % 6 == 0 {
        p.insert("body".into(), json!(format!("b{i}")));
        row.insert("body".into(), json!(format!("b{i}")));
    } else {
        row.insert("body".into(), Value::Null);
    }
    let secs = (i % 60) as i64;
    if i % 2 == 0 {
        p.insert("at".into(), json!(BASE_S * 1_000_000_000 + i as i64));
        row.insert("at".into(), json!(BASE_S * 1_000_000_000 + i as i64));
    } else {
        p.insert("at".into(), json!(format!("2024-01-01T00:00:{secs:02}.5Z")));
        row.insert(
            "at".into(),
            json!(BASE_S * 1_000_000_000 + secs * 1_000_000_000 + 500_000_000),
        );
    }
    let h = hour_of(i);
    row.insert(
        "dir".into(),
        json!(format!("year=2024/month=01/day=01/hour={h:02}")),
    );
    (Value::Object(p).to_string(), Value::Object(row))
}

const BINDINGS: &str = r#"
types:
  ApiCall:
    version: 3
    fields:
      team_id: int64
      retries: int32
      visitor_id: string?
      latency_ms: float64
      ok: bool
      tags_seen: list<string>?
      user_agent: map<string, string>?
      client: { name: string, version: string? }
      body: bytes?
      at: timestamp
sinks:
  Bad: { kind: file, path: bad.ndjson }
"#;

fn run_dab(dir: &Path, input: String, env: &[(&str, &str)]) {
    let out =
        common::run_with_stdin_env(dir, &["run", "t.dab", "--config", "dab.yaml"], input, env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes the blueprint `t.dab` and the bindings `dab.yaml` into `dir`.
fn write_set(dir: &Path, blueprint: &str, bindings: &str) {
    std::fs::write(dir.join("t.dab"), blueprint).expect("t.dab");
    std::fs::write(dir.join("dab.yaml"), bindings).expect("dab.yaml");
}

/// Every file under `dir`, relative.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).expect("prefix").display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// The NDJSON lines of the run and the row a reader must see for each
/// good event, by offset.
fn case() -> (String, BTreeMap<u64, Value>) {
    let mut input = String::new();
    let mut want: BTreeMap<u64, Value> = BTreeMap::new();
    for i in 0..N {
        let (message, mut row) = payload(i);
        let ts = (BASE_S * 1_000_000_000) + hour_of(i) * HOUR_NS + i as i64;
        let host = format!("h{}", i % 3);
        input.push_str(
            &json!({"type": "ApiCall", "host": host, "pid": 7, "offset": i, "timestamp": ts,
                    "tags": {"region": "eu", "n": i.to_string()}, "message": message})
            .to_string(),
        );
        input.push('\n');
        // The envelope's columns, with the tags in key order.
        row["dab_timestamp"] = json!(ts);
        row["dab_host"] = json!(host);
        row["dab_type"] = json!("ApiCall");
        row["dab_offset"] = json!(i);
        row["dab_pid"] = json!(7);
        row["dab_tags"] = json!([["n", i.to_string()], ["region", "eu"]]);
        if !is_bad(i) {
            want.insert(i, row);
        }
    }
    (input, want)
}

#[test]
fn stdin_to_parquet_read_back_by_pyarrow_and_duckdb() {
    let python = python();
    let dir = tempfile::tempdir().expect("dir");
    write_set(dir.path(), "p.NewPipeline().In(Stdin).OnError(Bad).Out(Warehouse)\n", &format!("{BINDINGS}  Warehouse: {{ kind: parquet, path: out, type: ApiCall, compression: snappy, max_open_writers: 2 }}\n"));
    let (input, want) = case();
    run_dab(dir.path(), input, &[]);

    // Nothing but committed files under final names.
    let out = dir.path().join("out");
    let all = files(&out);
    check_names(&all);
    check_read_back(&python, &out, &want);
    check_on_error(dir.path());
}

/// Files are not cut at every pause of the input or every 64 batches (as
/// other sinks are flushed): many more batches than that, all of one hour,
/// give one file, committed when the input ends, holding every row.
#[test]
fn one_hour_of_many_batches_is_one_file() {
    let python = python();
    let dir = tempfile::tempdir().expect("dir");
    write_set(
        dir.path(),
        "p.NewPipeline().In(Stdin).Out(Warehouse)\n",
        &format!("{BINDINGS}  Warehouse: {{ kind: parquet, path: out, type: ApiCall }}\n"),
    );
    // About 300 bytes a line and stdin reads 64 KiB at a time: some 200
    // events a batch, so 40,000 events are about 200 batches.
    let total = 40_000u64;
    let mut input = String::new();
    let mut want = BTreeMap::new();
    for i in (0..total).filter(|i| !is_bad(*i)) {
        let (message, row) = payload(i);
        let ts = BASE_S * 1_000_000_000 + i as i64;
        input.push_str(
            &json!({"type": "ApiCall", "host": "h", "timestamp": ts, "message": message})
                .to_string(),
        );
        input.push('\n');
        want.insert(i, row);
    }
    run_dab(dir.path(), input, &[]);
    let out = dir.path().join("out");
    let all = files(&out);
    assert_eq!(all.len(), 1, "one hour, one file: {all:?}");
    let got = read_back(&python, &out);
    let rows = got["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), want.len(), "one row per event");
}

/// Nothing but committed files under final names; hour 0 reopened.
fn check_names(all: &[String]) {
    assert!(!all.is_empty());
    assert!(
        all.iter()
            .all(|f| f.ends_with(".parquet") && !f.contains("/.")),
        "{all:?}"
    );
    // Late events reopened hour 0 after its first file was committed: a
    // new file in the same partition, never a file elsewhere.
    let hour0 = all.iter().filter(|f| f.contains("hour=00/")).count();
    assert!(hour0 >= 2, "hour 0 was not reopened: {all:?}");
}

/// The same run with `path: s3://warehouse/server_logs` on moto's S3
/// server: the objects, downloaded with boto3, are exactly the files the
/// local run checks, read back the same way; the keys are final names
/// only, and the spool is empty once dab has ended.
#[test]
fn stdin_to_parquet_on_s3_read_back_by_pyarrow_and_duckdb() {
    let python = python();
    let s3 = s3_support::S3Server::start();
    s3.mkbucket("warehouse");
    let dir = tempfile::tempdir().expect("dir");
    write_set(dir.path(), "p.NewPipeline().In(Stdin).OnError(Bad).Out(Warehouse)\n", &format!(
            "{BINDINGS}  Warehouse: {{ kind: parquet, path: \"s3://warehouse/server_logs\", type: ApiCall, \
             compression: snappy, max_open_writers: 2, s3_endpoint: \"{}\", spool: spool, \
             access_key: \"${{S3_ACCESS_KEY}}\", secret_key: \"${{S3_SECRET_KEY}}\" }}\n",
            s3.endpoint
        ));
    let (input, want) = case();
    run_dab(
        dir.path(),
        input,
        &[
            ("S3_ACCESS_KEY", s3_support::ACCESS_KEY),
            ("S3_SECRET_KEY", s3_support::SECRET_KEY),
        ],
    );

    let local = dir.path().join("downloaded");
    let keys = s3.download("warehouse", "server_logs/", &local);
    assert!(
        keys.iter().all(|k| k.starts_with("server_logs/year=2024/")),
        "{keys:?}"
    );
    check_names(&files(&local));
    assert_eq!(files(&local).len(), keys.len());
    let spool = files(&dir.path().join("spool"));
    assert!(spool.is_empty(), "left in the spool: {spool:?}");
    check_read_back(&python, &local, &want);
    check_on_error(dir.path());
}

/// pyarrow and DuckDB read back exactly `want`, in the partitions of the
/// event hours, with the type, version and field ids in every file.
/// What tests/interop/parquet_read.py reads under `out` (pyarrow, DuckDB).
fn read_back(python: &Path, out: &Path) -> Value {
    let read = Command::new(python)
        .arg(common::root().join("tests/interop/parquet_read.py"))
        .arg(out)
        .output()
        .expect("run parquet_read.py");
    assert!(
        read.status.success(),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    serde_json::from_slice(&read.stdout).expect("json")
}

fn check_read_back(python: &Path, out: &Path, want: &BTreeMap<u64, Value>) {
    let got = read_back(python, out);

    // Exact rows and values, each in the partition of its event hour.
    let rows = got["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), want.len(), "one row per good event");
    let mut by_team: BTreeMap<u64, Value> = BTreeMap::new();
    for r in rows {
        let team = r["team_id"].as_u64().expect("team_id");
        assert!(
            by_team.insert(team, r.clone()).is_none(),
            "team {team} twice"
        );
    }
    for (i, w) in want {
        assert_eq!(by_team.get(i), Some(w), "row of event {i}");
    }

    // DuckDB over the hive partitions: counts per hour, NULLs counted as
    // NULLs (count(col) skips them), no empty string standing for one.
    let mut per_hour: BTreeMap<i64, [i64; 8]> = BTreeMap::new();
    for (i, w) in want {
        let c = per_hour.entry(hour_of(*i)).or_default();
        let present = |k: &str| i64::from(!w[k].is_null());
        c[0] += 1;
        c[1] += present("visitor_id");
        c[2] += present("tags_seen");
        c[3] += present("user_agent");
        c[4] += i64::from(!w["client"]["version"].is_null());
        c[5] += present("body");
        c[7] += (*i % 100) as i64;
    }
    let want_duck: Vec<Vec<i64>> = per_hour
        .iter()
        .map(|(h, c)| {
            let mut r = vec![2024, 1, 1, *h];
            r.extend(c);
            r
        })
        .collect();
    let duck: Vec<Vec<i64>> = serde_json::from_value(got["duckdb"].clone()).expect("duckdb rows");
    assert_eq!(duck, want_duck);

    // Type and version in every file's metadata; field ids by declaration.
    for m in got["metadata"].as_array().expect("metadata") {
        assert_eq!(
            m,
            &json!({"dab.type": "ApiCall", "dab.schema_version": "3"})
        );
    }
    let ids = &got["field_ids"][0];
    let names = [
        "team_id",
        "retries",
        "visitor_id",
        "latency_ms",
        "ok",
        "tags_seen",
        "user_agent",
        "client",
        "body",
        "at",
    ];
    let want_ids: Vec<Value> = names
        .iter()
        .map(|n| json!([n, dab_connectors::parquet_sink::field_id(n).to_string()]))
        .chain(
            dab_connectors::parquet_sink::ENVELOPE
                .iter()
                .enumerate()
                .map(|(i, n)| json!([n, (2_000_000_001 + i).to_string()])),
        )
        .collect();
    assert_eq!(ids, &Value::Array(want_ids));
}

/// The payloads that do not conform went to OnError, exactly, each with
/// the reason in `dab.error`.
fn check_on_error(dir: &Path) {
    let bad_text = std::fs::read_to_string(dir.join("bad.ndjson")).expect("bad.ndjson");
    let bad: Vec<Value> = bad_text
        .lines()
        .map(|l| serde_json::from_str(l).expect("bad line"))
        .collect();
    let offsets: Vec<u64> = bad
        .iter()
        .map(|e| e["offset"].as_u64().expect("offset"))
        .collect();
    let want_bad: Vec<u64> = (0..N).filter(|i| is_bad(*i)).collect();
    let mut sorted = offsets.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, want_bad);
    for e in &bad {
        let reason = e["tags"]["dab.error"].as_str().expect("dab.error");
        let want = if e["offset"] == json!(100) {
            "not a JSON object"
        } else {
            "`team_id` is a string, not int64"
        };
        assert!(reason.contains(want), "{reason}");
    }
}

/// `dab validate` refuses a parquet sink whose `type` has no schema, at the
/// field, with E015.
#[test]
fn validate_refuses_a_type_without_a_schema() {
    let dir = tempfile::tempdir().expect("dir");
    write_set(dir.path(), "p.NewPipeline().In(Stdin).Out(W)\n", "types:\n  ApiCall: {}\n  Typed: { version: 1, fields: { a: int64 } }\nsinks:\n  W: { kind: parquet, path: out, type: ApiCall }\n");
    let o = common::run_in(
        dir.path(),
        &[
            "validate", "t.dab", "--config", "dab.yaml", "--format", "json",
        ],
    );
    assert!(!o.status.success());
    assert_eq!(
        common::json_codes(&o),
        vec!["E015".to_owned()],
        "{}",
        common::stdout(&o)
    );
    let text = common::stdout(&o);
    assert!(
        text.contains("type `ApiCall` is not declared with a schema"),
        "{text}"
    );
    // At the `type` value: line 5, column 40.
    let v: Value = serde_json::from_str(&text).expect("json");
    let d = &v["diagnostics"][0];
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(5), Some(40)),
        "{text}"
    );
}

/// `dab validate` refuses what an s3:// path cannot work with, each with
/// E015 and a message naming the field: a key written into the bindings
/// file (keys come from the environment only), a missing key, an endpoint
/// that is not an http(s) URL, a path without a bucket, and S3 fields
/// beside a local directory. With `${VAR}` keys it accepts the sink.
#[test]
fn validate_refuses_s3_settings_that_cannot_work() {
    let keys = r#"access_key: "${S3_ACCESS_KEY}", secret_key: "${S3_SECRET_KEY}""#;
    let cases = [
        (format!(r#"path: "s3://w/p", {keys}"#), None),
        (
            format!(r#"path: "s3://w/p", {keys}, s3_endpoint: "http://127.0.0.1:9000""#),
            None,
        ),
        (
            r#"path: "s3://w/p", access_key: "AKIA123", secret_key: "${S3_SECRET_KEY}""#.to_owned(),
            Some("`access_key` is written into the bindings file"),
        ),
        (
            r#"path: "s3://w/p", access_key: "${S3_ACCESS_KEY}""#.to_owned(),
            Some("an s3:// path needs `secret_key`"),
        ),
        (
            format!(r#"path: "s3://w/p", {keys}, s3_endpoint: "127.0.0.1:9000""#),
            Some("`s3_endpoint` `127.0.0.1:9000` is not an http:// or https:// URL"),
        ),
        (
            format!(r#"path: "s3:///p", {keys}"#),
            Some("`s3:///p` names no bucket"),
        ),
        (
            r#"path: out, s3_region: eu-west-1"#.to_owned(),
            Some("`s3_region` is only for an s3:// path"),
        ),
    ];
    for (fields, want) in cases {
        let dir = tempfile::tempdir().expect("dir");
        write_set(dir.path(), "p.NewPipeline().In(Stdin).Out(W)\n", &format!("types:\n  T: {{ version: 1, fields: {{ a: int64 }} }}\nsinks:\n  W: {{ kind: parquet, type: T, {fields} }}\n"));
        let o = common::run_in(
            dir.path(),
            &[
                "validate",
                "t.dab",
                "--config",
                "dab.yaml",
                "--format",
                "json",
                "--env",
                "S3_ACCESS_KEY=a",
                "--env",
                "S3_SECRET_KEY=b",
            ],
        );
        let text = common::stdout(&o);
        match want {
            None => assert!(o.status.success(), "{fields}: {text}"),
            Some(want) => {
                assert!(!o.status.success(), "{fields}: accepted");
                assert_eq!(
                    common::json_codes(&o),
                    vec!["E015".to_owned()],
                    "{fields}: {text}"
                );
                assert!(text.contains(want), "{fields}: {text}");
            }
        }
    }
}

/// Version 1 of `Log`, and version 2: `service` and `host` (both strings)
/// declared in the other order, and the optional `region` added.
const LOG_V1: &str =
    "version: 1\nfields:\n  n: int64\n  host: string\n  service: string\n  latency_ms: float64?\n";
const LOG_V2: &str = "version: 2\nfields:\n  n: int64\n  service: string\n  host: string\n  latency_ms: float64?\n  region: string?\n";

/// DuckDB's `read_parquet(..., union_by_name = true)` over the files of
/// two versions: every row as `[n, host, service, latency_ms, region,
/// dab_offset]`, sorted by `n`, and each file's `dab.schema_version`.
const READ_BY_NAME: &str = r#"
import json, os, sys
import duckdb
import pyarrow.parquet as pq
root = sys.argv[1]
rows = duckdb.sql(
    "SELECT n, host, service, latency_ms, region, dab_offset FROM read_parquet("
    + "'" + os.path.join(root, "**", "*.parquet") + "', "
    + "union_by_name = true, hive_partitioning = true) ORDER BY n").fetchall()
versions = sorted(
    pq.ParquetFile(os.path.join(d, f)).metadata.metadata[b"dab.schema_version"].decode()
    for d, _, fs in os.walk(root) for f in fs if f.endswith(".parquet"))
print(json.dumps({"rows": rows, "versions": versions}))
"#;

/// Schema evolution as a reader sees it: two `dab run`s, one with
/// version 1 of a type and one with version 2 (two same-typed fields
/// swapped, an optional field added; v1 is in the registry, so the second
/// run checks v2 against it), write into the same directory. DuckDB reads
/// them together by name: every value is in its own column (a reader by
/// position would put v1's `host` under v2's `service`), and v1's rows
/// have NULL for the new field.
#[test]
fn two_schema_versions_in_one_directory_read_together_by_name() {
    let python = python();
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(
        dir.path().join("t.dab"),
        "p.NewPipeline().In(Stdin).Out(Warehouse)\n",
    )
    .expect("t.dab");
    let indent = |body: &str| -> String { body.lines().map(|l| format!("    {l}\n")).collect() };
    let events = |from: u64, version: u64| -> String {
        (from..from + 50)
            .map(|n| {
                let mut p = json!({"n": n, "host": format!("h{n}"), "service": format!("s{n}")});
                if n % 2 == 0 {
                    p["latency_ms"] = json!(n as f64 / 4.0);
                }
                if version == 2 && n % 3 != 0 {
                    p["region"] = json!(format!("r{n}"));
                }
                let ts = BASE_S * 1_000_000_000 + (n as i64) * 1_000_000;
                format!(
                    "{}\n",
                    json!({"type": "Log", "host": "w", "pid": 1, "offset": n, "timestamp": ts,
                           "message": p.to_string()})
                )
            })
            .collect()
    };
    let sink = "sinks:\n  Warehouse: { kind: parquet, path: out, type: Log }\n";
    for (version, body) in [(1, LOG_V1), (2, LOG_V2)] {
        std::fs::write(
            dir.path().join("dab.yaml"),
            format!("types:\n  Log:\n{}{sink}", indent(body)),
        )
        .expect("dab.yaml");
        run_dab(dir.path(), events(version * 100, version), &[]);
        // The version just run is registered, so the next run is checked
        // against it (docs/schemas.md); v2 must be compatible with v1.
        let reg = dir.path().join("schemas/Log");
        std::fs::create_dir_all(&reg).expect("schemas/Log");
        std::fs::write(reg.join(format!("v{version}.yaml")), body).expect("register");
    }

    let out = Command::new(&python)
        .args(["-c", READ_BY_NAME])
        .arg(dir.path().join("out"))
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).expect("json");
    let versions = got["versions"].as_array().expect("versions");
    assert!(
        versions.contains(&json!("1")) && versions.contains(&json!("2")),
        "{got}"
    );
    let want: Vec<Value> = [100u64, 200]
        .iter()
        .flat_map(|&from| from..from + 50)
        .map(|n| {
            let latency = if n % 2 == 0 {
                json!(n as f64 / 4.0)
            } else {
                Value::Null
            };
            let region = if n >= 200 && n % 3 != 0 {
                json!(format!("r{n}"))
            } else {
                Value::Null
            };
            json!([n, format!("h{n}"), format!("s{n}"), latency, region, n])
        })
        .collect();
    assert_eq!(got["rows"], Value::Array(want));

    // Read by field id too (DuckDB's `schema` parameter resolves columns
    // by id): the ids are the same in both versions, so every value is
    // in its own column that way as well.
    let id = |name: &str| dab_connectors::parquet_sink::field_id(name);
    let by_id = format!(
        "import sys, duckdb\n\
         rows = duckdb.sql(\"SELECT n, host, service FROM read_parquet('\" + sys.argv[1] + \"/**/*.parquet', \
         schema = MAP {{ {}: {{name: 'n', type: 'BIGINT', default_value: NULL}}, \
         {}: {{name: 'host', type: 'VARCHAR', default_value: NULL}}, \
         {}: {{name: 'service', type: 'VARCHAR', default_value: NULL}} }}) ORDER BY n\").fetchall()\n\
         bad = [r for r in rows if r[1] != 'h%d' % r[0] or r[2] != 's%d' % r[0]]\n\
         print(len(rows), len(bad))",
        id("n"),
        id("host"),
        id("service")
    );
    let out = Command::new(&python)
        .args(["-c", &by_id])
        .arg(dir.path().join("out"))
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "100 0",
        "read by field id, a value landed in another column"
    );
}
