//! Retries for HTTP requests, in two separate parts: the *policy*, a pure
//! function per API deciding from one attempt's [`Outcome`] whether to try again
//! and how long the server asked us to wait (SCIM's in `scim::retry`, Graph's in
//! `source::entra::graph`), and the *mechanics* here ([`run`]: attempt counting,
//! exponential backoff with full jitter, caps on attempts, elapsed time and each
//! wait), with the readers of the headers that say when to come back
//! (`Retry-After`, `X-RateLimit-Reset`) both policies use. Knows nothing about
//! SCIM resources or Graph; of the HTTP client, only how to sort its errors
//! into a [`TransportKind`].
//!
//! A [`Verdict::Paced`] answer is the server pacing us, not a failure: it does
//! not use up `max_attempts`, its wait is honoured in full, and only
//! `max_elapsed` bounds it (a reset later than that ends the request at once).

use std::future::Future;
use std::time::{Duration, SystemTime};

/// How hard to try before an operation is reported as failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (1 = never retry).
    pub max_attempts: u32,
    /// No retry is started that would end after this much time since the first attempt.
    pub max_elapsed: Duration,
    /// The backoff ceiling before the first retry; doubled per retry.
    pub base_delay: Duration,
    /// The longest single wait, whether from backoff or from the server's headers.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Rides out a short outage or a burst of 429s (a minute or two), but not a
    /// target that is down: the cycle should fail and the next one try again.
    fn default() -> Self {
        Self {
            max_attempts: 6,
            max_elapsed: Duration::from_secs(120),
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// What went wrong with a request that did not reach a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// The request or response did not complete in time.
    Timeout,
    /// No connection could be made (refused, DNS, TLS handshake).
    Connect,
    /// The connection broke while the request or response was in flight.
    Interrupted,
    /// The request could not be built or the response not decoded: trying again
    /// gives the same result.
    Local,
}

impl TransportKind {
    /// What kind of failure a reqwest error is.
    pub fn of(error: &reqwest::Error) -> TransportKind {
        if error.is_timeout() {
            TransportKind::Timeout
        } else if error.is_connect() {
            TransportKind::Connect
        } else if error.is_decode() && broke_in_body(error) {
            // reqwest reports a body cut short (a reset, a close before its
            // Content-Length) as a decode error too.
            TransportKind::Interrupted
        } else if error.is_builder() || error.is_decode() || error.is_redirect() {
            TransportKind::Local
        } else {
            TransportKind::Interrupted
        }
    }
}

/// Whether a reqwest error was caused by the connection failing while the
/// body was read (an I/O error under it), not by bytes that cannot be decoded.
fn broke_in_body(error: &reqwest::Error) -> bool {
    causes(error).skip(1).any(|cause| {
        cause
            .downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_body)
            || cause.is::<std::io::Error>()
    })
}

/// `error` and the errors under it, outermost first; bounded, since error
/// chains are short: at most 16.
pub(crate) fn causes<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(error), |e| e.source()).take(16)
}

/// One attempt's failure, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// A response with a non-success status, and the headers that say when to come back.
    Status {
        status: u16,
        retry_after: Option<&'a str>,
        rate_limit_reset: Option<&'a str>,
    },
    Transport(TransportKind),
}

/// The policy's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Do not retry: the same request would fail the same way.
    Fatal,
    /// Retry after exponential backoff.
    Backoff,
    /// Retry after the wait the server asked for (still capped by the mechanics).
    After(Duration),
    /// Rate limited (429) until a time the server named: wait that long and try
    /// again, without counting an attempt.
    Paced(Duration),
}

/// The wait a server asked for: `Retry-After` first, else `X-RateLimit-Reset`;
/// `None` when neither can be read.
pub fn server_wait(
    retry_after: Option<&str>,
    reset: Option<&str>,
    now: SystemTime,
) -> Option<Duration> {
    retry_after
        .and_then(|v| parse_retry_after(v, now))
        .or_else(|| reset.and_then(|v| parse_rate_limit_reset(v, now)))
}

/// `Retry-After`: delta-seconds or an HTTP-date (RFC 9110 §10.2.3). A date in the
/// past means "now".
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Integers at least this large in `X-RateLimit-Reset` are Unix times, smaller ones
/// delta-seconds (both conventions exist; no delta is 30 years long).
const EPOCH_SECONDS_THRESHOLD: u64 = 1_000_000_000;

/// Integers at least this large are Unix times in milliseconds (seconds would
/// put them past the year 33,000).
const EPOCH_MILLIS_THRESHOLD: u64 = 1_000_000_000_000;

/// The window rate limits are counted in where the target does not say
/// otherwise: Atlassian's admin APIs count per minute.
pub const RATE_LIMIT_WINDOW: Duration = Duration::from_secs(60);

/// `X-RateLimit-Reset` in every form seen in the field: an ISO-8601 time, with
/// seconds (and fractions) or written to the minute as Atlassian's admin APIs
/// do (`2026-12-05T21:26Z`), with `Z` or an offset; an integer read as Unix
/// milliseconds, Unix seconds or delta-seconds by its size. A time in the past
/// means "now" — except a time written to the minute whose minute is not over:
/// the window it names ends with that minute.
pub fn parse_rate_limit_reset(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let at = if let Ok(n) = value.parse::<u64>() {
        if n < EPOCH_SECONDS_THRESHOLD {
            return Some(Duration::from_secs(n));
        }
        let since_epoch = if n >= EPOCH_MILLIS_THRESHOLD {
            Duration::from_millis(n)
        } else {
            Duration::from_secs(n)
        };
        SystemTime::UNIX_EPOCH.checked_add(since_epoch)?
    } else {
        let (parsed, to_the_minute) = parse_iso_time(value)?;
        let Ok(nanos) = u64::try_from(parsed.timestamp_nanos_opt()?) else {
            // Before 1970: long past.
            return Some(Duration::ZERO);
        };
        let at = SystemTime::UNIX_EPOCH.checked_add(Duration::from_nanos(nanos))?;
        match now.duration_since(at) {
            Ok(past) if to_the_minute && past < RATE_LIMIT_WINDOW => {
                return Some(RATE_LIMIT_WINDOW - past);
            }
            _ => at,
        }
    };
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// An ISO-8601 time as rate-limit headers write it, and whether it was written
/// to the minute (no seconds).
fn parse_iso_time(value: &str) -> Option<(chrono::DateTime<chrono::FixedOffset>, bool)> {
    use chrono::DateTime;
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Some((t, false));
    }
    // chrono's `%z` does not take `Z`: spell UTC as an offset.
    let value = match value.strip_suffix(['Z', 'z']) {
        Some(rest) => format!("{rest}+00:00"),
        None => value.to_owned(),
    };
    let value = value.replacen(['t', ' '], "T", 1);
    ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M%#z"]
        .iter()
        .enumerate()
        .find_map(|(i, format)| {
            DateTime::parse_from_str(&value, format)
                .ok()
                .map(|t| (t, i == 1))
        })
}

/// What is left of the current rate-limit window (at most a minute): the wait
/// after a 429 that says nothing readable about when to come back.
pub fn rest_of_window(now: SystemTime) -> Duration {
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let window = RATE_LIMIT_WINDOW.as_nanos();
    let into = since_epoch.as_nanos() % window;
    Duration::from_nanos((window - into) as u64)
}

/// The exponential backoff ceiling before retry number `retry` (0-based):
/// `base_delay * 2^retry`, capped at `max_delay`.
pub fn backoff_ceiling(policy: &RetryPolicy, retry: u32) -> Duration {
    let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
    policy
        .base_delay
        .checked_mul(factor)
        .unwrap_or(policy.max_delay)
        .min(policy.max_delay)
}

/// "Full jitter": a uniformly random wait up to the ceiling, so that many clients
/// (or many concurrent operations) do not retry in lockstep. `unit` is in [0, 1].
pub fn full_jitter(ceiling: Duration, unit: f64) -> Duration {
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

/// One attempt's result, as the operation reports it to [`run`].
#[derive(Debug)]
pub enum Attempt<T, E> {
    Success(T),
    /// Failed; retrying would not help.
    Fatal(E),
    /// Failed; worth another try, after `wait` if the server said so, else backoff.
    Retryable {
        error: E,
        wait: Option<Duration>,
    },
    /// Not served yet: the server named when to come back ([`Verdict::Paced`]).
    /// Does not count towards `max_attempts`.
    Paced {
        error: E,
        wait: Duration,
    },
}

impl Verdict {
    /// The attempt [`run`] is told about: this verdict on a failure, `error`.
    pub fn attempt<T, E>(self, error: E) -> Attempt<T, E> {
        match self {
            Verdict::Fatal => Attempt::Fatal(error),
            Verdict::Backoff => Attempt::Retryable { error, wait: None },
            Verdict::After(wait) => Attempt::Retryable {
                error,
                wait: Some(wait),
            },
            Verdict::Paced(wait) => Attempt::Paced { error, wait },
        }
    }
}

/// The shortest wait after a paced answer: a target that answers 429 with a
/// reset time of "now" still gets a breath between requests (and `max_elapsed`
/// ends the request if it never lets us through).
pub const MIN_PACED_WAIT: Duration = Duration::from_millis(100);

/// Why [`run`] gave up on a paced request: the server's reset is later than the
/// time left of `max_elapsed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacedTooLong {
    /// What the server asked for.
    pub wait: Duration,
    /// What was left of `max_elapsed`.
    pub left: Duration,
}

/// Runs `attempt` until it succeeds, fails fatally, or the policy's budget is spent
/// (then the last error is returned). `attempt` gets the 1-based attempt number
/// (paced ones included); `jitter` yields numbers in [0, 1]; `on_retry` sees each
/// error that will be retried and the wait before the retry; `too_long` turns
/// the last error of a paced request whose reset is past `max_elapsed` into the
/// error returned. Waits use tokio's clock.
pub async fn run<T, E, F, Fut>(
    policy: &RetryPolicy,
    mut jitter: impl FnMut() -> f64,
    mut on_retry: impl FnMut(u32, &E, Duration),
    too_long: impl FnOnce(E, PacedTooLong) -> E,
    mut attempt: F,
) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Attempt<T, E>>,
{
    let started = tokio::time::Instant::now();
    let mut number = 1u32;
    // Attempts that failed (paced ones do not count).
    let mut failures = 0u32;
    loop {
        let (error, wait) = match attempt(number).await {
            Attempt::Success(value) => return Ok(value),
            Attempt::Fatal(error) => return Err(error),
            Attempt::Paced { error, wait } => {
                let wait = wait.max(MIN_PACED_WAIT);
                let left = policy.max_elapsed.saturating_sub(started.elapsed());
                if wait > left {
                    return Err(too_long(error, PacedTooLong { wait, left }));
                }
                (error, wait)
            }
            Attempt::Retryable { error, wait } => {
                failures += 1;
                if failures >= policy.max_attempts {
                    return Err(error);
                }
                let wait = wait
                    .unwrap_or_else(|| full_jitter(backoff_ceiling(policy, failures - 1), jitter()))
                    .min(policy.max_delay);
                if started.elapsed() + wait > policy.max_elapsed {
                    return Err(error);
                }
                (error, wait)
            }
        };
        on_retry(number, &error, wait);
        tokio::time::sleep(wait).await;
        number += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// 2026-01-01T00:00:00Z
    const NOW: u64 = 1_767_225_600;

    /// Every form of `X-RateLimit-Reset` seen in the field, read at
    /// 2026-01-01T00:00:20Z.
    #[test]
    fn rate_limit_reset_is_read_in_every_form_seen_in_the_field() {
        let now = at(NOW + 20);
        let secs = Duration::from_secs;
        let cases: &[(&str, Option<Duration>)] = &[
            // Atlassian's admin APIs: to the minute, UTC.
            ("2026-01-01T00:01Z", Some(secs(40))),
            ("2026-01-01T00:02Z", Some(secs(100))),
            // To the minute, the minute not over yet: the window ends with it.
            ("2026-01-01T00:00Z", Some(secs(40))),
            // To the minute and long past: now.
            ("2025-12-31T23:58Z", Some(Duration::ZERO)),
            ("2026-01-01T01:01+01:00", Some(secs(40))),
            ("2026-01-01T01:01+0100", Some(secs(40))),
            ("2026-01-01t00:01z", Some(secs(40))),
            // RFC 3339 with seconds, fractions, offsets.
            ("2026-01-01T00:00:30Z", Some(secs(10))),
            ("2026-01-01T00:00:20.250Z", Some(Duration::from_millis(250))),
            ("2026-01-01T01:00:50+01:00", Some(secs(30))),
            ("2026-01-01T00:00:50+0000", Some(secs(30))),
            ("2026-01-01T00:00:10Z", Some(Duration::ZERO)),
            // Unix seconds and milliseconds; seconds to wait.
            ("1767225645", Some(secs(25))),
            ("1767225645500", Some(Duration::from_millis(25_500))),
            ("1767225600000", Some(Duration::ZERO)),
            ("7", Some(secs(7))),
            (" 0 ", Some(Duration::ZERO)),
            // Unreadable.
            ("", None),
            ("soon", None),
            ("-5", None),
            ("2026-01-01", None),
            ("2026-13-01T00:01Z", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_rate_limit_reset(value, now), *expected, "{value:?}");
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let policy = RetryPolicy {
            max_attempts: 10,
            max_elapsed: Duration::from_secs(600),
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let ceilings: Vec<u128> = (0..6)
            .map(|n| backoff_ceiling(&policy, n).as_millis())
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff_ceiling(&policy, 40), Duration::from_secs(1));
        assert_eq!(backoff_ceiling(&policy, u32::MAX), Duration::from_secs(1));
        assert_eq!(
            full_jitter(Duration::from_secs(2), 0.25),
            Duration::from_millis(500)
        );
        assert_eq!(
            full_jitter(Duration::from_secs(2), 7.0),
            Duration::from_secs(2)
        );
        assert_eq!(full_jitter(Duration::from_secs(2), -1.0), Duration::ZERO);
    }

    fn policy(max_attempts: u32, max_elapsed_secs: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            max_elapsed: Duration::from_secs(max_elapsed_secs),
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
        }
    }

    /// Fails `failures` times (with the given server wait), then succeeds.
    async fn drive(
        policy: RetryPolicy,
        failures: u32,
        wait: Option<Duration>,
    ) -> (Result<u32, String>, Vec<Duration>, Duration) {
        let start = tokio::time::Instant::now();
        let mut waits = Vec::new();
        let result = run(
            &policy,
            || 1.0,
            |_, _: &String, w| waits.push(w),
            |e, _| e,
            |n| async move {
                if n <= failures {
                    Attempt::Retryable {
                        error: format!("failure {n}"),
                        wait,
                    }
                } else {
                    Attempt::Success(n)
                }
            },
        )
        .await;
        (result, waits, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_doubling_backoff_then_succeeds() {
        let (result, waits, elapsed) = drive(policy(5, 600), 3, None).await;
        assert_eq!(result, Ok(4));
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4]);
        assert_eq!(elapsed, Duration::from_secs(7));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_with_last_error() {
        let (result, waits, _) = drive(policy(3, 600), 10, None).await;
        assert_eq!(result, Err("failure 3".to_owned()));
        assert_eq!(waits.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn server_wait_is_used_and_capped_at_max_delay() {
        let (result, waits, elapsed) =
            drive(policy(5, 600), 2, Some(Duration::from_secs(3600))).await;
        assert_eq!(result, Ok(3));
        assert_eq!(waits, [Duration::from_secs(10), Duration::from_secs(10)]);
        assert_eq!(elapsed, Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn stops_before_a_wait_that_would_pass_max_elapsed() {
        // Waits 1, 2, 4 (7 s) fit in 10 s; the next (8 s) would not.
        let (result, waits, elapsed) = drive(policy(10, 10), 10, None).await;
        assert_eq!(result, Err("failure 4".to_owned()));
        assert_eq!(waits.len(), 3);
        assert_eq!(elapsed, Duration::from_secs(7));
    }

    /// Answers each attempt from `script` (then succeeds): `Some(secs)` a paced
    /// 429 naming a reset `secs` away, `None` a failure to back off from.
    async fn drive_script(
        policy: RetryPolicy,
        script: Vec<Option<u64>>,
    ) -> (Result<u32, String>, Vec<Duration>, Duration) {
        let start = tokio::time::Instant::now();
        let mut waits = Vec::new();
        let script = &script;
        let result = run(
            &policy,
            || 1.0,
            |_, _: &String, w| waits.push(w),
            |e, t| {
                format!(
                    "{e}; the reset is {}s away, {}s left",
                    t.wait.as_secs(),
                    t.left.as_secs()
                )
            },
            |n| async move {
                match script.get(n as usize - 1) {
                    Some(Some(secs)) => Attempt::Paced {
                        error: format!("429 #{n}"),
                        wait: Duration::from_secs(*secs),
                    },
                    Some(None) => Attempt::Retryable {
                        error: format!("failure {n}"),
                        wait: None,
                    },
                    None => Attempt::Success(n),
                }
            },
        )
        .await;
        (result, waits, start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn paced_answers_do_not_use_up_attempts() {
        // Ten 429s naming a 1 s reset, with max_attempts 3: still served.
        let (result, waits, elapsed) = drive_script(policy(3, 600), vec![Some(1); 10]).await;
        assert_eq!(result, Ok(11));
        assert_eq!(waits, vec![Duration::from_secs(1); 10]);
        assert_eq!(elapsed, Duration::from_secs(10));
        // Failures between them still count: two failures and paced answers
        // pass, a third failure ends it.
        let script = vec![None, Some(1), Some(1), None, Some(1), None];
        let (result, _, _) = drive_script(policy(3, 600), script).await;
        assert_eq!(result, Err("failure 6".to_owned()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_paced_wait_is_honoured_in_full_but_not_past_max_elapsed() {
        // 45 s is more than max_delay (10 s): waited in full, as asked.
        let (result, waits, _) = drive_script(policy(3, 600), vec![Some(45)]).await;
        assert_eq!(result, Ok(2));
        assert_eq!(waits, [Duration::from_secs(45)]);
        // 60 s of waits fit in 100 s; a reset 50 s away does not: a clear error
        // at once, without waiting for it.
        let (result, waits, elapsed) =
            drive_script(policy(3, 100), vec![Some(30), Some(30), Some(50)]).await;
        assert_eq!(
            result,
            Err("429 #3; the reset is 50s away, 40s left".to_owned())
        );
        assert_eq!(waits.len(), 2);
        assert_eq!(elapsed, Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn a_paced_answer_with_no_wait_still_waits_a_little() {
        let (result, waits, _) = drive_script(policy(3, 600), vec![Some(0); 3]).await;
        assert_eq!(result, Ok(4));
        assert_eq!(waits, vec![MIN_PACED_WAIT; 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_is_not_retried() {
        let mut calls = 0;
        let result: Result<(), &str> = run(
            &policy(5, 600),
            || 1.0,
            |_, _, _| {},
            |e, _| e,
            |_| {
                calls += 1;
                async { Attempt::Fatal("no") }
            },
        )
        .await;
        assert_eq!(result, Err("no"));
        assert_eq!(calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn jitter_scales_backoff() {
        let mut waits = Vec::new();
        let _ = run(
            &policy(3, 600),
            || 0.5,
            |_, _: &(), w| waits.push(w),
            |e, _| e,
            |_| async {
                Attempt::<(), ()>::Retryable {
                    error: (),
                    wait: None,
                }
            },
        )
        .await;
        assert_eq!(waits, [Duration::from_millis(500), Duration::from_secs(1)]);
    }

    /// A server that sends a header promising 1,000 bytes, 10 of them, and
    /// closes: the response's body read fails; the connection broke (worth a
    /// retry), nothing failed to decode.
    #[tokio::test]
    async fn a_body_cut_short_is_an_interrupted_connection() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = [0u8; 1024];
            let _ = stream.read(&mut request);
            let head =
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n";
            stream.write_all(head.as_bytes()).expect("write head");
            stream
                .write_all(b"{\"Resource")
                .expect("write part of the body");
        });
        let response = reqwest::Client::new()
            .get(format!("http://{addr}/"))
            .send()
            .await
            .expect("the head arrives");
        let error = response.bytes().await.expect_err("the body is cut short");
        server.join().expect("server thread");
        assert!(error.is_decode(), "{error:?}");
        assert_eq!(
            TransportKind::of(&error),
            TransportKind::Interrupted,
            "{error:?}"
        );
    }
}
