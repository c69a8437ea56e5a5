//! A sink's peer for the fault matrix: a small HTTP/1.1 server in plain
//! threads on an address the test chooses, so it can be stopped (the port
//! then refuses connections, as a dead peer's does) and started again on
//! the same port. A handler decides each answer from the offsets of the
//! batch; the offsets of every batch answered 200 are recorded, since
//! those are the events the peer has taken for good.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::run_support::server::{accept_loop, read_request, reply, stop_accepting};

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
            let (served_stop, conns) = (Arc::clone(&stop), Arc::clone(&conns));
            let (seen, handler) = (Arc::clone(seen), Arc::clone(handler));
            accept_loop(listener, &stop, move |conn| {
                let (stop, seen, handler) = (
                    Arc::clone(&served_stop),
                    Arc::clone(&seen),
                    Arc::clone(&handler),
                );
                let t = std::thread::spawn(move || serve(conn, &stop, &seen, &*handler));
                // Joined on drop: a stopped peer leaves no thread serving.
                conns.lock().expect("peer conns").push(t);
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
        stop_accepting(&self.stop, &self.addr, self.accept.take());
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
    while let Ok(Some((_, body))) = read_request(&mut conn, &mut buf, stop) {
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
        {
            // Recorded before the answer leaves, so nothing the sink
            // counts as delivered is missing from `seen`.
            let mut s = seen.lock().expect("peer seen");
            *s.answers.entry(status).or_default() += 1;
            if status == 200 {
                s.delivered.extend_from_slice(&offsets);
            }
        }
        if conn.write_all(reply(status).as_bytes()).is_err() {
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
