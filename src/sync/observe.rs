//! What operators watch from outside a cycle: after every real cycle (`sync`
//! and each daemon cycle, finished, failed or stopped) the facts of it are
//! gathered into a [`CycleFacts`], written as a metrics file for
//! node_exporter's textfile collector, and — when something needs a person —
//! posted to the configured webhook ([`super::notify`]). Neither ever changes
//! how the cycle ends: a metrics file that cannot be written or a webhook that
//! fails is a warning.
//!
//! The metrics text itself is rendered by `report` (which `sync` does not
//! import): callers pass the renderer in as a [`MetricsRenderer`].
//!
//! Every real cycle starts here, so the two reasons to skip one are checked
//! here, before anything is read or sent: `paused: true` (before the state DB
//! is opened at all; the metrics say paused, which is not a failure), and the
//! quarantine (on the state DB the cycle opens, see `sync_with`; a held cycle
//! writes no metrics, so the last run's time stops moving).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::apply::Progress;
use crate::config::Settings;
use crate::state::StateDb;

use super::facts::CycleFacts;
use super::{RunSummary, SyncError, SyncOptions, client, notify, quarantine};

/// Renders the metrics file from a cycle's facts and the previous file's text
/// (counters continue from it).
pub type MetricsRenderer = fn(&CycleFacts, Option<&str>) -> String;

/// What is known before a cycle starts, to tell its own runs and a new
/// quarantine apart afterwards: read from the state DB the cycle holds, so
/// no other run comes between.
struct Before {
    latest_run: Option<i64>,
    quarantined: bool,
}

impl Before {
    fn look(db: &StateDb) -> Before {
        Before {
            latest_run: db.latest_run_id().ok(),
            quarantined: quarantine::load(db)
                .ok()
                .is_some_and(|q| q.holds(Utc::now())),
        }
    }
}

/// A cycle that ran, as observed: the state DB it held, handed over when it
/// ended, and what its client counted.
struct Ran {
    db: StateDb,
    before: Before,
    http: BTreeMap<u16, u64>,
    throttled: u64,
}

/// One `sync` with its metrics file written and its notification sent. A dry
/// run is not a cycle: it is run as it is, unobserved.
pub async fn observed_sync(
    settings: &Settings,
    opts: &SyncOptions,
    shutdown: Arc<AtomicBool>,
    progress: &dyn Progress,
    render: MetricsRenderer,
) -> Result<RunSummary, SyncError> {
    let started = Instant::now();
    if settings.paused && !opts.dry_run {
        let paused = SyncError::Paused {
            config: settings.config_path.clone(),
        };
        tracing::info!("{paused} (exit {}); this cycle was skipped", paused.exit());
        let result = Err(paused);
        // The state DB only read (if it exists), for the counts the file holds.
        let facts = gather(settings, None, &result, started.elapsed());
        publish(settings, &facts, render).await;
        return result;
    }
    if opts.dry_run || (settings.metrics_file.is_none() && settings.notify.is_none()) {
        return super::sync(settings, opts, shutdown, progress).await;
    }
    // The state DB is opened once, by the cycle, after the client (a missing
    // token creates no DB).
    let (result, ran) = match client(settings) {
        Err(e) => (Err(e), None),
        Ok(client) => match StateDb::open(&settings.state_path) {
            Err(e) => (Err(SyncError::from(e)), None),
            Ok(mut db) => {
                let before = Before::look(&db);
                let result =
                    super::sync_with(settings, &client, &mut db, opts, shutdown, progress).await;
                let ran = Ran {
                    db,
                    before,
                    http: client.status_counts(),
                    throttled: client.stats().throttled,
                };
                (result, Some(ran))
            }
        },
    };
    if matches!(result, Err(SyncError::Quarantined { .. })) {
        return result;
    }
    let facts = gather(settings, ran, &result, started.elapsed());
    publish(settings, &facts, render).await;
    result
}

/// The facts of a cycle that ended with `result`. A cycle that never held
/// the state DB (no token, another run's lock) recorded nothing of its own:
/// the DB is only read, for what it records.
fn gather(
    settings: &Settings,
    ran: Option<Ran>,
    result: &Result<RunSummary, SyncError>,
    duration: Duration,
) -> CycleFacts {
    let finished_at = Utc::now();
    let (exit_code, failed, stopped, source_objects) = match result {
        Ok(s) => (s.exit_code, s.failed, s.stopped.clone(), s.source_objects),
        Err(e) => (e.exit(), 0, Some(e.to_string()), None),
    };
    let (db, before, http, throttled) = match ran {
        Some(ran) => (Some(ran.db), Some(ran.before), ran.http, ran.throttled),
        None => (
            StateDb::open_read_only(&settings.state_path).ok().flatten(),
            None,
            BTreeMap::new(),
            0,
        ),
    };
    let operations = match (&db, &before) {
        (Some(db), Some(before)) => db
            .op_counts_after(before.latest_run.unwrap_or(0))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let objects = db
        .as_ref()
        .and_then(|db| db.object_counts().ok())
        .unwrap_or_default();
    let last_success = db
        .as_ref()
        .and_then(|db| db.last_success_at().ok().flatten())
        .and_then(|at| DateTime::parse_from_rfc3339(&at).ok())
        .map(|at| at.with_timezone(&Utc));
    let quarantined = db
        .as_ref()
        .and_then(|db| quarantine::load(db).ok())
        .is_some_and(|q| q.holds(finished_at));
    let entered_quarantine = before.is_some_and(|b| quarantined && !b.quarantined);
    CycleFacts {
        finished_at,
        duration,
        exit_code,
        last_success,
        operations,
        objects,
        source_objects,
        http,
        throttled,
        quarantined,
        entered_quarantine,
        failed,
        stopped,
    }
}

/// Writes the metrics file and sends the notification a cycle calls for.
pub async fn publish(settings: &Settings, facts: &CycleFacts, render: MetricsRenderer) {
    if let Some(path) = &settings.metrics_file {
        let previous = std::fs::read_to_string(path).ok();
        let text = render(facts, previous.as_deref());
        match write_atomically(path, text.as_bytes()) {
            Ok(()) => tracing::debug!(path = %path.display(), "metrics written"),
            Err(e) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "cannot write the metrics file; the cycle itself is not affected"
            ),
        }
    }
    if let Some(notify) = &settings.notify
        && let Some(message) = notify::message(notify, facts, &settings.config_path)
    {
        notify::send(notify, &message).await;
    }
}

/// Writes `bytes` to a temporary file in `path`'s folder and renames it over
/// `path`, so a reader (a scrape) sees the old file or the new one, never half.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the metrics path names no file"))?;
    // node_exporter reads only `*.prom`: a temporary name that does not end so
    // is never scraped.
    let tmp = folder.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        // Readable by the collector whatever the umask (a unit's UMask=0077):
        // the file holds counts, nothing secret.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_file_is_replaced_whole_and_no_temporary_file_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idsync.prom");
        write_atomically(&path, b"a 1\n").unwrap();
        write_atomically(&path, b"a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("idsync.prom")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "node_exporter runs as another user");
        }
        // A folder that does not exist: an error, not a panic.
        assert!(write_atomically(&dir.path().join("no/such.prom"), b"x").is_err());
    }
}
