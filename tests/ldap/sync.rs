//! End to end, as an operator runs it: the built `idsync` binary reads a real
//! slapd (scripts/slapd.sh, the sync account limited to 1000 entries per plain
//! search) and writes into a real scim2-server, with the repository's default
//! mapping `mappings/ldap-inetorgperson.yaml`. Every test has its own slapd, its
//! own SCIM server and its own temp dir (config + state DB).
//!
//! The expected target is computed from the directory itself: after every change
//! the test reads the directory as the rootdn with `ldapsearch` (not through
//! idsync's reader), applies the mapping's rules by hand, flattens nested groups
//! and compares the SCIM server's users and groups attribute by attribute.

#[path = "../e2e/harness.rs"]
mod scim;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    ADMIN_DN, ADMIN_PW, GROUPS, LIMITED_DN, LIMITED_PW, Ldif, PEOPLE, SUFFIX, SYNC_DN, SYNC_PW,
    Slapd,
};
use scim::{ENTERPRISE_SCHEMA, Output, ScimServer, TargetContents, fresh_token, str_at};

/// The environment variable the generated configs name in `bind_password_env`.
const PASSWORD_ENV: &str = "IDSYNC_TEST_LDAP_PASSWORD";
/// One `idsync` run may take this long before it is killed (debug build, 2 cores).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// refint rewrites `member` values about 100 ms after a rename or delete.
const REFINT_WAIT: Duration = Duration::from_secs(10);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// Running idsync

/// A temp dir with `config.yaml` (LDAP source → SCIM target) and `state/`.
struct Operator {
    dir: tempfile::TempDir,
    ldap_url: String,
    scim_url: String,
    token: String,
    /// `source.bind_dn`.
    bind_dn: String,
    /// What `PASSWORD_ENV` holds for the next runs.
    password: String,
    /// `source.timeout`.
    ldap_timeout: &'static str,
    /// More `source:` lines (TLS settings), each ending in a newline.
    extra_source: String,
}

impl Operator {
    fn new(slapd: &Slapd, server: &ScimServer) -> Operator {
        let dir = tempfile::Builder::new()
            .prefix("idsync-ldap-e2e-")
            .tempdir()
            .expect("tempdir");
        std::fs::create_dir_all(dir.path().join("state")).expect("state dir");
        Operator {
            dir,
            ldap_url: slapd.url.clone(),
            scim_url: server.base_url(),
            token: server.token().to_owned(),
            bind_dn: SYNC_DN.to_owned(),
            password: SYNC_PW.to_owned(),
            ldap_timeout: "10s",
            extra_source: String::new(),
        }
    }

    fn config(&self) -> String {
        format!(
            "source:\n\
             \x20 kind: ldap\n\
             \x20 url: {url}\n\
             \x20 bind_dn: {bind_dn}\n\
             \x20 bind_password_env: {PASSWORD_ENV}\n\
             \x20 base_dn: {SUFFIX}\n\
             \x20 timeout: {timeout}\n\
             {extra}\
             mapping: {mapping}\n\
             target:\n\
             \x20 kind: scim\n\
             \x20 base_url: {scim}\n\
             \x20 token_env: {token_env}\n\
             \x20 concurrency: 4\n\
             \x20 timeout: 30s\n\
             policy:\n\
             \x20 remove_action: disable\n\
             \x20 max_removals: 5%\n\
             \x20 groups: {{ provision: true, delete: true }}\n\
             state: state/idsync.db\n",
            url = self.ldap_url,
            bind_dn = self.bind_dn,
            timeout = self.ldap_timeout,
            extra = self.extra_source,
            mapping = repo().join("mappings/ldap-inetorgperson.yaml").display(),
            scim = self.scim_url,
            token_env = scim::TOKEN_ENV,
        )
    }

    /// Runs `idsync SUB -c config.yaml REST…`; panics if a password or the token
    /// shows up in what it printed.
    fn run(&self, args: &[&str]) -> Output {
        let config = self.dir.path().join("config.yaml");
        std::fs::write(&config, self.config()).expect("write config");
        let mut full: Vec<String> = vec![args[0].to_owned(), "-c".into()];
        full.push(config.display().to_string());
        full.extend(args[1..].iter().map(|s| (*s).to_owned()));
        run_idsync(
            self.dir.path(),
            &full,
            &[
                (PASSWORD_ENV, self.password.as_str()),
                (scim::TOKEN_ENV, self.token.as_str()),
            ],
            &[
                self.password.as_str(),
                SYNC_PW,
                ADMIN_PW,
                LIMITED_PW,
                self.token.as_str(),
            ],
        )
    }

    fn sync_ok(&self) -> Value {
        self.run(&["sync", "--format", "json"])
            .assert_code(0)
            .json()
    }

    fn plan_json(&self) -> Value {
        self.run(&["plan", "--format", "json"])
            .assert_code(0)
            .json()
    }

    fn assert_plan_empty(&self) {
        let plan = self.plan_json();
        assert!(
            scim::operations(&plan).is_empty(),
            "expected an empty plan, got:\n{}",
            serde_json::to_string_pretty(&plan).unwrap_or_default()
        );
    }

    fn state_db(&self) -> PathBuf {
        self.dir.path().join("state/idsync.db")
    }
}

/// Runs the built binary with `env`, bounded by `RUN_TIMEOUT`, and checks that
/// none of `secrets` appears in its output.
fn run_idsync(cwd: &Path, args: &[String], env: &[(&str, &str)], secrets: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_idsync"));
    cmd.args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .env_remove("IDSYNC_CONFIG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn idsync");
    let pipe = |p: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = pipe(child.stdout.take().map(|p| Box::new(p) as _));
    let err = pipe(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = Instant::now() + RUN_TIMEOUT;
    let code = loop {
        if let Some(status) = child.try_wait().expect("wait for idsync") {
            break status.code().unwrap_or(-1);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`idsync {}` did not finish within {RUN_TIMEOUT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = Output {
        code,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        args: args.to_vec(),
    };
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        for (stream, text) in [("stdout", &output.stdout), ("stderr", &output.stderr)] {
            assert!(
                !text.contains(secret),
                "a secret appears in the {stream} of `idsync {}`:\n{}",
                args.join(" "),
                output.dump()
            );
        }
    }
    output
}

// ---------------------------------------------------------------------------
// Test data

const NAMES: [(&str, &str); 6] = [
    ("Jörg", "Müller"),
    ("Inés", "Nuñez"),
    ("Søren", "Østergaard"),
    ("Ann", "Smith"),
    ("Zoë", "Łukasiewicz"),
    ("François", "D'Aubigné"),
];
const TITLES: [&str; 4] = ["Engineer", "Senior Engineer", "Manager", "Analyst"];
const TEAMS: usize = 10;

fn team_dn(t: usize) -> String {
    format!("cn=team-{t:02},{GROUPS}")
}

/// The DN of generated user `i`: `uid=userNNNNN`, except every 250th, which has a
/// non-ASCII `cn=` RDN.
fn user_dn(i: usize) -> String {
    if i.is_multiple_of(250) {
        let (given, family) = NAMES[i % NAMES.len()];
        format!("cn={given} {family} {i},{PEOPLE}")
    } else {
        format!("uid=user{i:05},{PEOPLE}")
    }
}

fn user_mail(i: usize) -> String {
    // A few mixed-case addresses: userName keeps the case it has in the directory.
    if i.is_multiple_of(97) {
        format!("User{i:05}@Example.COM")
    } else {
        format!("user{i:05}@example.com")
    }
}

/// `n` inetOrgPerson users, every `mail` unique; every 50th has no `mail` (out of
/// scope for the default mapping), every 11th no `title`; `departmentNumber` or
/// `ou` feed `department`. Groups: `team-00`…`team-09` (user i in team i % 10),
/// `engineering` (teams 01 and 02 nested, one direct member, one member outside
/// the base DN), `all-staff` (engineering nested two levels deep, plus a user),
/// `Fußball-Team` (a non-ASCII name), and `empty-ish` whose only member is
/// outside the base.
fn directory(n: usize) -> String {
    let mut ldif = Ldif::default();
    for i in 1..=n {
        let (given, family) = NAMES[i % NAMES.len()];
        let uid = format!("user{i:05}");
        let cn = format!("{given} {family} {i}");
        let mail = user_mail(i);
        let employee = i.to_string();
        let dept = format!("D{:02}", i % 13);
        let mut attrs: Vec<(&str, &str)> = vec![
            ("objectClass", "inetOrgPerson"),
            ("uid", &uid),
            ("cn", &cn),
            ("givenName", given),
            ("sn", family),
            ("employeeNumber", &employee),
        ];
        if !i.is_multiple_of(50) {
            attrs.push(("mail", &mail));
        }
        if !i.is_multiple_of(11) {
            attrs.push(("title", TITLES[i % TITLES.len()]));
        }
        if i.is_multiple_of(3) {
            attrs.push(("departmentNumber", &dept));
        } else if i % 3 == 1 {
            attrs.push(("ou", "People Ops"));
        }
        ldif.entry(&user_dn(i), &attrs);
    }
    for t in 0..TEAMS {
        let cn = format!("team-{t:02}");
        let members: Vec<String> = (1..=n).filter(|i| i % TEAMS == t).map(user_dn).collect();
        let mut attrs: Vec<(&str, &str)> = vec![("objectClass", "groupOfNames"), ("cn", &cn)];
        attrs.extend(members.iter().map(|m| ("member", m.as_str())));
        ldif.entry(&team_dn(t), &attrs);
    }
    let outside = "uid=ghost,ou=people,dc=elsewhere,dc=org";
    let (t1, t2, u3) = (team_dn(1), team_dn(2), user_dn(3));
    ldif.entry(
        &format!("cn=engineering,{GROUPS}"),
        &[
            ("objectClass", "groupOfNames"),
            ("cn", "engineering"),
            ("member", &t1),
            ("member", &t2),
            ("member", &u3),
            ("member", outside),
        ],
    );
    let (eng, u4, u5) = (format!("cn=engineering,{GROUPS}"), user_dn(4), user_dn(5));
    ldif.entry(
        &format!("cn=all-staff,{GROUPS}"),
        &[
            ("objectClass", "groupOfNames"),
            ("cn", "all-staff"),
            ("member", &eng),
            ("member", &u4),
        ],
    );
    let u250 = user_dn(250.min(n));
    ldif.entry(
        &format!("cn=Fußball-Team,{GROUPS}"),
        &[
            ("objectClass", "groupOfNames"),
            ("cn", "Fußball-Team"),
            ("member", &u5),
            ("member", &u250),
        ],
    );
    ldif.entry(
        &format!("cn=empty-ish,{GROUPS}"),
        &[
            ("objectClass", "groupOfNames"),
            ("cn", "empty-ish"),
            ("member", outside),
        ],
    );
    ldif.text().to_owned()
}

// ---------------------------------------------------------------------------
// The directory as the rootdn sees it, and what the target should hold

/// One entry of `ldapsearch -LLL` output: DN and attributes (names lower-cased).
#[derive(Debug, Clone)]
struct Entry {
    dn: String,
    attrs: BTreeMap<String, Vec<String>>,
}

impl Entry {
    fn first(&self, name: &str) -> Option<&str> {
        self.attrs
            .get(&name.to_lowercase())
            .and_then(|v| v.iter().map(String::as_str).find(|s| !s.trim().is_empty()))
    }

    fn all(&self, name: &str) -> &[String] {
        self.attrs
            .get(&name.to_lowercase())
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    fn has_class(&self, class: &str) -> bool {
        self.all("objectClass")
            .iter()
            .any(|c| c.eq_ignore_ascii_case(class))
    }
}

/// Every user and group under the suffix, read as the rootdn (no size limit).
fn read_as_admin(slapd: &Slapd) -> Vec<Entry> {
    let out = slapd.tool(
        "ldapsearch",
        &[
            "-LLL",
            "-o",
            "ldif-wrap=no",
            "-D",
            ADMIN_DN,
            "-w",
            ADMIN_PW,
            "-b",
            SUFFIX,
            "(|(objectClass=inetOrgPerson)(objectClass=groupOfNames))",
            "*",
            "entryUUID",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "ldapsearch as admin failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_ldif(&String::from_utf8(out.stdout).expect("ldapsearch prints UTF-8 LDIF"))
}

fn parse_ldif(text: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    for block in text.split("\n\n") {
        let mut dn = None;
        let mut attrs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for line in block
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (name, value) = if let Some((n, v)) = line.split_once(":: ") {
                let bytes = base64_decode(v.trim());
                (n, String::from_utf8(bytes).expect("UTF-8 value"))
            } else if let Some((n, v)) = line.split_once(": ") {
                (n, v.to_owned())
            } else if let Some(n) = line.strip_suffix(':') {
                (n, String::new())
            } else {
                panic!("unexpected LDIF line {line:?}");
            };
            if name.eq_ignore_ascii_case("dn") {
                dn = Some(value);
            } else {
                attrs.entry(name.to_lowercase()).or_default().push(value);
            }
        }
        if let Some(dn) = dn {
            entries.push(Entry { dn, attrs });
        }
    }
    entries
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {text:?}"),
        }
    };
    let mut out = Vec::new();
    for chunk in text.as_bytes().chunks(4) {
        let data: Vec<u8> = chunk.iter().copied().filter(|&c| c != b'=').collect();
        let n = data
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | value(c) << (18 - 6 * i));
        for i in 0..data.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// DNs compared the way the tests write them (case and spaces after commas).
fn norm_dn(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| rdn.trim().to_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

/// What the default inetOrgPerson mapping makes of one directory user.
#[derive(Debug, Clone)]
struct WantUser {
    dn: String,
    key: String,
    user_name: String,
    given: String,
    family: String,
    display: String,
    title: String,
    department: String,
    employee_number: String,
}

#[derive(Debug, Clone)]
struct WantGroup {
    name: String,
    /// Keys of the in-scope users reachable through `member`, nesting flattened.
    members: BTreeSet<String>,
}

#[derive(Debug, Clone)]
struct Want {
    users: BTreeMap<String, WantUser>,
    /// Users without `mail`: in the directory, out of scope.
    out_of_scope: BTreeSet<String>,
    groups: BTreeMap<String, WantGroup>,
}

/// Applies mappings/ldap-inetorgperson.yaml by hand.
fn expected(entries: &[Entry]) -> Want {
    let mut users = BTreeMap::new();
    let mut out_of_scope = BTreeSet::new();
    let mut key_of_dn: HashMap<String, String> = HashMap::new();
    let mut group_members: HashMap<String, Vec<String>> = HashMap::new();
    let mut groups_raw = Vec::new();
    for e in entries {
        let key = e.first("entryUUID").expect("entryUUID").to_owned();
        if e.has_class("inetOrgPerson") {
            let Some(mail) = e.first("mail") else {
                out_of_scope.insert(key);
                continue;
            };
            key_of_dn.insert(norm_dn(&e.dn), key.clone());
            let get = |a: &str| e.first(a).unwrap_or("").trim().to_owned();
            let department = e
                .first("departmentNumber")
                .or_else(|| e.first("ou"))
                .unwrap_or("")
                .trim()
                .to_owned();
            users.insert(
                key.clone(),
                WantUser {
                    dn: e.dn.clone(),
                    key,
                    user_name: mail.trim().to_owned(),
                    given: get("givenName"),
                    family: get("sn"),
                    // The mapping sends the name parts, not displayName.
                    display: String::new(),
                    title: get("title"),
                    department,
                    employee_number: get("employeeNumber"),
                },
            );
        } else if e.has_class("groupOfNames") {
            group_members.insert(
                norm_dn(&e.dn),
                e.all("member").iter().map(|m| norm_dn(m)).collect(),
            );
            groups_raw.push((
                key,
                e.first("cn").expect("group cn").to_owned(),
                e.dn.clone(),
            ));
        }
    }
    let mut groups = BTreeMap::new();
    for (key, name, dn) in groups_raw {
        let mut members = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut todo = vec![norm_dn(&dn)];
        while let Some(g) = todo.pop() {
            if !seen.insert(g.clone()) {
                continue;
            }
            for m in group_members.get(&g).into_iter().flatten() {
                if let Some(k) = key_of_dn.get(m) {
                    members.insert(k.clone());
                } else if group_members.contains_key(m) {
                    todo.push(m.clone());
                }
            }
        }
        groups.insert(key, WantGroup { name, members });
    }
    Want {
        users,
        out_of_scope,
        groups,
    }
}

fn enterprise<'a>(u: &'a Value, field: &str) -> &'a str {
    u.get(ENTERPRISE_SCHEMA)
        .and_then(|e| e.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn name_part<'a>(u: &'a Value, field: &str) -> &'a str {
    u.get("name")
        .and_then(|n| n.get(field))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Checks that the target holds exactly `want` (users active) plus `disabled`
/// (keys removed from the directory: inactive, still there), and returns the
/// SCIM id of every user by key. Panics listing every difference.
fn assert_target(
    want: &Want,
    disabled: &BTreeSet<String>,
    target: &TargetContents,
) -> HashMap<String, String> {
    let mut diffs: Vec<String> = Vec::new();
    let mut by_key: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for u in &target.users {
        by_key.entry(str_at(u, "externalId")).or_default().push(u);
    }
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    for u in &target.users {
        *names
            .entry(str_at(u, "userName").to_lowercase())
            .or_default() += 1;
    }
    for (name, n) in names.iter().filter(|(_, n)| **n > 1) {
        diffs.push(format!("{n} users with userName {name:?}"));
    }
    for (key, found) in &by_key {
        if !want.users.contains_key(*key) && !disabled.contains(*key) {
            let what = if want.out_of_scope.contains(*key) {
                "a user without mail (out of scope)"
            } else {
                "an unexpected user"
            };
            diffs.push(format!("{what} on the target: externalId {key:?}"));
        }
        if found.len() > 1 {
            diffs.push(format!("{} users with externalId {key:?}", found.len()));
        }
    }
    let mut ids = HashMap::new();
    for key in disabled {
        match by_key.get(key.as_str()) {
            None => diffs.push(format!("disabled user {key} is gone from the target")),
            Some(found) => {
                ids.insert(key.clone(), str_at(found[0], "id").to_owned());
                if found[0].get("active").and_then(Value::as_bool) != Some(false) {
                    diffs.push(format!(
                        "user {key} was removed from the directory but is active on the target"
                    ));
                }
            }
        }
    }
    for (key, w) in &want.users {
        let Some(found) = by_key.get(key.as_str()) else {
            diffs.push(format!(
                "missing user {} ({}) on the target",
                w.user_name, w.dn
            ));
            continue;
        };
        let u = found[0];
        ids.insert(key.clone(), str_at(u, "id").to_owned());
        let who = format!("user {} ({})", w.user_name, w.dn);
        let mut check = |what: &str, got: &str, want: &str| {
            if got != want {
                diffs.push(format!("{who}: {what}: target {got:?}, directory {want:?}"));
            }
        };
        check("userName", str_at(u, "userName"), &w.user_name);
        check("externalId", str_at(u, "externalId"), &w.key);
        check("name.givenName", name_part(u, "givenName"), &w.given);
        check("name.familyName", name_part(u, "familyName"), &w.family);
        check("displayName", str_at(u, "displayName"), &w.display);
        check("title", str_at(u, "title"), &w.title);
        check("department", enterprise(u, "department"), &w.department);
        check(
            "employeeNumber",
            enterprise(u, "employeeNumber"),
            &w.employee_number,
        );
        let emails = u
            .get("emails")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let email_ok = emails.len() == 1
            && str_at(&emails[0], "value") == w.user_name
            && emails[0].get("primary").and_then(Value::as_bool) == Some(true)
            && str_at(&emails[0], "type") == "work";
        if !email_ok {
            diffs.push(format!("{who}: emails: target {}", Value::Array(emails)));
        }
        if u.get("active").and_then(Value::as_bool) != Some(true) {
            diffs.push(format!("{who}: not active on the target"));
        }
    }

    let mut groups_by_key: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
    for g in &target.groups {
        groups_by_key
            .entry(str_at(g, "externalId"))
            .or_default()
            .push(g);
    }
    for (key, found) in &groups_by_key {
        if !want.groups.contains_key(*key) {
            diffs.push(format!(
                "unexpected group on the target: externalId {key:?}"
            ));
        }
        if found.len() > 1 {
            diffs.push(format!("{} groups with externalId {key:?}", found.len()));
        }
    }
    let key_of_id: HashMap<&str, &str> = ids
        .iter()
        .map(|(k, id)| (id.as_str(), k.as_str()))
        .collect();
    for (key, w) in &want.groups {
        let Some(found) = groups_by_key.get(key.as_str()) else {
            diffs.push(format!("missing group {:?} on the target", w.name));
            continue;
        };
        let g = found[0];
        if str_at(g, "displayName") != w.name {
            diffs.push(format!(
                "group {:?}: displayName on the target {:?}",
                w.name,
                str_at(g, "displayName")
            ));
        }
        let got: BTreeSet<String> = g
            .get("members")
            .and_then(Value::as_array)
            .map(|ms| ms.iter().map(|m| str_at(m, "value").to_owned()).collect())
            .unwrap_or_default();
        let want_ids: BTreeSet<String> = w
            .members
            .iter()
            .map(|k| {
                ids.get(k)
                    .cloned()
                    .unwrap_or_else(|| format!("<no id for {k}>"))
            })
            .collect();
        if got != want_ids {
            let show = |set: Vec<&String>| {
                set.iter()
                    .map(|id| {
                        key_of_id
                            .get(id.as_str())
                            .map_or_else(|| id.to_string(), |k| format!("{k}={id}"))
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            diffs.push(format!(
                "group {:?}: members missing [{}], not expected [{}]",
                w.name,
                show(want_ids.difference(&got).collect()),
                show(got.difference(&want_ids).collect())
            ));
        }
    }
    if !diffs.is_empty() {
        let mut msg = format!(
            "the target does not match the directory ({} differences; target: {} users, {} groups):\n",
            diffs.len(),
            target.users.len(),
            target.groups.len()
        );
        for d in diffs.iter().take(60) {
            msg.push_str(&format!("  - {d}\n"));
        }
        panic!("{msg}");
    }
    ids
}

fn count(summary: &Value, key: &str) -> u64 {
    scim::summary_count(summary, key)
}

/// Asserts the run summary's counts: every key not named is 0.
fn assert_summary(summary: &Value, nonzero: &[(&str, u64)]) {
    for key in [
        "create_users",
        "update_users",
        "disable_users",
        "delete_users",
        "create_groups",
        "update_groups",
        "delete_groups",
        "add_members",
        "remove_members",
    ] {
        let want = nonzero
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, n)| *n);
        assert_eq!(count(summary, key), want, "summary.{key} in {summary}");
    }
    assert_eq!(summary["failed"].as_u64(), Some(0), "{summary}");
}

fn tool_ok(slapd: &Slapd, tool: &str, args: &[&str], stdin: Option<&str>) {
    let mut full = vec!["-D", ADMIN_DN, "-w", ADMIN_PW];
    full.extend_from_slice(args);
    let out = slapd.tool(tool, &full, stdin);
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// DNs of the groups that list `dn` as a member, read as the rootdn.
fn groups_with_member(slapd: &Slapd, dn: &str) -> Vec<String> {
    let filter = format!("(member={})", escape_filter(dn));
    let out = slapd.tool(
        "ldapsearch",
        &[
            "-LLL",
            "-o",
            "ldif-wrap=no",
            "-D",
            ADMIN_DN,
            "-w",
            ADMIN_PW,
            "-b",
            GROUPS,
            &filter,
            "1.1",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_ldif(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .map(|e| e.dn)
        .collect()
}

fn escape_filter(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            _ => out.push(c),
        }
    }
    out
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    assert!(
        crate::harness::eventually(REFINT_WAIT, &mut cond),
        "{what} did not happen within {REFINT_WAIT:?}"
    );
}

// ---------------------------------------------------------------------------
// Tests

/// 2,500 users (more than the sync account's 1000-entry limit, so only paging
/// reads them all), then one directory edit per cycle, each compared with the
/// target afterwards.
#[test]
fn ldap_directory_syncs_into_scim_and_follows_edits() {
    let n = 2500;
    let slapd = Slapd::start(&directory(n));
    let server = ScimServer::start(&fresh_token("ldap-e2e"));
    let op = Operator::new(&slapd, &server);

    // The sync account cannot list the users without paging.
    let plain = slapd.tool(
        "ldapsearch",
        &[
            "-D",
            SYNC_DN,
            "-w",
            SYNC_PW,
            "-b",
            PEOPLE,
            "(objectClass=inetOrgPerson)",
            "1.1",
        ],
        None,
    );
    assert_eq!(
        plain.status.code(),
        Some(4),
        "a plain search must hit the size limit"
    );

    // An account whose server stops paged searches at 1000 entries too: the read
    // is cut short, and a partial directory is never used (exit 5, nothing done).
    let mut limited = Operator::new(&slapd, &server);
    limited.bind_dn = LIMITED_DN.to_owned();
    limited.password = LIMITED_PW.to_owned();
    for cmd in [&["plan"][..], &["sync"]] {
        let out = limited.run(cmd);
        out.assert_code(5);
        assert!(out.stderr.contains("size limit"), "{}", out.dump());
    }
    assert!(server.users().is_empty() && server.groups().is_empty());

    // Initial sync.
    let started = Instant::now();
    let summary = op.sync_ok();
    eprintln!("initial sync of {n} users: {:?}", started.elapsed());
    let want = expected(&read_as_admin(&slapd));
    let in_scope = want.users.len() as u64;
    assert_eq!(
        in_scope,
        (n - n / 50) as u64,
        "users without mail are out of scope"
    );
    assert_eq!(want.out_of_scope.len(), n / 50);
    assert_summary(
        &summary,
        &[
            ("create_users", in_scope),
            ("create_groups", want.groups.len() as u64),
            (
                "add_members",
                want.groups.values().map(|g| g.members.len() as u64).sum(),
            ),
        ],
    );
    let mut disabled: BTreeSet<String> = BTreeSet::new();
    let ids = assert_target(&want, &disabled, &server.contents());
    // Nesting flattened: all-staff = engineering (teams 01, 02, user 3) + user 4.
    let all_staff = want
        .groups
        .values()
        .find(|g| g.name == "all-staff")
        .expect("all-staff");
    let engineering = want
        .groups
        .values()
        .find(|g| g.name == "engineering")
        .expect("engineering");
    assert!(all_staff.members.is_superset(&engineering.members));
    assert_eq!(
        engineering.members.len(),
        (1..=n)
            .filter(|i| !i.is_multiple_of(50) && (i % TEAMS == 1 || i % TEAMS == 2 || *i == 3))
            .count()
    );
    let empty = want
        .groups
        .values()
        .find(|g| g.name == "empty-ish")
        .expect("empty-ish");
    assert!(
        empty.members.is_empty(),
        "a member outside the base DN is ignored"
    );
    op.assert_plan_empty();

    let user_key = |want: &Want, i: usize| -> String {
        let dn = norm_dn(&user_dn(i));
        want.users
            .values()
            .find(|u| norm_dn(&u.dn) == dn)
            .unwrap_or_else(|| panic!("no user {dn}"))
            .key
            .clone()
    };
    let assert_same_ids = |new: &HashMap<String, String>| {
        for (key, id) in &ids {
            if let Some(now) = new.get(key) {
                assert_eq!(now, id, "user {key} changed SCIM id");
            }
        }
    };

    // 1. An attribute change.
    tool_ok(
        &slapd,
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {}\nchangetype: modify\nreplace: title\ntitle: Principal Engineer\n",
            user_dn(5)
        )),
    );
    let summary = op.sync_ok();
    assert_summary(&summary, &[("update_users", 1)]);
    let want = expected(&read_as_admin(&slapd));
    assert_eq!(want.users[&user_key(&want, 5)].title, "Principal Engineer");
    assert_same_ids(&assert_target(&want, &disabled, &server.contents()));
    op.assert_plan_empty();

    // 2. A user deleted from the directory: disabled on the target, same id.
    let gone_dn = user_dn(17);
    let gone_key = user_key(&want, 17);
    assert!(!groups_with_member(&slapd, &gone_dn).is_empty());
    tool_ok(&slapd, "ldapdelete", &[&gone_dn], None);
    wait_for("refint removing the deleted user from its groups", || {
        groups_with_member(&slapd, &gone_dn).is_empty()
    });
    let summary = op.sync_ok();
    assert_summary(&summary, &[("disable_users", 1), ("remove_members", 1)]);
    disabled.insert(gone_key.clone());
    let want = expected(&read_as_admin(&slapd));
    assert!(!want.users.contains_key(&gone_key));
    let now = assert_target(&want, &disabled, &server.contents());
    assert_eq!(
        now[&gone_key], ids[&gone_key],
        "the disabled user keeps its SCIM id"
    );
    assert_same_ids(&now);
    op.assert_plan_empty();

    // 3. A DN rename (modrdn): the same SCIM user, nothing created or removed.
    let old_dn = user_dn(8);
    let renamed_key = user_key(&want, 8);
    let new_dn = format!("uid=renamed00008,{PEOPLE}");
    let groups_before = groups_with_member(&slapd, &old_dn);
    assert_eq!(groups_before.len(), 1, "user 8 is in team-08");
    tool_ok(
        &slapd,
        "ldapmodrdn",
        &["-r", &old_dn, "uid=renamed00008"],
        None,
    );
    wait_for("refint rewriting the renamed user's memberships", || {
        groups_with_member(&slapd, &old_dn).is_empty()
            && groups_with_member(&slapd, &new_dn).len() == groups_before.len()
    });
    let plan = op.plan_json();
    assert!(
        scim::operations(&plan).is_empty(),
        "a DN rename changes no mapped attribute and no membership: {plan}"
    );
    let summary = op.sync_ok();
    assert_summary(&summary, &[]);
    let want = expected(&read_as_admin(&slapd));
    assert_eq!(norm_dn(&want.users[&renamed_key].dn), norm_dn(&new_dn));
    let now = assert_target(&want, &disabled, &server.contents());
    assert_eq!(now[&renamed_key], ids[&renamed_key]);
    assert_same_ids(&now);

    // 4. A new user, non-ASCII, added to a group in the same change.
    let mut add = Ldif::default();
    let new_user_dn = format!("uid=neu,{PEOPLE}");
    add.entry(
        &new_user_dn,
        &[
            ("objectClass", "inetOrgPerson"),
            ("uid", "neu"),
            ("cn", "Åsa Öberg-Nuñez"),
            ("givenName", "Åsa"),
            ("sn", "Öberg-Nuñez"),
            ("mail", "asa.oberg@example.com"),
            ("title", "Tëster"),
            ("departmentNumber", "QA"),
        ],
    );
    tool_ok(&slapd, "ldapadd", &[], Some(add.text()));
    tool_ok(
        &slapd,
        "ldapmodify",
        &[],
        Some(&format!(
            "dn:: {}\nchangetype: modify\nadd: member\nmember: {new_user_dn}\n",
            b64(&format!("cn=Fußball-Team,{GROUPS}"))
        )),
    );
    let summary = op.sync_ok();
    assert_summary(&summary, &[("create_users", 1), ("add_members", 1)]);
    let want = expected(&read_as_admin(&slapd));
    let now = assert_target(&want, &disabled, &server.contents());
    assert_same_ids(&now);
    op.assert_plan_empty();

    // 5. A membership change: user 11 moves from team-01 to team-02, which also
    // reaches engineering and all-staff only through nesting (no change there).
    let u11 = user_dn(11);
    tool_ok(
        &slapd,
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {}\nchangetype: modify\ndelete: member\nmember: {u11}\n\n\
             dn: {}\nchangetype: modify\nadd: member\nmember: {u11}\n",
            team_dn(1),
            team_dn(2)
        )),
    );
    let summary = op.sync_ok();
    assert_summary(&summary, &[("add_members", 1), ("remove_members", 1)]);
    let want = expected(&read_as_admin(&slapd));
    let now = assert_target(&want, &disabled, &server.contents());
    assert_same_ids(&now);
    op.assert_plan_empty();

    // 6. A user leaves the mapping's scope (mail deleted): disabled like a
    // leaver, and removed from team-01 and, through nesting, engineering and
    // all-staff. 7. Mail back: the same account is enabled again, not recreated.
    let u21 = user_dn(21);
    let key21 = user_key(&want, 21);
    tool_ok(
        &slapd,
        "ldapmodify",
        &[],
        Some(&format!("dn: {u21}\nchangetype: modify\ndelete: mail\n")),
    );
    let summary = op.sync_ok();
    assert_summary(&summary, &[("disable_users", 1), ("remove_members", 3)]);
    disabled.insert(key21.clone());
    let want = expected(&read_as_admin(&slapd));
    assert!(want.out_of_scope.contains(&key21));
    assert_same_ids(&assert_target(&want, &disabled, &server.contents()));
    op.assert_plan_empty();

    tool_ok(
        &slapd,
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {u21}\nchangetype: modify\nadd: mail\nmail: {}\n",
            user_mail(21)
        )),
    );
    let summary = op.sync_ok();
    assert_eq!(count(&summary, "create_users"), 0, "{summary}");
    assert_eq!(count(&summary, "add_members"), 3, "{summary}");
    disabled.remove(&key21);
    let want = expected(&read_as_admin(&slapd));
    let now = assert_target(&want, &disabled, &server.contents());
    assert_eq!(now[&key21], ids[&key21], "re-enabled, not recreated");
    assert_same_ids(&now);
    op.assert_plan_empty();
    assert!(op.state_db().exists());
}

fn b64(text: &str) -> String {
    // Reuse the LDIF writer's encoding: an entry with one attribute `x`.
    let mut l = Ldif::default();
    l.entry("dc=x", &[("x", text)]);
    let line = l.text().lines().nth(1).expect("x line").to_owned();
    line.strip_prefix("x:: ")
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("expected base64: {line}"))
}

/// `check` says what it verified; a refused bind, a stopped server and a server
/// that stops answering are exit 5 for `check`, `plan` and `sync`, with nothing
/// changed and no password in the output.
#[test]
fn check_and_source_failures_exit_5_and_change_nothing() {
    let slapd = Slapd::start(&directory(60));
    let server = ScimServer::start(&fresh_token("ldap-e2e"));
    let mut op = Operator::new(&slapd, &server);
    op.ldap_timeout = "3s";

    let out = op.run(&["check"]);
    out.assert_code(0);
    let said = format!("{}{}", out.stdout, out.stderr);
    for what in [
        slapd.url.as_str(),
        "bound as cn=sync,dc=example,dc=com",
        SUFFIX,
        "readable",
        "paged search accepted, the user filter matches entries, the group filter matches entries",
    ] {
        assert!(
            said.contains(what),
            "check should say {what:?}:\n{}",
            out.dump()
        );
    }
    assert!(
        said.contains("authenticated"),
        "check should say the target authenticated:\n{}",
        out.dump()
    );
    assert!(server.users().is_empty(), "check changes nothing");

    let summary = op.sync_ok();
    assert_eq!(count(&summary, "create_users"), 59, "{summary}");

    // `explain` shows one user from the directory to the target, by mail or key.
    let out = op.run(&["explain", &user_mail(7)]);
    out.assert_code(0);
    assert!(
        out.stdout.contains(&user_dn(7)) && out.stdout.contains("in scope"),
        "{}",
        out.dump()
    );
    let no_mail = read_as_admin(&slapd)
        .into_iter()
        .find(|e| norm_dn(&e.dn) == norm_dn(&user_dn(50)))
        .expect("user 50");
    let out = op.run(&["explain", no_mail.first("entryUUID").expect("entryUUID")]);
    out.assert_code(0);
    assert!(out.stdout.contains("out of scope"), "{}", out.dump());
    let before = server.contents().normalized();
    // A pending change, so that a sync that got through would show.
    tool_ok(
        &slapd,
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {}\nchangetype: modify\nreplace: title\ntitle: Changed\n",
            user_dn(1)
        )),
    );
    assert_eq!(scim::operations(&op.plan_json()).len(), 1);

    // A wrong bind password.
    op.password = "wr0ng-Pa55-Zq7-not-it".into();
    for cmd in [
        &["check"][..],
        &["plan"],
        &["sync"],
        &["sync", "--format", "json"],
    ] {
        let out = op.run(cmd);
        out.assert_code(5);
        let said = format!("{}{}", out.stdout, out.stderr).to_lowercase();
        assert!(
            said.contains("bind") && said.contains(&PASSWORD_ENV.to_lowercase()),
            "a refused bind should say so and name the variable:\n{}",
            out.dump()
        );
    }
    assert_eq!(
        server.contents().normalized(),
        before,
        "nothing changed on the target"
    );
    op.password = SYNC_PW.into();
    assert_eq!(
        scim::operations(&op.plan_json()).len(),
        1,
        "the change is still pending"
    );

    // Two syncs failed to read the source in a row: cycles are quarantined,
    // and a sync is held (exit 7) without reading anything until `--force`.
    let out = op.run(&["sync"]);
    out.assert_code(7);
    assert!(out.stderr.contains("quarantined until"), "{}", out.dump());

    // The server stops answering (SIGSTOP): the source timeout ends the run.
    slapd.signal("STOP");
    let started = Instant::now();
    let out = op.run(&["sync", "--force"]);
    slapd.signal("CONT");
    out.assert_code(5);
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "bounded by the source timeout"
    );
    assert_eq!(server.contents().normalized(), before);

    // The server is gone.
    slapd.signal("TERM");
    wait_for("slapd to exit", || {
        std::net::TcpStream::connect(("127.0.0.1", slapd.port)).is_err()
    });
    for cmd in [&["check"][..], &["plan"], &["sync", "--force"]] {
        let out = op.run(cmd);
        out.assert_code(5);
        assert!(
            format!("{}{}", out.stdout, out.stderr).contains(&slapd.url),
            "the error names the server:\n{}",
            out.dump()
        );
    }
    assert_eq!(server.contents().normalized(), before);
}

/// Two entries with the same `mail` would be one Atlassian account: the cycle
/// fails with exit 2, naming both DNs, and nothing is created or changed.
#[test]
fn duplicate_mail_fails_the_cycle_naming_both_entries() {
    let mut text = directory(30);
    let twin_dn = format!("cn=Jörg Müller Zwilling,{PEOPLE}");
    let mut twin = Ldif::default();
    twin.entry(
        &twin_dn,
        &[
            ("objectClass", "inetOrgPerson"),
            ("cn", "Jörg Müller Zwilling"),
            ("sn", "Müller"),
            // user00007's address, in another case: userNames compare case-insensitively.
            ("mail", "USER00007@example.com"),
        ],
    );
    text.push_str(twin.text());
    let slapd = Slapd::start(&text);
    let server = ScimServer::start(&fresh_token("ldap-e2e"));
    let op = Operator::new(&slapd, &server);

    let assert_names_both = |out: &Output| {
        out.assert_code(2);
        for dn in [twin_dn.as_str(), &user_dn(7)] {
            assert!(
                out.stderr.contains(dn),
                "the error should name {dn}:\n{}",
                out.dump()
            );
        }
    };
    // Before anything was synced: nothing is created.
    assert_names_both(&op.run(&["sync"]));
    assert_names_both(&op.run(&["plan"]));
    assert!(server.users().is_empty() && server.groups().is_empty());

    // Resolved: the sync goes through.
    tool_ok(&slapd, "ldapdelete", &[&twin_dn], None);
    op.sync_ok();
    let want = expected(&read_as_admin(&slapd));
    assert_target(&want, &BTreeSet::new(), &server.contents());
    let before = server.contents().normalized();

    // Again, after a first sync, together with another change: none of it applies.
    let mut again = Ldif::default();
    again.entry(
        &twin_dn,
        &[
            ("objectClass", "inetOrgPerson"),
            ("cn", "Jörg Müller Zwilling"),
            ("sn", "Müller"),
            ("mail", "user00007@example.com"),
        ],
    );
    tool_ok(&slapd, "ldapadd", &[], Some(again.text()));
    tool_ok(
        &slapd,
        "ldapmodify",
        &[],
        Some(&format!(
            "dn: {}\nchangetype: modify\nreplace: title\ntitle: Changed\n",
            user_dn(1)
        )),
    );
    assert_names_both(&op.run(&["sync", "--format", "json"]));
    assert_eq!(server.contents().normalized(), before, "target unchanged");
}

/// The shipped examples compile (`idsync validate`) with their variables set.
#[test]
fn ldap_examples_validate() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (example, env) in [
        (
            "examples/ldap.yaml",
            &[(
                "ATLASSIAN_DIRECTORY_ID",
                "00000000-0000-0000-0000-000000000000",
            )][..],
        ),
        ("examples/ldap/local.yaml", &[][..]),
        (
            "examples/active-directory.yaml",
            &[(
                "ATLASSIAN_DIRECTORY_ID",
                "00000000-0000-0000-0000-000000000000",
            )][..],
        ),
    ] {
        let path = repo().join(example);
        let args = vec![
            "validate".to_owned(),
            "-c".into(),
            path.display().to_string(),
        ];
        let out = run_idsync(dir.path(), &args, env, &[]);
        out.assert_code(0);
        assert!(out.stdout.contains("ldap"), "{}", out.dump());
    }
}

/// LDAPS and StartTLS through the binary: `check` says how the certificate was
/// verified; an untrusted certificate is exit 5 and nothing happens.
#[test]
fn ldaps_and_starttls_with_ca_file() {
    let slapd = Slapd::start_tls(&directory(20));
    let server = ScimServer::start(&fresh_token("ldap-e2e"));
    let mut op = Operator::new(&slapd, &server);
    let ca = format!("  ca_file: {}\n", slapd.ca_file().display());

    // LDAPS, not trusted without the CA.
    op.ldap_url = slapd.ldaps_url.clone().expect("ldaps url");
    for cmd in [&["check"][..], &["sync"]] {
        let out = op.run(cmd);
        out.assert_code(5);
        assert!(
            out.stderr.to_lowercase().contains("certificate"),
            "{}",
            out.dump()
        );
    }
    assert!(server.users().is_empty());

    op.extra_source = ca.clone();
    let out = op.run(&["check"]);
    out.assert_code(0);
    assert!(
        out.stdout.contains("LDAPS") && out.stdout.contains("verified against ca_file"),
        "{}",
        out.dump()
    );
    op.sync_ok();
    let want = expected(&read_as_admin(&slapd));
    assert_target(&want, &BTreeSet::new(), &server.contents());

    // StartTLS on the plain port: the same directory, nothing to do.
    op.ldap_url = slapd.url.clone();
    op.extra_source = format!("  starttls: true\n{ca}");
    let out = op.run(&["check"]);
    out.assert_code(0);
    assert!(out.stdout.contains("StartTLS"), "{}", out.dump());
    op.assert_plan_empty();
}
