//! The engine: assigns events to windows, keeps one entry of aggregate
//! states per (window, group), tracks watermarks per input partition, and
//! hands out results once the watermark closes their window.

use std::collections::BTreeMap;
use std::collections::HashMap;

use foldhash::fast::RandomState;

use crate::agg::AggState;
use crate::codec::{Reader, Writer};
use crate::hash::hash64;
use crate::value::{AggValue, Value};
use crate::{AggFn, ConfigError, DecodeError, WindowKind, WindowSpec};

type Groups = HashMap<Box<[u8]>, Entry, RandomState>;

/// Most windows one event may belong to (`size / every` of a sliding
/// window); [`Engine::new`] refuses more.
pub const MAX_WINDOWS_PER_EVENT: i64 = 10_000;

/// One event as the engine sees it.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// The input partition (or host) it came from.
    pub partition: u32,
    /// Its time in ns (event time or arrival time: the caller's choice).
    pub time: i64,
    /// The current arrival time in ns (for idle partitions).
    pub arrival: i64,
    /// The group key, encoded by the caller; never interpreted.
    pub key: &'a [u8],
    /// One value per aggregate, in the spec's order; missing ones count as
    /// [`Value::Absent`], extra ones are ignored.
    pub values: &'a [Value<'a>],
}

/// What [`Engine::absorb`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absorb {
    /// Added to its window(s).
    Absorbed,
    /// Every window it belongs to is closed already; nothing was added.
    Late,
    /// It would have opened a (window, group) entry past `max_groups`;
    /// nothing was added and it was counted.
    Overflow,
}

/// A result of one (window, group).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult {
    /// Inclusive start, ns.
    pub start: i64,
    /// Exclusive end, ns.
    pub end: i64,
    /// The group key as the caller gave it.
    pub key: Vec<u8>,
    /// One value per aggregate, in the spec's order.
    pub values: Vec<AggValue>,
    /// False for an `early` partial result; the final one follows later.
    pub is_final: bool,
}

/// Counters for metrics; `late` and `overflow` are part of the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub watermark: i64,
    pub late: u64,
    pub overflow: u64,
    pub open_entries: usize,
}

/// What changed since the last [`Engine::take_dirty`]: entries to write
/// (store key, encoded state) and store keys to delete, each sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dirty {
    pub written: Vec<(Vec<u8>, Vec<u8>)>,
    pub deleted: Vec<Vec<u8>>,
}

#[derive(Debug, Clone)]
struct Entry {
    start: i64,
    end: i64,
    /// The latest event time (sessions only: the end saturates at
    /// i64::MAX, this does not).
    last: i64,
    aggs: Vec<AggState>,
    /// Changed since the last `take_dirty`.
    dirty: bool,
    /// Changed since the last early emission.
    early_dirty: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Part {
    id: u32,
    max_ts: i64,
    last_arrival: i64,
}

#[derive(Debug, Clone)]
enum Store {
    /// Tumbling and sliding: window start -> groups.
    Fixed(BTreeMap<i64, Groups>),
    /// Sessions: group -> its sessions, sorted by start, disjoint.
    Session(HashMap<Box<[u8]>, Vec<Entry>, RandomState>),
}

/// The window and aggregate engine. See the crate documentation.
#[derive(Debug, Clone)]
pub struct Engine {
    spec: WindowSpec,
    store: Store,
    parts: Vec<Part>,
    wm: i64,
    seq: u64,
    late: u64,
    overflow: u64,
    entries: usize,
    next_early: Option<i64>,
    /// A lower bound of every open session's end (sessions only).
    min_session_end: i64,
    deleted: Vec<Vec<u8>>,
    scratch: Vec<u8>,
}

/// The store key of an entry: the window start, big-endian with the sign
/// bit flipped (so keys sort by start), then the group key bytes.
pub fn entry_key(start: i64, group: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + group.len());
    k.extend_from_slice(&((start as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(group);
    k
}

fn fresh_aggs(aggs: &[(String, AggFn)]) -> Vec<AggState> {
    aggs.iter().map(|(_, f)| AggState::new(f)).collect()
}

fn split_key(key: &[u8]) -> Result<(i64, &[u8]), DecodeError> {
    let (s, g) = key.split_at_checked(8).ok_or(DecodeError::Truncated {
        what: "entry key",
        at: 0,
    })?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(((u64::from_be_bytes(a) ^ (1 << 63)) as i64, g))
}

const ENTRY_VERSION: u8 = 1;
const DUPLICATE: DecodeError = DecodeError::Invalid {
    what: "entry key (given twice)",
    at: 0,
};
const BOOK_VERSION: u8 = 1;

impl Engine {
    /// An empty engine.
    pub fn new(spec: WindowSpec) -> Result<Self, ConfigError> {
        spec.check()?;
        if let WindowKind::Sliding { size, every } = spec.kind {
            let per = size / every + i64::from(size % every != 0);
            if per > MAX_WINDOWS_PER_EVENT {
                return Err(ConfigError::TooManyWindows {
                    per,
                    max: MAX_WINDOWS_PER_EVENT,
                });
            }
        }
        let store = match spec.kind {
            WindowKind::Session { .. } => Store::Session(HashMap::default()),
            _ => Store::Fixed(BTreeMap::new()),
        };
        Ok(Engine {
            spec,
            store,
            parts: Vec::new(),
            wm: i64::MIN,
            seq: 0,
            late: 0,
            overflow: 0,
            entries: 0,
            next_early: None,
            min_session_end: i64::MAX,
            deleted: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// The spec the engine runs.
    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }

    pub fn stats(&self) -> Stats {
        Stats {
            watermark: self.wm,
            late: self.late,
            overflow: self.overflow,
            open_entries: self.entries,
        }
    }

    /// The engine watermark: the minimum over partitions that are not idle
    /// of the largest time each has seen (the maximum over all of them when
    /// all are idle); it never goes back.
    pub fn watermark(&self) -> i64 {
        self.wm
    }

    fn recompute_wm(&mut self, now: i64) {
        let mut min_active: Option<i64> = None;
        let mut max_all: Option<i64> = None;
        for p in &self.parts {
            max_all = Some(max_all.map_or(p.max_ts, |m| m.max(p.max_ts)));
            let idle = self
                .spec
                .idle_after
                .is_some_and(|d| now.saturating_sub(p.last_arrival) >= d);
            if !idle {
                min_active = Some(min_active.map_or(p.max_ts, |m| m.min(p.max_ts)));
            }
        }
        if let Some(c) = min_active.or(max_all) {
            self.wm = self.wm.max(c);
        }
    }

    /// Raises the watermark to `to` (never lowers it): with time = arrival
    /// the caller raises it to the current time before [`Engine::poll`].
    pub fn advance_watermark(&mut self, to: i64) {
        self.wm = self.wm.max(to);
    }

    /// Makes partition `id` known before its first event (e.g. when a
    /// Kafka partition is assigned): until it has an event or goes idle it
    /// holds the watermark where it is. Without this, a partition holds the
    /// watermark only from its first event on.
    pub fn register_partition(&mut self, id: u32, now: i64) {
        if let Err(i) = self.parts.binary_search_by_key(&id, |p| p.id) {
            self.parts.insert(
                i,
                Part {
                    id,
                    max_ts: i64::MIN,
                    last_arrival: now,
                },
            );
        }
    }

    /// Input from partition `id` at `now` that carried no event for the
    /// engine (the caller recognised it as already absorbed, a replay after
    /// a restart): it keeps the partition from going idle, so that it goes
    /// on holding the watermark while it catches up.
    pub fn touch_partition(&mut self, id: u32, now: i64) {
        if let Ok(i) = self.parts.binary_search_by_key(&id, |p| p.id) {
            let p = &mut self.parts[i];
            p.last_arrival = p.last_arrival.max(now);
        }
    }

    /// After [`Engine::restore`]: every partition counts as heard from at
    /// `now`, so that the time the process was down does not make them
    /// idle (an idle partition stops holding the watermark, and its
    /// events, replayed later, would be late).
    pub fn resume_partitions(&mut self, now: i64) {
        for p in &mut self.parts {
            p.last_arrival = p.last_arrival.max(now);
        }
    }

    fn note_partition(&mut self, id: u32, ts: i64, now: i64) {
        let raised = match self.parts.binary_search_by_key(&id, |p| p.id) {
            Ok(i) => {
                let p = &mut self.parts[i];
                p.last_arrival = now;
                let raised = ts > p.max_ts;
                p.max_ts = p.max_ts.max(ts);
                raised
            }
            Err(i) => {
                self.parts.insert(
                    i,
                    Part {
                        id,
                        max_ts: ts,
                        last_arrival: now,
                    },
                );
                true
            }
        };
        if raised || self.spec.idle_after.is_some() {
            self.recompute_wm(now);
        }
    }

    /// Takes one event. The partition's watermark is raised first, so an
    /// event never makes itself late.
    pub fn absorb(&mut self, ev: &Event<'_>) -> Absorb {
        self.note_partition(ev.partition, ev.time, ev.arrival);
        // Wrapping and saturating: restored bookkeeping may hold anything.
        self.seq = self.seq.wrapping_add(1);
        let out = match self.spec.kind {
            WindowKind::Tumbling { size } => self.absorb_fixed(ev, size, size),
            WindowKind::Sliding { size, every } => self.absorb_fixed(ev, size, every),
            WindowKind::Session { gap } => self.absorb_session(ev, gap),
        };
        match out {
            Absorb::Late => self.late = self.late.saturating_add(1),
            Absorb::Overflow => self.overflow = self.overflow.saturating_add(1),
            Absorb::Absorbed => {}
        }
        out
    }

    fn closed(&self, end: i64) -> bool {
        end.saturating_add(self.spec.lateness) <= self.wm
    }

    fn update(aggs: &mut [AggState], ev: &Event<'_>, seq: u64, scratch: &mut Vec<u8>) {
        for (i, a) in aggs.iter_mut().enumerate() {
            let v = ev.values.get(i).copied().unwrap_or(Value::Absent);
            a.update(&v, ev.time, seq, scratch);
        }
    }

    fn absorb_fixed(&mut self, ev: &Event<'_>, size: i64, every: i64) -> Absorb {
        // Window starts k * every with start <= t < start + size, latest first;
        // computed in i128 so that no timestamp overflows.
        let t = i128::from(ev.time);
        let step = i128::from(every);
        // An i64 division (an i128 one costs more); it cannot overflow as
        // every > 0.
        let last = i128::from(ev.time.div_euclid(every)) * step;
        let clamp = |x: i128| x.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        let mut open: [i64; 4] = [0; 4];
        let mut many: Vec<i64> = Vec::new();
        let mut n = 0usize;
        let mut s = last;
        while s > t - i128::from(size) {
            let start = clamp(s);
            let end = clamp(s + i128::from(size));
            if !self.closed(end) {
                if n < open.len() {
                    open[n] = start;
                } else {
                    if n == open.len() {
                        many.extend_from_slice(&open);
                    }
                    many.push(start);
                }
                n += 1;
            }
            if s < i128::from(i64::MIN) {
                break;
            }
            s -= step;
        }
        if n == 0 {
            return Absorb::Late;
        }
        let starts: &[i64] = if n <= open.len() { &open[..n] } else { &many };
        let Store::Fixed(windows) = &mut self.store else {
            return Absorb::Late;
        };
        // Only near the bound is it worth looking up which entries are new
        // (an extra lookup per window on the hot path otherwise).
        if self.entries + starts.len() > self.spec.max_groups {
            let missing = starts
                .iter()
                .filter(|st| windows.get(st).is_none_or(|g| !g.contains_key(ev.key)))
                .count();
            if missing > 0 && self.entries + missing > self.spec.max_groups {
                return Absorb::Overflow;
            }
        }
        let seq = self.seq;
        for &start in starts {
            let groups = windows.entry(start).or_default();
            let entry = match groups.get_mut(ev.key) {
                Some(e) => e,
                None => {
                    let aggs = fresh_aggs(&self.spec.aggs);
                    let end = clamp(i128::from(start) + i128::from(size));
                    self.entries += 1;
                    groups.entry(ev.key.into()).or_insert(Entry {
                        start,
                        end,
                        last: end,
                        aggs,
                        dirty: true,
                        early_dirty: true,
                    })
                }
            };
            Self::update(&mut entry.aggs, ev, seq, &mut self.scratch);
            entry.dirty = true;
            entry.early_dirty = true;
        }
        Absorb::Absorbed
    }

    fn absorb_session(&mut self, ev: &Event<'_>, gap: i64) -> Absorb {
        // Late when more than `lateness` behind the watermark: then no
        // session this event could join is still open, and no future
        // non-late event can join a closed one, so sessions are exactly
        // those of the non-late events taken all at once.
        if ev.time.saturating_add(self.spec.lateness) < self.wm {
            return Absorb::Late;
        }
        let lo = ev.time;
        let hi = ev.time.saturating_add(gap);
        // Overlap is decided in i128: near i64::MAX the ends saturate.
        let (lo_w, hi_w, gap_w) = (
            i128::from(lo),
            i128::from(lo) + i128::from(gap),
            i128::from(gap),
        );
        let spec_aggs = &self.spec.aggs;
        let seq = self.seq;
        let track = self.spec.track_changes;
        let full = self.entries >= self.spec.max_groups;
        let Store::Session(groups) = &mut self.store else {
            return Absorb::Late;
        };
        let sessions = match groups.get_mut(ev.key) {
            Some(s) => s,
            None if full => return Absorb::Overflow,
            None => groups.entry(ev.key.into()).or_default(),
        };
        // Sessions overlapping [lo, hi): a contiguous run.
        let first = sessions.partition_point(|s| i128::from(s.last) + gap_w <= lo_w);
        let mut last = first;
        while last < sessions.len() && i128::from(sessions[last].start) < hi_w {
            last += 1;
        }
        if first == last {
            if full {
                if sessions.is_empty() {
                    groups.remove(ev.key);
                }
                return Absorb::Overflow;
            }
            let mut e = Entry {
                start: lo,
                end: hi,
                last: lo,
                aggs: fresh_aggs(spec_aggs),
                dirty: true,
                early_dirty: true,
            };
            Self::update(&mut e.aggs, ev, seq, &mut self.scratch);
            sessions.insert(first, e);
            self.entries += 1;
            self.min_session_end = self.min_session_end.min(hi);
            return Absorb::Absorbed;
        }
        let mut merged: Vec<Entry> = sessions.drain(first..last).collect();
        let mut base = merged.remove(0);
        let old_start = base.start;
        for other in merged {
            if track {
                self.deleted.push(entry_key(other.start, ev.key));
            }
            self.entries -= 1;
            base.end = base.end.max(other.end);
            base.last = base.last.max(other.last);
            for (a, b) in base.aggs.iter_mut().zip(other.aggs) {
                a.merge(b);
            }
        }
        base.start = base.start.min(lo);
        base.end = base.end.max(hi);
        base.last = base.last.max(lo);
        if base.start != old_start && track {
            self.deleted.push(entry_key(old_start, ev.key));
        }
        Self::update(&mut base.aggs, ev, seq, &mut self.scratch);
        base.dirty = true;
        base.early_dirty = true;
        sessions.insert(first, base);
        Absorb::Absorbed
    }

    fn result_of(&self, key: &[u8], e: &Entry, is_final: bool) -> WindowResult {
        WindowResult {
            start: e.start,
            end: e.end,
            key: key.to_vec(),
            values: e
                .aggs
                .iter()
                .zip(&self.spec.aggs)
                .map(|(a, (_, f))| a.result(f))
                .collect(),
            is_final,
        }
    }

    /// Results that became final (the watermark passed `end + lateness`),
    /// ordered by window end then group key, their state dropped; then, with
    /// `early` set and `early` of arrival time gone since the last ones,
    /// partial results of the open entries changed since then, in the same
    /// order. `now` is the current arrival time (for idle partitions and
    /// `early`).
    pub fn poll(&mut self, now: i64) -> Vec<WindowResult> {
        self.recompute_wm(now);
        let limit = self.wm.saturating_sub(self.spec.lateness);
        let mut out = self.close(|end| end <= limit);
        if let Some(d) = self.spec.early {
            match self.next_early {
                Some(t) if now >= t => {
                    out.extend(self.partials());
                    self.next_early = Some(now.saturating_add(d));
                }
                Some(_) => {}
                None => self.next_early = Some(now.saturating_add(d)),
            }
        }
        out
    }

    /// Every open entry as a final result (end of input), in the same order
    /// as [`Engine::poll`], state dropped.
    pub fn flush(&mut self) -> Vec<WindowResult> {
        self.close(|_| true)
    }

    /// Closes the entries whose end satisfies `done`. `done` must be
    /// monotone (true for an end implies true for every smaller end).
    fn close(&mut self, done: impl Fn(i64) -> bool) -> Vec<WindowResult> {
        let mut closed: Vec<(Box<[u8]>, Entry)> = Vec::new();
        match &mut self.store {
            Store::Fixed(windows) => {
                while let Some(w) = windows.first_entry() {
                    let Some(e) = w.get().values().next() else {
                        w.remove();
                        continue;
                    };
                    if !done(e.end) {
                        break;
                    }
                    let mut groups: Vec<_> = w.remove().into_iter().collect();
                    groups.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    closed.extend(groups);
                }
            }
            Store::Session(groups) => {
                if !done(self.min_session_end) {
                    return Vec::new();
                }
                let mut min_end = i64::MAX;
                groups.retain(|key, sessions| {
                    let n = sessions.partition_point(|s| done(s.end));
                    // Sessions are disjoint and sorted, so ends ascend too.
                    for s in sessions.drain(..n) {
                        closed.push((key.clone(), s));
                    }
                    if let Some(s) = sessions.first() {
                        min_end = min_end.min(s.end);
                    }
                    !sessions.is_empty()
                });
                self.min_session_end = min_end;
                closed.sort_unstable_by(|a, b| {
                    (a.1.end, &a.0, a.1.start).cmp(&(b.1.end, &b.0, b.1.start))
                });
            }
        }
        self.entries -= closed.len();
        let mut out = Vec::with_capacity(closed.len());
        for (key, e) in closed {
            out.push(self.result_of(&key, &e, true));
            if self.spec.track_changes {
                self.deleted.push(entry_key(e.start, &key));
            }
        }
        out
    }

    fn partials(&mut self) -> Vec<WindowResult> {
        let mut changed: Vec<(&[u8], &mut Entry)> = Vec::new();
        match &mut self.store {
            Store::Fixed(windows) => {
                for groups in windows.values_mut() {
                    changed.extend(
                        groups
                            .iter_mut()
                            .filter(|(_, e)| e.early_dirty)
                            .map(|(k, e)| (&**k, e)),
                    );
                }
            }
            Store::Session(groups) => {
                for (k, sessions) in groups.iter_mut() {
                    changed.extend(
                        sessions
                            .iter_mut()
                            .filter(|e| e.early_dirty)
                            .map(|e| (&**k, e)),
                    );
                }
            }
        }
        changed.sort_unstable_by(|a, b| (a.1.end, a.0, a.1.start).cmp(&(b.1.end, b.0, b.1.start)));
        let aggs = &self.spec.aggs;
        changed
            .into_iter()
            .map(|(key, e)| {
                // The flag is part of the saved entry, so the entry must be
                // written again for a restore to emit the same partials.
                e.early_dirty = false;
                e.dirty = true;
                WindowResult {
                    start: e.start,
                    end: e.end,
                    key: key.to_vec(),
                    values: e
                        .aggs
                        .iter()
                        .zip(aggs)
                        .map(|(a, (_, f))| a.result(f))
                        .collect(),
                    is_final: false,
                }
            })
            .collect()
    }

    fn for_each_entry_mut(&mut self, mut f: impl FnMut(&[u8], &mut Entry)) {
        match &mut self.store {
            Store::Fixed(windows) => {
                for groups in windows.values_mut() {
                    for (k, e) in groups.iter_mut() {
                        f(k, e);
                    }
                }
            }
            Store::Session(groups) => {
                for (k, sessions) in groups.iter_mut() {
                    for e in sessions.iter_mut() {
                        f(k, e);
                    }
                }
            }
        }
    }

    /// The entries changed and the entries deleted since the last call,
    /// for a checkpoint; together with [`Engine::encode_bookkeeping`] taken
    /// at the same moment they are the engine's whole state.
    pub fn take_dirty(&mut self) -> Dirty {
        let mut written = Vec::new();
        self.for_each_entry_mut(|k, e| {
            if e.dirty {
                e.dirty = false;
                written.push((entry_key(e.start, k), encode_entry(e)));
            }
        });
        written.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut deleted = std::mem::take(&mut self.deleted);
        deleted.sort_unstable();
        deleted.dedup();
        deleted.retain(|k| {
            written
                .binary_search_by(|(w, _)| w.as_slice().cmp(k))
                .is_err()
        });
        // A deleted key whose entry exists again but is unchanged (not
        // possible today; cheap to rule out) must not be deleted.
        Dirty { written, deleted }
    }

    /// Every open entry, encoded (a full snapshot rather than changes).
    pub fn snapshot(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut all = Vec::with_capacity(self.entries);
        self.for_each_entry_mut(|k, e| all.push((entry_key(e.start, k), encode_entry(e))));
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The watermark bookkeeping: partitions, engine watermark, arrival
    /// sequence, late and overflow counters, the next early emission, and a
    /// fingerprint of the window kind and aggregate functions.
    pub fn encode_bookkeeping(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(BOOK_VERSION);
        w.u64(fingerprint(&self.spec));
        w.i64(self.wm);
        w.u64(self.seq);
        w.u64(self.late);
        w.u64(self.overflow);
        match self.next_early {
            None => w.u8(0),
            Some(t) => {
                w.u8(1);
                w.i64(t);
            }
        }
        w.var(self.parts.len() as u64);
        for p in &self.parts {
            w.var(u64::from(p.id));
            w.i64(p.max_ts);
            w.i64(p.last_arrival);
        }
        w.buf
    }

    /// Rebuilds the engine a checkpoint holds: the entries the store keeps
    /// (every `written` of [`Engine::take_dirty`] minus every `deleted`)
    /// and the bookkeeping taken with the last of them. The result is
    /// equal, for every later call, to the engine that was checkpointed.
    pub fn restore<K, V>(
        spec: WindowSpec,
        entries: impl IntoIterator<Item = (K, V)>,
        bookkeeping: &[u8],
    ) -> Result<Self, RestoreError>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let mut engine = Engine::new(spec)?;
        engine
            .decode_bookkeeping(bookkeeping)
            .map_err(RestoreError::Bookkeeping)?;
        // Fixed windows: decode everything first, so that each window's
        // map is built at its final size instead of growing through a
        // million inserts.
        let mut fixed: Vec<(i64, Box<[u8]>, Entry)> = Vec::new();
        for (k, v) in entries {
            let (k, v) = (k.as_ref(), v.as_ref());
            let wrap = |error| RestoreError::Entry {
                key: k.to_vec(),
                error,
            };
            let (start, group) = split_key(k).map_err(wrap)?;
            let e = decode_entry(&engine.spec.aggs, start, v).map_err(wrap)?;
            match &mut engine.store {
                Store::Fixed(_) => fixed.push((start, group.into(), e)),
                Store::Session(groups) => {
                    engine.min_session_end = engine.min_session_end.min(e.end);
                    let sessions = groups.entry(group.into()).or_default();
                    let at = sessions.partition_point(|s| s.start < start);
                    if sessions.get(at).is_some_and(|s| s.start == start) {
                        return Err(wrap(DUPLICATE));
                    }
                    sessions.insert(at, e);
                    engine.entries += 1;
                }
            }
        }
        if let Store::Fixed(windows) = &mut engine.store {
            // A store hands entries in key order, i.e. by window start:
            // then this sort only checks that.
            fixed.sort_by_key(|(start, _, _)| *start);
            let mut runs: Vec<(i64, usize)> = Vec::new();
            for (start, _, _) in &fixed {
                match runs.last_mut() {
                    Some((s, n)) if s == start => *n += 1,
                    _ => runs.push((*start, 1)),
                }
            }
            let mut rest = fixed.into_iter();
            for (start, n) in runs {
                let groups = windows.entry(start).or_default();
                groups.reserve(n);
                for (_, group, e) in rest.by_ref().take(n) {
                    match groups.entry(group) {
                        std::collections::hash_map::Entry::Occupied(o) => {
                            let key = entry_key(start, o.key());
                            return Err(RestoreError::Entry {
                                key,
                                error: DUPLICATE,
                            });
                        }
                        std::collections::hash_map::Entry::Vacant(v) => {
                            v.insert(e);
                        }
                    }
                    engine.entries += 1;
                }
            }
        }
        Ok(engine)
    }

    fn decode_bookkeeping(&mut self, b: &[u8]) -> Result<(), DecodeError> {
        let mut r = Reader::new(b);
        let at = r.pos();
        if r.u8("bookkeeping version")? != BOOK_VERSION {
            return Err(DecodeError::Invalid {
                what: "bookkeeping version",
                at,
            });
        }
        let at = r.pos();
        if r.u64("spec fingerprint")? != fingerprint(&self.spec) {
            return Err(DecodeError::Invalid {
                what: "spec fingerprint (the window or aggregates changed)",
                at,
            });
        }
        self.wm = r.i64("watermark")?;
        self.seq = r.u64("sequence")?;
        self.late = r.u64("late count")?;
        self.overflow = r.u64("overflow count")?;
        let at = r.pos();
        self.next_early = match r.u8("early flag")? {
            0 => None,
            1 => Some(r.i64("next early")?),
            _ => {
                return Err(DecodeError::Invalid {
                    what: "early flag",
                    at,
                })
            }
        };
        let n = r.len("partition count")?;
        let mut parts: Vec<Part> = Vec::with_capacity(n);
        for _ in 0..n {
            let at = r.pos();
            let id = u32::try_from(r.var("partition id")?).map_err(|_| DecodeError::Invalid {
                what: "partition id",
                at,
            })?;
            if parts.last().is_some_and(|p| p.id >= id) {
                return Err(DecodeError::Invalid {
                    what: "partition order",
                    at,
                });
            }
            parts.push(Part {
                id,
                max_ts: r.i64("partition max time")?,
                last_arrival: r.i64("partition arrival")?,
            });
        }
        r.finish("bookkeeping")?;
        self.parts = parts;
        Ok(())
    }
}

/// Why [`Engine::restore`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("window bookkeeping: {0}")]
    Bookkeeping(DecodeError),
    #[error("window entry {key:02x?}: {error}")]
    Entry { key: Vec<u8>, error: DecodeError },
}

fn fingerprint(spec: &WindowSpec) -> u64 {
    let mut w = Writer::default();
    match spec.kind {
        WindowKind::Tumbling { size } => {
            w.u8(1);
            w.i64(size);
        }
        WindowKind::Sliding { size, every } => {
            w.u8(2);
            w.i64(size);
            w.i64(every);
        }
        WindowKind::Session { gap } => {
            w.u8(3);
            w.i64(gap);
        }
    }
    for (_, f) in &spec.aggs {
        w.u8(AggState::new(f).encode_tag());
    }
    hash64(&w.buf)
}

fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(ENTRY_VERSION);
    w.i64(e.end);
    w.i64(e.last);
    w.u8(u8::from(e.early_dirty));
    w.var(e.aggs.len() as u64);
    for a in &e.aggs {
        a.encode(&mut w);
    }
    w.buf
}

fn decode_entry(aggs: &[(String, AggFn)], start: i64, b: &[u8]) -> Result<Entry, DecodeError> {
    let mut r = Reader::new(b);
    let at = r.pos();
    if r.u8("entry version")? != ENTRY_VERSION {
        return Err(DecodeError::Invalid {
            what: "entry version",
            at,
        });
    }
    let end = r.i64("window end")?;
    let last = r.i64("latest time")?;
    let at = r.pos();
    let early_dirty = match r.u8("entry flags")? {
        0 => false,
        1 => true,
        _ => {
            return Err(DecodeError::Invalid {
                what: "entry flags",
                at,
            })
        }
    };
    let at = r.pos();
    if r.var("aggregate count")? != aggs.len() as u64 {
        return Err(DecodeError::Invalid {
            what: "aggregate count (the aggregate list changed?)",
            at,
        });
    }
    let mut states = Vec::with_capacity(aggs.len());
    for (_, f) in aggs {
        states.push(AggState::decode(&mut r, f)?);
    }
    r.finish("entry")?;
    Ok(Entry {
        start,
        end,
        last,
        aggs: states,
        dirty: false,
        early_dirty,
    })
}
