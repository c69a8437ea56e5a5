//! A small HTTP/1.1 server in plain threads, standing in for the peer of
//! dab's `http` sink: keep-alive connections, `Content-Length` bodies, a
//! handler that decides each answer's status and how long to hold it, and
//! a log of every request with when it came and when it was answered.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the handler decides about one request.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub status: u16,
    /// How long to hold the request before answering.
    pub hold: Duration,
}

impl Answer {
    pub fn ok() -> Answer {
        Answer {
            status: 200,
            hold: Duration::ZERO,
        }
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub body: Vec<u8>,
    /// Taken just before the answer is written, so anything that follows
    /// from the answer happens after it.
    pub answered_at: Instant,
    pub status: u16,
}

impl Received {
    /// The body as a JSON array of events.
    pub fn events(&self) -> Vec<serde_json::Value> {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not a JSON array ({e}): {}",
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `offset` of every event of the body.
    pub fn offsets(&self) -> Vec<u64> {
        self.events()
            .iter()
            .map(|e| e["offset"].as_u64().expect("offset"))
            .collect()
    }
}

type Handler = dyn Fn(&str, &[u8]) -> Answer + Send + Sync;

#[derive(Debug)]
pub struct Server {
    addr: String,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Received>>>,
    accept: Option<JoinHandle<()>>,
}

/// The longest any one request may be held, so no thread outlives a test
/// by much.
const MAX_HOLD: Duration = Duration::from_secs(60);
/// Read timeout of connection threads, so they notice `stop`.
const TICK: Duration = Duration::from_millis(100);

impl Server {
    /// Starts a server on a free port of 127.0.0.1.
    pub fn start(handler: impl Fn(&str, &[u8]) -> Answer + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind test server");
        let addr = listener.local_addr().expect("local addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let accept = {
            let (served_stop, log) = (Arc::clone(&stop), Arc::clone(&log));
            accept_loop(listener, &stop, move |conn| {
                let (stop, log, handler) = (
                    Arc::clone(&served_stop),
                    Arc::clone(&log),
                    Arc::clone(&handler),
                );
                std::thread::spawn(move || serve(conn, &stop, &log, &*handler));
            })
        };
        Server {
            addr,
            stop,
            log,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Every request so far, in the order they were answered.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().expect("server log").clone()
    }

    /// The requests to `path` so far.
    pub fn received_at(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        stop_accepting(&self.stop, &self.addr, self.accept.take());
    }
}

/// Accepts connections on `listener` until `stop` is set, handing each to
/// `serve` (which starts its thread); the thread of the loop.
pub fn accept_loop(
    listener: TcpListener,
    stop: &Arc<AtomicBool>,
    serve: impl Fn(TcpStream) + Send + 'static,
) -> JoinHandle<()> {
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let Ok(conn) = conn else { continue };
            serve(conn);
        }
    })
}

/// Sets `stop` and ends the accept loop on `addr`; the listener is
/// dropped with it, so the port refuses connections from here on.
pub fn stop_accepting(stop: &AtomicBool, addr: &str, accept: Option<JoinHandle<()>>) {
    stop.store(true, Ordering::SeqCst);
    // Wake the accept loop so it sees `stop`.
    let _ = TcpStream::connect(addr);
    if let Some(t) = accept {
        let _ = t.join();
    }
}

/// The whole answer for `status`, with a small JSON body.
pub fn reply(status: u16) -> String {
    let text = if status == 200 { "OK" } else { "Error" };
    let body = format!("{{\"status\":{status}}}");
    format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn serve(mut conn: TcpStream, stop: &AtomicBool, log: &Mutex<Vec<Received>>, handler: &Handler) {
    if conn.set_read_timeout(Some(TICK)).is_err() {
        return;
    }
    let _ = conn.set_nodelay(true);
    let mut buf = Vec::new();
    while let Ok(Some((path, body))) = read_request(&mut conn, &mut buf, stop) {
        let answer = handler(&path, &body);
        std::thread::sleep(answer.hold.min(MAX_HOLD));
        let answered_at = Instant::now();
        let status = answer.status;
        let reply = reply(status);
        log.lock().expect("server log").push(Received {
            path,
            body,
            answered_at,
            status,
        });
        if conn.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// The next request's path and body; `None` at a clean end of the
/// connection or on `stop`.
pub fn read_request(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    stop: &AtomicBool,
) -> io::Result<Option<(String, Vec<u8>)>> {
    let mut chunk = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::other("request head too long"));
        }
        match fill(conn, buf, &mut chunk, stop)? {
            true => {}
            false => return Ok(None),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut length = 0usize;
    for line in head.lines().skip(1) {
        if let Some((k, v)) = line.split_once(':') {
            let k = k.trim();
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().map_err(io::Error::other)?;
            }
            assert!(
                !(k.eq_ignore_ascii_case("transfer-encoding")),
                "the test server reads Content-Length bodies only; got {head:?}"
            );
        }
    }
    while buf.len() < head_end + length {
        if !fill(conn, buf, &mut chunk, stop)? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a body",
            ));
        }
    }
    let body = buf[head_end..head_end + length].to_vec();
    buf.drain(..head_end + length);
    Ok(Some((path, body)))
}

/// Reads more into `buf`; false at end of stream or on `stop`.
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

/// A latch that holds requests until the test releases it (bounded by
/// `MAX_HOLD`).
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn release(&self) {
        let (open, cv) = &*self.0;
        *open.lock().expect("gate") = true;
        cv.notify_all();
    }

    /// Waits until released, at most `MAX_HOLD`.
    pub fn pass(&self) {
        let (open, cv) = &*self.0;
        let guard = open.lock().expect("gate");
        let _ = cv
            .wait_timeout_while(guard, MAX_HOLD, |open| !*open)
            .expect("gate");
    }
}
