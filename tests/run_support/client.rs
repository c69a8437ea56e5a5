//! The test's side of dab's sockets: free ports, waiting for a listener,
//! a raw HTTP/1.1 client over `TcpStream` (one request per connection),
//! and `/metrics` scraping.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::poll;

/// A port nobody listens on right now (bound to port 0, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind port 0")
        .port()
}

/// `127.0.0.1:PORT` on a free port.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_tcp(addr: &str, timeout: Duration, describe: impl Fn() -> String) {
    let sock = addr.parse().expect("socket address");
    poll(
        timeout,
        &format!("a listener on {addr}"),
        || TcpStream::connect_timeout(&sock, Duration::from_millis(200)).ok(),
        describe,
    );
}

/// Waits until an HTTP server on `addr` answers `GET path` with 200.
pub fn wait_http_ok(addr: &str, path: &str, timeout: Duration, describe: impl Fn() -> String) {
    poll(
        timeout,
        &format!("200 from GET http://{addr}{path}"),
        || {
            request(addr, "GET", path, b"", Duration::from_secs(2))
                .ok()
                .filter(|r| r.status == 200)
        },
        describe,
    );
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
    /// When the whole answer had arrived.
    pub at: Instant,
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); the
/// answer is read by its `Content-Length`. `timeout` bounds each read and
/// write.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    let sock = addr
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{e}")))?;
    let mut s = TcpStream::connect_timeout(&sock, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    read_response(&mut s)
}

fn read_response(s: &mut TcpStream) -> io::Result<Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::other("answer head too long"));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed inside the answer head: {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
    let length: Option<usize> = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    });
    let mut body = buf[head_end..].to_vec();
    match length {
        Some(len) => {
            while body.len() < len {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside the answer body",
                    ));
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        // No length: the body ends with the connection.
        None => {
            s.read_to_end(&mut body)?;
        }
    }
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
    })
}

/// `POST /v1/events` with `body`, waiting up to `timeout` for the answer.
pub fn post_events(addr: &str, body: &str, timeout: Duration) -> Response {
    request(addr, "POST", "/v1/events", body.as_bytes(), timeout)
        .unwrap_or_else(|e| panic!("POST http://{addr}/v1/events: {e}"))
}

/// The Prometheus text of `GET /metrics`.
pub fn scrape(addr: &str) -> String {
    let r = request(addr, "GET", "/metrics", b"", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("GET http://{addr}/metrics: {e}"));
    assert_eq!(r.status, 200, "GET /metrics: {}", r.body);
    r.body
}

/// The value of one series, written exactly as dab renders it
/// (`dab_source_events_total{source="TcpIn"}`).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Like [`metric`], but the series must be there.
pub fn must_metric(text: &str, series: &str) -> f64 {
    metric(text, series).unwrap_or_else(|| panic!("no series {series} in /metrics:\n{text}"))
}

/// Scrapes `addr` until every `(series, value)` holds; returns the last
/// scrape. Panics with the differences after `timeout`.
pub fn wait_metrics(addr: &str, want: &[(&str, f64)], timeout: Duration) -> String {
    let last = std::cell::RefCell::new(String::new());
    poll(
        timeout,
        &format!("metrics {want:?}"),
        || {
            let text = scrape(addr);
            let ok = want.iter().all(|(s, v)| metric(&text, s) == Some(*v));
            *last.borrow_mut() = text.clone();
            ok.then_some(text)
        },
        || {
            let text = last.borrow();
            want.iter()
                .map(|(s, v)| format!("{s} = {:?} (want {v})", metric(&text, s)))
                .collect::<Vec<_>>()
                .join(", ")
        },
    )
}
