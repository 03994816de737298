//! `notify:` — a chat webhook told about cycles that need a person.

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::error::ConfigError;

/// `notify:`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    webhook_url_env: String,
    #[serde(default)]
    on: Option<Vec<NotifyEvent>>,
}

/// What `notify:` can be told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    /// A guard stopped the cycle (exit 3).
    GuardStop,
    /// The target entered quarantine (scheduled cycles are held back).
    Quarantine,
    /// The cycle left operations failed (exit 1), or could not run at all.
    Failures,
}

/// Where and when to post a notification. The webhook URL is a secret (it
/// alone lets anyone post): it is read from the environment when a message is
/// sent, and never logged.
#[derive(Clone, Debug)]
pub struct NotifySettings {
    pub webhook_url_env: String,
    pub on: Vec<NotifyEvent>,
}

impl NotifySettings {
    /// The `notify:` section of `file`; every event unless `on:` names some.
    pub(super) fn compile(n: &Spanned<RawNotify>, file: &str) -> Result<Self, ConfigError> {
        let name = n.value.webhook_url_env.trim();
        if name.is_empty() || name.contains(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            return Err(ConfigError::at(
                file,
                &n.referenced,
                format!("notify.webhook_url_env {name:?} is not an environment variable name"),
                "name the variable that holds the webhook URL, e.g. `webhook_url_env: IDSYNC_WEBHOOK_URL`; the URL itself is a secret and never goes in the config".into(),
            ));
        }
        Ok(NotifySettings {
            webhook_url_env: name.to_string(),
            on: n.value.on.clone().unwrap_or_else(|| {
                vec![
                    NotifyEvent::GuardStop,
                    NotifyEvent::Quarantine,
                    NotifyEvent::Failures,
                ]
            }),
        })
    }
}
