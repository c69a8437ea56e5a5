//! Evaluates a checked `Filter` condition on an event. The planner already
//! type-checked it, so evaluation cannot fail: a missing tag compares equal
//! to nothing (`==` false, `!=` true, ordering false; SPEC section 1), and
//! so does an absent payload field, a null, an object or a list, or a
//! payload that is not a JSON object (SPEC section 7). Numbers compare as
//! numbers, integer or float.

use std::cmp::Ordering;

use dab_api::payload::Scalar;
use dab_api::Event;
use dab_plan::model::{CmpOp, Field, Operand, Predicate, Value};

/// A value read from an event or a literal, borrowed where possible.
enum Val<'a> {
    Int(i64),
    Float(f64),
    Bytes(&'a [u8]),
    Bool(bool),
    Missing,
}

fn read<'a>(e: &'a Event, o: &'a Operand) -> Val<'a> {
    match o {
        // A payload value is read where it is compared (`with_payload`).
        Operand::Payload(_) => Val::Missing,
        Operand::Field(f) => match f {
            Field::Timestamp => Val::Int(e.timestamp),
            Field::Host => Val::Bytes(e.host.as_bytes()),
            Field::Type => Val::Bytes(e.ty.as_bytes()),
            Field::Offset => Val::Int(i64::try_from(e.offset).unwrap_or(i64::MAX)),
            Field::Pid => Val::Int(i64::from(e.pid)),
            Field::Message => Val::Bytes(&e.message),
        },
        Operand::Tag(k) => e.tag(k).map_or(Val::Missing, |v| Val::Bytes(v.as_bytes())),
        Operand::Value(v) => literal(v),
    }
}

/// Calls `f` with the value of `o`; a payload field is read from the
/// event's payload, indexed at most once per event.
fn with_operand<R>(e: &Event, o: &Operand, f: impl FnOnce(Val<'_>) -> R) -> R {
    match o {
        Operand::Payload(keys) => match e.payload.field(&e.message, keys) {
            None | Some(Scalar::Other) => f(Val::Missing),
            Some(Scalar::Int(i)) => f(Val::Int(i)),
            Some(Scalar::Float(x)) => f(Val::Float(x)),
            Some(Scalar::Bool(b)) => f(Val::Bool(b)),
            Some(Scalar::Str(s)) => f(Val::Bytes(s.as_bytes())),
        },
        _ => f(read(e, o)),
    }
}

fn literal(v: &Value) -> Val<'_> {
    match v {
        Value::Int(i) => Val::Int(*i),
        Value::Float(f) => Val::Float(*f),
        Value::Str(s) => Val::Bytes(s.as_bytes()),
        Value::Bool(b) => Val::Bool(*b),
    }
}

fn order(a: &Val<'_>, b: &Val<'_>) -> Option<Ordering> {
    match (a, b) {
        (Val::Int(x), Val::Int(y)) => Some(x.cmp(y)),
        (Val::Float(x), Val::Float(y)) => x.partial_cmp(y),
        // Payload numbers meet literals of either kind.
        #[allow(clippy::cast_precision_loss)]
        (Val::Int(x), Val::Float(y)) => (*x as f64).partial_cmp(y),
        #[allow(clippy::cast_precision_loss)]
        (Val::Float(x), Val::Int(y)) => x.partial_cmp(&(*y as f64)),
        (Val::Bytes(x), Val::Bytes(y)) => Some(x.cmp(y)),
        (Val::Bool(x), Val::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// The value of `o` for `e` as a tag's text (`SetTag`): a string as
/// itself, a number in decimal, a boolean as `true`/`false`; `None` when
/// the field has no value (or is not UTF-8).
pub fn value_text(e: &Event, o: &Operand) -> Option<String> {
    with_operand(e, o, |v| match v {
        Val::Bytes(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        Val::Int(i) => Some(i.to_string()),
        Val::Float(x) => Some(x.to_string()),
        Val::Bool(b) => Some(b.to_string()),
        Val::Missing => None,
    })
}

/// The value of `o` for `e` as a table key (`Enrich`): a string as
/// itself, a number in decimal (as `dab_plan::table::number_text` writes a
/// row's key); `None` for no value, a boolean, or text that is not UTF-8.
pub fn key_text(e: &Event, o: &Operand) -> Option<String> {
    with_operand(e, o, |v| match v {
        Val::Bytes(b) => std::str::from_utf8(b).ok().map(str::to_owned),
        Val::Int(i) => Some(i.to_string()),
        Val::Float(x) => Some(x.to_string()),
        Val::Bool(_) | Val::Missing => None,
    })
}

/// Appends the bytes of the key `keys` make for `e` to `out`, as
/// `rendezvous.rs` documents: each value then 0x1F; a missing one 0x1E.
pub fn key_bytes(e: &Event, keys: &[Operand], out: &mut Vec<u8>) {
    use std::io::Write as _;
    for k in keys {
        with_operand(e, k, |v| match v {
            Val::Bytes(b) => out.extend_from_slice(b),
            Val::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Val::Float(x) => {
                let _ = write!(out, "{x}");
            }
            Val::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
            Val::Missing => out.push(0x1E),
        });
        out.push(0x1F);
    }
}

/// An operand's value, owned: for a consumer that holds several at once
/// (a window's group key and aggregate inputs). Reused across events so
/// that text does not allocate each time.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Owned {
    #[default]
    Missing,
    Int(i64),
    Float(f64),
    Bool(bool),
    Text(Vec<u8>),
}

/// Reads `o` of `e` into `out`, reusing its text buffer.
pub fn read_into(e: &Event, o: &Operand, out: &mut Owned) {
    with_operand(e, o, |v| match v {
        Val::Int(i) => *out = Owned::Int(i),
        Val::Float(x) => *out = Owned::Float(x),
        Val::Bool(b) => *out = Owned::Bool(b),
        Val::Missing => *out = Owned::Missing,
        Val::Bytes(b) => match out {
            Owned::Text(buf) => {
                buf.clear();
                buf.extend_from_slice(b);
            }
            _ => *out = Owned::Text(b.to_vec()),
        },
    });
}

/// Whether `op` holds for an ordering; `None` (a missing or incomparable
/// value) equals nothing.
fn holds(op: CmpOp, ord: Option<Ordering>) -> bool {
    match op {
        CmpOp::Eq => ord == Some(Ordering::Equal),
        CmpOp::Ne => ord != Some(Ordering::Equal),
        CmpOp::Lt => ord == Some(Ordering::Less),
        CmpOp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
        CmpOp::Gt => ord == Some(Ordering::Greater),
        CmpOp::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
    }
}

/// A condition prepared once for the events of many batches (`Filter`,
/// `Route`): the common comparisons, an envelope field or a tag against a
/// literal of its kind, are resolved ahead, so that testing one is a
/// match and a compare. It gives what [`eval`] gives (a test holds them
/// to it); everything else is left to [`eval`].
#[derive(Debug, Clone)]
pub enum Prepared {
    Const(bool),
    Not(Box<Prepared>),
    And(Box<Prepared>, Box<Prepared>),
    Or(Box<Prepared>, Box<Prepared>),
    /// `host`, `type` or `message` against a string.
    Text {
        field: Field,
        op: CmpOp,
        lit: Box<[u8]>,
    },
    /// `tags.k` against a string.
    Tag {
        key: Box<str>,
        op: CmpOp,
        lit: Box<[u8]>,
    },
    /// `timestamp`, `offset` or `pid` against an integer.
    Int {
        field: Field,
        op: CmpOp,
        lit: i64,
    },
    Other(Predicate),
}

impl Prepared {
    pub fn new(p: &Predicate) -> Prepared {
        match p {
            Predicate::Const(b) => Prepared::Const(*b),
            Predicate::Not(a) => Prepared::Not(Box::new(Prepared::new(a))),
            Predicate::And(a, b) => {
                Prepared::And(Box::new(Prepared::new(a)), Box::new(Prepared::new(b)))
            }
            Predicate::Or(a, b) => {
                Prepared::Or(Box::new(Prepared::new(a)), Box::new(Prepared::new(b)))
            }
            Predicate::Compare {
                lhs,
                op,
                rhs: Operand::Value(v),
            } => match (lhs, v) {
                (
                    Operand::Field(f @ (Field::Host | Field::Type | Field::Message)),
                    Value::Str(s),
                ) => Prepared::Text {
                    field: *f,
                    op: *op,
                    lit: s.as_bytes().into(),
                },
                (
                    Operand::Field(f @ (Field::Timestamp | Field::Offset | Field::Pid)),
                    Value::Int(i),
                ) => Prepared::Int {
                    field: *f,
                    op: *op,
                    lit: *i,
                },
                (Operand::Tag(k), Value::Str(s)) => Prepared::Tag {
                    key: k.as_str().into(),
                    op: *op,
                    lit: s.as_bytes().into(),
                },
                _ => Prepared::Other(p.clone()),
            },
            _ => Prepared::Other(p.clone()),
        }
    }

    pub fn eval(&self, e: &Event) -> bool {
        match self {
            Prepared::Const(b) => *b,
            Prepared::Not(a) => !a.eval(e),
            Prepared::And(a, b) => a.eval(e) && b.eval(e),
            Prepared::Or(a, b) => a.eval(e) || b.eval(e),
            Prepared::Text { field, op, lit } => {
                let v: &[u8] = match field {
                    Field::Host => e.host.as_bytes(),
                    Field::Type => e.ty.as_bytes(),
                    _ => &e.message,
                };
                holds(*op, Some(v.cmp(lit)))
            }
            Prepared::Tag { key, op, lit } => holds(*op, e.tag(key).map(|v| v.as_bytes().cmp(lit))),
            Prepared::Int { field, op, lit } => {
                let v = match field {
                    Field::Timestamp => e.timestamp,
                    Field::Offset => i64::try_from(e.offset).unwrap_or(i64::MAX),
                    _ => i64::from(e.pid),
                };
                holds(*op, Some(v.cmp(lit)))
            }
            Prepared::Other(p) => eval(p, e),
        }
    }
}

pub fn eval(p: &Predicate, e: &Event) -> bool {
    match p {
        Predicate::Const(b) => *b,
        Predicate::Not(inner) => !eval(inner, e),
        Predicate::And(a, b) => eval(a, e) && eval(b, e),
        Predicate::Or(a, b) => eval(a, e) || eval(b, e),
        Predicate::Compare { lhs, op, rhs } => {
            let ord = with_operand(e, lhs, |l| with_operand(e, rhs, |r| order(&l, &r)));
            holds(*op, ord)
        }
        Predicate::In { lhs, set } => with_operand(e, lhs, |v| {
            set.iter()
                .any(|item| order(&v, &literal(item)) == Some(Ordering::Equal))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dab_api::Text;

    /// `Prepared` gives what `eval` gives, for every shape it resolves
    /// ahead and some it leaves, on events with and without the tag.
    #[test]
    fn prepared_agrees_with_eval() {
        let f = |x| Operand::Field(x);
        let s = |x: &str| Operand::Value(Value::Str(x.into()));
        let i = |x| Operand::Value(Value::Int(x));
        let ops = [
            CmpOp::Eq,
            CmpOp::Ne,
            CmpOp::Lt,
            CmpOp::Le,
            CmpOp::Gt,
            CmpOp::Ge,
        ];
        let mut preds = Vec::new();
        for op in ops {
            let cmp = |lhs, rhs| Predicate::Compare { lhs, op, rhs };
            preds.push(cmp(f(Field::Host), s("h2")));
            preds.push(cmp(f(Field::Type), s("B")));
            preds.push(cmp(f(Field::Message), s("{}")));
            preds.push(cmp(Operand::Tag("zone".into()), s("eu")));
            preds.push(cmp(f(Field::Pid), i(2)));
            preds.push(cmp(f(Field::Offset), i(-1)));
            preds.push(cmp(f(Field::Timestamp), i(5)));
            // Left to `eval`: a float literal, a literal on the left, a
            // payload field.
            preds.push(cmp(f(Field::Pid), Operand::Value(Value::Float(2.5))));
            preds.push(cmp(s("h2"), f(Field::Host)));
            preds.push(cmp(Operand::Payload(vec!["n".into()]), i(3)));
        }
        let n = preds.len();
        for k in 0..n {
            let a = Box::new(preds[k].clone());
            let b = Box::new(preds[(k * 7 + 3) % n].clone());
            preds.push(Predicate::And(a.clone(), b.clone()));
            preds.push(Predicate::Or(a.clone(), b));
            preds.push(Predicate::Not(a));
        }
        preds.push(Predicate::Const(true));
        let mut events = Vec::new();
        for (host, ty, pid, offset, ts, zone) in [
            ("h1", "A", 1, 0, 4, None),
            ("h2", "B", 2, u64::MAX, 5, Some("eu")),
            ("h3", "C", 3, 7, 6, Some("us")),
        ] {
            let mut e = Event {
                host: Text::from(host),
                ty: Text::from(ty),
                pid,
                offset,
                timestamp: ts,
                message: bytes::Bytes::from(format!("{{\"n\":{pid}}}")),
                ..Event::default()
            };
            if let Some(z) = zone {
                e.set_tag(Text::from("zone"), Text::from(z));
            }
            events.push(e);
        }
        for p in &preds {
            let prepared = Prepared::new(p);
            for e in &events {
                assert_eq!(prepared.eval(e), eval(p, e), "{p:?} on {e:?}");
            }
        }
    }
}
