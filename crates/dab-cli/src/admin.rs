//! The admin endpoint of `dab run --metrics ADDR`: `GET /metrics`
//! (Prometheus text), `/healthz` (alive), `/readyz` (200, or 503 with a
//! line per reason: a source not serving, a task died, a circuit breaker
//! not closed, draining; `Running::readiness`), `/reliability` (the REP
//! report `dab inspect --url` reads) and `/schemas` (the payload schemas
//! of the running set's `types:`, as JSON; replaced by each reload).
//!
//! Served with hyper's HTTP/1.1 connection (the `http` source's server
//! already links it), one request per connection: every answer carries
//! `connection: close` and the connection ends after it, with 10 s for
//! the whole exchange. Routing is a plain match on method and request
//! target; anything but GET is 405.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dab_runtime::Running;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The `/schemas` document of the set that runs now.
static SCHEMAS: std::sync::RwLock<String> = std::sync::RwLock::new(String::new());

/// Publishes the schemas of a set's bindings (at start and after each
/// reload that took effect): `{"types": {"T": {"version": N, "fields":
/// {...}}}}`, types without a schema left out.
pub fn publish_schemas(bindings: &dab_plan::bindings::Bindings) {
    let types: serde_json::Map<String, serde_json::Value> = bindings
        .types
        .iter()
        .flatten()
        .filter_map(|t| Some((t.name.clone(), t.schema.as_ref()?.to_json())))
        .collect();
    let doc = serde_json::json!({ "types": types }).to_string() + "\n";
    *SCHEMAS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = doc;
}

fn schemas() -> String {
    let doc = SCHEMAS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if doc.is_empty() {
        "{\"types\":{}}\n".to_owned()
    } else {
        doc
    }
}

/// The longest one connection may take, request and answer.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(listener: TcpListener, running: Arc<Running>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let running = running.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let answer = answer(&req, &running);
                async move { Ok::<_, Infallible>(answer) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .auto_date_header(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, conn).await;
        });
    }
}

fn answer(req: &Request<Incoming>, running: &Running) -> Response<Full<Bytes>> {
    // The request target as sent (a query string included), as before.
    let target = req.uri().path_and_query().map_or("", |p| p.as_str());
    let (status, ctype, body) = match (req.method(), target) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            running.render_metrics(),
        ),
        (&Method::GET, "/reliability") => match &running.reliability {
            Some(t) => (StatusCode::OK, "application/json", t.snapshot().to_json()),
            None => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "reliability tracking is off; start dab run with --reliability\n".to_owned(),
            ),
        },
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/schemas") => (StatusCode::OK, "application/json", schemas()),
        (&Method::GET, "/readyz") => {
            let r = running.readiness();
            if r.is_ready() {
                (StatusCode::OK, "text/plain", "ready\n".to_owned())
            } else {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready\n{}\n", r.reasons.join("\n")),
                )
            }
        }
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let len = body.len();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(CONNECTION, HeaderValue::from_static("close"));
    resp
}
