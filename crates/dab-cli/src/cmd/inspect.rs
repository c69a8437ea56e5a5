//! `dab inspect`: the reliability (REP) score table (SPEC section 4), from
//! NDJSON files offline or from a running `dab run --metrics ADDR`.
//!
//! Offline, every decodable line counts as delivered; a line that is not an
//! event is reported on stderr as `FILE:LINE: reason` and skipped. Fields a
//! line leaves out are filled as a `dab run` source named after the file
//! would fill them (`codec::Filler`), and events without an offset are
//! counted on stderr, since their numbering cannot show gaps.
//!
//! Online, `GET http://ADDR/reliability` answers `Report::to_json()`;
//! hyper's HTTP/1.1 client fetches it on a one-off current-thread runtime,
//! with a timeout on the connect and on every wait for the peer.

use std::fs::File;
use std::io::{ErrorKind, Read, Write as _};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use dab_api::Event;
use dab_connectors::codec::{json, Filler};
use dab_connectors::framing::{FrameError, LineFramer};
use dab_runtime::reliability::{KeyScore, Limits, Report, Score, Tracker, DEFAULT_MAX_KEYS};
use http_body_util::{BodyExt as _, Empty};
use hyper::ext::ReasonPhrase;
use hyper::header::{ACCEPT, CONNECTION, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::args::{Format, InspectArgs};

/// The longest line read, as for the `Stdin` source.
const MAX_LINE: usize = 1 << 20;
/// Events handed to the tracker at once.
const BATCH: usize = 1024;
/// Offline, reordering across a whole file is common (files merged from
/// several writers): a wider window than at run time (128 KiB per key at
/// most).
const OFFLINE_WINDOW: u64 = 1 << 20;
/// Bad lines reported one by one; the rest are only counted.
const MAX_REPORTED: u64 = 100;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes of body read from the admin endpoint.
const MAX_RESPONSE: usize = 64 << 20;

pub fn run(a: InspectArgs) -> anyhow::Result<ExitCode> {
    let report = match &a.url {
        Some(addr) => fetch(addr)?,
        None => offline(&a.files)?,
    };
    let text = match a.format {
        Format::Human => report.render_table(),
        Format::Json => report.to_json() + "\n",
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// What went wrong reading the files, for stderr.
#[derive(Debug, Default)]
struct Problems {
    bad_lines: u64,
    no_offset: u64,
}

impl Problems {
    fn bad_line(&mut self, path: &Path, line: u64, reason: &dyn std::fmt::Display) {
        self.bad_lines += 1;
        if self.bad_lines <= MAX_REPORTED {
            let _ = writeln!(
                std::io::stderr().lock(),
                "dab: {}:{line}: {reason}",
                path.display()
            );
        }
    }
}

fn offline(files: &[std::path::PathBuf]) -> anyhow::Result<Report> {
    let tracker = Tracker::new(Limits {
        max_keys: DEFAULT_MAX_KEYS,
        window: OFFLINE_WINDOW,
    });
    let mut problems = Problems::default();
    for path in files {
        read_file(path, &tracker, &mut problems)?;
    }
    let mut err = std::io::stderr().lock();
    if problems.bad_lines > 0 {
        let more = problems.bad_lines.saturating_sub(MAX_REPORTED);
        if more > 0 {
            writeln!(err, "dab: ... and {more} more bad lines")?;
        }
        let what = if problems.bad_lines == 1 {
            "line that is not an event"
        } else {
            "lines that are not events"
        };
        writeln!(err, "dab: skipped {} {what}", problems.bad_lines)?;
    }
    if problems.no_offset > 0 {
        let what = if problems.no_offset == 1 {
            "event had no offset and was"
        } else {
            "events had no offset and were"
        };
        writeln!(
            err,
            "dab: {} {what} numbered in file order, which cannot show gaps",
            problems.no_offset
        )?;
    }
    Ok(tracker.snapshot())
}

/// Feeds one NDJSON file to the tracker. The framer is fed one line at a
/// time (a line is cut at each `\n` here), so each message it hands out
/// belongs to a known line number; blank lines are skipped by the framer.
fn read_file(path: &Path, tracker: &Tracker, problems: &mut Problems) -> anyhow::Result<()> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let mut framer = LineFramer::new(MAX_LINE);
    let mut filler = Filler::new(&name);
    let mut buf = vec![0u8; 64 * 1024];
    let mut frames = Vec::new();
    let mut batch: Vec<Event> = Vec::with_capacity(BATCH);
    let mut line: u64 = 1;
    let mut take = |frames: &mut Vec<Result<_, FrameError>>, line: u64, batch: &mut Vec<Event>| {
        for frame in frames.drain(..) {
            let decoded = match frame {
                Ok(bytes) => json::decode(bytes).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match decoded {
                Ok((mut ev, present)) => {
                    if !present.offset {
                        problems.no_offset += 1;
                    }
                    filler.fill(&mut ev, present);
                    batch.push(ev);
                }
                Err(reason) => problems.bad_line(path, line, &reason),
            }
        }
    };
    loop {
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        if n == 0 {
            framer.finish(&mut frames);
            take(&mut frames, line, &mut batch);
            break;
        }
        let chunk = &buf[..n];
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', chunk) {
            framer.push(&chunk[start..=nl], &mut frames);
            take(&mut frames, line, &mut batch);
            line += 1;
            start = nl + 1;
        }
        if start < n {
            framer.push(&chunk[start..], &mut frames);
            take(&mut frames, line, &mut batch);
        }
        if batch.len() >= BATCH {
            tracker.delivered(&batch);
            batch.clear();
        }
    }
    tracker.delivered(&batch);
    Ok(())
}

/// `GET http://ADDR/reliability`, parsed back into a report.
fn fetch(addr: &str) -> anyhow::Result<Report> {
    let (url, body) = fetch_body(addr)?;
    let v: Value =
        serde_json::from_slice(&body).with_context(|| format!("{url} did not answer JSON"))?;
    report_from_json(&v).with_context(|| format!("{url} did not answer a reliability report"))
}

/// The URL asked and the body of its 200 answer.
fn fetch_body(addr: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let host = addr
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let addrs: Vec<SocketAddr> = host
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr} (expected HOST:PORT)"))?
        .collect();
    let url = format!("http://{host}/reliability");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the HTTP client")?;
    let body = rt.block_on(get(addr, host, &url, &addrs))?;
    Ok((url, body))
}

/// Connects to the first of `addrs` that answers and sends one GET over
/// hyper's HTTP/1.1 client; every step has a timeout.
async fn get(addr: &str, host: &str, url: &str, addrs: &[SocketAddr]) -> anyhow::Result<Vec<u8>> {
    let mut last_err = None;
    let mut stream = None;
    for sa in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(sa)).await {
            Ok(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => last_err = Some(e),
            Err(_) => {
                last_err = Some(std::io::Error::new(
                    ErrorKind::TimedOut,
                    "connection timed out",
                ))
            }
        }
    }
    let Some(stream) = stream else {
        let why = last_err.map_or_else(|| "no address".to_owned(), |e| e.to_string());
        bail!("cannot connect to {addr}: {why} (is `dab run --metrics {addr}` running?)");
    };
    let sending = || format!("cannot send the request to {addr}");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .with_context(sending)?;
    // Drives the connection; it ends with the answer (`connection: close`).
    let driver = tokio::spawn(conn);
    let request = Request::get("/reliability")
        .header(HOST, host)
        .header(ACCEPT, "application/json")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .with_context(sending)?;
    let answer = within(sender.send_request(request))
        .await
        .with_context(sending)?
        .map_err(|e| hyper_error(e, addr, url))?;
    let status = answer.status();
    if status != StatusCode::OK {
        let reason = answer
            .extensions()
            .get::<ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned())
            .or_else(|| status.canonical_reason().map(str::to_owned))
            .unwrap_or_default();
        let line = format!("{:?} {} {reason}", answer.version(), status.as_u16());
        return Err(anyhow!("status `{}`", line.trim_end()))
            .with_context(|| format!("bad answer from {url}"));
    }
    let mut body = answer.into_body();
    let mut out = Vec::new();
    while let Some(frame) = within(body.frame())
        .await
        .with_context(|| format!("cannot read the answer of {addr}"))?
    {
        let frame = frame.map_err(|e| hyper_error(e, addr, url))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_RESPONSE {
                return Err(anyhow!("the answer is over {MAX_RESPONSE} bytes"))
                    .with_context(|| format!("bad answer from {url}"));
            }
            out.extend_from_slice(&data);
        }
    }
    driver.abort();
    Ok(out)
}

/// `f`, or an error after `IO_TIMEOUT` without progress.
async fn within<T>(f: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(IO_TIMEOUT, f)
        .await
        .map_err(|_| anyhow!("no answer within {} s", IO_TIMEOUT.as_secs()))
}

/// An answer cut short or not HTTP is a bad answer from `url`; anything
/// else went wrong on the connection to `addr`.
fn hyper_error(e: hyper::Error, addr: &str, url: &str) -> anyhow::Error {
    // A body cut short is an `UnexpectedEof` under hyper's error.
    let body_cut_short = std::error::Error::source(&e)
        .and_then(|c| c.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == ErrorKind::UnexpectedEof);
    if e.is_parse() || e.is_incomplete_message() || body_cut_short {
        anyhow::Error::new(e).context(format!("bad answer from {url}"))
    } else {
        anyhow::Error::new(e).context(format!("cannot read the answer of {addr}"))
    }
}

fn report_from_json(v: &Value) -> anyhow::Result<Report> {
    let keys = v
        .get("keys")
        .and_then(Value::as_array)
        .context("no `keys` array")?
        .iter()
        .map(|k| {
            Ok(KeyScore {
                host: str_field(k, "host")?,
                pid: u32::try_from(u64_field(k, "pid")?).context("`pid` is over u32")?,
                ty: str_field(k, "type")?,
                score: score_from_json(k)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let overall = score_from_json(v.get("overall").context("no `overall` object")?)?;
    Ok(Report {
        keys,
        overall,
        keys_evicted: v.get("keys_evicted").and_then(Value::as_u64).unwrap_or(0),
    })
}

fn score_from_json(v: &Value) -> anyhow::Result<Score> {
    Ok(Score {
        first: u64_field(v, "first")?,
        last: u64_field(v, "last")?,
        expected: u64_field(v, "expected")?,
        seen: u64_field(v, "seen")?,
        dropped: u64_field(v, "dropped")?,
        missing: u64_field(v, "missing")?,
        duplicates: u64_field(v, "duplicates")?,
        // Added after the others; an older server may not send it.
        late: v.get("late").and_then(Value::as_u64).unwrap_or(0),
        score: v
            .get("score")
            .and_then(Value::as_f64)
            .context("no number `score`")?,
    })
}

fn u64_field(v: &Value, name: &str) -> anyhow::Result<u64> {
    v.get(name)
        .and_then(Value::as_u64)
        .with_context(|| format!("no whole number `{name}`"))
}

fn str_field(v: &Value, name: &str) -> anyhow::Result<String> {
    v.get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("no string `{name}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers one connection on loopback with `raw`, then closes it.
    fn answer_once(raw: &'static [u8]) -> (String, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(raw);
        });
        (addr, server)
    }

    fn body_of(raw: &'static [u8]) -> anyhow::Result<Vec<u8>> {
        let (addr, server) = answer_once(raw);
        let got = fetch_body(&addr).map(|(_, body)| body);
        server.join().expect("server");
        got
    }

    #[test]
    fn bodies_by_length_and_by_chunks() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}extra";
        assert_eq!(body_of(raw).expect("body"), b"{}");
        let raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(body_of(raw).expect("body"), b"{\"a\":1}");
        let raw = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        let err = body_of(raw).expect_err("404");
        assert!(err
            .to_string()
            .starts_with("bad answer from http://127.0.0.1:"));
        assert!(err.to_string().ends_with("/reliability"), "{err}");
        assert_eq!(
            err.root_cause().to_string(),
            "status `HTTP/1.1 404 Not Found`"
        );
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}";
        let err = body_of(raw).expect_err("cut short");
        assert!(err.to_string().starts_with("bad answer from"), "{err:#}");
        let raw = b"SSH-2.0-OpenSSH\r\n\r\n";
        let err = body_of(raw).expect_err("not HTTP");
        assert!(err.to_string().starts_with("bad answer from"), "{err:#}");
    }

    #[test]
    fn a_report_survives_its_json() {
        let t = Tracker::new(Limits::default());
        let ev = |host: &str, o| Event {
            host: dab_api::Text::from(host),
            ty: dab_api::Text::from("T\u{1}"),
            pid: 4,
            offset: o,
            ..Event::default()
        };
        t.delivered(&[ev("a\"b", 0), ev("a\"b", 3), ev("a\"b", 3), ev("z", 1)]);
        t.dropped(&[ev("z", 2)]);
        let r = t.snapshot();
        let v: Value = serde_json::from_str(&r.to_json()).expect("json");
        assert_eq!(report_from_json(&v).expect("report"), r);
    }
}
