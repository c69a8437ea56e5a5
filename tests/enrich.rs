//! `Enrich(Table, ...)` through the real `dab run` (SPEC section 9, issue 13
//! item 2): events POSTed to an `http` source are joined with a JSON-lines
//! table and a CSV table; the `file` sinks show which events were enriched,
//! with which row, and which were kept, dropped or sent to `OnError` on a
//! miss. A table file replaced by an atomic rename while dab runs is used
//! from its next load on; a bad rewrite keeps the rows loaded before, is
//! logged with the file and line, and counted. The http source answers
//! only once its events are delivered, so a 200 means the sink files hold
//! them; every other wait polls with a deadline. A compacted Kafka topic
//! as a table runs against a real broker (tansu, `kafka_support`; a
//! missing one fails the test).

#[path = "kafka_support/broker.rs"]
mod broker;
mod common;
#[allow(dead_code)]
mod fault_support;
#[allow(dead_code)]
mod run_support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use fault_support::{start_dab, terminate_ok, EXIT, START};
use run_support::client::{
    free_addr, must_metric, post_events, scrape, wait_http_ok, wait_metrics,
};
use run_support::process::Dab;
use run_support::{file_lines, poll, write_set};

/// Longest wait for a table's reload: it polls its file every 500 ms.
const RELOAD: Duration = Duration::from_secs(10);

fn yaml_path(p: &Path) -> String {
    serde_json::to_string(&p.display().to_string()).expect("path as a JSON string")
}

/// An event for the http source: `message` is `payload` as given (a JSON
/// text or not), with a `user` tag when `user` is given.
fn event(offset: u64, payload: &str, user: Option<&str>) -> Value {
    let mut e = json!({
        "timestamp": 1_700_000_000_000_000_000_i64,
        "host": "h",
        "type": "T",
        "offset": offset,
        "pid": 1,
        "message": payload,
    });
    if let Some(u) = user {
        e["tags"] = json!({ "user": u });
    }
    e
}

fn post(listen: &str, events: &[Value]) {
    let body = serde_json::to_string(events).expect("body");
    let r = post_events(listen, &body, Duration::from_secs(10));
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The payloads a sink file holds, by offset, each parsed when it is JSON
/// (else kept as a JSON string), and the tags of each.
fn written(path: &Path) -> BTreeMap<u64, (Value, Value)> {
    let mut out = BTreeMap::new();
    for line in file_lines(path) {
        let e: Value = serde_json::from_str(&line).expect("a sink line is JSON");
        let offset = e["offset"].as_u64().expect("offset");
        let message = e["message"].as_str().expect("message is a string");
        let payload =
            serde_json::from_str(message).unwrap_or_else(|_| Value::String(message.to_owned()));
        let tags = e.get("tags").cloned().unwrap_or(Value::Null);
        assert!(
            out.insert(offset, (payload, tags)).is_none(),
            "offset {offset} written twice to {}",
            path.display()
        );
    }
    out
}

/// `dab run` in `dir`, serving metrics and the http source whose address
/// the file `listen` holds: (dab, metrics address, listen address).
fn start(dir: &Path) -> (Dab, String, String) {
    let (dab, metrics) = start_dab(dir);
    let listen = std::fs::read_to_string(dir.join("listen")).expect("listen address");
    wait_http_ok(&listen, "/healthz", START, || dab.stderr());
    (dab, metrics, listen)
}

#[test]
fn enrich_joins_json_lines_and_csv_rows_and_keeps_drops_or_fails_misses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(
        d.join("teams.jsonl"),
        "{\"team_id\": 1, \"name\": \"core\", \"size\": 4}\n\n{\"team_id\": 2, \"name\": \"edge\"}\n",
    )
    .expect("teams");
    std::fs::write(
        d.join("users.csv"),
        "user_id,name\nu1,Ada\nu2,\"Lin, B.\"\n",
    )
    .expect("users");
    let listen = free_addr();
    std::fs::write(d.join("listen"), &listen).expect("listen");
    let out = |n: &str| d.join(format!("{n}.ndjson"));
    let sinks: String = ["Kept", "Dropped", "Failed", "Misses", "Strict"]
        .iter()
        .map(|n| format!("  {n}: {{ kind: file, path: {} }}\n", yaml_path(&out(n))))
        .collect();
    write_set(
        d,
        "keep.NewPipeline().In(HttpIn).\
            Enrich(Teams, on = fields.team_id, into = \"team\").\
            Enrich(Users, on = tags.user, into = \"user\").Out(Kept)\n\
         drop.NewPipeline().In(HttpIn).Enrich(Teams, on = fields.team_id, into = \"team\", miss = drop).Out(Dropped)\n\
         error.NewPipeline().In(HttpIn).Enrich(Users, on = tags.user, into = \"user\", miss = error).Out(Failed).OnError(Misses)\n\
         strict.NewPipeline().In(HttpIn).Enrich(Teams, on = fields.team_id, into = \"team\", miss = error).Out(Strict)\n",
        &format!(
            "sources:\n  HttpIn: {{ kind: http, listen: \"{listen}\" }}\nsinks:\n{sinks}\
             tables:\n  Teams: {{ kind: file, path: teams.jsonl, key: team_id }}\n  \
             Users: {{ kind: file, path: users.csv, key: user_id }}\n"
        ),
    );
    let (mut dab, metrics, listen) = start(d);
    post(
        &listen,
        &[
            // A number key, both tables hit; `team` is replaced by the row.
            event(0, r#"{"team_id": 1, "team": "old", "n": 0}"#, Some("u1")),
            // A string key equals the number's text.
            event(1, r#"{"team_id": "2", "n": 1}"#, Some("u2")),
            // No such team, no such user.
            event(2, r#"{"team_id": 3, "n": 2}"#, Some("u9")),
            // No key at all: a miss for each table.
            event(3, r#"{"n": 3}"#, None),
            // Not a JSON object: a miss, even with a key that has a row.
            event(4, "plain text", Some("u1")),
        ],
    );

    let core = json!({"team_id": 1, "name": "core", "size": 4});
    let edge = json!({"team_id": 2, "name": "edge"});
    let ada = json!({"user_id": "u1", "name": "Ada"});
    let lin = json!({"user_id": "u2", "name": "Lin, B."});
    let payloads = |path: &Path| -> BTreeMap<u64, Value> {
        written(path)
            .into_iter()
            .map(|(o, (p, _))| (o, p))
            .collect()
    };
    assert_eq!(
        payloads(&out("Kept")),
        BTreeMap::from([
            (0, json!({"team_id": 1, "team": core, "n": 0, "user": ada})),
            (
                1,
                json!({"team_id": "2", "n": 1, "team": edge, "user": lin})
            ),
            (2, json!({"team_id": 3, "n": 2})),
            (3, json!({"n": 3})),
            (4, json!("plain text")),
        ])
    );
    // The row keeps the key order of its line, and the payload its own.
    let raw = file_lines(&out("Kept"));
    let first: Value = serde_json::from_str(&raw[0]).expect("line");
    assert_eq!(
        first["message"],
        r#"{"team_id":1,"team":{"team_id": 1, "name": "core", "size": 4},"n":0,"user":{"user_id":"u1","name":"Ada"}}"#
    );
    assert_eq!(
        payloads(&out("Dropped")),
        BTreeMap::from([
            (0, json!({"team_id": 1, "team": core, "n": 0})),
            (1, json!({"team_id": "2", "n": 1, "team": edge})),
        ])
    );
    assert_eq!(
        payloads(&out("Failed")),
        BTreeMap::from([
            (0, json!({"team_id": 1, "team": "old", "n": 0, "user": ada})),
            (1, json!({"team_id": "2", "n": 1, "user": lin})),
        ])
    );
    // The misses went to OnError unchanged, with the reason in `dab.error`.
    let misses = written(&out("Misses"));
    assert_eq!(misses.keys().copied().collect::<Vec<_>>(), [2, 3, 4]);
    for (offset, (_, tags)) in &misses {
        assert_eq!(
            tags["dab.error"], "Enrich: no row of table `Users` for tags.user",
            "offset {offset}"
        );
    }
    assert_eq!(misses[&2].0, json!({"team_id": 3, "n": 2}));
    assert_eq!(
        payloads(&out("Strict")).keys().copied().collect::<Vec<_>>(),
        [0, 1]
    );

    let text = scrape(&metrics);
    let m = |s: &str| must_metric(&text, s);
    let series = |p: &str, stage: u32, table: &str, result: &str| {
        format!(
            "dab_enrich_total{{pipeline=\"{p}\",stage=\"{stage}\",table=\"{table}\",result=\"{result}\"}}"
        )
    };
    assert_eq!(m(&series("keep", 0, "Teams", "hit")), 2.0);
    assert_eq!(m(&series("keep", 0, "Teams", "miss")), 3.0);
    assert_eq!(m(&series("keep", 1, "Users", "hit")), 2.0);
    assert_eq!(m(&series("keep", 1, "Users", "miss")), 3.0);
    assert_eq!(m(&series("error", 0, "Users", "miss")), 3.0);
    assert_eq!(
        m("dab_table_rows{pipeline=\"keep\",stage=\"0\",table=\"Teams\"}"),
        2.0
    );
    assert_eq!(
        m("dab_table_rows{pipeline=\"keep\",stage=\"1\",table=\"Users\"}"),
        2.0
    );
    let dropped = |p: &str, reason: &str| {
        m(&format!(
            "dab_pipeline_dropped_total{{pipeline=\"{p}\",reason=\"{reason}\"}}"
        ))
    };
    assert_eq!(dropped("keep", "enrich_miss"), 0.0);
    assert_eq!(dropped("drop", "enrich_miss"), 3.0);
    assert_eq!(dropped("error", "enrich_error"), 0.0);
    assert_eq!(dropped("strict", "enrich_error"), 3.0);
    assert_eq!(
        m("dab_pipeline_failed_events_total{pipeline=\"error\"}"),
        3.0
    );
    assert_eq!(
        m("dab_pipeline_failed_events_total{pipeline=\"strict\"}"),
        3.0
    );
    terminate_ok(&mut dab);
}

/// Writes a set of one pipeline, `t`: events POSTed to `HttpIn` (its
/// address in the file `listen`) enriched from `Teams` (bound as `table`)
/// by `fields.team_id` into `team`, written to the file it returns.
fn one_table_set(d: &Path, table: &str) -> std::path::PathBuf {
    let listen = free_addr();
    std::fs::write(d.join("listen"), &listen).expect("listen");
    let out = d.join("out.ndjson");
    write_set(
        d,
        "t.NewPipeline().In(HttpIn).Enrich(Teams, on = fields.team_id, into = \"team\").Out(Out)\n",
        &format!(
            "sources:\n  HttpIn: {{ kind: http, listen: \"{listen}\" }}\n\
             sinks:\n  Out: {{ kind: file, path: {} }}\n\
             tables:\n  Teams: {table}\n",
            yaml_path(&out)
        ),
    );
    out
}

#[test]
fn a_table_replaced_while_running_is_used_and_a_bad_rewrite_keeps_the_old_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let table = d.join("teams.csv");
    std::fs::write(&table, "team_id,name\n1,core\n").expect("teams");
    let out = one_table_set(d, "{ kind: file, path: teams.csv, key: team_id }");
    let (mut dab, metrics, listen) = start(d);
    let replace = |text: &str| {
        // Written beside it, then renamed over it: readers see the old
        // file or the new one, never half of it.
        let tmp = d.join("teams.csv.tmp");
        std::fs::write(&tmp, text).expect("write the new table");
        std::fs::rename(&tmp, &table).expect("rename over the table");
    };
    let team_of = |offset: u64| -> Value {
        written(&out)
            .get(&offset)
            .map(|(p, _)| p.get("team").cloned().unwrap_or(Value::Null))
            .unwrap_or_else(|| panic!("offset {offset} not written"))
    };
    let teams = |base: u64| {
        post(
            &listen,
            &[
                event(base, r#"{"team_id": 1}"#, None),
                event(base + 1, r#"{"team_id": 2}"#, None),
            ],
        );
        (team_of(base), team_of(base + 1))
    };
    let rows = "dab_table_rows{pipeline=\"t\",stage=\"0\",table=\"Teams\"}";
    let reloads = "dab_table_reloads_total{pipeline=\"t\",stage=\"0\",table=\"Teams\"}";
    let errors = "dab_table_reload_errors_total{pipeline=\"t\",stage=\"0\",table=\"Teams\"}";

    // After the table's metrics say `want`, events at `base` and `base + 1`
    // (teams 1 and 2) get these rows.
    let expect = |want: &[(&str, f64)], base: u64, rows: (Value, Value)| {
        wait_metrics(&metrics, want, RELOAD);
        assert_eq!(teams(base), rows, "offsets {base} and {}", base + 1);
    };
    let (core, edge) = (
        json!({"team_id": "1", "name": "core-2"}),
        json!({"team_id": "2", "name": "edge"}),
    );

    expect(
        &[(reloads, 0.0), (rows, 1.0)],
        0,
        (json!({"team_id": "1", "name": "core"}), Value::Null),
    );

    replace("team_id,name\n1,core-2\n2,edge\n");
    expect(
        &[(reloads, 1.0), (rows, 2.0), (errors, 0.0)],
        10,
        (core.clone(), edge.clone()),
    );

    // Line 3 has one column too many: the reload fails and the rows of
    // the last good load stay.
    replace("team_id,name\n1,core-3\n2,edge,extra\n");
    expect(
        &[(errors, 1.0), (reloads, 1.0), (rows, 2.0)],
        20,
        (core, edge),
    );
    let message = "table reload failed; keeping the rows loaded before";
    let line = dab.wait_for_log(RELOAD, message, |l| l.contains(message));
    assert!(
        line.contains("`teams.csv` line 3: 3 columns, but the header has 2"),
        "{line}"
    );

    // A good file again is used again.
    replace("team_id,name\n2,edge-4\n");
    expect(
        &[(reloads, 2.0), (rows, 1.0), (errors, 1.0)],
        30,
        (Value::Null, json!({"team_id": "2", "name": "edge-4"})),
    );
    terminate_ok(&mut dab);
}

#[test]
fn a_table_that_does_not_load_stops_run_before_it_starts_and_graph_shows_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("teams.jsonl"), "{\"id\": 1}\n{\"id\": 2,\n").expect("teams");
    write_set(
        d,
        "t.NewPipeline().In(Stdin).Enrich(Teams, on = fields.team, into = \"team\").Out(Stdout)\n",
        "tables:\n  Teams: { kind: file, path: teams.jsonl, key: id }\n",
    );
    let mut dab = Dab::start(d, &["run", "t.dab"]);
    let status = dab.wait(EXIT);
    assert_eq!(status.code(), Some(1), "{}", dab.stderr());
    let stderr = dab.stderr();
    assert!(
        stderr.contains("error[E018]: table `Teams`: `teams.jsonl` line 2: not JSON at column"),
        "{stderr}"
    );

    std::fs::write(d.join("teams.jsonl"), "{\"id\": 1}\n").expect("teams");
    let graph = common::run_in(d, &["graph", "t.dab"]);
    let dot = common::stdout(&graph);
    assert!(graph.status.success(), "{dot}");
    // The table is a node of its own, with a `table` edge into the stage.
    let table_node = dot
        .lines()
        .find(|l| l.contains("[label=\"Teams\", shape=note"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no table node:\n{dot}"))
        .to_owned();
    assert!(
        dot.lines()
            .any(|l| l.trim_start().starts_with(&format!("{table_node} -> "))
                && l.contains("label=\"table\"")),
        "{dot}"
    );
}

/// Lines of dab's JSON log whose message is `message`.
fn logged(dab: &Dab, message: &str) -> usize {
    let needle = format!("\"message\":\"{message}\"");
    dab.stderr().lines().filter(|l| l.contains(&needle)).count()
}

#[test]
fn a_reload_keeps_the_table_of_an_unchanged_stage_and_loads_a_changed_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("teams.csv"), "team_id,name\n1,core\n").expect("teams");
    std::fs::write(d.join("other.csv"), "team_id,name\n1,other\n").expect("other");
    let listen = free_addr();
    std::fs::write(d.join("listen"), &listen).expect("listen");
    let out = d.join("out.ndjson");
    let bindings = |table: &str| {
        format!(
            "sources:\n  HttpIn: {{ kind: http, listen: \"{listen}\" }}\n\
             sinks:\n  Out: {{ kind: file, path: {} }}\n\
             tables:\n  Teams: {{ kind: file, path: {table}, key: team_id }}\n",
            yaml_path(&out)
        )
    };
    let enrich = "t.NewPipeline().In(HttpIn).Enrich(Teams, on = fields.team_id, into = \"team\")";
    write_set(d, &format!("{enrich}.Out(Out)\n"), &bindings("teams.csv"));
    let (mut dab, _, listen) = start(d);
    let reload = |dab: &Dab, n: usize| {
        fault_support::signal(dab.pid(), "HUP");
        poll(
            RELOAD,
            &format!("reload {n}"),
            || (logged(dab, "reloaded") >= n).then_some(()),
            || dab.stderr(),
        );
    };
    let row_of = |offset: u64| -> (Value, Value) {
        post(&listen, &[event(offset, r#"{"team_id": 1}"#, None)]);
        let (payload, tags) = written(&out).remove(&offset).expect("written");
        (payload["team"].clone(), tags)
    };
    let core = json!({"team_id": "1", "name": "core"});

    assert_eq!(row_of(0), (core.clone(), Value::Null));
    assert_eq!(logged(&dab, "table loaded"), 1);

    // Another stage after it: the pipeline is rebuilt, the Enrich stage
    // is the same, and its table is handed over, not read again.
    write_set(
        d,
        &format!("{enrich}.SetTag(seen = \"yes\").Out(Out)\n"),
        &bindings("teams.csv"),
    );
    reload(&dab, 1);
    assert_eq!(row_of(1), (core, json!({"seen": "yes"})));
    assert_eq!(logged(&dab, "table loaded"), 1, "{}", dab.stderr());

    // The binding names another file: the stage changed, and loads it.
    write_set(
        d,
        &format!("{enrich}.SetTag(seen = \"yes\").Out(Out)\n"),
        &bindings("other.csv"),
    );
    reload(&dab, 2);
    assert_eq!(
        row_of(2),
        (
            json!({"team_id": "1", "name": "other"}),
            json!({"seen": "yes"})
        )
    );
    assert_eq!(logged(&dab, "table loaded"), 2, "{}", dab.stderr());
    terminate_ok(&mut dab);
}

/// Produces `rows` to `topic` as keyed messages (`None`: a tombstone) and
/// waits until the broker has every one.
fn produce_rows(brokers: &str, topic: &str, rows: &[(&str, Option<&str>)]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
    let producer: BaseProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "20000")
        .create()
        .expect("a producer");
    for (key, value) in rows {
        let mut record = BaseRecord::<str, str>::to(topic).key(key);
        if let Some(v) = value {
            record = record.payload(v);
        }
        producer
            .send(record)
            .unwrap_or_else(|(e, _)| panic!("produce {key}: {e}"));
    }
    producer
        .flush(Duration::from_secs(20))
        .expect("every row delivered");
}

#[test]
fn a_compacted_kafka_topic_is_a_table_kept_current_while_running() {
    let broker = broker::Broker::start(&broker::tansu());
    broker.create_topic("teams", 2);
    let brokers = broker.addr();
    produce_rows(
        &brokers,
        "teams",
        &[
            ("1", Some(r#"{"name": "core"}"#)),
            ("2", Some(r#"{"name": "edge"}"#)),
            ("3", Some(r#"{"name": "gone soon"}"#)),
            // Not a JSON object: skipped and counted, the rest kept.
            ("4", Some("not json")),
        ],
    );
    // More rows than one poll takes (1,024), over both partitions.
    let many: Vec<String> = (0..3000).map(|i| format!("k{i}")).collect();
    let many_rows: Vec<(&str, Option<&str>)> = many
        .iter()
        .map(|k| (k.as_str(), Some(r#"{"bulk": true}"#)))
        .collect();
    produce_rows(&brokers, "teams", &many_rows);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let out = one_table_set(
        d,
        &format!("{{ kind: kafka, brokers: \"{brokers}\", topic: teams }}"),
    );
    let (mut dab, metrics, listen) = start(d);
    let teams_of = |base: u64| -> Vec<Value> {
        let events: Vec<Value> = (1..=3)
            .map(|t| event(base + t, &format!(r#"{{"team_id": {t}}}"#), None))
            .collect();
        post(&listen, &events);
        let written = written(&out);
        (1..=3)
            .map(|t| written[&(base + t)].0["team"].clone())
            .collect()
    };
    let series = |name: &str| format!("{name}{{pipeline=\"t\",stage=\"0\",table=\"Teams\"}}");
    let (rows, changes, errors) = (
        series("dab_table_rows"),
        series("dab_table_changes_total"),
        series("dab_table_reload_errors_total"),
    );

    // Read to its end before the pipeline ran: every row is there at once
    // (the log line is written when opening the table returns).
    let loaded = dab
        .stderr()
        .lines()
        .find(|l| l.contains("\"message\":\"table loaded\""))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no `table loaded` line:\n{}", dab.stderr()));
    assert!(loaded.contains("\"rows\":3003"), "{loaded}");
    let text = scrape(&metrics);
    assert_eq!(must_metric(&text, &rows), 3003.0, "{text}");
    assert_eq!(must_metric(&text, &errors), 1.0, "{text}");
    assert_eq!(
        teams_of(0),
        [
            json!({"name": "core"}),
            json!({"name": "edge"}),
            json!({"name": "gone soon"})
        ]
    );

    // An update and a tombstone while running.
    produce_rows(
        &brokers,
        "teams",
        &[
            ("1", Some(r#"{"name": "core", "tier": "gold"}"#)),
            ("3", None),
        ],
    );
    wait_metrics(&metrics, &[(&changes, 3005.0), (&rows, 3002.0)], RELOAD);
    assert_eq!(
        teams_of(10),
        [
            json!({"name": "core", "tier": "gold"}),
            json!({"name": "edge"}),
            Value::Null
        ]
    );
    let skipped = "table input skipped; keeping the rows";
    let line = dab.wait_for_log(RELOAD, skipped, |l| l.contains(skipped));
    assert!(line.contains("message `4` at partition"), "{line}");
    assert!(line.contains("the value is not a JSON object"), "{line}");
    terminate_ok(&mut dab);
}
