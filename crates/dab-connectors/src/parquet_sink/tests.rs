use super::*;
use dab_schema::FieldType;

fn ft(t: &str) -> FieldType {
    FieldType::parse(t).expect("type")
}

fn schema() -> Schema {
    Schema {
        version: Some(2),
        fields: vec![
            Field {
                name: "id".into(),
                ty: ft("int64"),
            },
            Field {
                name: "note".into(),
                ty: ft("string?"),
            },
        ],
    }
}

fn sink(dir: &Path, max_open: usize) -> ParquetSink {
    rolling(dir, max_open, DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_FILE_AGE)
}

fn rolling(dir: &Path, max_open: usize, bytes: u64, age: Duration) -> ParquetSink {
    local_sink(dir, schema(), max_open, bytes, age)
}

/// A sink `W` of type `T` into `dir`, zstd.
pub(super) fn local_sink(
    dir: &Path,
    schema: Schema,
    max_open: usize,
    bytes: u64,
    age: Duration,
) -> ParquetSink {
    ParquetSink::new(
        "W",
        ParquetConfig {
            storage: Storage::Local(dir.to_path_buf()),
            type_name: "T".into(),
            schema,
            compression: Compression::ZSTD(ZstdLevel::default()),
            max_file_bytes: bytes,
            max_file_age: age,
            max_open_writers: max_open,
            max_unacked_bytes: super::DEFAULT_MAX_UNACKED_BYTES,
        },
    )
    .expect("a local sink")
}

fn event(hour: i64, message: &str) -> Event {
    Event {
        timestamp: hour * HOUR_NS + 1,
        message: bytes::Bytes::from(message.to_owned()),
        ..Event::default()
    }
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(d: &Path, base: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, base, out);
            } else {
                out.push(p.strip_prefix(base).expect("prefix").display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn rows(path: &Path) -> Vec<(i64, Option<String>)> {
    let f = File::open(path).expect("open");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("reader")
        .build()
        .expect("build");
    let mut out = Vec::new();
    for b in reader {
        let b = b.expect("batch");
        let ids = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("ids");
        let notes = b
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("notes");
        for i in 0..b.num_rows() {
            out.push((
                ids.value(i),
                (!arrow_array::Array::is_null(notes, i)).then(|| notes.value(i).to_owned()),
            ));
        }
    }
    out
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn nothing_has_a_final_name_before_the_commit() {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = sink(dir.path(), 16);
    run(async {
        let w = s
            .write(&[
                event(10, r#"{"id":1,"note":"a"}"#),
                event(10, r#"{"id":2}"#),
            ])
            .await
            .expect("write");
        assert!(w.rejected.is_empty());
        let before = files(dir.path());
        assert_eq!(before.len(), 1, "{before:?}");
        assert!(
            before.iter().all(|f| {
                let name = f.rsplit('/').next().unwrap_or("");
                name.starts_with('.') && name.ends_with(".tmp")
            }),
            "visible before commit: {before:?}"
        );
        s.flush().await.expect("flush");
    });
    let after = files(dir.path());
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(
        after[0].starts_with("year=1970/month=01/day=01/hour=10/part-"),
        "{after:?}"
    );
    assert!(after[0].ends_with(".parquet"), "{after:?}");
    assert_eq!(
        rows(&dir.path().join(&after[0])),
        vec![(1, Some("a".into())), (2, None)]
    );
}

#[test]
fn a_rewind_leaves_no_file_and_a_failed_write_no_final_name() {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = sink(dir.path(), 16);
    run(async {
        s.write(&[event(3, r#"{"id":1}"#)]).await.expect("write");
        s.rewind().await.expect("rewind");
    });
    assert_eq!(files(dir.path()), Vec::<String>::new());
}

#[test]
fn at_most_max_open_writers_files_are_open_late_hours_included() {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = sink(dir.path(), 2);
    let stats = s.stats();
    run(async {
        for hour in [1, 2, 3, 1, 2] {
            s.write(&[event(hour, &format!(r#"{{"id":{hour}}}"#))])
                .await
                .expect("write");
            assert!(s.open.len() <= 2);
            let tmp = files(dir.path())
                .iter()
                .filter(|f| f.ends_with(".tmp"))
                .count();
            assert!(tmp <= 2, "{tmp} temporary files open");
        }
        s.flush().await.expect("flush");
    });
    // Hours 1, 2, 3 opened (1 closed for 3), 1 reopened (2 closed), 2
    // reopened (3 closed), then the flush commits 1 and 2: five files.
    assert_eq!(stats.files_committed.load(Ordering::Relaxed), 5);
    assert_eq!(stats.rows_committed.load(Ordering::Relaxed), 5);
    let all = files(dir.path());
    assert_eq!(
        all.iter().filter(|f| f.contains("hour=01/")).count(),
        2,
        "{all:?}"
    );
    assert!(all.iter().all(|f| f.ends_with(".parquet")), "{all:?}");
}

#[test]
fn non_conforming_payloads_are_rejected_with_the_reason() {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = sink(dir.path(), 16);
    let w = run(async {
        let w = s
            .write(&[
                event(0, r#"{"id":1}"#),
                event(0, r#"{"id":"x"}"#),
                event(0, "not json"),
                event(0, r#"{"note":"no id"}"#),
            ])
            .await
            .expect("write");
        s.flush().await.expect("flush");
        w
    });
    let got: Vec<(usize, String)> = w
        .rejected
        .into_iter()
        .map(|r| (r.index, r.reason))
        .collect();
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0].0, 1);
    assert!(got[0].1.contains("`id` is a string, not int64"), "{got:?}");
    assert_eq!(got[1].0, 2);
    assert_eq!(got[2].0, 3);
    assert!(got[2].1.contains("`id` is missing"), "{got:?}");
    assert_eq!(s.stats().schema_mismatch.load(Ordering::Relaxed), 3);
    let mut samples = Vec::new();
    s.metrics().expect("metrics").samples(&mut samples);
    let got: Vec<(&str, f64)> = samples.iter().map(|m| (m.name, m.value)).collect();
    assert_eq!(
        got,
        vec![
            ("dab_parquet_files_committed_total", 1.0),
            ("dab_parquet_rows_committed_total", 1.0),
            ("dab_parquet_schema_mismatch_total", 3.0),
            ("dab_parquet_commit_failures_total", 0.0),
            ("dab_parquet_replayed_total", 0.0)
        ]
    );
    assert!(samples
        .iter()
        .all(|m| m.labels == vec![("sink", "W".to_owned())]));
    let all = files(dir.path());
    assert_eq!(rows(&dir.path().join(&all[0])), vec![(1, None)]);
}

#[test]
fn columns_carry_field_ids_and_the_metadata_names_type_and_version() {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = sink(dir.path(), 16);
    run(async {
        s.write(&[event(0, r#"{"id":1}"#)]).await.expect("write");
        s.flush().await.expect("flush");
    });
    let all = files(dir.path());
    let f = File::open(dir.path().join(&all[0])).expect("open");
    let meta = parquet::file::reader::SerializedFileReader::new(f).expect("reader");
    let md = parquet::file::reader::FileReader::metadata(&meta).file_metadata();
    let kv: Vec<(String, Option<String>)> = md
        .key_value_metadata()
        .into_iter()
        .flatten()
        .filter(|k| k.key.starts_with("dab."))
        .map(|k| (k.key.clone(), k.value.clone()))
        .collect();
    assert_eq!(
        kv,
        vec![
            ("dab.type".into(), Some("T".into())),
            ("dab.schema_version".into(), Some("2".into()))
        ]
    );
    let ids: Vec<(String, i32)> = md
        .schema()
        .get_fields()
        .iter()
        .map(|f| (f.name().to_owned(), f.get_basic_info().id()))
        .collect();
    let mut want: Vec<(String, i32)> = vec![
        ("id".into(), field_id("id")),
        ("note".into(), field_id("note")),
    ];
    want.extend(
        ENVELOPE
            .iter()
            .enumerate()
            .map(|(i, n)| ((*n).to_owned(), ENVELOPE_FIRST_ID + i as i32)),
    );
    assert_eq!(ids, want);
}

/// Text columns get a dictionary, numbers and timestamps do not (a hash
/// insert per mostly distinct value buys nothing there).
#[test]
fn only_text_columns_are_dictionary_encoded() {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = sink(dir.path(), 16);
    let events: Vec<Event> = (0..50)
        .map(|i| event(0, &format!(r#"{{"id":{i},"note":"n{}"}}"#, i % 3)))
        .collect();
    run(async {
        s.write(&events).await.expect("write");
        s.flush().await.expect("flush");
    });
    let all = files(dir.path());
    let f = File::open(dir.path().join(&all[0])).expect("open");
    let reader = parquet::file::reader::SerializedFileReader::new(f).expect("reader");
    let md = parquet::file::reader::FileReader::metadata(&reader);
    let dictionary: Vec<(String, bool)> = md
        .row_group(0)
        .columns()
        .iter()
        .map(|c| {
            let dict = c
                .encodings()
                .any(|e| e == parquet::basic::Encoding::RLE_DICTIONARY);
            (c.column_path().string(), dict)
        })
        .collect();
    let want: Vec<(String, bool)> = [
        ("id", false),
        ("note", true),
        ("dab_timestamp", false),
        ("dab_host", true),
        ("dab_type", true),
        ("dab_offset", false),
        ("dab_pid", false),
        ("dab_tags.key_value.key", true),
        ("dab_tags.key_value.value", true),
    ]
    .iter()
    .map(|(c, d)| ((*c).to_owned(), *d))
    .collect();
    assert_eq!(dictionary, want);
}

#[test]
fn files_roll_by_size_and_by_age_before_any_flush() {
    let dir = tempfile::tempdir().expect("dir");
    // Any file is over one byte once written: each write commits its file.
    let mut s = rolling(dir.path(), 16, 1, DEFAULT_MAX_FILE_AGE);
    run(async {
        for i in 0..3 {
            s.write(&[event(0, &format!(r#"{{"id":{i}}}"#))])
                .await
                .expect("write");
        }
    });
    assert!(s.open.is_empty());
    assert_eq!(s.stats().files_committed.load(Ordering::Relaxed), 3);
    let all = files(dir.path());
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(all.iter().all(|f| f.ends_with(".parquet")), "{all:?}");

    // A file open longer than the age is committed at the next write.
    let dir = tempfile::tempdir().expect("dir");
    let mut s = rolling(dir.path(), 16, DEFAULT_MAX_FILE_BYTES, Duration::ZERO);
    run(async {
        s.write(&[event(0, r#"{"id":1}"#)]).await.expect("write");
        assert_eq!(s.stats().files_committed.load(Ordering::Relaxed), 0);
        s.write(&[event(0, r#"{"id":2}"#)]).await.expect("write");
    });
    assert_eq!(s.stats().files_committed.load(Ordering::Relaxed), 1);
    assert_eq!(s.open.len(), 1);
}

/// Event of Kafka topic `t`, partition `p`, at `offset`, in hour 10; its
/// payload's `id` is the offset.
fn from_kafka(p: i32, offset: i64) -> Event {
    Event {
        origin: dab_api::Origin(Some(dab_api::Position {
            topic: Text::from("t"),
            partition: p,
            offset,
        })),
        ..event(10, &format!(r#"{{"id":{offset}}}"#))
    }
}

fn write_and_flush(s: &mut ParquetSink, events: &[Event]) {
    run(async {
        let w = s.write(events).await.expect("write");
        assert!(w.rejected.is_empty());
        s.flush().await.expect("flush");
    });
}

/// Every row's id in the committed files under `dir`, sorted, with the
/// file names.
fn all_ids(dir: &Path) -> (Vec<i64>, Vec<String>) {
    let names = files(dir);
    let mut ids: Vec<i64> = names
        .iter()
        .flat_map(|n| rows(&dir.join(n)))
        .map(|(id, _)| id)
        .collect();
    ids.sort_unstable();
    let short = names
        .iter()
        .map(|n| n.rsplit('/').next().unwrap_or("").to_owned())
        .collect();
    (ids, short)
}

#[test]
fn files_of_kafka_events_are_named_by_partition_and_offsets() {
    let dir = tempfile::tempdir().expect("dir");
    let mut s = sink(dir.path(), 16);
    let mut events: Vec<Event> = (0..5).map(|o| from_kafka(0, o)).collect();
    events.extend((100..103).map(|o| from_kafka(3, o)));
    write_and_flush(&mut s, &events);
    let (ids, names) = all_ids(dir.path());
    assert_eq!(ids, vec![0, 1, 2, 3, 4, 100, 101, 102]);
    assert_eq!(
        names,
        vec![
            format!("part-t_0_{:020}_{:020}.parquet", 0, 4),
            format!("part-t_3_{:020}_{:020}.parquet", 100, 102),
        ]
    );
}

/// A restart replays from an older offset: what a committed file holds is
/// skipped (counted), the rest is written, and no offset is in two files.
#[test]
fn a_replay_after_a_restart_writes_each_offset_once() {
    let dir = tempfile::tempdir().expect("dir");
    let mut first = sink(dir.path(), 16);
    write_and_flush(
        &mut first,
        &(0..10).map(|o| from_kafka(0, o)).collect::<Vec<_>>(),
    );
    drop(first);
    let mut again = sink(dir.path(), 16);
    write_and_flush(
        &mut again,
        &(5..15).map(|o| from_kafka(0, o)).collect::<Vec<_>>(),
    );
    assert_eq!(again.stats().replayed.load(Ordering::Relaxed), 5);
    let (ids, names) = all_ids(dir.path());
    assert_eq!(ids, (0..15).collect::<Vec<i64>>());
    assert_eq!(names.len(), 2, "{names:?}");
    // Replaying it all again changes nothing.
    let mut third = sink(dir.path(), 16);
    write_and_flush(
        &mut third,
        &(0..15).map(|o| from_kafka(0, o)).collect::<Vec<_>>(),
    );
    assert_eq!(third.stats().replayed.load(Ordering::Relaxed), 15);
    assert_eq!(all_ids(dir.path()), (ids, names));
}

/// A file being written closes before the first offset of a committed
/// file, so ranges never overlap: 15..35 around a committed 20..29 gives
/// 15..19 and 30..34, within one batch.
#[test]
fn a_file_closes_before_a_committed_range() {
    let dir = tempfile::tempdir().expect("dir");
    let mut first = sink(dir.path(), 16);
    write_and_flush(
        &mut first,
        &(20..30).map(|o| from_kafka(0, o)).collect::<Vec<_>>(),
    );
    drop(first);
    let mut again = sink(dir.path(), 16);
    write_and_flush(
        &mut again,
        &(15..35).map(|o| from_kafka(0, o)).collect::<Vec<_>>(),
    );
    let (ids, names) = all_ids(dir.path());
    assert_eq!(ids, (15..35).collect::<Vec<i64>>());
    assert_eq!(
        names,
        vec![
            format!("part-t_0_{:020}_{:020}.parquet", 15, 19),
            format!("part-t_0_{:020}_{:020}.parquet", 20, 29),
            format!("part-t_0_{:020}_{:020}.parquet", 30, 34),
        ]
    );
}

/// After a failure the runtime rewinds and sends the held batches again:
/// what an early commit (here the open-writer bound) already put under a
/// final name is skipped, the dropped rest is written.
#[test]
fn a_redelivery_after_a_rewind_writes_each_offset_once() {
    let dir = tempfile::tempdir().expect("dir");
    // One writer: partition 1 closes (and commits) partition 0's file.
    let mut s = sink(dir.path(), 1);
    let batch: Vec<Event> = (0..5)
        .map(|o| from_kafka(0, o))
        .chain((0..5).map(|o| from_kafka(1, 100 + o)))
        .collect();
    run(async {
        s.write(&batch).await.expect("write");
        s.rewind().await.expect("rewind");
        s.write(&batch).await.expect("write again");
        s.flush().await.expect("flush");
    });
    assert_eq!(s.stats().replayed.load(Ordering::Relaxed), 5);
    let (ids, names) = all_ids(dir.path());
    assert_eq!(ids, vec![0, 1, 2, 3, 4, 100, 101, 102, 103, 104]);
    assert_eq!(names.len(), 2, "{names:?}");
}

/// The id of a field is its path's, whatever the version: a field keeps
/// its id when fields are added or declared in another order, nested
/// struct fields included, and fields of other names get other ids.
#[test]
fn field_ids_are_stable_across_versions() {
    fn fields(list: &[(&str, &str)]) -> Vec<Field> {
        list.iter()
            .map(|(n, t)| Field {
                name: (*n).into(),
                ty: ft(t),
            })
            .collect()
    }
    // `user` is an optional struct of the given fields.
    let parse = |top: &[(&str, &str)], user: &[(&str, &str)]| {
        let mut all = fields(top);
        all.push(Field {
            name: "user".into(),
            ty: FieldType {
                ty: Type::Struct(fields(user)),
                optional: true,
            },
        });
        Schema {
            version: None,
            fields: all,
        }
    };
    let ids = |s: &Schema| -> Vec<(String, String)> {
        fn walk(fields: &ArrowFields, out: &mut Vec<(String, String)>) {
            for f in fields {
                let id = f
                    .metadata()
                    .get(PARQUET_FIELD_ID_META_KEY)
                    .cloned()
                    .unwrap_or_default();
                out.push((f.name().clone(), id));
                if let DataType::Struct(inner) = f.data_type() {
                    walk(inner, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(arrow_schema(s).fields(), &mut out);
        out.sort();
        out
    };
    let v1 = parse(
        &[("host", "string"), ("service", "string")],
        &[("id", "int64"), ("team", "string?")],
    );
    let v2 = parse(
        &[
            ("region", "string?"),
            ("service", "string"),
            ("host", "string"),
        ],
        &[("team", "string?"), ("id", "int64"), ("org", "string?")],
    );
    let (a, b) = (ids(&v1), ids(&v2));
    for f in &a {
        assert!(b.contains(f), "{f:?} moved: {b:?}");
    }
    let mut all: Vec<&String> = b
        .iter()
        .map(|(_, id)| id)
        .filter(|id| !id.is_empty())
        .collect();
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), n, "two fields share an id: {b:?}");
    // FNV-1a 64 of "host", as any implementation of it computes it.
    assert_eq!(
        field_id("host"),
        1_838_390_640,
        "the hash is pinned: files depend on it"
    );
    assert_eq!(colliding_ids(&v2), None);
}

/// Spool files of a process that is gone are removed when a sink starts;
/// those of a running process and other files are left alone.
#[test]
fn a_new_sink_clears_spool_files_of_processes_that_are_gone() {
    let dir = tempfile::tempdir().expect("dir");
    let spool = dir.path();
    // A pid that does not run: past the kernel's limit.
    let dead = ".part-18ee904d5cef90a0-7fffffff-000003.parquet.tmp";
    let me = std::process::id();
    let mine_earlier = format!(".part-1-{me:x}-000001.parquet.tmp");
    // pid 1 runs as long as the machine does.
    let other = ".part-18ee904d5cef90a0-1-000002.parquet.tmp";
    let unrelated = "notes.txt";
    for f in [dead, mine_earlier.as_str(), other, unrelated] {
        std::fs::write(spool.join(f), b"x").expect("write");
    }
    let removed = clear_stale_spool(spool, &format!("2-{me:x}"));
    assert_eq!(removed, 2);
    let mut left: Vec<String> = std::fs::read_dir(spool)
        .expect("read_dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, vec![other.to_owned(), unrelated.to_owned()]);
}

/// A local sink that opens a file in an hour's directory first removes the
/// temporary files a killed process left there; committed files and a
/// running process's temporary files stay.
#[test]
fn a_local_sink_sweeps_an_hours_dead_temporary_files() {
    let dir = tempfile::tempdir().expect("dir");
    let hour_dir = dir.path().join("year=1970/month=01/day=01/hour=10");
    std::fs::create_dir_all(&hour_dir).expect("mkdir");
    let dead = ".part-18ee904d5cef90a0-7fffffff-000001.parquet.tmp";
    let running = ".part-18ee904d5cef90a0-1-000001.parquet.tmp";
    let committed = "part-18ee904d5cef90a0-7fffffff-000000.parquet";
    for f in [dead, running, committed] {
        std::fs::write(hour_dir.join(f), b"x").expect("write");
    }
    let mut s = sink(dir.path(), 16);
    run(async {
        s.write(&[event(10, r#"{"id":1}"#)]).await.expect("write");
        s.flush().await.expect("flush");
    });
    let names: Vec<String> = files(dir.path())
        .into_iter()
        .map(|n| n.rsplit('/').next().unwrap_or("").to_owned())
        .collect();
    assert!(!names.iter().any(|n| n == dead), "{names:?}");
    assert!(names.iter().any(|n| n == running), "{names:?}");
    assert!(names.iter().any(|n| n == committed), "{names:?}");
    assert_eq!(names.len(), 3, "the two kept and the new file: {names:?}");
}
