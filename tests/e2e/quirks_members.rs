//! Servers whose group members and userNames are not what RFC 7643 says,
//! played over the real `scim2-server` by the quirk proxy: members stored by
//! userName (a PATCH by id answers 200 and does nothing), `eq` filters that
//! compare case-sensitively, duplicate userNames accepted, and deleted users'
//! ids kept in groups. Under each, one scenario (initial sync, second plan
//! empty, attribute change, email change, leaver, membership change, hand
//! drift + `--full`, a joiner whose account exists in another case) must end
//! with the target exactly as the source says — never a success that did not
//! happen.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::faults::{Rig, assert_no_duplicates, rig};
use crate::harness::{Idsync, UserRow, assert_target_matches, str_at};
use crate::proxy::{Answer, Exchange, Quirk, Upstream, pass_through};

// ---------------------------------------------------------------------------
// Helpers shared by the quirks

/// The path prefix before the collection: `/v2/Groups/x` → `/v2`.
fn prefix(path: &str) -> &str {
    ["/Users", "/Groups"]
        .iter()
        .find_map(|c| path.find(c).map(|i| &path[..i]))
        .unwrap_or("")
}

/// A query string (`filter=...`) with its value percent-encoded.
fn query(name: &str, value: &str) -> String {
    let url = reqwest::Url::parse_with_params("http://x/", &[(name, value)]).expect("url");
    url.query().unwrap_or_default().to_owned()
}

/// A query parameter of a request path, decoded.
fn query_param(path: &str, name: &str) -> Option<String> {
    let url = reqwest::Url::parse(&format!("http://x{path}")).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `userName eq "X"` → `X`.
fn eq_value(filter: &str) -> Option<String> {
    let rest = filter.trim().strip_prefix("userName eq ")?;
    serde_json::from_str::<String>(rest.trim()).ok()
}

/// The userName of the user with this id on the real server, if it exists.
fn user_name_of(up: &Upstream, pre: &str, id: &str) -> Option<String> {
    let answer = up.call("GET", &format!("{pre}/Users/{id}"), "");
    (answer.status == 200)
        .then(|| answer.json())
        .flatten()
        .map(|u| str_at(&u, "userName").to_owned())
}

/// The id of the user with this userName (case-insensitively) on the real server.
fn id_of_name(up: &Upstream, pre: &str, name: &str) -> Option<String> {
    let filter = query("filter", &format!("userName eq {}", json!(name)));
    let answer = up.call("GET", &format!("{pre}/Users?{filter}"), "");
    let list = answer.json()?;
    list["Resources"]
        .as_array()?
        .iter()
        .find(|u| str_at(u, "userName").eq_ignore_ascii_case(name))
        .map(|u| str_at(u, "id").to_owned())
}

/// Runs `edit` on every group in an answer: a list's `Resources`, or the one
/// group of a single-resource answer.
fn each_group(body: &mut Value, mut edit: impl FnMut(&mut Value)) {
    if let Some(list) = body.get_mut("Resources").and_then(Value::as_array_mut) {
        list.iter_mut().for_each(&mut edit);
    } else if body.get("id").is_some() {
        edit(body);
    }
}

/// `members[value eq "X"]` → `X`.
fn removed_value(path: &str) -> Option<String> {
    let inner = path.strip_prefix("members[")?.strip_suffix(']')?;
    let rest = inner.trim().strip_prefix("value eq ")?;
    serde_json::from_str::<String>(rest.trim()).ok()
}

// ---------------------------------------------------------------------------
// The quirks

/// Members are stored (and shown) by userName: group reads show each member's
/// userName as `value` (no `$ref`); a PATCH naming a member by the id of an
/// existing user answers 200 and does nothing; naming it by userName works.
/// A value that is neither (a dangling id) is passed on as stored.
struct MembersByUserName;

impl Quirk for MembersByUserName {
    fn request(&self, req: &mut Exchange, up: &Upstream) -> Option<Answer> {
        if req.method != "PATCH" || req.resource() != "Groups" {
            return None;
        }
        let pre = prefix(&req.path).to_owned();
        let mut body = req.json()?;
        let ops = body["Operations"].as_array().cloned().unwrap_or_default();
        let mut kept = Vec::new();
        for mut op in ops {
            let kind = op["op"].as_str().unwrap_or("").to_ascii_lowercase();
            let path = op["path"].as_str().unwrap_or("").to_owned();
            if kind == "add" && path == "members" {
                let values: Vec<Value> = op["value"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|m| {
                        let v = str_at(&m, "value").to_owned();
                        if let Some(id) = id_of_name(up, &pre, &v) {
                            Some(json!({ "value": id }))
                        } else if user_name_of(up, &pre, &v).is_some() {
                            None // an id: silently ignored
                        } else {
                            Some(json!({ "value": v }))
                        }
                    })
                    .collect();
                if values.is_empty() {
                    continue;
                }
                op["value"] = Value::Array(values);
                kept.push(op);
            } else if kind == "remove"
                && let Some(v) = removed_value(&path)
            {
                if let Some(id) = id_of_name(up, &pre, &v) {
                    op["path"] = json!(format!("members[value eq {}]", json!(id)));
                    kept.push(op);
                } else if user_name_of(up, &pre, &v).is_none() {
                    kept.push(op);
                }
            } else {
                kept.push(op);
            }
        }
        if kept.is_empty() {
            // Nothing the server understood: 200, and the group as it is.
            let mut group = up.call("GET", &req.path, "");
            self.response(req, &mut group, up);
            return Some(group);
        }
        body["Operations"] = Value::Array(kept);
        req.body = body.to_string();
        None
    }

    fn response(&self, req: &Exchange, answer: &mut Answer, up: &Upstream) {
        if req.resource() != "Groups" {
            return;
        }
        let Some(mut body) = answer.json() else {
            return;
        };
        let pre = prefix(&req.path).to_owned();
        let mut names: HashMap<String, Option<String>> = HashMap::new();
        each_group(&mut body, |g| {
            if let Some(members) = g.get_mut("members").and_then(Value::as_array_mut) {
                for m in members.iter_mut() {
                    let id = str_at(m, "value").to_owned();
                    let name = names
                        .entry(id.clone())
                        .or_insert_with(|| user_name_of(up, &pre, &id))
                        .clone();
                    *m = json!({ "value": name.unwrap_or(id) });
                }
            }
        });
        answer.body = body.to_string();
    }
}

/// `userName eq` compares case-sensitively: the server's answer to such a
/// filter is filtered again, exactly.
struct CaseSensitiveEq;

impl Quirk for CaseSensitiveEq {
    fn response(&self, req: &Exchange, answer: &mut Answer, _up: &Upstream) {
        if req.method != "GET" || req.resource() != "Users" {
            return;
        }
        let Some(wanted) = query_param(&req.path, "filter").and_then(|f| eq_value(&f)) else {
            return;
        };
        let Some(mut body) = answer.json() else {
            return;
        };
        if let Some(list) = body.get_mut("Resources").and_then(Value::as_array_mut) {
            list.retain(|u| str_at(u, "userName") == wanted);
            let n = list.len();
            body["totalResults"] = json!(n);
            body["itemsPerPage"] = json!(n);
            answer.body = body.to_string();
        }
    }
}

/// The marker a duplicate's stored userName carries on the real server.
const DUP_MARK: &str = "#dup-";

fn unmangle(name: &str) -> &str {
    name.split(DUP_MARK).next().unwrap_or(name)
}

/// A second user with an existing userName is created anyway. The real
/// server refuses that, so the quirk stores the duplicate under a marked
/// userName and shows it unmarked: lists and reads show both users with one
/// userName, and `userName eq` finds both.
#[derive(Default)]
struct DuplicateUserNames {
    made: Mutex<u32>,
}

impl Quirk for DuplicateUserNames {
    fn request(&self, req: &mut Exchange, up: &Upstream) -> Option<Answer> {
        let pre = prefix(&req.path).to_owned();
        if req.method == "POST" && req.resource() == "Users" {
            let mut body = req.json()?;
            let name = str_at(&body, "userName").to_owned();
            if id_of_name(up, &pre, &name).is_some() {
                let mut made = self.made.lock().expect("lock");
                *made += 1;
                body["userName"] = json!(format!("{name}{DUP_MARK}{made}"));
                req.body = body.to_string();
            }
        }
        if req.method == "GET"
            && req.resource() == "Users"
            && let Some(wanted) = query_param(&req.path, "filter").and_then(|f| eq_value(&f))
        {
            // Marked duplicates must be found too: ask with `sw`, filter below.
            let filter = query("filter", &format!("userName sw {}", json!(wanted)));
            let base = req.path.split('?').next().unwrap_or("").to_owned();
            req.path = format!("{base}?{filter}");
        }
        None
    }

    fn response(&self, req: &Exchange, answer: &mut Answer, _up: &Upstream) {
        if req.resource() != "Users" {
            return;
        }
        let Some(mut body) = answer.json() else {
            return;
        };
        let wanted = query_param(&req.path, "filter").and_then(|f| {
            f.trim()
                .strip_prefix("userName sw ")
                .and_then(|v| serde_json::from_str::<String>(v.trim()).ok())
        });
        let fix = |u: &mut Value| {
            let name = unmangle(str_at(u, "userName")).to_owned();
            u["userName"] = json!(name);
        };
        if let Some(list) = body.get_mut("Resources").and_then(Value::as_array_mut) {
            list.iter_mut().for_each(fix);
            if let Some(wanted) = wanted {
                list.retain(|u| str_at(u, "userName").eq_ignore_ascii_case(&wanted));
                let n = list.len();
                body["totalResults"] = json!(n);
            }
        } else if body.get("userName").is_some() {
            fix(&mut body);
        }
        answer.body = body.to_string();
    }
}

/// Deleting a user leaves its id in the groups that held it: the quirk
/// remembers them at the DELETE and adds the id back to reads of those groups
/// until a PATCH removes exactly that value.
#[derive(Default)]
struct DeletedUsersKept {
    /// Group id → dangling member ids.
    kept: Mutex<HashMap<String, HashSet<String>>>,
}

impl Quirk for DeletedUsersKept {
    fn request(&self, req: &mut Exchange, up: &Upstream) -> Option<Answer> {
        let pre = prefix(&req.path).to_owned();
        if req.method == "DELETE" && req.resource() == "Users" {
            let id = req.path.rsplit('/').next().unwrap_or("").to_owned();
            let mut groups = Vec::new();
            // Every group (bounded: the tests hold a handful).
            let all = up.call("GET", &format!("{pre}/Groups?count=1000"), "");
            if let Some(list) = all.json() {
                for g in list["Resources"].as_array().cloned().unwrap_or_default() {
                    let holds = g["members"]
                        .as_array()
                        .is_some_and(|ms| ms.iter().any(|m| str_at(m, "value") == id));
                    if holds {
                        groups.push(str_at(&g, "id").to_owned());
                    }
                }
            }
            let mut kept = self.kept.lock().expect("lock");
            for g in groups {
                kept.entry(g).or_default().insert(id.clone());
            }
        }
        if req.method == "PATCH" && req.resource() == "Groups" {
            let group = req
                .path
                .split('?')
                .next()
                .unwrap_or("")
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_owned();
            let body = req.json()?;
            let mut kept = self.kept.lock().expect("lock");
            for op in body["Operations"].as_array().cloned().unwrap_or_default() {
                if let Some(v) = op["path"].as_str().and_then(removed_value)
                    && let Some(set) = kept.get_mut(&group)
                {
                    set.remove(&v);
                }
            }
        }
        None
    }

    fn response(&self, req: &Exchange, answer: &mut Answer, _up: &Upstream) {
        if req.resource() != "Groups" || req.method == "DELETE" {
            return;
        }
        let Some(mut body) = answer.json() else {
            return;
        };
        let kept = self.kept.lock().expect("lock");
        each_group(&mut body, |g| {
            let Some(ids) = kept.get(str_at(g, "id")) else {
                return;
            };
            let members = g
                .as_object_mut()
                .expect("group")
                .entry("members")
                .or_insert_with(|| json!([]));
            if let Some(list) = members.as_array_mut() {
                for id in ids {
                    if !list.iter().any(|m| str_at(m, "value") == id) {
                        list.push(json!({ "value": id }));
                    }
                }
            }
        });
        answer.body = body.to_string();
    }
}

// ---------------------------------------------------------------------------
// The scenario

/// How the joiner whose account exists (in another case) is synced.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Joiner {
    /// A plain `sync`: the create meets a 409 and the account is looked up.
    Plain,
    /// `sync --full`: the listing adopts the account.
    Full,
}

/// Exit 0, and the summary.
fn sync_ok(rig: &Rig, args: &[&str]) -> Value {
    let mut all = vec!["sync", "--format", "json"];
    all.extend_from_slice(args);
    let out = rig.ws.run(&all);
    assert_eq!(out.code, 0, "sync {args:?} did not exit 0:\n{}", out.dump());
    out.json()
}

/// The target holds exactly the directory (read straight from the server,
/// behind the quirks), no duplicates, `extra` holds, and a new plan is empty.
fn assert_converged(rig: &Rig, step: &str, extra: &dyn Fn(&Rig)) {
    let contents = rig.server.contents();
    assert_no_duplicates(&contents);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_target_matches(&rig.dir, &[], &contents)
    }));
    if let Err(e) = result {
        panic!(
            "after {step}: {}\nproxy: {}",
            e.downcast_ref::<String>().cloned().unwrap_or_default(),
            rig.proxy.summary()
        );
    }
    extra(rig);
    rig.ws.assert_plan_empty();
}

/// The shared scenario under `quirks`; returns the rig for further checks.
fn scenario(tag: &str, quirks: Vec<Arc<dyn Quirk>>, joiner: Joiner, extra: &dyn Fn(&Rig)) -> Ran {
    let mut rig = rig(tag, 10, 3, pass_through());
    rig.proxy.set_quirks(quirks);
    rig.ws.remove_action = "delete".into();

    // Initial sync, then nothing to do.
    sync_ok(&rig, &[]);
    assert_converged(&rig, "the initial sync", extra);

    // An attribute change.
    rig.dir.user_mut("u0002").title = "Chief Tester".into();
    rig.ws.write_directory(&rig.dir);
    sync_ok(&rig, &[]);
    assert_converged(&rig, "an attribute change", extra);

    // An email (and so userName) change of a group member.
    rig.dir.user_mut("u0001").email = "renamed0001@example.com".into();
    rig.ws.write_directory(&rig.dir);
    sync_ok(&rig, &[]);
    assert_converged(&rig, "an email change", extra);

    // A leaver, who takes their memberships along.
    rig.dir.remove_user("u0004");
    rig.ws.write_directory(&rig.dir);
    sync_ok(&rig, &[]);
    assert_converged(&rig, "a leaver", extra);

    // Membership changes: one member moves groups, the empty group gains one.
    let moving = rig.dir.groups["group-01"][0].clone();
    rig.dir
        .groups
        .get_mut("group-01")
        .expect("group")
        .retain(|m| *m != moving);
    let to = rig.dir.groups.get_mut("group-02").expect("group");
    if !to.contains(&moving) {
        to.push(moving.clone());
    }
    rig.dir
        .groups
        .get_mut("group-03")
        .expect("group")
        .push("u0003".into());
    rig.ws.write_directory(&rig.dir);
    sync_ok(&rig, &[]);
    assert_converged(&rig, "membership changes", extra);

    // Hand drift: a title edited, a member removed, and a member user deleted
    // (through the proxy, as an admin in the server's UI would), then --full.
    let contents = rig.server.contents();
    let u2 = contents.user_id("user0002@example.com");
    rig.server.patch_user_title(&u2, "Hand-edited");
    let g2 = contents.group_id("group-02");
    let g2_member = rig.dir.groups["group-02"][0].clone();
    let g2_member_name = rig.dir.user(&g2_member).user_name();
    rig.server
        .remove_group_member(&g2, &contents.user_id(&g2_member_name));
    let victim = rig.dir.groups["group-01"][0].clone();
    let victim_id = contents.user_id(&rig.dir.user(&victim).user_name());
    let (status, _) = rig.server.request_at(
        &rig.proxy.base_url(),
        reqwest::Method::DELETE,
        &format!("/Users/{victim_id}"),
        None,
    );
    assert!(matches!(status, 200 | 204), "hand delete: {status}");
    let full_plan = rig.ws.run(&["plan", "--full", "--format", "json"]);
    assert_eq!(full_plan.code, 0, "{}", full_plan.dump());
    let full_plan = full_plan.json();
    sync_ok(&rig, &["--full"]);
    assert_converged(&rig, "hand drift and --full", extra);

    // A joiner whose account an admin made by hand, in another case.
    let newcomer = UserRow::new("u0100", "joiner@example.com", "Jo", "Iner");
    let mut by_hand = crate::harness::ScimServer::user_body(&newcomer);
    by_hand["userName"] = json!("JOINER@example.com");
    rig.server.create_user(by_hand);
    rig.dir.users.push(newcomer);
    rig.ws.write_directory(&rig.dir);
    match joiner {
        Joiner::Plain => sync_ok(&rig, &[]),
        Joiner::Full => sync_ok(&rig, &["--full"]),
    };
    assert_converged(&rig, "a joiner with an account in another case", extra);
    Ran { rig, full_plan }
}

/// A finished scenario: the rig, and the plan `--full` made after the hand drift.
struct Ran {
    rig: Rig,
    full_plan: Value,
}

/// Every member value a client reads through the proxy is an existing user's
/// id or userName.
fn no_dangling_members(rig: &Rig) {
    let base = rig.proxy.base_url();
    let (_, groups) =
        rig.server
            .request_at(&base, reqwest::Method::GET, "/Groups?count=1000", None);
    let users = rig.server.users();
    let known: HashSet<String> = users
        .iter()
        .flat_map(|u| {
            [
                str_at(u, "id").to_owned(),
                str_at(u, "userName").to_lowercase(),
            ]
        })
        .collect();
    for g in groups["Resources"].as_array().cloned().unwrap_or_default() {
        for m in g["members"].as_array().cloned().unwrap_or_default() {
            let v = str_at(&m, "value");
            assert!(
                known.contains(v) || known.contains(&v.to_lowercase()),
                "group {} shows a dangling member {v:?}",
                str_at(&g, "displayName")
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The tests

#[test]
fn members_stored_by_user_name_converge_and_patches_by_id_are_not_taken_for_success() {
    let Ran { rig, .. } = scenario(
        "q-members-username",
        vec![Arc::new(MembersByUserName)],
        Joiner::Plain,
        &no_dangling_members,
    );
    // The quirk was in play: group reads through the proxy show userNames.
    let (_, groups) = rig.server.request_at(
        &rig.proxy.base_url(),
        reqwest::Method::GET,
        "/Groups?count=1000",
        None,
    );
    let shown: Vec<String> = groups["Resources"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .flat_map(|g| g["members"].as_array().cloned().unwrap_or_default())
        .map(|m| str_at(&m, "value").to_owned())
        .collect();
    assert!(
        !shown.is_empty() && shown.iter().all(|v| v.contains('@')),
        "{shown:?}"
    );
}

#[test]
fn membership_changes_a_server_ignores_fail_clearly() {
    /// Every membership PATCH answers 200 and changes nothing.
    struct IgnoresMembers;
    impl Quirk for IgnoresMembers {
        fn request(&self, req: &mut Exchange, up: &Upstream) -> Option<Answer> {
            (req.method == "PATCH" && req.resource() == "Groups" && req.body.contains("members"))
                .then(|| up.call("GET", &req.path, ""))
        }
    }
    let rig = rig("q-members-ignored", 4, 2, pass_through());
    rig.proxy.set_quirks(vec![Arc::new(IgnoresMembers)]);
    let out = rig.ws.run(&["sync", "--format", "json"]);
    assert_eq!(
        out.code,
        1,
        "a membership change that did not take is a failure:\n{}",
        out.dump()
    );
    let summary = out.json();
    let text = summary.to_string();
    assert!(text.contains("does not hold"), "{text}");
    // Nothing recorded as pushed: the next plan adds the members again.
    let plan = rig.ws.plan_json();
    assert!(
        crate::harness::ops_of(&plan, "add_members").len() == 1,
        "{plan:#}"
    );
}

#[test]
fn case_sensitive_eq_after_a_conflict_finds_the_account_in_a_listing() {
    let Ran { rig, .. } = scenario(
        "q-eq-case",
        vec![Arc::new(CaseSensitiveEq)],
        Joiner::Plain,
        &|_| {},
    );
    // The joiner's hand-made account was adopted, not reported missing.
    let contents = rig.server.contents();
    assert_eq!(contents.users_named("joiner@example.com").len(), 1);
}

#[test]
fn duplicate_user_names_accepted_never_get_a_duplicate_from_idsync() {
    scenario(
        "q-dup-names",
        vec![Arc::new(DuplicateUserNames::default())],
        Joiner::Full,
        &|rig| {
            let marked: Vec<String> = rig
                .server
                .users()
                .iter()
                .map(|u| str_at(u, "userName").to_owned())
                .filter(|n| n.contains(DUP_MARK))
                .collect();
            assert!(marked.is_empty(), "duplicates created: {marked:?}");
        },
    );
}

#[test]
fn deleted_users_kept_in_groups_are_removed_by_full() {
    let Ran { full_plan, .. } = scenario(
        "q-dangling",
        vec![Arc::new(DeletedUsersKept::default())],
        Joiner::Plain,
        &no_dangling_members,
    );
    // The quirk was in play: the hand delete left an id behind, and --full
    // planned its removal.
    assert!(
        full_plan["summary"]["remove_dangling_members"].as_u64() >= Some(1),
        "{full_plan:#}"
    );
}

#[test]
fn a_client_that_knows_user_names_are_not_unique_looks_up_before_creating() {
    use idsync::model::{UserAttr, UserAttrs};
    use idsync::scim::{ClientOptions, Flavour, ScimClient, ScimError};

    let rig = rig("q-dup-client", 0, 0, pass_through());
    rig.proxy
        .set_quirks(vec![Arc::new(DuplicateUserNames::default())]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = || {
        ScimClient::new(ClientOptions::new(
            rig.proxy.base_url(),
            rig.server.token().to_owned().into(),
            Flavour::Generic,
        ))
        .expect("client")
    };
    let attrs = |name: &str| -> UserAttrs { [(UserAttr::UserName, name.to_owned())].into() };
    let marked = || {
        rig.server
            .users()
            .iter()
            .filter(|u| str_at(u, "userName").contains(DUP_MARK))
            .count()
    };
    let first = client();
    runtime.block_on(async {
        first
            .create_user(&attrs("twin@example.com"), true)
            .await
            .expect("created");
        // Unknown uniqueness: the target's answer is trusted, and this one
        // accepts a duplicate (what the quirk plays).
        first
            .create_user(&attrs("TWIN@example.com"), true)
            .await
            .expect("accepted");
    });
    assert_eq!(marked(), 1, "the quirk accepted a duplicate");
    runtime.block_on(async {
        // A listing showing two users with one userName teaches the client.
        let second = client();
        assert_eq!(second.user_names_unique(), None);
        second.list_users().await.expect("list");
        assert_eq!(second.user_names_unique(), Some(false));
        let err = second
            .create_user(&attrs("Twin@Example.com"), true)
            .await
            .expect_err("looked up first");
        assert!(matches!(err, ScimError::Conflict { .. }), "{err}");

        // So does the schema (the caller sets it).
        let third = client();
        third.set_user_names_unique(Some(false));
        first
            .create_user(&attrs("solo@example.com"), true)
            .await
            .expect("created");
        assert!(
            third
                .create_user(&attrs("SOLO@example.com"), true)
                .await
                .is_err()
        );
        third
            .create_user(&attrs("new@example.com"), true)
            .await
            .expect("a free userName is created");
    });
    assert_eq!(marked(), 1, "no further duplicate");
}

/// Leaves one user out of every users listing (reads by id still find it).
struct HidesFromListings(String);

impl Quirk for HidesFromListings {
    fn response(&self, req: &Exchange, answer: &mut Answer, _up: &Upstream) {
        if req.method != "GET" || req.resource() != "Users" {
            return;
        }
        let Some(mut body) = answer.json() else {
            return;
        };
        if let Some(list) = body.get_mut("Resources").and_then(Value::as_array_mut) {
            let before = list.len();
            list.retain(|u| str_at(u, "id") != self.0);
            if list.len() < before {
                let total = body["totalResults"].as_u64().unwrap_or(1);
                body["totalResults"] = json!(total - 1);
                answer.body = body.to_string();
            }
        }
    }
}

#[test]
fn a_member_the_listing_leaves_out_is_looked_up_and_not_taken_for_dangling() {
    let rig = rig("q-hidden-member", 4, 2, pass_through());
    sync_ok(&rig, &[]);
    // A stranger an admin put in idsync's group by hand.
    let stranger = UserRow::new("x1", "stranger@example.com", "Stran", "Ger");
    let stranger_id = rig
        .server
        .create_user(crate::harness::ScimServer::user_body(&stranger));
    let group = rig.server.contents().group_id("group-01");
    let (status, answer) = rig.server.request_at(
        &rig.server.base_url(),
        reqwest::Method::PATCH,
        &format!("/Groups/{group}"),
        Some(json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "add", "path": "members", "value": [{"value": stranger_id}]}],
        })),
    );
    assert!(matches!(status, 200 | 204), "{status}: {answer}");
    rig.proxy
        .set_quirks(vec![Arc::new(HidesFromListings(stranger_id.clone()))]);
    let plan = rig.ws.run(&["plan", "--full", "--format", "json"]);
    assert_eq!(plan.code, 0, "{}", plan.dump());
    let plan = plan.json();
    assert_eq!(
        plan["summary"]["remove_dangling_members"].as_u64(),
        None,
        "the hidden stranger is no dangling member: {plan:#}"
    );
    assert!(
        rig.proxy
            .entries()
            .iter()
            .any(|e| e.method == "GET" && e.path.ends_with(&format!("/Users/{stranger_id}"))),
        "looked up by id"
    );
}
