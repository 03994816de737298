//! The journal of the run in progress: every planned operation, marked started
//! before a create leaves and done or failed as it commits, so a run killed at
//! any point resumes without duplicates.

use rusqlite::params;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::Serialize;

use super::{StateDb, StateError, now, sqlite, store};
use crate::model::{Exit, OpKind, StateChange};

pub type RunId = i64;

/// How one operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OpOutcome {
    Applied,
    Failed,
    Skipped,
}

impl OpOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            OpOutcome::Applied => "applied",
            OpOutcome::Failed => "failed",
            OpOutcome::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Option<OpOutcome> {
        [OpOutcome::Applied, OpOutcome::Failed, OpOutcome::Skipped]
            .into_iter()
            .find(|o| o.as_str() == text)
    }

    /// The journal state an operation with this outcome ends in.
    fn journal_state(self) -> &'static str {
        match self {
            OpOutcome::Failed => "failed",
            OpOutcome::Applied | OpOutcome::Skipped => "done",
        }
    }
}

impl std::fmt::Display for OpOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// An operation of an interrupted run that was started but never finished: it
/// may have happened on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEntry {
    pub op: OpKind,
    /// The source key it was about.
    pub subject: String,
}

/// The outcome of one operation, for the run's per-operation log.
#[derive(Clone, Debug, Serialize)]
pub struct OpRecord {
    pub seq: i64,
    pub op: OpKind,
    pub subject: String,
    pub outcome: OpOutcome,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    /// What an applied operation destroyed that it does not carry itself, as
    /// JSON (see `idsync revert`).
    #[serde(skip)]
    pub old_values: Option<String>,
    /// The operation as applied or attempted, as plan JSON: what `idsync log`
    /// shows it carried and what `idsync revert` undoes.
    #[serde(skip)]
    pub new_values: Option<String>,
}

impl StateDb {
    /// Starts a run in the history and writes its journal: every planned
    /// operation, in order.
    pub fn begin_run(
        &mut self,
        command: &str,
        journal: &[(&'static str, String)],
    ) -> Result<RunId, StateError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| sqlite(&path, e))?;
        tx.execute(
            "INSERT INTO runs (command, started_at, planned) VALUES (?1, ?2, ?3)",
            params![command, now(), journal.len() as i64],
        )
        .map_err(|e| sqlite(&path, e))?;
        let run = tx.last_insert_rowid();
        {
            let mut stmt = tx
                .prepare("INSERT INTO journal (run_id, seq, op, subject, state) VALUES (?1, ?2, ?3, ?4, 'planned')")
                .map_err(|e| sqlite(&path, e))?;
            for (seq, (op, subject)) in journal.iter().enumerate() {
                stmt.execute(params![run, seq as i64, op, subject])
                    .map_err(|e| sqlite(&path, e))?;
            }
        }
        tx.commit().map_err(|e| sqlite(&path, e))?;
        Ok(run)
    }

    /// Marks operations `first..first+count` of a run as started, before their
    /// requests leave: after a crash, a `started` create may have happened on the
    /// target, so it is looked up before being sent again.
    pub fn mark_started_from(&self, run: RunId, first: i64, count: i64) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE journal SET state = 'started' WHERE run_id = ?1 AND seq >= ?2 AND seq < ?3 AND state = 'planned'",
                params![run, first, first + count],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Operations a previous, interrupted run had started but not finished.
    pub fn interrupted_ops(&self) -> Result<Vec<JournalEntry>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT op, subject FROM journal WHERE state = 'started'")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(JournalEntry {
                    op: r.get(0)?,
                    subject: r.get(1)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Commits one operation's outcome: its state change (if it succeeded), its
    /// journal entry and its line in the run's log, in one transaction.
    pub fn commit(
        &mut self,
        run: RunId,
        record: &OpRecord,
        change: Option<&StateChange>,
    ) -> Result<(), StateError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| sqlite(&path, e))?;
        let at = now();
        if let Some(change) = change {
            store::apply_change(&tx, change, &at).map_err(|e| sqlite(&path, e))?;
            store::bump_generation(&tx).map_err(|e| sqlite(&path, e))?;
        }
        tx.prepare_cached("UPDATE journal SET state = ?3 WHERE run_id = ?1 AND seq = ?2")
            .and_then(|mut s| s.execute(params![run, record.seq, record.outcome.journal_state()]))
            .map_err(|e| sqlite(&path, e))?;
        tx.prepare_cached(
            "INSERT INTO run_ops (run_id, seq, at, op, subject, outcome, http_status, error,
                                  old_values, new_values)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )
        .and_then(|mut s| {
            s.execute(params![
                run,
                record.seq,
                at,
                record.op,
                record.subject,
                record.outcome,
                record.http_status.map(i64::from),
                record.error,
                record.old_values,
                record.new_values
            ])
        })
        .map_err(|e| sqlite(&path, e))?;
        tx.commit().map_err(|e| sqlite(&path, e))
    }
}

// Operation kinds and outcomes are stored by name; a name this idsync does
// not know is a corrupt row, not a string passed on.

impl ToSql for OpKind {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.name()))
    }
}

impl FromSql for OpKind {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let name = value.as_str()?;
        OpKind::parse(name).ok_or_else(|| unknown("operation", name))
    }
}

impl ToSql for OpOutcome {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for OpOutcome {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let name = value.as_str()?;
        OpOutcome::parse(name).ok_or_else(|| unknown("outcome", name))
    }
}

fn unknown(what: &str, name: &str) -> FromSqlError {
    FromSqlError::Other(format!("unknown {what} {name:?}").into())
}

impl ToSql for Exit {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(i64::from(self.code())))
    }
}

impl FromSql for Exit {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let code = value.as_i64()?;
        Exit::from_code(code).ok_or_else(|| unknown("exit code", &code.to_string()))
    }
}
