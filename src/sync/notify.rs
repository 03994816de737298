//! Alerts without a metrics stack: after every cycle that ends badly — a
//! guard stop, an unreadable source, bad source data, failed operations or a
//! cycle that could not run, the target quarantined — and after the first
//! good cycle that follows, one message naming what happened, the exit code,
//! what to do and the counts. It goes to a chat webhook (`{"text": "…"}`, the
//! shape chat tools' incoming webhooks take), by email ([`super::email`]), or
//! both.
//!
//! The webhook URL is a secret (whoever has it can post): it is read from the
//! environment only to send, and never logged — a failed post is reported by
//! its HTTP status or the kind of transport error, without the URL. The
//! message holds counts, an error's first line and the config's path, never a
//! token or a password, and no user or group the error may go on to list. A
//! failing webhook or mail server is a warning and never changes how the
//! cycle ends; each is bounded ([`TIMEOUT`], [`super::email::TIMEOUT`]).

use std::path::Path;
use std::time::Duration;

use crate::config::{NotifyEvent, NotifySettings};

use super::email;
use super::facts::{CycleFacts, TroubleKind};

/// How long one post may take, connection included.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// One notification: the email's subject, and the text (the email's body,
/// the webhook's `text`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    pub subject: String,
    pub body: String,
}

/// What happened in a cycle, by event, each in a sentence.
fn events(facts: &CycleFacts) -> Vec<(NotifyEvent, String)> {
    let mut out = Vec::new();
    if let Some(trouble) = &facts.trouble {
        let what = &trouble.what;
        out.push(match trouble.kind {
            TroubleKind::GuardStop => (
                NotifyEvent::GuardStop,
                format!("a safety guard stopped the cycle: {what}"),
            ),
            TroubleKind::SourceError => (
                NotifyEvent::SourceError,
                format!("the source could not be read: {what}"),
            ),
            TroubleKind::BadData => (
                NotifyEvent::BadData,
                format!("the source's data cannot be used: {what}"),
            ),
            TroubleKind::Failures if facts.failed > 0 => (
                NotifyEvent::Failures,
                format!(
                    "{} operation{} failed (exit {}); they are retried next cycle",
                    facts.failed,
                    plural(facts.failed),
                    facts.exit_code
                ),
            ),
            TroubleKind::Failures => (NotifyEvent::Failures, format!("the cycle failed: {what}")),
        });
    }
    if facts.entered_quarantine {
        out.push((
            NotifyEvent::Quarantine,
            "two cycles in a row could not reach the source or the target, so cycles are quarantined: `sync` and the daemon hold them back for a while (`sync --force` runs one anyway)"
                .to_string(),
        ));
    }
    if let Some(bad) = &facts.recovered {
        let last = match bad.last_exit {
            Some(exit) => format!("the last ended with exit {exit}"),
            None => "the last was interrupted".to_string(),
        };
        let since = bad
            .since
            .map(|t| format!(" since {}", t.format("%Y-%m-%d %H:%M UTC")))
            .unwrap_or_default();
        out.push((
            NotifyEvent::Recovered,
            format!(
                "recovered: this cycle ended well (exit 0) after {} bad cycle{}{since}; {last}",
                bad.count,
                plural(bad.count)
            ),
        ));
    }
    out
}

/// The notification a cycle calls for, if any of the configured events
/// happened: one for the whole cycle, whatever it met.
pub fn alert(settings: &NotifySettings, facts: &CycleFacts, config: &Path) -> Option<Alert> {
    let (events, sentences): (Vec<NotifyEvent>, Vec<String>) = events(facts)
        .into_iter()
        .filter(|(event, _)| settings.on.contains(event))
        .unzip();
    if events.is_empty() {
        return None;
    }
    let names: Vec<&str> = events.iter().map(|e| title(*e)).collect();
    let subject = format!(
        "idsync: {} (exit {}) for {}",
        names.join(", "),
        facts.exit_code,
        config.display()
    );
    let mut body = format!(
        "idsync ({}): {}.\n\n",
        config.display(),
        sentences.join(";\n")
    );
    body.push_str(&format!("Exit code: {}\n", facts.exit_code));
    if let Some(hint) = facts.trouble.as_ref().and_then(|t| t.hint.as_deref()) {
        body.push_str(&format!("Hint: {hint}\n"));
    }
    body.push_str(&format!("Counts: {}\n", counts(facts)));
    body.push_str(&format!(
        "Finished: {} after {:.1}s\n\nSee `idsync status -c {}`.\n",
        facts.finished_at.format("%Y-%m-%d %H:%M:%S UTC"),
        facts.duration.as_secs_f64(),
        config.display()
    ));
    Some(Alert { subject, body })
}

/// The daemon's config stopped parsing: it skips its cycles until the file
/// is fixed, so the operator hears of it once (a `failures` event), with the
/// error's first line. `settings` are the last valid config's.
pub fn config_broken(settings: &NotifySettings, config: &Path, error: &str) -> Option<Alert> {
    settings.on.contains(&NotifyEvent::Failures).then(|| {
        let first = error.lines().next().unwrap_or_default().trim_end_matches('.');
        Alert {
            subject: format!("idsync: invalid config (exit 2) for {}", config.display()),
            body: format!(
                "idsync ({config}): the config is invalid, so the daemon runs no cycle until it is fixed (it reads the file again every minute, or every cycle's period if that is shorter): {first}.\n\n\
                 Exit code: 2\n\
                 Hint: `idsync validate -c {config}` shows where; nothing was read or changed meanwhile\n",
                config = config.display()
            ),
        }
    })
}

/// The daemon's config parses again after [`config_broken`] was sent (a
/// `recovered` event).
pub fn config_fixed(settings: &NotifySettings, config: &Path) -> Option<Alert> {
    settings.on.contains(&NotifyEvent::Recovered).then(|| Alert {
        subject: format!("idsync: recovered (config valid) for {}", config.display()),
        body: format!(
            "idsync ({}): recovered: the config is valid again, and the daemon runs its cycles; the next cycle's outcome is sent as usual.\n",
            config.display()
        ),
    })
}

/// An event as a subject names it.
fn title(event: NotifyEvent) -> &'static str {
    match event {
        NotifyEvent::GuardStop => "guard stop",
        NotifyEvent::Quarantine => "target quarantined",
        NotifyEvent::Failures => "failures",
        NotifyEvent::SourceError => "source error",
        NotifyEvent::BadData => "bad source data",
        NotifyEvent::Recovered => "recovered",
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The cycle's counts: operations, the source, what idsync manages.
fn counts(facts: &CycleFacts) -> String {
    let mut out = format!(
        "{} operation{} applied, {} failed",
        facts.applied,
        plural(facts.applied),
        facts.failed
    );
    if let Some(source) = facts.source_objects {
        out.push_str(&format!(
            "; the source holds {} user{} and {} group{} in scope",
            source.users,
            plural(source.users),
            source.groups,
            plural(source.groups)
        ));
    }
    let managed = |kind: &str| -> u64 {
        facts
            .objects
            .iter()
            .filter(|(k, status, _)| *k == kind && status != "removed")
            .map(|(_, _, n)| n)
            .sum()
    };
    if !facts.objects.is_empty() {
        let (users, groups) = (managed("user"), managed("group"));
        out.push_str(&format!(
            "; idsync manages {users} user{} and {groups} group{}",
            plural(users),
            plural(groups)
        ));
    }
    if facts.quarantined {
        out.push_str("; the target is quarantined");
    }
    out
}

/// Sends `alert` to the webhook and by email, as configured, at once; every
/// failure is a warning.
pub async fn send(settings: &NotifySettings, alert: &Alert) {
    let webhook = async {
        if let Some(name) = &settings.webhook_url_env {
            post_to(name, &alert.body).await;
        }
    };
    let mail = async {
        if let Some(email) = &settings.email {
            match email::send(email, &alert.subject, &alert.body).await {
                Ok(()) => tracing::info!(recipients = email.to.len(), "notify: email sent"),
                Err(why) => tracing::warn!(
                    server = %email.server(),
                    error = %why,
                    "notify: the email failed; the cycle's outcome is unchanged"
                ),
            }
        }
    };
    tokio::join!(webhook, mail);
}

/// Posts `text` to the webhook whose URL is in the variable `name`.
async fn post_to(name: &str, text: &str) {
    let url = match std::env::var(name) {
        Ok(url) if !url.trim().is_empty() => url.trim().to_string(),
        _ => {
            tracing::warn!(
                variable = %name,
                "notify: the webhook URL variable is not set; no notification was posted"
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

    use crate::config::{EmailSettings, SmtpTls};
    use crate::model::Exit;
    use crate::sync::facts::{BadCycles, SourceCounts, Trouble};

    const CONFIG: &str = "/etc/idsync/idsync.yaml";

    fn facts(exit_code: Exit, trouble: Option<(TroubleKind, &str)>) -> CycleFacts {
        CycleFacts {
            finished_at: chrono::Utc::now(),
            duration: Duration::from_secs(1),
            exit_code,
            last_success: None,
            operations: Vec::new(),
            objects: vec![
                ("group", "active".into(), 2),
                ("user", "active".into(), 3),
                ("user", "removed".into(), 4),
            ],
            source_objects: Some(SourceCounts {
                users: 3,
                groups: 2,
            }),
            http: BTreeMap::new(),
            throttled: 0,
            concurrency: None,
            quarantined: false,
            entered_quarantine: false,
            applied: 0,
            failed: 0,
            trouble: trouble.map(|(kind, what)| Trouble {
                kind,
                what: what.to_string(),
                hint: Some(format!("the hint for {what}")),
            }),
            recovered: None,
        }
    }

    fn all() -> NotifySettings {
        NotifySettings {
            webhook_url_env: Some("W".into()),
            email: None,
            on: NotifyEvent::ALL.to_vec(),
        }
    }

    fn alert_for(settings: &NotifySettings, facts: &CycleFacts) -> Option<Alert> {
        alert(settings, facts, Path::new(CONFIG))
    }

    /// Asserts every part of the message names the event, the exit code, the
    /// hint, the counts and the config; returns the body.
    fn assert_complete(alert: &Alert, title: &str, sentence: &str, exit: u8) -> String {
        assert_eq!(
            alert.subject,
            format!("idsync: {title} (exit {exit}) for {CONFIG}")
        );
        let body = &alert.body;
        assert!(
            body.starts_with(&format!("idsync ({CONFIG}): {sentence}")),
            "{body}"
        );
        assert!(body.contains(&format!("\nExit code: {exit}\n")), "{body}");
        assert!(
            body.contains("the source holds 3 users and 2 groups in scope")
                && body.contains("idsync manages 3 users and 2 groups"),
            "{body}"
        );
        assert!(
            body.contains(&format!("See `idsync status -c {CONFIG}`.")),
            "{body}"
        );
        body.clone()
    }

    #[test]
    fn a_good_cycle_after_a_good_one_says_nothing() {
        assert_eq!(alert_for(&all(), &facts(Exit::Ok, None)), None);
    }

    #[test]
    fn a_guard_stop_names_the_stop_the_exit_code_and_the_hint() {
        let f = facts(
            Exit::Guard,
            Some((
                TroubleKind::GuardStop,
                "the plan removes 9 objects; nothing was changed",
            )),
        );
        let a = alert_for(&all(), &f).unwrap();
        let body = assert_complete(
            &a,
            "guard stop",
            "a safety guard stopped the cycle: the plan removes 9 objects; nothing was changed.",
            3,
        );
        assert!(
            body.contains("\nHint: the hint for the plan removes 9"),
            "{body}"
        );
    }

    #[test]
    fn a_source_error_and_bad_data_are_told_apart() {
        let f = facts(
            Exit::Unreachable,
            Some((TroubleKind::SourceError, "LDAP ldap://dc1: cannot connect")),
        );
        let a = alert_for(&all(), &f).unwrap();
        let body = assert_complete(
            &a,
            "source error",
            "the source could not be read: LDAP ldap://dc1: cannot connect.",
            5,
        );
        assert!(body.contains("Hint: the hint for LDAP"), "{body}");
        let f = facts(
            Exit::Usage,
            Some((TroubleKind::BadData, "2 source records cannot be mapped")),
        );
        let a = alert_for(&all(), &f).unwrap();
        assert_complete(
            &a,
            "bad source data",
            "the source's data cannot be used: 2 source records cannot be mapped.",
            2,
        );
    }

    #[test]
    fn failed_operations_are_counted_and_a_cycle_that_could_not_run_says_why() {
        let mut f = facts(
            Exit::Partial,
            Some((TroubleKind::Failures, "2 operations failed")),
        );
        f.applied = 5;
        f.failed = 2;
        let a = alert_for(&all(), &f).unwrap();
        let body = assert_complete(
            &a,
            "failures",
            "2 operations failed (exit 1); they are retried next cycle.",
            1,
        );
        assert!(
            body.contains("Counts: 5 operations applied, 2 failed;"),
            "{body}"
        );
        let f = facts(
            Exit::Unreachable,
            Some((TroubleKind::Failures, "target: connection refused")),
        );
        let a = alert_for(&all(), &f).unwrap();
        assert_complete(
            &a,
            "failures",
            "the cycle failed: target: connection refused.",
            5,
        );
    }

    #[test]
    fn entering_quarantine_goes_in_the_same_message_as_the_failure() {
        let mut f = facts(
            Exit::Unreachable,
            Some((TroubleKind::Failures, "target: connection refused")),
        );
        f.entered_quarantine = true;
        f.quarantined = true;
        let a = alert_for(&all(), &f).unwrap();
        let body = assert_complete(
            &a,
            "failures, target quarantined",
            "the cycle failed: target: connection refused;\ntwo cycles in a row could not reach the source or the target, so cycles are quarantined",
            5,
        );
        assert!(body.contains("; the target is quarantined\n"), "{body}");
        // Only the quarantine is asked for: only it is told.
        let only = NotifySettings {
            on: vec![NotifyEvent::Quarantine],
            ..all()
        };
        let a = alert_for(&only, &f).unwrap();
        assert_complete(
            &a,
            "target quarantined",
            "two cycles in a row could not reach the source or the target, so cycles are quarantined: `sync` and the daemon hold them back for a while (`sync --force` runs one anyway).",
            5,
        );
        // Still quarantined, not entered this cycle: the failure alone.
        f.entered_quarantine = false;
        assert_eq!(alert_for(&only, &f), None);
    }

    #[test]
    fn recovery_names_the_bad_cycles_before_it() {
        let mut f = facts(Exit::Ok, None);
        f.applied = 1;
        f.recovered = Some(BadCycles {
            count: 3,
            since: Some("2030-01-02T03:04:05Z".parse().unwrap()),
            last_exit: Some(Exit::Unreachable),
        });
        let a = alert_for(&all(), &f).unwrap();
        let body = assert_complete(
            &a,
            "recovered",
            "recovered: this cycle ended well (exit 0) after 3 bad cycles since 2030-01-02 03:04 UTC; the last ended with exit 5.",
            0,
        );
        assert!(!body.contains("Hint:"), "{body}");
        f.recovered = Some(BadCycles {
            count: 1,
            since: None,
            last_exit: None,
        });
        let a = alert_for(&all(), &f).unwrap();
        assert!(
            a.body
                .contains("after 1 bad cycle; the last was interrupted."),
            "{}",
            a.body
        );
        let no_recovery = NotifySettings {
            on: vec![NotifyEvent::GuardStop, NotifyEvent::Failures],
            ..all()
        };
        assert_eq!(alert_for(&no_recovery, &f), None);
    }

    #[test]
    fn only_the_configured_events_make_a_message() {
        let only_guard = NotifySettings {
            on: vec![NotifyEvent::GuardStop],
            ..all()
        };
        for kind in [
            TroubleKind::SourceError,
            TroubleKind::BadData,
            TroubleKind::Failures,
        ] {
            let f = facts(Exit::Partial, Some((kind, "x")));
            assert_eq!(alert_for(&only_guard, &f), None, "{kind:?}");
        }
        let f = facts(Exit::Guard, Some((TroubleKind::GuardStop, "x")));
        assert!(alert_for(&only_guard, &f).is_some());
    }

    #[tokio::test]
    async fn a_dead_mail_server_is_a_warning_and_ends_in_bounded_time() {
        // Nothing listens on the port: refused at once; sending returns.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let settings = NotifySettings {
            webhook_url_env: None,
            email: Some(EmailSettings {
                host: "127.0.0.1".into(),
                port,
                tls: SmtpTls::Plain,
                from: "idsync@example.com".parse().unwrap(),
                to: vec!["ops@example.com".parse().unwrap()],
                login: None,
            }),
            on: NotifyEvent::ALL.to_vec(),
        };
        let alert = Alert {
            subject: "s".into(),
            body: "b".into(),
        };
        let started = std::time::Instant::now();
        send(&settings, &alert).await;
        assert!(started.elapsed() < email::TIMEOUT);
        let e = email::send(settings.email.as_ref().unwrap(), "s", "b")
            .await
            .unwrap_err();
        assert!(e.contains("onnect"), "{e}");
    }
}
