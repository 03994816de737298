//! A state DB that is damaged, incomplete or too new is refused with its own
//! error (naming the file, with a way out), never read as empty and never a
//! panic; `state check` names what is wrong; backups are whole, private and
//! made before every migration.

use std::path::{Path, PathBuf};

use super::tests::user;
use super::*;
use crate::model::{
    GroupKey, GroupName, OpKind, Ownership, ScimId, SourceKey, StateChange, StateGroup, Status,
};

fn record(seq: i64, op: OpKind, subject: &str) -> OpRecord {
    OpRecord {
        seq,
        op,
        subject: subject.into(),
        outcome: OpOutcome::Applied,
        http_status: Some(201),
        error: None,
        old_values: None,
        new_values: Some(format!(r#"{{"op":"{}"}}"#, op.name())),
    }
}

/// A DB with `n` users in a group, written by one finished run.
fn populate(db: &mut StateDb, n: usize) {
    let mut journal: Vec<(&'static str, String)> =
        (0..n).map(|i| ("create_user", format!("k{i}"))).collect();
    journal.push(("create_group", "g".into()));
    let run = db.begin_run("sync", &journal).unwrap();
    for i in 0..n {
        let change = StateChange::PutUser {
            key: SourceKey::new(format!("k{i}")),
            user: user(&format!("id-{i}"), &format!("user{i}@example.com")),
        };
        db.commit(
            run,
            &record(i as i64, OpKind::CreateUser, &format!("k{i}")),
            Some(&change),
        )
        .unwrap();
    }
    let group = StateChange::PutGroup {
        key: GroupKey::new("g"),
        group: StateGroup {
            scim_id: ScimId::new("gid"),
            display_name: GroupName::new("G"),
            status: Status::Active,
            ownership: Ownership::Created,
        },
    };
    db.commit(
        run,
        &record(n as i64, OpKind::CreateGroup, "g"),
        Some(&group),
    )
    .unwrap();
    let members = StateChange::MembersAdded {
        group: GroupKey::new("g"),
        users: (0..n).map(|i| SourceKey::new(format!("k{i}"))).collect(),
    };
    db.commit_changes(&[members]).unwrap();
    let end = RunEnd {
        applied: n as i64 + 1,
        failed: 0,
        exit_code: crate::model::Exit::Ok,
        summary: "{}",
        error: None,
        settles_interrupted: true,
    };
    db.finish_run(
        run,
        &end,
        super::Retention {
            days: 30,
            runs: None,
        },
    )
    .unwrap();
}

/// A DB closed as a run that ended cleanly closes it (no `-wal` left, and
/// sealed) with `n` users, at `dir/idsync.db`.
fn closed_db(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("idsync.db");
    let mut db = StateDb::open(&path).unwrap();
    populate(&mut db, n);
    db.seal_on_close();
    drop(db);
    assert!(!files::beside(&path, "-wal").exists());
    assert!(seal::path(&path).exists(), "sealed");
    path
}

/// Writes `bytes` as the DB at `path`, with the seal of the DB at `sealed`
/// beside it: a file changed since it was sealed.
fn write_with_seal(path: &Path, bytes: &[u8], sealed: &Path) {
    std::fs::write(path, bytes).unwrap();
    std::fs::copy(seal::path(sealed), seal::path(path)).unwrap();
}

#[test]
fn a_sealed_db_as_it_was_closed_is_not_checked_again_until_a_day_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let path = closed_db(dir.path(), 50);
    // The seal dated as if the check had run an hour ago: an open that
    // trusts it carries that time forward instead of checking now.
    let hour_ago = seal::now_secs() - 3600;
    let text = std::fs::read_to_string(seal::path(&path)).unwrap();
    let (head, _) = text.split_once("checked_at ").unwrap();
    std::fs::write(seal::path(&path), format!("{head}checked_at {hour_ago}\n")).unwrap();
    let mut db = StateDb::open(&path).unwrap();
    assert_eq!(db.checked_at, hour_ago, "quick_check was not run again");
    db.seal_on_close();
    drop(db);
    let db = StateDb::open(&path).unwrap();
    assert_eq!(db.checked_at, hour_ago, "still the same check");
    drop(db);
    // A day old: checked again, and the time is now.
    let day_ago = seal::now_secs() - seal::CHECK_STANDS_SECS;
    let text = std::fs::read_to_string(seal::path(&path)).unwrap();
    let (head, _) = text.split_once("checked_at ").unwrap();
    std::fs::write(seal::path(&path), format!("{head}checked_at {day_ago}\n")).unwrap();
    let db = StateDb::open(&path).unwrap();
    assert!(db.checked_at > day_ago, "checked again");
}

/// Dates the check the seal of the DB at `path` records `secs` seconds ago,
/// so that an open which trusts the seal shows it by carrying that time.
fn date_check(path: &Path, secs: u64) -> u64 {
    let at = seal::now_secs() - secs;
    let text = std::fs::read_to_string(seal::path(path)).unwrap();
    let (head, _) = text.split_once("checked_at ").unwrap();
    std::fs::write(seal::path(path), format!("{head}checked_at {at}\n")).unwrap();
    at
}

/// One user put by a run on the open DB.
fn put_one(db: &mut StateDb, i: usize) {
    let change = StateChange::PutUser {
        key: SourceKey::new(format!("late{i}")),
        user: user(&format!("late-{i}"), &format!("late{i}@example.com")),
    };
    db.commit_changes(&[change]).unwrap();
}

#[test]
fn a_run_that_writes_a_few_pages_seals_the_file_from_the_chunks_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let path = closed_db(dir.path(), 3000);
    let chunks = std::fs::metadata(&path).unwrap().len() as usize / seal::CHUNK;
    assert!(chunks > 8, "{chunks} chunks");
    let hour_ago = date_check(&path, 3600);
    let mut db = StateDb::open(&path).unwrap();
    assert_eq!(db.checked_at, hour_ago, "sealed");
    put_one(&mut db, 1);
    let written = seal::written_chunks(&path).expect("the log lists what the run wrote");
    assert!(
        !written.is_empty() && written.len() < chunks / 2,
        "{written:?} of {chunks}"
    );
    db.seal_on_close();
    drop(db);
    // The seal is that of every byte, as a hash of the whole file gives it.
    let whole = seal::FileHashes::read(&path).unwrap();
    let text = std::fs::read_to_string(seal::path(&path)).unwrap();
    assert!(
        text.contains(&blake3::Hash::from_bytes(whole.root()).to_hex().to_string()),
        "{text}"
    );
    let mut db = StateDb::open(&path).unwrap();
    assert_eq!(db.checked_at, hour_ago, "still sealed: no quick_check");
    assert_eq!(db.load().unwrap().users.len(), 3001);
}

#[test]
fn a_log_that_started_over_during_the_run_is_sealed_from_the_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = closed_db(dir.path(), 500);
    let hour_ago = date_check(&path, 3600);
    let mut db = StateDb::open(&path).unwrap();
    put_one(&mut db, 1);
    assert!(seal::written_chunks(&path).is_some());
    // Copied into the file, the log starts over at the next write: the pages
    // written before are no longer listed.
    db.conn
        .query_row("PRAGMA wal_checkpoint", [], |_| Ok(()))
        .unwrap();
    put_one(&mut db, 2);
    assert_eq!(seal::written_chunks(&path), None, "the log started over");
    db.seal_on_close();
    drop(db);
    let mut db = StateDb::open(&path).unwrap();
    assert_eq!(db.checked_at, hour_ago, "sealed from the whole file");
    assert_eq!(db.load().unwrap().users.len(), 502);
}

#[test]
fn a_byte_changed_by_another_hand_during_a_run_is_not_sealed_as_good() {
    let dir = tempfile::tempdir().unwrap();
    let path = closed_db(dir.path(), 3000);
    let hour_ago = date_check(&path, 3600);
    let mut db = StateDb::open(&path).unwrap();
    put_one(&mut db, 1);
    let written = seal::written_chunks(&path).unwrap();
    let untouched = (1..)
        .find(|i| !written.contains(i))
        .expect("a chunk the run did not write");
    // One bit, in a chunk the run does not write, while the run holds the DB.
    let at = untouched * seal::CHUNK + 100;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    db.seal_on_close();
    drop(db);
    // The seal holds the chunk as it was at open: the next run checks.
    match StateDb::open(&path) {
        Ok(db) => assert!(
            db.checked_at > hour_ago,
            "the flipped bit was sealed as good"
        ),
        Err(err) => assert_damaged(&err, &path),
    }
}

/// Asserts `err` is a damaged file named by `path`, with advice to restore a
/// backup or start again with `--full`.
fn assert_damaged(err: &StateError, path: &Path) {
    assert!(matches!(err, StateError::Damaged { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.starts_with(&format!("state DB {}: the file is damaged", path.display())),
        "{text}"
    );
    let hint = err.hint().unwrap();
    assert!(
        hint.contains("restore a backup")
            && hint.contains("`idsync sync --full` against a fresh DB"),
        "{hint}"
    );
}

#[test]
fn a_truncated_file_is_refused_as_damaged_never_read_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    let path = closed_db(dir.path(), 300);
    let whole = std::fs::read(&path).unwrap();
    assert!(whole.len() > 8 * 4096, "{} bytes", whole.len());
    for cut in [whole.len() / 2, whole.len() - 4096, 4096, 100, 50] {
        let cut_path = dir.path().join(format!("cut-{cut}.db"));
        write_with_seal(&cut_path, &whole[..cut], &path);
        let err = StateDb::open(&cut_path)
            .err()
            .expect("a cut file is refused");
        assert_damaged(&err, &cut_path);
        let err = StateDb::open_read_only(&cut_path)
            .err()
            .unwrap_or_else(|| panic!("a file cut at {cut} bytes was read as a DB or as none"));
        assert_damaged(&err, &cut_path);
        let report = StateDb::check(&cut_path).unwrap();
        assert!(!report.is_sound(), "cut at {cut}: {report:?}");
    }
    // Emptied to 0 bytes is the documented "records nothing" (a first run,
    // held back by the lost-state guard when the target holds anything).
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    assert!(
        StateDb::open(&empty)
            .unwrap()
            .load()
            .unwrap()
            .users
            .is_empty()
    );
}

#[test]
fn random_bytes_over_any_page_are_refused_before_a_run_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = closed_db(dir.path(), 120);
    let whole = std::fs::read(&path).unwrap();
    let page_size = usize::from(u16::from_be_bytes([whole[16], whole[17]]));
    let free_pages = u32::from_be_bytes(whole[36..40].try_into().unwrap());
    assert_eq!(
        free_pages, 0,
        "every page is in use, so every overwrite counts"
    );
    let pages = whole.len() / page_size;
    assert!(pages > 5, "{pages} pages");
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    for page in 0..pages {
        let mut bytes = whole.clone();
        rng.fill(&mut bytes[page * page_size..(page + 1) * page_size]);
        let damaged = dir.path().join(format!("page-{page}.db"));
        write_with_seal(&damaged, &bytes, &path);
        let err = StateDb::open(&damaged)
            .err()
            .unwrap_or_else(|| panic!("page {} of {pages} overwritten, yet opened", page + 1));
        assert_damaged(&err, &damaged);
        assert_eq!(
            std::fs::read(&damaged).unwrap(),
            bytes,
            "a refused file is not changed"
        );
        let report = StateDb::check(&damaged).unwrap();
        assert!(!report.is_sound(), "page {}: {report:?}", page + 1);
    }
}

/// The files a process killed now would leave: the DB, its log and index.
fn crash_image(db: &StateDb, into: &Path) -> PathBuf {
    std::fs::create_dir_all(into).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        std::fs::copy(
            files::beside(db.path(), suffix),
            files::beside(&into.join("idsync.db"), suffix),
        )
        .unwrap();
    }
    into.join("idsync.db")
}

#[test]
fn a_missing_write_ahead_log_is_refused_and_stays_detectable() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = StateDb::open(&dir.path().join("live.db")).unwrap();
    populate(&mut db, 20);
    // As a killed run leaves it: everything committed, all of it in the log.
    let whole = crash_image(&db, &dir.path().join("whole"));
    let mut resumed = StateDb::open(&whole).unwrap();
    assert_eq!(resumed.load().unwrap().users.len(), 20);
    drop(resumed);

    let lost = crash_image(&db, &dir.path().join("lost"));
    std::fs::remove_file(files::beside(&lost, "-wal")).unwrap();
    let shm = std::fs::read(files::beside(&lost, "-shm")).unwrap();
    for attempt in 0..2 {
        let err = StateDb::open(&lost).err().expect("refused");
        assert!(
            matches!(err, StateError::WalMissing { frames, .. } if frames > 0),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("{}-wal is missing", lost.display())),
            "{text}"
        );
        let hint = err.hint().unwrap();
        assert!(
            hint.contains("restore a backup") && hint.contains("-shm"),
            "{hint}"
        );
        assert!(matches!(
            StateDb::open_read_only(&lost),
            Err(StateError::WalMissing { .. })
        ));
        let report = StateDb::check(&lost).unwrap();
        assert_eq!(report.problems, vec![text], "attempt {attempt}");
        // Nothing above reset the index that shows the loss.
        assert_eq!(std::fs::read(files::beside(&lost, "-shm")).unwrap(), shm);
        assert!(!files::beside(&lost, "-wal").exists());
    }
    // Accepting the DB file as it is (the index removed, as after a restore).
    std::fs::remove_file(files::beside(&lost, "-shm")).unwrap();
    assert!(StateDb::open(&lost).is_ok());
}

#[test]
fn a_db_from_a_newer_idsync_is_refused_and_left_exactly_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = closed_db(dir.path(), 3);
    {
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", schema::SCHEMA_VERSION + 2)
            .unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let err = StateDb::open(&path).err().expect("refused");
    assert!(
        matches!(err, StateError::TooNew { found, .. } if found == schema::SCHEMA_VERSION + 2),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with(&format!(
            "state DB {}: schema version {} is newer than this idsync understands ({})",
            path.display(),
            schema::SCHEMA_VERSION + 2,
            schema::SCHEMA_VERSION
        )),
        "{err}"
    );
    let hint = err.hint().unwrap();
    assert!(
        hint.contains(&format!(".v{}-", schema::SCHEMA_VERSION)) && hint.contains("--full"),
        "{hint}"
    );
    assert!(matches!(
        StateDb::open_read_only(&path),
        Err(StateError::TooNew { .. })
    ));
    let report = StateDb::check(&path).unwrap();
    assert_eq!(report.problems, vec![err.to_string()]);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".bak"))
        .collect();
    assert!(names.is_empty(), "{names:?}");
}

#[test]
fn a_full_disk_and_a_damaged_file_are_told_apart_from_other_errors() {
    let path = Path::new("/var/lib/idsync/idsync.db");
    let full =
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
    let err = sqlite(path, full);
    assert!(matches!(err, StateError::DiskFull { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "state DB /var/lib/idsync/idsync.db: no space left on the file system that holds it"
    );
    let hint = err.hint().unwrap();
    assert!(
        hint.contains("free space") && hint.contains("resumes without duplicates"),
        "{hint}"
    );
    let enospc = io(path, std::io::Error::from_raw_os_error(libc::ENOSPC));
    assert!(matches!(enospc, StateError::DiskFull { .. }), "{enospc:?}");
    for code in [rusqlite::ffi::SQLITE_CORRUPT, rusqlite::ffi::SQLITE_NOTADB] {
        let e = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        assert!(matches!(sqlite(path, e), StateError::Damaged { .. }));
    }
    let busy =
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
    assert!(matches!(sqlite(path, busy), StateError::Sqlite { .. }));
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn baks(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".bak"))
        .collect();
    names.sort();
    names
}

#[test]
fn every_migration_copies_the_file_first_and_keeps_the_newest_copies() {
    let dir = tempfile::tempdir().unwrap();
    let path = closed_db(dir.path(), 4);
    // A new file holds nothing to copy.
    assert!(baks(dir.path()).is_empty());
    for round in 1..=MIGRATION_BACKUPS_KEPT + 2 {
        {
            let db = StateDb::open(&path).unwrap();
            db.conn
                .execute_batch(super::tests::BACK_TO_VERSION_3)
                .unwrap();
        }
        let db = StateDb::open(&path).unwrap();
        assert_eq!(db.user_version().unwrap(), schema::SCHEMA_VERSION);
        let copies = baks(dir.path());
        assert_eq!(
            copies.len(),
            round.min(MIGRATION_BACKUPS_KEPT),
            "round {round}: {copies:?}"
        );
        let newest = copies.iter().map(|n| (backup_order(n), n)).max().unwrap().1;
        assert!(newest.starts_with("idsync.db.v3-"), "{newest}");
        let copy = dir.path().join(newest);
        assert_eq!(mode(&copy), 0o600);
        let conn = Connection::open_with_flags(&copy, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let (version, users, journal_mode): (i64, i64, String) = conn
            .query_row(
                "SELECT (SELECT user_version FROM pragma_user_version),
                        (SELECT count(*) FROM users),
                        (SELECT journal_mode FROM pragma_journal_mode)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!((version, users, journal_mode.as_str()), (3, 4, "delete"));
    }
    // The copies stand alone: no log or index beside them.
    let side: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains(".bak") && !n.ends_with(".bak"))
        .collect();
    assert!(side.is_empty(), "{side:?}");
}

/// A migration copy's place in time, from its name.
fn backup_order(name: &str) -> (String, u32) {
    backup::migration_copy_order("idsync.db", name).unwrap()
}

#[test]
fn a_backup_is_whole_private_standalone_and_never_written_over_unasked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idsync.db");
    // Held open by a run, with its commits still in the log: the copy has them.
    let mut db = StateDb::open(&path).unwrap();
    populate(&mut db, 25);
    assert!(files::beside(&path, "-wal").metadata().unwrap().len() > 0);
    let dest = dir.path().join("copy.db");
    let size = StateDb::backup(&path, &dest, false).unwrap();
    assert_eq!(size, std::fs::metadata(&dest).unwrap().len());
    assert_eq!(mode(&dest), 0o600);
    let report = StateDb::check(&dest).unwrap();
    assert!(report.is_sound(), "{report:?}");
    assert!(
        report
            .facts
            .iter()
            .any(|f| f.starts_with("users: 25 (25 live); groups: 1 (1 live); memberships: 25")),
        "{report:?}"
    );
    assert!(!files::beside(&dest, ".partial").exists());
    // Not written over without --force; with it, replaced.
    std::fs::write(&dest, b"keep me").unwrap();
    let err = StateDb::backup(&path, &dest, false).unwrap_err();
    assert!(matches!(err, StateError::Exists { .. }), "{err:?}");
    assert!(err.hint().unwrap().contains("--force"));
    assert_eq!(std::fs::read(&dest).unwrap(), b"keep me");
    StateDb::backup(&path, &dest, true).unwrap();
    assert!(StateDb::check(&dest).unwrap().is_sound());
    // Never over the DB or its own files, even with --force.
    for own in [
        "idsync.db",
        "idsync.db-wal",
        "idsync.db-shm",
        "idsync.db.lock",
    ] {
        let err = StateDb::backup(&path, &dir.path().join(own), true).unwrap_err();
        assert!(matches!(err, StateError::Io { .. }), "{own}: {err:?}");
    }
    drop(db);
    // A restored copy is a state DB like any other.
    let restored = dir.path().join("restored.db");
    std::fs::copy(&dest, &restored).unwrap();
    let mut db = StateDb::open(&restored).unwrap();
    assert_eq!(db.load().unwrap().users.len(), 25);
}

/// Writes `sql` into a sound DB and returns the problems `check` then names.
fn problems_after(sql: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let path = closed_db(dir.path(), 3);
    assert!(StateDb::check(&path).unwrap().is_sound());
    Connection::open(&path).unwrap().execute_batch(sql).unwrap();
    StateDb::check(&path).unwrap().problems
}

#[test]
fn check_names_each_broken_invariant() {
    let cases: &[(&str, &str)] = &[
        (
            "UPDATE users SET scim_id = 'id-0' WHERE key = 'k1';",
            "one key per SCIM id: SCIM id 'id-0' is recorded for 2 live users: ",
        ),
        (
            "INSERT INTO groups VALUES ('g2', 'gid', 'G2', 'active', 'created', '');",
            "one key per SCIM id: SCIM id 'gid' is recorded for 2 live groups: ",
        ),
        (
            "UPDATE users SET user_name = 'USER0@example.com' WHERE key = 'k1';",
            "one live user per userName: userName ",
        ),
        (
            "UPDATE users SET attrs = '{not json' WHERE key = 'k2';",
            "users' recorded values: user 'k2': pushed attributes that are not JSON",
        ),
        (
            "UPDATE users SET hash = x'00' WHERE key = 'k2';",
            "users' recorded values: user 'k2': an attribute hash of 1 bytes, not 16",
        ),
        (
            "UPDATE groups SET scim_id = '' WHERE key = 'g';",
            "groups' recorded values: group 'g': no SCIM id",
        ),
        (
            "INSERT INTO memberships VALUES ('g', 'ghost');",
            "memberships only of known users and groups: group 'g' lists user 'ghost', which the state DB does not record",
        ),
        (
            "INSERT INTO memberships VALUES ('nowhere', 'k0');",
            "memberships only of known users and groups: a membership of user 'k0' in group 'nowhere'",
        ),
        (
            "INSERT INTO journal (run_id, seq, op, subject, state) VALUES (1, 0, 'create_user', 'k0', 'done');",
            "a journal only for runs in progress: journal entries of run #1, which ended ",
        ),
        (
            "INSERT INTO runs (command, started_at, planned) VALUES ('sync', '2025', 2);
             INSERT INTO journal (run_id, seq, op, subject, state) VALUES (2, 0, 'create_user', 'k9', 'planned');",
            "every planned operation in the journal: run #2 planned 2 operation(s), its journal holds 1",
        ),
        (
            "INSERT INTO runs (command, started_at, planned) VALUES ('sync', '2025', 1);
             INSERT INTO journal (run_id, seq, op, subject, state) VALUES (2, 0, 'create_user', 'k9', 'done');",
            "the journal agrees with the run's log: run #2 operation 0 (create_user 'k9') is done in the journal but has no log line",
        ),
        (
            "INSERT INTO runs (command, started_at, planned) VALUES ('sync', '2025', 1);
             INSERT INTO journal (run_id, seq, op, subject, state) VALUES (2, 0, 'create_user', 'k9', 'started');
             INSERT INTO run_ops (run_id, seq, at, op, subject, outcome) VALUES (2, 0, '', 'create_user', 'k9', 'failed');",
            "the journal agrees with the run's log: run #2 operation 0 (create_user 'k9') is started in the journal but is logged as create_user 'k9', failed",
        ),
        (
            "DELETE FROM users WHERE key = 'k1';",
            "the log agrees with the users and groups: run #1 operation 1 create_user 'k1' was applied, but the state DB does not record that user",
        ),
        (
            "DELETE FROM groups WHERE key = 'g'; DELETE FROM memberships;",
            "the log agrees with the users and groups: run #1 operation 3 create_group 'g' was applied, but the state DB does not record that group",
        ),
        (
            "UPDATE meta SET value = '7x' WHERE name = 'generation';",
            "a generation counter: meta.generation is '7x'",
        ),
    ];
    for (sql, expected) in cases {
        let problems = problems_after(sql);
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "after {sql}\nexpected a problem starting {expected:?}, got {problems:#?}"
        );
    }
}

#[test]
fn check_reports_a_sound_db_briefly_and_reads_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = closed_db(dir.path(), 5);
    let before = std::fs::read(&path).unwrap();
    let report = StateDb::check(&path).unwrap();
    assert!(report.is_sound(), "{report:?}");
    assert_eq!(
        report.facts,
        vec![
            "SQLite integrity_check: ok; foreign_key_check: ok".to_string(),
            format!(
                "schema version {} (journal_mode wal)",
                schema::SCHEMA_VERSION
            ),
            "users: 5 (5 live); groups: 1 (1 live); memberships: 5".into(),
            "history: 1 run(s); no run unfinished".into(),
        ]
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // An unfinished run is said, with what it had started.
    let mut db = StateDb::open(&path).unwrap();
    let run = db
        .begin_run(
            "sync",
            &[("create_user", "k9".into()), ("create_user", "k8".into())],
        )
        .unwrap();
    db.mark_started_from(run, 0, 1).unwrap();
    let report = StateDb::check(&path).unwrap();
    assert!(report.is_sound(), "{report:?}");
    assert!(
        report.facts[3].ends_with(&format!("#{run} (2 planned, 1 started and unfinished)")),
        "{report:?}"
    );
    // A schema an older idsync left is sound, and said to be migrated next.
    db.conn
        .execute_batch(super::tests::BACK_TO_VERSION_3)
        .unwrap();
    drop(db);
    let report = StateDb::check(&path).unwrap();
    assert!(report.is_sound(), "{report:?}");
    assert!(
        report.facts[1].starts_with("schema version 3 "),
        "{report:?}"
    );
}
