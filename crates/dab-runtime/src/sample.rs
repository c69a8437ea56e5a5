//! The sampler's fixed hash (SPEC section 1: not Rust's `DefaultHasher`,
//! which may change between releases and is seeded per process).
//!
//! keep(event) = mix(fnv1a64(uid bytes) ^ salt * GOLDEN) % n == 0, where
//! the uid bytes are `host, 0xFF, pid (u32 LE), type, 0xFF, offset (u64 LE)`
//! (0xFF never occurs in UTF-8, so fields cannot run into each other), and
//! `mix` is the SplitMix64 finaliser, which spreads FNV's weak low bits.
//! The same UID always gets the same decision (redeliveries, replicas); a
//! different salt (the op's position) makes two samplers independent.
//! docs/runtime.md documents this; `tests` pin known values.

use dab_api::Event;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

#[inline]
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 64-bit sampling hash of an event's UID with a salt.
#[inline]
pub fn uid_hash(e: &Event, salt: u64) -> u64 {
    let mut h = fnv(FNV_OFFSET, e.host.as_bytes());
    h = fnv(h, &[0xFF]);
    h = fnv(h, &e.pid.to_le_bytes());
    h = fnv(h, e.ty.as_bytes());
    h = fnv(h, &[0xFF]);
    h = fnv(h, &e.offset.to_le_bytes());
    mix(h ^ salt.wrapping_mul(GOLDEN))
}

/// Whether `WithSampleRate(rate)` at position `salt` keeps the event.
#[inline]
pub fn keep(e: &Event, rate: u64, salt: u64) -> bool {
    rate <= 1 || uid_hash(e, salt) % rate == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use dab_api::Text;

    fn ev(offset: u64) -> Event {
        Event {
            host: Text::from("web-1"),
            ty: Text::from("MyEvent"),
            pid: 311,
            offset,
            ..Event::default()
        }
    }

    #[test]
    fn pinned_values_never_change() {
        // If this fails, sampling decisions changed for every user: that is a
        // breaking change, not a refactor.
        assert_eq!(uid_hash(&ev(42), 0), uid_hash(&ev(42), 0));
        let kept: Vec<u64> = (0..40).filter(|o| keep(&ev(*o), 5, 2)).collect();
        assert_eq!(kept, PINNED);
    }

    // Computed independently (a Python version of the documented hash, and
    // tests/run_support/sample.rs) and pinned here.
    const PINNED: &[u64] = &[10, 21, 26, 27];

    #[test]
    fn rate_is_about_one_in_n_and_salts_are_independent() {
        let n = 100_000u64;
        let a = (0..n).filter(|o| keep(&ev(*o), 10, 1)).count();
        assert!((9_000..11_000).contains(&a), "kept {a} of {n} at 1 in 10");
        let both = (0..n)
            .filter(|o| keep(&ev(*o), 10, 1) && keep(&ev(*o), 10, 2))
            .count();
        // Independent: about 1 in 100 pass both.
        assert!((700..1_300).contains(&both), "{both} passed both samplers");
    }
}
