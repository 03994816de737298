//! Talking to Microsoft Graph: the OAuth2 client-credentials token (cached,
//! renewed before it expires), and GETs paced to `rate_limit`, with a
//! per-request timeout and bounded retries (429/503 after `Retry-After`, other
//! 5xx and connection errors with backoff). The secret and the token are never
//! logged or put in an error.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::EntraSettings;
use super::credential::Loaded;
use super::error::EntraError;
use crate::retry::{self, Attempt, Outcome, RetryPolicy, TransportKind, Verdict};

/// A `Retry-After` longer than this ends the cycle (the next one reads the
/// same changes again) rather than blocking it.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// How hard a Graph request (or a token request) is tried: six attempts,
/// backoff from 500 ms doubled each time, and a `Retry-After` up to
/// [`MAX_RETRY_AFTER`] waited in full ([`classify`] ends the request on a longer
/// one). The attempts bound the total; no time limit beyond that.
const RETRY: RetryPolicy = RetryPolicy {
    max_attempts: 6,
    max_elapsed: Duration::MAX,
    base_delay: Duration::from_millis(500),
    max_delay: MAX_RETRY_AFTER,
};
/// A token is renewed this long before it expires (or at 9/10 of its life when
/// that comes first).
const RENEW_MARGIN: Duration = Duration::from_secs(300);

/// The error codes of an expired or unknown delta token (matched
/// case-insensitively, on 400 and 410 only).
const RESYNC_CODES: [&str; 2] = ["syncstatenotfound", "resyncrequired"];

/// Graph's retry *policy* (the mechanics are `crate::retry`'s): 429 and 503
/// wait their `Retry-After` and back off without one, but a `Retry-After`
/// longer than [`MAX_RETRY_AFTER`] ends the request; other 5xx and failed
/// connections back off; everything else is final (a 401 renews the token
/// once: the caller's decision, not a status's).
pub fn classify(outcome: Outcome<'_>, now: SystemTime) -> Verdict {
    match outcome {
        Outcome::Transport(TransportKind::Local) => Verdict::Fatal,
        Outcome::Transport(_) => Verdict::Backoff,
        Outcome::Status {
            status: 429 | 503,
            retry_after,
            ..
        } => match retry_after.and_then(|v| retry::parse_retry_after(v, now)) {
            Some(wait) if wait > MAX_RETRY_AFTER => Verdict::Fatal,
            Some(wait) => Verdict::After(wait),
            None => Verdict::Backoff,
        },
        Outcome::Status { status, .. } if status >= 500 => Verdict::Backoff,
        Outcome::Status { .. } => Verdict::Fatal,
    }
}

/// A Graph answer.
pub enum Answer {
    /// 200 with a JSON body.
    Ok(Value),
    /// The delta token is expired or unknown: start a full round.
    Resync { status: u16, code: String },
}

struct Token {
    value: SecretString,
    renew_at: Instant,
}

/// One Graph session: a client, the credential, the cached token. Shared by
/// the attempts of a request, hence the locks (never held across a wait).
pub struct Graph<'a> {
    settings: &'a EntraSettings,
    http: reqwest::Client,
    credential: Loaded,
    token: Mutex<Option<Token>>,
    next_slot: Mutex<Instant>,
    /// Requests sent to Graph (the token endpoint not included).
    requests: AtomicU64,
}

/// `scheme://host/path` of `url`, without the query (delta and skip tokens).
pub fn shown(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => base.to_string(),
        None => url.to_string(),
    }
}

/// Logs a retry the mechanics are about to wait for.
fn log_retry(url: &str, attempt: u32, error: &EntraError, wait: Duration) {
    let wait_s = wait.as_secs_f64();
    if matches!(error, EntraError::GraphThrottled { .. }) {
        tracing::info!(url = %shown(url), attempt, wait_s, "Graph throttled; waiting as asked");
    } else {
        tracing::debug!(url = %shown(url), attempt, wait_s, error = %error, "Graph request failed; retrying");
    }
}

impl<'a> Graph<'a> {
    /// Reads the secret; nothing is sent yet.
    pub fn new(settings: &'a EntraSettings) -> Result<Graph<'a>, EntraError> {
        let credential = settings.credential.read()?;
        let unreachable = |reason: String| EntraError::GraphUnreachable {
            url: settings.graph_url.clone(),
            reason,
        };
        let tls = crate::tls::client_config()
            .map_err(|e| unreachable(format!("HTTP client set-up failed: {e}")))?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("idsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| unreachable(format!("HTTP client set-up failed: {e}")))?;
        Ok(Graph {
            settings,
            http,
            credential,
            token: Mutex::new(None),
            next_slot: Mutex::new(Instant::now()),
            requests: AtomicU64::new(0),
        })
    }

    /// Requests sent to Graph so far (the token endpoint not included).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.settings.authority_url, self.settings.tenant_id
        )
    }

    fn cached_token(&self) -> std::sync::MutexGuard<'_, Option<Token>> {
        self.token.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A valid access token: the cached one, or a new one.
    async fn token(&self) -> Result<SecretString, EntraError> {
        if let Some(t) = &*self.cached_token()
            && Instant::now() < t.renew_at
        {
            return Ok(t.value.clone());
        }
        let url = self.token_url();
        let s = self.settings;
        let proof = self.credential.form_fields(&s.client_id, &url)?;
        let scope = format!("{}/.default", s.graph_url);
        let mut form: Vec<(&str, &str)> = vec![
            ("client_id", s.client_id.as_str()),
            ("scope", &scope),
            ("grant_type", "client_credentials"),
        ];
        form.extend(proof.iter().map(|(k, v)| (*k, v.expose_secret())));
        let body = retry::run(
            &RETRY,
            fastrand::f64,
            |attempt, error, wait| log_retry(&url, attempt, error, wait),
            |error, _| error,
            |_| self.token_attempt(&url, &form),
        )
        .await?;
        let Some((access, lifetime)) = token_answer(&body) else {
            return Err(EntraError::GraphBadAnswer {
                url,
                reason: "the token endpoint's answer has no access_token".into(),
            });
        };
        let value = SecretString::from(access.to_string());
        *self.cached_token() = Some(Token {
            value: value.clone(),
            renew_at: renew_at(Instant::now(), lifetime),
        });
        tracing::debug!(
            lifetime_s = lifetime.as_secs(),
            "Entra access token obtained"
        );
        Ok(value)
    }

    /// One POST to the token endpoint: its JSON answer, or why not.
    async fn token_attempt(&self, url: &str, form: &[(&str, &str)]) -> Attempt<Value, EntraError> {
        let response = match self.http.post(url).form(form).send().await {
            Ok(r) => r,
            Err(e) => {
                let error = EntraError::GraphUnreachable {
                    url: url.to_string(),
                    reason: plain(&e),
                };
                return classify(Outcome::Transport(TransportKind::of(&e)), SystemTime::now())
                    .attempt(error);
            }
        };
        let status = response.status().as_u16();
        let retry_after = header(&response, "retry-after");
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Attempt::Success(body);
        }
        let error = body["error"].as_str().unwrap_or("");
        let description = body["error_description"]
            .as_str()
            .and_then(|d| d.lines().next())
            .unwrap_or("");
        let reason = match (error, description) {
            ("", "") => format!("HTTP {status}"),
            (e, "") => format!("HTTP {status}: {e}"),
            (e, d) => format!("HTTP {status}: {e}: {d}"),
        };
        let s = self.settings;
        let refused = EntraError::AuthRefused {
            tenant: s.tenant_id.clone(),
            client_id: s.client_id.clone(),
            credential: s.credential.describe(),
            reason,
        };
        let outcome = Outcome::Status {
            status,
            retry_after: retry_after.as_deref(),
            rate_limit_reset: None,
        };
        classify(outcome, SystemTime::now()).attempt(refused)
    }

    /// Waits for this request's slot under `rate_limit`.
    async fn pace(&self) {
        let interval = Duration::from_secs_f64(1.0 / f64::from(self.settings.rate_limit.max(1)));
        let slot = {
            let mut next = self.next_slot.lock().unwrap_or_else(|p| p.into_inner());
            let slot = (*next).max(Instant::now());
            *next = slot + interval;
            slot
        };
        let now = Instant::now();
        if slot > now {
            tokio::time::sleep(slot - now).await;
        }
    }

    /// GET `url` (absolute, under `graph_url`), retried as documented above.
    pub async fn get(&self, url: &str) -> Result<Answer, EntraError> {
        let graph = &self.settings.graph_url;
        if !url.starts_with(&format!("{graph}/")) {
            return Err(EntraError::GraphBadAnswer {
                url: shown(url),
                reason: format!("a link outside graph_url {graph} is not followed"),
            });
        }
        let refreshed = AtomicBool::new(false);
        retry::run(
            &RETRY,
            fastrand::f64,
            |attempt, error, wait| log_retry(url, attempt, error, wait),
            |error, _| error,
            |attempt| self.get_attempt(url, attempt, &refreshed),
        )
        .await
    }

    /// One GET; `attempt` is its number, `refreshed` whether the token was
    /// renewed after a 401 already.
    async fn get_attempt(
        &self,
        url: &str,
        attempt: u32,
        refreshed: &AtomicBool,
    ) -> Attempt<Answer, EntraError> {
        let token = match self.token().await {
            Ok(token) => token,
            Err(e) => return Attempt::Fatal(e),
        };
        self.pace().await;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let sent = self
            .http
            .get(url)
            .bearer_auth(token.expose_secret())
            .header("Accept", "application/json")
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                let error = EntraError::GraphUnreachable {
                    url: shown(url),
                    reason: plain(&e),
                };
                return classify(Outcome::Transport(TransportKind::of(&e)), SystemTime::now())
                    .attempt(error);
            }
        };
        let status = response.status().as_u16();
        let retry_after = header(&response, "retry-after");
        if status == 200 {
            let text = match response.text().await {
                Ok(text) => text,
                Err(e) => {
                    return Attempt::Fatal(EntraError::GraphUnreachable {
                        url: shown(url),
                        reason: plain(&e),
                    });
                }
            };
            return match serde_json::from_str(&text) {
                Ok(value) => Attempt::Success(Answer::Ok(value)),
                Err(e) => Attempt::Fatal(EntraError::GraphBadAnswer {
                    url: shown(url),
                    reason: format!("the answer is not JSON ({e})"),
                }),
            };
        }
        let now = SystemTime::now();
        let outcome = Outcome::Status {
            status,
            retry_after: retry_after.as_deref(),
            rate_limit_reset: None,
        };
        if status == 429 || status == 503 {
            let waited = retry_after
                .as_deref()
                .and_then(|v| retry::parse_retry_after(v, now));
            let error = EntraError::GraphThrottled {
                url: shown(url),
                status,
                retry_after: waited.map_or(0, |w| w.as_secs()),
                attempts: attempt,
            };
            return classify(outcome, now).attempt(error);
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let code = body["error"]["code"].as_str().unwrap_or("").to_string();
        if (status == 400 || status == 410)
            && RESYNC_CODES.iter().any(|c| c.eq_ignore_ascii_case(&code))
        {
            return Attempt::Success(Answer::Resync { status, code });
        }
        let message = body["error"]["message"]
            .as_str()
            .and_then(|m| m.lines().next())
            .unwrap_or("")
            .to_string();
        let permission = (status == 403).then(|| permission_for(url)).flatten();
        let error = EntraError::GraphRefused {
            url: shown(url),
            status,
            code,
            message,
            permission,
        };
        if status == 401 && !refreshed.swap(true, Ordering::Relaxed) {
            // The token may have been revoked or expired early: one fresh try, at once.
            *self.cached_token() = None;
            return Attempt::Retryable {
                error,
                wait: Some(Duration::ZERO),
            };
        }
        classify(outcome, now).attempt(error)
    }
}

/// The access token and its lifetime (`expires_in`, a number or a numeric
/// string; an hour when absent) of the token endpoint's answer; `None`
/// without a non-empty `access_token`.
pub(crate) fn token_answer(body: &Value) -> Option<(&str, Duration)> {
    let access = body["access_token"].as_str().filter(|t| !t.is_empty())?;
    let lifetime = Duration::from_secs(
        body["expires_in"]
            .as_u64()
            .or_else(|| body["expires_in"].as_str().and_then(|t| t.parse().ok()))
            .unwrap_or(3600),
    );
    Some((access, lifetime))
}

/// The longest a token is kept: the token endpoint's `expires_in` is taken at
/// its word up to a day (Entra's tokens live about an hour); past that it
/// would overflow the clock (`expires_in: 18446744073709551615` panicked).
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// When a token obtained at `now` that lives `lifetime` is renewed: a margin
/// before it expires.
pub(crate) fn renew_at(now: Instant, lifetime: Duration) -> Instant {
    let lifetime = lifetime.min(MAX_TOKEN_LIFETIME);
    let margin = RENEW_MARGIN.min(lifetime / 10);
    now + lifetime.saturating_sub(margin)
}

/// A header's value, if it is text.
fn header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The application permission reading `url` needs.
fn permission_for(url: &str) -> Option<&'static str> {
    let path = shown(url);
    if path.contains("/servicePrincipals/") {
        Some("Application.Read.All")
    } else if path.contains("/groups") {
        Some("GroupMember.Read.All")
    } else if path.contains("/users") {
        Some("User.Read.All")
    } else {
        None
    }
}

/// A reqwest error without the URL (it may carry a delta token).
fn plain(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "no answer within the timeout"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "the request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_classification_table() {
        // 2026-01-01T00:00:00Z
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let secs = Duration::from_secs;
        let status = |status, retry_after| Outcome::Status {
            status,
            retry_after,
            rate_limit_reset: None,
        };
        let cases = [
            // Throttled: Retry-After in seconds or as a date, waited in full up
            // to MAX_RETRY_AFTER; longer ends the request; unreadable backs off.
            (status(429, Some(" 7 ")), Verdict::After(secs(7))),
            (status(503, Some("120")), Verdict::After(secs(120))),
            (
                status(429, Some("Thu, 01 Jan 2026 00:00:30 GMT")),
                Verdict::After(secs(30)),
            ),
            (
                status(429, Some("Wed, 21 Oct 2015 07:28:00 GMT")),
                Verdict::After(secs(0)),
            ),
            (status(429, Some("121")), Verdict::Fatal),
            (status(503, Some("3600")), Verdict::Fatal),
            (status(429, Some("soon")), Verdict::Backoff),
            (status(429, None), Verdict::Backoff),
            (status(503, None), Verdict::Backoff),
            // Other server errors back off; Retry-After is not read there.
            (status(500, Some("3600")), Verdict::Backoff),
            (status(502, None), Verdict::Backoff),
            (status(504, None), Verdict::Backoff),
            // The request's fault, or answered by the caller (401, resync).
            (status(400, None), Verdict::Fatal),
            (status(401, None), Verdict::Fatal),
            (status(403, None), Verdict::Fatal),
            (status(404, None), Verdict::Fatal),
            (status(410, None), Verdict::Fatal),
            (Outcome::Transport(TransportKind::Timeout), Verdict::Backoff),
            (Outcome::Transport(TransportKind::Connect), Verdict::Backoff),
            (
                Outcome::Transport(TransportKind::Interrupted),
                Verdict::Backoff,
            ),
            (Outcome::Transport(TransportKind::Local), Verdict::Fatal),
        ];
        for (outcome, expected) in cases {
            assert_eq!(classify(outcome, now), expected, "{outcome:?}");
        }
    }

    #[test]
    fn a_403_names_the_permission_of_the_resource() {
        assert_eq!(
            permission_for("https://g/v1.0/users/delta?$select=id"),
            Some("User.Read.All")
        );
        assert_eq!(
            permission_for("https://g/v1.0/groups/delta?$deltatoken=x"),
            Some("GroupMember.Read.All")
        );
        assert_eq!(
            permission_for("https://g/v1.0/servicePrincipals/5f6e/appRoleAssignedTo?$top=999"),
            Some("Application.Read.All")
        );
        assert_eq!(
            shown("https://g/v1.0/users/delta?$deltatoken=secret"),
            "https://g/v1.0/users/delta"
        );
    }

    #[test]
    fn token_answer_with_an_absurd_expires_in_renews_within_a_day() {
        // Found by the `graph` fuzz target (fuzz/regressions/graph-token-expires-in-overflow).
        let body: Value =
            serde_json::from_str(r#"{"access_token":"t","expires_in":18446744073709551615}"#)
                .unwrap();
        let (token, lifetime) = token_answer(&body).unwrap();
        assert_eq!(token, "t");
        let now = Instant::now();
        let renew = renew_at(now, lifetime);
        assert!(renew > now && renew <= now + MAX_TOKEN_LIFETIME);
        // A string of digits is read the same; an ordinary hour keeps its margin.
        let body = serde_json::json!({"access_token": "t", "expires_in": "99999999999999999999"});
        assert_eq!(token_answer(&body).unwrap().1, Duration::from_secs(3600));
        assert_eq!(
            renew_at(now, Duration::from_secs(3600)),
            now + Duration::from_secs(3600 - 300)
        );
        assert!(token_answer(&serde_json::json!({"access_token": ""})).is_none());
    }
}
