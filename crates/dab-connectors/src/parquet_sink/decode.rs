//! The parquet sink's direct decoder: a JSON payload's bytes appended to
//! Arrow columns in one pass, with no `serde_json::Value` on the way (a
//! `Value` costs a map and a string allocation per field; issue 12's
//! encoding speed). Each payload is checked against the schema while it
//! is read; a payload that does not fit leaves the columns exactly as
//! they were.
//!
//! The decoder takes only the plain cases and gives up on the rest, which
//! the sink then decides with the `Value` path (`Schema::conforms`, its
//! reasons word for word) and, for a payload that conforms after all,
//! hands back re-serialized from its `Value`. It gives up on:
//! - anything that does not conform;
//! - a field of a struct given twice (a `Value` keeps the last);
//! - map keys not in strictly increasing byte order (a `Value` sorts
//!   them and keeps the last of equal keys).
//!
//! So every row is written exactly as the `Value` path wrote it
//! (`tests.rs`, `decoder_equals_value_path`).

use std::fmt;

use arrow_array::{
    ArrayRef, BinaryArray, BooleanArray, Float64Array, Int32Array, Int64Array, ListArray, MapArray,
    StringArray, StructArray, TimestampNanosecondArray,
};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow_schema::DataType;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::columns::parse_rfc3339;
use super::*;

/// The payload columns of a run of rows, in schema order.
#[derive(Debug)]
pub(super) struct Columns {
    cols: Vec<Col>,
    rows: usize,
}

/// One column: whether each slot holds a value, and the values.
#[derive(Debug)]
struct Col {
    valid: Vec<bool>,
    data: Data,
}

#[derive(Debug)]
enum Data {
    Bool(Vec<bool>),
    I32(Vec<i32>),
    /// `int64` and `timestamp` (nanoseconds).
    I64(Vec<i64>),
    F64(Vec<f64>),
    /// `string` and `bytes`: offsets (starting at 0) into the bytes.
    Bytes(Vec<i32>, Vec<u8>),
    List(Vec<i32>, Box<Col>),
    /// Offsets into the entries; the keys' offsets and bytes; the values.
    Map(Vec<i32>, Vec<i32>, Vec<u8>, Box<Col>),
    Struct(Vec<Col>),
}

impl Col {
    fn new(t: &Type) -> Col {
        let data = match t {
            Type::Bool => Data::Bool(Vec::new()),
            Type::Int32 => Data::I32(Vec::new()),
            Type::Int64 | Type::Timestamp => Data::I64(Vec::new()),
            Type::Float64 => Data::F64(Vec::new()),
            Type::String | Type::Bytes => Data::Bytes(vec![0], Vec::new()),
            Type::List(item) => Data::List(vec![0], Box::new(Col::new(&item.ty))),
            Type::Map(value) => {
                Data::Map(vec![0], vec![0], Vec::new(), Box::new(Col::new(&value.ty)))
            }
            Type::Struct(fields) => {
                Data::Struct(fields.iter().map(|f| Col::new(&f.ty.ty)).collect())
            }
        };
        Col {
            valid: Vec::new(),
            data,
        }
    }

    fn len(&self) -> usize {
        self.valid.len()
    }

    /// Back to its first `n` slots.
    fn truncate(&mut self, n: usize) {
        self.valid.truncate(n);
        match &mut self.data {
            Data::Bool(v) => v.truncate(n),
            Data::I32(v) => v.truncate(n),
            Data::I64(v) => v.truncate(n),
            Data::F64(v) => v.truncate(n),
            Data::Bytes(offsets, bytes) => {
                offsets.truncate(n + 1);
                bytes.truncate(end(offsets));
            }
            Data::List(offsets, item) => {
                offsets.truncate(n + 1);
                item.truncate(end(offsets));
            }
            Data::Map(offsets, key_offsets, keys, values) => {
                offsets.truncate(n + 1);
                let m = end(offsets);
                key_offsets.truncate(m + 1);
                keys.truncate(end(key_offsets));
                values.truncate(m);
            }
            Data::Struct(children) => children.iter_mut().for_each(|c| c.truncate(n)),
        }
    }

    fn push_null(&mut self) {
        self.valid.push(false);
        match &mut self.data {
            Data::Bool(v) => v.push(false),
            Data::I32(v) => v.push(0),
            Data::I64(v) => v.push(0),
            Data::F64(v) => v.push(0.0),
            Data::Bytes(offsets, _) | Data::List(offsets, _) | Data::Map(offsets, ..) => {
                offsets.push(offsets.last().copied().unwrap_or(0));
            }
            Data::Struct(children) => children.iter_mut().for_each(Col::push_null),
        }
    }

    /// The column as an Arrow array of type `dt`; the column is left
    /// empty.
    fn finish(&mut self, t: &Type, dt: &DataType) -> Result<ArrayRef, String> {
        let valid = std::mem::take(&mut self.valid);
        let nulls = NullBuffer::from(valid);
        let nulls = (nulls.null_count() > 0).then_some(nulls);
        let fresh = Col::new(t);
        let data = std::mem::replace(&mut self.data, fresh.data);
        let e = |e: arrow_schema::ArrowError| e.to_string();
        let arr: ArrayRef = match (data, t, dt) {
            (Data::Bool(v), ..) => Arc::new(BooleanArray::new(BooleanBuffer::from(v), nulls)),
            (Data::I32(v), ..) => Arc::new(Int32Array::new(ScalarBuffer::from(v), nulls)),
            (Data::I64(v), Type::Timestamp, _) => Arc::new(
                TimestampNanosecondArray::new(ScalarBuffer::from(v), nulls).with_timezone("UTC"),
            ),
            (Data::I64(v), ..) => Arc::new(Int64Array::new(ScalarBuffer::from(v), nulls)),
            (Data::F64(v), ..) => Arc::new(Float64Array::new(ScalarBuffer::from(v), nulls)),
            (Data::Bytes(offsets, bytes), Type::Bytes, _) => Arc::new(
                BinaryArray::try_new(offsets_of(offsets), Buffer::from_vec(bytes), nulls)
                    .map_err(e)?,
            ),
            (Data::Bytes(offsets, bytes), ..) => Arc::new(
                StringArray::try_new(offsets_of(offsets), Buffer::from_vec(bytes), nulls)
                    .map_err(e)?,
            ),
            (Data::List(offsets, mut item), Type::List(it), DataType::List(field)) => {
                let child = item.finish(&it.ty, field.data_type())?;
                Arc::new(
                    ListArray::try_new(field.clone(), offsets_of(offsets), child, nulls)
                        .map_err(e)?,
                )
            }
            (
                Data::Map(offsets, key_offsets, keys, mut values),
                Type::Map(vt),
                DataType::Map(entries_field, _),
            ) => {
                let DataType::Struct(kv) = entries_field.data_type() else {
                    return Err("map entries are not a struct".into());
                };
                let keys =
                    StringArray::try_new(offsets_of(key_offsets), Buffer::from_vec(keys), None)
                        .map_err(e)?;
                let values = values.finish(&vt.ty, kv[1].data_type())?;
                let entries = StructArray::try_new(
                    kv.clone(),
                    vec![Arc::new(keys) as ArrayRef, values],
                    None,
                )
                .map_err(e)?;
                Arc::new(
                    MapArray::try_new(
                        entries_field.clone(),
                        offsets_of(offsets),
                        entries,
                        nulls,
                        false,
                    )
                    .map_err(e)?,
                )
            }
            (Data::Struct(mut children), Type::Struct(fields), DataType::Struct(afields)) => {
                let arrays = children
                    .iter_mut()
                    .zip(fields)
                    .zip(afields.iter())
                    .map(|((c, f), af)| c.finish(&f.ty.ty, af.data_type()))
                    .collect::<Result<Vec<_>, _>>()?;
                Arc::new(StructArray::try_new(afields.clone(), arrays, nulls).map_err(e)?)
            }
            (_, t, dt) => return Err(format!("a `{t:?}` column cannot be Arrow type {dt}")),
        };
        Ok(arr)
    }
}

/// The last offset: where the next value starts.
fn end(offsets: &[i32]) -> usize {
    offsets.last().map_or(0, |&o| o as usize)
}

fn offsets_of(offsets: Vec<i32>) -> OffsetBuffer<i32> {
    OffsetBuffer::new(ScalarBuffer::from(offsets))
}

/// Appends an offset: where the values pushed so far end.
fn push_offset<E: de::Error>(offsets: &mut Vec<i32>, end: usize) -> Result<(), E> {
    let o = i32::try_from(end).map_err(|_| E::custom("more than 2 GiB in one column"))?;
    offsets.push(o);
    Ok(())
}

impl Columns {
    pub(super) fn new(fields: &[Field]) -> Columns {
        Columns {
            cols: fields.iter().map(|f| Col::new(&f.ty.ty)).collect(),
            rows: 0,
        }
    }

    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    /// Appends `json` as a row if it is an object that conforms to
    /// `fields` in the plain way (module doc); otherwise the columns are
    /// left as they were and the answer is false.
    pub(super) fn append(&mut self, fields: &[Field], json: &[u8]) -> bool {
        // One UTF-8 check of the whole payload (word at a time over
        // ASCII) rather than one per string: serde_json's `str` reader
        // trusts its input. Invalid UTF-8 is the `Value` path's to refuse.
        let Ok(text) = std::str::from_utf8(json) else {
            return false;
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let seed = StructSeed {
            fields,
            cols: &mut self.cols,
        };
        let ok = de.deserialize_map(seed).is_ok() && de.end().is_ok();
        if ok {
            self.rows += 1;
        } else {
            self.truncate(self.rows);
        }
        ok
    }

    /// Drops the rows after the first `n`.
    pub(super) fn truncate(&mut self, n: usize) {
        self.cols.iter_mut().for_each(|c| c.truncate(n));
        self.rows = self.rows.min(n);
    }

    /// The columns as Arrow arrays of `arrow`'s first fields; the columns
    /// are left empty.
    pub(super) fn finish(
        &mut self,
        fields: &[Field],
        arrow: &ArrowFields,
    ) -> Result<Vec<ArrayRef>, String> {
        self.rows = 0;
        self.cols
            .iter_mut()
            .zip(fields)
            .zip(arrow.iter())
            .map(|((c, f), af)| c.finish(&f.ty.ty, af.data_type()))
            .collect()
    }
}

/// Gives up: the `Value` path decides (its reason is the one reported).
fn give_up<E: de::Error>() -> E {
    E::custom("not the plain case")
}

/// A JSON object's fields into the columns of a struct.
struct StructSeed<'a> {
    fields: &'a [Field],
    cols: &'a mut [Col],
}

impl<'de> DeserializeSeed<'de> for StructSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for StructSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let n = self.fields.len();
        // Fields seen, as bits; a struct of more than 64 fields uses a vec.
        let mut seen_bits = 0u64;
        let mut seen_vec = if n > 64 { vec![false; n] } else { Vec::new() };
        // Payloads mostly list fields in schema order: look there first.
        let mut next = 0usize;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            let key = key.as_bytes();
            let found = if self
                .fields
                .get(next)
                .is_some_and(|f| f.name.as_bytes() == key)
            {
                Some(next)
            } else {
                self.fields.iter().position(|f| f.name.as_bytes() == key)
            };
            let Some(i) = found else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let again = if n > 64 {
                std::mem::replace(&mut seen_vec[i], true)
            } else {
                let bit = 1u64 << i;
                let was = seen_bits & bit != 0;
                seen_bits |= bit;
                was
            };
            if again {
                return Err(give_up());
            }
            next = i + 1;
            map.next_value_seed(ValueSeed {
                ty: &self.fields[i].ty,
                col: &mut self.cols[i],
            })?;
        }
        for (i, (f, c)) in self.fields.iter().zip(self.cols.iter_mut()).enumerate() {
            let seen = if n > 64 {
                seen_vec[i]
            } else {
                seen_bits & (1u64 << i) != 0
            };
            if !seen {
                if !f.ty.optional {
                    return Err(give_up());
                }
                c.push_null();
            }
        }
        Ok(())
    }
}

/// An object key: borrowed from the payload unless it holds escapes.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Borrowed(s) => s.as_bytes(),
            Key::Owned(s) => s.as_bytes(),
        }
    }
}

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::Borrowed(s))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key::Owned(s.to_owned()))
            }
        }
        d.deserialize_str(V)
    }
}

/// One JSON value into one column slot.
struct ValueSeed<'a> {
    ty: &'a FieldType,
    col: &'a mut Col,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl ValueSeed<'_> {
    fn push_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        match &mut self.col.data {
            Data::Bytes(offsets, bytes) => {
                bytes.extend_from_slice(s.as_bytes());
                push_offset(offsets, bytes.len())?;
            }
            Data::I64(v) if self.ty.ty == Type::Timestamp => {
                let ns = fast_rfc3339(s.as_bytes())
                    .or_else(|| {
                        dab_schema::is_rfc3339(s)
                            .then(|| parse_rfc3339(s))
                            .flatten()
                    })
                    .ok_or_else(give_up)?;
                v.push(ns);
            }
            _ => return Err(give_up()),
        }
        self.col.valid.push(true);
        Ok(())
    }

    fn push_int<E: de::Error>(self, i: i128) -> Result<(), E> {
        match &mut self.col.data {
            Data::I32(v) => v.push(i32::try_from(i).map_err(|_| give_up())?),
            Data::I64(v) => v.push(i64::try_from(i).map_err(|_| give_up())?),
            Data::F64(v) => v.push(i as f64),
            _ => return Err(give_up()),
        }
        self.col.valid.push(true);
        Ok(())
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a value of type {}", self.ty)
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        if !self.ty.optional {
            return Err(give_up());
        }
        self.col.push_null();
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, b: bool) -> Result<(), E> {
        let Data::Bool(v) = &mut self.col.data else {
            return Err(give_up());
        };
        v.push(b);
        self.col.valid.push(true);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, i: i64) -> Result<(), E> {
        self.push_int(i128::from(i))
    }

    fn visit_u64<E: de::Error>(self, u: u64) -> Result<(), E> {
        self.push_int(i128::from(u))
    }

    fn visit_f64<E: de::Error>(self, x: f64) -> Result<(), E> {
        let Data::F64(v) = &mut self.col.data else {
            return Err(give_up());
        };
        v.push(x);
        self.col.valid.push(true);
        Ok(())
    }

    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<(), E> {
        self.push_str(s)
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<(), E> {
        self.push_str(s)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (Type::List(item_ty), Data::List(offsets, item)) = (&self.ty.ty, &mut self.col.data)
        else {
            return Err(give_up());
        };
        while seq
            .next_element_seed(ValueSeed {
                ty: item_ty,
                col: item,
            })?
            .is_some()
        {}
        push_offset(offsets, item.len())?;
        self.col.valid.push(true);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        match (&self.ty.ty, &mut self.col.data) {
            (Type::Map(value_ty), Data::Map(offsets, key_offsets, keys, values)) => {
                let row_start = end(offsets);
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    let key = key.as_bytes();
                    // Strictly increasing keys, as a `Value` holds them.
                    let entries = key_offsets.len() - 1;
                    if entries > row_start {
                        let prev = &keys[key_offsets[entries - 1] as usize..];
                        if key <= prev {
                            return Err(give_up());
                        }
                    }
                    keys.extend_from_slice(key);
                    push_offset(key_offsets, keys.len())?;
                    map.next_value_seed(ValueSeed {
                        ty: value_ty,
                        col: values,
                    })?;
                }
                push_offset(offsets, values.len())?;
            }
            (Type::Struct(fields), Data::Struct(children)) => {
                StructSeed {
                    fields,
                    cols: children,
                }
                .visit_map(map)?;
            }
            _ => return Err(give_up()),
        }
        self.col.valid.push(true);
        Ok(())
    }
}

/// Nanoseconds since the epoch of `YYYY-MM-DD(T|t| )HH:MM:SS[.frac](Z|z|±HH:MM)`
/// with a real calendar date and seconds below 60, in i64's range;
/// `None` for anything else (leap seconds, say, which chrono then
/// decides): the common case without chrono's cost. Where it answers, it
/// answers as chrono does (`tests.rs`, `fast_timestamps_equal_chrono`).
pub(super) fn fast_rfc3339(b: &[u8]) -> Option<i64> {
    fn num(b: &[u8]) -> Option<i64> {
        b.iter().try_fold(0i64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    }
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (num(&b[0..4])?, num(&b[5..7])?, num(&b[8..10])?);
    let (hour, min, sec) = (num(&b[11..13])?, num(&b[14..16])?, num(&b[17..19])?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || min > 59 || sec > 59 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 9 {
                nanos = nanos * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..9 {
            nanos *= 10;
        }
    }
    let offset_secs = match &b[i..] {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (h, m) = (num(&[*h1, *h2])?, num(&[*m1, *m2])?);
            if h > 23 || m > 59 {
                return None;
            }
            let s = h * 3600 + m * 60;
            if *sign == b'+' {
                s
            } else {
                -s
            }
        }
        _ => return None,
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (civil_from_days
    // inverted, H. Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + min * 60 + sec - offset_secs;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

#[cfg(test)]
mod tests;
