//! `dab-kafka-bench`: the Kafka side of DAB's Kafka benchmark
//! (scripts/bench-kafka.sh, issue 5), on plain librdkafka (rdkafka's
//! `BaseConsumer` and `BaseProducer`, one thread, no tokio, no DAB).
//!
//! - `produce`: writes ~250-byte JSON events shaped like DAB's
//!   (`{"timestamp":…,"host":"h1","type":"A","offset":<seq>,"pid":1,
//!   "message":"…"}`), flat out or at a rate sent in 1 ms ticks, with an
//!   optional burst at another rate in the middle; prints the achieved
//!   rates. A producer that falls more than 100 ms behind its schedule
//!   gives the rest up (`shortfall_events`) rather than catching up later.
//! - `copy`: the broker's own pass-through ceiling: consume one topic and
//!   produce every message to another with DAB's guarantees (idempotent
//!   producer, `acks=all`; an offset is stored for commit only once every
//!   message up to it was delivered) and DAB's client settings. Prints
//!   events/s from the first message consumed to the last delivery.
//! - `lag`: a consumer group's total lag (high watermark minus committed,
//!   summed over the topic's partitions); with `--every-ms` it samples for
//!   a while, together with a process's RSS and `dab run`'s own metrics.
//!   (tansu 0.6 answers ListOffsets "latest" with the base offset of the
//!   newest record batch plus one, so its high watermark, and this lag,
//!   can be short by up to one producer batch per partition.)
//! - `watch`: polls `dab run --metrics` until the Kafka sink has delivered
//!   a count, and reports the rate from the first consumed event (as
//!   `dab_source_events_total` shows it) to that point; stops early when
//!   deliveries stall (events that never come).
//! - `verify`: reads a whole topic back and checks that the sequence
//!   numbers `produce` wrote (`offset`, 0..count) are all there, once.
//!
//! Results are printed as `key=value` lines, for the script. Every loop is
//! bounded in time.

// A command-line tool: its results go to stdout.
#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, DefaultConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

#[derive(Debug, Parser)]
#[command(
    name = "dab-kafka-bench",
    about = "Kafka producer, plain copy and lag tools for DAB's Kafka benchmark"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Produce JSON events, flat out or at a rate (with an optional burst)
    Produce(ProduceArgs),
    /// Copy a topic to another with plain librdkafka (the ceiling)
    Copy(CopyArgs),
    /// Print a consumer group's total lag, once or sampled over time
    Lag(LagArgs),
    /// Poll `dab run --metrics` until the Kafka sink delivered a count
    Watch(WatchArgs),
    /// Read a whole topic and check that the events `produce` numbered
    /// 0..count are all there (missing and repeated sequence numbers)
    Verify(VerifyArgs),
}

#[derive(Debug, clap::Args)]
struct ProduceArgs {
    /// Bootstrap brokers, host:port
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// Events to send (at most)
    #[arg(long)]
    count: Option<u64>,
    /// Seconds to send for (at most)
    #[arg(long)]
    duration: Option<f64>,
    /// Events per second, sent in 1 ms ticks; flat out without it
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds after the start at which the burst begins
    #[arg(long, requires = "burst_rate")]
    burst_after: Option<f64>,
    /// Length of the burst, seconds
    #[arg(long, default_value_t = 10.0)]
    burst_secs: f64,
    /// Events per second during the burst
    #[arg(long, requires = "rate")]
    burst_rate: Option<f64>,
    /// Size of one whole JSON event, bytes (with seven-digit offsets)
    #[arg(long, default_value_t = 250)]
    payload_bytes: usize,
    /// Event type
    #[arg(long = "type", default_value = "A")]
    ty: String,
    /// Seconds to wait for the last delivery reports
    #[arg(long, default_value_t = 60.0)]
    flush_timeout: f64,
    /// Extra librdkafka producer setting, key=value (repeatable)
    #[arg(long = "producer-set", value_parser = key_value)]
    producer_set: Vec<(String, String)>,
}

#[derive(Debug, clap::Args)]
struct CopyArgs {
    #[arg(long)]
    brokers: String,
    /// Topic to read
    #[arg(long)]
    from: String,
    /// Topic to write
    #[arg(long)]
    to: String,
    /// Messages to copy; the copy ends when this many were delivered
    #[arg(long)]
    count: u64,
    /// Consumer group (use a fresh one to read from the start)
    #[arg(long)]
    group: String,
    /// Messages per chunk: offsets are stored chunk by chunk, once every
    /// message of the chunk and of the chunks before it was delivered
    #[arg(long, default_value_t = 1024)]
    chunk: usize,
    /// Give up after this many seconds
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Extra librdkafka consumer setting, key=value (repeatable), over
    /// DAB's defaults, as a source binding's `options:` would
    #[arg(long = "consumer-set", value_parser = key_value)]
    consumer_set: Vec<(String, String)>,
    /// Extra librdkafka producer setting, key=value (repeatable), as a
    /// sink binding's `options:` would
    #[arg(long = "producer-set", value_parser = key_value)]
    producer_set: Vec<(String, String)>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not key=value")),
    }
}

#[derive(Debug, clap::Args)]
struct LagArgs {
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    #[arg(long)]
    group: String,
    /// Sample every this many ms instead of printing once
    #[arg(long)]
    every_ms: Option<u64>,
    /// How long to sample, seconds
    #[arg(long, default_value_t = 60.0)]
    for_secs: f64,
    /// Also sample this process's VmRSS; stop when it ends
    #[arg(long)]
    rss_pid: Option<u32>,
    /// Also sample `dab run --metrics` at this address
    #[arg(long)]
    metrics: Option<String>,
    /// Stop sampling early once, this many seconds after the start, the
    /// lag was at most `--quiet-lag` for `--quiet-samples` samples in a row
    #[arg(long)]
    quiet_after: Option<f64>,
    #[arg(long, default_value_t = 0)]
    quiet_lag: i64,
    #[arg(long, default_value_t = 6)]
    quiet_samples: u32,
}

#[derive(Debug, clap::Args)]
struct WatchArgs {
    /// `dab run --metrics` address, host:port
    #[arg(long)]
    metrics: String,
    /// Stop when `dab_kafka_delivered_total` reaches this
    #[arg(
        long,
        required_unless_present = "assigned",
        conflicts_with = "assigned"
    )]
    delivered: Option<u64>,
    /// Instead: stop when `dab_kafka_partitions_assigned_total` reaches this
    #[arg(long)]
    assigned: Option<u64>,
    /// Poll period, ms
    #[arg(long, default_value_t = 100)]
    every_ms: u64,
    /// Give up after this many seconds
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// Give up when this process ends
    #[arg(long)]
    pid: Option<u32>,
    /// Stop early when nothing more was delivered for this many seconds
    /// (some events never came: reported with `complete=0`)
    #[arg(long, default_value_t = 5.0)]
    stall: f64,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// Sequence numbers expected: 0..count
    #[arg(long)]
    count: u64,
    /// Stop after this many seconds without a message
    #[arg(long, default_value_t = 3.0)]
    idle: f64,
    /// Give up after this many seconds
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// Extra librdkafka consumer setting, key=value (repeatable)
    #[arg(long = "consumer-set", value_parser = key_value)]
    consumer_set: Vec<(String, String)>,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Produce(a) => produce(&a),
        Cmd::Copy(a) => copy(&a),
        Cmd::Lag(a) => lag(&a),
        Cmd::Watch(a) => watch(&a),
        Cmd::Verify(a) => verify(&a),
    }
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn config(brokers: &str, settings: &[(&str, &str)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    for (k, v) in settings {
        c.set(*k, *v);
    }
    c.set_log_level(RDKafkaLogLevel::Warning);
    c
}

/// `config`, then `extra` over it.
fn config_with(
    brokers: &str,
    settings: &[(&str, &str)],
    extra: &[(String, String)],
) -> ClientConfig {
    let mut c = config(brokers, settings);
    for (k, v) in extra {
        c.set(k.as_str(), v.as_str());
    }
    c
}

/// The producer settings DAB's Kafka sink uses
/// (crates/dab-connectors/src/kafka/mod.rs, `KafkaSinkConfig`).
const PRODUCER: &[(&str, &str)] = &[
    ("client.id", "dab-kafka-bench"),
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("compression.codec", "none"),
    ("linger.ms", "5"),
    ("batch.num.messages", "10000"),
    ("message.timeout.ms", "30000"),
];

/// The consumer settings DAB's Kafka source uses (`KafkaSourceConfig`),
/// without the statistics DAB reads its lag from.
const CONSUMER: &[(&str, &str)] = &[
    ("client.id", "dab-kafka-bench"),
    ("enable.auto.commit", "true"),
    ("enable.auto.offset.store", "false"),
    ("auto.commit.interval.ms", "1000"),
    ("auto.offset.reset", "earliest"),
    ("session.timeout.ms", "6000"),
    ("heartbeat.interval.ms", "1000"),
    ("queued.max.messages.kbytes", "32768"),
];

// ---------------------------------------------------------------- events

/// Makes the JSON events `produce` sends: `timestamp` is the send time
/// (ns), `offset` a sequence from 0, and `message` is padded so that the
/// whole object is `bytes` long while offsets have seven digits.
#[derive(Debug)]
struct EventMaker {
    head: Vec<u8>,
    mid: Vec<u8>,
    tail: Vec<u8>,
}

impl EventMaker {
    fn new(ty: &str, bytes: usize) -> EventMaker {
        let head = b"{\"timestamp\":".to_vec();
        let mid = format!(",\"host\":\"h1\",\"type\":\"{ty}\",\"offset\":").into_bytes();
        let mut m = EventMaker {
            head,
            mid,
            tail: Vec::new(),
        };
        let mut probe = Vec::new();
        m.tail = b",\"pid\":1,\"message\":\"\"}".to_vec();
        m.write(1_732_320_000_000_000_000, 1_000_000, &mut probe);
        let pad = bytes.saturating_sub(probe.len());
        // Log-like text: letters, digits and spaces, nothing to escape.
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 /.=";
        let mut tail = b",\"pid\":1,\"message\":\"".to_vec();
        tail.extend((0..pad).map(|i| ALPHABET[(i * 7 + i / 5) % ALPHABET.len()]));
        tail.extend_from_slice(b"\"}");
        m.tail = tail;
        m
    }

    fn write(&self, timestamp_ns: u64, offset: u64, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.head);
        dab_bench::push_u64(out, timestamp_ns);
        out.extend_from_slice(&self.mid);
        dab_bench::push_u64(out, offset);
        out.extend_from_slice(&self.tail);
    }
}

// --------------------------------------------------------------- produce

/// Events per second over time: `base`, with `burst` between `from` and
/// `from + secs` seconds after the start.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    base: f64,
    burst: Option<(f64, f64, f64)>,
}

impl Schedule {
    /// Events due by `t` seconds after the start.
    /// Events per second at `t` seconds after the start.
    fn rate_at(&self, t: f64) -> f64 {
        match self.burst {
            Some((from, secs, rate)) if t >= from && t < from + secs => rate,
            _ => self.base,
        }
    }

    fn due(&self, t: f64) -> f64 {
        match self.burst {
            None => self.base * t,
            Some((from, secs, rate)) => {
                let before = t.min(from);
                let during = (t - from).clamp(0.0, secs);
                let after = (t - from - secs).max(0.0);
                self.base * (before + after) + rate * during
            }
        }
    }
}

/// Delivery reports of `produce`.
#[derive(Debug, Default)]
struct Deliveries {
    delivered: AtomicU64,
    errors: AtomicU64,
    last: Mutex<Option<Instant>>,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                let mut f = self
                    .first_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if f.is_none() {
                    *f = Some(e.to_string());
                }
            }
        }
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
    }
}

fn is_queue_full(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)
    )
}

fn produce(a: &ProduceArgs) -> anyhow::Result<()> {
    if a.count.is_none() && a.duration.is_none() {
        bail!("give --count, --duration or both");
    }
    let count = a.count.unwrap_or(u64::MAX);
    let duration = a.duration.map_or(Duration::MAX, Duration::from_secs_f64);
    let schedule = a.rate.map(|base| Schedule {
        base,
        burst: a
            .burst_rate
            .map(|r| (a.burst_after.unwrap_or(0.0), a.burst_secs, r)),
    });
    let producer: BaseProducer<Deliveries> = config_with(&a.brokers, PRODUCER, &a.producer_set)
        .create_with_context(Deliveries::default())
        .context("creating the producer")?;
    let maker = EventMaker::new(&a.ty, a.payload_bytes);
    let mut buf = Vec::with_capacity(a.payload_bytes + 32);
    maker.write(unix_ns(), 1_000_000, &mut buf);
    println!("event_bytes={}", buf.len());

    let start = Instant::now();
    let started_ms = unix_ms();
    let mut sent: u64 = 0;
    let mut tick = start;
    let mut queue_full: u64 = 0;
    // Behind the schedule by more than this many events at a tick.
    let mut max_behind: f64 = 0.0;
    // Events given up on: a producer more than 100 ms behind its schedule
    // does not catch up later (which would send faster than the schedule
    // says); the shortfall is reported instead.
    let mut shortfall: f64 = 0.0;
    // Sent counts at the burst's edges.
    let (burst_from, burst_to) = match schedule.and_then(|s| s.burst) {
        Some((from, secs, _)) => (from, from + secs),
        None => (f64::INFINITY, f64::INFINITY),
    };
    let mut at_burst_start: Option<(u64, f64, u128)> = None;
    let mut at_burst_end: Option<(u64, f64, u128)> = None;
    'send: loop {
        let el = start.elapsed();
        if el >= duration || sent >= count {
            break;
        }
        let t = el.as_secs_f64();
        if t >= burst_from && at_burst_start.is_none() {
            at_burst_start = Some((sent, t, unix_ms()));
        }
        if t >= burst_to && at_burst_end.is_none() {
            at_burst_end = Some((sent, t, unix_ms()));
        }
        let due = match schedule {
            Some(s) => {
                let behind = s.due(t) - shortfall - sent as f64;
                max_behind = max_behind.max(behind);
                let slack = s.rate_at(t) * 0.1;
                if behind > slack {
                    shortfall += behind - slack;
                }
                ((s.due(t) - shortfall).max(0.0) as u64).min(count)
            }
            // Flat out: a slice at a time, polling in between.
            None => count.min(sent + 10_000),
        };
        while sent < due {
            maker.write(unix_ns(), sent, &mut buf);
            match producer.send(BaseRecord::<[u8], [u8], ()>::to(&a.topic).payload(&buf)) {
                Ok(()) => sent += 1,
                Err((e, _)) if is_queue_full(&e) => {
                    queue_full += 1;
                    producer.poll(Duration::from_millis(1));
                    if start.elapsed() >= duration {
                        break 'send;
                    }
                }
                Err((e, _)) => bail!("produce to {}: {e}", a.topic),
            }
            if sent % 1024 == 0 {
                producer.poll(Duration::ZERO);
            }
        }
        producer.poll(Duration::ZERO);
        if schedule.is_some() {
            tick += Duration::from_millis(1);
            let now = Instant::now();
            if tick > now {
                std::thread::sleep(tick - now);
            } else if now - tick > Duration::from_millis(100) {
                // Far behind (a stalled machine): do not try to catch up
                // faster than the schedule allows from here on.
                tick = now;
            }
        }
    }
    let send_secs = start.elapsed().as_secs_f64();
    let flush = Duration::from_secs_f64(a.flush_timeout);
    let flushed = producer.flush(flush);
    let d = producer.context();
    let delivered = d.delivered.load(Ordering::Relaxed);
    let errors = d.errors.load(Ordering::Relaxed);
    let last = *d.last.lock().unwrap_or_else(PoisonError::into_inner);
    let deliver_secs = last.map_or(f64::NAN, |l| (l - start).as_secs_f64());
    println!("started_unix_ms={started_ms}");
    println!("sent={sent}");
    println!("delivered={delivered}");
    println!("delivery_errors={errors}");
    if let Some(e) = d
        .first_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
    {
        println!("first_error={}", e.replace(' ', "_"));
    }
    println!("queue_full={queue_full}");
    println!("send_secs={send_secs:.3}");
    println!("send_rate={:.0}", sent as f64 / send_secs);
    println!("delivered_rate={:.0}", delivered as f64 / deliver_secs);
    if schedule.is_some() {
        println!("max_behind_events={max_behind:.0}");
        println!("shortfall_events={shortfall:.0}");
        if let (Some((n0, t0, ms0)), Some((n1, t1, ms1))) = (at_burst_start, at_burst_end) {
            println!("base_rate_achieved={:.0}", n0 as f64 / t0);
            println!("burst_rate_achieved={:.0}", (n1 - n0) as f64 / (t1 - t0));
            println!(
                "after_rate_achieved={:.0}",
                (sent - n1) as f64 / (send_secs - t1).max(1e-9)
            );
            println!("burst_start_unix_ms={ms0}");
            println!("burst_end_unix_ms={ms1}");
        } else {
            println!("rate_achieved={:.0}", sent as f64 / send_secs);
        }
    }
    if let Err(e) = flushed {
        bail!("not every delivery report came within {flush:?}: {e}");
    }
    if errors > 0 {
        bail!("{errors} deliveries failed");
    }
    Ok(())
}

// ------------------------------------------------------------------ copy

/// One chunk of consumed messages: how many of its copies are not
/// delivered yet, and whether one failed.
#[derive(Debug, Clone, Copy)]
struct ChunkState {
    remaining: usize,
    failed: bool,
}

/// What the delivery callbacks of `copy` update (they run inside
/// `producer.poll`, on the copying thread, so the lock is uncontended).
#[derive(Debug, Default)]
struct CopyState {
    /// Id of `chunks[0]`.
    base: usize,
    chunks: VecDeque<ChunkState>,
    delivered: u64,
    errors: u64,
    first_error: Option<String>,
    last_delivery: Option<Instant>,
}

#[derive(Debug, Default)]
struct CopyCtx(Mutex<CopyState>);

impl ClientContext for CopyCtx {}

impl ProducerContext for CopyCtx {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, chunk: usize) {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let ok = result.is_ok();
        if ok {
            s.delivered += 1;
        } else {
            s.errors += 1;
            if s.first_error.is_none() {
                if let Err((e, _)) = result {
                    s.first_error = Some(e.to_string());
                }
            }
        }
        s.last_delivery = Some(Instant::now());
        let i = chunk.wrapping_sub(s.base);
        if let Some(c) = s.chunks.get_mut(i) {
            c.remaining = c.remaining.saturating_sub(1);
            c.failed |= !ok;
        }
    }
}

/// Stores for commit the offsets of the prefix of chunks whose every copy
/// was delivered. Once a chunk failed, nothing at or after it is stored
/// (`frozen`), as DAB holds a partition whose batch failed. Returns the
/// chunks stored.
fn store_delivered(
    a: &CopyArgs,
    consumer: &BaseConsumer<DefaultConsumerContext>,
    producer: &BaseProducer<CopyCtx>,
    chunk_offsets: &mut VecDeque<BTreeMap<i32, i64>>,
    frozen: &mut bool,
) -> u64 {
    let mut store = TopicPartitionList::new();
    let mut stored = 0;
    {
        let mut s = producer
            .context()
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while let Some(c) = s.chunks.front().copied() {
            if c.remaining > 0 {
                break;
            }
            s.chunks.pop_front();
            s.base += 1;
            let offs = chunk_offsets.pop_front().unwrap_or_default();
            *frozen |= c.failed;
            if !*frozen {
                for (p, o) in offs {
                    // The committed offset is the next one to read; a later
                    // chunk's offset of a partition replaces an earlier one.
                    match store.find_partition(&a.from, p) {
                        Some(mut e) => {
                            let _ = e.set_offset(Offset::Offset(o + 1));
                        }
                        None => {
                            let _ = store.add_partition_offset(&a.from, p, Offset::Offset(o + 1));
                        }
                    }
                }
                stored += 1;
            }
        }
    }
    if store.count() > 0 {
        if let Err(e) = consumer.store_offsets(&store) {
            eprintln!("dab-kafka-bench: storing offsets: {e}");
        }
    }
    stored
}

fn copy(a: &CopyArgs) -> anyhow::Result<()> {
    let mut consumer_settings = CONSUMER.to_vec();
    consumer_settings.push(("group.id", a.group.as_str()));
    let consumer: BaseConsumer<DefaultConsumerContext> =
        config_with(&a.brokers, &consumer_settings, &a.consumer_set)
            .create()
            .context("creating the consumer")?;
    let producer: BaseProducer<CopyCtx> = config_with(&a.brokers, PRODUCER, &a.producer_set)
        .create_with_context(CopyCtx::default())
        .context("creating the producer")?;
    consumer
        .subscribe(&[&a.from])
        .with_context(|| format!("subscribing to {}", a.from))?;
    let state = || {
        producer
            .context()
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.timeout);
    let chunk_size = a.chunk.max(1);
    let mut first: Option<Instant> = None;
    let mut consumed: u64 = 0;
    let mut consume_errors: u64 = 0;
    let mut queue_full: u64 = 0;
    let mut stored_chunks: u64 = 0;
    // Last offset per partition of each chunk not yet stored, in order.
    let mut chunk_offsets: VecDeque<BTreeMap<i32, i64>> = VecDeque::new();
    let mut frozen = false;
    loop {
        stored_chunks += store_delivered(a, &consumer, &producer, &mut chunk_offsets, &mut frozen);
        let delivered = state().delivered;
        if delivered >= a.count {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "copy timed out after {:.0} s: consumed {consumed}, delivered {delivered}",
                a.timeout
            );
        }
        // Read a chunk: what is there now, waiting only when nothing is
        // in flight.
        let mut offsets: BTreeMap<i32, i64> = BTreeMap::new();
        let mut n = 0usize;
        let id = chunk_offsets.len() + state().base;
        while n < chunk_size && consumed < a.count {
            let wait = if n > 0 || producer.in_flight_count() > 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(100)
            };
            let Some(m) = consumer.poll(wait) else { break };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    consume_errors += 1;
                    if consume_errors <= 5 {
                        eprintln!("dab-kafka-bench: consumer error: {e}");
                    }
                    break;
                }
            };
            first.get_or_insert_with(Instant::now);
            {
                // Count the message in its chunk before it can be delivered.
                let mut s = state();
                if n == 0 {
                    s.chunks.push_back(ChunkState {
                        remaining: 0,
                        failed: false,
                    });
                }
                if let Some(c) = s.chunks.back_mut() {
                    c.remaining += 1;
                }
            }
            loop {
                let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(&a.to, id)
                    .payload(m.payload().unwrap_or_default());
                if let Some(k) = m.key() {
                    record = record.key(k);
                }
                match producer.send(record) {
                    Ok(()) => break,
                    Err((e, _)) if is_queue_full(&e) => {
                        queue_full += 1;
                        producer.poll(Duration::from_millis(1));
                        if Instant::now() >= deadline {
                            bail!("copy timed out with the producer's queue full");
                        }
                    }
                    Err((e, _)) => bail!("produce to {}: {e}", a.to),
                }
            }
            offsets.insert(m.partition(), m.offset());
            consumed += 1;
            n += 1;
        }
        if n > 0 {
            chunk_offsets.push_back(offsets);
            producer.poll(Duration::ZERO);
        } else if producer.in_flight_count() > 0 {
            // Nothing to read: wait for delivery reports instead.
            producer.poll(Duration::from_millis(1));
        }
    }
    let (delivered, errors, first_error, last) = {
        let s = state();
        (
            s.delivered,
            s.errors,
            s.first_error.clone(),
            s.last_delivery,
        )
    };
    let first = first.context("no message was consumed")?;
    let last = last.context("no message was delivered")?;
    let secs = (last - first).as_secs_f64();
    let commit = consumer.commit_consumer_state(CommitMode::Sync);
    println!("consumed={consumed}");
    println!("delivered={delivered}");
    println!("delivery_errors={errors}");
    if let Some(e) = first_error {
        println!("first_error={}", e.replace(' ', "_"));
    }
    println!("consume_errors={consume_errors}");
    println!("queue_full={queue_full}");
    println!("stored_chunks={stored_chunks}");
    println!("join_secs={:.3}", (first - start).as_secs_f64());
    println!("copy_secs={secs:.3}");
    println!("total_secs={:.3}", (last - start).as_secs_f64());
    println!("rate={:.0}", delivered as f64 / secs);
    println!(
        "commit={}",
        match &commit {
            Ok(()) => "ok".to_owned(),
            Err(e) => e.to_string().replace(' ', "_"),
        }
    );
    consumer.unsubscribe();
    if errors > 0 {
        bail!("{errors} deliveries failed");
    }
    Ok(())
}

// ------------------------------------------------------------------- lag

/// Total lag of `group` on `topic`: per partition, high watermark minus
/// the committed offset (minus the low watermark when nothing is
/// committed), never below zero.
fn group_lag(
    consumer: &BaseConsumer<DefaultConsumerContext>,
    topic: &str,
    partitions: &[i32],
    verbose: bool,
) -> anyhow::Result<i64> {
    let timeout = Duration::from_secs(5);
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(tpl, timeout)
        .context("fetching committed offsets")?;
    let mut total = 0;
    for p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, *p, timeout)
            .with_context(|| format!("watermarks of {topic}[{p}]"))?;
        let from = match committed.find_partition(topic, *p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => low.max(0),
        };
        if verbose {
            println!("partition={p} low={low} high={high} committed_or_low={from}");
        }
        total += (high - from).max(0);
    }
    Ok(total)
}

fn partitions_of(
    consumer: &BaseConsumer<DefaultConsumerContext>,
    topic: &str,
) -> anyhow::Result<Vec<i32>> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .context("fetching metadata")?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if parts.is_empty() {
        bail!("topic {topic} has no partitions (does it exist?)");
    }
    Ok(parts)
}

/// VmRSS of a process, KiB; `None` when it is gone.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn lag(a: &LagArgs) -> anyhow::Result<()> {
    let consumer: BaseConsumer<DefaultConsumerContext> = config(
        &a.brokers,
        &[
            ("group.id", a.group.as_str()),
            ("client.id", "dab-kafka-bench-lag"),
            ("enable.auto.commit", "false"),
        ],
    )
    .create()
    .context("creating the consumer")?;
    let parts = partitions_of(&consumer, &a.topic)?;
    let Some(every) = a.every_ms else {
        println!("lag={}", group_lag(&consumer, &a.topic, &parts, true)?);
        return Ok(());
    };
    let every = Duration::from_millis(every.max(10));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.for_secs);
    let mut tick = start;
    let mut quiet = 0;
    while Instant::now() < end {
        let mut line = format!("sample unix_ms={}", unix_ms());
        match group_lag(&consumer, &a.topic, &parts, false) {
            Ok(l) => {
                line.push_str(&format!(" lag={l}"));
                let late = a
                    .quiet_after
                    .is_some_and(|q| start.elapsed().as_secs_f64() >= q);
                quiet = if late && l <= a.quiet_lag {
                    quiet + 1
                } else {
                    0
                };
            }
            Err(e) => eprintln!("dab-kafka-bench: lag: {e:#}"),
        }
        if let Some(pid) = a.rss_pid {
            match rss_kib(pid) {
                Some(k) => line.push_str(&format!(" rss_kib={k}")),
                None => {
                    println!("{line} gone=1");
                    break;
                }
            }
        }
        if let Some(addr) = &a.metrics {
            if let Ok(text) = get_metrics(addr) {
                line.push_str(&format!(
                    " dab_lag={} dab_delivered={} dab_consumed={} dab_rss={}",
                    metric_sum(&text, "dab_kafka_consumer_lag"),
                    metric_sum(&text, "dab_kafka_delivered_total"),
                    metric_sum(&text, "dab_source_events_total"),
                    metric_sum(&text, "dab_process_resident_memory_bytes"),
                ));
            }
        }
        println!("{line}");
        if quiet >= a.quiet_samples.max(1) {
            break;
        }
        tick += every;
        let now = Instant::now();
        if tick > now {
            std::thread::sleep(tick - now);
        } else {
            tick = now;
        }
    }
    Ok(())
}

// ----------------------------------------------------------------- watch

/// `GET /metrics` from `dab run --metrics ADDR`, the body only.
fn get_metrics(addr: &str) -> anyhow::Result<String> {
    let sock = addr
        .parse()
        .with_context(|| format!("metrics address {addr}"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    match text.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") =>
        {
            Ok(body.to_owned())
        }
        _ => bail!("unexpected answer from {addr}"),
    }
}

/// The sum of every sample of the metric `name` (any labels).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                rest.rsplit_once('}')?.1
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None;
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

fn watch(a: &WatchArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.timeout);
    let every = Duration::from_millis(a.every_ms.max(1));
    let mut first: Option<f64> = None;
    let mut up: Option<f64> = None;
    let mut tick = start;
    // The delivered count and when it last grew.
    let mut delivered = 0.0;
    let mut grew = 0.0;
    let mut consumed: f64;
    let mut text: String;
    let complete = loop {
        if Instant::now() >= deadline {
            bail!(
                "timed out after {:.0} s with {delivered} delivered of {:?}",
                a.timeout,
                a.delivered
            );
        }
        if let Some(pid) = a.pid {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                bail!("process {pid} ended with {delivered} delivered");
            }
        }
        if let Ok(got) = get_metrics(&a.metrics) {
            text = got;
            let t = start.elapsed().as_secs_f64();
            up.get_or_insert(t);
            consumed = metric_sum(&text, "dab_source_events_total");
            if first.is_none() && consumed > 0.0 {
                first = Some(t);
            }
            if let Some(want) = a.assigned {
                if metric_sum(&text, "dab_kafka_partitions_assigned_total") >= want as f64 {
                    println!("assigned_secs={t:.3}");
                    return Ok(());
                }
            }
            let now = metric_sum(&text, "dab_kafka_delivered_total");
            if now > delivered {
                delivered = now;
                grew = t;
            }
            if a.delivered.is_some_and(|want| delivered >= want as f64) {
                break true;
            }
            // No progress since the last delivery (or, with none yet,
            // since the first event was consumed).
            let progress = if delivered > 0.0 { Some(grew) } else { first };
            if progress.is_some_and(|p| t - p >= a.stall) {
                break false;
            }
        }
        tick += every;
        let now = Instant::now();
        if tick > now {
            std::thread::sleep(tick - now);
        } else {
            tick = now;
        }
    };
    let first = first.unwrap_or(grew);
    let secs = (grew - first).max(a.every_ms as f64 / 1000.0);
    println!("complete={}", u8::from(complete));
    println!("up_secs={:.3}", up.unwrap_or(0.0));
    println!("first_consumed_secs={first:.3}");
    println!("done_secs={grew:.3}");
    println!("consumed={consumed}");
    println!("delivered={delivered}");
    println!("copy_secs={secs:.3}");
    println!("rate={:.0}", delivered / secs);
    println!("rate_from_start={:.0}", delivered / grew.max(1e-3));
    // Where the time went, from the last poll.
    let writes = metric_sum(&text, "dab_kafka_produce_latency_seconds_count");
    println!("pauses={}", metric_sum(&text, "dab_kafka_pauses_total"));
    println!("sink_writes={writes}");
    println!(
        "write_to_delivery_ms={:.1}",
        1000.0 * metric_sum(&text, "dab_kafka_produce_latency_seconds_sum") / writes.max(1.0)
    );
    println!(
        "output_blocked_secs={:.2}",
        metric_sum(&text, "dab_output_blocked_seconds_total")
    );
    Ok(())
}

// ---------------------------------------------------------------- verify

/// The value of the first `"offset":` field of a JSON event.
fn seq_of(payload: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"offset\":";
    let at = memchr::memmem::find(payload, KEY)? + KEY.len();
    let digits = payload[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&payload[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

/// Runs of missing numbers as `first-last` (at most `max` of them).
fn missing_runs(seen: &[u8], max: usize) -> Vec<String> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < seen.len() && runs.len() < max {
        if seen[i] == 0 {
            let start = i;
            while i < seen.len() && seen[i] == 0 {
                i += 1;
            }
            runs.push(format!("{start}-{}", i - 1));
        } else {
            i += 1;
        }
    }
    runs
}

fn verify(a: &VerifyArgs) -> anyhow::Result<()> {
    let consumer: BaseConsumer<DefaultConsumerContext> = config_with(
        &a.brokers,
        &[
            ("group.id", "dab-kafka-bench-verify"),
            ("client.id", "dab-kafka-bench-verify"),
            ("enable.auto.commit", "false"),
        ],
        &a.consumer_set,
    )
    .create()
    .context("creating the consumer")?;
    let parts = partitions_of(&consumer, &a.topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(&a.topic, *p, Offset::Beginning)
            .context("assignment")?;
    }
    consumer.assign(&tpl).context("assigning partitions")?;
    let n = usize::try_from(a.count).context("count too large")?;
    let mut seen = vec![0u8; n];
    let (mut read, mut repeated, mut outside, mut undecodable) = (0u64, 0u64, 0u64, 0u64);
    let mut per_partition: BTreeMap<i32, u64> = BTreeMap::new();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.timeout);
    let idle = Duration::from_secs_f64(a.idle);
    let mut last = Instant::now();
    while Instant::now() < deadline && last.elapsed() < idle {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.context("reading")?;
        last = Instant::now();
        read += 1;
        *per_partition.entry(m.partition()).or_default() += 1;
        match m.payload().and_then(seq_of) {
            None => undecodable += 1,
            Some(s) => match usize::try_from(s).ok().and_then(|i| seen.get_mut(i)) {
                None => outside += 1,
                Some(x) => {
                    if *x > 0 {
                        repeated += 1;
                    }
                    *x = x.saturating_add(1);
                }
            },
        }
    }
    let distinct = seen.iter().filter(|x| **x > 0).count();
    println!("read={read}");
    println!("distinct={distinct}");
    println!("missing={}", n - distinct);
    println!("repeated={repeated}");
    println!("outside_range={outside}");
    println!("undecodable={undecodable}");
    for (p, c) in &per_partition {
        println!("partition={p} messages={c}");
    }
    let runs = missing_runs(&seen, 20);
    if !runs.is_empty() {
        println!("missing_runs={}", runs.join(","));
    }
    if Instant::now() >= deadline {
        bail!("timed out after {:.0} s", a.timeout);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_the_asked_size_and_valid_json_shape() {
        let m = EventMaker::new("A", 250);
        let mut out = Vec::new();
        m.write(1_732_320_000_000_000_000, 1_000_000, &mut out);
        assert_eq!(out.len(), 250);
        m.write(1_732_320_000_000_000_000, 7, &mut out);
        let s = String::from_utf8(out).expect("ascii");
        assert!(s.starts_with("{\"timestamp\":1732320000000000000,\"host\":\"h1\",\"type\":\"A\",\"offset\":7,\"pid\":1,\"message\":\""), "{s}");
        assert!(s.ends_with("\"}"), "{s}");
    }

    #[test]
    fn sequence_numbers_and_missing_runs() {
        let m = EventMaker::new("A", 250);
        let mut out = Vec::new();
        m.write(5, 1234, &mut out);
        assert_eq!(seq_of(&out), Some(1234));
        assert_eq!(seq_of(b"{}"), None);
        assert_eq!(
            missing_runs(&[1, 0, 0, 1, 0], 10),
            vec!["1-2".to_owned(), "4-4".to_owned()]
        );
    }

    #[test]
    fn schedule_with_a_burst() {
        let s = Schedule {
            base: 100.0,
            burst: Some((10.0, 5.0, 1000.0)),
        };
        assert_eq!(s.due(5.0), 500.0);
        assert_eq!(s.due(10.0), 1000.0);
        assert_eq!(s.due(12.0), 3000.0);
        assert_eq!(s.due(15.0), 6000.0);
        assert_eq!(s.due(20.0), 6500.0);
        assert_eq!(s.rate_at(9.9), 100.0);
        assert_eq!(s.rate_at(10.0), 1000.0);
        assert_eq!(s.rate_at(15.0), 100.0);
    }

    #[test]
    fn metric_sums_over_labels() {
        let text = "# HELP dab_kafka_delivered_total x\n\
                    dab_kafka_delivered_total{sink=\"a\"} 10\n\
                    dab_kafka_delivered_total{sink=\"b\"} 5\n\
                    dab_kafka_delivered_totalx 99\n\
                    dab_process_resident_memory_bytes 1048576\n";
        assert_eq!(metric_sum(text, "dab_kafka_delivered_total"), 15.0);
        assert_eq!(
            metric_sum(text, "dab_process_resident_memory_bytes"),
            1048576.0
        );
        assert_eq!(metric_sum(text, "missing"), 0.0);
    }
}
