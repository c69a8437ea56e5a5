//! File names from source positions (SPEC section 8), and what the names
//! already committed say about them.
//!
//! Rows of events read from a Kafka topic partition go to files of their
//! own per hour and partition, named
//! `part-TOPIC_PARTITION_FIRST_LAST.parquet` by the first and last offset
//! they hold (offsets zero-padded to 20 digits, so names sort by offset).
//! The names committed in an hour's directory are then a record of what is
//! delivered: an event whose offset lies in a committed file's range is
//! already in that file, and a replay (a restart from the last committed
//! Kafka offset, a redelivery after a failure, a second backfill of the
//! same range) skips it instead of writing it twice. A file being written
//! is closed before it would reach the first offset of a committed file,
//! so ranges never overlap.

use std::collections::HashMap;

use dab_api::Text;

/// An hour since the epoch, a topic and a partition: the rows one file
/// holds.
pub(super) type Key = (i64, Text, i32);

/// The final name of a file of `topic`'s `partition` from `first` to
/// `last`.
pub(super) fn name(topic: &str, partition: i32, first: i64, last: i64) -> String {
    format!("part-{topic}_{partition}_{first:020}_{last:020}.parquet")
}

/// (topic, partition, first, last) of a name made by [`name`]; `None` for
/// any other name (files of sources without positions, temporary names).
pub(super) fn parse(name: &str) -> Option<(&str, i32, i64, i64)> {
    let stem = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    let mut it = stem.rsplitn(4, '_');
    let last: i64 = it.next()?.parse().ok()?;
    let first: i64 = it.next()?.parse().ok()?;
    let partition: i32 = it.next()?.parse().ok()?;
    let topic = it.next()?;
    (!topic.is_empty() && (0..=last).contains(&first)).then_some((topic, partition, first, last))
}

/// What is known of the committed files, per key.
#[derive(Debug, Default)]
pub(super) struct Committed {
    /// Ranges (first, last), sorted, of the keys listed so far.
    ranges: HashMap<Key, Vec<(i64, i64)>>,
    /// The highest offset taken per key since it was listed: an offset at
    /// or below it is a replay, and the key is listed again first.
    seen: HashMap<Key, i64>,
}

impl Committed {
    /// Whether `key` must be listed before an event at `offset` is taken:
    /// it never was, or the offset goes back (a replay, which may follow
    /// files another process committed meanwhile).
    pub fn needs_listing(&self, key: &Key, offset: i64) -> bool {
        !self.ranges.contains_key(key) || self.seen.get(key).is_some_and(|s| offset <= *s)
    }

    /// Records what a listing found for `key` (possibly nothing).
    pub fn listed(&mut self, key: Key, mut found: Vec<(i64, i64)>) {
        found.sort_unstable();
        self.seen.remove(&key);
        self.ranges.insert(key, found);
    }

    /// Whether a committed file of `key` holds `offset`. Ranges are
    /// sorted and disjoint: a binary search (an hour of a busy partition
    /// can have thousands of files).
    pub fn holds(&self, key: &Key, offset: i64) -> bool {
        self.ranges.get(key).is_some_and(|r| {
            let after = r.partition_point(|(f, _)| *f <= offset);
            after > 0 && r[after - 1].1 >= offset
        })
    }

    /// The first offset of the first committed file of `key` after
    /// `offset`: a file starting at `offset` must end before it.
    pub fn next_start(&self, key: &Key, offset: i64) -> Option<i64> {
        let r = self.ranges.get(key)?;
        r.get(r.partition_point(|(f, _)| *f <= offset))
            .map(|(f, _)| *f)
    }

    pub fn saw(&mut self, key: &Key, offset: i64) {
        let s = self.seen.entry(key.clone()).or_insert(offset);
        *s = (*s).max(offset);
    }

    /// A file of `key` from `first` to `last` was committed.
    pub fn add(&mut self, key: Key, first: i64, last: i64) {
        let r = self.ranges.entry(key).or_default();
        let at = r.partition_point(|x| *x < (first, last));
        r.insert(at, (first, last));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_sort_by_offset() {
        for (topic, p, f, l) in [
            ("events", 0, 0, 0),
            ("a_b-c.d", 17, 5, 99),
            ("t", i32::MAX, i64::MAX - 1, i64::MAX),
        ] {
            let n = name(topic, p, f, l);
            assert_eq!(parse(&n), Some((topic, p, f, l)), "{n}");
        }
        assert!(name("t", 0, 9, 9) < name("t", 0, 10, 10));
        for other in [
            "part-18ee904d5cef90a0-75fd-000001.parquet",
            ".part-t_0_1_2.parquet.tmp",
            "part-t_0_5_4.parquet",
            "part-_0_1_2.parquet",
            "part-t_x_1_2.parquet",
            "part-t_0_-1_2.parquet",
        ] {
            assert_eq!(parse(other), None, "{other}");
        }
    }

    #[test]
    fn committed_ranges_answer_holds_and_next_start() {
        let key: Key = (5, Text::from("t"), 2);
        let mut c = Committed::default();
        assert!(c.needs_listing(&key, 0));
        c.listed(key.clone(), vec![(20, 29), (0, 9)]);
        assert!(!c.needs_listing(&key, 0));
        assert!(c.holds(&key, 0) && c.holds(&key, 9) && c.holds(&key, 25));
        assert!(!c.holds(&key, 10) && !c.holds(&key, 30));
        assert_eq!(c.next_start(&key, 10), Some(20));
        assert_eq!(c.next_start(&key, 20), None);
        c.saw(&key, 12);
        assert!(c.needs_listing(&key, 12), "a replay lists again");
        assert!(!c.needs_listing(&key, 13));
        c.add(key.clone(), 10, 12);
        assert!(c.holds(&key, 11));
        c.add(key.clone(), 40, 49);
        assert!(c.holds(&key, 45) && c.holds(&key, 40) && c.holds(&key, 49));
        assert!(!c.holds(&key, 35) && !c.holds(&key, 50) && !c.holds(&key, -1));
        assert_eq!(c.next_start(&key, 30), Some(40));
        assert_eq!(c.next_start(&key, 12), Some(20));
        assert_eq!(c.next_start(&key, 49), None);
        let other: Key = (5, Text::from("t"), 3);
        assert!(!c.holds(&other, 11) && c.needs_listing(&other, 11));
    }
}
