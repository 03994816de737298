//! The history of runs: when each ran, what it planned, applied and failed, and
//! a line per operation; plus small named values (the quarantine's counters).

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{OpOutcome, RunId, StateDb, StateError, now, sqlite};
use crate::model::{Exit, OpKind};

/// A run in the history.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub command: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub exit_code: Option<Exit>,
    pub applied: i64,
    pub failed: i64,
    pub planned: i64,
    pub error: Option<String>,
}

/// A failed operation from a recent run.
#[derive(Clone, Debug, Serialize)]
pub struct FailureRecord {
    pub run_id: i64,
    pub at: String,
    pub op: OpKind,
    pub subject: String,
    pub http_status: Option<i64>,
    pub error: Option<String>,
}

/// What `idsync log` asks for; every field narrows the log.
#[derive(Clone, Debug, Default)]
pub struct LogFilter {
    /// Operations at or after this time (RFC 3339, UTC, as stored).
    pub since: Option<String>,
    pub run: Option<i64>,
    /// A user's source key, userName or email (both case-insensitive).
    pub user: Option<String>,
    pub actions: Vec<OpKind>,
    pub outcome: Option<OpOutcome>,
}

/// One line of the provisioning log: an operation of a run and how it ended.
#[derive(Clone, Debug, Serialize)]
pub struct LogRecord {
    pub run_id: i64,
    pub seq: i64,
    pub at: String,
    pub command: String,
    #[serde(rename = "action")]
    pub op: OpKind,
    /// The object's source key.
    #[serde(rename = "object_key")]
    pub subject: String,
    /// Its userName or group name, as the state records it now.
    #[serde(rename = "object_name")]
    pub name: Option<String>,
    pub outcome: OpOutcome,
    pub http_status: Option<i64>,
    pub error: Option<String>,
    /// What the operation carried: `changes` (attribute → old, new) of an
    /// update or a create, `members` added or removed, `deleted` what an
    /// applied delete destroyed; read from the operation as recorded
    /// (`new_values`, less what names it) and `old_values`.
    pub detail: Option<serde_json::Value>,
}

/// An operation a run applied, with what it changed (`idsync revert`).
#[derive(Clone, Debug)]
pub struct AppliedOp {
    pub seq: i64,
    pub op: OpKind,
    pub subject: String,
    /// JSON: what the operation destroyed that it does not carry (see the
    /// schema's migration 5); `None` when nothing, or recorded before it.
    pub old_values: Option<String>,
    /// JSON: the operation as applied; `None` when recorded before migration 5.
    pub new_values: Option<String>,
}

/// A run as the report draws it: its counts, and the users and groups idsync
/// managed when it ended (`None` for runs before schema 5 and runs that
/// stopped before applying).
#[derive(Clone, Debug, Serialize)]
pub struct RunPoint {
    pub id: i64,
    pub command: String,
    pub started_at: String,
    pub exit_code: Option<Exit>,
    pub planned: i64,
    pub applied: i64,
    pub failed: i64,
    pub error: Option<String>,
    pub managed_users: Option<i64>,
    pub managed_groups: Option<i64>,
}

/// One line of a run's operation log.
#[derive(Clone, Debug, Serialize)]
pub struct OpLine {
    pub seq: i64,
    pub at: String,
    pub op: OpKind,
    pub subject: String,
    pub outcome: OpOutcome,
    pub http_status: Option<i64>,
    pub error: Option<String>,
}

/// The runs since the newest that ended with exit code 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunsSinceSuccess {
    pub count: u64,
    /// When the first of them started (RFC 3339).
    pub first_started_at: Option<String>,
    /// How the newest run ended; `None` when it never finished (interrupted)
    /// or there is none.
    pub last_exit: Option<Exit>,
}

/// How a run ended, for its history entry.
#[derive(Clone, Debug)]
pub struct RunEnd<'a> {
    pub applied: i64,
    pub failed: i64,
    pub exit_code: Exit,
    /// The plan summary, as JSON.
    pub summary: &'a str,
    /// Why it stopped early, if it did.
    pub error: Option<&'a str>,
    /// Whether the run took over what interrupted runs before it left in
    /// flight: a plain or `--full` sync that ran to its end (it looked up
    /// their creates, and read the target when other operations were in
    /// flight). Their journals are then cleared with its own; otherwise
    /// (`--only`, a saved plan, a run stopped early) their started operations
    /// stay for the next cycle to settle.
    pub settles_interrupted: bool,
}

/// How much of the run history is kept (`history_days`, `history_runs`):
/// the runs started within the last `days` days, and of those at most the
/// newest `runs` when that is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub days: u32,
    pub runs: Option<u32>,
}

/// Deletes the runs the history no longer keeps (see [`Retention`]) and
/// their operations' lines. A run that has not ended — the one in progress,
/// or one killed and not yet resumed — is never pruned, nor is a run whose
/// journal is still there; the journal itself is never touched here (it is
/// cleared only by the run that resumes it, in [`StateDb::finish_run`]).
fn prune(tx: &rusqlite::Transaction<'_>, keep: Retention) -> rusqlite::Result<()> {
    let cutoff = (chrono::Utc::now() - chrono::Duration::days(i64::from(keep.days)))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // The id of the oldest run kept by count; without a count limit, 0 keeps
    // every run.
    let oldest_by_count: i64 = match keep.runs {
        None => 0,
        Some(n) => tx
            .query_row(
                "SELECT id FROM runs ORDER BY id DESC LIMIT 1 OFFSET ?1",
                params![i64::from(n.max(1)) - 1],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0),
    };
    let prunable = "ended_at IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM journal WHERE journal.run_id = runs.id)
        AND (started_at < ?1 OR id < ?2)";
    tx.execute(
        &format!("DELETE FROM run_ops WHERE run_id IN (SELECT id FROM runs WHERE {prunable})"),
        params![cutoff, oldest_by_count],
    )?;
    tx.execute(
        &format!("DELETE FROM runs WHERE {prunable}"),
        params![cutoff, oldest_by_count],
    )?;
    Ok(())
}

impl StateDb {
    /// Closes a run: its counts and exit code, its journal cleared (and the
    /// journals of interrupted runs before it, when it settled them; see
    /// [`RunEnd::settles_interrupted`]), history beyond `keep` pruned.
    pub fn finish_run(
        &mut self,
        run: RunId,
        end: &RunEnd<'_>,
        keep: Retention,
    ) -> Result<(), StateError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| sqlite(&path, e))?;
        let at = now();
        tx.execute(
            "UPDATE runs SET ended_at = ?2, applied = ?3, failed = ?4, exit_code = ?5, summary = ?6, error = ?7 WHERE id = ?1",
            params![run, at, end.applied, end.failed, end.exit_code, end.summary, end.error],
        )
        .map_err(|e| sqlite(&path, e))?;
        tx.execute(
            "UPDATE runs SET
                managed_users = (SELECT count(*) FROM users WHERE status != 'removed'),
                managed_groups = (SELECT count(*) FROM groups WHERE status != 'removed')
             WHERE id = ?1",
            params![run],
        )
        .map_err(|e| sqlite(&path, e))?;
        tx.execute(
            "UPDATE runs SET ended_at = ?2, error = 'interrupted' WHERE ended_at IS NULL AND id < ?1",
            params![run, at],
        )
        .map_err(|e| sqlite(&path, e))?;
        tx.execute(
            "DELETE FROM journal WHERE run_id = ?1
                OR (run_id < ?1 AND (?2 OR state != 'started'))",
            params![run, end.settles_interrupted],
        )
        .map_err(|e| sqlite(&path, e))?;
        prune(&tx, keep).map_err(|e| sqlite(&path, e))?;
        tx.commit().map_err(|e| sqlite(&path, e))
    }

    /// Records a cycle that stopped before applying anything (guard, source or
    /// target failure), so `status` shows it, and prunes the history beyond
    /// `keep`: cycles that keep stopping must not grow it without end either.
    pub fn record_stopped_run(
        &mut self,
        command: &str,
        exit_code: Exit,
        error: &str,
        keep: Retention,
    ) -> Result<(), StateError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| sqlite(&path, e))?;
        let at = now();
        tx.execute(
            "INSERT INTO runs (command, started_at, ended_at, exit_code, error) VALUES (?1, ?2, ?2, ?3, ?4)",
            params![command, at, exit_code, error],
        )
        .map_err(|e| sqlite(&path, e))?;
        prune(&tx, keep).map_err(|e| sqlite(&path, e))?;
        tx.commit().map_err(|e| sqlite(&path, e))
    }

    /// Whether any run ever had operations to apply (finished, failed or
    /// killed). Runs stopped before planning (a guard, an unreachable target)
    /// do not count.
    pub fn ever_planned(&self) -> Result<bool, StateError> {
        self.conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM runs WHERE planned > 0)",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// One run from the history, if it is still kept.
    pub fn run(&self, id: i64) -> Result<Option<RunRecord>, StateError> {
        Ok(self
            .runs(&format!("WHERE id = {id}"), 1)?
            .into_iter()
            .next())
    }

    /// The runs started at or after `since` (RFC 3339), oldest first.
    pub fn runs_since(&self, since: &str) -> Result<Vec<RunPoint>, StateError> {
        let counts = if self.records_values()? {
            "managed_users, managed_groups"
        } else {
            "NULL, NULL"
        };
        let sql = format!(
            "SELECT id, command, started_at, exit_code, planned, applied, failed, error, {counts}
             FROM runs WHERE started_at >= ?1 ORDER BY id"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([since], |r| {
                Ok(RunPoint {
                    id: r.get(0)?,
                    command: r.get(1)?,
                    started_at: r.get(2)?,
                    exit_code: r.get(3)?,
                    planned: r.get(4)?,
                    applied: r.get(5)?,
                    failed: r.get(6)?,
                    error: r.get(7)?,
                    managed_users: r.get(8)?,
                    managed_groups: r.get(9)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Every logged operation of run `id`, in order.
    pub fn run_log(&self, id: i64) -> Result<Vec<OpLine>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT seq, at, op, subject, outcome, http_status, error FROM run_ops
                 WHERE run_id = ?1 ORDER BY seq",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([id], |r| {
                Ok(OpLine {
                    seq: r.get(0)?,
                    at: r.get(1)?,
                    op: r.get(2)?,
                    subject: r.get(3)?,
                    outcome: r.get(4)?,
                    http_status: r.get(5)?,
                    error: r.get(6)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Whether this DB records what each operation changed (schema 5 and
    /// later; a read-only open does not migrate).
    pub fn records_values(&self) -> Result<bool, StateError> {
        Ok(self.user_version()? >= 5)
    }

    /// The operations run `id` applied, in the order it applied them.
    pub fn applied_ops(&self, id: i64) -> Result<Vec<AppliedOp>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT seq, op, subject, old_values, new_values FROM run_ops
                 WHERE run_id = ?1 AND outcome = 'applied' ORDER BY at, seq",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([id], |r| {
                Ok(AppliedOp {
                    seq: r.get(0)?,
                    op: r.get(1)?,
                    subject: r.get(2)?,
                    old_values: r.get(3)?,
                    new_values: r.get(4)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The most recent runs, newest first.
    pub fn recent_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        self.runs("ORDER BY id DESC", limit)
    }

    fn runs(&self, clause: &str, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        let sql = format!(
            "SELECT id, command, started_at, ended_at, exit_code, applied, failed, planned, error FROM runs {clause} LIMIT ?1"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([limit as i64], |r| {
                Ok(RunRecord {
                    id: r.get(0)?,
                    command: r.get(1)?,
                    started_at: r.get(2)?,
                    ended_at: r.get(3)?,
                    exit_code: r.get(4)?,
                    applied: r.get(5)?,
                    failed: r.get(6)?,
                    planned: r.get(7)?,
                    error: r.get(8)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Failed operations of the latest run that had any.
    pub fn recent_failures(&self, limit: usize) -> Result<Vec<FailureRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT run_id, at, op, subject, http_status, error FROM run_ops
                 WHERE outcome = 'failed' AND run_id = (SELECT MAX(run_id) FROM run_ops WHERE outcome = 'failed')
                 ORDER BY seq LIMIT ?1",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([limit as i64], failure_row)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The log lines about one subject (a user's key or userName), newest first.
    pub fn history_of(
        &self,
        subject: &str,
        limit: usize,
    ) -> Result<Vec<FailureRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT run_id, at, op, subject, http_status, COALESCE(error, outcome) FROM run_ops
                 WHERE subject = ?1 ORDER BY run_id DESC, seq DESC LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![subject, limit as i64], failure_row)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The id of the newest run in the history (0 when there is none): runs
    /// after it are the ones a cycle about to start will record.
    pub fn latest_run_id(&self) -> Result<i64, StateError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM runs", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// The operations of the runs after `after_run`, counted by (operation,
    /// outcome), in that order.
    pub fn op_counts_after(
        &self,
        after_run: i64,
    ) -> Result<Vec<(String, String, u64)>, StateError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT op, outcome, COUNT(*) FROM run_ops WHERE run_id > ?1
                 GROUP BY op, outcome ORDER BY op, outcome",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([after_run], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The users and groups the state records, counted by (kind, status):
    /// kind `user` or `group`, status `active`, `disabled` or `removed`.
    pub fn object_counts(&self) -> Result<Vec<(&'static str, String, u64)>, StateError> {
        let mut out = Vec::new();
        for (kind, table) in [("user", "users"), ("group", "groups")] {
            let sql =
                format!("SELECT status, COUNT(*) FROM {table} GROUP BY status ORDER BY status");
            let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })
                .map_err(|e| self.err(e))?;
            for row in rows {
                let (status, n) = row.map_err(|e| self.err(e))?;
                out.push((kind, status, n));
            }
        }
        Ok(out)
    }

    /// When the newest run that ended with exit code 0 ended (RFC 3339).
    pub fn last_success_at(&self) -> Result<Option<String>, StateError> {
        self.conn
            .query_row(
                "SELECT MAX(ended_at) FROM runs WHERE exit_code = 0",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// The runs after the newest that ended with exit code 0 (every run when
    /// none did): the cycles that ended badly since the last good one. Runs
    /// recorded under `ignored` (a command that is no whole cycle) count
    /// neither way.
    pub fn runs_since_success(&self, ignored: &str) -> Result<RunsSinceSuccess, StateError> {
        self.conn
            .query_row(
                "SELECT COUNT(*), MIN(started_at),
                        (SELECT exit_code FROM runs WHERE command != ?1 ORDER BY id DESC LIMIT 1)
                 FROM runs
                 WHERE command != ?1 AND id > COALESCE(
                     (SELECT MAX(id) FROM runs WHERE exit_code = 0 AND command != ?1), 0)",
                [ignored],
                |r| {
                    Ok(RunsSinceSuccess {
                        count: r.get::<_, i64>(0)? as u64,
                        first_started_at: r.get(1)?,
                        last_exit: r.get(2)?,
                    })
                },
            )
            .map_err(|e| self.err(e))
    }

    /// The per-operation history (the provisioning log), oldest first, as
    /// `filter` narrows it.
    pub fn op_log(&self, filter: &LogFilter) -> Result<Vec<LogRecord>, StateError> {
        let mut sql = String::from(
            "SELECT o.run_id, o.seq, o.at, o.op, o.subject, o.outcome, o.http_status, o.error,
                    COALESCE(u.user_name, g.display_name), r.command, {detail}
             FROM run_ops o
             JOIN runs r ON r.id = o.run_id
             LEFT JOIN users u ON u.key = o.subject AND o.op LIKE '%_user'
             LEFT JOIN groups g ON g.key = o.subject AND o.op NOT LIKE '%_user'
             WHERE 1 = 1",
        )
        // A file from before migration 5, opened read-only, has no values.
        .replace(
            "{detail}",
            if self.records_values()? {
                "o.new_values, o.old_values"
            } else {
                "NULL, NULL"
            },
        );
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, value: rusqlite::types::Value| {
            args.push(value);
            sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
        };
        if let Some(since) = &filter.since {
            arg(&mut sql, " AND o.at >= ?", since.clone().into());
        }
        if let Some(run) = filter.run {
            arg(&mut sql, " AND o.run_id = ?", run.into());
        }
        if let Some(user) = &filter.user {
            // A source key, a userName or the email idsync pushed.
            let n = args.len();
            args.push(user.clone().into());
            sql.push_str(&format!(
                " AND o.op LIKE '%_user' AND (o.subject = ?{i} OR o.subject IN (SELECT key FROM users WHERE user_name = ?{i} COLLATE NOCASE OR lower(json_extract(attrs, '$.emails')) = lower(?{i})))",
                i = n + 1
            ));
        }
        if !filter.actions.is_empty() {
            let mut list = Vec::new();
            for a in &filter.actions {
                args.push(a.name().to_owned().into());
                list.push(format!("?{}", args.len()));
            }
            sql.push_str(&format!(" AND o.op IN ({})", list.join(", ")));
        }
        if let Some(outcome) = &filter.outcome {
            args.push(outcome.as_str().to_owned().into());
            sql.push_str(&format!(" AND o.outcome = ?{}", args.len()));
        }
        sql.push_str(" ORDER BY o.run_id, o.seq");
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args.iter()), |r| {
                Ok(LogRecord {
                    run_id: r.get(0)?,
                    seq: r.get(1)?,
                    at: r.get(2)?,
                    op: r.get(3)?,
                    subject: r.get(4)?,
                    outcome: r.get(5)?,
                    http_status: r.get(6)?,
                    error: r.get(7)?,
                    name: r.get(8)?,
                    command: r.get(9)?,
                    detail: match (r.get::<_, Option<String>>(10)?, r.get(11)?) {
                        (Some(op), old) => op_detail(&op, old),
                        (None, _) => None,
                    },
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// A named value in the meta table (quarantine counters and the like).
    pub fn meta(&self, name: &str) -> Result<Option<String>, StateError> {
        self.conn
            .query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    pub fn set_meta(&self, name: &str, value: Option<&str>) -> Result<(), StateError> {
        match value {
            Some(v) => self.conn.execute(
                "INSERT INTO meta (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![name, v],
            ),
            None => self.conn.execute("DELETE FROM meta WHERE name = ?1", [name]),
        }
        .map_err(|e| self.err(e))?;
        Ok(())
    }
}

/// What an operation, recorded as plan JSON, carries besides what names it
/// (an update's old and new values, a create's attributes, the members it adds
/// or removes), and under `deleted` what an applied delete destroyed (its
/// `old_values`); `None` when nothing more, or the record does not parse.
fn op_detail(new_values: &str, old_values: Option<String>) -> Option<serde_json::Value> {
    let serde_json::Value::Object(mut fields) = serde_json::from_str(new_values).ok()? else {
        return None;
    };
    for identity in ["op", "key", "userName", "displayName", "scim_id"] {
        fields.remove(identity);
    }
    if let Some(old) = old_values.and_then(|o| serde_json::from_str(&o).ok()) {
        fields.insert("deleted".into(), old);
    }
    (!fields.is_empty()).then_some(serde_json::Value::Object(fields))
}

/// A `run_ops` row selected as (run_id, at, op, subject, http_status, error).
fn failure_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FailureRecord> {
    Ok(FailureRecord {
        run_id: r.get(0)?,
        at: r.get(1)?,
        op: r.get(2)?,
        subject: r.get(3)?,
        http_status: r.get(4)?,
        error: r.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end() -> RunEnd<'static> {
        RunEnd {
            applied: 1,
            failed: 0,
            exit_code: Exit::Ok,
            summary: "{}",
            error: None,
            settles_interrupted: true,
        }
    }

    fn applied(seq: i64, subject: &str) -> crate::state::OpRecord {
        crate::state::OpRecord {
            seq,
            op: OpKind::CreateUser,
            subject: subject.into(),
            outcome: OpOutcome::Applied,
            http_status: None,
            error: None,
            old_values: None,
            new_values: None,
        }
    }

    fn count(db: &StateDb, table: &str) -> i64 {
        db.conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// Every run so far started in 2001, long before any cutoff.
    fn backdate_all(db: &StateDb) {
        db.conn
            .execute(
                "UPDATE runs SET started_at = '2001-01-01T00:00:00.000Z'",
                [],
            )
            .unwrap();
    }

    /// A finished run of one applied operation.
    fn finished_run(db: &mut StateDb, subject: &str, keep: Retention) -> RunId {
        let run = db
            .begin_run("sync", &[("create_user", subject.into())])
            .unwrap();
        db.commit(run, &applied(0, subject), None).unwrap();
        db.finish_run(run, &end(), keep).unwrap();
        run
    }

    #[test]
    fn history_runs_keeps_the_newest_runs_and_their_operations() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = StateDb::open(&dir.path().join("idsync.db")).unwrap();
        let keep = Retention {
            days: 30,
            runs: Some(3),
        };
        let runs: Vec<RunId> = (0..6)
            .map(|i| finished_run(&mut db, &format!("k{i}"), keep))
            .collect();
        let kept: Vec<i64> = db.recent_runs(100).unwrap().iter().map(|r| r.id).collect();
        assert_eq!(kept, [runs[5], runs[4], runs[3]]);
        assert_eq!(
            count(&db, "run_ops"),
            3,
            "the operations of pruned runs go too"
        );
        // A stopped cycle counts as a run and prunes too.
        db.record_stopped_run("sync", Exit::Guard, "guard", keep)
            .unwrap();
        assert_eq!(count(&db, "runs"), 3);
        assert_eq!(count(&db, "run_ops"), 2);
    }

    #[test]
    fn without_history_runs_only_the_days_limit_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = StateDb::open(&dir.path().join("idsync.db")).unwrap();
        let keep = Retention {
            days: 30,
            runs: None,
        };
        for i in 0..5 {
            finished_run(&mut db, &format!("k{i}"), keep);
        }
        assert_eq!(count(&db, "runs"), 5);
        backdate_all(&db);
        let newest = finished_run(&mut db, "k9", keep);
        let kept: Vec<i64> = db.recent_runs(100).unwrap().iter().map(|r| r.id).collect();
        assert_eq!(kept, [newest]);
        assert_eq!(count(&db, "run_ops"), 1);
    }

    #[test]
    fn cycles_that_keep_stopping_prune_the_history_too() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = StateDb::open(&dir.path().join("idsync.db")).unwrap();
        let keep = Retention {
            days: 30,
            runs: None,
        };
        finished_run(&mut db, "k1", keep);
        db.record_stopped_run("sync", Exit::Guard, "guard", keep)
            .unwrap();
        backdate_all(&db);
        // From now on every cycle stops (a guard, an unreachable source).
        db.record_stopped_run("sync", Exit::Unreachable, "source", keep)
            .unwrap();
        assert_eq!(count(&db, "runs"), 1, "only the newest stopped run is kept");
        assert_eq!(count(&db, "run_ops"), 0);
    }

    #[test]
    fn pruning_never_touches_the_journal_of_an_unfinished_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = StateDb::open(&dir.path().join("idsync.db")).unwrap();
        let keep = Retention {
            days: 0,
            runs: Some(1),
        };
        finished_run(&mut db, "k0", keep);
        // A run killed while its creates were in flight: one committed, two
        // started, one planned.
        let journal = [
            ("create_user", "k1".to_string()),
            ("create_user", "k2".to_string()),
            ("create_user", "k3".to_string()),
            ("create_user", "k4".to_string()),
        ];
        let killed = db.begin_run("sync", &journal).unwrap();
        db.mark_started_from(killed, 0, 3).unwrap();
        db.commit(killed, &applied(0, "k1"), None).unwrap();
        backdate_all(&db);
        // Then cycles that stop before applying anything, each pruning as
        // hard as it can (0 days, 1 run).
        for _ in 0..3 {
            db.record_stopped_run("sync", Exit::Unreachable, "source", keep)
                .unwrap();
        }
        let started: Vec<String> = db
            .interrupted_ops()
            .unwrap()
            .into_iter()
            .map(|e| e.subject)
            .collect();
        assert_eq!(
            started,
            ["k2", "k3"],
            "the resume still knows what was in flight"
        );
        assert_eq!(count(&db, "journal"), 4, "the journal is untouched");
        let runs = db.recent_runs(100).unwrap();
        assert!(
            runs.iter().any(|r| r.id == killed && r.ended_at.is_none()),
            "the unfinished run stays in the history: {runs:?}"
        );
        assert_eq!(
            db.run_log(killed).unwrap().len(),
            1,
            "with its committed operation"
        );
        // The run that resumes it clears the journal; only then is the
        // killed run (now ended as interrupted) pruned like any other.
        finished_run(&mut db, "k5", keep);
        assert_eq!(count(&db, "journal"), 0);
        assert!(db.run(killed).unwrap().is_none());
    }
}
