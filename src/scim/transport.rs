//! The SCIM client's transport: the URL of a resource, one request with
//! authentication, pacing (the token bucket and the shared hold-off after a
//! 429) and the retry loop of `retry.rs`, and how an answer or a failure
//! becomes a [`ScimError`].

use super::*;
use crate::pace::Answer;

/// How many times in a row one attempt's connection is made again after
/// being given up at its deadline.
const RECONNECTS: u32 = 3;

/// Counts a change (any request but a GET) when it is dropped.
struct ChangeEnds<'a>(&'a AtomicU64);

impl Drop for ChangeEnds<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl ScimClient {
    pub(super) fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        // Checked in `new`: the base URL can be a base, so this always applies.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends one request with retries; `Ok` only for a 2xx response.
    pub(super) async fn call(
        &self,
        method: Method,
        url: Url,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Reply, ScimError> {
        let policy = self.inner.retry;
        self.call_with(&policy, method, url, query, body).await
    }

    /// [`Self::call`] with its own retry policy.
    pub(super) async fn call_with(
        &self,
        policy: &RetryPolicy,
        method: Method,
        url: Url,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Reply, ScimError> {
        let body = body.map(|b| b.to_string().into_bytes());
        let inner = &self.inner;
        crate::retry::run(
            policy,
            fastrand::f64,
            |attempt, error: &ScimError, wait| {
                inner.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%method, path = url.path(), attempt, wait_ms = wait.as_millis() as u64, error = ?error.to_string(), "retrying SCIM request");
            },
            paced_too_long,
            |_| self.attempt(&method, &url, query, body.as_deref()),
        )
        .await
    }

    pub(super) async fn attempt(
        &self,
        method: &Method,
        url: &Url,
        query: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> Attempt<Reply, ScimError> {
        let inner = &self.inner;
        let cooldown = *inner
            .cooldown_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(until) = cooldown {
            tokio::time::sleep_until(until).await;
        }
        // A place under the adaptive limit first, then a token: a request
        // never holds a token while it waits for a place, so the bucket's
        // burst is never exceeded.
        let mut permit = match &inner.pace {
            Some(pace) => Some(pace.enter().await),
            None => None,
        };
        if let Some(limiter) = &inner.limiter {
            limiter.until_ready().await;
        }
        if let Some(p) = &mut permit {
            p.sending();
        }
        // Counted as it ends, answered, failed or cancelled: the first page
        // of users read before is stale (see `first_page`).
        let _ended = (*method != Method::GET).then(|| ChangeEnds(&inner.changes));
        let answer = self.exchange(method, url, query, body).await;
        if let Some(p) = permit {
            p.answered(answer.pace);
        }
        answer.attempt
    }

    /// One request sent and its answer read; what the answer says about the
    /// target's pace.
    async fn exchange(
        &self,
        method: &Method,
        url: &Url,
        query: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> Exchanged {
        let inner = &self.inner;
        inner.requests.fetch_add(1, Ordering::Relaxed);
        let request = || {
            let mut request = inner.http.request(method.clone(), url.clone());
            if !query.is_empty() {
                request = request.query(query);
            }
            if let Some(body) = body {
                request = request.header(CONTENT_TYPE, SCIM_JSON).body(body.to_vec());
            }
            request
        };
        let count = |status: u16| {
            *inner
                .statuses
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(status)
                .or_insert(0) += 1;
        };
        // A connection given up at its deadline sent nothing: it is made
        // again at once, a few times (see `connect`), before it is a failed
        // attempt like any other.
        let mut given_up = 0;
        let response = loop {
            match request().send().await {
                Ok(response) => break response,
                Err(e) if given_up < RECONNECTS && connect::gave_up(&e) => {
                    given_up += 1;
                    let error = inner.redactor.clean(&error_chain(&e));
                    tracing::debug!(%method, path = url.path(), %error, "connecting again");
                }
                Err(e) => {
                    count(0);
                    return Exchanged::failed(&e, &inner.redactor);
                }
            }
        };
        let status = response.status();
        count(status.as_u16());
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let location = header(LOCATION.as_str());
        let retry_after = header("retry-after");
        let rate_limit_reset = header("x-ratelimit-reset");
        let body = match response.bytes().await {
            Ok(bytes) => bytes.to_vec(),
            Err(e) => return Exchanged::failed(&e, &inner.redactor),
        };
        tracing::debug!(%method, path = url.path(), status = status.as_u16(), "SCIM request");
        if status.is_success() {
            return Exchanged {
                attempt: Attempt::Success(Reply {
                    status,
                    location,
                    body,
                }),
                pace: Answer::Held,
            };
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            inner.throttled.fetch_add(1, Ordering::Relaxed);
        }
        let error = ScimError::from_response(status, &body, &inner.redactor);
        let outcome = Outcome::Status {
            status: status.as_u16(),
            retry_after: retry_after.as_deref(),
            rate_limit_reset: rate_limit_reset.as_deref(),
        };
        let verdict = retry::classify(outcome, SystemTime::now());
        match verdict {
            Verdict::After(wait) => self.hold_off(wait.min(inner.retry.max_delay)),
            // The whole client waits for the reset, as long as a request may wait.
            Verdict::Paced(wait) => self.hold_off(wait.min(inner.retry.max_elapsed)),
            Verdict::Fatal | Verdict::Backoff => {}
        }
        Exchanged {
            attempt: verdict.attempt(error),
            pace: pace_of_status(status.as_u16()),
        }
    }

    /// Makes every request wait `wait` from now (or longer, if already asked to).
    pub(super) fn hold_off(&self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        let mut cooldown = self
            .inner
            .cooldown_until
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if cooldown.is_none_or(|current| current < until) {
            *cooldown = Some(until);
        }
    }
}

/// One request's outcome, and what it says about the target's pace.
struct Exchanged {
    attempt: Attempt<Reply, ScimError>,
    pace: Answer,
}

impl Exchanged {
    /// No answer: a timeout is the target pushing back; a refused or broken
    /// connection says nothing about its pace.
    fn failed(error: &reqwest::Error, redactor: &Redactor) -> Exchanged {
        let pace = match TransportKind::of(error) {
            TransportKind::Timeout => Answer::BackPressure,
            _ => Answer::Ignored,
        };
        Exchanged {
            attempt: transport_failure(error, redactor),
            pace,
        }
    }
}

/// What an answer's status says about the target's pace: 429 and 503 (and
/// the timeouts 408 and 504) push back; other errors (a 500) say nothing;
/// the rest are answers in their round trip.
fn pace_of_status(status: u16) -> Answer {
    match status {
        429 | 503 | 408 | 504 => Answer::BackPressure,
        500..=599 => Answer::Ignored,
        _ => Answer::Held,
    }
}

/// A successful response.
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) location: Option<String>,
    pub(super) body: Vec<u8>,
}

impl Reply {
    pub(super) fn json(&self) -> Result<Value, ScimError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            ScimError::InvalidResponse(format!(
                "HTTP {} body is not JSON: {e}",
                self.status.as_u16()
            ))
        })
    }
}

pub(super) fn rate_limiter(limit: RateLimit) -> Result<DefaultDirectRateLimiter, ScimError> {
    let per_second = std::num::NonZeroU32::new(limit.per_second)
        .ok_or_else(|| ScimError::Config("rate_limit.per_second must be at least 1".into()))?;
    let burst = std::num::NonZeroU32::new(limit.burst)
        .ok_or_else(|| ScimError::Config("rate_limit.burst must be at least 1".into()))?;
    Ok(RateLimiter::direct(
        Quota::per_second(per_second).allow_burst(burst),
    ))
}

pub(super) fn transport_failure<T>(
    error: &reqwest::Error,
    redactor: &Redactor,
) -> Attempt<T, ScimError> {
    let kind = TransportKind::of(error);
    // A proxy's or TLS library's message may quote what the target sent.
    let error_value = ScimError::Transport(redactor.clean(&error_chain(error)));
    retry::classify(Outcome::Transport(kind), SystemTime::now()).attempt(error_value)
}

/// The error a paced request ends with when the target's reset is past
/// `retry.max_elapsed`.
pub(super) fn paced_too_long(_: ScimError, t: PacedTooLong) -> ScimError {
    ScimError::RateLimited {
        wait: t.wait,
        left: t.left,
    }
}

/// An error and its causes on one line: reqwest's own message is terse
/// ("error sending request"), the cause says what happened.
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
