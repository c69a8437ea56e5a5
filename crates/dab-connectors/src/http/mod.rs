//! The `http` source and sink (SPEC sections 2 and 4): JSON arrays of
//! events over plain HTTP/1.1. The source answers `POST /v1/events` only
//! once the runtime has settled the batch it made, so a 200 means delivered
//! (at least once); the sink posts each write as one array.

mod sink;
mod source;

use crate::limits;
use crate::settings::{build_error, check_listen};
use std::collections::BTreeMap;
use std::time::Duration;

use dab_api::config::Fields;
use dab_api::{BuildError, ConfigValue, Sink, SinkFactory, Source, SourceFactory};

pub use sink::{HttpSink, HttpSinkConfig};
pub use source::{HttpSource, HttpSourceConfig};

/// The largest request body the source takes unless told otherwise.
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// The sink's per-request timeout unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds `kind: http` sources.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpSourceFactory;

impl SourceFactory for HttpSourceFactory {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn build(
        &self,
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Source>, BuildError> {
        let config = HttpSourceConfig::from_fields(name, fields)?;
        Ok(Box::new(HttpSource::new(name, config)))
    }
}

/// Builds `kind: http` sinks.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpSinkFactory;

impl SinkFactory for HttpSinkFactory {
    fn kind(&self) -> &'static str {
        "http"
    }

    fn build(
        &self,
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<Box<dyn Sink>, BuildError> {
        let config = HttpSinkConfig::from_fields(name, fields)?;
        Ok(Box::new(HttpSink::new(name, config)?))
    }
}

impl HttpSourceConfig {
    pub fn from_fields(
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<HttpSourceConfig, BuildError> {
        let f = Fields(fields);
        let listen = f
            .str("listen")
            .ok_or_else(|| build_error(name, "`listen` is required"))?;
        check_listen(listen).map_err(|reason| build_error(name, reason))?;
        let max_body_bytes = match f.int("max_body_bytes") {
            None => DEFAULT_MAX_BODY_BYTES,
            Some(n) => usize::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
                build_error(name, format!("`max_body_bytes` must be positive, not {n}"))
            })?,
        };
        Ok(HttpSourceConfig {
            listen: listen.to_owned(),
            max_body_bytes,
            max_connections: limits::max_connections(name, fields)?,
            header_timeout: limits::timeout(
                name,
                fields,
                "header_timeout",
                limits::DEFAULT_HEADER_TIMEOUT,
            )?,
            body_timeout: limits::timeout(
                name,
                fields,
                "body_timeout",
                limits::DEFAULT_BODY_TIMEOUT,
            )?,
        })
    }
}

impl HttpSinkConfig {
    pub fn from_fields(
        name: &str,
        fields: &BTreeMap<String, ConfigValue>,
    ) -> Result<HttpSinkConfig, BuildError> {
        let f = Fields(fields);
        let endpoint = f
            .str("endpoint")
            .ok_or_else(|| build_error(name, "`endpoint` is required"))?;
        let timeout = match f.int("timeout") {
            None => DEFAULT_TIMEOUT,
            Some(ms) => u64::try_from(ms)
                .ok()
                .filter(|ms| *ms > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| {
                    build_error(name, format!("`timeout` must be positive, not {ms}"))
                })?,
        };
        Ok(HttpSinkConfig {
            endpoint: endpoint.to_owned(),
            timeout,
            tls_ca: f.str("tls_ca").map(str::to_owned),
        })
    }
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

    #[test]
    fn source_fields_have_defaults_and_checks() {
        let ok = HttpSourceConfig::from_fields(
            "In",
            &fields(&[("listen", ConfigValue::Str("127.0.0.1:8080".into()))]),
        )
        .expect("valid");
        assert_eq!(ok.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        let bad = HttpSourceConfig::from_fields(
            "In",
            &fields(&[("listen", ConfigValue::Str("8080".into()))]),
        )
        .expect_err("no host");
        assert_eq!(
            bad.to_string(),
            "In: `listen` must be host:port, not `8080`"
        );
        let zero = HttpSourceConfig::from_fields(
            "In",
            &fields(&[
                ("listen", ConfigValue::Str("[::1]:80".into())),
                ("max_body_bytes", ConfigValue::Int(0)),
            ]),
        )
        .expect_err("zero");
        assert!(zero.reason.contains("max_body_bytes"), "{zero}");
    }

    #[test]
    fn sink_fields_have_defaults_and_checks() {
        let ok = HttpSinkConfig::from_fields(
            "Out",
            &fields(&[
                (
                    "endpoint",
                    ConfigValue::Str("http://127.0.0.1:8081/ingest".into()),
                ),
                ("timeout", ConfigValue::Int(250)),
            ]),
        )
        .expect("valid");
        assert_eq!(ok.timeout, Duration::from_millis(250));
        let missing = HttpSinkConfig::from_fields("Out", &fields(&[])).expect_err("missing");
        assert_eq!(missing.to_string(), "Out: `endpoint` is required");
    }

    #[test]
    fn factories_reject_bad_endpoints() {
        for endpoint in [
            "not a url",
            "ftp://x/y",
            "https://127.0.0.1/ingest",
            "/ingest",
        ] {
            let err = HttpSinkFactory
                .build(
                    "Out",
                    &fields(&[("endpoint", ConfigValue::Str(endpoint.into()))]),
                )
                .err()
                .unwrap_or_else(|| panic!("{endpoint} accepted"));
            assert!(err.reason.contains("endpoint"), "{endpoint}: {err}");
        }
        assert_eq!(HttpSourceFactory.kind(), "http");
        assert_eq!(HttpSinkFactory.kind(), "http");
    }
}
