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
    rate <= 1 || uid_hash(e, salt).is_multiple_of(rate)
}

#[cfg(test)]
mod tests {
    //! The product's hash against values computed elsewhere: by Python from
    //! the formula in docs/runtime.md ("Sampling hash"), and by a second
    //! Rust implementation written here from the same words. None of the
    //! expected values comes from `uid_hash` itself.
    //!
    //! The Python that produced the pinned values (Python 3 integers, so
    //! no shared code or wrapping arithmetic with this file):
    //!
    //! ```text
    //! M = (1 << 64) - 1
    //! def fnv(b):
    //!     h = 0xcbf29ce484222325
    //!     for x in b: h ^= x; h = (h * 0x100000001b3) & M
    //!     return h
    //! def fin(z):
    //!     z ^= z >> 30; z = (z * 0xbf58476d1ce4e5b9) & M
    //!     z ^= z >> 27; z = (z * 0x94d049bb133111eb) & M
    //!     return z ^ (z >> 31)
    //! def h(host, pid, ty, off, salt):
    //!     b = (host.encode() + b'\xff' + pid.to_bytes(4, 'little') + ty.encode()
    //!          + b'\xff' + off.to_bytes(8, 'little'))
    //!     return fin(fnv(b) ^ ((salt * 0x9e3779b97f4a7c15) & M))
    //! ```

    use super::*;
    use dab_api::Text;

    fn uid(host: &str, pid: u32, ty: &str, offset: u64) -> Event {
        Event {
            host: Text::from(host),
            ty: Text::from(ty),
            pid,
            offset,
            ..Event::default()
        }
    }

    fn ev(offset: u64) -> Event {
        uid("web-1", 311, "MyEvent", offset)
    }

    /// (host, pid, type, offset, salt, h) from the Python above.
    const PYTHON: &[(&str, u32, &str, u64, u64, u64)] = &[
        ("web-1", 311, "MyEvent", 42, 0, 0x4b7b_67b0_a573_f330),
        ("web-1", 311, "MyEvent", 42, 1, 0x42bf_b462_c8b5_4c80),
        ("web-1", 311, "MyEvent", 42, 2, 0xdfe8_89cd_feae_10ff),
        ("", 0, "", 0, 0, 0x58fe_baa3_aa28_b943),
        (
            "h\u{e9}t\u{e9}",
            u32::MAX,
            "T\u{ff}",
            u64::MAX,
            7,
            0x9348_845a_9871_0d70,
        ),
        ("a", 1, "b", 2, 3, 0x9b4f_bc93_09a2_a0e8),
    ];

    #[test]
    fn hashes_equal_the_documented_formula_computed_in_python() {
        // If this fails, sampling decisions changed for every user: that is
        // a breaking change, not a refactor.
        for &(host, pid, ty, offset, salt, want) in PYTHON {
            assert_eq!(
                uid_hash(&uid(host, pid, ty, offset), salt),
                want,
                "({host:?}, {pid}, {ty:?}, {offset}) salt {salt}"
            );
        }
    }

    /// docs/runtime.md, "Sampling hash", word by word: build the byte
    /// string, run FNV-1a 64 over it, xor the salted constant, finalise.
    fn from_the_docs(host: &str, pid: u32, ty: &str, offset: u64, salt: u64) -> u64 {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(host.as_bytes());
        bytes.push(0xFF);
        bytes.extend_from_slice(&pid.to_le_bytes());
        bytes.extend_from_slice(ty.as_bytes());
        bytes.push(0xFF);
        bytes.extend_from_slice(&offset.to_le_bytes());
        let fnv1a64 = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
        let mut z = fnv1a64 ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z ^= z >> 30;
        z = z.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z ^= z >> 27;
        z = z.wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[test]
    fn a_second_implementation_from_the_docs_agrees_everywhere() {
        for &(host, pid, ty, offset, salt, want) in PYTHON {
            assert_eq!(from_the_docs(host, pid, ty, offset, salt), want);
        }
        let hosts = [
            "",
            "web-1",
            "h\u{e9}t\u{e9}",
            "a-much-longer-host-name.example",
        ];
        let types = ["", "A", "MyEvent", "T\u{ff}"];
        for (i, host) in hosts.iter().enumerate() {
            for (j, ty) in types.iter().enumerate() {
                for k in 0..200u64 {
                    let pid = (k as u32).wrapping_mul(2_654_435_761);
                    let offset = k.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64);
                    let salt = (j as u64 + k) % 9;
                    assert_eq!(
                        uid_hash(&uid(host, pid, ty, offset), salt),
                        from_the_docs(host, pid, ty, offset, salt),
                        "({host:?}, {pid}, {ty:?}, {offset}) salt {salt}"
                    );
                }
            }
        }
    }

    #[test]
    fn decisions_equal_those_computed_in_python() {
        // [o for o in range(40) if h("web-1", 311, "MyEvent", o, 2) % 5 == 0]
        let kept: Vec<u64> = (0..40).filter(|o| keep(&ev(*o), 5, 2)).collect();
        assert_eq!(kept, [10, 21, 26, 27]);
        // Over 100,000 offsets: 10,104 kept at 1 in 10 with salt 1 (a
        // binomial(100000, 0.1) lands there with ordinary odds), and 1,016
        // kept by both that sampler and one with salt 2: the salts are
        // independent (1 in 100 expected). Counted by the Python above.
        let n = 100_000u64;
        let a = (0..n).filter(|o| keep(&ev(*o), 10, 1)).count();
        assert_eq!(a, 10_104);
        let both = (0..n)
            .filter(|o| keep(&ev(*o), 10, 1) && keep(&ev(*o), 10, 2))
            .count();
        assert_eq!(both, 1_016);
        // A rate of 0 or 1 keeps everything.
        assert!((0..100).all(|o| keep(&ev(o), 1, 3) && keep(&ev(o), 0, 3)));
    }
}
