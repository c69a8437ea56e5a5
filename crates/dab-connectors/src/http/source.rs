//! The `http` source: an HTTP/1.1 server taking `POST /v1/events` with a
//! JSON array of events. One request becomes runtime batches of at most
//! 1,024 events (`chunked` says how), and its answer waits for all their
//! acknowledgements: 200 once every event is delivered or deliberately
//! dropped, 503 if any copy of any of them failed, so a client that sees 200
//! may forget the events and one that sees anything else may send them
//! again. A full pipeline makes the request wait (back pressure reaches the
//! client as latency); admission control answers 429 before the body is
//! read. At most `max_connections` are open at once (more are closed at
//! once); headers must arrive within `header_timeout` and a body within
//! `body_timeout` (slow loris), or the connection is closed; both counted.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dab_api::connector::{Admission, SourceStats};
use dab_api::{AckStatus, Batch, ConnectorError, Source, SourceContext};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::chunked::{self, Refused};
use crate::codec::{json, DecodeError, Filler, InternBudget};
use crate::handover::{self, Claim};
use crate::limits::ConnectionLimit;

const EVENTS_PATH: &str = "/v1/events";
const HEALTH_PATH: &str = "/healthz";

/// How long requests in flight at shutdown may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSourceConfig {
    /// `host:port` to listen on.
    pub listen: String,
    /// Larger bodies are answered 413 without being read.
    pub max_body_bytes: usize,
    /// Connections open at once; more are closed at once and counted.
    pub max_connections: usize,
    /// A request's headers must arrive within this (hyper's header read
    /// timeout: from the connection's start, or the previous answer).
    pub header_timeout: Duration,
    /// A request's body must arrive within this, or it is answered 408.
    pub body_timeout: Duration,
}

#[derive(Debug)]
pub struct HttpSource {
    name: String,
    /// Its address, claimed when built: a reload hands the socket over
    /// from the source this one replaces.
    claim: Claim,
    config: HttpSourceConfig,
}

impl HttpSource {
    pub fn new(name: &str, config: HttpSourceConfig) -> HttpSource {
        HttpSource {
            name: name.to_owned(),
            claim: Claim::new(&config.listen),
            config,
        }
    }
}

#[async_trait]
impl Source for HttpSource {
    fn announces_serving(&self) -> bool {
        true
    }

    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ConnectorError> {
        let this = *self;
        let listen = &this.config.listen;
        let (listener, stop) = this.claim.listen().await.map_err(|e| {
            ConnectorError::io(
                format!("http source {}: cannot listen on {listen}", this.name),
                e,
            )
        })?;
        tracing::info!(source = %this.name, %listen, "http source listening");
        ctx.stats.set_serving();

        let shared = Arc::new(Shared {
            filler: Mutex::new(Filler::for_source(&ctx.name, ctx.stats.clone())),
            intern: InternBudget::per_source(),
            max_body_bytes: this.config.max_body_bytes,
            body_timeout: this.config.body_timeout,
            out: ctx.out,
            stats: ctx.stats.clone(),
            admission: ctx.admission,
        });
        let limit = ConnectionLimit::new(this.config.max_connections, ctx.stats.clone());
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();

        loop {
            tokio::select! {
                biased;
                () = ctx.shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Some(slot) = limit.admit() else {
                            tracing::debug!(source = %this.name, %peer, "http connection refused: max_connections open");
                            continue;
                        };
                        // Answers are small; do not let Nagle hold them back.
                        let _ = stream.set_nodelay(true);
                        let shared = shared.clone();
                        let service = service_fn(move |req| handle(shared.clone(), req));
                        let conn = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(this.config.header_timeout)
                            .serve_connection(TokioIo::new(stream), service);
                        let conn = graceful.watch(conn);
                        let stats = ctx.stats.clone();
                        connections.spawn(async move {
                            if let Err(e) = conn.await {
                                if e.is_timeout() {
                                    SourceStats::add(&stats.timeouts, 1);
                                }
                                tracing::debug!(%peer, error = %e, "http connection ended");
                            }
                            drop(slot);
                        });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead
                        // of spinning; the clients retry.
                        tracing::warn!(source = %this.name, error = %e, "http accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }

        // Stop taking connections (the socket closes, or goes to the
        // source replacing this one, whose line then decides when these
        // connections end: a keep-alive client stays connected).
        if handover::leave(listen, listener, &stop) {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        }
        // Close idle connections, let requests in flight get their
        // acknowledgement and answer.
        if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                source = %this.name,
                "http requests still in flight after {SHUTDOWN_GRACE:?}; closing them"
            );
        }
        // Dropping the connections drops their senders, so the pipeline
        // downstream can drain.
        connections.shutdown().await;
        Ok(())
    }
}

/// What every request handler of one source shares.
struct Shared {
    /// One sequence per (host, pid, type) for the whole source, so offsets
    /// it fills in stay unique across connections.
    filler: Mutex<Filler>,
    /// New strings this source's input may intern.
    intern: Arc<InternBudget>,
    max_body_bytes: usize,
    body_timeout: Duration,
    out: mpsc::Sender<Batch>,
    stats: Arc<SourceStats>,
    admission: Arc<dyn Admission>,
}

type Reply = Response<Full<Bytes>>;

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Reply, Infallible> {
    let reply = match (req.method(), req.uri().path()) {
        (&Method::POST, EVENTS_PATH) => post_events(&shared, req).await,
        (_, EVENTS_PATH) => method_not_allowed("POST"),
        (&Method::GET | &Method::HEAD, HEALTH_PATH) => plain(StatusCode::OK, "ok\n"),
        (_, HEALTH_PATH) => method_not_allowed("GET, HEAD"),
        (_, path) => error(
            StatusCode::NOT_FOUND,
            &format!("no such path `{path}`; events go to POST {EVENTS_PATH}"),
        ),
    };
    Ok(reply)
}

async fn post_events(shared: &Shared, req: Request<Incoming>) -> Reply {
    if !shared.admission.admit() {
        SourceStats::add(&shared.stats.refused, 1);
        let mut reply = error(StatusCode::TOO_MANY_REQUESTS, "overloaded, retry later");
        reply
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        return reply;
    }

    let max = shared.max_body_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return too_large(max);
    }
    let read = Limited::new(req.into_body(), max).collect();
    let Ok(read) = tokio::time::timeout(shared.body_timeout, read).await else {
        SourceStats::add(&shared.stats.timeouts, 1);
        let mut reply = retriable(
            StatusCode::REQUEST_TIMEOUT,
            &format!(
                "the body did not arrive within {} ms",
                shared.body_timeout.as_millis()
            ),
        );
        // The rest of the body may still come; this connection is done.
        reply
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return reply;
    };
    let body = match read {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(max),
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("could not read the body: {e}"),
            )
        }
    };
    let body_len = body.len() as u64;

    // Checks UTF-8 too; the error names the byte where decoding stopped.
    let refused = |e: DecodeError| {
        SourceStats::add(&shared.stats.decode_errors, 1);
        error(StatusCode::BAD_REQUEST, &e.to_string())
    };
    let reader = match json::ArrayReader::new(body) {
        Ok(reader) => reader,
        Err(e) => return refused(e),
    };
    // Cut into runtime batches; waiting for room is the back pressure.
    let sent = match chunked::send(
        reader,
        &shared.intern,
        &shared.filler,
        &shared.out,
        std::future::pending(),
    )
    .await
    {
        Ok(sent) => sent,
        Err(Refused::Decode(e)) => return refused(e),
        Err(Refused::Stopped) => {
            return retriable(StatusCode::SERVICE_UNAVAILABLE, "the pipeline is stopping")
        }
    };
    SourceStats::add(&shared.stats.events, sent.events);
    SourceStats::add(&shared.stats.bytes, body_len);
    let n = sent.events as usize;
    let Some(outcome) = sent.outcome else {
        return accepted(0);
    };

    match outcome.await {
        Ok(AckStatus::Delivered) => accepted(n),
        Ok(AckStatus::Failed) => retriable(
            StatusCode::SERVICE_UNAVAILABLE,
            "the events were not delivered; send them again",
        ),
        Err(_) => retriable(
            StatusCode::SERVICE_UNAVAILABLE,
            "the pipeline stopped before delivering the events; send them again",
        ),
    }
}

fn accepted(n: usize) -> Reply {
    json_reply(StatusCode::OK, format!("{{\"accepted\":{n}}}"))
}

fn too_large(max: usize) -> Reply {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("body is larger than {max} bytes"),
    )
}

fn method_not_allowed(allow: &'static str) -> Reply {
    let mut reply = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("method not allowed; use {allow}"),
    );
    reply
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    reply
}

fn retriable(status: StatusCode, reason: &str) -> Reply {
    let mut reply = error(status, reason);
    reply
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    reply
}

/// `{"error": reason}`.
fn error(status: StatusCode, reason: &str) -> Reply {
    let mut body = String::with_capacity(reason.len() + 12);
    body.push_str("{\"error\":\"");
    escape_json(reason, &mut body);
    body.push_str("\"}");
    json_reply(status, body)
}

fn json_reply(status: StatusCode, body: String) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    reply
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    reply
}

fn plain(status: StatusCode, body: &'static str) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    reply
}

fn escape_json(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_valid_json() {
        let mut s = String::new();
        escape_json("a \"b\" \\ c\n\u{1}", &mut s);
        assert_eq!(s, "a \\\"b\\\" \\\\ c\\n\\u0001");
    }
}
