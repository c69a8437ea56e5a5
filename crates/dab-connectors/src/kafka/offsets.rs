//! Which offsets of each partition may be committed: the consumer records
//! each batch's range of offsets per partition as it sends the batch on,
//! and the batch's acknowledgement marks the ranges done. The commit
//! position of a partition only moves over a prefix of done ranges, so an
//! offset is never committed while an earlier event of its partition is
//! still in flight (acknowledgements may arrive out of order, through
//! fan-out and queues).
//!
//! A failed range waits: the consumer sends its events again after a
//! back-off (`resend`), and the commit position stays before it until a
//! later attempt is delivered or the consumer gives up on it (the events
//! then go to `OnError` or are counted dropped, and the range is done).
//! Nothing ever freezes a partition for good. Revoking a partition forgets
//! its ranges; late acknowledgements for them are ignored (each range
//! carries an id, so a range read again after a new assignment is never
//! confused with an old one).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// A topic and partition.
pub type Tp = (Arc<str>, i32);

#[derive(Debug, Default)]
struct Part {
    /// First offset -> range.
    pending: BTreeMap<i64, Range>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Handed on; no outcome yet.
    InFlight,
    /// Failed; waiting to be sent again.
    Waiting,
    Done,
}

#[derive(Debug, Clone, Copy)]
struct Range {
    last: i64,
    id: u64,
    state: State,
}

/// Per-partition in-flight ranges. Not thread-safe by itself; the consumer
/// keeps it behind a mutex shared with acknowledgement callbacks.
#[derive(Debug, Default)]
pub struct Offsets {
    parts: HashMap<Tp, Part>,
    next_id: u64,
    in_flight: usize,
}

/// What settling a range changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    /// Nothing new may be committed.
    None,
    /// Store this offset (the next one to read) for the partition.
    Store(i64),
}

impl Offsets {
    /// Records a range read from a partition and handed on; returns its id.
    pub fn track(&mut self, tp: &Tp, first: i64, last: i64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.in_flight += 1;
        self.parts.entry(tp.clone()).or_default().pending.insert(
            first,
            Range {
                last,
                id,
                state: State::InFlight,
            },
        );
        id
    }

    /// Marks a range delivered (or given up on for good). Returns the new
    /// commit position when the partition's prefix of done ranges grew.
    pub fn complete(&mut self, tp: &Tp, first: i64, id: u64) -> Advance {
        let Some(part) = self.parts.get_mut(tp) else {
            return Advance::None;
        };
        match part.pending.get_mut(&first) {
            // Only a range handed on: one waiting to be sent again has no
            // outstanding attempt to settle.
            Some(r) if r.id == id && r.state == State::InFlight => r.state = State::Done,
            _ => return Advance::None,
        }
        let mut store = None;
        while let Some(entry) = part.pending.first_entry() {
            if entry.get().state != State::Done {
                break;
            }
            let next = entry.get().last + 1;
            entry.remove();
            self.in_flight -= 1;
            store = Some(next);
        }
        store.map_or(Advance::None, Advance::Store)
    }

    /// Marks a range failed: the partition's commit position stays before
    /// it until it is sent again and settled. `false` when the range is no
    /// longer this consumer's (revoked, or settled already).
    pub fn fail(&mut self, tp: &Tp, first: i64, id: u64) -> bool {
        self.set(tp, first, id, State::InFlight, State::Waiting)
    }

    /// Marks a failed range handed on again. `false` when the partition was
    /// revoked meanwhile (the next owner reads it again; do not send it).
    pub fn resend(&mut self, tp: &Tp, first: i64, id: u64) -> bool {
        self.set(tp, first, id, State::Waiting, State::InFlight)
    }

    fn set(&mut self, tp: &Tp, first: i64, id: u64, from: State, to: State) -> bool {
        let Some(r) = self
            .parts
            .get_mut(tp)
            .and_then(|part| part.pending.get_mut(&first))
        else {
            return false;
        };
        if r.id != id || r.state != from {
            return false;
        }
        r.state = to;
        true
    }

    /// Forgets a revoked partition; late acknowledgements are ignored.
    pub fn revoke(&mut self, tp: &Tp) {
        if let Some(part) = self.parts.remove(tp) {
            self.in_flight -= part.pending.len();
        }
    }

    /// Ranges of this partition handed on and not yet settled (a range
    /// waiting to be sent again is not counted: nobody is working on it).
    pub fn unsettled(&self, tp: &Tp) -> usize {
        self.parts.get(tp).map_or(0, |p| {
            p.pending
                .values()
                .filter(|r| r.state == State::InFlight)
                .count()
        })
    }

    /// Ranges of every partition handed on and not yet settled.
    pub fn unsettled_total(&self) -> usize {
        self.parts
            .values()
            .map(|p| {
                p.pending
                    .values()
                    .filter(|r| r.state == State::InFlight)
                    .count()
            })
            .sum()
    }

    /// Ranges still held (in flight, waiting or done behind an unsettled
    /// one), across partitions.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Ranges of this partition waiting to be sent again.
    pub fn waiting(&self, tp: &Tp) -> usize {
        self.parts.get(tp).map_or(0, |p| {
            p.pending
                .values()
                .filter(|r| r.state == State::Waiting)
                .count()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tp(p: i32) -> Tp {
        (Arc::from("t"), p)
    }

    #[test]
    fn commits_only_over_a_prefix_of_done_ranges() {
        let mut o = Offsets::default();
        let a = o.track(&tp(0), 0, 9);
        let b = o.track(&tp(0), 10, 19);
        let c = o.track(&tp(0), 25, 30);
        assert_eq!(o.complete(&tp(0), 10, b), Advance::None);
        assert_eq!(o.complete(&tp(0), 0, a), Advance::Store(20));
        assert_eq!(o.complete(&tp(0), 25, c), Advance::Store(31));
        assert_eq!(o.in_flight(), 0);
    }

    #[test]
    fn a_failed_range_holds_its_partition_until_sent_again_and_settled() {
        let mut o = Offsets::default();
        let a = o.track(&tp(0), 0, 9);
        let b = o.track(&tp(0), 10, 19);
        let other = o.track(&tp(1), 0, 4);
        assert!(o.fail(&tp(0), 10, b));
        assert!(!o.fail(&tp(0), 10, b), "failing twice is a no-op");
        assert_eq!(o.complete(&tp(0), 0, a), Advance::Store(10));
        let c = o.track(&tp(0), 20, 29);
        assert_eq!(o.complete(&tp(0), 20, c), Advance::None);
        assert_eq!(o.waiting(&tp(0)), 1);
        assert_eq!(o.unsettled(&tp(0)), 0, "a waiting range is nobody's work");
        assert_eq!(o.complete(&tp(1), 0, other), Advance::Store(5));
        // Sent again and delivered: the commit moves past both.
        assert!(o.resend(&tp(0), 10, b));
        assert_eq!(o.unsettled(&tp(0)), 1);
        assert_eq!(o.complete(&tp(0), 10, b), Advance::Store(30));
        assert_eq!(o.in_flight(), 0);
    }

    #[test]
    fn a_range_revoked_while_waiting_is_not_sent_again() {
        let mut o = Offsets::default();
        let a = o.track(&tp(0), 0, 9);
        assert!(o.fail(&tp(0), 0, a));
        o.revoke(&tp(0));
        assert!(!o.resend(&tp(0), 0, a));
        assert_eq!(o.complete(&tp(0), 0, a), Advance::None);
        assert_eq!(o.in_flight(), 0);
    }

    #[test]
    fn stale_acknowledgements_after_revoke_are_ignored() {
        let mut o = Offsets::default();
        let old = o.track(&tp(0), 0, 9);
        o.revoke(&tp(0));
        assert_eq!(o.in_flight(), 0);
        let new = o.track(&tp(0), 0, 9);
        assert_eq!(o.complete(&tp(0), 0, old), Advance::None);
        assert_eq!(o.unsettled(&tp(0)), 1);
        assert_eq!(o.complete(&tp(0), 0, new), Advance::Store(10));
    }

    proptest! {
        /// Whatever order acknowledgements come in, and however often a
        /// range fails and is sent again first, the commit position never
        /// passes an unsettled range, and ends past the last one.
        #[test]
        fn never_commits_past_an_unsettled_range(
            sizes in proptest::collection::vec(1i64..50, 1..40),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 40),
            failures in proptest::collection::vec(0u8..3, 40),
        ) {
            let mut failures = failures;
            let mut o = Offsets::default();
            let mut ranges = Vec::new();
            let mut next = 0;
            for s in &sizes {
                let id = o.track(&tp(0), next, next + s - 1);
                ranges.push((next, next + s - 1, id));
                next += s;
            }
            let mut left: Vec<usize> = (0..ranges.len()).collect();
            let mut settled = vec![false; ranges.len()];
            let mut committed = 0;
            let mut k = 0;
            while !left.is_empty() {
                let pick = order[k % order.len()].index(left.len());
                k += 1;
                let i = left.swap_remove(pick);
                let (first, _, id) = ranges[i];
                let f = i % failures.len();
                if failures[f] > 0 {
                    // Fails, waits (commits nothing), is sent again.
                    failures[f] -= 1;
                    prop_assert!(o.fail(&tp(0), first, id));
                    prop_assert_eq!(o.complete(&tp(0), first, id), Advance::None);
                    prop_assert!(o.resend(&tp(0), first, id));
                    left.push(i);
                    continue;
                }
                settled[i] = true;
                if let Advance::Store(pos) = o.complete(&tp(0), first, id) {
                    prop_assert!(pos > committed);
                    committed = pos;
                }
                // Every range below the commit position is settled.
                for (j, (_, last, _)) in ranges.iter().enumerate() {
                    if *last < committed {
                        prop_assert!(settled[j]);
                    }
                }
            }
            prop_assert_eq!(committed, next);
            prop_assert_eq!(o.in_flight(), 0);
        }
    }
}
