//! Servers whose schema differs from scim2-server's, played by the quirk proxy
//! over the real server: each quirk changes what the server accepts or stores
//! and rewrites its `/Schemas` to say so, as such servers do. For each, the
//! whole scenario (initial sync, second plan, attribute change, email change,
//! leaver, membership change, hand drift + `--full`) must end with the target
//! exactly as the source says, or with a clear per-object failure where the
//! server cannot hold a value; a second `plan` and `plan --full` then show
//! nothing, or only those failures again — never a success that did not happen.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::harness::{
    Directory, ENTERPRISE_SCHEMA, Idsync, ScimServer, UserRow, Workspace, fresh_token, operations,
    str_at,
};
use crate::proxy::{Answer, Exchange, FaultProxy, Quirk, Upstream, pass_through};

const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub(crate) const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";

// ---------------------------------------------------------------------------
// Quirks

/// Rewrites the attributes of schema `id` in a `/Schemas` answer.
pub(crate) fn rewrite_schema(
    req: &Exchange,
    answer: &mut Answer,
    id: &str,
    edit: impl Fn(&mut Vec<Value>),
) {
    if req.method != "GET" || req.resource() != "Schemas" || answer.status != 200 {
        return;
    }
    let Some(mut doc) = answer.json() else {
        return;
    };
    let mut edit_one = |schema: &mut Value| {
        if schema["id"] == id
            && let Some(attrs) = schema["attributes"].as_array_mut()
        {
            edit(attrs);
        }
    };
    match doc.get_mut("Resources").and_then(Value::as_array_mut) {
        Some(list) => list.iter_mut().for_each(&mut edit_one),
        None => edit_one(&mut doc),
    }
    answer.body = doc.to_string();
}

/// The attribute `name` of a schema's attribute list.
pub(crate) fn attribute<'a>(attrs: &'a mut [Value], name: &str) -> &'a mut Value {
    attrs
        .iter_mut()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("scim2-server's schema has no {name}"))
}

fn is_user_write(req: &Exchange) -> bool {
    req.resource() == "Users" && matches!(req.method.as_str(), "POST" | "PUT" | "PATCH")
}

/// Refuses any user write whose emails carry `type` or `primary` (400), and
/// leaves both out of `emails` in `/Schemas`.
pub struct RefusesEmailTypeAndPrimary;

impl Quirk for RefusesEmailTypeAndPrimary {
    fn request(&self, req: &mut Exchange, _: &Upstream) -> Option<Answer> {
        let body = req.json()?;
        let carries = |e: &Value| e.get("type").is_some() || e.get("primary").is_some();
        let mut emails: Vec<&Value> = Vec::new();
        if let Some(list) = body.get("emails").and_then(Value::as_array) {
            emails.extend(list);
        }
        for op in body
            .get("Operations")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if op["path"] == "emails"
                && let Some(list) = op["value"].as_array()
            {
                emails.extend(list);
            }
        }
        (is_user_write(req) && emails.into_iter().any(carries)).then(|| {
            let mut a = Answer::error(
                400,
                "Unsupported sub-attribute: emails.type, emails.primary",
            );
            a.body = json!({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
                "status": "400", "scimType": "invalidValue",
                "detail": "Unsupported sub-attribute: emails.type, emails.primary",
            })
            .to_string();
            a
        })
    }

    fn response(&self, req: &Exchange, answer: &mut Answer, _: &Upstream) {
        rewrite_schema(req, answer, USER_SCHEMA, |attrs| {
            if let Some(subs) = attribute(attrs, "emails")["subAttributes"].as_array_mut() {
                subs.retain(|s| s["name"] != "type" && s["name"] != "primary");
            }
        });
    }
}

/// `externalId` is read-only: silently dropped from every user write, and
/// published as `readOnly` in `/Schemas`.
pub struct ExternalIdReadOnly;

impl Quirk for ExternalIdReadOnly {
    fn request(&self, req: &mut Exchange, _: &Upstream) -> Option<Answer> {
        if !is_user_write(req) {
            return None;
        }
        let mut body = req.json()?;
        if let Some(obj) = body.as_object_mut() {
            obj.remove("externalId");
        }
        if let Some(ops) = body.get_mut("Operations").and_then(Value::as_array_mut) {
            ops.retain(|op| op["path"] != "externalId");
        }
        req.body = body.to_string();
        None
    }

    fn response(&self, req: &Exchange, answer: &mut Answer, _: &Upstream) {
        rewrite_schema(req, answer, USER_SCHEMA, |attrs| {
            attrs.push(json!({
                "name": "externalId", "type": "string", "multiValued": false,
                "required": false, "caseExact": true, "mutability": "readOnly",
                "returned": "default", "uniqueness": "none",
            }));
        });
    }
}

/// `userName` cannot change: a PATCH or PUT that changes it gets the 400
/// `mutability` such servers answer; `/Schemas` says `immutable`.
pub struct UserNameImmutable;

impl Quirk for UserNameImmutable {
    fn request(&self, req: &mut Exchange, upstream: &Upstream) -> Option<Answer> {
        if req.resource() != "Users" || !matches!(req.method.as_str(), "PATCH" | "PUT") {
            return None;
        }
        let body = req.json()?;
        let changes = match req.method.as_str() {
            "PATCH" => body["Operations"]
                .as_array()
                .is_some_and(|ops| ops.iter().any(|op| op["path"] == "userName")),
            _ => {
                let path = req.path.split('?').next().unwrap_or_default();
                let current = upstream.call("GET", path, "");
                current
                    .json()
                    .is_some_and(|u| u["userName"] != body["userName"])
            }
        };
        changes.then(|| {
            let mut a = Answer::error(400, "Attribute 'userName' is immutable");
            a.body = json!({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
                "status": "400", "scimType": "mutability",
                "detail": "Attribute 'userName' is immutable",
            })
            .to_string();
            a
        })
    }

    fn response(&self, req: &Exchange, answer: &mut Answer, _: &Upstream) {
        rewrite_schema(req, answer, USER_SCHEMA, |attrs| {
            attribute(attrs, "userName")["mutability"] = json!("immutable");
        });
    }
}

/// A group POST without members is refused (400); `/Schemas` marks `members`
/// required.
pub struct GroupMembersRequired;

impl Quirk for GroupMembersRequired {
    fn request(&self, req: &mut Exchange, _: &Upstream) -> Option<Answer> {
        if req.method != "POST" || req.resource() != "Groups" {
            return None;
        }
        let body = req.json()?;
        let has_members = body["members"].as_array().is_some_and(|m| !m.is_empty());
        (!has_members).then(|| Answer::error(400, "Required attribute 'members' is missing"))
    }

    fn response(&self, req: &Exchange, answer: &mut Answer, _: &Upstream) {
        rewrite_schema(req, answer, GROUP_SCHEMA, |attrs| {
            attribute(attrs, "members")["required"] = json!(true);
        });
    }
}

/// Stores email addresses with their domain lower-cased. `/Schemas` is left as
/// scim2-server serves it: `emails.value` has `caseExact` false, per RFC 7643.
pub struct LowerCasesEmailDomains;

fn lower_domain(email: &str) -> String {
    match email.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_lowercase()),
        None => email.to_owned(),
    }
}

fn lower_email_values(emails: &mut Value) {
    for e in emails.as_array_mut().into_iter().flatten() {
        if let Some(v) = e["value"].as_str() {
            e["value"] = json!(lower_domain(v));
        }
    }
}

impl Quirk for LowerCasesEmailDomains {
    fn request(&self, req: &mut Exchange, _: &Upstream) -> Option<Answer> {
        if !is_user_write(req) {
            return None;
        }
        let mut body = req.json()?;
        if let Some(emails) = body.get_mut("emails") {
            lower_email_values(emails);
        }
        for op in body
            .get_mut("Operations")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if op["path"] == "emails" {
                lower_email_values(&mut op["value"]);
            }
        }
        req.body = body.to_string();
        None
    }
}

// ---------------------------------------------------------------------------
// The scenario

/// How the target is expected to hold what idsync sends.
#[derive(Clone, Copy, Default)]
struct Holds {
    /// Emails carry `type: work` and `primary: true`.
    email_type_and_primary: bool,
    /// `externalId` is never stored.
    no_external_id: bool,
    /// Email domains are stored lower-cased.
    lower_case_domains: bool,
    /// An email (and so userName) change is refused, as a per-user failure.
    user_name_fixed: bool,
    /// Groups without members cannot be created, as a per-group failure.
    groups_need_members: bool,
}

struct Scenario {
    server: ScimServer,
    proxy: FaultProxy,
    ws: Workspace,
    source: Directory,
    /// The source as the target can hold it (rows whose change is refused).
    expected: Directory,
    leavers: Vec<UserRow>,
    holds: Holds,
}

impl Scenario {
    fn start(tag: &str, quirks: Vec<Arc<dyn Quirk>>, holds: Holds) -> Scenario {
        let server = ScimServer::start(&fresh_token(tag));
        let proxy = FaultProxy::start(server.port(), pass_through());
        proxy.set_quirks(quirks);
        let ws = Workspace::with_target(&proxy.base_url(), server.token());
        let mut source = Directory::generate(12, 3);
        if holds.lower_case_domains {
            for u in source.users.iter_mut().take(6) {
                u.email = u.email.replace("@example.com", "@Example.COM");
            }
        }
        ws.write_directory(&source);
        Scenario {
            server,
            proxy,
            ws,
            expected: clone_dir(&source),
            source,
            leavers: Vec::new(),
            holds,
        }
    }

    /// Subjects whose operations may fail (and must, where a step expects it).
    fn known_failures(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if self.holds.groups_need_members {
            for (name, members) in &self.source.groups {
                if members.is_empty() {
                    out.insert(name.clone());
                }
            }
        }
        if self.holds.user_name_fixed {
            for u in &self.source.users {
                // Operations name the user by the userName the source wants.
                if self.expected.user(&u.id).user_name() != u.user_name() {
                    out.insert(u.user_name());
                }
            }
        }
        out
    }

    /// `sync` (with `extra` args); its failures are exactly the known ones.
    fn sync(&self, step: &str, extra: &[&str]) {
        let mut args = vec!["sync", "--format", "json"];
        args.extend_from_slice(extra);
        let out = self.ws.run(&args);
        let summary = out.json();
        let failed: BTreeSet<String> = summary["failures"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| str_at(f, "subject").to_owned())
            .collect();
        let known = self.known_failures();
        assert_eq!(failed, known, "{step}: failures\n{}", out.dump());
        for f in summary["failures"].as_array().into_iter().flatten() {
            let error = str_at(f, "error");
            assert!(
                error.contains("the target") && error.len() > 40,
                "{step}: a failure must say what the target refused and why: {f}"
            );
        }
        let code = if known.is_empty() { 0 } else { 1 };
        assert_eq!(out.code, code, "{step}\n{}", out.dump());
        self.assert_target(step);
    }

    /// A plan (`--full` or not) shows nothing but the known failures again.
    fn assert_plans_settled(&self, step: &str) {
        let known = self.known_failures();
        for args in [
            &["plan", "--format", "json"][..],
            &["plan", "--full", "--format", "json"][..],
        ] {
            let out = self.ws.run(args);
            assert_eq!(out.code, 0, "{step}: {args:?}\n{}", out.dump());
            let plan = out.json();
            let subjects: BTreeSet<String> = operations(&plan)
                .iter()
                .map(|op| str_at(op, "userName").to_owned() + str_at(op, "displayName"))
                .collect();
            assert!(
                subjects.is_subset(&known),
                "{step}: {args:?} plans more than the known failures {known:?}: {plan}"
            );
        }
    }

    fn write_source(&self) {
        self.ws.write_directory(&self.source);
    }

    /// The target holds `expected` (leavers disabled), as the quirk stores it.
    fn assert_target(&self, step: &str) {
        let contents = self.server.contents();
        let mut diffs = Vec::new();
        let mut by_name: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
        for u in &contents.users {
            by_name
                .entry(str_at(u, "userName").to_lowercase())
                .or_default()
                .push(u);
        }
        let mut id_of: BTreeMap<String, String> = BTreeMap::new();
        let rows = self
            .expected
            .users
            .iter()
            .filter(|u| u.active)
            .map(|u| (u, true))
            .chain(self.leavers.iter().map(|u| (u, false)));
        let mut wanted_names = BTreeSet::new();
        for (row, active) in rows {
            let name = row.user_name().to_lowercase();
            wanted_names.insert(name.clone());
            let Some(found) = by_name.get(&name) else {
                diffs.push(format!("missing user {name}"));
                continue;
            };
            if found.len() > 1 {
                diffs.push(format!("{} users named {name}", found.len()));
            }
            let u = found[0];
            id_of.insert(row.id.clone(), str_at(u, "id").to_owned());
            let mut check = |what: &str, got: &str, want: &str| {
                if got != want {
                    diffs.push(format!("{name}: {what}: target {got:?}, source {want:?}"));
                }
            };
            check("userName", str_at(u, "userName"), &row.user_name());
            check("title", str_at(u, "title"), &row.title);
            check(
                "givenName",
                str_at(&u["name"], "givenName"),
                &row.given_name,
            );
            check(
                "department",
                str_at(&u[ENTERPRISE_SCHEMA], "department"),
                &row.department,
            );
            let external = if self.holds.no_external_id {
                ""
            } else {
                row.id.as_str()
            };
            check("externalId", str_at(u, "externalId"), external);
            let want_email = if self.holds.lower_case_domains {
                lower_domain(&row.user_name())
            } else {
                row.user_name()
            };
            let emails = u["emails"].as_array().cloned().unwrap_or_default();
            let email_ok = emails.len() == 1
                && str_at(&emails[0], "value") == want_email
                && (emails[0].get("primary") == Some(&json!(true))
                    && emails[0].get("type") == Some(&json!("work")))
                    == self.holds.email_type_and_primary;
            if !email_ok {
                diffs.push(format!("{name}: emails {emails:?}, source {want_email:?}"));
            }
            if u["active"] != json!(active) {
                diffs.push(format!("{name}: active {}, expected {active}", u["active"]));
            }
        }
        for name in by_name.keys() {
            if !wanted_names.contains(name) {
                diffs.push(format!("unexpected user {name}"));
            }
        }
        let known = self.known_failures();
        let mut groups: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
        for g in &contents.groups {
            groups.entry(str_at(g, "displayName")).or_default().push(g);
        }
        for (name, members) in &self.expected.groups {
            let Some(found) = groups.get(name.as_str()) else {
                if !known.contains(name) {
                    diffs.push(format!("missing group {name}"));
                }
                continue;
            };
            if found.len() > 1 {
                diffs.push(format!("{} groups named {name}", found.len()));
            }
            let got: BTreeSet<&str> = found[0]["members"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| str_at(m, "value"))
                .collect();
            let want: BTreeSet<&str> = members
                .iter()
                .filter_map(|k| id_of.get(k).map(String::as_str))
                .collect();
            if got != want {
                diffs.push(format!("group {name}: members {got:?}, expected {want:?}"));
            }
        }
        assert!(
            diffs.is_empty(),
            "{step}: the target differs from the source:\n  {}",
            diffs.join("\n  ")
        );
    }

    /// Every step of the shared scenario.
    fn run(mut self) -> Scenario {
        self.sync("initial sync", &[]);
        self.assert_plans_settled("after the initial sync");

        self.source.user_mut("u0002").title = "Principal Engineer".into();
        self.expected.user_mut("u0002").title = "Principal Engineer".into();
        self.write_source();
        self.sync("attribute change", &[]);

        let moved = "u0003";
        let old = self.source.user(moved).email.clone();
        let new = old.replace("user0003", "user0003.renamed");
        self.source.user_mut(moved).email = new.clone();
        if !self.holds.user_name_fixed {
            self.expected.user_mut(moved).email = new;
        }
        self.write_source();
        self.sync("email change", &[]);

        let leaver = self.source.remove_user("u0004");
        self.expected.remove_user("u0004");
        self.leavers.push(leaver);
        self.write_source();
        self.sync("leaver", &[]);

        // u0002 moves from group-02 to group-01.
        for dir in [&mut self.source, &mut self.expected] {
            dir.groups
                .get_mut("group-02")
                .expect("group")
                .retain(|m| m != "u0002");
            dir.groups
                .get_mut("group-01")
                .expect("group")
                .push("u0002".into());
        }
        self.write_source();
        self.sync("membership change", &[]);
        self.assert_plans_settled("after the changes");

        let drifted = self.expected.user("u0006").user_name();
        let id = self.server.contents().user_id(&drifted);
        self.server.patch_user_title(&id, "Changed by hand");
        self.sync("hand drift + --full", &["--full"]);
        self.assert_plans_settled("after --full");
        self
    }
}

fn clone_dir(dir: &Directory) -> Directory {
    Directory {
        users: dir.users.clone(),
        groups: dir.groups.clone(),
    }
}

/// What `/Users` writes carried, as the proxy saw them (before any quirk).
fn user_write_bodies(proxy: &FaultProxy) -> Vec<String> {
    proxy
        .entries()
        .into_iter()
        .filter(|e| {
            e.path.contains("/Users") && matches!(e.method.as_str(), "POST" | "PUT" | "PATCH")
        })
        .map(|e| e.body)
        .collect()
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn quirk_refusing_email_type_and_primary_gets_emails_without_them() {
    let s = Scenario::start(
        "q-emails",
        vec![Arc::new(RefusesEmailTypeAndPrimary)],
        Holds::default(),
    )
    .run();
    let bodies = user_write_bodies(&s.proxy);
    assert!(bodies.iter().any(|b| b.contains("emails")));
    assert!(
        bodies
            .iter()
            .all(|b| !b.contains("\"primary\"") && !b.contains("\"type\"")),
        "a user write carried emails.type or emails.primary: {bodies:?}"
    );
}

#[test]
fn quirk_read_only_external_id_is_never_sent_and_never_planned_again() {
    let s = Scenario::start(
        "q-extid",
        vec![Arc::new(ExternalIdReadOnly)],
        Holds {
            email_type_and_primary: true,
            no_external_id: true,
            ..Holds::default()
        },
    )
    .run();
    let bodies = user_write_bodies(&s.proxy);
    assert!(
        bodies.iter().all(|b| !b.contains("externalId")),
        "externalId was sent although the target publishes it read-only: {bodies:?}"
    );
    // A plain plan reads the schema too, so it plans as `sync` will.
    s.proxy.clear_log();
    s.ws.assert_plan_empty();
    assert_eq!(
        s.proxy.count_kind("GET /Schemas"),
        1,
        "{}",
        s.proxy.summary()
    );
}

#[test]
fn quirk_immutable_user_name_makes_an_email_change_a_clear_per_user_failure_never_sent() {
    let s = Scenario::start(
        "q-immutable",
        vec![Arc::new(UserNameImmutable)],
        Holds {
            email_type_and_primary: true,
            user_name_fixed: true,
            ..Holds::default()
        },
    )
    .run();
    assert!(
        user_write_bodies(&s.proxy)
            .iter()
            .all(|b| !b.contains("\"path\":\"userName\"")),
        "a userName change was sent to a target that cannot make it"
    );
    // It fails every cycle, named and explained, and is never sent.
    let out = s.ws.run(&["sync"]);
    assert_eq!(out.code, 1, "{}", out.dump());
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(
        text.contains("does not allow changing userName")
            && text.contains("user0003.renamed@example.com"),
        "{text}"
    );
}

#[test]
fn quirk_required_group_members_are_sent_in_the_create() {
    let s = Scenario::start(
        "q-members",
        vec![Arc::new(GroupMembersRequired)],
        Holds {
            email_type_and_primary: true,
            groups_need_members: true,
            ..Holds::default()
        },
    )
    .run();
    // The empty group fails as itself, with what to do.
    let out = s.ws.run(&["sync", "--format", "json"]);
    let summary = out.json();
    let failure = &summary["failures"][0];
    assert_eq!(str_at(failure, "subject"), "group-03", "{summary}");
    assert!(
        str_at(failure, "error").contains("requires members"),
        "{summary}"
    );
    // Two POSTs, each with members; the empty group was never sent.
    let posts: Vec<String> = s
        .proxy
        .entries()
        .into_iter()
        .filter(|e| e.method == "POST" && e.path.ends_with("/Groups"))
        .map(|e| e.body)
        .collect();
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert!(posts.iter().all(|b| b.contains("\"members\"")), "{posts:?}");
}

#[test]
fn quirk_lower_cased_email_domains_are_not_drift_on_full() {
    let s = Scenario::start(
        "q-lower",
        vec![Arc::new(LowerCasesEmailDomains)],
        Holds {
            email_type_and_primary: true,
            lower_case_domains: true,
            ..Holds::default()
        },
    )
    .run();
    // No PATCH of emails after the initial creates and the one email change.
    let patches = s
        .proxy
        .entries()
        .into_iter()
        .filter(|e| e.method == "PATCH" && e.body.contains("\"emails\""))
        .count();
    assert_eq!(patches, 1, "{}", s.proxy.summary());
}
