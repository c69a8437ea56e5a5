//! Typing one field's value against its schema type into a span-free
//! [`ConfigValue`].
//!
//! Strings are parsed when the schema wants a number or boolean, since
//! interpolation only ever yields strings (`capacity: "${CAP:-100}"`).

use std::collections::BTreeMap;

use dab_api::schema::{FieldSpec, FieldType};
use dab_diag::{did_you_mean, Span};
use marked_yaml::Node;

use super::scalar::{describe, number, resolve, text, Val};
use super::{ConfigValue, Ctx};

fn expected(ty: FieldType) -> String {
    match ty {
        FieldType::Str => "a string".to_owned(),
        FieldType::Int => "an integer".to_owned(),
        FieldType::Number => "a number".to_owned(),
        FieldType::Bool => "true or false".to_owned(),
        FieldType::StrList => "a list of strings".to_owned(),
        FieldType::Map => "a mapping of names to strings".to_owned(),
        FieldType::Enum(allowed) => format!("one of {}", allowed.join(", ")),
        FieldType::Address => "an address host:port".to_owned(),
        FieldType::Path => "a path".to_owned(),
        FieldType::Url => "a URL such as \"http://127.0.0.1:8991\"".to_owned(),
        FieldType::Duration => "a duration such as \"250ms\" or \"10s\"".to_owned(),
        FieldType::DurationOr(words) => format!(
            "{} or a duration such as \"100ms\" or \"1s\"",
            words
                .iter()
                .map(|w| format!("`{w}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        FieldType::Size => "a size such as \"512MiB\" or \"10GiB\"".to_owned(),
    }
}

/// Reports a value that does not fit; `given` is the string the user wrote,
/// for a "did you mean" among enum values.
fn wrong(ctx: &mut Ctx<'_>, field: &FieldSpec, span: Span, found: &str, given: Option<&str>) {
    let d = ctx.error(
        span,
        format!(
            "`{}` must be {}, found {found}",
            field.name,
            expected(field.ty)
        ),
    );
    match field.ty {
        FieldType::Address => d.help = Some("for example \"127.0.0.1:8990\"".to_owned()),
        FieldType::Duration | FieldType::DurationOr(_) => {
            d.help = Some("a number then ms, s, m or h; a bare integer is milliseconds".to_owned())
        }
        FieldType::Size => {
            d.help = Some(
                "a whole number then B, kB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024); a bare integer is bytes"
                    .to_owned(),
            )
        }
        FieldType::Enum(allowed) => {
            if let Some(best) = given.and_then(|g| did_you_mean(g, allowed.iter().copied())) {
                d.help = Some(format!("did you mean `{best}`?"));
            }
        }
        _ => {}
    }
}

/// Types the value of `field`; `None` when it is wrong (reported).
pub(super) fn field_value(
    ctx: &mut Ctx<'_>,
    field: &FieldSpec,
    key: Span,
    node: &Node,
) -> Option<ConfigValue> {
    let span = ctx.loc.value(key, node);
    match field.ty {
        FieldType::StrList => {
            let value = list(ctx, field, span, node)?;
            return count_in_range(ctx, field, span, value);
        }
        FieldType::Map => return map(ctx, field, key, node),
        _ => {}
    }
    let Node::Scalar(s) = node else {
        wrong(ctx, field, span, &describe(node), None);
        return None;
    };
    let val = resolve(ctx, s, span)?;
    if let (FieldType::Str, Val::Str(given)) = (field.ty, &val) {
        // Connectors refuse an empty topic, broker list or group.
        if given.trim().is_empty() {
            ctx.error(span, format!("`{}` must not be empty", field.name));
            return None;
        }
    }
    let value = scalar(field.ty, &val, s.as_str());
    match value {
        Some(v) => in_range(ctx, field, span, v),
        None => {
            let given = match &val {
                Val::Str(g) => Some(g.as_str()),
                _ => None,
            };
            wrong(ctx, field, span, &val.describe(), given);
            None
        }
    }
}

/// The typed value of a scalar, or `None` if it does not fit `ty`.
fn scalar(ty: FieldType, val: &Val, written: &str) -> Option<ConfigValue> {
    let text = match val {
        Val::Str(s) => Some(s.as_str()),
        Val::Null => None,
        _ => Some(written),
    };
    match (ty, val) {
        (_, Val::Null) => None,
        (FieldType::Str, _) => text.map(|t| ConfigValue::Str(t.to_owned())),
        (FieldType::Int, Val::Int(i)) => Some(ConfigValue::Int(*i)),
        (FieldType::Int, Val::Str(s)) => s.trim().parse().ok().map(ConfigValue::Int),
        (FieldType::Number, Val::Int(i)) => Some(ConfigValue::Int(*i)),
        (FieldType::Number, Val::Float(f)) => f.is_finite().then_some(ConfigValue::Float(*f)),
        (FieldType::Number, Val::Str(s)) => match number(s.trim()) {
            Some(Val::Int(i)) => Some(ConfigValue::Int(i)),
            Some(Val::Float(f)) if f.is_finite() => Some(ConfigValue::Float(f)),
            _ => None,
        },
        (FieldType::Bool, Val::Bool(b)) => Some(ConfigValue::Bool(*b)),
        (FieldType::Bool, Val::Str(s)) => match s.trim() {
            "true" | "True" | "TRUE" => Some(ConfigValue::Bool(true)),
            "false" | "False" | "FALSE" => Some(ConfigValue::Bool(false)),
            _ => None,
        },
        (FieldType::Enum(allowed), Val::Str(s)) => allowed
            .contains(&s.as_str())
            .then(|| ConfigValue::Str(s.clone())),
        (FieldType::Address, Val::Str(s)) => is_address(s).then(|| ConfigValue::Str(s.clone())),
        (FieldType::Path, Val::Str(s)) => (!s.is_empty()).then(|| ConfigValue::Str(s.clone())),
        (FieldType::Url, Val::Str(s)) => is_url(s).then(|| ConfigValue::Str(s.clone())),
        (FieldType::Duration, Val::Int(ms)) => Some(ConfigValue::Int(*ms)),
        (FieldType::Duration, Val::Str(s)) => duration_ms(s.trim()).map(ConfigValue::Int),
        (FieldType::DurationOr(_), Val::Int(ms)) => Some(ConfigValue::Int(*ms)),
        (FieldType::DurationOr(words), Val::Str(s)) => {
            let s = s.trim();
            if words.contains(&s) {
                Some(ConfigValue::Str(s.to_owned()))
            } else {
                duration_ms(s).map(ConfigValue::Int)
            }
        }
        (FieldType::Size, Val::Int(n)) => Some(ConfigValue::Int(*n)),
        (FieldType::Size, Val::Str(s)) => size_bytes(s.trim()).map(ConfigValue::Int),
        _ => None,
    }
}

/// Holds a number to its field's bounds (`FieldSpec::bounds`).
fn in_range(
    ctx: &mut Ctx<'_>,
    field: &FieldSpec,
    span: Span,
    value: ConfigValue,
) -> Option<ConfigValue> {
    let (as_f64, shown) = match &value {
        ConfigValue::Int(i) => (*i as f64, i.to_string()),
        ConfigValue::Float(f) => (*f, f.to_string()),
        _ => return Some(value),
    };
    let unit = match field.ty {
        FieldType::Duration | FieldType::DurationOr(_) => " ms",
        FieldType::Size => " bytes",
        _ => "",
    };
    if as_f64 == 0.0 && field.name == "rate" {
        ctx.error(
            span,
            format!("`{}` must be greater than 0, found {shown}", field.name),
        )
        .help = Some("leave `rate` out for no limit".to_owned());
        return None;
    }
    let Some((min, max)) = field.bounds else {
        return Some(value);
    };
    // Integers compare as integers, so that i64 bounds are exact.
    let (below, above) = match &value {
        ConfigValue::Int(i) => (*i < min, *i > max),
        _ => (as_f64 < min as f64, as_f64 > max as f64),
    };
    let message = if below && as_f64 < 0.0 {
        format!("`{}` must not be negative, found {shown}", field.name)
    } else if below {
        format!(
            "`{}` must be at least {min}{unit}, found {shown}{unit}",
            field.name
        )
    } else if above {
        format!(
            "`{}` must be at most {max}{unit}, found {shown}{unit}",
            field.name
        )
    } else {
        return Some(value);
    };
    ctx.error(span, message).help = Some(format!("`{}` takes {min} to {max}{unit}", field.name));
    None
}

/// Holds a list's length to its field's bounds.
fn count_in_range(
    ctx: &mut Ctx<'_>,
    field: &FieldSpec,
    span: Span,
    value: ConfigValue,
) -> Option<ConfigValue> {
    let (Some((min, max)), ConfigValue::List(items)) = (field.bounds, &value) else {
        return Some(value);
    };
    let n = i64::try_from(items.len()).unwrap_or(i64::MAX);
    if (min..=max).contains(&n) {
        return Some(value);
    }
    ctx.error(
        span,
        format!("`{}` must list {min} to {max} items, found {n}", field.name),
    );
    None
}

fn list(ctx: &mut Ctx<'_>, field: &FieldSpec, span: Span, node: &Node) -> Option<ConfigValue> {
    match node {
        // One string, from the file or from a variable, is a comma-separated
        // list: `types: A` and `hosts: "${HOSTS}"` both read naturally.
        Node::Scalar(_) => match text(ctx, node, span) {
            Ok(Some(s)) => Some(ConfigValue::List(
                s.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| ConfigValue::Str(p.to_owned()))
                    .collect(),
            )),
            Ok(None) => None,
            Err(found) => {
                wrong(ctx, field, span, &found, None);
                None
            }
        },
        Node::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            let mut ok = true;
            for item in items.iter() {
                let at = ctx.loc.value(span, item);
                match text(ctx, item, at) {
                    Ok(Some(s)) => out.push(ConfigValue::Str(s)),
                    Ok(None) => ok = false,
                    Err(found) => {
                        ctx.error(
                            at,
                            format!("items of `{}` must be strings, found {found}", field.name),
                        );
                        ok = false;
                    }
                }
            }
            ok.then_some(ConfigValue::List(out))
        }
        Node::Mapping(_) => {
            wrong(ctx, field, span, "a mapping", None);
            None
        }
    }
}

fn map(ctx: &mut Ctx<'_>, field: &FieldSpec, key: Span, node: &Node) -> Option<ConfigValue> {
    let Node::Mapping(entries) = node else {
        let span = ctx.loc.value(key, node);
        wrong(ctx, field, span, &describe(node), None);
        return None;
    };
    let mut out = BTreeMap::new();
    let mut ok = true;
    for (k, v) in entries.iter() {
        let key_span = ctx.loc.scalar(k);
        let at = ctx.loc.value(key_span, v);
        match text(ctx, v, at) {
            Ok(Some(s)) => {
                out.insert(k.as_str().to_owned(), ConfigValue::Str(s));
            }
            Ok(None) => ok = false,
            Err(found) => {
                ctx.error(
                    at,
                    format!("values of `{}` must be strings, found {found}", field.name),
                )
                .help = Some(format!("write it as `{}: \"value\"`", k.as_str()));
                ok = false;
            }
        }
    }
    ok.then_some(ConfigValue::Map(out))
}

/// `host:port`, the host a name, an IPv4 address or a bracketed IPv6 one.
pub(super) fn is_address(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[') {
        Some(inner) => inner.strip_suffix(']').is_some_and(|h| !h.is_empty()),
        None => !host.is_empty() && !host.contains(':') && !host.contains(char::is_whitespace),
    };
    host_ok && port.parse::<u16>().is_ok()
}

fn is_url(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !rest.contains(char::is_whitespace)
}

/// Milliseconds of `250ms`, `10s`, `5m`, `1h`, or of bare digits.
fn duration_ms(s: &str) -> Option<i64> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (amount, unit) = s.split_at(digits);
    let amount: i64 = amount.parse().ok()?;
    let scale = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    amount.checked_mul(scale)
}

/// Bytes of `10GiB`, `512MiB`, `64KiB`, `1GB`, `500MB`, `4kB`, `100B`, or
/// of bare digits.
fn size_bytes(s: &str) -> Option<i64> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (amount, unit) = s.split_at(digits);
    let amount: i64 = amount.parse().ok()?;
    let scale: i64 = match unit.trim_start() {
        "" | "B" => 1,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    amount.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_urls_and_durations() {
        assert!(is_address("127.0.0.1:8990"));
        assert!(is_address("[::1]:80"));
        assert!(is_address("kafka-1.internal:9092"));
        assert!(!is_address("127.0.0.1"));
        assert!(!is_address(":80"));
        assert!(!is_address("::1:80"));
        assert!(!is_address("host:99999"));
        assert!(is_url("http://127.0.0.1:8991"));
        assert!(!is_url("127.0.0.1:8991"));
        assert!(!is_url("http://"));
        assert_eq!(duration_ms("250ms"), Some(250));
        assert_eq!(duration_ms("10s"), Some(10_000));
        assert_eq!(duration_ms("2h"), Some(7_200_000));
        assert_eq!(duration_ms("40"), Some(40));
        assert_eq!(duration_ms("1.5s"), None);
        assert_eq!(duration_ms("s"), None);
        assert_eq!(duration_ms("99999999999999999h"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(size_bytes("10GiB"), Some(10 << 30));
        assert_eq!(size_bytes("512MiB"), Some(512 << 20));
        assert_eq!(size_bytes("64KiB"), Some(64 << 10));
        assert_eq!(size_bytes("1GB"), Some(1_000_000_000));
        assert_eq!(size_bytes("4kB"), Some(4_000));
        assert_eq!(size_bytes("4096"), Some(4096));
        assert_eq!(size_bytes("100 MiB"), Some(100 << 20));
        assert_eq!(size_bytes("1.5GiB"), None);
        assert_eq!(size_bytes("10gb"), None);
        assert_eq!(size_bytes("GiB"), None);
        assert_eq!(size_bytes("9999999999TiB"), None);
    }
}
