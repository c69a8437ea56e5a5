//! The parquet sink's S3 upload against a real S3-compatible server on
//! loopback (moto's, started by tests/s3_support): a file larger than one
//! upload part goes up as a multipart upload and reads back whole, and a
//! server that is gone fails the flush (so nothing is acknowledged) and
//! leaves no object and no spool file. The end-to-end runs through
//! `dab run` are in tests/parquet.rs and tests/faults.rs.

#[path = "../../../tests/s3_support/mod.rs"]
mod s3_support;

use std::time::Duration;

use dab_api::{Event, Sink};
use dab_connectors::parquet_sink::{ParquetConfig, ParquetSink, S3Location, Storage};
use dab_schema::{Field, FieldType, Schema};
use parquet::basic::Compression;

fn sink(endpoint: &str, bucket: &str, spool: &std::path::Path) -> ParquetSink {
    let schema = Schema {
        version: Some(1),
        fields: vec![
            Field {
                name: "n".into(),
                ty: FieldType::parse("int64").expect("type"),
            },
            Field {
                name: "blob".into(),
                ty: FieldType::parse("string").expect("type"),
            },
        ],
    };
    ParquetSink::new(
        "W",
        ParquetConfig {
            storage: Storage::S3(S3Location {
                bucket: bucket.into(),
                prefix: "t".into(),
                endpoint: Some(endpoint.into()),
                region: "us-east-1".into(),
                access_key: s3_support::ACCESS_KEY.into(),
                secret_key: s3_support::SECRET_KEY.into(),
                spool: spool.to_path_buf(),
            }),
            type_name: "T".into(),
            schema,
            compression: Compression::UNCOMPRESSED,
            max_file_bytes: 1 << 30,
            max_file_age: Duration::from_secs(3600),
            max_open_writers: 4,
            max_unacked_bytes: dab_connectors::parquet_sink::DEFAULT_MAX_UNACKED_BYTES,
        },
    )
    .expect("sink")
}

/// `rows` events of about 2 KiB of text that does not compress, in hour 0
/// of 2024-01-01.
fn events(rows: u64) -> Vec<Event> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..rows)
        .map(|n| {
            let mut blob = String::with_capacity(2048);
            while blob.len() < 2048 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                blob.push_str(&format!("{x:016x}"));
            }
            Event {
                timestamp: 1_704_067_200_000_000_000,
                offset: n,
                message: serde_json::json!({"n": n, "blob": blob}).to_string().into(),
                ..Event::default()
            }
        })
        .collect()
}

fn files(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_file_larger_than_a_part_is_uploaded_in_parts_and_reads_back_whole() {
    const ROWS: u64 = 6_000;
    let s3 = s3_support::S3Server::start();
    s3.mkbucket("big");
    let dir = tempfile::tempdir().expect("dir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut s = sink(&s3.endpoint, "big", &dir.path().join("spool"));
        let w = s.write(&events(ROWS)).await.expect("write");
        assert!(w.rejected.is_empty());
        s.flush().await.expect("flush");
    });
    assert!(files(&dir.path().join("spool")).is_empty());
    let local = dir.path().join("downloaded");
    let keys = s3.download("big", "t/", &local);
    assert_eq!(keys.len(), 1, "{keys:?}");
    let file = local.join(keys[0].trim_start_matches("t/"));
    let size = std::fs::metadata(&file).expect("downloaded").len();
    assert!(size > 8 * 1024 * 1024, "{size} bytes: not past one part");
    let o = std::process::Command::new(s3_support::python())
        .args([
            "-c",
            "import sys, pyarrow.parquet as pq; t = pq.read_table(sys.argv[1]); \
             n = t.column('n').to_pylist(); print(len(n), n == sorted(n), sum(n))",
        ])
        .arg(&file)
        .output()
        .expect("pyarrow");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("{ROWS} True {}", ROWS * (ROWS - 1) / 2)
    );
}

#[test]
fn a_server_that_is_gone_fails_the_flush_and_leaves_nothing() {
    let s3 = s3_support::S3Server::start();
    s3.mkbucket("gone");
    let proxy = s3_support::Proxy::start(s3.addr());
    let dir = tempfile::tempdir().expect("dir");
    let spool = dir.path().join("spool");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut s = sink(&proxy.endpoint(), "gone", &spool);
        proxy.set_up(false);
        s.write(&events(10)).await.expect("write");
        let e = s.flush().await.expect_err("the flush must fail");
        assert!(
            e.to_string()
                .contains("cannot upload `s3://gone/t/year=2024/"),
            "{e}"
        );
        s.rewind().await.expect("rewind");
        // Back up: the same events go up on the next try.
        proxy.set_up(true);
        s.write(&events(10)).await.expect("write");
        s.flush().await.expect("flush");
        let m = s.stats();
        assert_eq!(
            m.commit_failures.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    });
    assert!(files(&spool).is_empty(), "{:?}", files(&spool));
    let keys = s3.download("gone", "t/", &dir.path().join("downloaded"));
    assert_eq!(
        keys.len(),
        1,
        "one committed file, from the second try: {keys:?}"
    );
}
