//! Shared harness of the Active Directory tests: a real Samba AD DC
//! (`scripts/samba-ad.sh`) serving LDAP on 127.0.0.1 only, provisioned once per
//! test binary into a template folder under the target dir (keyed by the
//! script's VERSION) and copied per test, so every test starts from the same
//! directory. Samba's ports (389, 636) are fixed: one instance runs at a time,
//! serialised by a lock held as long as the `Samba` value lives (also across
//! processes, with `flock`). Samba is stopped by its PID on drop, also on
//! panic; every wait is bounded.
//!
//! `Operator` runs the built `idsync` binary against it and a real
//! scim2-server; `Expected` is what the target must hold, computed from the
//! directory itself (read with `ldapsearch` as the Administrator, never through
//! idsync's reader) by applying `mappings/active-directory.yaml`'s rules by hand.

#![allow(dead_code)] // not every test uses every helper

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use crate::support::ldap::{Entry, norm_dn};
use crate::support::ldap::{client, search};
use crate::support::process::{Output, kill, repo, run_bounded};
use crate::support::scim::{ScimServer, TargetContents, str_at};
pub use crate::support::workdir::Idsync;
use crate::support::workdir::{Workdir, scim_target_yaml};

pub const BASE: &str = "DC=corp,DC=example,DC=test";
pub const STAFF: &str = "OU=Staff,DC=corp,DC=example,DC=test";
pub const GROUPS: &str = "OU=Groups,DC=corp,DC=example,DC=test";
pub const ADMIN: &str = "Administrator@corp.example.test";
pub const ADMIN_PW: &str = "Admin-Passw0rd!";
pub const SVC_DN: &str = "CN=svc-idsync,OU=Service Accounts,DC=corp,DC=example,DC=test";
pub const SVC_UPN: &str = "svc-idsync@corp.example.test";
pub const SVC_DOWN_LEVEL: &str = "CORP\\svc-idsync";
pub const SVC_PW: &str = "Svc-Passw0rd!";
pub const LDAPS_URL: &str = "ldaps://127.0.0.1:636";
pub const LDAP_URL: &str = "ldap://127.0.0.1:389";
pub const USER_FILTER: &str = "(&(objectCategory=person)(objectClass=user))";
pub const GROUP_FILTER: &str = "(objectClass=group)";
/// The show-deleted control: lists and changes objects in CN=Deleted Objects.
const SHOW_DELETED: &str = "!1.2.840.113556.1.4.417";

/// The environment variable the generated configs name in `bind_password_env`.
const PASSWORD_ENV: &str = "IDSYNC_TEST_AD_PASSWORD";
/// One `idsync` run may take this long before it is killed (debug build, 2 cores).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// One LDAP client tool run may take this long.
const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

fn script() -> PathBuf {
    repo().join("scripts/samba-ad.sh")
}

// ---------------------------------------------------------------------------
// Samba

/// The provisioned, populated domain every test copies (made once).
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("samba-ad-template");
        let mut cmd = Command::new("bash");
        cmd.arg(script()).arg("template").arg(&dir);
        let out = run_bounded(cmd, Duration::from_secs(600), None);
        assert_eq!(out.code, 0, "provisioning Samba failed:\n{}", out.dump());
        dir
    })
}

/// Serialises the tests of this binary (a `Mutex`) and of any other process
/// (an `flock` on a file next to the template): Samba's ports are fixed.
struct PortLock {
    _thread: MutexGuard<'static, ()>,
    file: std::fs::File,
}

impl PortLock {
    fn take() -> PortLock {
        static LOCK: Mutex<()> = Mutex::new(());
        let thread = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("samba-ad.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .expect("open the Samba lock file");
        let deadline = Instant::now() + Duration::from_secs(900);
        // SAFETY: flock on a file descriptor this value owns.
        while unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            assert!(
                Instant::now() < deadline,
                "another process held {} for 15 minutes",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        PortLock {
            _thread: thread,
            file,
        }
    }
}

impl Drop for PortLock {
    fn drop(&mut self) {
        // SAFETY: unlocking our own descriptor.
        unsafe {
            libc::flock(self.file.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// A running Samba AD DC on a copy of the template. Dropping it stops it.
pub struct Samba {
    // Dropped in order: samba stopped (Drop), then its files, then the lock.
    dir: tempfile::TempDir,
    _lock: PortLock,
}

impl Samba {
    /// Starts a fresh copy of the test domain, with the test CA's certificate.
    pub fn start() -> Samba {
        Samba::start_with(false)
    }

    /// Starts it with the certificate Samba generates for itself (no
    /// subjectAltName), in `private/tls/`.
    pub fn start_with_samba_certificate() -> Samba {
        Samba::start_with(true)
    }

    fn start_with(own_certificate: bool) -> Samba {
        // The lock first: provisioning starts a Samba too.
        let lock = PortLock::take();
        let template = template();
        let dir = tempfile::Builder::new()
            .prefix("idsync-samba-")
            .tempdir()
            .expect("temp dir");
        let copy = dir.path().join("ad");
        let mut cp = Command::new("cp");
        cp.arg("-a").arg(template).arg(&copy);
        let out = run_bounded(cp, Duration::from_secs(120), None);
        assert_eq!(out.code, 0, "copying the template failed:\n{}", out.dump());
        let samba = Samba { dir, _lock: lock };
        let mut cmd = Command::new("bash");
        cmd.arg(script()).arg("start").arg(&copy);
        if own_certificate {
            cmd.env("SAMBA_AD_TLS", "self");
        }
        let out = run_bounded(cmd, Duration::from_secs(120), None);
        assert_eq!(out.code, 0, "Samba did not start:\n{}", out.dump());
        samba
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().join("ad")
    }

    /// The PEM file of the test CA, which signed Samba's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir().join("tls/ca.pem")
    }

    /// The CA Samba made for its own certificate (`start_with_samba_certificate`).
    pub fn samba_ca_file(&self) -> PathBuf {
        self.dir().join("private/tls/ca.pem")
    }

    fn tool(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = client(tool, LDAPS_URL, 20);
        cmd.env("LDAPTLS_CACERT", self.ca_file())
            .args(["-D", ADMIN, "-w", ADMIN_PW])
            .args(args);
        run_bounded(cmd, TOOL_TIMEOUT, stdin)
    }

    /// Applies LDIF changes as the Administrator.
    pub fn modify(&self, ldif: &str) {
        let out = self.tool("ldapmodify", &[], Some(ldif));
        assert_eq!(out.code, 0, "ldapmodify failed for\n{ldif}\n{}", out.dump());
    }

    /// Like `modify`, expecting the server to refuse.
    pub fn modify_refused(&self, ldif: &str) -> Output {
        let out = self.tool("ldapmodify", &[], Some(ldif));
        assert_ne!(out.code, 0, "ldapmodify should have failed for\n{ldif}");
        out
    }

    pub fn delete(&self, dn: &str) {
        let out = self.tool("ldapdelete", &[dn], None);
        assert_eq!(out.code, 0, "ldapdelete {dn} failed:\n{}", out.dump());
    }

    /// Entries under `base` matching `filter`, with `attrs`.
    pub fn search(&self, base: &str, filter: &str, attrs: &[&str]) -> Vec<Entry> {
        self.search_with(&[], base, filter, attrs)
    }

    fn search_with(&self, extra: &[&str], base: &str, filter: &str, attrs: &[&str]) -> Vec<Entry> {
        search(
            |args| self.tool("ldapsearch", args, None),
            extra,
            base,
            filter,
            attrs,
        )
    }

    /// The one entry at `dn`.
    pub fn entry(&self, dn: &str, attrs: &[&str]) -> Entry {
        self.search_with(&["-s", "base"], dn, "(objectClass=*)", attrs)
            .pop()
            .unwrap_or_else(|| panic!("no entry {dn}"))
    }

    /// Restores the deleted object whose `objectGUID` is `guid` to `dn` (as
    /// AD's Recycle Bin-less reanimation does: the same object, the same GUID;
    /// the attributes a tombstone drops are written again afterwards).
    pub fn restore(&self, guid: &str, dn: &str, attrs: &[(&str, &str)]) {
        let deleted = self.search_with(
            &["-E", SHOW_DELETED],
            &format!("CN=Deleted Objects,{BASE}"),
            &format!("(objectGUID={})", guid_filter_value(guid)),
            &["isDeleted"],
        );
        let tombstone = &deleted
            .first()
            .unwrap_or_else(|| panic!("no deleted object with objectGUID {guid}"))
            .dn;
        let ldif = format!(
            "dn: {tombstone}\nchangetype: modify\ndelete: isDeleted\n-\nreplace: distinguishedName\ndistinguishedName: {dn}\n-\n"
        );
        let out = self.tool("ldapmodify", &["-e", SHOW_DELETED], Some(&ldif));
        assert_eq!(out.code, 0, "restoring {guid} failed:\n{}", out.dump());
        if !attrs.is_empty() {
            let mut ldif = format!("dn: {dn}\nchangetype: modify\n");
            for (name, value) in attrs {
                ldif.push_str(&format!("replace: {name}\n{name}: {value}\n-\n"));
            }
            self.modify(&ldif);
        }
    }

    /// A group's RID (the last sub-authority of its objectSid).
    pub fn rid(&self, dn: &str) -> u32 {
        let entry = self.entry(dn, &["objectSid"]);
        let sid = entry.bytes("objectSid").expect("objectSid");
        u32::from_le_bytes(sid[sid.len() - 4..].try_into().expect("4 bytes"))
    }
}

impl Drop for Samba {
    fn drop(&mut self) {
        let dir = self.dir();
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // If the script could not run: kill by the PID it recorded.
        if let Ok(pid) = std::fs::read_to_string(dir.join("run/samba.pid"))
            && let Ok(pid) = pid.trim().parse::<u32>()
        {
            let _ = kill("KILL", pid);
        }
    }
}

// ---------------------------------------------------------------------------
// GUIDs

impl Entry {
    /// The objectGUID in its canonical text form (what idsync keys users by).
    pub fn guid(&self) -> String {
        let b = self.bytes("objectGUID").expect("objectGUID");
        assert_eq!(b.len(), 16, "objectGUID of {}", self.dn);
        let hex = |r: &[u8]| r.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let rev = |r: &[u8]| r.iter().rev().copied().collect::<Vec<u8>>();
        format!(
            "{}-{}-{}-{}-{}",
            hex(&rev(&b[0..4])),
            hex(&rev(&b[4..6])),
            hex(&rev(&b[6..8])),
            hex(&b[8..10]),
            hex(&b[10..16])
        )
    }
}

/// A GUID as an LDAP filter value: its 16 bytes escaped as `\xx`.
fn guid_filter_value(guid: &str) -> String {
    let hex: String = guid.chars().filter(|c| *c != '-').collect();
    let byte = |i: usize| &hex[2 * i..2 * i + 2];
    let order = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
    order.iter().map(|&i| format!("\\{}", byte(i))).collect()
}

// ---------------------------------------------------------------------------
// What the target must hold

/// A user as `mappings/active-directory.yaml` maps it.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpectedUser {
    pub guid: String,
    pub user_name: String,
    pub given: String,
    pub family: String,
    pub active: bool,
}

/// The target, as computed from the directory.
#[derive(Debug)]
pub struct Expected {
    /// In-scope users by userName, folded to lower case. Any other user in
    /// the target must be inactive (removed under `remove_action: disable`).
    pub users: BTreeMap<String, ExpectedUser>,
    /// Groups by display name: the folded userNames of their flattened members.
    pub groups: BTreeMap<String, BTreeSet<String>>,
    /// Display names two or more groups share: such groups are held.
    pub shared_names: BTreeSet<String>,
}

impl Expected {
    /// Reads the directory and applies the mapping's rules; groups are named by
    /// `name_attribute` (`cn` or `sAMAccountName`).
    pub fn of(samba: &Samba, name_attribute: &str) -> Expected {
        let users = samba.search(
            BASE,
            USER_FILTER,
            &[
                "objectGUID",
                "objectSid",
                "mail",
                "userPrincipalName",
                "givenName",
                "sn",
                "sAMAccountName",
                "userAccountControl",
                "primaryGroupID",
            ],
        );
        let mut by_dn: HashMap<String, String> = HashMap::new();
        let mut by_primary: HashMap<u32, Vec<String>> = HashMap::new();
        let mut expected_users = BTreeMap::new();
        for u in &users {
            let Some(upn) = u.text("userPrincipalName") else {
                continue;
            };
            let sam = u.text("sAMAccountName").unwrap_or_default();
            if sam.ends_with('$') {
                continue;
            }
            let user_name = u.text("mail").unwrap_or(upn).trim().to_string();
            let uac: u32 = u
                .text("userAccountControl")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            by_dn.insert(norm_dn(&u.dn), user_name.to_lowercase());
            if let Some(rid) = u.text("primaryGroupID").and_then(|v| v.parse().ok()) {
                by_primary
                    .entry(rid)
                    .or_default()
                    .push(user_name.to_lowercase());
            }
            expected_users.insert(
                user_name.to_lowercase(),
                ExpectedUser {
                    guid: u.guid(),
                    user_name,
                    given: u.text("givenName").unwrap_or_default(),
                    family: u.text("sn").unwrap_or_default(),
                    active: uac & 2 == 0,
                },
            );
        }

        let groups = samba.search(
            BASE,
            &format!("(&{GROUP_FILTER}(!(isCriticalSystemObject=TRUE)))"),
            &["cn", "sAMAccountName", "member", "objectSid"],
        );
        let groups: Vec<&Entry> = groups
            .iter()
            .filter(|g| !norm_dn(&g.dn).contains(",cn=builtin,dc="))
            .collect();
        let index: HashMap<String, usize> = groups
            .iter()
            .enumerate()
            .map(|(i, g)| (norm_dn(&g.dn), i))
            .collect();
        let flatten = |start: usize| -> BTreeSet<String> {
            let mut seen = BTreeSet::from([start]);
            let mut todo = vec![start];
            let mut members = BTreeSet::new();
            while let Some(g) = todo.pop() {
                let group = groups[g];
                let sid = group.bytes("objectSid").expect("objectSid");
                let rid = u32::from_le_bytes(sid[sid.len() - 4..].try_into().expect("rid"));
                members.extend(by_primary.get(&rid).into_iter().flatten().cloned());
                for m in group.texts("member") {
                    let m = norm_dn(&m);
                    if let Some(user) = by_dn.get(&m) {
                        members.insert(user.clone());
                    } else if let Some(&child) = index.get(&m)
                        && seen.insert(child)
                    {
                        todo.push(child);
                    }
                }
            }
            members
        };
        let mut named: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, g) in groups.iter().enumerate() {
            let name = g.text(name_attribute).expect("group name");
            named.entry(name.to_lowercase()).or_default().push(i);
        }
        let mut expected_groups = BTreeMap::new();
        let mut shared_names = BTreeSet::new();
        for (folded, list) in named {
            if list.len() > 1 {
                shared_names.insert(folded);
                continue;
            }
            let g = groups[list[0]];
            expected_groups.insert(g.text(name_attribute).expect("name"), flatten(list[0]));
        }
        Expected {
            users: expected_users,
            groups: expected_groups,
            shared_names,
        }
    }

    /// Compares the target with this expectation; panics naming every difference.
    pub fn assert_matches(&self, target: &TargetContents) {
        let mut problems = Vec::new();
        let mut id_to_name: HashMap<&str, String> = HashMap::new();
        for u in &target.users {
            id_to_name.insert(str_at(u, "id"), str_at(u, "userName").to_lowercase());
        }
        for (folded, e) in &self.users {
            let found = target.users_named(&e.user_name);
            match (found.as_slice(), e.active) {
                ([], false) => {} // never created just to be disabled
                ([], true) => problems.push(format!("user {} is missing", e.user_name)),
                ([u], _) => {
                    let active = u.get("active").and_then(Value::as_bool).unwrap_or(true);
                    let checks = [
                        (
                            "externalId",
                            str_at(u, "externalId").to_string(),
                            e.guid.clone(),
                        ),
                        ("active", active.to_string(), e.active.to_string()),
                        (
                            "name.givenName",
                            u.pointer("/name/givenName")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_string(),
                            e.given.clone(),
                        ),
                        (
                            "name.familyName",
                            u.pointer("/name/familyName")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_string(),
                            e.family.clone(),
                        ),
                        (
                            "emails",
                            u.pointer("/emails/0/value")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_lowercase(),
                            folded.clone(),
                        ),
                    ];
                    for (what, got, want) in checks {
                        if got != want {
                            problems.push(format!(
                                "user {}: {what} is {got:?}, expected {want:?}",
                                e.user_name
                            ));
                        }
                    }
                }
                (many, _) => problems.push(format!(
                    "{} users named {} in the target",
                    many.len(),
                    e.user_name
                )),
            }
        }
        for u in &target.users {
            let name = str_at(u, "userName").to_lowercase();
            let active = u.get("active").and_then(Value::as_bool).unwrap_or(true);
            if !self.users.contains_key(&name) && active {
                problems.push(format!(
                    "user {name} is active in the target but not an in-scope user of the directory"
                ));
            }
        }
        for (name, members) in &self.groups {
            let Some(g) = target.group(name) else {
                problems.push(format!("group {name:?} is missing"));
                continue;
            };
            let got: BTreeSet<String> = g
                .get("members")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|m| id_to_name.get(str_at(m, "value")).cloned())
                .collect();
            // Members the target has as accounts (a disabled user never created is not).
            let want: BTreeSet<String> = members
                .iter()
                .filter(|m| !target.users_named(m).is_empty())
                .cloned()
                .collect();
            if got != want {
                let extra: Vec<_> = got.difference(&want).collect();
                let missing: Vec<_> = want.difference(&got).collect();
                problems.push(format!(
                    "group {name:?}: members not in the directory {extra:?}, missing {missing:?}"
                ));
            }
        }
        for g in &target.groups {
            let name = str_at(g, "displayName");
            if !self.groups.contains_key(name) && !self.shared_names.contains(&name.to_lowercase())
            {
                problems.push(format!("group {name:?} is in the target but not expected"));
            }
        }
        assert!(
            problems.is_empty(),
            "the target does not match the directory:\n  {}",
            problems.join("\n  ")
        );
    }
}

// ---------------------------------------------------------------------------
// Running idsync

/// A temp dir with `config.yaml` (this AD → a scim2-server) and `state/`.
pub struct Operator {
    dir: Workdir,
    pub url: String,
    pub bind_dn: String,
    pub ca_file: Option<PathBuf>,
    /// More `source:` lines, each ending in a newline.
    pub extra_source: String,
    /// More `policy:` lines, each ending in a newline.
    pub extra_policy: String,
    scim_url: String,
}

impl Operator {
    pub fn new(samba: &Samba, server: &ScimServer) -> Operator {
        let mut dir = Workdir::new("idsync-ad-e2e-", server.token());
        dir.run_timeout = RUN_TIMEOUT;
        Operator {
            dir,
            url: LDAPS_URL.into(),
            bind_dn: SVC_DN.into(),
            ca_file: Some(samba.ca_file()),
            extra_source: String::new(),
            extra_policy: String::new(),
            scim_url: server.base_url(),
        }
    }

    fn config(&self) -> String {
        let ca = self
            .ca_file
            .as_ref()
            .map(|p| format!("  ca_file: {}\n", p.display()))
            .unwrap_or_default();
        format!(
            "source:\n\
             \x20 kind: ldap\n\
             \x20 url: {url}\n\
             {ca}\
             \x20 bind_dn: '{bind_dn}'\n\
             \x20 bind_password_env: {PASSWORD_ENV}\n\
             \x20 base_dn: {BASE}\n\
             \x20 user_filter: \"{USER_FILTER}\"\n\
             \x20 group_filter: \"{GROUP_FILTER}\"\n\
             \x20 key_attribute: objectGUID\n\
             \x20 timeout: 20s\n\
             {extra}\
             mapping: {mapping}\n\
             {target}\
             policy:\n\
             \x20 remove_action: disable\n\
             \x20 max_removals: 10%\n\
             \x20 groups: {{ provision: true, delete: true }}\n\
             {policy}\
             state: state/idsync.db\n",
            url = self.url,
            bind_dn = self.bind_dn,
            extra = self.extra_source,
            policy = self.extra_policy,
            mapping = repo().join("mappings/active-directory.yaml").display(),
            target = scim_target_yaml(&self.scim_url, "30s"),
        )
    }

    /// `sync --format json`, which must exit `code`.
    pub fn sync(&self, code: i32) -> Value {
        self.run(&["sync", "--format", "json"])
            .assert_code(code)
            .json()
    }
}

impl Idsync for Operator {
    /// Runs `idsync SUB -c config.yaml REST…`; panics if a password or the
    /// token shows up in what it printed.
    fn run(&self, args: &[&str]) -> Output {
        let env = [(PASSWORD_ENV, SVC_PW)];
        self.dir
            .run_with(&self.config(), args, &env, &[SVC_PW, ADMIN_PW])
    }
}
