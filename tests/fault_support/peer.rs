//! A sink's peer for the fault matrix: a small HTTP/1.1 server in plain
//! threads on an address the test chooses, so it can be stopped (the port
//! then refuses connections, as a dead peer's does) and started again on
//! the same port. A handler decides each answer from the offsets of the
//! batch; the offsets of every batch answered 200 are recorded, since
//! those are the events the peer has taken for good.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Decides one answer: the status, and how long to hold it first.
pub type Handler = dyn Fn(&[u64]) -> (u16, Duration) + Send + Sync;

/// What the peer has seen, shared across its restarts.
#[derive(Debug, Default)]
pub struct Seen {
    /// Offsets of every event of every batch answered 200, in order
    /// (an offset twice is a duplicate delivery).
    pub delivered: Vec<u64>,
    /// Requests answered, by status.
    pub answers: std::collections::BTreeMap<u16, u64>,
}

#[derive(Debug)]
pub struct Peer {
    addr: String,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

/// Read timeout of connection threads, so they notice `stop` promptly.
const TICK: Duration = Duration::from_millis(50);

impl Peer {
    /// Serves on `addr` (`127.0.0.1:0` for any free port), recording into
    /// `seen`.
    pub fn start(addr: &str, seen: &Arc<Mutex<Seen>>, handler: &Arc<Handler>) -> Peer {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind peer {addr}: {e}"));
        let addr = listener.local_addr().expect("peer addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (stop, seen, handler, conns) = (
                Arc::clone(&stop),
                Arc::clone(seen),
                Arc::clone(handler),
                Arc::clone(&conns),
            );
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (stop, seen, handler) =
                        (Arc::clone(&stop), Arc::clone(&seen), Arc::clone(&handler));
                    let t = std::thread::spawn(move || serve(conn, &stop, &seen, &*handler));
                    conns.lock().expect("peer conns").push(t);
                }
            })
        };
        Peer {
            addr,
            stop,
            accept: Some(accept),
            conns,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for Peer {
    /// Stops listening and closes every connection, as a killed peer would
    /// (the port refuses connections from here on).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees `stop` and drops the listener.
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for t in self.conns.lock().expect("peer conns").drain(..) {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, stop: &AtomicBool, seen: &Mutex<Seen>, handler: &Handler) {
    if conn.set_read_timeout(Some(TICK)).is_err() {
        return;
    }
    let _ = conn.set_nodelay(true);
    let mut buf = Vec::new();
    while let Ok(Some(body)) = read_request(&mut conn, &mut buf, stop) {
        let offsets = offsets(&body);
        let (status, hold) = handler(&offsets);
        // Held in slices, so a stop during a long hold ends it.
        let mut left = hold;
        while !left.is_zero() {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let step = left.min(TICK);
            std::thread::sleep(step);
            left -= step;
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let reply_body = format!("{{\"status\":{status}}}");
        let reply = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply_body}",
            if status == 200 { "OK" } else { "Refused" },
            reply_body.len()
        );
        {
            // Recorded before the answer leaves, so nothing the sink
            // counts as delivered is missing from `seen`.
            let mut s = seen.lock().expect("peer seen");
            *s.answers.entry(status).or_default() += 1;
            if status == 200 {
                s.delivered.extend_from_slice(&offsets);
            }
        }
        if conn.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// The `offset` of every event of a JSON-array body.
fn offsets(body: &[u8]) -> Vec<u64> {
    let events: Vec<serde_json::Value> = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "peer body is not a JSON array ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    events
        .iter()
        .map(|e| e["offset"].as_u64().expect("event offset"))
        .collect()
}

/// The next request's body; `None` at the end of the connection or on
/// `stop`.
fn read_request(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    stop: &AtomicBool,
) -> io::Result<Option<Vec<u8>>> {
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(conn, buf, &mut chunk, stop)? {
            return Ok(None);
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = head
        .lines()
        .skip(1)
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| io::Error::other(format!("no Content-Length in {head:?}")))?;
    while buf.len() < head_end + length {
        if !fill(conn, buf, &mut chunk, stop)? {
            return Ok(None);
        }
    }
    let body = buf[head_end..head_end + length].to_vec();
    buf.drain(..head_end + length);
    Ok(Some(body))
}

fn fill(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
    stop: &AtomicBool,
) -> io::Result<bool> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        match conn.read(chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(true);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
    }
}
