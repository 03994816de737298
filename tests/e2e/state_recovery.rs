//! The state DB damaged, cut short, missing its write-ahead log or written by
//! a newer idsync: `sync` and `plan` refuse it (exit 2, naming the file and
//! the way out), nothing is sent, nothing panics, and `state check` names the
//! problem. Backups: taken while a sync runs they pass `state check`;
//! restoring one (even an older one) and running `sync` converges exactly,
//! with no duplicates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::faults::{assert_exact, rig};
use crate::harness::{Directory, Idsync, Output, ScimServer, Workspace, fresh_token};
use crate::proxy::{Fault, Schedule};

/// `path` with `suffix` appended to its name (`-wal`, `-shm`).
pub fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// One number from the state DB at `path`, read only.
pub fn db_count(path: &Path, sql: &str) -> i64 {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    conn.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// `state check`, expected to exit `code`.
pub fn state_check(ws: &Workspace, code: i32) -> Output {
    let out = ws.run(&["state", "check"]);
    out.assert_code(code);
    assert!(!out.stderr.contains("panicked"), "{}", out.dump());
    out
}

/// A schedule that holds every write `ms` milliseconds: a run slow enough to
/// be caught in the middle.
pub fn slow_writes(ms: u64) -> Schedule {
    std::sync::Arc::new(move |req: &crate::proxy::Req| {
        if req.is_write() {
            Fault::Delay(Duration::from_millis(ms))
        } else {
            Fault::Forward
        }
    })
}

/// Starts `sync` and SIGKILLs it once `reached` holds; it must still be
/// running then. A `-wal` is left.
pub fn sync_killed_when(ws: &Workspace, reached: impl Fn() -> bool) {
    let mut running = ws.spawn(&["sync", "--format", "json"]);
    let got_there = crate::harness::wait_until(Duration::from_secs(60), || {
        reached() || !running.is_running()
    });
    running.signal("KILL");
    let out = running.wait(Duration::from_secs(30));
    assert!(got_there, "the sync never got there\n{}", out.dump());
    assert_eq!(
        out.code,
        -1,
        "the sync ended before the kill\n{}",
        out.dump()
    );
    assert!(beside(&ws.state_db(), "-wal").exists());
}

/// What the target holds once requests a killed run left in the proxy's
/// hands have landed: two looks 200 ms apart agree (bounded).
pub fn settled(server: &ScimServer) -> crate::harness::TargetContents {
    let mut last = server.contents().normalized();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(200));
        let now = server.contents().normalized();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the target kept changing");
}

/// `out`'s stderr says each of `expected`, and nothing panicked.
pub fn assert_says(out: &Output, what: &str, expected: &[&str]) {
    for text in expected {
        assert!(
            out.stderr.contains(text),
            "{what}: stderr lacks {text:?}\n{}",
            out.dump()
        );
    }
    assert!(!out.stderr.contains("panicked"), "{what}\n{}", out.dump());
}

/// What a refused DB must show: exit 2, the file named, the way out, no
/// panic; `plan` refuses it too when `plan_reads_it` (a read-only command
/// reads only what it needs, and a damaged page of the history is met only
/// by a run, which checks every page first); `state check` names the problem.
fn assert_refused(ws: &Workspace, what: &str, problem: &str, plan_reads_it: bool) {
    let db = ws.state_db().display().to_string();
    let out = ws.run(&["sync"]);
    out.assert_code(2);
    assert_says(
        &out,
        what,
        &[
            db.as_str(),
            problem,
            "hint: ",
            "`idsync sync --full` against a fresh DB",
        ],
    );
    if plan_reads_it {
        let plan = ws.run(&["plan"]);
        plan.assert_code(2);
        assert!(plan.stderr.contains(problem), "{what}\n{}", plan.dump());
    }
    let check = state_check(ws, 1);
    assert!(
        check.stdout.contains("problem: ") && check.stdout.contains(problem),
        "{what}\n{}",
        check.dump()
    );
}

#[test]
fn a_damaged_cut_incomplete_or_too_new_state_db_is_refused_and_nothing_is_sent() {
    let rig = rig("damaged", 40, 4, slow_writes(40));
    let (server, ws, dir) = (&rig.server, &rig.ws, &rig.dir);
    ws.sync_ok();
    let db = ws.state_db();
    let pristine = std::fs::read(&db).unwrap();
    assert!(!beside(&db, "-wal").exists(), "a clean run leaves no log");
    let before = server.contents().normalized();
    let page = usize::from(u16::from_be_bytes([pristine[16], pristine[17]]));
    let pages = pristine.len() / page;

    let cut = pristine[..pristine.len() / 2].to_vec();
    let mut overwritten = pristine.clone();
    fastrand::Rng::with_seed(7).fill(&mut overwritten[(pages / 2) * page..(pages / 2 + 1) * page]);
    for (what, bytes, plan_reads_it) in [
        ("cut in half", cut, true),
        ("a page overwritten", overwritten, false),
    ] {
        put(&db, &bytes);
        assert_refused(ws, what, "the file is damaged", plan_reads_it);
        assert_eq!(
            std::fs::read(&db).unwrap(),
            bytes,
            "{what}: the file changed"
        );
        assert!(
            server.contents().normalized() == before,
            "{what}: the target changed"
        );
    }

    put(&db, &pristine);
    Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    assert_refused(
        ws,
        "too new",
        "schema version 99 is newer than this idsync understands",
        true,
    );
    assert!(
        server.contents().normalized() == before,
        "too new: the target changed"
    );

    // A run killed mid-way leaves its work in the log; the log then goes.
    put(&db, &pristine);
    let dir = grown(dir, 30);
    ws.write_directory(&dir);
    let writes = rig.proxy.writes();
    sync_killed_when(ws, || rig.proxy.writes() >= writes + 12);
    let wal = std::fs::read(beside(&db, "-wal")).unwrap();
    std::fs::remove_file(beside(&db, "-wal")).unwrap();
    let target = settled(server);
    assert_refused(ws, "log missing", "-wal is missing", true);
    assert!(
        server.contents().normalized() == target,
        "log missing: the target changed"
    );
    // Put back, the log is read and the run resumes.
    std::fs::write(beside(&db, "-wal"), wal).unwrap();
    ws.sync_ok();
    assert_exact(server, ws, &dir);
    let sound = state_check(ws, 0);
    assert!(sound.stdout.contains(": sound"), "{}", sound.dump());
}

/// Writes `bytes` as the state DB, with no log or index beside it.
fn put(db: &Path, bytes: &[u8]) {
    for side in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(beside(db, side));
    }
    std::fs::write(db, bytes).unwrap();
}

/// `dir` with `more` users added after its own (the same generator).
pub fn grown(dir: &Directory, more: usize) -> Directory {
    let groups = dir.groups.len();
    Directory::generate(dir.users.len() + more, groups)
}

#[test]
fn a_backup_taken_while_a_sync_runs_passes_check_and_restoring_it_converges() {
    let rig = rig("backup-live", 160, 5, slow_writes(40));
    let (server, ws, dir) = (&rig.server, &rig.ws, &rig.dir);
    let copy = ws.path().join("backups/during-sync.db");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    let mut running = ws.spawn(&["sync", "--format", "json"]);
    assert!(crate::harness::wait_until(Duration::from_secs(60), || {
        rig.proxy.writes() >= 40
    }));
    let out = ws.run(&["state", "backup", copy.to_str().unwrap()]);
    out.assert_code(0);
    assert!(
        out.stdout.contains("Backed up") && out.stdout.contains("quick_check of the copy: ok"),
        "{}",
        out.dump()
    );
    assert!(running.is_running(), "the sync ended before the backup");
    let copied_users = db_count(&copy, "SELECT count(*) FROM users");
    assert!(
        copied_users > 0 && copied_users < 159,
        "{copied_users} users in the copy"
    );
    let summary = running.wait(Duration::from_secs(120));
    summary.assert_code(0);
    assert_backup_file(&copy);
    // Not written over unasked; replaced with --force.
    let again = ws.run(&["state", "backup", copy.to_str().unwrap()]);
    again.assert_code(2);
    assert!(again.stderr.contains("--force"), "{}", again.dump());
    assert_eq!(db_count(&copy, "SELECT count(*) FROM users"), copied_users);

    // Restored into the state path (as the README says), the copy taken
    // mid-run passes `state check` and a sync converges exactly.
    restore(ws, &copy);
    let check = state_check(ws, 0);
    assert!(check.stdout.contains("unfinished"), "{}", check.dump());
    ws.sync_ok();
    assert_exact(server, ws, dir);
    state_check(ws, 0);
    ws.run(&["state", "backup", "--force", copy.to_str().unwrap()])
        .assert_code(0);
    assert_eq!(db_count(&copy, "SELECT count(*) FROM users"), 159);
}

/// A backup file: owner-only, standalone (no log beside it), nothing half
/// written left over.
fn assert_backup_file(copy: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(copy).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", copy.display());
    let mode_name: String = Connection::open_with_flags(copy, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode_name, "delete");
    assert!(!beside(copy, ".partial").exists());
}

/// The README's restore: (the timer stopped) the backup copied over the DB
/// path, its `-wal` and `-shm` removed.
pub fn restore(ws: &Workspace, backup: &Path) {
    let db = ws.state_db();
    std::fs::copy(backup, &db).unwrap();
    for side in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(beside(&db, side));
    }
}

#[test]
fn restoring_an_older_backup_and_syncing_converges_without_duplicates() {
    let server = ScimServer::start(&fresh_token("restore-old"));
    let ws = Workspace::new(&server);
    let old = Directory::generate(40, 4);
    ws.write_directory(&old);
    ws.sync_ok();
    let backup = ws.path().join("monday.db");
    ws.run(&["state", "backup", backup.to_str().unwrap()])
        .assert_code(0);
    // Since the backup: 25 hires, a leaver, a new group and moves between
    // groups, all synced.
    let mut now = grown(&old, 25);
    let leaver = now.remove_user("u0003");
    let movers: Vec<String> = now.users[20..30].iter().map(|u| u.id.clone()).collect();
    now.groups.insert("group-new".into(), movers);
    ws.write_directory(&now);
    ws.sync_ok();
    let before = db_count(&ws.state_db(), "SELECT count(*) FROM users");

    restore(&ws, &backup);
    assert!(db_count(&ws.state_db(), "SELECT count(*) FROM users") < before);
    let summary = ws.sync_ok();
    assert_eq!(summary["failed"], 0, "{summary:#}");
    let contents = server.contents();
    crate::faults::assert_no_duplicates(&contents);
    crate::harness::assert_target_matches(&now, &[leaver], &contents);
    ws.assert_plan_empty();
    state_check(&ws, 0);
}
