//! The admin endpoint of `dab run --metrics ADDR`: `GET /metrics`
//! (Prometheus text), `/healthz` (alive), `/readyz` (200, or 503 with a
//! line per reason: a source not serving, a task died, a circuit breaker
//! not closed, draining; `Running::readiness`) and `/reliability` (the REP report `dab inspect --url` reads). GET-only and tiny, so a hand-written HTTP/1.1 responder does the
//! job without a web framework in the binary's hot dependencies.

use std::sync::Arc;
use std::time::Duration;

use dab_runtime::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub async fn serve(listener: TcpListener, running: Arc<Running>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let running = running.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &running)).await;
        });
    }
}

async fn answer(mut s: TcpStream, running: &Running) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Read the request head only; GET has no body we care about.
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4",
            running.render_metrics(),
        ),
        ("GET", "/reliability") => match &running.reliability {
            Some(t) => ("200 OK", "application/json", t.snapshot().to_json()),
            None => (
                "404 Not Found",
                "text/plain",
                "reliability tracking is off; start dab run with --reliability\n".to_owned(),
            ),
        },
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET", "/readyz") => {
            let r = running.readiness();
            if r.is_ready() {
                ("200 OK", "text/plain", "ready\n".to_owned())
            } else {
                (
                    "503 Service Unavailable",
                    "text/plain",
                    format!("not ready\n{}\n", r.reasons.join("\n")),
                )
            }
        }
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_owned(),
        ),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(resp.as_bytes()).await?;
    s.shutdown().await
}
