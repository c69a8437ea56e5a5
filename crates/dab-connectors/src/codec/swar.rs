//! Byte scanning eight bytes at a time in plain `u64` arithmetic ("SIMD
//! within a register"), for the JSON scanner's inner loops. The crate
//! forbids `unsafe`, so no intrinsics; these need none and still beat a
//! byte loop, or a `memchr` call on the short strings events are made of.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

#[inline]
fn word(b: &[u8]) -> u64 {
    u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
}

/// An OR over words, which the compiler vectorises.
pub(crate) fn is_ascii(b: &[u8]) -> bool {
    let mut words = b.chunks_exact(8);
    let acc = words.by_ref().fold(0u64, |acc, w| acc | word(w));
    let tail = words.remainder().iter().fold(0u8, |acc, &c| acc | c);
    acc & HIGH == 0 && tail < 0x80
}

/// The index of the first `"`, `\` or control character: the bytes that
/// end the plain part of a JSON string.
///
/// Per word, each test flags a byte by its top bit. A flag can be wrong
/// only above a byte that is rightly flagged (a borrow runs upwards), so
/// the lowest flag is always the first match.
#[inline]
pub(crate) fn find_special(s: &[u8]) -> Option<usize> {
    let mut words = s.chunks_exact(8);
    for (k, w) in words.by_ref().enumerate() {
        let w = word(w);
        let quote = w ^ (ONES * u64::from(b'"'));
        let backslash = w ^ (ONES * u64::from(b'\\'));
        let flags = ((quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (w.wrapping_sub(ONES * 0x20) & !w))
            & HIGH;
        if flags != 0 {
            return Some(k * 8 + (flags.trailing_zeros() / 8) as usize);
        }
    }
    let rest = words.remainder();
    rest.iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|i| s.len() - rest.len() + i)
}

/// True when all eight bytes of `w` are ASCII digits.
#[inline]
fn all_digits(w: u64) -> bool {
    // A byte below '0' borrows, but then its own high nibble is set too, so
    // the word is refused anyway; with no borrow, x < 16 and x + 6 < 16
    // mean x < 10.
    let x = w.wrapping_sub(ONES * u64::from(b'0'));
    x & (ONES * 0xf0) == 0 && x.wrapping_add(ONES * 6) & (ONES * 0xf0) == 0
}

/// How many ASCII digits `b` starts with.
#[inline]
pub(crate) fn count_digits(b: &[u8]) -> usize {
    let mut n = 0;
    while n + 8 <= b.len() && all_digits(word(&b[n..n + 8])) {
        n += 8;
    }
    n + b[n..].iter().take_while(|c| c.is_ascii_digit()).count()
}

/// The value of at most 19 ASCII digits (which cannot overflow), eight at
/// a time: each step joins neighbouring lanes, bytes into pairs, pairs
/// into fours, fours into eights.
#[inline]
pub(crate) fn parse_digits(d: &[u8]) -> u64 {
    debug_assert!(d.len() <= 19);
    let mut words = d.chunks_exact(8);
    let mut n = 0u64;
    for w in words.by_ref() {
        let x = word(w).wrapping_sub(ONES * u64::from(b'0'));
        let x = (x.wrapping_mul(10) + (x >> 8)) & 0x00ff_00ff_00ff_00ff;
        let x = (x.wrapping_mul(100) + (x >> 16)) & 0x0000_ffff_0000_ffff;
        let x = (x.wrapping_mul(10_000) + (x >> 32)) & 0xffff_ffff;
        n = n * 100_000_000 + x;
    }
    words
        .remainder()
        .iter()
        .fold(n, |n, &c| n * 10 + u64::from(c - b'0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn find_slow(s: &[u8]) -> Option<usize> {
        s.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20)
    }

    #[test]
    fn digits() {
        assert_eq!(count_digits(b"1234567890123456789,"), 19);
        assert_eq!(count_digits(b"12345678"), 8);
        assert_eq!(count_digits(b"1234567/"), 7);
        assert_eq!(count_digits(b"x1"), 0);
        assert_eq!(parse_digits(b"9223372036854775807"), i64::MAX as u64);
        assert_eq!(parse_digits(b"1234567812345678"), 1_234_567_812_345_678);
        assert_eq!(parse_digits(b"0"), 0);
        assert_eq!(parse_digits(b""), 0);
    }

    proptest! {
        #[test]
        fn find_special_agrees_with_a_byte_loop(s in proptest::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(find_special(&s), find_slow(&s));
        }

        #[test]
        fn is_ascii_agrees_with_std(s in proptest::collection::vec(any::<u8>(), 0..40)) {
            prop_assert_eq!(is_ascii(&s), s.is_ascii());
        }

        #[test]
        fn digits_agree_with_std(n in any::<u64>(), tail in "[^0-9]?") {
            let text = format!("{n}{tail}");
            let len = n.to_string().len();
            prop_assert_eq!(count_digits(text.as_bytes()), len);
            if len <= 19 {
                prop_assert_eq!(parse_digits(&text.as_bytes()[..len]), n);
            }
        }

        #[test]
        fn count_digits_agrees_with_a_byte_loop(s in "[0-9/:]{0,30}") {
            let b = s.as_bytes();
            prop_assert_eq!(count_digits(b), b.iter().take_while(|c| c.is_ascii_digit()).count());
        }
    }
}
