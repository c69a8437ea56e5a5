//! `options:` of a Kafka binding, checked against librdkafka's own list of
//! properties (`kafka_table.rs`), so that a name librdkafka does not know,
//! or a value it would refuse, is an E015 at validate time instead of a
//! connector that cannot be built at run time.
//!
//! The value rules follow `rd_kafka_anyconf_set_prop0` in librdkafka's
//! `rdkafka_conf.c`: booleans take true/t/1 and false/f/0 in any case,
//! integers and floats must be numbers inside the property's range, enum
//! values and flags are matched without regard to case. A property or
//! value that needs a feature this build of librdkafka lacks (OpenSSL,
//! libcurl, Cyrus SASL) is refused too, as librdkafka would refuse it.
//! Rules between properties are in `kafka_rules.rs`.

use dab_diag::did_you_mean;

use super::kafka_table::{LIBRDKAFKA_VERSION, PROPERTIES, VALUE_NEEDS};

/// The `_UNSUPPORTED_<FEATURE>` markers of `rdkafka_conf.c` that the
/// librdkafka linked into `dab` has: rdkafka 0.38 bundles it with its
/// default `libz` feature and DAB's `zstd` (snappy is always in, and the
/// Windows-only GSSAPI marker holds off Windows). It has no OpenSSL, no
/// libcurl and no Cyrus SASL: TLS and SASL other than PLAIN are refused.
/// `tests/validate_run.rs` builds clients with every value this table
/// accepts, so a change of rdkafka features shows up there.
const BUILT_WITH: &[&str] = &["ZLIB", "SNAPPY", "ZSTD", "WIN32_GSSAPI"];

/// What a missing feature is, in words.
fn feature_name(marker: &str) -> &'static str {
    match marker {
        "SSL" | "OAUTHBEARER" | "SSL_ENGINE" | "SSL_3" | "OPENSSL_1_0_2" | "OPENSSL_1_1_0" => {
            "OpenSSL"
        }
        "OIDC" | "HTTPS" => "libcurl and OpenSSL",
        "HTTP" => "libcurl",
        "GSSAPI" | "WIN32_GSSAPI" => "Cyrus SASL (GSSAPI)",
        "ZLIB" => "zlib",
        "ZSTD" => "zstd",
        "SNAPPY" => "snappy",
        _ => "a feature",
    }
}

/// Whether this build has what a `_UNSUPPORTED_<marker>` needs.
pub(super) fn built_with(marker: &str) -> bool {
    BUILT_WITH.contains(&marker)
}

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
    /// The build feature the property needs (`_UNSUPPORTED_<FEATURE>`).
    pub needs: Option<&'static str>,
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
    /// The property, or this value of it, needs a library this build of
    /// librdkafka lacks (the marker).
    Unsupported(&'static str),
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
            Problem::Unsupported(marker) => (
                format!(
                    "librdkafka property `{key}` = `{value}` needs {}, which DAB's librdkafka is built without",
                    feature_name(marker)
                ),
                "DAB links librdkafka without OpenSSL, libcurl and Cyrus SASL: no TLS to brokers, SASL PLAIN only".to_owned(),
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
    if let Some(marker) = prop.needs.filter(|m| !built_with(m)) {
        return Err(Problem::Unsupported(marker));
    }
    let v = value.trim();
    if let Some((_, _, marker)) = VALUE_NEEDS
        .iter()
        .find(|(p, val, m)| *p == key && val.eq_ignore_ascii_case(v) && !built_with(m))
    {
        return Err(Problem::Unsupported(marker));
    }
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

/// Values the table accepts for each property: the ends of each range,
/// every enum word, both booleans (free text gets none). For the test that
/// builds Kafka clients with every value validate lets through.
pub fn accepted_samples() -> Vec<(&'static str, Vec<String>)> {
    PROPERTIES
        .iter()
        .filter(|p| p.needs.is_none_or(built_with))
        .map(|p| {
            let values: Vec<String> = match p.ty {
                Ty::Int(lo, hi, words) => [lo.to_string(), hi.to_string()]
                    .into_iter()
                    .chain(words.iter().map(|w| (*w).to_owned()))
                    .collect(),
                Ty::Float(lo, hi) => vec![lo.to_string(), hi.to_string()],
                Ty::Bool => vec!["true".to_owned(), "false".to_owned()],
                Ty::Enum(words) => words.iter().map(|w| (*w).to_owned()).collect(),
                Ty::Flags(words) => words.iter().take(1).map(|w| (*w).to_owned()).collect(),
                Ty::Text | Ty::Api => Vec::new(),
            };
            let values = values
                .into_iter()
                .filter(|v| check(p.name, v).is_ok())
                .collect();
            (p.name, values)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_sorted_for_binary_search() {
        assert!(PROPERTIES.windows(2).all(|w| w[0].name < w[1].name));
        assert_eq!(PROPERTIES.len(), 190);
        assert!(VALUE_NEEDS
            .iter()
            .all(|(p, _, _)| PROPERTIES.iter().any(|q| q.name == *p)));
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
        assert_eq!(
            check("security.protocol", "SSL"),
            Err(Problem::Unsupported("SSL"))
        );
        assert_eq!(check("security.protocol", "sasl_plaintext"), Ok(()));
        assert_eq!(
            check("ssl.ca.location", "/etc/ssl/ca.pem"),
            Err(Problem::Unsupported("SSL"))
        );
        assert_eq!(check("compression.codec", "zstd"), Ok(()));
    }
}
