//! What operators watch from outside a cycle: after every real cycle (`sync`
//! and each daemon cycle, finished, failed or stopped) the facts of it are
//! gathered into a [`CycleFacts`], written as a metrics file for
//! node_exporter's textfile collector, and — when something needs a person,
//! or the first good cycle follows bad ones — sent to the configured webhook
//! or by email ([`super::notify`]). Neither ever changes how the cycle ends: a
//! metrics file that cannot be written or a notification that fails is a
//! warning.
//!
//! Whether the cycles before were bad is read from the state DB's history
//! before the cycle starts: the runs recorded after the newest that ended
//! with exit code 0 (`sync --only` runs left out).
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
use crate::model::Exit;
use crate::state::{RunsSinceSuccess, StateDb};

use super::facts::{BadCycles, ConcurrencyFacts, CycleFacts, ServedMetrics, Trouble, TroubleKind};
use super::{ONLY_COMMAND, RunSummary, SyncError, SyncOptions, client, notify, quarantine};

/// Renders the metrics file from a cycle's facts and the previous file's text
/// (counters continue from it).
pub type MetricsRenderer = fn(&CycleFacts, Option<&str>) -> String;

/// Where a cycle's metrics go: rendered once by `render`, into the metrics
/// file (`metrics_file`) and, in a daemon with an endpoint, into `served`
/// for `/metrics`.
#[derive(Clone, Copy)]
pub struct MetricsOut<'a> {
    pub render: MetricsRenderer,
    pub served: Option<&'a ServedMetrics>,
}

impl MetricsOut<'_> {
    /// Only the metrics file (a `sync`).
    pub fn file_only(render: MetricsRenderer) -> MetricsOut<'static> {
        MetricsOut {
            render,
            served: None,
        }
    }
}

/// What is known before a cycle starts, to tell its own runs and a new
/// quarantine apart afterwards: read from the state DB the cycle holds, so
/// no other run comes between.
struct Before {
    latest_run: Option<i64>,
    quarantined: bool,
    /// The runs since the last good one (none: the history cannot tell).
    bad_runs: Option<RunsSinceSuccess>,
}

impl Before {
    /// Before a run of `command`. `sync --only` provisions a few users on
    /// demand: its runs neither end a streak of bad cycles nor count in one.
    fn look(db: &StateDb, command: &str) -> Before {
        Before {
            latest_run: db.latest_run_id().ok(),
            quarantined: quarantine::load(db)
                .ok()
                .is_some_and(|q| q.holds(Utc::now())),
            bad_runs: (command != ONLY_COMMAND)
                .then(|| db.runs_since_success(ONLY_COMMAND).ok())
                .flatten(),
        }
    }

    /// The bad cycles a good cycle ended, if it followed any.
    fn recovered_from(&self) -> Option<BadCycles> {
        let bad = self.bad_runs.as_ref().filter(|b| b.count > 0)?;
        Some(BadCycles {
            count: bad.count,
            since: bad
                .first_started_at
                .as_deref()
                .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
                .map(|at| at.with_timezone(&Utc)),
            last_exit: bad.last_exit,
        })
    }
}

/// A cycle that ran, as observed: the state DB it held, handed over when it
/// ended, and what its client counted.
struct Ran {
    db: StateDb,
    before: Before,
    http: BTreeMap<u16, u64>,
    throttled: u64,
    concurrency: ConcurrencyFacts,
}

/// One `sync` with its metrics file written and its notification sent. A dry
/// run is not a cycle: it is run as it is, unobserved.
pub async fn observed_sync(
    settings: &Settings,
    opts: &SyncOptions,
    shutdown: Arc<AtomicBool>,
    progress: &dyn Progress,
    metrics: MetricsOut<'_>,
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
        publish(settings, &facts, metrics).await;
        return result;
    }
    let unobserved =
        settings.metrics_file.is_none() && settings.notify.is_none() && metrics.served.is_none();
    if opts.dry_run || unobserved {
        return super::sync(settings, opts, shutdown, progress).await;
    }
    // The state DB is opened once, by the cycle, after the client (a missing
    // token creates no DB).
    let (result, ran) = match client(settings) {
        Err(e) => (Err(e), None),
        Ok(client) => match StateDb::open(&settings.state_path) {
            Err(e) => (Err(SyncError::from(e)), None),
            Ok(mut db) => {
                let before = Before::look(&db, opts.command());
                let result =
                    super::sync_with(settings, &client, &mut db, opts, shutdown, progress).await;
                let ran = Ran {
                    db,
                    before,
                    http: client.status_counts(),
                    throttled: client.stats().throttled,
                    concurrency: super::concurrency_facts(settings, &client),
                };
                (result, Some(ran))
            }
        },
    };
    if matches!(result, Err(SyncError::Quarantined { .. })) {
        return result;
    }
    let facts = gather(settings, ran, &result, started.elapsed());
    publish(settings, &facts, metrics).await;
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
    let (exit_code, applied, failed, source_objects) = match result {
        Ok(s) => (s.exit_code, s.applied, s.failed, s.source_objects),
        Err(e) => (e.exit(), 0, 0, None),
    };
    let trouble = match result {
        Ok(s) => summary_trouble(s),
        Err(e) => error_trouble(e),
    };
    let (db, before, http, throttled, concurrency) = match ran {
        Some(ran) => (
            Some(ran.db),
            Some(ran.before),
            ran.http,
            ran.throttled,
            Some(ran.concurrency),
        ),
        None => (
            StateDb::open_read_only(&settings.state_path).ok().flatten(),
            None,
            BTreeMap::new(),
            0,
            None,
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
    let entered_quarantine = before
        .as_ref()
        .is_some_and(|b| quarantined && !b.quarantined);
    let recovered = before
        .as_ref()
        .filter(|_| exit_code == Exit::Ok)
        .and_then(Before::recovered_from);
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
        concurrency,
        quarantined,
        entered_quarantine,
        applied,
        failed,
        trouble,
        recovered,
    }
}

/// Why a cycle that ran to its end ended badly, if it did.
fn summary_trouble(s: &RunSummary) -> Option<Trouble> {
    if s.exit_code == Exit::Ok {
        return None;
    }
    let what = if s.failed > 0 {
        format!(
            "{} operation{} failed",
            s.failed,
            if s.failed == 1 { "" } else { "s" }
        )
    } else if let Some(stop) = &s.stopped {
        format!("the cycle stopped early: {stop}")
    } else if s.held_groups > 0 {
        format!(
            "{} source group{} held back and left unchanged; `idsync plan` says why",
            s.held_groups,
            if s.held_groups == 1 { " was" } else { "s were" }
        )
    } else {
        format!("the cycle ended with exit {}", s.exit_code)
    };
    Some(Trouble {
        kind: TroubleKind::Failures,
        what: first_line(&what),
        hint: Some(
            "`idsync status` and `idsync log --outcome failed` show what failed and why; failed operations are retried next cycle"
                .into(),
        ),
    })
}

/// Why a cycle that stopped with `e` ended badly. Another run holding the
/// state DB is not a bad end: that run tells its own.
fn error_trouble(e: &SyncError) -> Option<Trouble> {
    let (kind, hint) = match e {
        // Not bad cycles: another run reports its own end, a pause is
        // asked for, and a held cycle's quarantine was told when it began.
        _ if matches!(e.exit(), Exit::Locked | Exit::Paused | Exit::Quarantined) => return None,
        SyncError::Guard { .. } | SyncError::NoState { .. } => (TroubleKind::GuardStop, e.hint()),
        SyncError::Source(source) if source.is_unavailable() => {
            (TroubleKind::SourceError, e.hint())
        }
        // The records the error lists are not in the message: the hint says
        // where to see them.
        SyncError::Source(_) | SyncError::Mapping { .. } => (
            TroubleKind::BadData,
            Some(
                "`idsync plan` lists every problem (it changes nothing); fix the source's data (or the mapping), then run again"
                    .into(),
            ),
        ),
        _ => (TroubleKind::Failures, e.hint()),
    };
    Some(Trouble {
        kind,
        what: first_line(&e.to_string()),
        hint,
    })
}

/// The first line of `text`, without a colon that introduced the rest.
fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default().trim();
    line.strip_suffix(':').unwrap_or(line).to_string()
}

/// Writes the metrics file (and the served metrics) and sends the
/// notification a cycle calls for. The text is rendered once: the counters
/// continue from the file when there is one, else from the served text, so
/// the file and `/metrics` say the same.
pub async fn publish(settings: &Settings, facts: &CycleFacts, metrics: MetricsOut<'_>) {
    let file = settings.metrics_file.as_deref();
    if file.is_some() || metrics.served.is_some() {
        let previous = file
            .and_then(|path| std::fs::read_to_string(path).ok())
            .or_else(|| metrics.served.and_then(|s| lock(s).clone()));
        let text = (metrics.render)(facts, previous.as_deref());
        if let Some(path) = file {
            match write_atomically(path, text.as_bytes()) {
                Ok(()) => tracing::debug!(path = %path.display(), "metrics written"),
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "cannot write the metrics file; the cycle itself is not affected"
                ),
            }
        }
        if let Some(served) = metrics.served {
            *lock(served) = Some(text);
        }
    }
    if let Some(notify) = &settings.notify
        && let Some(alert) = notify::alert(notify, facts, &settings.config_path)
    {
        notify::send(notify, &alert).await;
    }
}

/// The served text, also after a thread panicked holding it (it is only
/// ever replaced whole).
pub fn lock(served: &ServedMetrics) -> std::sync::MutexGuard<'_, Option<String>> {
    served
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
    use crate::source::SourceError;
    use crate::source::csv::CsvError;
    use crate::state::StateError;

    fn kind_of(e: SyncError) -> Option<(TroubleKind, String, Option<String>)> {
        error_trouble(&e).map(|t| (t.kind, t.what, t.hint))
    }

    #[test]
    fn a_paused_or_held_cycle_is_not_a_bad_one() {
        let paused = SyncError::Paused {
            config: "/etc/idsync/idsync.yaml".into(),
        };
        assert!(kind_of(paused).is_none());
        let held = SyncError::Quarantined {
            until: Utc::now(),
            failed_cycles: 2,
            reason: None,
        };
        assert!(kind_of(held).is_none());
    }

    #[test]
    fn each_bad_end_is_told_by_what_stopped_it() {
        let unreadable = SyncError::Source(SourceError::Csv(CsvError::FileUnreadable {
            file: "/srv/hr/users.csv".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        }));
        let (kind, what, hint) = kind_of(unreadable).unwrap();
        assert_eq!(kind, TroubleKind::SourceError);
        assert!(what.starts_with("cannot read /srv/hr/users.csv"), "{what}");
        assert!(hint.unwrap().contains("source paths"));

        // Bad data: the first line, not the records listed after it.
        let mapping = SyncError::Mapping {
            total: 2,
            listed: vec!["  u1: no email".into(), "  u2: no email".into()],
        };
        let (kind, what, hint) = kind_of(mapping).unwrap();
        assert_eq!(kind, TroubleKind::BadData);
        assert_eq!(
            what,
            "2 source records cannot be mapped; nothing was planned or changed"
        );
        assert!(
            hint.unwrap()
                .starts_with("`idsync plan` lists every problem")
        );
        let no_header = SyncError::Source(SourceError::Csv(CsvError::NoHeader {
            file: "/srv/hr/users.csv".into(),
        }));
        assert_eq!(kind_of(no_header).unwrap().0, TroubleKind::BadData);

        let lost = SyncError::NoState {
            path: "/var/lib/idsync/idsync.db".into(),
        };
        assert_eq!(kind_of(lost).unwrap().0, TroubleKind::GuardStop);
        let stale = SyncError::StalePlan {
            path: "plan.json".into(),
        };
        assert_eq!(kind_of(stale).unwrap().0, TroubleKind::Failures);
        // Another run holds the state DB: that run tells its own end.
        let locked = SyncError::State(StateError::Locked {
            path: "/var/lib/idsync/idsync.db.lock".into(),
        });
        assert_eq!(kind_of(locked), None);
    }

    #[test]
    fn a_finished_cycle_is_bad_only_when_its_exit_code_is() {
        let mut s = RunSummary {
            summary: Default::default(),
            applied: 4,
            failed: 0,
            skipped: 0,
            skipped_action_off: 0,
            duration_ms: 1,
            exit_code: Exit::Ok,
            failures: Vec::new(),
            warnings: Vec::new(),
            held_groups: 0,
            stopped: None,
            dry_run: false,
            dry_run_plan: None,
            source_objects: None,
        };
        assert_eq!(summary_trouble(&s), None);
        s.exit_code = Exit::Partial;
        s.held_groups = 1;
        let held = summary_trouble(&s).unwrap();
        assert_eq!(held.kind, TroubleKind::Failures);
        assert_eq!(
            held.what,
            "1 source group was held back and left unchanged; `idsync plan` says why"
        );
        s.stopped = Some("stopped by a signal\nmore".into());
        assert_eq!(
            summary_trouble(&s).unwrap().what,
            "the cycle stopped early: stopped by a signal"
        );
        s.failed = 2;
        assert_eq!(summary_trouble(&s).unwrap().what, "2 operations failed");
    }

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
