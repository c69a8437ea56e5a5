//! A pinned 64-bit hash of bytes for the HyperLogLog. It is part of the
//! state format: registers written by one build must mean the same in the
//! next, so it cannot be std's `DefaultHasher` (whose algorithm may change)
//! nor a randomly seeded one. Eight bytes at a time through a
//! multiply-rotate step, then murmur3's `fmix64` finaliser for avalanche.

const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xC2B2_AE3D_27D4_EB4F;

/// Hashes `data`; stable across builds and platforms.
pub fn hash64(data: &[u8]) -> u64 {
    let mut h = K2 ^ (data.len() as u64).wrapping_mul(K1);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut a = [0u8; 8];
        a.copy_from_slice(c);
        let k = u64::from_le_bytes(a)
            .wrapping_mul(K1)
            .rotate_left(31)
            .wrapping_mul(K2);
        h = (h ^ k).rotate_left(27).wrapping_mul(K1).wrapping_add(K2);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut a = [0u8; 8];
        a[..rest.len()].copy_from_slice(rest);
        let k = u64::from_le_bytes(a)
            .wrapping_mul(K2)
            .rotate_left(33)
            .wrapping_mul(K1);
        h ^= k;
    }
    fmix64(h)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    k
}

#[cfg(test)]
mod tests {
    use super::hash64;

    #[test]
    fn pinned_values_do_not_change() {
        // The state format depends on these: a change here breaks restored
        // HyperLogLog registers.
        assert_eq!(hash64(b""), hash64(b""));
        assert_ne!(hash64(b"a"), hash64(b"b"));
        assert_ne!(hash64(b"\0"), hash64(b""));
        assert_ne!(hash64(b"abcdefgh"), hash64(b"abcdefgh\0"));
        assert_eq!(hash64(b"dab"), PINNED_DAB);
    }
    const PINNED_DAB: u64 = 1_604_879_767_247_591_056;
}
