//! `idsync state check`: SQLite's own checks (`integrity_check`,
//! `foreign_key_check`) and idsync's invariants over the state DB, read
//! only. Each problem is named; a sound DB gets a short report.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::{StateDb, StateError, files, mirror, schema, sqlite, sqlite_check};

/// Lines of one SQLite check (or one invariant) listed before the rest are
/// counted.
const LISTED: usize = 20;

/// What `state check` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub path: PathBuf,
    /// Each problem, one line; none when the DB is sound.
    pub problems: Vec<String>,
    /// What the DB holds, for the report of a sound DB.
    pub facts: Vec<String>,
}

impl CheckReport {
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// idsync's own invariants: a name, and a query whose rows (one text column)
/// each name one breach.
const INVARIANTS: &[(&str, &str)] = &[
    (
        "one key per SCIM id",
        "SELECT 'SCIM id ' || quote(scim_id) || ' is recorded for ' || count(*) || ' live users: ' || group_concat(quote(key), ', ')
         FROM users WHERE status != 'removed' GROUP BY scim_id HAVING count(*) > 1",
    ),
    (
        "one key per SCIM id",
        "SELECT 'SCIM id ' || quote(scim_id) || ' is recorded for ' || count(*) || ' live groups: ' || group_concat(quote(key), ', ')
         FROM groups WHERE status != 'removed' GROUP BY scim_id HAVING count(*) > 1",
    ),
    (
        "one live user per userName",
        "SELECT 'userName ' || quote(min(user_name)) || ' is recorded for ' || count(*) || ' live users: ' || group_concat(quote(key), ', ')
         FROM users WHERE status != 'removed' GROUP BY user_name COLLATE NOCASE HAVING count(*) > 1",
    ),
    (
        "users' recorded values",
        "SELECT 'user ' || quote(key) || ': ' || CASE
             WHEN scim_id = '' THEN 'no SCIM id'
             WHEN user_name = '' THEN 'no userName'
             WHEN length(hash) != 16 THEN 'an attribute hash of ' || length(hash) || ' bytes, not 16'
             ELSE 'pushed attributes that are not JSON' END
         FROM users WHERE scim_id = '' OR user_name = '' OR length(hash) != 16 OR NOT json_valid(attrs)",
    ),
    (
        "groups' recorded values",
        "SELECT 'group ' || quote(key) || ': ' || CASE WHEN scim_id = '' THEN 'no SCIM id' ELSE 'no name' END
         FROM groups WHERE scim_id = '' OR display_name = ''",
    ),
    (
        "memberships only of known users and groups",
        "SELECT 'group ' || quote(group_key) || ' lists user ' || quote(user_key) || ', which the state DB does not record'
         FROM memberships WHERE user_key NOT IN (SELECT key FROM users)
         UNION ALL
         SELECT 'a membership of user ' || quote(user_key) || ' in group ' || quote(group_key) || ', which the state DB does not record'
         FROM memberships WHERE group_key NOT IN (SELECT key FROM groups)",
    ),
    (
        "a journal only for runs in progress",
        "SELECT 'journal entries of run #' || j.run_id || CASE WHEN r.id IS NULL
             THEN ', which the history does not record' ELSE ', which ended ' || r.ended_at END
         FROM (SELECT DISTINCT run_id FROM journal) j LEFT JOIN runs r ON r.id = j.run_id
         WHERE r.id IS NULL OR r.ended_at IS NOT NULL",
    ),
    (
        "every planned operation in the journal",
        "SELECT 'run #' || r.id || ' planned ' || r.planned || ' operation(s), its journal holds ' || count(*)
             || ' numbered ' || min(j.seq) || ' to ' || max(j.seq)
         FROM runs r JOIN journal j ON j.run_id = r.id GROUP BY r.id
         HAVING count(*) != r.planned OR min(j.seq) != 0 OR max(j.seq) != r.planned - 1",
    ),
    (
        "the journal agrees with the run's log",
        "SELECT 'run #' || j.run_id || ' operation ' || j.seq || ' (' || j.op || ' ' || quote(j.subject) || ') is '
             || j.state || ' in the journal but ' || CASE WHEN o.seq IS NULL THEN 'has no log line'
             ELSE 'is logged as ' || o.op || ' ' || quote(o.subject) || ', ' || o.outcome END
         FROM journal j LEFT JOIN run_ops o ON o.run_id = j.run_id AND o.seq = j.seq
         WHERE (j.state IN ('done', 'failed')) != (o.seq IS NOT NULL)
            OR (o.seq IS NOT NULL AND ((o.outcome = 'failed') != (j.state = 'failed')
                                       OR o.op != j.op OR o.subject != j.subject))",
    ),
    (
        "the log agrees with the users and groups",
        "SELECT 'run #' || run_id || ' operation ' || seq || ' ' || op || ' ' || quote(subject)
             || ' was applied, but the state DB does not record that '
             || CASE WHEN op LIKE '%user' THEN 'user' ELSE 'group' END
         FROM run_ops o WHERE outcome = 'applied' AND (
             (op IN ('create_user', 'adopt_user') AND NOT EXISTS (SELECT 1 FROM users u WHERE u.key = o.subject))
          OR (op IN ('create_group', 'adopt_group') AND NOT EXISTS (SELECT 1 FROM groups g WHERE g.key = o.subject)))",
    ),
    (
        "a generation counter",
        "SELECT 'meta.generation is ' || coalesce((SELECT quote(value) FROM meta WHERE name = 'generation'), 'missing')
         WHERE NOT EXISTS (SELECT 1 FROM meta WHERE name = 'generation' AND value GLOB '[0-9]*' AND value NOT GLOB '*[^0-9]*')",
    ),
];

/// The rows of `sql` (one text column), at most [`LISTED`] and a count of
/// the rest.
fn listed(conn: &Connection, sql: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(sql)?;
    let mut rows = stmt.query([])?;
    let (mut lines, mut more) = (Vec::new(), 0usize);
    while let Some(row) = rows.next()? {
        if lines.len() < LISTED {
            lines.push(row.get::<_, String>(0)?);
        } else {
            more += 1;
        }
    }
    if more > 0 {
        lines.push(format!("… and {more} more"));
    }
    Ok(lines)
}

impl StateDb {
    /// `idsync state check` of the DB at `path` (which must exist): opened
    /// read only, nothing written. Problems are returned in the report; an
    /// error only when the file cannot be looked at at all.
    pub fn check(path: &Path) -> Result<CheckReport, StateError> {
        let mut report = CheckReport {
            path: path.to_path_buf(),
            ..CheckReport::default()
        };
        // A missing log is told before SQLite opens the file (and would reset
        // the index that shows it).
        if let Err(e @ StateError::WalMissing { .. }) = files::check_wal(path) {
            report.problems.push(e.to_string());
            return Ok(report);
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sqlite(path, e))?;
        if let Err(e) = check_open(&conn, path, &mut report) {
            match sqlite(path, e) {
                e @ StateError::Damaged { .. } => report.problems.push(e.to_string()),
                e => return Err(e),
            }
        }
        Ok(report)
    }
}

/// The checks on an open DB, into `report`.
fn check_open(conn: &Connection, path: &Path, report: &mut CheckReport) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
        [],
        |r| r.get(0),
    )?;
    if version > schema::SCHEMA_VERSION {
        report.problems.push(
            StateError::TooNew {
                path: path.to_path_buf(),
                found: version,
                supported: schema::SCHEMA_VERSION,
            }
            .to_string(),
        );
        return Ok(());
    }
    let integrity = sqlite_check(conn, "integrity_check", LISTED)?;
    report.problems.extend(
        integrity
            .iter()
            .map(|line| format!("SQLite integrity_check: {line}")),
    );
    let foreign = listed(
        conn,
        "SELECT 'row ' || coalesce(rowid, '?') || ' of ' || \"table\" || ' names a missing row of ' || parent FROM pragma_foreign_key_check",
    )?;
    report.problems.extend(
        foreign
            .iter()
            .map(|line| format!("SQLite foreign_key_check: {line}")),
    );
    if version == 0 && tables == 0 {
        report
            .facts
            .push("empty: no schema yet (a first sync creates it)".into());
        return Ok(());
    }
    if version < schema::OLDEST_READABLE {
        report.problems.push(format!(
            "schema version {version}, but the file holds {tables} table(s): it is not a state DB idsync wrote"
        ));
        return Ok(());
    }
    for (name, sql) in INVARIANTS {
        for breach in listed(conn, sql)? {
            report.problems.push(format!("{name}: {breach}"));
        }
    }
    for breach in mirror::unreadable_rows(conn, version, LISTED)? {
        report
            .problems
            .push(format!("mirror rows that read as written: {breach}"));
    }
    facts(
        conn,
        version,
        integrity.is_empty() && foreign.is_empty(),
        report,
    )
}

/// The short report: SQLite's checks, the schema, what the DB holds, the
/// runs it keeps.
fn facts(
    conn: &Connection,
    version: i64,
    sqlite_ok: bool,
    report: &mut CheckReport,
) -> rusqlite::Result<()> {
    let count = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0));
    if sqlite_ok {
        report
            .facts
            .push("SQLite integrity_check: ok; foreign_key_check: ok".into());
    }
    let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    report.facts.push(if version < schema::SCHEMA_VERSION {
        format!(
            "schema version {version} (journal_mode {mode}): the next sync migrates it to {} after copying the file beside it",
            schema::SCHEMA_VERSION
        )
    } else {
        format!("schema version {version} (journal_mode {mode})")
    });
    report.facts.push(format!(
        "users: {} ({} live); groups: {} ({} live); memberships: {}",
        count("SELECT count(*) FROM users")?,
        count("SELECT count(*) FROM users WHERE status != 'removed'")?,
        count("SELECT count(*) FROM groups")?,
        count("SELECT count(*) FROM groups WHERE status != 'removed'")?,
        count("SELECT count(*) FROM memberships")?,
    ));
    let runs = count("SELECT count(*) FROM runs")?;
    let unfinished = listed(
        conn,
        "SELECT '#' || r.id || ' (' || count(j.seq) || ' planned, '
             || sum(j.state = 'started') || ' started and unfinished)'
         FROM runs r JOIN journal j ON j.run_id = r.id WHERE r.ended_at IS NULL GROUP BY r.id",
    )?;
    report.facts.push(if unfinished.is_empty() {
        format!("history: {runs} run(s); no run unfinished")
    } else {
        format!(
            "history: {runs} run(s); unfinished (in progress, or interrupted and resumed by the next sync): {}",
            unfinished.join(", ")
        )
    });
    Ok(())
}
