//! The state DB: one SQLite file per target directory holding what idsync last
//! pushed (per object: source key, SCIM id, attribute hash and values, status,
//! ownership) and group memberships as pushed (`store`), the journal of the run
//! in progress (`journal`), and the history of runs with a per-operation log
//! (`history`); `schema` holds the numbered migrations. `files` looks at the
//! files beside the DB before SQLite opens it, `check` checks a DB for
//! `idsync state check`, and `backup` copies it (on demand, and before every
//! migration).
//!
//! All work here is synchronous and transactional: each operation's outcome and
//! its state change commit together, so a run killed at any point resumes without
//! duplicates and without losing work. An advisory lock beside the DB allows one
//! writer at a time; `plan` reads without it and writes nothing.

mod backup;
mod check;
mod files;
mod history;
mod journal;
mod mirror;
mod notes;
mod schema;
mod seal;
mod store;

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior};

pub use backup::MIGRATION_BACKUPS_KEPT;
pub use check::CheckReport;
pub use history::{
    AppliedOp, FailureRecord, LogFilter, LogRecord, OpLine, Retention, RunEnd, RunPoint, RunRecord,
    RunsSinceSuccess,
};
pub use journal::{JournalEntry, OpOutcome, OpRecord, RunId};

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
    #[error("state DB {}: schema version {found} is newer than this idsync understands ({supported}); it was written by a newer idsync", .path.display())]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    /// The DB (or its folder) cannot be written: found at open, before any run.
    #[error("state DB {} cannot be written: {message}", .path.display())]
    ReadOnly { path: PathBuf, message: String },
    #[error("state DB {}: a stored value is corrupt: {message}", .path.display())]
    Corrupt { path: PathBuf, message: String },
    /// SQLite found the file damaged, or not a database at all (a truncated
    /// file, bytes overwritten).
    #[error("state DB {}: the file is damaged ({detail})", .path.display())]
    Damaged { path: PathBuf, detail: String },
    /// The file system that holds the DB has no space left.
    #[error("state DB {}: no space left on the file system that holds it", .path.display())]
    DiskFull { path: PathBuf },
    /// The write-ahead log is gone while its index shows it held writes not
    /// yet in the DB file: the file alone is older than the last run left it.
    #[error(
        "state DB {}: its write-ahead log {} is missing, but {} shows the log held {frames} page write(s) not yet copied into the DB file; the DB file alone is older than what the last run recorded, so it was not used",
        .path.display(), files::beside(.path, "-wal").display(), files::beside(.path, "-shm").display()
    )]
    WalMissing { path: PathBuf, frames: u32 },
    /// `state backup` was asked to write over a file without `--force`.
    #[error("{} exists; the backup was not written over it", .path.display())]
    Exists { path: PathBuf },
}

/// The way out for a state DB at `path` that cannot be used as it is.
pub fn recovery_hint(path: &Path) -> String {
    format!(
        "restore a backup (stop idsync's timer or daemon, copy the backup over {db}, remove {db}-wal and {db}-shm, run sync), or move {db} aside and run `idsync sync --full` against a fresh DB (it adopts what the target holds by name)",
        db = path.display()
    )
}

impl StateError {
    /// What the operator should do next, when this error has advice of its
    /// own: a damaged, too new or incomplete DB is never used as it is.
    pub fn hint(&self) -> Option<String> {
        let recover = |path: &Path| {
            format!(
                "{}; `idsync state check` lists what is wrong",
                recovery_hint(path)
            )
        };
        Some(match self {
            StateError::DiskFull { path } => format!(
                "free space on the file system that holds {}, then run `idsync sync` again: what was committed is kept, and the run resumes without duplicates",
                path.display()
            ),
            StateError::Damaged { path, .. } | StateError::Corrupt { path, .. } => recover(path),
            StateError::TooNew {
                path, supported, ..
            } => format!(
                "run the idsync that wrote it (or a newer one); or go back to the copy the newer idsync made before migrating ({db}.v{supported}-….bak beside it, if it made one) or another backup taken before the upgrade, or move {db} aside and run `idsync sync --full` against a fresh DB",
                db = path.display()
            ),
            StateError::WalMissing { path, .. } => format!(
                "if {db}-wal was moved or not copied along, put it back beside {db}; otherwise {}; or accept the DB file as the older copy it is by removing {db}-shm (the next sync then converges as after restoring an older backup)",
                recover(path),
                db = path.display()
            ),
            StateError::Exists { .. } => {
                "choose another file name, or pass --force to replace it".to_string()
            }
            StateError::Locked { .. } => {
                "wait for the other run to finish (one run at a time per state DB)".to_string()
            }
            StateError::Sqlite { .. } | StateError::Io { .. } | StateError::ReadOnly { .. } => {
                return None;
            }
        })
    }
}

/// Fails unless a write transaction can be made. SQLite opens a file it cannot
/// write read-only without a word; the first write of a run would then fail
/// and every operation be counted as failed, though nothing was attempted.
fn check_writable(conn: &mut Connection, path: &Path) -> Result<(), StateError> {
    // A full disk or a damaged file is said as such.
    let refused = |e: rusqlite::Error| match sqlite(path, e) {
        StateError::Sqlite { source, .. } => StateError::ReadOnly {
            path: path.to_path_buf(),
            message: source.to_string(),
        },
        other => other,
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(refused)?;
    // A write that is rolled back: nothing changes in a writable DB.
    tx.execute_batch("CREATE TABLE idsync_write_probe (x)")
        .map_err(refused)?;
    tx.rollback().map_err(refused)
}

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
    /// When SQLite's `quick_check` last read the whole file: at this open,
    /// or, for a file still as a clean close sealed it, before (see `seal`).
    checked_at: u64,
    /// Set when the run ended cleanly: the file is sealed as it is closed.
    seal_on_close: bool,
    /// The file's chunk hashes, taken before SQLite opened it: the seal at
    /// close hashes again only what the run wrote.
    hashes_at_open: Option<seal::FileHashes>,
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
        let lock = acquire_lock(&canonical(path)?)?;
        files::check_wal(path)?;
        // Hashed before SQLite opens it, and compared with the seal the last
        // clean close left.
        let opened = seal::at_open(path, seal::now_secs());
        // Made owner-only before SQLite opens it: SQLite gives the `-wal` and
        // `-shm` files it creates the DB file's permissions.
        create_private(path, false).map_err(|e| io(path, e))?;
        let conn = Connection::open(path).map_err(|source| sqlite(path, source))?;
        let mut db = StateDb {
            conn,
            path: path.to_path_buf(),
            _lock: Some(lock),
            checked_at: seal::now_secs(),
            seal_on_close: false,
            hashes_at_open: opened.hashes,
        };
        // Read before anything is set: a file a newer idsync wrote is left
        // exactly as it is.
        db.refuse_too_new()?;
        db.configure()?;
        match opened.checked_at {
            Some(checked_at) => {
                tracing::debug!(path = %path.display(), "the state DB is as the last run sealed it; quick_check not repeated");
                db.checked_at = checked_at;
            }
            None => db.quick_check()?,
        }
        check_writable(&mut db.conn, path)?;
        db.migrate()?;
        // Files an older idsync left readable by others.
        for suffix in ["-wal", "-shm"] {
            let side = files::beside(path, suffix);
            if side.exists() {
                restrict(&side).map_err(|e| io(&side, e))?;
            }
        }
        Ok(db)
    }

    /// Opens an existing DB to read only (for `plan`, `status`, `explain`): no lock
    /// and no writes. `None` when there is no DB yet (a first run).
    pub fn open_read_only(path: &Path) -> Result<Option<StateDb>, StateError> {
        if !path.exists() {
            return Ok(None);
        }
        files::check_wal(path)?;
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
            checked_at: 0,
            seal_on_close: false,
            hashes_at_open: None,
        };
        let version = db.refuse_too_new()?;
        // The schema is read whatever the version says: a file cut short
        // reads as version 0, and must not pass for a DB not yet made.
        db.conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
            .map_err(|e| db.err(e))?;
        if version < schema::OLDEST_READABLE {
            // Not yet initialised (or older): nothing to read that we understand.
            return Ok(None);
        }
        Ok(Some(db))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The run on this DB ended cleanly: when it is closed, the file is
    /// sealed (see `seal`), and the next run that finds it unchanged does
    /// not run `quick_check` again. Only for a DB opened to write.
    pub fn seal_on_close(&mut self) {
        self.seal_on_close = self._lock.is_some();
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

    /// The schema version, unless a newer idsync wrote the file.
    fn refuse_too_new(&self) -> Result<i64, StateError> {
        let version = self.user_version()?;
        if version > schema::SCHEMA_VERSION {
            return Err(StateError::TooNew {
                path: self.path.clone(),
                found: version,
                supported: schema::SCHEMA_VERSION,
            });
        }
        Ok(version)
    }

    /// SQLite's structural check of every page, before a run writes (and
    /// before anything is sent): a damaged file is refused here rather than
    /// met half-way through a run. About 0.7 s for a million users.
    fn quick_check(&self) -> Result<(), StateError> {
        let found = sqlite_check(&self.conn, "quick_check", 5).map_err(|e| self.err(e))?;
        if found.is_empty() {
            return Ok(());
        }
        Err(StateError::Damaged {
            path: self.path.clone(),
            detail: format!("SQLite quick_check: {}", found.join("; ")),
        })
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
}

impl Drop for StateDb {
    /// Seals the file of a run that ended cleanly: the connection is closed
    /// first (its log copied into the file and removed), the lock still held.
    fn drop(&mut self) {
        if !self.seal_on_close {
            return;
        }
        let Ok(spare) = Connection::open_in_memory() else {
            return;
        };
        // The pages the run wrote, listed by the log before the close copies
        // them into the file and removes it.
        let known = self
            .hashes_at_open
            .take()
            .and_then(|hashes| Some((hashes, seal::written_chunks(&self.path)?)));
        let conn = std::mem::replace(&mut self.conn, spare);
        if let Err((_, e)) = conn.close() {
            tracing::debug!(error = %e, "state DB not closed cleanly; not sealed");
            return;
        }
        match seal::seal(&self.path, self.checked_at, known) {
            Ok(sealed) => tracing::debug!(sealed, "state DB closed"),
            Err(e) => {
                tracing::debug!(error = %e, "state DB not sealed; the next run checks it in full")
            }
        }
    }
}

fn write_pid(mut file: &File) -> std::io::Result<()> {
    use std::io::Write as _;
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    file.flush()
}

/// Owner read and write only: the state DB holds every managed user's
/// attributes, a saved plan the values it will send.
#[cfg(unix)]
const PRIVATE_MODE: u32 = 0o600;

/// Opens `path` for writing, creating it readable and writable by its owner
/// only whatever the umask, and takes group and other access away from a file
/// that exists already. `truncate` empties it.
pub fn create_private(path: &Path, truncate: bool) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.create(true).write(true).truncate(truncate);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(PRIVATE_MODE);
    }
    let file = options.open(path)?;
    restrict(path)?;
    Ok(file)
}

/// Sets `path` owner-only (the mode given on create is only for new files).
fn restrict(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_MODE))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn io(path: &Path, e: std::io::Error) -> StateError {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        return StateError::DiskFull {
            path: path.to_path_buf(),
        };
    }
    StateError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Runs `PRAGMA <pragma>(<limit>)` (`quick_check` or `integrity_check`) and
/// returns what it found, one line each (without SQLite's "*** in database
/// main ***" heading): nothing when it says "ok".
fn sqlite_check(conn: &Connection, pragma: &str, limit: usize) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("PRAGMA {pragma}({limit})"))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    if rows == ["ok"] {
        return Ok(Vec::new());
    }
    let lines: Vec<String> = rows
        .iter()
        .flat_map(|row| row.lines())
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("*** in database"))
        .map(str::to_string)
        .collect();
    // Never "ok" by accident: whatever SQLite said that is not "ok" counts.
    Ok(if lines.is_empty() { rows } else { lines })
}

/// SQLite's error about the DB at `path`; a full disk and a damaged file
/// are told apart, since each has its own way out.
fn sqlite(path: &Path, source: rusqlite::Error) -> StateError {
    use rusqlite::ErrorCode;
    let path = path.to_path_buf();
    match source.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => StateError::DiskFull { path },
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StateError::Damaged {
            path,
            detail: source.to_string(),
        },
        _ => StateError::Sqlite { path, source },
    }
}

/// The DB's path with symlinks resolved, so the lock follows the file and not
/// the path string: two configs whose `state:` differ only by a symlink take
/// the same lock. The file itself is resolved when it exists; otherwise its
/// folder (which `open` has created) is, and the file name joined.
fn canonical(path: &Path) -> Result<PathBuf, StateError> {
    if let Ok(resolved) = std::fs::canonicalize(path) {
        return Ok(resolved);
    }
    let dir = match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => dir,
        None => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| StateError::Io {
        path: path.to_path_buf(),
        message: "the state path names no file".into(),
    })?;
    std::fs::canonicalize(dir)
        .map(|dir| dir.join(name))
        .map_err(|e| StateError::Io {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })
}

fn lock_path(db: &Path) -> PathBuf {
    files::beside(db, ".lock")
}

/// The run holding a state DB's lock, for `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct LockHolder {
    /// Its process id, as it wrote it into the lock file (absent when an older
    /// idsync holds the lock).
    pub pid: Option<u32>,
}

impl StateDb {
    /// The run holding the lock of the DB at `path`, if a live one does (the OS
    /// drops the lock of a process that died, whatever its PID line says).
    /// Probes with a shared lock that is released at once: a sync starting in
    /// that instant is refused as locked (exit 4) and can be started again.
    pub fn lock_holder(path: &Path) -> Result<Option<LockHolder>, StateError> {
        let Ok(db) = canonical(path) else {
            return Ok(None);
        };
        let lock_path = lock_path(&db);
        let mut file = match File::open(&lock_path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&lock_path, e)),
        };
        match file.try_lock_shared() {
            Ok(()) => Ok(None),
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                use std::io::Read as _;
                file.read_to_string(&mut text)
                    .map_err(|e| io(&lock_path, e))?;
                Ok(Some(LockHolder {
                    pid: text.trim().parse().ok(),
                }))
            }
            Err(std::fs::TryLockError::Error(e)) => Err(StateError::Io {
                path: lock_path,
                message: format!("cannot probe the lock: {e}"),
            }),
        }
    }
}

fn acquire_lock(db: &Path) -> Result<File, StateError> {
    let lock_path = lock_path(db);
    let file = create_private(&lock_path, false).map_err(|e| io(&lock_path, e))?;
    match file.try_lock() {
        Ok(()) => {
            // Only once the lock is ours: the PID of a live holder is never
            // overwritten. `status` reads it to tell a run in progress from an
            // interrupted one.
            write_pid(&file).map_err(|e| io(&lock_path, e))?;
            Ok(file)
        }
        Err(std::fs::TryLockError::WouldBlock) => Err(StateError::Locked { path: lock_path }),
        Err(std::fs::TryLockError::Error(e)) => Err(StateError::Io {
            path: lock_path,
            message: format!("cannot lock: {e}"),
        }),
    }
}

#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::model::{
        AttrHash, GroupKey, Ownership, ScimId, SourceKey, StateChange, StateUser, Status, UserAttr,
        UserAttrs,
    };
    use crate::model::{Exit, OpKind};

    #[test]
    fn a_db_that_cannot_be_written_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idsync.db");
        drop(StateDb::open(&path).expect("create"));
        // What SQLite falls back to for a file it may not write.
        let mut conn =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let err = check_writable(&mut conn, &path).unwrap_err();
        assert!(matches!(err, StateError::ReadOnly { .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with(&format!("state DB {} cannot be written: ", path.display())),
            "{err}"
        );
        // A writable DB opens, and the probe leaves nothing behind.
        let db = StateDb::open(&path).expect("open");
        let probes: i64 = db
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'idsync_write_probe'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(probes, 0);
    }

    pub(super) fn user(id: &str, name: &str) -> StateUser {
        let mut attrs = UserAttrs::new();
        attrs.insert(UserAttr::UserName, name);
        StateUser {
            scim_id: ScimId::new(id).into(),
            user_name: name.into(),
            hash: AttrHash::of(&attrs, &BTreeSet::new()),
            status: Status::Active,
            ownership: Ownership::Created,
            attrs: Some(Box::new(attrs)),
        }
    }

    /// The default retention: 30 days, any number of runs.
    const KEEP: Retention = Retention {
        days: 30,
        runs: None,
    };

    fn record(seq: i64) -> OpRecord {
        OpRecord {
            seq,
            op: OpKind::CreateUser,
            subject: "k1".into(),
            outcome: OpOutcome::Applied,
            http_status: Some(201),
            error: None,
            old_values: None,
            new_values: None,
        }
    }

    #[test]
    fn the_log_shows_what_an_operation_carried_from_its_record_and_reads_a_file_from_before_migration_5()
     {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idsync.db");
        {
            let mut db = StateDb::open(&path).unwrap();
            let run = db
                .begin_run("sync", &[("update_user", "k1".into())])
                .unwrap();
            // A failed update: the log still shows what it tried to change.
            let mut r = record(0);
            r.op = OpKind::UpdateUser;
            r.outcome = OpOutcome::Failed;
            r.new_values = Some(
                r#"{"op":"update_user","key":"k1","userName":"ada","scim_id":"id-1","changes":{"title":{"old":"A","new":"B"}}}"#
                    .into(),
            );
            db.commit(run, &r, None).unwrap();
            // An operation that carries nothing but what names it.
            let mut r = record(1);
            r.op = OpKind::CreateGroup;
            r.subject = "g".into();
            r.new_values = Some(r#"{"op":"create_group","key":"g","displayName":"G"}"#.into());
            db.commit(run, &r, None).unwrap();
            let log = db.op_log(&LogFilter::default()).unwrap();
            assert_eq!(log.len(), 2);
            assert_eq!(
                log[0].detail,
                Some(serde_json::json!({"changes": {"title": {"old": "A", "new": "B"}}}))
            );
            assert_eq!(log[1].detail, None);
            // By key, by userName, by the email pushed (case-insensitive).
            let mut u = user("id-1", "ada");
            u.attrs
                .as_mut()
                .unwrap()
                .insert(UserAttr::Email, "Ada@Example.com");
            let put = StateChange::PutUser {
                key: SourceKey::new("k1"),
                user: u,
            };
            let mut r = record(2);
            r.subject = "k1".into();
            db.commit(run, &r, Some(&put)).unwrap();
            for who in ["k1", "ADA", "ada@example.COM"] {
                let by_user = db
                    .op_log(&LogFilter {
                        user: Some(who.into()),
                        ..LogFilter::default()
                    })
                    .unwrap();
                assert_eq!(by_user.len(), 2, "{who}");
            }
            let nobody = LogFilter {
                user: Some("grace@example.com".into()),
                ..LogFilter::default()
            };
            assert!(db.op_log(&nobody).unwrap().is_empty());
            // As migration 3 left it.
            db.conn.execute_batch(BACK_TO_VERSION_3).unwrap();
        }
        let db = StateDb::open_read_only(&path).unwrap().expect("exists");
        let log = db.op_log(&LogFilter::default()).unwrap();
        assert_eq!(log.len(), 3);
        assert!(log.iter().all(|r| r.detail.is_none()));
        // `status` reads the journal of a file without names (schema 8).
        assert!(db.interrupted_ops().unwrap().is_empty());
        // A sync migrates it again.
        drop(db);
        let db = StateDb::open(&path).unwrap();
        assert_eq!(db.user_version().unwrap(), schema::SCHEMA_VERSION);
        assert_eq!(db.op_log(&LogFilter::default()).unwrap().len(), 3);
    }

    /// Undoes migrations 8 to 4, as an idsync of schema version 3 left a file.
    pub(super) const BACK_TO_VERSION_3: &str = "ALTER TABLE journal DROP COLUMN name;
         DROP INDEX users_live_scim_id;
         ALTER TABLE run_ops DROP COLUMN old_values; ALTER TABLE run_ops DROP COLUMN new_values;
         ALTER TABLE runs DROP COLUMN managed_users; ALTER TABLE runs DROP COLUMN managed_groups;
         DROP TABLE target_notes;
         PRAGMA user_version = 3;";

    /// The tables and columns of a state file, as SQLite declares them.
    fn schema_of(db: &StateDb) -> Vec<(String, String)> {
        let mut stmt = db
            .conn
            .prepare(
                "SELECT m.name, group_concat(c.name || ' ' || c.type, ', ')
                 FROM sqlite_master m JOIN pragma_table_info(m.name) c
                 WHERE m.type = 'table' GROUP BY m.name ORDER BY m.name",
            )
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn an_operation_is_recorded_once_and_a_migrated_version_3_file_matches_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = StateDb::open(&dir.path().join("fresh.db")).unwrap();
        let run_ops = schema_of(&fresh)
            .into_iter()
            .find(|(table, _)| table == "run_ops")
            .unwrap()
            .1;
        assert!(run_ops.contains("new_values TEXT"), "{run_ops}");
        assert!(run_ops.contains("old_values TEXT"), "{run_ops}");
        assert!(!run_ops.contains("detail"), "{run_ops}");
        let path = dir.path().join("old.db");
        {
            let db = StateDb::open(&path).unwrap();
            db.conn.execute_batch(BACK_TO_VERSION_3).unwrap();
        }
        let migrated = StateDb::open(&path).unwrap();
        assert_eq!(
            migrated.user_version().unwrap(),
            fresh.user_version().unwrap()
        );
        assert_eq!(schema_of(&migrated), schema_of(&fresh));
    }

    #[test]
    fn a_version_3_db_gains_the_old_and_new_values_of_each_operation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idsync.db");
        {
            let db = StateDb::open(&path).unwrap();
            // Back to version 3, as an older idsync left it.
            db.conn.execute_batch(BACK_TO_VERSION_3).unwrap();
        }
        let read_only = StateDb::open_read_only(&path).unwrap().unwrap();
        assert!(!read_only.records_values().unwrap());
        // The report reads an old file as it is: runs without counts.
        assert!(
            read_only
                .runs_since("2000-01-01T00:00:00Z")
                .unwrap()
                .is_empty()
        );
        drop(read_only);
        let mut db = StateDb::open(&path).unwrap();
        assert!(db.records_values().unwrap());
        let run = db
            .begin_run("sync", &[("delete_user", "k1".into())])
            .unwrap();
        let mut op = record(0);
        op.old_values = Some(r#"{"attrs":{}}"#.into());
        op.new_values = Some(r#"{"op":"delete_user"}"#.into());
        db.commit(run, &op, None).unwrap();
        let applied = db.applied_ops(run).unwrap();
        assert_eq!(applied.len(), 1);
        assert_eq!(applied[0].old_values, op.old_values);
        assert_eq!(applied[0].new_values, op.new_values);
        // The log shows the same record: what the delete destroyed included.
        let log = db.op_log(&LogFilter::default()).unwrap();
        assert_eq!(
            log[0].detail,
            Some(serde_json::json!({"deleted": {"attrs": {}}}))
        );
        assert!(db.run(run).unwrap().is_some());
        assert!(db.run(run + 1).unwrap().is_none());
        let end = RunEnd {
            applied: 1,
            failed: 0,
            exit_code: crate::model::Exit::Ok,
            summary: "{}",
            error: None,
            settles_interrupted: true,
        };
        db.finish_run(
            run,
            &end,
            Retention {
                days: 30,
                runs: None,
            },
        )
        .unwrap();
        let points = db.runs_since("2000-01-01T00:00:00Z").unwrap();
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].managed_users, Some(0));
        assert_eq!(points[0].managed_groups, Some(0));
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

    /// The lock file sits beside the path as written: through a symlinked
    /// folder it is the same file (locks follow inodes), but a symlink to the
    /// DB file itself named another lock file until the path was resolved.
    #[cfg(unix)]
    #[test]
    fn a_second_writer_through_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let folder = dir.path().join("folder-link");
        std::os::unix::fs::symlink(&real, &folder).unwrap();
        let file = dir.path().join("file-link.db");
        std::os::unix::fs::symlink(real.join("idsync.db"), &file).unwrap();

        // The folder link first, before the DB file exists.
        let first = StateDb::open(&folder.join("idsync.db")).unwrap();
        for other in [real.join("idsync.db"), file.clone()] {
            assert!(
                matches!(StateDb::open(&other), Err(StateError::Locked { .. })),
                "{} was not refused",
                other.display()
            );
        }
        drop(first);
        let _first = StateDb::open(&file).unwrap();
        assert!(matches!(
            StateDb::open(&folder.join("idsync.db")),
            Err(StateError::Locked { .. })
        ));
    }

    /// The DB, its WAL and shared-memory files and the lock file are owner-only
    /// whatever the umask, and so become files an older idsync left readable.
    #[cfg(unix)]
    #[test]
    fn state_files_are_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idsync.db");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // As an older idsync left them under umask 022.
        for name in ["idsync.db.lock", "idsync.db"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
            std::fs::set_permissions(
                dir.path().join(name),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
        }
        let mut db = StateDb::open(&path).unwrap();
        let run = db
            .begin_run("sync", &[("create_user", "k1".into())])
            .unwrap();
        db.commit(run, &record(0), None).unwrap();
        let files: Vec<PathBuf> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 4, "{files:?}");
        for f in &files {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
        drop(db);
        let fresh = tempfile::tempdir().unwrap();
        let other = fresh.path().join("new.db");
        let _db = StateDb::open(&other).unwrap();
        for f in std::fs::read_dir(fresh.path()).unwrap() {
            let f = f.unwrap().path();
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
    }

    #[test]
    fn the_lock_names_the_live_run_holding_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idsync.db");
        assert_eq!(StateDb::lock_holder(&path).unwrap(), None);
        let db = StateDb::open(&path).unwrap();
        assert_eq!(
            StateDb::lock_holder(&path).unwrap(),
            Some(LockHolder {
                pid: Some(std::process::id())
            })
        );
        // Probing does not take the lock from the holder.
        assert!(matches!(
            StateDb::open(&path),
            Err(StateError::Locked { .. })
        ));
        drop(db);
        // The PID line stays behind, but nobody holds the lock.
        assert_eq!(StateDb::lock_holder(&path).unwrap(), None);
    }

    #[test]
    fn read_only_open_of_a_missing_db_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.db");
        assert!(StateDb::open_read_only(&path).unwrap().is_none());
        assert!(!path.exists());
    }

    #[test]
    fn memberships_load_as_written_sharing_their_users_keys() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = StateDb::open(&dir.path().join("idsync.db")).unwrap();
        // Keys too long to sit inline, one short key, and a member with no
        // user record; three groups, the middle one empty of users.
        let long = |n: u32| SourceKey::new(format!("00000000-0000-0000-0000-{n:012}"));
        let (a, b, short, stranger) = (long(1), long(2), SourceKey::new("k3"), long(9));
        let mut changes: Vec<StateChange> = [(&a, "1"), (&b, "2"), (&short, "3")]
            .into_iter()
            .map(|(key, id)| StateChange::PutUser {
                key: key.clone(),
                user: user(id, &format!("user{id}")),
            })
            .collect();
        let groups = [
            ("g1", vec![b.clone(), a.clone(), short.clone()]),
            ("g2", vec![stranger.clone()]),
            ("g3", vec![a.clone(), stranger.clone()]),
        ];
        changes.extend(groups.iter().map(|(g, users)| StateChange::MembersAdded {
            group: GroupKey::new(*g),
            users: users.clone(),
        }));
        db.commit_changes(&changes).unwrap();
        let state = db.load().unwrap();
        for (g, users) in &groups {
            let loaded: Vec<&SourceKey> = state.memberships[&GroupKey::new(*g)].iter().collect();
            let mut written: Vec<&SourceKey> = users.iter().collect();
            written.sort();
            assert_eq!(loaded, written, "{g}");
        }
        // A long key is one copy, the user record's.
        let record = |k: &SourceKey| state.users.get_key_value(k).unwrap().0.as_str().as_ptr();
        for (g, key) in [("g1", &a), ("g1", &b), ("g3", &a)] {
            let member = state.memberships[&GroupKey::new(g)].get(key).unwrap();
            assert_eq!(member.as_str().as_ptr(), record(key), "{g} {key}");
        }
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

    #[test]
    fn the_runs_since_the_last_success_are_counted_with_how_the_newest_ended() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = StateDb::open(&dir.path().join("idsync.db")).unwrap();
        let none = RunsSinceSuccess {
            count: 0,
            first_started_at: None,
            last_exit: None,
        };
        assert_eq!(db.runs_since_success("sync --only").unwrap(), none);
        db.record_stopped_run("sync", Exit::Unreachable, "source", KEEP)
            .unwrap();
        db.record_stopped_run("sync", Exit::Guard, "guard", KEEP)
            .unwrap();
        let bad = db.runs_since_success("sync --only").unwrap();
        assert_eq!((bad.count, bad.last_exit), (2, Some(Exit::Guard)));
        assert!(bad.first_started_at.is_some());
        db.record_stopped_run("sync", Exit::Ok, "", KEEP).unwrap();
        let good = db.runs_since_success("sync --only").unwrap();
        assert_eq!((good.count, good.last_exit), (0, Some(Exit::Ok)));
        // A run that never finished (killed) counts as a bad one.
        db.begin_run("sync", &[]).unwrap();
        let killed = db.runs_since_success("sync --only").unwrap();
        assert_eq!((killed.count, killed.last_exit), (1, None));
        // Runs of the ignored command count neither way.
        db.record_stopped_run("sync --only", Exit::Ok, "", KEEP)
            .unwrap();
        db.record_stopped_run("sync --only", Exit::Guard, "", KEEP)
            .unwrap();
        assert_eq!(db.runs_since_success("sync --only").unwrap(), killed);
    }
}

/// One state transition, two places: a change committed to SQLite and read back
/// gives the state the same change gives in memory.
#[cfg(test)]
mod transition_tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::model::{
        AttrHash, GroupKey, GroupName, Ownership, ScimId, SourceKey, State, StateChange,
        StateGroup, StateUser, Status, UserAttr, UserAttrs,
    };

    fn arb_status() -> impl Strategy<Value = Status> {
        prop_oneof![
            Just(Status::Active),
            Just(Status::Disabled),
            Just(Status::Removed)
        ]
    }

    fn user_key() -> impl Strategy<Value = SourceKey> {
        (0..4usize).prop_map(|i| SourceKey::new(format!("u{i}")))
    }

    fn group_key() -> impl Strategy<Value = GroupKey> {
        (0..3usize).prop_map(|i| GroupKey::new(format!("g{i}")))
    }

    /// The ids targets give: short text, or a UUID with or without hyphens
    /// (held packed in memory, so each must come back from the file as sent).
    fn target_id(key: &SourceKey, id: usize) -> String {
        let n = key
            .as_str()
            .bytes()
            .fold(0u64, |n, b| n * 31 + u64::from(b));
        match id {
            0 => format!("id-{key}"),
            1 => format!(
                "{:08x}-5b2e-4c7d-9e0f-{:012x}",
                n as u32,
                n & 0xffff_ffff_ffff
            ),
            _ => format!("{:016x}9e0f4c7d{:08x}", n, n as u32),
        }
    }

    fn arb_change() -> impl Strategy<Value = StateChange> {
        prop_oneof![
            (user_key(), 0..3usize, arb_status(), any::<bool>()).prop_map(
                |(key, id, status, adopted)| {
                    let mut attrs = UserAttrs::new();
                    attrs.insert(UserAttr::UserName, format!("{key}.{id}@x.com"));
                    attrs.insert(UserAttr::Title, format!("t{id}"));
                    StateChange::PutUser {
                        user: StateUser {
                            scim_id: ScimId::new(target_id(&key, id)).into(),
                            user_name: format!("{key}.{id}@x.com").into(),
                            hash: AttrHash::of(&attrs, &BTreeSet::new()),
                            status,
                            ownership: if adopted {
                                Ownership::Adopted
                            } else {
                                Ownership::Created
                            },
                            attrs: Some(Box::new(attrs)),
                        },
                        key,
                    }
                }
            ),
            (user_key(), arb_status())
                .prop_map(|(key, status)| StateChange::UserStatus { key, status }),
            (group_key(), 0..2usize, 0..2usize).prop_map(|(key, id, name)| StateChange::PutGroup {
                group: StateGroup {
                    scim_id: ScimId::new(format!("gid-{key}-{id}")),
                    display_name: GroupName::new(format!("Group {name}")),
                    status: Status::Active,
                    ownership: Ownership::Created,
                },
                key,
            }),
            (group_key(), arb_status())
                .prop_map(|(key, status)| StateChange::GroupStatus { key, status }),
            (group_key(), prop::collection::vec(user_key(), 0..3))
                .prop_map(|(group, users)| StateChange::MembersAdded { group, users }),
            (group_key(), prop::collection::vec(user_key(), 0..3))
                .prop_map(|(group, users)| StateChange::MembersRemoved { group, users }),
            (group_key(), prop::collection::btree_set(user_key(), 0..3))
                .prop_map(|(group, users)| StateChange::SetMembers { group, users }),
        ]
    }

    /// The state read back, with every user's attributes loaded.
    fn reload(db: &mut StateDb) -> State {
        let mut state = db.load().unwrap();
        let keys: Vec<SourceKey> = state.users.keys().cloned().collect();
        db.load_attrs(&mut state, keys.iter()).unwrap();
        state
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn committing_a_change_and_reloading_matches_applying_it_in_memory(
            changes in prop::collection::vec(arb_change(), 1..25),
            batch in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut db = StateDb::open(&dir.path().join("idsync.db")).unwrap();
            let mut memory = State::default();
            if batch {
                db.commit_changes(&changes).unwrap();
                for c in &changes {
                    memory.apply(c);
                }
            } else {
                let run = db.begin_run("test", &[]).unwrap();
                for (seq, c) in changes.iter().enumerate() {
                    let record = OpRecord {
                        seq: seq as i64,
                        op: crate::model::OpKind::UpdateUser,
                        subject: String::new(),
                        outcome: OpOutcome::Applied,
                        http_status: None,
                        error: None,
                        old_values: None,
                        new_values: None,
                    };
                    db.commit(run, &record, Some(c)).unwrap();
                    memory.apply(c);
                }
            }
            let mut stored = reload(&mut db);
            // Memberships of users and groups never written are rows without
            // parents in SQLite and entries in memory alike; generations differ
            // by design (memory does not count commits).
            stored.generation = memory.generation;
            prop_assert_eq!(stored, memory);
        }
    }
}
