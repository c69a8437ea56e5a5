//! Interning of the short strings that repeat from event to event: host,
//! type, tag keys and tag values.
//!
//! Why: a `Text` sliced out of the line costs an atomic reference-count
//! increment, a decrement when the event is dropped, and a UTF-8 check
//! (`Text::from_bytes` checks again what the decoder already knows). Per
//! event that is the largest cost of decoding, though these strings come
//! from a small set (a few hundred hosts, a few dozen types, tags like
//! `env: prod`). An interned string is a `&'static str`, and a `Text` made
//! from one is cloned and dropped without touching memory shared between
//! threads.
//!
//! Bounded: interned strings are never freed, so at most
//! [`MAX_INTERNED_BYTES`] of them are made in the process, each at most
//! [`MAX_INTERNED_LEN`] bytes. Once the budget is spent, strings not yet
//! interned are sliced from the line as before, so a stream of ever-new
//! values costs a fixed amount of memory and then nothing. Each thread
//! keeps a small direct-mapped cache in front of the shared set, so the
//! shared lock is taken only on a miss.
//!
//! Each source has a budget of its own too ([`InternBudget`], at most
//! [`SOURCE_INTERN_BYTES`] of new strings), set around its decoding with
//! [`with_budget`]: one producer sending ever-new hosts spends its own
//! budget, not the process's, so other sources go on interning. Strings
//! already interned are found whatever the budget.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use dab_api::Text;

/// Longer strings are not interned (they are rarely identifiers).
pub const MAX_INTERNED_LEN: usize = 64;
/// All interned strings together stay under this many bytes.
pub const MAX_INTERNED_BYTES: usize = 4 << 20;
/// New strings one source may intern, in bytes.
pub const SOURCE_INTERN_BYTES: usize = 256 << 10;

/// Slots in each thread's cache; a power of two.
const CACHE_SLOTS: usize = 1024;

#[derive(Default)]
struct Pool {
    set: HashSet<&'static str>,
    bytes: usize,
}

fn pool() -> &'static Mutex<Pool> {
    static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();
    POOL.get_or_init(|| Mutex::new(Pool::default()))
}

/// Set once the budget is spent, so that misses stop taking the lock.
static FULL: AtomicBool = AtomicBool::new(false);

thread_local! {
    static CACHE: RefCell<Vec<Option<(u64, &'static str)>>> = const { RefCell::new(Vec::new()) };
    /// The budget of the source decoding on this thread now, if any.
    static BUDGET: RefCell<Option<Arc<InternBudget>>> = const { RefCell::new(None) };
}

/// What one source may still add to the interned set.
#[derive(Debug)]
pub struct InternBudget {
    spent: AtomicUsize,
    limit: usize,
}

impl InternBudget {
    /// A budget of [`SOURCE_INTERN_BYTES`].
    pub fn per_source() -> Arc<InternBudget> {
        InternBudget::of(SOURCE_INTERN_BYTES)
    }

    pub fn of(limit: usize) -> Arc<InternBudget> {
        Arc::new(InternBudget {
            spent: AtomicUsize::new(0),
            limit,
        })
    }

    /// Bytes of new strings interned under this budget.
    pub fn spent(&self) -> usize {
        self.spent.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes unless that would go over the limit.
    fn take(&self, n: usize) -> bool {
        self.spent
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                (s + n <= self.limit).then_some(s + n)
            })
            .is_ok()
    }
}

/// Runs `f` (decoding, which never awaits) with new strings charged to
/// `budget`. Decoding outside any budget (a Kafka source) is charged to the
/// process's alone.
pub fn with_budget<R>(budget: &Arc<InternBudget>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Arc<InternBudget>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            let _ = BUDGET.try_with(|b| {
                if let Ok(mut b) = b.try_borrow_mut() {
                    *b = previous;
                }
            });
        }
    }
    let previous = BUDGET
        .try_with(|b| {
            b.try_borrow_mut()
                .ok()
                .and_then(|mut b| b.replace(Arc::clone(budget)))
        })
        .ok()
        .flatten();
    let _restore = Restore(previous);
    f()
}

/// Whether the current source (if any) may intern `n` more bytes; charges
/// them when it may.
fn charge_source(n: usize) -> bool {
    BUDGET
        .try_with(|b| match b.try_borrow().ok().as_deref() {
            Some(Some(budget)) => budget.take(n),
            _ => true,
        })
        .unwrap_or(true)
}

/// The interned `Text` for `s`, or `None` when `s` is too long, not UTF-8,
/// or new after the budget is spent.
#[inline]
pub fn intern(s: &[u8]) -> Option<Text> {
    if s.len() > MAX_INTERNED_LEN {
        return None;
    }
    let h = hash(s);
    let slot = (h as usize) & (CACHE_SLOTS - 1);
    CACHE
        .try_with(|cache| {
            let mut cache = cache.try_borrow_mut().ok()?;
            if cache.is_empty() {
                cache.resize(CACHE_SLOTS, None);
            }
            if let Some((hit_hash, hit)) = cache[slot] {
                if hit_hash == h && same(hit.as_bytes(), s) {
                    return Some(Text::from_static(hit));
                }
            }
            let found = shared(s)?;
            cache[slot] = Some((h, found));
            Some(Text::from_static(found))
        })
        .ok()
        .flatten()
}

/// The slow path: the process-wide set, adding `s` while the budget lasts.
#[cold]
fn shared(s: &[u8]) -> Option<&'static str> {
    let s = std::str::from_utf8(s).ok()?;
    let mut pool = pool().lock().ok()?;
    if let Some(found) = pool.set.get(s) {
        return Some(found);
    }
    if FULL.load(Ordering::Relaxed) {
        return None;
    }
    if pool.bytes + s.len() > MAX_INTERNED_BYTES {
        FULL.store(true, Ordering::Relaxed);
        return None;
    }
    if !charge_source(s.len()) {
        return None;
    }
    add(&mut pool, s, MAX_INTERNED_BYTES)
}

/// Adds `s` unless that would take the pool over `budget` bytes.
fn add(pool: &mut Pool, s: &str, budget: usize) -> Option<&'static str> {
    if pool.bytes + s.len() > budget {
        return None;
    }
    // The one deliberate leak, bounded by the budget.
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    pool.bytes += leaked.len();
    pool.set.insert(leaked);
    Some(leaked)
}

#[inline]
fn word(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
}

#[inline]
fn half(b: &[u8]) -> u64 {
    u64::from(u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
}

/// `a == b`, inline: for strings this short a `memcmp` call costs more
/// than the compare.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n >= 8 {
        let whole = a[..n - 1]
            .chunks_exact(8)
            .zip(b[..n - 1].chunks_exact(8))
            .all(|(x, y)| word(x) == word(y));
        whole && word(&a[n - 8..]) == word(&b[n - 8..])
    } else {
        a.iter().zip(b).all(|(x, y)| x == y)
    }
}

/// A quick multiplicative hash over 8-byte words; it only picks a cache
/// slot and filters compares, so collisions cost a lookup in the shared
/// set, never correctness. The last bytes are read as overlapping words
/// rather than one by one.
#[inline]
fn hash(s: &[u8]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let n = s.len();
    let mut h = (n as u64).wrapping_mul(K);
    let last = if n >= 8 {
        for w in s[..n - 1].chunks_exact(8) {
            h = (h.rotate_left(5) ^ word(w)).wrapping_mul(K);
        }
        word(&s[n - 8..])
    } else if n >= 4 {
        half(&s[..4]) | half(&s[n - 4..]) << 32
    } else if n > 0 {
        u64::from(s[0]) | u64::from(s[n / 2]) << 8 | u64::from(s[n - 1]) << 16
    } else {
        0
    };
    h = (h.rotate_left(5) ^ last).wrapping_mul(K);
    h ^ (h >> 29)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn interned_text_is_static_and_equal() {
        let a = intern(b"web-1").unwrap();
        let b = intern(b"web-1").unwrap();
        assert_eq!(a.as_str(), "web-1");
        // The same leaked bytes both times.
        assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
        assert_eq!(intern(b"").unwrap().as_str(), "");
    }

    #[test]
    fn refuses_long_and_invalid_strings() {
        assert!(intern(&[b'x'; MAX_INTERNED_LEN + 1]).is_none());
        assert!(intern(&[b'x'; MAX_INTERNED_LEN]).is_some());
        assert!(intern(&[0xff, 0xfe]).is_none());
    }

    #[test]
    fn the_budget_bounds_what_is_leaked() {
        let mut pool = Pool::default();
        assert!(add(&mut pool, "abcd", 10).is_some());
        assert!(add(&mut pool, "efghij", 10).is_some());
        assert!(add(&mut pool, "k", 10).is_none());
        assert_eq!((pool.bytes, pool.set.len()), (10, 2));
    }

    #[test]
    fn a_source_budget_bounds_what_it_adds_but_not_what_it_finds() {
        let common = intern(b"budget-common-host").unwrap();
        let budget = InternBudget::of(10);
        with_budget(&budget, || {
            assert!(intern(b"budget-a1").is_some());
            // 9 + 9 > 10: sliced from the input instead.
            assert!(intern(b"budget-a2").is_none());
            // Interned before: found at no cost.
            assert_eq!(
                intern(b"budget-common-host").unwrap().as_bytes().as_ptr(),
                common.as_bytes().as_ptr()
            );
        });
        assert_eq!(budget.spent(), 9);
        // Outside the budget the same string is interned.
        assert!(intern(b"budget-a2").is_some());
    }

    #[test]
    fn colliding_slots_still_give_the_right_string() {
        // More distinct strings than slots: every answer must match.
        for i in 0..(CACHE_SLOTS * 3) {
            let s = format!("k{i}");
            assert_eq!(intern(s.as_bytes()).unwrap().as_str(), s);
        }
        for i in 0..(CACHE_SLOTS * 3) {
            let s = format!("k{i}");
            assert_eq!(intern(s.as_bytes()).unwrap().as_str(), s);
        }
    }
}
