//! Values in and out: what the caller hands the engine per aggregate per
//! event ([`Value`], borrowed), and what a result carries ([`AggValue`]).

/// One aggregate's input for one event. `Absent` is skipped by every
/// aggregate but `Count` (like SQL's NULL).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Absent,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
}

/// A value kept by `First`/`Last` and returned in results.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
}

/// One aggregate's result.
#[derive(Debug, Clone, PartialEq)]
pub enum AggValue {
    /// No input value (e.g. `Sum` of nothing, `Min` of only absent values).
    Null,
    /// `Count` and `CountIf`.
    Count(u64),
    /// `Sum`, `Min`, `Max` of integers; `First`/`Last` of an integer.
    Int(i64),
    /// `Avg`; `Sum`, `Min`, `Max` once a float is involved.
    Float(f64),
    Bool(bool),
    Str(String),
    Bytes(Vec<u8>),
    /// `Distinct`: `exact` is false once the count went past
    /// [`crate::DISTINCT_EXACT_LIMIT`] and became a HyperLogLog estimate.
    Distinct {
        count: u64,
        exact: bool,
    },
    /// `Percentile`: one value per requested percentile, in the order
    /// given (`None` when no number was seen).
    Percentiles(Vec<Option<f64>>),
}

impl From<Scalar> for AggValue {
    fn from(s: Scalar) -> Self {
        match s {
            Scalar::Bool(b) => AggValue::Bool(b),
            Scalar::Int(i) => AggValue::Int(i),
            Scalar::Float(f) => AggValue::Float(f),
            Scalar::Str(s) => AggValue::Str(s),
            Scalar::Bytes(b) => AggValue::Bytes(b),
        }
    }
}

impl Value<'_> {
    /// The value as a number, if it is one and not NaN.
    pub(crate) fn number(&self) -> Option<Num> {
        match *self {
            Value::Int(i) => Some(Num::Int(i)),
            Value::Float(f) if !f.is_nan() => Some(Num::Float(f)),
            _ => None,
        }
    }

    pub(crate) fn to_scalar(self) -> Option<Scalar> {
        Some(match self {
            Value::Absent => return None,
            Value::Bool(b) => Scalar::Bool(b),
            Value::Int(i) => Scalar::Int(i),
            Value::Float(f) => Scalar::Float(f),
            Value::Str(s) => Scalar::Str(s.to_owned()),
            Value::Bytes(b) => Scalar::Bytes(b.to_vec()),
        })
    }

    /// The canonical bytes `Distinct` counts: numbers by value (1 and 1.0
    /// are one value, -0.0 is 0, every NaN is one value), strings and byte
    /// strings apart from each other and from numbers.
    pub(crate) fn canonical(&self, out: &mut Vec<u8>) -> bool {
        out.clear();
        match *self {
            Value::Absent => return false,
            Value::Bool(b) => out.extend_from_slice(&[3, u8::from(b)]),
            Value::Int(i) => {
                out.push(1);
                out.extend_from_slice(&i.to_le_bytes());
            }
            Value::Float(f) => {
                // Exactly integral floats within i64 range are stored as ints.
                // 2^63 is exact in f64; [-2^63, 2^63) is the i64 range.
                const TWO_63: f64 = 9_223_372_036_854_775_808.0;
                if f.fract() == 0.0 && (-TWO_63..TWO_63).contains(&f) {
                    out.push(1);
                    out.extend_from_slice(&(f as i64).to_le_bytes());
                } else {
                    let bits = if f.is_nan() {
                        f64::NAN.to_bits()
                    } else {
                        f.to_bits()
                    };
                    out.push(2);
                    out.extend_from_slice(&bits.to_le_bytes());
                }
            }
            Value::Str(s) => {
                out.push(4);
                out.extend_from_slice(s.as_bytes());
            }
            Value::Bytes(b) => {
                out.push(5);
                out.extend_from_slice(b);
            }
        }
        true
    }
}

/// A number as given: integers stay integers until a float meets them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    pub(crate) fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    /// Strictly less (neither side is NaN).
    pub(crate) fn lt(self, other: Num) -> bool {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => a < b,
            (a, b) => a.as_f64() < b.as_f64(),
        }
    }

    /// Adds without panicking: an i64 overflow widens to f64.
    pub(crate) fn add(self, other: Num) -> Num {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => match a.checked_add(b) {
                Some(s) => Num::Int(s),
                None => Num::Float(a as f64 + b as f64),
            },
            (a, b) => Num::Float(a.as_f64() + b.as_f64()),
        }
    }

    pub(crate) fn value(self) -> AggValue {
        match self {
            Num::Int(i) => AggValue::Int(i),
            Num::Float(f) => AggValue::Float(f),
        }
    }
}
