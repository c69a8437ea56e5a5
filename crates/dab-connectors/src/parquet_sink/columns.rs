//! The parquet sink's columns: a payload schema as an Arrow schema (with
//! the Parquet field ids of SPEC section 8), conforming payloads and their
//! envelopes as record batches, and the timestamp checks the encoder needs.

use super::*;
use decode::Columns;

#[cfg(test)]
use arrow_array::{builder::BinaryBuilder, BooleanArray, Float64Array, Int32Array, ListArray};
#[cfg(test)]
use arrow_buffer::NullBuffer;

/// Timestamps given as text must be readable as RFC 3339 by the encoder
/// too; `conforms` checks their shape, this their value.
pub(super) fn check_timestamps(fields: &[Field], payload: Option<&Value>) -> Result<(), String> {
    let Some(Value::Object(obj)) = payload else {
        return Ok(());
    };
    for f in fields {
        check_value(&f.ty, obj.get(&f.name), &f.name)?;
    }
    Ok(())
}

fn check_value(t: &FieldType, v: Option<&Value>, path: &str) -> Result<(), String> {
    match (&t.ty, v) {
        (Type::Timestamp, Some(Value::String(s))) => parse_rfc3339(s)
            .map(drop)
            .ok_or_else(|| format!("`{path}` is not a timestamp in range: {s:?}")),
        (Type::List(item), Some(Value::Array(xs))) => {
            xs.iter().try_for_each(|x| check_value(item, Some(x), path))
        }
        (Type::Map(value), Some(Value::Object(m))) => m
            .values()
            .try_for_each(|x| check_value(value, Some(x), path)),
        (Type::Struct(fields), Some(v @ Value::Object(_))) => check_timestamps(fields, Some(v)),
        _ => Ok(()),
    }
}

pub(super) fn parse_rfc3339(s: &str) -> Option<i64> {
    // The first ` ` or `t` becomes `T`; most texts have none (no copy).
    let s = if s.contains([' ', 't']) {
        std::borrow::Cow::Owned(s.replacen([' ', 't'], "T", 1))
    } else {
        std::borrow::Cow::Borrowed(s)
    };
    chrono::DateTime::parse_from_rfc3339(&s)
        .ok()?
        .timestamp_nanos_opt()
}

/// The Arrow schema of a payload schema. Every field, nested ones
/// included, carries the Parquet field id of its path ([`field_id`]).
pub fn arrow_schema(schema: &Schema) -> ArrowSchema {
    let mut fields: Vec<ArrowField> = schema
        .fields
        .iter()
        .map(|f| with_id(arrow_field(&f.name, &f.ty, &f.name), field_id(&f.name)))
        .collect();
    fields.extend(envelope_fields());
    ArrowSchema::new(fields)
}

/// The Parquet field id of the field at `path` (its name, and for a field
/// of a struct the names of the fields around it, joined by `.`; a list's
/// item is `element`, a map's value `value`). It is a hash of the path,
/// pinned (FNV-1a, 64 bits, modulo 2,000,000,000, plus 1), so every
/// version of a type gives a field the same id wherever it is declared,
/// and a field of another name gets another id: SPEC section 8's "stable
/// field id that a later schema version never reuses". The envelope's
/// columns have fixed ids above this range.
pub fn field_id(path: &str) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Below 2,000,000,001: fits an i32.
    (h % 2_000_000_000) as i32 + 1
}

/// Two fields of `schema` whose ids collide, if any (a hash can; with
/// tens of fields it practically never does): such a schema cannot be
/// written, because readers by id would mix the two.
pub fn colliding_ids(schema: &Schema) -> Option<(String, String)> {
    fn walk(fields: &[Field], prefix: &str, out: &mut Vec<(i32, String)>) {
        for f in fields {
            let path = if prefix.is_empty() {
                f.name.clone()
            } else {
                format!("{prefix}.{}", f.name)
            };
            out.push((field_id(&path), path.clone()));
            nested(&f.ty.ty, &path, out);
        }
    }
    fn nested(t: &Type, path: &str, out: &mut Vec<(i32, String)>) {
        match t {
            Type::Struct(fields) => walk(fields, path, out),
            Type::List(item) => nested(&item.ty, &format!("{path}.element"), out),
            Type::Map(value) => nested(&value.ty, &format!("{path}.value"), out),
            _ => {}
        }
    }
    let mut ids = Vec::new();
    walk(&schema.fields, "", &mut ids);
    ids.sort();
    ids.windows(2)
        .find(|w| w[0].0 == w[1].0)
        .map(|w| (w[0].1.clone(), w[1].1.clone()))
}

fn with_id(f: ArrowField, id: i32) -> ArrowField {
    f.with_metadata(std::collections::HashMap::from([(
        PARQUET_FIELD_ID_META_KEY.to_owned(),
        id.to_string(),
    )]))
}

fn arrow_field(name: &str, t: &FieldType, path: &str) -> ArrowField {
    ArrowField::new(name, data_type(&t.ty, path), t.optional)
}

fn data_type(t: &Type, path: &str) -> DataType {
    match t {
        Type::Bool => DataType::Boolean,
        Type::Int32 => DataType::Int32,
        Type::Int64 => DataType::Int64,
        Type::Float64 => DataType::Float64,
        Type::String => DataType::Utf8,
        Type::Bytes => DataType::Binary,
        Type::Timestamp => DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        Type::List(item) => DataType::List(Arc::new(arrow_field(
            "element",
            item,
            &format!("{path}.element"),
        ))),
        Type::Map(value) => DataType::Map(Arc::new(map_entries(value, path)), false),
        Type::Struct(fields) => DataType::Struct(struct_fields(fields, path)),
    }
}

fn map_entries(value: &FieldType, path: &str) -> ArrowField {
    ArrowField::new(
        "key_value",
        DataType::Struct(ArrowFields::from(vec![
            ArrowField::new("key", DataType::Utf8, false),
            arrow_field("value", value, &format!("{path}.value")),
        ])),
        false,
    )
}

fn struct_fields(fields: &[Field], path: &str) -> ArrowFields {
    fields
        .iter()
        .map(|f| {
            let p = format!("{path}.{}", f.name);
            with_id(arrow_field(&f.name, &f.ty, &p), field_id(&p))
        })
        .collect()
}

/// One record batch: the payload columns decoded so far (left empty)
/// and the envelopes of their events, row for row.
pub(super) fn record_batch(
    arrow: &SchemaRef,
    fields: &[Field],
    payloads: &mut Columns,
    events: &[&Event],
) -> Result<RecordBatch, String> {
    if payloads.rows() != events.len() {
        return Err(format!(
            "{} payloads for {} events",
            payloads.rows(),
            events.len()
        ));
    }
    let mut columns = payloads.finish(fields, arrow.fields())?;
    let Some(tags_field) = arrow.fields().last() else {
        return Err("no envelope columns".into());
    };
    columns.extend(envelope_columns(tags_field.data_type(), events)?);
    RecordBatch::try_new(arrow.clone(), columns).map_err(|e| e.to_string())
}

/// The envelope's columns, after the payload's (SPEC section 8), prefixed
/// `dab_` so that no payload field can take their names.
pub const ENVELOPE: [&str; 6] = [
    "dab_timestamp",
    "dab_host",
    "dab_type",
    "dab_offset",
    "dab_pid",
    "dab_tags",
];
/// The envelope's field ids: fixed, so no payload version moves them.
pub(super) const ENVELOPE_FIRST_ID: i32 = 2_000_000_001;

fn envelope_fields() -> Vec<ArrowField> {
    let tags = map_entries(
        &FieldType {
            ty: Type::String,
            optional: false,
        },
        "dab_tags",
    );
    let types = [
        DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        DataType::Utf8,
        DataType::Utf8,
        DataType::Int64,
        DataType::Int64,
        DataType::Map(Arc::new(tags), false),
    ];
    ENVELOPE
        .iter()
        .zip(types)
        .enumerate()
        .map(|(i, (name, t))| {
            with_id(
                ArrowField::new(*name, t, false),
                ENVELOPE_FIRST_ID + i as i32,
            )
        })
        .collect()
}

fn envelope_columns(tags: &DataType, rows: &[&Event]) -> Result<Vec<ArrayRef>, String> {
    let DataType::Map(entries_field, _) = tags else {
        return Err(format!("tags column has Arrow type {tags}"));
    };
    let DataType::Struct(kv) = entries_field.data_type() else {
        return Err("tag entries are not a struct".into());
    };
    let mut offsets = vec![0i32];
    let (mut keys, mut values) = (StringBuilder::new(), StringBuilder::new());
    let mut n = 0usize;
    for e in rows {
        for (k, v) in &e.tags {
            keys.append_value(k.as_str());
            values.append_value(v.as_str());
        }
        n += e.tags.len();
        offsets.push(i32::try_from(n).map_err(|e| e.to_string())?);
    }
    let entries = StructArray::try_new(
        kv.clone(),
        vec![
            Arc::new(keys.finish()) as ArrayRef,
            Arc::new(values.finish()) as ArrayRef,
        ],
        None,
    )
    .map_err(|e| e.to_string())?;
    let tags = MapArray::try_new(
        entries_field.clone(),
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        entries,
        None,
        false,
    )
    .map_err(|e| e.to_string())?;
    Ok(vec![
        Arc::new(
            rows.iter()
                .map(|e| Some(e.timestamp))
                .collect::<TimestampNanosecondArray>()
                .with_timezone("UTC"),
        ),
        Arc::new(
            rows.iter()
                .map(|e| Some(e.host.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            rows.iter()
                .map(|e| Some(e.ty.as_str()))
                .collect::<StringArray>(),
        ),
        Arc::new(
            rows.iter()
                .map(|e| Some(i64::try_from(e.offset).unwrap_or(i64::MAX)))
                .collect::<Int64Array>(),
        ),
        Arc::new(
            rows.iter()
                .map(|e| Some(i64::from(e.pid)))
                .collect::<Int64Array>(),
        ),
        Arc::new(tags),
    ])
}

/// The record batch of conforming payloads as the sink built it before
/// it had a decoder, from each payload's `Value`: the reference the
/// decoder is held to (`tests.rs`).
#[cfg(test)]
pub(super) fn record_batch_of_values(
    arrow: &SchemaRef,
    fields: &[Field],
    rows: &[(&Value, &Event)],
) -> Result<RecordBatch, String> {
    let objs: Vec<Option<&Value>> = rows.iter().map(|(v, _)| Some(*v)).collect();
    let mut columns = struct_columns(arrow.fields(), fields, &objs)?;
    let Some(tags_field) = arrow.fields().last() else {
        return Err("no envelope columns".into());
    };
    let events: Vec<&Event> = rows.iter().map(|(_, e)| *e).collect();
    columns.extend(envelope_columns(tags_field.data_type(), &events)?);
    RecordBatch::try_new(arrow.clone(), columns).map_err(|e| e.to_string())
}

#[cfg(test)]
fn struct_columns(
    arrow: &ArrowFields,
    fields: &[Field],
    objs: &[Option<&Value>],
) -> Result<Vec<ArrayRef>, String> {
    fields
        .iter()
        .zip(arrow.iter())
        .map(|(f, af)| {
            let vals: Vec<Option<&Value>> = objs
                .iter()
                .map(|o| o.and_then(|o| o.get(&f.name)).filter(|v| !v.is_null()))
                .collect();
            column(&f.ty.ty, af.data_type(), &vals)
        })
        .collect()
}

#[cfg(test)]
fn nulls(vals: &[Option<&Value>]) -> Option<NullBuffer> {
    let nb = NullBuffer::from(vals.iter().map(Option::is_some).collect::<Vec<bool>>());
    (nb.null_count() > 0).then_some(nb)
}

/// One column; `vals` holds `None` for null or absent.
#[cfg(test)]
fn column(t: &Type, dt: &DataType, vals: &[Option<&Value>]) -> Result<ArrayRef, String> {
    let arr: ArrayRef = match t {
        Type::Bool => Arc::new(
            vals.iter()
                .map(|v| v.and_then(Value::as_bool))
                .collect::<BooleanArray>(),
        ),
        Type::Int32 => Arc::new(
            vals.iter()
                .map(|v| {
                    v.and_then(Value::as_i64)
                        .and_then(|i| i32::try_from(i).ok())
                })
                .collect::<Int32Array>(),
        ),
        Type::Int64 => Arc::new(
            vals.iter()
                .map(|v| v.and_then(Value::as_i64))
                .collect::<Int64Array>(),
        ),
        Type::Float64 => Arc::new(
            vals.iter()
                .map(|v| v.and_then(Value::as_f64))
                .collect::<Float64Array>(),
        ),
        Type::String => Arc::new(
            vals.iter()
                .map(|v| v.and_then(Value::as_str))
                .collect::<StringArray>(),
        ),
        Type::Bytes => {
            let mut b = BinaryBuilder::new();
            for v in vals {
                match v.and_then(Value::as_str) {
                    Some(s) => b.append_value(s.as_bytes()),
                    None => b.append_null(),
                }
            }
            Arc::new(b.finish())
        }
        Type::Timestamp => Arc::new(
            vals.iter()
                .map(|v| match v {
                    Some(Value::String(s)) => parse_rfc3339(s),
                    Some(v) => v.as_i64(),
                    None => None,
                })
                .collect::<TimestampNanosecondArray>()
                .with_timezone("UTC"),
        ),
        Type::List(item) => {
            let DataType::List(item_field) = dt else {
                return Err(format!("list column has Arrow type {dt}"));
            };
            let mut offsets = vec![0i32];
            let mut items: Vec<Option<&Value>> = Vec::new();
            for v in vals {
                if let Some(Value::Array(xs)) = v {
                    items.extend(xs.iter().map(|x| Some(x).filter(|x| !x.is_null())));
                }
                offsets.push(i32::try_from(items.len()).map_err(|e| e.to_string())?);
            }
            let child = column(&item.ty, item_field.data_type(), &items)?;
            Arc::new(
                ListArray::try_new(
                    item_field.clone(),
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    child,
                    nulls(vals),
                )
                .map_err(|e| e.to_string())?,
            )
        }
        Type::Map(value) => {
            let DataType::Map(entries_field, _) = dt else {
                return Err(format!("map column has Arrow type {dt}"));
            };
            let DataType::Struct(kv) = entries_field.data_type() else {
                return Err("map entries are not a struct".into());
            };
            let mut offsets = vec![0i32];
            let mut keys = StringBuilder::new();
            let mut values: Vec<Option<&Value>> = Vec::new();
            for v in vals {
                if let Some(Value::Object(m)) = v {
                    for (k, x) in m {
                        keys.append_value(k);
                        values.push(Some(x).filter(|x| !x.is_null()));
                    }
                }
                offsets.push(i32::try_from(values.len()).map_err(|e| e.to_string())?);
            }
            let value_col = column(&value.ty, kv[1].data_type(), &values)?;
            let entries = StructArray::try_new(
                kv.clone(),
                vec![Arc::new(keys.finish()) as ArrayRef, value_col],
                None,
            )
            .map_err(|e| e.to_string())?;
            Arc::new(
                MapArray::try_new(
                    entries_field.clone(),
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    entries,
                    nulls(vals),
                    false,
                )
                .map_err(|e| e.to_string())?,
            )
        }
        Type::Struct(fields) => {
            let DataType::Struct(afields) = dt else {
                return Err(format!("struct column has Arrow type {dt}"));
            };
            let children = struct_columns(afields, fields, vals)?;
            Arc::new(
                StructArray::try_new(afields.clone(), children, nulls(vals))
                    .map_err(|e| e.to_string())?,
            )
        }
    };
    Ok(arr)
}
