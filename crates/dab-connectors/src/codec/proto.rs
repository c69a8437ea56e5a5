//! Events as protobuf (SPEC section 4): gRPC, length-delimited frames over
//! TCP and unix sockets, Kafka with `codec: protobuf`.
//!
//! [`pb`] holds the messages derived with prost (no protoc needed) for
//! code that wants the generated types, gRPC above all. [`decode`] and
//! [`encode`] do not go through them: they read and write the wire format
//! directly so that `message` is a slice of the input, host, type and tags
//! are interned (prost's `String`s would copy every time), tags keep their
//! wire order, and an unchanged event is written back as the bytes it came
//! in (unknown fields included). Tests check that both paths write and
//! accept the same bytes.
//!
//! proto3 scalars carry no presence, so `timestamp == 0` and `host == ""`
//! count as missing (filled by `Filler`); `offset` is always present, as 0
//! is a real first offset. A map key given twice: the last value wins, in
//! the first one's place (protobuf's rule).
//!
//! The schema, kept in step with `proto/murron.proto`:
//!
//! ```proto
//! syntax = "proto3";
//! package murron.v1;
//!
//! message Event {
//!   int64 timestamp = 1;
//!   string host = 2;
//!   string type = 3;
//!   uint64 offset = 4;
//!   uint32 pid = 5;
//!   bytes message = 6;
//!   bytes signature = 7;
//!   map<string, string> tags = 8;
//! }
//!
//! message Batch {
//!   repeated Event events = 1;
//! }
//! ```

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};
use dab_api::event::RawCodec;
use dab_api::{Event, Text};

use super::intern::intern;
use super::protowire::{fail, put_varint, varint_len, Reader, LEN, VARINT};
use super::{DecodeError, Present};

/// The messages of `proto/murron.proto` (package `murron.v1`), as
/// `prost-build` would generate them.
pub mod pb {
    use std::collections::BTreeMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Event {
        #[prost(int64, tag = "1")]
        pub timestamp: i64,
        #[prost(string, tag = "2")]
        pub host: String,
        #[prost(string, tag = "3")]
        pub r#type: String,
        #[prost(uint64, tag = "4")]
        pub offset: u64,
        #[prost(uint32, tag = "5")]
        pub pid: u32,
        #[prost(bytes = "bytes", tag = "6")]
        pub message: bytes::Bytes,
        #[prost(bytes = "bytes", tag = "7")]
        pub signature: bytes::Bytes,
        #[prost(btree_map = "string, string", tag = "8")]
        pub tags: BTreeMap<String, String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Batch {
        #[prost(message, repeated, tag = "1")]
        pub events: Vec<Event>,
    }
}

/// The generated message for an event (copies the strings; tags end up
/// sorted, as a `BTreeMap` holds them).
pub fn to_pb(ev: &Event) -> pb::Event {
    pb::Event {
        timestamp: ev.timestamp,
        host: ev.host.as_str().to_owned(),
        r#type: ev.ty.as_str().to_owned(),
        offset: ev.offset,
        pid: ev.pid,
        message: ev.message.clone(),
        signature: ev.signature.clone(),
        tags: ev
            .tags
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.as_str().to_owned()))
            .collect(),
    }
}

/// An event from the generated message, with the same presence rule as
/// [`decode`]. It has no raw bytes.
// `Event` has a private field, so it cannot be built with a struct literal.
#[allow(clippy::field_reassign_with_default)]
pub fn from_pb(m: pb::Event) -> (Event, Present) {
    let present = Present {
        timestamp: m.timestamp != 0,
        host: !m.host.is_empty(),
        offset: true,
    };
    let mut ev = Event::default();
    ev.timestamp = m.timestamp;
    ev.host = Text::from(m.host);
    ev.ty = Text::from(m.r#type);
    ev.offset = m.offset;
    ev.pid = m.pid;
    ev.message = m.message;
    ev.signature = m.signature;
    ev.tags = m
        .tags
        .into_iter()
        .map(|(k, v)| (Text::from(k), Text::from(v)))
        .collect();
    (ev, present)
}

/// Decodes one `Event` message (no length prefix) and keeps `buf` as its
/// raw bytes.
pub fn decode(buf: Bytes) -> Result<(Event, Present), DecodeError> {
    let mut ev = Event::default();
    let mut r = Reader::new(&buf, 0);
    while !r.done() {
        let (field, wire) = r.key()?;
        match (field, wire) {
            (1, VARINT) => ev.timestamp = r.varint()? as i64,
            (2, LEN) => ev.host = text(&buf, r.len_delim()?, "host")?,
            (3, LEN) => ev.ty = text(&buf, r.len_delim()?, "type")?,
            (4, VARINT) => ev.offset = r.varint()?,
            // uint32 is read as a varint and cut to 32 bits, as protobuf's
            // own parsers do.
            (5, VARINT) => ev.pid = r.varint()? as u32,
            (6, LEN) => ev.message = buf.slice(r.len_delim()?),
            (7, LEN) => ev.signature = buf.slice(r.len_delim()?),
            (8, LEN) => {
                let entry = r.len_delim()?;
                let (k, v) = map_entry(&buf, entry)?;
                match ev.tags.iter_mut().find(|(old, _)| *old == k) {
                    Some((_, old)) => *old = v,
                    None => ev.tags.push((k, v)),
                }
            }
            (1..=8, _) => {
                return Err(fail(format!(
                    "field {field} has wire type {wire}, expected {}",
                    if matches!(field, 1 | 4 | 5) {
                        VARINT
                    } else {
                        LEN
                    }
                )))
            }
            _ => r.skip(wire)?,
        }
    }
    let present = Present {
        timestamp: ev.timestamp != 0,
        host: !ev.host.is_empty(),
        offset: true,
    };
    ev.set_raw(RawCodec::Protobuf, buf);
    Ok((ev, present))
}

/// Writes one `Event` message, no length prefix: the raw bytes when the
/// event still has them, otherwise the fields in number order, defaults
/// left out (what prost writes too).
pub fn encode(ev: &Event, out: &mut BytesMut) {
    if let Some(raw) = ev.raw(RawCodec::Protobuf) {
        out.extend_from_slice(raw);
        return;
    }
    out.reserve(ev.size_hint() + 32);
    if ev.timestamp != 0 {
        out.put_u8(1 << 3 | VARINT);
        put_varint(out, ev.timestamp as u64);
    }
    put_len_field(out, 2, ev.host.as_bytes());
    put_len_field(out, 3, ev.ty.as_bytes());
    if ev.offset != 0 {
        out.put_u8(4 << 3 | VARINT);
        put_varint(out, ev.offset);
    }
    if ev.pid != 0 {
        out.put_u8(5 << 3 | VARINT);
        put_varint(out, u64::from(ev.pid));
    }
    put_len_field(out, 6, &ev.message);
    put_len_field(out, 7, &ev.signature);
    for (k, v) in &ev.tags {
        let entry = field_len(k.len()) + field_len(v.len());
        out.put_u8(8 << 3 | LEN);
        put_varint(out, entry as u64);
        put_len_field(out, 1, k.as_bytes());
        put_len_field(out, 2, v.as_bytes());
    }
}

fn text(buf: &Bytes, r: Range<usize>, name: &str) -> Result<Text, DecodeError> {
    if let Some(t) = intern(&buf[r.clone()]) {
        return Ok(t);
    }
    let at = r.start;
    Text::from_bytes(buf.slice(r))
        .ok_or_else(|| fail(format!("`{name}` at byte {at} is not valid UTF-8")))
}

/// A `map<string, string>` entry: a message with key = 1, value = 2.
fn map_entry(buf: &Bytes, entry: Range<usize>) -> Result<(Text, Text), DecodeError> {
    let mut r = Reader::new(&buf[..entry.end], entry.start);
    let (mut k, mut v) = (Text::default(), Text::default());
    while !r.done() {
        match r.key()? {
            (1, LEN) => k = text(buf, r.len_delim()?, "tags key")?,
            (2, LEN) => v = text(buf, r.len_delim()?, "tags value")?,
            (f @ (1 | 2), wire) => {
                return Err(fail(format!(
                    "tags entry field {f} has wire type {wire}, expected {LEN}"
                )))
            }
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok((k, v))
}

/// Bytes a non-empty length-delimited field with a one-byte key takes.
fn field_len(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        1 + varint_len(len as u64) + len
    }
}

/// A length-delimited field, left out when empty (proto3's default).
fn put_len_field(out: &mut BytesMut, field: u8, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.put_u8(field << 3 | LEN);
    put_varint(out, data.len() as u64);
    out.put_slice(data);
}

#[cfg(test)]
#[path = "proto_tests.rs"]
mod tests;
