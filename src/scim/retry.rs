//! SCIM's retry *policy*: [`classify`], a pure function deciding from one
//! attempt's outcome whether to try again and how long the target asked us to
//! wait. The mechanics (backoff, attempt counting, the headers' readers) are
//! `crate::retry`'s, shared with Graph.
//!
//! A 429 is the target pacing us, not a failure ([`Verdict::Paced`]): it does
//! not use up `max_attempts`. A 429 whose reset cannot be read waits out the
//! current rate-limit window (the rest of the minute: the windows targets count
//! in), never spends an attempt.

use std::time::SystemTime;

use crate::retry::{Outcome, TransportKind, Verdict, rest_of_window, server_wait};

/// Decides whether an attempt's failure is worth retrying. `now` is only used to
/// turn absolute times in headers (an HTTP-date, an ISO-8601 reset time) into a wait.
pub fn classify(outcome: Outcome<'_>, now: SystemTime) -> Verdict {
    match outcome {
        Outcome::Transport(TransportKind::Local) => Verdict::Fatal,
        // A POST that timed out may have succeeded; the retry then gets a 409,
        // which the caller resolves by adopting the existing resource.
        Outcome::Transport(_) => Verdict::Backoff,
        Outcome::Status {
            status,
            retry_after,
            rate_limit_reset,
        } => match status {
            // The target pacing us; without a reset time it can read, the
            // window it counts in is waited out.
            429 => Verdict::Paced(
                server_wait(retry_after, rate_limit_reset, now)
                    .unwrap_or_else(|| rest_of_window(now)),
            ),
            // 503 may carry Retry-After too (RFC 9110 §10.2.3), but it is an outage.
            503 => server_wait(retry_after, rate_limit_reset, now)
                .map_or(Verdict::Backoff, Verdict::After),
            408 | 500 | 502 | 504 => Verdict::Backoff,
            _ => Verdict::Fatal,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    /// 2026-01-01T00:00:00Z
    const NOW: u64 = 1_767_225_600;

    fn status(status: u16) -> Outcome<'static> {
        Outcome::Status {
            status,
            retry_after: None,
            rate_limit_reset: None,
        }
    }

    fn with_headers(
        status: u16,
        retry_after: Option<&'static str>,
        reset: Option<&'static str>,
    ) -> Outcome<'static> {
        Outcome::Status {
            status,
            retry_after,
            rate_limit_reset: reset,
        }
    }

    #[test]
    fn classification_table() {
        let secs = Duration::from_secs;
        let cases: Vec<(Outcome<'static>, Verdict)> = vec![
            // Rate limited: a named reset paces us (no attempt used); without
            // one readable, the rest of the minute's window (NOW is on a minute).
            (status(429), Verdict::Paced(secs(60))),
            (with_headers(429, Some("7"), None), Verdict::Paced(secs(7))),
            (
                with_headers(429, Some(" 0 "), None),
                Verdict::Paced(secs(0)),
            ),
            (
                with_headers(429, Some("Thu, 01 Jan 2026 00:00:30 GMT"), None),
                Verdict::Paced(secs(30)),
            ),
            (
                with_headers(429, Some("Wed, 31 Dec 2025 23:00:00 GMT"), None),
                Verdict::Paced(secs(0)),
            ),
            (
                with_headers(429, None, Some("2026-01-01T00:01:00Z")),
                Verdict::Paced(secs(60)),
            ),
            (
                with_headers(429, None, Some("2026-01-01T01:00:05+01:00")),
                Verdict::Paced(secs(5)),
            ),
            (
                with_headers(429, None, Some("2026-01-01T00:00:02.500Z")),
                Verdict::Paced(Duration::from_millis(2500)),
            ),
            (
                with_headers(429, None, Some("2025-12-31T00:00:00Z")),
                Verdict::Paced(secs(0)),
            ),
            (
                with_headers(429, None, Some("1767225645")),
                Verdict::Paced(secs(45)),
            ),
            (
                with_headers(429, None, Some("12")),
                Verdict::Paced(secs(12)),
            ),
            // Retry-After wins over X-RateLimit-Reset.
            (
                with_headers(429, Some("3"), Some("2026-01-01T00:01:00Z")),
                Verdict::Paced(secs(3)),
            ),
            // An unreadable Retry-After falls through to the reset header, then to backoff.
            (
                with_headers(429, Some("soon"), Some("2026-01-01T00:00:09Z")),
                Verdict::Paced(secs(9)),
            ),
            (
                with_headers(429, Some("soon"), Some("later")),
                Verdict::Paced(secs(60)),
            ),
            (
                with_headers(429, Some("-5"), None),
                Verdict::Paced(secs(60)),
            ),
            // Server errors worth retrying.
            (status(500), Verdict::Backoff),
            (status(502), Verdict::Backoff),
            (status(503), Verdict::Backoff),
            (with_headers(503, Some("2"), None), Verdict::After(secs(2))),
            (status(504), Verdict::Backoff),
            (status(408), Verdict::Backoff),
            // Everything else is the request's fault or permanent.
            (status(400), Verdict::Fatal),
            (status(401), Verdict::Fatal),
            (status(403), Verdict::Fatal),
            (status(404), Verdict::Fatal),
            (status(409), Verdict::Fatal),
            (status(412), Verdict::Fatal),
            (with_headers(400, Some("5"), None), Verdict::Fatal),
            (status(501), Verdict::Fatal),
            (status(505), Verdict::Fatal),
            // Transport.
            (Outcome::Transport(TransportKind::Timeout), Verdict::Backoff),
            (Outcome::Transport(TransportKind::Connect), Verdict::Backoff),
            (
                Outcome::Transport(TransportKind::Interrupted),
                Verdict::Backoff,
            ),
            (Outcome::Transport(TransportKind::Local), Verdict::Fatal),
        ];
        for (outcome, expected) in cases {
            assert_eq!(classify(outcome, at(NOW)), expected, "{outcome:?}");
        }
    }

    #[test]
    fn an_unreadable_reset_waits_out_the_current_minute() {
        assert_eq!(rest_of_window(at(NOW)), Duration::from_secs(60));
        assert_eq!(rest_of_window(at(NOW + 1)), Duration::from_secs(59));
        assert_eq!(
            rest_of_window(at(NOW + 59) + Duration::from_millis(500)),
            Duration::from_millis(500)
        );
        assert_eq!(
            classify(with_headers(429, None, Some("whenever")), at(NOW + 45)),
            Verdict::Paced(Duration::from_secs(15))
        );
        // An outage is not a window: a 503 without a wait backs off.
        assert_eq!(
            classify(with_headers(503, None, Some("whenever")), at(NOW + 45)),
            Verdict::Backoff
        );
    }
}
