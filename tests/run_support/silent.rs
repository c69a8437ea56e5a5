//! A sink's peer that never answers: it accepts connections and reads
//! every byte sent, but writes nothing back, so an `http` sink's request
//! hangs until its timeout or a forced stop. Counts the request heads it
//! saw, so a test knows when a request is in flight.

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug)]
pub struct Silent {
    addr: String,
    requests: Arc<AtomicU64>,
}

impl Silent {
    /// Listens on a free port of 127.0.0.1. The accept thread lives as
    /// long as the test process; connection threads end when the peer
    /// (dab) closes its side.
    pub fn start() -> Silent {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind silent peer");
        let addr = listener.local_addr().expect("local addr").to_string();
        let requests = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&requests);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64 * 1024];
                    let mut tail: Vec<u8> = Vec::new();
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        // Count request lines, also one split across reads.
                        tail.extend_from_slice(&buf[..n]);
                        let heads = tail.windows(6).filter(|w| w == b"POST /").count();
                        seen.fetch_add(heads as u64, Ordering::SeqCst);
                        let keep = tail.len().saturating_sub(5);
                        tail.drain(..keep);
                    }
                });
            }
        });
        Silent { addr, requests }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Request heads received so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}
