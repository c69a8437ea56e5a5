//! `dab inspect`: the reliability (REP) score table (SPEC section 4), from
//! NDJSON files offline or from a running `dab run --metrics ADDR`.
//!
//! Offline, every decodable line counts as delivered; a line that is not an
//! event is reported on stderr as `FILE:LINE: reason` and skipped. Fields a
//! line leaves out are filled as a `dab run` source named after the file
//! would fill them (`codec::Filler`), and events without an offset are
//! counted on stderr, since their numbering cannot show gaps.
//!
//! Online, `GET http://ADDR/reliability` answers `Report::to_json()`; a
//! small blocking HTTP/1.1 client on `std::net` fetches it, with timeouts.

use std::fs::File;
use std::io::{ErrorKind, Read, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use dab_api::Event;
use dab_connectors::codec::{json, Filler};
use dab_connectors::framing::{FrameError, LineFramer};
use dab_runtime::reliability::{KeyScore, Limits, Report, Score, Tracker, DEFAULT_MAX_KEYS};
use serde_json::Value;

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
/// The most bytes of answer read from the admin endpoint.
const MAX_RESPONSE: u64 = 64 << 20;

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
    let host = addr
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let addrs: Vec<SocketAddr> = host
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr} (expected HOST:PORT)"))?
        .collect();
    let mut last_err = None;
    let mut stream = None;
    for sa in &addrs {
        match TcpStream::connect_timeout(sa, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let Some(mut s) = stream else {
        let why = last_err.map_or_else(|| "no address".to_owned(), |e| e.to_string());
        bail!("cannot connect to {addr}: {why} (is `dab run --metrics {addr}` running?)");
    };
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let request = format!(
        "GET /reliability HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes())
        .with_context(|| format!("cannot send the request to {addr}"))?;
    let mut raw = Vec::new();
    (&mut s)
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .with_context(|| format!("cannot read the answer of {addr}"))?;
    let body =
        http_body(&raw).with_context(|| format!("bad answer from http://{host}/reliability"))?;
    let v: Value = serde_json::from_slice(&body)
        .with_context(|| format!("http://{host}/reliability did not answer JSON"))?;
    report_from_json(&v)
        .with_context(|| format!("http://{host}/reliability did not answer a reliability report"))
}

/// The body of a complete HTTP/1.1 response with status 200.
fn http_body(raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("the response ended inside its head ({} bytes)", raw.len());
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let rest = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        bail!("status `{status}`");
    }
    let mut length = None;
    let mut chunked = false;
    for h in lines {
        let Some((k, v)) = h.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().context("bad content-length")?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    if chunked {
        return dechunk(rest);
    }
    match length {
        Some(n) if rest.len() < n => bail!("the body ended after {} of {n} bytes", rest.len()),
        Some(n) => Ok(rest[..n].to_vec()),
        None => Ok(rest.to_vec()),
    }
}

fn dechunk(mut rest: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            bail!("a chunk size line is cut short");
        };
        let size_line = String::from_utf8_lossy(&rest[..eol]);
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size `{size_hex}`"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(body);
        }
        if rest.len() < size {
            bail!("a chunk is cut short");
        }
        body.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or(&[]);
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

    #[test]
    fn bodies_by_length_and_by_chunks() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}extra";
        assert_eq!(http_body(raw).expect("body"), b"{}");
        let raw = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\n{\"a\r\n4;x=y\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(http_body(raw).expect("body"), b"{\"a\":1}");
        let raw = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            http_body(raw).expect_err("404").to_string(),
            "status `HTTP/1.1 404 Not Found`"
        );
        let raw = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}";
        assert!(http_body(raw).is_err());
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
