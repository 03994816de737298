//! The state DB: one SQLite file per target directory holding what idsync last
//! pushed (per object: source key, SCIM id, attribute hash and values, status,
//! ownership) and group memberships as pushed (`store`), the journal of the run
//! in progress (`journal`), and the history of runs with a per-operation log
//! (`history`); `schema` holds the numbered migrations.
//!
//! All work here is synchronous and transactional: each operation's outcome and
//! its state change commit together, so a run killed at any point resumes without
//! duplicates and without losing work. An advisory lock beside the DB allows one
//! writer at a time; `plan` reads without it and writes nothing.

mod history;
mod journal;
mod mirror;
mod schema;
mod store;

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

pub use history::{FailureRecord, RunEnd, RunRecord};
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
    #[error("state DB {}: schema version {found} is newer than this idsync understands ({supported})", .path.display())]
    TooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("state DB {}: a stored value is corrupt: {message}", .path.display())]
    Corrupt { path: PathBuf, message: String },
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
        if version > schema::SCHEMA_VERSION {
            return Err(StateError::TooNew {
                path: path.to_path_buf(),
                found: version,
                supported: schema::SCHEMA_VERSION,
            });
        }
        if version < schema::OLDEST_READABLE {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::model::{
        AttrHash, GroupKey, Ownership, ScimId, SourceKey, StateChange, StateUser, Status, UserAttr,
        UserAttrs,
    };

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
            outcome: OpOutcome::Applied,
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

    fn arb_change() -> impl Strategy<Value = StateChange> {
        prop_oneof![
            (user_key(), 0..3usize, arb_status(), any::<bool>()).prop_map(
                |(key, id, status, adopted)| {
                    let mut attrs = UserAttrs::new();
                    attrs.insert(UserAttr::UserName, format!("{key}.{id}@x.com"));
                    attrs.insert(UserAttr::Title, format!("t{id}"));
                    StateChange::PutUser {
                        user: StateUser {
                            scim_id: ScimId::new(format!("id-{key}-{id}")),
                            user_name: format!("{key}.{id}@x.com").into(),
                            hash: AttrHash::of(&attrs, &BTreeSet::new()),
                            status,
                            ownership: if adopted {
                                Ownership::Adopted
                            } else {
                                Ownership::Created
                            },
                            attrs: Some(attrs),
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
                        op: "test",
                        subject: String::new(),
                        outcome: OpOutcome::Applied,
                        http_status: None,
                        error: None,
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
