//! Talking to Microsoft Graph: the OAuth2 client-credentials token (cached,
//! renewed before it expires), and GETs paced to `rate_limit`, with a
//! per-request timeout and bounded retries (429/503 after `Retry-After`, other
//! 5xx and connection errors with backoff). The secret and the token are never
//! logged or put in an error.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::EntraSettings;
use super::credential::Loaded;
use crate::source::SourceError;

/// Attempts per request (the first one included).
const MAX_ATTEMPTS: u32 = 6;
/// A `Retry-After` longer than this ends the cycle (the next one reads the
/// same changes again) rather than blocking it.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);
/// The first backoff after a 5xx or a connection error; doubled each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Backoffs never exceed this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A token is renewed this long before it expires (or at 9/10 of its life when
/// that comes first).
const RENEW_MARGIN: Duration = Duration::from_secs(300);

/// The error codes of an expired or unknown delta token (matched
/// case-insensitively, on 400 and 410 only).
const RESYNC_CODES: [&str; 2] = ["syncstatenotfound", "resyncrequired"];

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

/// One Graph session: a client, the credential, the cached token.
pub struct Graph<'a> {
    settings: &'a EntraSettings,
    http: reqwest::Client,
    credential: Loaded,
    token: Option<Token>,
    next_slot: Instant,
    /// Requests sent to Graph (the token endpoint not included).
    pub requests: u64,
}

/// `scheme://host/path` of `url`, without the query (delta and skip tokens).
pub fn shown(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => base.to_string(),
        None => url.to_string(),
    }
}

impl<'a> Graph<'a> {
    /// Reads the secret; nothing is sent yet.
    pub fn new(settings: &'a EntraSettings) -> Result<Graph<'a>, SourceError> {
        let credential = settings.credential.read()?;
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("idsync/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SourceError::GraphUnreachable {
                url: settings.graph_url.clone(),
                reason: format!("HTTP client set-up failed: {e}"),
            })?;
        Ok(Graph {
            settings,
            http,
            credential,
            token: None,
            next_slot: Instant::now(),
            requests: 0,
        })
    }

    fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.settings.authority_url, self.settings.tenant_id
        )
    }

    /// A valid access token: the cached one, or a new one.
    async fn token(&mut self) -> Result<SecretString, SourceError> {
        if let Some(t) = &self.token
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
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            let sent = self.http.post(&url).form(&form).send().await;
            match sent {
                Ok(r)
                    if (r.status().is_server_error() || r.status().as_u16() == 429)
                        && attempt < MAX_ATTEMPTS => {}
                Ok(r) => break r,
                Err(e) if attempt >= MAX_ATTEMPTS => {
                    return Err(SourceError::GraphUnreachable {
                        url,
                        reason: plain(&e),
                    });
                }
                Err(_) => {}
            }
            tokio::time::sleep(backoff(attempt)).await;
        };
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let error = body["error"].as_str().unwrap_or("");
            let description = body["error_description"]
                .as_str()
                .and_then(|d| d.lines().next())
                .unwrap_or("");
            let reason = match (error, description) {
                ("", "") => format!("HTTP {}", status.as_u16()),
                (e, "") => format!("HTTP {}: {e}", status.as_u16()),
                (e, d) => format!("HTTP {}: {e}: {d}", status.as_u16()),
            };
            return Err(SourceError::EntraAuthRefused {
                tenant: s.tenant_id.clone(),
                client_id: s.client_id.clone(),
                credential: s.credential.describe(),
                reason,
            });
        }
        let Some(access) = body["access_token"].as_str().filter(|t| !t.is_empty()) else {
            return Err(SourceError::GraphBadAnswer {
                url,
                reason: "the token endpoint's answer has no access_token".into(),
            });
        };
        let lifetime = Duration::from_secs(
            body["expires_in"]
                .as_u64()
                .or_else(|| body["expires_in"].as_str().and_then(|t| t.parse().ok()))
                .unwrap_or(3600),
        );
        let margin = RENEW_MARGIN.min(lifetime / 10);
        let value = SecretString::from(access.to_string());
        self.token = Some(Token {
            value: value.clone(),
            renew_at: Instant::now() + lifetime.saturating_sub(margin),
        });
        tracing::debug!(
            lifetime_s = lifetime.as_secs(),
            "Entra access token obtained"
        );
        Ok(value)
    }

    /// Waits for this request's slot under `rate_limit`.
    async fn pace(&mut self) {
        let now = Instant::now();
        if self.next_slot > now {
            tokio::time::sleep(self.next_slot - now).await;
        }
        let interval = Duration::from_secs_f64(1.0 / f64::from(self.settings.rate_limit.max(1)));
        self.next_slot = self.next_slot.max(Instant::now()) + interval;
    }

    /// GET `url` (absolute, under `graph_url`), retried as documented above.
    pub async fn get(&mut self, url: &str) -> Result<Answer, SourceError> {
        let graph = &self.settings.graph_url;
        if !url.starts_with(&format!("{graph}/")) {
            return Err(SourceError::GraphBadAnswer {
                url: shown(url),
                reason: format!("a link outside graph_url {graph} is not followed"),
            });
        }
        let mut refreshed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = self.token().await?;
            self.pace().await;
            self.requests += 1;
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
                    if attempt >= MAX_ATTEMPTS {
                        return Err(SourceError::GraphUnreachable {
                            url: shown(url),
                            reason: plain(&e),
                        });
                    }
                    tracing::debug!(url = %shown(url), attempt, "Graph request failed; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
            };
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after_secs);
            if status == 200 {
                let text = response
                    .text()
                    .await
                    .map_err(|e| SourceError::GraphUnreachable {
                        url: shown(url),
                        reason: plain(&e),
                    })?;
                return serde_json::from_str(&text).map(Answer::Ok).map_err(|e| {
                    SourceError::GraphBadAnswer {
                        url: shown(url),
                        reason: format!("the answer is not JSON ({e})"),
                    }
                });
            }
            if status == 429 || status == 503 {
                let wait = retry_after.map(Duration::from_secs);
                let too_long = wait.is_some_and(|w| w > MAX_RETRY_AFTER);
                if attempt >= MAX_ATTEMPTS || too_long {
                    return Err(SourceError::GraphThrottled {
                        url: shown(url),
                        status,
                        retry_after: retry_after.unwrap_or(0),
                        attempts: attempt,
                    });
                }
                let wait = wait.unwrap_or_else(|| backoff(attempt));
                tracing::info!(url = %shown(url), status, wait_s = wait.as_secs_f64(), "Graph throttled; waiting as asked");
                tokio::time::sleep(wait).await;
                continue;
            }
            if status >= 500 && attempt < MAX_ATTEMPTS {
                tokio::time::sleep(backoff(attempt)).await;
                continue;
            }
            if status == 401 && !refreshed {
                // The token may have been revoked or expired early: one fresh try.
                refreshed = true;
                self.token = None;
                continue;
            }
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let code = body["error"]["code"].as_str().unwrap_or("").to_string();
            if (status == 400 || status == 410)
                && RESYNC_CODES.iter().any(|c| c.eq_ignore_ascii_case(&code))
            {
                return Ok(Answer::Resync { status, code });
            }
            let message = body["error"]["message"]
                .as_str()
                .and_then(|m| m.lines().next())
                .unwrap_or("")
                .to_string();
            let permission = (status == 403).then(|| permission_for(url)).flatten();
            return Err(SourceError::GraphRefused {
                url: shown(url),
                status,
                code,
                message,
                permission,
            });
        }
    }
}

/// `Retry-After` as seconds, or as an HTTP date (seconds from now).
fn retry_after_secs(value: &str) -> Option<u64> {
    let value = value.trim();
    value.parse().ok().or_else(|| {
        let at = httpdate::parse_http_date(value).ok()?;
        Some(
            at.duration_since(std::time::SystemTime::now())
                .map_or(0, |d| d.as_secs()),
        )
    })
}

/// The application permission reading `url` needs.
fn permission_for(url: &str) -> Option<&'static str> {
    let path = shown(url);
    if path.contains("/groups") {
        Some("GroupMember.Read.All")
    } else if path.contains("/users") {
        Some("User.Read.All")
    } else {
        None
    }
}

fn backoff(attempt: u32) -> Duration {
    let exp = FIRST_BACKOFF.saturating_mul(1 << attempt.saturating_sub(1).min(10));
    let jitter = Duration::from_millis(fastrand::u64(0..=100));
    exp.min(MAX_BACKOFF) + jitter
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
    fn retry_after_is_seconds_or_a_date() {
        assert_eq!(retry_after_secs(" 7 "), Some(7));
        assert_eq!(retry_after_secs("Wed, 21 Oct 2015 07:28:00 GMT"), Some(0));
        assert_eq!(retry_after_secs("soon"), None);
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
            shown("https://g/v1.0/users/delta?$deltatoken=secret"),
            "https://g/v1.0/users/delta"
        );
    }
}
