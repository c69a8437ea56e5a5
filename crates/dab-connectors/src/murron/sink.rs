//! The `murron_grpc` sink: a tonic client of the `Murron` service. A write
//! is one or more unary `Send(Batch)` calls, each at most `batch_size`
//! events (and under the server's usual message limit), made one after
//! another; it succeeds only when every call returned its `Ack`. Any error
//! status or transport failure is an `Err`, which the runtime retries with
//! back-off while holding the batches behind it, so order is kept and the
//! sink itself never retries. After a failure the connection is dropped and
//! made again on the next write; the first one is made on the first write.

use std::time::Duration;

use async_trait::async_trait;
use dab_api::{BuildError, ConnectorError, Event, Rejection, Sink, SinkError, Written};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::rpc::murron_client::MurronClient;
use super::wire::{Batch, BatchWriter};
use super::DEFAULT_MAX_MESSAGE_BYTES;

/// For connecting, then for each call (send and wait for the ack).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A call carries at most this many bytes (with room under the server's
/// default limit), whatever `batch_size` says.
const MAX_CALL_BYTES: usize = DEFAULT_MAX_MESSAGE_BYTES - 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MurronSinkConfig {
    /// `http://host:port` or `https://host:port` of a `Murron` server.
    pub endpoint: String,
    /// With https: the PEM CA file the server's certificate chains to.
    pub tls_ca: Option<String>,
    /// Events per `Send` call at most.
    pub batch_size: usize,
    /// Accepted from the binding; the runtime's batches decide when a
    /// write happens, so the transport does not wait on its own.
    pub batch_timeout: Option<Duration>,
}

#[derive(Debug)]
pub struct MurronSink {
    name: String,
    endpoint: Endpoint,
    batch_size: usize,
    client: Option<MurronClient<Channel>>,
    writer: BatchWriter,
}

impl MurronSink {
    pub fn new(name: &str, config: MurronSinkConfig) -> Result<MurronSink, BuildError> {
        let endpoint =
            parse_endpoint(&config.endpoint, config.tls_ca.as_deref()).map_err(|reason| {
                BuildError {
                    name: name.to_owned(),
                    reason,
                }
            })?;
        Ok(MurronSink {
            name: name.to_owned(),
            endpoint,
            batch_size: config.batch_size,
            client: None,
            writer: BatchWriter::default(),
        })
    }

    fn failure(&self, what: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Other(format!(
            "murron_grpc sink {}: {}: {what}",
            self.name,
            self.endpoint.uri()
        ))
    }

    async fn send(&mut self, batch: Batch, events: usize) -> Result<(), SinkError> {
        let client = match &mut self.client {
            Some(client) => client,
            None => {
                let channel =
                    self.endpoint.connect().await.map_err(|e| {
                        self.failure(format!("cannot connect: {}", error_chain(&e)))
                    })?;
                self.client.insert(MurronClient::new(channel))
            }
        };
        match client.send(batch).await {
            Ok(ack) if ack.get_ref().accepted == events as u64 => Ok(()),
            Ok(ack) => {
                // The peer does not speak this protocol as we do; start over.
                self.client = None;
                Err(SinkError::transient(self.failure(format!(
                    "acknowledged {} events of {events}",
                    ack.get_ref().accepted
                ))))
            }
            Err(status) => {
                if !server_answer(status.code()) {
                    self.client = None;
                }
                let e = self.failure(describe(&status));
                if status.code() == Code::InvalidArgument {
                    Err(SinkError::permanent(e))
                } else {
                    Err(SinkError::transient(e))
                }
            }
        }
    }

    /// One call with `events`; when the peer refuses it as invalid, halves
    /// until the events it refuses on their own are found, so that calls
    /// already answered are not sent again.
    fn send_narrowing<'a>(
        &'a mut self,
        events: &'a [Event],
        base: usize,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<Rejection>, SinkError>> + Send + 'a>,
    > {
        Box::pin(async move {
            for event in events {
                self.writer.push(event);
            }
            let batch = self.writer.finish();
            match self.send(batch, events.len()).await {
                Ok(()) => Ok(Vec::new()),
                Err(e) if e.is_permanent() && events.len() == 1 => Ok(vec![Rejection {
                    index: base,
                    reason: e.error.to_string(),
                }]),
                Err(e) if e.is_permanent() => {
                    let mid = events.len() / 2;
                    let mut left = self.send_narrowing(&events[..mid], base).await?;
                    left.extend(self.send_narrowing(&events[mid..], base + mid).await?);
                    Ok(left)
                }
                Err(e) => Err(e),
            }
        })
    }
}

#[async_trait]
impl Sink for MurronSink {
    /// One call per `batch_size` events (or `MAX_CALL_BYTES`). A transient
    /// failure of a later call fails the write, and the runtime sends the
    /// whole write again (calls already answered arrive twice: at least
    /// once). An `INVALID_ARGUMENT` is narrowed down inside the write.
    async fn write(&mut self, events: &[Event]) -> Result<Written, SinkError> {
        let mut rejected = Vec::new();
        let mut start = 0;
        let mut bytes = 0;
        for (i, event) in events.iter().enumerate() {
            let cost = BatchWriter::cost(event);
            let full = i - start >= self.batch_size || (i > start && bytes + cost > MAX_CALL_BYTES);
            if full {
                rejected.extend(self.send_narrowing(&events[start..i], start).await?);
                start = i;
                bytes = 0;
            }
            bytes += cost;
        }
        if start < events.len() {
            rejected.extend(self.send_narrowing(&events[start..], start).await?);
        }
        Ok(Written { rejected })
    }
}

/// Codes a healthy server answers with: the connection is fine, keep it.
fn server_answer(code: Code) -> bool {
    matches!(
        code,
        Code::ResourceExhausted | Code::InvalidArgument | Code::OutOfRange | Code::Unimplemented
    )
}

/// `Unavailable: the events were not delivered; ...`, with the transport
/// error's causes when there are some.
fn describe(status: &Status) -> String {
    let mut parts = vec![format!("{:?}", status.code())];
    if !status.message().is_empty() {
        parts.push(status.message().to_owned());
    }
    causes(std::error::Error::source(status), &mut parts);
    parts.join(": ")
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    causes(e.source(), &mut parts);
    parts.join(": ")
}

/// Appends each cause, leaving out the repeats of layered errors (tonic's
/// "transport error" wraps hyper's, which often says the same).
fn causes(mut cause: Option<&(dyn std::error::Error + 'static)>, parts: &mut Vec<String>) {
    while let Some(c) = cause {
        let text = c.to_string();
        match parts.last_mut() {
            Some(last) if last.contains(&text) => {}
            Some(last) if text.starts_with(last.as_str()) => *last = text,
            _ => parts.push(text),
        }
        cause = c.source();
    }
}

/// `http://host:port`, or `https://host:port` with the CA the server's
/// certificate must chain to (its name is checked against the host).
fn parse_endpoint(endpoint: &str, tls_ca: Option<&str>) -> Result<Endpoint, String> {
    let target = crate::settings::http_target(endpoint, tls_ca)?;
    let mut channel = Endpoint::from(target.uri);
    if let Some(pem) = target.ca_pem {
        channel = channel
            .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
            .map_err(|e| format!("`endpoint` `{endpoint}`: {}", error_chain(&e)))?;
    }
    Ok(channel
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_like_sentences() {
        assert_eq!(
            describe(&Status::unavailable("not delivered")),
            "Unavailable: not delivered"
        );
        assert_eq!(describe(&Status::new(Code::Internal, "")), "Internal");
        assert!(server_answer(Code::ResourceExhausted));
        let refused = Layer(
            "transport error",
            Some(Box::new(Layer(
                "transport error",
                Some(Box::new(Layer(
                    "tcp connect error",
                    Some(Box::new(Layer("tcp connect error: refused", None))),
                ))),
            ))),
        );
        assert_eq!(
            error_chain(&refused),
            "transport error: tcp connect error: refused"
        );
        assert!(!server_answer(Code::Unavailable));
    }

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }
}
