//! Reliability (REP) scores (SPEC section 4): per (host, pid, type) and
//! overall, at the point where they are measured.
//!
//! For each key, `expected = last − first + 1` over the offsets observed;
//! an offset is *accounted for* when it was delivered (`seen`) or dropped on
//! purpose upstream (`dropped`: filter, sample, rate limit; counted, so not
//! missing); `missing = expected − seen − dropped`;
//! `score = (expected − missing) / expected × 100`. An offset that arrives
//! after higher ones fills its gap (missing goes down). An offset accounted
//! for a second time, delivered or dropped, is a duplicate: counted in
//! `duplicates`, never in `seen`.
//!
//! # Bounded memory
//!
//! Each key keeps a watermark `base` (a multiple of 64) below which every
//! offset is *settled*, and a bitmap of the offsets from `base` up, at most
//! `Limits::window` bits (`N`). Words that fill up (64 offsets accounted
//! for) leave the front of the bitmap at once, so an in-order stream keeps
//! one or two words whatever its length; only gaps keep words alive. When an
//! offset arrives `N` or more above `base`, the window slides up to it and
//! the gaps it leaves behind are final: they stay missing.
//!
//! An offset that arrives below `base` is told apart as far as memory
//! allows: below `first` it is new (nothing below `first` was ever seen); in
//! the range below `base` that left the window by filling up, it is a
//! duplicate; in a range that was pushed out with gaps, it is *late*: too
//! late to tell a gap filled from a duplicate, so it is counted in `late`
//! and changes nothing else. A non-zero `late` says the window is too small
//! for the reordering at hand.
//!
//! Cost per tracked key (64-bit target):
//!
//! - 120 bytes in the key table (a 16-byte boxed key and 104 bytes of
//!   state), plus one control byte; the table is a power-of-two swiss table
//!   at most 7/8 full, so count 140 to 280 bytes;
//! - the key itself on the heap: `12 + len(host) + len(type)` bytes;
//! - the bitmap: 8 bytes per 64 offsets between the oldest unfilled gap and
//!   the highest offset, at most `N / 8` bytes (8 KiB for the default
//!   65,536) rounded up to a power of two of 8-byte words.
//!
//! So about 300 bytes plus the key's text for a stream without gaps, and at
//! most about 8.5 KiB for a key with old gaps. `Limits::max_keys` (default
//! 10,000) caps the keys: when a new key would pass it, the eighth of the
//! keys seen least recently is evicted (counted in `keys_evicted`); their
//! counts stay in `overall`. A key evicted and seen again starts afresh.
//! At the defaults the worst case is about 85 MiB plus the keys' text; a
//! fleet of in-order streams costs about 3 MiB. Each call also holds, until
//! it returns, 8 bytes per event of its batch (the offsets grouped by key).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};

use dab_api::Event;

/// Default bitmap window per key, in offsets (8 KiB).
pub const DEFAULT_WINDOW: u64 = 65_536;
/// Default cap on tracked keys.
pub const DEFAULT_MAX_KEYS: usize = 10_000;

/// Memory bounds of a [`Tracker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most (host, pid, type) keys tracked at once (at least 1).
    pub max_keys: usize,
    /// Offsets per key that may still arrive out of order and be told
    /// apart, in bits of bitmap; rounded up to a multiple of 64.
    pub window: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_keys: DEFAULT_MAX_KEYS,
            window: DEFAULT_WINDOW,
        }
    }
}

/// The numbers of one key, or the sums over all of them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Score {
    /// The lowest offset observed (overall: the lowest of any key).
    pub first: u64,
    /// The highest offset observed (overall: the highest of any key).
    pub last: u64,
    /// `last − first + 1` (overall: the sum over keys).
    pub expected: u64,
    /// Distinct offsets delivered.
    pub seen: u64,
    /// Distinct offsets dropped on purpose upstream.
    pub dropped: u64,
    /// `expected − seen − dropped`.
    pub missing: u64,
    /// Offsets accounted for again.
    pub duplicates: u64,
    /// Offsets that arrived below the settled window, where a gap filled
    /// and a duplicate look the same; in no other count.
    pub late: u64,
    /// `(expected − missing) / expected × 100`; 100 when nothing is expected.
    pub score: f64,
}

impl Score {
    /// Fills `expected`, `missing` and `score` from the other fields.
    fn finish(mut self) -> Score {
        let accounted = self.seen.saturating_add(self.dropped);
        self.missing = self.expected.saturating_sub(accounted);
        self.score = percent(self.expected, self.missing);
        self
    }

    /// The score in hundredths, rounded down, from the integer counts: so
    /// that "100.00" is printed only when nothing is missing.
    pub fn hundredths(&self) -> u64 {
        if self.expected == 0 {
            return 10_000;
        }
        let accounted = u128::from(self.expected - self.missing.min(self.expected));
        let h = accounted * 10_000 / u128::from(self.expected);
        u64::try_from(h).unwrap_or(10_000)
    }
}

fn percent(expected: u64, missing: u64) -> f64 {
    if expected == 0 {
        return 100.0;
    }
    let accounted = expected - missing.min(expected);
    accounted as f64 / expected as f64 * 100.0
}

/// The score of one (host, pid, type).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyScore {
    pub host: String,
    pub pid: u32,
    pub ty: String,
    pub score: Score,
}

/// A snapshot of every tracked key, sorted by host, pid and type.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Report {
    pub keys: Vec<KeyScore>,
    /// Sums over the keys, including those evicted since the start.
    pub overall: Score,
    /// Keys evicted to stay within `Limits::max_keys`.
    pub keys_evicted: u64,
}

/// Scores the events that reach one measuring point. One call per batch;
/// cheap to share between tasks (`Arc<Tracker>`).
pub struct Tracker {
    max_keys: usize,
    max_words: usize,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Tracker")
            .field("max_keys", &self.max_keys)
            .field("window", &(self.max_words * 64))
            .field("keys", &inner.keys.len())
            .field("evicted", &inner.evicted)
            .finish()
    }
}

#[derive(Default)]
struct Inner {
    /// Key bytes: `len(host) as u64 LE ++ host ++ pid LE ++ type`, owned, so
    /// a tracked key never pins the buffer an event was decoded from.
    keys: HashMap<Box<[u8]>, KeyState>,
    /// Bumped at every switch of key, so recency is unique per key.
    tick: u64,
    evicted: u64,
    /// Sums of the keys evicted so far.
    retired: Totals,
    /// Reused to build lookup keys without allocating.
    scratch: Vec<u8>,
}

/// What one arrival was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    New,
    Duplicate,
    Late,
}

/// One key's state: 104 bytes plus the bitmap's heap words.
#[derive(Debug)]
struct KeyState {
    first: u64,
    last: u64,
    seen: u64,
    dropped: u64,
    duplicates: u64,
    late: u64,
    /// A multiple of 64: offsets below are settled; `words[i]` holds the
    /// offsets `base + 64 i ..= base + 64 i + 63`, bit `offset % 64`.
    base: u64,
    /// Every offset in `clean_from..base` from `first` up was accounted for
    /// (its word left the window full). Offsets in `first..clean_from` are
    /// unknown.
    clean_from: u64,
    touched: u64,
    words: VecDeque<u64>,
}

const LAST_BASE: u64 = !63;

/// The bits of the word starting at `start` for offsets `>= first`: the
/// ones that must be set for the word to be full.
fn from_first(first: u64, start: u64) -> u64 {
    match first.checked_sub(start) {
        None | Some(0) => u64::MAX,
        Some(d) if d < 64 => u64::MAX << d,
        Some(_) => 0,
    }
}

impl KeyState {
    fn new(offset: u64) -> KeyState {
        let base = offset & !63;
        KeyState {
            first: offset,
            last: offset,
            seen: 0,
            dropped: 0,
            duplicates: 0,
            late: 0,
            base,
            clean_from: base,
            touched: 0,
            words: VecDeque::new(),
        }
    }

    fn record(&mut self, offset: u64, delivered: bool, max_words: usize) {
        match self.mark(offset, max_words) {
            Mark::New if delivered => self.seen += 1,
            Mark::New => self.dropped += 1,
            Mark::Duplicate => self.duplicates += 1,
            Mark::Late => self.late += 1,
        }
    }

    fn mark(&mut self, offset: u64, max_words: usize) -> Mark {
        if offset < self.base {
            if offset < self.first {
                // Nothing below `first` was ever accounted for: new.
                if !self.extend_down(offset, max_words) {
                    // No room to remember it: from here up to the old
                    // `first` becomes unknown.
                    self.clean_from = self.clean_from.max(self.first).min(self.base);
                    self.first = offset;
                    return Mark::New;
                }
            } else if offset >= self.clean_from {
                return Mark::Duplicate;
            } else {
                return Mark::Late;
            }
        }
        let mut idx = (offset - self.base) / 64;
        if idx >= max_words as u64 {
            self.slide(offset, max_words);
            idx = (offset - self.base) / 64;
        }
        let idx = idx as usize;
        while self.words.len() <= idx {
            self.words.push_back(0);
        }
        let bit = 1u64 << (offset % 64);
        if self.words[idx] & bit != 0 {
            return Mark::Duplicate;
        }
        self.words[idx] |= bit;
        self.first = self.first.min(offset);
        self.last = self.last.max(offset);
        self.pop_full();
        Mark::New
    }

    /// Moves `base` down to `offset`'s word, if no offset between is
    /// unknown and the window has room. The words from `clean_from` to
    /// `base` come back with every offset from `first` up set (they left
    /// the window that way).
    fn extend_down(&mut self, offset: u64, max_words: usize) -> bool {
        if self.first < self.clean_from {
            return false;
        }
        let new_base = offset & !63;
        let add = (self.base - new_base) / 64;
        if add > (max_words - self.words.len().min(max_words)) as u64 {
            return false;
        }
        for i in 1..=add {
            let start = self.base - 64 * i;
            let w = if start >= self.clean_from {
                from_first(self.first, start)
            } else {
                0
            };
            self.words.push_front(w);
        }
        self.base = new_base;
        self.clean_from = new_base;
        true
    }

    /// Slides the window up so that `offset` falls in its last word. Words
    /// pushed out with gaps make everything below the new base unknown.
    fn slide(&mut self, offset: u64, max_words: usize) {
        let new_base = ((offset / 64) + 1 - max_words as u64) * 64;
        let mut gaps = false;
        while self.base < new_base {
            match self.words.pop_front() {
                Some(w) => {
                    let want = from_first(self.first, self.base);
                    gaps |= w & want != want;
                    self.base += 64;
                }
                None => {
                    // Offsets skipped over were never accounted for.
                    gaps = true;
                    self.base = new_base;
                }
            }
        }
        if gaps {
            self.clean_from = self.base;
        }
    }

    /// Lets full words leave the window: their offsets from `first` up
    /// are all accounted for, so a later arrival there is a known
    /// duplicate (and one below `first` is new).
    fn pop_full(&mut self) {
        while self.base < LAST_BASE
            && self.words.front().is_some_and(|w| {
                let want = from_first(self.first, self.base);
                w & want == want
            })
        {
            self.words.pop_front();
            self.base += 64;
        }
        // A burst of gaps can leave a big, mostly empty buffer behind.
        let cap = self.words.capacity();
        if cap >= 64 && self.words.len() <= cap / 8 {
            self.words.shrink_to(self.words.len() * 2);
        }
    }

    fn score(&self) -> Score {
        Score {
            first: self.first,
            last: self.last,
            expected: (self.last - self.first).saturating_add(1),
            seen: self.seen,
            dropped: self.dropped,
            missing: 0,
            duplicates: self.duplicates,
            late: self.late,
            score: 0.0,
        }
        .finish()
    }

    fn heap_bytes(&self) -> usize {
        self.words.capacity() * 8
    }
}

/// Sums over keys.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    range: Option<(u64, u64)>,
    expected: u64,
    seen: u64,
    dropped: u64,
    missing: u64,
    duplicates: u64,
    late: u64,
}

impl Totals {
    fn add(&mut self, s: &Score) {
        self.range = Some(match self.range {
            None => (s.first, s.last),
            Some((f, l)) => (f.min(s.first), l.max(s.last)),
        });
        self.expected = self.expected.saturating_add(s.expected);
        self.seen = self.seen.saturating_add(s.seen);
        self.dropped = self.dropped.saturating_add(s.dropped);
        self.missing = self.missing.saturating_add(s.missing);
        self.duplicates = self.duplicates.saturating_add(s.duplicates);
        self.late = self.late.saturating_add(s.late);
    }

    fn score(&self) -> Score {
        let (first, last) = self.range.unwrap_or((0, 0));
        Score {
            first,
            last,
            expected: self.expected,
            seen: self.seen,
            dropped: self.dropped,
            missing: self.missing,
            duplicates: self.duplicates,
            late: self.late,
            score: percent(self.expected, self.missing),
        }
    }
}

/// How many of the latest groups an event's key is looked for in.
const GROUP_SEARCH: usize = 16;

/// The batch's offsets by key, in order within each key, as (index of the
/// key's first event, offsets): one table lookup per group instead of one
/// per event, and done before taking the lock. A key that comes back after
/// `GROUP_SEARCH` others opens a second group; groups are applied in the
/// order they were opened, so each key still sees its offsets in order.
fn group_by_key(events: &[Event]) -> Vec<(usize, Vec<u64>)> {
    let mut groups: Vec<(usize, Vec<u64>)> = Vec::new();
    let mut last = 0;
    for (i, e) in events.iter().enumerate() {
        if let Some((at, offsets)) = groups.get_mut(last) {
            if same_key(&events[*at], e) {
                offsets.push(e.offset);
                continue;
            }
        }
        let from = groups.len().saturating_sub(GROUP_SEARCH);
        match groups[from..]
            .iter()
            .position(|(at, _)| same_key(&events[*at], e))
        {
            Some(j) => {
                last = from + j;
                groups[last].1.push(e.offset);
            }
            None => {
                last = groups.len();
                groups.push((i, vec![e.offset]));
            }
        }
    }
    groups
}

fn same_key(a: &Event, b: &Event) -> bool {
    a.pid == b.pid && a.host == b.host && a.ty == b.ty
}

fn encode_key(out: &mut Vec<u8>, e: &Event) {
    out.clear();
    out.extend_from_slice(&(e.host.len() as u64).to_le_bytes());
    out.extend_from_slice(e.host.as_bytes());
    out.extend_from_slice(&e.pid.to_le_bytes());
    out.extend_from_slice(e.ty.as_bytes());
}

/// `(host, pid, type)` back from the key bytes.
fn decode_key(k: &[u8]) -> (String, u32, String) {
    let mut len = [0u8; 8];
    len.copy_from_slice(&k[..8]);
    let hl = usize::try_from(u64::from_le_bytes(len)).unwrap_or(0);
    let host = &k[8..8 + hl];
    let mut pid = [0u8; 4];
    pid.copy_from_slice(&k[8 + hl..12 + hl]);
    let ty = &k[12 + hl..];
    (
        String::from_utf8_lossy(host).into_owned(),
        u32::from_le_bytes(pid),
        String::from_utf8_lossy(ty).into_owned(),
    )
}

impl Tracker {
    pub fn new(limits: Limits) -> Tracker {
        let words = limits.window.div_ceil(64).clamp(1, 1 << 32);
        Tracker {
            max_keys: limits.max_keys.max(1),
            max_words: usize::try_from(words).unwrap_or(1 << 20),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Events that reached the measuring point.
    pub fn delivered(&self, events: &[Event]) {
        self.record(events, true);
    }

    /// Events dropped on purpose upstream (filter, sample, rate limit): not
    /// missing.
    pub fn dropped(&self, events: &[Event]) {
        self.record(events, false);
    }

    fn record(&self, events: &[Event], delivered: bool) {
        if events.is_empty() {
            return;
        }
        let groups = group_by_key(events);
        let mut guard = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let Inner {
            keys,
            tick,
            evicted,
            retired,
            scratch,
        } = &mut *guard;
        for (at, offsets) in &groups {
            encode_key(scratch, &events[*at]);
            if !keys.contains_key(scratch.as_slice()) {
                if keys.len() >= self.max_keys {
                    evict(keys, retired, evicted, (self.max_keys / 8).max(1));
                }
                keys.insert(scratch.as_slice().into(), KeyState::new(offsets[0]));
            }
            *tick += 1;
            if let Some(s) = keys.get_mut(scratch.as_slice()) {
                s.touched = *tick;
                for &o in offsets {
                    s.record(o, delivered, self.max_words);
                }
            }
        }
    }

    /// Every key's score and the overall one.
    pub fn snapshot(&self) -> Report {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut totals = inner.retired;
        let mut keys: Vec<KeyScore> = inner
            .keys
            .iter()
            .map(|(k, s)| {
                let (host, pid, ty) = decode_key(k);
                let score = s.score();
                totals.add(&score);
                KeyScore {
                    host,
                    pid,
                    ty,
                    score,
                }
            })
            .collect();
        keys.sort_by(|a, b| (&a.host, a.pid, &a.ty).cmp(&(&b.host, b.pid, &b.ty)));
        Report {
            keys,
            overall: totals.score(),
            keys_evicted: inner.evicted,
        }
    }

    /// Appends the Prometheus families of [`Report::prometheus`].
    pub fn prometheus(&self, out: &mut String) {
        self.snapshot().prometheus(out);
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys
            .len()
    }

    /// An estimate of the memory held, in bytes, by the accounting of the
    /// module documentation (table entries at their 8/7 minimum).
    pub fn memory_bytes(&self) -> usize {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = std::mem::size_of::<(Box<[u8]>, KeyState)>() + 1;
        let table = inner.keys.capacity() * entry;
        let heap: usize = inner
            .keys
            .iter()
            .map(|(k, s)| k.len() + s.heap_bytes())
            .sum();
        std::mem::size_of::<Tracker>() + table + heap + inner.scratch.capacity()
    }
}

/// Evicts the `n` keys touched least recently, keeping their counts.
fn evict(
    keys: &mut HashMap<Box<[u8]>, KeyState>,
    retired: &mut Totals,
    evicted: &mut u64,
    n: usize,
) {
    let mut ticks: Vec<u64> = keys.values().map(|s| s.touched).collect();
    let n = n.min(ticks.len());
    if n == 0 {
        return;
    }
    let (_, cutoff, _) = ticks.select_nth_unstable(n - 1);
    let cutoff = *cutoff;
    keys.retain(|_, s| {
        if s.touched <= cutoff {
            retired.add(&s.score());
            *evicted += 1;
            false
        } else {
            true
        }
    });
}

/// A JSON string literal.
fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_score_fields(out: &mut String, s: &Score) {
    let _ = write!(
        out,
        "\"first\":{},\"last\":{},\"expected\":{},\"seen\":{},\"dropped\":{},\"missing\":{},\"duplicates\":{},\"late\":{},\"score\":{}",
        s.first, s.last, s.expected, s.seen, s.dropped, s.missing, s.duplicates, s.late,
        json_f64(s.score)
    );
}

/// Always with a fraction or exponent ("100.0"), so the field reads as a
/// float to typed decoders. JSON has no NaN or infinities; a score is never
/// either, but be safe.
fn json_f64(x: f64) -> String {
    if x.is_finite() {
        format!("{x:?}")
    } else {
        "0.0".to_owned()
    }
}

/// A Prometheus label value.
fn prom_esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Report {
    /// One JSON object:
    /// `{"keys":[{"host","pid","type","first","last","expected","seen",
    /// "dropped","missing","duplicates","late","score"}...],
    /// "overall":{"first",...,"score"},"keys_evicted":N}`.
    pub fn to_json(&self) -> String {
        let mut o = String::with_capacity(64 + self.keys.len() * 200);
        o.push_str("{\"keys\":[");
        for (i, k) in self.keys.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            o.push_str("{\"host\":");
            json_str(&mut o, &k.host);
            let _ = write!(o, ",\"pid\":{},\"type\":", k.pid);
            json_str(&mut o, &k.ty);
            o.push(',');
            json_score_fields(&mut o, &k.score);
            o.push('}');
        }
        o.push_str("],\"overall\":{");
        json_score_fields(&mut o, &self.overall);
        let _ = write!(o, "}},\"keys_evicted\":{}}}", self.keys_evicted);
        o
    }

    /// A table for people: one row per key, then the overall row, then a
    /// note if anything arrived late or keys were evicted. Scores have two
    /// decimals, rounded down, so 100.00 means nothing is missing.
    pub fn render_table(&self) -> String {
        const HEAD: [&str; 11] = [
            "host", "pid", "type", "first", "last", "expected", "seen", "dropped", "missing",
            "dup", "score",
        ];
        // Text columns are left-aligned, numbers right-aligned.
        const LEFT: [bool; 11] = [
            true, false, true, false, false, false, false, false, false, false, false,
        ];
        let mut rows: Vec<[String; 11]> = Vec::with_capacity(self.keys.len() + 2);
        rows.push(HEAD.map(str::to_owned));
        let counts = |s: &Score| {
            [
                s.expected.to_string(),
                s.seen.to_string(),
                s.dropped.to_string(),
                s.missing.to_string(),
                s.duplicates.to_string(),
                fmt_hundredths(s.hundredths()),
            ]
        };
        for k in &self.keys {
            let [e, se, d, m, du, sc] = counts(&k.score);
            rows.push([
                k.host.clone(),
                k.pid.to_string(),
                k.ty.clone(),
                k.score.first.to_string(),
                k.score.last.to_string(),
                e,
                se,
                d,
                m,
                du,
                sc,
            ]);
        }
        let [e, se, d, m, du, sc] = counts(&self.overall);
        rows.push([
            "overall".to_owned(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            e,
            se,
            d,
            m,
            du,
            sc,
        ]);
        let mut width = [0usize; 11];
        for r in &rows {
            for (w, cell) in width.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for r in &rows {
            let mut line = String::new();
            for (i, cell) in r.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = width[i] - cell.chars().count();
                if LEFT[i] {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                } else {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        if self.overall.late > 0 {
            let _ = writeln!(
                out,
                "late: {} offsets arrived below their key's settled window (neither seen nor duplicates)",
                self.overall.late
            );
        }
        if self.keys_evicted > 0 {
            let _ = writeln!(
                out,
                "evicted: {} keys seen least recently (their counts stay in overall)",
                self.keys_evicted
            );
        }
        out
    }

    /// Appends Prometheus text: `dab_reliability_score{host,pid,type}` and
    /// `dab_reliability_score_overall` (gauges, percent);
    /// `dab_reliability_missing_events{host,pid,type}` (a gauge: late
    /// arrivals make it go down); `dab_reliability_duplicates_total` and
    /// `dab_reliability_late_total{host,pid,type}` (counters while the key
    /// is tracked); `dab_reliability_keys_evicted_total`.
    pub fn prometheus(&self, out: &mut String) {
        let family = |o: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let labels: Vec<String> = self
            .keys
            .iter()
            .map(|k| {
                format!(
                    "host=\"{}\",pid=\"{}\",type=\"{}\"",
                    prom_esc(&k.host),
                    k.pid,
                    prom_esc(&k.ty)
                )
            })
            .collect();
        family(
            out,
            "dab_reliability_score",
            "gauge",
            "Percent of expected offsets delivered or dropped on purpose, per (host, pid, type)",
        );
        for (k, l) in self.keys.iter().zip(&labels) {
            let _ = writeln!(
                out,
                "dab_reliability_score{{{l}}} {}",
                json_f64(k.score.score)
            );
        }
        family(
            out,
            "dab_reliability_score_overall",
            "gauge",
            "Percent of expected offsets delivered or dropped on purpose, over all keys",
        );
        let _ = writeln!(
            out,
            "dab_reliability_score_overall {}",
            json_f64(self.overall.score)
        );
        family(
            out,
            "dab_reliability_missing_events",
            "gauge",
            "Offsets neither delivered nor dropped on purpose (late arrivals lower it)",
        );
        for (k, l) in self.keys.iter().zip(&labels) {
            let _ = writeln!(
                out,
                "dab_reliability_missing_events{{{l}}} {}",
                k.score.missing
            );
        }
        family(
            out,
            "dab_reliability_duplicates_total",
            "counter",
            "Offsets accounted for more than once",
        );
        for (k, l) in self.keys.iter().zip(&labels) {
            let _ = writeln!(
                out,
                "dab_reliability_duplicates_total{{{l}}} {}",
                k.score.duplicates
            );
        }
        family(
            out,
            "dab_reliability_late_total",
            "counter",
            "Offsets that arrived below the settled window, too late to tell a gap filled from a duplicate",
        );
        for (k, l) in self.keys.iter().zip(&labels) {
            let _ = writeln!(out, "dab_reliability_late_total{{{l}}} {}", k.score.late);
        }
        family(
            out,
            "dab_reliability_keys_evicted_total",
            "counter",
            "Keys evicted to stay within the tracker's key limit",
        );
        let _ = writeln!(
            out,
            "dab_reliability_keys_evicted_total {}",
            self.keys_evicted
        );
    }
}

fn fmt_hundredths(h: u64) -> String {
    format!("{}.{:02}", h / 100, h % 100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dab_api::Text;

    fn ev(host: &str, pid: u32, ty: &str, offset: u64) -> Event {
        Event {
            host: Text::from(host),
            pid,
            ty: Text::from(ty),
            offset,
            ..Event::default()
        }
    }

    fn offs(offsets: &[u64]) -> Vec<Event> {
        offsets.iter().map(|&o| ev("h", 1, "T", o)).collect()
    }

    fn only(t: &Tracker) -> Score {
        let r = t.snapshot();
        assert_eq!(r.keys.len(), 1, "{r:?}");
        r.keys[0].score
    }

    #[test]
    fn an_in_order_stream_scores_100_and_keeps_one_word() {
        let t = Tracker::new(Limits::default());
        let all: Vec<u64> = (1000..11_000).collect();
        for chunk in all.chunks(1024) {
            t.delivered(&offs(chunk));
        }
        let s = only(&t);
        assert_eq!(
            (s.first, s.last, s.expected, s.seen),
            (1000, 10_999, 10_000, 10_000)
        );
        assert_eq!((s.missing, s.duplicates, s.late), (0, 0, 0));
        assert_eq!(s.score, 100.0);
        let inner = t.inner.lock().expect("lock");
        let k = inner.keys.values().next().expect("key");
        assert!(k.words.len() <= 1, "{}", k.words.len());
    }

    #[test]
    fn a_word_filled_below_the_first_offset_extends_down() {
        let t = Tracker::new(Limits::default());
        t.delivered(&offs(&[64, 65]));
        t.delivered(&offs(&[63, 62, 0]));
        let s = only(&t);
        assert_eq!(
            (s.first, s.last, s.expected, s.seen, s.missing),
            (0, 65, 66, 5, 61)
        );
        // 62 again is a known duplicate, not late.
        t.delivered(&offs(&[62]));
        assert_eq!((only(&t).duplicates, only(&t).late), (1, 0));
    }

    #[test]
    fn full_words_that_left_the_window_still_know_their_duplicates() {
        let t = Tracker::new(Limits {
            max_keys: 10,
            window: 128,
        });
        t.delivered(&offs(&(0..1000).collect::<Vec<_>>()));
        t.delivered(&offs(&[3, 500]));
        let s = only(&t);
        assert_eq!((s.seen, s.duplicates, s.late, s.missing), (1000, 2, 0, 0));
    }

    #[test]
    fn many_interleaved_keys_keep_their_order_per_key() {
        // 40 keys round robin: more than GROUP_SEARCH, so keys reopen groups.
        let mut batch = Vec::new();
        for o in 0..10u64 {
            for k in 0..40u32 {
                batch.push(ev("h", k, "T", 9 - o));
            }
        }
        let groups = group_by_key(&batch);
        assert!(groups.len() > 40);
        for k in 0..40u32 {
            let offsets: Vec<u64> = groups
                .iter()
                .filter(|(at, _)| batch[*at].pid == k)
                .flat_map(|(_, o)| o.iter().copied())
                .collect();
            assert_eq!(offsets, (0..10).rev().collect::<Vec<u64>>(), "key {k}");
        }
        let t = Tracker::new(Limits::default());
        t.delivered(&batch);
        let r = t.snapshot();
        assert_eq!(r.keys.len(), 40);
        assert!(r
            .keys
            .iter()
            .all(|k| k.score.seen == 10 && k.score.missing == 0));
        // Three keys taking turns stay in three groups.
        let abc: Vec<Event> = (0..30u64)
            .map(|o| ev("h", 1, ["A", "B", "C"][(o % 3) as usize], o))
            .collect();
        assert_eq!(group_by_key(&abc).len(), 3);
    }

    #[test]
    fn json_escapes_strings() {
        let mut o = String::new();
        json_str(&mut o, "a\"b\\c\nd\u{1}é");
        assert_eq!(o, "\"a\\\"b\\\\c\\nd\\u0001é\"");
    }

    #[test]
    fn hundredths_round_down() {
        let s = Score {
            expected: 10_001,
            missing: 1,
            ..Score::default()
        };
        assert_eq!(fmt_hundredths(s.hundredths()), "99.99");
        let s = Score {
            expected: 3,
            missing: 1,
            ..Score::default()
        };
        assert_eq!(fmt_hundredths(s.hundredths()), "66.66");
        assert_eq!(fmt_hundredths(Score::default().hundredths()), "100.00");
    }

    #[test]
    fn the_key_round_trips_through_its_bytes() {
        let mut k = Vec::new();
        encode_key(&mut k, &ev("wéb-1", 311, "My\"Event", 0));
        assert_eq!(
            decode_key(&k),
            ("wéb-1".to_owned(), 311, "My\"Event".to_owned())
        );
    }

    #[test]
    fn offsets_at_the_top_of_the_range_do_not_overflow() {
        let t = Tracker::new(Limits::default());
        t.delivered(&offs(&[u64::MAX - 1, u64::MAX, u64::MAX, 0]));
        let s = only(&t);
        assert_eq!((s.first, s.last, s.expected), (0, u64::MAX, u64::MAX));
        assert_eq!((s.seen, s.duplicates), (3, 1));
        assert_eq!(s.missing, u64::MAX - 3);
    }

    #[test]
    fn the_state_stays_small() {
        assert_eq!(std::mem::size_of::<KeyState>(), 104);
        assert_eq!(std::mem::size_of::<(Box<[u8]>, KeyState)>(), 120);
    }
}
