//! Limits every listener keeps against producers that would exhaust it
//! (issue 11 item 5): a maximum number of connections open at once, and
//! the read timeouts of the HTTP source, as binding fields with defaults.
//! A connection over the maximum is accepted and closed at once (the
//! kernel has already completed its handshake), and counted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dab_api::config::{ConfigValue, Fields};
use dab_api::connector::SourceStats;
use dab_api::BuildError;

use crate::settings::build_error;

/// Connections one listener keeps open at once unless told otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// The largest `max_connections` a binding may ask for.
pub const MAX_MAX_CONNECTIONS: i64 = 1_000_000;

/// How long the HTTP source waits for a request's headers (from the
/// connection's start, or the end of the previous answer) unless told
/// otherwise: slow or idle clients must not hold a connection slot.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the HTTP source waits for a whole request body unless told
/// otherwise.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the `murron_grpc` source waits for a connection's handshake
/// (the TLS handshake, then the HTTP/2 preface) unless told otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `max_connections` of a listener's binding, or the default.
pub(crate) fn max_connections(
    name: &str,
    fields: &BTreeMap<String, ConfigValue>,
) -> Result<usize, BuildError> {
    match Fields(fields).int("max_connections") {
        None => Ok(DEFAULT_MAX_CONNECTIONS),
        Some(n) if (1..=MAX_MAX_CONNECTIONS).contains(&n) => Ok(n as usize),
        Some(n) => Err(build_error(
            name,
            format!("`max_connections` must be from 1 to {MAX_MAX_CONNECTIONS}, not {n}"),
        )),
    }
}

/// A positive duration field (milliseconds), or `default`.
pub(crate) fn timeout(
    name: &str,
    fields: &BTreeMap<String, ConfigValue>,
    field: &str,
    default: Duration,
) -> Result<Duration, BuildError> {
    match Fields(fields).int(field) {
        None => Ok(default),
        Some(ms) if ms > 0 => Ok(Duration::from_millis(ms.unsigned_abs())),
        Some(ms) => Err(build_error(
            name,
            format!("`{field}` must be positive, not {ms} ms"),
        )),
    }
}

/// The connections of one listener: at most `max` at once.
#[derive(Debug, Clone)]
pub(crate) struct ConnectionLimit {
    live: Arc<AtomicUsize>,
    max: usize,
    stats: Arc<SourceStats>,
}

impl ConnectionLimit {
    pub(crate) fn new(max: usize, stats: Arc<SourceStats>) -> ConnectionLimit {
        ConnectionLimit {
            live: Arc::new(AtomicUsize::new(0)),
            max,
            stats,
        }
    }

    /// A slot for a new connection, held until the connection ends; `None`
    /// (counted) when `max` are open already.
    pub(crate) fn admit(&self) -> Option<ConnectionSlot> {
        let taken = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        match taken {
            Ok(_) => Some(ConnectionSlot(Arc::clone(&self.live))),
            Err(_) => {
                SourceStats::add(&self.stats.connections_refused, 1);
                None
            }
        }
    }
}

/// One open connection's place under its listener's limit; freed on drop.
#[derive(Debug)]
pub(crate) struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_counted_and_freed() {
        let stats = Arc::new(SourceStats::default());
        let limit = ConnectionLimit::new(2, stats.clone());
        let a = limit.admit();
        let b = limit.admit();
        assert!(a.is_some() && b.is_some());
        assert!(limit.admit().is_none());
        assert!(limit.admit().is_none());
        assert_eq!(stats.connections_refused.load(Ordering::Relaxed), 2);
        drop(a);
        assert!(limit.admit().is_some());
        assert_eq!(stats.connections_refused.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn fields_have_defaults_and_bounds() {
        let mut fields = BTreeMap::new();
        assert_eq!(
            max_connections("In", &fields).expect("default"),
            DEFAULT_MAX_CONNECTIONS
        );
        fields.insert("max_connections".to_owned(), ConfigValue::Int(0));
        assert_eq!(
            max_connections("In", &fields)
                .expect_err("zero")
                .to_string(),
            "In: `max_connections` must be from 1 to 1000000, not 0"
        );
        fields.insert("max_connections".to_owned(), ConfigValue::Int(7));
        assert_eq!(max_connections("In", &fields).expect("7"), 7);
        fields.insert("header_timeout".to_owned(), ConfigValue::Int(250));
        assert_eq!(
            timeout("In", &fields, "header_timeout", DEFAULT_HEADER_TIMEOUT).expect("250"),
            Duration::from_millis(250)
        );
        assert_eq!(
            timeout("In", &fields, "body_timeout", DEFAULT_BODY_TIMEOUT).expect("default"),
            DEFAULT_BODY_TIMEOUT
        );
    }
}
