//! What the soak and crash tests measure and check from outside: a process's
//! memory, threads and open file descriptors (`/proc/PID`), the state DB's
//! size and history (read only), the target's duplicates, source files
//! written whole, the knobs read from the environment and the report the
//! figures go to.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use crate::harness::Directory;
use crate::support::scim::{TargetContents, str_at};

/// The `policy:` and `state:` lines of every soak config: leavers deleted, no
/// removal limits (a reorganisation removes more in one cycle than the
/// default limits let through), groups provisioned and deleted.
pub const POLICY: &str = "policy:\n\
    \x20 remove_action: delete\n\
    \x20 max_removals: 100%\n\
    \x20 max_member_removals: 100%\n\
    \x20 groups: { provision: true, delete: true }\n\
    state: state/idsync.db\n";

/// One look at a running process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    /// Resident memory now (`VmRSS`), KiB.
    pub rss_kb: u64,
    /// The most resident memory so far (`VmHWM`), KiB.
    pub hwm_kb: u64,
    pub threads: u64,
    /// Entries of `/proc/PID/fd`.
    pub fds: usize,
}

/// `/proc/PID/status` and `/proc/PID/fd` of `pid`; `None` once it is gone.
pub fn sample_process(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some(ProcSample {
        rss_kb: field("VmRSS:"),
        hwm_kb: field("VmHWM:"),
        threads: field("Threads:"),
        fds,
    })
}

/// The state DB as it is on disk.
#[derive(Clone, Copy, Debug, Default)]
pub struct DbSample {
    /// The DB file and its write-ahead log, bytes.
    pub file_bytes: u64,
    pub wal_bytes: u64,
    /// Rows: runs in the history, lines of the provisioning log, the journal,
    /// users (all, and those removed).
    pub runs: i64,
    pub run_ops: i64,
    pub journal: i64,
    pub users: i64,
    pub removed_users: i64,
}

/// Reads the state DB at `path` read-only (between two cycles of a daemon).
pub fn sample_db(path: &Path) -> DbSample {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let wal = path.with_file_name(format!(
        "{}-wal",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
    ));
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|e| panic!("open {} read-only: {e}", path.display()));
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    let count = |sql: &str| -> i64 {
        conn.query_row(sql, [], |r| r.get(0))
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    };
    DbSample {
        file_bytes: size(path),
        wal_bytes: size(&wal),
        runs: count("SELECT count(*) FROM runs"),
        run_ops: count("SELECT count(*) FROM run_ops"),
        journal: count("SELECT count(*) FROM journal"),
        users: count("SELECT count(*) FROM users"),
        removed_users: count("SELECT count(*) FROM users WHERE status = 'removed'"),
    }
}

/// userNames (case-insensitively) and group names the target holds more than
/// once, with how many times: empty when there is no duplicate.
pub fn duplicates(target: &TargetContents) -> Vec<String> {
    let mut users: BTreeMap<String, usize> = BTreeMap::new();
    for u in &target.users {
        *users
            .entry(str_at(u, "userName").to_lowercase())
            .or_default() += 1;
    }
    let mut groups: BTreeMap<String, usize> = BTreeMap::new();
    for g in &target.groups {
        *groups
            .entry(str_at(g, "displayName").to_owned())
            .or_default() += 1;
    }
    let twice = |m: BTreeMap<String, usize>, what: &str| {
        m.into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(k, n)| format!("{what} {k:?} ×{n}"))
            .collect::<Vec<_>>()
    };
    let mut found = twice(users, "userName");
    found.extend(twice(groups, "group"));
    found
}

/// Writes `dir/name` whole: a temporary file renamed over it, so a cycle
/// reading it at the same moment sees the old file or the new one.
pub fn write_whole(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, dir.join(name)).unwrap_or_else(|e| panic!("rename {name}: {e}"));
}

/// Writes `users.csv` and `groups.csv` of `directory` into `dir`, each whole.
pub fn write_directory(dir: &Path, directory: &Directory) {
    write_whole(dir, "users.csv", directory.users_csv().as_bytes());
    write_whole(dir, "groups.csv", directory.groups_csv().as_bytes());
}

/// A number from the environment (`IDSYNC_SOAK_…`), or `default`.
pub fn knob(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Prints a line of the figures, and appends it to `$IDSYNC_SOAK_REPORT`
/// when that names a file (the soak script collects them there).
pub fn report(line: &str) {
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("IDSYNC_SOAK_REPORT").filter(|p| !p.is_empty()) {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open the report {}: {e}", path.display()));
        writeln!(file, "{line}").expect("write the report");
    }
}
