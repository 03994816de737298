//! `notify:` — who is told about cycles that need a person (a chat webhook,
//! email through SMTP, or both), and about which.

use std::path::Path;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::email::{EmailSettings, RawEmail};
use super::env::is_variable_name;
use super::error::ConfigError;

/// `notify:`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    #[serde(default)]
    webhook_url_env: Option<Spanned<String>>,
    #[serde(default)]
    on: Option<Vec<NotifyEvent>>,
    #[serde(default)]
    email: Option<Spanned<RawEmail>>,
}

/// What `notify:` can be told about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyEvent {
    /// A guard stopped the cycle (exit 3).
    GuardStop,
    /// The target entered quarantine (scheduled cycles are held back).
    Quarantine,
    /// The cycle left operations failed (exit 1), or could not run at all
    /// (the target unreachable, a token or state DB problem).
    Failures,
    /// The source could not be read (exit 5).
    SourceError,
    /// The source's data cannot be used: records the mapping refuses, a
    /// malformed file (exit 2).
    BadData,
    /// The first good cycle after a bad one.
    Recovered,
}

impl NotifyEvent {
    /// Every event: what `notify:` is told about unless `on:` names some.
    pub const ALL: [NotifyEvent; 6] = [
        NotifyEvent::GuardStop,
        NotifyEvent::Quarantine,
        NotifyEvent::Failures,
        NotifyEvent::SourceError,
        NotifyEvent::BadData,
        NotifyEvent::Recovered,
    ];

    /// As written in `on:`.
    pub fn name(self) -> &'static str {
        match self {
            NotifyEvent::GuardStop => "guard_stop",
            NotifyEvent::Quarantine => "quarantine",
            NotifyEvent::Failures => "failures",
            NotifyEvent::SourceError => "source_error",
            NotifyEvent::BadData => "bad_data",
            NotifyEvent::Recovered => "recovered",
        }
    }
}

/// Where and when to send a notification. The webhook URL is a secret (it
/// alone lets anyone post): it is read from the environment when a message is
/// sent, and never logged; so is the SMTP password.
#[derive(Clone, Debug)]
pub struct NotifySettings {
    /// The variable holding the webhook's URL.
    pub webhook_url_env: Option<String>,
    pub email: Option<EmailSettings>,
    pub on: Vec<NotifyEvent>,
}

impl NotifySettings {
    /// The `notify:` section of `file`; every event unless `on:` names some.
    /// A password file is relative to `base`, the config's folder.
    pub(super) fn compile(
        n: &Spanned<RawNotify>,
        file: &str,
        base: &Path,
    ) -> Result<Self, ConfigError> {
        let webhook_url_env = match &n.value.webhook_url_env {
            None => None,
            Some(name) => {
                let value = name.value.trim();
                if !is_variable_name(value) {
                    return Err(ConfigError::at(
                        file,
                        &name.referenced,
                        format!(
                            "notify.webhook_url_env {value:?} is not an environment variable name"
                        ),
                        "name the variable that holds the webhook URL, e.g. `webhook_url_env: IDSYNC_WEBHOOK_URL`; the URL itself is a secret and never goes in the config".into(),
                    ));
                }
                Some(value.to_string())
            }
        };
        let email = match &n.value.email {
            None => None,
            Some(email) => Some(EmailSettings::compile(email, file, base)?),
        };
        if webhook_url_env.is_none() && email.is_none() {
            return Err(ConfigError::at(
                file,
                &n.referenced,
                "notify: names no way to send a notification".into(),
                "add `webhook_url_env: VARIABLE` (a chat webhook), an `email:` section (SMTP), or both".into(),
            ));
        }
        Ok(NotifySettings {
            webhook_url_env,
            email,
            on: n
                .value
                .on
                .clone()
                .unwrap_or_else(|| NotifyEvent::ALL.to_vec()),
        })
    }

    /// One line for `validate`: where notifications go and about what.
    pub fn describe(&self) -> String {
        let mut to = Vec::new();
        if let Some(name) = &self.webhook_url_env {
            to.push(format!("webhook from ${name}"));
        }
        if let Some(email) = &self.email {
            to.push(format!("email via {}", email.describe()));
        }
        let on: Vec<&str> = self.on.iter().map(|e| e.name()).collect();
        format!("{}; on {}", to.join("; "), on.join(", "))
    }
}
