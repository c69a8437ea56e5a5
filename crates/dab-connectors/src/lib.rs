//! Built-in connectors. Each lives in its own module behind the `Source` /
//! `Sink` traits of `dab-api`; `builtin_sources()` and `builtin_sinks()` list
//! them explicitly (no global registry), and the CLI hands the lists to the
//! runtime.

pub mod blackhole;
mod chunked;
pub mod codec;
pub mod disk;
pub mod file;
pub mod framing;
pub mod generator;
mod handover;
pub mod http;
pub mod kafka;
pub mod limits;
pub mod murron;
pub mod parquet_sink;
mod settings;
mod socket_common;
pub mod stdio;
pub mod tcp;
pub mod unix;

use dab_api::{SinkFactory, SourceFactory};

/// Every built-in source kind.
pub fn builtin_sources() -> Vec<Box<dyn SourceFactory>> {
    vec![
        Box::new(generator::GeneratorFactory),
        Box::new(stdio::StdinFactory),
        Box::new(tcp::TcpSourceFactory),
        Box::new(unix::UnixSourceFactory),
        Box::new(http::HttpSourceFactory),
        Box::new(murron::MurronSourceFactory),
        Box::new(kafka::KafkaSourceFactory),
        Box::new(disk::DiskSourceFactory),
    ]
}

/// Every built-in sink kind.
pub fn builtin_sinks() -> Vec<Box<dyn SinkFactory>> {
    vec![
        Box::new(stdio::StdoutFactory),
        Box::new(blackhole::BlackholeFactory),
        Box::new(file::FileSinkFactory),
        Box::new(tcp::TcpSinkFactory),
        Box::new(http::HttpSinkFactory),
        Box::new(murron::MurronSinkFactory),
        Box::new(kafka::KafkaSinkFactory),
        Box::new(parquet_sink::ParquetSinkFactory),
        Box::new(disk::DiskSinkFactory),
    ]
}

/// Every built-in table feed (tables other than `kind: file`, which the
/// runtime reads itself).
pub fn builtin_tables() -> Vec<Box<dyn dab_api::table::TableFactory>> {
    vec![Box::new(kafka::KafkaTableFactory)]
}

/// The changelogs of stateful stages, by the kind of source they read
/// (state that moves with Kafka partitions).
pub fn builtin_changelogs() -> Vec<Box<dyn dab_api::changelog::ChangelogFactory>> {
    vec![Box::new(kafka::KafkaChangelogFactory)]
}
