//! The state DB: one SQLite file per target directory holding what idsync last
//! pushed (per object: source key, SCIM id, attribute hash and values, status,
//! ownership), group memberships as pushed, source watermarks, the journal of the
//! run in progress, and the history of runs with a per-operation log.
//!
//! All work here is synchronous and transactional: each operation's outcome and
//! its state change commit together, so a run killed at any point resumes without
//! duplicates and without losing work. An advisory lock beside the DB allows one
//! writer at a time; `plan` reads without it and writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::model::{AttrHash, FastMap, GroupKey, ScimId, SourceKey, UserAttrs};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state DB {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("another idsync run holds the lock {}", .path.display())]
    Locked { path: PathBuf },
    #[error("cannot use {}: {message}", .path.display())]
    Io { path: PathBuf, message: String },
    #[error("state DB {}: schema version {found} is newer than this idsync understands ({supported})", .path.display())]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("state DB {}: a stored value is corrupt: {message}", .path.display())]
    Corrupt { path: PathBuf, message: String },
}

/// Whether idsync created an object or adopted one that already existed. Only
/// objects with one of these are ever changed; everything else in the target is
/// left alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ownership {
    Created,
    Adopted,
}

impl Ownership {
    fn as_str(self) -> &'static str {
        match self {
            Ownership::Created => "created",
            Ownership::Adopted => "adopted",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "created" => Some(Ownership::Created),
            "adopted" => Some(Ownership::Adopted),
            _ => None,
        }
    }
}

/// What the target holds for an object, as far as idsync last pushed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Disabled,
    /// Deleted from the target (or found missing); a comeback creates it anew.
    Removed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Disabled => "disabled",
            Status::Removed => "removed",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Status::Active),
            "disabled" => Some(Status::Disabled),
            "removed" => Some(Status::Removed),
            _ => None,
        }
    }
}

/// One managed user as last pushed.
#[derive(Clone, Debug, PartialEq)]
pub struct StateUser {
    pub scim_id: ScimId,
    pub user_name: Box<str>,
    pub hash: AttrHash,
    pub status: Status,
    pub ownership: Ownership,
    /// The last pushed attributes: loaded only for users whose hash differs from
    /// the desired one (`StateDb::load_attrs`), to keep large states small.
    pub attrs: Option<UserAttrs>,
}

/// One managed group as last pushed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateGroup {
    pub scim_id: ScimId,
    pub display_name: String,
    pub status: Status,
    pub ownership: Ownership,
}

/// The last pushed snapshot: the planner's view of the target.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    pub users: FastMap<SourceKey, StateUser>,
    pub groups: BTreeMap<GroupKey, StateGroup>,
    pub memberships: BTreeMap<GroupKey, BTreeSet<SourceKey>>,
    /// Bumped by every write; part of a saved plan's fingerprint.
    pub generation: i64,
}

impl State {
    /// Users idsync manages and has not removed.
    pub fn managed_users(&self) -> usize {
        self.users
            .values()
            .filter(|u| u.status != Status::Removed)
            .count()
    }
}

/// A row-level change to the state, committed together with an operation's
/// outcome.
#[derive(Clone, Debug)]
pub enum StateChange {
    /// A user created, adopted or updated: its full pushed record.
    PutUser {
        key: SourceKey,
        user: StateUser,
    },
    UserStatus {
        key: SourceKey,
        status: Status,
    },
    PutGroup {
        key: GroupKey,
        group: StateGroup,
    },
    GroupStatus {
        key: GroupKey,
        status: Status,
    },
    MembersAdded {
        group: GroupKey,
        users: Vec<SourceKey>,
    },
    MembersRemoved {
        group: GroupKey,
        users: Vec<SourceKey>,
    },
}

/// The outcome of one operation, for the run's per-operation log.
#[derive(Clone, Debug, Serialize)]
pub struct OpRecord {
    pub seq: i64,
    pub op: &'static str,
    pub subject: String,
    pub outcome: &'static str,
    pub http_status: Option<u16>,
    pub error: Option<String>,
}

/// A run in the history.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    pub id: i64,
    pub command: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub exit_code: Option<i64>,
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
    pub op: String,
    pub subject: String,
    pub http_status: Option<i64>,
    pub error: Option<String>,
}

pub type RunId = i64;

/// How a run ended, for its history entry.
#[derive(Clone, Debug)]
pub struct RunEnd<'a> {
    pub applied: i64,
    pub failed: i64,
    pub exit_code: i32,
    /// The plan summary, as JSON.
    pub summary: &'a str,
    /// Why it stopped early, if it did.
    pub error: Option<&'a str>,
}

const SCHEMA_VERSION: i64 = 1;

/// Numbered migrations; each runs in one transaction with the version bump.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
INSERT INTO meta (name, value) VALUES ('generation', '0');

CREATE TABLE users (
    key        TEXT PRIMARY KEY,
    scim_id    TEXT NOT NULL,
    user_name  TEXT NOT NULL,
    attrs      TEXT NOT NULL,
    hash       BLOB NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('active', 'disabled', 'removed')),
    ownership  TEXT NOT NULL CHECK (ownership IN ('created', 'adopted')),
    updated_at TEXT NOT NULL
) STRICT;
CREATE INDEX users_user_name ON users (user_name COLLATE NOCASE);

CREATE TABLE groups (
    key          TEXT PRIMARY KEY,
    scim_id      TEXT NOT NULL,
    display_name TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('active', 'disabled', 'removed')),
    ownership    TEXT NOT NULL CHECK (ownership IN ('created', 'adopted')),
    updated_at   TEXT NOT NULL
) STRICT;

CREATE TABLE memberships (
    group_key TEXT NOT NULL,
    user_key  TEXT NOT NULL,
    PRIMARY KEY (group_key, user_key)
) STRICT, WITHOUT ROWID;

CREATE TABLE watermarks (
    source     TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL
) STRICT;

CREATE TABLE runs (
    id         INTEGER PRIMARY KEY,
    command    TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at   TEXT,
    exit_code  INTEGER,
    planned    INTEGER NOT NULL DEFAULT 0,
    applied    INTEGER NOT NULL DEFAULT 0,
    failed     INTEGER NOT NULL DEFAULT 0,
    summary    TEXT,
    error      TEXT
) STRICT;

CREATE TABLE journal (
    run_id  INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    op      TEXT NOT NULL,
    subject TEXT NOT NULL,
    state   TEXT NOT NULL CHECK (state IN ('planned', 'started', 'done', 'failed')),
    PRIMARY KEY (run_id, seq)
) STRICT;

CREATE TABLE run_ops (
    run_id      INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    at          TEXT NOT NULL,
    op          TEXT NOT NULL,
    subject     TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    http_status INTEGER,
    error       TEXT
) STRICT;
CREATE INDEX run_ops_run ON run_ops (run_id);
"#];

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// An open state DB.
pub struct StateDb {
    conn: Connection,
    path: PathBuf,
    /// Held for the life of a writing session; released on drop (and by the OS
    /// if the process dies).
    _lock: Option<File>,
}

impl StateDb {
    /// Opens (creating if needed) the DB for a run that writes: takes the lock,
    /// applies migrations.
    pub fn open(path: &Path) -> Result<StateDb, StateError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StateError::Io {
                path: dir.to_path_buf(),
                message: e.to_string(),
            })?;
        }
        let lock = acquire_lock(path)?;
        let conn = Connection::open(path).map_err(|source| sqlite(path, source))?;
        let mut db = StateDb {
            conn,
            path: path.to_path_buf(),
            _lock: Some(lock),
        };
        db.configure()?;
        db.migrate()?;
        Ok(db)
    }

    /// Opens an existing DB to read only (for `plan`, `status`, `explain`): no lock
    /// and no writes. `None` when there is no DB yet (a first run).
    pub fn open_read_only(path: &Path) -> Result<Option<StateDb>, StateError> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| sqlite(path, source))?;
        conn.query_row("PRAGMA query_only = ON", [], |_| Ok(()))
            .optional()
            .map_err(|source| sqlite(path, source))?;
        let db = StateDb {
            conn,
            path: path.to_path_buf(),
            _lock: None,
        };
        let version = db.user_version()?;
        if version > SCHEMA_VERSION {
            return Err(StateError::TooNew {
                path: path.to_path_buf(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        if version < SCHEMA_VERSION {
            // Not yet initialised (or older): nothing to read that we understand.
            return Ok(None);
        }
        Ok(Some(db))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, source: rusqlite::Error) -> StateError {
        sqlite(&self.path, source)
    }

    fn configure(&self) -> Result<(), StateError> {
        self.conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| self.err(e))?;
        // WAL with synchronous=NORMAL is durable against process crashes, which is
        // what per-operation commits protect against.
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.err(e))?;
        self.conn
            .pragma_update(None, "foreign_keys", "ON")
            .map_err(|e| self.err(e))?;
        self.conn
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn user_version(&self) -> Result<i64, StateError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    fn migrate(&mut self) -> Result<(), StateError> {
        let version = self.user_version()?;
        if version > SCHEMA_VERSION {
            return Err(StateError::TooNew {
                path: self.path.clone(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let path = self.path.clone();
            let tx = self.conn.transaction().map_err(|e| sqlite(&path, e))?;
            tx.execute_batch(sql).map_err(|e| sqlite(&path, e))?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(|e| sqlite(&path, e))?;
            tx.commit().map_err(|e| sqlite(&path, e))?;
        }
        Ok(())
    }

    pub fn generation(&self) -> Result<i64, StateError> {
        let v: String = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE name = 'generation'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        v.parse()
            .map_err(|_| self.corrupt("meta.generation is not a number"))
    }

    fn corrupt(&self, message: &str) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            message: message.to_string(),
        }
    }

    /// Loads the whole snapshot (without per-user attributes) in one read
    /// transaction, so a concurrent writer cannot tear it.
    pub fn load(&mut self) -> Result<State, StateError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| sqlite(&path, e))?;
        let generation: i64 = tx
            .query_row(
                "SELECT value FROM meta WHERE name = 'generation'",
                [],
                |r| r.get::<_, String>(0),
            )
            .map_err(|e| sqlite(&path, e))?
            .parse()
            .unwrap_or(0);
        let mut state = State {
            generation,
            ..State::default()
        };
        {
            let mut stmt = tx
                .prepare("SELECT key, scim_id, user_name, hash, status, ownership FROM users")
                .map_err(|e| sqlite(&path, e))?;
            let mut rows = stmt.query([]).map_err(|e| sqlite(&path, e))?;
            while let Some(row) = rows.next().map_err(|e| sqlite(&path, e))? {
                let key: String = row.get(0).map_err(|e| sqlite(&path, e))?;
                let hash: Vec<u8> = row.get(3).map_err(|e| sqlite(&path, e))?;
                let status: String = row.get(4).map_err(|e| sqlite(&path, e))?;
                let ownership: String = row.get(5).map_err(|e| sqlite(&path, e))?;
                let corrupt = |what: &str| StateError::Corrupt {
                    path: path.clone(),
                    message: format!("user {key:?}: {what}"),
                };
                let hash: [u8; 16] = hash.try_into().map_err(|_| corrupt("bad hash"))?;
                let user = StateUser {
                    scim_id: ScimId::new(row.get::<_, String>(1).map_err(|e| sqlite(&path, e))?),
                    user_name: row
                        .get::<_, String>(2)
                        .map_err(|e| sqlite(&path, e))?
                        .into(),
                    hash: AttrHash(hash),
                    status: Status::parse(&status).ok_or_else(|| corrupt("bad status"))?,
                    ownership: Ownership::parse(&ownership)
                        .ok_or_else(|| corrupt("bad ownership"))?,
                    attrs: None,
                };
                state.users.insert(SourceKey::new(key), user);
            }
        }
        {
            let mut stmt = tx
                .prepare("SELECT key, scim_id, display_name, status, ownership FROM groups")
                .map_err(|e| sqlite(&path, e))?;
            let mut rows = stmt.query([]).map_err(|e| sqlite(&path, e))?;
            while let Some(row) = rows.next().map_err(|e| sqlite(&path, e))? {
                let key: String = row.get(0).map_err(|e| sqlite(&path, e))?;
                let status: String = row.get(3).map_err(|e| sqlite(&path, e))?;
                let ownership: String = row.get(4).map_err(|e| sqlite(&path, e))?;
                let corrupt = |what: &str| StateError::Corrupt {
                    path: path.clone(),
                    message: format!("group {key:?}: {what}"),
                };
                let group = StateGroup {
                    scim_id: ScimId::new(row.get::<_, String>(1).map_err(|e| sqlite(&path, e))?),
                    display_name: row.get(2).map_err(|e| sqlite(&path, e))?,
                    status: Status::parse(&status).ok_or_else(|| corrupt("bad status"))?,
                    ownership: Ownership::parse(&ownership)
                        .ok_or_else(|| corrupt("bad ownership"))?,
                };
                state.groups.insert(GroupKey::new(key), group);
            }
        }
        {
            // Rows arrive in key order (the primary key), so each group's set is
            // built in bulk from a sorted run.
            let mut stmt = tx
                .prepare("SELECT group_key, user_key FROM memberships ORDER BY group_key, user_key")
                .map_err(|e| sqlite(&path, e))?;
            let mut rows = stmt.query([]).map_err(|e| sqlite(&path, e))?;
            let mut current: Option<(String, Vec<SourceKey>)> = None;
            while let Some(row) = rows.next().map_err(|e| sqlite(&path, e))? {
                let group = row
                    .get_ref(0)
                    .map_err(|e| sqlite(&path, e))?
                    .as_str()
                    .map_err(|e| sqlite(&path, e.into()))?;
                let user: String = row.get(1).map_err(|e| sqlite(&path, e))?;
                match &mut current {
                    Some((g, members)) if g == group => members.push(SourceKey::new(user)),
                    _ => {
                        if let Some((g, members)) = current.take() {
                            state
                                .memberships
                                .insert(GroupKey::new(g), members.into_iter().collect());
                        }
                        current = Some((group.to_string(), vec![SourceKey::new(user)]));
                    }
                }
            }
            if let Some((g, members)) = current {
                state
                    .memberships
                    .insert(GroupKey::new(g), members.into_iter().collect());
            }
        }
        tx.finish().map_err(|e| sqlite(&path, e))?;
        Ok(state)
    }

    /// Loads the last pushed attributes of `keys` into `state`.
    pub fn load_attrs<'a>(
        &self,
        state: &mut State,
        keys: impl IntoIterator<Item = &'a SourceKey>,
    ) -> Result<(), StateError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT attrs FROM users WHERE key = ?1")
            .map_err(|e| self.err(e))?;
        for key in keys {
            let json: Option<String> = stmt
                .query_row([key.as_str()], |r| r.get(0))
                .optional()
                .map_err(|e| self.err(e))?;
            if let (Some(json), Some(user)) = (json, state.users.get_mut(key)) {
                let attrs: UserAttrs = serde_json::from_str(&json)
                    .map_err(|e| self.corrupt(&format!("user {key}: attrs: {e}")))?;
                user.attrs = Some(attrs);
            }
        }
        Ok(())
    }

    /// The last pushed attributes of one user, for `explain`.
    pub fn user_attrs(&self, key: &SourceKey) -> Result<Option<UserAttrs>, StateError> {
        let json: Option<String> = self
            .conn
            .query_row(
                "SELECT attrs FROM users WHERE key = ?1",
                [key.as_str()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        json.map(|j| {
            serde_json::from_str(&j).map_err(|e| self.corrupt(&format!("user {key}: {e}")))
        })
        .transpose()
    }

    /// Replaces the whole snapshot with `state` (the `--full` resync's rebuilt
    /// view of the target) in one transaction. Users must carry their attributes.
    pub fn replace(&mut self, state: &State) -> Result<(), StateError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| sqlite(&path, e))?;
        tx.execute_batch("DELETE FROM users; DELETE FROM groups; DELETE FROM memberships;")
            .map_err(|e| sqlite(&path, e))?;
        let at = now();
        for (key, user) in &state.users {
            put_user(&tx, key, user, &at).map_err(|e| sqlite(&path, e))?;
        }
        for (key, group) in &state.groups {
            put_group(&tx, key, group, &at).map_err(|e| sqlite(&path, e))?;
        }
        {
            let mut stmt = tx
                .prepare("INSERT OR IGNORE INTO memberships (group_key, user_key) VALUES (?1, ?2)")
                .map_err(|e| sqlite(&path, e))?;
            for (group, users) in &state.memberships {
                for user in users {
                    stmt.execute(params![group.as_str(), user.as_str()])
                        .map_err(|e| sqlite(&path, e))?;
                }
            }
        }
        bump_generation(&tx).map_err(|e| sqlite(&path, e))?;
        tx.commit().map_err(|e| sqlite(&path, e))
    }

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

    /// Subjects of operations a previous, interrupted run had started but not
    /// finished (`op`, `subject`).
    pub fn interrupted_ops(&self) -> Result<Vec<(String, String)>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT op, subject FROM journal WHERE state = 'started'")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
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
            apply_change(&tx, change, &at).map_err(|e| sqlite(&path, e))?;
            bump_generation(&tx).map_err(|e| sqlite(&path, e))?;
        }
        let journal_state = if record.outcome == "failed" {
            "failed"
        } else {
            "done"
        };
        tx.prepare_cached("UPDATE journal SET state = ?3 WHERE run_id = ?1 AND seq = ?2")
            .and_then(|mut s| s.execute(params![run, record.seq, journal_state]))
            .map_err(|e| sqlite(&path, e))?;
        tx.prepare_cached(
            "INSERT INTO run_ops (run_id, seq, at, op, subject, outcome, http_status, error)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
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
                record.error
            ])
        })
        .map_err(|e| sqlite(&path, e))?;
        tx.commit().map_err(|e| sqlite(&path, e))
    }

    /// Closes a run: its counts and exit code, the journal of it (and of any
    /// interrupted run before it) cleared, history beyond `keep_days` pruned.
    pub fn finish_run(
        &mut self,
        run: RunId,
        end: &RunEnd<'_>,
        keep_days: u32,
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
            "UPDATE runs SET ended_at = ?2, error = 'interrupted' WHERE ended_at IS NULL AND id < ?1",
            params![run, at],
        )
        .map_err(|e| sqlite(&path, e))?;
        tx.execute("DELETE FROM journal WHERE run_id <= ?1", params![run])
            .map_err(|e| sqlite(&path, e))?;
        let cutoff = (chrono::Utc::now() - chrono::Duration::days(i64::from(keep_days)))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        tx.execute(
            "DELETE FROM run_ops WHERE run_id IN (SELECT id FROM runs WHERE started_at < ?1)",
            params![cutoff],
        )
        .map_err(|e| sqlite(&path, e))?;
        tx.execute("DELETE FROM runs WHERE started_at < ?1", params![cutoff])
            .map_err(|e| sqlite(&path, e))?;
        tx.commit().map_err(|e| sqlite(&path, e))
    }

    /// Records a cycle that stopped before applying anything (guard, source or
    /// target failure), so `status` shows it.
    pub fn record_stopped_run(
        &mut self,
        command: &str,
        exit_code: i32,
        error: &str,
    ) -> Result<(), StateError> {
        let at = now();
        self.conn
            .execute(
                "INSERT INTO runs (command, started_at, ended_at, exit_code, error) VALUES (?1, ?2, ?2, ?3, ?4)",
                params![command, at, exit_code, error],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
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

fn sqlite(path: &Path, source: rusqlite::Error) -> StateError {
    StateError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

fn acquire_lock(db: &Path) -> Result<File, StateError> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StateError::Io {
            path: lock_path.clone(),
            message: e.to_string(),
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StateError::Locked { path: lock_path }),
        Err(std::fs::TryLockError::Error(e)) => Err(StateError::Io {
            path: lock_path,
            message: format!("cannot lock: {e}"),
        }),
    }
}

fn bump_generation(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE name = 'generation'",
    )?
    .execute([])?;
    Ok(())
}

fn put_user(
    tx: &rusqlite::Transaction<'_>,
    key: &SourceKey,
    user: &StateUser,
    at: &str,
) -> rusqlite::Result<()> {
    let attrs = serde_json::to_string(user.attrs.as_ref().unwrap_or(&UserAttrs::new()))
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    tx.prepare_cached(
        "INSERT INTO users (key, scim_id, user_name, attrs, hash, status, ownership, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (key) DO UPDATE SET scim_id = excluded.scim_id, user_name = excluded.user_name,
            attrs = excluded.attrs, hash = excluded.hash, status = excluded.status,
            ownership = excluded.ownership, updated_at = excluded.updated_at",
    )?
    .execute(params![
        key.as_str(),
        user.scim_id.as_str(),
        &*user.user_name,
        attrs,
        &user.hash.0[..],
        user.status.as_str(),
        user.ownership.as_str(),
        at
    ])?;
    Ok(())
}

fn put_group(
    tx: &rusqlite::Transaction<'_>,
    key: &GroupKey,
    group: &StateGroup,
    at: &str,
) -> rusqlite::Result<()> {
    // A group recreated under a new id starts with no members pushed.
    tx.prepare_cached(
        "DELETE FROM memberships WHERE group_key = ?1
         AND EXISTS (SELECT 1 FROM groups WHERE key = ?1 AND scim_id != ?2)",
    )?
    .execute(params![key.as_str(), group.scim_id.as_str()])?;
    tx.prepare_cached(
        "INSERT INTO groups (key, scim_id, display_name, status, ownership, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (key) DO UPDATE SET scim_id = excluded.scim_id, display_name = excluded.display_name,
            status = excluded.status, ownership = excluded.ownership, updated_at = excluded.updated_at",
    )?
    .execute(params![
        key.as_str(),
        group.scim_id.as_str(),
        group.display_name,
        group.status.as_str(),
        group.ownership.as_str(),
        at
    ])?;
    Ok(())
}

fn apply_change(
    tx: &rusqlite::Transaction<'_>,
    change: &StateChange,
    at: &str,
) -> rusqlite::Result<()> {
    match change {
        StateChange::PutUser { key, user } => put_user(tx, key, user, at),
        StateChange::UserStatus { key, status } => {
            tx.prepare_cached("UPDATE users SET status = ?2, updated_at = ?3 WHERE key = ?1")?
                .execute(params![key.as_str(), status.as_str(), at])?;
            if *status == Status::Removed {
                tx.prepare_cached("DELETE FROM memberships WHERE user_key = ?1")?
                    .execute([key.as_str()])?;
            }
            Ok(())
        }
        StateChange::PutGroup { key, group } => put_group(tx, key, group, at),
        StateChange::GroupStatus { key, status } => {
            tx.prepare_cached("UPDATE groups SET status = ?2, updated_at = ?3 WHERE key = ?1")?
                .execute(params![key.as_str(), status.as_str(), at])?;
            if *status == Status::Removed {
                tx.prepare_cached("DELETE FROM memberships WHERE group_key = ?1")?
                    .execute([key.as_str()])?;
            }
            Ok(())
        }
        StateChange::MembersAdded { group, users } => {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO memberships (group_key, user_key) VALUES (?1, ?2)",
            )?;
            for user in users {
                stmt.execute(params![group.as_str(), user.as_str()])?;
            }
            Ok(())
        }
        StateChange::MembersRemoved { group, users } => {
            let mut stmt = tx
                .prepare_cached("DELETE FROM memberships WHERE group_key = ?1 AND user_key = ?2")?;
            for user in users {
                stmt.execute(params![group.as_str(), user.as_str()])?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UserAttr;

    fn user(id: &str, name: &str) -> StateUser {
        let mut attrs = UserAttrs::new();
        attrs.insert(UserAttr::UserName, name.to_string());
        StateUser {
            scim_id: ScimId::new(id),
            user_name: name.into(),
            hash: AttrHash::of(&attrs, &BTreeSet::new()),
            status: Status::Active,
            ownership: Ownership::Created,
            attrs: Some(attrs),
        }
    }

    fn record(seq: i64) -> OpRecord {
        OpRecord {
            seq,
            op: "create_user",
            subject: "k1".into(),
            outcome: "applied",
            http_status: Some(201),
            error: None,
        }
    }

    #[test]
    fn commits_survive_reopen_and_bump_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s/idsync.db");
        {
            let mut db = StateDb::open(&path).unwrap();
            let run = db
                .begin_run("sync", &[("create_user", "k1".into())])
                .unwrap();
            let change = StateChange::PutUser {
                key: SourceKey::new("k1"),
                user: user("id-1", "a@x.com"),
            };
            db.commit(run, &record(0), Some(&change)).unwrap();
            let change = StateChange::MembersAdded {
                group: GroupKey::new("g"),
                users: vec![SourceKey::new("k1")],
            };
            db.commit(run, &record(1), Some(&change)).unwrap();
            // Killed here: the run never finishes.
        }
        let mut db = StateDb::open(&path).unwrap();
        let mut state = db.load().unwrap();
        assert_eq!(state.generation, 2);
        assert_eq!(state.users.len(), 1);
        assert_eq!(state.memberships[&GroupKey::new("g")].len(), 1);
        let unfinished = db.recent_runs(10).unwrap();
        assert_eq!(
            unfinished.iter().filter(|r| r.ended_at.is_none()).count(),
            1
        );
        let key = SourceKey::new("k1");
        db.load_attrs(&mut state, [&key]).unwrap();
        assert_eq!(state.users[&key], user("id-1", "a@x.com"));
    }

    #[test]
    fn a_second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idsync.db");
        let _first = StateDb::open(&path).unwrap();
        assert!(matches!(
            StateDb::open(&path),
            Err(StateError::Locked { .. })
        ));
    }

    #[test]
    fn read_only_open_of_a_missing_db_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.db");
        assert!(StateDb::open_read_only(&path).unwrap().is_none());
        assert!(!path.exists());
    }

    #[test]
    fn removing_a_user_drops_its_memberships() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = StateDb::open(&dir.path().join("idsync.db")).unwrap();
        let run = db.begin_run("sync", &[]).unwrap();
        let k = SourceKey::new("k1");
        db.commit(
            run,
            &record(0),
            Some(&StateChange::PutUser {
                key: k.clone(),
                user: user("1", "a"),
            }),
        )
        .unwrap();
        db.commit(
            run,
            &record(1),
            Some(&StateChange::MembersAdded {
                group: GroupKey::new("g"),
                users: vec![k.clone()],
            }),
        )
        .unwrap();
        db.commit(
            run,
            &record(2),
            Some(&StateChange::UserStatus {
                key: k,
                status: Status::Removed,
            }),
        )
        .unwrap();
        let state = db.load().unwrap();
        assert!(state.memberships.is_empty());
    }
}
