//! Names reserved to DAB (SPEC section 4): types and tag keys starting
//! `dab.` mean something to the engine (`dab.undecodable` events go to
//! `OnError`, `dab.error` says why, `dab.sample_rate` records sampling).
//! Input from outside must not claim them, so sources rename what it
//! claims at ingest: `dab.X` becomes `dab.untrusted.X`, which DAB gives no
//! meaning to. The new name still starts `dab.`, so it stays out of the
//! signature (SPEC section 4) exactly as the producer's signer left it out;
//! names already under `dab.untrusted.` are left alone, so an event relayed
//! through several DABs is renamed once, not once per hop.

use dab_api::{Event, Text};

const RESERVED: &[u8] = b"dab.";
const UNTRUSTED: &str = "dab.untrusted.";

fn claims_reserved(name: &[u8]) -> bool {
    name.starts_with(RESERVED) && !name.starts_with(UNTRUSTED.as_bytes())
}

fn renamed(name: &Text) -> Text {
    let rest = name.as_str().get(RESERVED.len()..).unwrap_or_default();
    Text::from(format!("{UNTRUSTED}{rest}"))
}

/// Renames the reserved names `ev` claims; true when it claimed any. A
/// renamed tag whose new key the event already has is dropped (tag keys
/// are unique; the event's own `dab.untrusted.` tag wins).
pub fn rename_reserved(ev: &mut Event) -> bool {
    let ty = claims_reserved(ev.ty.as_bytes());
    let tags = ev.tags.iter().any(|(k, _)| claims_reserved(k.as_bytes()));
    if !ty && !tags {
        return false;
    }
    ev.touch();
    if ty {
        ev.ty = renamed(&ev.ty);
    }
    if tags {
        let old = std::mem::take(&mut ev.tags);
        let mut kept: Vec<(Text, Text)> = Vec::with_capacity(old.len());
        let (claimed, own): (Vec<_>, Vec<_>) = old
            .into_iter()
            .partition(|(k, _)| claims_reserved(k.as_bytes()));
        kept.extend(own);
        for (k, v) in claimed {
            let k = renamed(&k);
            if !kept.iter().any(|(have, _)| *have == k) {
                kept.push((k, v));
            }
        }
        ev.tags = kept;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ty: &str, tags: &[(&str, &str)]) -> Event {
        Event {
            ty: Text::from(ty),
            tags: tags
                .iter()
                .map(|(k, v)| (Text::from(*k), Text::from(*v)))
                .collect(),
            ..Event::default()
        }
    }

    fn names(e: &Event) -> (String, Vec<(String, String)>) {
        (
            e.ty.to_string(),
            e.tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn reserved_names_are_renamed_once() {
        let mut e = event(
            "dab.undecodable",
            &[
                ("env", "prod"),
                ("dab.error", "forged"),
                ("dab.sample_rate", "5"),
            ],
        );
        assert!(rename_reserved(&mut e));
        assert!(!e.is_undecodable());
        assert_eq!(
            names(&e),
            (
                "dab.untrusted.undecodable".to_owned(),
                vec![
                    ("env".to_owned(), "prod".to_owned()),
                    ("dab.untrusted.error".to_owned(), "forged".to_owned()),
                    ("dab.untrusted.sample_rate".to_owned(), "5".to_owned()),
                ]
            )
        );
        // A second DAB leaves it as it is.
        let before = names(&e);
        assert!(!rename_reserved(&mut e));
        assert_eq!(names(&e), before);
    }

    #[test]
    fn ordinary_names_are_untouched_and_collisions_keep_one_tag() {
        let mut e = event("dabble", &[("dab", "x"), ("database.x", "y")]);
        assert!(!rename_reserved(&mut e));
        let mut e = event(
            "t",
            &[("dab.untrusted.error", "older"), ("dab.error", "forged")],
        );
        assert!(rename_reserved(&mut e));
        assert_eq!(
            names(&e).1,
            vec![("dab.untrusted.error".to_owned(), "older".to_owned())]
        );
    }
}
