//! The sampler's hash as the doc comment of `dab-runtime/src/sample.rs`
//! documents it (and `docs/language.md` promises: fixed, salted with the
//! op's position), written again here from the words, so that the test
//! checks the product against its documentation rather than against itself:
//! FNV-1a 64 over `host, 0xFF, pid (u32 LE), type, 0xFF, offset (u64 LE)`,
//! xor `salt * 0x9e3779b97f4a7c15`, the SplitMix64 finaliser, and keep when
//! the result `% n == 0`. The salt is the op's index in its statement, `In`
//! being 0.

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

fn splitmix64_finaliser(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether `WithSampleRate(n)` at position `salt` keeps the event with
/// this UID.
pub fn kept(host: &str, pid: u32, ty: &str, offset: u64, n: u64, salt: u64) -> bool {
    let mut uid = Vec::with_capacity(host.len() + ty.len() + 14);
    uid.extend_from_slice(host.as_bytes());
    uid.push(0xFF);
    uid.extend_from_slice(&pid.to_le_bytes());
    uid.extend_from_slice(ty.as_bytes());
    uid.push(0xFF);
    uid.extend_from_slice(&offset.to_le_bytes());
    let h = fnv1a(FNV_OFFSET_BASIS, &uid) ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    n <= 1 || splitmix64_finaliser(h) % n == 0
}
