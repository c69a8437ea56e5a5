//! The `http` sink: each write is one `POST` of a JSON array of events to
//! the endpoint, over a kept-alive HTTP/1.1 connection. A 2xx answer means
//! delivered. A 4xx other than 408 and 429 is a permanent refusal (the
//! runtime narrows the batch down to the events refused on their own and
//! sends those to `OnError`); anything else (no answer, 408, 429, 5xx, 3xx)
//! is transient and retried with back-off by the runtime, so the sink
//! itself never retries. An `https://` endpoint is reached over TLS
//! (rustls with ring), trusting only the CA certificates of `tls_ca`; the
//! server's name is checked against the endpoint's host.

use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use dab_api::{BuildError, ConnectorError, Event, Sink, SinkError, Written};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::codec::json;

/// Answer bodies are read to the end so the connection can be reused, up to
/// this much; a longer one costs the connection instead.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How much of a refusal's body goes into the error.
const REASON_BYTES: usize = 200;

/// Idle connections older than this are closed rather than reused.
const POOL_IDLE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSinkConfig {
    /// `http://host:port/path` to POST to.
    pub endpoint: String,
    /// For the whole exchange: connect, send, and read the answer.
    pub timeout: Duration,
    /// With https: the PEM CA file the server's certificate chains to.
    pub tls_ca: Option<String>,
}

#[derive(Debug)]
pub struct HttpSink {
    name: String,
    endpoint: Uri,
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    buf: BytesMut,
}

impl HttpSink {
    pub fn new(name: &str, config: HttpSinkConfig) -> Result<HttpSink, BuildError> {
        let error = |reason: String| BuildError {
            name: name.to_owned(),
            reason,
        };
        let target = crate::settings::http_target(&config.endpoint, config.tls_ca.as_deref())
            .map_err(error)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.timeout));
        // The TLS layer lets http:// through untouched.
        connector.enforce_http(false);
        let tls = tls_config(target.ca_pem.as_deref()).map_err(error)?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let endpoint = target.uri;
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        Ok(HttpSink {
            name: name.to_owned(),
            endpoint,
            timeout: config.timeout,
            client,
            buf: BytesMut::new(),
        })
    }

    fn encode(&mut self, events: &[Event]) -> Bytes {
        self.buf.clear();
        self.buf.put_u8(b'[');
        for (i, event) in events.iter().enumerate() {
            if i > 0 {
                self.buf.put_u8(b',');
            }
            json::encode(event, &mut self.buf);
        }
        self.buf.put_u8(b']');
        self.buf.split().freeze()
    }

    fn failure(&self, what: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Other(format!(
            "http sink {}: POST {}: {what}",
            self.name, self.endpoint
        ))
    }
}

#[async_trait]
impl Sink for HttpSink {
    async fn write(&mut self, events: &[Event]) -> Result<Written, SinkError> {
        if events.is_empty() {
            return Ok(Written::all());
        }
        let mut req = Request::new(Full::new(self.encode(events)));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.endpoint.clone();
        req.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));

        let client = &self.client;
        let exchange = async move {
            let answer = client.request(req).await.map_err(|e| error_chain(&e))?;
            let status = answer.status();
            // Reading to the end lets the pool reuse the connection; a
            // broken answer body after a 2xx still means delivered.
            let body = Limited::new(answer.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, String>((status, body))
        };
        let (status, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                return Err(self
                    .failure(format!("no answer within {:?}", self.timeout))
                    .into())
            }
            Ok(Err(e)) => return Err(self.failure(e).into()),
            Ok(Ok(answer)) => answer,
        };
        if status.is_success() {
            Ok(Written::all())
        } else if is_permanent(status) {
            Err(SinkError::permanent(self.failure(refusal(status, &body))))
        } else {
            Err(SinkError::transient(self.failure(refusal(status, &body))))
        }
    }
}

/// A 4xx other than 408 (timeout) and 429 (too many requests): sending the
/// same body again cannot succeed.
fn is_permanent(status: StatusCode) -> bool {
    status.is_client_error()
        && status != StatusCode::REQUEST_TIMEOUT
        && status != StatusCode::TOO_MANY_REQUESTS
}

/// rustls trusting exactly the certificates of `ca_pem` (none for an
/// http:// endpoint, which never reaches TLS).
fn tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("`tls_ca`: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("`tls_ca`: a certificate rustls cannot use: {e}"))?;
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
fn parse_endpoint(endpoint: &str) -> Result<Uri, String> {
    crate::settings::http_target(endpoint, None).map(|t| t.uri)
}

/// `HTTP 400 Bad Request: <the start of the body>`.
fn refusal(status: StatusCode, body: &[u8]) -> String {
    let start = &body[..body.len().min(REASON_BYTES)];
    let text = String::from_utf8_lossy(start);
    let text = text.trim();
    let ellipsis = if body.len() > REASON_BYTES { "…" } else { "" };
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {text}{ellipsis}")
    }
}

/// The error and its causes, which hyper keeps apart (the cause is where
/// "connection refused" is).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_status_and_body_start() {
        assert_eq!(
            refusal(StatusCode::BAD_REQUEST, b" bad type\n"),
            "HTTP 400 Bad Request: bad type"
        );
        assert_eq!(refusal(StatusCode::NOT_FOUND, b""), "HTTP 404 Not Found");
        let long = vec![b'x'; 1000];
        let r = refusal(StatusCode::CONFLICT, &long);
        assert!(r.ends_with('…') && r.len() < 260, "{r}");
    }

    #[test]
    fn only_4xx_other_than_408_and_429_are_permanent() {
        for (code, permanent) in [
            (400, true),
            (404, true),
            (413, true),
            (422, true),
            (408, false),
            (429, false),
            (500, false),
            (503, false),
            (301, false),
        ] {
            let status = StatusCode::from_u16(code).expect("status");
            assert_eq!(is_permanent(status), permanent, "{code}");
        }
    }

    #[test]
    fn endpoints_must_be_plain_http_with_a_host() {
        assert!(parse_endpoint("http://127.0.0.1:8081/ingest").is_ok());
        assert!(parse_endpoint("http://localhost/").is_ok());
        for bad in [
            "https://x/",
            "ftp://x/",
            "/ingest",
            "not a url",
            "http:///x",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }
}
