//! The catalog of connector kinds a bindings file may name, with their fields.
//!
//! Plain data: the bindings loader checks files against it, and the docs and
//! connectors read it, so a field is added here once and known everywhere.

use std::fmt;

/// The top-level sections of a bindings file that bind names with a kind.
/// Tables (`Enrich(Table, ...)`) are looked up by that op only, never read
/// by `In` or written by `Out`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Section {
    Sources,
    Sinks,
    Queues,
    Tables,
}

impl Section {
    pub const ALL: [Section; 4] = [
        Section::Sources,
        Section::Sinks,
        Section::Queues,
        Section::Tables,
    ];

    /// The YAML key of the section (`sources`).
    pub fn key(self) -> &'static str {
        match self {
            Section::Sources => "sources",
            Section::Sinks => "sinks",
            Section::Queues => "queues",
            Section::Tables => "tables",
        }
    }

    /// One member of the section (`source`), for messages.
    pub fn singular(self) -> &'static str {
        match self {
            Section::Sources => "source",
            Section::Sinks => "sink",
            Section::Queues => "queue",
            Section::Tables => "table",
        }
    }

    pub fn from_key(key: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|s| s.key() == key)
    }
}

impl fmt::Display for Section {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// What a field's value must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Str,
    Int,
    /// An integer or a float.
    Number,
    Bool,
    /// A list of strings, or one comma-separated string (as a variable gives).
    StrList,
    /// A string-to-string map, handed to a client library as is.
    Map,
    Enum(&'static [&'static str]),
    /// `host:port`.
    Address,
    Path,
    Url,
    /// `"250ms"`, `"10s"`, `"5m"`, `"1h"`, or an integer of milliseconds;
    /// loaded as integer milliseconds.
    Duration,
    /// A duration as [`FieldType::Duration`] (loaded as integer
    /// milliseconds), or one of these words (loaded as a string): the disk
    /// queue's `fsync: always | 100ms`.
    DurationOr(&'static [&'static str]),
    /// A size in bytes: `"10GiB"`, `"512MiB"`, `"64KiB"`, `"1GB"`, `"500MB"`,
    /// `"4kB"`, or an integer of bytes; loaded as integer bytes.
    Size,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSpec {
    pub name: &'static str,
    pub ty: FieldType,
    pub required: bool,
    /// The value is an address or socket path this binding listens on; two
    /// sources may not share one (E017).
    pub listen: bool,
    /// Inclusive bounds the loader enforces: on the value of an `Int`,
    /// `Number` or `Duration` (milliseconds) field, on the number of items
    /// of a `StrList`. Every numeric field has them, so that no value
    /// `dab validate` accepts makes a connector that cannot be built or
    /// that asks for unbounded memory (a test holds every field to this).
    pub bounds: Option<(i64, i64)>,
    pub doc: &'static str,
}

impl FieldSpec {
    /// The same field with inclusive bounds.
    pub const fn within(self, min: i64, max: i64) -> FieldSpec {
        FieldSpec {
            bounds: Some((min, max)),
            ..self
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindSpec {
    pub section: Section,
    pub kind: &'static str,
    pub fields: &'static [FieldSpec],
    pub doc: &'static str,
}

impl KindSpec {
    pub fn field(&self, name: &str) -> Option<&'static FieldSpec> {
        self.fields.iter().find(|f| f.name == name)
    }
}

const FRAMING: FieldType = FieldType::Enum(&["ndjson", "protobuf"]);
const CODEC: FieldType = FieldType::Enum(&["json", "protobuf"]);
const COMPRESSION: FieldType = FieldType::Enum(&["none", "gzip", "snappy", "lz4", "zstd"]);
const PARQUET_COMPRESSION: FieldType = FieldType::Enum(&["zstd", "snappy", "none"]);
/// Sink kinds whose `type` field names a type declared with `fields`,
/// whose schema gives the sink's columns (checked by `dab validate`, E015).
pub const SCHEMA_TYPED_SINKS: &[&str] = &["parquet"];
/// The formats of a `kind: file` table.
pub const TABLE_FORMAT: FieldType = FieldType::Enum(&["jsonl", "csv"]);
const START_OFFSET: FieldType = FieldType::Enum(&["earliest", "latest"]);
const RESERVED_NAMES: FieldType = FieldType::Enum(&["rename", "keep"]);

const fn req(name: &'static str, ty: FieldType, doc: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        ty,
        required: true,
        listen: false,
        bounds: None,
        doc,
    }
}

const fn opt(name: &'static str, ty: FieldType, doc: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        ty,
        required: false,
        listen: false,
        bounds: None,
        doc,
    }
}

const fn listen(name: &'static str, ty: FieldType, doc: &'static str) -> FieldSpec {
    FieldSpec {
        name,
        ty,
        required: true,
        listen: true,
        bounds: None,
        doc,
    }
}

const KAFKA_OPTIONS: FieldSpec = opt(
    "options",
    FieldType::Map,
    "librdkafka settings, passed as is",
);
const KAFKA_MAX_REDELIVERIES: FieldSpec = opt(
    "max_redeliveries",
    FieldType::Int,
    "times a batch that failed downstream is sent again before it goes to OnError (default 5)",
)
.within(0, 1_000);
/// A listener's bound on connections open at once.
const MAX_CONNECTIONS: FieldSpec = opt(
    "max_connections",
    FieldType::Int,
    "connections open at once (default 1024); more are closed and counted",
)
.within(1, 1_000_000);
/// The CA an `https://` sink endpoint's certificate must chain to.
const TLS_CA: FieldSpec = opt(
    "tls_ca",
    FieldType::Path,
    "PEM CA certificates the https:// peer must chain to; required with https",
);
const KAFKA_BROKERS: FieldSpec = req(
    "brokers",
    FieldType::Str,
    "bootstrap brokers, comma-separated host:port",
);

/// The targets a templated sink keeps open at once (SPEC section 10): file
/// handles of the `file` sink; for `kafka`, the topics it keeps state for
/// (see the connector). The least recently used one is closed first.
pub const DEFAULT_MAX_TARGETS: i64 = 64;
const MAX_TARGETS: FieldSpec = opt(
    "max_targets",
    FieldType::Int,
    "targets a templated `path` or `topic` keeps open at once; the least recently used is flushed and closed first (default 64)",
)
.within(1, 4_096);

/// Every sink's circuit breaker (SPEC section 11; the runtime's
/// `breaker.rs` holds the defaults, 5 and 5 s).
const BREAKER_AFTER: FieldSpec = opt(
    "breaker_after",
    FieldType::Int,
    "failures in a row that open the circuit breaker (default 5)",
)
.within(1, 1_000);
const BREAKER_COOLDOWN: FieldSpec = opt(
    "breaker_cooldown",
    FieldType::Duration,
    "how long an open breaker leaves the peer alone before one probe (default 5s)",
)
.within(10, HOUR_MS);

/// The largest frame, body or message a source can be told to accept:
/// 256 MiB, far above any sane event batch, low enough that one request
/// cannot ask for all of memory.
const MAX_MESSAGE: i64 = 256 << 20;
/// An hour, in milliseconds: the longest timeout a field takes.
const HOUR_MS: i64 = 3_600_000;
/// Hosts × pids × types of a generator at most: it keeps one offset
/// counter for each combination.
pub const GENERATOR_MAX_KEYS: i64 = 1_000_000;

static KINDS: &[KindSpec] = &[
    // Sources.
    KindSpec {
        section: Section::Sources,
        kind: "tcp",
        doc: "TCP listener reading framed events",
        fields: &[
            listen("listen", FieldType::Address, "address to listen on"),
            opt(
                "framing",
                FRAMING,
                "ndjson lines or length-delimited protobuf",
            ),
            opt("max_frame_bytes", FieldType::Int, "largest accepted frame").within(1, MAX_MESSAGE),
            MAX_CONNECTIONS,
        ],
    },
    KindSpec {
        section: Section::Sources,
        kind: "unix",
        doc: "Unix socket listener reading framed events",
        fields: &[
            listen("path", FieldType::Path, "socket path to listen on"),
            opt(
                "framing",
                FRAMING,
                "ndjson lines or length-delimited protobuf",
            ),
            opt("max_frame_bytes", FieldType::Int, "largest accepted frame").within(1, MAX_MESSAGE),
            MAX_CONNECTIONS,
        ],
    },
    KindSpec {
        section: Section::Sources,
        kind: "http",
        doc: "HTTP server taking POST /v1/events with a JSON array of events",
        fields: &[
            listen("listen", FieldType::Address, "address to listen on"),
            opt(
                "max_body_bytes",
                FieldType::Int,
                "largest accepted request body",
            )
            .within(1, MAX_MESSAGE),
            MAX_CONNECTIONS,
            opt(
                "header_timeout",
                FieldType::Duration,
                "longest wait for a request's headers (default 10s)",
            )
            .within(1, HOUR_MS),
            opt(
                "body_timeout",
                FieldType::Duration,
                "longest wait for a request's body (default 30s)",
            )
            .within(1, HOUR_MS),
        ],
    },
    KindSpec {
        section: Section::Sources,
        kind: "murron_grpc",
        doc: "Murron gRPC server",
        fields: &[
            listen("listen", FieldType::Address, "address to listen on"),
            opt(
                "max_message_bytes",
                FieldType::Int,
                "largest accepted message",
            )
            .within(1, MAX_MESSAGE),
            opt(
                "max_concurrent_streams",
                FieldType::Int,
                "streams per connection",
            )
            .within(1, 100_000),
            MAX_CONNECTIONS,
            opt(
                "handshake_timeout",
                FieldType::Duration,
                "longest wait for a connection's TLS handshake and HTTP/2 preface (default 10s)",
            )
            .within(1, HOUR_MS),
            opt(
                "tls_cert",
                FieldType::Path,
                "PEM certificate; TLS is off without it",
            ),
            opt("tls_key", FieldType::Path, "PEM private key of tls_cert"),
        ],
    },
    KindSpec {
        section: Section::Sources,
        kind: "kafka",
        doc: "Kafka consumer",
        fields: &[
            KAFKA_BROKERS,
            // One of `topic` and `topics` is required; the loader checks that.
            opt("topic", FieldType::Str, "topic to read"),
            opt("topics", FieldType::StrList, "topics to read").within(1, 1_000),
            opt("group", FieldType::Str, "consumer group id"),
            opt("codec", CODEC, "payload encoding"),
            opt(
                "start_offset",
                START_OFFSET,
                "where a new group starts reading",
            ),
            opt(
                "reserved_names",
                RESERVED_NAMES,
                "`dab.*` types and tag keys in messages: renamed `dab.untrusted.*` (rename, the default) or kept (keep: a topic only DAB writes)",
            ),
            KAFKA_MAX_REDELIVERIES,
            KAFKA_OPTIONS,
        ],
    },
    KindSpec {
        section: Section::Sources,
        kind: "generator",
        doc: "synthetic events, for tests and benchmarks",
        fields: &[
            // `rate: 0` is refused apart, with a hint to leave it out.
            opt(
                "rate",
                FieldType::Number,
                "events per second; unlimited without it",
            )
            .within(0, 1_000_000_000),
            opt(
                "count",
                FieldType::Int,
                "events to emit before ending; 0 never ends",
            )
            .within(0, i64::MAX),
            opt("types", FieldType::StrList, "event types, used in turn").within(1, 1_000),
            opt("payload_bytes", FieldType::Int, "message size").within(0, 1 << 20),
            opt("seed", FieldType::Int, "random seed").within(0, i64::MAX),
            opt("hosts", FieldType::StrList, "host names, used in turn").within(1, 1_000),
            opt("pids", FieldType::Int, "number of distinct pids").within(1, 10_000),
        ],
    },
    // Sinks.
    KindSpec {
        section: Section::Sinks,
        kind: "tcp",
        doc: "TCP client writing framed events",
        fields: &[
            req("connect", FieldType::Address, "address to connect to"),
            opt(
                "framing",
                FRAMING,
                "ndjson lines or length-delimited protobuf",
            ),
            BREAKER_AFTER,
            BREAKER_COOLDOWN,
        ],
    },
    KindSpec {
        section: Section::Sinks,
        kind: "file",
        doc: "NDJSON file, appended to",
        fields: &[
            req("path", FieldType::Path, "file to append to, or a template such as `out/{type}/{host}.ndjson`"),
            opt("fsync", FieldType::Bool, "fsync after each batch"),
            MAX_TARGETS,
            BREAKER_AFTER,
            BREAKER_COOLDOWN,
        ],
    },
    KindSpec {
        section: Section::Sinks,
        kind: "parquet",
        doc: "Parquet files of one type's payloads, by hour of event time (SPEC section 8)",
        fields: &[
            req("path", FieldType::Path, "local directory, or s3://bucket/prefix; files go under year=/month=/day=/hour="),
            req("type", FieldType::Str, "the declared type whose `fields` give the columns"),
            opt("compression", PARQUET_COMPRESSION, "zstd (default), snappy or none"),
            opt("max_file_bytes", FieldType::Int, "roll a file at this size (default 128 MiB)")
                .within(1024, 16 * 1024 * 1024 * 1024),
            opt("max_file_age", FieldType::Duration, "roll a file open this long (default 5m)")
                .within(1, HOUR_MS),
            opt("max_open_writers", FieldType::Int, "files open at once, late hours included (default 16)")
                .within(1, 1024),
            opt("max_unacked_bytes", FieldType::Int, "events held unacknowledged until their files commit; at this many bytes every open file is committed (default 64 MiB)")
                .within(1024, 64 * 1024 * 1024 * 1024),
            opt("s3_endpoint", FieldType::Str, "http(s)://host:port of an S3-compatible server (default: AWS)"),
            opt("s3_region", FieldType::Str, "the bucket's region (default us-east-1)"),
            opt("access_key", FieldType::Str, "S3 access key id, written as \"${VAR}\": from the environment only"),
            opt("secret_key", FieldType::Str, "S3 secret key, written as \"${VAR}\": from the environment only"),
            opt("spool", FieldType::Path, "local directory for files before their upload (default: the system's temp dir)"),
            BREAKER_AFTER,
            BREAKER_COOLDOWN,
        ],
    },
    KindSpec {
        section: Section::Sinks,
        kind: "http",
        doc: "HTTP client posting JSON arrays of events",
        fields: &[
            req("endpoint", FieldType::Url, "URL to POST to"),
            opt("timeout", FieldType::Duration, "per-request timeout").within(1, HOUR_MS),
            TLS_CA,
            BREAKER_AFTER,
            BREAKER_COOLDOWN,
        ],
    },
    KindSpec {
        section: Section::Sinks,
        kind: "murron_grpc",
        doc: "Murron gRPC client",
        fields: &[
            req("endpoint", FieldType::Url, "server URL"),
            TLS_CA,
            opt("batch_size", FieldType::Int, "events per request").within(1, 100_000),
            opt(
                "batch_timeout",
                FieldType::Duration,
                "longest wait to fill a batch",
            )
            .within(1, HOUR_MS),
            BREAKER_AFTER,
            BREAKER_COOLDOWN,
        ],
    },
    KindSpec {
        section: Section::Sinks,
        kind: "kafka",
        doc: "Kafka producer",
        fields: &[
            KAFKA_BROKERS,
            req("topic", FieldType::Str, "topic to write, or a template such as `events.{type}`"),
            opt("key", FieldType::Str, "event field used as message key"),
            MAX_TARGETS,
            opt("codec", CODEC, "payload encoding"),
            opt("compression", COMPRESSION, "producer compression"),
            KAFKA_OPTIONS,
            BREAKER_AFTER,
            BREAKER_COOLDOWN,
        ],
    },
    KindSpec {
        section: Section::Sinks,
        kind: "stdout",
        doc: "NDJSON on standard output",
        fields: &[BREAKER_AFTER, BREAKER_COOLDOWN],
    },
    KindSpec {
        section: Section::Sinks,
        kind: "blackhole",
        doc: "drops and acknowledges every event",
        fields: &[BREAKER_AFTER, BREAKER_COOLDOWN],
    },
    // Queues.
    KindSpec {
        section: Section::Queues,
        kind: "memory",
        doc: "bounded in-process channel",
        fields: &[
            opt("capacity", FieldType::Int, "events held at most").within(1, 100_000_000),
            opt(
                "capacity_bytes",
                FieldType::Int,
                "payload bytes held at most",
            )
            .within(1, 1 << 40),
        ],
    },
    KindSpec {
        section: Section::Queues,
        kind: "kafka",
        doc: "Kafka topic, linking services across processes",
        fields: &[
            KAFKA_BROKERS,
            req("topic", FieldType::Str, "topic backing the queue"),
            opt("codec", CODEC, "payload encoding"),
            opt(
                "partitions",
                FieldType::Int,
                "partitions when the topic is created",
            )
            .within(1, 100_000),
            KAFKA_MAX_REDELIVERIES,
            KAFKA_OPTIONS,
        ],
    },
    KindSpec {
        section: Section::Queues,
        kind: "disk",
        doc: "segment files on local disk that outlive the process (SPEC section 10)",
        fields: &[
            req("path", FieldType::Path, "directory of the queue's segment files"),
            opt(
                "max_bytes",
                FieldType::Size,
                "most bytes the segment files may take together (default 1GiB)",
            )
            .within(1 << 20, 1 << 50),
            opt(
                "segment_bytes",
                FieldType::Size,
                "size at which a new segment file is started (default 64MiB, at most max_bytes / 4)",
            )
            .within(64 << 10, 1 << 30),
            opt(
                "fsync",
                FieldType::DurationOr(&["always"]),
                "`always` (fdatasync before each write is acknowledged) or an interval (default 100ms)",
            )
            .within(1, HOUR_MS),
            opt(
                "when_full",
                FieldType::Enum(&["block", "drop_newest"]),
                "at max_bytes: `block` (back pressure, the default) or `drop_newest` (refused events go to OnError or are counted)",
            ),
            opt(
                "max_redeliveries",
                FieldType::Int,
                "times a reader sends a batch that failed downstream again before it goes to OnError (default: no limit, so that the queue rides out an outage; a limit keeps one batch that always fails from holding the queue)",
            )
            .within(0, 1_000_000),
        ],
    },
    // Tables (`Enrich(Table, ...)`, SPEC section 9).
    KindSpec {
        section: Section::Tables,
        kind: "file",
        doc: "a file of JSON lines or CSV with a header row, read at start and reloaded when it changes",
        fields: &[
            req("path", FieldType::Path, "the table file (`.jsonl`, `.ndjson`, `.json`: JSON lines; `.csv`: CSV with a header row)"),
            req("key", FieldType::Str, "the column rows are looked up by"),
            opt("format", TABLE_FORMAT, "`jsonl` or `csv`, when the file's extension does not say"),
        ],
    },
    KindSpec {
        section: Section::Tables,
        kind: "kafka",
        doc: "a compacted Kafka topic read from its start and kept current: the message key is the row's key, the value a JSON object, a null value deletes",
        fields: &[
            KAFKA_BROKERS,
            req("topic", FieldType::Str, "the topic holding the rows"),
            KAFKA_OPTIONS,
        ],
    },
];

/// Every connector kind DAB knows, in a stable order.
pub fn builtin_kinds() -> &'static [KindSpec] {
    KINDS
}

pub fn find_kind(section: Section, kind: &str) -> Option<&'static KindSpec> {
    KINDS
        .iter()
        .find(|k| k.section == section && k.kind == kind)
}

/// The kinds of one section, in catalog order.
pub fn kinds_of(section: Section) -> impl Iterator<Item = &'static KindSpec> {
    KINDS.iter().filter(move |k| k.section == section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_unique_per_section_and_fields_unique_per_kind() {
        for (i, a) in KINDS.iter().enumerate() {
            assert!(
                !KINDS[..i]
                    .iter()
                    .any(|b| b.section == a.section && b.kind == a.kind),
                "{} {} twice",
                a.section,
                a.kind
            );
            for (j, f) in a.fields.iter().enumerate() {
                assert_ne!(f.name, "kind", "{} declares `kind`", a.kind);
                assert!(!a.fields[..j].iter().any(|g| g.name == f.name));
            }
        }
    }

    #[test]
    fn every_numeric_field_has_bounds() {
        for k in KINDS {
            for f in k.fields {
                let numeric = matches!(
                    f.ty,
                    FieldType::Int
                        | FieldType::Number
                        | FieldType::Duration
                        | FieldType::DurationOr(_)
                        | FieldType::Size
                );
                if numeric {
                    let (min, max) = f.bounds.unwrap_or((1, 0));
                    assert!(
                        min <= max,
                        "{} {}.{} has no bounds",
                        k.section,
                        k.kind,
                        f.name
                    );
                    assert!(
                        min >= 0,
                        "{}.{}: negative numbers mean nothing here",
                        k.kind,
                        f.name
                    );
                }
            }
        }
    }

    #[test]
    fn lookups_respect_the_section() {
        assert_eq!(
            find_kind(Section::Sources, "tcp")
                .and_then(|k| k.field("listen"))
                .map(|f| f.listen),
            Some(true)
        );
        assert!(find_kind(Section::Sinks, "tcp")
            .and_then(|k| k.field("listen"))
            .is_none());
        assert!(find_kind(Section::Queues, "tcp").is_none());
        assert_eq!(
            kinds_of(Section::Queues)
                .map(|k| k.kind)
                .collect::<Vec<_>>(),
            ["memory", "kafka", "disk"]
        );
        assert_eq!(Section::from_key("sinks"), Some(Section::Sinks));
    }
}
