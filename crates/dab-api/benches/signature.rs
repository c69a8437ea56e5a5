//! What a signature costs per event: `Signer::verify` (what
//! `VerifySignature` runs on every event) and `Signer::sign` (what a
//! producer pays), on a realistic event: host, type, a 200-byte message,
//! two tags, one of them DAB's own (left out of the signed bytes).
//! `canonical` alone shows how much of it is the encoding and how much the
//! HMAC. Throughput is in events, so criterion prints events/s.
//!
//! Run with `cargo bench -p dab-api --bench signature`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dab_api::signature::{canonical, Signer};
use dab_api::{Event, Text};

/// A 32-byte key, as a binding's key file would hold.
const KEY: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

/// An access-log event with a 200-byte message and two tags.
fn event() -> Event {
    let mut message = b"GET /api/chat.postMessage?channel=C024BE91L&ts=1732320000.123456 \
HTTP/1.1 200 1532 0.012 ua=\"Mozilla/5.0 (X11; Linux x86_64)\" ref=https://app.example.net/"
        .to_vec();
    message.resize(200, b'.');
    Event {
        timestamp: 1_732_320_000_123_456_789,
        host: Text::from("web-17.prod.example.net"),
        ty: Text::from("HttpAccess"),
        offset: 1_234_567,
        pid: 31_102,
        message: Bytes::from(message),
        tags: vec![
            (Text::from("env"), Text::from("prod")),
            (Text::from("dab.sample_rate"), Text::from("5")),
        ],
        ..Event::default()
    }
}

fn signature(c: &mut Criterion) {
    let mut signer = Signer::new(KEY);
    let mut signed = event();
    assert_eq!(signed.message.len(), 200);
    signed.signature = Bytes::copy_from_slice(&signer.sign(&signed));
    assert!(signer.verify(&signed), "the bench event must verify");
    let mut forged = signed.clone();
    forged.signature = Bytes::from_static(&[0u8; 32]);
    assert!(!signer.verify(&forged), "a zero signature must fail");

    let mut buf = Vec::with_capacity(512);
    canonical(&signed, &mut buf);
    let signed_bytes = buf.len();

    let mut g = c.benchmark_group(format!("signature_{signed_bytes}B_signed"));
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify_good", |b| {
        b.iter(|| signer.verify(black_box(&signed)))
    });
    g.bench_function("verify_bad", |b| {
        b.iter(|| signer.verify(black_box(&forged)))
    });
    g.bench_function("sign", |b| b.iter(|| signer.sign(black_box(&signed))));
    g.bench_function("canonical_only", |b| {
        b.iter(|| {
            canonical(black_box(&signed), &mut buf);
            buf.len()
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(5));
    targets = signature
}
criterion_main!(benches);
