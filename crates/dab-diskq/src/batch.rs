//! What a read hands out: the frames read, in one buffer, and where each
//! record's bytes are in it (no allocation per record).

/// Records read by one [`crate::DiskQueue::read`], in order.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    pub(crate) data: Vec<u8>,
    pub(crate) records: Vec<Meta>,
    pub(crate) payload_bytes: usize,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Meta {
    pub seq: u64,
    pub nanos: u64,
    pub start: usize,
    pub len: usize,
}

/// One record of a [`Batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub seq: u64,
    /// Unix nanoseconds when it was appended.
    pub append_nanos: u64,
    pub bytes: &'a [u8],
}

impl Batch {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Bytes of the records' payloads together.
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    pub fn get(&self, i: usize) -> Option<RecordRef<'_>> {
        self.records.get(i).map(|m| self.at(m))
    }

    pub fn iter(&self) -> impl Iterator<Item = RecordRef<'_>> + '_ {
        self.records.iter().map(|m| self.at(m))
    }

    /// The sequence number of the last record (to acknowledge the batch).
    pub fn last_seq(&self) -> Option<u64> {
        self.records.last().map(|m| m.seq)
    }

    fn at(&self, m: &Meta) -> RecordRef<'_> {
        RecordRef {
            seq: m.seq,
            append_nanos: m.nanos,
            bytes: self.data.get(m.start..m.start + m.len).unwrap_or_default(),
        }
    }
}

impl<'a> IntoIterator for &'a Batch {
    type Item = RecordRef<'a>;
    type IntoIter = Box<dyn Iterator<Item = RecordRef<'a>> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}
