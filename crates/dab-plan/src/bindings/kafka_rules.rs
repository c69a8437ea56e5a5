//! Rules between librdkafka properties that `rd_kafka_new` enforces
//! (`rd_kafka_conf_finalize` in librdkafka's `rdkafka_conf.c`), applied to
//! the settings a Kafka client of DAB's really gets: librdkafka's defaults,
//! then DAB's (crates/dab-connectors/src/kafka/mod.rs), then `options:`.
//! Each property is checked alone in `kafka_options.rs`; here a value that
//! is fine alone but clashes with another one, or with a DAB default (the
//! sink's producer is idempotent), is refused at validate instead of
//! failing the client's creation at run time. `tests/validate_run.rs`
//! builds a client with every value the table accepts, which is how these
//! rules were found and how a drift of DAB's defaults would show.

use std::collections::BTreeMap;

/// Which clients a binding makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Clients {
    Consumer,
    Producer,
    /// A queue: a producer for its writers, a consumer per reader.
    Both,
}

impl Clients {
    fn consumer(self) -> bool {
        self != Clients::Producer
    }

    fn producer(self) -> bool {
        self != Clients::Consumer
    }
}

/// A clash: the option to point at (if the user set one), message, help.
pub(super) type Clash = (Option<String>, String, String);

/// The settings a client gets, looked up by any of a property's names.
struct Effective<'a> {
    options: &'a BTreeMap<String, String>,
}

impl Effective<'_> {
    /// The option the user set under any of `names`, with its name.
    fn set(&self, names: &[&str]) -> Option<(String, &str)> {
        names
            .iter()
            .find_map(|n| self.options.get(*n).map(|v| ((*n).to_owned(), v.trim())))
    }

    fn num(&self, names: &[&str], default: f64) -> f64 {
        self.set(names)
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .unwrap_or(default)
    }

    fn flag(&self, names: &[&str], default: bool) -> bool {
        match self.set(names) {
            Some((_, v)) => ["true", "t", "1"].iter().any(|w| w.eq_ignore_ascii_case(v)),
            None => default,
        }
    }
}

const ACKS: &[&str] = &["acks", "request.required.acks"];
const IN_FLIGHT: &[&str] = &["max.in.flight", "max.in.flight.requests.per.connection"];
const RETRIES: &[&str] = &["retries", "message.send.max.retries"];
const LINGER: &[&str] = &["linger.ms", "queue.buffering.max.ms"];
const MESSAGE_TIMEOUT: &[&str] = &["message.timeout.ms", "delivery.timeout.ms"];
const MECHANISMS: &[&str] = &["sasl.mechanisms", "sasl.mechanism"];

/// DAB's producer and consumer defaults that the rules depend on.
const DAB_LINGER_MS: f64 = 5.0;
const DAB_MESSAGE_TIMEOUT_MS: f64 = 30_000.0;
const DAB_SESSION_TIMEOUT_MS: f64 = 6_000.0;

/// Every clash among `options` and the defaults, for the clients a binding makes.
pub(super) fn clashes(options: &BTreeMap<String, String>, clients: Clients) -> Vec<Clash> {
    let e = Effective { options };
    let mut out: Vec<Clash> = Vec::new();
    let mut clash = |at: Option<String>, message: String, help: &str| {
        out.push((at, message, help.to_owned()));
    };
    let at = |names: &[&str]| e.set(names).map(|(n, _)| n);

    if clients.producer() && e.flag(&["enable.idempotence"], true) {
        let idem = "DAB's producer is idempotent (`enable.idempotence=true`), so delivery retries never duplicate or reorder";
        if let Some((name, v)) = e.set(ACKS) {
            if !(v.eq_ignore_ascii_case("all") || v == "-1") {
                clash(
                    Some(name.clone()),
                    format!("`{name}` must be `all` for DAB's idempotent producer, found `{v}`"),
                    idem,
                );
            }
        }
        if let Some((name, v)) = e.set(IN_FLIGHT) {
            if v.parse::<i64>().is_ok_and(|n| n > 5) {
                clash(
                    Some(name.clone()),
                    format!(
                        "`{name}` must be at most 5 for DAB's idempotent producer, found `{v}`"
                    ),
                    idem,
                );
            }
        }
        if let Some((name, v)) = e.set(RETRIES) {
            if v.parse::<i64>().is_ok_and(|n| n < 1) {
                clash(
                    Some(name.clone()),
                    format!(
                        "`{name}` must be at least 1 for DAB's idempotent producer, found `{v}`"
                    ),
                    idem,
                );
            }
        }
        if let Some((name, v)) = e.set(&["queue.buffering.backpressure.threshold"]) {
            if v != "1" {
                clash(
                    Some(name.clone()),
                    format!("`{name}` must be 1 for DAB's idempotent producer, found `{v}`"),
                    idem,
                );
            }
        }
        if let Some((name, v)) = e.set(&["queuing.strategy"]) {
            if !v.eq_ignore_ascii_case("fifo") {
                clash(
                    Some(name.clone()),
                    format!("`{name}` must be `fifo` for DAB's idempotent producer, found `{v}`"),
                    idem,
                );
            }
        }
    }
    if clients.producer() {
        let timeout = e.num(MESSAGE_TIMEOUT, DAB_MESSAGE_TIMEOUT_MS);
        let linger = e.num(LINGER, DAB_LINGER_MS);
        if timeout != 0.0 && timeout <= linger {
            clash(
                at(LINGER).or_else(|| at(MESSAGE_TIMEOUT)),
                format!("the message timeout ({timeout} ms) must be longer than the linger ({linger} ms)"),
                "DAB sets message.timeout.ms=30000 and linger.ms=5 unless `options:` says otherwise",
            );
        }
    }
    if clients.consumer() {
        if let Some((name, v)) = e.set(&["group.protocol"]) {
            if v.eq_ignore_ascii_case("consumer") {
                clash(
                    Some(name),
                    "`group.protocol: consumer` cannot be used: DAB sets `session.timeout.ms`, which that protocol leaves to the broker".to_owned(),
                    "leave `group.protocol` at `classic`",
                );
            }
        }
        let session = e.num(&["session.timeout.ms"], DAB_SESSION_TIMEOUT_MS);
        let poll = e.num(&["max.poll.interval.ms"], 300_000.0);
        if poll < session {
            clash(
                at(&["max.poll.interval.ms"]).or_else(|| at(&["session.timeout.ms"])),
                format!("`max.poll.interval.ms` ({poll}) must be at least `session.timeout.ms` ({session})"),
                "DAB sets session.timeout.ms=6000 unless `options:` says otherwise; librdkafka's max.poll.interval.ms is 300000",
            );
        }
        let message_max = e.num(&["message.max.bytes"], 1_000_000.0);
        if let Some((name, _)) = e.set(&["fetch.max.bytes"]) {
            let fetch = e.num(&["fetch.max.bytes"], 0.0);
            if fetch < message_max {
                clash(
                    Some(name),
                    format!("`fetch.max.bytes` ({fetch}) must be at least `message.max.bytes` ({message_max})"),
                    "librdkafka's message.max.bytes is 1000000",
                );
            }
        }
        if let Some((name, _)) = e.set(&["receive.message.max.bytes"]) {
            let receive = e.num(&["receive.message.max.bytes"], 0.0);
            let fetch = e.num(&["fetch.max.bytes"], 52_428_800.0);
            if receive < fetch + 512.0 {
                clash(
                    Some(name),
                    format!("`receive.message.max.bytes` ({receive}) must be at least `fetch.max.bytes` + 512 ({})", fetch + 512.0),
                    "librdkafka's fetch.max.bytes is 52428800",
                );
            }
        }
    }
    let backoff = e.num(&["reconnect.backoff.ms"], 100.0);
    let backoff_max = e.num(&["reconnect.backoff.max.ms"], 10_000.0);
    if backoff_max < backoff {
        clash(
            at(&["reconnect.backoff.max.ms"]).or_else(|| at(&["reconnect.backoff.ms"])),
            format!("`reconnect.backoff.max.ms` ({backoff_max}) must be at least `reconnect.backoff.ms` ({backoff})"),
            "librdkafka's defaults are 100 and 10000",
        );
    }
    if let Some((_, protocol)) = e.set(&["security.protocol"]) {
        if protocol.to_ascii_lowercase().starts_with("sasl") {
            let mechanisms = e.set(MECHANISMS).map_or("GSSAPI", |(_, v)| v);
            if !mechanisms.eq_ignore_ascii_case("PLAIN") {
                clash(
                    at(MECHANISMS).or_else(|| at(&["security.protocol"])),
                    format!("SASL mechanism `{mechanisms}` is not in DAB's librdkafka, which has PLAIN only"),
                    "set `sasl.mechanisms: PLAIN` (librdkafka's default is GSSAPI)",
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn messages(pairs: &[(&str, &str)], clients: Clients) -> Vec<String> {
        clashes(&opts(pairs), clients)
            .into_iter()
            .map(|(at, m, _)| format!("{}: {m}", at.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn idempotence_bounds_the_producer_settings() {
        assert_eq!(
            messages(&[("acks", "1"), ("retries", "0")], Clients::Producer),
            [
                "acks: `acks` must be `all` for DAB's idempotent producer, found `1`",
                "retries: `retries` must be at least 1 for DAB's idempotent producer, found `0`",
            ]
        );
        // Turned off, it bounds nothing; a consumer never had it.
        assert!(messages(
            &[("acks", "1"), ("enable.idempotence", "false")],
            Clients::Producer
        )
        .is_empty());
        assert!(messages(&[("acks", "1")], Clients::Consumer).is_empty());
    }

    #[test]
    fn defaults_take_part() {
        assert_eq!(
            messages(&[("linger.ms", "30000")], Clients::Both),
            ["linger.ms: the message timeout (30000 ms) must be longer than the linger (30000 ms)"]
        );
        assert!(messages(
            &[("linger.ms", "30000"), ("message.timeout.ms", "0")],
            Clients::Producer
        )
        .is_empty());
        assert_eq!(
            messages(&[("max.poll.interval.ms", "5000")], Clients::Consumer),
            ["max.poll.interval.ms: `max.poll.interval.ms` (5000) must be at least `session.timeout.ms` (6000)"]
        );
        assert_eq!(
            messages(&[("security.protocol", "sasl_plaintext")], Clients::Consumer),
            ["security.protocol: SASL mechanism `GSSAPI` is not in DAB's librdkafka, which has PLAIN only"]
        );
        assert!(messages(
            &[
                ("security.protocol", "sasl_plaintext"),
                ("sasl.mechanism", "PLAIN")
            ],
            Clients::Consumer
        )
        .is_empty());
    }
}
