//! A TCP producer thread writing NDJSON lines, flat out or at a steady
//! pace, that counts the events whose last byte went into the socket and
//! stops on request, on a write error, or at a time limit.

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Chunks of this many lines, back to back.
    FlatOut { chunk: u64 },
    /// `chunk` lines every `every`.
    Steady { chunk: u64, every: Duration },
}

#[derive(Debug)]
pub struct Producer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    handle: Option<JoinHandle<Ended>>,
}

/// How a producer ended.
#[derive(Debug)]
pub struct Ended {
    /// Events written whole.
    pub written: u64,
    /// The connection, still open (dropping it closes it).
    pub stream: Option<TcpStream>,
    /// The write error that ended it, if one did.
    pub error: Option<io::Error>,
}

impl Producer {
    /// Connects to `addr` and writes `line(0)`, `line(1)`, ... up to
    /// `total` lines (each without its newline), for at most `limit`.
    pub fn start(
        addr: &str,
        total: u64,
        pace: Pace,
        limit: Duration,
        line: impl Fn(u64) -> String + Send + 'static,
    ) -> Producer {
        let stream = TcpStream::connect(addr).expect("producer connect");
        stream
            .set_write_timeout(Some(Duration::from_millis(50)))
            .expect("write timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let handle = {
            let (stop, written) = (Arc::clone(&stop), Arc::clone(&written));
            std::thread::spawn(move || run(stream, total, pace, limit, &line, &stop, &written))
        };
        Producer {
            stop,
            written,
            handle: Some(handle),
        }
    }

    /// Events written whole so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Whether the thread has ended (all written, an error, or the limit).
    pub fn finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops writing (a line may be left half written) and returns how it
    /// ended.
    pub fn stop(mut self) -> Ended {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .expect("producer thread")
            .join()
            .expect("producer thread panicked")
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(
    mut s: TcpStream,
    total: u64,
    pace: Pace,
    limit: Duration,
    line: &dyn Fn(u64) -> String,
    stop: &AtomicBool,
    written: &AtomicU64,
) -> Ended {
    let t0 = Instant::now();
    let (chunk, every) = match pace {
        Pace::FlatOut { chunk } => (chunk, None),
        Pace::Steady { chunk, every } => (chunk, Some(every)),
    };
    let done = || stop.load(Ordering::SeqCst) || t0.elapsed() >= limit;
    let mut next = 0u64;
    let mut ticks = 0u32;
    let mut buf = Vec::new();
    let mut ends = Vec::new();
    while next < total && !done() {
        if let Some(every) = every {
            // Sleep to the next tick of a fixed schedule, so a slow write
            // does not lower the pace for good.
            let due = every * ticks;
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
            ticks += 1;
        }
        buf.clear();
        ends.clear();
        let first = next;
        for i in first..(first + chunk).min(total) {
            buf.extend_from_slice(line(i).as_bytes());
            buf.push(b'\n');
            ends.push(buf.len());
        }
        let mut pos = 0;
        while pos < buf.len() {
            match s.write(&buf[pos..]) {
                Ok(0) => return ended(written, s, Some(io::Error::from(io::ErrorKind::WriteZero))),
                Ok(n) => {
                    pos += n;
                    let whole = ends.iter().take_while(|e| **e <= pos).count() as u64;
                    written.store(first + whole, Ordering::SeqCst);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if done() {
                        return ended(written, s, None);
                    }
                }
                Err(e) => return ended(written, s, Some(e)),
            }
        }
        next = first + ends.len() as u64;
    }
    ended(written, s, None)
}

fn ended(written: &AtomicU64, s: TcpStream, error: Option<io::Error>) -> Ended {
    Ended {
        written: written.load(Ordering::SeqCst),
        stream: Some(s),
        error,
    }
}
