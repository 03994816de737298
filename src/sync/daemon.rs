//! The daemon: cycles on the configured interval or cron schedule. A failed
//! cycle is logged and the next one runs on time; the config is re-read each
//! cycle so edits take effect (`paused: true` included). A paused or
//! quarantined cycle is skipped by the cycle itself (see `observe`), which
//! logs why; the daemon goes on to the next.
//!
//! With `metrics_listen:` (or `--metrics-listen`) it serves `/metrics`, `/healthz` and
//! `/readyz` on that address from the start until it stops (see `vitals`);
//! the address is read once, at start.
//!
//! A config that stops parsing skips cycles until it is fixed (read again
//! after a minute, or the schedule's period if that is shorter); the last
//! valid config's `notify:` hears of it once, and once more when it parses
//! again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::apply::NoProgress;
use crate::config::{ConfigError, NotifySettings, Schedule, Settings};
use crate::endpoint;
use crate::model::Exit;

use super::SyncOptions;
use super::notify;
use super::observe::{MetricsOut, MetricsRenderer, observed_sync};
use super::vitals::{DaemonRenderer, Vitals};

/// The longest wait before re-reading a config that failed to load.
const RETRY_BROKEN_CONFIG: Duration = Duration::from_secs(60);

/// What `idsync daemon` was asked for besides the config.
pub struct DaemonOptions {
    /// `--metrics-file`: wins over `metrics_file:`.
    pub metrics_file: Option<PathBuf>,
    /// `--metrics-listen`: wins over `metrics_listen:`.
    pub metrics_listen: Option<SocketAddr>,
    /// Renders a cycle's metrics (the file's and `/metrics`' text).
    pub render: MetricsRenderer,
    /// Renders the daemon's own series on `/metrics`.
    pub render_daemon: DaemonRenderer,
}

/// Runs cycles until `shutdown` is set. Only a config that is invalid at start
/// (or an endpoint address that cannot be bound) is an error. After each
/// cycle the metrics file (`metrics_file`, or the option, which wins) is
/// rewritten, and the endpoint's answers follow the cycle.
pub async fn run(
    path: &Path,
    shutdown: Arc<AtomicBool>,
    options: DaemonOptions,
) -> Result<(), ConfigError> {
    let settings = Settings::load(path)?;
    tracing::info!(schedule = %describe_schedule(&settings.schedule), "daemon started");
    if let Some(warning) = settings.target.cleartext_warning() {
        tracing::warn!("{warning}");
    }
    let vitals = Arc::new(Vitals::new(
        period(&settings.schedule),
        options.render_daemon,
    ));
    let server = match options.metrics_listen.or(settings.metrics_listen) {
        None => None,
        Some(addr) => {
            let listener = endpoint::bind(addr)
                .await
                .map_err(|e| cannot_listen(path, addr, &e))?;
            let bound = listener.local_addr().unwrap_or(addr);
            tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
            Some(tokio::spawn(endpoint::serve(
                listener,
                vitals.clone(),
                shutdown.clone(),
            )))
        }
    };
    let metrics = MetricsOut {
        render: options.render,
        served: server.is_some().then(|| vitals.served()),
    };
    // Who hears that the config broke: the last valid config's notify.
    let mut notify = settings.notify.clone();
    let mut told_broken = false;
    let mut retry = RETRY_BROKEN_CONFIG.min(period(&settings.schedule));
    while !shutdown.load(Ordering::SeqCst) {
        let settings = match Settings::load(path) {
            Ok(mut s) => {
                if options.metrics_file.is_some() {
                    s.metrics_file = options.metrics_file.clone();
                }
                notify = s.notify.clone();
                retry = RETRY_BROKEN_CONFIG.min(period(&s.schedule));
                if std::mem::take(&mut told_broken) {
                    tell(notify.as_ref(), |n| notify::config_fixed(n, path)).await;
                }
                s
            }
            Err(e) => {
                tracing::error!(error = %e, "config is invalid; skipping this cycle");
                vitals.cycle_ended(Exit::Usage, &format!("the config is invalid: {e}"));
                if !told_broken {
                    let error = e.to_string();
                    told_broken =
                        tell(notify.as_ref(), |n| notify::config_broken(n, path, &error)).await;
                }
                vitals.waiting(retry, retry);
                wait_for_next_cycle(retry, &shutdown).await;
                continue;
            }
        };
        vitals.cycle_started();
        let result = observed_sync(
            &settings,
            &SyncOptions::default(),
            shutdown.clone(),
            &NoProgress,
            metrics,
        )
        .await;
        match &result {
            Ok(summary) => {
                tracing::info!(
                    applied = summary.applied,
                    failed = summary.failed,
                    exit_code = summary.exit_code.code(),
                    "cycle done"
                );
                let what = format!("{} applied, {} failed", summary.applied, summary.failed);
                vitals.cycle_ended(summary.exit_code, &what);
            }
            Err(e) => {
                // Paused or quarantined: the cycle logged why it was skipped.
                if !e.exit().is_skip() {
                    tracing::error!(
                        exit_code = e.exit().code(),
                        error = ?e.to_string(),
                        hint = ?e.hint().unwrap_or_default(),
                        "cycle stopped"
                    );
                }
                vitals.cycle_ended(e.exit(), &e.to_string());
            }
        }
        if shutdown.load(Ordering::SeqCst) {
            break;
        }
        let wait = next_wait(&settings.schedule);
        vitals.waiting(wait, period(&settings.schedule));
        wait_for_next_cycle(wait, &shutdown).await;
    }
    if let Some(server) = server {
        // It sees the flag within a fraction of a second.
        let _ = server.await;
    }
    Ok(())
}

/// The endpoint's address cannot be bound: said at the config, with the fix.
fn cannot_listen(path: &Path, addr: SocketAddr, e: &std::io::Error) -> ConfigError {
    ConfigError::File {
        file: path.display().to_string(),
        message: format!("metrics_listen: cannot listen on {addr}: {e}"),
        hint: Some(
            "another process may hold the port (or a port below 1024 needs privileges): pick another in `metrics_listen:` or `daemon --metrics-listen`".into(),
        ),
    }
}

pub fn describe_schedule(s: &Schedule) -> String {
    match s {
        Schedule::Interval(d) => format!("every {}", humantime::format_duration(*d)),
        Schedule::Cron(c) => format!("cron {c}"),
    }
}

/// Sends the alert `make` gives for the notify settings, if any; whether one
/// was sent (a failing webhook or mail server is a warning, as for cycles).
async fn tell(
    settings: Option<&NotifySettings>,
    make: impl FnOnce(&NotifySettings) -> Option<notify::Alert>,
) -> bool {
    let Some(settings) = settings else {
        return false;
    };
    let Some(alert) = make(settings) else {
        return false;
    };
    notify::send(settings, &alert).await;
    true
}

/// The time between two cycles: the interval, or the gap between a cron
/// line's next two times.
fn period(schedule: &Schedule) -> Duration {
    match schedule {
        Schedule::Interval(d) => *d,
        Schedule::Cron(c) => {
            let mut next = c.upcoming(chrono::Utc);
            match (next.next(), next.next()) {
                (Some(a), Some(b)) => (b - a).to_std().unwrap_or(RETRY_BROKEN_CONFIG),
                _ => RETRY_BROKEN_CONFIG,
            }
        }
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

/// Sleeps until `wait` has passed, waking early on shutdown.
async fn wait_for_next_cycle(wait: Duration, shutdown: &AtomicBool) {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline && !shutdown.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(1).min(deadline - Instant::now())).await;
    }
}
