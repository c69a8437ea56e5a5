//! Checks of connector settings shared by several connectors.

use dab_api::BuildError;

/// Events per runtime batch at most, from any socket, HTTP request or gRPC
/// batch: a larger input is cut into batches of this size, so the memory a
/// request holds downstream does not grow with its number of events.
pub(crate) const MAX_BATCH: usize = 1024;

/// `host:port` with a port number; the host is resolved when binding.
pub(crate) fn check_listen(listen: &str) -> Result<(), String> {
    match listen.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("`listen` must be host:port, not `{listen}`")),
    }
}

pub(crate) fn build_error(name: &str, reason: impl Into<String>) -> BuildError {
    BuildError {
        name: name.to_owned(),
        reason: reason.into(),
    }
}

/// An `http://host[:port]/path` endpoint; https needs TLS, which the sinks
/// do not have yet.
pub(crate) fn http_endpoint(endpoint: &str) -> Result<hyper::Uri, String> {
    let uri: hyper::Uri = endpoint
        .parse()
        .map_err(|e| format!("`endpoint` `{endpoint}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "`endpoint` `{endpoint}`: https is not supported yet, use http://"
            ))
        }
        Some(other) => {
            return Err(format!(
                "`endpoint` `{endpoint}`: scheme `{other}` is not http"
            ))
        }
        None => return Err(format!("`endpoint` `{endpoint}` must start with http://")),
    }
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err(format!("`endpoint` `{endpoint}` has no host"));
    }
    Ok(uri)
}
