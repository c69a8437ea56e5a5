//! The reliability (REP) score of SPEC section 4 as `dab_runtime::reliability`
//! computes it: exact counts for gaps, late arrivals, duplicates, drops and
//! interleaved keys; bounded memory when offsets jump far ahead; and a
//! property test against a plain `HashSet` model.

use std::collections::{BTreeMap, HashSet};

use dab_api::{Event, Text};
use dab_runtime::reliability::{Limits, Report, Score, Tracker};
use proptest::prelude::*;

fn ev(host: &str, pid: u32, ty: &str, offset: u64) -> Event {
    Event {
        host: Text::from(host),
        pid,
        ty: Text::from(ty),
        offset,
        ..Event::default()
    }
}

fn offs(offsets: &[u64]) -> Vec<Event> {
    offsets.iter().map(|&o| ev("web-1", 311, "A", o)).collect()
}

fn only(t: &Tracker) -> Score {
    let r = t.snapshot();
    assert_eq!(r.keys.len(), 1, "{r:?}");
    r.keys[0].score
}

/// (first, last, expected, seen, dropped, missing, duplicates, late)
type Counts = (u64, u64, u64, u64, u64, u64, u64, u64);

/// (host, pid, type, counts)
type Row = (String, u32, String, Counts);

fn counts(s: &Score) -> Counts {
    (
        s.first,
        s.last,
        s.expected,
        s.seen,
        s.dropped,
        s.missing,
        s.duplicates,
        s.late,
    )
}

#[test]
fn an_in_order_stream_scores_100() {
    let t = Tracker::new(Limits::default());
    t.delivered(&offs(&(0..5000).collect::<Vec<_>>()));
    let s = only(&t);
    assert_eq!(counts(&s), (0, 4999, 5000, 5000, 0, 0, 0, 0));
    assert_eq!(s.score, 100.0);
    assert_eq!(t.snapshot().overall.score, 100.0);
}

#[test]
fn gaps_are_missing_exactly() {
    let t = Tracker::new(Limits::default());
    // 10..=29 without 12, 13 and 20.
    let got: Vec<u64> = (10..30).filter(|o| ![12, 13, 20].contains(o)).collect();
    t.delivered(&offs(&got));
    let s = only(&t);
    assert_eq!(counts(&s), (10, 29, 20, 17, 0, 3, 0, 0));
    assert_eq!(s.score, 85.0);
}

#[test]
fn a_late_arrival_fills_its_gap() {
    let t = Tracker::new(Limits::default());
    t.delivered(&offs(&[0, 1, 2, 5, 6]));
    assert_eq!(only(&t).missing, 2);
    t.delivered(&offs(&[4]));
    assert_eq!(counts(&only(&t)), (0, 6, 7, 6, 0, 1, 0, 0));
    t.delivered(&offs(&[3]));
    let s = only(&t);
    assert_eq!(counts(&s), (0, 6, 7, 7, 0, 0, 0, 0));
    assert_eq!(s.score, 100.0);
}

#[test]
fn an_offset_below_the_first_widens_the_range() {
    let t = Tracker::new(Limits::default());
    t.delivered(&offs(&[100, 101]));
    t.delivered(&offs(&[98]));
    assert_eq!(counts(&only(&t)), (98, 101, 4, 3, 0, 1, 0, 0));
}

#[test]
fn duplicates_are_counted_apart() {
    let t = Tracker::new(Limits::default());
    t.delivered(&offs(&[0, 1, 1, 2, 2, 2, 3]));
    t.delivered(&offs(&[0]));
    let s = only(&t);
    assert_eq!(counts(&s), (0, 3, 4, 4, 0, 0, 4, 0));
    assert_eq!(s.score, 100.0);
}

#[test]
fn dropped_offsets_are_not_missing() {
    let t = Tracker::new(Limits::default());
    t.delivered(&offs(&[0, 2, 4, 6]));
    t.dropped(&offs(&[1, 3]));
    let s = only(&t);
    assert_eq!(counts(&s), (0, 6, 7, 4, 2, 1, 0, 0));
    assert_eq!(fmt(&s), "85.71");
    // Delivered after being dropped, or dropped twice: a duplicate either way.
    t.delivered(&offs(&[1]));
    t.dropped(&offs(&[3, 0]));
    assert_eq!(counts(&only(&t)), (0, 6, 7, 4, 2, 1, 3, 0));
}

fn fmt(s: &Score) -> String {
    let h = s.hundredths();
    format!("{}.{:02}", h / 100, h % 100)
}

#[test]
fn interleaved_keys_are_scored_apart_and_summed() {
    let t = Tracker::new(Limits::default());
    let mut batch = Vec::new();
    for o in 0..10u64 {
        if o != 3 {
            batch.push(ev("web-1", 311, "A", o));
        }
        batch.push(ev("web-1", 311, "B", o + 100));
        if o % 2 == 0 {
            batch.push(ev("web-2", 7, "A", o));
        }
        batch.push(ev("web-1", 312, "A", 5));
    }
    t.delivered(&batch);
    let r = t.snapshot();
    let got: Vec<(&str, u32, &str, Counts)> = r
        .keys
        .iter()
        .map(|k| (k.host.as_str(), k.pid, k.ty.as_str(), counts(&k.score)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("web-1", 311, "A", (0, 9, 10, 9, 0, 1, 0, 0)),
            ("web-1", 311, "B", (100, 109, 10, 10, 0, 0, 0, 0)),
            ("web-1", 312, "A", (5, 5, 1, 1, 0, 0, 9, 0)),
            ("web-2", 7, "A", (0, 8, 9, 5, 0, 4, 0, 0)),
        ]
    );
    let o = r.overall;
    assert_eq!(
        (o.first, o.last, o.expected, o.seen, o.missing, o.duplicates),
        (0, 109, 30, 25, 5, 9)
    );
    assert_eq!(fmt(&o), "83.33");
}

#[test]
fn offsets_far_ahead_keep_memory_bounded_and_settled_ranges_exact() {
    let window = 1024;
    let t = Tracker::new(Limits {
        max_keys: 100,
        window,
    });
    // A settled range with two gaps, then a jump of 2^40, then a few late
    // arrivals: into the settled range (too late to tell apart) and into
    // the new window (a gap filled).
    let first: Vec<u64> = (0..500).filter(|o| *o != 10 && *o != 400).collect();
    t.delivered(&offs(&first));
    let far = 1u64 << 40;
    t.delivered(&offs(&[far, far + 2]));
    t.delivered(&offs(&[10, far + 1]));
    let s = only(&t);
    assert_eq!(s.first, 0);
    assert_eq!(s.last, far + 2);
    assert_eq!(s.expected, far + 3);
    assert_eq!(s.seen, 498 + 3);
    assert_eq!(s.late, 1);
    assert_eq!(s.missing, far + 3 - 501);
    assert_eq!(s.duplicates, 0);
    // One key: the bitmap never holds more than the window.
    assert!(
        t.memory_bytes() < 4096 + window as usize / 8,
        "{} bytes",
        t.memory_bytes()
    );

    // Many jumps: still one window's worth.
    for i in 1..1000u64 {
        t.delivered(&offs(&[far + i * 5000, far + i * 5000 + 700]));
    }
    assert!(
        t.memory_bytes() < 4096 + window as usize / 8,
        "{} bytes",
        t.memory_bytes()
    );
}

#[test]
fn in_order_streams_with_a_gap_free_the_bitmap_again() {
    let t = Tracker::new(Limits {
        max_keys: 10,
        window: 65_536,
    });
    // A gap at 1 keeps 60,000 offsets of bitmap alive ...
    t.delivered(&offs(&[0]));
    t.delivered(&offs(&(2..60_000).collect::<Vec<_>>()));
    let busy = t.memory_bytes();
    assert!(busy > 7000, "{busy}");
    assert_eq!(only(&t).missing, 1);
    // ... until it is filled.
    t.delivered(&offs(&[1]));
    t.delivered(&offs(&(60_000..60_100).collect::<Vec<_>>()));
    assert!(t.memory_bytes() < busy / 2, "{}", t.memory_bytes());
    assert_eq!(only(&t).missing, 0);
}

#[test]
fn keys_beyond_the_limit_are_evicted_and_counted() {
    let t = Tracker::new(Limits {
        max_keys: 16,
        window: 1024,
    });
    for pid in 0..40u32 {
        t.delivered(&[ev("h", pid, "A", 0), ev("h", pid, "A", 2)]);
    }
    let r = t.snapshot();
    assert!(r.keys.len() <= 16, "{}", r.keys.len());
    assert_eq!(r.keys.len() as u64 + r.keys_evicted, 40);
    // The last pids are still tracked; the evicted ones still count overall.
    assert!(r.keys.iter().any(|k| k.pid == 39));
    assert_eq!(
        (r.overall.expected, r.overall.seen, r.overall.missing),
        (120, 80, 40)
    );
}

#[test]
fn prometheus_has_per_key_and_overall_families() {
    let t = Tracker::new(Limits::default());
    t.delivered(&[ev("we\"b", 1, "A", 0), ev("we\"b", 1, "A", 3)]);
    let mut out = String::new();
    t.prometheus(&mut out);
    assert!(
        out.contains("# TYPE dab_reliability_score gauge\n"),
        "{out}"
    );
    assert!(
        out.contains("dab_reliability_score{host=\"we\\\"b\",pid=\"1\",type=\"A\"} 50.0\n"),
        "{out}"
    );
    assert!(
        out.contains("dab_reliability_score_overall 50.0\n"),
        "{out}"
    );
    assert!(
        out.contains("dab_reliability_missing_events{host=\"we\\\"b\",pid=\"1\",type=\"A\"} 2\n"),
        "{out}"
    );
    assert!(
        out.contains("dab_reliability_duplicates_total{host=\"we\\\"b\",pid=\"1\",type=\"A\"} 0\n"),
        "{out}"
    );
    assert!(
        out.contains("dab_reliability_keys_evicted_total 0\n"),
        "{out}"
    );
}

#[test]
fn the_table_is_sorted_aligned_and_ends_with_overall() {
    let t = Tracker::new(Limits::default());
    t.delivered(&[
        ev("web-2", 7, "B", 0),
        ev("web-1", 311, "MyEvent", 0),
        ev("web-1", 311, "MyEvent", 2),
        ev("web-1", 311, "MyEvent", 2),
    ]);
    t.dropped(&[ev("web-2", 7, "B", 1)]);
    assert_eq!(
        t.snapshot().render_table(),
        "\
host     pid  type     first  last  expected  seen  dropped  missing  dup   score
web-1    311  MyEvent      0     2         3     2        0        1    1   66.66
web-2      7  B            0     1         2     1        1        0    0  100.00
overall                                    5     3        1        1    1   80.00
"
    );
}

#[test]
fn json_is_one_object_with_every_count() {
    let t = Tracker::new(Limits::default());
    t.delivered(&[ev("a\"\\\n", 1, "T", 0), ev("a\"\\\n", 1, "T", 2)]);
    assert_eq!(
        t.snapshot().to_json(),
        "{\"keys\":[{\"host\":\"a\\\"\\\\\\n\",\"pid\":1,\"type\":\"T\",\"first\":0,\"last\":2,\
\"expected\":3,\"seen\":2,\"dropped\":0,\"missing\":1,\"duplicates\":0,\"late\":0,\
\"score\":66.66666666666666}],\"overall\":{\"first\":0,\"last\":2,\"expected\":3,\"seen\":2,\
\"dropped\":0,\"missing\":1,\"duplicates\":0,\"late\":0,\"score\":66.66666666666666},\
\"keys_evicted\":0}"
    );
    assert_eq!(
        Tracker::new(Limits::default()).snapshot().to_json(),
        "{\"keys\":[],\"overall\":{\"first\":0,\"last\":0,\"expected\":0,\"seen\":0,\
\"dropped\":0,\"missing\":0,\"duplicates\":0,\"late\":0,\"score\":100.0},\"keys_evicted\":0}"
    );
}

#[test]
fn the_tracker_is_shared_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Tracker>();
    let t = std::sync::Arc::new(Tracker::new(Limits::default()));
    let handles: Vec<_> = (0..4u64)
        .map(|i| {
            let t = t.clone();
            std::thread::spawn(move || {
                for b in 0..50u64 {
                    let o: Vec<u64> = (0..20).map(|j| (b * 20 + j) * 4 + i).collect();
                    t.delivered(&offs(&o));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    assert_eq!(counts(&only(&t)), (0, 3999, 4000, 4000, 0, 0, 0, 0));
}

/// Offsets accounted for, then seen, dropped and duplicates.
type NaiveKey = (HashSet<u64>, u64, u64, u64);

/// The plain model: every offset remembered.
#[derive(Default)]
struct Naive {
    keys: BTreeMap<(String, u32, String), NaiveKey>,
}

impl Naive {
    fn record(&mut self, events: &[Event], delivered: bool) {
        for e in events {
            let k = (e.host.to_string(), e.pid, e.ty.to_string());
            let (set, seen, dropped, dups) = self.keys.entry(k).or_default();
            if set.insert(e.offset) {
                if delivered {
                    *seen += 1;
                } else {
                    *dropped += 1;
                }
            } else {
                *dups += 1;
            }
        }
    }

    fn scores(&self) -> Vec<Row> {
        self.keys
            .iter()
            .map(|((h, p, t), (set, seen, dropped, dups))| {
                let first = *set.iter().min().expect("non-empty");
                let last = *set.iter().max().expect("non-empty");
                let expected = last - first + 1;
                let missing = expected - set.len() as u64;
                (
                    h.clone(),
                    *p,
                    t.clone(),
                    (first, last, expected, *seen, *dropped, missing, *dups, 0),
                )
            })
            .collect()
    }
}

fn ours(r: &Report) -> Vec<Row> {
    r.keys
        .iter()
        .map(|k| (k.host.clone(), k.pid, k.ty.clone(), counts(&k.score)))
        .collect()
}

/// One arrival: key index, offset, delivered (or dropped), batch break after.
type Arrival = (usize, u64, bool, bool);

/// Offsets 0..len per key with some lost, some duplicated, some dropped on
/// purpose, then shuffled (fully, or only locally) and cut into batches.
fn arrivals(max_len: u64, local: bool) -> impl Strategy<Value = Vec<Arrival>> {
    let one_key = (1..max_len, any::<u64>()).prop_flat_map(move |(len, start)| {
        let start = start % 1_000_000;
        proptest::collection::vec((0u8..10, any::<bool>()), len as usize).prop_map(move |fate| {
            let mut out = Vec::new();
            for (i, (f, brk)) in fate.into_iter().enumerate() {
                let o = start + i as u64;
                match f {
                    0 => {}                                             // lost
                    1 => out.extend([(o, true, brk), (o, true, brk)]),  // duplicated
                    2 => out.push((o, false, brk)),                     // dropped on purpose
                    3 => out.extend([(o, false, brk), (o, true, brk)]), // dropped, then delivered
                    _ => out.push((o, true, brk)),
                }
            }
            out
        })
    });
    (proptest::collection::vec(one_key, 1..4), any::<u64>()).prop_map(move |(keys, seed)| {
        let mut all: Vec<Arrival> = keys
            .into_iter()
            .enumerate()
            .flat_map(|(k, v)| v.into_iter().map(move |(o, d, b)| (k, o, d, b)))
            .collect();
        // A seeded Fisher-Yates (or a bounded-distance shuffle), so the
        // case shrinks through the seed.
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let n = all.len();
        for i in (1..n).rev() {
            let lo = if local { i.saturating_sub(8) } else { 0 };
            let j = lo + (next() as usize) % (i - lo + 1);
            all.swap(i, j);
        }
        all
    })
}

fn feed(t: &Tracker, naive: &mut Naive, arrivals: &[Arrival]) {
    const HOSTS: [(&str, u32, &str); 3] = [("h1", 1, "A"), ("h1", 1, "B"), ("h2", 9, "A")];
    let mut batch: Vec<Event> = Vec::new();
    let mut delivered = true;
    let flush = |batch: &mut Vec<Event>, delivered: bool, naive: &mut Naive| {
        if delivered {
            t.delivered(batch);
        } else {
            t.dropped(batch);
        }
        naive.record(batch, delivered);
        batch.clear();
    };
    for &(k, o, d, brk) in arrivals {
        if d != delivered {
            flush(&mut batch, delivered, naive);
            delivered = d;
        }
        let (h, p, ty) = HOSTS[k];
        batch.push(ev(h, p, ty, o));
        if brk {
            flush(&mut batch, delivered, naive);
        }
    }
    flush(&mut batch, delivered, naive);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// With a window wider than every key's range, the tracker is the model.
    #[test]
    fn matches_the_hashset_model_within_the_window(a in arrivals(600, false)) {
        let t = Tracker::new(Limits { max_keys: 16, window: 1024 });
        let mut naive = Naive::default();
        feed(&t, &mut naive, &a);
        let r = t.snapshot();
        prop_assert_eq!(ours(&r), naive.scores());
        let sum: u64 = naive.scores().iter().map(|s| s.3 .5).sum();
        prop_assert_eq!(r.overall.missing, sum);
    }

    /// With a small window: never a false "new" or a false duplicate; what
    /// cannot be told apart is `late`; first and last are always exact; and
    /// arrivals that stay within the window of the highest offset so far
    /// are exact.
    #[test]
    fn a_small_window_is_conservative_and_exact_within_reach(
        a in arrivals(2000, true),
        full in arrivals(2000, false),
    ) {
        for a in [a, full] {
            let window = 256u64;
            let t = Tracker::new(Limits { max_keys: 16, window });
            let mut naive = Naive::default();
            feed(&t, &mut naive, &a);
            let mut max: BTreeMap<usize, u64> = BTreeMap::new();
            let mut within = true;
            for &(k, o, _, _) in &a {
                let m = max.entry(k).or_insert(o);
                if o + (window - 128) < *m {
                    within = false;
                }
                *m = (*m).max(o);
            }
            let got = ours(&t.snapshot());
            let want = naive.scores();
            prop_assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                let (gc, wc) = (g.3, w.3);
                prop_assert_eq!((gc.0, gc.1, gc.2), (wc.0, wc.1, wc.2), "range of {:?}", g);
                prop_assert!(gc.3 <= wc.3 && gc.4 <= wc.4 && gc.6 <= wc.6, "{:?} vs {:?}", g, w);
                prop_assert_eq!(gc.3 + gc.4 + gc.6 + gc.7, wc.3 + wc.4 + wc.6, "every arrival counted once");
                prop_assert_eq!(gc.3 + gc.4 + gc.5, gc.2, "seen + dropped + missing = expected");
            }
            if within {
                prop_assert_eq!(got, want);
            }
        }
    }
}
