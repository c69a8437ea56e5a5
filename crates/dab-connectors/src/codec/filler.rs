//! Fills the fields an incoming event left out (SPEC section 4): the arrival
//! time for `timestamp`, the source's name for `host`, and the source's own
//! per (host, pid, type) sequence for `offset`, so that UIDs stay unique.
//! A running source's filler also renames the reserved names its input
//! claims (`codec::reserved`), since every source's events pass through it.
//!
//! Memory is bounded: at most [`MAX_TRACKED_SEQUENCES`] keys are tracked, in
//! two generations (young and old, each at most half). A key used again
//! moves to the young one; when the young one is full the old one is
//! dropped, so the keys dropped are those unused for the longest (roughly
//! LRU, at O(1) amortised cost). A dropped key that comes back must not
//! repeat an offset it already handed out, and we no longer know which
//! offsets those were: so after a drop, every new sequence starts at the
//! highest offset any dropped key had reached (the "floor"). Until the first
//! drop, sequences start at 0. A key that comes back after a drop therefore
//! shows a jump in its offsets, never a repeat.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dab_api::connector::SourceStats;
use dab_api::{Event, Text};

use super::reserved::rename_reserved;
use super::Present;

/// The most (host, pid, type) sequences one `Filler` remembers.
pub const MAX_TRACKED_SEQUENCES: usize = 100_000;

pub struct Filler {
    host: Text,
    /// Keys are `len(host) as u64 LE, host, pid LE, type`: owned copies, so
    /// a remembered key never pins the receive buffer an event was sliced
    /// from. Values are the next offset to hand out.
    young: HashMap<Box<[u8]>, u64>,
    old: HashMap<Box<[u8]>, u64>,
    generation: usize,
    floor: u64,
    /// Reused to build lookup keys without allocating.
    scratch: Vec<u8>,
    /// Where renamed reserved names are counted (`reserved_names`).
    stats: Option<Arc<SourceStats>>,
}

impl std::fmt::Debug for Filler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filler")
            .field("host", &self.host)
            .field("tracked", &(self.young.len() + self.old.len()))
            .field("floor", &self.floor)
            .finish()
    }
}

impl Filler {
    pub fn new(source_name: &str) -> Filler {
        Filler::with_limit(source_name, MAX_TRACKED_SEQUENCES)
    }

    /// The filler of a running source: it also renames the reserved names
    /// input claims (`codec::reserved`) and counts them in `stats`.
    pub fn for_source(source_name: &str, stats: Arc<SourceStats>) -> Filler {
        Filler {
            stats: Some(stats),
            ..Filler::new(source_name)
        }
    }

    fn with_limit(source_name: &str, max_keys: usize) -> Filler {
        Filler {
            host: Text::from(source_name),
            young: HashMap::new(),
            old: HashMap::new(),
            generation: (max_keys / 2).max(1),
            floor: 0,
            scratch: Vec::new(),
            stats: None,
        }
    }

    /// Fills what `present` says is missing. Forgets the event's arrival
    /// bytes when it changes anything, since they no longer describe it.
    pub fn fill(&mut self, ev: &mut Event, present: Present) {
        if let Some(stats) = &self.stats {
            if rename_reserved(ev) {
                SourceStats::add(&stats.reserved_names, 1);
            }
        }
        if present.timestamp && present.host && present.offset {
            return;
        }
        ev.touch();
        if !present.timestamp {
            ev.timestamp = now_ns();
        }
        if !present.host {
            ev.host = self.host.clone();
        }
        if !present.offset {
            ev.offset = self.next_offset(&ev.host, ev.pid, &ev.ty);
        }
    }

    /// How many sequences are remembered now.
    pub fn tracked(&self) -> usize {
        self.young.len() + self.old.len()
    }

    fn next_offset(&mut self, host: &Text, pid: u32, ty: &Text) -> u64 {
        self.scratch.clear();
        self.scratch
            .extend_from_slice(&(host.len() as u64).to_le_bytes());
        self.scratch.extend_from_slice(host.as_bytes());
        self.scratch.extend_from_slice(&pid.to_le_bytes());
        self.scratch.extend_from_slice(ty.as_bytes());

        if let Some(next) = self.young.get_mut(self.scratch.as_slice()) {
            let offset = *next;
            *next = offset.wrapping_add(1);
            return offset;
        }
        let offset = self
            .old
            .remove(self.scratch.as_slice())
            .unwrap_or(self.floor);
        self.young
            .insert(self.scratch.as_slice().into(), offset.wrapping_add(1));
        if self.young.len() >= self.generation {
            let dropped = std::mem::replace(&mut self.old, std::mem::take(&mut self.young));
            if let Some(high) = dropped.values().copied().max() {
                self.floor = self.floor.max(high);
            }
        }
        offset
    }
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    // `Event` has a private field: no struct literals outside dab-api.
    #![allow(clippy::field_reassign_with_default)]
    use super::*;
    use bytes::Bytes;
    use dab_api::event::RawCodec;

    fn ev(host: &str, pid: u32, ty: &str) -> Event {
        // Event has a private field, so no struct literal from here.
        let mut e = Event::default();
        e.host = Text::from(host);
        e.pid = pid;
        e.ty = Text::from(ty);
        e
    }

    const NO_OFFSET: Present = Present {
        timestamp: true,
        host: true,
        offset: false,
    };

    #[test]
    fn offsets_count_per_host_pid_type_from_zero() {
        let mut f = Filler::new("src");
        let mut got = Vec::new();
        for (h, p, t) in [
            ("a", 1, "X"),
            ("a", 1, "X"),
            ("a", 2, "X"),
            ("a", 1, "Y"),
            ("b", 1, "X"),
            ("a", 1, "X"),
        ] {
            let mut e = ev(h, p, t);
            f.fill(&mut e, NO_OFFSET);
            got.push(e.offset);
        }
        assert_eq!(got, vec![0, 1, 0, 0, 0, 2]);
    }

    #[test]
    fn key_parts_do_not_run_together() {
        // ("ab", "c") and ("a", "bc") must be different sequences.
        let mut f = Filler::new("src");
        let mut e1 = ev("ab", 0, "c");
        let mut e2 = ev("a", 0, "bc");
        f.fill(&mut e1, NO_OFFSET);
        f.fill(&mut e2, NO_OFFSET);
        assert_eq!((e1.offset, e2.offset), (0, 0));
    }

    #[test]
    fn missing_host_and_timestamp_are_filled_and_raw_is_dropped() {
        let mut f = Filler::new("tcp_in");
        let mut e = ev("", 7, "T").with_raw(RawCodec::Json, Bytes::from_static(b"{}"));
        let before = now_ns();
        f.fill(&mut e, Present::default());
        assert_eq!(e.host.as_str(), "tcp_in");
        assert!(e.timestamp >= before && e.timestamp <= now_ns());
        assert_eq!(e.offset, 0);
        assert!(e.raw(RawCodec::Json).is_none());
        // The filled host is part of the sequence key.
        let mut e2 = ev("", 7, "T");
        f.fill(&mut e2, Present::default());
        assert_eq!(e2.offset, 1);
    }

    #[test]
    fn complete_event_is_left_alone_with_its_raw() {
        let mut f = Filler::new("src");
        let mut e = ev("h", 1, "T");
        e.offset = 9;
        e.timestamp = 5;
        let mut e = e.with_raw(RawCodec::Json, Bytes::from_static(b"{}"));
        f.fill(&mut e, Present::ALL);
        assert_eq!((e.offset, e.timestamp, e.host.as_str()), (9, 5, "h"));
        assert!(e.raw(RawCodec::Json).is_some());
    }

    #[test]
    fn memory_is_bounded_and_returning_keys_never_repeat_an_offset() {
        let mut f = Filler::with_limit("src", 10);
        let mut hot = ev("hot", 0, "T");
        let mut seen_hot = Vec::new();
        for i in 0..100u32 {
            // The hot key is used every round, so it survives generations.
            f.fill(&mut hot, NO_OFFSET);
            seen_hot.push(hot.offset);
            let mut cold = ev("cold", i, "T");
            f.fill(&mut cold, NO_OFFSET);
            assert!(f.tracked() <= 10, "tracked {}", f.tracked());
        }
        assert_eq!(seen_hot, (0..100).collect::<Vec<u64>>());

        // "cold 0" handed out offset 0 and was dropped long ago; it comes
        // back above everything dropped, never at 0 again.
        let mut back = ev("cold", 0, "T");
        f.fill(&mut back, NO_OFFSET);
        assert!(back.offset >= 1, "offset {}", back.offset);
    }

    #[test]
    fn default_limit_holds_under_many_distinct_keys() {
        let mut f = Filler::new("src");
        for i in 0..(MAX_TRACKED_SEQUENCES as u32 + 5_000) {
            let mut e = ev("h", i, "T");
            f.fill(&mut e, NO_OFFSET);
        }
        assert!(f.tracked() <= MAX_TRACKED_SEQUENCES);
        assert!(f.tracked() >= MAX_TRACKED_SEQUENCES / 2);
    }
}
