//! How owners, input partitions and keys map onto fjall partitions and keys.
//!
//! One fjall partition per input partition, named `p` + the label in hex
//! (fjall allows only `[A-Za-z0-9_.#$-]` in names; hex keeps any label and
//! decodes back). Inside it every key opens with a tag byte:
//!
//! - `0, len(ns), ns, key`: a state entry of owner `ns`;
//! - `1, ns`: the owner's bookkeeping for this input partition;
//! - `2, source`: the position of `source` in this input partition.
//!
//! The `meta` partition holds the sequence number of the last checkpoint,
//! written in the same batch as the checkpoint it numbers.

use crate::{Error, Result};

pub(crate) const META: &str = "meta";
pub(crate) const META_SEQ: &[u8] = b"seq";

pub(crate) const TAG_STATE: u8 = 0;
pub(crate) const TAG_BOOK: u8 = 1;
pub(crate) const TAG_POS: u8 = 2;

/// fjall names are at most 255 characters: `p` and two per label byte.
pub(crate) const MAX_LABEL: usize = 127;
pub(crate) const MAX_NS: usize = u8::MAX as usize;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Refuses a label too long to name a fjall partition.
pub(crate) fn check_label(label: &str) -> Result<()> {
    if label.len() > MAX_LABEL {
        return Err(Error::PartitionLabel {
            len: label.len(),
            max: MAX_LABEL,
        });
    }
    Ok(())
}

pub(crate) fn partition_name(label: &str) -> Result<String> {
    check_label(label)?;
    let mut name = String::with_capacity(1 + 2 * label.len());
    name.push('p');
    for b in label.bytes() {
        name.push(HEX[usize::from(b >> 4)] as char);
        name.push(HEX[usize::from(b & 15)] as char);
    }
    Ok(name)
}

/// The label of a fjall partition name, or `None` for one that is not an
/// input partition (`meta`).
pub(crate) fn label_of(name: &str) -> Option<Result<String>> {
    let hex = name.strip_prefix('p')?;
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let malformed = Error::Malformed {
        what: "partition name",
    };
    if hex.len() % 2 != 0 {
        return Some(Err(malformed));
    }
    let mut bytes = Vec::with_capacity(hex.len() / 2);
    for pair in hex.as_bytes().chunks(2) {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => bytes.push(hi << 4 | lo),
            _ => return Some(Err(malformed)),
        }
    }
    Some(String::from_utf8(bytes).map_err(|_| malformed))
}

/// `0, len(ns), ns`: every state key of owner `ns` starts with it.
pub(crate) fn state_prefix(ns: &str) -> Result<Vec<u8>> {
    let len = u8::try_from(ns.len()).map_err(|_| Error::Namespace {
        len: ns.len(),
        max: MAX_NS,
    })?;
    let mut k = Vec::with_capacity(2 + ns.len());
    k.push(TAG_STATE);
    k.push(len);
    k.extend_from_slice(ns.as_bytes());
    Ok(k)
}

pub(crate) fn state_key(ns: &str, key: &[u8]) -> Result<Vec<u8>> {
    let mut k = state_prefix(ns)?;
    k.extend_from_slice(key);
    Ok(k)
}

pub(crate) fn tagged(tag: u8, name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(tag);
    k.extend_from_slice(name.as_bytes());
    k
}

/// The smallest key greater than every key that starts with `prefix`, or
/// `None` when there is none (a prefix of `0xff` bytes only).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A state key split into its owner and the owner's key.
pub(crate) fn split_state_key(raw: &[u8]) -> Result<(&str, &[u8])> {
    let malformed = Error::Malformed { what: "state key" };
    match raw {
        [TAG_STATE, len, rest @ ..] if rest.len() >= usize::from(*len) => {
            let (ns, key) = rest.split_at(usize::from(*len));
            Ok((std::str::from_utf8(ns).map_err(|_| malformed)?, key))
        }
        _ => Err(malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_through_partition_names() {
        for label in ["", "kafka:orders:3", "é/ü", "a b\u{0}"] {
            let name = partition_name(label).expect("short label");
            assert!(name.bytes().all(|b| b.is_ascii_alphanumeric()), "{name}");
            assert_eq!(
                label_of(&name).expect("data partition").expect("hex"),
                label
            );
        }
        assert!(label_of(META).is_none());
        assert!(matches!(
            partition_name(&"x".repeat(MAX_LABEL + 1)),
            Err(Error::PartitionLabel { len: 128, max: 127 })
        ));
        assert_eq!(
            partition_name(&"x".repeat(MAX_LABEL)).expect("fits").len(),
            255
        );
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(&[0, 3, b'a']), Some(vec![0, 3, b'b']));
        assert_eq!(prefix_end(&[0, 0xff, 0xff]), Some(vec![1]));
        assert_eq!(prefix_end(&[0xff]), None);
    }

    #[test]
    fn state_keys_split_back() {
        let raw = state_key("op/1", b"k\x00").expect("short ns");
        assert_eq!(
            split_state_key(&raw).expect("state key"),
            ("op/1", &b"k\x00"[..])
        );
        assert!(state_key(&"n".repeat(256), b"").is_err());
    }
}
