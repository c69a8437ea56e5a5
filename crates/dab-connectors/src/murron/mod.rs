//! The `murron_grpc` source and sink (SPEC sections 4 and 5): the Murron
//! protocol of `proto/murron.proto` over gRPC (tonic), the host sidecar's
//! own wire.
//!
//! The source answers each `Send(Batch)` (and each batch of a `Stream`) only
//! once the runtime settled the batch it made: `Ack` when every event was
//! delivered or dropped on purpose, `UNAVAILABLE` when not (send again),
//! `RESOURCE_EXHAUSTED` under admission control (back off), so a client
//! that saw an `Ack` may forget the events. The sink sends each write as
//! `Send` calls of at most `batch_size` events and succeeds only when every
//! call was acknowledged; retries are the runtime's.
//!
//! - `wire.rs`: the batch as bytes, the codec, the batch writer;
//! - `service.rs`: the `Murron` service behind the source;
//! - `source.rs`: the server (limits, TLS, shutdown);
//! - `sink.rs`: the client.

mod service;
mod sink;
mod source;
pub mod wire;

use crate::settings::{build_error, check_listen};
use std::collections::BTreeMap;
use std::time::Duration;

use dab_api::config::Fields;
use dab_api::{BuildError, ConfigValue, Sink, SinkFactory, Source, SourceFactory};

pub use sink::{MurronSink, MurronSinkConfig};
pub use source::{MurronSource, MurronSourceConfig, TlsFiles};

/// The code `tonic-prost-build` generates from `proto/murron.proto`
/// (see `build.rs`): `Ack`, `murron_client::MurronClient` and
/// `murron_server::{Murron, MurronServer}`. `Event` and `Batch` are not
/// generated: they map to `codec::proto::pb::Event` and [`wire::Batch`].
pub mod rpc {
    tonic::include_proto!("murron.v1");
}

/// The largest message the source takes unless told otherwise (gRPC's
/// usual limit).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// HTTP/2 streams per connection unless told otherwise.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;

/// Batches of one `Stream` call read ahead of their acks.
pub const STREAM_WINDOW: usize = 4;

/// Events per `Send` call of the sink unless told otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 500;

/// Builds `kind: murron_grpc` sources.
#[derive(Debug, Clone, Copy, Default)]
pub struct MurronSourceFactory;

impl SourceFactory for MurronSourceFactory {
    fn kind(&self) -> &'static str {
        "murron_grpc"
    }

    fn build(
        &self,
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Source>, BuildError> {
        let config = MurronSourceConfig::from_fields(name, fields)?;
        Ok(Box::new(MurronSource::new(name, config)))
    }
}

/// Builds `kind: murron_grpc` sinks.
#[derive(Debug, Clone, Copy, Default)]
pub struct MurronSinkFactory;

impl SinkFactory for MurronSinkFactory {
    fn kind(&self) -> &'static str {
        "murron_grpc"
    }

    fn build(
        &self,
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Sink>, BuildError> {
        let config = MurronSinkConfig::from_fields(name, fields)?;
        Ok(Box::new(MurronSink::new(name, config)?))
    }
}

impl MurronSourceConfig {
    pub fn from_fields(
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<MurronSourceConfig, BuildError> {
        let f = Fields(fields);
        let listen = f
            .str("listen")
            .ok_or_else(|| build_error(name, "`listen` is required"))?;
        check_listen(listen).map_err(|reason| build_error(name, reason))?;
        let max_message_bytes = match f.int("max_message_bytes") {
            None => DEFAULT_MAX_MESSAGE_BYTES,
            Some(n) => positive::<usize>(n)
                .ok_or_else(|| build_error(name, must_be_positive("max_message_bytes", n)))?,
        };
        let max_concurrent_streams = match f.int("max_concurrent_streams") {
            None => DEFAULT_MAX_CONCURRENT_STREAMS,
            Some(n) => positive::<u32>(n)
                .ok_or_else(|| build_error(name, must_be_positive("max_concurrent_streams", n)))?,
        };
        let tls = match (f.str("tls_cert"), f.str("tls_key")) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.into(),
                key: key.into(),
            }),
            (Some(_), None) => return Err(build_error(name, "`tls_cert` needs `tls_key`")),
            (None, Some(_)) => return Err(build_error(name, "`tls_key` needs `tls_cert`")),
        };
        Ok(MurronSourceConfig {
            listen: listen.to_owned(),
            max_message_bytes,
            max_concurrent_streams,
            max_connections: crate::limits::max_connections(name, fields)?,
            handshake_timeout: crate::limits::timeout(
                name,
                fields,
                "handshake_timeout",
                crate::limits::DEFAULT_HANDSHAKE_TIMEOUT,
            )?,
            tls,
        })
    }
}

impl MurronSinkConfig {
    pub fn from_fields(
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<MurronSinkConfig, BuildError> {
        let f = Fields(fields);
        let endpoint = f
            .str("endpoint")
            .ok_or_else(|| build_error(name, "`endpoint` is required"))?;
        let batch_size = match f.int("batch_size") {
            None => DEFAULT_BATCH_SIZE,
            Some(n) => positive::<usize>(n)
                .ok_or_else(|| build_error(name, must_be_positive("batch_size", n)))?,
        };
        let batch_timeout = match f.millis("batch_timeout") {
            None => None,
            Some(0) => return Err(build_error(name, "`batch_timeout` must be positive")),
            Some(ms) => Some(Duration::from_millis(ms)),
        };
        Ok(MurronSinkConfig {
            endpoint: endpoint.to_owned(),
            tls_ca: f.str("tls_ca").map(str::to_owned),
            batch_size,
            batch_timeout,
        })
    }
}

fn positive<T: TryFrom<i64>>(n: i64) -> Option<T> {
    (n > 0).then(|| T::try_from(n).ok()).flatten()
}

fn must_be_positive(field: &str, n: i64) -> String {
    format!("`{field}` must be a positive number in range, not {n}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&str, ConfigValue)]) -> BTreeMap<String, ConfigValue> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    }

    fn s(v: &str) -> ConfigValue {
        ConfigValue::Str(v.to_owned())
    }

    #[test]
    fn source_fields_have_defaults_and_checks() {
        let ok =
            MurronSourceConfig::from_fields("In", &fields(&[("listen", s("127.0.0.1:50051"))]))
                .expect("valid");
        assert_eq!(
            ok,
            MurronSourceConfig {
                listen: "127.0.0.1:50051".into(),
                max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
                max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
                max_connections: crate::limits::DEFAULT_MAX_CONNECTIONS,
                handshake_timeout: crate::limits::DEFAULT_HANDSHAKE_TIMEOUT,
                tls: None,
            }
        );
        let err = |pairs: &[(&str, ConfigValue)]| {
            MurronSourceConfig::from_fields("In", &fields(pairs))
                .expect_err("invalid")
                .to_string()
        };
        assert_eq!(err(&[]), "In: `listen` is required");
        assert_eq!(
            err(&[("listen", s("50051"))]),
            "In: `listen` must be host:port, not `50051`"
        );
        assert_eq!(
            err(&[
                ("listen", s("[::1]:1")),
                ("max_message_bytes", ConfigValue::Int(0))
            ]),
            "In: `max_message_bytes` must be a positive number in range, not 0"
        );
        assert_eq!(
            err(&[
                ("listen", s("[::1]:1")),
                ("max_concurrent_streams", ConfigValue::Int(1 << 40))
            ]),
            "In: `max_concurrent_streams` must be a positive number in range, not 1099511627776"
        );
        assert_eq!(
            err(&[("listen", s("[::1]:1")), ("tls_cert", s("c.pem"))]),
            "In: `tls_cert` needs `tls_key`"
        );
        let tls = MurronSourceConfig::from_fields(
            "In",
            &fields(&[
                ("listen", s("[::1]:1")),
                ("tls_cert", s("c.pem")),
                ("tls_key", s("k.pem")),
            ]),
        )
        .expect("valid");
        assert_eq!(
            tls.tls,
            Some(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
    }

    #[test]
    fn sink_fields_have_defaults_and_checks() {
        let ok = MurronSinkConfig::from_fields(
            "Out",
            &fields(&[
                ("endpoint", s("http://127.0.0.1:50051")),
                ("batch_timeout", ConfigValue::Int(250)),
            ]),
        )
        .expect("valid");
        assert_eq!(ok.batch_size, DEFAULT_BATCH_SIZE);
        assert_eq!(ok.batch_timeout, Some(Duration::from_millis(250)));
        let missing = MurronSinkConfig::from_fields("Out", &fields(&[])).expect_err("missing");
        assert_eq!(missing.to_string(), "Out: `endpoint` is required");
        let zero = MurronSinkConfig::from_fields(
            "Out",
            &fields(&[
                ("endpoint", s("http://x:1")),
                ("batch_size", ConfigValue::Int(0)),
            ]),
        )
        .expect_err("zero");
        assert!(zero.reason.contains("batch_size"), "{zero}");
    }

    #[test]
    fn factories_check_endpoints_and_name_their_kind() {
        for endpoint in ["not a url", "ftp://x:1", "https://x:1", "http://", "/x"] {
            let err = MurronSinkFactory
                .build("Out", &fields(&[("endpoint", s(endpoint))]))
                .err()
                .unwrap_or_else(|| panic!("{endpoint} accepted"));
            assert!(err.reason.contains("endpoint"), "{endpoint}: {err}");
        }
        assert!(MurronSinkFactory
            .build("Out", &fields(&[("endpoint", s("http://127.0.0.1:1"))]))
            .is_ok());
        assert_eq!(MurronSourceFactory.kind(), "murron_grpc");
        assert_eq!(MurronSinkFactory.kind(), "murron_grpc");
    }
}
