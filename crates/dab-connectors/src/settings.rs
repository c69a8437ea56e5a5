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

/// Where the `http` and `murron_grpc` sinks send: the endpoint, and for
/// `https://` the PEM CA certificates the peer's certificate must chain to
/// (`tls_ca`, required with https, read when the sink is built).
#[derive(Debug, Clone)]
pub(crate) struct HttpTarget {
    pub uri: hyper::Uri,
    pub ca_pem: Option<Vec<u8>>,
}

/// An `http://host[:port]/path` endpoint, or an `https://` one with a CA.
pub(crate) fn http_target(endpoint: &str, tls_ca: Option<&str>) -> Result<HttpTarget, String> {
    let uri: hyper::Uri = endpoint
        .parse()
        .map_err(|e| format!("`endpoint` `{endpoint}` is not a URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        Some(other) => {
            return Err(format!(
                "`endpoint` `{endpoint}`: scheme `{other}` is not http or https"
            ))
        }
        None => {
            return Err(format!(
                "`endpoint` `{endpoint}` must start with http:// or https://"
            ))
        }
    };
    if uri.authority().is_none_or(|a| a.host().is_empty()) {
        return Err(format!("`endpoint` `{endpoint}` has no host"));
    }
    let ca_pem = match (https, tls_ca) {
        (false, None) => None,
        (false, Some(_)) => {
            return Err(format!(
                "`tls_ca` is for https:// endpoints, and `{endpoint}` is http://"
            ))
        }
        (true, None) => {
            return Err(format!(
                "`endpoint` `{endpoint}` is https:// and needs `tls_ca`, the PEM CA its certificate chains to"
            ))
        }
        (true, Some(path)) => Some(read_ca(path)?),
    };
    Ok(HttpTarget { uri, ca_pem })
}

/// The bytes of a PEM file holding at least one certificate.
fn read_ca(path: &str) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read `tls_ca` file `{path}`: {e}"))?;
    let certs: Result<Vec<_>, _> = rustls_pki_types::CertificateDer::pem_slice_iter(&pem).collect();
    match certs {
        Ok(c) if !c.is_empty() => Ok(pem),
        Ok(_) => Err(format!("`tls_ca` file `{path}` holds no PEM certificate")),
        Err(e) => Err(format!(
            "`tls_ca` file `{path}` is not a PEM certificate: {e}"
        )),
    }
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
