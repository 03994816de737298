//! What the target keeps, one user at a time: a value the target dropped or
//! stored otherwise than sent, in its answer to a write, is a note on that
//! user and attribute. A later answer that keeps the attribute for that user
//! clears it. Notes never stop updates (the planner does not read them): they
//! say where the target holds something else than idsync sent, for `status`,
//! `check`, `explain` and the plan's warnings; `sync --full` re-checks them.

use rusqlite::params;

use super::{StateDb, StateError, sqlite};
use crate::model::{AttrNote, NoteSummary, SourceKey, UserAttr};

/// The schema version that keeps notes per user; older files hold none that
/// idsync still acts on.
const PER_USER_NOTES: i64 = 7;

impl StateDb {
    /// Records what one answer showed for user `key`: `noted` values not kept
    /// as sent (each replaces the user's earlier note on that attribute), and
    /// `kept` attributes held as sent (their notes, if any, are cleared).
    /// Returns the attributes noted for this user for the first time.
    pub fn record_answer(
        &self,
        key: &SourceKey,
        noted: &[AttrNote],
        kept: &[UserAttr],
    ) -> Result<Vec<UserAttr>, StateError> {
        let err = |e| sqlite(&self.path, e);
        if noted.is_empty() {
            // The common answer keeps everything: a read, not a write, when
            // this user has no note to clear.
            let any = self
                .conn
                .prepare_cached("SELECT 1 FROM target_notes WHERE user_key = ?1")
                .and_then(|mut s| s.exists([key.as_str()]))
                .map_err(err)?;
            if !any {
                return Ok(Vec::new());
            }
        }
        let now = chrono::Utc::now().to_rfc3339();
        let mut new = Vec::new();
        for note in noted {
            let existed = self
                .conn
                .prepare_cached("SELECT 1 FROM target_notes WHERE user_key = ?1 AND attr = ?2")
                .and_then(|mut s| s.exists(params![key.as_str(), note.attr.name()]))
                .map_err(err)?;
            self.conn
                .prepare_cached(
                    "INSERT INTO target_notes (user_key, attr, sent, stored, noted_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (user_key, attr) DO UPDATE
                     SET sent = excluded.sent, stored = excluded.stored, noted_at = excluded.noted_at",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        key.as_str(),
                        note.attr.name(),
                        note.sent,
                        note.stored,
                        now
                    ])
                })
                .map_err(err)?;
            if !existed {
                new.push(note.attr);
            }
        }
        for attr in kept {
            self.conn
                .prepare_cached("DELETE FROM target_notes WHERE user_key = ?1 AND attr = ?2")
                .and_then(|mut s| s.execute(params![key.as_str(), attr.name()]))
                .map_err(err)?;
        }
        Ok(new)
    }

    /// The notes per attribute, over users idsync still manages (a removed
    /// user's notes say nothing any more), with how many users each rests on.
    pub fn note_summaries(&self) -> Result<Vec<NoteSummary>, StateError> {
        if self.user_version()? < PER_USER_NOTES {
            return Ok(Vec::new());
        }
        let err = |e| sqlite(&self.path, e);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT n.attr, count(*), max(n.noted_at) FROM target_notes n
                 JOIN users u ON u.key = n.user_key AND u.status != 'removed'
                 GROUP BY n.attr ORDER BY n.attr",
            )
            .map_err(err)?;
        let counts: Vec<(String, i64)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(err)?
            .collect::<Result<_, _>>()
            .map_err(err)?;
        let mut summaries = Vec::with_capacity(counts.len());
        for (name, users) in counts {
            // An attribute this idsync no longer knows: nothing to say.
            let Some(attr) = UserAttr::parse(&name) else {
                continue;
            };
            let (sent, stored) = self
                .conn
                .query_row(
                    "SELECT n.sent, n.stored FROM target_notes n
                     JOIN users u ON u.key = n.user_key AND u.status != 'removed'
                     WHERE n.attr = ?1 ORDER BY n.noted_at DESC, n.user_key LIMIT 1",
                    [&name],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(err)?;
            summaries.push(NoteSummary {
                attr,
                users: users as u64,
                example: AttrNote { attr, sent, stored },
            });
        }
        Ok(summaries)
    }

    /// The notes on one user, by attribute.
    pub fn notes_of(&self, key: &SourceKey) -> Result<Vec<AttrNote>, StateError> {
        if self.user_version()? < PER_USER_NOTES {
            return Ok(Vec::new());
        }
        let err = |e| sqlite(&self.path, e);
        let mut stmt = self
            .conn
            .prepare(
                "SELECT attr, sent, stored FROM target_notes WHERE user_key = ?1 ORDER BY attr",
            )
            .map_err(err)?;
        let rows: Vec<(String, String, Option<String>)> = stmt
            .query_map([key.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(err)?
            .collect::<Result<_, _>>()
            .map_err(err)?;
        Ok(rows
            .into_iter()
            .filter_map(|(name, sent, stored)| {
                UserAttr::parse(&name).map(|attr| AttrNote { attr, sent, stored })
            })
            .collect())
    }

    /// Forgets the notes (on `attr` only, when given); how many.
    pub fn forget_notes(&self, attr: Option<UserAttr>) -> Result<usize, StateError> {
        let err = |e| sqlite(&self.path, e);
        match attr {
            Some(attr) => self
                .conn
                .execute("DELETE FROM target_notes WHERE attr = ?1", [attr.name()]),
            None => self.conn.execute("DELETE FROM target_notes", []),
        }
        .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Ownership, ScimId, StateChange, StateUser, Status, UserAttrs, UserName};

    fn note(attr: UserAttr, sent: &str, stored: Option<&str>) -> AttrNote {
        AttrNote {
            attr,
            sent: sent.into(),
            stored: stored.map(str::to_owned),
        }
    }

    fn key(k: &str) -> SourceKey {
        SourceKey::new(k)
    }

    /// A managed user `k`, so its notes count.
    fn manage(db: &mut StateDb, k: &str, status: Status) {
        let name = format!("{k}@example.com");
        let attrs: UserAttrs = [(UserAttr::UserName, name.clone())].into_iter().collect();
        let user = StateUser::pushed(
            ScimId::new(format!("id-{k}")),
            UserName::new(name.as_str()),
            attrs,
            status,
            Ownership::Created,
            &Default::default(),
        );
        db.commit_changes(&[StateChange::PutUser { key: key(k), user }])
            .expect("user");
    }

    #[test]
    fn notes_are_per_user_counted_over_managed_users_and_cleared_by_a_kept_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idsync.db");
        let mut db = StateDb::open(&path).expect("open");
        for k in ["a", "b", "c"] {
            manage(&mut db, k, Status::Active);
        }
        manage(&mut db, "gone", Status::Removed);
        assert!(db.note_summaries().expect("load").is_empty());

        let new = db
            .record_answer(&key("a"), &[note(UserAttr::Title, "Lead", None)], &[])
            .expect("note");
        assert_eq!(new, [UserAttr::Title]);
        // The same attribute again for `a`: refreshed, not new.
        let new = db
            .record_answer(&key("a"), &[note(UserAttr::Title, "Boss", Some("B"))], &[])
            .expect("note");
        assert!(new.is_empty());
        db.record_answer(&key("b"), &[note(UserAttr::Title, "Dev", None)], &[])
            .expect("note");
        db.record_answer(&key("gone"), &[note(UserAttr::Title, "X", None)], &[])
            .expect("note");
        db.record_answer(
            &key("c"),
            &[note(UserAttr::ExternalId, "c", None)],
            &[UserAttr::Title],
        )
        .expect("note");
        drop(db);

        let db = StateDb::open_read_only(&path)
            .expect("open")
            .expect("exists");
        let summaries = db.note_summaries().expect("load");
        let counts: Vec<_> = summaries.iter().map(|s| (s.attr, s.users)).collect();
        // The removed user's note does not count.
        assert_eq!(counts, [(UserAttr::ExternalId, 1), (UserAttr::Title, 2)]);
        assert_eq!(
            db.notes_of(&key("a")).expect("notes"),
            [note(UserAttr::Title, "Boss", Some("B"))]
        );
        drop(db);

        // A later answer that keeps `title` for `a` clears a's note only.
        let db = StateDb::open(&path).expect("open");
        db.record_answer(&key("a"), &[], &[UserAttr::Title])
            .expect("kept");
        let counts: Vec<_> = db
            .note_summaries()
            .expect("load")
            .iter()
            .map(|s| (s.attr, s.users))
            .collect();
        assert_eq!(counts, [(UserAttr::ExternalId, 1), (UserAttr::Title, 1)]);
        assert_eq!(db.forget_notes(Some(UserAttr::Title)).expect("forget"), 2);
        assert_eq!(db.forget_notes(None).expect("forget"), 1);
        assert!(db.note_summaries().expect("load").is_empty());
    }
}
