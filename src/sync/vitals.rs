//! What the daemon's endpoint answers (`metrics_listen:`): the daemon loop tells
//! [`Vitals`] when a cycle starts and how it ended and when the next is due;
//! the endpoint asks it.
//!
//! Two questions, kept apart because an orchestrator acts on them apart:
//!
//! - `/healthz` (liveness): is the loop itself alive? 503 only when it is
//!   stuck — a cycle running, or a due cycle not started, for longer than
//!   [`stall_limit`] — which a restart cures (the journal resumes the cycle).
//!   A failing target, a guard stop, a quarantine or a broken config are not
//!   stuck: a restart would cure none of them, and restarting a daemon in a
//!   loop against a failing SCIM API only adds load to it.
//! - `/readyz` (readiness): did the last cycle end well? 200 after exit 0 or
//!   a paused cycle (6, not a failure); 503 with the exit code and the one
//!   line that says why otherwise, and before the first cycle has ended.
//!
//! `/metrics` is the last cycle's text (rendered once, the metrics file's
//! own) followed by the daemon's own series. No answer holds a secret: the
//! lines are the ones the log already carries.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::endpoint::{Reply, Routes};
use crate::model::Exit;

use super::facts::{DaemonFacts, ServedMetrics};

/// Renders the daemon's own series on `/metrics`.
pub type DaemonRenderer = fn(&DaemonFacts) -> String;

/// The least time a cycle may run (or a due cycle wait to start) before the
/// loop counts as stuck: a first sync of a large directory against a
/// rate-limited API takes tens of minutes, and must not be restarted midway.
const MIN_STALL_LIMIT: Duration = Duration::from_secs(30 * 60);

/// How long a cycle may run, or a due cycle fail to start, before `/healthz`
/// says the loop is stuck: twice the schedule's period, at least 30 minutes.
pub fn stall_limit(period: Duration) -> Duration {
    (period * 2).max(MIN_STALL_LIMIT)
}

/// What the loop is doing.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Started, no cycle yet.
    Starting,
    /// A cycle started then.
    Cycle { since: Instant },
    /// Waiting for the next cycle, due then.
    Waiting { due: Instant, due_at: DateTime<Utc> },
}

/// How the last cycle ended.
#[derive(Clone, Debug)]
struct Ended {
    exit: Exit,
    at: DateTime<Utc>,
    /// One line: what it did, or why it stopped.
    what: String,
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    period: Duration,
    last: Option<Ended>,
}

/// The daemon's state as the endpoint reports it; shared between the loop
/// and the endpoint's connections.
pub struct Vitals {
    started_at: DateTime<Utc>,
    inner: Mutex<Inner>,
    served: ServedMetrics,
    render: DaemonRenderer,
}

/// A verdict: whether it is good, and the line that says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub good: bool,
    pub line: String,
}

impl Vitals {
    /// A daemon started now, on a schedule of `period`.
    pub fn new(period: Duration, render: DaemonRenderer) -> Vitals {
        Vitals {
            started_at: Utc::now(),
            inner: Mutex::new(Inner {
                phase: Phase::Starting,
                period,
                last: None,
            }),
            served: Mutex::new(None),
            render,
        }
    }

    /// Where a cycle's metrics text goes, for `/metrics`.
    pub fn served(&self) -> &ServedMetrics {
        &self.served
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A cycle starts now.
    pub fn cycle_started(&self) {
        self.inner().phase = Phase::Cycle {
            since: Instant::now(),
        };
    }

    /// The cycle (or the attempt to load the config for one) ended with
    /// `exit`; `what` is one line saying what it did or why it stopped.
    pub fn cycle_ended(&self, exit: Exit, what: &str) {
        self.inner().last = Some(Ended {
            exit,
            at: Utc::now(),
            what: what.lines().next().unwrap_or_default().to_string(),
        });
    }

    /// The loop now waits `wait` for the next cycle, on a schedule of `period`.
    pub fn waiting(&self, wait: Duration, period: Duration) {
        let mut inner = self.inner();
        inner.period = period;
        inner.phase = Phase::Waiting {
            due: Instant::now() + wait,
            due_at: Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default(),
        };
    }

    /// `/healthz` at `now`.
    pub fn liveness(&self, now: Instant) -> Verdict {
        let inner = self.inner();
        let limit = stall_limit(inner.period);
        let late = |since: Instant| now.saturating_duration_since(since);
        let (good, line) = match inner.phase {
            Phase::Starting => (true, "ok: starting the first cycle".to_string()),
            Phase::Cycle { since } if late(since) > limit => (
                false,
                format!(
                    "stuck: a cycle has been running for {}, longer than {} (twice the schedule's period, at least 30m)",
                    whole(late(since)),
                    whole(limit)
                ),
            ),
            Phase::Cycle { since } => (
                true,
                format!("ok: a cycle has been running for {}", whole(late(since))),
            ),
            Phase::Waiting { due, due_at } if late(due) > limit => (
                false,
                format!(
                    "stuck: the cycle due at {} has not started",
                    due_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            ),
            Phase::Waiting { due_at, .. } => (
                true,
                format!(
                    "ok: the next cycle is due at {}",
                    due_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            ),
        };
        Verdict { good, line }
    }

    /// `/readyz`.
    pub fn readiness(&self) -> Verdict {
        let inner = self.inner();
        let Some(last) = &inner.last else {
            return Verdict {
                good: false,
                line: "not ready: no cycle has ended yet".into(),
            };
        };
        let at = last.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let good = matches!(last.exit, Exit::Ok | Exit::Paused);
        let line = if good {
            format!(
                "ready: the last cycle ended with exit {} at {at}: {}",
                last.exit, last.what
            )
        } else {
            format!(
                "not ready: the last cycle ended with exit {} at {at}: {}",
                last.exit, last.what
            )
        };
        Verdict { good, line }
    }

    /// The daemon's own series' facts at `now`.
    pub fn facts(&self, now: Instant) -> DaemonFacts {
        let live = self.liveness(now).good;
        let ready = self.readiness().good;
        let phase = self.inner().phase;
        DaemonFacts {
            started_at: self.started_at,
            cycle_running: matches!(phase, Phase::Cycle { .. }),
            next_cycle_at: match phase {
                Phase::Waiting { due_at, .. } => Some(due_at),
                _ => None,
            },
            live,
            ready,
        }
    }
}

/// A duration in whole seconds, as `1h 2m 3s`.
fn whole(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

fn reply(verdict: Verdict) -> Reply {
    let body = format!("{}\n", verdict.line);
    if verdict.good {
        Reply::ok(body)
    } else {
        Reply::unavailable(body)
    }
}

impl Routes for Vitals {
    fn get(&self, path: &str) -> Option<Reply> {
        match path {
            "/healthz" => Some(reply(self.liveness(Instant::now()))),
            "/readyz" => Some(reply(self.readiness())),
            "/metrics" => {
                let mut body = super::observe::lock(&self.served)
                    .clone()
                    .unwrap_or_default();
                body.push_str(&(self.render)(&self.facts(Instant::now())));
                Some(Reply::ok(body))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vitals(period: Duration) -> Vitals {
        Vitals::new(period, |_| String::new())
    }

    #[test]
    fn the_loop_is_alive_until_a_cycle_or_a_due_one_is_late_by_the_stall_limit() {
        let period = Duration::from_secs(40 * 60);
        assert_eq!(stall_limit(period), Duration::from_secs(80 * 60));
        assert_eq!(stall_limit(Duration::from_secs(1)), MIN_STALL_LIMIT);
        let v = vitals(period);
        let now = Instant::now();
        assert!(v.liveness(now).good, "{:?}", v.liveness(now));

        v.cycle_started();
        let running = v.liveness(Instant::now() + Duration::from_secs(79 * 60));
        assert!(running.good, "{running:?}");
        let stuck = v.liveness(Instant::now() + Duration::from_secs(81 * 60));
        assert!(!stuck.good);
        assert!(
            stuck
                .line
                .starts_with("stuck: a cycle has been running for 1h 21m"),
            "{}",
            stuck.line
        );

        // A failed cycle is not a stuck loop: alive, not ready.
        v.cycle_ended(Exit::Unreachable, "cannot reach the target\nmore");
        v.waiting(period, period);
        assert!(v.liveness(Instant::now()).good);
        let due_long_ago = v.liveness(Instant::now() + period + Duration::from_secs(81 * 60));
        assert!(!due_long_ago.good);
        assert!(due_long_ago.line.starts_with("stuck: the cycle due at "));
    }

    #[test]
    fn ready_after_a_good_or_paused_cycle_and_not_after_a_failed_or_held_one() {
        let v = vitals(Duration::from_secs(60));
        assert_eq!(
            v.readiness(),
            Verdict {
                good: false,
                line: "not ready: no cycle has ended yet".into()
            }
        );
        for (exit, good) in [
            (Exit::Ok, true),
            (Exit::Paused, true),
            (Exit::Partial, false),
            (Exit::Usage, false),
            (Exit::Guard, false),
            (Exit::Locked, false),
            (Exit::Unreachable, false),
            (Exit::Quarantined, false),
        ] {
            v.cycle_ended(exit, "what happened\nthe records listed after it");
            let verdict = v.readiness();
            assert_eq!(verdict.good, good, "{exit}: {verdict:?}");
            assert!(
                verdict.line.contains(&format!("exit {exit} at "))
                    && verdict.line.ends_with(": what happened"),
                "{}",
                verdict.line
            );
        }
    }

    #[test]
    fn metrics_are_the_last_cycles_text_then_the_daemons_series() {
        let v = Vitals::new(Duration::from_secs(60), |facts| {
            format!("daemon running={}\n", facts.cycle_running)
        });
        let body = |v: &Vitals| v.get("/metrics").unwrap().body;
        assert_eq!(body(&v), "daemon running=false\n");
        *super::super::observe::lock(v.served()) = Some("cycle 1\n".into());
        v.cycle_started();
        assert_eq!(body(&v), "cycle 1\ndaemon running=true\n");
        assert_eq!(v.get("/healthz").unwrap().status, 200);
        assert_eq!(v.get("/readyz").unwrap().status, 503);
        assert_eq!(v.get("/other"), None);
    }
}
