//! Evaluates a checked `Filter` condition on an event. The planner already
//! type-checked it, so evaluation cannot fail: a missing tag compares equal
//! to nothing (`==` false, `!=` true, ordering false; SPEC section 1).

use std::cmp::Ordering;

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
        (Val::Bytes(x), Val::Bytes(y)) => Some(x.cmp(y)),
        (Val::Bool(x), Val::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

pub fn eval(p: &Predicate, e: &Event) -> bool {
    match p {
        Predicate::Const(b) => *b,
        Predicate::Not(inner) => !eval(inner, e),
        Predicate::And(a, b) => eval(a, e) && eval(b, e),
        Predicate::Or(a, b) => eval(a, e) || eval(b, e),
        Predicate::Compare { lhs, op, rhs } => {
            let ord = order(&read(e, lhs), &read(e, rhs));
            match op {
                CmpOp::Eq => ord == Some(Ordering::Equal),
                CmpOp::Ne => ord != Some(Ordering::Equal),
                CmpOp::Lt => ord == Some(Ordering::Less),
                CmpOp::Le => matches!(ord, Some(Ordering::Less | Ordering::Equal)),
                CmpOp::Gt => ord == Some(Ordering::Greater),
                CmpOp::Ge => matches!(ord, Some(Ordering::Greater | Ordering::Equal)),
            }
        }
        Predicate::In { lhs, set } => {
            let v = read(e, lhs);
            set.iter()
                .any(|item| order(&v, &literal(item)) == Some(Ordering::Equal))
        }
    }
}
