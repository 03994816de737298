//! The mirror of an incremental source (see [`Mirror`]): loaded before a cycle
//! reads the source, and saved — objects and cursors in one transaction — only
//! after the cycle applied its plan. Saving writes the difference from the
//! mirror that was loaded, so an incremental cycle writes a handful of rows.

use rusqlite::{Connection, OptionalExtension, params};

use super::{StateDb, StateError, schema, sqlite};
use crate::model::{MemberIds, Mirror, MirrorDigest, MirrorGroup, MirrorProps};

const USERS_LINK: &str = "users_link";
const GROUPS_LINK: &str = "groups_link";
const SELECT_HASH: &str = "select_hash";
const FULL_AT: &str = "full_at";

/// A mirrored user's row: framed text from schema version 9 on, JSON before.
fn user_row(text: &str, framed: bool) -> Result<MirrorProps, String> {
    if framed {
        MirrorProps::from_framed(text)
    } else {
        MirrorProps::from_json(text).map_err(|e| e.to_string())
    }
}

/// A mirrored group's members: framed text from schema version 10 on, a JSON
/// list before.
fn members_row(text: &str, framed: bool) -> Result<MemberIds, String> {
    if framed {
        MirrorGroup::members_from_framed(text)
    } else {
        // Written in order: collected as a list, the set is built without a
        // search per member.
        serde_json::from_str::<Vec<String>>(text)
            .map(|members| MemberIds::Set(members.into_iter().collect()))
            .map_err(|e| e.to_string())
    }
}

/// Reads one row's text (framed or not) for its errors only.
type ReadRow = fn(&str, bool) -> Result<(), String>;

/// For `state check`: each mirror row (of a DB at schema `version`) that
/// does not read as a writing run reads it, one line naming the user or
/// group, at most `listed` and a count of the rest. Nothing when the DB has
/// no mirror.
pub(super) fn unreadable_rows(
    conn: &Connection,
    version: i64,
    listed: usize,
) -> rusqlite::Result<Vec<String>> {
    let mirrored: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('mirror_users', 'mirror_groups')",
        [],
        |r| r.get(0),
    )?;
    let mut lines = Vec::new();
    let mut more = 0usize;
    if mirrored < 2 {
        return Ok(lines);
    }
    let mut note = |line: String| {
        if lines.len() < listed {
            lines.push(line);
        } else {
            more += 1;
        }
    };
    let tables: [(&str, &str, ReadRow, bool); 2] = [
        (
            "user",
            "SELECT id, props FROM mirror_users",
            |text, framed| user_row(text, framed).map(drop),
            version >= schema::FRAMED_MIRROR,
        ),
        (
            "group",
            "SELECT id, members FROM mirror_groups",
            |text, framed| members_row(text, framed).map(drop),
            version >= schema::FRAMED_MEMBERS,
        ),
    ];
    for (what, sql, read, framed) in tables {
        let mut stmt = conn.prepare(sql)?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            let found = match row.get_ref(1)?.as_str() {
                Ok(text) => read(text, framed),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = found {
                note(format!("mirror {what} {id:?}: {e}"));
            }
        }
    }
    if more > 0 {
        lines.push(format!("… and {more} more"));
    }
    Ok(lines)
}

impl StateDb {
    /// The mirror as last committed; empty when none was (or the DB predates
    /// mirrors and is opened read-only).
    pub fn load_mirror(&mut self) -> Result<Mirror, StateError> {
        let path = self.path.clone();
        let err = |e| sqlite(&path, e);
        let tx = self.conn.transaction().map_err(err)?;
        let exists: Option<i64> = tx
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mirror_meta'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)?;
        let mut mirror = Mirror::default();
        if exists.is_none() {
            return Ok(mirror);
        }
        // A read-only command reads an older file as it is: JSON rows.
        let version = tx
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .map_err(err)?;
        let framed = version >= schema::FRAMED_MIRROR;
        let framed_members = version >= schema::FRAMED_MEMBERS;
        let corrupt = |what: String| StateError::Corrupt {
            path: path.clone(),
            message: what,
        };
        {
            let mut stmt = tx
                .prepare("SELECT name, value FROM mirror_meta")
                .map_err(err)?;
            let mut rows = stmt.query([]).map_err(err)?;
            while let Some(row) = rows.next().map_err(err)? {
                let name: String = row.get(0).map_err(err)?;
                let value: String = row.get(1).map_err(err)?;
                match name.as_str() {
                    USERS_LINK => mirror.users_link = Some(value),
                    GROUPS_LINK => mirror.groups_link = Some(value),
                    SELECT_HASH => mirror.select_hash = value,
                    FULL_AT => {
                        mirror.full_at = Some(value.parse().map_err(|_| {
                            corrupt(format!("mirror_meta.full_at {value:?} is not a number"))
                        })?);
                    }
                    _ => {}
                }
            }
        }
        {
            let count: i64 = tx
                .query_row("SELECT count(*) FROM mirror_users", [], |r| r.get(0))
                .map_err(err)?;
            let mut users = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
            let mut stmt = tx
                .prepare("SELECT id, props FROM mirror_users")
                .map_err(err)?;
            let mut rows = stmt.query([]).map_err(err)?;
            while let Some(row) = rows.next().map_err(err)? {
                let id: String = row.get(0).map_err(err)?;
                // Read where SQLite holds it: the text is checked and copied
                // once, into the user's one framed string.
                let text = row.get_ref(1).map_err(err)?;
                let text = text
                    .as_str()
                    .map_err(|e| corrupt(format!("mirror user {id:?}: {e}")))?;
                let props = user_row(text, framed)
                    .map_err(|e| corrupt(format!("mirror user {id:?}: {e}")))?;
                users.push((id, props));
            }
            // Built in one go from the rows, which come in the order written
            // (id order): the map sorts them (a check, when sorted) and
            // fills its nodes without a search per user.
            mirror.users = users.into_iter().collect();
        }
        {
            let mut stmt = tx
                .prepare("SELECT id, display_name, members FROM mirror_groups")
                .map_err(err)?;
            let mut rows = stmt.query([]).map_err(err)?;
            while let Some(row) = rows.next().map_err(err)? {
                let id: String = row.get(0).map_err(err)?;
                let display_name: Option<String> = row.get(1).map_err(err)?;
                let text = row.get_ref(2).map_err(err)?;
                let text = text
                    .as_str()
                    .map_err(|e| corrupt(format!("mirror group {id:?}: {e}")))?;
                let members = members_row(text, framed_members)
                    .map_err(|e| corrupt(format!("mirror group {id:?}: {e}")))?;
                mirror.groups.insert(
                    id,
                    MirrorGroup {
                        display_name,
                        members,
                    },
                );
            }
        }
        tx.finish().map_err(err)?;
        Ok(mirror)
    }

    /// Commits `new` (objects and cursors together, in one transaction),
    /// writing only what differs from `old`, the mirror loaded at the start
    /// of the cycle.
    pub fn save_mirror(&mut self, old: &MirrorDigest, new: &Mirror) -> Result<(), StateError> {
        let path = self.path.clone();
        let err = |e| sqlite(&path, e);
        let tx = self.conn.transaction().map_err(err)?;
        {
            let users = old.users(new);
            let mut delete = tx
                .prepare_cached("DELETE FROM mirror_users WHERE id = ?1")
                .map_err(err)?;
            for id in users.removed {
                delete.execute([id]).map_err(err)?;
            }
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO mirror_users (id, props) VALUES (?1, ?2) \
                     ON CONFLICT (id) DO UPDATE SET props = excluded.props",
                )
                .map_err(err)?;
            for (id, props) in users.changed {
                upsert
                    .execute(params![id, props.as_framed()])
                    .map_err(err)?;
            }
            let groups = old.groups(new);
            let mut delete = tx
                .prepare_cached("DELETE FROM mirror_groups WHERE id = ?1")
                .map_err(err)?;
            for id in groups.removed {
                delete.execute([id]).map_err(err)?;
            }
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO mirror_groups (id, display_name, members) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name, \
                     members = excluded.members",
                )
                .map_err(err)?;
            for (id, group) in groups.changed {
                upsert
                    .execute(params![id, group.display_name, group.framed_members()])
                    .map_err(err)?;
            }
            tx.execute("DELETE FROM mirror_meta", []).map_err(err)?;
            let mut meta = tx
                .prepare_cached("INSERT INTO mirror_meta (name, value) VALUES (?1, ?2)")
                .map_err(err)?;
            let full_at = new.full_at.map(|t| t.to_string());
            for (name, value) in [
                (USERS_LINK, new.users_link.as_deref()),
                (GROUPS_LINK, new.groups_link.as_deref()),
                (SELECT_HASH, Some(new.select_hash.as_str())),
                (FULL_AT, full_at.as_deref()),
            ] {
                if let Some(value) = value {
                    meta.execute(params![name, value]).map_err(err)?;
                }
            }
        }
        tx.commit().map_err(err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_round_trips_and_saves_only_differences() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = StateDb::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(db.load_mirror().unwrap(), Mirror::default());
        let mut m = Mirror::default();
        m.users.insert("u1".into(), [("mail", vec!["a@x"])].into());
        m.users.insert("u2".into(), MirrorProps::new());
        m.groups.insert(
            "g1".into(),
            MirrorGroup {
                display_name: Some("Eng".into()),
                members: ["u1".to_string(), "u2".to_string()].into(),
            },
        );
        m.users_link = Some("https://g/v1.0/users/delta?$deltatoken=a".into());
        m.groups_link = Some("https://g/v1.0/groups/delta?$deltatoken=b".into());
        m.select_hash = "h".into();
        m.full_at = Some(1_700_000_000);
        db.save_mirror(&MirrorDigest::default(), &m).unwrap();
        assert_eq!(db.load_mirror().unwrap(), m);

        let mut next = m.clone();
        next.users.remove("u2");
        next.groups.get_mut("g1").unwrap().members.remove("u2");
        next.users_link = Some("https://g/v1.0/users/delta?$deltatoken=c".into());
        db.save_mirror(&MirrorDigest::of(&m), &next).unwrap();
        assert_eq!(db.load_mirror().unwrap(), next);
    }

    fn sample() -> Mirror {
        let mut m = Mirror::default();
        m.users.insert(
            "u1".into(),
            [("mail", vec!["a@x"]), ("displayName", vec!["Zoë \"Z\""])].into(),
        );
        m.users.insert("u2".into(), MirrorProps::new());
        m.groups.insert(
            "g1".into(),
            MirrorGroup {
                display_name: Some("Eng".into()),
                members: ["u1".to_string(), "u2".to_string(), "Zoë".to_string()].into(),
            },
        );
        m.groups.insert("g2".into(), MirrorGroup::default());
        m.users_link = Some("https://g/v1.0/users/delta?$deltatoken=a".into());
        m
    }

    /// A DB at `dir/name` holding the [`sample`] mirror.
    fn saved_sample(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, Mirror) {
        let path = dir.join(name);
        let m = sample();
        StateDb::open(&path)
            .unwrap()
            .save_mirror(&MirrorDigest::default(), &m)
            .unwrap();
        (path, m)
    }

    /// The DB at `path` as idsync 9 left it: the mirror's group members in
    /// JSON lists.
    fn back_to_version_9(path: &std::path::Path) {
        let conn = rusqlite::Connection::open(path).unwrap();
        let rows: Vec<(String, String)> = conn
            .prepare("SELECT id, members FROM mirror_groups")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (id, framed) in rows {
            let members = MirrorGroup::members_from_framed(&framed).unwrap();
            let members: Vec<&str> = members.iter().collect();
            conn.execute(
                "UPDATE mirror_groups SET members = ?2 WHERE id = ?1",
                params![id, serde_json::to_string(&members).unwrap()],
            )
            .unwrap();
        }
        conn.pragma_update(None, "user_version", 9).unwrap();
    }

    /// The DB at `path` as idsync 8 left it: the mirror's user rows (and
    /// group members) in JSON.
    fn back_to_version_8(path: &std::path::Path) {
        back_to_version_9(path);
        let conn = rusqlite::Connection::open(path).unwrap();
        let rows: Vec<(String, String)> = conn
            .prepare("SELECT id, props FROM mirror_users")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (id, framed) in rows {
            let json = serde_json::to_string(&MirrorProps::from_framed(&framed).unwrap()).unwrap();
            conn.execute(
                "UPDATE mirror_users SET props = ?2 WHERE id = ?1",
                params![id, json],
            )
            .unwrap();
        }
        conn.pragma_update(None, "user_version", 8).unwrap();
    }

    fn raw_props(path: &std::path::Path, id: &str) -> String {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.query_row("SELECT props FROM mirror_users WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .unwrap()
    }

    #[test]
    fn a_version_8_mirror_is_read_as_it_is_and_migrated_to_framed_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (path, m) = saved_sample(dir.path(), "s.db");
        back_to_version_8(&path);
        assert!(raw_props(&path, "u1").starts_with('{'), "JSON again");
        // `plan` reads the older file as it is.
        let mut read_only = StateDb::open_read_only(&path).unwrap().unwrap();
        assert_eq!(read_only.load_mirror().unwrap(), m);
        drop(read_only);
        // A sync migrates it: every row framed, the mirror the same.
        let mut db = StateDb::open(&path).unwrap();
        assert_eq!(db.user_version().unwrap(), schema::SCHEMA_VERSION);
        assert_eq!(db.load_mirror().unwrap(), m);
        drop(db);
        assert_eq!(raw_props(&path, "u1"), m.users["u1"].as_framed());
        assert_eq!(raw_props(&path, "u2"), "");
        assert_eq!(raw_members(&path, "g1"), m.groups["g1"].framed_members());
    }

    fn raw_members(path: &std::path::Path, id: &str) -> String {
        let conn = rusqlite::Connection::open(path).unwrap();
        conn.query_row(
            "SELECT members FROM mirror_groups WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap()
    }

    #[test]
    fn a_version_9_mirror_is_read_as_it_is_and_migrated_to_framed_members() {
        let dir = tempfile::tempdir().unwrap();
        let (path, m) = saved_sample(dir.path(), "s.db");
        assert_eq!(raw_members(&path, "g1"), "\u{4}Zoë\u{2}u1\u{2}u2");
        assert_eq!(raw_members(&path, "g2"), "");
        back_to_version_9(&path);
        assert_eq!(raw_members(&path, "g1"), r#"["Zoë","u1","u2"]"#);
        // `plan` reads the older file as it is.
        let mut read_only = StateDb::open_read_only(&path).unwrap().unwrap();
        assert_eq!(read_only.load_mirror().unwrap(), m);
        drop(read_only);
        // A sync migrates it: every group's members framed, the mirror the same.
        let mut db = StateDb::open(&path).unwrap();
        assert_eq!(db.user_version().unwrap(), schema::FRAMED_MEMBERS);
        assert_eq!(db.load_mirror().unwrap(), m);
        drop(db);
        assert_eq!(raw_members(&path, "g1"), m.groups["g1"].framed_members());
        assert_eq!(raw_members(&path, "g2"), "");
    }

    #[test]
    fn state_check_names_each_mirror_row_that_does_not_read_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let (path, m) = saved_sample(dir.path(), "s.db");
        assert!(StateDb::check(&path).unwrap().is_sound());
        // An older file's JSON rows are read as that version wrote them.
        back_to_version_8(&path);
        let report = StateDb::check(&path).unwrap();
        assert!(report.is_sound(), "{report:?}");
        let (path, _) = saved_sample(dir.path(), "damaged.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        let framed = m.users["u1"].as_framed();
        conn.execute(
            "UPDATE mirror_users SET props = ?1 WHERE id = 'u1'",
            [&framed[..framed.len() - 1]],
        )
        .unwrap();
        conn.execute(
            "UPDATE mirror_groups SET members = ?1 WHERE id = 'g2'",
            ["\u{2}u2\u{2}u1"],
        )
        .unwrap();
        drop(conn);
        let report = StateDb::check(&path).unwrap();
        let problems = report.problems.join("\n");
        assert!(
            problems.contains("mirror rows that read as written: mirror user \"u1\": the length at byte")
                && problems.contains(
                    "mirror rows that read as written: mirror group \"g2\": member \"u1\" comes after \"u2\""
                )
                && report.problems.len() == 2,
            "{problems}"
        );
    }

    #[test]
    fn a_damaged_members_row_is_a_clear_error_naming_the_group_and_stops_a_migration() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = saved_sample(dir.path(), "s.db");
        for (row, says) in [
            ("\u{2}u1\u{5}u2", "runs past the end of the row"),
            ("\u{2}u2\u{2}u1", "member \"u1\" comes after \"u2\""),
            ("\u{2}u1\u{2}u1", "out of order or repeated"),
        ] {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute(
                "UPDATE mirror_groups SET members = ?1 WHERE id = 'g1'",
                [row],
            )
            .unwrap();
            drop(conn);
            let err = StateDb::open(&path).unwrap().load_mirror().unwrap_err();
            let text = err.to_string();
            assert!(
                matches!(err, StateError::Corrupt { .. })
                    && text.contains("mirror group \"g1\": ")
                    && text.contains(says),
                "{text}"
            );
            assert!(err.hint().unwrap().contains("restore a backup"));
        }

        // A version 9 row that is not a JSON list: the migration stops,
        // nothing changed.
        let old = assert_migration_stops(
            dir.path(),
            (back_to_version_9, 9),
            "UPDATE mirror_groups SET members = '[\"u1\",' WHERE id = 'g1'",
            "mirror group \"g1\" (while migrating to schema version 10)",
        );
        assert_eq!(raw_members(&old, "g2"), "[]", "no row rewritten");
    }

    /// A sample DB set back to `version` by `back`, then changed by `sql`:
    /// the migration stops with an error that `says` so, and the file keeps
    /// its version. Its path, to look at its rows.
    fn assert_migration_stops(
        dir: &std::path::Path,
        (back, version): (fn(&std::path::Path), i64),
        sql: &str,
        says: &str,
    ) -> std::path::PathBuf {
        let (old, _) = saved_sample(dir, "old.db");
        back(&old);
        let conn = rusqlite::Connection::open(&old).unwrap();
        conn.execute(sql, []).unwrap();
        drop(conn);
        let err = StateDb::open(&old).err().expect("the migration stops");
        let text = err.to_string();
        assert!(
            matches!(err, StateError::Corrupt { .. }) && text.contains(says),
            "{text}"
        );
        let conn = rusqlite::Connection::open(&old).unwrap();
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(found, version);
        old
    }

    #[test]
    fn a_damaged_mirror_row_is_a_clear_error_at_load_and_stops_a_migration() {
        let dir = tempfile::tempdir().unwrap();
        let (path, m) = saved_sample(dir.path(), "s.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        let framed = m.users["u1"].as_framed();
        conn.execute(
            "UPDATE mirror_users SET props = ?1 WHERE id = 'u1'",
            [&framed[..framed.len() - 1]],
        )
        .unwrap();
        drop(conn);
        let err = StateDb::open(&path).unwrap().load_mirror().unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("mirror user \"u1\": the length at byte")
                && text.contains("runs past the end of the row"),
            "{text}"
        );
        assert!(err.hint().unwrap().contains("restore a backup"));

        // A version 8 row that is not JSON: the migration stops, nothing changed.
        let old = assert_migration_stops(
            dir.path(),
            (back_to_version_8, 8),
            "UPDATE mirror_users SET props = '{\"mail\":' WHERE id = 'u1'",
            "mirror user \"u1\" (while migrating to schema version 9)",
        );
        assert_eq!(raw_props(&old, "u2"), "{}", "no row rewritten");
    }
}
