//! The daemon's HTTP endpoint (`metrics_listen:`): a deliberately small HTTP/1.1
//! server for `/metrics`, `/healthz` and `/readyz`, written by hand on a tokio
//! `TcpListener` because it needs four things a full server brings a
//! configuration surface for: GET only, one request per connection, a bounded
//! request head read within a time limit, and a cap on connections.
//!
//! Every answer is `text/plain; version=0.0.4` (Prometheus' text format) and
//! closes the connection. What is answered comes from [`Routes`]: this module
//! knows nothing of cycles, and holds no secret to leak. A leaf: it imports
//! nothing of idsync.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// The longest request head read (request line and headers); a longer one is
/// refused with 431. The three GETs this serves need a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// How long a client has to send its request head (and to take the answer):
/// a slow or silent client is cut off, never waited for.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at once; further ones are closed without an answer.
/// A scraper and two probes need three.
pub const MAX_CONNECTIONS: usize = 16;

/// How often the accept loop looks at the shutdown flag.
const SHUTDOWN_POLL: Duration = Duration::from_millis(200);

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An answer: the status and a plain-text body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn ok(body: String) -> Reply {
        Reply { status: 200, body }
    }

    pub fn unavailable(body: String) -> Reply {
        Reply { status: 503, body }
    }
}

/// What the server answers a GET of a path with; `None` is a 404.
pub trait Routes: Send + Sync + 'static {
    fn get(&self, path: &str) -> Option<Reply>;
}

/// Binds `addr` (before anything else runs, so a taken port fails at start).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves connections on `listener` until `shutdown` is set; then stops
/// accepting and returns (connections being answered finish on their own,
/// within [`IO_TIMEOUT`]).
pub async fn serve(listener: TcpListener, routes: Arc<dyn Routes>, shutdown: Arc<AtomicBool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    while !shutdown.load(Ordering::SeqCst) {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = tokio::time::sleep(SHUTDOWN_POLL) => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait a little, go on.
                tracing::debug!(error = %e, "endpoint: accept failed");
                tokio::time::sleep(SHUTDOWN_POLL).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("endpoint: too many connections; one closed unanswered");
            continue;
        };
        let routes = routes.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(IO_TIMEOUT, answer(stream, routes.as_ref())).await;
            drop(slot);
        });
    }
}

/// Reads one request head and writes one answer.
async fn answer(mut stream: TcpStream, routes: &dyn Routes) -> std::io::Result<()> {
    let reply = match read_head(&mut stream).await? {
        Err(refusal) => refusal,
        Ok(head) => match parse_head(&head) {
            Err(refusal) => refusal,
            Ok(path) => routes.get(path).unwrap_or_else(|| Reply {
                status: 404,
                body: "not found: this endpoint serves /metrics, /healthz and /readyz\n".into(),
            }),
        },
    };
    stream.write_all(&response_bytes(&reply)).await?;
    stream.shutdown().await
}

/// The request head, up to the blank line; a refusal when it runs past
/// [`MAX_REQUEST_BYTES`] or the client closes before it ends.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Result<Vec<u8>, Reply>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Err(refused(400, "the request ended before its blank line")));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_end(&head) {
            head.truncate(end);
            return Ok(Ok(head));
        }
        if head.len() > MAX_REQUEST_BYTES {
            return Ok(Err(refused(431, "the request head is over 8 KiB")));
        }
    }
}

/// Where the head ends (the blank line), if it has.
fn find_end(bytes: &[u8]) -> Option<usize> {
    let at = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (at, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The path a request head asks for, or the answer refusing it.
fn parse_head(head: &[u8]) -> Result<&str, Reply> {
    if head.len() > MAX_REQUEST_BYTES {
        return Err(refused(431, "the request head is over 8 KiB"));
    }
    let text = std::str::from_utf8(head).map_err(|_| refused(400, "the request is not text"))?;
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refused(
            400,
            "the request line is not `METHOD PATH HTTP/1.1`",
        ));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(refused(505, "only HTTP/1.0 and HTTP/1.1 are served"));
    }
    if method != "GET" {
        return Err(refused(405, "only GET is served"));
    }
    if !target.starts_with('/') {
        return Err(refused(400, "the request target is not a path"));
    }
    Ok(target.split(['?', '#']).next().unwrap_or(target))
}

fn refused(status: u16, why: &str) -> Reply {
    Reply {
        status,
        body: format!("{why}\n"),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// The whole response: status line, headers, body; the connection closes.
fn response_bytes(reply: &Reply) -> Vec<u8> {
    let allow = if reply.status == 405 {
        "Allow: GET\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n{allow}Connection: close\r\n\r\n{}",
        reply.status,
        reason(reply.status),
        reply.body.len(),
        reply.body
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_line_is_read_or_refused_with_the_status_that_says_why() {
        let cases: &[(&str, Result<&str, u16>)] = &[
            ("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", Ok("/metrics")),
            ("GET /healthz?x=1 HTTP/1.0\r\n\r\n", Ok("/healthz")),
            ("GET /readyz HTTP/1.1\n\n", Ok("/readyz")),
            ("POST /metrics HTTP/1.1\r\n\r\n", Err(405)),
            ("HEAD /metrics HTTP/1.1\r\n\r\n", Err(405)),
            ("GET /metrics HTTP/2.0\r\n\r\n", Err(505)),
            ("GET /metrics\r\n\r\n", Err(400)),
            ("GET  /metrics HTTP/1.1\r\n\r\n", Err(400)),
            ("GET metrics HTTP/1.1\r\n\r\n", Err(400)),
            ("\r\n\r\n", Err(400)),
        ];
        for (head, expected) in cases {
            let got = parse_head(head.as_bytes()).map_err(|r| r.status);
            assert_eq!(&got, expected, "{head:?}");
        }
        assert_eq!(
            parse_head(&[0xff, b' ', b'/', b'\r', b'\n'])
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(find_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(find_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn a_response_says_its_length_and_type_and_closes() {
        let bytes = response_bytes(&Reply {
            status: 405,
            body: "only GET is served\n".into(),
        });
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        assert!(text.contains("\r\nContent-Length: 19\r\n"));
        assert!(text.contains("\r\nAllow: GET\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n\r\nonly GET is served\n"));
    }
}
