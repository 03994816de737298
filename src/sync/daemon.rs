//! The daemon: cycles on the configured interval or cron schedule. A failed
//! cycle is logged and the next one runs on time; the config is re-read each
//! cycle so edits take effect (`paused: true` included). A paused or
//! quarantined cycle is skipped by the cycle itself (see `observe`), which
//! logs why; the daemon goes on to the next.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::apply::NoProgress;
use crate::config::{ConfigError, Schedule, Settings};

use super::SyncOptions;
use super::observe::{MetricsRenderer, observed_sync};

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
            // Paused or quarantined: the cycle logged why it was skipped.
            Err(e) if e.exit().is_skip() => {}
            Err(e) => tracing::error!(
                exit_code = e.exit().code(),
                error = ?e.to_string(),
                hint = ?e.hint().unwrap_or_default(),
                "cycle stopped"
            ),
        }
        if shutdown.load(Ordering::SeqCst) {
            break;
        }
        wait_for_next_cycle(&settings.schedule, &shutdown).await;
    }
    Ok(())
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
