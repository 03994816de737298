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
    /// The name, honouring width and alignment (the log's columns).
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
    /// What a create sent as the object's name (userName, displayName);
    /// `None` for other operations and entries from before schema 8.
    pub name: Option<String>,
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
    /// operation, in order, by kind and subject.
    pub fn begin_run(
        &mut self,
        command: &str,
        journal: &[(&'static str, String)],
    ) -> Result<RunId, StateError> {
        let named: Vec<(&'static str, String, Option<String>)> = journal
            .iter()
            .map(|(op, subject)| (*op, subject.clone(), None))
            .collect();
        self.begin_run_named(command, &named)
    }

    /// [`StateDb::begin_run`] with, for each operation, the name a create
    /// sends (see [`JournalEntry::name`]).
    pub fn begin_run_named(
        &mut self,
        command: &str,
        journal: &[(&'static str, String, Option<String>)],
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
                .prepare("INSERT INTO journal (run_id, seq, op, subject, name, state) VALUES (?1, ?2, ?3, ?4, ?5, 'planned')")
                .map_err(|e| sqlite(&path, e))?;
            for (seq, (op, subject, name)) in journal.iter().enumerate() {
                stmt.execute(params![run, seq as i64, op, subject, name])
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
        // A file older than schema 8, read without migrating, has no names.
        let name = if self.user_version()? >= 8 {
            "name"
        } else {
            "NULL"
        };
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT op, subject, {name} FROM journal WHERE state = 'started' ORDER BY run_id, seq"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(JournalEntry {
                    op: r.get(0)?,
                    subject: r.get(1)?,
                    name: r.get(2)?,
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
        insert_run_op(&tx, run, record, &at).map_err(|e| sqlite(&path, e))?;
        tx.commit().map_err(|e| sqlite(&path, e))
    }

    /// Records operations the run does not send (their action is switched
    /// off) in its log, all in one transaction. They are not in the journal:
    /// nothing of them can be in flight, and the run's planned count is
    /// what it sends.
    pub fn record_unsent(&mut self, run: RunId, records: &[OpRecord]) -> Result<(), StateError> {
        if records.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| sqlite(&path, e))?;
        let at = now();
        for record in records {
            insert_run_op(&tx, run, record, &at).map_err(|e| sqlite(&path, e))?;
        }
        tx.commit().map_err(|e| sqlite(&path, e))
    }
}

/// One line of a run's log.
fn insert_run_op(
    tx: &rusqlite::Transaction<'_>,
    run: RunId,
    record: &OpRecord,
    at: &str,
) -> rusqlite::Result<usize> {
    tx.prepare_cached(
        "INSERT INTO run_ops (run_id, seq, at, op, subject, outcome, http_status, error,
                              old_values, new_values)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
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
