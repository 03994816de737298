//! The schema: numbered migrations, each applied in one transaction with the
//! version bump (`PRAGMA user_version`), after a copy of the file as it was
//! (see `backup`).

use std::path::Path;

use rusqlite::{Transaction, params};

use super::{StateDb, StateError, backup, sqlite};
use crate::model::{MirrorGroup, MirrorProps};

/// The version this idsync writes.
pub(super) const SCHEMA_VERSION: i64 = 10;
/// The oldest version a read-only open understands without migrating (every
/// migration since only removed what no reader uses, or changed how a row is
/// written in a way readers tell by the version: see [`FRAMED_MIRROR`]).
pub(super) const OLDEST_READABLE: i64 = 1;

/// Numbered migrations; each runs in one transaction with the version bump.
const MIGRATIONS: &[&str] = &[
    r#"
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
"#,
    // 2: the watermarks table was never used; incremental sources keep their
    // cursors with their own data.
    "DROP TABLE watermarks;",
    // 3: the mirror of an incremental source (Entra ID): the objects the mapping
    // needs and the delta cursors, committed together after a cycle applied.
    r#"
CREATE TABLE mirror_users (
    id    TEXT PRIMARY KEY,
    props TEXT NOT NULL
) STRICT;
CREATE TABLE mirror_groups (
    id           TEXT PRIMARY KEY,
    display_name TEXT,
    members      TEXT NOT NULL
) STRICT;
CREATE TABLE mirror_meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;
"#,
    // 4: user attributes the target did not keep as sent, one
    // row per attribute, said once and no longer compared (see notes.rs).
    r#"
CREATE TABLE target_notes (
    attr     TEXT PRIMARY KEY,
    sent     TEXT NOT NULL,
    stored   TEXT,
    noted_at TEXT NOT NULL
) STRICT;
"#,
    // 5: what each operation did, one record read by `idsync log`, `revert`
    // and `report`: `new_values` is the operation as applied or attempted
    // (plan JSON: an update's old and new values, a create's attributes, the
    // members added or removed), `old_values` what an applied one destroyed
    // that the operation does not carry (a deleted user's attributes and
    // groups, a deleted group's members), both JSON text, NULL when none and
    // for rows written before. And the users and groups idsync managed when
    // each run ended, for the report's counts over time.
    r#"
ALTER TABLE run_ops ADD COLUMN old_values TEXT;
ALTER TABLE run_ops ADD COLUMN new_values TEXT;
ALTER TABLE runs ADD COLUMN managed_users INTEGER;
ALTER TABLE runs ADD COLUMN managed_groups INTEGER;
"#,
    // 6: live users by SCIM id, so a commit and a load can check that one
    // account belongs to one source key. Not UNIQUE: a DB written by an earlier
    // version may hold two live rows for one id, and loading it must say so
    // with a way out rather than fail the migration.
    "CREATE INDEX users_live_scim_id ON users (scim_id) WHERE status != 'removed';",
    // 7: notes are per user. One answer is evidence about one user's value,
    // never about an attribute for everyone: version 4's notes (one row per
    // attribute, from a single answer) are dropped, and the next answers write
    // the evidence again where it holds.
    r#"
DROP TABLE target_notes;
CREATE TABLE target_notes (
    user_key TEXT NOT NULL,
    attr     TEXT NOT NULL,
    sent     TEXT NOT NULL,
    stored   TEXT,
    noted_at TEXT NOT NULL,
    PRIMARY KEY (user_key, attr)
) STRICT;
"#,
    // 8: the name a create sends (a user's userName, a group's displayName)
    // beside its journal entry: after a crash, the account or group a started
    // create may have made is found by that name even when the source has
    // renamed or dropped it since, and is settled as idsync's own.
    "ALTER TABLE journal ADD COLUMN name TEXT;",
    // 9: a mirrored user's properties are stored as the framed text idsync
    // holds them in (names, values and their lengths) instead of a JSON
    // object: read back with a check of the framing instead of a parse, and
    // a smaller file. The rows are rewritten in Rust (`frame_mirror_rows`).
    "",
    // 10: a mirrored group's members are stored framed as well (each id's
    // length, then the id, in order) instead of a JSON list, read back with
    // a check of the framing instead of a parse. Rewritten in Rust
    // (`frame_group_members`).
    "",
];

/// The version from which `mirror_users.props` holds framed text (before:
/// JSON).
pub(super) const FRAMED_MIRROR: i64 = 9;
/// The version from which `mirror_groups.members` holds framed text (before:
/// a JSON list).
pub(super) const FRAMED_MEMBERS: i64 = 10;

impl StateDb {
    pub(super) fn migrate(&mut self) -> Result<(), StateError> {
        let version = self.refuse_too_new()?;
        // A file that holds a schema is copied first; a new one holds nothing.
        if version > 0 && version < SCHEMA_VERSION {
            let copy = backup::before_migration(&self.conn, &self.path, version)?;
            tracing::info!(
                from = version,
                to = SCHEMA_VERSION,
                copy = %copy.display(),
                "migrating the state DB; the file as it was is copied beside it"
            );
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let path = self.path.clone();
            let tx = self.conn.transaction().map_err(|e| sqlite(&path, e))?;
            tx.execute_batch(sql).map_err(|e| sqlite(&path, e))?;
            if i + 1 == FRAMED_MIRROR as usize {
                frame_mirror_rows(&tx, &path)?;
            }
            if i + 1 == FRAMED_MEMBERS as usize {
                frame_group_members(&tx, &path)?;
            }
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(|e| sqlite(&path, e))?;
            tx.commit().map_err(|e| sqlite(&path, e))?;
        }
        Ok(())
    }
}

/// Migration 9: each mirrored user's JSON row rewritten as framed text, in
/// the migration's transaction. A row that is not the JSON idsync wrote
/// stops the migration (nothing is changed) with the user named.
fn frame_mirror_rows(tx: &Transaction<'_>, path: &Path) -> Result<(), StateError> {
    rewrite_rows(
        tx,
        path,
        ("user", "mirror_users", "props", FRAMED_MIRROR),
        |json| {
            MirrorProps::from_json(json)
                .map(|props| props.as_framed().to_string())
                .map_err(|e| e.to_string())
        },
    )
}

/// Migration 10: each mirrored group's JSON list of members rewritten as
/// framed text, in the migration's transaction. A row that is not a JSON
/// list of strings stops the migration (nothing is changed) with the group
/// named.
fn frame_group_members(tx: &Transaction<'_>, path: &Path) -> Result<(), StateError> {
    rewrite_rows(
        tx,
        path,
        ("group", "mirror_groups", "members", FRAMED_MEMBERS),
        |json| {
            serde_json::from_str::<std::collections::BTreeSet<String>>(json)
                .map(|members| {
                    MirrorGroup {
                        display_name: None,
                        members: members.into(),
                    }
                    .framed_members()
                })
                .map_err(|e| e.to_string())
        },
    )
}

/// Rewrites `column` of every row of a mirror `table` (keyed by `id`) with
/// `convert`; the first row it refuses stops the migration to `version`,
/// naming the `what` (user or group) by its id.
fn rewrite_rows(
    tx: &Transaction<'_>,
    path: &Path,
    (what, table, column, version): (&str, &str, &str, i64),
    convert: impl Fn(&str) -> Result<String, String>,
) -> Result<(), StateError> {
    let err = |e| sqlite(path, e);
    let mut read = tx
        .prepare(&format!("SELECT id, {column} FROM {table}"))
        .map_err(err)?;
    let mut write = tx
        .prepare(&format!("UPDATE {table} SET {column} = ?2 WHERE id = ?1"))
        .map_err(err)?;
    let mut rows = read.query([]).map_err(err)?;
    while let Some(row) = rows.next().map_err(err)? {
        let id: String = row.get(0).map_err(err)?;
        let old: String = row.get(1).map_err(err)?;
        let new = convert(&old).map_err(|e| StateError::Corrupt {
            path: path.to_path_buf(),
            message: format!(
                "mirror {what} {id:?} (while migrating to schema version {version}): {e}"
            ),
        })?;
        write.execute(params![id, new]).map_err(err)?;
    }
    Ok(())
}
