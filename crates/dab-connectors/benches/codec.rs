//! Throughput of the codecs and framers on the path the performance target
//! is set for (SPEC: TCP NDJSON -> FilterType -> TCP NDJSON at a million
//! events a second on two cores): decoding a realistic 250-byte line,
//! splitting a 64 KiB read into lines, and encoding with and without the
//! arrival bytes. Run with `cargo bench -p dab-connectors --bench codec`.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dab_connectors::codec::{json, proto};
use dab_connectors::framing::LineFramer;

/// An access-log event as a collector would send it; 250 bytes.
const LINE: &str = concat!(
    r#"{"timestamp":1732320000123456789,"host":"web-17.prod.example.net","type":"HttpAccess","#,
    r#""offset":1234567,"pid":31102,"message":"GET /api/chat.postMessage?channel=C024BE91L "#,
    r#"HTTP/1.1 200 153 0.012 ua=Mozilla/5","tags":{"env":"prod","region":"eu-west-1"}}"#
);

/// The same size, with escaped quotes in the message (the copying path).
const ESCAPED: &str = concat!(
    r#"{"timestamp":1732320000123456789,"host":"web-17.prod.example.net","type":"HttpAccess","#,
    r#""offset":1234567,"pid":31102,"message":"GET /api/chat.postMessage?channel=C024BE "#,
    r#"HTTP/1.1 200 1532 0.01 \"Mozilla/5.0\"","tags":{"env":"prod","region":"eu-west-1"}}"#
);

/// As many whole lines as fit in 64 KiB, each with its newline.
fn chunk() -> (Vec<u8>, u64) {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut n = 0;
    while buf.len() + LINE.len() < 64 * 1024 {
        buf.extend_from_slice(LINE.as_bytes());
        buf.push(b'\n');
        n += 1;
    }
    (buf, n)
}

fn decode(c: &mut Criterion) {
    let line = Bytes::from_static(LINE.as_bytes());
    let escaped = Bytes::from_static(ESCAPED.as_bytes());
    assert_eq!(line.len(), 250);
    assert_eq!(escaped.len(), 250);
    for (name, t) in [
        ("events", Throughput::Elements(1)),
        ("bytes", Throughput::Bytes(line.len() as u64)),
    ] {
        let mut g = c.benchmark_group(format!("json_decode_250B/{name}"));
        g.throughput(t);
        g.bench_function("plain", |b| {
            b.iter(|| json::decode(black_box(line.clone())))
        });
        g.bench_function("escaped", |b| {
            b.iter(|| json::decode(black_box(escaped.clone())))
        });
        g.finish();
    }
}

fn framing(c: &mut Criterion) {
    let (data, n) = chunk();
    let mut g = c.benchmark_group("line_framer_64KiB");
    g.throughput(Throughput::Elements(n));
    let mut framer = LineFramer::new(1 << 20);
    let mut out = Vec::with_capacity(n as usize);
    g.bench_function("split", |b| {
        b.iter(|| {
            out.clear();
            framer.push(black_box(&data), &mut out);
            out.len()
        })
    });
    // The ingest half of the pass-through pipeline: split, decode, keep
    // what FilterType lets through, write the survivors out again.
    let mut sink = BytesMut::with_capacity(128 * 1024);
    g.bench_function("split_decode_filter_encode", |b| {
        b.iter(|| {
            out.clear();
            sink.clear();
            framer.push(black_box(&data), &mut out);
            for line in out.drain(..).flatten() {
                if let Ok((ev, _)) = json::decode(line) {
                    if ev.ty.as_bytes() == b"HttpAccess" {
                        json::encode(&ev, &mut sink);
                        sink.extend_from_slice(b"\n");
                    }
                }
            }
            sink.len()
        })
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let (with_raw, _) =
        json::decode(Bytes::from_static(LINE.as_bytes())).expect("the sample line decodes");
    let mut without = with_raw.clone();
    without.touch();
    let mut out = BytesMut::with_capacity(1024);
    let mut g = c.benchmark_group("json_encode_250B");
    g.throughput(Throughput::Elements(1));
    g.bench_function("raw", |b| {
        b.iter(|| {
            out.clear();
            json::encode(black_box(&with_raw), &mut out);
        })
    });
    g.bench_function("fields", |b| {
        b.iter(|| {
            out.clear();
            json::encode(black_box(&without), &mut out);
        })
    });
    g.finish();

    let mut pb = BytesMut::new();
    proto::encode(&without, &mut pb);
    let pb = pb.freeze();
    let mut g = c.benchmark_group("proto");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode", |b| {
        b.iter(|| proto::decode(black_box(pb.clone())))
    });
    g.bench_function("encode_fields", |b| {
        b.iter(|| {
            out.clear();
            proto::encode(black_box(&without), &mut out);
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode, framing, encode
}
criterion_main!(benches);
