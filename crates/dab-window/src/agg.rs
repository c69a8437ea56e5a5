//! The state of one aggregate in one (window, group) entry: how it takes a
//! value, merges with another (when sessions merge), gives its result, and
//! how it is written to and read from bytes.

use std::collections::HashSet;

use foldhash::fast::RandomState;

use crate::codec::{Reader, Writer};
use crate::hash::hash64;
use crate::hll::Hll;
use crate::sketch::Sketch;
use crate::value::{AggValue, Num, Scalar, Value};
use crate::{AggFn, DecodeError};

/// `Distinct` counts exactly up to this many values per (window, group),
/// then switches to a HyperLogLog estimate.
pub const DISTINCT_EXACT_LIMIT: usize = 10_000;

/// A value with the event time and arrival sequence that rank it for
/// `First` and `Last`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stamped {
    ts: i64,
    seq: u64,
    v: Scalar,
}

#[derive(Debug, Clone)]
pub(crate) enum Distinct {
    Exact(HashSet<Box<[u8]>, RandomState>),
    Approx(Hll),
}

impl Distinct {
    fn insert(&mut self, canon: &[u8]) {
        match self {
            Distinct::Exact(set) => {
                if !set.contains(canon) {
                    set.insert(canon.into());
                    if set.len() > DISTINCT_EXACT_LIMIT {
                        let mut hll = Hll::new();
                        for v in set.iter() {
                            hll.insert_hash(hash64(v));
                        }
                        *self = Distinct::Approx(hll);
                    }
                }
            }
            Distinct::Approx(hll) => hll.insert_hash(hash64(canon)),
        }
    }

    fn merge(&mut self, other: Distinct) {
        match other {
            Distinct::Exact(set) => {
                for v in set {
                    self.insert(&v);
                }
            }
            Distinct::Approx(mut hll) => {
                match self {
                    Distinct::Exact(set) => {
                        for v in set.iter() {
                            hll.insert_hash(hash64(v));
                        }
                    }
                    Distinct::Approx(mine) => hll.merge(mine),
                }
                *self = Distinct::Approx(hll);
            }
        }
    }
}

/// One aggregate's state.
#[derive(Debug, Clone)]
pub(crate) enum AggState {
    Count(u64),
    CountIf(u64),
    Sum(Option<Num>),
    Min(Option<Num>),
    Max(Option<Num>),
    Avg { sum: f64, n: u64 },
    First(Option<Stamped>),
    Last(Option<Stamped>),
    Distinct(Distinct),
    Percentile(Box<Sketch>),
}

fn keep_if(cur: &mut Option<Num>, x: Num, better: impl Fn(Num, Num) -> bool) {
    match cur {
        Some(c) if !better(x, *c) => {}
        _ => *cur = Some(x),
    }
}

/// `First` keeps the candidate that is earlier; `Last` the one that is
/// later or equal (a later arrival wins ties).
fn stamped_better(first: bool, new: &Stamped, cur: &Stamped) -> bool {
    let (a, b) = ((new.ts, new.seq), (cur.ts, cur.seq));
    if first {
        a < b
    } else {
        a > b
    }
}

fn take_stamped(first: bool, cur: &mut Option<Stamped>, v: &Value<'_>, ts: i64, seq: u64) {
    let better = cur.as_ref().is_none_or(|c| {
        let (a, b) = ((ts, seq), (c.ts, c.seq));
        if first {
            a < b
        } else {
            a > b
        }
    });
    if better {
        if let Some(s) = v.to_scalar() {
            *cur = Some(Stamped { ts, seq, v: s });
        }
    }
}

fn keep_stamped(first: bool, cur: &mut Option<Stamped>, new: Stamped) {
    match cur {
        Some(c) if !stamped_better(first, &new, c) => {}
        _ => *cur = Some(new),
    }
}

impl AggState {
    pub(crate) fn new(f: &AggFn) -> Self {
        match f {
            AggFn::Count => AggState::Count(0),
            AggFn::CountIf => AggState::CountIf(0),
            AggFn::Sum => AggState::Sum(None),
            AggFn::Min => AggState::Min(None),
            AggFn::Max => AggState::Max(None),
            AggFn::Avg => AggState::Avg { sum: 0.0, n: 0 },
            AggFn::First => AggState::First(None),
            AggFn::Last => AggState::Last(None),
            AggFn::Distinct => AggState::Distinct(Distinct::Exact(HashSet::default())),
            AggFn::Percentile(_) => AggState::Percentile(Box::default()),
        }
    }

    /// Takes one event's value; `scratch` is a reusable buffer.
    pub(crate) fn update(&mut self, v: &Value<'_>, ts: i64, seq: u64, scratch: &mut Vec<u8>) {
        match self {
            AggState::Count(n) => *n = n.saturating_add(1),
            AggState::CountIf(n) => {
                if *v == Value::Bool(true) {
                    *n = n.saturating_add(1);
                }
            }
            AggState::Sum(s) => {
                if let Some(x) = v.number() {
                    *s = Some(s.map_or(x, |s| s.add(x)));
                }
            }
            AggState::Min(m) => {
                if let Some(x) = v.number() {
                    keep_if(m, x, |a, b| a.lt(b));
                }
            }
            AggState::Max(m) => {
                if let Some(x) = v.number() {
                    keep_if(m, x, |a, b| b.lt(a));
                }
            }
            AggState::Avg { sum, n } => {
                if let Some(x) = v.number() {
                    *sum += x.as_f64();
                    *n = n.saturating_add(1);
                }
            }
            AggState::First(cur) => take_stamped(true, cur, v, ts, seq),
            AggState::Last(cur) => take_stamped(false, cur, v, ts, seq),
            AggState::Distinct(d) => {
                if v.canonical(scratch) {
                    d.insert(scratch);
                }
            }
            AggState::Percentile(sk) => {
                if let Some(x) = v.number() {
                    sk.insert(x.as_f64());
                }
            }
        }
    }

    /// Folds `other` (the same function) into `self`.
    pub(crate) fn merge(&mut self, other: AggState) {
        match (self, other) {
            (AggState::Count(a), AggState::Count(b))
            | (AggState::CountIf(a), AggState::CountIf(b)) => *a = a.saturating_add(b),
            (AggState::Sum(a), AggState::Sum(Some(b))) => *a = Some(a.map_or(b, |a| a.add(b))),
            (AggState::Min(a), AggState::Min(Some(b))) => keep_if(a, b, |x, y| x.lt(y)),
            (AggState::Max(a), AggState::Max(Some(b))) => keep_if(a, b, |x, y| y.lt(x)),
            (AggState::Avg { sum, n }, AggState::Avg { sum: s2, n: n2 }) => {
                *sum += s2;
                *n = n.saturating_add(n2);
            }
            (AggState::First(a), AggState::First(Some(b))) => keep_stamped(true, a, b),
            (AggState::Last(a), AggState::Last(Some(b))) => keep_stamped(false, a, b),
            (AggState::Distinct(a), AggState::Distinct(b)) => a.merge(b),
            (AggState::Percentile(a), AggState::Percentile(b)) => a.merge(&b),
            _ => {}
        }
    }

    pub(crate) fn result(&self, f: &AggFn) -> AggValue {
        match self {
            AggState::Count(n) | AggState::CountIf(n) => AggValue::Count(*n),
            AggState::Sum(x) | AggState::Min(x) | AggState::Max(x) => {
                x.map_or(AggValue::Null, Num::value)
            }
            AggState::Avg { sum, n } => {
                if *n == 0 {
                    AggValue::Null
                } else {
                    AggValue::Float(*sum / *n as f64)
                }
            }
            AggState::First(s) | AggState::Last(s) => {
                s.as_ref().map_or(AggValue::Null, |s| s.v.clone().into())
            }
            AggState::Distinct(Distinct::Exact(set)) => AggValue::Distinct {
                count: set.len() as u64,
                exact: true,
            },
            AggState::Distinct(Distinct::Approx(h)) => AggValue::Distinct {
                count: h.estimate(),
                exact: false,
            },
            AggState::Percentile(sk) => match f {
                AggFn::Percentile(ps) => {
                    AggValue::Percentiles(ps.iter().map(|p| sk.quantile(*p)).collect())
                }
                _ => AggValue::Null,
            },
        }
    }

    pub(crate) fn encode_tag(&self) -> u8 {
        self.tag()
    }

    fn tag(&self) -> u8 {
        match self {
            AggState::Count(_) => 1,
            AggState::CountIf(_) => 2,
            AggState::Sum(_) => 3,
            AggState::Min(_) => 4,
            AggState::Max(_) => 5,
            AggState::Avg { .. } => 6,
            AggState::First(_) => 7,
            AggState::Last(_) => 8,
            AggState::Distinct(_) => 9,
            AggState::Percentile(_) => 10,
        }
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.u8(self.tag());
        match self {
            AggState::Count(n) | AggState::CountIf(n) => w.var(*n),
            AggState::Sum(x) | AggState::Min(x) | AggState::Max(x) => encode_num(w, *x),
            AggState::Avg { sum, n } => {
                w.f64(*sum);
                w.var(*n);
            }
            AggState::First(s) | AggState::Last(s) => match s {
                None => w.u8(0),
                Some(s) => {
                    w.u8(1);
                    w.i64(s.ts);
                    w.u64(s.seq);
                    encode_scalar(w, &s.v);
                }
            },
            AggState::Distinct(Distinct::Exact(set)) => {
                w.u8(0);
                let mut vals: Vec<&Box<[u8]>> = set.iter().collect();
                vals.sort_unstable();
                w.var(vals.len() as u64);
                for v in vals {
                    w.bytes(v);
                }
            }
            AggState::Distinct(Distinct::Approx(h)) => {
                w.u8(1);
                h.encode(w);
            }
            AggState::Percentile(sk) => sk.encode(w),
        }
    }

    /// Reads one state, which must be of function `f`.
    pub(crate) fn decode(r: &mut Reader<'_>, f: &AggFn) -> Result<Self, DecodeError> {
        let at = r.pos();
        let tag = r.u8("aggregate tag")?;
        let fresh = AggState::new(f);
        if tag != fresh.tag() {
            return Err(DecodeError::Invalid {
                what: "aggregate tag (the aggregate list changed?)",
                at,
            });
        }
        Ok(match fresh {
            AggState::Count(_) => AggState::Count(r.var("count")?),
            AggState::CountIf(_) => AggState::CountIf(r.var("count")?),
            AggState::Sum(_) => AggState::Sum(decode_num(r)?),
            AggState::Min(_) => AggState::Min(decode_num(r)?),
            AggState::Max(_) => AggState::Max(decode_num(r)?),
            AggState::Avg { .. } => AggState::Avg {
                sum: r.f64("avg sum")?,
                n: r.var("avg count")?,
            },
            AggState::First(_) => AggState::First(decode_stamped(r)?),
            AggState::Last(_) => AggState::Last(decode_stamped(r)?),
            AggState::Distinct(_) => {
                let at = r.pos();
                match r.u8("distinct kind")? {
                    0 => {
                        let n = r.len("distinct size")?;
                        let mut set = HashSet::with_capacity_and_hasher(n, RandomState::default());
                        for _ in 0..n {
                            set.insert(r.bytes("distinct value")?.into());
                        }
                        AggState::Distinct(Distinct::Exact(set))
                    }
                    1 => AggState::Distinct(Distinct::Approx(Hll::decode(r)?)),
                    _ => {
                        return Err(DecodeError::Invalid {
                            what: "distinct kind",
                            at,
                        })
                    }
                }
            }
            AggState::Percentile(_) => AggState::Percentile(Box::new(Sketch::decode(r)?)),
        })
    }
}

fn encode_num(w: &mut Writer, x: Option<Num>) {
    match x {
        None => w.u8(0),
        Some(Num::Int(i)) => {
            w.u8(1);
            w.i64(i);
        }
        Some(Num::Float(f)) => {
            w.u8(2);
            w.f64(f);
        }
    }
}

fn decode_num(r: &mut Reader<'_>) -> Result<Option<Num>, DecodeError> {
    let at = r.pos();
    Ok(match r.u8("number kind")? {
        0 => None,
        1 => Some(Num::Int(r.i64("integer")?)),
        2 => Some(Num::Float(r.f64("float")?)),
        _ => {
            return Err(DecodeError::Invalid {
                what: "number kind",
                at,
            })
        }
    })
}

fn encode_scalar(w: &mut Writer, v: &Scalar) {
    match v {
        Scalar::Bool(b) => {
            w.u8(1);
            w.u8(u8::from(*b));
        }
        Scalar::Int(i) => {
            w.u8(2);
            w.i64(*i);
        }
        Scalar::Float(f) => {
            w.u8(3);
            w.f64(*f);
        }
        Scalar::Str(s) => {
            w.u8(4);
            w.bytes(s.as_bytes());
        }
        Scalar::Bytes(b) => {
            w.u8(5);
            w.bytes(b);
        }
    }
}

fn decode_stamped(r: &mut Reader<'_>) -> Result<Option<Stamped>, DecodeError> {
    let at = r.pos();
    match r.u8("first/last presence")? {
        0 => return Ok(None),
        1 => {}
        _ => {
            return Err(DecodeError::Invalid {
                what: "first/last presence",
                at,
            })
        }
    }
    let ts = r.i64("first/last time")?;
    let seq = r.u64("first/last sequence")?;
    let at = r.pos();
    let v = match r.u8("scalar kind")? {
        1 => Scalar::Bool(r.u8("bool")? != 0),
        2 => Scalar::Int(r.i64("integer")?),
        3 => Scalar::Float(r.f64("float")?),
        4 => {
            let at = r.pos();
            let b = r.bytes("string")?;
            Scalar::Str(
                std::str::from_utf8(b)
                    .map_err(|_| DecodeError::Invalid {
                        what: "string (not UTF-8)",
                        at,
                    })?
                    .to_owned(),
            )
        }
        5 => Scalar::Bytes(r.bytes("bytes")?.to_vec()),
        _ => {
            return Err(DecodeError::Invalid {
                what: "scalar kind",
                at,
            })
        }
    };
    Ok(Some(Stamped { ts, seq, v }))
}
