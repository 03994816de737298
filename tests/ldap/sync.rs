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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    ADMIN_DN, ADMIN_PW, GROUPS, LIMITED_DN, LIMITED_PW, Ldif, PEOPLE, SUFFIX, SYNC_DN, SYNC_PW,
    Slapd, wait_until,
};
use crate::support::compare::{Diffs, index_by, member_ids};
use crate::support::ldap::{Entry, base64, norm_dn, search};
use crate::support::process::{Output, fresh_token, repo, run_bounded};
use crate::support::scim::{
    ENTERPRISE_SCHEMA, SUMMARY_KEYS, ScimServer, TargetContents, attr, operations, str_at,
    summary_count,
};
use crate::support::workdir::{Idsync, Workdir, idsync_command, scim_target_yaml};

mod assign;

/// The environment variable the generated configs name in `bind_password_env`.
const PASSWORD_ENV: &str = "IDSYNC_TEST_LDAP_PASSWORD";
/// One `idsync` run may take this long before it is killed (debug build, 2 cores).
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// refint rewrites `member` values about 100 ms after a rename or delete.
const REFINT_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Running idsync

/// A temp dir with `config.yaml` (LDAP source → SCIM target) and `state/`.
struct Operator {
    dir: Workdir,
    ldap_url: String,
    scim_url: String,
    /// `source.bind_dn`.
    bind_dn: String,
    /// What `PASSWORD_ENV` holds for the next runs.
    password: String,
    /// `source.timeout`.
    ldap_timeout: &'static str,
    /// More `source:` lines (TLS settings), each ending in a newline.
    extra_source: String,
    /// Top-level lines appended to the config (an `assign:` section), each
    /// ending in a newline.
    extra_config: String,
}

impl Operator {
    fn new(slapd: &Slapd, server: &ScimServer) -> Operator {
        let mut dir = Workdir::new("idsync-ldap-e2e-", server.token());
        dir.run_timeout = RUN_TIMEOUT;
        Operator {
            dir,
            ldap_url: slapd.url.clone(),
            scim_url: server.base_url(),
            bind_dn: SYNC_DN.to_owned(),
            password: SYNC_PW.to_owned(),
            ldap_timeout: "10s",
            extra_source: String::new(),
            extra_config: String::new(),
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
             {target}\
             policy:\n\
             \x20 remove_action: disable\n\
             \x20 max_removals: 5%\n\
             \x20 groups: {{ provision: true, delete: true }}\n\
             state: state/idsync.db\n\
             {extra_config}",
            url = self.ldap_url,
            bind_dn = self.bind_dn,
            timeout = self.ldap_timeout,
            extra = self.extra_source,
            mapping = repo().join("mappings/ldap-inetorgperson.yaml").display(),
            target = scim_target_yaml(&self.scim_url, "30s"),
            extra_config = self.extra_config,
        )
    }

    fn state_db(&self) -> PathBuf {
        self.dir.state_db()
    }
}

impl Idsync for Operator {
    /// Runs `idsync SUB -c config.yaml REST…`; panics if a password or the
    /// token shows up in what it printed.
    fn run(&self, args: &[&str]) -> Output {
        let env = [(PASSWORD_ENV, self.password.as_str())];
        let secrets = [self.password.as_str(), SYNC_PW, ADMIN_PW, LIMITED_PW];
        self.dir.run_with(&self.config(), args, &env, &secrets)
    }
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

/// `ldapsearch` as the rootdn (no size limit) under `base`.
fn search_as_admin(slapd: &Slapd, base: &str, filter: &str, attrs: &[&str]) -> Vec<Entry> {
    search(
        |args| slapd.tool("ldapsearch", args, None),
        &["-D", ADMIN_DN, "-w", ADMIN_PW],
        base,
        filter,
        attrs,
    )
}

/// Every user and group under the suffix, read as the rootdn (no size limit).
fn read_as_admin(slapd: &Slapd) -> Vec<Entry> {
    search_as_admin(
        slapd,
        SUFFIX,
        "(|(objectClass=inetOrgPerson)(objectClass=groupOfNames))",
        &["*", "entryUUID"],
    )
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
        let key = e.first("entryUUID").expect("entryUUID");
        if e.has_class("inetOrgPerson") {
            let Some(mail) = e.first("mail") else {
                out_of_scope.insert(key);
                continue;
            };
            key_of_dn.insert(norm_dn(&e.dn), key.clone());
            let get = |a: &str| e.first(a).unwrap_or_default().trim().to_owned();
            let department = e
                .first("departmentNumber")
                .or_else(|| e.first("ou"))
                .unwrap_or_default()
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
                e.texts("member").iter().map(|m| norm_dn(m)).collect(),
            );
            groups_raw.push((key, e.first("cn").expect("group cn"), e.dn.clone()));
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

/// Checks that the target holds exactly `want` (users active) plus `disabled`
/// (keys removed from the directory: inactive, still there), and returns the
/// SCIM id of every user by key. Panics listing every difference.
fn assert_target(
    want: &Want,
    disabled: &BTreeSet<String>,
    target: &TargetContents,
) -> HashMap<String, String> {
    let mut diffs = Diffs::default();
    let by_key = index_by(&target.users, "externalId", false);
    check_user_keys(&mut diffs, want, disabled, target, &by_key);
    let mut ids = check_disabled(&mut diffs, disabled, &by_key);
    ids.extend(check_wanted_users(&mut diffs, want, &by_key));
    check_groups(&mut diffs, want, &ids, target);
    diffs.finish(target);
    ids
}

/// userNames held twice, users the directory does not have (or has out of
/// scope), and externalIds held twice.
fn check_user_keys(
    diffs: &mut Diffs,
    want: &Want,
    disabled: &BTreeSet<String>,
    target: &TargetContents,
    by_key: &BTreeMap<String, Vec<&Value>>,
) {
    for (name, found) in index_by(&target.users, "userName", true) {
        if found.len() > 1 {
            diffs.push(format!("{} users with userName {name:?}", found.len()));
        }
    }
    for (key, found) in by_key {
        if !want.users.contains_key(key) && !disabled.contains(key) {
            let what = if want.out_of_scope.contains(key) {
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
}

/// Users removed from the directory: still on the target, inactive. Returns
/// their SCIM ids by key.
fn check_disabled(
    diffs: &mut Diffs,
    disabled: &BTreeSet<String>,
    by_key: &BTreeMap<String, Vec<&Value>>,
) -> HashMap<String, String> {
    let mut ids = HashMap::new();
    for key in disabled {
        match by_key.get(key) {
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
    ids
}

/// Every user of the directory, attribute by attribute. Returns their SCIM ids
/// by key.
fn check_wanted_users(
    diffs: &mut Diffs,
    want: &Want,
    by_key: &BTreeMap<String, Vec<&Value>>,
) -> HashMap<String, String> {
    let mut ids = HashMap::new();
    for (key, w) in &want.users {
        let Some(found) = by_key.get(key) else {
            diffs.push(format!(
                "missing user {} ({}) on the target",
                w.user_name, w.dn
            ));
            continue;
        };
        let u = found[0];
        ids.insert(key.clone(), str_at(u, "id").to_owned());
        check_user(diffs, w, u);
    }
    ids
}

/// One user on the target against the directory.
fn check_user(diffs: &mut Diffs, w: &WantUser, u: &Value) {
    let who = format!("user {} ({})", w.user_name, w.dn);
    let enterprise = |field: &str| attr(u, &[ENTERPRISE_SCHEMA, field]);
    diffs.check(&who, "userName", str_at(u, "userName"), &w.user_name);
    diffs.check(&who, "externalId", str_at(u, "externalId"), &w.key);
    let given = attr(u, &["name", "givenName"]);
    diffs.check(&who, "name.givenName", given, &w.given);
    let family = attr(u, &["name", "familyName"]);
    diffs.check(&who, "name.familyName", family, &w.family);
    diffs.check(&who, "displayName", str_at(u, "displayName"), &w.display);
    diffs.check(&who, "title", str_at(u, "title"), &w.title);
    diffs.check(&who, "department", enterprise("department"), &w.department);
    let number = enterprise("employeeNumber");
    diffs.check(&who, "employeeNumber", number, &w.employee_number);
    diffs.check_one_work_email(&who, u, &w.user_name);
    if u.get("active").and_then(Value::as_bool) != Some(true) {
        diffs.push(format!("{who}: not active on the target"));
    }
}

/// Groups by externalId, their names, and their members by SCIM id.
fn check_groups(
    diffs: &mut Diffs,
    want: &Want,
    ids: &HashMap<String, String>,
    target: &TargetContents,
) {
    let groups_by_key = index_by(&target.groups, "externalId", false);
    for (key, found) in &groups_by_key {
        if !want.groups.contains_key(key) {
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
        let Some(found) = groups_by_key.get(key) else {
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
        let want_ids: BTreeSet<String> = w
            .members
            .iter()
            .map(|k| {
                ids.get(k)
                    .cloned()
                    .unwrap_or_else(|| format!("<no id for {k}>"))
            })
            .collect();
        diffs.members(&w.name, &want_ids, &member_ids(g), |id| {
            key_of_id.get(id).map(|k| k.to_string())
        });
    }
}

fn count(summary: &Value, key: &str) -> u64 {
    summary_count(summary, key)
}

/// Asserts the run summary's counts: every key not named is 0.
fn assert_summary(summary: &Value, nonzero: &[(&str, u64)]) {
    for key in SUMMARY_KEYS {
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
    assert_eq!(out.code, 0, "{tool} {args:?} failed: {}", out.stderr);
}

/// DNs of the groups that list `dn` as a member, read as the rootdn.
fn groups_with_member(slapd: &Slapd, dn: &str) -> Vec<String> {
    let filter = format!("(member={})", escape_filter(dn));
    search_as_admin(slapd, GROUPS, &filter, &["1.1"])
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
        wait_until(REFINT_WAIT, &mut cond),
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
    assert_only_paging_reads_everyone(&slapd, &server);
    let mut edits = Edits::initial_sync(slapd, server, n);
    edits.attribute_change();
    edits.user_deleted();
    edits.dn_renamed();
    edits.user_added_to_a_group();
    edits.membership_moved();
    edits.mail_removed_and_restored();
    assert!(edits.op.state_db().exists());
}

/// The sync account cannot list the users without paging; an account whose
/// server stops paged searches at 1000 entries too has its read cut short, and
/// a partial directory is never used (exit 5, nothing done).
fn assert_only_paging_reads_everyone(slapd: &Slapd, server: &ScimServer) {
    let plain = slapd.plain_search_as_sync();
    assert_eq!(plain.code, 4, "a plain search must hit the size limit");

    let mut limited = Operator::new(slapd, server);
    limited.bind_dn = LIMITED_DN.to_owned();
    limited.password = LIMITED_PW.to_owned();
    for cmd in [&["plan"][..], &["sync"]] {
        let out = limited.run(cmd);
        out.assert_code(5);
        assert!(out.stderr.contains("size limit"), "{}", out.dump());
    }
    assert!(server.users().is_empty() && server.groups().is_empty());
}

/// The key of generated user `i` in `want`.
fn user_key(want: &Want, i: usize) -> String {
    let dn = norm_dn(&user_dn(i));
    want.users
        .values()
        .find(|u| norm_dn(&u.dn) == dn)
        .unwrap_or_else(|| panic!("no user {dn}"))
        .key
        .clone()
}

/// The group named `name` in `want`.
fn want_group<'a>(want: &'a Want, name: &str) -> &'a WantGroup {
    want.groups
        .values()
        .find(|g| g.name == name)
        .unwrap_or_else(|| panic!("no group {name}"))
}

/// A directory synced once, and what each edit after it checks.
struct Edits {
    slapd: Slapd,
    server: ScimServer,
    op: Operator,
    /// The SCIM id of every user by key after the first sync.
    ids: HashMap<String, String>,
    /// Keys removed from the directory: disabled on the target.
    disabled: BTreeSet<String>,
}

impl Edits {
    /// The first sync of `n` users: everyone in scope created, nesting
    /// flattened, nothing left to do.
    fn initial_sync(slapd: Slapd, server: ScimServer, n: usize) -> Edits {
        let op = Operator::new(&slapd, &server);
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
        let members = want.groups.values().map(|g| g.members.len() as u64).sum();
        let groups = want.groups.len() as u64;
        assert_summary(
            &summary,
            &[
                ("create_users", in_scope),
                ("create_groups", groups),
                ("add_members", members),
            ],
        );
        let disabled = BTreeSet::new();
        let ids = assert_target(&want, &disabled, &server.contents());
        assert_nesting_flattened(&want, n);
        op.assert_plan_empty();
        Edits {
            slapd,
            server,
            op,
            ids,
            disabled,
        }
    }

    /// What the target should hold now, read from the directory.
    fn want(&self) -> Want {
        expected(&read_as_admin(&self.slapd))
    }

    fn modify(&self, ldif: &str) {
        tool_ok(&self.slapd, "ldapmodify", &[], Some(ldif));
    }

    /// The target compared with `want`; no user changed SCIM id. Returns the
    /// ids now.
    fn assert_target(&self, want: &Want) -> HashMap<String, String> {
        let now = assert_target(want, &self.disabled, &self.server.contents());
        for (key, id) in &self.ids {
            if let Some(now) = now.get(key) {
                assert_eq!(now, id, "user {key} changed SCIM id");
            }
        }
        now
    }

    /// Step 1: An attribute change.
    fn attribute_change(&self) {
        self.modify(&format!(
            "dn: {}\nchangetype: modify\nreplace: title\ntitle: Principal Engineer\n",
            user_dn(5)
        ));
        let summary = self.op.sync_ok();
        assert_summary(&summary, &[("update_users", 1)]);
        let want = self.want();
        assert_eq!(want.users[&user_key(&want, 5)].title, "Principal Engineer");
        self.assert_target(&want);
        self.op.assert_plan_empty();
    }

    /// Step 2: a user deleted from the directory: disabled on the target, same id.
    fn user_deleted(&mut self) {
        let gone_dn = user_dn(17);
        let gone_key = user_key(&self.want(), 17);
        let slapd = &self.slapd;
        assert!(!groups_with_member(slapd, &gone_dn).is_empty());
        tool_ok(slapd, "ldapdelete", &[&gone_dn], None);
        wait_for("refint removing the deleted user from its groups", || {
            groups_with_member(slapd, &gone_dn).is_empty()
        });
        let summary = self.op.sync_ok();
        assert_summary(&summary, &[("disable_users", 1), ("remove_members", 1)]);
        self.disabled.insert(gone_key.clone());
        let want = self.want();
        assert!(!want.users.contains_key(&gone_key));
        let now = self.assert_target(&want);
        assert_eq!(
            now[&gone_key], self.ids[&gone_key],
            "the disabled user keeps its SCIM id"
        );
        self.op.assert_plan_empty();
    }

    /// Step 3: a DN rename (modrdn): the same SCIM user, nothing created or removed.
    fn dn_renamed(&self) {
        let old_dn = user_dn(8);
        let renamed_key = user_key(&self.want(), 8);
        let new_dn = format!("uid=renamed00008,{PEOPLE}");
        let slapd = &self.slapd;
        let groups_before = groups_with_member(slapd, &old_dn);
        assert_eq!(groups_before.len(), 1, "user 8 is in team-08");
        tool_ok(
            slapd,
            "ldapmodrdn",
            &["-r", &old_dn, "uid=renamed00008"],
            None,
        );
        wait_for("refint rewriting the renamed user's memberships", || {
            groups_with_member(slapd, &old_dn).is_empty()
                && groups_with_member(slapd, &new_dn).len() == groups_before.len()
        });
        let plan = self.op.plan_json();
        assert!(
            operations(&plan).is_empty(),
            "a DN rename changes no mapped attribute and no membership: {plan}"
        );
        let summary = self.op.sync_ok();
        assert_summary(&summary, &[]);
        let want = self.want();
        assert_eq!(norm_dn(&want.users[&renamed_key].dn), norm_dn(&new_dn));
        let now = self.assert_target(&want);
        assert_eq!(now[&renamed_key], self.ids[&renamed_key]);
    }

    /// Step 4: a new user, non-ASCII, added to a group in the same change.
    fn user_added_to_a_group(&self) {
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
        tool_ok(&self.slapd, "ldapadd", &[], Some(add.text()));
        self.modify(&format!(
            "dn:: {}\nchangetype: modify\nadd: member\nmember: {new_user_dn}\n",
            base64(&format!("cn=Fußball-Team,{GROUPS}"))
        ));
        let summary = self.op.sync_ok();
        assert_summary(&summary, &[("create_users", 1), ("add_members", 1)]);
        self.assert_target(&self.want());
        self.op.assert_plan_empty();
    }

    /// Step 5: a membership change: user 11 moves from team-01 to team-02, which also
    /// reaches engineering and all-staff only through nesting (no change there).
    fn membership_moved(&self) {
        let u11 = user_dn(11);
        self.modify(&format!(
            "dn: {}\nchangetype: modify\ndelete: member\nmember: {u11}\n\n\
             dn: {}\nchangetype: modify\nadd: member\nmember: {u11}\n",
            team_dn(1),
            team_dn(2)
        ));
        let summary = self.op.sync_ok();
        assert_summary(&summary, &[("add_members", 1), ("remove_members", 1)]);
        self.assert_target(&self.want());
        self.op.assert_plan_empty();
    }

    /// Step 6: a user leaves the mapping's scope (mail deleted): disabled like a
    /// leaver, and removed from team-01 and, through nesting, engineering and
    /// all-staff. Step 7, mail back: the same account is enabled again, not recreated.
    fn mail_removed_and_restored(&mut self) {
        let u21 = user_dn(21);
        let key21 = user_key(&self.want(), 21);
        self.modify(&format!("dn: {u21}\nchangetype: modify\ndelete: mail\n"));
        let summary = self.op.sync_ok();
        assert_summary(&summary, &[("disable_users", 1), ("remove_members", 3)]);
        self.disabled.insert(key21.clone());
        let want = self.want();
        assert!(want.out_of_scope.contains(&key21));
        self.assert_target(&want);
        self.op.assert_plan_empty();

        self.modify(&format!(
            "dn: {u21}\nchangetype: modify\nadd: mail\nmail: {}\n",
            user_mail(21)
        ));
        let summary = self.op.sync_ok();
        assert_eq!(count(&summary, "create_users"), 0, "{summary}");
        assert_eq!(count(&summary, "add_members"), 3, "{summary}");
        self.disabled.remove(&key21);
        let now = self.assert_target(&self.want());
        assert_eq!(now[&key21], self.ids[&key21], "re-enabled, not recreated");
        self.op.assert_plan_empty();
    }
}

/// Nesting flattened: all-staff = engineering (teams 01, 02, user 3) + user 4;
/// a member outside the base DN is ignored.
fn assert_nesting_flattened(want: &Want, n: usize) {
    let all_staff = want_group(want, "all-staff");
    let engineering = want_group(want, "engineering");
    assert!(all_staff.members.is_superset(&engineering.members));
    assert_eq!(
        engineering.members.len(),
        (1..=n)
            .filter(|i| !i.is_multiple_of(50) && (i % TEAMS == 1 || i % TEAMS == 2 || *i == 3))
            .count()
    );
    let empty = want_group(want, "empty-ish");
    assert!(
        empty.members.is_empty(),
        "a member outside the base DN is ignored"
    );
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
    let key = no_mail.first("entryUUID").expect("entryUUID");
    let out = op.run(&["explain", &key]);
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
    assert_eq!(operations(&op.plan_json()).len(), 1);

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
        operations(&op.plan_json()).len(),
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
        let mut cmd = idsync_command(None);
        cmd.arg("validate")
            .arg("-c")
            .arg(repo().join(example))
            .current_dir(dir.path())
            .envs(env.iter().copied());
        let out = run_bounded(cmd, RUN_TIMEOUT, None);
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
