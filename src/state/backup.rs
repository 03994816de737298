//! Copies of the state DB, made with SQLite's online backup API: the copy is
//! taken in one read transaction, so it is consistent even while a run
//! writes (WAL readers do not block the writer, nor it them). It is written
//! under a temporary name beside its final one, checked, synced and renamed,
//! so a copy that exists under its name is whole. It stands alone (rollback
//! journal mode: no `-wal` to carry along) and gets the DB's file mode, never
//! wider than owner-only.
//!
//! `idsync state backup FILE` makes one on demand; every schema migration
//! makes one first, beside the DB, named after the DB, the version it had
//! and the time (`idsync.db.v6-20250301T120000Z.bak`), keeping the newest
//! [`MIGRATION_BACKUPS_KEPT`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::{StateDb, StateError, create_private, files, io, sqlite, sqlite_check};

/// Copies made before migrations that are kept beside the DB (the newest).
pub const MIGRATION_BACKUPS_KEPT: usize = 3;

/// How often a backup step that met a lock is tried again, and how long apart.
const BUSY_TRIES: u32 = 100;
const BUSY_PAUSE: Duration = Duration::from_millis(100);

impl StateDb {
    /// `idsync state backup`: copies the DB at `path` to `dest` (refused when
    /// `dest` exists, unless `force`). Takes no lock: a run may go on. The
    /// size of the copy in bytes.
    pub fn backup(path: &Path, dest: &Path, force: bool) -> Result<u64, StateError> {
        if !path.exists() {
            return Err(StateError::Io {
                path: path.to_path_buf(),
                message: "no state DB at this path".into(),
            });
        }
        refuse_own_files(path, dest)?;
        if !force && std::fs::symlink_metadata(dest).is_ok() {
            return Err(StateError::Exists {
                path: dest.to_path_buf(),
            });
        }
        files::check_wal(path)?;
        let source = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sqlite(path, e))?;
        source
            .busy_timeout(Duration::from_secs(10))
            .map_err(|e| sqlite(path, e))?;
        copy(&source, path, dest)
    }
}

/// A backup written over the DB or its side files would destroy what it
/// copies.
fn refuse_own_files(path: &Path, dest: &Path) -> Result<(), StateError> {
    let resolve = |p: &Path| {
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::canonicalize(dir)
            .ok()
            .zip(p.file_name())
            .map(|(d, n)| d.join(n))
    };
    let (Some(db), Some(dest_resolved)) = (resolve(path), resolve(dest)) else {
        return Ok(());
    };
    let own = ["", "-wal", "-shm", "-journal", ".lock", ".sealed"]
        .iter()
        .any(|suffix| files::beside(&db, suffix) == dest_resolved);
    if own || std::fs::canonicalize(dest).is_ok_and(|d| Some(d) == std::fs::canonicalize(path).ok())
    {
        return Err(StateError::Io {
            path: dest.to_path_buf(),
            message: "this is the state DB or one of its files; write the backup elsewhere".into(),
        });
    }
    Ok(())
}

/// Copies what `source` (the DB at `db`) holds to `dest`: one read
/// transaction, written beside `dest`, checked, synced, then renamed over it.
pub(super) fn copy(source: &Connection, db: &Path, dest: &Path) -> Result<u64, StateError> {
    let partial = files::beside(dest, ".partial");
    let result = write_partial(source, db, &partial).and_then(|()| {
        std::fs::rename(&partial, dest).map_err(|e| io(dest, e))?;
        sync_folder(dest);
        std::fs::metadata(dest)
            .map(|m| m.len())
            .map_err(|e| io(dest, e))
    });
    if result.is_err() {
        // Never leave half a copy behind (nor its rollback journal).
        for leftover in [partial.clone(), files::beside(&partial, "-journal")] {
            let _ = std::fs::remove_file(leftover);
        }
    }
    result
}

fn write_partial(source: &Connection, db: &Path, partial: &Path) -> Result<(), StateError> {
    create_private(partial, true).map_err(|e| io(partial, e))?;
    let mut out = Connection::open(partial).map_err(|e| sqlite(partial, e))?;
    {
        let backup = Backup::new(source, &mut out).map_err(|e| sqlite(db, e))?;
        let mut busy = 0;
        loop {
            match backup.step(-1).map_err(|e| sqlite(db, e))? {
                StepResult::Done => break,
                StepResult::More => {}
                StepResult::Busy | StepResult::Locked if busy < BUSY_TRIES => {
                    busy += 1;
                    std::thread::sleep(BUSY_PAUSE);
                }
                StepResult::Busy | StepResult::Locked => {
                    return Err(StateError::Io {
                        path: db.to_path_buf(),
                        message: "the DB stayed locked; no backup was written".into(),
                    });
                }
                _ => {}
            }
        }
    }
    // The copy stands alone: no write-ahead log to carry along with it.
    out.pragma_update(None, "journal_mode", "DELETE")
        .map_err(|e| sqlite(partial, e))?;
    let found = sqlite_check(&out, "quick_check", 5).map_err(|e| sqlite(partial, e))?;
    if !found.is_empty() {
        return Err(StateError::Damaged {
            path: db.to_path_buf(),
            detail: format!(
                "SQLite quick_check of the copy: {}; no backup was written",
                found.join("; ")
            ),
        });
    }
    out.close().map_err(|(_, e)| sqlite(partial, e))?;
    same_mode(db, partial)?;
    std::fs::File::open(partial)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(partial, e))
}

/// Gives `copy` the DB's file mode, never more than owner read and write.
fn same_mode(db: &Path, copy: &Path) -> Result<(), StateError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(db)
            .map_err(|e| io(db, e))?
            .permissions()
            .mode()
            & super::PRIVATE_MODE;
        std::fs::set_permissions(copy, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io(copy, e))?;
    }
    #[cfg(not(unix))]
    let _ = (db, copy);
    Ok(())
}

/// Makes a rename into `file`'s folder durable (best effort: not every file
/// system lets a folder be synced).
fn sync_folder(file: &Path) {
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
}

/// The copy made before migrating the DB at `db` from `version`: beside it,
/// named after it, the version and the time; older such copies beyond
/// [`MIGRATION_BACKUPS_KEPT`] are removed. No copy, no migration.
pub(super) fn before_migration(
    source: &Connection,
    db: &Path,
    version: i64,
) -> Result<PathBuf, StateError> {
    let name = db
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let mut dest = db.with_file_name(format!("{name}.v{version}-{stamp}.bak"));
    let mut n = 2;
    while std::fs::symlink_metadata(&dest).is_ok() {
        dest = db.with_file_name(format!("{name}.v{version}-{stamp}-{n}.bak"));
        n += 1;
    }
    copy(source, db, &dest)?;
    if let Err(e) = prune(db, &name) {
        tracing::warn!(error = %e, "could not remove older copies made before migrations");
    }
    Ok(dest)
}

/// The order of a migration copy's name among the DB's copies (its time,
/// then its counter), or `None` for any other file.
pub(super) fn migration_copy_order(db_name: &str, file: &str) -> Option<(String, u32)> {
    let rest = file.strip_prefix(db_name)?.strip_prefix(".v")?;
    let rest = rest.strip_suffix(".bak")?;
    let (version, rest) = rest.split_once('-')?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (stamp, n) = match rest.split_once('-') {
        Some((stamp, n)) => (stamp, n.parse().ok()?),
        None => (rest, 1),
    };
    let well_formed = stamp.len() == 16
        && stamp.as_bytes()[8] == b'T'
        && stamp.ends_with('Z')
        && stamp
            .bytes()
            .enumerate()
            .all(|(i, b)| matches!(i, 8 | 15) || b.is_ascii_digit());
    well_formed.then(|| (stamp.to_string(), n))
}

fn prune(db: &Path, db_name: &str) -> std::io::Result<()> {
    let dir = db
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut copies: Vec<((String, u32), PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            migration_copy_order(db_name, &name).map(|order| (order, entry.path()))
        })
        .collect();
    copies.sort();
    let excess = copies.len().saturating_sub(MIGRATION_BACKUPS_KEPT);
    for (_, old) in copies.into_iter().take(excess) {
        std::fs::remove_file(old)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_copies_are_known_by_their_names_only() {
        let db = "idsync.db";
        assert_eq!(
            migration_copy_order(db, "idsync.db.v6-20250301T120000Z.bak"),
            Some(("20250301T120000Z".into(), 1))
        );
        assert_eq!(
            migration_copy_order(db, "idsync.db.v12-20250301T120000Z-3.bak"),
            Some(("20250301T120000Z".into(), 3))
        );
        for other in [
            "idsync.db",
            "idsync.db-wal",
            "other.db.v6-20250301T120000Z.bak",
            "idsync.db.v-20250301T120000Z.bak",
            "idsync.db.vx-20250301T120000Z.bak",
            "idsync.db.v6-2025030xT120000Z.bak",
            "idsync.db.v6-20250301T120000Z.bak.partial",
            "idsync.db.v6-20250301T120000Z-x.bak",
            "my-backup.bak",
        ] {
            assert_eq!(migration_copy_order(db, other), None, "{other}");
        }
    }
}
