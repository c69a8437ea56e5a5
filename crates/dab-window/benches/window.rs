//! The engine's hot path, as issue 13 states the target: tumbling 1 s,
//! 1,000 keys, Count + Sum + Max, increasing timestamps (1 µs apart, so a
//! window holds a million events), results polled every 10,000 events.
//! Beside it, in the same run, the ceiling of the machine for this shape
//! (one hash-map increment per event with the same keys and hasher), and
//! the engine with a checkpoint (`take_dirty` + bookkeeping) every million
//! events; and the engine's share of restoring 1,000,000 groups. Run on
//! one core:
//! `taskset -c 0 cargo bench -p dab-window --bench window`.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dab_window::{AggFn, Engine, Event, Value, WindowKind, WindowSpec};

const BATCH: u64 = 100_000;
const KEYS: usize = 1_000;

struct Input {
    keys: Vec<Vec<u8>>,
    /// A fixed pseudo-random order of key indexes, cycled.
    order: Vec<u16>,
}

fn input() -> Input {
    let keys = (0..KEYS)
        .map(|i| format!("team-{i:04}/GET").into_bytes())
        .collect();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let order = (0..65_536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % KEYS as u64) as u16
        })
        .collect();
    Input { keys, order }
}

fn engine() -> Engine {
    engine_with_max(100_000)
}

fn engine_with_max(max_groups: usize) -> Engine {
    let aggs = vec![
        ("calls".into(), AggFn::Count),
        ("sum".into(), AggFn::Sum),
        ("max".into(), AggFn::Max),
    ];
    let mut spec = WindowSpec::new(
        WindowKind::Tumbling {
            size: 1_000_000_000,
        },
        aggs,
    );
    spec.max_groups = max_groups;
    Engine::new(spec).expect("a valid spec")
}

fn bench(c: &mut Criterion) {
    let input = input();
    let mut g = c.benchmark_group("tumbling_1s_1000_keys");
    g.throughput(Throughput::Elements(BATCH));

    let mut counts: HashMap<Box<[u8]>, u64, foldhash::fast::RandomState> = HashMap::default();
    let mut n = 0u64;
    g.bench_function("ceiling_hashmap_increment", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                let key = &input.keys[usize::from(input.order[(n & 0xffff) as usize])];
                match counts.get_mut(key.as_slice()) {
                    Some(c) => *c += 1,
                    None => {
                        counts.insert(key.as_slice().into(), 1);
                    }
                }
                n += 1;
            }
            black_box(&counts);
        })
    });

    for checkpoint_every in [None, Some(1_000_000u64)] {
        let name = match checkpoint_every {
            None => "engine_count_sum_max".to_owned(),
            Some(k) => format!("engine_count_sum_max_checkpoint_every_{k}"),
        };
        let mut e = engine();
        let mut n = 0u64;
        let mut results = 0usize;
        let mut bytes = 0usize;
        g.bench_function(name, |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    let key = &input.keys[usize::from(input.order[(n & 0xffff) as usize])];
                    let t = (n * 1_000) as i64;
                    let v = Value::Int((n % 997) as i64);
                    let values = [Value::Absent, v, v];
                    e.absorb(&Event {
                        partition: 0,
                        time: t,
                        arrival: t,
                        key,
                        values: &values,
                    });
                    n += 1;
                    if n % 10_000 == 0 {
                        results += e.poll(t).len();
                    }
                    if checkpoint_every.is_some_and(|k| n % k == 0) {
                        let d = e.take_dirty();
                        bytes += d
                            .written
                            .iter()
                            .map(|(k, v)| k.len() + v.len())
                            .sum::<usize>();
                        bytes += e.encode_bookkeeping().len();
                    }
                }
                black_box((results, bytes));
            })
        });
    }
    g.finish();
}

/// Restoring a checkpoint of 1,000,000 groups (issue 13: under 2 s for the
/// whole restore, store reads included; this is the engine's share).
fn restore(c: &mut Criterion) {
    let mut e = engine_with_max(2_000_000);
    for i in 0u64..1_000_000 {
        let key = format!("user-{i:07}");
        let v = Value::Int(i as i64);
        e.absorb(&Event {
            partition: 0,
            time: 5,
            arrival: 5,
            key: key.as_bytes(),
            values: &[Value::Absent, v, v],
        });
    }
    let entries = e.snapshot();
    let book = e.encode_bookkeeping();
    let spec = e.spec().clone();
    let mut g = c.benchmark_group("restore");
    g.sample_size(10);
    g.throughput(Throughput::Elements(entries.len() as u64));
    g.bench_function("restore_1m_groups", |b| {
        b.iter(|| {
            Engine::restore(spec.clone(), entries.iter().map(|(k, v)| (k, v)), &book)
                .expect("restore")
        })
    });
    g.finish();
}

criterion_group!(benches, bench, restore);
criterion_main!(benches);
