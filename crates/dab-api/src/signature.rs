//! Event signatures: HMAC-SHA256 over a canonical encoding of the fields
//! (SPEC section 4). The encoding is part of the interface: producers in
//! any language sign the same bytes. It is documented in docs/runtime.md:
//!
//! ```text
//! "murron.v1.sig" 0x00
//! timestamp  i64, big-endian
//! host       u32 big-endian length, then the bytes
//! type       u32 big-endian length, then the bytes
//! offset     u64, big-endian
//! pid        u32, big-endian
//! message    u32 big-endian length, then the bytes
//! tags       u32 big-endian count, then for each tag sorted by key bytes,
//!            key and value each as u32 length + bytes; tags whose key
//!            starts with "dab." are left out (DAB adds those on the way)
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::event::Event;

const DOMAIN: &[u8] = b"murron.v1.sig\0";

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(b);
}

/// The bytes a signature covers.
pub fn canonical(e: &Event, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(DOMAIN);
    out.extend_from_slice(&e.timestamp.to_be_bytes());
    put_bytes(out, e.host.as_bytes());
    put_bytes(out, e.ty.as_bytes());
    out.extend_from_slice(&e.offset.to_be_bytes());
    out.extend_from_slice(&e.pid.to_be_bytes());
    put_bytes(out, &e.message);
    let mut tags: Vec<(&[u8], &[u8])> = e
        .tags
        .iter()
        .filter(|(k, _)| !k.as_str().starts_with("dab."))
        .map(|(k, v)| (k.as_bytes(), v.as_bytes()))
        .collect();
    tags.sort_unstable();
    out.extend_from_slice(&u32::try_from(tags.len()).unwrap_or(u32::MAX).to_be_bytes());
    for (k, v) in tags {
        put_bytes(out, k);
        put_bytes(out, v);
    }
}

/// A keyed signer and verifier; reuses its buffer across events.
#[derive(Clone)]
pub struct Signer {
    mac: Hmac<Sha256>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.write_str("Signer { .. }")
    }
}

impl Signer {
    pub fn new(key: &[u8]) -> Signer {
        #[allow(clippy::expect_used)] // HMAC takes keys of any length.
        let mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
        Signer {
            mac,
            buf: Vec::with_capacity(256),
        }
    }

    /// The 32-byte signature of an event.
    pub fn sign(&mut self, e: &Event) -> [u8; 32] {
        canonical(e, &mut self.buf);
        let mut mac = self.mac.clone();
        mac.update(&self.buf);
        mac.finalize().into_bytes().into()
    }

    /// True when the event's signature is the one its fields give, compared
    /// in constant time.
    pub fn verify(&mut self, e: &Event) -> bool {
        canonical(e, &mut self.buf);
        let mut mac = self.mac.clone();
        mac.update(&self.buf);
        mac.verify_slice(&e.signature).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Text;

    fn ev() -> Event {
        Event {
            timestamp: 1_732_320_000_000_000_000,
            host: Text::from("web-1"),
            ty: Text::from("MyEvent"),
            offset: 42,
            pid: 311,
            message: bytes::Bytes::from_static(b"GET /api/chat.postMessage 200"),
            tags: vec![
                (Text::from("env"), Text::from("prod")),
                (Text::from("dab.sample_rate"), Text::from("5")),
            ],
            ..Event::default()
        }
    }

    #[test]
    fn signs_and_verifies_and_ignores_dab_tags_and_tag_order() {
        let mut s = Signer::new(b"secret");
        let mut e = ev();
        e.signature = bytes::Bytes::copy_from_slice(&s.sign(&e));
        assert!(s.verify(&e));
        // DAB's own tags may be added on the way.
        e.set_tag(Text::from("dab.extra"), Text::from("x"));
        assert!(s.verify(&e));
        // Another key, or any changed field, fails.
        assert!(!Signer::new(b"other").verify(&e));
        let mut changed = e.clone();
        changed.offset = 43;
        assert!(!s.verify(&changed));
        let mut tagged = e.clone();
        tagged.set_tag(Text::from("env"), Text::from("dev"));
        assert!(!s.verify(&tagged));
    }

    #[test]
    fn canonical_bytes_are_pinned() {
        let mut buf = Vec::new();
        canonical(&ev(), &mut buf);
        let want: Vec<u8> = [
            &b"murron.v1.sig\0"[..],
            &1_732_320_000_000_000_000i64.to_be_bytes(),
            &5u32.to_be_bytes(),
            b"web-1",
            &7u32.to_be_bytes(),
            b"MyEvent",
            &42u64.to_be_bytes(),
            &311u32.to_be_bytes(),
            &29u32.to_be_bytes(),
            b"GET /api/chat.postMessage 200",
            &1u32.to_be_bytes(),
            &3u32.to_be_bytes(),
            b"env",
            &4u32.to_be_bytes(),
            b"prod",
        ]
        .concat();
        assert_eq!(buf, want);
    }
}
