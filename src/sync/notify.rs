//! Alerts without a metrics stack: a short JSON message (`{"text": "…"}`, the
//! shape chat tools' incoming webhooks take) posted when a cycle stops at a
//! guard, puts the target into quarantine, or leaves operations failed.
//!
//! The webhook URL is a secret (whoever has it can post): it is read from the
//! environment only to send, and never logged — a failed post is reported by
//! its HTTP status or the kind of transport error, without the URL. The
//! message holds counts and the config's path, never a token, a user or a
//! group. A failing webhook is a warning and never changes how the cycle ends;
//! each post is bounded by [`TIMEOUT`].

use std::path::Path;
use std::time::Duration;

use crate::config::{NotifyEvent, NotifySettings};

use super::Exit;
use super::facts::CycleFacts;

/// How long one post may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The message a cycle calls for, if any of the configured events happened.
pub fn message(settings: &NotifySettings, facts: &CycleFacts, config: &Path) -> Option<String> {
    let wants = |e: NotifyEvent| settings.on.contains(&e);
    let mut parts = Vec::new();
    if wants(NotifyEvent::GuardStop) && facts.exit_code == Exit::Guard {
        let why = facts
            .stopped
            .as_deref()
            .unwrap_or("a safety guard stopped it");
        parts.push(format!("a safety guard stopped the cycle: {why}"));
    }
    if wants(NotifyEvent::Quarantine) && facts.entered_quarantine {
        parts.push(
            "the target failed two cycles in a row and is quarantined: scheduled cycles are held back"
                .to_string(),
        );
    }
    if wants(NotifyEvent::Failures) && (facts.failed > 0 || facts.exit_code == Exit::Partial) {
        parts.push(format!(
            "{} operation{} failed (exit {}); they are retried next cycle",
            facts.failed,
            if facts.failed == 1 { "" } else { "s" },
            facts.exit_code
        ));
    }
    if parts.is_empty() {
        return None;
    }
    Some(format!(
        "idsync ({}): {}. See `idsync status -c {}`.",
        config.display(),
        parts.join("; "),
        config.display()
    ))
}

/// Posts `text` to the webhook named by `settings`; every failure is a warning.
pub async fn send(settings: &NotifySettings, text: &str) {
    let name = &settings.webhook_url_env;
    let url = match std::env::var(name) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_string(),
        _ => {
            tracing::warn!(
                variable = %name,
                "notify: the webhook URL variable is not set; no notification was sent"
            );
            return;
        }
    };
    match post(&url, text).await {
        Ok(()) => tracing::info!("notify: notification sent"),
        Err(why) => tracing::warn!(
            error = %why,
            "notify: the webhook failed; the cycle's outcome is unchanged"
        ),
    }
}

/// One bounded POST. The error names what went wrong, never the URL.
async fn post(url: &str, text: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.without_url().to_string())?;
    let response = client
        .post(url)
        .json(&serde_json::json!({ "text": text }))
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                format!("no answer within {}s", TIMEOUT.as_secs())
            } else if e.is_builder() {
                "the webhook URL is not a valid http(s) URL".to_string()
            } else {
                e.without_url().to_string()
            }
        })?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("the webhook answered HTTP {}", status.as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn facts(exit_code: Exit, failed: u64, entered_quarantine: bool) -> CycleFacts {
        CycleFacts {
            finished_at: chrono::Utc::now(),
            duration: Duration::from_secs(1),
            exit_code,
            last_success: None,
            operations: Vec::new(),
            objects: Vec::new(),
            source_objects: None,
            http: BTreeMap::new(),
            throttled: 0,
            quarantined: entered_quarantine,
            entered_quarantine,
            failed,
            stopped: (exit_code == Exit::Guard).then(|| "the plan removes 9 objects".to_string()),
        }
    }

    fn all() -> NotifySettings {
        NotifySettings {
            webhook_url_env: "W".into(),
            on: vec![
                NotifyEvent::GuardStop,
                NotifyEvent::Quarantine,
                NotifyEvent::Failures,
            ],
        }
    }

    #[test]
    fn only_the_configured_events_make_a_message() {
        let config = Path::new("/etc/idsync/idsync.yaml");
        assert_eq!(message(&all(), &facts(Exit::Ok, 0, false), config), None);
        let guard = message(&all(), &facts(Exit::Guard, 0, false), config).unwrap();
        assert!(
            guard.contains("safety guard") && guard.contains("removes 9"),
            "{guard}"
        );
        let failed = message(&all(), &facts(Exit::Partial, 2, false), config).unwrap();
        assert!(failed.contains("2 operations failed (exit 1)"), "{failed}");
        let q = message(&all(), &facts(Exit::Unreachable, 0, true), config).unwrap();
        assert!(q.contains("quarantined"), "{q}");
        let only_guard = NotifySettings {
            on: vec![NotifyEvent::GuardStop],
            ..all()
        };
        assert_eq!(
            message(&only_guard, &facts(Exit::Partial, 2, true), config),
            None
        );
    }
}
