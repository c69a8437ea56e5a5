//! `murron.v1.Batch` as it crosses the wire, and the codec the generated
//! service and client use.
//!
//! The batch stays bytes until our own code reads it: [`Batch::decode`]
//! walks the `events` field and hands each event's bytes to the zero-copy
//! reader of `codec::proto` (strings interned or sliced from the request,
//! `message` a slice, the bytes kept as `raw`), instead of prost building
//! a `String` per field. And since the codec never fails on content, a
//! corrupt batch reaches the handler, which counts it and answers
//! `INVALID_ARGUMENT`. [`BatchWriter`] writes a batch from events, reusing
//! each event's arrival bytes when it has them.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use dab_api::event::RawCodec;
use dab_api::Event;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use super::rpc::Ack;
use crate::codec::protowire::{fail, put_varint, Reader};
use crate::codec::{proto, DecodeError, Present};

/// Field 1 (`events`), length-delimited.
const EVENTS_KEY: u8 = 1 << 3 | 2;

/// An encoded `murron.v1.Batch` message, not yet parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    bytes: Bytes,
}

impl Batch {
    /// Wraps bytes as they are; [`Batch::decode`] checks them.
    pub fn from_bytes(bytes: Bytes) -> Batch {
        Batch { bytes }
    }

    /// Encodes events (one-off; a sink reuses a [`BatchWriter`]).
    pub fn from_events(events: &[Event]) -> Batch {
        let mut w = BatchWriter::default();
        for e in events {
            w.push(e);
        }
        w.finish()
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The encoded size.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The events, in order, with which of the fillable fields each had.
    /// Unknown fields of the batch are skipped (proto3's rule).
    pub fn decode(&self) -> Result<Vec<(Event, Present)>, DecodeError> {
        // About 250 bytes an event is the expected size; a guess too low
        // only costs a reallocation or two.
        let mut events = Vec::with_capacity((self.bytes.len() / 128).min(4096));
        let mut reader = self.reader();
        while !reader.is_done() {
            reader.next_chunk(usize::MAX, &mut events)?;
        }
        Ok(events)
    }

    /// Reads the events a few at a time (see [`BatchReader`]).
    pub fn reader(&self) -> BatchReader {
        BatchReader {
            bytes: self.bytes.clone(),
            pos: 0,
            index: 0,
        }
    }
}

/// Reads a batch's events a chunk at a time: a 4 MiB batch of empty events
/// is two million of them, which must not all exist at once.
#[derive(Debug, Clone)]
pub struct BatchReader {
    bytes: Bytes,
    pos: usize,
    /// Events read so far, for error messages.
    index: usize,
}

impl BatchReader {
    /// True once every byte of the batch was read (or an error was met).
    pub fn is_done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    /// Appends up to `max` more events to `out`. After an error the reader
    /// is done.
    pub fn next_chunk(
        &mut self,
        max: usize,
        out: &mut Vec<(Event, Present)>,
    ) -> Result<(), DecodeError> {
        let read = self.read(max, out);
        if read.is_err() {
            self.pos = self.bytes.len();
        }
        read
    }

    fn read(&mut self, max: usize, out: &mut Vec<(Event, Present)>) -> Result<(), DecodeError> {
        let buf = &self.bytes;
        let mut r = Reader::new(buf, self.pos);
        let mut read = 0;
        while read < max && !r.done() {
            let at = r.pos();
            // Not `Reader::key`: field numbers past 2^29 - 1 are skipped
            // here, as they always were.
            let key = r.varint()?;
            let (field, wire) = (key >> 3, (key & 7) as u8);
            match (field, wire) {
                (0, _) => return Err(fail(format!("invalid field number 0 at byte {at}"))),
                (1, 2) => {
                    let range = r.len_delim()?;
                    let start = range.start;
                    let index = self.index;
                    let event = proto::decode(buf.slice(range)).map_err(|e| match e {
                        DecodeError::Protobuf { reason } => {
                            fail(format!("event {index} (at byte {start}): {reason}"))
                        }
                        other => other,
                    })?;
                    out.push(event);
                    self.index += 1;
                    read += 1;
                }
                (1, _) => {
                    return Err(fail(format!(
                        "field 1 (events) at byte {at} has wire type {wire}, expected 2"
                    )))
                }
                (_, _) => r.skip(wire)?,
            }
        }
        self.pos = r.pos();
        Ok(())
    }
}

/// Writes batches from events into one reused buffer.
#[derive(Debug, Default)]
pub struct BatchWriter {
    buf: BytesMut,
    scratch: BytesMut,
    events: usize,
}

impl BatchWriter {
    /// Appends one event: its protobuf arrival bytes when it is unchanged,
    /// otherwise a fresh encoding.
    pub fn push(&mut self, event: &Event) {
        let bytes: &[u8] = match event.raw(RawCodec::Protobuf) {
            Some(raw) => raw,
            None => {
                self.scratch.clear();
                proto::encode(event, &mut self.scratch);
                &self.scratch
            }
        };
        self.buf.reserve(bytes.len() + 11);
        self.buf.put_u8(EVENTS_KEY);
        put_varint(&mut self.buf, bytes.len() as u64);
        self.buf.put_slice(bytes);
        self.events += 1;
    }

    /// Events pushed since the last `finish`.
    pub fn events(&self) -> usize {
        self.events
    }

    /// Bytes of the batch so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events == 0
    }

    /// Bytes `event` would add.
    pub fn cost(event: &Event) -> usize {
        event.size_hint() + 11
    }

    /// The batch so far; the writer starts over.
    pub fn finish(&mut self) -> Batch {
        self.events = 0;
        Batch {
            bytes: self.buf.split().freeze(),
        }
    }
}

/// A message the [`WireCodec`] can carry.
pub trait WireMessage: Sized + Send + 'static {
    fn encode_wire(&self, buf: &mut EncodeBuf<'_>);
    fn decode_wire(bytes: Bytes) -> Result<Self, Status>;
}

impl WireMessage for Batch {
    fn encode_wire(&self, buf: &mut EncodeBuf<'_>) {
        buf.put_slice(&self.bytes);
    }

    /// Never fails: the handler decodes, counts and answers.
    fn decode_wire(bytes: Bytes) -> Result<Self, Status> {
        Ok(Batch { bytes })
    }
}

impl WireMessage for Ack {
    fn encode_wire(&self, buf: &mut EncodeBuf<'_>) {
        // `EncodeBuf` grows as needed, so encoding cannot run out of room.
        let _ = self.encode(buf);
    }

    fn decode_wire(bytes: Bytes) -> Result<Self, Status> {
        Ack::decode(bytes).map_err(|e| Status::internal(format!("invalid Ack: {e}")))
    }
}

/// The codec of the `Murron` service: `application/grpc+proto` like
/// prost's, with [`Batch`] left as bytes.
#[derive(Debug)]
pub struct WireCodec<E, D>(PhantomData<fn() -> (E, D)>);

impl<E, D> Default for WireCodec<E, D> {
    fn default() -> Self {
        WireCodec(PhantomData)
    }
}

impl<E: WireMessage, D: WireMessage> Codec for WireCodec<E, D> {
    type Encode = E;
    type Decode = D;
    type Encoder = WireEncoder<E>;
    type Decoder = WireDecoder<D>;

    fn encoder(&mut self) -> Self::Encoder {
        WireEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        WireDecoder(PhantomData)
    }
}

#[derive(Debug)]
pub struct WireEncoder<E>(PhantomData<fn(E)>);

impl<E: WireMessage> Encoder for WireEncoder<E> {
    type Item = E;
    type Error = Status;

    fn encode(&mut self, item: E, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode_wire(dst);
        Ok(())
    }
}

#[derive(Debug)]
pub struct WireDecoder<D>(PhantomData<fn() -> D>);

impl<D: WireMessage> Decoder for WireDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        // A split of tonic's receive buffer: no copy.
        let bytes = src.copy_to_bytes(src.remaining());
        D::decode_wire(bytes).map(Some)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    #![allow(clippy::field_reassign_with_default)]
    use super::*;
    use crate::codec::proto::pb;
    use dab_api::Text;

    fn ev(i: u64) -> Event {
        let mut e = Event::default();
        e.timestamp = 1_700_000_000_000_000_000 + i as i64;
        e.host = Text::from("web-1");
        e.ty = Text::from("T");
        e.offset = i;
        e.pid = 7;
        e.message = Bytes::from(format!("message {i}"));
        e.tags = vec![(Text::from("env"), Text::from("prod"))];
        e
    }

    #[test]
    fn writes_what_prost_reads_and_reads_what_prost_writes() {
        let events: Vec<Event> = (0..3).map(ev).collect();
        let batch = Batch::from_events(&events);
        let via_prost = pb::Batch::decode(batch.as_bytes().clone()).unwrap();
        assert_eq!(
            via_prost.events,
            events.iter().map(proto::to_pb).collect::<Vec<_>>()
        );

        let back = Batch::from_bytes(Bytes::from(via_prost.encode_to_vec()))
            .decode()
            .unwrap();
        let back: Vec<Event> = back
            .into_iter()
            .map(|(mut e, p)| {
                assert_eq!(p, Present::ALL);
                e.touch();
                e
            })
            .collect();
        assert_eq!(back, events);
    }

    #[test]
    fn unchanged_events_are_written_back_byte_for_byte() {
        let batch = Batch::from_events(&[ev(1), ev(2)]);
        let decoded: Vec<Event> = batch
            .decode()
            .unwrap()
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        assert!(decoded[0].raw(RawCodec::Protobuf).is_some());
        assert_eq!(Batch::from_events(&decoded), batch);
    }

    #[test]
    fn unknown_batch_fields_are_skipped_and_an_empty_batch_is_empty() {
        let mut bytes = BytesMut::new();
        bytes.put_slice(&[2 << 3, 150, 1]); // field 2, varint 150
        bytes.put_slice(Batch::from_events(&[ev(4)]).as_bytes());
        bytes.put_slice(&[3 << 3 | 5, 1, 2, 3, 4]); // field 3, fixed32
        let got = Batch::from_bytes(bytes.freeze()).decode().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0.offset, 4);
        assert!(Batch::default().decode().unwrap().is_empty());
    }

    #[test]
    fn corrupt_batches_say_where() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x0a, 0x05, 0x08], "length 5 at byte 1 runs past the end"),
            (&[0x08, 0x01], "field 1 (events) at byte 0 has wire type 0"),
            (&[0x0a, 0x02, 0x12, 0x01], "event 0 (at byte 2)"),
            (&[0x0a, 0x02, 0x12, 0x01, 0xff], "event 0 (at byte 2)"),
            (&[0x00], "invalid field number 0"),
            (&[0x0a], "cut off"),
            (&[0x0a, 0x01, 0x1a], "event 0"),
        ];
        for (bytes, want) in cases {
            let err = Batch::from_bytes(Bytes::copy_from_slice(bytes))
                .decode()
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{bytes:?}: {err}");
        }
        // Bad UTF-8 in `type`.
        let err = Batch::from_bytes(Bytes::from_static(&[0x0a, 0x03, 0x1a, 0x01, 0xff]))
            .decode()
            .unwrap_err()
            .to_string();
        assert!(err.contains("not valid UTF-8"), "{err}");
    }

    #[test]
    fn the_writer_counts_and_starts_over() {
        let mut w = BatchWriter::default();
        w.push(&ev(1));
        w.push(&ev(2));
        assert_eq!(w.events(), 2);
        let first = w.finish();
        assert_eq!((w.events(), w.len()), (0, 0));
        w.push(&ev(3));
        let second = w.finish();
        assert_eq!(first.decode().unwrap().len(), 2);
        assert_eq!(second.decode().unwrap()[0].0.offset, 3);
    }
}
