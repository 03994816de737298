//! The daemon: cycles on the configured interval or cron schedule. A failed
//! cycle is logged and the next one runs on time; the config is re-read each
//! cycle so edits take effect; a quarantined target holds scheduled cycles back.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::apply::NoProgress;
use crate::config::{ConfigError, Schedule, Settings};
use crate::state::StateDb;

use super::observe::{MetricsRenderer, observed_sync};
use super::{SyncOptions, quarantine};

/// How long to wait before re-reading a config that failed to load.
const RETRY_BROKEN_CONFIG: Duration = Duration::from_secs(60);

/// Runs cycles until `shutdown` is set. Only a config that is invalid at start
/// is an error. After each cycle the metrics file (`metrics_file`, or
/// `metrics_file` given here, which wins) is rewritten with `render`.
pub async fn run(
    path: &Path,
    shutdown: Arc<AtomicBool>,
    metrics_file: Option<PathBuf>,
    render: MetricsRenderer,
) -> Result<(), ConfigError> {
    let settings = Settings::load(path)?;
    tracing::info!(schedule = %describe_schedule(&settings.schedule), "daemon started");
    if let Some(warning) = settings.target.cleartext_warning() {
        tracing::warn!("{warning}");
    }
    while !shutdown.load(Ordering::SeqCst) {
        let settings = match Settings::load(path) {
            Ok(mut s) => {
                if metrics_file.is_some() {
                    s.metrics_file = metrics_file.clone();
                }
                s
            }
            Err(e) => {
                tracing::error!(error = %e, "config is invalid; skipping this cycle");
                wait_for_next_cycle(&Schedule::Interval(RETRY_BROKEN_CONFIG), &shutdown).await;
                continue;
            }
        };
        if let Some(q) = held_by_quarantine(&settings) {
            tracing::warn!(
                until = ?q.until,
                failed_cycles = q.failed_cycles,
                reason = ?q.reason,
                "target quarantined after repeated failures; skipping this cycle (run `idsync sync` by hand to try now)"
            );
        } else {
            match observed_sync(
                &settings,
                &SyncOptions::default(),
                shutdown.clone(),
                &NoProgress,
                render,
            )
            .await
            {
                Ok(summary) => tracing::info!(
                    applied = summary.applied,
                    failed = summary.failed,
                    exit_code = summary.exit_code.code(),
                    "cycle done"
                ),
                Err(e) => tracing::error!(
                    exit_code = e.exit().code(),
                    error = ?e.to_string(),
                    hint = ?e.hint().unwrap_or_default(),
                    "cycle stopped"
                ),
            }
        }
        if shutdown.load(Ordering::SeqCst) {
            break;
        }
        wait_for_next_cycle(&settings.schedule, &shutdown).await;
    }
    Ok(())
}

/// The quarantine, when it holds scheduled cycles back now.
fn held_by_quarantine(settings: &Settings) -> Option<quarantine::Quarantine> {
    let db = StateDb::open_read_only(&settings.state_path).ok()??;
    let q = quarantine::load(&db).ok()?;
    q.holds(chrono::Utc::now()).then_some(q)
}

pub fn describe_schedule(s: &Schedule) -> String {
    match s {
        Schedule::Interval(d) => format!("every {}", humantime::format_duration(*d)),
        Schedule::Cron(c) => format!("cron {c}"),
    }
}

/// How long until the next cycle is due.
fn next_wait(schedule: &Schedule) -> Duration {
    match schedule {
        Schedule::Interval(d) => *d,
        Schedule::Cron(c) => c
            .upcoming(chrono::Utc)
            .next()
            .and_then(|t| (t - chrono::Utc::now()).to_std().ok())
            .unwrap_or(RETRY_BROKEN_CONFIG),
    }
}

/// Sleeps until the next cycle is due, waking early on shutdown.
async fn wait_for_next_cycle(schedule: &Schedule, shutdown: &AtomicBool) {
    let deadline = Instant::now() + next_wait(schedule);
    while Instant::now() < deadline && !shutdown.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(1).min(deadline - Instant::now())).await;
    }
}
