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

pub fn eval(p: &Predicate, e: &Event) -> bool {
    match p {
        Predicate::Const(b) => *b,
        Predicate::Not(inner) => !eval(inner, e),
        Predicate::And(a, b) => eval(a, e) && eval(b, e),
        Predicate::Or(a, b) => eval(a, e) || eval(b, e),
        Predicate::Compare { lhs, op, rhs } => {
            let ord = with_operand(e, lhs, |l| with_operand(e, rhs, |r| order(&l, &r)));
            match op {
                CmpOp::Eq => ord == Some(Ordering::Equal),
                CmpOp::Ne => ord != Some(Ordering::Equal),
                CmpOp::Lt => ord == Some(Ordering::Less),
                CmpOp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
                CmpOp::Gt => ord == Some(Ordering::Greater),
                CmpOp::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
            }
        }
        Predicate::In { lhs, set } => with_operand(e, lhs, |v| {
            set.iter()
                .any(|item| order(&v, &literal(item)) == Some(Ordering::Equal))
        }),
    }
}
