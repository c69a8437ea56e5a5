//! The engine against a naive reference (keep every event, decide lateness
//! from a simulated watermark, compute every window at the end), and
//! checkpoint + restore + continue against an uninterrupted run.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use dab_window::{
    Absorb, AggFn, AggValue, Engine, Event, Value, WindowKind, WindowResult, WindowSpec,
};
use proptest::prelude::*;

#[derive(Debug, Clone, PartialEq)]
enum Num {
    Int(i64),
    /// k + 0.5, so it never ties with an integer and sums stay exact.
    Half(i64),
}

impl Num {
    fn value(&self) -> Value<'static> {
        match *self {
            Num::Int(i) => Value::Int(i),
            Num::Half(k) => Value::Float(k as f64 + 0.5),
        }
    }
    fn f(&self) -> f64 {
        match *self {
            Num::Int(i) => i as f64,
            Num::Half(k) => k as f64 + 0.5,
        }
    }
}

#[derive(Debug, Clone)]
struct Ev {
    partition: u32,
    time: i64,
    arrival: i64,
    key: Vec<u8>,
    cond: bool,
    x: Option<Num>,
    label: Option<String>,
    tag: Option<i64>,
}

#[derive(Debug, Clone)]
enum Op {
    Ev(Ev),
    Poll(i64),
    Checkpoint,
    Crash,
}

fn aggs() -> Vec<(String, AggFn)> {
    [
        ("count", AggFn::Count),
        ("ok", AggFn::CountIf),
        ("sum", AggFn::Sum),
        ("min", AggFn::Min),
        ("max", AggFn::Max),
        ("avg", AggFn::Avg),
        ("first", AggFn::First),
        ("last", AggFn::Last),
        ("distinct", AggFn::Distinct),
    ]
    .into_iter()
    .map(|(n, f)| (n.to_owned(), f))
    .collect()
}

fn values(e: &Ev) -> Vec<Value<'_>> {
    let x = e.x.as_ref().map_or(Value::Absent, Num::value);
    vec![
        Value::Absent,
        Value::Bool(e.cond),
        x,
        x,
        x,
        x,
        e.label.as_deref().map_or(Value::Absent, Value::Str),
        e.label.as_deref().map_or(Value::Absent, Value::Str),
        e.tag.map_or(Value::Absent, Value::Int),
    ]
}

fn absorb(engine: &mut Engine, e: &Ev) -> Absorb {
    let vals = values(e);
    engine.absorb(&Event {
        partition: e.partition,
        time: e.time,
        arrival: e.arrival,
        key: &e.key,
        values: &vals,
    })
}

/// An event with its index in arrival order.
type Indexed<'a> = (usize, &'a Ev);

/// The reference's aggregates over the events of one window, in arrival order.
fn reference_values(evs: &[(usize, &Ev)]) -> Vec<AggValue> {
    let nums: Vec<&Num> = evs.iter().filter_map(|(_, e)| e.x.as_ref()).collect();
    let sum = if nums.is_empty() {
        AggValue::Null
    } else if nums.iter().all(|n| matches!(n, Num::Int(_))) {
        AggValue::Int(nums.iter().map(|n| n.f() as i64).sum())
    } else {
        AggValue::Float(nums.iter().map(|n| n.f()).sum())
    };
    let as_value = |n: &Num| match *n {
        Num::Int(i) => AggValue::Int(i),
        Num::Half(_) => AggValue::Float(n.f()),
    };
    let min = nums
        .iter()
        .copied()
        .reduce(|a, b| if b.f() < a.f() { b } else { a })
        .map_or(AggValue::Null, as_value);
    let max = nums
        .iter()
        .copied()
        .reduce(|a, b| if b.f() > a.f() { b } else { a })
        .map_or(AggValue::Null, as_value);
    let avg = if nums.is_empty() {
        AggValue::Null
    } else {
        AggValue::Float(nums.iter().map(|n| n.f()).sum::<f64>() / nums.len() as f64)
    };
    let labelled = evs.iter().filter(|(_, e)| e.label.is_some());
    let first = labelled
        .clone()
        .min_by_key(|(i, e)| (e.time, *i))
        .map_or(AggValue::Null, |(_, e)| {
            AggValue::Str(e.label.clone().unwrap())
        });
    let last = labelled
        .max_by_key(|(i, e)| (e.time, *i))
        .map_or(AggValue::Null, |(_, e)| {
            AggValue::Str(e.label.clone().unwrap())
        });
    let distinct: BTreeSet<i64> = evs.iter().filter_map(|(_, e)| e.tag).collect();
    vec![
        AggValue::Count(evs.len() as u64),
        AggValue::Count(evs.iter().filter(|(_, e)| e.cond).count() as u64),
        sum,
        min,
        max,
        avg,
        first,
        last,
        AggValue::Distinct {
            count: distinct.len() as u64,
            exact: true,
        },
    ]
}

/// The watermark rule of the README, restated naively.
#[derive(Default)]
struct RefWatermark {
    parts: BTreeMap<u32, (i64, i64)>,
    wm: Option<i64>,
}

impl RefWatermark {
    fn recompute(&mut self, now: i64, idle_after: Option<i64>) {
        let active: Vec<i64> = self
            .parts
            .values()
            .filter(|(_, last)| idle_after.is_none_or(|d| now - last < d))
            .map(|(m, _)| *m)
            .collect();
        let c = active
            .iter()
            .min()
            .or(self.parts.values().map(|(m, _)| m).max())
            .copied();
        if let Some(c) = c {
            self.wm = Some(self.wm.map_or(c, |w| w.max(c)));
        }
    }
    fn event(&mut self, e: &Ev, idle_after: Option<i64>) -> i64 {
        let p = self.parts.entry(e.partition).or_insert((e.time, e.arrival));
        p.0 = p.0.max(e.time);
        p.1 = e.arrival;
        self.recompute(e.arrival, idle_after);
        self.wm.unwrap_or(i64::MIN)
    }
}

/// Final results and per-event verdicts of the reference.
fn reference(spec: &WindowSpec, ops: &[Op]) -> (Vec<WindowResult>, Vec<Absorb>) {
    let mut wm = RefWatermark::default();
    let mut verdicts = Vec::new();
    // (start, end, key) -> events, for fixed windows; key -> events for sessions.
    let mut fixed: BTreeMap<(i64, i64, Vec<u8>), Vec<Indexed<'_>>> = BTreeMap::new();
    let mut kept: BTreeMap<Vec<u8>, Vec<(usize, &Ev)>> = BTreeMap::new();
    let evs = ops.iter().filter_map(|o| match o {
        Op::Ev(e) => Some(e),
        _ => None,
    });
    for (i, e) in evs.enumerate() {
        let w = wm.event(e, spec.idle_after);
        let (size, every) = match spec.kind {
            WindowKind::Tumbling { size } => (size, size),
            WindowKind::Sliding { size, every } => (size, every),
            WindowKind::Session { .. } => {
                let late = e.time + spec.lateness < w;
                verdicts.push(if late { Absorb::Late } else { Absorb::Absorbed });
                if !late {
                    kept.entry(e.key.clone()).or_default().push((i, e));
                }
                continue;
            }
        };
        let mut any = false;
        // Every window [k*every, k*every+size) holding e.time.
        let mut k = e.time.div_euclid(every);
        while k * every + size > e.time {
            let (start, end) = (k * every, k * every + size);
            if end + spec.lateness > w {
                fixed
                    .entry((start, end, e.key.clone()))
                    .or_default()
                    .push((i, e));
                any = true;
            }
            k -= 1;
        }
        verdicts.push(if any { Absorb::Absorbed } else { Absorb::Late });
    }
    let mut out: Vec<WindowResult> = Vec::new();
    if let WindowKind::Session { gap } = spec.kind {
        for (key, mut evs) in kept {
            evs.sort_by_key(|(i, e)| (e.time, *i));
            let mut run: Vec<(usize, &Ev)> = Vec::new();
            let mut flush = |run: &mut Vec<(usize, &Ev)>| {
                if run.is_empty() {
                    return;
                }
                let start = run[0].1.time;
                let end = run.last().unwrap().1.time + gap;
                run.sort_by_key(|(i, _)| *i);
                out.push(WindowResult {
                    start,
                    end,
                    key: key.clone(),
                    values: reference_values(run),
                    is_final: true,
                });
                run.clear();
            };
            for (i, e) in evs {
                if run.last().is_some_and(|(_, p)| e.time - p.time >= gap) {
                    flush(&mut run);
                }
                run.push((i, e));
            }
            flush(&mut run);
        }
    } else {
        for ((start, end, key), evs) in fixed {
            out.push(WindowResult {
                start,
                end,
                key,
                values: reference_values(&evs),
                is_final: true,
            });
        }
    }
    out.sort_by(|a, b| (a.end, &a.key).cmp(&(b.end, &b.key)));
    (out, verdicts)
}

/// Runs the engine through `ops`; checkpoints and crashes act when `crash`
/// is on: a crash restores from the last checkpoint and replays what
/// followed it, dropping the output emitted since.
fn run(
    spec: &WindowSpec,
    ops: &[Op],
    crash: bool,
) -> (Vec<WindowResult>, Vec<Absorb>, dab_window::Stats) {
    let mut engine = Engine::new(spec.clone()).unwrap();
    let mut kv: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut book = engine.encode_bookkeeping();
    let mut committed = (0usize, 0usize, 0usize); // (op index, outputs, verdicts)
    let mut crashed = vec![false; ops.len()];
    let mut out = Vec::new();
    let mut verdicts = Vec::new();
    let mut i = 0;
    while i < ops.len() {
        match &ops[i] {
            Op::Ev(e) => verdicts.push(absorb(&mut engine, e)),
            Op::Poll(now) => out.extend(engine.poll(*now)),
            Op::Checkpoint if crash => {
                let d = engine.take_dirty();
                for k in d.deleted {
                    kv.remove(&k);
                }
                kv.extend(d.written);
                book = engine.encode_bookkeeping();
                committed = (i + 1, out.len(), verdicts.len());
            }
            Op::Crash if crash && !crashed[i] => {
                crashed[i] = true;
                engine = Engine::restore(spec.clone(), kv.iter(), &book).expect("restore");
                out.truncate(committed.1);
                verdicts.truncate(committed.2);
                i = committed.0;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out.extend(engine.flush());
    let stats = engine.stats();
    (out, verdicts, stats)
}

fn kind() -> impl Strategy<Value = WindowKind> {
    prop_oneof![
        (1i64..40).prop_map(|size| WindowKind::Tumbling { size }),
        (1i64..10, 1i64..5).prop_map(|(k, every)| WindowKind::Sliding {
            size: every * k + (k % 3).min(every - 1),
            every
        }),
        (1i64..30).prop_map(|gap| WindowKind::Session { gap }),
    ]
}

fn ops(parts: u32, with_crashes: bool) -> impl Strategy<Value = Vec<Op>> {
    let step = (
        0..parts,
        0i64..8,   // time advance of the cursor
        -25i64..6, // jitter: out of order
        0i64..6,   // arrival advance
        0u8..4,    // key
        any::<bool>(),
        prop::option::of(prop_oneof![
            (-50i64..50).prop_map(Num::Int),
            (-50i64..50).prop_map(Num::Half)
        ]),
        prop::option::of(0u8..6),
        prop::option::of(0i64..12),
        0u8..20, // what follows: poll, checkpoint, crash, nothing
    );
    prop::collection::vec(step, 0..160).prop_map(move |steps| {
        let (mut cursor, mut arrival) = (-100i64, 0i64);
        let mut out = Vec::new();
        for (partition, adv, jitter, arr, key, cond, x, label, tag, then) in steps {
            cursor += adv;
            arrival += arr;
            out.push(Op::Ev(Ev {
                partition,
                time: cursor + jitter,
                arrival,
                key: vec![key],
                cond,
                x,
                label: label.map(|l| format!("l{l}")),
                tag,
            }));
            match then {
                0..=3 => out.push(Op::Poll(arrival)),
                4..=5 if with_crashes => out.push(Op::Checkpoint),
                6 if with_crashes => out.push(Op::Crash),
                _ => {}
            }
        }
        out
    })
}

fn spec(
    kind: WindowKind,
    lateness: i64,
    idle_after: Option<i64>,
    early: Option<i64>,
) -> WindowSpec {
    let mut s = WindowSpec::new(kind, aggs());
    s.lateness = lateness;
    s.idle_after = idle_after;
    s.early = early;
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Final results and every event's verdict (late or absorbed) equal the
    /// reference's, for every window kind, out-of-order times, several
    /// partitions and idle timeouts.
    #[test]
    fn engine_matches_reference(
        kind in kind(),
        lateness in 0i64..20,
        idle_after in prop::option::of(1i64..15),
        ops in (1u32..4).prop_flat_map(|p| ops(p, false)),
    ) {
        let spec = spec(kind, lateness, idle_after, None);
        let (want, want_verdicts) = reference(&spec, &ops);
        let (got, verdicts, stats) = run(&spec, &ops, false);
        prop_assert_eq!(&verdicts, &want_verdicts);
        let late = want_verdicts.iter().filter(|v| **v == Absorb::Late).count() as u64;
        prop_assert_eq!(stats.late, late);
        prop_assert_eq!(stats.overflow, 0);
        prop_assert_eq!(stats.open_entries, 0);
        prop_assert_eq!(got, want);
    }

    /// Checkpoints at random points, crashes that restore from the last
    /// one and replay what followed: the output (partial results included),
    /// every verdict and the counters are exactly those of a run without
    /// crashes.
    #[test]
    fn checkpoint_restore_continue_equals_uninterrupted(
        kind in kind(),
        lateness in 0i64..20,
        idle_after in prop::option::of(1i64..15),
        early in prop::option::of(1i64..10),
        max_groups in prop_oneof![Just(1_000_000usize), 1usize..8],
        ops in (1u32..4).prop_flat_map(|p| ops(p, true)),
    ) {
        let mut spec = spec(kind, lateness, idle_after, early);
        // A small bound makes overflows, whose count is checkpointed too.
        spec.max_groups = max_groups;
        let plain = run(&spec, &ops, false);
        let crashed = run(&spec, &ops, true);
        prop_assert_eq!(crashed, plain);
    }
}

#[test]
fn the_reference_test_sees_crashes_happen() {
    // Guards the property above against a generator that never crashes
    // after a checkpoint.
    let spec = spec(WindowKind::Tumbling { size: 10 }, 0, None, Some(3));
    let e = |time, arrival| {
        Op::Ev(Ev {
            partition: 0,
            time,
            arrival,
            key: b"k".to_vec(),
            cond: true,
            x: Some(Num::Int(time)),
            label: None,
            tag: Some(time),
        })
    };
    let ops = vec![
        e(1, 1),
        Op::Poll(1),
        e(2, 2),
        Op::Checkpoint,
        e(5, 5),
        Op::Poll(5),
        e(12, 6),
        Op::Crash,
        Op::Poll(7),
        e(25, 8),
        Op::Poll(8),
    ];
    let plain = run(&spec, &ops, false);
    let crashed = run(&spec, &ops, true);
    assert_eq!(crashed, plain);
    let finals: Vec<_> = plain
        .0
        .iter()
        .filter(|r| r.is_final)
        .map(|r| (r.start, r.values[0].clone()))
        .collect();
    assert_eq!(
        finals,
        vec![
            (0, AggValue::Count(3)),
            (10, AggValue::Count(1)),
            (20, AggValue::Count(1))
        ]
    );
    assert!(
        plain.0.iter().any(|r| !r.is_final),
        "early results were emitted"
    );
}
