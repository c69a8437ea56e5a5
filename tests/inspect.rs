//! End-to-end tests of `dab inspect`: the reliability score table of NDJSON
//! files offline (exact numbers for known gaps, duplicates and late
//! arrivals; JSON output; bad lines reported by line number) and of a
//! running dab's admin endpoint (`--url`, served here by a tiny listener).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::thread::JoinHandle;

use common::{run_in, stderr, stdout};

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn line(host: &str, pid: u32, ty: &str, offset: u64) -> String {
    format!(
        "{{\"timestamp\": 1732320000000000000, \"host\": \"{host}\", \"type\": \"{ty}\", \"offset\": {offset}, \"pid\": {pid}, \"message\": \"m\"}}"
    )
}

/// web-1/311/A: 0 1 3 1 5 (2 and 4 missing, 1 twice);
/// web-2/7/B: 10 12 11 14 (11 late, 13 missing); one bad line (3), one
/// blank line (5), and no newline at the end.
fn sample(dir: &Path) -> String {
    let text = [
        line("web-1", 311, "A", 0),
        line("web-1", 311, "A", 1),
        "{\"host\": nope}".to_owned(),
        line("web-1", 311, "A", 3),
        String::new(),
        line("web-1", 311, "A", 1),
        line("web-2", 7, "B", 10),
        line("web-2", 7, "B", 12),
        line("web-2", 7, "B", 11),
        line("web-1", 311, "A", 5),
        line("web-2", 7, "B", 14),
    ]
    .join("\n");
    std::fs::write(dir.join("events.ndjson"), text).expect("write");
    "events.ndjson".to_owned()
}

const TABLE: &str = "\
host     pid  type  first  last  expected  seen  dropped  missing  dup  score
web-1    311  A         0     5         6     4        0        2    1  66.66
web-2      7  B        10    14         5     4        0        1    0  80.00
overall                                11     8        0        3    1  72.72
";

#[test]
fn a_file_with_gaps_and_duplicates_gives_exact_numbers() {
    let dir = tmp();
    let f = sample(dir.path());
    let out = run_in(dir.path(), &["inspect", &f]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), TABLE);
}

#[test]
fn a_bad_line_is_reported_with_its_line_number_and_skipped() {
    let dir = tmp();
    let f = sample(dir.path());
    let out = run_in(dir.path(), &["inspect", &f]);
    assert_eq!(out.status.code(), Some(0));
    let err = stderr(&out);
    let bad: Vec<&str> = err.lines().filter(|l| l.contains(".ndjson:")).collect();
    assert_eq!(bad.len(), 1, "{err}");
    assert!(
        bad[0].starts_with("dab: events.ndjson:3: invalid JSON event at column "),
        "{err}"
    );
    assert!(
        err.contains("dab: skipped 1 line that is not an event"),
        "{err}"
    );
}

#[test]
fn json_output_parses_and_matches_the_table() {
    let dir = tmp();
    let f = sample(dir.path());
    let out = run_in(dir.path(), &["inspect", &f, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let keys = v["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2);
    let row = |k: &serde_json::Value| {
        (
            k["host"].as_str().expect("host").to_owned(),
            k["pid"].as_u64().expect("pid"),
            k["type"].as_str().expect("type").to_owned(),
            [
                "first",
                "last",
                "expected",
                "seen",
                "dropped",
                "missing",
                "duplicates",
                "late",
            ]
            .map(|f| k[f].as_u64().expect("count")),
        )
    };
    assert_eq!(
        row(&keys[0]),
        (
            "web-1".to_owned(),
            311,
            "A".to_owned(),
            [0, 5, 6, 4, 0, 2, 1, 0]
        )
    );
    assert_eq!(
        row(&keys[1]),
        (
            "web-2".to_owned(),
            7,
            "B".to_owned(),
            [10, 14, 5, 4, 0, 1, 0, 0]
        )
    );
    let score = |k: &serde_json::Value| k["score"].as_f64().expect("score");
    assert!((score(&keys[0]) - 400.0 / 6.0).abs() < 1e-9);
    assert!((score(&keys[1]) - 80.0).abs() < 1e-9);
    let o = &v["overall"];
    assert_eq!(
        ["expected", "seen", "dropped", "missing", "duplicates"].map(|f| o[f].as_u64()),
        [Some(11), Some(8), Some(0), Some(3), Some(1)]
    );
    assert!((score(o) - 800.0 / 11.0).abs() < 1e-9);
    assert_eq!(v["keys_evicted"].as_u64(), Some(0));
}

#[test]
fn several_files_add_up_and_missing_offsets_are_noted() {
    let dir = tmp();
    std::fs::write(
        dir.path().join("a.ndjson"),
        format!("{}\n{}\n", line("h", 1, "T", 0), line("h", 1, "T", 1)),
    )
    .expect("write");
    // The rest of the stream, a duplicate, and one event with no offset.
    std::fs::write(
        dir.path().join("b.ndjson"),
        format!(
            "{}\r\n{}\r\nnot json\r\n{{\"host\": \"x\", \"type\": \"U\"}}\r\n",
            line("h", 1, "T", 3),
            line("h", 1, "T", 1),
        ),
    )
    .expect("write");
    let out = run_in(dir.path(), &["inspect", "a.ndjson", "b.ndjson"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "\
host     pid  type  first  last  expected  seen  dropped  missing  dup   score
h          1  T         0     3         4     3        0        1    1   75.00
x          0  U         0     0         1     1        0        0    0  100.00
overall                                 5     4        0        1    1   80.00
"
    );
    let err = stderr(&out);
    assert!(err.contains("dab: b.ndjson:3: invalid JSON event"), "{err}");
    assert!(
        err.contains("dab: 1 event had no offset and was numbered in file order"),
        "{err}"
    );
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let dir = tmp();
    let out = run_in(dir.path(), &["inspect", "nope.ndjson"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot open nope.ndjson"),
        "{}",
        stderr(&out)
    );
}

/// Serves one canned HTTP answer; returns the address and the request line
/// the client sent.
fn serve_once(status: &'static str, body: String) -> (String, JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(answer.as_bytes()).expect("write");
        let head = String::from_utf8_lossy(&head).into_owned();
        head.lines().next().unwrap_or("").to_owned()
    });
    (addr, handle)
}

const CANNED: &str = r#"{"keys":[
 {"host":"web-1","pid":311,"type":"MyEvent","first":100,"last":199,"expected":100,"seen":97,"dropped":1,"missing":2,"duplicates":5,"late":0,"score":98.0},
 {"host":"db","pid":2,"type":"Q","first":0,"last":0,"expected":1,"seen":1,"dropped":0,"missing":0,"duplicates":0,"late":0,"score":100.0}],
 "overall":{"first":0,"last":199,"expected":101,"seen":98,"dropped":1,"missing":2,"duplicates":5,"late":0,"score":98.01980198019803},
 "keys_evicted":0}"#;

#[test]
fn url_fetches_the_report_of_a_running_dab() {
    let (addr, server) = serve_once("200 OK", CANNED.to_owned());
    let dir = tmp();
    let out = run_in(dir.path(), &["inspect", "--url", &addr]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(server.join().expect("server"), "GET /reliability HTTP/1.1");
    // Printed as served (the server sorts; the client does not reorder).
    assert_eq!(
        stdout(&out),
        "\
host     pid  type     first  last  expected  seen  dropped  missing  dup   score
web-1    311  MyEvent    100   199       100    97        1        2    5   98.00
db         2  Q            0     0         1     1        0        0    0  100.00
overall                                  101    98        1        2    5   98.01
"
    );
}

#[test]
fn url_with_json_output_gives_the_report_back() {
    let (addr, server) = serve_once("200 OK", CANNED.to_owned());
    let dir = tmp();
    let out = run_in(
        dir.path(),
        &[
            "inspect",
            "--url",
            &format!("http://{addr}/"),
            "--format",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    server.join().expect("server");
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let want: serde_json::Value = serde_json::from_str(CANNED).expect("canned");
    assert_eq!(got, want);
}

#[test]
fn url_refused_exits_2_naming_the_address() {
    // A port that was just free: nothing listens there now.
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let dir = tmp();
    let out = run_in(dir.path(), &["inspect", "--url", &addr]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("dab: cannot connect to {addr}: ")),
        "{err}"
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn url_answering_an_error_status_exits_2() {
    let (addr, server) = serve_once("404 Not Found", "not found\n".to_owned());
    let dir = tmp();
    let out = run_in(dir.path(), &["inspect", "--url", &addr]);
    assert_eq!(out.status.code(), Some(2));
    server.join().expect("server");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("bad answer from http://{addr}/reliability")),
        "{err}"
    );
    assert!(err.contains("404 Not Found"), "{err}");
}
