//! A fault-injecting HTTP proxy on loopback, in front of a real `scim2-server`.
//!
//! `scim2-server` speaks HTTP/1.0 and closes the connection after every response,
//! so the proxy works per connection: it reads one request (head and
//! `Content-Length` body), asks the test's [`Schedule`] what to do with it, and
//! then either forwards it upstream and relays the answer, or answers itself
//! (429 with `Retry-After`, with `X-RateLimit-Reset`, or as a per-minute window
//! with the reset written to the minute; 5xx, a SCIM error, an error
//! whose detail echoes the request's headers or is huge), closes the
//! connection without answering (before or after forwarding), or waits first (a
//! slow answer). Every request is logged with its arrival time, what was done with
//! it, and (when forwarded) the time it was forwarded, for counting and for the
//! pacing measurements.
//!
//! Plain threads and blocking sockets (one thread per connection): simple, and
//! usable from the synchronous tests and from `examples/apply_bench.rs`, which
//! includes this file with `#[path]`. Safety: listens on 127.0.0.1 only; every
//! socket has read/write time-outs; the accept loop ends on drop (or after at most
//! 15 minutes, or the lifetime a soak test gives [`FaultProxy::start_for`]).

#![allow(dead_code)] // not every user of the proxy uses every helper

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Longest request head or body the proxy accepts.
const MAX_REQUEST: usize = 8 * 1024 * 1024;
/// Socket time-out for both sides.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// The accept loop never runs longer than this.
const MAX_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// One request as the schedule sees it.
#[derive(Debug, Clone)]
pub struct Req {
    /// 0-based arrival number over all requests.
    pub seq: usize,
    /// 0-based arrival number among requests of the same [`Req::kind`].
    pub kind_seq: usize,
    pub method: String,
    /// Path and query, e.g. `/v2/Users?filter=…`.
    pub path: String,
    pub body: String,
    /// Requests the proxy is handling as this one arrives (read, not yet
    /// answered), this one included.
    pub in_flight: usize,
}

impl Req {
    /// `METHOD /Resource`, e.g. `POST /Users`, `PATCH /Groups`, `GET /ServiceProviderConfig`.
    pub fn kind(&self) -> String {
        kind_of(&self.method, &self.path)
    }

    pub fn is(&self, method: &str, resource: &str) -> bool {
        self.method == method && resource_of(&self.path) == resource
    }

    /// A page of the whole collection (`GET /Users?startIndex=…`), as `--full`
    /// reads it; not a lookup by id or by filter.
    pub fn is_listing(&self, resource: &str) -> bool {
        self.method == "GET"
            && resource_of(&self.path) == resource
            && self.path.contains("startIndex=")
            && !self.path.contains("filter=")
    }

    /// A request that changes something (POST, PUT, PATCH, DELETE).
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
}

/// The collection or endpoint a path names, after the base path: scim2-server's
/// `/v2`, or an Atlassian-style `/scim/directory/{id}`.
fn resource_of(path: &str) -> &str {
    let path = path.split('?').next().unwrap_or("");
    let mut segs = path.split('/').filter(|s| !s.is_empty());
    match segs.next() {
        Some("v2") => segs.next().unwrap_or(""),
        Some("scim") => segs.nth(2).unwrap_or(""),
        Some(other) => other,
        None => "",
    }
}

pub fn kind_of(method: &str, path: &str) -> String {
    format!("{method} /{}", resource_of(path))
}

/// What the proxy does with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Forward it and relay the answer.
    Forward,
    /// `429` with `Retry-After: <seconds>`.
    RetryAfter(u64),
    /// `429` with `X-RateLimit-Reset: <ISO-8601 time this far ahead>`.
    RateLimitReset(Duration),
    /// `429` as a per-minute window answers it (Atlassian's admin APIs):
    /// `X-RateLimit-Limit: <this>`, `X-RateLimit-Remaining: 0` and
    /// `X-RateLimit-Reset` written to the minute (`2026-12-05T21:26Z`), the
    /// start of the next UTC minute; no `Retry-After`.
    MinuteWindow(u32),
    /// Answer this status with a SCIM error body carrying `detail`.
    Status(u16, String),
    /// Answer this status with a SCIM error whose `detail` quotes the request's
    /// head, every header included (`Authorization: Bearer …`), as some servers
    /// and gateways do.
    EchoHeaders(u16),
    /// Answer this status with a SCIM error whose `detail` is this many bytes.
    HugeDetail(u16, usize),
    /// Close the connection without answering; nothing is forwarded.
    Drop,
    /// Forward it, let the server act, then close the connection without relaying
    /// the answer (the client sees an error for a request that succeeded).
    ForwardThenDrop,
    /// Wait this long, then forward.
    Delay(Duration),
    /// Forward a list request and relay the page without the resources whose
    /// JSON contains any of these strings (`totalResults` and `itemsPerPage`
    /// lowered to match): a listing that under-reports.
    HideFromListing(Vec<String>),
    /// Forward a list request and relay an empty page (`totalResults: 0`).
    HideAllFromListing,
}

impl Fault {
    fn label(&self) -> &'static str {
        match self {
            Fault::Forward => "forward",
            Fault::RetryAfter(_) => "429-retry-after",
            Fault::RateLimitReset(_) => "429-reset",
            Fault::MinuteWindow(_) => "429-minute",
            Fault::Status(..) => "status",
            Fault::EchoHeaders(_) => "echo-headers",
            Fault::HugeDetail(..) => "huge-detail",
            Fault::Drop => "drop",
            Fault::ForwardThenDrop => "forward-then-drop",
            Fault::Delay(_) => "delay",
            Fault::HideFromListing(_) => "hide-from-listing",
            Fault::HideAllFromListing => "hide-all-from-listing",
        }
    }

    fn forwards(&self) -> bool {
        matches!(
            self,
            Fault::Forward
                | Fault::ForwardThenDrop
                | Fault::Delay(_)
                | Fault::HideFromListing(_)
                | Fault::HideAllFromListing
        )
    }
}

/// Decides the fate of each request; deterministic given the arrival order.
pub type Schedule = Arc<dyn Fn(&Req) -> Fault + Send + Sync>;

/// Forward everything.
pub fn pass_through() -> Schedule {
    Arc::new(|_| Fault::Forward)
}

/// A small deterministic RNG (xorshift64*), for seeded schedules.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// A server that limits concurrency, `delay` away: every request arriving
/// while more than `n` are in flight (itself included) is answered 429 with
/// `Retry-After: retry_after` seconds; the others are forwarded after
/// `delay`. The delay stands for a far target: against the local server
/// alone the round trip rises with every request in flight, and a client
/// that backs off on a rising round trip never reaches `n`.
pub fn in_flight_limit(n: usize, retry_after: u64, delay: Duration) -> Schedule {
    Arc::new(move |req: &Req| {
        if req.in_flight > n {
            Fault::RetryAfter(retry_after)
        } else {
            Fault::Delay(delay)
        }
    })
}

/// A seeded schedule: each request (by `seq`) gets `fault` with probability `p`,
/// the same for the same seed and arrival order.
pub fn seeded(seed: u64, p: f64, fault: Fault) -> Schedule {
    Arc::new(move |req: &Req| {
        let mut rng = Rng::new(seed ^ (req.seq as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        rng.next_u64();
        if rng.unit() < p {
            fault.clone()
        } else {
            Fault::Forward
        }
    })
}

/// One logged request.
#[derive(Debug, Clone)]
pub struct Entry {
    pub seq: usize,
    pub kind: String,
    pub method: String,
    pub path: String,
    pub body: String,
    pub fault: &'static str,
    /// Since the proxy started.
    pub arrived: Duration,
    /// When it was sent upstream, if it was.
    pub forwarded: Option<Duration>,
    /// The status of the answer: the server's (also when the proxy then dropped
    /// it) or the proxy's own; `None` when nothing answered.
    pub status: Option<u16>,
}

#[derive(Default)]
struct Log {
    entries: Vec<Entry>,
    per_kind: HashMap<String, usize>,
}

struct Shared {
    upstream: SocketAddr,
    schedule: Mutex<Schedule>,
    quirks: Mutex<Vec<Arc<dyn Quirk>>>,
    log: Mutex<Log>,
    started: Instant,
    /// The wall-clock time of `started`, to place entries against UTC times.
    started_wall: chrono::DateTime<chrono::Utc>,
    stop: AtomicBool,
    open: AtomicUsize,
    /// Requests read and not yet answered.
    in_flight: AtomicUsize,
}

/// The proxy; stops accepting and joins its accept loop on drop.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on a free loopback port in front of `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16, schedule: Schedule) -> FaultProxy {
        FaultProxy::start_for(upstream_port, schedule, MAX_LIFETIME)
    }

    /// [`FaultProxy::start`] for a run longer than the usual bound (a soak
    /// test): the accept loop ends after `lifetime` (or on drop).
    pub fn start_for(upstream_port: u16, schedule: Schedule, lifetime: Duration) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy on 127.0.0.1");
        let port = listener.local_addr().expect("proxy addr").port();
        let shared = Arc::new(Shared {
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream_port)),
            schedule: Mutex::new(schedule),
            quirks: Mutex::new(Vec::new()),
            log: Mutex::new(Log::default()),
            started: Instant::now(),
            started_wall: chrono::Utc::now(),
            stop: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || accept_loop(listener, shared, lifetime))
        };
        FaultProxy {
            port,
            shared,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/v2`
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v2", self.port)
    }

    /// Replaces the schedule (e.g. to end a storm between two runs).
    pub fn set_schedule(&self, schedule: Schedule) {
        *self
            .shared
            .schedule
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = schedule;
    }

    /// Replaces the quirks played on every forwarded request, in order.
    pub fn set_quirks(&self, quirks: Vec<Arc<dyn Quirk>>) {
        *self.shared.quirks.lock().unwrap_or_else(|p| p.into_inner()) = quirks;
    }

    /// Every request so far, in arrival order.
    pub fn entries(&self) -> Vec<Entry> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .clone()
    }

    /// Forgets the log (the arrival counters go on).
    pub fn clear_log(&self) {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .clear();
    }

    pub fn requests(&self) -> usize {
        self.entries().len()
    }

    /// Requests that change something (POST, PUT, PATCH, DELETE) so far.
    pub fn writes(&self) -> usize {
        self.entries()
            .iter()
            .filter(|e| matches!(e.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE"))
            .count()
    }

    /// Requests of one kind (`POST /Users`, …) so far.
    pub fn count_kind(&self, kind: &str) -> usize {
        self.entries().iter().filter(|e| e.kind == kind).count()
    }

    /// Requests that got the fault labelled `label` (`429-retry-after`, `drop`, …).
    pub fn count_fault(&self, label: &str) -> usize {
        self.entries().iter().filter(|e| e.fault == label).count()
    }

    /// Requests per kind, for messages.
    pub fn summary(&self) -> String {
        let mut counts: std::collections::BTreeMap<(String, &'static str), usize> =
            Default::default();
        for e in self.entries() {
            *counts.entry((e.kind.clone(), e.fault)).or_default() += 1;
        }
        counts
            .iter()
            .map(|((k, f), n)| format!("{k} [{f}]: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The wall-clock time of a moment given as time since the proxy started
    /// (an entry's `arrived` or `forwarded`).
    pub fn wall_time(&self, since_start: Duration) -> chrono::DateTime<chrono::Utc> {
        self.shared.started_wall
            + chrono::Duration::from_std(since_start).unwrap_or(chrono::Duration::zero())
    }

    /// Sorted times (since start) at which requests were forwarded upstream.
    pub fn forwarded_times(&self) -> Vec<Duration> {
        let mut t: Vec<Duration> = self.entries().iter().filter_map(|e| e.forwarded).collect();
        t.sort();
        t
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        );
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Connection threads end on their own (bounded by socket time-outs); give
        // the ones in flight a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.shared.open.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, lifetime: Duration) {
    let deadline = Instant::now() + lifetime;
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            return;
        }
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(&shared);
        shared.open.fetch_add(1, Ordering::SeqCst);
        std::thread::spawn(move || {
            let _ = handle(stream, &shared);
            shared.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Reads one HTTP request: (head bytes, body bytes).
fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_REQUEST {
            return Ok(None);
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = buf[..head_end].to_vec();
    let text = String::from_utf8_lossy(&head);
    let length = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(MAX_REQUEST);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Ok(Some((head, body)))
}

/// One request counted in flight until dropped (answered, or given up).
struct InFlight<'a> {
    counter: &'a AtomicUsize,
    count: usize,
}

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicUsize) -> InFlight<'a> {
        let count = counter.fetch_add(1, Ordering::SeqCst) + 1;
        InFlight { counter, count }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::SeqCst);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn handle(mut client: TcpStream, shared: &Shared) -> std::io::Result<()> {
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    client.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = client.set_nodelay(true);
    let Some((head, body)) = read_request(&mut client)? else {
        return Ok(());
    };
    let in_flight = InFlight::enter(&shared.in_flight);
    let arrived = shared.started.elapsed();
    let head_text = String::from_utf8_lossy(&head).into_owned();
    let mut request_line = head_text.lines().next().unwrap_or("").split_whitespace();
    let method = request_line.next().unwrap_or("").to_owned();
    let path = request_line.next().unwrap_or("").to_owned();
    let kind = kind_of(&method, &path);
    let body_text = String::from_utf8_lossy(&body).into_owned();

    // Number the request and decide its fate under one lock, so arrival order
    // and schedule order agree.
    let (seq, fault) = {
        let mut log = shared.log.lock().unwrap_or_else(|p| p.into_inner());
        // A global counter that survives `clear_log`: the sum of per-kind counts.
        let seq = log.per_kind.values().sum::<usize>();
        let kind_seq = {
            let n = log.per_kind.entry(kind.clone()).or_default();
            let k = *n;
            *n += 1;
            k
        };
        let req = Req {
            seq,
            kind_seq,
            method: method.clone(),
            path: path.clone(),
            body: body_text.clone(),
            in_flight: in_flight.count,
        };
        let schedule = Arc::clone(&*shared.schedule.lock().unwrap_or_else(|p| p.into_inner()));
        let fault = schedule(&req);
        log.entries.push(Entry {
            seq,
            kind: kind.clone(),
            method,
            path,
            body: body_text,
            fault: fault.label(),
            arrived,
            forwarded: None,
            status: None,
        });
        (seq, fault)
    };

    if let Fault::Delay(d) = &fault {
        std::thread::sleep(*d);
    }
    if fault.forwards() {
        let forwarded = shared.started.elapsed();
        {
            let mut log = shared.log.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = log.entries.iter_mut().rev().find(|e| e.seq == seq) {
                e.forwarded = Some(forwarded);
            }
        }
        let quirks = shared
            .quirks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let response = if quirks.is_empty() {
            exchange(shared.upstream, &head, &body)?
        } else {
            play_quirks(&quirks, shared.upstream, &head_text, &body)?
        };
        set_status(shared, seq, status_of(&response));
        if fault == Fault::ForwardThenDrop {
            let _ = client.shutdown(Shutdown::Both);
            return Ok(());
        }
        let response = match &fault {
            Fault::HideFromListing(needles) => hide_resources(&response, |r| {
                needles.iter().any(|n| r.contains(n.as_str()))
            }),
            Fault::HideAllFromListing => hide_resources(&response, |_| true),
            _ => response,
        };
        client.write_all(&response)?;
        let _ = client.flush();
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
    let answer = match &fault {
        Fault::RetryAfter(secs) => Some(response(
            429,
            &[("Retry-After".into(), secs.to_string())],
            &scim_error(429, "too many requests (proxy)"),
        )),
        Fault::RateLimitReset(ahead) => {
            let at = chrono::Utc::now()
                + chrono::Duration::from_std(*ahead).unwrap_or(chrono::Duration::seconds(1));
            Some(response(
                429,
                &[(
                    "X-RateLimit-Reset".into(),
                    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                )],
                &scim_error(429, "too many requests (proxy)"),
            ))
        }
        Fault::MinuteWindow(limit) => {
            let answer = minute_window_429(*limit, chrono::Utc::now());
            Some(response(answer.status, &answer.headers, &answer.body))
        }
        Fault::Status(status, detail) => Some(response(*status, &[], &scim_error(*status, detail))),
        Fault::EchoHeaders(status) => Some(response(
            *status,
            &[],
            &scim_error(*status, &format!("bad request; you sent:\r\n{head_text}")),
        )),
        Fault::HugeDetail(status, size) => Some(response(
            *status,
            &[],
            &scim_error(*status, &huge_detail(*size)),
        )),
        _ => None,
    };
    match answer {
        Some(bytes) => {
            set_status(shared, seq, status_of(&bytes));
            client.write_all(&bytes)?;
            let _ = client.flush();
        }
        None => {
            // Fault::Drop: close without a word.
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

/// One request/answer over a fresh upstream connection.
fn exchange(upstream: SocketAddr, head: &[u8], body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect_timeout(&upstream, Duration::from_secs(10))?;
    up.set_read_timeout(Some(IO_TIMEOUT))?;
    up.set_write_timeout(Some(IO_TIMEOUT))?;
    let _ = up.set_nodelay(true);
    up.write_all(head)?;
    up.write_all(body)?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    Ok(response)
}

// ---------------------------------------------------------------------------
// Quirks: server behaviours played over the real server's

/// A request as a quirk sees it, after the quirks before it.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    /// Path and query, e.g. `/v2/Users?filter=...`.
    pub path: String,
    pub body: String,
}

impl Exchange {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// `/v2/Users/abc` → `Users`; `/v2/Users?filter=…` → `Users`.
    pub fn resource(&self) -> &str {
        resource_of(&self.path)
    }
}

/// An answer as a quirk sees it, after the quirks before it.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Headers relayed to the client besides the ones every answer gets
    /// (`Content-Type`, `Content-Length`, `Connection`).
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    pub fn new(status: u16, body: String) -> Answer {
        Answer {
            status,
            headers: Vec::new(),
            body,
        }
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// A SCIM error answer, as a server would give it.
    pub fn error(status: u16, detail: &str) -> Answer {
        Answer::new(status, scim_error(status, detail))
    }

    /// A SCIM error answer with a `scimType`.
    pub fn error_typed(status: u16, scim_type: &str, detail: &str) -> Answer {
        let body = serde_json::json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
            "status": status.to_string(),
            "scimType": scim_type,
            "detail": detail,
        });
        Answer::new(status, body.to_string())
    }

    pub fn with_header(mut self, name: &str, value: String) -> Answer {
        self.headers.push((name.to_owned(), value));
        self
    }
}

/// The `429` a per-minute window gives at `now`: the limit, nothing remaining,
/// and the reset at the start of the next UTC minute, written to the minute.
pub fn minute_window_429(limit: u32, now: chrono::DateTime<chrono::Utc>) -> Answer {
    Answer::error(429, "Rate limit exceeded: too many requests this minute")
        .with_header("X-RateLimit-Limit", limit.to_string())
        .with_header("X-RateLimit-Remaining", "0".into())
        .with_header("X-RateLimit-Reset", to_the_minute(next_minute(now)))
}

/// The start of the UTC minute after `now`.
pub fn next_minute(now: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    let secs = now.timestamp().div_euclid(60) * 60 + 60;
    chrono::DateTime::from_timestamp(secs, 0).unwrap_or(now)
}

/// Returns when the current UTC minute is at most `max` seconds old, sleeping
/// into the next minute when it is older: a test of a per-minute window that
/// must fill it, or see it shut for a while, starts early in a minute.
pub fn wait_early_in_a_minute(max: u32) {
    use chrono::Timelike;
    let now = chrono::Utc::now();
    if now.second() > max {
        let next = next_minute(now) + chrono::Duration::seconds(1);
        std::thread::sleep((next - now).to_std().unwrap_or_default());
    }
}

/// `2026-12-05T21:26Z`: ISO-8601 to the minute, as Atlassian writes resets.
pub fn to_the_minute(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%dT%H:%MZ").to_string()
}

/// The real server, for a quirk's own questions (sent with the headers of the
/// request being played, so they carry the same credentials).
pub struct Upstream<'a> {
    addr: SocketAddr,
    headers: &'a [String],
}

impl Upstream<'_> {
    /// Sends one request upstream and returns the answer.
    pub fn call(&self, method: &str, path: &str, body: &str) -> Answer {
        let head = request_head(method, path, self.headers, body.len());
        match exchange(self.addr, head.as_bytes(), body.as_bytes()) {
            Ok(bytes) => split_answer(&bytes),
            Err(e) => Answer::error(502, &format!("proxy: upstream failed: {e}")),
        }
    }
}

/// A behaviour some SCIM servers have. Both hooks default to doing nothing.
pub trait Quirk: Send + Sync {
    /// Changes the request before it goes upstream, or answers it instead.
    fn request(&self, _req: &mut Exchange, _upstream: &Upstream) -> Option<Answer> {
        None
    }

    /// Changes the answer before it is relayed. `req` is the request as sent.
    fn response(&self, _req: &Exchange, _answer: &mut Answer, _upstream: &Upstream) {}
}

/// Plays `quirks` over one forwarded request; returns the answer to relay.
fn play_quirks(
    quirks: &[Arc<dyn Quirk>],
    upstream: SocketAddr,
    head_text: &str,
    body: &[u8],
) -> std::io::Result<Vec<u8>> {
    let mut lines = head_text.split("\r\n").filter(|l| !l.is_empty());
    let mut request_line = lines.next().unwrap_or("").split_whitespace();
    let mut req = Exchange {
        method: request_line.next().unwrap_or("").to_owned(),
        path: request_line.next().unwrap_or("").to_owned(),
        body: String::from_utf8_lossy(body).into_owned(),
    };
    let headers: Vec<String> = lines
        .filter(|l| {
            !l.split_once(':')
                .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        })
        .map(str::to_owned)
        .collect();
    let up = Upstream {
        addr: upstream,
        headers: &headers,
    };
    for quirk in quirks {
        if let Some(answer) = quirk.request(&mut req, &up) {
            return Ok(response(answer.status, &answer.headers, &answer.body));
        }
    }
    let head = request_head(&req.method, &req.path, &headers, req.body.len());
    let bytes = exchange(upstream, head.as_bytes(), req.body.as_bytes())?;
    let mut answer = split_answer(&bytes);
    for quirk in quirks {
        quirk.response(&req, &mut answer, &up);
    }
    Ok(response(answer.status, &answer.headers, &answer.body))
}

/// A request head: the request line, `headers`, and a `Content-Length`.
fn request_head(method: &str, path: &str, headers: &[String], len: usize) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str(&format!("Content-Length: {len}\r\n\r\n"));
    head
}

/// Headers of an upstream answer worth relaying; the rest are rebuilt.
const RELAYED_HEADERS: &[&str] = &[
    "location",
    "etag",
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
];

/// An HTTP answer's status, body, and the [`RELAYED_HEADERS`] it carries.
fn split_answer(bytes: &[u8]) -> Answer {
    let status = status_of(bytes).unwrap_or(502);
    let (head, body) = match find(bytes, b"\r\n\r\n") {
        Some(p) => (&bytes[..p], &bytes[p + 4..]),
        None => (bytes, &[][..]),
    };
    let headers = String::from_utf8_lossy(head)
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| {
            RELAYED_HEADERS
                .iter()
                .any(|h| k.trim().eq_ignore_ascii_case(h))
        })
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(body).into_owned(),
    }
}

/// The list response `response` without the resources `hide` picks (it sees
/// each resource's JSON text), its counts and `Content-Length` adjusted. Anything
/// that is not a JSON list response is relayed as it is.
fn hide_resources(response: &[u8], hide: impl Fn(&str) -> bool) -> Vec<u8> {
    let Some(head_end) = find(response, b"\r\n\r\n").map(|p| p + 4) else {
        return response.to_vec();
    };
    let Ok(mut body) = serde_json::from_slice::<serde_json::Value>(&response[head_end..]) else {
        return response.to_vec();
    };
    let Some(resources) = body
        .get_mut("Resources")
        .and_then(serde_json::Value::as_array_mut)
    else {
        return response.to_vec();
    };
    let before = resources.len();
    resources.retain(|r| !hide(&r.to_string()));
    let hidden = (before - resources.len()) as u64;
    let kept = resources.len() as u64;
    if let Some(total) = body.get("totalResults").and_then(serde_json::Value::as_u64) {
        body["totalResults"] = total.saturating_sub(hidden).into();
    }
    if body.get("itemsPerPage").is_some() {
        body["itemsPerPage"] = kept.into();
    }
    let body = body.to_string();
    let head = String::from_utf8_lossy(&response[..head_end]);
    let mut out = String::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        if line
            .split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

fn status_of(response: &[u8]) -> Option<u16> {
    let line = response.split(|b| *b == b'\n').next()?;
    std::str::from_utf8(line)
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn set_status(shared: &Shared, seq: usize, status: Option<u16>) {
    let mut log = shared.log.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = log.entries.iter_mut().rev().find(|e| e.seq == seq) {
        e.status = status;
    }
}

fn scim_error(status: u16, detail: &str) -> String {
    serde_json::json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
        "status": status.to_string(),
        "detail": detail,
    })
    .to_string()
}

/// `size` bytes of text: a short marker, then filler.
fn huge_detail(size: usize) -> String {
    let mut detail = String::from("huge detail: ");
    detail.extend(std::iter::repeat_n('x', size.saturating_sub(detail.len())));
    detail
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn response(status: u16, headers: &[(String, String)], body: &str) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status));
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("Content-Type: application/scim+json\r\n");
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    out.push_str(body);
    out.into_bytes()
}

// ---------------------------------------------------------------------------
// Pacing measurements over forwarded-request times

/// The most requests in any window of length `window` (sliding, over sorted times).
pub fn max_in_window(times: &[Duration], window: Duration) -> usize {
    let mut best = 0;
    let mut j = 0;
    for i in 0..times.len() {
        while times[i] - times[j] >= window {
            j += 1;
        }
        best = best.max(i - j + 1);
    }
    best
}

/// Requests per second over the middle of the run: the times between the
/// `skip`-th fraction and the `1 - skip`-th fraction of the requests.
pub fn steady_rate(times: &[Duration], skip: f64) -> f64 {
    if times.len() < 4 {
        return 0.0;
    }
    let lo = ((times.len() as f64) * skip) as usize;
    let hi = ((times.len() as f64) * (1.0 - skip)) as usize;
    let hi = hi.clamp(lo + 1, times.len() - 1);
    let span = (times[hi] - times[lo]).as_secs_f64();
    if span <= 0.0 {
        return f64::INFINITY;
    }
    (hi - lo) as f64 / span
}
