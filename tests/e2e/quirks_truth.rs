//! Servers as they are, part "truth": paging, probing, one listing per cycle,
//! and recording what the server stored. Each quirk is played by the proxy over
//! the real scim2-server:
//!
//! - [`FailsCount`]: a list request carrying `count` answers 500; without it the
//!   server pages at its own default (7 here, emulated by rewriting the request).
//! - [`DropsExternalId`]: `externalId` is silently dropped on every write, and
//!   the server's `/Schemas` does not say so.
//! - [`DropsTitleOnPatch`]: `title` is kept on POST but silently dropped from
//!   PATCH (the PATCH answers 204 as if done).
//! - [`CollapsesDisplayName`]: `displayName` is stored with whitespace runs
//!   collapsed and trimmed (as directories that normalise names do).
//! - [`AdvertisesMaxResults`]: `/ServiceProviderConfig` advertises a given
//!   `filter.maxResults`, for the request-count test.
//!
//! Each runs the scenario of [`scenario`]: initial sync, plans empty, attribute
//! change, email change, leaver, membership change, hand drift + `--full`; the
//! target ends as the source says, except for the values the quirk cannot hold,
//! which `status` and `check` name.

use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::faults::{Rig, rig};
use crate::harness::{
    Directory, Output, TargetContents, UserRow, Workspace, assert_target_matches, operations,
    str_at,
};
use crate::proxy::{Answer, Exchange, Quirk, Upstream, pass_through};

/// The page size [`FailsCount`] serves when no `count` is sent.
const DEFAULT_PAGE: usize = 7;

/// 500 on a list request with `count`; [`DEFAULT_PAGE`] per page without.
struct FailsCount;

fn is_list(req: &Exchange) -> bool {
    let path = req.path.split('?').next().unwrap_or("");
    req.method == "GET"
        && (path.ends_with("/Users") || path.ends_with("/Groups"))
        && !req.path.contains("filter=")
}

impl Quirk for FailsCount {
    fn request(&self, req: &mut Exchange, _up: &Upstream) -> Option<Answer> {
        if !is_list(req) {
            return None;
        }
        if req.path.contains("count=") {
            return Some(Answer::error(500, "internal server error"));
        }
        let sep = if req.path.contains('?') { '&' } else { '?' };
        req.path = format!("{}{sep}count={DEFAULT_PAGE}", req.path);
        None
    }
}

/// Removes `attr` from a user POST/PUT body and from PATCH operations (by
/// path, or inside a value object). A PATCH left with no operation is
/// answered 204 without reaching the server, as a server ignoring it would.
fn strip_user_attr(req: &mut Exchange, attr: &str, on_post: bool) -> Option<Answer> {
    if req.resource() != "Users" {
        return None;
    }
    let mut body = req.json()?;
    match req.method.as_str() {
        "POST" | "PUT" if on_post => {
            body.as_object_mut()?.remove(attr);
        }
        "PATCH" => {
            let ops = body.get_mut("Operations")?.as_array_mut()?;
            ops.retain(|op| op.get("path").and_then(Value::as_str) != Some(attr));
            for op in ops.iter_mut() {
                if let Some(v) = op.get_mut("value").and_then(Value::as_object_mut) {
                    v.remove(attr);
                }
            }
            if ops.is_empty() {
                return Some(Answer::new(204, String::new()));
            }
        }
        _ => return None,
    }
    req.body = body.to_string();
    None
}

/// `externalId` dropped on every write.
struct DropsExternalId;

impl Quirk for DropsExternalId {
    fn request(&self, req: &mut Exchange, _up: &Upstream) -> Option<Answer> {
        strip_user_attr(req, "externalId", true)
    }
}

/// `title` kept on POST, dropped from PATCH.
struct DropsTitleOnPatch;

impl Quirk for DropsTitleOnPatch {
    fn request(&self, req: &mut Exchange, _up: &Upstream) -> Option<Answer> {
        strip_user_attr(req, "title", false)
    }
}

fn collapse(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `displayName` stored with whitespace runs collapsed.
struct CollapsesDisplayName;

impl Quirk for CollapsesDisplayName {
    fn request(&self, req: &mut Exchange, _up: &Upstream) -> Option<Answer> {
        if req.resource() != "Users" {
            return None;
        }
        let mut body = req.json()?;
        match req.method.as_str() {
            "POST" | "PUT" => {
                if let Some(d) = body.get("displayName").and_then(Value::as_str) {
                    body["displayName"] = collapse(d).into();
                }
            }
            "PATCH" => {
                for op in body.get_mut("Operations")?.as_array_mut()? {
                    if op.get("path").and_then(Value::as_str) == Some("displayName")
                        && let Some(d) = op.get("value").and_then(Value::as_str)
                    {
                        op["value"] = collapse(d).into();
                    }
                }
            }
            _ => return None,
        }
        req.body = body.to_string();
        None
    }
}

/// `/ServiceProviderConfig` advertising `filter.maxResults`.
struct AdvertisesMaxResults(u64);

impl Quirk for AdvertisesMaxResults {
    fn response(&self, req: &Exchange, answer: &mut Answer, _up: &Upstream) {
        if req.resource() != "ServiceProviderConfig" {
            return;
        }
        if let Some(mut spc) = answer.json() {
            spc["filter"]["maxResults"] = self.0.into();
            answer.body = spc.to_string();
        }
    }
}

/// A rig whose proxy plays `quirks`.
fn quirk_rig(tag: &str, n_users: usize, quirks: Vec<Arc<dyn Quirk>>) -> Rig {
    let rig = rig(tag, n_users, 4, pass_through());
    rig.proxy.set_quirks(quirks);
    rig
}

/// `plan` plans nothing, and `plan --full` nothing but the re-check of values
/// the target did not keep: updates of `rechecked` attributes only, to the
/// source's value. A note never hides the difference from `--full`.
fn assert_plans_empty(ws: &Workspace, when: &str, rechecked: &[&str]) {
    let plan = ws.run(&["plan", "--format", "json"]).assert_code(0).json();
    assert!(
        operations(&plan).is_empty(),
        "{when}: `plan` is not empty:\n{}",
        serde_json::to_string_pretty(&plan).unwrap_or_default()
    );
    let full = ws
        .run(&["plan", "--full", "--format", "json"])
        .assert_code(0)
        .json();
    for op in operations(&full) {
        let changes: Vec<&String> = op["changes"]
            .as_object()
            .map(|c| c.keys().collect())
            .unwrap_or_default();
        assert!(
            op["op"] == "update_user"
                && !changes.is_empty()
                && changes.iter().all(|c| rechecked.contains(&c.as_str())),
            "{when}: `plan --full` plans more than re-checking {rechecked:?}: {op}"
        );
    }
}

fn sync(ws: &Workspace, args: &[&str]) -> Output {
    let out = ws.run(args);
    out.assert_code(0);
    out
}

/// What a quirk legitimately leaves different: for each target user, the
/// source row it stands for; returns the target with the excused values
/// replaced by the source's, after checking each is what the quirk explains.
type Excuse = fn(&mut Value, &UserRow);

fn excused(
    target: &TargetContents,
    dir: &Directory,
    gone: &[UserRow],
    excuse: Excuse,
) -> TargetContents {
    let mut out = target.clone();
    for u in &mut out.users {
        let name = str_at(u, "userName").to_lowercase();
        if let Some(row) = dir
            .users
            .iter()
            .chain(gone)
            .find(|r| r.user_name().to_lowercase() == name)
        {
            excuse(u, row);
        }
    }
    out
}

fn no_excuse(_: &mut Value, _: &UserRow) {}

/// The scenario, each step compared with the source: initial sync, plans
/// empty, attribute change, email change, leaver, membership change, hand
/// drift + `--full`. Returns every sync's stderr, joined.
fn scenario(rig: &mut Rig, excuse: Excuse, rechecked: &[&str]) -> String {
    let mut logs = String::new();
    let mut gone: Vec<UserRow> = Vec::new();
    let check = |rig: &Rig, gone: &[UserRow], step: &str| {
        let target = excused(&rig.server.contents(), &rig.dir, gone, excuse);
        eprintln!("step: {step}");
        assert_target_matches(&rig.dir, gone, &target);
        assert_plans_empty(&rig.ws, step, rechecked);
    };

    logs += &sync(&rig.ws, &["sync"]).stderr;
    check(rig, &gone, "initial sync");

    rig.dir.user_mut("u0002").title = "Principal Quirk Engineer".into();
    rig.ws.write_directory(&rig.dir);
    logs += &sync(&rig.ws, &["sync"]).stderr;
    check(rig, &gone, "attribute change");

    rig.dir.user_mut("u0003").email = "renamed0003@example.com".into();
    rig.ws.write_directory(&rig.dir);
    logs += &sync(&rig.ws, &["sync"]).stderr;
    check(rig, &gone, "email change");

    gone.push(rig.dir.remove_user("u0004"));
    rig.ws.write_directory(&rig.dir);
    logs += &sync(&rig.ws, &["sync"]).stderr;
    check(rig, &gone, "leaver");

    let (from, to) = ("group-01".to_owned(), "group-03".to_owned());
    let moved = rig.dir.groups[&from][0].clone();
    rig.dir
        .groups
        .get_mut(&from)
        .expect("group")
        .retain(|m| *m != moved);
    if !rig.dir.groups[&to].contains(&moved) {
        rig.dir
            .groups
            .get_mut(&to)
            .expect("group")
            .push(moved.clone());
    }
    rig.ws.write_directory(&rig.dir);
    logs += &sync(&rig.ws, &["sync"]).stderr;
    check(rig, &gone, "membership change");

    // By hand, on the server itself: a member removed, a department changed.
    let contents = rig.server.contents();
    let group = contents.group_id("group-02");
    let member = rig.dir.groups["group-02"][0].clone();
    let member_id = contents.user_id(&rig.dir.user(&member).user_name());
    rig.server.remove_group_member(&group, &member_id);
    let drifted = contents.user_id(&rig.dir.user("u0005").user_name());
    let (status, body) = rig.server.request_at(
        &rig.server.base_url(),
        reqwest::Method::PATCH,
        &format!("/Users/{drifted}"),
        Some(serde_json::json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{
                "op": "replace",
                "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department",
                "value": "Edited By Hand"
            }]
        })),
    );
    assert!(status < 300, "hand edit refused: {status} {body}");
    logs += &sync(&rig.ws, &["sync", "--full"]).stderr;
    check(rig, &gone, "hand drift + --full");
    logs
}

#[test]
fn server_failing_count_with_500_is_paged_at_its_default_and_converges() {
    let mut rig = quirk_rig("count500", 30, vec![Arc::new(FailsCount)]);
    let started = Instant::now();
    let logs = scenario(&mut rig, no_excuse, &[]);
    assert!(logs.contains("`count`"), "the log names `count`:\n{logs}");
    assert!(
        !logs.contains("retrying SCIM request"),
        "a failed `count` is not retried:\n{logs}"
    );
    // A server that keeps everything gets no note about what it keeps.
    assert!(!logs.contains("not kept as sent"), "{logs}");
    assert!(!logs.contains("did not keep"), "{logs}");
    // Every listing after the first failure of a cycle went without `count`:
    // at most one 500 per command that talked to the target.
    let failed = rig
        .proxy
        .entries()
        .iter()
        .filter(|e| e.path.contains("count=") && e.status == Some(500))
        .count();
    // Six syncs, and the `plan --full` after each.
    let commands = 12;
    assert!(
        (1..=commands).contains(&failed),
        "{failed} failed `count` requests"
    );
    let check = rig.ws.run(&["check"]);
    check.assert_code(0);
    assert!(
        check.stdout.contains(
            "paging: the target's default page size (it failed a list request carrying `count`)"
        ),
        "{}",
        check.dump()
    );
    eprintln!("scenario took {:?}", started.elapsed());
}

fn excuse_external_id(u: &mut Value, row: &UserRow) {
    assert_eq!(u.get("externalId"), None, "the quirk keeps no externalId");
    u["externalId"] = row.id.clone().into();
}

#[test]
fn server_dropping_external_id_is_noted_per_user_and_said_once_per_sync() {
    let mut rig = quirk_rig("dropext", 20, vec![Arc::new(DropsExternalId)]);
    let logs = scenario(&mut rig, excuse_external_id, &["externalId"]);
    // The initial sync creates 20 users: one warning, the rest at debug level.
    let said = logs.matches("the target did not keep `externalId`").count();
    assert_eq!(said, 1, "said once, not once per user:\n{logs}");
    let status = rig.ws.run(&["status"]);
    status.assert_code(0);
    assert!(
        status
            .stdout
            .contains("Target: `externalId` not kept as sent for 19 users"),
        "the 19 users still managed (one left):\n{}",
        status.dump()
    );
    let check = rig.ws.run(&["check"]);
    check.assert_code(0);
    assert!(
        check
            .stdout
            .contains("learned: `externalId` not kept as sent for 19 users"),
        "{}",
        check.dump()
    );
    // A plain plan does not imply the target holds what was sent.
    let plan = rig.ws.run(&["plan"]);
    plan.assert_code(0);
    assert!(
        !plan.stdout.contains("matches the source")
            && plan
                .stdout
                .contains("the target did not keep values as sent: `externalId`"),
        "{}",
        plan.dump()
    );
    // Forgotten on request; the next `--full` finds the same and notes again.
    let forget = rig.ws.run(&["state", "forget-notes", "externalId"]);
    forget.assert_code(0);
    assert!(
        forget.stdout.contains("Forgot 19 note(s)"),
        "{}",
        forget.dump()
    );
    assert!(
        !rig.ws.run(&["status"]).stdout.contains("not kept as sent"),
        "forgotten"
    );
    sync(&rig.ws, &["sync", "--full"]);
    // The leaver (disabled, out of the source) is not sent anything.
    assert!(
        rig.ws
            .run(&["status"])
            .stdout
            .contains("`externalId` not kept as sent for 18 users"),
        "re-checked"
    );
}

fn excuse_title(u: &mut Value, row: &UserRow) {
    // Kept as created; a changed title never reaches it.
    if row.id == "u0002" && row.title == "Principal Quirk Engineer" {
        assert_ne!(
            str_at(u, "title"),
            row.title,
            "the quirk dropped the change"
        );
        u["title"] = row.title.clone().into();
    }
}

/// One user's answer is no evidence about another's: after u0002's title
/// change was dropped, u0006's title change is still sent.
#[test]
fn a_note_on_one_user_never_stops_updates_for_another() {
    let mut rig = quirk_rig("droptitle", 20, vec![Arc::new(DropsTitleOnPatch)]);
    let logs = scenario(&mut rig, excuse_title, &["title"]);
    assert_eq!(
        logs.matches("kept `title` otherwise than sent").count(),
        1,
        "{logs}"
    );
    let status = rig.ws.run(&["status"]);
    assert!(
        status.stdout.contains(
            "`title` not kept as sent for 1 user (e.g. sent \"Principal Quirk Engineer\""
        ),
        "{}",
        status.dump()
    );
    rig.dir.user_mut("u0006").title = "Another Title".into();
    rig.ws.write_directory(&rig.dir);
    rig.proxy.clear_log();
    sync(&rig.ws, &["sync"]);
    let sent = rig
        .proxy
        .entries()
        .iter()
        .filter(|e| e.method == "PATCH" && e.body.contains("Another Title"))
        .count();
    assert_eq!(
        sent,
        1,
        "u0006's title change was sent: {}",
        rig.proxy.summary()
    );
}

fn excuse_display_name(u: &mut Value, row: &UserRow) {
    let got = str_at(u, "displayName").to_owned();
    if got != row.display_name {
        assert_eq!(got, collapse(&row.display_name), "only normalised");
        u["displayName"] = row.display_name.clone().into();
    }
}

#[test]
fn server_normalising_display_name_is_noted_once_and_converges() {
    let mut rig = quirk_rig("collapse", 20, vec![Arc::new(CollapsesDisplayName)]);
    rig.dir.user_mut("u0010").display_name = "Spaced   Out  Name".into();
    rig.ws.write_directory(&rig.dir);
    let logs = scenario(&mut rig, excuse_display_name, &["displayName"]);
    assert_eq!(
        logs.matches("kept `displayName` otherwise than sent")
            .count(),
        1,
        "{logs}"
    );
}

/// `--full` over `USERS` users with the server advertising `maxResults` of
/// `PAGE`: the user collection is listed once, in `ceil(USERS / PAGE)` pages,
/// and groups take at most one request each.
#[test]
fn full_read_lists_users_once_at_the_advertised_page_size() {
    const USERS: usize = 2000;
    const PAGE: usize = 250;
    const GROUPS: usize = 4;
    let rig = quirk_rig(
        "perf",
        USERS,
        vec![Arc::new(AdvertisesMaxResults(PAGE as u64))],
    );
    let started = Instant::now();
    let mut ws = rig.ws;
    ws.timeout = "60s".into();
    ws.write_config();
    sync(&ws, &["sync"]);
    eprintln!("seeded {USERS} users in {:?}", started.elapsed());
    rig.proxy.clear_log();
    let started = Instant::now();
    let plan = ws
        .run(&["plan", "--full", "--format", "json"])
        .assert_code(0)
        .json();
    eprintln!("plan --full took {:?}", started.elapsed());
    assert!(operations(&plan).is_empty());
    let entries = rig.proxy.entries();
    let user_pages: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == "GET /Users" && e.path.contains(&format!("count={PAGE}")))
        .collect();
    let user_gets = entries.iter().filter(|e| e.kind == "GET /Users").count();
    assert_eq!(
        user_pages.len(),
        USERS.div_ceil(PAGE),
        "{}",
        rig.proxy.summary()
    );
    let starts: std::collections::BTreeSet<&str> = user_pages
        .iter()
        .map(|e| e.path.split("startIndex=").nth(1).unwrap_or(""))
        .collect();
    assert_eq!(
        starts.len(),
        user_pages.len(),
        "the collection is read once"
    );
    // Besides the pages: the connectivity probe (count=1), nothing else.
    assert_eq!(user_gets, user_pages.len() + 1, "{}", rig.proxy.summary());
    let group_gets = entries.iter().filter(|e| e.kind == "GET /Groups").count();
    assert!(
        group_gets <= GROUPS.div_ceil(PAGE) + GROUPS,
        "{}",
        rig.proxy.summary()
    );
}

/// `check` after a sync against a target that fails `count` and drops
/// `externalId`: what it learned (paging, capabilities, the note), as a
/// snapshot.
#[test]
fn check_shows_what_was_learned_about_the_target() {
    let rig = quirk_rig(
        "checklearn",
        // One user: which create answers first (and so is noted) is then known.
        1,
        vec![Arc::new(FailsCount), Arc::new(DropsExternalId)],
    );
    sync(&rig.ws, &["sync"]);
    let out = rig.ws.run(&["check"]);
    out.assert_code(0);
    let port = regex::Regex::new(r"127\.0\.0\.1:\d+").expect("regex");
    let secs = regex::Regex::new(r"\(\d+\.\d+s\)").expect("regex");
    let text = port.replace_all(&out.stdout, "127.0.0.1:[port]");
    let text = secs.replace_all(&text, "([duration])");
    let mut settings = insta::Settings::clone_current();
    settings.set_description(
        "check after one sync; the target answers 500 to `count` and drops externalId",
    );
    settings.set_omit_expression(true);
    settings.bind(|| insta::assert_snapshot!("check_learned", text));
}

/// `/ServiceProviderConfig` saying filters are not supported.
struct NoFilter;

impl Quirk for NoFilter {
    fn response(&self, req: &Exchange, answer: &mut Answer, _up: &Upstream) {
        if req.resource() != "ServiceProviderConfig" {
            return;
        }
        if let Some(mut spc) = answer.json() {
            spc["filter"]["supported"] = false.into();
            answer.body = spc.to_string();
        }
    }
}

/// On a target without filter support, the creates of one cycle look their
/// userNames up in one listing of the users, not one each: accounts made by
/// hand are found there and adopted, without a POST answered 409.
#[test]
fn creates_on_a_target_without_filters_share_one_listing() {
    let mut rig = quirk_rig("nofilter409", 12, vec![Arc::new(NoFilter)]);
    sync(&rig.ws, &["sync"]);
    // Three newcomers whose accounts someone already made by hand.
    for i in 101..=103 {
        let row = UserRow::new(
            &format!("u{i:04}"),
            &format!("hand{i}@example.com"),
            &format!("Given{i}"),
            &format!("Family{i}"),
        );
        rig.server
            .create_user(crate::harness::ScimServer::user_body(&row));
        rig.dir.users.push(row);
    }
    rig.ws.write_directory(&rig.dir);
    rig.proxy.clear_log();
    sync(&rig.ws, &["sync"]);
    let entries = rig.proxy.entries();
    let posts = entries.iter().filter(|e| e.kind == "POST /Users").count();
    assert_eq!(posts, 0, "found before creating: {}", rig.proxy.summary());
    let listings = entries
        .iter()
        .filter(|e| {
            e.kind == "GET /Users" && !e.path.contains("count=1&") && !e.path.ends_with("count=1")
        })
        .count();
    assert_eq!(
        listings,
        1,
        "one listing for three creates:\n{}",
        rig.proxy.summary()
    );
    assert_target_matches(&rig.dir, &[], &rig.server.contents());
    assert_plans_empty(&rig.ws, "after the adoptions", &[]);
}
