//! Templated sink targets through the real `dab run` (SPEC section 10,
//! issue 14 item 4): events POSTed to an `http` source (which answers only
//! once its events are delivered, so a 200 means the sink files hold them)
//! go to the file their `path` template renders, with at most
//! `max_targets` files open; an event whose template value is missing goes
//! to `OnError` with the placeholder in `dab.error`, or is counted
//! dropped. Against a real broker (tansu, `kafka_support`; a missing one
//! fails the test): a `topic: "events.{type}"` sink puts each type in its
//! own topic, and tags set by `SetTag` are in the messages.

#![allow(clippy::unwrap_used)]

#[path = "kafka_support/broker.rs"]
mod broker;
#[allow(dead_code)]
mod fault_support;
#[allow(dead_code)]
mod run_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use fault_support::{start_dab, terminate_ok, yaml_path};
use run_support::client::{free_addr, post_events, wait_http_ok, wait_metrics};
use run_support::{file_lines, write_set};

const TYPES: [&str; 3] = ["A", "B", "C"];
const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

fn post(listen: &str, events: &[Value]) {
    let body = serde_json::to_string(events).expect("body");
    let r = post_events(listen, &body, Duration::from_secs(30));
    assert_eq!(r.status, 200, "{}", r.body);
}

/// `n` events cycling through 3 types and 3 hosts (9 targets) in an order
/// that keeps changing target, so that 2 open files are closed and
/// reopened all the time; every 7th has no `team` tag, the rest `x` or `y`.
fn events(n: u64) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let ty = TYPES[(i % 3) as usize];
            let host = HOSTS[((i / 3 + i) % 3) as usize];
            let mut e = json!({"type": ty, "host": host, "offset": i, "message": "m"});
            if i % 7 != 0 {
                e["tags"] = json!({"team": if i % 2 == 0 { "x" } else { "y" }});
            }
            e
        })
        .collect()
}

/// Each line of a sink file, parsed.
fn lines(path: &Path) -> Vec<Value> {
    file_lines(path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect()
}

fn offsets(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["offset"].as_u64().expect("offset"))
        .collect()
}

/// Starts `In(HttpIn)[.OnError(Bad)].Out(Files, ByTeam)` with `Files` at
/// `out/{type}/{host}.ndjson` and `ByTeam` at `teams/{tags.team}.ndjson`,
/// both with `max_targets: 2`; posts `n` events in posts of 40.
fn run_files(
    dir: &Path,
    on_error: bool,
    n: u64,
) -> (Vec<Value>, String, run_support::process::Dab) {
    let listen = free_addr();
    let files = format!("{}/out/{{type}}/{{host}}.ndjson", dir.display());
    let teams = format!("{}/teams/{{tags.team}}.ndjson", dir.display());
    let bad = dir.join("bad.ndjson");
    write_set(
        dir,
        &format!(
            "t.NewPipeline().In(HttpIn){}.Out(Files, ByTeam)\n",
            if on_error { ".OnError(Bad)" } else { "" }
        ),
        &format!(
            "sources:\n  HttpIn: {{ kind: http, listen: \"{listen}\" }}\n\
             sinks:\n  Files: {{ kind: file, path: {}, max_targets: 2 }}\n  \
             ByTeam: {{ kind: file, path: {}, max_targets: 2 }}\n  Bad: {{ kind: file, path: {} }}\n",
            yaml_path(Path::new(&files)),
            yaml_path(Path::new(&teams)),
            yaml_path(&bad)
        ),
    );
    let (dab, metrics) = start_dab(dir);
    wait_http_ok(&listen, "/healthz", Duration::from_secs(30), || {
        dab.stderr()
    });
    let sent = events(n);
    for chunk in sent.chunks(40) {
        post(&listen, chunk);
    }
    (sent, metrics, dab)
}

/// Every event is in exactly the file of its type and host, once, in
/// order, though only 2 of the 9 files may be open at once; the events
/// with a team are in their team's file, and those without one are in the
/// `OnError` file with `dab.error` naming `{tags.team}`.
#[test]
fn each_event_lands_in_its_templated_file_and_a_missing_value_goes_to_on_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 630;
    let (sent, metrics, mut dab) = run_files(dir.path(), true, n);
    let untagged: Vec<u64> = (0..n).filter(|i| i % 7 == 0).collect();
    wait_metrics(
        &metrics,
        &[
            ("dab_sink_events_total{sink=\"Files\"}", n as f64),
            (
                "dab_sink_events_total{sink=\"ByTeam\"}",
                (n as usize - untagged.len()) as f64,
            ),
            (
                "dab_sink_rejected_events_total{sink=\"ByTeam\",outcome=\"on_error\"}",
                untagged.len() as f64,
            ),
            ("dab_sink_events_total{sink=\"Bad\"}", untagged.len() as f64),
        ],
        Duration::from_secs(10),
    );
    terminate_ok(&mut dab);

    let mut total = 0;
    for ty in TYPES {
        for host in HOSTS {
            let got = lines(&dir.path().join(format!("out/{ty}/{host}.ndjson")));
            let want: Vec<u64> = offsets(
                &sent
                    .iter()
                    .filter(|e| e["type"] == ty && e["host"] == host)
                    .cloned()
                    .collect::<Vec<_>>(),
            );
            assert!(!want.is_empty());
            assert_eq!(offsets(&got), want, "out/{ty}/{host}.ndjson");
            total += got.len();
        }
    }
    assert_eq!(total as u64, n, "nothing else under out/");
    let out_dirs = std::fs::read_dir(dir.path().join("out"))
        .expect("out")
        .count();
    assert_eq!(out_dirs, 3, "one directory per type");
    for team in ["x", "y"] {
        let got = lines(&dir.path().join(format!("teams/{team}.ndjson")));
        let want: Vec<u64> = (0..n)
            .filter(|i| i % 7 != 0 && (if i % 2 == 0 { "x" } else { "y" }) == team)
            .collect();
        assert_eq!(offsets(&got), want, "teams/{team}.ndjson");
    }
    let teams: BTreeSet<String> = std::fs::read_dir(dir.path().join("teams"))
        .expect("teams")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        teams,
        BTreeSet::from(["x.ndjson".to_owned(), "y.ndjson".to_owned()])
    );
    let bad = lines(&dir.path().join("bad.ndjson"));
    assert_eq!(
        offsets(&bad),
        untagged,
        "the OnError file holds the untagged events"
    );
    for e in &bad {
        let reason = e["tags"]["dab.error"]
            .as_str()
            .unwrap_or_else(|| panic!("no dab.error: {e}"));
        assert!(
            reason.contains("{tags.team}") && reason.contains("no tag `team`"),
            "the reason names the placeholder: {reason}"
        );
    }
}

/// Without `OnError`, an event whose template value is missing is counted
/// dropped (`rejected`) and the rest of its batch is delivered.
#[test]
fn without_on_error_a_missing_value_is_counted_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = 140;
    let (_, metrics, mut dab) = run_files(dir.path(), false, n);
    let untagged = (0..n).filter(|i| i % 7 == 0).count() as f64;
    wait_metrics(
        &metrics,
        &[
            ("dab_sink_events_total{sink=\"Files\"}", n as f64),
            (
                "dab_sink_dropped_events_total{sink=\"ByTeam\",reason=\"rejected\"}",
                untagged,
            ),
            (
                "dab_sink_rejected_events_total{sink=\"ByTeam\",outcome=\"dropped\"}",
                untagged,
            ),
            (
                "dab_sink_events_total{sink=\"ByTeam\"}",
                n as f64 - untagged,
            ),
        ],
        Duration::from_secs(10),
    );
    terminate_ok(&mut dab);
    let written = lines(&dir.path().join("teams/x.ndjson")).len()
        + lines(&dir.path().join("teams/y.ndjson")).len();
    assert_eq!(written as f64, n as f64 - untagged);
    assert!(!dir.path().join("bad.ndjson").exists());
}

/// `topic: "events.{type}"` puts each type's events in its own topic, with
/// `max_targets: 2` for 3 topics, and the tag `SetTag` set is in every
/// message, read back with confluent-kafka. A type whose topic the broker
/// does not have goes to `OnError`, naming the topic.
#[test]
fn each_type_goes_to_its_own_topic_with_the_tags_set_tag_set() {
    let broker = broker::Broker::start(&broker::tansu());
    let python = broker::python_kafka();
    let brokers = broker.addr();
    // tansu 0.6 does not create a topic a producer names: librdkafka holds
    // such messages until their timeout.
    for ty in TYPES {
        broker.create_topic(&format!("events.{ty}"), 2);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = free_addr();
    write_set(
        dir.path(),
        "t.NewPipeline().In(HttpIn).SetTag(team = \"x\").OnError(Bad).Out(K)\n",
        &format!(
            "sources:\n  HttpIn: {{ kind: http, listen: \"{listen}\" }}\n\
             sinks:\n  K: {{ kind: kafka, brokers: \"{brokers}\", topic: \"events.{{type}}\", \
             codec: json, max_targets: 2, options: {{ topic.metadata.propagation.max.ms: \"1000\" }} }}\n  \
             Bad: {{ kind: file, path: {} }}\n",
            yaml_path(&dir.path().join("bad.ndjson"))
        ),
    );
    let (mut dab, metrics) = start_dab(dir.path());
    wait_http_ok(&listen, "/healthz", Duration::from_secs(30), || {
        dab.stderr()
    });
    let n = 300u64;
    // Every 30th event is of type D, whose topic the broker does not have.
    let sent: Vec<Value> = (0..n)
        .map(|i| json!({"type": TYPES[(i % 3) as usize], "host": "h", "offset": i, "message": "m"}))
        .chain((0..10).map(|i| json!({"type": "D", "host": "h", "offset": n + i, "message": "m"})))
        .collect();
    for chunk in sent.chunks(50) {
        post(&listen, chunk);
    }
    wait_metrics(
        &metrics,
        &[
            ("dab_sink_events_total{sink=\"K\"}", n as f64),
            (
                "dab_sink_rejected_events_total{sink=\"K\",outcome=\"on_error\"}",
                10.0,
            ),
        ],
        Duration::from_secs(10),
    );
    terminate_ok(&mut dab);
    let bad = lines(&dir.path().join("bad.ndjson"));
    assert_eq!(
        offsets(&bad),
        (n..n + 10).collect::<Vec<_>>(),
        "type D went to OnError"
    );
    for e in &bad {
        let reason = e["tags"]["dab.error"].as_str().unwrap_or_default();
        assert!(reason.contains("no topic `events.D`"), "{reason}");
    }
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for ty in TYPES {
        let topic = format!("events.{ty}");
        let dump = dir.path().join(format!("{topic}.dump"));
        let got = broker::consume(
            &python,
            &brokers,
            &topic,
            &[
                "--expect",
                &(n / 3).to_string(),
                "--dump",
                dump.to_str().expect("utf-8"),
            ],
        );
        assert_eq!(got["distinct"], json!(n / 3), "{topic}: {got}");
        assert_eq!(got["duplicates"], json!(0), "{topic}: {got}");
        for e in lines(&dump) {
            assert_eq!(e["type"], json!(ty), "{topic} holds only {ty}: {e}");
            assert_eq!(
                e["tags"]["team"],
                json!("x"),
                "SetTag's tag is in the message: {e}"
            );
            seen.entry(ty.to_owned())
                .or_default()
                .push(e["offset"].as_u64().expect("offset"));
        }
    }
    for (i, ty) in TYPES.iter().enumerate() {
        let mut got = seen.remove(*ty).unwrap_or_default();
        got.sort_unstable();
        let want: Vec<u64> = (0..n).filter(|o| o % 3 == i as u64).collect();
        assert_eq!(got, want, "events.{ty}");
    }
}
