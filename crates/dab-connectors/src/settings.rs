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

/// Connections the kernel completes and queues before a listener accepts
/// them. The usual 128 overflows under a burst of clients (2,000 connecting
/// at once): the kernel then drops their SYNs and each waits a whole second
/// to retry. The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener on `addr` (`host:port`; a host name is resolved
/// and each address tried in turn) with a backlog of [`LISTEN_BACKLOG`].
pub(crate) async fn listen_tcp(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        };
        let bound = socket.and_then(|s| {
            s.set_reuseaddr(true)?;
            s.bind(a)?;
            s.listen(LISTEN_BACKLOG)
        });
        match bound {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("`{addr}` resolves to no address"),
        )
    }))
}
