//! The `tcp` source (a listener reading NDJSON or length-delimited protobuf
//! events from any number of connections) and the `tcp` sink (one client
//! connection writing them).

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use dab_api::metrics::ConnectorMetrics;
use dab_api::{
    BuildError, ConfigValue, ConnectorError, Event, Sink, SinkError, SinkFactory, Source,
    SourceContext, SourceFactory, Written,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::codec;
use crate::framing::write_delimited;
use crate::handover::{self, Claim};
use crate::socket_common::{self, required_str, Listener};

pub use crate::socket_common::{AckCounts, Framing, SocketSettings};

/// Longest wait for a sink's connection before the write fails (and the
/// runtime retries).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr`, turning failures (address in use, no such interface) into
/// an error that names the address.
pub async fn bind_listener(addr: &str) -> Result<TcpListener, ConnectorError> {
    crate::settings::listen_tcp(addr)
        .await
        .map_err(|e| ConnectorError::io(format!("cannot listen on tcp {addr}"), e))
}

/// Reads events from TCP connections until shutdown.
#[derive(Debug)]
pub struct TcpSource {
    listen: String,
    settings: SocketSettings,
    listener: Option<TcpListener>,
    /// Set when built for an address it will bind: a reload hands the
    /// socket over from the source this one replaces.
    claim: Option<Claim>,
    acks: Arc<AckCounts>,
}

impl TcpSource {
    /// A source that binds `listen` when it starts running, so that a
    /// reload can build it while the source it replaces still holds the
    /// address.
    pub fn new(listen: impl Into<String>, settings: SocketSettings) -> TcpSource {
        let listen = listen.into();
        TcpSource {
            claim: Some(Claim::new(&listen)),
            listen,
            settings,
            listener: None,
            acks: Arc::default(),
        }
    }

    /// A source over a listener bound already (port 0 in tests, or a
    /// caller that wants bind errors before starting).
    pub fn with_listener(listener: TcpListener, settings: SocketSettings) -> TcpSource {
        let listen = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        TcpSource {
            listen,
            settings,
            listener: Some(listener),
            claim: None,
            acks: Arc::default(),
        }
    }

    /// Delivered and failed event counts of this source's batches.
    pub fn acks(&self) -> Arc<AckCounts> {
        Arc::clone(&self.acks)
    }

    /// Names the source (the `source` label of its acknowledgement
    /// counts on `/metrics`).
    #[must_use]
    pub fn named(mut self, name: &str) -> TcpSource {
        self.acks = Arc::new(AckCounts::named(name));
        self
    }
}

struct Tcp(TcpListener);

impl Listener for Tcp {
    type Stream = TcpStream;

    async fn accept(&mut self) -> io::Result<(TcpStream, String)> {
        let (stream, peer) = self.0.accept().await?;
        Ok((stream, peer.to_string()))
    }
}

#[async_trait]
impl Source for TcpSource {
    fn metrics(&self) -> Option<Arc<dyn ConnectorMetrics>> {
        Some(Arc::clone(&self.acks) as Arc<dyn ConnectorMetrics>)
    }

    fn announces_serving(&self) -> bool {
        true
    }

    async fn run(self: Box<Self>, ctx: SourceContext) -> Result<(), ConnectorError> {
        let this = *self;
        let (listener, stop) = match (this.listener, this.claim) {
            (Some(l), _) => (l, CancellationToken::new()),
            (None, Some(claim)) => claim.listen().await.map_err(|e| {
                ConnectorError::io(format!("cannot listen on tcp {}", this.listen), e)
            })?,
            (None, None) => (bind_listener(&this.listen).await?, CancellationToken::new()),
        };
        tracing::info!(source = %ctx.name, listen = %this.listen, framing = ?this.settings.framing, "tcp source listening");
        ctx.stats.set_serving();
        let listen = this.listen;
        let leave = {
            let stop = stop.clone();
            move |Tcp(l): Tcp| {
                handover::leave(&listen, l, &stop);
            }
        };
        socket_common::serve(
            "tcp",
            Tcp(listener),
            ctx,
            this.settings,
            this.acks,
            (stop, leave),
        )
        .await;
        Ok(())
    }
}

/// Builds `tcp` sources: `listen`, `framing`, `max_frame_bytes`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpSourceFactory;

impl SourceFactory for TcpSourceFactory {
    fn kind(&self) -> &'static str {
        "tcp"
    }

    fn build(
        &self,
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Source>, BuildError> {
        let listen = required_str(name, fields, "listen")?;
        socket_common::check_address(name, "listen", listen)?;
        let settings = SocketSettings::from_fields(name, fields)?;
        Ok(Box::new(TcpSource::new(listen, settings).named(name)))
    }
}

/// Writes events to one TCP peer, connecting on first use and again after
/// any failure.
#[derive(Debug)]
pub struct TcpSink {
    connect: String,
    framing: Framing,
    stream: Option<TcpStream>,
    buf: BytesMut,
}

impl TcpSink {
    pub fn new(connect: impl Into<String>, framing: Framing) -> TcpSink {
        TcpSink {
            connect: connect.into(),
            framing,
            stream: None,
            buf: BytesMut::new(),
        }
    }

    fn encode(&mut self, events: &[Event]) {
        self.buf.clear();
        match self.framing {
            Framing::Ndjson => {
                for ev in events {
                    codec::json::encode(ev, &mut self.buf);
                    self.buf.extend_from_slice(b"\n");
                }
            }
            Framing::Protobuf => {
                let mut msg = BytesMut::new();
                for ev in events {
                    msg.clear();
                    codec::proto::encode(ev, &mut msg);
                    write_delimited(&msg, &mut self.buf);
                }
            }
        }
    }

    /// The live connection, opening one when there is none or when the
    /// peer has closed the one we hold (a write into a closed socket would
    /// otherwise "succeed" into the kernel buffer and be lost).
    async fn stream(&mut self) -> Result<&mut TcpStream, ConnectorError> {
        if self.stream.as_ref().is_some_and(peer_closed) {
            tracing::debug!(connect = %self.connect, "tcp sink: peer closed the connection; reconnecting");
            self.stream = None;
        }
        match &mut self.stream {
            Some(s) => Ok(s),
            slot @ None => {
                let addr = self.connect.as_str();
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                    .await
                    .map_err(|_| {
                        ConnectorError::io(
                            format!("cannot connect to tcp {addr}"),
                            io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
                        )
                    })?
                    .map_err(|e| ConnectorError::io(format!("cannot connect to tcp {addr}"), e))?;
                // Batches are written whole; waiting to coalesce them only
                // adds latency.
                let _ = stream.set_nodelay(true);
                tracing::debug!(connect = %addr, "tcp sink connected");
                Ok(slot.insert(stream))
            }
        }
    }
}

/// True when the peer has closed its side (or the socket has failed). Any
/// bytes the peer sent are discarded: the protocol is one-way.
fn peer_closed(stream: &TcpStream) -> bool {
    let mut scratch = [0u8; 256];
    // Bounded, so a chatty peer cannot keep a write waiting.
    for _ in 0..16 {
        match stream.try_read(&mut scratch) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
    false
}

#[async_trait]
impl Sink for TcpSink {
    async fn write(&mut self, events: &[Event]) -> Result<Written, SinkError> {
        if events.is_empty() {
            return Ok(Written::all());
        }
        self.encode(events);
        let buf = std::mem::take(&mut self.buf);
        let result = match self.stream().await {
            Ok(stream) => stream.write_all(&buf).await.map_err(|e| {
                ConnectorError::io(format!("cannot write to tcp {}", self.connect), e)
            }),
            Err(e) => Err(e),
        };
        self.buf = buf;
        if result.is_err() {
            // The runtime rewinds and writes again on a fresh connection.
            self.stream = None;
        }
        result?;
        Ok(Written::all())
    }

    /// The protocol has no acknowledgement of its own: a flush succeeds
    /// when the bytes are handed to the kernel and the peer has not closed
    /// the connection meanwhile. A peer that closed may not have read what
    /// we sent, so everything since the last good flush is sent again.
    async fn flush(&mut self) -> Result<(), SinkError> {
        let Some(stream) = &mut self.stream else {
            return Ok(());
        };
        if let Err(e) = stream.flush().await {
            self.stream = None;
            return Err(SinkError::transient(ConnectorError::io(
                format!("cannot flush tcp {}", self.connect),
                e,
            )));
        }
        if peer_closed(stream) {
            self.stream = None;
            return Err(SinkError::transient(ConnectorError::Other(format!(
                "tcp {}: the peer closed the connection before the flush",
                self.connect
            ))));
        }
        Ok(())
    }

    /// A fresh connection: a frame cut short by a failed write must not be
    /// followed by the same events on the same stream.
    async fn rewind(&mut self) -> Result<(), SinkError> {
        self.stream = None;
        Ok(())
    }
}

/// Builds `tcp` sinks: `connect`, `framing`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpSinkFactory;

impl SinkFactory for TcpSinkFactory {
    fn kind(&self) -> &'static str {
        "tcp"
    }

    fn build(
        &self,
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Sink>, BuildError> {
        let connect = required_str(name, fields, "connect")?;
        socket_common::check_address(name, "connect", connect)?;
        let framing = Framing::from_fields(name, fields)?;
        Ok(Box::new(TcpSink::new(connect, framing)))
    }
}
