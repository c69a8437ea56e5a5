//! `dab-loadgen`: the load side of DAB's TCP NDJSON benchmark
//! (scripts/bench-runtime.sh), with plain std threads and blocking sockets.
//!
//! - `send`: connects and writes ~250-byte NDJSON events, flat out or at a
//!   fixed rate; each line's `timestamp` is its send time (ns) and its
//!   `offset` a sequence per (host, pid, type).
//! - `recv`: listens, counts lines, reports events/s over fixed windows
//!   after a warm-up, and the latency percentiles (receive time minus the
//!   embedded timestamp) of the lines seen in those windows.
//! - `relay`: a trivial line relay, to measure the loopback ceiling with
//!   the same sender and receiver.
//!
//! Results are printed as one `key=value` line each, for the script.

// A command-line tool: its results go to stdout.
#![allow(clippy::print_stdout)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use dab_bench::{cpu_secs, median, now_ns, Histogram, LineMaker};

#[derive(Debug, Parser)]
#[command(name = "dab-loadgen", about = "TCP NDJSON load generator and receiver")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write NDJSON events to a TCP address
    Send(SendArgs),
    /// Receive NDJSON events; report events/s and latency
    Recv(RecvArgs),
    /// Copy whole lines from one connection to another (the ceiling)
    Relay(RelayArgs),
}

#[derive(Debug, clap::Args)]
struct SendArgs {
    /// Address to connect to
    #[arg(long)]
    to: String,
    /// Events per second over all connections; 0 is flat out
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds to send for
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Parallel connections (each its own thread and host name)
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Line length without the newline (with seven-digit offsets)
    #[arg(long, default_value_t = 250)]
    line_bytes: usize,
    /// Event types, used in turn
    #[arg(long, value_delimiter = ',', default_value = "A")]
    types: Vec<String>,
    /// Seconds to keep retrying the first connect
    #[arg(long, default_value_t = 20.0)]
    connect_timeout: f64,
}

#[derive(Debug, clap::Args)]
struct RecvArgs {
    /// Address to listen on
    #[arg(long)]
    listen: String,
    /// Seconds between the first event and the first window
    #[arg(long, default_value_t = 3.0)]
    warmup: f64,
    /// Length of a measurement window, seconds
    #[arg(long, default_value_t = 10.0)]
    window: f64,
    /// Number of windows
    #[arg(long, default_value_t = 3)]
    windows: usize,
    /// After the windows, exit once no event came for this many seconds
    #[arg(long, default_value_t = 2.0)]
    idle_exit: f64,
    /// Seconds to wait for the first event
    #[arg(long, default_value_t = 60.0)]
    start_timeout: f64,
    /// Hard limit on the whole run, seconds
    #[arg(long, default_value_t = 600.0)]
    max_secs: f64,
}

#[derive(Debug, clap::Args)]
struct RelayArgs {
    #[arg(long)]
    listen: String,
    #[arg(long)]
    to: String,
    /// Seconds to keep retrying the connect to `to`
    #[arg(long, default_value_t = 20.0)]
    connect_timeout: f64,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Send(a) => send(a),
        Cmd::Recv(a) => recv(a),
        Cmd::Relay(a) => relay(a),
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn connect(addr: &str, timeout: f64) -> anyhow::Result<TcpStream> {
    let deadline = Instant::now() + secs(timeout);
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e).with_context(|| format!("cannot connect to {addr}")),
        }
    }
}

/// Lines per write when sending flat out (about 64 KiB).
const FLAT_CHUNK: u64 = 256;
/// Most lines per write when paced.
const PACED_CHUNK: u64 = 1024;

struct SendResult {
    sent: u64,
    bytes: u64,
    elapsed: Duration,
}

fn send(a: SendArgs) -> anyhow::Result<()> {
    if a.connections == 0 {
        bail!("--connections must be at least 1");
    }
    let per_conn = a.rate / a.connections as f64;
    let mut handles = Vec::new();
    for c in 0..a.connections {
        let stream = connect(&a.to, a.connect_timeout)?;
        let maker = LineMaker::new(&format!("loadgen-{}", c + 1), 4242, &a.types, a.line_bytes);
        let duration = secs(a.duration);
        handles.push(thread::spawn(move || {
            send_one(stream, maker, per_conn, duration)
        }));
    }
    let mut sent = 0;
    let mut bytes = 0;
    let mut elapsed = Duration::ZERO;
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => {
                sent += r.sent;
                bytes += r.bytes;
                elapsed = elapsed.max(r.elapsed);
            }
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("a sender thread panicked"),
        }
    }
    let s = elapsed.as_secs_f64().max(1e-9);
    println!(
        "SEND sent={sent} secs={s:.3} eps={:.0} avg_line_bytes={:.1} cpu_secs={:.2}",
        sent as f64 / s,
        bytes as f64 / (sent.max(1) as f64),
        cpu_secs().unwrap_or(0.0)
    );
    Ok(())
}

fn send_one(
    mut stream: TcpStream,
    mut maker: LineMaker,
    rate: f64,
    duration: Duration,
) -> anyhow::Result<SendResult> {
    let mut buf = Vec::with_capacity(300 * PACED_CHUNK as usize);
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut bytes: u64 = 0;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        let n = if rate > 0.0 {
            let due = (rate * elapsed.as_secs_f64()) as u64;
            if due <= sent {
                // Sleeping, not spinning: the machine has two cores and
                // DAB needs them.
                thread::sleep(Duration::from_micros(100));
                continue;
            }
            (due - sent).min(PACED_CHUNK)
        } else {
            FLAT_CHUNK
        };
        buf.clear();
        let ts = now_ns();
        for _ in 0..n {
            maker.write_line(ts, &mut buf);
        }
        if let Err(e) = stream.write_all(&buf) {
            bail!("write failed after {sent} events: {e}");
        }
        sent += n;
        bytes += buf.len() as u64;
    }
    let elapsed = start.elapsed();
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    Ok(SendResult {
        sent,
        bytes,
        elapsed,
    })
}

struct Shared {
    events: AtomicU64,
    bytes: AtomicU64,
    /// Lines without a readable timestamp.
    bad: AtomicU64,
    recording: AtomicBool,
    latency_ns: Histogram,
}

fn recv(a: RecvArgs) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(&a.listen).with_context(|| format!("cannot listen on {}", a.listen))?;
    let shared = Arc::new(Shared {
        events: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        bad: AtomicU64::new(0),
        recording: AtomicBool::new(false),
        latency_ns: Histogram::default(),
    });
    {
        let shared = Arc::clone(&shared);
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let shared = Arc::clone(&shared);
                thread::spawn(move || read_lines(stream, &shared));
            }
        });
    }
    let begin = Instant::now();
    let hard_stop = begin + secs(a.max_secs);
    let poll = Duration::from_millis(10);

    // The first event.
    let first_by = begin + secs(a.start_timeout);
    while shared.events.load(Ordering::Relaxed) == 0 {
        if Instant::now() >= first_by.min(hard_stop) {
            println!("RECV error=no_events_within_{}s", a.start_timeout);
            std::process::exit(2);
        }
        thread::sleep(poll);
    }
    thread::sleep(secs(a.warmup));

    let mut rates = Vec::new();
    shared.recording.store(true, Ordering::Relaxed);
    for w in 0..a.windows {
        let c0 = shared.events.load(Ordering::Relaxed);
        let t0 = Instant::now();
        thread::sleep(secs(a.window));
        let c1 = shared.events.load(Ordering::Relaxed);
        let dt = t0.elapsed().as_secs_f64();
        let eps = (c1 - c0) as f64 / dt;
        println!("WINDOW n={} eps={eps:.0} secs={dt:.3}", w + 1);
        rates.push(eps);
        if Instant::now() >= hard_stop {
            break;
        }
    }
    shared.recording.store(false, Ordering::Relaxed);
    let lat = shared.latency_ns.summary();

    // Drain: count what is still coming, so totals can be compared.
    let mut last = shared.events.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while Instant::now() < hard_stop {
        thread::sleep(Duration::from_millis(100));
        let now = shared.events.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= secs(a.idle_exit) {
            break;
        }
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    let list: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
    println!(
        "RECV windows_eps={} median_eps={:.0} lat_samples={} p50_us={:.1} p90_us={:.1} p99_us={:.1} p999_us={:.1} max_us={:.1} total={} total_bytes={} bad_lines={} cpu_secs={:.2}",
        list.join(","),
        median(&rates).unwrap_or(0.0),
        lat.count,
        us(lat.p50),
        us(lat.p90),
        us(lat.p99),
        us(lat.p999),
        us(lat.max),
        shared.events.load(Ordering::Relaxed),
        shared.bytes.load(Ordering::Relaxed),
        shared.bad.load(Ordering::Relaxed),
        cpu_secs().unwrap_or(0.0),
    );
    // The reader threads may still sit in blocking reads: end the process.
    std::process::exit(0);
}

/// Reads one connection until it closes, counting whole lines and, while
/// recording, their latency.
fn read_lines(mut stream: TcpStream, shared: &Shared) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            // A line longer than the buffer: make room.
            buf.resize(buf.len() * 2, 0);
        }
        let n = match stream.read(&mut buf[filled..]) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        filled += n;
        let recording = shared.recording.load(Ordering::Relaxed);
        let now = if recording { now_ns() } else { 0 };
        let mut start = 0;
        let mut lines = 0u64;
        let mut bad = 0u64;
        for nl in memchr::memchr_iter(b'\n', &buf[..filled]) {
            let line = &buf[start..nl];
            start = nl + 1;
            if line.is_empty() {
                continue;
            }
            lines += 1;
            if recording {
                match dab_bench::timestamp_of(line) {
                    Some(ts) => shared.latency_ns.record(now.saturating_sub(ts)),
                    None => bad += 1,
                }
            }
        }
        shared.events.fetch_add(lines, Ordering::Relaxed);
        shared.bytes.fetch_add(start as u64, Ordering::Relaxed);
        if bad > 0 {
            shared.bad.fetch_add(bad, Ordering::Relaxed);
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
    }
}

fn relay(a: RelayArgs) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(&a.listen).with_context(|| format!("cannot listen on {}", a.listen))?;
    let mut out = connect(&a.to, a.connect_timeout)?;
    let mut relayed: u64 = 0;
    // One connection at a time; ends when the first input closes.
    let (mut input, _) = listener.accept()?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        };
        filled += n;
        let Some(last_nl) = memchr::memrchr(b'\n', &buf[..filled]) else {
            continue;
        };
        let whole = last_nl + 1;
        relayed += memchr::memchr_iter(b'\n', &buf[..whole]).count() as u64;
        out.write_all(&buf[..whole])?;
        buf.copy_within(whole..filled, 0);
        filled -= whole;
    }
    let _ = out.shutdown(Shutdown::Write);
    println!(
        "RELAY relayed={relayed} cpu_secs={:.2}",
        cpu_secs().unwrap_or(0.0)
    );
    Ok(())
}
