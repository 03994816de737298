//! The harness of the end-to-end tests: what `tests/support` offers every
//! test binary (re-exported here), plus what only these tests use: a throw-away
//! working directory with a CSV config (`Workspace`), a generator of CSV
//! directories (`Directory`), the comparison of a target's contents with what a
//! directory should have produced (`assert_target_matches`), and fake targets
//! for failure modes (`SilentTarget`).
//!
//! Everything here is synchronous, so tests are plain `#[test]` functions.

#![allow(dead_code)] // not every test module uses every helper

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub use crate::support::compare::{Diffs, index_by, member_ids};
pub use crate::support::process::{
    ChildGuard, Output, Running, fresh_token, repo as manifest_dir, wait_until,
};
pub use crate::support::scim::{
    ENTERPRISE_SCHEMA, SUMMARY_KEYS, ScimServer, TOKEN_ENV, TargetContents, USER_SCHEMA, attr,
    closed_port_url, operations, ops_of, str_at, summary_count,
};
pub use crate::support::workdir::{Idsync, Workdir};

impl ScimServer {
    /// A plain user body with the attributes the CSV mapping writes.
    pub fn user_body(row: &UserRow) -> Value {
        let email = row.email.trim();
        let mut u = json!({
            "schemas": [USER_SCHEMA, ENTERPRISE_SCHEMA],
            "userName": email,
            "externalId": row.id,
            "name": { "givenName": row.given_name, "familyName": row.family_name },
            "emails": [ { "value": email, "type": "work", "primary": true } ],
            "active": row.active,
        });
        if !row.display_name.is_empty() {
            u["displayName"] = json!(row.display_name);
        }
        if !row.title.is_empty() {
            u["title"] = json!(row.title);
        }
        if !row.department.is_empty() {
            u[ENTERPRISE_SCHEMA] = json!({ "department": row.department });
        }
        u
    }
}

// ---------------------------------------------------------------------------
// Fake targets for failure modes

/// A TCP listener on loopback that accepts connections and never answers (a hung
/// target). Counts the connections; stops accepting and closes them on drop.
pub struct SilentTarget {
    port: u16,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentTarget {
    pub fn start() -> SilentTarget {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let accepted = Arc::clone(&accepted);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let held: Mutex<Vec<TcpStream>> = Mutex::new(Vec::new());
                // Bounded: at most 10 minutes, or until dropped.
                let deadline = Instant::now() + Duration::from_secs(600);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            held.lock().expect("lock").push(stream);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        SilentTarget {
            port,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v2", self.port)
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for SilentTarget {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Workspace

/// The generated config's rate-limit line and the start of its timeout line,
/// for [`Workspace::edit_config`].
pub const DEFAULT_RATE: &str = "rate_limit: { per_second: 1000, burst: 100 }";
pub const DEFAULT_TIMEOUT_LINE: &str = "  timeout: ";

/// A temporary directory with `users.csv`, `groups.csv`, `config.yaml` and a
/// `state/` folder, running `idsync` against one target.
/// `Workdir`'s files, knobs and runs are the workspace's own (through `Deref`).
pub struct Workspace {
    dir: Workdir,
    pub base_url: String,
    /// `policy.remove_action`: `disable` | `delete`.
    pub remove_action: String,
    /// `policy.max_removals`, e.g. `100%`, `10%`, `5`.
    pub max_removals: String,
    /// `policy.max_member_removals`, e.g. `100%`; `None` leaves it out (the
    /// default applies).
    pub max_member_removals: Option<String>,
    /// `policy.groups.delete`.
    pub groups_delete: bool,
    /// `target.timeout`.
    pub timeout: String,
    /// When set, written as `config.yaml` verbatim instead of the generated config.
    pub raw_config: Option<String>,
    /// Top-level lines appended to the generated config (e.g. an `assign:`
    /// section), each ending in a newline.
    pub extra_config: String,
}

impl Deref for Workspace {
    type Target = Workdir;

    fn deref(&self) -> &Workdir {
        &self.dir
    }
}

impl DerefMut for Workspace {
    fn deref_mut(&mut self) -> &mut Workdir {
        &mut self.dir
    }
}

impl Workspace {
    /// A workspace whose target is `server`, with its token.
    pub fn new(server: &ScimServer) -> Workspace {
        Workspace::with_target(&server.base_url(), server.token())
    }

    pub fn with_target(base_url: &str, token: &str) -> Workspace {
        let mapping = Self::mapping_path();
        assert!(
            mapping.exists(),
            "the default CSV mapping {} is missing; the e2e tests use the repository's own",
            mapping.display()
        );
        let ws = Workspace {
            dir: Workdir::new("idsync-e2e-", token),
            base_url: base_url.to_owned(),
            remove_action: "disable".into(),
            max_removals: "100%".into(),
            max_member_removals: Some("100%".into()),
            groups_delete: true,
            timeout: "10s".into(),
            raw_config: None,
            extra_config: String::new(),
        };
        ws.write_file("users.csv", Directory::default().users_csv().as_bytes());
        ws.write_file("groups.csv", Directory::default().groups_csv().as_bytes());
        ws
    }

    /// Writes `users.csv` and `groups.csv` for `dir`.
    pub fn write_directory(&self, dir: &Directory) {
        self.write_file("users.csv", dir.users_csv().as_bytes());
        self.write_file("groups.csv", dir.groups_csv().as_bytes());
    }

    /// The CSV mapping shipped in the repository, for Atlassian: name parts,
    /// no displayName.
    pub fn shipped_mapping_path() -> PathBuf {
        manifest_dir().join("mappings/csv.yaml")
    }

    /// The shipped CSV mapping with its line for other SCIM targets
    /// uncommented (displayName sent too), as the tests against scim2-server
    /// use it: written once per test binary beside the build.
    pub fn mapping_path() -> PathBuf {
        static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        PATH.get_or_init(|| {
            let shipped = std::fs::read_to_string(Self::shipped_mapping_path())
                .expect("read mappings/csv.yaml");
            let line = "    # displayName: display_name\n";
            assert!(
                shipped.contains(line),
                "mappings/csv.yaml lost its line for other SCIM targets"
            );
            let generic = shipped.replace(line, "    displayName: display_name\n");
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
            let path = dir.join("csv-generic-scim.yaml");
            // Written under a name of this process's own, then renamed: test
            // binaries running at once never read a half-written file.
            let tmp = dir.join(format!("csv-generic-scim.yaml.{}", std::process::id()));
            std::fs::write(&tmp, generic).expect("write the generic mapping");
            std::fs::rename(&tmp, &path).expect("rename the generic mapping");
            path
        })
        .clone()
    }

    /// The config the knobs describe.
    pub fn config_text(&self) -> String {
        if let Some(raw) = &self.raw_config {
            return raw.clone();
        }
        format!(
            "source: {{ kind: csv, users: users.csv, groups: groups.csv }}\n\
             mapping: {mapping}\n\
             target:\n\
             \x20 kind: scim\n\
             \x20 base_url: {base_url}\n\
             \x20 token_env: {TOKEN_ENV}\n\
             \x20 rate_limit: {{ per_second: 1000, burst: 100 }}\n\
             \x20 concurrency: 4\n\
             \x20 timeout: {timeout}\n\
             policy:\n\
             \x20 remove_action: {remove_action}\n\
             \x20 max_removals: {max_removals}\n\
             {member_limit}\
             \x20 groups: {{ provision: true, delete: {groups_delete} }}\n\
             state: state/idsync.db\n\
             {extra}",
            mapping = Self::mapping_path().display(),
            base_url = self.base_url,
            timeout = self.timeout,
            remove_action = self.remove_action,
            max_removals = self.max_removals,
            member_limit = self
                .max_member_removals
                .as_ref()
                .map(|l| format!("  max_member_removals: {l}\n"))
                .unwrap_or_default(),
            groups_delete = self.groups_delete,
            extra = self.extra_config,
        )
    }

    /// Rewrites the config the knobs describe into `raw_config`: each
    /// `(from, to)` must occur in it (e.g. [`DEFAULT_RATE`],
    /// [`DEFAULT_TIMEOUT_LINE`]).
    pub fn edit_config(&mut self, edits: &[(&str, &str)]) {
        self.raw_config = None;
        let mut text = self.config_text();
        for (from, to) in edits {
            assert!(text.contains(from), "config has no {from:?}:\n{text}");
            text = text.replace(from, to);
        }
        self.raw_config = Some(text);
    }

    /// Writes `config.yaml` as the knobs describe it (see [`Workdir::write_config`]).
    pub fn write_config(&self) {
        self.dir.write_config(&self.config_text());
    }

    /// Starts `idsync ARGS -c config.yaml` in the background.
    pub fn spawn(&self, args: &[&str]) -> Running {
        self.dir.spawn(&self.config_text(), args)
    }

    /// Runs `idsync ARGS -c config.yaml` to the end (killed after 120 s).
    pub fn run(&self, args: &[&str]) -> Output {
        self.dir.run(&self.config_text(), args)
    }
}

impl Idsync for Workspace {
    fn run(&self, args: &[&str]) -> Output {
        Workspace::run(self, args)
    }
}

/// A server, a workspace on it, and a generated directory already synced into it
/// (checked).
pub fn synced(n_users: usize, n_groups: usize) -> (ScimServer, Workspace, Directory) {
    let server = ScimServer::start(&fresh_token("e2e"));
    let ws = Workspace::new(&server);
    let dir = Directory::generate(n_users, n_groups);
    ws.write_directory(&dir);
    ws.sync_ok();
    assert_target_matches(&dir, &[], &server.contents());
    (server, ws, dir)
}

/// True when `text` names line `n`: the number `n` standing alone (no digit
/// right before or after it) with the word "line" at most 40 characters before it
/// (`line 5`, `line: 5`, `lines 5 and 9`, `line=5`) or right after a colon
/// (`users.csv:5:`).
pub fn mentions_line(text: &str, n: usize) -> bool {
    let lower = text.to_lowercase();
    let bytes = lower.as_bytes();
    let needle = n.to_string();
    let mut from = 0;
    while let Some(pos) = lower[from..].find(&needle) {
        let start = from + pos;
        let end = start + needle.len();
        from = end;
        let digit_before = start > 0 && bytes[start - 1].is_ascii_digit();
        let digit_after = end < bytes.len() && bytes[end].is_ascii_digit();
        if digit_before || digit_after {
            continue;
        }
        if start > 0 && bytes[start - 1] == b':' {
            return true;
        }
        let mut window_start = start.saturating_sub(40);
        while !lower.is_char_boundary(window_start) {
            window_start -= 1;
        }
        if lower[window_start..start].contains("line") {
            return true;
        }
    }
    false
}

// ---------------------------------------------------------------------------
// CSV directories

/// One row of `users.csv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub id: String,
    pub email: String,
    pub given_name: String,
    pub family_name: String,
    pub display_name: String,
    pub title: String,
    pub department: String,
    pub active: bool,
}

impl UserRow {
    pub fn new(id: &str, email: &str, given: &str, family: &str) -> UserRow {
        UserRow {
            id: id.into(),
            email: email.into(),
            given_name: given.into(),
            family_name: family.into(),
            display_name: format!("{given} {family}"),
            title: "Engineer".into(),
            department: "R&D".into(),
            active: true,
        }
    }

    /// The userName the default mapping derives: the trimmed email.
    pub fn user_name(&self) -> String {
        self.email.trim().to_owned()
    }

    fn fields(&self) -> [String; 8] {
        [
            self.id.clone(),
            self.email.clone(),
            self.given_name.clone(),
            self.family_name.clone(),
            self.display_name.clone(),
            self.title.clone(),
            self.department.clone(),
            if self.active { "true" } else { "false" }.into(),
        ]
    }
}

pub const USERS_HEADER: &str =
    "id,email,given_name,family_name,display_name,title,department,active";
pub const GROUPS_HEADER: &str = "group,member";

/// One field, quoted per RFC 4180 when it needs to be.
pub fn csv_field(s: &str) -> String {
    let needs_quotes = s.contains([',', '"', '\n', '\r'])
        || s.starts_with(' ')
        || s.ends_with(' ')
        || s.starts_with('\t');
    if needs_quotes {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

pub fn csv_line(fields: &[String]) -> String {
    fields
        .iter()
        .map(|f| csv_field(f))
        .collect::<Vec<_>>()
        .join(",")
}

/// A CSV directory: users and groups (group name → member keys; an empty list is a
/// group with no members).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Directory {
    pub users: Vec<UserRow>,
    pub groups: BTreeMap<String, Vec<String>>,
}

/// Names that exercise non-ASCII handling end to end.
const SPECIAL_NAMES: &[(&str, &str)] = &[
    ("Jürgen", "Müller"),
    ("José", "Nuñez"),
    ("Søren", "Østergaard"),
    ("太郎", "山田"),
];
const DEPARTMENTS: &[&str] = &["Engineering", "Sales", "Finance", "Support", "Marketing"];
const TITLES: &[&str] = &[
    "Engineer",
    "Senior Engineer",
    "Manager",
    "Analyst",
    "Director",
];

impl Directory {
    /// `n_users` users (keys `u0001`…) and `n_groups` groups (`group-01`…). The
    /// users include non-ASCII names, a value with a comma and double quotes, a
    /// backslash, an email with surrounding spaces, users without a display name,
    /// and (when `n_users >= 20`) one user with `active=false`. Every active user
    /// is a member of one or two groups; the last group has no members.
    pub fn generate(n_users: usize, n_groups: usize) -> Directory {
        let mut users = Vec::with_capacity(n_users);
        for i in 0..n_users {
            let (given, family) = match SPECIAL_NAMES.get(i) {
                Some((g, f)) => ((*g).to_owned(), (*f).to_owned()),
                None => (format!("Given{i}"), format!("Family{i}")),
            };
            let mut u = UserRow {
                id: format!("u{:04}", i + 1),
                email: format!("user{:04}@example.com", i + 1),
                display_name: format!("{given} {family}"),
                given_name: given,
                family_name: family,
                title: TITLES[i % TITLES.len()].into(),
                department: DEPARTMENTS[i % DEPARTMENTS.len()].into(),
                active: true,
            };
            match i {
                4 => u.title = "Director, \"Special\" Projects".into(),
                5 => u.department = "R\\D Lab".into(),
                6 => u.email = format!("  user{:04}@example.com ", i + 1),
                7 => u.display_name.clear(),
                8 => u.given_name = "Anne-Marie, Jr.".into(),
                _ => {}
            }
            if i == 13 && n_users >= 20 {
                u.active = false;
            }
            users.push(u);
        }
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for g in 0..n_groups {
            groups.insert(format!("group-{:02}", g + 1), Vec::new());
        }
        let names: Vec<String> = groups.keys().cloned().collect();
        // The last group stays empty; the others share the active users.
        let populated = names.len().saturating_sub(1);
        if populated > 0 {
            for (i, u) in users.iter().enumerate().filter(|(_, u)| u.active) {
                let first = &names[i % populated];
                groups.get_mut(first).expect("group").push(u.id.clone());
                if i % 3 == 0 && populated > 1 {
                    let second = &names[(i / 3) % populated];
                    if second != first {
                        groups.get_mut(second).expect("group").push(u.id.clone());
                    }
                }
            }
        }
        Directory { users, groups }
    }

    pub fn user(&self, id: &str) -> &UserRow {
        self.users
            .iter()
            .find(|u| u.id == id)
            .unwrap_or_else(|| panic!("no user {id}"))
    }

    pub fn user_mut(&mut self, id: &str) -> &mut UserRow {
        self.users
            .iter_mut()
            .find(|u| u.id == id)
            .unwrap_or_else(|| panic!("no user {id}"))
    }

    /// Removes a user and their memberships; returns the removed row.
    pub fn remove_user(&mut self, id: &str) -> UserRow {
        let pos = self
            .users
            .iter()
            .position(|u| u.id == id)
            .unwrap_or_else(|| panic!("no user {id}"));
        for members in self.groups.values_mut() {
            members.retain(|m| m != id);
        }
        self.users.remove(pos)
    }

    /// The 1-based line of user `id` in `users.csv` (header is line 1; the
    /// generator writes no embedded line breaks).
    pub fn line_of(&self, id: &str) -> usize {
        2 + self
            .users
            .iter()
            .position(|u| u.id == id)
            .unwrap_or_else(|| panic!("no user {id}"))
    }

    pub fn users_csv(&self) -> String {
        let mut out = String::from(USERS_HEADER);
        out.push('\n');
        for u in &self.users {
            out.push_str(&csv_line(&u.fields()));
            out.push('\n');
        }
        out
    }

    pub fn groups_csv(&self) -> String {
        let mut out = String::from(GROUPS_HEADER);
        out.push('\n');
        for (group, members) in &self.groups {
            if members.is_empty() {
                out.push_str(&csv_line(&[group.clone(), String::new()]));
                out.push('\n');
            }
            for m in members {
                out.push_str(&csv_line(&[group.clone(), m.clone()]));
                out.push('\n');
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------
// Comparing a target with a directory

/// Checks that the target holds exactly what the default CSV mapping makes of
/// `dir`, plus the users of `disabled` (removed from the source under
/// `remove_action: disable`) as inactive accounts. A user with `active=false` in
/// the CSV must be inactive on the target, or absent when it was never
/// provisioned. Panics with a readable list of every difference.
pub fn assert_target_matches(dir: &Directory, disabled: &[UserRow], target: &TargetContents) {
    let mut diffs = Diffs::default();
    let expected = expected_users(dir, disabled);
    let by_name = index_by(&target.users, "userName", true);
    check_user_names(&mut diffs, &expected, &by_name);
    let id_of_key = check_users(&mut diffs, &expected, disabled, &by_name);
    check_groups(&mut diffs, dir, &id_of_key, target);
    diffs.finish(target);
}

/// Expected users by lower-cased userName: (row, expected active).
fn expected_users<'a>(
    dir: &'a Directory,
    disabled: &'a [UserRow],
) -> BTreeMap<String, (&'a UserRow, bool)> {
    let mut expected = BTreeMap::new();
    for u in &dir.users {
        expected.insert(u.user_name().to_lowercase(), (u, u.active));
    }
    for u in disabled {
        expected.insert(u.user_name().to_lowercase(), (u, false));
    }
    expected
}

/// Users on the target that the directory does not have, and userNames held
/// by more than one user.
fn check_user_names(
    diffs: &mut Diffs,
    expected: &BTreeMap<String, (&UserRow, bool)>,
    by_name: &BTreeMap<String, Vec<&Value>>,
) {
    for (name, found) in by_name {
        if !expected.contains_key(name) {
            diffs.push(format!("unexpected user on the target: userName {name:?}"));
        }
        if found.len() > 1 {
            diffs.push(format!(
                "{} users with userName {name:?} (duplicates)",
                found.len()
            ));
        }
    }
}

/// Every expected user, attribute by attribute; returns the SCIM id of every
/// user on the target by key, for group members.
fn check_users<'a>(
    diffs: &mut Diffs,
    expected: &BTreeMap<String, (&'a UserRow, bool)>,
    disabled: &[UserRow],
    by_name: &BTreeMap<String, Vec<&Value>>,
) -> BTreeMap<&'a str, String> {
    let mut id_of_key = BTreeMap::new();
    for (name, (row, active)) in expected {
        let Some(found) = by_name.get(name) else {
            // A user inactive in the source that was never provisioned need not
            // be created (as an inactive account) at all.
            let never_provisioned_inactive = !row.active && !disabled.contains(row);
            if !never_provisioned_inactive {
                diffs.push(format!(
                    "missing user {name:?} (key {}) on the target",
                    row.id
                ));
            }
            continue;
        };
        let u = found[0];
        id_of_key.insert(row.id.as_str(), str_at(u, "id").to_owned());
        check_user(diffs, &format!("user {} ({name})", row.id), row, *active, u);
    }
    id_of_key
}

/// One user on the target against its CSV row.
fn check_user(diffs: &mut Diffs, who: &str, row: &UserRow, active: bool, u: &Value) {
    diffs.check(who, "userName", str_at(u, "userName"), &row.user_name());
    diffs.check(who, "externalId", str_at(u, "externalId"), &row.id);
    let given = attr(u, &["name", "givenName"]);
    diffs.check(who, "name.givenName", given, &row.given_name);
    let family = attr(u, &["name", "familyName"]);
    diffs.check(who, "name.familyName", family, &row.family_name);
    diffs.check(
        who,
        "displayName",
        str_at(u, "displayName"),
        &row.display_name,
    );
    diffs.check(who, "title", str_at(u, "title"), &row.title);
    let department = attr(u, &[ENTERPRISE_SCHEMA, "department"]);
    diffs.check(who, "department", department, &row.department);
    let got_active = u.get("active").and_then(Value::as_bool);
    if got_active != Some(active) {
        diffs.push(format!(
            "{who}: active: target {got_active:?}, expected {active}"
        ));
    }
    diffs.check_one_work_email(who, u, &row.user_name());
}

/// Groups by displayName, members by SCIM id.
fn check_groups(
    diffs: &mut Diffs,
    dir: &Directory,
    id_of_key: &BTreeMap<&str, String>,
    target: &TargetContents,
) {
    let groups_by_name = index_by(&target.groups, "displayName", false);
    for (name, found) in &groups_by_name {
        if !dir.groups.contains_key(name) {
            diffs.push(format!("unexpected group on the target: {name:?}"));
        }
        if found.len() > 1 {
            diffs.push(format!(
                "{} groups named {name:?} (duplicates)",
                found.len()
            ));
        }
    }
    let key_of_id: BTreeMap<&str, &str> =
        id_of_key.iter().map(|(k, id)| (id.as_str(), *k)).collect();
    for (name, members) in &dir.groups {
        let Some(found) = groups_by_name.get(name) else {
            diffs.push(format!("missing group {name:?} on the target"));
            continue;
        };
        let want: BTreeSet<String> = members
            .iter()
            .map(|k| {
                id_of_key
                    .get(k.as_str())
                    .cloned()
                    .unwrap_or_else(|| format!("<id of missing user {k}>"))
            })
            .collect();
        diffs.members(name, &want, &member_ids(found[0]), |id| {
            key_of_id.get(id).map(|k| k.to_string())
        });
    }
}

/// Appends raw bytes to a file (for hand-made broken inputs).
pub fn append_bytes(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(bytes).expect("append");
}
