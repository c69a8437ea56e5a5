//! The percentile sketch: DDSketch-style logarithmic buckets (Masson, Rim,
//! Lee, "DDSketch: a fast and fully-mergeable quantile sketch with
//! relative-error guarantees", VLDB 2019).
//!
//! A positive value `x` goes to bucket `ceil(log_gamma(x))` with
//! `gamma = (1 + a) / (1 - a)`, `a` = [`PERCENTILE_RELATIVE_ERROR`] (1 %);
//! negative values go to a mirrored store, values with `|x|` below
//! [`MIN_MAGNITUDE`] count as zero. The quantile `p` of `n` values is the
//! value at rank `floor(p * (n - 1))` (0-based, in sorted order); the sketch
//! returns a value within 1 % (relative) of it. Non-finite values are
//! skipped. Each sign keeps at most [`MAX_BUCKETS`] buckets: past that the
//! buckets nearest zero are folded together (the high quantiles keep their
//! guarantee, which is what latency percentiles need); 2,048 buckets at 1 %
//! span a ratio of 1e17 between the smallest and largest magnitude, so the
//! folding happens only for data spanning more than that. Merging two
//! sketches adds bucket counts, so a merged sketch is the sketch of the
//! union.

use std::collections::BTreeMap;

use crate::codec::{Reader, Writer};
use crate::DecodeError;

/// The documented relative error of a percentile.
pub const PERCENTILE_RELATIVE_ERROR: f64 = 0.01;
/// Magnitudes below this count as zero.
pub const MIN_MAGNITUDE: f64 = 1e-9;
/// Buckets kept per sign.
pub const MAX_BUCKETS: usize = 2048;

fn gamma_ln() -> f64 {
    let a = PERCENTILE_RELATIVE_ERROR;
    ((1.0 + a) / (1.0 - a)).ln()
}

/// A mergeable relative-error quantile sketch.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Sketch {
    pos: BTreeMap<i32, u64>,
    neg: BTreeMap<i32, u64>,
    zero: u64,
    count: u64,
}

fn index(mag: f64) -> i32 {
    // mag is finite and >= MIN_MAGNITUDE, so the log is within +-800 / 0.02.
    (mag.ln() / gamma_ln()).ceil() as i32
}

fn value_of(idx: i32) -> f64 {
    // The middle of bucket (gamma^(i-1), gamma^i] in the relative sense.
    let g = gamma_ln();
    2.0 * (f64::from(idx) * g).exp() / (1.0 + g.exp())
}

fn fold(store: &mut BTreeMap<i32, u64>) {
    while store.len() > MAX_BUCKETS {
        if let Some((_, c)) = store.pop_first() {
            if let Some(mut e) = store.first_entry() {
                let v = e.get_mut();
                *v = v.saturating_add(c);
            }
        }
    }
}

impl Sketch {
    pub(crate) fn insert(&mut self, x: f64) {
        if !x.is_finite() {
            return;
        }
        // Saturating throughout: a restored sketch may hold any counts.
        self.count = self.count.saturating_add(1);
        let mag = x.abs();
        if mag < MIN_MAGNITUDE {
            self.zero = self.zero.saturating_add(1);
        } else {
            let store = if x > 0.0 {
                &mut self.pos
            } else {
                &mut self.neg
            };
            let c = store.entry(index(mag)).or_insert(0);
            *c = c.saturating_add(1);
            fold(store);
        }
    }

    pub(crate) fn merge(&mut self, other: &Sketch) {
        for (mine, theirs) in [(&mut self.pos, &other.pos), (&mut self.neg, &other.neg)] {
            for (k, c) in theirs {
                let e = mine.entry(*k).or_insert(0);
                *e = e.saturating_add(*c);
            }
            fold(mine);
        }
        self.zero = self.zero.saturating_add(other.zero);
        self.count = self.count.saturating_add(other.count);
    }

    /// The `p` quantile (0 <= p <= 1), or `None` for an empty sketch.
    pub(crate) fn quantile(&self, p: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (p.clamp(0.0, 1.0) * (self.count - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        // Ascending order: the most negative first.
        for (k, c) in self.neg.iter().rev() {
            seen = seen.saturating_add(*c);
            if seen > rank {
                return Some(-value_of(*k));
            }
        }
        seen = seen.saturating_add(self.zero);
        if seen > rank {
            return Some(0.0);
        }
        for (k, c) in &self.pos {
            seen = seen.saturating_add(*c);
            if seen > rank {
                return Some(value_of(*k));
            }
        }
        self.pos.keys().next_back().map(|k| value_of(*k))
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.var(self.zero);
        for store in [&self.pos, &self.neg] {
            w.var(store.len() as u64);
            for (k, c) in store {
                w.i32(*k);
                w.var(*c);
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let zero = r.var("sketch zero count")?;
        let mut count = zero;
        let mut stores = [BTreeMap::new(), BTreeMap::new()];
        for store in &mut stores {
            let n = r.len("sketch bucket count")?;
            for _ in 0..n {
                let at = r.pos();
                let k = r.i32("sketch bucket index")?;
                let c = r.var("sketch bucket count")?;
                count = count.checked_add(c).ok_or(DecodeError::Invalid {
                    what: "sketch bucket count",
                    at,
                })?;
                store.insert(k, c);
            }
        }
        let [pos, neg] = stores;
        Ok(Sketch {
            pos,
            neg,
            zero,
            count,
        })
    }
}
