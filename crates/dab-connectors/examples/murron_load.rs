//! A load client for the `murron_grpc` source: K HTTP/2 connections, M
//! calls in flight on each, every call one batch of `--batch` events of
//! about `--event-bytes` encoded bytes, sent flat out or at a target rate
//! for a fixed time. It records the ack latency of every batch and prints
//! events/s and p50/p99/p99.9.
//!
//! ```sh
//! cargo run --release -p dab-connectors --example murron_load -- \
//!     --addr 127.0.0.1:50051 --connections 4 --in-flight 8 --duration 10
//! ```
//!
//! Each worker (connection x in-flight slot) is one event stream: host
//! `load-<connection>.bench.example.net`, pid = worker number, offsets
//! 0, 1, 2, ... with no gaps, so `dab run --reliability` scores it 100%.
//! A batch refused with `RESOURCE_EXHAUSTED` or `UNAVAILABLE` is sent
//! again after a short back-off (at least once); only acked events count.
//!
//! Latency is the batch's ack latency: from the moment the call is made to
//! the moment its `Ack` is read. With `--rate`, each worker also has a
//! schedule (batch n at start + n / per-worker batch rate), and the time
//! from the scheduled slot to the ack is printed too, so that a stalled
//! server is not hidden by a client that waited to send (coordinated
//! omission); it includes up to a millisecond of tokio's timer tick, and
//! batches that started more than 2 ms after their slot are counted. Only
//! batches due (paced) or sent (flat out) after `--warmup` and acked within
//! the `--duration` window count.
//!
//! Output: a few lines for people, then one `RESULT key=value ...` line
//! for scripts (`scripts/bench-grpc.sh`).

// Printing the figures is what this example is for.
#![allow(clippy::print_stdout)]

use std::collections::VecDeque;
use std::error::Error;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dab_api::{Event, Text};
use dab_connectors::codec::proto;
use dab_connectors::murron::rpc::murron_client::MurronClient;
use dab_connectors::murron::wire::{self, BatchWriter};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

type BoxError = Box<dyn Error + Send + Sync>;

const USAGE: &str = "\
murron_load: load client for a murron_grpc source

  --addr HOST:PORT      server (required)
  --connections K       HTTP/2 connections (default 4)
  --in-flight M         calls in flight per connection (default 8)
  --batch N             events per batch (default 100)
  --event-bytes B       encoded size of one event, about (default 250)
  --rate R              events/s over all workers; 0 = flat out (default 0)
  --duration S          measured seconds (default 10)
  --warmup S            seconds before measuring (default 2)
  --types A,B           event types, round-robin per batch (default A)
  --stream              use the Stream call (one per worker) instead of Send
  --threads T           tokio worker threads (default 2)
  --call-timeout S      give up on one call after S seconds (default 10)
";

#[derive(Debug, Clone)]
struct Args {
    addr: String,
    connections: usize,
    in_flight: usize,
    batch: usize,
    event_bytes: usize,
    rate: f64,
    duration: f64,
    warmup: f64,
    types: Vec<String>,
    stream: bool,
    threads: usize,
    call_timeout: f64,
}

impl Args {
    fn parse() -> Result<Args, BoxError> {
        let mut a = Args {
            addr: String::new(),
            connections: 4,
            in_flight: 8,
            batch: 100,
            event_bytes: 250,
            rate: 0.0,
            duration: 10.0,
            warmup: 2.0,
            types: vec!["A".to_owned()],
            stream: false,
            threads: 2,
            call_timeout: 10.0,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "--help" || flag == "-h" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            if flag == "--stream" {
                a.stream = true;
                continue;
            }
            const VALUED: &[&str] = &[
                "--addr",
                "--connections",
                "--in-flight",
                "--batch",
                "--event-bytes",
                "--rate",
                "--duration",
                "--warmup",
                "--types",
                "--threads",
                "--call-timeout",
            ];
            if !VALUED.contains(&flag.as_str()) {
                return Err(format!("unknown flag {flag}\n\n{USAGE}").into());
            }
            let value = it
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"))?;
            let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
            match flag.as_str() {
                "--addr" => a.addr = value.clone(),
                "--connections" => a.connections = value.parse().map_err(|e| bad(&e))?,
                "--in-flight" => a.in_flight = value.parse().map_err(|e| bad(&e))?,
                "--batch" => a.batch = value.parse().map_err(|e| bad(&e))?,
                "--event-bytes" => a.event_bytes = value.parse().map_err(|e| bad(&e))?,
                "--rate" => a.rate = value.parse().map_err(|e| bad(&e))?,
                "--duration" => a.duration = value.parse().map_err(|e| bad(&e))?,
                "--warmup" => a.warmup = value.parse().map_err(|e| bad(&e))?,
                "--types" => a.types = value.split(',').map(str::to_owned).collect(),
                "--threads" => a.threads = value.parse().map_err(|e| bad(&e))?,
                "--call-timeout" => a.call_timeout = value.parse().map_err(|e| bad(&e))?,
                _ => return Err(format!("unknown flag {flag}\n\n{USAGE}").into()),
            }
        }
        if a.addr.is_empty() {
            return Err(format!("--addr is required\n\n{USAGE}").into());
        }
        if a.connections == 0 || a.in_flight == 0 || a.batch == 0 || a.threads == 0 {
            return Err(
                "--connections, --in-flight, --batch and --threads must be positive".into(),
            );
        }
        let at_least_0 = |x: f64| x.is_finite() && x >= 0.0;
        let above_0 = |x: f64| x.is_finite() && x > 0.0;
        if !(at_least_0(a.rate) && at_least_0(a.warmup) && above_0(a.duration)) {
            return Err("--rate and --warmup must be >= 0, --duration > 0".into());
        }
        if !above_0(a.call_timeout) {
            return Err("--call-timeout must be > 0".into());
        }
        if a.types.iter().any(String::is_empty) {
            return Err("--types: empty type name".into());
        }
        Ok(a)
    }

    fn workers(&self) -> usize {
        self.connections * self.in_flight
    }
}

/// What one worker saw.
#[derive(Debug, Default)]
struct Tally {
    /// Events acked within the window, of batches sent after the warm-up.
    events: u64,
    /// Every acked event, warm-up included.
    events_all: u64,
    batches: u64,
    /// Ack latency (ns) of each measured batch, from the send.
    latency_ns: Vec<u64>,
    /// From the scheduled slot, when paced.
    sched_ns: Vec<u64>,
    /// Paced batches sent more than 2 ms after their slot.
    late_starts: u64,
    resource_exhausted: u64,
    unavailable: u64,
    other_errors: u64,
    timeouts: u64,
    /// The first error other than the two retried ones.
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.events += o.events;
        self.events_all += o.events_all;
        self.batches += o.batches;
        self.latency_ns.extend(o.latency_ns);
        self.sched_ns.extend(o.sched_ns);
        self.late_starts += o.late_starts;
        self.resource_exhausted += o.resource_exhausted;
        self.unavailable += o.unavailable;
        self.other_errors += o.other_errors;
        self.timeouts += o.timeouts;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }

    fn error(&mut self, status: &tonic::Status) {
        match status.code() {
            Code::ResourceExhausted => self.resource_exhausted += 1,
            Code::Unavailable => self.unavailable += 1,
            _ => {
                self.other_errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(format!("{:?}: {}", status.code(), status.message()));
                }
            }
        }
    }
}

/// The run's clock: when measuring starts and ends.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

impl Window {
    fn counts(&self, sent: Instant, acked: Instant) -> bool {
        sent >= self.measure_from && acked <= self.end
    }
}

/// Builds one worker's batches: its own (host, pid) and gap-free offsets.
struct Maker {
    event: Event,
    types: Vec<Text>,
    next_type: usize,
    writer: BatchWriter,
    batch: usize,
}

impl Maker {
    fn new(args: &Args, connection: usize, worker: usize) -> Maker {
        let mut event = Event {
            timestamp: 0,
            host: Text::from(format!("load-{connection:02}.bench.example.net")),
            ty: Text::from(args.types[0].as_str()),
            offset: 0,
            pid: u32::try_from(worker).unwrap_or(u32::MAX),
            message: Bytes::new(),
            tags: vec![
                (Text::from("env"), Text::from("bench")),
                (Text::from("region"), Text::from("eu-west-1")),
            ],
            ..Event::default()
        };
        event.message = message_for(&event, args.event_bytes);
        Maker {
            event,
            types: args.types.iter().map(|t| Text::from(t.as_str())).collect(),
            next_type: 0,
            writer: BatchWriter::default(),
            batch: args.batch,
        }
    }

    fn next(&mut self) -> wire::Batch {
        let ty = &self.types[self.next_type % self.types.len()];
        self.next_type += 1;
        self.event.ty = ty.clone();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        for _ in 0..self.batch {
            self.event.timestamp = now;
            self.writer.push(&self.event);
            self.event.offset += 1;
        }
        self.writer.finish()
    }
}

/// A message that makes the encoded event about `target` bytes.
fn message_for(template: &Event, target: usize) -> Bytes {
    let encoded = |e: &Event| {
        let mut buf = BytesMut::new();
        proto::encode(e, &mut buf);
        buf.len()
    };
    let mut e = template.clone();
    e.timestamp = 1_732_320_000_123_456_789;
    e.offset = 1_000_000;
    let mut len = 0usize;
    // Each step lands within the length prefix's size; a few settle it.
    for _ in 0..4 {
        e.message = Bytes::from(filler(len));
        let size = encoded(&e);
        if size == target {
            break;
        }
        len = (len + target).saturating_sub(size);
    }
    Bytes::from(filler(len))
}

fn filler(len: usize) -> Vec<u8> {
    const TEXT: &[u8] = b"GET /api/chat.postMessage?channel=C024BE91L HTTP/1.1 200 1532 0.012 ";
    TEXT.iter().copied().cycle().take(len).collect()
}

/// The worker's pace: `None` flat out, else the gap between its batches.
fn pace(args: &Args) -> Option<Duration> {
    (args.rate > 0.0).then(|| {
        let batches_per_s = args.rate / args.batch as f64 / args.workers() as f64;
        Duration::from_secs_f64(1.0 / batches_per_s)
    })
}

/// When the next batch is due (paced), waiting for it; `None` flat out.
async fn due(
    gap: Option<Duration>,
    worker_start: Instant,
    n: u64,
    tally: &mut Tally,
) -> Option<Instant> {
    let gap = gap?;
    let slot = worker_start + gap.mul_f64(n as f64);
    let now = Instant::now();
    if slot > now {
        tokio::time::sleep_until(slot.into()).await;
    } else if now - slot > Duration::from_millis(2) {
        tally.late_starts += 1;
    }
    Some(slot)
}

fn record(
    tally: &mut Tally,
    w: &Window,
    slot: Option<Instant>,
    sent: Instant,
    acked: Instant,
    n: u64,
) {
    tally.events_all += n;
    let from = slot.unwrap_or(sent);
    if w.counts(from, acked) {
        tally.events += n;
        tally.batches += 1;
        tally.latency_ns.push(nanos(acked - sent));
        if slot.is_some() {
            tally.sched_ns.push(nanos(acked - from));
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A short back-off after a refusal; the same batch goes again.
async fn back_off(stop: &AtomicBool) {
    if !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Unary `Send` calls, one at a time, until the window ends.
async fn unary_worker(
    mut client: MurronClient<Channel>,
    mut maker: Maker,
    args: Arc<Args>,
    w: Window,
    offset: Duration,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    let gap = pace(&args);
    let limit = Duration::from_secs_f64(args.call_timeout);
    let worker_start = w.start + offset;
    let n_events = args.batch as u64;
    let mut n = 0u64;
    'batches: while !stop.load(Ordering::Relaxed) && Instant::now() < w.end {
        let slot = due(gap, worker_start, n, &mut tally).await;
        n += 1;
        let batch = maker.next();
        loop {
            let sent = Instant::now();
            if sent >= w.end {
                break 'batches;
            }
            match tokio::time::timeout(limit, client.send(batch.clone())).await {
                Ok(Ok(_ack)) => {
                    record(&mut tally, &w, slot, sent, Instant::now(), n_events);
                    break;
                }
                Ok(Err(status)) => {
                    tally.error(&status);
                    if !matches!(status.code(), Code::ResourceExhausted | Code::Unavailable) {
                        break 'batches;
                    }
                    back_off(&stop).await;
                }
                Err(_) => {
                    tally.timeouts += 1;
                    break 'batches;
                }
            }
        }
    }
    tally
}

/// One `Stream` call: up to `window` batches ahead of their acks, which
/// come back in order. An error ends the stream (the server's rule) and
/// a new one starts, sending the unacked batches again.
async fn stream_worker(
    mut client: MurronClient<Channel>,
    mut maker: Maker,
    args: Arc<Args>,
    w: Window,
    offset: Duration,
    stop: Arc<AtomicBool>,
) -> Tally {
    let mut tally = Tally::default();
    let gap = pace(&args);
    let limit = Duration::from_secs_f64(args.call_timeout);
    let worker_start = w.start + offset;
    let n_events = args.batch as u64;
    let window = dab_connectors::murron::STREAM_WINDOW;
    let mut n = 0u64;
    // (batch, slot, sent) not yet acked, oldest first.
    let mut unacked: VecDeque<(wire::Batch, Option<Instant>, Instant)> = VecDeque::new();
    'streams: while !stop.load(Ordering::Relaxed) && Instant::now() < w.end {
        let (tx, rx) = mpsc::channel::<wire::Batch>(window);
        let mut acks =
            match tokio::time::timeout(limit, client.stream(ReceiverStream::new(rx))).await {
                Ok(Ok(response)) => response.into_inner(),
                Ok(Err(status)) => {
                    tally.error(&status);
                    back_off(&stop).await;
                    continue;
                }
                Err(_) => {
                    tally.timeouts += 1;
                    break;
                }
            };
        // Whatever was in flight on a broken stream goes again.
        for (batch, _, sent) in unacked.iter_mut() {
            *sent = Instant::now();
            if tx.send(batch.clone()).await.is_err() {
                continue 'streams;
            }
        }
        loop {
            let room = unacked.len() < window && Instant::now() < w.end;
            if !room && unacked.is_empty() {
                break 'streams;
            }
            tokio::select! {
                biased;
                ack = tokio::time::timeout(limit, acks.message()), if !unacked.is_empty() => {
                    match ack {
                        Ok(Ok(Some(_ack))) => {
                            let acked = Instant::now();
                            if let Some((_, slot, sent)) = unacked.pop_front() {
                                record(&mut tally, &w, slot, sent, acked, n_events);
                            }
                        }
                        Ok(Ok(None)) => {
                            tally.other_errors += 1;
                            tally.first_error.get_or_insert_with(|| "stream ended early".to_owned());
                            back_off(&stop).await;
                            continue 'streams;
                        }
                        Ok(Err(status)) => {
                            tally.error(&status);
                            if !matches!(status.code(), Code::ResourceExhausted | Code::Unavailable) {
                                break 'streams;
                            }
                            back_off(&stop).await;
                            continue 'streams;
                        }
                        Err(_) => {
                            tally.timeouts += 1;
                            break 'streams;
                        }
                    }
                }
                slot = due(gap, worker_start, n, &mut tally), if room => {
                    n += 1;
                    let batch = maker.next();
                    let sent = Instant::now();
                    if tx.send(batch.clone()).await.is_err() {
                        unacked.push_back((batch, slot, sent));
                        continue 'streams;
                    }
                    unacked.push_back((batch, slot, sent));
                }
            }
        }
    }
    tally
}

/// CPU seconds (user + system) this process has used, from /proc.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(") ")?.1;
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3; utime and stime are 14 and 15.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

async fn connect(addr: &str) -> Result<MurronClient<Channel>, BoxError> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| {
            let mut why = format!("cannot connect to {addr}: {e}");
            let mut cause = e.source();
            while let Some(c) = cause {
                why.push_str(&format!(": {c}"));
                cause = c.source();
            }
            why
        })?;
    Ok(MurronClient::new(channel))
}

async fn run(args: Args) -> Result<(), BoxError> {
    let args = Arc::new(args);
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        clients.push(connect(&args.addr).await?);
    }
    // The size of an event as sent (a real timestamp, a large offset),
    // and of a whole batch.
    let mut probe = Maker::new(&args, 0, 0);
    probe.event.offset = 1_000_000;
    let batch_bytes = probe.next().len();
    let mut one = BytesMut::new();
    proto::encode(&probe.event, &mut one);
    let event_bytes = one.len();

    let start = Instant::now() + Duration::from_millis(50);
    let w = Window {
        start,
        measure_from: start + Duration::from_secs_f64(args.warmup),
        end: start + Duration::from_secs_f64(args.warmup + args.duration),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let workers = args.workers();
    let mut handles = Vec::with_capacity(workers);
    for (c, client) in clients.iter().enumerate() {
        for m in 0..args.in_flight {
            let worker = c * args.in_flight + m;
            let maker = Maker::new(&args, c, worker);
            // Paced workers spread over one gap, not all at once.
            let offset = pace(&args).map_or(Duration::ZERO, |g| {
                g.mul_f64(worker as f64 / workers as f64)
            });
            let (client, args, stop) = (client.clone(), args.clone(), stop.clone());
            handles.push(if args.stream {
                tokio::spawn(stream_worker(client, maker, args, w, offset, stop))
            } else {
                tokio::spawn(unary_worker(client, maker, args, w, offset, stop))
            });
        }
    }

    tokio::time::sleep_until(w.measure_from.into()).await;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    tokio::time::sleep_until(w.end.into()).await;
    let cpu1 = cpu_seconds();
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);

    // Calls in flight at the end get `--call-timeout` to finish; a worker
    // that takes longer is left behind (the process exits).
    let mut total = Tally::default();
    let mut stuck = 0usize;
    let drain = Duration::from_secs_f64(args.call_timeout + 1.0);
    let deadline = tokio::time::Instant::now() + drain;
    for h in handles {
        match tokio::time::timeout_at(deadline, h).await {
            Ok(Ok(t)) => total.merge(t),
            Ok(Err(e)) => return Err(format!("a worker panicked: {e}").into()),
            Err(_) => stuck += 1,
        }
    }

    let eps = total.events as f64 / args.duration;
    let client_cores = match (cpu0, cpu1) {
        (Some(a), Some(b)) if elapsed > 0.0 => (b - a) / elapsed,
        _ => f64::NAN,
    };
    total.latency_ns.sort_unstable();
    total.sched_ns.sort_unstable();
    let (p50, p99, p999, max) = (
        percentile(&total.latency_ns, 50.0),
        percentile(&total.latency_ns, 99.0),
        percentile(&total.latency_ns, 99.9),
        percentile(&total.latency_ns, 100.0),
    );
    let (s50, s99) = (
        percentile(&total.sched_ns, 50.0),
        percentile(&total.sched_ns, 99.0),
    );
    let call = if args.stream { "stream" } else { "unary" };
    println!(
        "murron_load: {} {call}, {} connection(s) x {} in flight, {} events/batch ({} B/event, {} B/batch), rate {}",
        args.addr,
        args.connections,
        args.in_flight,
        args.batch,
        event_bytes,
        batch_bytes,
        if args.rate > 0.0 { format!("{:.0} events/s", args.rate) } else { "flat out".to_owned() },
    );
    println!(
        "  {:.0} events/s ({} events in {} batches over {:.1} s after {:.1} s warm-up); client used {:.2} cores",
        eps, total.events, total.batches, args.duration, args.warmup, client_cores
    );
    println!(
        "  ack latency (call to Ack): p50 {p50:.0} us, p99 {p99:.0} us, p99.9 {p999:.0} us, max {max:.0} us"
    );
    if args.rate > 0.0 {
        println!(
            "  from the scheduled slot: p50 {s50:.0} us, p99 {s99:.0} us; {} batch(es) started > 2 ms late",
            total.late_starts
        );
    }
    println!(
        "  refused: {} RESOURCE_EXHAUSTED, {} UNAVAILABLE; {} other error(s), {} timeout(s), {} worker(s) stuck{}",
        total.resource_exhausted,
        total.unavailable,
        total.other_errors,
        total.timeouts,
        stuck,
        total.first_error.as_deref().map_or(String::new(), |e| format!(" (first: {e})")),
    );
    println!(
        "RESULT call={call} connections={} in_flight={} batch={} event_bytes={event_bytes} batch_bytes={batch_bytes} rate={:.0} \
         duration={} eps={eps:.0} events={} events_all={} batches={} p50_us={p50:.0} p99_us={p99:.0} \
         p999_us={p999:.0} max_us={max:.0} sched_p50_us={s50:.0} sched_p99_us={s99:.0} late_starts={} \
         resource_exhausted={} unavailable={} errors={} timeouts={} stuck={stuck} client_cores={client_cores:.2}",
        args.connections,
        args.in_flight,
        args.batch,
        args.rate,
        args.duration,
        total.events,
        total.events_all,
        total.batches,
        total.late_starts,
        total.resource_exhausted,
        total.unavailable,
        total.other_errors,
        total.timeouts,
    );
    if total.other_errors > 0 || total.timeouts > 0 || total.events == 0 {
        return Err("the run had errors or acked nothing; figures are not valid".into());
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match try_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("murron_load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<(), BoxError> {
    let args = Args::parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(args));
    // Workers stuck in a call must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}
