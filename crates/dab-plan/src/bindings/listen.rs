//! E017: two sources listening on the same address or socket path.
//!
//! Caught at validate time because at run time the second bind fails with
//! "address in use" only on the host, long after CI said yes.

use std::net::IpAddr;

use dab_api::schema::{find_kind, FieldType, Section};
use dab_diag::{Code, Diagnostic, Span};

use super::{Binding, ConfigValue};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    /// `::`, `[::]`, `*` or empty: every interface, both families (Linux
    /// binds `::` dual-stack by default).
    Any,
    /// `0.0.0.0`: every IPv4 interface.
    AnyV4,
    Ip(IpAddr),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Socket { host: Host, port: u16 },
    Path(String),
}

impl Endpoint {
    fn parse(ty: FieldType, value: &str) -> Option<Endpoint> {
        if ty != FieldType::Address {
            let path = value.strip_prefix("./").unwrap_or(value);
            return Some(Endpoint::Path(path.to_owned()));
        }
        let (host, port) = value.rsplit_once(':')?;
        let port = port.parse().ok()?;
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let host = match bare.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() && ip.is_ipv4() => Host::AnyV4,
            Ok(ip) if ip.is_unspecified() => Host::Any,
            Ok(ip) => Host::Ip(ip),
            Err(_) if bare.is_empty() || bare == "*" => Host::Any,
            Err(_) if bare.eq_ignore_ascii_case("localhost") => {
                Host::Ip(IpAddr::from([127, 0, 0, 1]))
            }
            Err(_) => Host::Name(bare.to_ascii_lowercase()),
        };
        Some(Endpoint::Socket { host, port })
    }

    fn clashes(&self, other: &Endpoint) -> bool {
        match (self, other) {
            (Endpoint::Path(a), Endpoint::Path(b)) => a == b,
            (Endpoint::Socket { host: a, port: p }, Endpoint::Socket { host: b, port: q }) => {
                // Port 0 asks the OS for a free port: never a clash.
                p == q && *p != 0 && hosts_overlap(a, b)
            }
            _ => false,
        }
    }
}

fn hosts_overlap(a: &Host, b: &Host) -> bool {
    match (a, b) {
        (Host::Any, _) | (_, Host::Any) => true,
        (Host::AnyV4, Host::AnyV4 | Host::Name(_)) | (Host::Name(_), Host::AnyV4) => true,
        (Host::AnyV4, Host::Ip(ip)) | (Host::Ip(ip), Host::AnyV4) => ip.is_ipv4(),
        (a, b) => a == b,
    }
}

/// One diagnostic per source whose listen address an earlier source has.
pub(super) fn check(sources: &[Binding], diags: &mut Vec<Diagnostic>) {
    let mut seen: Vec<(Endpoint, &Binding, &str, Span)> = Vec::new();
    for b in sources {
        let Some(spec) = find_kind(Section::Sources, &b.kind) else {
            continue;
        };
        for field in spec.fields.iter().filter(|f| f.listen) {
            let (Some(ConfigValue::Str(value)), Some(&span)) =
                (b.fields.get(field.name), b.field_spans.get(field.name))
            else {
                continue;
            };
            let Some(endpoint) = Endpoint::parse(field.ty, value) else {
                continue;
            };
            if let Some((_, first, first_value, first_span)) =
                seen.iter().find(|(e, ..)| e.clashes(&endpoint))
            {
                diags.push(
                    Diagnostic::new(
                        Code::E017,
                        span,
                        format!(
                            "source `{}` listens on `{value}`, which source `{}` already uses",
                            b.name, first.name
                        ),
                    )
                    .with_label(
                        *first_span,
                        format!("`{}` listens on `{first_value}` here", first.name),
                    )
                    .with_help(format!(
                        "give each source its own address; pipelines may all read `{}` instead",
                        first.name
                    )),
                );
            }
            seen.push((endpoint, b, value, span));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        Endpoint::parse(FieldType::Address, s).expect("an address")
    }

    #[test]
    fn overlapping_hosts_clash_on_the_same_port() {
        assert!(ep("localhost:80").clashes(&ep("127.0.0.1:80")));
        assert!(ep("0.0.0.0:80").clashes(&ep("127.0.0.1:80")));
        assert!(ep("[::]:80").clashes(&ep("10.0.0.1:80")));
        assert!(ep("Host-A:80").clashes(&ep("host-a:80")));
        assert!(!ep("0.0.0.0:80").clashes(&ep("[::1]:80")));
        assert!(!ep("127.0.0.1:80").clashes(&ep("127.0.0.2:80")));
        assert!(!ep("127.0.0.1:80").clashes(&ep("127.0.0.1:81")));
        assert!(!ep("127.0.0.1:0").clashes(&ep("127.0.0.1:0")));
        let path = |s| Endpoint::parse(FieldType::Path, s).expect("a path");
        assert!(path("./in.sock").clashes(&path("in.sock")));
        assert!(!path("127.0.0.1:80").clashes(&ep("127.0.0.1:80")));
    }
}
