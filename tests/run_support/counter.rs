//! A sink's peer that only counts: a TCP listener that counts the lines
//! every connection sends (a `tcp` sink with NDJSON framing writes one
//! event a line), for tests whose events are too many to keep.

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct LineCounter {
    addr: String,
    lines: Arc<AtomicU64>,
}

impl LineCounter {
    /// Listens on a free loopback port; each connection gets a thread that
    /// reads until the peer closes.
    pub fn start() -> LineCounter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind line counter");
        let addr = listener.local_addr().expect("counter addr").to_string();
        let lines = Arc::new(AtomicU64::new(0));
        let total = Arc::clone(&lines);
        // The listener thread ends with the test process.
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let total = Arc::clone(&total);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 256 * 1024];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let seen = buf[..n].iter().filter(|b| **b == b'\n').count();
                        total.fetch_add(seen as u64, Ordering::SeqCst);
                    }
                });
            }
        });
        LineCounter { addr, lines }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Lines received so far, over every connection.
    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::SeqCst)
    }
}
