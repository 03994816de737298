//! What the target keeps: user attributes it dropped or stored otherwise than
//! sent, one note per attribute. A note is written once (the first time) and
//! read by every later cycle, which then no longer compares that attribute.

use rusqlite::{OptionalExtension, params};

use super::{StateDb, StateError, sqlite};
use crate::model::{AttrNote, UserAttr};

impl StateDb {
    /// The notes recorded, by attribute; none when the DB predates them (and
    /// is opened read-only).
    pub fn load_notes(&self) -> Result<Vec<AttrNote>, StateError> {
        let err = |e| sqlite(&self.path, e);
        let exists: Option<i64> = self
            .conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'target_notes'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)?;
        if exists.is_none() {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare("SELECT attr, sent, stored FROM target_notes ORDER BY attr")
            .map_err(err)?;
        let mut rows = stmt.query([]).map_err(err)?;
        let mut notes = Vec::new();
        while let Some(row) = rows.next().map_err(err)? {
            let name: String = row.get(0).map_err(err)?;
            let Some(attr) = UserAttr::parse(&name) else {
                // An attribute this idsync no longer knows: nothing to skip.
                continue;
            };
            notes.push(AttrNote {
                attr,
                sent: row.get(1).map_err(err)?,
                stored: row.get(2).map_err(err)?,
            });
        }
        Ok(notes)
    }

    /// Records `note` unless its attribute has one already; `true` when it is new.
    pub fn record_note(&self, note: &AttrNote) -> Result<bool, StateError> {
        let inserted = self
            .conn
            .execute(
                "INSERT INTO target_notes (attr, sent, stored, noted_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (attr) DO NOTHING",
                params![
                    note.attr.name(),
                    note.sent,
                    note.stored,
                    chrono::Utc::now().to_rfc3339()
                ],
            )
            .map_err(|e| sqlite(&self.path, e))?;
        Ok(inserted > 0)
    }

    /// Forgets every note: the next cycles compare those attributes again.
    pub fn clear_notes(&self) -> Result<usize, StateError> {
        self.conn
            .execute("DELETE FROM target_notes", [])
            .map_err(|e| sqlite(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(attr: UserAttr, sent: &str, stored: Option<&str>) -> AttrNote {
        AttrNote {
            attr,
            sent: sent.into(),
            stored: stored.map(str::to_owned),
        }
    }

    #[test]
    fn a_note_is_recorded_once_per_attribute_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idsync.db");
        let db = StateDb::open(&path).expect("open");
        assert!(db.load_notes().expect("load").is_empty());
        assert!(
            db.record_note(&note(UserAttr::Title, "Lead", None))
                .expect("note")
        );
        // The first value stays: said once, not rewritten every cycle.
        assert!(
            !db.record_note(&note(UserAttr::Title, "Other", Some("x")))
                .expect("note")
        );
        assert!(
            db.record_note(&note(UserAttr::ExternalId, "k1", None))
                .expect("note")
        );
        drop(db);
        let db = StateDb::open_read_only(&path)
            .expect("open")
            .expect("exists");
        assert_eq!(
            db.load_notes().expect("load"),
            vec![
                note(UserAttr::ExternalId, "k1", None),
                note(UserAttr::Title, "Lead", None),
            ]
        );
        drop(db);
        let db = StateDb::open(&path).expect("open");
        assert_eq!(db.clear_notes().expect("clear"), 2);
        assert!(db.load_notes().expect("load").is_empty());
    }
}
