//! The state DB's durability: a file system that fills up in the middle of
//! a run (a small tmpfs and a filler file; needs root, skipped otherwise),
//! and the last transactions lost as a power cut loses them (the tail of the
//! write-ahead log cut off). Nothing is sent whose intent was not written
//! first, the run stops with a clear error, and the next run converges
//! exactly: every user present, none twice.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::{Connection, OpenFlags};

use crate::faults::assert_exact;
use crate::harness::{
    Directory, Idsync, ScimServer, TargetContents, Workspace, fresh_token, str_at,
};
use crate::state_recovery::{
    assert_says, beside, db_count, slow_writes, state_check, sync_killed_when,
};

/// A tmpfs mounted over a folder for one test, unmounted on drop (also when
/// the test fails).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` over `dir`; `None` (the test skips, saying
    /// so) when not running as root.
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        use std::os::unix::fs::MetadataExt as _;
        // /proc/self belongs to the process's effective user.
        if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
            eprintln!("skipped: mounting a small tmpfs for the full-disk test needs root");
            return None;
        }
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount -t tmpfs over {} failed",
            dir.display()
        );
        Some(Tmpfs {
            dir: dir.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Busy (a process still holds a file): detach it now, freed later.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// Fills the file system holding `dir` with a file, then shrinks it so that
/// about `free` bytes stay free. Returns the filler's path.
fn fill_leaving(dir: &Path, free: u64) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 16 * 1024];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    let len = file.metadata().unwrap().len();
    file.set_len(len.saturating_sub(free)).unwrap();
    path
}

/// Every user the target holds is recorded in the state DB, or its create
/// was marked started in the journal before it was sent. Returns how many
/// were only marked.
fn assert_intent_written_first(db: &Path, target: &TargetContents) -> usize {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut only_marked = 0;
    for user in &target.users {
        let key = str_at(user, "externalId");
        let (recorded, marked): (bool, bool) = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM users WHERE key = ?1),
                        EXISTS (SELECT 1 FROM journal WHERE op = 'create_user' AND subject = ?1
                                AND state != 'planned')",
                [key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(
            recorded || marked,
            "user {key} is on the target, but the state DB neither records it nor marked its create started"
        );
        only_marked += usize::from(!recorded);
    }
    only_marked
}

#[test]
fn a_full_disk_mid_run_stops_with_a_clear_error_and_the_next_run_converges() {
    let server = ScimServer::start(&fresh_token("full-disk"));
    let ws = Workspace::new(&server);
    let Some(_tmpfs) = Tmpfs::mount(&ws.path().join("state"), "16m") else {
        return;
    };
    let first = Directory::generate(30, 6);
    ws.write_directory(&first);
    ws.sync_ok();
    let before = server.contents().users.len();

    let filler = fill_leaving(&ws.path().join("state"), 384 * 1024);
    let dir = Directory::generate(300, 6);
    ws.write_directory(&dir);
    let out = ws.run(&["sync"]);
    out.assert_code(1);
    assert_says(
        &out,
        "a full disk",
        &[
            "error: the run stopped because the state DB could not be written: state DB ",
            "no space left on the file system that holds it",
            "hint: free space on the file system that holds ",
            "run `idsync sync` again: what was committed is kept, and the run resumes without duplicates",
        ],
    );
    let target = server.contents();
    let sent = target.users.len();
    eprintln!(
        "the disk filled after {} of {} creates",
        sent - before,
        299 - before
    );
    assert!(
        sent > before && sent < 299,
        "the disk should fill mid-way: {before} users before, {sent} after"
    );

    std::fs::remove_file(filler).unwrap();
    let only_marked = assert_intent_written_first(&ws.state_db(), &target);
    eprintln!("{only_marked} created user(s) were known only by their started mark");
    let check = state_check(&ws, 0);
    assert!(check.stdout.contains("unfinished"), "{}", check.dump());
    ws.sync_ok();
    assert_exact(&server, &ws, &dir);
    state_check(&ws, 0);
}

/// Where each transaction of the log's current generation ends (just after
/// its commit frame), in bytes from the start of `wal`.
fn commit_ends(wal: &[u8]) -> Vec<usize> {
    let word = |at: usize| u32::from_be_bytes(wal[at..at + 4].try_into().unwrap());
    assert!(
        wal.len() >= 32 && word(0) & !1 == 0x377f_0682,
        "not a WAL file"
    );
    let frame = 24 + word(8) as usize;
    let salts = (word(16), word(20));
    let mut ends = Vec::new();
    let mut at = 32;
    while at + frame <= wal.len() && (word(at + 8), word(at + 12)) == salts {
        if word(at + 4) != 0 {
            ends.push(at + frame);
        }
        at += frame;
    }
    ends
}

#[test]
fn a_lost_tail_of_the_write_ahead_log_converges_without_duplicates() {
    let rig = crate::faults::rig("wal-tail", 90, 4, slow_writes(30));
    let (server, ws, dir) = (&rig.server, &rig.ws, &rig.dir);
    sync_killed_when(ws, || rig.proxy.writes() >= 70);
    let db = ws.state_db();
    let wal_path = beside(&db, "-wal");
    let wal = std::fs::read(&wal_path).unwrap();
    let ends = commit_ends(&wal);
    assert!(ends.len() >= 20, "{} transactions in the log", ends.len());
    let users_before = db_count(&db, "SELECT count(*) FROM users");
    // A power cut: the last half of the transactions never reached the disk,
    // and the next frame only in part (a torn write). The index (`-shm`) is
    // left as it was, claiming more than the log now holds.
    let keep = ends[ends.len() / 2] + 1000;
    std::fs::write(&wal_path, &wal[..keep]).unwrap();
    let users_after = db_count(&db, "SELECT count(*) FROM users");
    let on_target = crate::state_recovery::settled(server).users.len() as i64;
    eprintln!(
        "state: {users_before} users before the cut, {users_after} after; the target holds {on_target}"
    );
    assert!(users_after < users_before, "the cut lost no user");
    assert!(users_after < on_target);
    state_check(ws, 0);
    ws.sync_ok();
    assert_exact(server, ws, dir);
    state_check(ws, 0);
}
