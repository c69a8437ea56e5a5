//! The `murron_grpc` source: a tonic server on `listen` with the limits of
//! its binding (message size, HTTP/2 streams per connection, connections
//! at once), optional TLS
//! (rustls with ring), and a graceful stop: on shutdown it takes no new
//! connection or batch and gives the batches in flight [`SHUTDOWN_GRACE`]
//! to be acknowledged before answering them `UNAVAILABLE`.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use dab_api::connector::SourceStats;
use dab_api::{ConnectorError, Source, SourceContext};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Identity, Server, ServerTlsConfig};

use super::rpc::murron_server::MurronServer;
use super::service::{Counted, MurronService, Shared};
use crate::handover::{self, Claim};
use crate::limits::{ConnectionLimit, ConnectionSlot};

/// How long batches in flight at shutdown may take to be acknowledged.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// After the grace, how long calls get to send their `UNAVAILABLE`.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// Pings on idle connections find peers that vanished without a FIN.
const KEEPALIVE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MurronSourceConfig {
    /// `host:port` to listen on.
    pub listen: String,
    /// Larger messages are refused with `OUT_OF_RANGE` before being read.
    pub max_message_bytes: usize,
    /// HTTP/2 streams (calls) open at once on one connection.
    pub max_concurrent_streams: u32,
    /// Connections open at once; more are closed at once and counted.
    pub max_connections: usize,
    /// A connection that has not sent the HTTP/2 preface (or the start of
    /// its TLS handshake) by then is closed and counted (`timeouts`); a
    /// TLS handshake not done by then is closed by tonic.
    pub handshake_timeout: Duration,
    /// TLS is off without it.
    pub tls: Option<TlsFiles>,
}

/// PEM files: a certificate chain and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug)]
pub struct MurronSource {
    name: String,
    config: MurronSourceConfig,
    listener: Option<TcpListener>,
    /// Its address, claimed when built: a reload hands the socket over
    /// from the source this one replaces.
    claim: Option<Claim>,
}

impl MurronSource {
    pub fn new(name: &str, config: MurronSourceConfig) -> MurronSource {
        MurronSource {
            name: name.to_owned(),
            claim: Some(Claim::new(&config.listen)),
            config,
            listener: None,
        }
    }

    /// Serves on a socket bound already (tests bind port 0 and read it);
    /// `config.listen` is then only for logs.
    pub fn with_listener(
        name: &str,
        config: MurronSourceConfig,
        listener: TcpListener,
    ) -> MurronSource {
        MurronSource {
            name: name.to_owned(),
            config,
            listener: Some(listener),
            claim: None,
        }
    }

    fn error(&self, what: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Other(format!("murron_grpc source {}: {what}", self.name))
    }

    async fn tls(&self, files: &TlsFiles) -> Result<ServerTlsConfig, ConnectorError> {
        let read = |path: PathBuf, what: &'static str| async move {
            tokio::fs::read(&path).await.map_err(|e| {
                ConnectorError::io(
                    format!(
                        "murron_grpc source {}: cannot read {what} {}",
                        self.name,
                        path.display()
                    ),
                    e,
                )
            })
        };
        let cert = read(files.cert.clone(), "tls_cert").await?;
        let key = read(files.key.clone(), "tls_key").await?;
        Ok(ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .timeout(self.config.handshake_timeout))
    }
}

#[async_trait]
impl Source for MurronSource {
    fn announces_serving(&self) -> bool {
        true
    }

    async fn run(mut self: Box<Self>, ctx: SourceContext) -> Result<(), ConnectorError> {
        // TLS files first: a source that fails must not have taken a
        // socket handed over from its predecessor.
        let mut server = Server::builder()
            .max_concurrent_streams(self.config.max_concurrent_streams)
            .http2_keepalive_interval(Some(KEEPALIVE));
        if let Some(files) = &self.config.tls {
            let tls = self.tls(files).await?;
            server = server
                .tls_config(tls)
                .map_err(|e| self.error(format!("invalid TLS certificate or key: {e}")))?;
        }

        let listen = self.config.listen.clone();
        let (listener, stop) = match (self.listener.take(), self.claim.take()) {
            (Some(listener), _) => (listener, CancellationToken::new()),
            (None, Some(claim)) => claim.listen().await.map_err(|e| {
                ConnectorError::io(
                    format!(
                        "murron_grpc source {}: cannot listen on {listen}",
                        self.name
                    ),
                    e,
                )
            })?,
            (None, None) => (
                crate::settings::listen_tcp(&listen).await.map_err(|e| {
                    ConnectorError::io(
                        format!(
                            "murron_grpc source {}: cannot listen on {listen}",
                            self.name
                        ),
                        e,
                    )
                })?,
                CancellationToken::new(),
            ),
        };
        let local = listener
            .local_addr()
            .map_or_else(|_| listen.clone(), |a| a.to_string());

        let abort = CancellationToken::new();
        let shared = Arc::new(Shared::new(
            &ctx.name,
            ctx.out,
            ctx.stats.clone(),
            ctx.admission,
            // The line of sources on this address stops taking batches,
            // not this one: a connection it accepted outlives a reload
            // that hands the socket to a successor.
            stop.clone(),
            abort.clone(),
        ));
        let service = Counted {
            inner: MurronServer::new(MurronService {
                shared: shared.clone(),
            })
            .max_decoding_message_size(self.config.max_message_bytes),
            stats: ctx.stats.clone(),
        };
        let incoming = Incoming {
            listener: Some(listener),
            retire: Box::pin(ctx.shutdown.clone().cancelled_owned()),
            addr: listen.clone(),
            stop: stop.clone(),
            limit: ConnectionLimit::new(self.config.max_connections, ctx.stats.clone()),
            name: self.name.clone(),
            handshake: self.config.handshake_timeout,
            stats: ctx.stats.clone(),
        };
        let serve = server
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
        tokio::pin!(serve);
        tracing::info!(
            source = %self.name,
            listen = %local,
            tls = self.config.tls.is_some(),
            "murron_grpc source listening"
        );
        ctx.stats.set_serving();

        let ended = tokio::select! {
            biased;
            () = stop.cancelled() => None,
            ended = &mut serve => Some(ended),
        };
        // Stop taking connections and batches (tonic closes the listener
        // and asks each connection to finish), and let the batches in
        // flight be acknowledged.
        let ended = match ended {
            Some(ended) => ended,
            None => match tokio::time::timeout(SHUTDOWN_GRACE, &mut serve).await {
                Ok(ended) => ended,
                Err(_) => {
                    tracing::warn!(
                        source = %self.name,
                        "murron_grpc calls still waiting for acks after {SHUTDOWN_GRACE:?}; \
                         answering them UNAVAILABLE"
                    );
                    abort.cancel();
                    tokio::time::timeout(ABORT_GRACE, &mut serve)
                        .await
                        .unwrap_or(Ok(()))
                }
            },
        };
        // Whatever is left gives up its sender, so the pipeline drains.
        abort.cancel();
        shared.close();
        ended.map_err(|e| self.error(e))
    }
}

/// The bytes a client sends first on a plain connection: the HTTP/2
/// preface (RFC 9113, 3.4).
const PREFACE_LEN: usize = 24;

/// A connection holding its place under the listener's limit until tonic
/// drops it. Until it has sent [`PREFACE_LEN`] bytes (the HTTP/2 preface,
/// or the start of a TLS handshake, which tonic times out itself), it has
/// until `deadline`: a client that connects and says nothing, or trickles,
/// must not hold a slot.
#[derive(Debug)]
struct Slotted {
    stream: TcpStream,
    _slot: ConnectionSlot,
    /// Bytes still owed before the deadline no longer applies.
    owed: usize,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    stats: Arc<SourceStats>,
}

impl Connected for Slotted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Slotted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        use std::future::Future as _;
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        let Some(deadline) = this.deadline.as_mut() else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) => {
                this.owed = this.owed.saturating_sub(buf.filled().len() - before);
                if this.owed == 0 {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                this.deadline = None;
                SourceStats::add(&this.stats.timeouts, 1);
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no HTTP/2 preface within handshake_timeout",
                )))
            }
            other => other,
        }
    }
}

impl AsyncWrite for Slotted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// The connections tonic serves: accepted until the source's shutdown,
/// when the socket closes or goes to the source replacing this one (and
/// the stream stays pending: the connections it gave run on until `stop`).
/// A connection over the limit is dropped as it is accepted, which closes
/// it.
struct Incoming {
    listener: Option<TcpListener>,
    retire: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    addr: String,
    stop: CancellationToken,
    limit: ConnectionLimit,
    name: String,
    handshake: Duration,
    stats: Arc<SourceStats>,
}

impl Stream for Incoming {
    type Item = std::io::Result<Slotted>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        use std::future::Future as _;
        let this = self.get_mut();
        if this.listener.is_some() && this.retire.as_mut().poll(cx).is_ready() {
            if let Some(listener) = this.listener.take() {
                handover::leave(&this.addr, listener, &this.stop);
            }
        }
        let Some(listener) = &this.listener else {
            return Poll::Pending;
        };
        loop {
            match listener.poll_accept(cx) {
                Poll::Ready(Ok((stream, peer))) => {
                    let Some(slot) = this.limit.admit() else {
                        tracing::debug!(source = %this.name, %peer, "murron_grpc connection refused: max_connections open");
                        continue;
                    };
                    // Acks are small; do not let Nagle hold them back.
                    let _ = stream.set_nodelay(true);
                    return Poll::Ready(Some(Ok(Slotted {
                        stream,
                        _slot: slot,
                        owed: PREFACE_LEN,
                        deadline: Some(Box::pin(tokio::time::sleep(this.handshake))),
                        stats: this.stats.clone(),
                    })));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
