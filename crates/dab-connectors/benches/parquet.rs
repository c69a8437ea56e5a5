//! Throughput of the `parquet` sink (issue 12, "Speed": Parquet encoding
//! of the `server_logs` schema at 1 million events/s on one core) on
//! batches of 1,024 realistic server-log events, about 330-byte JSON
//! payloads of 10 fields (a timestamp, strings, an optional int, a float,
//! an optional struct, an optional map), spread over three hours:
//!
//! - `json_parse`: only `serde_json::from_slice` of every payload, which
//!   every path to Parquet must do: the ceiling;
//! - `encode`: what `Sink::write` does short of files (parse, schema
//!   check, Arrow arrays, `ArrowWriter` with zstd into a `Vec<u8>`, footer
//!   included), through `ParquetSink::encode_into`, for the same 64
//!   batches, one after the other, as one file;
//! - `sink_write_flush`: `Sink::write` of 64 batches then `flush`, as the runtime
//!   does, into a local directory (on tmpfs when /dev/shm exists, so the
//!   fsyncs cost next to nothing): files, partitions, commits.
//!
//! Run with `cargo bench -p dab-connectors --bench parquet`. Each
//! iteration gets fresh events: the sink parses every payload, as it does
//! after a pipeline that never read one.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use dab_api::{Event, Sink, Text};
use dab_connectors::parquet_sink::{ParquetConfig, ParquetSink, Storage};
use dab_schema::{Field, FieldType, Schema, Type};
use parquet::basic::{Compression, ZstdLevel};

const BATCH: usize = 1024;
/// Batches between flushes: the runtime flushes after 64 batches at most.
const PER_FLUSH: usize = 64;
const HOUR_NS: i64 = 3_600_000_000_000;
/// 2024-11-23T00:00:00Z
const BASE_NS: i64 = 1_732_320_000_000_000_000;

fn field(name: &str, ty: FieldType) -> Field {
    Field {
        name: name.into(),
        ty,
    }
}

fn parse(t: &str) -> FieldType {
    FieldType::parse(t).expect("a field type")
}

/// The `server_logs` type of the examples, 10 fields.
pub fn server_logs() -> Schema {
    let client = FieldType {
        ty: Type::Struct(vec![
            field("ip", parse("string")),
            field("user_agent", parse("string?")),
        ]),
        optional: true,
    };
    Schema {
        version: Some(1),
        fields: vec![
            field("ts", parse("timestamp")),
            field("level", parse("string")),
            field("service", parse("string")),
            field("method", parse("string")),
            field("path", parse("string")),
            field("status", parse("int32")),
            field("user_id", parse("int64?")),
            field("latency_ms", parse("float64")),
            field("client", client),
            field("labels", parse("map<string, string>?")),
        ],
    }
}

const SERVICES: [&str; 4] = ["api", "auth", "billing", "search"];
const PATHS: [&str; 5] = [
    "/api/chat.postMessage",
    "/api/conversations.history",
    "/api/users.info",
    "/oauth/token",
    "/api/files.upload",
];

/// Event `i` of `n`, its timestamp spread over three hours.
fn payload(i: usize, ts_ns: i64) -> String {
    let secs = ts_ns.div_euclid(1_000_000_000);
    let t = chrono::DateTime::from_timestamp(secs, (ts_ns % 1_000_000_000) as u32)
        .expect("in range")
        .format("%Y-%m-%dT%H:%M:%S%.6fZ");
    let level = ["info", "info", "info", "warn", "error"][i % 5];
    let status = [200, 200, 201, 404, 500][i % 5];
    let user = if i % 4 == 0 {
        "null".to_owned()
    } else {
        (100_000 + i * 7919 % 50_000).to_string()
    };
    let client = if i % 10 == 9 {
        String::new()
    } else {
        format!(
            r#","client":{{"ip":"10.{}.{}.{}","user_agent":"Mozilla/5.0 (X11; Linux x86_64) Slack/4.{}"}}"#,
            i % 256,
            i / 256 % 256,
            i % 7,
            i % 40
        )
    };
    let labels = if i % 3 == 0 {
        String::new()
    } else {
        format!(
            r#","labels":{{"env":"prod","region":"eu-west-{}","shard":"s{}"}}"#,
            i % 3 + 1,
            i % 64
        )
    };
    format!(
        r#"{{"ts":"{t}","level":"{level}","service":"{}","method":"POST","path":"{}","status":{status},"user_id":{user},"latency_ms":{:.3}{client}{labels}}}"#,
        SERVICES[i % 4],
        PATHS[i % 5],
        (i % 997) as f64 * 0.731
    )
}

/// `batches` batches of events; payloads are fresh bytes, never parsed.
struct Input {
    events: Vec<Vec<Event>>,
}

impl Input {
    fn new(batches: usize) -> Input {
        let n = batches * BATCH;
        let host = Text::from("web-17.prod.example.net");
        let ty = Text::from("server_logs");
        let events = (0..batches)
            .map(|b| {
                (0..BATCH)
                    .map(|j| {
                        let i = b * BATCH + j;
                        let ts = BASE_NS + (3 * HOUR_NS / n as i64) * i as i64;
                        Event {
                            timestamp: ts,
                            host: host.clone(),
                            ty: ty.clone(),
                            offset: i as u64,
                            pid: 31102,
                            message: Bytes::from(payload(i, ts)),
                            tags: vec![(Text::from("env"), Text::from("prod"))],
                            ..Event::default()
                        }
                    })
                    .collect()
            })
            .collect();
        Input { events }
    }

    /// A copy with fresh payload caches (so each iteration parses).
    fn fresh(&self) -> Vec<Vec<Event>> {
        self.events
            .iter()
            .map(|b| {
                b.iter()
                    .map(|e| Event {
                        timestamp: e.timestamp,
                        host: e.host.clone(),
                        ty: e.ty.clone(),
                        offset: e.offset,
                        pid: e.pid,
                        message: e.message.clone(),
                        tags: e.tags.clone(),
                        ..Event::default()
                    })
                    .collect()
            })
            .collect()
    }
}

fn sink(dir: PathBuf) -> ParquetSink {
    ParquetSink::new(
        "bench",
        ParquetConfig {
            storage: Storage::Local(dir),
            type_name: "server_logs".into(),
            schema: server_logs(),
            compression: Compression::ZSTD(ZstdLevel::default()),
            max_file_bytes: 128 * 1024 * 1024,
            max_file_age: Duration::from_secs(300),
            max_open_writers: 16,
            max_unacked_bytes: dab_connectors::parquet_sink::DEFAULT_MAX_UNACKED_BYTES,
        },
    )
    .expect("a local sink")
}

fn scratch() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).expect("a directory on /dev/shm")
    } else {
        tempfile::tempdir().expect("a temporary directory")
    }
}

fn parquet(c: &mut Criterion) {
    let input = Input::new(PER_FLUSH);
    let first = &input.events[0];
    let bytes: usize = first.iter().map(|e| e.message.len()).sum();
    eprintln!(
        "parquet bench: {BATCH} events a batch, payloads {} bytes on average",
        bytes / BATCH
    );
    let dir = scratch();
    let mut s = sink(dir.path().to_path_buf());
    {
        // Every event conforms, and the file reads back with all its rows.
        let (buf, written) = s
            .encode_into([&input.fresh()[0][..]], Vec::new())
            .expect("encode");
        assert!(written[0].rejected.is_empty(), "{:?}", written[0].rejected);
        let reader = parquet::file::reader::SerializedFileReader::new(Bytes::from(buf))
            .expect("a Parquet file");
        use parquet::file::reader::FileReader;
        assert_eq!(reader.metadata().file_metadata().num_rows(), BATCH as i64);
    }

    // Each returns its input, so that freeing it is not measured. All
    // three take the same 64 batches of 1,024 events, one runtime
    // flush's worth; `encode` writes them into one file, batch by batch
    // (one record batch per hour in each), as `write` does, but the sink
    // writes one file per hour per flush.
    let mut g = c.benchmark_group("parquet_server_logs");
    g.throughput(Throughput::Elements((BATCH * PER_FLUSH) as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("json_parse", |b| {
        b.iter_batched(
            || input.fresh(),
            |batches| {
                for e in batches.iter().flatten() {
                    black_box(serde_json::from_slice::<serde_json::Value>(&e.message).ok());
                }
                batches
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("encode", |b| {
        b.iter_batched(
            || input.fresh(),
            |batches| {
                let (buf, _) = s
                    .encode_into(
                        batches.iter().map(Vec::as_slice),
                        Vec::with_capacity(8 << 20),
                    )
                    .expect("encode");
                (batches, buf)
            },
            BatchSize::LargeInput,
        )
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let mut s = sink(dir.path().to_path_buf());
    g.bench_function("sink_write_flush", |b| {
        b.iter_batched(
            || input.fresh(),
            |batches| {
                rt.block_on(async {
                    for events in &batches {
                        let w = s.write(events).await.expect("write");
                        assert!(w.rejected.is_empty());
                    }
                    s.flush().await.expect("flush");
                });
                batches
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, parquet);
criterion_main!(benches);
