//! `options:` of a Kafka binding, checked against librdkafka's own list of
//! properties (`kafka_table.rs`), so that a name librdkafka does not know,
//! or a value it would refuse, is an E015 at validate time instead of a
//! connector that cannot be built at run time.
//!
//! The value rules follow `rd_kafka_anyconf_set_prop0` in librdkafka's
//! `rdkafka_conf.c`: booleans take true/t/1 and false/f/0 in any case,
//! integers and floats must be numbers inside the property's range, enum
//! values and flags are matched without regard to case.

use dab_diag::did_you_mean;

use super::kafka_table::{LIBRDKAFKA_VERSION, PROPERTIES};

/// What a property's value must be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Ty {
    /// An integer in the inclusive range, or one of the words.
    Int(i64, i64, &'static [&'static str]),
    Float(f64, f64),
    Bool,
    Enum(&'static [&'static str]),
    /// Comma-separated members of the list (any text when the list is empty).
    Flags(&'static [&'static str]),
    Text,
    /// A callback or pointer, set through librdkafka's C API only.
    Api,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Prop {
    pub name: &'static str,
    pub ty: Ty,
}

/// Why an option is refused.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Problem {
    /// Not a librdkafka property; the closest name, if one is close.
    Unknown(Option<&'static str>),
    /// Only settable through the C API.
    Api,
    /// The value does not fit; what it must be.
    Value(String),
}

impl Problem {
    /// The message and help of the diagnostic for option `key` = `value`.
    pub(super) fn describe(&self, key: &str, value: &str) -> (String, String) {
        match self {
            Problem::Unknown(best) => (
                format!("`{key}` is not a librdkafka property"),
                match best {
                    Some(b) => format!("did you mean `{b}`?"),
                    None => format!(
                        "the properties are listed in librdkafka {LIBRDKAFKA_VERSION}'s CONFIGURATION.md"
                    ),
                },
            ),
            Problem::Api => (
                format!("librdkafka property `{key}` cannot be set from a bindings file"),
                "it takes a callback or pointer through librdkafka's C API; remove it".to_owned(),
            ),
            Problem::Value(expected) => (
                format!("librdkafka property `{key}` must be {expected}, found `{value}`"),
                format!("librdkafka {LIBRDKAFKA_VERSION} would refuse this value when the connector is built"),
            ),
        }
    }
}

fn find(key: &str) -> Option<&'static Prop> {
    PROPERTIES
        .binary_search_by(|p| p.name.cmp(key))
        .ok()
        .map(|i| &PROPERTIES[i])
}

/// Checks one `options:` entry.
pub(super) fn check(key: &str, value: &str) -> Result<(), Problem> {
    let Some(prop) = find(key) else {
        return Err(Problem::Unknown(did_you_mean(
            key,
            PROPERTIES.iter().map(|p| p.name),
        )));
    };
    let v = value.trim();
    let fits = match prop.ty {
        Ty::Api => return Err(Problem::Api),
        Ty::Text => true,
        Ty::Bool => ["true", "t", "1", "false", "f", "0"]
            .iter()
            .any(|w| w.eq_ignore_ascii_case(v)),
        Ty::Int(lo, hi, words) => {
            words.iter().any(|w| w.eq_ignore_ascii_case(v))
                || v.parse::<i64>().is_ok_and(|n| (lo..=hi).contains(&n))
        }
        Ty::Float(lo, hi) => v
            .parse::<f64>()
            .is_ok_and(|x| x.is_finite() && x >= lo && x <= hi),
        Ty::Enum(allowed) => allowed.iter().any(|a| a.eq_ignore_ascii_case(v)),
        Ty::Flags(allowed) => {
            allowed.is_empty()
                || v.split(',')
                    .map(str::trim)
                    .all(|f| f.is_empty() || allowed.iter().any(|a| a.eq_ignore_ascii_case(f)))
        }
    };
    if fits {
        Ok(())
    } else {
        Err(Problem::Value(expected(prop.ty)))
    }
}

fn expected(ty: Ty) -> String {
    match ty {
        Ty::Int(lo, hi, []) => format!("an integer from {lo} to {hi}"),
        Ty::Int(lo, hi, words) => {
            format!("an integer from {lo} to {hi} or {}", words.join(", "))
        }
        Ty::Float(lo, hi) => format!("a number from {lo} to {hi}"),
        Ty::Bool => "true or false".to_owned(),
        Ty::Enum(allowed) => format!("one of {}", allowed.join(", ")),
        Ty::Flags(allowed) => format!("a comma-separated list of {}", allowed.join(", ")),
        Ty::Text | Ty::Api => "text".to_owned(),
    }
}

/// Every property name, for tests that hold the table against librdkafka.
pub fn property_names() -> impl Iterator<Item = (&'static str, bool)> {
    PROPERTIES.iter().map(|p| (p.name, p.ty == Ty::Api))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_for_binary_search() {
        assert!(PROPERTIES.windows(2).all(|w| w[0].name < w[1].name));
        assert_eq!(PROPERTIES.len(), 190);
    }

    #[test]
    fn names_types_and_ranges_follow_librdkafka() {
        assert_eq!(check("session.timeout.ms", "6000"), Ok(()));
        assert_eq!(
            check("session.timeout.ms", "0"),
            Err(Problem::Value("an integer from 1 to 3600000".into()))
        );
        assert_eq!(
            check("session.timeout.ms", "six"),
            Err(Problem::Value("an integer from 1 to 3600000".into()))
        );
        assert_eq!(check("acks", "all"), Ok(()));
        assert_eq!(check("acks", "-1"), Ok(()));
        assert_eq!(check("enable.auto.commit", "TRUE"), Ok(()));
        assert_eq!(check("enable.auto.commit", "0"), Ok(()));
        assert_eq!(
            check("enable.auto.commit", "yes"),
            Err(Problem::Value("true or false".into()))
        );
        assert_eq!(check("linger.ms", "0.5"), Ok(()));
        assert_eq!(check("auto.offset.reset", "Earliest"), Ok(()));
        assert_eq!(check("debug", "broker, cgrp"), Ok(()));
        assert!(matches!(
            check("debug", "broker,nope"),
            Err(Problem::Value(_))
        ));
        assert_eq!(check("client.id", "anything at all"), Ok(()));
        assert_eq!(
            check("session.timeout", "6000"),
            Err(Problem::Unknown(Some("session.timeout.ms")))
        );
        assert_eq!(check("zzzzzzzzzzzz", "1"), Err(Problem::Unknown(None)));
        assert_eq!(check("error_cb", "x"), Err(Problem::Api));
    }
}
