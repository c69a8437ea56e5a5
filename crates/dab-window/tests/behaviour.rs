//! Rules of the engine one at a time: idle partitions, `max_groups`, the
//! sketches' error bounds, early results, widening sums, and no panic on
//! extreme or corrupt input.
#![allow(clippy::unwrap_used)]

use dab_window::{
    Absorb, AggFn, AggValue, ConfigError, Engine, Event, Value, WindowKind, WindowSpec,
    DISTINCT_EXACT_LIMIT, HLL_STANDARD_ERROR, PERCENTILE_RELATIVE_ERROR,
};
use proptest::prelude::*;

fn spec(kind: WindowKind, aggs: &[(&str, AggFn)]) -> WindowSpec {
    WindowSpec::new(
        kind,
        aggs.iter()
            .map(|(n, f)| (n.to_string(), f.clone()))
            .collect(),
    )
}

fn ev<'a>(
    partition: u32,
    time: i64,
    arrival: i64,
    key: &'a [u8],
    values: &'a [Value<'a>],
) -> Event<'a> {
    Event {
        partition,
        time,
        arrival,
        key,
        values,
    }
}

/// A fixed-seed generator (splitmix64) so the error checks are repeatable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn an_idle_partition_stops_holding_the_watermark_after_idle_after() {
    let mut s = spec(WindowKind::Tumbling { size: 10 }, &[("n", AggFn::Count)]);
    s.idle_after = Some(100);
    let mut e = Engine::new(s).unwrap();
    let v = [Value::Absent];
    // The watermark never goes back, so the slow partition must be known
    // before the fast one moves it.
    e.register_partition(1, 0);
    assert_eq!(e.absorb(&ev(0, 5, 0, b"k", &v)), Absorb::Absorbed);
    assert_eq!(e.watermark(), i64::MIN, "partition 1 has no event yet");
    assert_eq!(e.absorb(&ev(1, 3, 0, b"k", &v)), Absorb::Absorbed);
    // Partition 1 goes quiet at time 3; partition 0 runs on to 55.
    for t in 6..=55 {
        e.absorb(&ev(0, t, t, b"k", &v));
    }
    assert_eq!(e.watermark(), 3, "partition 1 holds the watermark");
    assert!(
        e.poll(99).is_empty(),
        "nothing closes while partition 1 is not idle"
    );
    let out = e.poll(100);
    assert_eq!(e.watermark(), 55, "idle after 100 of arrival time");
    let starts: Vec<i64> = out.iter().map(|r| r.start).collect();
    assert_eq!(starts, vec![0, 10, 20, 30, 40]);
    assert!(out.iter().all(|r| r.is_final));
    assert_eq!(out[0].values, vec![AggValue::Count(6)]); // 5, 3, 6, 7, 8, 9
                                                         // Partition 1 comes back with an old time: that window closed, so late.
    assert_eq!(e.absorb(&ev(1, 4, 101, b"k", &v)), Absorb::Late);
    assert_eq!(e.stats().late, 1);
}

#[test]
fn without_idle_after_a_quiet_partition_holds_the_watermark_forever() {
    let mut e = Engine::new(spec(
        WindowKind::Tumbling { size: 10 },
        &[("n", AggFn::Count)],
    ))
    .unwrap();
    let v = [Value::Absent];
    e.absorb(&ev(1, 3, 0, b"k", &v));
    for t in 4..100 {
        e.absorb(&ev(0, t, t, b"k", &v));
    }
    assert!(e.poll(1_000_000).is_empty());
    assert_eq!(e.watermark(), 3);
}

#[test]
fn max_groups_bounds_entries_under_a_million_distinct_keys() {
    let mut s = spec(
        WindowKind::Tumbling {
            size: 1_000_000_000,
        },
        &[("n", AggFn::Count), ("s", AggFn::Sum)],
    );
    s.max_groups = 10_000;
    let mut e = Engine::new(s).unwrap();
    let mut absorbed = 0u64;
    for i in 0u64..1_000_000 {
        let key = i.to_le_bytes();
        let v = [Value::Absent, Value::Int(1)];
        if e.absorb(&ev(0, i as i64, 0, &key, &v)) == Absorb::Absorbed {
            absorbed += 1;
        }
        if i % 100_000 == 0 {
            assert!(e.stats().open_entries <= 10_000);
        }
    }
    let st = e.stats();
    assert_eq!(st.open_entries, 10_000);
    assert_eq!(absorbed, 10_000);
    assert_eq!(st.overflow, 990_000);
    // Existing groups still take events at the bound.
    assert_eq!(
        e.absorb(&ev(
            0,
            5,
            0,
            &0u64.to_le_bytes(),
            &[Value::Absent, Value::Int(1)]
        )),
        Absorb::Absorbed
    );
    let out = e.flush();
    assert_eq!(out.len(), 10_000);
    assert_eq!(e.stats().open_entries, 0);
}

#[test]
fn a_sliding_event_that_would_overflow_is_not_absorbed_anywhere() {
    let mut s = spec(
        WindowKind::Sliding {
            size: 30,
            every: 10,
        },
        &[("n", AggFn::Count)],
    );
    s.max_groups = 4;
    let mut e = Engine::new(s).unwrap();
    let v = [Value::Absent];
    assert_eq!(e.absorb(&ev(0, 25, 0, b"a", &v)), Absorb::Absorbed); // windows 0, 10, 20
    assert_eq!(e.stats().open_entries, 3);
    assert_eq!(e.absorb(&ev(0, 25, 0, b"b", &v)), Absorb::Overflow); // would need 3 more
    assert_eq!(e.stats().open_entries, 3);
    assert_eq!(e.absorb(&ev(0, 31, 0, b"a", &v)), Absorb::Absorbed); // 10, 20 exist; 30 is new
    let counts: Vec<(i64, AggValue)> = e
        .flush()
        .into_iter()
        .map(|r| (r.start, r.values[0].clone()))
        .collect();
    assert_eq!(
        counts,
        vec![
            (0, AggValue::Count(1)),
            (10, AggValue::Count(2)),
            (20, AggValue::Count(2)),
            (30, AggValue::Count(1))
        ]
    );
}

fn distinct_of(n: u64, seed: u64) -> AggValue {
    let mut e = Engine::new(spec(
        WindowKind::Tumbling { size: 10 },
        &[("d", AggFn::Distinct)],
    ))
    .unwrap();
    let mut rng = Rng(seed);
    for i in 0..n {
        // Distinct by construction (i in the high bits), random in the low.
        let s = format!("user-{i}-{}", rng.next() % 1000);
        e.absorb(&ev(0, 0, 0, b"g", &[Value::Str(&s)]));
        // Repeats must not count.
        if i % 3 == 0 {
            e.absorb(&ev(0, 0, 0, b"g", &[Value::Str(&s)]));
        }
    }
    e.flush().remove(0).values.remove(0)
}

#[test]
fn distinct_is_exact_up_to_the_bound() {
    let limit = DISTINCT_EXACT_LIMIT as u64;
    assert_eq!(
        distinct_of(limit, 1),
        AggValue::Distinct {
            count: limit,
            exact: true
        }
    );
    assert_eq!(
        distinct_of(17, 1),
        AggValue::Distinct {
            count: 17,
            exact: true
        }
    );
}

#[test]
fn distinct_past_the_bound_is_a_hyperloglog_estimate_within_three_standard_errors() {
    for (n, seed) in [
        (DISTINCT_EXACT_LIMIT as u64 + 1, 7),
        (50_000, 8),
        (200_000, 9),
        (1_000_000, 10),
    ] {
        let AggValue::Distinct { count, exact } = distinct_of(n, seed) else {
            panic!("not a distinct count")
        };
        assert!(!exact, "n = {n} is past the exact bound");
        let err = (count as f64 - n as f64).abs() / n as f64;
        eprintln!("distinct n = {n}: estimate {count}, relative error {err:.4}");
        assert!(
            err <= 3.0 * HLL_STANDARD_ERROR,
            "n = {n}: estimate {count}, relative error {err}"
        );
    }
}

#[test]
fn hyperloglog_error_over_many_sketches_is_the_nominal_one() {
    // One sketch can be lucky; the root-mean-square error over eight
    // (fixed-seed, mixed-shape inputs) says whether the hash spreads values
    // as the error bound assumes. A weak hash gave twice the nominal error.
    let n = 300_000i64;
    let mut sq = 0.0;
    for run in 0..8i64 {
        let mut e = Engine::new(spec(
            WindowKind::Tumbling { size: 10 },
            &[("d", AggFn::Distinct)],
        ))
        .unwrap();
        for i in 0..n {
            let s = format!("user-{i}-{run}");
            let v = match run % 3 {
                0 => Value::Str(&s),
                1 => Value::Int(i * 7919 + run * 1_000_000_007),
                _ => Value::Int((i << 20) | run),
            };
            e.absorb(&ev(0, 0, 0, b"g", &[v]));
        }
        let AggValue::Distinct { count, .. } = e.flush()[0].values[0] else {
            panic!("not a distinct count")
        };
        let err = (count as f64 - n as f64) / n as f64;
        sq += err * err;
    }
    let rms = (sq / 8.0).sqrt();
    eprintln!("distinct rms error over 8 sketches of {n}: {rms:.4}");
    assert!(rms <= 1.3 * HLL_STANDARD_ERROR, "rms error {rms}");
}

#[test]
fn distinct_counts_numbers_by_value() {
    let mut e = Engine::new(spec(
        WindowKind::Tumbling { size: 10 },
        &[("d", AggFn::Distinct)],
    ))
    .unwrap();
    for v in [
        Value::Int(1),
        Value::Float(1.0),
        Value::Float(-0.0),
        Value::Int(0),
        Value::Str("1"),
        Value::Absent,
    ] {
        e.absorb(&ev(0, 0, 0, b"", &[v]));
    }
    assert_eq!(
        e.flush()[0].values[0],
        AggValue::Distinct {
            count: 3,
            exact: true
        }
    );
}

fn check_percentiles(values: &[f64]) {
    let ps = vec![0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0];
    let mut e = Engine::new(spec(
        WindowKind::Tumbling { size: 10 },
        &[("p", AggFn::Percentile(ps.clone()))],
    ))
    .unwrap();
    for &x in values {
        e.absorb(&ev(0, 1, 0, b"g", &[Value::Float(x)]));
    }
    let AggValue::Percentiles(got) = e.flush().remove(0).values.remove(0) else {
        panic!("not percentiles")
    };
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    for (p, got) in ps.iter().zip(got) {
        let exact = sorted[(p * (sorted.len() - 1) as f64).floor() as usize];
        let got = got.expect("a percentile of a non-empty window");
        let tolerance = PERCENTILE_RELATIVE_ERROR * exact.abs() + 1e-9;
        assert!(
            (got - exact).abs() <= tolerance,
            "p{p}: got {got}, exact {exact}"
        );
    }
}

#[test]
fn percentiles_are_within_the_documented_relative_error() {
    let mut rng = Rng(42);
    // Latency-like: log-uniform over six decades.
    let latencies: Vec<f64> = (0..100_000)
        .map(|_| 10f64.powf(rng.unit() * 6.0 - 1.0))
        .collect();
    check_percentiles(&latencies);
    // Signs and zeros.
    let mixed: Vec<f64> = (0..50_000)
        .map(|i| {
            if i % 10 == 0 {
                0.0
            } else {
                (rng.unit() - 0.5) * 2000.0
            }
        })
        .collect();
    check_percentiles(&mixed);
    check_percentiles(&[42.0]);
}

#[test]
fn early_results_are_partial_and_only_for_changed_entries() {
    let mut s = spec(WindowKind::Tumbling { size: 100 }, &[("n", AggFn::Count)]);
    s.early = Some(10);
    let mut e = Engine::new(s).unwrap();
    let v = [Value::Absent];
    assert!(
        e.poll(0).is_empty(),
        "the first poll starts the early clock"
    );
    e.absorb(&ev(0, 1, 1, b"a", &v));
    e.absorb(&ev(0, 2, 2, b"b", &v));
    assert!(e.poll(9).is_empty());
    let out = e.poll(10);
    assert_eq!(out.len(), 2);
    assert!(out
        .iter()
        .all(|r| !r.is_final && r.values == vec![AggValue::Count(1)]));
    e.absorb(&ev(0, 3, 11, b"b", &v));
    let out = e.poll(20);
    assert_eq!(out.len(), 1, "only the changed group");
    assert_eq!(
        (out[0].key.as_slice(), &out[0].values[0]),
        (&b"b"[..], &AggValue::Count(2))
    );
    assert!(e.poll(30).is_empty());
    e.absorb(&ev(0, 100, 31, b"a", &v));
    let out = e.poll(31);
    assert_eq!(out.iter().filter(|r| r.is_final).count(), 2);
}

#[test]
fn sum_widens_to_float_instead_of_overflowing() {
    let aggs = [
        ("s", AggFn::Sum),
        ("a", AggFn::Avg),
        ("mn", AggFn::Min),
        ("mx", AggFn::Max),
    ];
    let mut e = Engine::new(spec(WindowKind::Tumbling { size: 10 }, &aggs)).unwrap();
    for v in [i64::MAX, i64::MAX, 1] {
        let x = Value::Int(v);
        e.absorb(&ev(0, 0, 0, b"k", &[x, x, x, x]));
    }
    let r = e.flush().remove(0);
    assert_eq!(r.values[0], AggValue::Float(i64::MAX as f64 * 2.0 + 1.0));
    assert_eq!(r.values[2], AggValue::Int(1));
    assert_eq!(r.values[3], AggValue::Int(i64::MAX));
}

#[test]
fn nan_is_skipped_and_infinities_do_not_panic() {
    let aggs = [
        ("s", AggFn::Sum),
        ("mn", AggFn::Min),
        ("mx", AggFn::Max),
        ("p", AggFn::Percentile(vec![0.5])),
    ];
    let mut e = Engine::new(spec(WindowKind::Tumbling { size: 10 }, &aggs)).unwrap();
    for x in [f64::NAN, f64::INFINITY, 2.0, f64::NEG_INFINITY] {
        let v = Value::Float(x);
        e.absorb(&ev(0, 0, 0, b"k", &[v, v, v, v]));
    }
    let r = e.flush().remove(0);
    assert!(matches!(r.values[0], AggValue::Float(f) if f.is_nan())); // inf + -inf
    assert_eq!(r.values[1], AggValue::Float(f64::NEG_INFINITY));
    assert_eq!(r.values[2], AggValue::Float(f64::INFINITY));
    let AggValue::Percentiles(p) = &r.values[3] else {
        panic!("not percentiles")
    };
    let median = p[0].expect("one finite value");
    assert!(
        (median - 2.0).abs() <= 2.0 * PERCENTILE_RELATIVE_ERROR,
        "{median}"
    );
}

#[test]
fn bad_configurations_are_refused() {
    let count = &[("n", AggFn::Count)];
    assert!(matches!(
        Engine::new(spec(WindowKind::Tumbling { size: 0 }, count)),
        Err(ConfigError::NotPositive { .. })
    ));
    assert!(matches!(
        Engine::new(spec(
            WindowKind::Sliding {
                size: 10,
                every: 20
            },
            count
        )),
        Err(ConfigError::StepLargerThanSize { .. })
    ));
    assert!(matches!(
        Engine::new(spec(
            WindowKind::Sliding {
                size: 1_000_000,
                every: 1
            },
            count
        )),
        Err(ConfigError::TooManyWindows { .. })
    ));
    assert!(matches!(
        Engine::new(spec(
            WindowKind::Session { gap: 5 },
            &[("p", AggFn::Percentile(vec![1.5]))]
        )),
        Err(ConfigError::BadPercentile { .. })
    ));
}

#[test]
fn restore_refuses_a_changed_configuration() {
    let s = spec(WindowKind::Tumbling { size: 10 }, &[("n", AggFn::Count)]);
    let mut e = Engine::new(s.clone()).unwrap();
    e.absorb(&ev(0, 1, 0, b"k", &[Value::Absent]));
    let entries = e.take_dirty().written;
    let book = e.encode_bookkeeping();
    assert!(Engine::restore(s, entries.clone(), &book).is_ok());
    let changed = spec(WindowKind::Tumbling { size: 10 }, &[("n", AggFn::Sum)]);
    assert!(Engine::restore(changed.clone(), Vec::<(Vec<u8>, Vec<u8>)>::new(), &book).is_err());
    let fresh = Engine::new(changed.clone()).unwrap().encode_bookkeeping();
    let err = Engine::restore(changed, entries, &fresh)
        .unwrap_err()
        .to_string();
    assert!(err.contains("aggregate tag"), "{err}");
}

#[test]
fn restore_refuses_an_entry_given_twice() {
    for kind in [
        WindowKind::Tumbling { size: 10 },
        WindowKind::Session { gap: 10 },
    ] {
        let s = spec(kind, &[("n", AggFn::Count)]);
        let mut e = Engine::new(s.clone()).unwrap();
        e.absorb(&ev(0, 1, 0, b"k", &[Value::Absent]));
        e.absorb(&ev(0, 1, 0, b"j", &[Value::Absent]));
        let mut entries = e.snapshot();
        let book = e.encode_bookkeeping();
        assert_eq!(
            Engine::restore(s.clone(), entries.clone(), &book)
                .unwrap()
                .stats()
                .open_entries,
            2
        );
        entries.push(entries[0].clone());
        let err = Engine::restore(s, entries, &book).unwrap_err().to_string();
        assert!(err.contains("given twice"), "{kind:?}: {err}");
    }
}

fn all_aggs() -> Vec<(&'static str, AggFn)> {
    vec![
        ("c", AggFn::Count),
        ("ci", AggFn::CountIf),
        ("s", AggFn::Sum),
        ("mn", AggFn::Min),
        ("mx", AggFn::Max),
        ("a", AggFn::Avg),
        ("f", AggFn::First),
        ("l", AggFn::Last),
        ("d", AggFn::Distinct),
        ("p", AggFn::Percentile(vec![0.0, 0.5, 1.0])),
    ]
}

fn any_value() -> impl Strategy<Value = (u8, i64, f64, String)> {
    (0u8..6, any::<i64>(), any::<f64>(), ".{0,4}")
}

fn to_value((k, i, f, s): &(u8, i64, f64, String)) -> Value<'_> {
    match k {
        0 => Value::Absent,
        1 => Value::Bool(i % 2 == 0),
        2 => Value::Int(*i),
        3 => Value::Float(*f),
        4 => Value::Str(s),
        _ => Value::Bytes(s.as_bytes()),
    }
}

fn extreme_time() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(i64::MIN + 1),
        Just(i64::MAX - 1),
        any::<i64>(),
        -5i64..5
    ]
}

/// Whatever a restore accepted must then run without panicking.
fn use_after_restore(e: &mut Engine) {
    for t in [1, 5, 100, i64::MAX] {
        e.absorb(&ev(0, t, t, b"k", &[Value::Float(2.0); 10]));
        e.poll(t);
    }
    let _ = e.take_dirty();
    let _ = e.flush();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Extreme times, NaN, infinities, empty keys, every kind and aggregate:
    /// no panic, and a checkpoint of whatever state results restores.
    #[test]
    fn nothing_panics_on_extreme_input(
        kind in prop_oneof![
            (1i64..=i64::MAX).prop_map(|size| WindowKind::Tumbling { size }),
            (1i64..100).prop_map(|every| WindowKind::Sliding { size: every * 3, every }),
            (1i64..=i64::MAX).prop_map(|gap| WindowKind::Session { gap }),
        ],
        lateness in prop_oneof![Just(0i64), Just(i64::MAX), 0i64..100],
        events in prop::collection::vec((any::<u32>(), extreme_time(), extreme_time(), prop::collection::vec(any::<u8>(), 0..3), any_value()), 0..40),
    ) {
        let mut s = spec(kind, &all_aggs());
        s.lateness = lateness;
        s.idle_after = Some(i64::MAX);
        s.early = Some(1);
        let mut e = Engine::new(s.clone()).unwrap();
        for (p, t, a, key, v) in &events {
            let v = to_value(v);
            e.absorb(&ev(*p % 3, *t, *a, key, &[v; 10]));
            e.poll(*a);
        }
        let snapshot = e.snapshot();
        let book = e.encode_bookkeeping();
        let mut restored = Engine::restore(s, snapshot, &book).unwrap();
        prop_assert_eq!(restored.flush(), e.flush());
    }

    /// Corrupt state bytes give an error, never a panic.
    #[test]
    fn corrupt_state_is_an_error_not_a_panic(
        key in prop::collection::vec(any::<u8>(), 0..12),
        value in prop::collection::vec(any::<u8>(), 0..64),
        book in prop::collection::vec(any::<u8>(), 0..64),
        flip in any::<prop::sample::Index>(),
    ) {
        let s = spec(WindowKind::Session { gap: 10 }, &all_aggs());
        if let Ok(mut e) = Engine::restore(s.clone(), [(key.clone(), value)], &book) {
            use_after_restore(&mut e);
        }
        // And a real entry with one byte changed.
        let mut e = Engine::new(s.clone()).unwrap();
        e.absorb(&ev(0, 1, 0, b"k", &[Value::Str("x"); 10]));
        let mut entries = e.snapshot();
        let good_book = e.encode_bookkeeping();
        let i = flip.index(entries[0].1.len());
        entries[0].1[i] ^= 0x5a;
        if let Ok(mut e) = Engine::restore(s, entries, &good_book) {
            use_after_restore(&mut e);
        }
    }
}
